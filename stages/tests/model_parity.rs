//! Forward parity with PyTorch: DenseNet-BC-100 and WRN-40-4 on the fixed (float16-rounded)
//! weights and batch-norm statistics written by tests/fixtures/models/make_fixtures.py, whose
//! networks (bench/torch_nets.py) were written from docs/methods.md §2 independently of this crate. The
//! logits must agree within 1e-4 in evaluation mode (running statistics) and in training mode
//! (batch statistics).
use candle_core::{Device, Tensor};
use stages::models::{load_weights, Mode, ModelSpec, Network, Parameters};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn check(name: &str) {
    let dev = Device::Cpu;
    let spec = ModelSpec::read(&fixture(&format!("{name}.model.json"))).unwrap();
    let weights = load_weights(&fixture(&format!("{name}.weights.safetensors")), &dev).unwrap();
    let expected = load_weights(&fixture(&format!("{name}.expected.safetensors")), &dev).unwrap();

    let frozen = Network::new(&spec, &Parameters::frozen(&spec, weights.clone()).unwrap(), &dev).unwrap();
    let logits = frozen.forward(&expected["input_eval"], &mut Mode::Eval).unwrap().logits;
    let difference = max_difference(&logits, &expected["logits_eval"]);
    assert!(difference < 1e-4, "{name}, evaluation mode: logits differ from PyTorch's by {difference}");

    let params = Parameters::trainable(&spec, weights).unwrap();
    let training = Network::new(&spec, &params, &dev).unwrap();
    let logits = training.forward(&expected["input_train"], &mut Mode::train(0, 0, 0)).unwrap().logits;
    let difference = max_difference(&logits, &expected["logits_train"]);
    assert!(difference < 1e-4, "{name}, training mode: logits differ from PyTorch's by {difference}");
    // The logits are not trivially small: a comparison that cannot fail would prove nothing.
    let scale: f32 = expected["logits_train"].abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    assert!(scale > 0.05, "{name}: logits of magnitude {scale}");
}

#[test]
fn densenet_bc_100_matches_pytorch() {
    check("densenet-bc-100");
}

#[test]
fn wrn_40_4_matches_pytorch() {
    check("wrn-40-4");
}
