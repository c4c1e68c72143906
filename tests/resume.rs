//! A training stage killed mid-run (`kill -9`) resumes from its last finished epoch on the
//! rerun, and ends with the bytes of an uninterrupted run.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn recipe(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"[recipe]
name = "resume"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2]
limit = 192

[stages.base]
kind = "train"
data = "id"
widths = [4, 8]
strides = [2, 2]
epochs = 6
batch_size = 32
lr = 0.05
dropout = 0.2
checkpoint_every = 2

[stages.um]
kind = "um"
model = "base"
data = "id"
zeta = 0.3
epochs = 300
batch_size = 32
lr = 0.01
checkpoint_every = 50
"#,
        data = data_dir().display()
    );
    write_recipe(dir, &text)
}

/// Every output file of every committed entry: (manifest's stage, path) → bytes.
fn outputs(cache: &Path) -> BTreeMap<(String, String), Vec<u8>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(cache.join("objects")).unwrap().flatten() {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("manifest.json")).unwrap()).unwrap();
        let stage = manifest["meta"]["stage"].as_str().unwrap().to_string();
        for name in manifest["files"].as_object().unwrap().keys() {
            all.insert(
                (stage.clone(), name.clone()),
                std::fs::read(entry.path().join("out").join(name)).unwrap(),
            );
        }
    }
    all
}

/// The (stage, file) pairs whose bytes differ between two caches, or that only one has.
fn differences(a: &Path, b: &Path) -> Vec<(String, String)> {
    let (a, b) = (outputs(a), outputs(b));
    let mut names: Vec<&(String, String)> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names.into_iter().filter(|n| a.get(*n) != b.get(*n)).cloned().collect()
}

/// The (epochs done, epochs in all) of a resume state under `cache`, if there is one.
fn resume_progress(cache: &Path) -> Option<(u64, u64)> {
    std::fs::read_dir(cache.join("resume")).ok()?.flatten().find_map(|item| {
        let latest = std::fs::read(item.path().join("latest.json")).ok()?;
        let latest: serde_json::Value = serde_json::from_slice(&latest).ok()?;
        Some((latest["epochs_done"].as_u64()?, latest["epochs_total"].as_u64()?))
    })
}

#[test]
fn a_killed_fine_tune_resumes_and_ends_with_the_uninterrupted_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let (whole, interrupted) = (dir.path().join("whole"), dir.path().join("interrupted"));

    let (out, _) = run(&recipe, &whole, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!whole.join("resume").read_dir().is_ok_and(|mut d| d.next().is_some()), "removed at commit");
    // Every manifest records the class of device that computed its entry.
    for entry in std::fs::read_dir(whole.join("objects")).unwrap().flatten() {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("manifest.json")).unwrap()).unwrap();
        let class = &manifest["meta"]["device_class"];
        assert_eq!(class["kind"], "cpu", "{manifest}");
        assert!(
            class["name"].as_str().is_some_and(|n| !n.is_empty()) && class["candle"] == "0.11.1",
            "{class}"
        );
    }

    // Kill the run once the 300-epoch fine-tune has finished a few epochs.
    let mut command = pipeline();
    command.args(["run", "--quiet", "--cache"]).arg(&interrupted).arg(&recipe);
    let killed_after = kill_mid_fine_tune(command, &interrupted);
    let (done, total) = resume_progress(&interrupted).expect("the state outlives the kill");
    assert!(done >= killed_after && total == 300);

    let status = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&interrupted).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(&format!("will resume after epoch {done}/300")), "{text}");

    // The state says what computed it; as if that had been a GPU, the resumed run says so.
    let latest = std::fs::read_dir(interrupted.join("resume")).unwrap().flatten().next().unwrap().path();
    let latest = latest.join("latest.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&latest).unwrap()).unwrap();
    assert_eq!(state["device_class"]["kind"], "cpu", "{}", state["device_class"]);
    state["device_class"] = serde_json::json!({"kind": "cuda", "name": "NVIDIA H200", "compute_capability": "9.0", "candle": "0.11.1"});
    std::fs::write(&latest, serde_json::to_vec(&state).unwrap()).unwrap();

    let rerun = pipeline().arg("run").arg(&recipe).arg("--cache").arg(&interrupted).output().unwrap();
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(stderr(&rerun).contains(&format!("resuming after epoch {done}/300")), "{}", stderr(&rerun));
    assert!(
        stderr(&rerun)
            .contains("the interrupted run computed on cuda NVIDIA H200 (compute 9.0), this one on cpu"),
        "{}",
        stderr(&rerun)
    );
    assert_eq!(
        differences(&whole, &interrupted),
        [] as [(String, String); 0],
        "weights, checkpoints and history are bit-identical (dropout masks depend on the step, not on a stream)"
    );
    assert!(resume_progress(&interrupted).is_none(), "the state is removed once the entry is committed");
}

#[test]
fn a_damaged_resume_state_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let (whole, damaged) = (dir.path().join("whole"), dir.path().join("damaged"));
    assert!(run(&recipe, &whole, &["--only", "base"]).0.status.success());
    let mut child = pipeline()
        .args(["run", "--quiet", "--only", "base", "--cache"])
        .arg(&damaged)
        .arg(&recipe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a state, then kill; the 6-epoch base may also finish first (then nothing to test
    // here but the bytes).
    let deadline = Instant::now() + Duration::from_secs(120);
    while resume_progress(&damaged).is_none() && child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    if resume_progress(&damaged).is_some() {
        // Flip a byte of the recorded tensors: the digest no longer matches.
        let folder = std::fs::read_dir(damaged.join("resume")).unwrap().next().unwrap().unwrap().path();
        let state = std::fs::read_dir(&folder)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("epoch-"))
            .unwrap()
            .path()
            .join("tensors.safetensors");
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&state, bytes).unwrap();
        let rerun = pipeline()
            .args(["run", "--only", "base"])
            .arg(&recipe)
            .arg("--cache")
            .arg(&damaged)
            .output()
            .unwrap();
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        assert!(stderr(&rerun).contains("starting over; the resume state is unusable"), "{}", stderr(&rerun));
    } else {
        assert!(run(&recipe, &damaged, &["--only", "base"]).0.status.success());
    }
    assert_eq!(differences(&whole, &damaged), [] as [(String, String); 0]);
}

/// A base model, then POEM and OE fine-tunes long enough to be killed mid-run.
fn outlier_recipe(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"[recipe]
name = "resume-outliers"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2]
limit = 192

[datasets.aux]
format = "idx"
root = "{data}"
classes = [6, 7]
limit = 192

[stages.base]
kind = "train"
data = "id"
widths = [4, 8]
strides = [2, 2]
epochs = 2
batch_size = 32
lr = 0.05

[stages.poem]
kind = "poem"
model = "base"
data = "id"
aux = "aux"
aux_batch_size = 16
epochs = 60
batch_size = 32
crop_padding = 2
checkpoint_every = 20

[stages.oe]
kind = "oe"
model = "base"
data = "id"
aux = "aux"
aux_batch_size = 16
epochs = 80
batch_size = 32
crop_padding = 2
checkpoint_every = 20
"#,
        data = data_dir().display()
    );
    write_recipe(dir, &text)
}

#[test]
fn killed_poem_and_oe_fine_tunes_resume_with_their_outlier_state_and_the_uninterrupted_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = outlier_recipe(dir.path());
    let (whole, interrupted) = (dir.path().join("whole"), dir.path().join("interrupted"));
    let (out, _) = run(&recipe, &whole, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run(&recipe, &interrupted, &["--only", "base"]).0.status.success());

    for (stage, epochs) in [("poem", 60), ("oe", 80)] {
        let mut child = pipeline()
            .args(["run", "--quiet", "--only", stage, "--cache"])
            .arg(&interrupted)
            .arg(&recipe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if resume_progress(&interrupted).is_some_and(|(done, total)| total == epochs && done >= 3) {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("`{stage}` ended ({status}) before it could be killed mid-run");
            }
            assert!(Instant::now() < deadline, "no resume state for `{stage}`");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, _) = resume_progress(&interrupted).unwrap();
        let rerun = pipeline()
            .args(["run", "--only", stage])
            .arg(&recipe)
            .arg("--cache")
            .arg(&interrupted)
            .output()
            .unwrap();
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        assert!(
            stderr(&rerun).contains(&format!("{stage}: resuming after epoch {done}/{epochs}")),
            "{}",
            stderr(&rerun)
        );
    }
    assert_eq!(
        differences(&whole, &interrupted),
        [] as [(String, String); 0],
        "weights, checkpoints, history and POEM's selection log are bit-identical"
    );
}

/// Starts `command` and kills it once the 300-epoch fine-tune computing into `cache` has
/// finished at least three epochs; returns the epochs done then.
fn kill_mid_fine_tune(mut command: std::process::Command, cache: &Path) -> u64 {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some((done, 300)) = resume_progress(cache) {
            if done >= 3 {
                child.kill().unwrap();
                child.wait().unwrap();
                return done;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("it ended ({status}) before it could be killed mid fine-tune");
        }
        assert!(Instant::now() < deadline, "no resume state appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `pipeline worker RECIPE --instance um ARGS…`, killed mid fine-tune.
fn kill_worker_mid_fine_tune(recipe: &Path, cache: &Path, args: &[&str]) -> u64 {
    let mut command = pipeline();
    command.args(["worker", "--instance", "um", "--cache"]).arg(cache).args(args).arg(recipe);
    kill_mid_fine_tune(command, cache)
}

/// A forced Slurm job that runs out of time is resubmitted with `--keep-resume`: it continues
/// the forced attempt instead of starting over (which could never finish a training longer
/// than its time limit), and ends with the bytes of an uninterrupted run. A first forced
/// attempt starts over.
#[test]
fn a_forced_worker_starts_over_and_its_resubmission_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let (whole, cache) = (dir.path().join("whole"), dir.path().join("cache"));
    let (out, _) = run(&recipe, &whole, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, _) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The forced first attempt is killed mid-way; its resubmission continues it.
    let done = kill_worker_mid_fine_tune(&recipe, &cache, &["--force"]);
    let resumed = pipeline()
        .args(["worker", "--instance", "um", "--force", "--keep-resume", "--cache"])
        .arg(&cache)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains(&format!("resuming after epoch {done}/300")), "{}", stderr(&resumed));
    assert_eq!(differences(&whole, &cache), [] as [(String, String); 0], "bit-identical");

    // A new forced attempt starts over, whatever an interrupted one left.
    kill_worker_mid_fine_tune(&recipe, &cache, &["--force"]);
    let fresh = pipeline()
        .args(["worker", "--instance", "um", "--force", "--cache"])
        .arg(&cache)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert!(!stderr(&fresh).contains("resuming after epoch"), "{}", stderr(&fresh));
    assert_eq!(differences(&whole, &cache), [] as [(String, String); 0], "bit-identical");
}
