//! The hand-written CPU kernels (convolution, batch norm + ReLU) against candle's own ops, which
//! other devices (CUDA) run instead: what a GPU computes is what the CPU computes.
//!
//! - One convolution of each geometry the models use: output and both gradients to 1e-6.
//! - Every architecture: logits in training and evaluation mode and the loss to 1e-5; the small
//!   CNN's every gradient to 1e-5. The gradients of the deep networks (DenseNet-BC-100, WRN-40-4)
//!   at initialisation on a few images are ill-conditioned in f32: a random 1e-6 change of the
//!   input already moves them by 1e-3 to 1e-1 (ReLU kinks, batch-norm cancellations), so no two
//!   implementations can agree to 1e-5 there. For them the test asserts that the two paths
//!   differ by no more than that perturbation moves one of them.
use candle_core::{Device, Tensor, Var};
use stages::models::catalogue::ModelName;
use stages::models::kernels::dispatch::with_candle_ops;
use stages::models::{Mode, ModelSpec, Network, Parameters};
use std::collections::BTreeMap;

struct Computed {
    train_logits: Tensor,
    eval_logits: Tensor,
    loss: f32,
    gradients: BTreeMap<String, Tensor>,
}

fn compute(
    spec: &ModelSpec,
    values: &BTreeMap<String, Tensor>,
    images: &Tensor,
    labels: &Tensor,
) -> Computed {
    let params = Parameters::trainable(spec, values.clone()).unwrap();
    let net = Network::new(spec, &params, &Device::Cpu).unwrap();
    let train_logits = net.forward(images, &mut Mode::train(3, 0, 0)).unwrap().logits;
    let loss = candle_nn::loss::cross_entropy(&train_logits, labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut gradients = BTreeMap::new();
    for name in params.values().into_keys() {
        if let Some(g) = params.var(&name).and_then(|var| grads.get(var.as_tensor()).cloned()) {
            gradients.insert(name, g);
        }
    }
    let eval_logits = net.forward(images, &mut Mode::Eval).unwrap().logits;
    Computed { train_logits, eval_logits, loss: loss.to_scalar().unwrap(), gradients }
}

/// max |a − b| / max(max |b|, 1e-3): the difference relative to the tensor's scale.
fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    diff / scale.max(1e-3)
}

/// ‖a − b‖ / ‖b‖ over every gradient together.
fn gradient_distance(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (name, g) in a {
        let d: f32 = (g - &b[name]).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        let s: f32 = b[name].sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        num += d as f64;
        den += s as f64;
    }
    (num / den).sqrt()
}

/// Deterministic values in [0, 1) (a multiplicative hash of the index).
fn pattern(count: usize, multiplier: u64, offset: u64) -> Vec<f32> {
    (0..count as u64).map(|i| ((i * multiplier + offset) % 997) as f32 / 997.0).collect()
}

fn check(name: ModelName, batch: usize, strict_gradients: bool) {
    let input = name.typical_input();
    let classes = 10;
    let spec = ModelSpec {
        architecture: name.architecture(&[8, 16], &[2, 2]),
        input_shape: input,
        num_classes: classes,
        dropout: 0.0,
        affine_bn: true,
        mean: vec![0.5; input[0]],
        std: vec![0.25; input[0]],
        weight_masks: false,
    };
    let values = spec.initialise(&mut stages::math::rng::derive(1, "init"), &Device::Cpu).unwrap();
    let mut dims = vec![batch];
    dims.extend(input);
    let count: usize = dims.iter().product();
    let images = Tensor::from_vec(pattern(count, 2_654_435_761, 0), dims.as_slice(), &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();

    let custom = compute(&spec, &values, &images, &labels);
    let candle = with_candle_ops(|| compute(&spec, &values, &images, &labels));
    let model = name.name();
    for (what, a, b) in [
        ("training-mode logits", &custom.train_logits, &candle.train_logits),
        ("evaluation-mode logits", &custom.eval_logits, &candle.eval_logits),
    ] {
        let d = relative_difference(a, b);
        assert!(d <= 1e-5, "{model}: {what} differ by {d:e} (relative)");
    }
    assert!((custom.loss - candle.loss).abs() <= 1e-5 * candle.loss.abs().max(1.0), "{model}: loss");
    assert_eq!(
        custom.gradients.keys().collect::<Vec<_>>(),
        candle.gradients.keys().collect::<Vec<_>>(),
        "{model}: the same tensors get gradients"
    );
    let distance = gradient_distance(&custom.gradients, &candle.gradients);
    if strict_gradients {
        for (tensor, g) in &custom.gradients {
            let d = relative_difference(g, &candle.gradients[tensor]);
            assert!(d <= 1e-5, "{model}: the gradient of `{tensor}` differs by {d:e} (relative)");
        }
    } else {
        let noise =
            pattern(count, 40_503, 11).into_iter().map(|v| (2.0 * v - 1.0) * 1e-6).collect::<Vec<f32>>();
        let nudged = (&images + Tensor::from_vec(noise, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let moved =
            gradient_distance(&compute(&spec, &values, &nudged, &labels).gradients, &custom.gradients);
        eprintln!("{model}: gradients differ by {distance:e} between the paths, by {moved:e} under a 1e-6 input change");
        assert!(
            distance <= 2.0 * moved && distance < 2e-2,
            "{model}: the paths' gradients differ by {distance:e}, more than a 1e-6 input change moves them ({moved:e})"
        );
    }
}

#[test]
fn one_convolution_of_each_geometry_matches_candle() {
    for (k, stride, padding) in [(1, 1, 0), (1, 2, 0), (3, 1, 1), (3, 2, 1)] {
        let (n, c, o, hw) = (3, 8, 6, 8);
        let run = || {
            let x = Var::from_vec(pattern(n * c * hw * hw, 2_654_435_761, 0), (n, c, hw, hw), &Device::Cpu)
                .unwrap();
            let w = Var::from_vec(pattern(o * c * k * k, 40_503, 7), (o, c, k, k), &Device::Cpu).unwrap();
            let w = Var::from_tensor(&(w.as_tensor() - 0.5).unwrap()).unwrap();
            let y =
                stages::models::kernels::conv::conv2d(x.as_tensor(), w.as_tensor(), stride, padding).unwrap();
            let weights = Tensor::from_vec(pattern(y.elem_count(), 13, 1), y.dims(), &Device::Cpu).unwrap();
            let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            [y.clone(), grads.get(x.as_tensor()).unwrap().clone(), grads.get(w.as_tensor()).unwrap().clone()]
        };
        let (custom, candle) = (run(), with_candle_ops(run));
        for (what, a, b) in [("output", 0, 0), ("input gradient", 1, 1), ("weight gradient", 2, 2)] {
            let d = relative_difference(&custom[a], &candle[b]);
            assert!(d <= 1e-6, "{k}×{k} conv, stride {stride}: {what} differs by {d:e}");
        }
    }
}

#[test]
fn small_cnn_kernels_match_candle() {
    check(ModelName::SmallCnn, 6, true);
}

#[test]
fn densenet_bc_100_kernels_match_candle() {
    check(ModelName::DensenetBc100, 4, false);
}

#[test]
fn wrn_40_4_kernels_match_candle() {
    check(ModelName::Wrn404, 2, false);
}

#[test]
fn resnet18_cifar_kernels_match_candle() {
    check(ModelName::Resnet18Cifar, 2, false);
}
