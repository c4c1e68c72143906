//! The op-level half of the GPU check (`pipeline check-ops`, run by scripts/gpu-check.sh): each
//! op the training and scoring paths use, computed on the CPU (with this crate's own kernels)
//! and on the device under test from the same seeded inputs, and the largest difference. On the
//! CPU the other side is the path CUDA takes ([`with_device_kernels`]: the device kernels'
//! CPU implementations and candle's own ops), so the check compares something there too. Batch
//! norm is compared twice on the device: with the device kernels and with candle's ops (the
//! fallback, [`with_candle_ops`]).
use crate::error::StageError;
use crate::models::kernels::conv::conv2d;
use crate::models::kernels::dispatch::{with_candle_ops, with_device_kernels};
use crate::models::kernels::dropout::{mix64, DropoutMask};
use crate::models::kernels::top_fraction::TopFraction;
use crate::models::layers::BatchNorm2d;
use crate::models::{Architecture, Mode, ModelSpec, Network, Parameters};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng as _;
use serde::Serialize;
use std::collections::BTreeMap;

/// One op's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct OpComparison {
    pub op: String,
    /// Largest |cpu − device| over every output.
    pub max_abs: f64,
    /// `max_abs` over the largest |cpu| of the same output (0 for equal outputs).
    pub max_rel: f64,
    /// The relative difference allowed (0: must be equal bit for bit).
    pub tolerance: f64,
    pub passed: bool,
    /// Seconds the device side took, first call included (kernel compilation).
    pub device_seconds: f64,
}

/// Seeded uniform values in [lo, hi).
fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = crate::math::rng::derive(seed, "check-ops");
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

type Outputs = Vec<Tensor>;

/// Which kernels the device side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevicePath {
    /// What the device runs by default (on the CPU: the path CUDA takes).
    Kernels,
    /// candle's own ops.
    CandleOps,
}

/// Runs `f` on the CPU and on `device` (the path CUDA takes on the CPU when `device` is the
/// CPU) and compares every output.
fn compare(
    op: &str,
    tolerance: f64,
    device: &Device,
    f: impl Fn(&Device) -> Result<Outputs, StageError>,
) -> Result<OpComparison, StageError> {
    compare_on(op, tolerance, device, DevicePath::Kernels, f)
}

/// [`compare`] with the device side on `path`.
fn compare_on(
    op: &str,
    tolerance: f64,
    device: &Device,
    path: DevicePath,
    f: impl Fn(&Device) -> Result<Outputs, StageError>,
) -> Result<OpComparison, StageError> {
    let flat = |outputs: Outputs| -> Result<Vec<Vec<f32>>, StageError> {
        outputs
            .into_iter()
            .map(|t| Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
            .collect()
    };
    let reference = flat(f(&Device::Cpu)?)?;
    let started = std::time::Instant::now();
    let other = match path {
        DevicePath::CandleOps => with_candle_ops(|| f(device))?,
        DevicePath::Kernels if device.is_cpu() => with_device_kernels(|| f(device))?,
        DevicePath::Kernels => f(device)?,
    };
    let other = flat(other)?;
    let device_seconds = started.elapsed().as_secs_f64();
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(&other) {
        if a.len() != b.len() {
            return Err(StageError::Internal(format!(
                "{op}: {} values on the CPU, {} on the device",
                a.len(),
                b.len()
            )));
        }
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let worst = a.iter().zip(b).fold(0f64, |m, (x, y)| {
            let d = (*x as f64 - *y as f64).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                m.max(d)
            }
        });
        max_abs = max_abs.max(worst);
        max_rel = max_rel.max(if worst == 0.0 { 0.0 } else { worst / scale.max(f64::MIN_POSITIVE) });
    }
    let passed = if tolerance == 0.0 { max_abs == 0.0 } else { max_rel <= tolerance };
    Ok(OpComparison { op: op.to_string(), max_abs, max_rel, tolerance, passed, device_seconds })
}

/// A convolution's output and the gradients of Σ y·r with respect to its input and weight.
fn convolution(
    device: &Device,
    (batch, cin, cout, k, stride, padding, hw): (usize, usize, usize, usize, usize, usize, usize),
) -> Result<Outputs, StageError> {
    let x = Var::from_tensor(&Tensor::from_vec(
        values(1, batch * cin * hw * hw, -1.0, 1.0),
        (batch, cin, hw, hw),
        device,
    )?)?;
    let w = Var::from_tensor(&Tensor::from_vec(
        values(2, cout * cin * k * k, -0.5, 0.5),
        (cout, cin, k, k),
        device,
    )?)?;
    let y = conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?;
    let r = Tensor::from_vec(values(3, y.elem_count(), -1.0, 1.0), y.shape(), device)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let gx =
        grads.get(x.as_tensor()).cloned().ok_or_else(|| StageError::Internal("no input gradient".into()))?;
    let gw =
        grads.get(w.as_tensor()).cloned().ok_or_else(|| StageError::Internal("no weight gradient".into()))?;
    Ok(vec![y, gx, gw])
}

/// Batch norm + ReLU in training mode (affine): output, input and affine gradients, and the
/// running statistics after it.
fn batch_norm(device: &Device, affine: bool) -> Result<Outputs, StageError> {
    let (n, c, hw) = (8, 12, 16);
    let x =
        Var::from_tensor(&Tensor::from_vec(values(4, n * c * hw * hw, -2.0, 3.0), (n, c, hw, hw), device)?)?;
    let rm = Var::new(&vec![0.1f32; c][..], device)?;
    let rv = Var::new(&vec![0.9f32; c][..], device)?;
    let gamma = Var::from_tensor(&Tensor::from_vec(values(5, c, 0.5, 1.5), c, device)?)?;
    let beta = Var::from_tensor(&Tensor::from_vec(values(6, c, -0.2, 0.2), c, device)?)?;
    let bn = BatchNorm2d {
        running_mean: rm.as_tensor().clone(),
        running_var: rv.as_tensor().clone(),
        running_mean_var: Some(rm.clone()),
        running_var_var: Some(rv.clone()),
        affine: affine.then(|| (gamma.as_tensor().clone(), beta.as_tensor().clone())),
        eps: 1e-5,
        momentum: 0.1,
    };
    let y = bn.forward_relu(x.as_tensor(), &Mode::train(0, 0, 0))?;
    let r = Tensor::from_vec(values(7, y.elem_count(), -1.0, 1.0), y.shape(), device)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![y];
    let wanted: Vec<&Var> = if affine { vec![&x, &gamma, &beta] } else { vec![&x] };
    for var in wanted {
        out.push(
            grads.get(var.as_tensor()).cloned().ok_or_else(|| StageError::Internal("no gradient".into()))?,
        );
    }
    out.extend([rm.as_tensor().clone(), rv.as_tensor().clone()]);
    Ok(out)
}

/// Batch norm + ReLU in evaluation mode (affine, running statistics): output and the input
/// gradient.
fn batch_norm_evaluation(device: &Device) -> Result<Outputs, StageError> {
    let (n, c, hw) = (8, 12, 16);
    let x =
        Var::from_tensor(&Tensor::from_vec(values(11, n * c * hw * hw, -2.0, 3.0), (n, c, hw, hw), device)?)?;
    let bn = BatchNorm2d {
        running_mean: Tensor::from_vec(values(12, c, -0.5, 0.5), c, device)?,
        running_var: Tensor::from_vec(values(13, c, 0.5, 2.0), c, device)?,
        running_mean_var: None,
        running_var_var: None,
        affine: Some((
            Tensor::from_vec(values(5, c, 0.5, 1.5), c, device)?,
            Tensor::from_vec(values(6, c, -0.2, 0.2), c, device)?,
        )),
        eps: 1e-5,
        momentum: 0.1,
    };
    let y = bn.forward_relu(x.as_tensor(), &Mode::Eval)?;
    let r = Tensor::from_vec(values(14, y.elem_count(), -1.0, 1.0), y.shape(), device)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let gx =
        grads.get(x.as_tensor()).cloned().ok_or_else(|| StageError::Internal("no input gradient".into()))?;
    Ok(vec![y, gx])
}

/// A network of `architecture` on `shape` inputs, dropout `dropout`: training-mode logits and
/// every parameter's gradient of the cross-entropy, then evaluation-mode logits and the input
/// gradient ODIN takes (cross-entropy of logits / 1000 against the predicted class).
fn network(
    device: &Device,
    architecture: Architecture,
    shape: [usize; 3],
    dropout: f64,
) -> Result<Outputs, StageError> {
    let spec = ModelSpec {
        architecture,
        input_shape: shape,
        num_classes: 10,
        dropout,
        affine_bn: true,
        mean: vec![0.5; shape[0]],
        std: vec![0.25; shape[0]],
        weight_masks: false,
    };
    let initial = spec.initialise(&mut crate::math::rng::derive(0, "check-ops"), &Device::Cpu)?;
    let initial: BTreeMap<String, Tensor> =
        initial.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect::<Result<_, StageError>>()?;
    let params = Parameters::trainable(&spec, initial)?;
    let net = Network::new(&spec, &params, device)?;
    let batch = 8;
    let [c, h, w] = shape;
    let images = Tensor::from_vec(values(8, batch * c * h * w, 0.0, 1.0), (batch, c, h, w), device)?;
    let labels = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<u32>>(), batch, device)?;
    let logits = net.forward(&images, &mut Mode::train(0, 0, 0))?.logits;
    let grads = crate::training::losses::cross_entropy(&logits, &labels)?.backward()?;
    let mut out = vec![logits];
    for var in params.trainable_vars() {
        if let Some(g) = grads.get(var.as_tensor()) {
            out.push(g.clone());
        }
    }
    let input = Var::from_tensor(&images)?;
    let eval_logits = net.forward(input.as_tensor(), &mut Mode::Eval)?.logits;
    let predicted = eval_logits.argmax(candle_core::D::Minus1)?;
    let odin = candle_nn::loss::cross_entropy(&(&eval_logits / 1000.0)?, &predicted)?.backward()?;
    out.push(eval_logits);
    out.push(
        odin.get(input.as_tensor())
            .cloned()
            .ok_or_else(|| StageError::Internal("no input gradient".into()))?,
    );
    Ok(out)
}

/// Every comparison, on `device`.
pub fn check_ops(device: &Device) -> Result<Vec<OpComparison>, StageError> {
    let mut results = Vec::new();
    // (batch, in, out, kernel, stride, padding, size): the geometries the architectures use.
    let geometries = [
        ("conv 3x3 stem 3->24 32x32", (16, 3, 24, 3, 1, 1, 32)),
        ("conv 1x1 bottleneck 108->48 32x32", (16, 108, 48, 1, 1, 0, 32)),
        ("conv 3x3 growth 48->12 16x16", (16, 48, 12, 3, 1, 1, 16)),
        ("conv 1x1 transition 216->108 16x16", (16, 216, 108, 1, 1, 0, 16)),
        ("conv 3x3 stride 2 64->128 16x16", (16, 64, 128, 3, 2, 1, 16)),
        ("conv 1x1 stride 2 shortcut 64->128 16x16", (16, 64, 128, 1, 2, 0, 16)),
        ("conv 3x3 wide 160->160 8x8", (16, 160, 160, 3, 1, 1, 8)),
        ("conv 3x3 1->16 28x28", (16, 1, 16, 3, 1, 1, 28)),
    ];
    for (name, geometry) in geometries {
        results.push(compare(name, 1e-4, device, |d| convolution(d, geometry))?);
    }
    // Where cuDNN computes the convolutions above, candle's (the fallback) is checked too.
    for (name, geometry) in [geometries[0], geometries[4]] {
        let name = format!("{name}, candle's ops");
        results.push(compare_on(&name, 1e-4, device, DevicePath::CandleOps, |d| convolution(d, geometry))?);
    }
    results.push(compare("batch norm + relu (train, running statistics)", 1e-4, device, |d| {
        batch_norm(d, false)
    })?);
    results.push(compare("batch norm + relu affine (train)", 1e-4, device, |d| batch_norm(d, true))?);
    results.push(compare("batch norm + relu affine (evaluation)", 1e-4, device, batch_norm_evaluation)?);
    for (name, affine) in [
        ("batch norm + relu, candle's ops (train)", false),
        ("batch norm + relu affine, candle's ops (train)", true),
    ] {
        results.push(compare_on(name, 1e-4, device, DevicePath::CandleOps, |d| batch_norm(d, affine))?);
    }
    results.push(compare("dropout masks p=0.3 (bit for bit)", 0.0, device, |d| {
        let x = Tensor::ones((64, 48, 32, 32), DType::F32, d)?;
        Ok(vec![DropoutMask::new(mix64(42), 0.3).apply(&x)?])
    })?);
    results.push(compare("UMAP top-fraction masks keep=0.8 (bit for bit)", 0.0, device, |d| {
        let ties: Vec<f32> = values(9, 20_000, -8.0, 8.0).into_iter().map(|v| v.round() / 4.0).collect();
        let smooth = values(10, 331_776, -1.0, 1.0);
        Ok(vec![
            TopFraction { keep: 0.8 }.mask(&Tensor::from_vec(ties, 20_000, d)?)?,
            TopFraction { keep: 0.8 }.mask(&Tensor::from_vec(smooth, (144, 2304), d)?)?,
        ])
    })?);
    let small_cnn = Architecture::SmallCnn { widths: vec![16, 32, 64, 128], strides: vec![1, 2, 2, 2] };
    results.push(compare("small CNN: logits, gradients, ODIN input gradient", 1e-3, device, |d| {
        network(d, small_cnn.clone(), [1, 28, 28], 0.3)
    })?);
    let densenet = Architecture::DensenetBc { depth: 40, growth: 12, reduction: 0.5 };
    results.push(compare(
        "DenseNet-BC-40 dropout 0.3: logits, gradients, ODIN input gradient",
        1e-3,
        device,
        |d| network(d, densenet.clone(), [3, 32, 32], 0.3),
    )?);
    let wrn = Architecture::WideResnet { depth: 16, widen: 2 };
    results.push(compare("WRN-16-2: logits, gradients, ODIN input gradient", 1e-3, device, |d| {
        network(d, wrn.clone(), [3, 32, 32], 0.0)
    })?);
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU the custom kernels and candle's own ops agree within the tolerances, and the
    /// masks bit for bit.
    #[test]
    fn the_cpu_kernels_agree_with_candles_ops() {
        let results = check_ops(&Device::Cpu).unwrap();
        assert!(results.len() >= 12);
        for r in &results {
            assert!(r.passed, "{r:?}");
        }
        // Something was compared: the custom convolution differs from candle's in the last bits.
        assert!(results.iter().any(|r| r.max_abs > 0.0));
    }
}
