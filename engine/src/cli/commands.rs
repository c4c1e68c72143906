//! One function per command: each builds what it needs from the arguments and calls the
//! library (recipe, plan, run, cache).
use super::shell::{duration, Shell, Verbosity};
use super::Status;
use crate::estimate::{human_duration, Estimate, Estimator, ThroughputTable};
use crate::plan::{fingerprint_datasets, Plan, Verdict};
use crate::recipe::diagnostic::did_you_mean;
use crate::recipe::Recipe;
use crate::run::{execute, Outcome, RunOptions};
use anyhow::Context;
use cache::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Loads a recipe, printing its diagnostics; `None` when it is invalid.
fn load(path: &Path) -> Option<Recipe> {
    match Recipe::load(path) {
        Ok(recipe) => Some(recipe),
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{}\n", d.render());
            }
            let n = diagnostics.len();
            eprintln!("error: {} has {n} error{}", path.display(), if n == 1 { "" } else { "s" });
            None
        }
    }
}

fn open_store(cache: Option<PathBuf>) -> anyhow::Result<Store> {
    let dir = cache
        .or_else(|| std::env::var_os("PIPELINE_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".pipeline-cache"));
    Store::open(&dir).with_context(|| format!("cannot open the cache at `{}`", dir.display()))
}

/// Stage names to recipe indices; unknown names are a usage error with a suggestion.
fn stage_indices(recipe: &Recipe, names: &[String], flag: &str) -> anyhow::Result<BTreeSet<usize>> {
    names
        .iter()
        .map(|name| {
            recipe.stage_index(name).ok_or_else(|| {
                let hint = did_you_mean(name, recipe.stages.iter().map(|s| s.name.as_str()))
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                anyhow::anyhow!("{flag} {name}: the recipe has no stage `{name}`{hint}")
            })
        })
        .collect()
}

pub fn check(paths: &[PathBuf], json: bool) -> anyhow::Result<Status> {
    let mut all = Vec::new();
    for path in paths {
        match Recipe::load(path) {
            Ok(recipe) => {
                if !json {
                    eprintln!("{:>12} {} ({} stages)", "Valid", path.display(), recipe.stages.len());
                }
            }
            Err(diagnostics) => {
                if !json {
                    for d in &diagnostics {
                        eprintln!("{}\n", d.render());
                    }
                }
                all.extend(diagnostics);
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "valid": all.is_empty(), "errors": all }));
    } else if !all.is_empty() {
        let n = all.len();
        eprintln!("error: {n} error{} found", if n == 1 { "" } else { "s" });
    }
    Ok(if all.is_empty() { Status::Success } else { Status::Failure })
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    path: &Path,
    only: &[String],
    force: &[String],
    jobs: usize,
    quiet: bool,
    json: bool,
    cache: Option<PathBuf>,
) -> anyhow::Result<Status> {
    let started = Instant::now();
    let Some(recipe) = load(path) else { return Ok(Status::UsageError) };
    let only = stage_indices(&recipe, only, "--only")?;
    let forced = stage_indices(&recipe, force, "--force")?;
    let shell = Shell::new(if quiet { Verbosity::Quiet } else { Verbosity::Normal }, json);
    let (device, notice) = match crate::device::select(recipe.device) {
        Ok(found) => found,
        Err(message) => {
            shell.error(&message);
            return Ok(Status::UsageError);
        }
    };
    if let Some(notice) = notice {
        shell.warn(&notice);
    }
    let store = open_store(cache)?;
    let plan = Plan::new(&recipe, if only.is_empty() { None } else { Some(&only) });
    let (fingerprints, problems) = fingerprint_datasets(&recipe, &plan, &store);
    let problems: BTreeMap<String, String> = problems.into_iter().collect();
    let options = RunOptions { jobs, forced, device };
    let outcomes = execute(&recipe, &plan, &store, &fingerprints, &problems, &options, &shell);

    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let computed = count(|o| matches!(o, Outcome::Computed { .. }));
    let reused = count(|o| matches!(o, Outcome::Reused { .. }));
    let failed = count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skipped { .. }));
    for (instance, outcome) in plan.instances.iter().zip(&outcomes) {
        let report = outcome.entry().map(|e| e.out_dir().join("report.md")).filter(|p| p.is_file());
        if let Some(report) = report {
            shell.status("Report", &format!("{}: {}", instance.label, report.display()));
        }
    }
    let elapsed = duration(started.elapsed().as_secs_f64());
    shell.event(serde_json::json!({"event": "done", "computed": computed, "reused": reused, "failed": failed, "skipped": skipped}));
    if failed > 0 {
        shell.error(&format!(
            "{failed} stage(s) failed, {skipped} skipped, {computed} computed, {reused} reused ({elapsed})"
        ));
        return Ok(Status::Failure);
    }
    shell.status(
        "Done",
        &format!("{} stage(s): {computed} computed, {reused} reused in {elapsed}", outcomes.len()),
    );
    Ok(Status::Success)
}

pub fn plan(
    path: &Path,
    only: &[String],
    force: &[String],
    cache: Option<PathBuf>,
    all: bool,
    measure: bool,
) -> anyhow::Result<Status> {
    let Some(recipe) = load(path) else { return Ok(Status::UsageError) };
    let only = stage_indices(&recipe, only, "--only")?;
    let forced = stage_indices(&recipe, force, "--force")?;
    let store = open_store(cache)?;
    let plan = Plan::new(&recipe, if only.is_empty() { None } else { Some(&only) });
    let (fingerprints, problems) = fingerprint_datasets(&recipe, &plan, &store);
    for (name, problem) in &problems {
        eprintln!("warning: dataset `{name}`: {problem}");
    }
    let verdicts = plan.evaluate(&recipe, &store, &fingerprints, &forced);
    let device = crate::device::select(recipe.device);
    let mut estimator = match &device {
        Ok((device, _)) => {
            Some(Estimator::new(&recipe, device, ThroughputTable::open(store.root()), measure))
        }
        Err(message) => {
            eprintln!("warning: no duration estimates: {message}");
            None
        }
    };
    let (mut total_seconds, mut estimated, mut unestimated, mut unmeasured) = (0.0, 0usize, 0usize, 0usize);
    let mut to_run = 0;
    for (instance, verdict) in plan.instances.iter().zip(&verdicts) {
        let kind = recipe.stages[instance.stage].kind.name();
        match verdict {
            Verdict::Cached { key, .. } => {
                if all {
                    println!("cached    {} ({kind}) {}", instance.label, key.short());
                }
            }
            Verdict::Run { reasons, .. } => {
                to_run += 1;
                let estimate = estimator.as_mut().map(|e| e.estimate(instance.stage));
                let duration = match &estimate {
                    Some(Estimate::Seconds { seconds, images, images_per_second }) => {
                        total_seconds += seconds;
                        estimated += 1;
                        format!(
                            "  ~{} ({:.0} images at {:.0}/s)",
                            human_duration(*seconds),
                            images,
                            images_per_second
                        )
                    }
                    Some(Estimate::Unmeasured { .. }) => {
                        unmeasured += 1;
                        "  duration: throughput not measured yet".into()
                    }
                    Some(Estimate::Unknown(why)) => {
                        unestimated += 1;
                        format!("  duration unknown: {why}")
                    }
                    Some(Estimate::NotEstimated) | None => String::new(),
                };
                println!("will run  {} ({kind}){duration}", instance.label);
                for reason in reasons {
                    println!("            {reason}");
                }
            }
        }
    }
    let total = verdicts.len();
    println!("{to_run} of {total} stage(s) will run, {} cached", total - to_run);
    let device = device.as_ref().map(|(d, _)| crate::device::describe(d)).unwrap_or_default();
    if estimated > 0 {
        print!("estimated duration on {device}: ~{} one stage at a time", human_duration(total_seconds));
        if unmeasured + unestimated > 0 {
            print!(", not counting {} stage(s) without an estimate", unmeasured + unestimated);
        }
        println!();
    }
    if to_run > 0 && unmeasured > 0 {
        println!("(`pipeline plan --estimate` measures the missing throughputs: a few steps per model)");
    }
    Ok(Status::Success)
}

pub fn dag(path: &Path, dot: bool) -> anyhow::Result<Status> {
    let Some(recipe) = load(path) else { return Ok(Status::UsageError) };
    if dot {
        println!("digraph \"{}\" {{", recipe.name);
        println!("  rankdir=LR;");
        for decl in &recipe.stages {
            println!("  \"{}\" [label=\"{}\\n({})\", shape=box];", decl.name, decl.name, decl.kind.name());
            for dataset in decl.datasets() {
                println!("  \"dataset:{dataset}\" [label=\"{dataset}\", shape=cylinder];");
                println!("  \"dataset:{dataset}\" -> \"{}\";", decl.name);
            }
        }
        for &i in recipe.graph.order() {
            for u in recipe.graph.upstream(i) {
                println!("  \"{}\" -> \"{}\";", recipe.stages[u].name, recipe.stages[i].name);
            }
        }
        println!("}}");
    } else {
        for &i in recipe.graph.order() {
            let decl = &recipe.stages[i];
            let mut reads: Vec<String> =
                recipe.graph.upstream(i).iter().map(|&u| recipe.stages[u].name.clone()).collect();
            reads.extend(decl.datasets().iter().map(|d| format!("dataset {d}")));
            let reads = if reads.is_empty() { String::new() } else { format!(" ← {}", reads.join(", ")) };
            println!("{} ({}){reads}", decl.name, decl.kind.name());
        }
    }
    Ok(Status::Success)
}

pub fn show(path: &Path, stage: &str, cache: Option<PathBuf>) -> anyhow::Result<Status> {
    let Some(recipe) = load(path) else { return Ok(Status::UsageError) };
    let target = stage_indices(&recipe, &[stage.to_string()], "show")?;
    let store = open_store(cache)?;
    let plan = Plan::new(&recipe, Some(&target));
    let (fingerprints, _) = fingerprint_datasets(&recipe, &plan, &store);
    let verdicts = plan.evaluate(&recipe, &store, &fingerprints, &BTreeSet::new());
    let mut missing = false;
    for (instance, verdict) in plan.instances.iter().zip(&verdicts) {
        if !target.contains(&instance.stage) {
            continue;
        }
        match verdict {
            Verdict::Cached { key, .. } => {
                let dir = store.entry_dir(key).join("out");
                println!("{}: {}", instance.label, dir.display());
                if let Ok(Some(manifest)) = store.peek(key) {
                    for (name, record) in &manifest.files {
                        println!("  {name} ({} bytes)", record.size);
                    }
                }
            }
            Verdict::Run { reasons, .. } => {
                missing = true;
                println!("{}: not computed ({})", instance.label, reasons.join("; "));
            }
        }
    }
    Ok(if missing { Status::Failure } else { Status::Success })
}

pub fn gc(paths: &[PathBuf], dry_run: bool, cache: Option<PathBuf>) -> anyhow::Result<Status> {
    let store = open_store(cache)?;
    let mut keep = BTreeSet::new();
    for path in paths {
        let Some(recipe) = load(path) else { return Ok(Status::UsageError) };
        let plan = Plan::new(&recipe, None);
        let (fingerprints, _) = fingerprint_datasets(&recipe, &plan, &store);
        for verdict in plan.evaluate(&recipe, &store, &fingerprints, &BTreeSet::new()) {
            if let Verdict::Cached { key, .. } = verdict {
                keep.insert(key);
            }
        }
    }
    let (mut removed, mut bytes) = (0, 0u64);
    for key in store.keys()? {
        if keep.contains(&key) {
            continue;
        }
        let size = store.entry_size(&key);
        if dry_run {
            println!("would delete {key} ({size} bytes)");
        } else {
            let Some(lock) = store.try_lock(&key)? else {
                eprintln!("warning: {key} is in use by a running pipeline; kept");
                continue;
            };
            store.remove(&lock)?;
        }
        removed += 1;
        bytes += size;
    }
    let swept = if dry_run { 0 } else { store.sweep_stale_staging()? };
    let verb = if dry_run { "would free" } else { "freed" };
    println!(
        "{removed} entr{} {verb} {:.1} MB; {} kept{}",
        if removed == 1 { "y" } else { "ies" },
        bytes as f64 / 1e6,
        keep.len(),
        if swept > 0 { format!("; {swept} interrupted staging folder(s) removed") } else { String::new() }
    );
    Ok(Status::Success)
}
