//! Batch norm followed by ReLU as one CPU custom op with its own backward.
//!
//! Written as candle ops, batch norm in training mode is five broadcast passes over the
//! activation (centre, square, mean, divide, ReLU) and autograd keeps each intermediate until
//! the backward pass ends: about a sixth of a DenseNet step's time and most of its memory
//! (measured on this project's 2-core machines with candle 0.11). Here the forward reads the input twice for the statistics (mean,
//! then the centred second moment, accumulated in f64) and writes the output once; the backward
//! needs only the input and the output (the ReLU mask is `y > 0`), reads them twice and writes
//! the input gradient once. The per-channel statistics are handed back for the running-average
//! update. Other devices keep the op-by-op version.
use super::buffers::{contiguous_f32, filled_in_chunks};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
// The running-statistics helpers read and write CPU tensors only (this op runs on the CPU), so
// they cross no device boundary (crate::transfer).
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// Batch statistics of a forward pass in training mode, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatistics {
    pub mean: Vec<f32>,
    /// Biased variance (divided by the count).
    pub variance: Vec<f32>,
    /// Values per channel (n·h·w).
    pub count: usize,
}

/// Where the normalising statistics come from.
#[derive(Debug, Clone)]
pub enum Statistics {
    /// The batch's own (training mode): gradients flow through the mean and variance.
    Batch,
    /// Given per-channel mean and variance (evaluation mode): constants.
    Fixed { mean: Vec<f32>, variance: Vec<f32> },
}

impl Statistics {
    /// The running statistics of CPU tensors `mean` and `variance`, as the op reads them.
    pub fn fixed(mean: &Tensor, variance: &Tensor) -> Result<Statistics> {
        Ok(Statistics::Fixed { mean: mean.to_vec1()?, variance: variance.to_vec1()? })
    }
}

/// Moves a running statistic (a CPU variable) towards a batch's:
/// `running ← running·(1 − momentum) + batch·factor·momentum`, element by element in f32.
pub fn update_running(running: &candle_core::Var, batch: &[f32], factor: f32, momentum: f32) -> Result<()> {
    let old: Vec<f32> = running.as_tensor().to_vec1()?;
    let new: Vec<f32> =
        old.iter().zip(batch).map(|(o, b)| o * (1.0 - momentum) + b * factor * momentum).collect();
    running.set(&Tensor::from_vec(new, old.len(), running.device())?)
}

/// What follows the normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
}

/// Whether γ and β are learned (their gradients are computed) or fixed at 1 and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affine {
    Learned,
    Fixed,
}

/// `relu?((x − mean) / √(var + eps) · γ + β)` over `(n, c, h, w)` f32 on the CPU, with γ and β
/// of shape `(c)`. Returns the output and, in training mode, the batch statistics.
pub fn batch_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    statistics: Statistics,
    eps: f64,
    activation: Activation,
    affine: Affine,
) -> Result<(Tensor, Option<BatchStatistics>)> {
    let relu = activation == Activation::Relu;
    let affine_gradients = affine == Affine::Learned;
    let (n, c, h, w) = x.dims4()?;
    let shape = Planes { n, c, hw: h * w };
    let slot = Arc::new(Mutex::new(None));
    let op = BatchNormRelu {
        shape,
        statistics,
        eps,
        relu,
        affine_gradients,
        saved: Arc::new(Mutex::new(None)),
        batch_out: slot.clone(),
    };
    let y = x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let batch = lock(&slot)?.take();
    Ok((y, batch))
}

/// An `(n, c, h·w)` activation: `n·c` contiguous planes, plane `i` belongs to channel `i % c`
/// (the device op, `device_bn`, adds its own views of it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Planes {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) hw: usize,
}

impl Planes {
    pub(super) fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Values per channel.
    pub(super) fn count(&self) -> usize {
        self.n * self.hw
    }

    /// `f(i)` for every plane `i`, in parallel, walking memory in order: a plane's result
    /// depends on that plane alone, so how the work is split changes no value. The per-channel
    /// totals are then added up in image order ([`Planes::channel_total`]).
    fn each_plane<T: Send>(&self, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
        (0..self.n * self.c).into_par_iter().map(f).collect()
    }

    /// Plane `i` of `data`.
    fn plane<'a>(&self, data: &'a [f32], i: usize) -> &'a [f32] {
        &data[i * self.hw..][..self.hw]
    }

    /// Σ over the images, in order and in f64, of channel `ch`'s per-plane values.
    fn channel_total(&self, per_plane: &[f32], ch: usize) -> f64 {
        (0..self.n).map(|b| per_plane[b * self.c + ch] as f64).sum()
    }
}

/// Independent partial sums, so that the compiler can vectorise a reduction (a single f32
/// accumulator is a chain of dependent additions).
const LANES: usize = 16;

/// Block `block` of [`LANES`] values of each plane, as arrays: with the length in the type the
/// lane loops below compile to vector code (over slices the compiler kept the partial sums in
/// memory and added most lanes one at a time).
#[inline(always)]
fn lane_block<const K: usize>(planes: [&[f32]; K], block: usize) -> [&[f32; LANES]; K] {
    planes.map(|p| p[block * LANES..][..LANES].try_into().expect("a block of LANES values"))
}

/// Σ f(values at i) over the equally long `planes`, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum<const K: usize>(planes: [&[f32]; K], f: impl Fn([f32; K]) -> f32) -> f32 {
    let len = planes[0].len();
    let full = len / LANES;
    let mut acc = [0f32; LANES];
    for block in 0..full {
        let blocks = lane_block(planes, block);
        for (lane, slot) in acc.iter_mut().enumerate() {
            *slot += f(blocks.map(|b| b[lane]));
        }
    }
    let tail: f32 = (full * LANES..len).map(|i| f(planes.map(|p| p[i]))).sum();
    acc.iter().sum::<f32>() + tail
}

/// Two sums as [`lane_sum`] computes each, in one pass over the planes: the same partial sums
/// in the same order, so the same values.
#[inline(always)]
fn lane_sum_pair<const K: usize>(planes: [&[f32]; K], f: impl Fn([f32; K]) -> (f32, f32)) -> (f32, f32) {
    let len = planes[0].len();
    let full = len / LANES;
    let (mut first, mut second) = ([0f32; LANES], [0f32; LANES]);
    for block in 0..full {
        let blocks = lane_block(planes, block);
        for lane in 0..LANES {
            let (a, b) = f(blocks.map(|p| p[lane]));
            first[lane] += a;
            second[lane] += b;
        }
    }
    // -0.0, the start of `Iterator::sum` for floats, which `lane_sum` uses for its tail.
    let (mut tail_first, mut tail_second) = (-0f32, -0f32);
    for i in full * LANES..len {
        let (a, b) = f(planes.map(|p| p[i]));
        tail_first += a;
        tail_second += b;
    }
    (first.iter().sum::<f32>() + tail_first, second.iter().sum::<f32>() + tail_second)
}

// The plane loops, also compiled for AVX-512 and AVX2 ([`cpu_variants`]): each keeps its
// [`LANES`] partial sums in the same order, so the values do not depend on the CPU.
cpu_variants! {
    /// Σ v over one plane.
    fn plane_sum(plane: &[f32]) -> f32 {
        lane_sum([plane], |[v]| v)
    }

    /// Σ (v − mu)² over one plane.
    fn plane_centred_squares(plane: &[f32], mu: f32) -> f32 {
        lane_sum([plane], |[v]| (v - mu) * (v - mu))
    }

    /// One plane of the forward output: `(v − mu)·scale + shift`, then the ReLU if asked.
    fn normalise_plane(source: &[f32], out: &mut [MaybeUninit<f32>], (mu, scale, shift): (f32, f32, f32), relu: bool) {
        for (slot, &v) in out.iter_mut().zip(source) {
            let z = (v - mu) * scale + shift;
            slot.write(if relu && z < 0.0 { 0.0 } else { z });
        }
    }

    /// Σ g and Σ g·(x − mu) over one plane, g masked by the ReLU where y ≤ 0.
    fn plane_gradient_sums(g: &[f32], y: &[f32], x: &[f32], mu: f32, relu: bool) -> (f32, f32) {
        lane_sum_pair([g, y, x], |[gv, yv, xv]| {
            let g = if relu && yv <= 0.0 { 0.0 } else { gv };
            (g, g * (xv - mu))
        })
    }

    /// One plane of the input gradient: `scale·(g − mean_g − x̂·mean_gx)`, x̂ = (x − mu)·s, g
    /// masked by the ReLU where y ≤ 0.
    fn plane_input_gradient(
        out: &mut [MaybeUninit<f32>],
        [g, y, x]: [&[f32]; 3],
        (mu, s, scale): (f32, f32, f32),
        (mean_g, mean_gx): (f32, f32),
        relu: bool,
    ) {
        for (((slot, &gv), &yv), &xv) in out.iter_mut().zip(g).zip(y).zip(x) {
            let x_hat = (xv - mu) * s;
            let g = if relu && yv <= 0.0 { 0.0 } else { gv };
            slot.write(scale * (g - mean_g - x_hat * mean_gx));
        }
    }
}

/// Per-channel `mean` and `1/√(var + eps)` used by a forward pass, kept for its backward.
#[derive(Debug, Clone)]
struct Normaliser {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

struct BatchNormRelu {
    shape: Planes,
    statistics: Statistics,
    eps: f64,
    relu: bool,
    affine_gradients: bool,
    saved: Arc<Mutex<Option<Normaliser>>>,
    batch_out: Arc<Mutex<Option<BatchStatistics>>>,
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| candle_core::Error::Msg("batch norm lock poisoned".into()))
}

impl CustomOp3 for BatchNormRelu {
    fn name(&self) -> &'static str {
        "batch-norm-relu"
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
        let p = self.shape;
        let x = contiguous_f32(s1, l1, "batch norm")?;
        let gamma = contiguous_f32(s2, l2, "batch norm scale")?;
        let beta = contiguous_f32(s3, l3, "batch norm shift")?;
        if x.len() != p.len() || gamma.len() != p.c || beta.len() != p.c {
            candle_core::bail!("batch norm: input, scale and shift sizes do not fit");
        }
        let (mean, variance) = match &self.statistics {
            Statistics::Fixed { mean, variance } => (mean.clone(), variance.clone()),
            Statistics::Batch => {
                let m = p.count() as f64;
                let sums = p.each_plane(|i| plane_sum(p.plane(x, i)));
                let mean: Vec<f32> = (0..p.c).map(|ch| (p.channel_total(&sums, ch) / m) as f32).collect();
                let squares = p.each_plane(|i| plane_centred_squares(p.plane(x, i), mean[i % p.c]));
                let variance: Vec<f32> =
                    (0..p.c).map(|ch| (p.channel_total(&squares, ch) / m) as f32).collect();
                *lock(&self.batch_out)? = Some(BatchStatistics {
                    mean: mean.clone(),
                    variance: variance.clone(),
                    count: p.count(),
                });
                (mean, variance)
            }
        };
        let inv_std: Vec<f32> =
            variance.iter().map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32).collect();
        let relu = self.relu;
        // SAFETY: each plane's closure writes all of its h·w values.
        let out = unsafe {
            filled_in_chunks(p.len(), p.hw, |plane, chunk| {
                let ch = plane % p.c;
                let affine = (mean[ch], inv_std[ch] * gamma[ch], beta[ch]);
                normalise_plane(&x[plane * p.hw..][..p.hw], chunk.slots(), affine, relu);
            })
        };
        *lock(&self.saved)? = Some(Normaliser { mean, inv_std });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let normaliser = lock(&self.saved)?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch norm backward before its forward".into()))?;
        let sums = Arc::new(Mutex::new(None));
        let backward = BatchNormReluBackward {
            shape: self.shape,
            normaliser,
            gamma: gamma.flatten_all()?.to_vec1::<f32>()?,
            batch: matches!(self.statistics, Statistics::Batch),
            relu: self.relu,
            sums: sums.clone(),
        };
        let dx = x.apply_op3_no_bwd(y, &grad_y.contiguous()?, &backward)?;
        if !self.affine_gradients {
            return Ok((Some(dx), None, None));
        }
        let (sum_g, sum_gx) = lock(&sums)?.take().expect("set by the backward op");
        let device = x.device();
        let c = self.shape.c;
        Ok((Some(dx), Some(Tensor::from_vec(sum_gx, c, device)?), Some(Tensor::from_vec(sum_g, c, device)?)))
    }
}

/// The input gradient of [`BatchNormRelu`] from (x, y, ∂L/∂y); leaves the per-channel sums
/// Σ g (∂L/∂β) and Σ g·x̂ (∂L/∂γ) in `sums`, with g = ∂L/∂y masked by `y > 0`.
struct BatchNormReluBackward {
    shape: Planes,
    normaliser: Normaliser,
    gamma: Vec<f32>,
    batch: bool,
    relu: bool,
    #[allow(clippy::type_complexity)]
    sums: Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>,
}

impl CustomOp3 for BatchNormReluBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-backward"
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
        let p = self.shape;
        let x = contiguous_f32(s1, l1, "batch norm backward")?;
        let y = contiguous_f32(s2, l2, "batch norm backward")?;
        let g = contiguous_f32(s3, l3, "batch norm backward")?;
        let Normaliser { mean, inv_std } = &self.normaliser;
        let relu = self.relu;
        // g is masked by the ReLU: where y = 0 the output did not depend on x.
        let per_plane = p.each_plane(|i| {
            plane_gradient_sums(p.plane(g, i), p.plane(y, i), p.plane(x, i), mean[i % p.c], relu)
        });
        let sums: Vec<(f64, f64)> = (0..p.c)
            .map(|ch| {
                let s = inv_std[ch];
                let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                for b in 0..p.n {
                    let (plane_g, plane_gx) = per_plane[b * p.c + ch];
                    sum_g += plane_g as f64;
                    sum_gx += plane_gx as f64 * s as f64;
                }
                (sum_g, sum_gx)
            })
            .collect();
        let m = p.count() as f64;
        let batch = self.batch;
        // SAFETY: each plane's closure writes all of its h·w values.
        let dx = unsafe {
            filled_in_chunks(p.len(), p.hw, |plane, chunk| {
                let ch = plane % p.c;
                let (mu, s) = (mean[ch], inv_std[ch]);
                let scale = self.gamma[ch] * s;
                let (mean_g, mean_gx) =
                    if batch { ((sums[ch].0 / m) as f32, (sums[ch].1 / m) as f32) } else { (0.0, 0.0) };
                let start = plane * p.hw;
                let planes = [&g[start..][..p.hw], &y[start..][..p.hw], &x[start..][..p.hw]];
                plane_input_gradient(chunk.slots(), planes, (mu, s, scale), (mean_g, mean_gx), relu);
            })
        };
        let (sum_g, sum_gx) = sums.iter().map(|&(a, b)| (a as f32, b as f32)).unzip();
        *lock(&self.sums)? = Some((sum_g, sum_gx));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op-by-op batch norm (+ ReLU) the fused op replaces, as candle's ops compute it on
    /// any device (the device op's tests use it too).
    pub(in crate::models::kernels) fn unfused(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        fixed: Option<(&Tensor, &Tensor)>,
        relu: bool,
    ) -> Tensor {
        let c = x.dim(1).unwrap();
        let (mean, var) = match fixed {
            None => {
                let mean = x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
                let var = x
                    .broadcast_sub(&mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim(3)
                    .unwrap()
                    .mean_keepdim(2)
                    .unwrap()
                    .mean_keepdim(0)
                    .unwrap();
                (mean, var)
            }
            Some((m, v)) => (m.reshape((1, c, 1, 1)).unwrap(), v.reshape((1, c, 1, 1)).unwrap()),
        };
        let z = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        if relu {
            z.relu().unwrap()
        } else {
            z
        }
    }

    pub(in crate::models::kernels) fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}[{i}]: fused {x} vs unfused {y}");
        }
    }

    /// The plane loops run the AVX-512 or AVX2 version where the CPU has one; each gives the
    /// bits of the same arithmetic written out here one element at a time, in the same lane
    /// order (a plane of 75 values: four full blocks of 16 lanes and a tail).
    #[test]
    fn plane_loops_give_the_bits_of_the_scalar_arithmetic() {
        let values = |seed: u64| -> Vec<f32> {
            values(&crate::math::rng::test_images(seed, &[75]).affine(4.0, -2.0).unwrap())
        };
        let (g, y, x) = (values(1), values(2).iter().map(|v| v.max(0.0)).collect::<Vec<f32>>(), values(3));
        let lanes = |f: &dyn Fn(usize) -> f32| -> f32 {
            let mut acc = [0f32; LANES];
            for i in 0..75 / LANES * LANES {
                acc[i % LANES] += f(i);
            }
            let tail: f32 = (75 / LANES * LANES..75).map(f).sum();
            acc.iter().sum::<f32>() + tail
        };
        let (mu, scale, shift, s) = (0.3f32, 1.7f32, -0.2f32, 0.9f32);
        assert_eq!(plane_sum(&x).to_bits(), lanes(&|i| x[i]).to_bits());
        assert_eq!(plane_centred_squares(&x, mu).to_bits(), lanes(&|i| (x[i] - mu) * (x[i] - mu)).to_bits());
        let masked = |i: usize| if y[i] <= 0.0 { 0.0 } else { g[i] };
        let (sum_g, sum_gx) = plane_gradient_sums(&g, &y, &x, mu, true);
        assert_eq!(sum_g.to_bits(), lanes(&masked).to_bits());
        assert_eq!(sum_gx.to_bits(), lanes(&|i| masked(i) * (x[i] - mu)).to_bits());
        let mut out = vec![MaybeUninit::new(f32::NAN); 75];
        normalise_plane(&x, &mut out, (mu, scale, shift), true);
        for (i, slot) in out.iter().enumerate() {
            let z = (x[i] - mu) * scale + shift;
            // SAFETY: every slot was initialised above.
            assert_eq!(unsafe { slot.assume_init() }.to_bits(), if z < 0.0 { 0f32 } else { z }.to_bits());
        }
        plane_input_gradient(&mut out, [&g, &y, &x], (mu, s, scale), (0.11, -0.05), true);
        for (i, slot) in out.iter().enumerate() {
            let expected = scale * (masked(i) - 0.11 - (x[i] - mu) * s * -0.05);
            // SAFETY: as above.
            assert_eq!(unsafe { slot.assume_init() }.to_bits(), expected.to_bits(), "input gradient [{i}]");
        }
    }

    /// Forward values and the gradients of Σ w·out (w random) with respect to x, γ and β agree
    /// with the op-by-op version to 1e-5, in training and evaluation mode, with and without ReLU.
    #[test]
    fn fused_matches_unfused_forward_and_backward() {
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
            let statistics = if batch {
                Statistics::Batch
            } else {
                Statistics::Fixed { mean: values(&running.0), variance: values(&running.1) }
            };
            let activation = if relu { Activation::Relu } else { Activation::Identity };
            let (fused, stats) =
                batch_norm_relu(&x, &gamma, &beta, statistics, 1e-5, activation, Affine::Learned).unwrap();
            let reference = unfused(&x, &gamma, &beta, (!batch).then_some((&running.0, &running.1)), relu);
            let what = format!("batch={batch} relu={relu}");
            assert_close(&values(&fused), &values(&reference), &format!("{what} forward"));
            assert_eq!(stats.is_some(), batch);
            if let Some(stats) = stats {
                let mean = x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
                assert_close(&stats.mean, &values(&mean), "batch mean");
                assert_eq!(stats.count, 5 * 7 * 6);
            }
            let fused_grads = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let reference_grads = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in
                [("x", x.as_tensor()), ("gamma", gamma.as_tensor()), ("beta", beta.as_tensor())]
            {
                assert_close(
                    &values(fused_grads.get(var).unwrap()),
                    &values(reference_grads.get(var).unwrap()),
                    &format!("{what} d{name}"),
                );
            }
            // Every output is written (no stale memory): the ReLU output is ≥ 0 and finite.
            let out = values(&fused);
            assert!(out.iter().all(|v| v.is_finite() && (!relu || *v >= 0.0)));
        }
    }
}
