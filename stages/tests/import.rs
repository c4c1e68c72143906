//! Imported checkpoints (issue 31): the fixtures `tests/fixtures/import/make.py` wrote with
//! PyTorch give PyTorch's logits, and every kind of unfit file is refused naming the tensor.
use candle_core::{Device, Tensor};
use stages::models::external::{bind, export_names, identify, pth, BindError, Naming};
use stages::models::{Architecture, Mode, ModelSpec, Network, Parameters};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/import")
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

/// The spec a fixture's JSON describes (`affine_bn` is then read from the file).
fn spec_of(meta: &serde_json::Value) -> ModelSpec {
    let floats = |v: &serde_json::Value| -> Vec<f32> { serde_json::from_value(v.clone()).unwrap() };
    ModelSpec {
        architecture: serde_json::from_value(meta["architecture"].clone()).unwrap(),
        input_shape: [3, 32, 32],
        num_classes: meta["classes"].as_u64().unwrap() as usize,
        dropout: 0.0,
        affine_bn: false,
        mean: floats(&meta["mean"]),
        std: floats(&meta["std"]),
        weight_masks: false,
    }
}

fn naming_of(meta: &serde_json::Value) -> Naming {
    serde_json::from_value(meta["naming"].clone()).unwrap()
}

fn inputs() -> Tensor {
    let inputs = json("inputs.json");
    let shape: Vec<usize> = serde_json::from_value(inputs["shape"].clone()).unwrap();
    let pixels: Vec<f32> = serde_json::from_value(inputs["pixels"].clone()).unwrap();
    Tensor::from_vec(pixels, shape, &Device::Cpu).unwrap()
}

fn read(file: &str) -> Vec<(String, Tensor)> {
    pth::read_any(&fixtures().join(file)).unwrap()
}

/// The largest logit difference relative to the largest PyTorch logit.
fn logit_error(file: &str, meta: &serde_json::Value) -> f64 {
    let (spec, values) = bind(read(file), &spec_of(meta), naming_of(meta)).unwrap();
    assert!(
        spec.affine_bn || file.starts_with("small_cnn"),
        "{file}: the reference code's batch norm is affine"
    );
    let net = Network::new(&spec, &Parameters::frozen(&spec, values).unwrap(), &Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = net.forward(&inputs(), &mut Mode::Eval).unwrap().logits.to_vec2().unwrap();
    let expected: Vec<Vec<f64>> = serde_json::from_value(meta["logits"].clone()).unwrap();
    assert_eq!(logits.len(), expected.len());
    let scale = expected.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let worst = logits
        .iter()
        .flatten()
        .zip(expected.iter().flatten())
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    worst / scale
}

#[test]
fn every_fixture_gives_pytorchs_logits() {
    for name in [
        "resnet_openood",
        "resnet_openood_module",
        "resnet_torchvision",
        "densenet_um",
        "wrn_oe",
        "small_cnn_pipeline",
    ] {
        let meta = json(&format!("{name}.json"));
        let error = logit_error(meta["file"].as_str().unwrap(), &meta);
        eprintln!("{name}: largest logit difference {error:.2e} of the largest logit");
        assert!(error <= 1e-5, "{name}: logits differ from PyTorch's by {error:e} (relative)");
    }
}

#[test]
fn the_safetensors_fixture_gives_the_same_logits() {
    let meta = json("resnet_openood.json");
    let error = logit_error("resnet_openood.safetensors", &meta);
    assert!(error <= 1e-5, "{error:e}");
}

#[test]
fn inspect_recognises_every_fixture() {
    for name in ["resnet_openood", "resnet_openood_module", "resnet_torchvision", "densenet_um", "wrn_oe"] {
        let meta = json(&format!("{name}.json"));
        let found = identify(&read(meta["file"].as_str().unwrap()));
        let architecture: Architecture = serde_json::from_value(meta["architecture"].clone()).unwrap();
        assert!(
            found
                .iter()
                .any(|(n, a, classes, _)| *n == naming_of(&meta) && *a == architecture && *classes == 10),
            "{name}: {found:?}"
        );
    }
}

/// Binds the OpenOOD ResNet fixture after `edit`, expecting a refusal.
fn refusal(edit: impl FnOnce(&mut Vec<(String, Tensor)>, &mut ModelSpec)) -> Vec<BindError> {
    let meta = json("resnet_openood.json");
    let mut tensors = read("resnet_openood.pth");
    let mut spec = spec_of(&meta);
    edit(&mut tensors, &mut spec);
    bind(tensors, &spec, Naming::Openood).unwrap_err()
}

#[test]
fn a_missing_key_is_refused_with_its_name() {
    let problems = refusal(|t, _| t.retain(|(k, _)| k != "layer2.0.shortcut.1.running_var"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let message = problems[0].to_string();
    assert!(message.contains("lacks `layer2.0.shortcut.1.running_var`"), "{message}");
}

#[test]
fn an_unexpected_key_is_refused_with_the_closest_expected_name() {
    let problems = refusal(|t, _| {
        let i = t.iter().position(|(k, _)| k == "layer3.1.bn2.weight").unwrap();
        t[i].0 = "layer3.1.bn_2.weight".into();
    });
    let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        messages.iter().any(|m| m.contains("holds `layer3.1.bn_2.weight`")
            && m.contains("closest expected key: `layer3.1.bn2.weight`")),
        "{messages:?}"
    );
    assert!(messages.iter().any(|m| m.contains("lacks `layer3.1.bn2.weight`")), "{messages:?}");
}

#[test]
fn a_shape_that_does_not_fit_is_refused_with_both_shapes() {
    let problems = refusal(|_, spec| {
        spec.architecture =
            Architecture::ResnetCifar { widths: vec![4, 8, 16, 64], blocks: vec![2, 2, 2, 2] };
    });
    let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        messages.iter().any(|m| m.contains(
            "`layer4.0.conv1.weight` has shape [32, 16, 3, 3], the architecture expects [64, 16, 3, 3]"
        )),
        "{messages:?}"
    );
}

#[test]
fn an_integer_weight_is_refused_with_its_dtype() {
    let meta = json("resnet_openood.json");
    let problems = bind(read("resnet_int_weight.pth"), &spec_of(&meta), Naming::Openood).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].to_string(), "`fc.weight` holds I64 values, not floating-point ones");
}

#[test]
fn classes_that_differ_from_the_head_are_refused() {
    let problems = refusal(|_, spec| spec.num_classes = 100);
    let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        messages[0].contains("the head `fc.weight` has 10 rows (classes), the stage says `classes = 100`"),
        "{messages:?}"
    );
}

#[test]
fn a_naming_of_another_architecture_is_refused() {
    let meta = json("resnet_openood.json");
    let problems = bind(read("resnet_openood.pth"), &spec_of(&meta), Naming::UmCode).unwrap_err();
    assert!(problems[0].to_string().contains("openood, torchvision, pipeline"), "{problems:?}");
}

#[test]
fn a_pickled_module_is_not_a_state_dict() {
    let err = pth::read_any(&fixtures().join("whole_module.pth")).unwrap_err().to_string();
    assert!(
        err.contains("not a plain state_dict") && err.contains("`torch.nn.modules.container.Sequential`"),
        "{err}"
    );
}

#[test]
fn a_training_checkpoint_with_a_nested_state_dict_is_refused() {
    let err = pth::read_any(&fixtures().join("resnet_nested.pth")).unwrap_err().to_string();
    assert!(err.contains("not a plain state_dict"), "{err}");
    assert!(err.contains("a training checkpoint that holds a state_dict under a key"), "{err}");
}

/// What `export` writes reads back as the same tensors under every naming.
#[test]
fn export_then_import_gives_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for (name, naming) in [
        ("resnet_torchvision", Naming::Torchvision),
        ("densenet_um", Naming::UmCode),
        ("wrn_oe", Naming::OeCode),
    ] {
        let meta = json(&format!("{name}.json"));
        let (spec, values) = bind(read(&format!("{name}.pth")), &spec_of(&meta), naming).unwrap();
        let tensors = export_names(&values, &spec, naming).unwrap();
        let path = dir.path().join(format!("{name}.pth"));
        pth::write_pth(&tensors, &path).unwrap();
        // The same keys as PyTorch's state_dict (with the counters), in the same order.
        let original: Vec<String> = read(&format!("{name}.pth")).into_iter().map(|(k, _)| k).collect();
        let written: Vec<String> = pth::read_any(&path).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(written, original, "{name}");
        let (_, back) = bind(pth::read_any(&path).unwrap(), &spec_of(&meta), naming).unwrap();
        assert_eq!(back.len(), values.len());
        for (k, v) in &values {
            let a: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = back[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{name}: {k}");
        }
    }
}
