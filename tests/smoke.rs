//! The CI smoke recipe through the real binary, and the commands around it.
mod common;
use common::*;
use std::path::Path;

fn smoke_recipe() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/smoke.toml")
}

#[test]
fn smoke_recipe_runs_end_to_end_and_writes_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (out, events) = run(&smoke_recipe(), &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report_dir = outputs_of(&events, "table");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["convention"], "idpos");
    let all_rows = report["rows"].as_array().unwrap();
    // Groups: mnist_6_9 alone, noise = gaussian + uniform (scores_all tests on uniform only).
    let groups: Vec<&str> =
        report["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(groups, ["mnist_6_9", "noise"]);
    let group_rows: Vec<&serde_json::Value> = all_rows.iter().filter(|r| r["scope"] == "group").collect();
    assert_eq!(group_rows.len(), 2 * 2 + 2 + 4 * 2, "one row per group of each (stage, method)");
    let rows: Vec<&serde_json::Value> = all_rows.iter().filter(|r| r["scope"] != "group").collect();
    // scores_base: 2 methods × (3 sets + mean); scores_first: 1 method × 4;
    // scores_all: 4 methods (MSP, ODIN, Energy, Mahalanobis) × (2 sets + mean).
    assert_eq!(rows.len(), 8 + 4 + 12);
    for method in ["odin", "mahalanobis"] {
        assert!(rows.iter().any(|r| r["scores"] == "scores_all" && r["method"] == method), "{method} row");
    }
    for row in all_rows {
        for metric in ["fpr95", "auroc", "aupr_in", "aupr_out", "id_accuracy"] {
            let v = row[metric]["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{metric} = {v}");
        }
    }
    // The mean row is the mean of the per-set rows.
    let of = |ood: &str| {
        rows.iter()
            .find(|r| r["scores"] == "scores_base" && r["method"] == "energy" && r["ood"] == ood)
            .unwrap()["auroc"]["mean"]
            .as_f64()
            .unwrap()
    };
    let mean = (of("mnist_6_9") + of("gaussian") + of("uniform")) / 3.0;
    assert!((of("mean") - mean).abs() < 1e-12);
    // The noise group's row is the mean of its two sets, with their summed size.
    let noise = group_rows
        .iter()
        .find(|r| r["scores"] == "scores_base" && r["method"] == "energy" && r["ood"] == "noise")
        .unwrap();
    assert!(
        (noise["auroc"]["mean"].as_f64().unwrap() - (of("gaussian") + of("uniform")) / 2.0).abs() < 1e-12
    );
    let size = |ood: &str| {
        rows.iter().find(|r| r["scores"] == "scores_base" && r["ood"] == ood).unwrap()["n_ood"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(noise["n_ood"].as_u64().unwrap(), size("gaussian") + size("uniform"));
    // Every row whose set has a mean AUROC below 50% says so.
    for r in &rows {
        let inverted = r["auroc"]["mean"].as_f64().unwrap() < 0.5;
        assert_eq!(
            r["scope"] == "set" && inverted,
            r["scope"] == "set" && r["inverted"].as_array().is_some_and(|a| !a.is_empty()),
            "{r}"
        );
    }
    let csv = std::fs::read_to_string(report_dir.join("report.csv")).unwrap();
    assert!(csv.starts_with("record,scores,method,ood,scope,epoch,seed,seeds,n_id,n_ood,fpr95_idpos_mean"));
    let records = |kind: &str| csv.lines().filter(|l| l.starts_with(&format!("{kind},"))).count();
    assert_eq!((records("summary"), records("seed")), (all_rows.len(), all_rows.len()), "one seed");
    let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(md.contains("| scores_base | energy | **mean** |"), "{md}");
    assert!(md.contains("## Summary: group `noise` (gaussian, uniform)"), "{md}");
    assert!(md.contains("| odin | T = 1000, ε = 0.0014 |"), "ODIN's hyper-parameters: {md}");

    // show, dag and check on the same recipe.
    let show = pipeline()
        .args(["show"])
        .arg(smoke_recipe())
        .arg("table")
        .arg("--cache")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("report.md"));
    let dot = pipeline().arg("dag").arg(smoke_recipe()).arg("--dot").output().unwrap();
    assert!(String::from_utf8_lossy(&dot.stdout).contains("\"base\" -> \"first\";"));
    let check = pipeline().arg("check").arg("--json").arg(smoke_recipe()).output().unwrap();
    assert!(check.status.success());
    let verdict: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(verdict["valid"], true);
}

#[test]
fn check_reports_errors_as_json_with_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[stages.t]\nkind = \"train\"\ndata = \"missing\"\nepohcs = 3\n").unwrap();
    let out = pipeline().arg("check").arg("--json").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = verdict["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["line"], 3);
    assert_eq!(errors[1]["line"], 4);
    assert_eq!(errors[1]["help"], "did you mean `epochs`?");
    // `run` on an invalid recipe is a usage error (2), with the rendered diagnostic.
    let run = pipeline().arg("run").arg(&path).arg("--cache").arg(dir.path().join("c")).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(stderr(&run).contains("bad.toml:4:1"), "{}", stderr(&run));
}

#[test]
fn a_missing_dataset_fails_the_stages_that_read_it_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        tiny_recipe(1, r#"["energy"]"#).replacen(&data_dir().display().to_string(), "/nonexistent/mnist", 1);
    let recipe = write_recipe(dir.path(), &text);
    let (out, events) = run(&recipe, &dir.path().join("cache"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/mnist"), "{}", stderr(&out));
    assert!(stages_with(&events, "failed").contains(&"base@0".to_string()));
}

#[test]
fn unleashing_mask_smoke_recipe_runs_with_two_seeds_and_a_backtracking_curve() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/um.toml");
    let (out, events) = run(&recipe, &dir.path().join("cache"), &["--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every stage once per seed, the report once.
    let finished = stages_with(&events, "finished");
    assert_eq!(finished.len(), 9 * 2 + 1, "{finished:?}");
    assert!(finished.contains(&"umap@1".to_string()) && finished.contains(&"zeta@0".to_string()));

    let constraint: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outputs_of(&events, "zeta@0").join("constraint.json")).unwrap(),
    )
    .unwrap();
    assert!(constraint["zeta"].as_f64().unwrap() > 0.0);
    assert_eq!(constraint["samples"], 384);
    let masks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "umap@0").join("masks.json")).unwrap())
            .unwrap();
    for (layer, kept) in masks.as_object().unwrap() {
        let kept = kept.as_f64().unwrap();
        assert!((kept - 0.8).abs() < 0.02, "{layer} keeps {kept}");
    }

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "table").join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["seeds"], 2);
    let all_rows = report["rows"].as_array().unwrap();
    let rows: Vec<&serde_json::Value> = all_rows.iter().filter(|r| r["scope"] != "group").collect();
    assert_eq!(rows.len(), 4 * 2 * 3, "4 score stages × 2 methods × (2 sets + mean)");
    assert_eq!(all_rows.len(), 4 * 2 * 5, "and one group per set by default");
    // UM and UMAP rows show the ζ each seed's model used: its constraint stage's estimate.
    for (stage, seed) in [("scores_um", 0), ("scores_umap", 1)] {
        let zeta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(outputs_of(&events, &format!("zeta@{seed}")).join("constraint.json")).unwrap(),
        )
        .unwrap();
        let row = rows.iter().find(|r| r["scores"] == stage).unwrap();
        assert_eq!(row["zeta"]["values"][seed], zeta["zeta"], "{stage}");
    }
    let control = rows.iter().find(|r| r["scores"] == "scores_control").unwrap();
    assert_eq!(control["zeta"]["values"], serde_json::json!([0.0, 0.0]), "the control's written ζ = 0");
    assert!(rows.iter().find(|r| r["scores"] == "scores_base").unwrap().get("zeta").is_none());
    for row in &rows {
        assert_eq!(row["fpr95"]["values"].as_array().unwrap().len(), 2, "one value per seed");
    }
    // Backtracking: the base model at epochs 1 and 2, for both methods; the last epoch equals
    // the main row of the same model.
    let curve = report["backtracking"].as_array().unwrap();
    assert_eq!(curve.len(), 4 * 5, "2 epochs × 2 methods × (2 sets, 2 groups, all sets)");
    let last =
        curve.iter().find(|b| b["epoch"] == 2 && b["method"] == "energy" && b["ood"] == "mean").unwrap();
    let main = rows
        .iter()
        .find(|r| r["scores"] == "scores_base" && r["method"] == "energy" && r["ood"] == "mean")
        .unwrap();
    assert_eq!(last["auroc"], main["auroc"]);
    let md = std::fs::read_to_string(outputs_of(&events, "table").join("report.md")).unwrap();
    assert!(md.contains("## Backtracking"));
    assert!(md.contains(" ± "));
}

#[test]
fn outlier_exposure_smoke_recipe_runs_oe_energy_and_poem() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/oe.toml");
    let (out, events) = run(&recipe, &dir.path().join("cache"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished").len(), 12);
    // POEM chose outliers by Thompson sampling in both epochs; the second regression saw the
    // first epoch's choice through the ring buffer.
    let selection: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "poem@0").join("selection.json")).unwrap())
            .unwrap();
    let epochs = selection.as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[0]["remembered_outliers"], 0);
    assert_eq!(epochs[1]["remembered_outliers"], epochs[0]["chosen"]);
    assert_eq!(epochs[0]["chosen"], 4 * 16, "4 ID batches × 16 outliers");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "table").join("report.json")).unwrap())
            .unwrap();
    // 5 score stages × (2 sets, 2 groups of one set each, all sets).
    assert_eq!(report["rows"].as_array().unwrap().len(), 5 * 5);
}

#[test]
fn models_lists_architectures_with_their_weight_counts() {
    let out = pipeline().args(["models", "--classes", "10"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let densenet = text.lines().find(|l| l.starts_with("densenet-bc-100")).expect("densenet listed");
    assert!(densenet.ends_with("745174"), "{densenet}");
    assert!(text.lines().any(|l| l.starts_with("small-cnn")));
}

#[test]
fn fetch_lists_datasets_and_checks_a_local_archive_against_the_published_md5() {
    let out = pipeline().arg("fetch").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("cifar10 ") && l.contains("cifar-10-binary.tar.gz")),
        "{text}"
    );
    // The fixture archive is not the real CIFAR-10: its MD5 differs from the published one.
    let data = tempfile::tempdir().unwrap();
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures/fetch/tiny-cifar10.tar.gz");
    let out = pipeline()
        .args(["fetch", "cifar10", "--quiet", "--archive"])
        .arg(&archive)
        .arg("--to")
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "a data error");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("c32a1d4ab5d03f1284b67883e8d87530") && error.contains("tiny-cifar10.tar.gz"),
        "{error}"
    );
    assert!(!data.path().join("cifar-10-batches-bin").exists());
    let out = pipeline().args(["fetch", "cifar-11"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: cifar10"));
}

/// `plan --estimate` measures each model's throughput once, records it in the cache folder, and
/// estimates each stage as images ÷ throughput: the training stage reads the 512 limited digits
/// for 2 epochs, the scoring stage its test sets once.
#[test]
fn plan_estimates_durations_from_measured_throughput() {
    let cache = tempfile::tempdir().unwrap();
    let plan = |extra: &[&str]| {
        let out = pipeline()
            .args(["plan"])
            .arg(smoke_recipe())
            .arg("--cache")
            .arg(cache.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = plan(&[]);
    assert!(
        before.contains("throughput not measured yet") && !before.contains("estimated duration"),
        "{before}"
    );
    let measured = plan(&["--estimate"]);
    let line =
        measured.lines().find(|l| l.starts_with("will run  base (train)")).expect("train stage listed");
    assert!(line.contains("(1024 images at "), "{line}");
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.path().join("throughput.json")).unwrap()).unwrap();
    let rates: Vec<f64> = table.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
    assert!(!rates.is_empty() && rates.iter().all(|r| r.is_finite() && *r > 0.0), "{table}");
    assert!(measured.contains("estimated duration on cpu: ~"), "{measured}");
    // Without --estimate the recorded throughputs are reused: the same figures, nothing measured.
    assert_eq!(plan(&[]), measured);
}

/// A recipe that asks for CUDA in a build without it stops before running anything, naming
/// the device and how to get CUDA support.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_recipe_without_cuda_support_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(smoke_recipe()).unwrap().replace("device = \"cpu\"", "device = \"cuda:0\"");
    let recipe = dir.path().join("cuda.toml");
    std::fs::write(
        &recipe,
        text.replace("../data/mnist-10k", &format!("{}/recipes/data/mnist-10k", env!("CARGO_MANIFEST_DIR"))),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let out = pipeline().arg("run").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "a device error");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("cuda:0") && error.contains("--features cuda"), "{error}");
    assert!(!cache.exists(), "nothing ran, not even the cache was created");
    let out = pipeline().args(["bench-train", "--net", "small-cnn", "--device", "tpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"));
}

/// A diverged model is never cached as a success: with lr = 1e6 the loss stays finite while a
/// batch-norm statistic overflows; the training stage fails naming the parameter, epoch and
/// batch, nothing is committed, and nothing downstream scores NaN (issue 12).
#[test]
fn diverged_training_fails_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(smoke_recipe())
        .unwrap()
        .replace("lr = 0.05", "lr = 1e6")
        .replace("../data/mnist-10k", &format!("{}/recipes/data/mnist-10k", env!("CARGO_MANIFEST_DIR")));
    assert!(text.contains("lr = 1e6"));
    let recipe = dir.path().join("diverging.toml");
    std::fs::write(&recipe, text).unwrap();
    let cache = dir.path().join("cache");
    let (out, events) = run(&recipe, &cache, &[]);
    assert_eq!(out.status.code(), Some(1));
    let failed = events.iter().find(|e| e["event"] == "failed").expect("a failed event");
    assert_eq!(failed["stage"], "base@0");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("non-finite") && error.contains("epoch 1, batch"), "{error}");
    assert!(stages_with(&events, "finished").is_empty());
    assert_eq!(std::fs::read_dir(cache.join("objects")).unwrap().count(), 0, "nothing committed");
}

/// MaxLogit, GEN, GradNorm, ReAct and KNN run end to end, and `save_features` writes the
/// features and logits (issue 16, first part).
#[test]
fn posthoc_scores_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(1, r#"["maxlogit", "gen", "gradnorm", "msp"]"#)
        .replace("[stages.scores_first]\n", "[stages.scores_first]\nsave_features = true\n")
        + r#"
[stages.fit]
kind = "feature-fit"
model = "base"
data = "id"

[stages.gauss]
kind = "mahalanobis-fit"
model = "base"
data = "id"

[stages.scores_posthoc]
kind = "score"
model = "base"
id = "id"
ood = ["ood", "noise"]
methods = ["react", "knn", "ash-p", "ash-b", "ash-s", "dice", "kl-matching", "vim", "rmds"]
features_fit = "fit"
mahalanobis = "gauss"
"#;
    assert!(text.contains("save_features = true"));
    let recipe = write_recipe(dir.path(), &text);
    let (out, events) = run(&recipe, &dir.path().join("cache"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scores = outputs_of(&events, "scores_first@0");
    for method in ["maxlogit", "gen", "gradnorm"] {
        let values = stages::formats::npy::read_f64(&scores.join(format!("{method}/id.npy"))).unwrap();
        assert!(!values.is_empty() && values.iter().all(|v| v.is_finite()), "{method}");
    }
    // save_features: the penultimate features (8 wide) and logits (3 classes) of every set.
    for (folder, width) in [("features", 8), ("logits", 3)] {
        let bytes = std::fs::read(scores.join(format!("{folder}/id.npy"))).unwrap();
        let header = String::from_utf8_lossy(&bytes[10..80]).into_owned();
        assert!(header.contains(&format!(", {width})")) && header.contains("'<f4'"), "{folder}: {header}");
        assert!(scores.join(format!("{folder}/ood.npy")).is_file());
    }
    // ReAct and KNN with the training statistics of `fit`: finite scores; KNN's are minus a
    // distance between unit vectors, in [−2, 0].
    let posthoc = outputs_of(&events, "scores_posthoc@0");
    for method in ["react", "knn", "ash-p", "ash-b", "ash-s", "dice", "kl-matching", "vim", "rmds"] {
        let values = stages::formats::npy::read_f64(&posthoc.join(format!("{method}/noise.npy"))).unwrap();
        assert!(values.len() == 96 && values.iter().all(|v| v.is_finite()), "{method}");
    }
    let knn = stages::formats::npy::read_f64(&posthoc.join("knn/id.npy")).unwrap();
    assert!(knn.iter().all(|&v| (-2.0..=0.0).contains(&v)), "{knn:?}");
    // Without `features_fit` the recipe is refused before anything runs.
    let bad = write_recipe(dir.path(), &text.replace("features_fit = \"fit\"\n", ""));
    let out = pipeline().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("feature-fit stage"), "{}", stderr(&out));
    // GEN is a negative entropy: at most 0, and below 0 for a softmax that is not one-hot.
    let gen = stages::formats::npy::read_f64(&scores.join("gen/id.npy")).unwrap();
    assert!(gen.iter().all(|&v| v <= 0.0));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "table").join("report.json")).unwrap())
            .unwrap();
    let methods: Vec<&str> =
        report["rows"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert!(methods.contains(&"maxlogit") && methods.contains(&"gen"), "{methods:?}");
}

/// The whole post-hoc suite on every model kind — base, checkpoint, UM, UMAP, OE, POEM — ends in
/// one report with a row per (model, method, OOD set) (issue 16).
#[test]
fn the_posthoc_suite_runs_on_every_model_kind() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/posthoc.toml");
    let (out, events) = run(&recipe, &dir.path().join("cache"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "table").join("report.json")).unwrap())
            .unwrap();
    let rows = report["rows"].as_array().unwrap();
    let methods = stages::scores::methods::names();
    assert_eq!(methods.len(), 16);
    for model in ["base", "first", "um", "umap", "oe", "poem"] {
        for &method in methods {
            let found = rows
                .iter()
                .filter(|r| {
                    r["scores"] == format!("scores_{model}") && r["method"] == method && r["scope"] != "group"
                })
                .count();
            assert_eq!(found, 3, "{model} / {method}: two OOD sets and their mean");
        }
    }
    for row in rows {
        let auroc = row["auroc"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{row}");
    }
}

#[test]
fn sweep_smoke_recipe_selects_on_validation_data_and_reports_by_swept_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/sweep.toml");
    let (out, events) = run(&recipe, &dir.path().join("cache"), &["--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let finished = stages_with(&events, "finished");
    // base 2, zeta 2×2, um 2×2, um_zeta 3×2, umap 2×2×2, 2 selections ×2, control 2, six score
    // stages (2 + 2 + 2 + 4 + 6 + 8), two reports.
    assert_eq!(finished.len(), 2 + 4 + 4 + 6 + 8 + 4 + 2 + 2 + 24 + 2, "{finished:?}");
    assert!(finished.contains(&"umap[keep=0.5,zeta.delta=0.99]@1".to_string()), "{finished:?}");

    // Each selection read its seed's variants and chose the best eligible one by the rule.
    for seed in [0, 1] {
        let selected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(outputs_of(&events, &format!("pick_um@{seed}")).join("selected.json")).unwrap(),
        )
        .unwrap();
        let candidates = selected["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 3, "ζ ∈ {{0, 0.1, 0.3}}");
        let zetas: Vec<&str> = candidates.iter().map(|c| c["params"]["zeta"].as_str().unwrap()).collect();
        assert_eq!(zetas, ["0.0", "0.1", "0.3"]);
        let best_accuracy = candidates.iter().map(|c| c["id_accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
        let eligible: Vec<usize> = (0..3)
            .filter(|&i| {
                100.0 * (best_accuracy - candidates[i]["id_accuracy"].as_f64().unwrap()) <= 1.0 + 1e-9
            })
            .collect();
        let fpr = |i: usize| candidates[i]["mean"]["fpr95"].as_f64().unwrap();
        let expected = eligible.iter().copied().fold(None, |best: Option<usize>, i| match best {
            Some(b) if fpr(b) <= fpr(i) => Some(b),
            _ => Some(i),
        });
        assert_eq!(selected["chosen"].as_u64().map(|c| c as usize), expected);
        assert_eq!(selected["validation_ood"], serde_json::json!(["mnist_6_7"]));
        // The chosen model is a copy of that variant's final weights.
        let pick = outputs_of(&events, &format!("pick_um@{seed}"));
        let zeta = zetas[expected.unwrap()];
        let variant = outputs_of(&events, &format!("um_zeta[zeta={zeta}]@{seed}"));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(variant.join("checkpoints.json")).unwrap()).unwrap();
        let last = index["epochs"].as_array().unwrap().last().unwrap().as_u64().unwrap();
        assert_eq!(
            std::fs::read(pick.join("model.safetensors")).unwrap(),
            std::fs::read(variant.join(format!("checkpoints/epoch-{last:04}.safetensors"))).unwrap()
        );
    }

    // Over checkpoints: one candidate per kept epoch, each with its epoch.
    let selected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outputs_of(&events, "pick_epoch@1").join("selected.json")).unwrap(),
    )
    .unwrap();
    let epochs: Vec<u64> =
        selected["candidates"].as_array().unwrap().iter().map(|c| c["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 2]);
    assert_eq!(selected["over"], "checkpoints");

    // The sweep report: a row group per variant, a column per swept parameter.
    let sweeps = outputs_of(&events, "sweeps");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sweeps.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // (2 δ + 3 ζ + 4 δ×keep variants) × 2 methods × (2 sets + 2 groups + mean).
    assert_eq!(rows.len(), (2 + 3 + 4) * 2 * 5);
    // ζ as used: um_zeta's swept value; um's from its δ's constraint estimate of that seed.
    for r in rows.iter().filter(|r| r["scores"] == "scores_um_zeta") {
        let written: f64 = r["params"]["um_zeta.zeta"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["zeta"]["values"], serde_json::json!([written, written]));
    }
    for r in rows.iter().filter(|r| r["scores"] == "scores_um") {
        let delta = r["params"]["zeta.delta"].as_str().unwrap();
        for seed in [0, 1] {
            let c: serde_json::Value = serde_json::from_slice(
                &std::fs::read(
                    outputs_of(&events, &format!("zeta[delta={delta}]@{seed}")).join("constraint.json"),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(r["zeta"]["values"][seed], c["zeta"], "δ = {delta}, seed {seed}");
        }
    }
    assert!(rows.iter().all(|r| r["fpr95"]["values"].as_array().unwrap().len() == 2), "2 seeds in every row");
    let umap_row = rows.iter().find(|r| r["scores"] == "scores_umap").unwrap();
    assert_eq!(umap_row["params"].as_object().unwrap().len(), 2, "keep and zeta.delta");
    let csv = std::fs::read_to_string(sweeps.join("report.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for column in ["zeta.delta", "um_zeta.zeta", "umap.keep"] {
        assert!(header.contains(column), "{column} in {header}");
    }
    let html = std::fs::read_to_string(sweeps.join("report.html")).unwrap();
    // Per group, the curves come first and the long sweep table is folded below them.
    let curves = html.find("Each metric against each swept parameter").expect("sweep curves");
    assert!(curves < html.find("<details><summary>Table, group").expect("a folded group table"));
    assert!(html.matches("class=\"band\"").count() >= 3, "bands of ± std");

    // The selection report says plainly whether the selected models beat the control.
    let md = std::fs::read_to_string(outputs_of(&events, "selected").join("report.md")).unwrap();
    assert!(md.contains("## Against the baseline `scores_control`"), "{md}");
    assert!(
        md.contains("### group `semantic` (mnist_8_9)") && md.contains("### group `noise` (noise)"),
        "{md}"
    );
    assert!(md.contains("On group `semantic` (mnist_8_9), scores_pick_um / energy"), "{md}");
    // What each selection chose, per seed, as its selected.json says.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outputs_of(&events, "selected").join("report.json")).unwrap())
            .unwrap();
    let pick = report["selections"].as_array().unwrap().iter().find(|s| s["select"] == "pick_um").unwrap();
    for seed in [0u64, 1] {
        let selected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(outputs_of(&events, &format!("pick_um@{seed}")).join("selected.json")).unwrap(),
        )
        .unwrap();
        let chosen = &selected["candidates"][selected["chosen"].as_u64().unwrap() as usize];
        let zeta = chosen["params"]["zeta"].as_str().unwrap();
        let row = pick["per_seed"].as_array().unwrap().iter().find(|c| c["seed"] == seed).unwrap();
        assert_eq!(row["chosen"], format!("zeta={zeta}"));
        assert_eq!(row["validation_fpr95"], chosen["mean"]["fpr95"]);
        assert_eq!(row["zeta"].as_f64().unwrap(), zeta.parse::<f64>().unwrap());
        // ce_control is um_zeta's recipe with ζ = 0: choosing ζ = 0 is choosing the control.
        assert_eq!(row["same_as_baseline"], zeta.parse::<f64>().unwrap() == 0.0, "{row}");
    }
    assert!(md.contains("## What `pick_um` chose (for `scores_pick_um`)"), "{md}");
    let umap = report["selections"].as_array().unwrap().iter().find(|s| s["select"] == "pick_umap").unwrap();
    assert!(
        umap["per_seed"].as_array().unwrap().iter().all(|c| c["zeta"].as_f64().is_some_and(|z| z > 0.0)),
        "{umap}"
    );

    // `dag --dot` draws each swept stage in a cluster named by its values.
    let dot = pipeline().args(["dag", "--dot"]).arg(&recipe).output().unwrap();
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(
        dot.contains("subgraph \"cluster_zeta\"") && dot.contains("sweep: delta ∈ {0.95, 0.99}"),
        "{dot}"
    );

    // A rerun computes nothing; `plan` shows each sweep as one line.
    let (_, events) = run(&recipe, &dir.path().join("cache"), &[]);
    assert!(stages_with(&events, "finished").is_empty());
    let plan =
        pipeline().arg("status").arg(&recipe).arg("--cache").arg(dir.path().join("cache")).output().unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains(
            "cached    umap[keep ∈ {0.5, 0.8}; zeta.delta ∈ {0.95, 0.99}] × seeds {0, 1} (umap): 8 cached"
        ),
        "{text}"
    );
}
