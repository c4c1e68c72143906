//! Every command prints through one shell: `--json` gives one parseable JSON value and nothing
//! else on stdout, `--quiet` silences status lines, `--color` decides escape codes, and each
//! class of error has its own exit status.
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn smoke_recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/smoke.toml")
}

fn json_of(args: &[&str], cache: &Path) -> serde_json::Value {
    let out = pipeline().args(args).arg("--cache").arg(cache).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn json_results_of_plan_status_show_dag_gc_models_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = smoke_recipe();
    let recipe = recipe.to_str().unwrap();

    let plan = json_of(&["plan", recipe, "--json"], &cache);
    let instances = plan["instances"].as_array().unwrap();
    assert_eq!(plan["will_run"].as_u64().unwrap() as usize, instances.len());
    assert!(instances.iter().all(|i| i["cached"] == false && i["reasons"][0].is_string()));
    // Stages that read no upstream have their key before anything runs.
    let base = instances.iter().find(|i| i["stage"] == "base@0").unwrap();
    assert_eq!(base["key"].as_str().unwrap().len(), 64);

    let (out, _) = run(Path::new(recipe), &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = json_of(&["status", recipe, "--json"], &cache);
    assert_eq!(status["will_run"], 0);
    let keys: Vec<&str> =
        status["instances"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert!(keys.contains(&base["key"].as_str().unwrap()), "the planned key is the key run");

    let show = json_of(&["show", recipe, "table", "--json"], &cache);
    let outputs = PathBuf::from(show["instances"][0]["outputs"].as_str().unwrap());
    assert!(outputs.join("report.json").is_file());
    assert!(show["instances"][0]["files"]["report.md"].as_u64().unwrap() > 0);

    let out = pipeline().args(["dag", recipe, "--json"]).output().unwrap();
    let dag: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = dag["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "first").unwrap();
    assert_eq!(first["reads"], serde_json::json!(["base"]));

    let gc = json_of(&["gc", recipe, "--dry-run", "--json"], &cache);
    assert_eq!(gc["deleted"].as_array().unwrap().len(), 0, "the recipe uses every entry");
    assert_eq!(gc["kept"].as_u64().unwrap() as usize, keys.len());

    let out = pipeline().args(["models", "--json"]).output().unwrap();
    let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(models["models"][1]["weights"], 745_174);
    let out = pipeline().args(["fetch", "--json"]).output().unwrap();
    let fetch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(fetch["datasets"].as_array().unwrap().iter().any(|d| d["name"] == "cifar10"));
}

#[test]
fn quiet_silences_status_lines_and_color_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out =
        pipeline().arg("run").arg(smoke_recipe()).arg("--cache").arg(&cache).arg("--quiet").output().unwrap();
    assert!(out.status.success());
    assert_eq!(stderr(&out), "", "nothing but warnings and errors with --quiet");
    let out = pipeline()
        .arg("run")
        .arg(smoke_recipe())
        .arg("--cache")
        .arg(&cache)
        .args(["--color", "always"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("\x1b[1;32m      Reused\x1b[0m"), "{}", stderr(&out));
    let out = pipeline().arg("run").arg(smoke_recipe()).arg("--cache").arg(&cache).output().unwrap();
    assert!(
        stderr(&out).contains("      Reused") && !stderr(&out).contains('\x1b'),
        "no colour off a terminal"
    );
}

#[test]
fn each_class_of_error_has_its_own_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    // Usage: a stage the recipe does not have.
    let out = pipeline().arg("show").arg(smoke_recipe()).arg("nosuch").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Cache: the cache folder is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = pipeline().arg("status").arg(smoke_recipe()).arg("--cache").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("Caused by:"), "the OS cause is kept: {}", stderr(&out));
    // I/O: a score file that does not exist.
    let missing = dir.path().join("missing.npy");
    let out = pipeline().arg("metrics").arg(&missing).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    // Data: a score file that is not a .npy file.
    let out = pipeline().arg("metrics").arg(&file).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // The cases README's table got wrong (issue 32). A recipe that does not exist is a file
    // named on the command line that cannot be read: I/O, 6, for `run` and `check` alike.
    for command in ["run", "check", "plan"] {
        let out = pipeline().arg(command).arg(dir.path().join("nope.toml")).output().unwrap();
        assert_eq!(out.status.code(), Some(6), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
    }
    // A NaN score is data that is not what it should be: 3.
    let nan = dir.path().join("nan.npy");
    let fine = dir.path().join("fine.npy");
    stages::formats::npy::write_f64(&nan, &[0.5, f64::NAN]).unwrap();
    stages::formats::npy::write_f64(&fine, &[0.1, 0.2]).unwrap();
    let out = pipeline().arg("metrics").arg(&fine).arg(&nan).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("NaN"), "{}", stderr(&out));
    // A set with no archive to fetch: the request is the problem, 2, and it says what to do.
    let out = pipeline().arg("fetch").arg("places365").arg("--to").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("places365"), "{}", stderr(&out));
}

/// `metrics` reads a file's header and compares the size it declares with the file's before
/// reading any data: a 6 GiB sparse file and /dev/zero are refused at once (issue 32).
#[test]
fn metrics_reads_the_header_first() {
    let dir = tempfile::tempdir().unwrap();
    let fine = dir.path().join("fine.npy");
    stages::formats::npy::write_f64(&fine, &[0.1, 0.2, 0.3]).unwrap();
    let big = dir.path().join("big.npy");
    std::fs::copy(&fine, &big).unwrap();
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(6 << 30).unwrap();
    let out = pipeline().arg("metrics").arg(&fine).arg(&big).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("data bytes for 3 values"), "{}", stderr(&out));
    let out = pipeline().arg("metrics").arg(&fine).arg("/dev/zero").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a .npy file"), "{}", stderr(&out));
}

/// Instances are named as the run log names them (`base@1`) by `show`, `--only`, `--force` and
/// `plan` (issue 19).
#[test]
fn commands_accept_instance_labels() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let text = tiny_recipe(1, "[\"msp\"]").replace("name = \"tiny\"", "name = \"tiny\"\nseeds = [0, 1]");
    let recipe = write_recipe(dir.path(), &text);
    // --only base@1: that instance alone, not seed 0.
    let (out, events) = run(&recipe, &cache, &["--only", "base@1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["base@1"]);
    // show base@1 lists that instance; base@0 is not computed yet (exit status 1).
    let show = |what: &str| {
        pipeline().arg("show").arg(&recipe).arg(what).arg("--cache").arg(&cache).output().unwrap()
    };
    let out = show("base@1");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("base@1: ") && !text.contains("base@0"), "{text}");
    assert_eq!(show("base@0").status.code(), Some(1));
    assert_eq!(show("base").status.code(), Some(1), "the stage means every seed");
    // --force base@1 recomputes that instance only; plan --only first@0 lists what it needs.
    let (out, events) = run(&recipe, &cache, &["--only", "first", "--force", "base@1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["base@0", "base@1", "first@0", "first@1"]);
    let out = pipeline()
        .arg("plan")
        .arg(&recipe)
        .args(["--only", "scores_first@0", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("will run  scores_first@0") && !text.contains("@1"), "{text}");
    // Unknown seeds and instance names on a stage across seeds are usage errors.
    let out = show("base@5");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no seed `5`"), "{}", stderr(&out));
    assert_eq!(show("table@0").status.code(), Some(2));
}

/// Writes an uncompressed IDX pair `{prefix}-images-idx3-ubyte` / `{prefix}-labels-idx1-ubyte`
/// of `count` `side`×`side` images.
fn write_idx(dir: &Path, prefix: &str, count: u32, side: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for v in [count, side, side] {
        images.extend(v.to_be_bytes());
    }
    images.extend((0..count * side * side).map(|i| (i % 251) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(count.to_be_bytes());
    labels.extend((0..count).map(|i| (i % 3) as u8));
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

/// `check` reads dataset headers: a missing IDX file and images of another shape than the
/// model's are reported at the field that names them, before anything runs; a test-only IDX
/// set is fine as an OOD set (issue 19).
#[test]
fn check_finds_missing_files_and_wrong_shapes_before_running() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(&dir.path().join("digits8"), "t10k", 12, 8);
    write_idx(&dir.path().join("digits28"), "t10k", 12, 28);
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let text = tiny_recipe(1, "[\"msp\"]")
        + r#"
[datasets.digits8]
format = "idx"
root = "digits8"

[datasets.digits28]
format = "idx"
root = "digits28"

[datasets.nothing]
format = "idx"
root = "empty"

[stages.scores_more]
kind = "score"
model = "base"
id = "id"
ood = ["digits28", "digits8", "nothing"]
"#;
    let recipe = write_recipe(dir.path(), &text);
    let out = pipeline().arg("check").arg("--json").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = verdict["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() as u64 + 1;
    let ood_line = line_of("ood = [\"digits28\"");
    assert_eq!(errors[0]["line"], ood_line);
    assert_eq!(errors[1]["line"], ood_line);
    let messages: Vec<&str> = errors.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m
                .contains("dataset `digits8` has images of shape [1, 8, 8], the model takes [1, 28, 28]")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("`nothing`") && m.contains("missing IDX file")),
        "{messages:?}"
    );
    // The columns point at the offending entries of the list.
    let columns: Vec<u64> = errors.iter().map(|e| e["column"].as_u64().unwrap()).collect();
    let ood = text.lines().nth(ood_line as usize - 1).unwrap();
    assert!(columns.contains(&(ood.find("\"digits8\"").unwrap() as u64 + 1)), "{columns:?} in {ood}");
    // Without the bad sets the recipe is valid: the test-only 28×28 set is a fine OOD set.
    let fixed = text.replace(r#"["digits28", "digits8", "nothing"]"#, r#"["digits28"]"#);
    std::fs::write(&recipe, fixed).unwrap();
    let out = pipeline().arg("check").arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The benchmark recipes stay valid, data included (bench/epoch_vs_pytorch.py runs
/// bench/epoch.toml; bench/scoring.sh runs bench/scoring.toml).
#[test]
fn benchmark_recipes_are_valid() {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let out = pipeline()
        .arg("check")
        .arg(bench.join("epoch.toml"))
        .arg(bench.join("scoring.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Sizes that cannot fit in memory are refused by `check` at their position, with the estimate,
/// instead of aborting `run` (issue 12).
#[test]
fn check_refuses_sizes_that_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(1, "[\"msp\"]")
        .replace("count = 96", "count = 1000000000000")
        .replace("widths = [4, 8]", "widths = [100000000, 8]");
    let recipe = write_recipe(dir.path(), &text);
    let out = pipeline().arg("check").arg("--json").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = verdict["errors"].as_array().unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() as u64 + 1;
    let at = |line: u64| {
        errors.iter().find(|e| e["line"] == line).map(|e| e["message"].as_str().unwrap().to_string())
    };
    let count = at(line_of("count = 1000000000000")).expect("the count is refused");
    assert!(count.contains("PiB") && count.contains("more than this machine"), "{count}");
    let widths = at(line_of("widths = [100000000")).expect("the widths are refused");
    assert!(widths.contains("TiB"), "{widths}");
}
