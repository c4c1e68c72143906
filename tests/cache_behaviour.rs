//! The cache through the real binary: reruns, parameter changes, interruption, corruption,
//! concurrency and determinism.
mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

const ALL: [&str; 5] = ["base@0", "first@0", "scores_base@0", "scores_first@0", "table"];

#[test]
fn second_run_executes_nothing_and_a_change_reruns_exactly_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(2, r#"["energy"]"#));

    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ALL);

    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success());
    assert!(stages_with(&events, "finished").is_empty());
    assert_eq!(stages_with(&events, "reused"), ALL);

    // Change one parameter of one score stage.
    std::fs::write(&recipe, tiny_recipe(2, r#"["energy", "msp"]"#)).unwrap();
    let plan = pipeline().arg("plan").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("will run  scores_first (score)"), "{plan}");
    assert!(plan.contains("param methods"), "{plan}");
    assert!(plan.contains("will run  table (report)"), "{plan}");
    assert!(plan.contains("upstream `scores_first` will run"), "{plan}");
    assert!(!plan.contains("will run  base"), "{plan}");
    assert!(plan.contains("2 of 5 stage(s) will run"), "{plan}");

    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success());
    assert_eq!(stages_with(&events, "finished"), ["scores_first@0", "table"]);
    assert_eq!(stages_with(&events, "reused"), ["base@0", "first@0", "scores_base@0"]);

    // `status` now reports everything cached; --force reruns the named stage only, and its
    // identical output leaves its dependents cached.
    let status = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("0 of 5 stage(s) will run"));
    let (_, events) = run(&recipe, &cache, &["--force", "first"]);
    assert_eq!(stages_with(&events, "finished"), ["first@0"]);
    assert_eq!(stages_with(&events, "reused").len(), 4);
}

#[test]
fn an_interrupted_run_leaves_no_complete_looking_entry_and_the_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Enough epochs that training cannot finish within the 300 ms before the kill, however fast
    // the training step gets (40 epochs did, once the CPU kernels were rewritten).
    let recipe = write_recipe(dir.path(), &tiny_recipe(5000, r#"["energy"]"#));
    let mut child = pipeline()
        .arg("run")
        .arg(&recipe)
        .arg("--json")
        .arg("--cache")
        .arg(&cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training has started, then kill the process in the middle of the stage.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("\"started\"") {
                break;
            }
        }
        seen
    });
    let seen = reader.join().unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("base@0"));
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();

    // Nothing under objects/ has a manifest: no entry looks complete.
    let objects = cache.join("objects");
    let complete = std::fs::read_dir(&objects)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("manifest.json").exists())
        .count();
    assert_eq!(complete, 0, "a killed stage must not leave a committed entry");
    let status = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("will run  base (train)"));

    // The rerun (a shorter training, so the test stays quick) completes and sweeps the leftovers.
    std::fs::write(&recipe, tiny_recipe(2, r#"["energy"]"#)).unwrap();
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ALL);
    let gc = pipeline().arg("gc").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    assert!(gc.status.success());
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0, "staging leftovers swept");
}

#[test]
fn a_corrupted_artifact_is_detected_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, r#"["energy"]"#));
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success());
    let scores = outputs_of(&events, "scores_base@0").join("energy/ood.npy");
    let original = std::fs::read(&scores).unwrap();
    let mut corrupted = original.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    std::fs::write(&scores, corrupted).unwrap();

    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
    assert!(stderr(&out).contains("energy/ood.npy"), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["scores_base@0"]);
    // The recomputed output is byte-identical, so the report downstream stays cached.
    assert_eq!(std::fs::read(&scores).unwrap(), original);
    assert!(stages_with(&events, "reused").contains(&"table".to_string()));
}

#[test]
fn two_concurrent_runs_compute_each_stage_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(3, r#"["energy"]"#));
    let spawn = || {
        pipeline()
            .arg("run")
            .arg(&recipe)
            .arg("--json")
            .arg("--cache")
            .arg(&cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let mut finished = stages_with(&parse_events(&a.stdout), "finished");
    finished.extend(stages_with(&parse_events(&b.stdout), "finished"));
    finished.sort();
    assert_eq!(finished, ALL, "each stage computed exactly once across both runs");
}

#[test]
fn same_recipe_and_seed_give_identical_keys_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(2, r#"["energy", "msp"]"#));
    let (_, first) = run(&recipe, &dir.path().join("cache-a"), &[]);
    let (_, second) = run(&recipe, &dir.path().join("cache-b"), &[]);
    let keys = |events: &[serde_json::Value]| {
        let mut k: Vec<(String, String)> = events
            .iter()
            .filter(|e| e["event"] == "finished")
            .map(|e| (e["stage"].as_str().unwrap().to_string(), e["key"].as_str().unwrap().to_string()))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&first), keys(&second));
    assert_eq!(keys(&first).len(), 5);
    for file in ["energy/id.npy", "energy/ood.npy", "msp/noise.npy", "id_predictions.npy"] {
        let a = std::fs::read(outputs_of(&first, "scores_base@0").join(file)).unwrap();
        let b = std::fs::read(outputs_of(&second, "scores_base@0").join(file)).unwrap();
        assert_eq!(a, b, "{file} differs between identical runs");
    }
    // A different seed gives different keys and different trained weights.
    let reseeded =
        tiny_recipe(2, r#"["energy", "msp"]"#).replace("name = \"tiny\"", "name = \"tiny\"\nseeds = [1]");
    let recipe = write_recipe(dir.path(), &reseeded);
    let (_, third) = run(&recipe, &dir.path().join("cache-a"), &[]);
    assert_eq!(stages_with(&third, "finished").len(), 5);
}

#[test]
fn a_failed_stage_stops_its_dependents_and_the_exit_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Epoch 1 is kept but epoch 5 is not: the checkpoint stage fails at run time.
    let text = tiny_recipe(2, r#"["energy"]"#).replace("epoch = 1", "epoch = 5");
    let recipe = write_recipe(dir.path(), &text);
    let started = Instant::now();
    let (out, events) = run(&recipe, &cache, &["--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("kept no checkpoint of epoch 5"), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "failed"), ["first@0"]);
    assert_eq!(stages_with(&events, "skipped"), ["scores_first@0", "table"]);
    // The independent branch finished.
    assert_eq!(stages_with(&events, "finished"), ["base@0", "scores_base@0"]);
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// The keys of the entries a run committed, by stage id.
fn committed_keys(events: &[serde_json::Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| (e["stage"].as_str().unwrap().to_string(), e["key"].as_str().unwrap().to_string()))
        .collect()
}

/// `gc` never deletes an entry a running pipeline holds, and `--dry-run` lists exactly what a
/// real gc deletes (issue 12).
#[test]
fn gc_keeps_entries_held_by_a_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, r#"["energy"]"#));
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let keys = committed_keys(&events);
    assert_eq!(keys.len(), ALL.len());
    // Another recipe uses none of these entries; a "running pipeline" (this test) holds one.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, tiny_recipe(1, r#"["energy"]"#).replace("limit = 192", "limit = 190")).unwrap();
    let store = cache::Store::open(&cache).unwrap();
    let held_key = cache::CacheKey::parse(&keys[0].1).unwrap();
    let hold = store.hold(&held_key).unwrap();
    let gc = |extra: &[&str]| {
        let out = pipeline()
            .arg("gc")
            .arg(&other)
            .arg("--json")
            .args(extra)
            .arg("--cache")
            .arg(&cache)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = gc(&["--dry-run"]);
    let real = gc(&[]);
    assert_eq!(dry["deleted"], real["deleted"], "the dry run lists what gc deletes");
    assert_eq!(real["deleted"].as_array().unwrap().len(), ALL.len() - 1);
    assert_eq!(real["in_use"], serde_json::json!([keys[0].1]));
    assert!(store.entry_dir(&held_key).join("manifest.json").is_file(), "the held entry is kept");
    // Deleted entries leave no lock files behind (issue 32); the held one keeps its own.
    let locks: Vec<String> = std::fs::read_dir(cache.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(locks.iter().all(|name| name.starts_with(&keys[0].1)), "{locks:?}");
    drop(hold);
    assert_eq!(gc(&[])["deleted"], serde_json::json!([keys[0].1]), "released, it goes");
    assert_eq!(std::fs::read_dir(cache.join("locks")).unwrap().count(), 0, "no lock file is left");
}

/// `gc` refuses, deleting nothing, when a recipe's dataset cannot be fingerprinted (an unset
/// data root): its entries would otherwise all look unused (issue 12).
#[test]
fn gc_refuses_when_a_dataset_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let text = tiny_recipe(1, r#"["energy"]"#);
    let recipe = write_recipe(dir.path(), &text);
    let (out, _) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(&recipe, text.replace(&data_dir().display().to_string(), "/unmounted/mnist")).unwrap();
    let out = pipeline().arg("gc").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a data error: {}", stderr(&out));
    assert!(
        stderr(&out).contains("dataset `id`") && stderr(&out).contains("nothing was deleted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(cache.join("objects")).unwrap().count(), ALL.len());
}

/// The failure the issue reproduced 5 times out of 5: `gc` for another recipe while a run is
/// under way. The run must finish, whatever gc deleted meanwhile.
#[test]
fn a_run_survives_gc_for_another_recipe_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let um = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/um.toml");
    let smoke = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/smoke.toml");
    let (out, _) = run(&um, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Rerun with every stage forced while gc runs again and again.
    let mut child = pipeline()
        .arg("run")
        .arg(&um)
        .args(["--quiet", "--jobs", "2", "--cache"])
        .arg(&cache)
        .args(["--force", "base", "--force", "zeta", "--force", "um", "--force", "umap", "--force", "table"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
        let out =
            pipeline().arg("gc").arg(&smoke).arg("--quiet").arg("--cache").arg(&cache).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the run failed under gc: {}", String::from_utf8_lossy(&out.stderr));
}

/// `status` checks entries as `run` does (issue 12): a truncated artifact, a FIFO in place of
/// one (never opened: `run` would otherwise block on it), or a file dropped from both the
/// manifest and the disk make the entry unusable; `run` recomputes it without hanging.
#[test]
fn status_and_run_find_damaged_entries_without_opening_special_files() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(2, r#"["energy"]"#));
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = || {
        let out = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(status().contains("0 of 5 stage(s) will run"));

    // 1. A truncated score file.
    let scores = outputs_of(&events, "scores_base@0").join("energy/ood.npy");
    let bytes = std::fs::read(&scores).unwrap();
    std::fs::write(&scores, &bytes[..100]).unwrap();
    let text = status();
    assert!(text.contains("will run  scores_base (score)") && text.contains("has 100 bytes"), "{text}");
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["scores_base@0"]);

    // 2. A FIFO in place of an artifact: detected by its type, never opened.
    let index = outputs_of(&events, "scores_base@0").join("scores.json");
    std::fs::remove_file(&index).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&index).status().unwrap();
    assert!(made.success());
    assert!(status().contains("is not a regular file"));
    let started = Instant::now();
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success() && started.elapsed() < Duration::from_secs(60), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["scores_base@0"]);

    // 3. A checkpoint removed from the manifest's list and from the disk.
    let base = outputs_of(&events, "base@0");
    let entry = base.parent().unwrap().to_path_buf();
    let manifest_path = entry.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let files = manifest["files"].as_object_mut().unwrap();
    let checkpoint = files.keys().find(|k| k.starts_with("checkpoints/epoch-0001")).unwrap().clone();
    files.remove(&checkpoint);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::remove_file(base.join(&checkpoint)).unwrap();
    let text = status();
    assert!(text.contains("will run  base (train)") && text.contains("output digest"), "{text}");
}

/// A run lets go of each entry's hold once nothing left in it reads the entry, so a run of more
/// instances than the process may open files still completes (issue 32: a cached run of 20,000
/// instances failed every instance past the open-file limit).
#[test]
fn a_run_of_more_instances_than_open_files_completes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let batch_sizes: Vec<String> = (1..=150).map(|b| b.to_string()).collect();
    let text = tiny_recipe(1, r#"["energy"]"#).replace(
        "[stages.scores_first]",
        &format!(
            "[stages.swept]\nkind = \"score\"\nmodel = \"base\"\nid = \"id\"\nood = [\"ood\"]\nmethods = [\"msp\"]\n\
             batch_size = {{ sweep = [{}] }}\n\n[stages.scores_first]",
            batch_sizes.join(", ")
        ),
    );
    let recipe = write_recipe(dir.path(), &text);
    let (out, _) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Cached, under an open-file limit below the number of instances (155).
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec '{}' run '{}' --cache '{}' --json",
            env!("CARGO_BIN_EXE_pipeline"),
            recipe.display(),
            cache.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let done = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "reused")
        .count();
    assert_eq!(done, 155, "every instance reused");
}
