//! `import`, `inspect` and `export` through the real binary (issue 31): a PyTorch checkpoint
//! (written by tests/fixtures/import/make.py) imported, scored with several methods and
//! fine-tuned with UM; its key follows the file's content, not its path; the file must lie in
//! the recipe's folder; an exported file reads back as the same tensors.
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

fn recipe(file: &str) -> String {
    format!(
        r#"[recipe]
name = "imported"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2, 3, 4, 5]
limit = 192

[datasets.ood]
format = "idx"
root = "{data}"
classes = [7, 8]
limit = 96

[stages.base]
kind = "import"
file = "{file}"
arch = {{ name = "small-cnn", widths = [8, 16], strides = [2, 2] }}
classes = 6
naming = "pipeline"
normalize = {{ mean = [0.13], std = [0.31] }}
input_shape = [1, 28, 28]
id = "id"

[stages.fit]
kind = "feature-fit"
model = "base"
data = "id"

[stages.scores_base]
kind = "score"
model = "base"
id = "id"
ood = ["ood"]
methods = ["msp", "energy", "odin", "react", "knn"]
features_fit = "fit"

[stages.zeta]
kind = "estimate-loss-constraint"
model = "base"
data = "id"
delta = 0.975
batches = 2

[stages.um]
kind = "um"
model = "base"
data = "id"
constraint = "zeta"
epochs = 1
batch_size = 64
lr = 0.01

[stages.scores_um]
kind = "score"
model = "um"
id = "id"
ood = ["ood"]
methods = ["msp", "energy"]
"#,
        data = data_dir().display()
    )
}

fn names<T>(tensors: &[(String, T)]) -> Vec<String> {
    tensors.iter().map(|(k, _)| k.clone()).collect()
}

fn key_of(events: &[serde_json::Value], stage: &str) -> String {
    let e = events.iter().find(|e| e["stage"] == stage && e["key"].is_string()).expect("stage has a key");
    e["key"].as_str().unwrap().to_string()
}

#[test]
fn an_imported_checkpoint_is_scored_and_fine_tuned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ckpt")).unwrap();
    std::fs::copy(fixture("small_cnn_mnist.pth"), dir.path().join("ckpt/small.pth")).unwrap();
    let path = dir.path().join("first.toml");
    std::fs::write(&path, recipe("ckpt/small.pth")).unwrap();
    let cache = dir.path().join("cache");
    let (out, events) = run(&path, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let base = outputs_of(&events, "base@0");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("import.json")).unwrap()).unwrap();
    let accuracy = report["id_test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{report}");
    assert_eq!(report["affine_bn"], true, "the checkpoint's batch norm is affine");
    assert_eq!(report["tensors_read"], 14, "4 per batch norm, 2 convs, the head (2)");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["architecture"]["name"], "small-cnn");
    // Every method scored the ID and OOD sets (float64 `.npy`: a 128-byte header, 8 bytes a
    // score): 192 ID digits and 96 OOD ones.
    let size = |path: std::path::PathBuf| std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    for (stage, methods) in [
        ("scores_base@0", &["msp", "energy", "odin", "react", "knn"][..]),
        ("scores_um@0", &["msp", "energy"][..]),
    ] {
        let scores = outputs_of(&events, stage);
        for method in methods {
            assert_eq!(size(scores.join(method).join("id.npy")), 128 + 8 * 192, "{stage} {method}");
            assert_eq!(size(scores.join(method).join("ood.npy")), 128 + 8 * 96, "{stage} {method}");
        }
    }
    // UM fine-tuned the imported model: its weights moved.
    let um = stages::models::SavedModel::in_dir(&outputs_of(&events, "um@0")).unwrap();
    let cpu = stages::device::Device::Cpu;
    let tuned = stages::models::load_weights(&um.weights_path, &cpu).unwrap();
    let imported = stages::models::load_weights(&base.join("model.safetensors"), &cpu).unwrap();
    assert_ne!(
        tuned["fc.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        imported["fc.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "UM changed the head"
    );

    // The same bytes under another name: the same key, nothing recomputed.
    std::fs::copy(fixture("small_cnn_mnist.pth"), dir.path().join("ckpt/renamed.pth")).unwrap();
    let renamed = dir.path().join("renamed.toml");
    std::fs::write(&renamed, recipe("ckpt/renamed.pth")).unwrap();
    let (out, again) = run(&renamed, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stages_with(&again, "finished").is_empty(), "{:?}", stages_with(&again, "finished"));
    assert_eq!(key_of(&again, "base@0"), key_of(&events, "base@0"));

    // Another checkpoint (one value changed) under the first name: a new key.
    let mut tensors = stages::models::external::pth::read_any(&fixture("small_cnn_mnist.pth")).unwrap();
    tensors[0].1 = tensors[0].1.affine(2.0, 0.0).unwrap();
    stages::models::external::pth::write_pth(&tensors, &dir.path().join("ckpt/small.pth")).unwrap();
    let plan = pipeline().args(["plan", "--json", "--cache"]).arg(&cache).arg(&path).output().unwrap();
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(!text.contains(&key_of(&events, "base@0")), "a changed file gives a new key: {text}");

    // Export: the model PyTorch would load, read back as the same tensors.
    let exported = dir.path().join("exported.pth");
    let out = pipeline()
        .args(["export"])
        .arg(&renamed)
        .arg("base")
        .arg("--to")
        .arg(&exported)
        .args(["--naming", "pipeline", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let original = stages::models::external::pth::read_any(&fixture("small_cnn_mnist.pth")).unwrap();
    let back = stages::models::external::pth::read_any(&exported).unwrap();
    assert_eq!(names(&back), names(&original), "PyTorch's keys, in state_dict order");
    for ((name, a), (_, b)) in original.iter().zip(&back) {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn a_checkpoint_outside_the_recipe_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["/etc/passwd", "../outside.pth"] {
        let path = write_recipe(dir.path(), &recipe(file));
        let out = pipeline().args(["check", "--no-data"]).arg(&path).output().unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("a recipe reads nothing outside it"), "{file}: {err}");
    }
}

#[test]
fn inspect_lists_tensors_and_names_the_architecture() {
    let out = pipeline().arg("inspect").arg(fixture("resnet_torchvision.pth")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("layer2.0.downsample.0.weight"), "{text}");
    assert!(text.contains("[8, 4, 1, 1]"), "{text}");
    assert!(
        text.contains(r#"matches: naming = "torchvision", arch = { name = "resnet-cifar", widths = [4, 8, 16, 32], blocks = [2, 2, 2, 2] }, classes = 10"#),
        "{text}"
    );
    let out = pipeline().arg("inspect").arg(fixture("whole_module.pth")).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a plain state_dict"), "{}", stderr(&out));
}

/// The first stages of [`recipe`]: the import and a scoring of it.
fn short_recipe(file: &str) -> String {
    let full = recipe(file);
    let end = full.find("[stages.zeta]").unwrap();
    full[..end].replace(
        "methods = [\"msp\", \"energy\", \"odin\", \"react\", \"knn\"]",
        "methods = [\"msp\", \"knn\"]",
    )
}

/// A reviewer without the checkpoint: the lock file gives its digest, so `plan` names the
/// author's keys and `run` against the author's cache reuses everything; `check` says the file
/// is not here, at its line. A different file under the locked name is named by `--locked`.
#[test]
fn a_reviewer_without_the_checkpoint_names_the_authors_keys_from_the_lock() {
    let author = tempfile::tempdir().unwrap();
    std::fs::create_dir(author.path().join("ckpt")).unwrap();
    std::fs::copy(fixture("small_cnn_mnist.pth"), author.path().join("ckpt/small.pth")).unwrap();
    let path = author.path().join("exp.toml");
    std::fs::write(&path, short_recipe("ckpt/small.pth")).unwrap();
    let cache = author.path().join("cache");
    let (out, events) = run(&path, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pipeline().arg("lock").arg(&path).arg("--cache").arg(&cache).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = std::fs::read_to_string(author.path().join("exp.lock")).unwrap();
    let digest = blake3::hash(&std::fs::read(fixture("small_cnn_mnist.pth")).unwrap()).to_hex().to_string();
    assert!(lock.contains(&format!("\"ckpt/small.pth\" = \"{digest}\"")), "{lock}");

    let reviewer = tempfile::tempdir().unwrap();
    let theirs = reviewer.path().join("exp.toml");
    std::fs::copy(&path, &theirs).unwrap();
    std::fs::copy(author.path().join("exp.lock"), reviewer.path().join("exp.lock")).unwrap();
    let plan = pipeline().args(["plan", "--json", "--cache"]).arg(&cache).arg(&theirs).output().unwrap();
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = String::from_utf8_lossy(&plan.stdout);
    for stage in ["base@0", "scores_base@0"] {
        assert!(text.contains(&key_of(&events, stage)), "{stage}: the author's key: {text}");
    }
    let err = stderr(&plan);
    assert!(err.contains("`ckpt/small.pth`") && err.contains("exp.lock"), "{err}");
    // Against the author's cache (as after `pipeline pull`), nothing is computed.
    let (out, again) = run(&theirs, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stages_with(&again, "finished").is_empty(), "{:?}", stages_with(&again, "finished"));
    // `check` with data says the checkpoint is missing, at the line that names it.
    let check = pipeline().arg("check").arg(&theirs).output().unwrap();
    assert!(!check.status.success());
    let err = stderr(&check);
    assert!(err.contains("`ckpt/small.pth` is not here") && err.contains("exp.toml:19:8"), "{err}");

    // Other bytes under the locked name: a new key, and `--locked` names the file.
    std::fs::create_dir(reviewer.path().join("ckpt")).unwrap();
    let mut tensors = stages::models::external::pth::read_any(&fixture("small_cnn_mnist.pth")).unwrap();
    tensors[0].1 = tensors[0].1.affine(2.0, 0.0).unwrap();
    stages::models::external::pth::write_pth(&tensors, &reviewer.path().join("ckpt/small.pth")).unwrap();
    let plan = pipeline().args(["status", "--locked", "--cache"]).arg(&cache).arg(&theirs).output().unwrap();
    assert!(!plan.status.success());
    let err = stderr(&plan);
    assert!(err.contains("file `ckpt/small.pth`") && err.contains(&digest), "{err}");
}
