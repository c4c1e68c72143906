//! Batch norm followed by ReLU computed where the tensor lives: the CUDA counterpart of the
//! CPU's fused op (`fused_bn`), built so that nothing crosses to the host. Composed from
//! candle's ops, batch norm + ReLU is ~90 elementwise and reduction kernels per layer (forward
//! and backward) on CUDA, each keeping its intermediate for the backward pass; here it is four
//! kernels (`bn_moments`, `bn_normalise`, `bn_gradient_sums`, `bn_input_gradient` in
//! `cuda_kernels.cu`) and the saved state is the input, the output and a `(2, c)` tensor of
//! statistics.
//!
//! Every op here also has a CPU implementation that runs the kernel's arithmetic one element
//! at a time (double-precision sums, the same formulas). It is the reference the tests hold the
//! op structure to, and the path `with_device_kernels` (`dispatch`) takes on the CPU, so that
//! `pipeline check-ops` and CI exercise this path without a GPU.
//!
//! The per-channel statistics travel as tensors on the device: `[mean; biased variance]` from
//! the forward pass (the running-average update reads them with candle's ops), and
//! `[Σ g; Σ g·x̂]` in the backward pass (the gradients of β and γ), g being ∂L/∂y masked by
//! `y > 0` when the ReLU follows.
use super::buffers::contiguous_f32;
use super::fused_bn::Planes;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// `relu?((x − mean)·γ/√(var + eps) + β)` over `(n, c, h, w)` f32, with γ and β of shape `(c)`.
/// `running` gives the statistics in evaluation mode; without it the batch's are used and
/// returned as a `(2, c)` tensor `[mean; biased variance]` on `x`'s device (not
/// differentiable), for the running-average update. Gradients flow to x and, when
/// `affine_gradients`, to γ and β.
pub fn batch_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f64,
    relu: bool,
    affine_gradients: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let planes = Planes { n, c, hw: h * w };
    let (stats, batch) = match running {
        Some((mean, variance)) => {
            (Tensor::stack(&[mean.detach(), variance.detach()], 0)?.contiguous()?, false)
        }
        None => (x.apply_op1_no_bwd(&ChannelMoments { planes })?, true),
    };
    let op = Normalise { planes, stats: stats.clone(), eps, relu, batch, affine_gradients };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    Ok((y, batch.then_some(stats)))
}

/// The views of an activation's planes (`Planes`, shared with the CPU's fused op) that the
/// device op's CPU implementation and launchers need.
impl Planes {
    /// The channel of element `i`.
    fn channel(&self, i: usize) -> usize {
        (i / self.hw) % self.c
    }

    /// The flat indices of channel `ch`'s values, image by image (the kernels' order).
    fn channel_indices(&self, ch: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.count()).map(move |j| (j / self.hw * self.c + ch) * self.hw + j % self.hw)
    }

    /// The sizes as the kernels take them, checked to fit their 32-bit counters.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn kernel_sizes(&self) -> Result<[u32; 3]> {
        let fits = |v: usize| u32::try_from(v).ok();
        match (fits(self.n), fits(self.c), fits(self.hw), fits(self.len())) {
            (Some(n), Some(c), Some(hw), Some(_)) => Ok([n, c, hw]),
            _ => candle_core::bail!("batch norm over {} values: at most 2³² per tensor", self.len()),
        }
    }
}

/// `1/√(var + eps)` as the kernels compute it (in double, rounded to f32).
fn inverse_std(variance: f32, eps: f64) -> f32 {
    (1.0 / (variance as f64 + eps).sqrt()) as f32
}

/// The f32 values of a CPU tensor the op holds (statistics, γ, sums).
fn held_values(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(contiguous_f32(cpu, layout, what)?.to_vec()),
        _ => candle_core::bail!("{what}: the tensor is not on the device of the op's input"),
    }
}

/// The statistics `[mean; biased variance]` of each channel of `(n, c, h, w)`: one block per
/// channel on CUDA, sums in double. Not differentiable.
struct ChannelMoments {
    planes: Planes,
}

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "pipeline-bn-moments"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.planes;
        let x = contiguous_f32(storage, layout, "batch norm moments")?;
        let m = p.count() as f64;
        let mut out = vec![0f32; 2 * p.c];
        for ch in 0..p.c {
            let mean = (p.channel_indices(ch).map(|i| x[i] as f64).sum::<f64>() / m) as f32;
            let squares: f64 = p
                .channel_indices(ch)
                .map(|i| {
                    let d = x[i] - mean;
                    d as f64 * d as f64
                })
                .sum();
            out[ch] = mean;
            out[p.c + ch] = (squares / m) as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, p.c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.planes.kernel_sizes()?;
        super::cuda::bn_moments(sizes, storage, layout)
    }
}

/// The forward output from (x, γ, β) and the held statistics; its backward is
/// [`GradientSums`] and [`InputGradient`].
struct Normalise {
    planes: Planes,
    stats: Tensor,
    eps: f64,
    relu: bool,
    /// Whether the statistics are the batch's (their gradient flows into x's).
    batch: bool,
    affine_gradients: bool,
}

impl CustomOp3 for Normalise {
    fn name(&self) -> &'static str {
        "pipeline-bn-normalise"
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
        let p = self.planes;
        let x = contiguous_f32(s1, l1, "batch norm")?;
        let gamma = contiguous_f32(s2, l2, "batch norm scale")?;
        let beta = contiguous_f32(s3, l3, "batch norm shift")?;
        let stats = held_values(&self.stats, "batch norm statistics")?;
        if x.len() != p.len() || gamma.len() != p.c || beta.len() != p.c || stats.len() != 2 * p.c {
            candle_core::bail!("batch norm: input, scale, shift and statistics sizes do not fit");
        }
        let y = (0..p.len())
            .map(|i| {
                let ch = p.channel(i);
                let scale = inverse_std(stats[p.c + ch], self.eps) * gamma[ch];
                let z = (x[i] - stats[ch]) * scale + beta[ch];
                if self.relu && z < 0.0 {
                    0.0
                } else {
                    z
                }
            })
            .collect();
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.planes.kernel_sizes()?;
        super::cuda::bn_normalise(sizes, self.eps, self.relu, [(s1, l1), (s2, l2), (s3, l3)], &self.stats)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let sums_op =
            GradientSums { planes: self.planes, stats: self.stats.clone(), eps: self.eps, relu: self.relu };
        let needs_sums = self.batch || self.affine_gradients;
        let sums = if needs_sums { Some(x.apply_op3_no_bwd(y, &grad_y, &sums_op)?) } else { None };
        let input_op = InputGradient {
            planes: self.planes,
            stats: self.stats.clone(),
            gamma: gamma.detach(),
            sums: if self.batch { sums.clone() } else { None },
            eps: self.eps,
            relu: self.relu,
        };
        let dx = x.apply_op3_no_bwd(y, &grad_y, &input_op)?;
        match (self.affine_gradients, sums) {
            (true, Some(sums)) => Ok((Some(dx), Some(sums.get(1)?), Some(sums.get(0)?))),
            _ => Ok((Some(dx), None, None)),
        }
    }
}

/// The inputs (x, y, ∂L/∂y) of a backward op, each of the activation's size.
fn backward_inputs<'a>(inputs: [(&'a CpuStorage, &Layout); 3], p: Planes) -> Result<[&'a [f32]; 3]> {
    let mut out = [&[][..]; 3];
    for (slot, (storage, layout)) in out.iter_mut().zip(inputs) {
        *slot = contiguous_f32(storage, layout, "batch norm backward")?;
        if slot.len() != p.len() {
            candle_core::bail!(
                "batch norm backward: {} values where the activation has {}",
                slot.len(),
                p.len()
            );
        }
    }
    Ok(out)
}

/// `[Σ g; Σ g·x̂]` per channel from (x, y, ∂L/∂y), g masked by `y > 0` when the ReLU follows:
/// the gradients of β and γ. One block per channel on CUDA, sums in double.
struct GradientSums {
    planes: Planes,
    stats: Tensor,
    eps: f64,
    relu: bool,
}

impl CustomOp3 for GradientSums {
    fn name(&self) -> &'static str {
        "pipeline-bn-gradient-sums"
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
        let p = self.planes;
        let [x, y, g] = backward_inputs([(s1, l1), (s2, l2), (s3, l3)], p)?;
        let stats = held_values(&self.stats, "batch norm statistics")?;
        let mut out = vec![0f32; 2 * p.c];
        for ch in 0..p.c {
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for i in p.channel_indices(ch) {
                let gi = if self.relu && y[i] <= 0.0 { 0.0 } else { g[i] };
                sum_g += gi as f64;
                sum_gx += gi as f64 * (x[i] - stats[ch]) as f64;
            }
            out[ch] = sum_g as f32;
            out[p.c + ch] = (sum_gx * inverse_std(stats[p.c + ch], self.eps) as f64) as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, p.c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.planes.kernel_sizes()?;
        super::cuda::bn_gradient_sums(sizes, self.eps, self.relu, [(s1, l1), (s2, l2), (s3, l3)], &self.stats)
    }
}

/// ∂L/∂x from (x, y, ∂L/∂y): `γ·s·(g − mean_g − x̂·mean_gx)` with batch statistics (the means
/// over the channel of g and g·x̂, from [`GradientSums`]), `γ·s·g` with fixed ones; s =
/// 1/√(var + eps), x̂ = (x − mean)·s.
struct InputGradient {
    planes: Planes,
    stats: Tensor,
    gamma: Tensor,
    /// The channel sums, with batch statistics.
    sums: Option<Tensor>,
    eps: f64,
    relu: bool,
}

impl CustomOp3 for InputGradient {
    fn name(&self) -> &'static str {
        "pipeline-bn-input-gradient"
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
        let p = self.planes;
        let [x, y, g] = backward_inputs([(s1, l1), (s2, l2), (s3, l3)], p)?;
        let stats = held_values(&self.stats, "batch norm statistics")?;
        let gamma = held_values(&self.gamma, "batch norm scale")?;
        let sums = self.sums.as_ref().map(|s| held_values(s, "batch norm gradient sums")).transpose()?;
        let m = p.count() as f64;
        let dx = (0..p.len())
            .map(|i| {
                let ch = p.channel(i);
                let s = inverse_std(stats[p.c + ch], self.eps);
                let x_hat = (x[i] - stats[ch]) * s;
                let gi = if self.relu && y[i] <= 0.0 { 0.0 } else { g[i] };
                let (mean_g, mean_gx) = match &sums {
                    Some(sums) => ((sums[ch] as f64 / m) as f32, (sums[p.c + ch] as f64 / m) as f32),
                    None => (0.0, 0.0),
                };
                gamma[ch] * s * (gi - mean_g - x_hat * mean_gx)
            })
            .collect();
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let sizes = self.planes.kernel_sizes()?;
        super::cuda::bn_input_gradient(
            sizes,
            self.eps,
            self.relu,
            [(s1, l1), (s2, l2), (s3, l3)],
            [&self.stats, &self.gamma],
            self.sums.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::fused_bn::tests::{unfused, values};
    use super::*;
    use candle_core::{Device, Var};

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 2e-5 * (1.0 + y.abs()), "{what}[{i}]: device op {x} vs op by op {y}");
        }
    }

    /// The device op's CPU implementation (the CUDA kernels' arithmetic) agrees with the op by
    /// op version, forward, statistics and the gradients of Σ w·y with respect to x, γ and β,
    /// in training and evaluation mode, with and without ReLU; without affine gradients, γ
    /// and β get none and x's is unchanged.
    #[test]
    fn the_device_op_matches_the_op_by_op_batch_norm() {
        let dev = Device::Cpu;
        let shape = [5, 3, 7, 6];
        for (batch, relu) in [(true, true), (true, false), (false, true), (false, false)] {
            let x = Var::from_tensor(&crate::math::rng::test_images(1, &shape).affine(3.0, -1.0).unwrap())
                .unwrap();
            let gamma = Var::new(&[1.5f32, -0.7, 0.9], &dev).unwrap();
            let beta = Var::new(&[0.1f32, 0.3, -0.2], &dev).unwrap();
            let weights = crate::math::rng::test_images(2, &shape);
            let running = (
                Tensor::new(&[0.2f32, 0.5, 0.4], &dev).unwrap(),
                Tensor::new(&[0.3f32, 1.2, 0.8], &dev).unwrap(),
            );
            let fixed = (!batch).then_some((&running.0, &running.1));
            let (y, stats) = batch_norm_relu(&x, &gamma, &beta, fixed, 1e-5, relu, true).unwrap();
            let reference = unfused(&x, &gamma, &beta, fixed, relu);
            let what = format!("batch={batch} relu={relu}");
            assert_close(&values(&y), &values(&reference), &format!("{what} forward"));
            assert_eq!(stats.is_some(), batch);
            if let Some(stats) = stats {
                assert_eq!(stats.dims(), [2, 3]);
                let mean = x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
                assert_close(&values(&stats.get(0).unwrap()), &values(&mean), "batch mean");
                let centred = x.broadcast_sub(&mean).unwrap().sqr().unwrap();
                let var = centred.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
                assert_close(&values(&stats.get(1).unwrap()), &values(&var), "batch variance");
            }
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let reference_grads = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in
                [("x", x.as_tensor()), ("gamma", gamma.as_tensor()), ("beta", beta.as_tensor())]
            {
                assert_close(
                    &values(grads.get(var).unwrap()),
                    &values(reference_grads.get(var).unwrap()),
                    &format!("{what} d{name}"),
                );
            }
            let (y_fixed, _) = batch_norm_relu(&x, &gamma, &beta, fixed, 1e-5, relu, false).unwrap();
            let grads_fixed = (&y_fixed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(
                grads_fixed.get(gamma.as_tensor()).is_none() && grads_fixed.get(beta.as_tensor()).is_none()
            );
            assert_eq!(
                values(grads_fixed.get(x.as_tensor()).unwrap()),
                values(grads.get(x.as_tensor()).unwrap())
            );
        }
    }

    /// A channel whose values are all equal has variance 0 and a finite output (eps keeps the
    /// division finite), and the ReLU's gradient is 0 where the output is clamped.
    #[test]
    fn constant_channels_and_clamped_outputs_are_handled() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::full(2.5f32, (2, 1, 3, 3), &dev).unwrap()).unwrap();
        let gamma = Tensor::new(&[1f32], &dev).unwrap();
        let beta = Tensor::new(&[-1f32], &dev).unwrap();
        let (y, stats) = batch_norm_relu(&x, &gamma, &beta, None, 1e-5, true, true).unwrap();
        assert_eq!(values(&stats.unwrap()), [2.5, 0.0]);
        assert!(values(&y).iter().all(|v| *v == 0.0), "(x − mean)·s + β = −1, clamped");
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(values(grads.get(x.as_tensor()).unwrap()).iter().all(|v| *v == 0.0));
    }
}
