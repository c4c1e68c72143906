//! Fault injection through the real binary (issue 12): a reader that goes away, a truncated or
//! edited manifest. Each ends with nothing lost and nothing wrong reused. (Interrupted commits,
//! gc during a run and special files in the cache are in cache_behaviour.rs.)
mod common;
use common::*;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `pipeline ARGS` with its stdout closed right away; returns the exit code, within a
/// minute (a hang fails the test).
fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> Option<i32> {
    let mut child = pipeline().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!err.contains("panicked"), "{err}");
            return status.code();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "hangs on a closed stdout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_closed_stdout_neither_panics_nor_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let um = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/um.toml");
    let os = |s: &str| std::ffi::OsString::from(s);
    // Four workers emitting JSON events into a closed pipe: the run still completes.
    let code = with_closed_stdout(&[
        os("run").as_os_str(),
        um.as_os_str(),
        os("--json").as_os_str(),
        os("--jobs").as_os_str(),
        os("4").as_os_str(),
        os("--cache").as_os_str(),
        cache.as_os_str(),
    ]);
    assert_eq!(code, Some(0));
    let (out, events) = run(&um, &cache, &[]);
    assert!(out.status.success());
    assert!(stages_with(&events, "finished").is_empty(), "the closed-stdout run computed everything");
    for _ in 0..10 {
        let code = with_closed_stdout(&[
            os("status").as_os_str(),
            um.as_os_str(),
            os("--cache").as_os_str(),
            cache.as_os_str(),
        ]);
        assert_eq!(code, Some(0));
    }
}

#[test]
fn a_truncated_or_edited_manifest_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, r#"["energy"]"#));
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entry = outputs_of(&events, "scores_base@0").parent().unwrap().to_path_buf();
    let manifest = entry.join("manifest.json");
    let original = std::fs::read(&manifest).unwrap();

    // Truncated: unreadable, recomputed.
    std::fs::write(&manifest, &original[..original.len() / 2]).unwrap();
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["scores_base@0"]);

    // A file shortened and its recorded size edited to match: type and size pass, the content
    // hash does not, so `run` recomputes it.
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let record = value["files"]["energy/id.npy"].as_object_mut().unwrap();
    record.insert("size".into(), serde_json::json!(128));
    std::fs::write(&manifest, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    let scores = entry.join("out/energy/id.npy");
    let bytes = std::fs::read(&scores).unwrap();
    std::fs::write(&scores, &bytes[..128]).unwrap();
    let (out, events) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished"), ["scores_base@0"]);
    assert_eq!(std::fs::read(&scores).unwrap(), bytes, "recomputed to the same bytes");
}
