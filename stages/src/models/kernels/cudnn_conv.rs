//! 2-D convolution through cuDNN on CUDA: forward, backward-data and backward-filter as three
//! candle custom ops, chosen at run time when the library can be loaded ([`cudnn_applies`]), in
//! place of candle's CUDA convolution (im2col + cuBLAS forward and weight gradient, a naive
//! direct kernel for the input gradient).
//!
//! cuDNN runs in full f32 (`CUDNN_FMA_MATH`: no TF32, which PyTorch allows for convolutions by
//! default) and with deterministic algorithms only, picked by cuDNN's heuristics once per
//! geometry: the same recipe gives the same bytes run after run, and the GPU check compares the
//! values with the CPU's kernels. `PIPELINE_CUDNN=0` turns it off (candle's path).
//!
//! Each op also has a CPU implementation, a direct convolution with f64 sums written from the
//! definition: it is what the tests hold the ops' wiring (shapes, the backward pass) to, and
//! it is never on a training path (the CPU has its own kernels in `conv`).
use super::buffers::contiguous_f32;
use super::conv_geometry::Geometry;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Whether convolutions of `x` go through cuDNN: f32 on a CUDA device, in a build with cuDNN
/// support, where the library loads and `PIPELINE_CUDNN` is not `0`, unless this thread asked
/// for candle's ops.
pub fn cudnn_applies(x: &Tensor) -> bool {
    x.device().is_cuda()
        && x.dtype() == candle_core::DType::F32
        && super::dispatch::device_kernels_apply(x)
        && cudnn_version().is_some()
}

/// The version of the cuDNN this process uses for convolutions (`9.10.2`), or none: a build
/// without cuDNN support, a library that cannot be loaded, or `PIPELINE_CUDNN=0`.
pub fn cudnn_version() -> Option<String> {
    #[cfg(feature = "cudnn")]
    {
        if std::env::var("PIPELINE_CUDNN").is_ok_and(|v| v == "0") {
            return None;
        }
        super::cudnn::version()
    }
    #[cfg(not(feature = "cudnn"))]
    {
        None
    }
}

/// `x` (n, c, h, w) convolved with `weight` (o, c, kh, kw): no bias, the same stride and
/// padding on both axes, through cuDNN's ops (or their CPU reference on the CPU).
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let g = Geometry::of(x, weight, stride, padding)?;
    x.contiguous()?.apply_op2(&weight.contiguous()?, Forward { g })
}

/// f64 sums rounded to f32.
fn rounded(sums: Vec<f64>) -> CpuStorage {
    CpuStorage::F32(sums.into_iter().map(|v| v as f32).collect())
}

/// Checks that the two inputs have the sizes of `shapes`.
fn check_sizes(what: &str, a: &[f32], b: &[f32], shapes: [&Shape; 2]) -> Result<()> {
    if a.len() != shapes[0].elem_count() || b.len() != shapes[1].elem_count() {
        candle_core::bail!("{what}: the inputs do not fit {:?} and {:?}", shapes[0], shapes[1]);
    }
    Ok(())
}

/// y = x ⋆ w; its backward is [`BackwardData`] and [`BackwardFilter`].
struct Forward {
    g: Geometry,
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "pipeline-cudnn-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous_f32(s1, l1, "conv2d")?, contiguous_f32(s2, l2, "conv2d weight")?);
        check_sizes("conv2d", x, w, [&self.g.input_shape(), &self.g.weight_shape()])?;
        let shape = self.g.output_shape();
        let mut y = vec![0f64; shape.elem_count()];
        self.g.each_product(|i, k, o| y[o] += x[i] as f64 * w[k] as f64);
        Ok((rounded(y), shape))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = super::cudnn::forward(&self.g, (s1, l1), (s2, l2))?;
        Ok((y, self.g.output_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &BackwardData { g: self.g })?;
        let dw = x.apply_op2_no_bwd(&dy, &BackwardFilter { g: self.g })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// ∂L/∂x from (∂L/∂y, w).
struct BackwardData {
    g: Geometry,
}

impl CustomOp2 for BackwardData {
    fn name(&self) -> &'static str {
        "pipeline-cudnn-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, w) = (contiguous_f32(s1, l1, "conv2d backward")?, contiguous_f32(s2, l2, "conv2d weight")?);
        check_sizes("conv2d backward", dy, w, [&self.g.output_shape(), &self.g.weight_shape()])?;
        let shape = self.g.input_shape();
        let mut dx = vec![0f64; shape.elem_count()];
        self.g.each_product(|i, k, o| dx[i] += dy[o] as f64 * w[k] as f64);
        Ok((rounded(dx), shape))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = super::cudnn::backward_data(&self.g, (s1, l1), (s2, l2))?;
        Ok((dx, self.g.input_shape()))
    }
}

/// ∂L/∂w from (x, ∂L/∂y).
struct BackwardFilter {
    g: Geometry,
}

impl CustomOp2 for BackwardFilter {
    fn name(&self) -> &'static str {
        "pipeline-cudnn-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) =
            (contiguous_f32(s1, l1, "conv2d backward")?, contiguous_f32(s2, l2, "conv2d backward")?);
        check_sizes("conv2d backward", x, dy, [&self.g.input_shape(), &self.g.output_shape()])?;
        let shape = self.g.weight_shape();
        let mut dw = vec![0f64; shape.elem_count()];
        self.g.each_product(|i, k, o| dw[k] += x[i] as f64 * dy[o] as f64);
        Ok((rounded(dw), shape))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dw = super::cudnn::backward_filter(&self.g, (s1, l1), (s2, l2))?;
        Ok((dw, self.g.weight_shape()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The ops' CPU reference agrees with candle's conv2d and its gradients on the geometries
    /// the architectures use (3×3 and 1×1, stride 1 and 2, padding 0 and 1, even and odd
    /// sizes), so the backward pass hands the right tensors to the right ops. Square images
    /// only: candle's own backward fails on a strided convolution of an image whose height and
    /// width need different output paddings ([3, 4, 9, 8] gives a [3, 4, 9, 7] gradient).
    #[test]
    fn the_ops_match_candles_convolution_and_its_gradients() {
        // (n, c, o, k, stride, padding, h, w)
        for (n, c, o, k, stride, padding, h, w) in [
            (2, 3, 4, 3, 1, 1, 7, 7),
            (2, 5, 3, 1, 1, 0, 5, 5),
            (3, 4, 6, 3, 2, 1, 8, 8),
            (2, 3, 5, 3, 2, 1, 9, 9),
            (2, 4, 2, 1, 2, 0, 6, 6),
        ] {
            let x =
                Var::from_tensor(&crate::math::rng::test_images(1, &[n, c, h, w]).affine(2.0, -1.0).unwrap())
                    .unwrap();
            let weight =
                Var::from_tensor(&crate::math::rng::test_images(2, &[o, c, k, k]).affine(1.0, -0.5).unwrap())
                    .unwrap();
            let ours = conv2d(&x, &weight, stride, padding).unwrap();
            let candle = x.conv2d(&weight, padding, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), candle.dims());
            let r = crate::math::rng::test_images(3, candle.dims());
            let what = format!("{:?}", (n, c, o, k, stride, padding, h, w));
            let grads_ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let grads_candle = (&candle * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let pairs = [
                ("y", values(&ours), values(&candle)),
                (
                    "dx",
                    values(grads_ours.get(x.as_tensor()).unwrap()),
                    values(grads_candle.get(x.as_tensor()).unwrap()),
                ),
                (
                    "dw",
                    values(grads_ours.get(weight.as_tensor()).unwrap()),
                    values(grads_candle.get(weight.as_tensor()).unwrap()),
                ),
            ];
            for (name, a, b) in pairs {
                assert_eq!(a.len(), b.len());
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{what} {name}[{i}]: {p} vs candle's {q}"
                    );
                }
            }
        }
    }

    /// Sizes that do not fit are an error naming them, not a panic.
    #[test]
    fn sizes_that_do_not_fit_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w, 1, 1).unwrap_err().to_string();
        assert!(err.contains("[1, 3, 4, 4]") && err.contains("[2, 2, 3, 3]"), "{err}");
        assert!(!cudnn_applies(&x), "never on the CPU");
    }
}
