//! `run --executor slurm` on a real Slurm cluster, through the real binary: the single-node
//! cluster of `scripts/slurm-cluster.sh` (CI starts it and sets `SLURM_CONF`). Without a
//! cluster these tests are skipped with a notice, unless `PIPELINE_REQUIRE_SLURM=1` (CI)
//! makes that a failure. The worker test needs no cluster.
mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether a cluster answers; panics when one is required and none does.
fn cluster() -> bool {
    let answers = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("squeue").args(["-h", "--me"]).output().is_ok_and(|o| o.status.success());
    if !answers {
        let required = std::env::var("PIPELINE_REQUIRE_SLURM").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "PIPELINE_REQUIRE_SLURM=1 but no Slurm cluster answers (bash scripts/slurm-cluster.sh start)"
        );
        eprintln!("note: no Slurm cluster (SLURM_CONF unset or squeue fails); skipped");
    }
    answers
}

/// Small requests that fit the CI node, and a quick poll.
const EXECUTOR: &str = r#"
[executor.slurm]
defaults = { cpus = 1, mem = "500M", time = "0:20:00" }
poll_seconds = 0.2
"#;

fn slurm_run(recipe: &Path, cache: &Path, extra: &[&str]) -> (std::process::Output, Vec<Value>) {
    let mut args = vec!["--executor", "slurm"];
    args.extend_from_slice(extra);
    run(recipe, cache, &args)
}

/// The job ids the coordinator's events name for `stage`, in order.
fn jobs_of(events: &[Value], stage: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e["event"] == "job" && e["stage"] == stage) {
        let id = e["job"].as_str().unwrap().to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

fn scontrol_job(id: &str) -> String {
    let out = Command::new("scontrol").args(["show", "job", "-o", id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_worker_refuses_an_instance_whose_upstream_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, "[\"msp\"]"));
    let out = pipeline()
        .args(["worker", "--instance", "first", "--cache"])
        .arg(dir.path().join("cache"))
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("upstream `base` is not in the cache"), "{}", stderr(&out));
    let out = pipeline().args(["worker", "--instance", "nope"]).arg(&recipe).output().unwrap();
    assert!(stderr(&out).contains("no instance labelled `nope`"), "{}", stderr(&out));
}

#[test]
fn the_smoke_recipe_under_slurm_gives_the_local_bytes_and_asks_for_its_gpu() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(2, "[\"msp\", \"energy\"]")
        .replace("checkpoint_every = 1\n", "checkpoint_every = 1\nresources = { gpus = 1 }\n")
        + EXECUTOR;
    let recipe = write_recipe(dir.path(), &text);
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    let (out, _) = run(&recipe, &local, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, events) = slurm_run(&recipe, &slurm, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished").len(), 5, "every instance computed by a job");
    assert_eq!(outputs_by_key(&local), outputs_by_key(&slurm), "same keys, same bytes as the local executor");

    let base = jobs_of(&events, "base@0");
    assert_eq!(base.len(), 1);
    let job = scontrol_job(&base[0]);
    assert!(job.contains("gres/gpu=1") || job.contains("gres:gpu:1"), "a GPU request: {job}");
    let table = jobs_of(&events, "table");
    let job = scontrol_job(&table[0]);
    assert!(!job.contains("gpu"), "the report asks for no GPU: {job}");

    // Everything cached: no job at all.
    let (out, events) = slurm_run(&recipe, &slurm, &[]);
    assert!(out.status.success());
    assert_eq!(stages_with(&events, "reused").len(), 5);
    assert!(events.iter().all(|e| e["event"] != "job"));
}

#[test]
fn a_failing_job_skips_its_dependents_shows_its_log_and_the_rest_finishes() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[recipe]
name = "failing"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2]
limit = 192

[stages.good]
kind = "train"
data = "id"
widths = [4, 8]
strides = [2, 2]
epochs = 1
batch_size = 32
lr = 0.05

[stages.broken]
kind = "train"
data = "id"
widths = [4, 8]
strides = [2, 2]
epochs = 2
batch_size = 32
lr = 1e30

[stages.after]
kind = "checkpoint"
from = "broken"
epoch = 1
{EXECUTOR}"#,
        data = data_dir().display()
    );
    let recipe = write_recipe(dir.path(), &text);
    let (out, events) = slurm_run(&recipe, &dir.path().join("cache"), &[]);
    assert!(!out.status.success());
    assert_eq!(stages_with(&events, "finished"), ["good@0"]);
    assert_eq!(stages_with(&events, "skipped"), ["after@0"]);
    let failure = events.iter().find(|e| e["event"] == "failed").expect("a failure event");
    assert_eq!(failure["stage"], "broken@0");
    let message = failure["error"].as_str().unwrap();
    assert!(message.contains("FAILED") && message.contains("line(s) of"), "{message}");
    assert!(message.contains("training diverged"), "the log's tail says why: {message}");
}

/// Starts `run --executor slurm --json` in the background; returns the child and a channel of
/// its events.
fn spawn_coordinator(recipe: &Path, cache: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = pipeline()
        .args(["run", "--json", "--executor", "slurm", "--cache"])
        .arg(cache)
        .arg(recipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if send.send(event).is_err() {
                    break;
                }
            }
        }
    });
    (child, receive)
}

/// A recipe with one training stage long enough to be caught running.
fn long_training(dir: &Path, epochs: usize) -> PathBuf {
    let text = format!(
        r#"[recipe]
name = "long"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2, 3]
limit = 1000

[stages.base]
kind = "train"
data = "id"
widths = [8, 16]
strides = [2, 2]
epochs = {epochs}
batch_size = 32
lr = 0.05
checkpoint_every = 2
{EXECUTOR}"#,
        data = data_dir().display()
    );
    write_recipe(dir, &text)
}

/// The id of the first job the coordinator reports running (waits up to two minutes).
fn running_job(events: &std::sync::mpsc::Receiver<Value>) -> String {
    let mut job = None;
    wait_for("the job to run", 120, || {
        while let Ok(e) = events.try_recv() {
            if e["event"] == "job" && e["state"].as_str().unwrap_or_default().starts_with("running") {
                job = e["job"].as_str().map(str::to_string);
            }
        }
        job.is_some()
    });
    job.unwrap()
}

/// The epochs done of the resume state under `cache`, if any.
fn epochs_done(cache: &Path) -> Option<u64> {
    std::fs::read_dir(cache.join("resume")).ok()?.flatten().find_map(|item| {
        let latest: Value =
            serde_json::from_slice(&std::fs::read(item.path().join("latest.json")).ok()?).ok()?;
        latest["epochs_done"].as_u64()
    })
}

fn wait_for(what: &str, seconds: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restarted_coordinator_reattaches_to_its_job_and_a_requeued_job_resumes_bit_identically() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 8);
    let (local, slurm) = (dir.path().join("local"), dir.path().join("slurm"));
    let (out, _) = run(&recipe, &local, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The coordinator is killed while its job runs; the job goes on.
    let (mut first, events) = spawn_coordinator(&recipe, &slurm);
    let job = running_job(&events);
    first.kill().unwrap();
    first.wait().unwrap();

    // Requeued after two epochs: Slurm restarts it (after releasing its begin time), and the
    // training resumes from its last finished epoch.
    wait_for("two finished epochs", 120, || epochs_done(&slurm).is_some_and(|d| d >= 2));
    let requeue = Command::new("scontrol").args(["requeue", &job]).output().unwrap();
    assert!(requeue.status.success(), "{}", String::from_utf8_lossy(&requeue.stderr));
    wait_for("the requeued job to be released", 60, || {
        let _ = Command::new("scontrol").args(["update", &format!("jobid={job}"), "begintime=now"]).output();
        let state = scontrol_job(&job);
        state.contains("JobState=RUNNING")
            || state.contains("JobState=COMPLETED")
            || state.contains("Restarts=1")
    });

    // A second coordinator finds the job by its name instead of submitting another.
    let (out, events) = slurm_run(&recipe, &slurm, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(jobs_of(&events, "base@0"), std::slice::from_ref(&job), "no second job: {events:?}");
    assert!(stderr(&out).contains("re-attached"), "{}", stderr(&out));
    let log = std::fs::read_dir(slurm.join("logs/slurm"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(log.contains("resuming after epoch"), "the requeued job resumed: {log}");
    // At most the epoch in progress is lost: the rerun resumes after the last epoch the killed
    // attempt finished.
    let (before, after) = log.split_once("resuming after epoch ").unwrap();
    let resumed: usize = after.split('/').next().unwrap().parse().unwrap();
    let finished = before
        .match_indices("train epoch ")
        .filter_map(|(at, _)| before[at + 12..].split('/').next()?.parse::<usize>().ok())
        .max()
        .unwrap();
    assert_eq!(resumed, finished, "resumed after the last finished epoch: {log}");
    assert_eq!(
        outputs_by_key(&local),
        outputs_by_key(&slurm),
        "bit-identical to the uninterrupted local run"
    );
    let shown = scontrol_job(&job);
    let restarts: BTreeSet<&str> = shown.split_whitespace().filter(|w| w.starts_with("Restarts=")).collect();
    assert_eq!(restarts, BTreeSet::from(["Restarts=1"]));
}

/// The manifest of the one entry under `cache`, as text.
fn only_manifest(cache: &Path) -> String {
    let entry = std::fs::read_dir(cache.join("objects")).unwrap().flatten().next().unwrap();
    std::fs::read_to_string(entry.path().join("manifest.json")).unwrap()
}

#[test]
fn a_job_that_hits_its_time_limit_is_resubmitted_and_resumes_and_so_does_a_forced_one() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Slurm's shortest time limit is one minute, and it enforces it within about half a minute
    // more, so one attempt runs at most ~95 s. The work must take well over that on a fast
    // machine: 2400 epochs are ~200 s on a 2-core development machine and ~150 s on CI (1200
    // took 73 s there once the dropout masks moved to the device, and finished inside its first
    // attempt). Many attempts are allowed, since how much each gets done depends on the load.
    let recipe = long_training(dir.path(), 2400);
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("checkpoint_every = 2\n", "checkpoint_every = 500\nresources = { time = \"1\" }\n")
        + "retries = 20\n";
    std::fs::write(&recipe, text).unwrap();
    let cache = dir.path().join("cache");
    let ran_out_of_time = |events: &[Value]| {
        events
            .iter()
            .filter(|e| {
                e["event"] == "job" && e["state"].as_str().unwrap_or_default().contains("hit its time limit")
            })
            .count()
    };
    let logs = || -> String {
        std::fs::read_dir(cache.join("logs/slurm"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("base"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect()
    };
    let (out, events) = slurm_run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ran_out_of_time(&events) > 0, "the first job ran out of time and was resubmitted: {events:?}");
    let first_log = logs();
    assert!(first_log.contains("resuming after epoch"), "{first_log}");
    let before = only_manifest(&cache);

    // Forced: the entry from before is no proof of success, and each resubmission continues
    // the forced attempt (starting over each time, it could never finish).
    let (out, events) = slurm_run(&recipe, &cache, &["--force", "base"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ran_out_of_time(&events) > 0, "the forced job ran out of time too: {events:?}");
    assert_eq!(stages_with(&events, "finished"), ["base@0"], "computed again");
    let forced_log = logs();
    let forced_part = &forced_log[first_log.len().min(forced_log.len())..];
    assert!(
        forced_part.contains("resuming after epoch"),
        "the forced job's resubmission resumed: {forced_part}"
    );
    assert_ne!(only_manifest(&cache), before, "a new commit (its timings differ)");
}

/// Sends `signal` to a coordinator whose job runs: it exits with 130 and its job is cancelled.
fn a_signal_cancels_the_running_job(signal: &str) {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 40);
    let (mut child, events) = spawn_coordinator(&recipe, &dir.path().join("cache"));
    let job = running_job(&events);
    let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    assert_eq!(child.wait().unwrap().code(), Some(130), "interrupted by {signal}");
    wait_for("the job to be cancelled", 60, || scontrol_job(&job).contains("JobState=CANCELLED"));
}

#[test]
fn ctrl_c_cancels_the_jobs_the_coordinator_submitted() {
    a_signal_cancels_the_running_job("-INT");
}

#[test]
fn sigterm_cancels_the_jobs_like_ctrl_c() {
    a_signal_cancels_the_running_job("-TERM");
}

/// The Slurm job `pipeline status` says computes an instance of the run now, if any.
fn running_job_of(recipe: &Path, cache: &Path) -> Option<String> {
    let out = pipeline().arg("status").arg(recipe).arg("--cache").arg(cache).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text.split("running as Slurm job ").nth(1)?;
    Some(after.split_whitespace().next()?.to_string())
}

/// Jobs submitted, by any coordinator, in `events`.
fn submissions(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "job" && e["state"].as_str().unwrap_or_default().starts_with("submitted"))
        .count()
}

#[test]
fn a_second_coordinator_on_the_same_cache_waits_and_submits_nothing_twice() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 200);
    let cache = dir.path().join("cache");
    let (mut first, events) = spawn_coordinator(&recipe, &cache);
    let job = running_job(&events);
    // While it runs, `status` says where and how far, and where its log is.
    wait_for("status to show the running job", 120, || {
        let out = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&format!("running as Slurm job {job} on "))
            && text.contains(", epoch ")
            && text.contains("log: ")
            && !text.contains("interrupted")
    });
    // The second spells the cache through a symbolic link.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    let (out, second) = slurm_run(&recipe, &link, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("another coordinator runs this recipe on this cache"), "{}", stderr(&out));
    assert!(first.wait().unwrap().success());
    assert_eq!(submissions(&second), 0, "the second submitted nothing: {second:?}");
    assert_eq!(stages_with(&second, "reused"), ["base@0"]);
    // One job of that name in all (Slurm keeps ended jobs for a few minutes).
    let shown = scontrol_job(&job);
    let name = shown.split_whitespace().find_map(|w| w.strip_prefix("JobName=")).unwrap().to_string();
    let out = Command::new("squeue").args(["--me", "--states=all", "-h", "-o", "%i|%j"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let same: Vec<&str> = listing.lines().filter(|l| l.ends_with(&format!("|{name}"))).collect();
    assert_eq!(same.len(), 1, "{same:?}");
    // The log is named after the instance.
    let logs: Vec<String> = std::fs::read_dir(cache.join("logs/slurm"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(logs.iter().any(|n| n.starts_with("base.pipeline-")), "{logs:?}");
}

#[test]
fn pipeline_cancel_stops_a_detached_run_and_a_second_detach_submits_nothing() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 400);
    // What the coordinator asks for: without a time, the partition's default would end it.
    let text = std::fs::read_to_string(&recipe).unwrap() + "coordinator = { time = \"2:00:00\" }\n";
    std::fs::write(&recipe, text).unwrap();
    let cache = dir.path().join("cache");
    let detach = || {
        pipeline()
            .args(["run", "--executor", "slurm", "--detach", "--cache"])
            .arg(&cache)
            .arg(&recipe)
            .output()
            .unwrap()
    };
    let out = detach();
    assert!(out.status.success(), "{}", stderr(&out));
    let coordinator =
        stderr(&out).split("the coordinator is job ").nth(1).unwrap().split(';').next().unwrap().to_string();
    assert!(scontrol_job(&coordinator).contains("TimeLimit=02:00:00"), "{}", scontrol_job(&coordinator));
    let again = detach();
    assert!(again.status.success());
    assert!(stderr(&again).contains("already job"), "{}", stderr(&again));
    // Wait for the training's job.
    let mut job = String::new();
    wait_for("the training job to run", 120, || {
        job = running_job_of(&recipe, &cache).unwrap_or_default();
        !job.is_empty()
    });
    let out = pipeline().args(["cancel", "--cache"]).arg(&cache).arg(&recipe).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Cancelled"), "{}", stderr(&out));
    wait_for("both to be cancelled", 90, || {
        scontrol_job(&job).contains("JobState=CANCELLED")
            && scontrol_job(&coordinator).contains("JobState=CANCELLED")
    });
}

#[test]
fn a_recipe_edited_during_a_run_makes_its_jobs_fail_naming_the_change() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 200);
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("lr = 0.05\n", "lr = 0.05\nresources = { time = \"5\" }\n"))
        .unwrap();
    let (mut child, events) = spawn_coordinator(&recipe, &dir.path().join("cache"));
    let id = running_job(&events);
    let edited = std::fs::read_to_string(&recipe).unwrap().replace("lr = 0.05", "lr = 0.07");
    std::fs::write(&recipe, edited).unwrap();
    // The running job read the recipe before the edit; a job started now reads the edit. Requeue
    // it so that it starts again with the edited recipe.
    let id = id.as_str();
    assert!(Command::new("scontrol").args(["requeue", id]).status().unwrap().success());
    let _ = Command::new("scontrol").args(["update", &format!("jobid={id}"), "begintime=now"]).status();
    assert!(!child.wait().unwrap().success());
    let events: Vec<Value> = events.try_iter().collect();
    let failed = events.iter().find(|e| e["event"] == "failed").expect("a failure");
    let message = failed["error"].as_str().unwrap();
    // The job's own words, in its log's tail: what changed, and that it computed nothing.
    assert!(message.contains("changed since `run` planned this job"), "{message}");
    assert!(message.contains("lr") && message.contains("0.07"), "{message}");
}

#[test]
fn percent_signs_and_backslashes_in_the_cache_path_are_harmless_and_gc_removes_logs() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &(tiny_recipe(1, "[\"msp\"]") + EXECUTOR));
    let cache = dir.path().join("c%j%%x\\y");
    let (out, events) = slurm_run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "finished").len(), 5);
    let logs = |cache: &Path| -> Vec<String> {
        std::fs::read_dir(cache.join("logs/slurm"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log") || n.ends_with(".inputs.json"))
            .collect()
    };
    // One log per instance, named after it (an array task's is a link to the task's file).
    let named = logs(&cache).into_iter().filter(|n| n.ends_with(".log") && !n.starts_with("pipeline-array-"));
    assert_eq!(named.count(), 5, "{:?}", logs(&cache));
    // gc for another recipe deletes these entries, and their logs with them.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other = write_recipe(
        &other,
        &tiny_recipe(1, "[\"energy\"]")
            .replace("name = \"tiny\"", "name = \"other\"")
            .replace("epochs = 1", "epochs = 2"),
    );
    let out = pipeline().arg("gc").arg(&other).arg("--cache").arg(&cache).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(logs(&cache), Vec::<String>::new());
}

#[test]
fn a_request_no_node_can_meet_fails_at_once_with_the_reason() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(1, "[\"msp\"]")
        .replace("checkpoint_every = 1\n", "checkpoint_every = 1\nresources = { mem = \"900T\" }\n")
        + EXECUTOR;
    let recipe = write_recipe(dir.path(), &text);
    let started = Instant::now();
    let (out, events) = slurm_run(&recipe, &dir.path().join("cache"), &[]);
    assert!(!out.status.success());
    let failure = events.iter().find(|e| e["event"] == "failed").expect("a failure event");
    let message = failure["error"].as_str().unwrap();
    assert!(
        message.contains("900T") && (message.contains("never start") || message.contains("sbatch refused")),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_detached_coordinator_runs_as_a_job_and_status_follows_it() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A name that would break `--output` or `squeue`'s output if it named the coordinator.
    let text = tiny_recipe(2, "[\"msp\"]").replace("name = \"tiny\"", "name = \"tiny/x|y\"") + EXECUTOR;
    let recipe = write_recipe(dir.path(), &text);
    let cache = dir.path().join("cache");
    let out = pipeline()
        .args(["run", "--executor", "slurm", "--detach", "--cache"])
        .arg(&cache)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the coordinator is job"), "{}", stderr(&out));
    let status = || {
        let out = pipeline().arg("status").arg(&recipe).arg("--cache").arg(&cache).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the detached run to finish", 400, || status().contains("0 of 5 stage(s) will run"));
    // The coordinator's job ends a moment after its last stage is committed.
    wait_for("the coordinator's job to complete", 60, || {
        let text = status();
        text.contains("coordinator: job") && text.contains("completed")
    });
    let out = pipeline().args(["run", "--detach"]).arg(&recipe).output().unwrap();
    assert!(stderr(&out).contains("--detach needs --executor slurm"), "{}", stderr(&out));
}

/// A sweep of `n` tiny trainings, one Slurm job (or array task) each.
fn many_jobs(dir: &Path, n: usize, arrays: bool) -> PathBuf {
    let rates: Vec<String> = (0..n).map(|i| format!("{:.4}", 0.01 + 0.0001 * i as f64)).collect();
    let text = format!(
        r#"[recipe]
name = "many_jobs"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1]
limit = 32

[stages.base]
kind = "train"
data = "id"
widths = [2]
strides = [2]
epochs = 1
batch_size = 32
lr = {{ sweep = [{rates}] }}
{EXECUTOR}{arrays}"#,
        data = data_dir().display(),
        rates = rates.join(", "),
        arrays = if arrays { "" } else { "arrays = false\n" },
    );
    write_recipe(dir, &text)
}

/// A number field of process `pid`'s status (`Threads:`, `VmHWM:` in kB), now (Linux).
fn status_field(pid: u32, field: &str) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|n| n.split_whitespace().next()?.parse().ok())
}

/// The coordinator polls every job in one `squeue`, submits from a few threads, and submits
/// the instances that are ready together as job arrays: it holds neither a thread nor an
/// `sbatch` call per job. `PIPELINE_SLURM_JOBS=2000` (and `PIPELINE_SLURM_ARRAYS=0` for one job
/// per instance) measures a larger sweep (bench/README.md).
#[test]
fn a_sweep_of_many_jobs_is_coordinated_by_a_handful_of_threads_and_few_sbatch_calls() {
    if !cluster() {
        return;
    }
    let n: usize = std::env::var("PIPELINE_SLURM_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let arrays = std::env::var("PIPELINE_SLURM_ARRAYS").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    let recipe = many_jobs(dir.path(), n, arrays);
    let cache = dir.path().join("cache");
    let started = Instant::now();
    let (mut child, events) = spawn_coordinator(&recipe, &cache);
    let (mut threads, mut peak_kb) = (0, 0);
    let status = loop {
        threads = threads.max(status_field(child.id(), "Threads:").unwrap_or(0));
        peak_kb = peak_kb.max(status_field(child.id(), "VmHWM:").unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "the sweep did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    let events: Vec<Value> = events.try_iter().collect();
    assert!(status.success());
    let finished = events.iter().filter(|e| e["event"] == "finished").count();
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "job")
        .filter_map(|e| e["state"].as_str())
        .filter(|s| s.starts_with("submitted"))
        .collect();
    // One sbatch per array, and one per job submitted alone.
    let arrays_used: BTreeSet<&str> = states.iter().filter_map(|s| s.split("of job array ").nth(1)).collect();
    let alone = states.iter().filter(|s| !s.contains("of job array")).count();
    let sbatch_calls = arrays_used.len() + alone;
    eprintln!(
        "{n} instances: {sbatch_calls} sbatch calls ({} arrays), at most {threads} coordinator threads, \
         peak {:.0} MB, {seconds:.1} s ({:.2} s per instance)",
        arrays_used.len(),
        peak_kb as f64 / 1024.0,
        seconds / n as f64
    );
    assert_eq!(finished, n, "every instance computed by a job");
    assert_eq!(states.len(), n, "one job or task per instance");
    // Main thread, 4 submitting threads, the signal handler, and whatever a library starts:
    // a handful, whatever the number of jobs.
    assert!(threads <= 10, "{threads} threads for {n} jobs");
    if arrays {
        assert!(sbatch_calls * 3 <= n, "{sbatch_calls} sbatch calls for {n} ready instances");
    } else {
        assert_eq!(sbatch_calls, n);
    }
}

#[test]
fn a_project_file_cannot_make_jobs_run_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, "[\"msp\"]"));
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[executor.slurm]\nextra = [\"--wrap=touch INJECTED\", \"--comment\"]\n",
    )
    .unwrap();
    let out = pipeline()
        .current_dir(dir.path())
        .args(["run", "--executor", "slurm", "--cache"])
        .arg(dir.path().join("cache"))
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pipeline.toml") && stderr(&out).contains("`--wrap` is not allowed"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("INJECTED").exists());
}

#[test]
fn cancelling_a_detached_coordinator_with_scancel_cancels_its_jobs() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = long_training(dir.path(), 400);
    let cache = dir.path().join("cache");
    let out = pipeline()
        .args(["run", "--executor", "slurm", "--detach", "--cache"])
        .arg(&cache)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let coordinator =
        stderr(&out).split("the coordinator is job ").nth(1).unwrap().split(';').next().unwrap().to_string();
    let mut job = String::new();
    wait_for("the training job to run", 120, || {
        job = running_job_of(&recipe, &cache).unwrap_or_default();
        !job.is_empty()
    });
    assert!(Command::new("scancel").arg(&coordinator).status().unwrap().success());
    wait_for("its job to be cancelled", 90, || scontrol_job(&job).contains("JobState=CANCELLED"));
}

/// The JSON text of the object under `"field":` in `text` (braces matched; no braces in strings).
fn object_text<'a>(text: &'a str, field: &str) -> &'a str {
    let start = text.find(&format!("\"{field}\"")).unwrap();
    let open = start + text[start..].find('{').unwrap();
    let mut depth = 0;
    for (at, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open..=open + at];
                }
            }
            _ => {}
        }
    }
    panic!("unclosed object");
}

/// A job checks the key inputs its coordinator planned, floats to the last digit: a float of 17
/// significant digits read back one step off would make it refuse its own instance.
#[test]
fn a_worker_checks_the_planned_inputs_to_the_last_digit() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_recipe(1, "[\"msp\"]").replace("lr = 0.05", "lr = 3.9550342389999997");
    let recipe = write_recipe(dir.path(), &text);
    let cache = dir.path().join("cache");
    let (out, _) = run(&recipe, &cache, &["--only", "base"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entry = std::fs::read_dir(cache.join("objects")).unwrap().flatten().next().unwrap();
    let manifest = std::fs::read_to_string(entry.path().join("manifest.json")).unwrap();
    let inputs = object_text(&manifest, "inputs");
    assert!(inputs.contains("3.9550342389999997"), "{inputs}");
    let expect = dir.path().join("planned.json");
    let worker = |expect: &Path| {
        pipeline()
            .args(["worker", "--instance", "base", "--force", "--cache"])
            .arg(&cache)
            .arg("--expect")
            .arg(expect)
            .arg(&recipe)
            .output()
            .unwrap()
    };
    std::fs::write(&expect, inputs).unwrap();
    let out = worker(&expect);
    assert!(out.status.success(), "{}", stderr(&out));
    // Planned with another rate: the job computes nothing and says what changed.
    std::fs::write(&expect, inputs.replace("3.9550342389999997", "3.95503423899999")).unwrap();
    let out = worker(&expect);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("changed since `run` planned this job") && stderr(&out).contains("lr"),
        "{}",
        stderr(&out)
    );
}
