//! Buffers of the CPU kernels: their f32 inputs as slices, and their outputs, filled in
//! parallel without zero-filling first (the kernels write every element, and a memset of each
//! large temporary was ~7% of a training step: perf, ResNet-20, one thread).
use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A writer for one chunk of a buffer being filled.
pub struct Chunk<'a>(&'a mut [MaybeUninit<f32>]);

impl Chunk<'_> {
    /// The chunk's slots, for kernels that write them in order.
    pub fn slots(&mut self) -> &mut [MaybeUninit<f32>] {
        self.0
    }

    /// The chunk as initialised values, once they are all written.
    ///
    /// # Safety
    /// Every element of the chunk must have been written.
    pub unsafe fn written(&mut self) -> &mut [f32] {
        // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller guarantees that
        // every element is initialised.
        unsafe { &mut *(self.0 as *mut [MaybeUninit<f32>] as *mut [f32]) }
    }

    /// Sets every element to zero and gives the chunk as initialised values.
    pub fn fill_zero(&mut self) -> &mut [f32] {
        for slot in self.0.iter_mut() {
            slot.write(0.0);
        }
        // SAFETY: every element was just written.
        unsafe { self.written() }
    }
}

/// A vector of `len` values whose `chunk`-sized pieces are written in parallel by
/// `fill(index, piece)`.
///
/// # Safety
/// Each call of `fill` must write every element of its piece (the kernels' tests compare every
/// output element with a reference); an element left unwritten would be uninitialised memory.
pub unsafe fn filled_in_chunks(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut Chunk) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, piece)| fill(i, &mut Chunk(piece)));
    // SAFETY: the caller guarantees that `fill` writes each element of its piece, and the
    // pieces cover exactly `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// A contiguous f32 input of a custom op as a slice (`what` names it in errors).
pub fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what}: only f32 is supported") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}
