//! A CPU 2-D convolution as a candle custom op: per image, im2col into a reused scratch buffer
//! and one matrix product through the `gemm` crate straight into the (N, O, Ho, Wo) output.
//! 1×1 convolutions with stride 1 skip im2col (the image already is the column matrix);
//! strided ones build their rows from stride² phase planes (`Phases`), so that every row is
//! a shifted copy of contiguous runs. Backward:
//! - stride 1 (`StrideOneGradients`): the input gradient is itself a convolution, of the
//!   output gradient with the flipped kernel; one im2col of the output gradient per image gives
//!   it and the weight gradient;
//! - otherwise: the input gradient Wᵀ·grad followed by col2im (the adjoint of im2col), the
//!   weight gradient Σ over images of grad·colsᵀ (`WeightGradient`).
//!
//! Weight gradients are summed in fixed groups of images (the same bits for any thread count)
//! into a transposed accumulator, so that gemm keeps its column-major destination and packs the
//! small operand. Images run in parallel with rayon, each product single-threaded. candle's own
//! CPU conv2d runs at 5–30 GFLOP/s and its backward at 2–18 (measured on this project's 2-core machines with candle 0.11). CUDA
//! takes cuDNN where it loads (`cudnn_conv`), other devices candle's conv2d.
use super::buffers::{contiguous_f32, filled_in_chunks, Chunk};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Convolution without bias, square kernel, equal stride and padding on both axes.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if super::cudnn_conv::cudnn_applies(x) {
        return super::cudnn_conv::conv2d(x, weight, stride, padding);
    }
    if !super::dispatch::custom_applies(x) {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let (g, o) = Geometry::of(x, weight, stride, padding)?;
    x.contiguous()?.apply_op2(&weight.contiguous()?, Conv2d { g, o })
}

/// `conv2d(x, weight) + residual` (a residual block's last convolution and its shortcut) as
/// one op: each image's output gets the residual added while it is still in cache, and the
/// backward hands the output gradient to the residual as it is, without a separate sum node
/// whose operands' gradients candle would each accumulate (a zeroed tensor plus the gradient).
/// The same values as the two ops.
pub fn conv2d_add(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    residual: &Tensor,
) -> Result<Tensor> {
    if super::cudnn_conv::cudnn_applies(x) {
        return super::cudnn_conv::conv2d(x, weight, stride, padding)? + residual;
    }
    if !super::dispatch::custom_applies(x) {
        return x.conv2d(weight, padding, stride, 1, 1)? + residual;
    }
    let (g, o) = Geometry::of(x, weight, stride, padding)?;
    let (ho, wo) = g.output();
    if residual.dims() != [g.n, o, ho, wo] {
        candle_core::bail!(
            "conv2d_add: residual {:?} does not fit the output {:?}",
            residual.dims(),
            [g.n, o, ho, wo]
        );
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &residual.contiguous()?, Conv2dAdd { g, o })
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    /// The geometry of convolving `x` (N, C, H, W) with `weight` (O, C, k, k), and O.
    fn of(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<(Geometry, usize)> {
        let (n, c, h, w) = x.dims4()?;
        let (o, c_w, k, k2) = weight.dims4()?;
        if c != c_w || k != k2 {
            candle_core::bail!("conv2d: input {:?} and weight {:?} do not fit", x.dims(), weight.dims());
        }
        if h + 2 * padding < k || w + 2 * padding < k || stride == 0 {
            candle_core::bail!(
                "conv2d: a {k}×{k} kernel does not fit a {h}×{w} input with padding {padding}"
            );
        }
        Ok((Geometry { n, c, h, w, k, stride, padding }, o))
    }

    fn output(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.padding - self.k) / self.stride + 1,
            (self.w + 2 * self.padding - self.k) / self.stride + 1,
        )
    }

    /// The input row that kernel row `ki` reads at output row `oy`, if inside the image.
    #[inline]
    fn source_row(&self, ki: usize, oy: usize) -> Option<usize> {
        let y = (oy * self.stride + ki).checked_sub(self.padding)?;
        (y < self.h).then_some(y)
    }

    /// The output columns `lo..hi` at which kernel column `kj` reads inside the image (the
    /// others read padding).
    #[inline]
    fn valid_columns(&self, kj: usize, wo: usize) -> (usize, usize) {
        // ox·stride + kj − padding ∈ [0, w)
        let lo = self.padding.saturating_sub(kj).div_ceil(self.stride).min(wo);
        let hi = if self.w + self.padding > kj {
            ((self.w + self.padding - kj - 1) / self.stride + 1).min(wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// For row (channel, ki, kj) and output position (oy, ox): the input pixel, if inside
    /// (the tests' direct convolution).
    #[cfg(test)]
    fn source(&self, ki: usize, kj: usize, oy: usize, ox: usize) -> Option<(usize, usize)> {
        let y = (oy * self.stride + ki) as isize - self.padding as isize;
        let x = (ox * self.stride + kj) as isize - self.padding as isize;
        (y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w)
            .then_some((y as usize, x as usize))
    }
}

impl Geometry {
    /// Rows of the column matrix (C·k·k) and its columns per image (Ho·Wo).
    fn cols_shape(&self) -> (usize, usize) {
        let (ho, wo) = self.output();
        (self.c * self.k * self.k, ho * wo)
    }

    /// For a stride-1 convolution (not pointwise) with `o` outputs and weight `w` (O, C, k, k): the
    /// geometry on its output gradient (N, O, Ho, Wo) and the weight (C, O, k, k), each kernel
    /// turned by 180°, whose convolution is the input gradient.
    fn transposed(&self, o: usize, w: &[f32]) -> Option<(Geometry, Vec<f32>)> {
        if !self.has_transpose() {
            return None;
        }
        let (ho, wo) = self.output();
        let k = self.k;
        let geometry =
            Geometry { n: self.n, c: o, h: ho, w: wo, k, stride: 1, padding: k - 1 - self.padding };
        let mut flipped = vec![0f32; w.len()];
        for oc in 0..o {
            for ch in 0..self.c {
                for ki in 0..k {
                    for kj in 0..k {
                        flipped[((ch * o + oc) * k + (k - 1 - ki)) * k + (k - 1 - kj)] =
                            w[((oc * self.c + ch) * k + ki) * k + kj];
                    }
                }
            }
        }
        Some((geometry, flipped))
    }

    /// Whether [`Geometry::transposed`] applies: stride 1, not pointwise, padding below k.
    fn has_transpose(&self) -> bool {
        self.stride == 1 && !self.is_pointwise() && self.padding < self.k
    }

    /// A 1×1 convolution with stride 1 and no padding: the image is its own column matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// One image (C, H, W) → its column matrix (C·k·k, Ho·Wo); writes every element.
    fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        let (ho, wo) = self.output();
        let (_, columns) = self.cols_shape();
        let same = self.stride == 1 && ho == self.h && wo == self.w;
        // Rows in (channel, ki, kj) order, with no division per row: on an 8×8 plane the
        // divisions cost as much as copying the row.
        let valid: Vec<(usize, usize)> = (0..self.k).map(|kj| self.valid_columns(kj, wo)).collect();
        let mut lines = cols.chunks_exact_mut(columns.max(1));
        if self.stride > 1 {
            let phases = Phases::new(self);
            return with_phase_scratch(phases.len(self.c), |buffer| {
                phases.split(image, buffer);
                let readings = phases.readings();
                for planes in buffer.chunks_exact(phases.per_channel()) {
                    for &reading in &readings {
                        let Some(line) = lines.next() else { return };
                        phases.read_row(planes, line, reading);
                    }
                }
            });
        }
        for plane in image.chunks_exact(self.h * self.w).take(self.c) {
            for ki in 0..self.k {
                for (kj, &(lo, hi)) in valid.iter().enumerate() {
                    let Some(line) = lines.next() else { return };
                    if same {
                        self.shifted_plane(plane, line, ki, kj);
                    } else {
                        self.strided_row(plane, line, ki, kj, (lo, hi));
                    }
                }
            }
        }
    }

    /// One im2col row of any convolution: per output row, the input pixels at columns
    /// `lo..hi` (see [`Geometry::valid_columns`]) and zeros elsewhere.
    fn strided_row(&self, plane: &[f32], line: &mut [f32], ki: usize, kj: usize, (lo, hi): (usize, usize)) {
        let (ho, wo) = self.output();
        for oy in 0..ho {
            let target = &mut line[oy * wo..][..wo];
            match self.source_row(ki, oy).filter(|_| hi > lo) {
                None => target.fill(0.0),
                Some(y) => {
                    target[..lo].fill(0.0);
                    target[hi..].fill(0.0);
                    let first = lo * self.stride + kj - self.padding;
                    let pixels = &plane[y * self.w..][..self.w];
                    if self.stride == 1 {
                        target[lo..hi].copy_from_slice(&pixels[first..first + (hi - lo)]);
                    } else {
                        let sources = pixels[first..].iter().step_by(self.stride);
                        for (t, &v) in target[lo..hi].iter_mut().zip(sources) {
                            *t = v;
                        }
                    }
                }
            }
        }
    }

    /// One im2col row of a stride-1 "same" convolution: the plane shifted by (ki − p, kj − p)
    /// ([`shift_copy`]).
    fn shifted_plane(&self, plane: &[f32], line: &mut [f32], ki: usize, kj: usize) {
        let shift = (ki as isize - self.padding as isize, kj as isize - self.padding as isize);
        shift_copy(plane, line, (self.h, self.w), shift);
    }

    /// The adjoint of [`Geometry::shifted_plane`] ([`shift_add`]).
    fn add_shifted_plane(&self, line: &mut [f32], plane: &mut [f32], ki: usize, kj: usize) {
        let shift = (ki as isize - self.padding as isize, kj as isize - self.padding as isize);
        shift_add(line, plane, (self.h, self.w), shift);
    }

    /// The adjoint of [`Geometry::im2col`]: adds a column matrix into one image (C, H, W).
    /// `cols` is scratch: a stride-1 "same" convolution zeroes the entries that read padding
    /// in it, then adds each row as one shifted block.
    fn col2im(&self, cols: &mut [f32], image: &mut [f32]) {
        let (ho, wo) = self.output();
        let (_, columns) = self.cols_shape();
        let same = self.stride == 1 && ho == self.h && wo == self.w;
        if self.stride > 1 {
            let phases = Phases::new(self);
            with_phase_scratch(phases.len(self.c), |buffer| {
                buffer.fill(0.0);
                let readings = phases.readings();
                let mut lines = cols.chunks_exact_mut(columns.max(1));
                for planes in buffer.chunks_exact_mut(phases.per_channel()) {
                    for &reading in &readings {
                        let Some(line) = lines.next() else { return };
                        phases.add_row(line, planes, reading);
                    }
                }
                phases.merge_into(buffer, image);
            });
            return;
        }
        for ch in 0..self.c {
            let plane = &mut image[ch * self.h * self.w..][..self.h * self.w];
            for ki in 0..self.k {
                for kj in 0..self.k {
                    let row = (ch * self.k + ki) * self.k + kj;
                    if same {
                        self.add_shifted_plane(&mut cols[row * columns..][..columns], plane, ki, kj);
                        continue;
                    }
                    let line = &cols[row * columns..][..columns];
                    let (lo, hi) = self.valid_columns(kj, wo);
                    for oy in 0..ho {
                        let Some(y) = self.source_row(ki, oy).filter(|_| hi > lo) else { continue };
                        let first = lo * self.stride + kj - self.padding;
                        let target = &mut plane[y * self.w..][..self.w];
                        let values = &line[oy * wo + lo..oy * wo + hi];
                        if self.stride == 1 {
                            for (t, v) in target[first..first + values.len()].iter_mut().zip(values) {
                                *t += v;
                            }
                        } else {
                            for (j, v) in values.iter().enumerate() {
                                target[first + j * self.stride] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `line[y·w + x] = plane[(y + dy)·w + (x + dx)]` over an h × w plane, zero where that falls
/// outside it. The rows are contiguous in both, so this is one copy, then zeros for the columns
/// that wrapped into the neighbouring row.
fn shift_copy(plane: &[f32], line: &mut [f32], (h, w): (usize, usize), (dy, dx): (isize, isize)) {
    let (h, w) = (h as isize, w as isize);
    // Output rows whose source row is inside the plane.
    let (first_row, end_row) = ((-dy).max(0), (h - dy).min(h));
    if first_row >= end_row || dx.abs() >= w {
        line.fill(0.0);
        return;
    }
    let start = (first_row * w + (-dx).max(0)) as usize;
    let end = (end_row * w - dx.max(0)) as usize;
    let offset = dy * w + dx;
    line[..start].fill(0.0);
    line[start..end]
        .copy_from_slice(&plane[(start as isize + offset) as usize..(end as isize + offset) as usize]);
    line[end..].fill(0.0);
    for oy in first_row..end_row {
        let row = &mut line[(oy * w) as usize..((oy + 1) * w) as usize];
        if dx < 0 {
            zero_short_run(&mut row[..(-dx) as usize]);
        } else if dx > 0 {
            zero_short_run(&mut row[(w - dx) as usize..]);
        }
    }
}

/// Zeroes the one or two columns a 3×3 or 5×5 kernel's shift pushes out of a row: written as
/// stores, since `fill` there is a call to memset for every row of every im2col line.
#[inline(always)]
fn zero_short_run(run: &mut [f32]) {
    match run {
        [a] => *a = 0.0,
        [a, b] => (*a, *b) = (0.0, 0.0),
        _ => run.fill(0.0),
    }
}

/// The adjoint of [`shift_copy`]: adds the line, shifted back, into the plane, leaving out
/// (after zeroing them in `line`) the entries that fall outside it.
fn shift_add(line: &mut [f32], plane: &mut [f32], (h, w): (usize, usize), (dy, dx): (isize, isize)) {
    let (h, w) = (h as isize, w as isize);
    let (first_row, end_row) = ((-dy).max(0), (h - dy).min(h));
    if first_row >= end_row || dx.abs() >= w {
        return;
    }
    for oy in first_row..end_row {
        let row = &mut line[(oy * w) as usize..((oy + 1) * w) as usize];
        if dx < 0 {
            zero_short_run(&mut row[..(-dx) as usize]);
        } else if dx > 0 {
            zero_short_run(&mut row[(w - dx) as usize..]);
        }
    }
    let start = (first_row * w + (-dx).max(0)) as usize;
    let end = (end_row * w - dx.max(0)) as usize;
    let offset = dy * w + dx;
    let target = &mut plane[(start as isize + offset) as usize..(end as isize + offset) as usize];
    for (t, v) in target.iter_mut().zip(&line[start..end]) {
        *t += v;
    }
}

// The stride-2 gathers and scatters of the phase planes, compiled for AVX-512 and AVX2 too
// ([`cpu_variants`]): with SSE2 alone they were an eighth of the small CNN's step. Copies and
// additions in the same order: the same values on any CPU.
cpu_variants! {
    fn split_into_phases(phases_of: &Phases, image: &[f32], phases: &mut [f32]) {
        let (g, s) = (phases_of.g, phases_of.g.stride);
        if s == 2 {
            return split_into_two_phases(phases_of, image, phases);
        }
        for (plane, target) in image.chunks_exact(g.h * g.w).zip(phases.chunks_exact_mut(phases_of.per_channel()))
        {
            for (index, phase) in target.chunks_exact_mut(phases_of.plane()).enumerate() {
                let (a, b) = (index / s, index % s);
                for (u, line) in phase.chunks_exact_mut(phases_of.cols).enumerate() {
                    let y = u * s + a;
                    let written = match plane[y.min(g.h) * g.w..].get(..g.w).filter(|_| y < g.h) {
                        Some(row) => every_nth(row.get(b..).unwrap_or(&[]), s, line),
                        None => 0,
                    };
                    line[written..].fill(0.0);
                }
            }
        }
    }

    fn merge_phases_into(phases_of: &Phases, phases: &[f32], image: &mut [f32]) {
        let (g, s) = (phases_of.g, phases_of.g.stride);
        for (plane, source) in image.chunks_exact_mut(g.h * g.w).zip(phases.chunks_exact(phases_of.per_channel()))
        {
            for (index, phase) in source.chunks_exact(phases_of.plane()).enumerate() {
                let (a, b) = (index / s, index % s);
                for (u, line) in phase.chunks_exact(phases_of.cols).enumerate() {
                    let y = u * s + a;
                    if y >= g.h || b >= g.w {
                        continue;
                    }
                    add_every_nth(line, &mut plane[y * g.w..][..g.w][b..], s);
                }
            }
        }
    }
}

/// [`split_into_phases`] for stride 2: each image row is read once and dealt into the two
/// phase rows it feeds (even and odd columns), rather than read once per phase.
#[inline(always)]
fn split_into_two_phases(phases_of: &Phases, image: &[f32], phases: &mut [f32]) {
    let (g, cols, plane_len) = (phases_of.g, phases_of.cols, phases_of.plane());
    for (plane, target) in image.chunks_exact(g.h * g.w).zip(phases.chunks_exact_mut(phases_of.per_channel()))
    {
        // Phase (a, b) is plane 2a + b: the even and odd columns of the rows y ≡ a (mod 2).
        let (top, bottom) = target.split_at_mut(2 * plane_len);
        let [(even_0, odd_0), (even_1, odd_1)] =
            [top.split_at_mut(plane_len), bottom.split_at_mut(plane_len)];
        for u in 0..phases_of.rows {
            for a in 0..2 {
                let (even, odd) =
                    if a == 0 { (&mut *even_0, &mut *odd_0) } else { (&mut *even_1, &mut *odd_1) };
                let (even, odd) = (&mut even[u * cols..][..cols], &mut odd[u * cols..][..cols]);
                let y = 2 * u + a;
                if y >= g.h {
                    even.fill(0.0);
                    odd.fill(0.0);
                    continue;
                }
                let row = &plane[y * g.w..][..g.w];
                let pairs = row.chunks_exact(2);
                let last = pairs.remainder().first().copied();
                let full = pairs.len();
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
                // cols = ⌈w/2⌉: an odd row's last pixel is the even phase's last column, and
                // the odd phase's last column is outside the image.
                even[full..].fill(0.0);
                odd[full..].fill(0.0);
                if let Some(v) = last {
                    even[full] = v;
                }
            }
        }
    }
}

/// `target[i] = source[i·s]` for as many i as both allow; returns that count (strides other
/// than 2, which [`split_into_two_phases`] deals with row by row).
#[inline(always)]
fn every_nth(source: &[f32], s: usize, target: &mut [f32]) -> usize {
    let count = source.len().div_ceil(s).min(target.len());
    for (t, v) in target[..count].iter_mut().zip(source.iter().step_by(s)) {
        *t = *v;
    }
    count
}

/// The adjoint of [`every_nth`]: `target[i·s] += source[i]`. Stride 2 (every strided
/// convolution here) has its own loop over `chunks_exact` pairs, which the compiler turns into
/// vector shuffles; `step_by` compiles to a scalar loop.
#[inline(always)]
fn add_every_nth(source: &[f32], target: &mut [f32], s: usize) {
    if s == 2 {
        let mut pairs = target.chunks_exact_mut(2);
        let full = pairs.len().min(source.len());
        for (pair, v) in (&mut pairs).zip(&source[..full]) {
            pair[0] += v;
        }
        if let (Some(t), Some(v)) = (pairs.into_remainder().first_mut(), source.get(full)) {
            *t += v;
        }
    } else {
        for (t, v) in target.iter_mut().step_by(s).zip(source) {
            *t += v;
        }
    }
}

/// Where a kernel offset reads in the phase planes ([`Phases::reading`]).
type Reading = (usize, isize, isize, usize, usize);

/// A strided convolution's image as stride² phase planes per channel: phase (a, b) holds the
/// pixels (s·u + a, s·v + b), zero where that falls outside the image. A kernel offset then
/// reads one phase shifted by whole pixels, so an im2col row is a copy of contiguous runs (and
/// col2im adds contiguous runs) instead of a gather (scatter) of every s-th pixel, which took a
/// fifth of the small CNN's step.
#[derive(Debug, Clone, Copy)]
struct Phases {
    g: Geometry,
    /// Rows and columns of a phase plane: ⌈H/s⌉ × ⌈W/s⌉.
    rows: usize,
    cols: usize,
}

impl Phases {
    fn new(g: &Geometry) -> Self {
        Phases { g: *g, rows: g.h.div_ceil(g.stride), cols: g.w.div_ceil(g.stride) }
    }

    fn plane(&self) -> usize {
        self.rows * self.cols
    }

    fn per_channel(&self) -> usize {
        self.g.stride * self.g.stride * self.plane()
    }

    fn len(&self, channels: usize) -> usize {
        channels * self.per_channel()
    }

    /// Kernel offset `kk` along one axis: the phase it reads and its shift in phase pixels
    /// (`kk − p = s·shift + phase`).
    fn source(&self, kk: usize) -> (usize, isize) {
        let (s, d) = (self.g.stride as isize, kk as isize - self.g.padding as isize);
        (d.rem_euclid(s) as usize, d.div_euclid(s))
    }

    /// For kernel offsets (ki, kj): the phase plane's index within a channel, the row shift,
    /// the column shift, and the output columns `lo..hi` that read inside the phase plane.
    fn reading(&self, ki: usize, kj: usize) -> Reading {
        let ((a, qi), (b, qj)) = (self.source(ki), self.source(kj));
        let (_, wo) = self.g.output();
        let lo = ((-qj).max(0) as usize).min(wo);
        let hi = ((self.cols as isize - qj).max(0) as usize).min(wo).max(lo);
        (a * self.g.stride + b, qi, qj, lo, hi)
    }

    /// Writes every element of `phases` (C planes of stride² phases) from `image`.
    fn split(&self, image: &[f32], phases: &mut [f32]) {
        split_into_phases(self, image, phases)
    }

    /// The adjoint of [`Phases::split`]: adds each phase pixel into its image pixel.
    fn merge_into(&self, phases: &[f32], image: &mut [f32]) {
        merge_phases_into(self, phases, image)
    }

    /// [`Phases::reading`] of every kernel offset, in weight order.
    fn readings(&self) -> Vec<Reading> {
        let k = self.g.k;
        (0..k * k).map(|kk| self.reading(kk / k, kk % k)).collect()
    }

    /// Whether a phase plane has the output's size, so that a row is one shifted plane.
    fn output_sized(&self) -> bool {
        (self.rows, self.cols) == self.g.output()
    }

    /// One im2col row (every element written) from a channel's phase planes.
    fn read_row(&self, planes: &[f32], line: &mut [f32], reading: Reading) {
        let (ho, wo) = self.g.output();
        let (index, qi, qj, lo, hi) = reading;
        let phase = &planes[index * self.plane()..][..self.plane()];
        if self.output_sized() {
            return shift_copy(phase, line, (ho, wo), (qi, qj));
        }
        for (oy, target) in line.chunks_exact_mut(wo).take(ho).enumerate() {
            let u = oy as isize + qi;
            if u < 0 || u >= self.rows as isize || hi == lo {
                target.fill(0.0);
                continue;
            }
            target[..lo].fill(0.0);
            target[hi..].fill(0.0);
            let start = u as usize * self.cols + (lo as isize + qj) as usize;
            target[lo..hi].copy_from_slice(&phase[start..start + (hi - lo)]);
        }
    }

    /// The adjoint of [`Phases::read_row`]: adds the row into a channel's phase planes (`line`
    /// is scratch, as in [`shift_add`]).
    fn add_row(&self, line: &mut [f32], planes: &mut [f32], reading: Reading) {
        let (ho, wo) = self.g.output();
        let (index, qi, qj, lo, hi) = reading;
        let phase = &mut planes[index * self.plane()..][..self.plane()];
        if self.output_sized() {
            return shift_add(line, phase, (ho, wo), (qi, qj));
        }
        for (oy, values) in line.chunks_exact(wo).take(ho).enumerate() {
            let u = oy as isize + qi;
            if u < 0 || u >= self.rows as isize || hi == lo {
                continue;
            }
            let start = u as usize * self.cols + (lo as isize + qj) as usize;
            for (t, v) in phase[start..start + (hi - lo)].iter_mut().zip(&values[lo..hi]) {
                *t += v;
            }
        }
    }
}

thread_local! {
    /// Each thread's column matrix, reused across images and steps.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's phase planes of one image (`Phases`).
    static PHASE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's phase buffer of at least `len` values (contents arbitrary).
fn with_phase_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PHASE_SCRATCH.with(|cell| {
        let mut buffer = cell.borrow_mut();
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        f(&mut buffer[..len])
    })
}

/// Runs `f` with this thread's scratch buffer of at least `len` values (contents arbitrary).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buffer = cell.borrow_mut();
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        f(&mut buffer[..len])
    })
}

/// A row-major or transposed view of a matrix held in a slice: element (i, j) is at
/// `i·row_stride + j·col_stride`.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Matrix { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    fn transposed(self) -> Self {
        Matrix {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// Where a matrix product goes.
enum Dst<'a> {
    /// Slots of a buffer being filled ([`filled_in_chunks`]): overwritten, never read.
    Fill(&'a mut [MaybeUninit<f32>]),
    /// Values overwritten with the product.
    Set(&'a mut [f32]),
    /// Values the product is added to.
    Add(&'a mut [f32]),
}

impl Dst<'_> {
    fn len(&self) -> usize {
        match self {
            Dst::Fill(slots) => slots.len(),
            Dst::Set(values) | Dst::Add(values) => values.len(),
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` for [`Dst::Add`]) for a row-major `dst` of exactly
/// lhs.rows × rhs.cols values, single-threaded.
fn matmul_into(dst: Dst, lhs: Matrix, rhs: Matrix) {
    debug_assert_eq!(dst.len(), lhs.rows * rhs.cols, "matmul_into: destination size");
    matmul_strided(dst, rhs.cols, 1, lhs, rhs)
}

/// `dst = lhs · rhs` (or `+=`) where dst element (i, j) is at `i·dst_row_stride + j·dst_col_stride`.
/// Panics when an operand or the destination is too short for its extent.
fn matmul_strided(dst: Dst, dst_row_stride: usize, dst_col_stride: usize, lhs: Matrix, rhs: Matrix) {
    assert!(lhs.cols == rhs.rows && lhs.fits() && rhs.fits(), "matmul_into: operands do not fit");
    let (dst_len, accumulate) = (dst.len(), matches!(dst, Dst::Add(_)));
    let dst: *mut f32 = match dst {
        Dst::Fill(slots) => slots.as_mut_ptr().cast(),
        Dst::Set(values) | Dst::Add(values) => values.as_mut_ptr(),
    };
    assert!(
        lhs.rows == 0
            || rhs.cols == 0
            || (lhs.rows - 1) * dst_row_stride + (rhs.cols - 1) * dst_col_stride < dst_len,
        "matmul_into: the destination does not fit"
    );
    // SAFETY: the operands' and the destination's extents were checked above; the destination
    // is an exclusively borrowed slice (no other access during the call), read only when
    // accumulating, which only `Dst::Add` (initialised values) does: gemm writes the product
    // without reading `dst` when `read_dst` is false, so `Dst::Fill`'s slots may be uninitialised.
    unsafe {
        gemm::gemm(
            lhs.rows,
            rhs.cols,
            lhs.cols,
            dst,
            dst_col_stride as isize,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The convolution of `x` (N, C, H, W) with `w` (O, C, k, k): per image im2col and one product
/// W · cols into the (O, Ho·Wo) output, images in parallel.
fn convolve(g: Geometry, o: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    convolve_then_add(g, o, x, w, None)
}

/// [`convolve`], then each image's output plus its part of `residual` (N, O, Ho, Wo), if any.
fn convolve_then_add(g: Geometry, o: usize, x: &[f32], w: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let (rows, columns) = g.cols_shape();
    let weight = Matrix::row_major(w, o, rows);
    let image_len = g.c * g.h * g.w;
    let fill = |b: usize, chunk: &mut Chunk| {
        let image = &x[b * image_len..][..image_len];
        if g.is_pointwise() {
            matmul_into(Dst::Fill(chunk.slots()), weight, Matrix::row_major(image, rows, columns));
        } else {
            with_scratch(rows * columns, |cols| {
                g.im2col(image, cols);
                matmul_into(Dst::Fill(chunk.slots()), weight, Matrix::row_major(cols, rows, columns));
            });
        }
        if let Some(residual) = residual {
            // SAFETY: the product above wrote every element of the chunk.
            let out = unsafe { chunk.written() };
            for (v, r) in out.iter_mut().zip(&residual[b * o * columns..][..o * columns]) {
                *v += r;
            }
        }
    };
    // SAFETY: each image's product writes all of its O·Ho·Wo outputs (no accumulation).
    unsafe { filled_in_chunks(g.n * o * columns, o * columns, fill) }
}

/// The convolution: (N, C, H, W) ⊛ (O, C, k, k) → (N, O, Ho, Wo).
struct Conv2d {
    g: Geometry,
    o: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (self.g, self.o);
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let out = convolve(g, o, x, w);
        let (ho, wo) = g.output();
        Ok((CpuStorage::F32(out), Shape::from((g.n, o, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        convolution_gradients(self.g, self.o, x, w, grad)
    }
}

/// The convolution plus a residual: (N, C, H, W) ⊛ (O, C, k, k) + (N, O, Ho, Wo).
struct Conv2dAdd {
    g: Geometry,
    o: usize,
}

impl candle_core::CustomOp3 for Conv2dAdd {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (self.g, self.o);
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let residual = contiguous_f32(s3, l3, "conv2d residual")?;
        let out = convolve_then_add(g, o, x, w, Some(residual));
        let (ho, wo) = g.output();
        Ok((CpuStorage::F32(out), Shape::from((g.n, o, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = convolution_gradients(self.g, self.o, x, w, grad)?;
        Ok((dx, dw, residual.track_op().then(|| grad.clone())))
    }
}

/// ∂L/∂x (when `x` needs it) and ∂L/∂W (when `w` does) of a convolution from ∂L/∂out.
fn convolution_gradients(
    g: Geometry,
    o: usize,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    if w.track_op() && g.has_transpose() {
        // Stride 1: both gradients from one im2col of the output gradient per image.
        let input = x.track_op();
        let op = StrideOneGradients { g, o, input };
        let both = grad.apply_op3_no_bwd(w, &x.contiguous()?, &op)?;
        let input_len = if input { x.elem_count() } else { 0 };
        let dx = if input { Some(both.narrow(0, 0, input_len)?.reshape(x.shape())?) } else { None };
        let dw = both.narrow(0, input_len, w.elem_count())?.reshape(w.shape())?;
        return Ok((dx, Some(dw)));
    }
    // The first layer's input (the images) needs no gradient, unless asked for (ODIN).
    let dx = if x.track_op() { Some(grad.apply_op2_no_bwd(w, &InputGradient(g))?) } else { None };
    let dw = if w.track_op() { Some(x.apply_op2_no_bwd(&grad, &WeightGradient(g, o))?) } else { None };
    Ok((dx, dw))
}

/// ∂L/∂x from (∂L/∂out, weight) alone (the weights need no gradient, or the convolution is
/// strided): per image a convolution of the output gradient with the flipped kernel for
/// stride 1 ([`Geometry::transposed`]), else col2im(Wᵀ · grad).
struct InputGradient(Geometry);

impl CustomOp2 for InputGradient {
    fn name(&self) -> &'static str {
        "conv2d-input-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let grad = contiguous_f32(s1, l1, "conv2d gradient")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let (rows, columns) = g.cols_shape();
        let o = w.len() / rows;
        if let Some((transposed, flipped)) = g.transposed(o, w) {
            // A stride-1 convolution's input gradient is itself a convolution: of the output
            // gradient with the flipped kernel, channels swapped, padding k − 1 − p. That runs
            // im2col and one product per image, where Wᵀ · grad then col2im would write a
            // C·k·k × H·W matrix and scatter-add it back.
            let dx = convolve(transposed, g.c, grad, &flipped);
            return Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))));
        }
        let weight_t = Matrix::row_major(w, o, rows).transposed();
        let image_len = g.c * g.h * g.w;
        let fill = |b: usize, chunk: &mut Chunk| {
            let grad_b = Matrix::row_major(&grad[b * o * columns..][..o * columns], o, columns);
            if g.is_pointwise() {
                matmul_into(Dst::Fill(chunk.slots()), weight_t, grad_b);
            } else {
                let image = chunk.fill_zero();
                with_scratch(rows * columns, |cols| {
                    matmul_into(Dst::Set(cols), weight_t, grad_b);
                    g.col2im(cols, image);
                });
            }
        };
        // SAFETY: a pointwise product writes the whole image; otherwise the image is zeroed
        // before col2im adds into it.
        let dx = unsafe { filled_in_chunks(g.n * image_len, image_len, fill) };
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// Images per partial sum of the weight gradient.
const IMAGES_PER_PARTIAL_SUM: usize = 8;

/// The element-wise sum of the per-group partial sums, always in the same order (the first
/// group, then the last, then the second, third, …), whatever the number of threads.
fn add_partial_sums(mut sums: Vec<Vec<f32>>) -> Vec<f32> {
    let mut total = sums.swap_remove(0);
    for other in sums {
        total.iter_mut().zip(other).for_each(|(t, v)| *t += v);
    }
    total
}

/// Both gradients of a stride-1 convolution from (∂L/∂out, weight, x), with one im2col per
/// image: that of the output gradient in the transposed geometry ([`Geometry::transposed`]).
/// Its column matrix G (O·k·k × H·W) gives the input gradient as W′ · G (W′ the flipped,
/// channel-swapped kernel) and the weight gradient as Σ over images of x · Gᵀ (C × O·k·k), read
/// back with the kernel flipped: ∂W[o, c, ki, kj] = Σ_q x[c, q] · G[(o, k−1−ki, k−1−kj), q]. So
/// the backward runs one im2col per image instead of two. Returns the input gradient (when
/// `input`) followed by the weight gradient, flat. The weight gradient does not depend on
/// `input`, and is summed in fixed groups of images as in [`WeightGradient`].
struct StrideOneGradients {
    g: Geometry,
    o: usize,
    input: bool,
}

impl candle_core::CustomOp3 for StrideOneGradients {
    fn name(&self) -> &'static str {
        "conv2d-stride-1-gradients"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (self.g, self.o);
        let grad = contiguous_f32(s1, l1, "conv2d gradient")?;
        let w = contiguous_f32(s2, l2, "conv2d weight")?;
        let x = contiguous_f32(s3, l3, "conv2d input")?;
        let Some((t, flipped)) = g.transposed(o, w) else {
            candle_core::bail!("conv2d: stride-1 gradients of a {:?} convolution", g)
        };
        // The transposed geometry's column matrix: rows (o, ki, kj), one column per input pixel.
        let (rows, columns) = t.cols_shape();
        let (image_len, grad_len) = (g.c * g.h * g.w, o * t.h * t.w);
        let flipped = Matrix::row_major(&flipped, g.c, rows);
        let per_group = IMAGES_PER_PARTIAL_SUM;
        let input_len = if self.input { g.n * image_len } else { 0 };
        let mut out: Vec<f32> = Vec::with_capacity(input_len + o * g.c * g.k * g.k);
        let group_sum = |group: usize, mut dx: Option<&mut [MaybeUninit<f32>]>| {
            // ∂W′ (C × O·k·k), column-major: (c, r) at r·C + c.
            let mut acc = vec![0f32; g.c * rows];
            for b in group * per_group..((group + 1) * per_group).min(g.n) {
                let grad_b = &grad[b * grad_len..][..grad_len];
                let x_b = Matrix::row_major(&x[b * image_len..][..image_len], g.c, columns);
                with_scratch(rows * columns, |cols| {
                    t.im2col(grad_b, cols);
                    let cols = Matrix::row_major(cols, rows, columns);
                    if let Some(dx) = dx.as_deref_mut() {
                        let target = &mut dx[(b - group * per_group) * image_len..][..image_len];
                        // The product writes all C·H·W values of this image's slot.
                        matmul_into(Dst::Fill(target), flipped, cols);
                    }
                    matmul_strided(Dst::Add(&mut acc), 1, g.c, x_b, cols.transposed());
                });
            }
            acc
        };
        let groups = g.n.div_ceil(per_group).max(1);
        let sums: Vec<Vec<f32>> = if self.input {
            out.spare_capacity_mut()[..input_len]
                .par_chunks_mut(per_group * image_len)
                .enumerate()
                .map(|(group, dx)| group_sum(group, Some(dx)))
                .collect()
        } else {
            (0..groups).into_par_iter().map(|group| group_sum(group, None)).collect()
        };
        // SAFETY: every image's input gradient was written above (when asked for).
        unsafe { out.set_len(input_len) };
        let total = add_partial_sums(sums);
        let k = g.k;
        for oc in 0..o {
            for ch in 0..g.c {
                for ki in 0..k {
                    for kj in 0..k {
                        let r = (oc * k + (k - 1 - ki)) * k + (k - 1 - kj);
                        out.push(total[r * g.c + ch]);
                    }
                }
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// ∂L/∂W from (x, ∂L/∂out): Σ over images of grad · colsᵀ, in partial sums over fixed groups
/// of images computed in parallel.
struct WeightGradient(Geometry, usize);

impl CustomOp2 for WeightGradient {
    fn name(&self) -> &'static str {
        "conv2d-weight-gradient"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (self.0, self.1);
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let grad = contiguous_f32(s2, l2, "conv2d gradient")?;
        let (rows, columns) = g.cols_shape();
        let image_len = g.c * g.h * g.w;
        // Fixed groups of images, summed in a fixed order: the result does not depend on the
        // number of threads (determinism across machines).
        let per_group = IMAGES_PER_PARTIAL_SUM;
        let groups = g.n.div_ceil(per_group).max(1);
        let partial = |group: usize| {
            let mut acc = vec![0f32; o * rows];
            for b in group * per_group..((group + 1) * per_group).min(g.n) {
                let grad_b = Matrix::row_major(&grad[b * o * columns..][..o * columns], o, columns);
                let image = &x[b * image_len..][..image_len];
                // `acc` is the gradient transposed (rows × o), so that the product's
                // destination is column-major, the orientation the gemm kernel works in without
                // swapping the operands: the gradient (o × columns) is then the packed operand,
                // not the larger column matrix.
                if g.is_pointwise() {
                    let cols_t = Matrix::row_major(image, rows, columns).transposed();
                    matmul_strided(Dst::Add(&mut acc), 1, o, grad_b, cols_t);
                } else {
                    with_scratch(rows * columns, |cols| {
                        g.im2col(image, cols);
                        let cols_t = Matrix::row_major(cols, rows, columns).transposed();
                        matmul_strided(Dst::Add(&mut acc), 1, o, grad_b, cols_t);
                    });
                }
            }
            acc
        };
        let sums: Vec<Vec<f32>> = (0..groups).into_par_iter().map(partial).collect();
        let total_t = add_partial_sums(sums);
        let total = (0..o * rows).map(|i| total_t[(i % rows) * o + i / rows]).collect();
        Ok((CpuStorage::F32(total), Shape::from((o, g.c, g.k, g.k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    /// Direct loops in f64: the output, and the input and weight gradients of Σ probe·output.
    fn reference(
        x: &Tensor,
        w: &Tensor,
        probe: &Tensor,
        g: Geometry,
        o: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (xv, wv, pv) = (values(x), values(w), values(probe));
        let (ho, wo) = g.output();
        let (k, c) = (g.k, g.c);
        let mut out = vec![0.0; g.n * o * ho * wo];
        let mut dx = vec![0.0; xv.len()];
        let mut dw = vec![0.0; wv.len()];
        for b in 0..g.n {
            for oc in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let oi = ((b * o + oc) * ho + oy) * wo + ox;
                        for ch in 0..c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    if let Some((y, xx)) = g.source(ki, kj, oy, ox) {
                                        let xi = ((b * c + ch) * g.h + y) * g.w + xx;
                                        let wi = ((oc * c + ch) * k + ki) * k + kj;
                                        out[oi] += xv[xi] * wv[wi];
                                        dx[xi] += pv[oi] * wv[wi];
                                        dw[wi] += pv[oi] * xv[xi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, dx, dw)
    }

    fn close(a: &[f64], b: &[f64], tolerance: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < tolerance, "{what}: differs by {worst}");
    }

    /// Outputs and both gradients against direct loops, for strides, paddings, 1×1 kernels and
    /// odd sizes; and against candle's own conv2d where its backward works (candle's input
    /// gradient has the wrong shape when the kernel does not tile the padded input exactly).
    #[test]
    fn matches_direct_convolution_and_candle_with_gradients() {
        let cases = [
            // (n, c, h, w, o, k, stride, padding)
            (2, 3, 7, 5, 4, 3, 1, 1),
            (3, 2, 9, 9, 5, 3, 2, 1),
            (2, 4, 6, 6, 3, 1, 1, 0),
            (1, 3, 8, 7, 2, 3, 2, 0),
            (2, 2, 5, 6, 3, 1, 2, 0),
            (2, 3, 11, 10, 4, 5, 3, 2),
            // Strided, with phase planes larger than the output (row by row, not one shift).
            (2, 2, 10, 7, 3, 3, 2, 2),
            // Stride-1 "same" convolutions (the shifted-plane im2col): 5×5, and a one-pixel-wide image.
            (2, 2, 6, 7, 3, 5, 1, 2),
            (1, 2, 4, 1, 2, 3, 1, 1),
        ];
        for (seed, &(n, c, h, w, o, k, stride, padding)) in cases.iter().enumerate() {
            let g = Geometry { n, c, h, w, k, stride, padding };
            let x = Var::from_tensor(&crate::math::rng::test_images(seed as u64, &[n, c, h, w])).unwrap();
            let weight = Var::from_tensor(
                &(crate::math::rng::test_images(100 + seed as u64, &[o, c, k, k]) - 0.5).unwrap(),
            )
            .unwrap();
            let ours = conv2d(x.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
            let probe = crate::math::rng::test_images(300 + seed as u64, ours.dims());
            let (out, dx, dw) = reference(x.as_tensor(), weight.as_tensor(), &probe, g, o);
            close(&values(&ours), &out, 1e-5, &format!("case {seed} output"));
            let grads = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                &values(grads.get(x.as_tensor()).unwrap()),
                &dx,
                1e-5,
                &format!("case {seed} input gradient"),
            );
            close(
                &values(grads.get(weight.as_tensor()).unwrap()),
                &dw,
                1e-5,
                &format!("case {seed} weight gradient"),
            );

            let tiles = (h + 2 * padding - k) % stride == 0 && (w + 2 * padding - k) % stride == 0;
            if tiles {
                let theirs = x.as_tensor().conv2d(weight.as_tensor(), padding, stride, 1, 1).unwrap();
                assert!(max_difference(&ours, &theirs) < 1e-5, "case {seed}: differs from candle");
                let theirs_grads = (&theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for var in [&x, &weight] {
                    let d = max_difference(
                        grads.get(var.as_tensor()).unwrap(),
                        theirs_grads.get(var.as_tensor()).unwrap(),
                    );
                    assert!(d < 1e-5, "case {seed}: gradient differs from candle's by {d}");
                }
            }
        }
    }

    /// With fixed weights (ODIN's input gradient through an evaluation network) the input
    /// gradient alone takes its own path ([`InputGradient`]); it matches the direct loops for
    /// strides 1 and 2 and the input gradient computed together with the weight gradient.
    #[test]
    fn the_input_gradient_with_fixed_weights_matches_direct_loops() {
        for (seed, stride) in [(21u64, 1usize), (22, 2)] {
            let (n, c, h, w, o, k, padding) = (2, 3, 7, 6, 4, 3, 1);
            let g = Geometry { n, c, h, w, k, stride, padding };
            let x = Var::from_tensor(&crate::math::rng::test_images(seed, &[n, c, h, w])).unwrap();
            let weights = (crate::math::rng::test_images(seed + 10, &[o, c, k, k]) - 0.5).unwrap();
            let out = conv2d(x.as_tensor(), &weights, stride, padding).unwrap();
            let probe = crate::math::rng::test_images(seed + 20, out.dims());
            let (_, dx, _) = reference(x.as_tensor(), &weights, &probe, g, o);
            let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let alone = values(grads.get(x.as_tensor()).unwrap());
            close(&alone, &dx, 1e-5, &format!("stride {stride}: input gradient"));
            let weight = Var::from_tensor(&weights).unwrap();
            let both = conv2d(x.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
            let grads = (&both * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            close(&alone, &values(grads.get(x.as_tensor()).unwrap()), 1e-5, "alone and together");
        }
    }

    /// conv2d_add gives what conv2d followed by a sum gives, to the bit, forward and backward
    /// (input, weight and residual gradients), stride 1 and 2; a residual of the wrong shape is
    /// an error.
    #[test]
    fn conv2d_add_equals_the_convolution_plus_the_residual() {
        for (seed, (stride, padding)) in [(1usize, 1usize), (2, 1)].into_iter().enumerate() {
            let (n, c, h, w, o, k) = (3, 2, 8, 7, 4, 3);
            let x = Var::from_tensor(&crate::math::rng::test_images(seed as u64, &[n, c, h, w])).unwrap();
            let weight = Var::from_tensor(
                &(crate::math::rng::test_images(50 + seed as u64, &[o, c, k, k]) - 0.5).unwrap(),
            )
            .unwrap();
            let plain = conv2d(x.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
            let residual =
                Var::from_tensor(&crate::math::rng::test_images(70 + seed as u64, plain.dims())).unwrap();
            let fused =
                conv2d_add(x.as_tensor(), weight.as_tensor(), stride, padding, residual.as_tensor()).unwrap();
            let summed = (&plain + residual.as_tensor()).unwrap();
            assert_eq!(values(&fused), values(&summed), "stride {stride} output");
            let probe = crate::math::rng::test_images(90 + seed as u64, plain.dims());
            let fused_grads = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let summed_grads = (&summed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("input", &x), ("weight", &weight), ("residual", &residual)] {
                assert_eq!(
                    values(fused_grads.get(var.as_tensor()).unwrap()),
                    values(summed_grads.get(var.as_tensor()).unwrap()),
                    "stride {stride} {name} gradient"
                );
            }
            let wrong =
                Tensor::zeros((n, o, 2, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            assert!(conv2d_add(x.as_tensor(), weight.as_tensor(), stride, padding, &wrong).is_err());
        }
    }

    #[test]
    fn every_nth_and_its_adjoint_match_step_by() {
        for (len, s, room) in [(7, 2, 4), (6, 2, 3), (7, 2, 3), (6, 2, 5), (8, 3, 3), (1, 2, 1), (0, 2, 2)] {
            let source: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            let expected: Vec<f32> = source.iter().step_by(s).take(room).copied().collect();
            let mut target = vec![-1f32; room];
            let count = every_nth(&source, s, &mut target);
            assert_eq!(&target[..count], &expected[..], "every_nth len {len} s {s} room {room}");
            assert!(target[count..].iter().all(|&v| v == -1.0));
            let mut sums = vec![0.5f32; len];
            add_every_nth(&expected, &mut sums, s);
            let mut reference = vec![0.5f32; len];
            for (t, v) in reference.iter_mut().step_by(s).zip(&expected) {
                *t += v;
            }
            assert_eq!(sums, reference, "add_every_nth len {len} s {s} room {room}");
        }
    }

    /// An input that needs no gradient (the images) gets none, and the weight gradient is the
    /// same as when the input is a variable.
    #[test]
    fn the_input_gradient_is_skipped_when_nothing_needs_it() {
        let x = crate::math::rng::test_images(7, &[3, 2, 6, 5]);
        let weight = Var::from_tensor(&crate::math::rng::test_images(8, &[4, 2, 3, 3])).unwrap();
        let probe = crate::math::rng::test_images(9, &[3, 4, 6, 5]);
        let plain = conv2d(&x, weight.as_tensor(), 1, 1).unwrap();
        let grads = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let x_var = Var::from_tensor(&x).unwrap();
        let tracked = conv2d(x_var.as_tensor(), weight.as_tensor(), 1, 1).unwrap();
        let tracked_grads = (&tracked * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(tracked_grads.get(x_var.as_tensor()).is_some());
        let d = max_difference(
            grads.get(weight.as_tensor()).unwrap(),
            tracked_grads.get(weight.as_tensor()).unwrap(),
        );
        assert_eq!(d, 0.0);
    }

    /// Both gradients are bit-identical whatever the number of threads, for stride 1 (one
    /// im2col of the output gradient) and stride 2 (im2col of the input, col2im).
    #[test]
    fn gradients_do_not_depend_on_the_number_of_threads() {
        let x = crate::math::rng::test_images(11, &[19, 3, 9, 7]);
        let weights = crate::math::rng::test_images(13, &[4, 3, 3, 3]);
        let gradient = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut all = Vec::new();
                for stride in [1, 2] {
                    let input = Var::from_tensor(&x).unwrap();
                    let weight = Var::from_tensor(&weights).unwrap();
                    let out = conv2d(input.as_tensor(), weight.as_tensor(), stride, 1).unwrap();
                    let probe = crate::math::rng::test_images(12, out.dims());
                    let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    all.extend(values(grads.get(weight.as_tensor()).unwrap()));
                    all.extend(values(grads.get(input.as_tensor()).unwrap()));
                }
                all
            })
        };
        let one = gradient(1);
        assert_eq!(one, gradient(2));
        assert_eq!(one, gradient(3));
    }
}
