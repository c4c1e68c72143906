//! Output buffers for the CPU kernels, filled in parallel without zero-filling first: the
//! kernels write every element, and a memset of each large temporary was ~7% of a training
//! step (perf, ResNet-20, one thread).
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A writer for one chunk of a buffer being filled.
pub struct Chunk<'a>(&'a mut [MaybeUninit<f32>]);

impl Chunk<'_> {
    #[inline]
    pub fn set(&mut self, i: usize, value: f32) {
        self.0[i].write(value);
    }

    /// Writes `values` at `start..start + values.len()`.
    #[inline]
    pub fn copy_at(&mut self, start: usize, values: &[f32]) {
        for (slot, &v) in self.0[start..start + values.len()].iter_mut().zip(values) {
            slot.write(v);
        }
    }

    /// Writes `value` at every index of `range`.
    #[inline]
    pub fn fill(&mut self, range: std::ops::Range<usize>, value: f32) {
        for slot in &mut self.0[range] {
            slot.write(value);
        }
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
