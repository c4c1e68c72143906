//! A CPU 2-D convolution as im2col + one matrix product, with gradients: candle's own CPU
//! conv2d runs at 5–30 GFLOP/s and its backward at 2–18 (../shared/CANDLE_NOTES.md), while its
//! matmul (the `gemm` crate) reaches ~120. `im2col` lays the input out as a
//! (C·k·k) × (N·Ho·Wo) matrix; the convolution is W(O × C·k·k) · cols, reshaped and transposed
//! to (N, O, Ho, Wo). The matmul's own backward gives both gradients through `col2im`, the
//! adjoint of `im2col`. Other devices keep candle's conv2d.
use super::buffers::filled_in_chunks;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Convolution without bias, square kernel, equal stride and padding on both axes.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let (n, c, h, w) = x.dims4()?;
    let (o, c_w, k, k2) = weight.dims4()?;
    if c != c_w || k != k2 {
        candle_core::bail!("conv2d: input {:?} and weight {:?} do not fit", x.dims(), weight.dims());
    }
    let geometry = Geometry { n, c, h, w, k, stride, padding };
    let (ho, wo) = geometry.output();
    let cols = if k == 1 && stride == 1 && padding == 0 {
        // A 1×1 convolution needs no im2col: channels become rows.
        x.transpose(0, 1)?.reshape((c, n * h * w))?
    } else {
        x.contiguous()?.apply_op1(Im2Col(geometry))?
    };
    let out = weight.reshape((o, c * k * k))?.matmul(&cols)?; // (O, N·Ho·Wo)
    out.reshape((o, n, ho, wo))?.transpose(0, 1)?.contiguous()
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

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what}: only f32 is supported") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// (N, C, H, W) → (C·k·k, N·Ho·Wo).
struct Im2Col(Geometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let input = f32_slice(storage, layout, "im2col")?;
        let (ho, wo) = g.output();
        let columns = g.n * ho * wo;
        let rows = g.c * g.k * g.k;
        // SAFETY: every (batch, output row) segment of each row is written: zeros where the
        // kernel row falls in the padding, else zeros | gathered pixels | zeros.
        let out = unsafe {
            filled_in_chunks(rows * columns, columns, |row, line| {
                let (ch, ki, kj) = (row / (g.k * g.k), (row / g.k) % g.k, row % g.k);
                let (lo, hi) = g.valid_columns(kj, wo);
                for b in 0..g.n {
                    let plane = &input[(b * g.c + ch) * g.h * g.w..][..g.h * g.w];
                    for oy in 0..ho {
                        let start = (b * ho + oy) * wo;
                        match g.source_row(ki, oy) {
                            None => line.fill(start..start + wo, 0.0),
                            Some(y) => {
                                line.fill(start..start + lo, 0.0);
                                if hi == lo {
                                    line.fill(start + lo..start + wo, 0.0);
                                    continue;
                                }
                                let first = lo * g.stride + kj - g.padding;
                                let pixels = &plane[y * g.w..][..g.w];
                                if g.stride == 1 {
                                    line.copy_at(start + lo, &pixels[first..first + (hi - lo)]);
                                } else {
                                    for (j, ox) in (lo..hi).enumerate() {
                                        line.set(start + ox, pixels[first + j * g.stride]);
                                    }
                                }
                                line.fill(start + hi..start + wo, 0.0);
                            }
                        }
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, columns))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

/// The adjoint of [`Im2Col`]: (C·k·k, N·Ho·Wo) → (N, C, H, W), summing overlapping windows.
struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = f32_slice(storage, layout, "col2im")?;
        let (ho, wo) = g.output();
        let columns = g.n * ho * wo;
        let mut out = vec![0f32; g.n * g.c * g.h * g.w];
        // One output plane per (batch, channel): no two tasks write the same pixel.
        out.par_chunks_mut(g.h * g.w).enumerate().for_each(|(plane_index, plane)| {
            let (b, ch) = (plane_index / g.c, plane_index % g.c);
            for ki in 0..g.k {
                for kj in 0..g.k {
                    let row = (ch * g.k + ki) * g.k + kj;
                    let line = &cols[row * columns + b * ho * wo..][..ho * wo];
                    let (lo, hi) = g.valid_columns(kj, wo);
                    for oy in 0..ho {
                        let Some(y) = g.source_row(ki, oy).filter(|_| hi > lo) else { continue };
                        let first = lo * g.stride + kj - g.padding;
                        let target = &mut plane[y * g.w..][..g.w];
                        let values = &line[oy * wo + lo..oy * wo + hi];
                        if g.stride == 1 {
                            for (t, v) in target[first..first + values.len()].iter_mut().zip(values) {
                                *t += v;
                            }
                        } else {
                            for (j, v) in values.iter().enumerate() {
                                target[first + j * g.stride] += v;
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
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
        ];
        for (seed, &(n, c, h, w, o, k, stride, padding)) in cases.iter().enumerate() {
            let g = Geometry { n, c, h, w, k, stride, padding };
            let x = Var::from_tensor(&crate::rng::test_images(seed as u64, &[n, c, h, w])).unwrap();
            let weight =
                Var::from_tensor(&(crate::rng::test_images(100 + seed as u64, &[o, c, k, k]) - 0.5).unwrap())
                    .unwrap();
            let ours = conv2d(x.as_tensor(), weight.as_tensor(), stride, padding).unwrap();
            let probe = crate::rng::test_images(300 + seed as u64, ours.dims());
            let (out, dx, dw) = reference(x.as_tensor(), weight.as_tensor(), &probe, g, o);
            close(&values(&ours), &out, 1e-5, &format!("case {seed} output"));
            let grads = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            close(
                &values(grads.get(x.as_tensor()).unwrap()),
                &dx,
                1e-4,
                &format!("case {seed} input gradient"),
            );
            close(
                &values(grads.get(weight.as_tensor()).unwrap()),
                &dw,
                1e-4,
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
                    assert!(d < 1e-4, "case {seed}: gradient differs from candle's by {d}");
                }
            }
        }
    }
}
