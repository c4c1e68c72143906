//! One function per command: each builds what it needs from the arguments, calls the library
//! (recipe, plan, run, cache) and prints through the [`Shell`]: results on stdout as text or
//! JSON, status lines and diagnostics on stderr.
use super::exit::Status;
use super::loading::{load, open_remote, open_store};
use super::shell::{duration, Shell};
use crate::error::EngineError;
use crate::events::Outcome;
use crate::lock::{self, LockFile, LockUpdate};
use crate::plan::{fingerprint_datasets, Plan, Verdict};
use crate::recipe::diagnostic::Severity;
use crate::recipe::Recipe;
use crate::run::{execute, RemoteAccess, Run};
use crate::selector::{instances_of, plan_for, Selector};
use anyhow::Context;
use cache::Verification;
use stages::estimate::duration::{human_duration, Estimate, Estimator, ThroughputTable};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stage or instance names (`zeta`, `zeta@0`); unknown ones are a usage error with a suggestion.
fn selectors(recipe: &Recipe, names: &[String], flag: &str) -> Result<Vec<Selector>, EngineError> {
    let selectors =
        Selector::parse_all(recipe, names, flag).map_err(|e| EngineError::Usage(e.to_string()))?;
    // A variant that does not exist (`um[lr=7]`) is named, with the ones that do.
    if let Some((text, selector)) = names.iter().zip(&selectors).find(|(_, s)| s.variant.is_some()) {
        let plan = Plan::new(recipe, None);
        if instances_of(&plan, std::slice::from_ref(selector)).is_empty() {
            let mut known: Vec<String> = Vec::new();
            for instance in plan.instances.iter().filter(|i| i.stage == selector.stage) {
                let variant = instance.label.split('@').next().unwrap_or_default().to_string();
                if !known.contains(&variant) {
                    known.push(variant);
                }
            }
            return Err(EngineError::Usage(format!(
                "{flag} {text}: no such variant (there are: {})",
                known.join(", ")
            )));
        }
    }
    Ok(selectors)
}

/// The dataset fingerprints `recipe` (at `path`) names its keys with: from the data, else
/// from its lock file, saying so; a dataset here that differs from the lock is named with the
/// file that differs. Also returns the lock, if there is one.
pub(super) fn locked_fingerprints(
    path: &Path,
    recipe: &Recipe,
    plan: &Plan,
    store: &cache::Store,
    shell: &Shell,
) -> Result<(lock::Fingerprints, Option<LockFile>), EngineError> {
    let lock_path = lock::lock_path(path);
    let lock = lock::read(&lock_path).map_err(|e| EngineError::Usage(e.to_string()))?;
    let found = lock::fingerprints(recipe, plan, store, lock.as_ref());
    if !found.from_lock.is_empty() {
        shell.status(
            "Locked",
            &format!(
                "keys from {}; dataset{} {} not here",
                lock_path.display(),
                if found.from_lock.len() == 1 { "" } else { "s" },
                found.from_lock.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    for difference in &found.differ {
        shell.warn(&format!(
            "dataset `{}` differs from {}: {}",
            difference.dataset,
            lock_path.display(),
            difference.what
        ));
    }
    for difference in &found.files_differ {
        shell.warn(&format!(
            "file `{}` differs from {}: {}",
            difference.path,
            lock_path.display(),
            file_difference(difference)
        ));
    }
    Ok((found, lock))
}

/// How a file differs from the lock, in words.
fn file_difference(d: &lock::FileDifference) -> String {
    format!("blake3 {} here, {} in the lock", d.here, d.locked)
}

/// `--locked`: the lock exists, the data here match it, and the recipe names the keys it holds.
fn check_locked(
    path: &Path,
    plan: &Plan,
    found: &lock::Fingerprints,
    lock: Option<&LockFile>,
    keys: &[Option<cache::CacheKey>],
) -> Result<(), EngineError> {
    let lock_path = lock::lock_path(path);
    let Some(lock) = lock else {
        return Err(EngineError::Usage(format!(
            "--locked: there is no {} (`pipeline lock` writes it)",
            lock_path.display()
        )));
    };
    let mut said: Vec<String> =
        found.differ.iter().map(|d| format!("dataset `{}`: {}", d.dataset, d.what)).collect();
    said.extend(found.files_differ.iter().map(|d| format!("file `{}`: {}", d.path, file_difference(d))));
    said.extend(lock::mismatches(lock, plan, keys));
    if said.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let more = if said.len() > SHOWN { format!("; and {} more", said.len() - SHOWN) } else { String::new() };
    said.truncate(SHOWN);
    Err(EngineError::Usage(format!(
        "--locked: the recipe or its data no longer match {}: {}{more} (`pipeline lock` writes it again)",
        lock_path.display(),
        said.join("; ")
    )))
}

/// Keeps the lock beside the recipe at `path` current with `update`, if the recipe has one
/// (`pipeline lock` creates it); a failure is a warning.
pub(super) fn update_lock(path: &Path, update: &LockUpdate, shell: &Shell) {
    let lock_path = lock::lock_path(path);
    if update.previous.is_none() {
        return;
    }
    if let Err(e) = lock::write(&lock_path, &lock::build(update)) {
        shell.warn(&e.to_string());
    }
}

/// The keys a lock file names.
pub(super) fn lock_keys(lock: Option<&LockFile>) -> Vec<cache::CacheKey> {
    lock.into_iter()
        .flat_map(|l| l.instances.values())
        .filter_map(|i| cache::CacheKey::parse(i.key.as_deref()?))
        .collect()
}

/// `pipeline lock`: writes the recipe's lock file from the data here and the cache.
pub fn lock(path: &Path, cache: Option<PathBuf>, shell: &Shell) -> anyhow::Result<Status> {
    let recipe = load(path, shell)?;
    let store = open_store(cache)?;
    let plan = Plan::new(&recipe, None);
    let (found, previous) = locked_fingerprints(path, &recipe, &plan, &store, shell)?;
    if let Some((name, problem)) = found.problems.first() {
        return Err(EngineError::Dataset {
            name: name.clone(),
            message: format!("{problem}; the lock needs its fingerprint"),
        }
        .into());
    }
    let verdicts = plan.evaluate(&recipe, &store, &found.map, &BTreeSet::new(), Verification::Metadata);
    let keys: Vec<(Option<cache::CacheKey>, Option<String>)> = verdicts.iter().map(Verdict::locked).collect();
    let update = LockUpdate {
        recipe: &recipe,
        plan: &plan,
        fingerprints: &found,
        keys: &keys,
        previous: previous.as_ref(),
        partial: false,
    };
    let written = lock::build(&update);
    let lock_path = lock::lock_path(path);
    let changed = lock::write(&lock_path, &written).map_err(|e| EngineError::Usage(e.to_string()))?;
    let named = written.instances.values().filter(|i| i.key.is_some()).count();
    shell.status(
        if changed { "Locked" } else { "Unchanged" },
        &format!(
            "{} ({} datasets, {named} of {} instances keyed)",
            lock_path.display(),
            written.datasets.len(),
            plan.instances.len()
        ),
    );
    shell.emit(serde_json::json!({"lock": lock_path, "changed": changed, "datasets": written.datasets.len(), "instances": named}));
    Ok(Status::Success)
}

/// What `check` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckScope {
    RecipeOnly,
    /// The recipe, then the headers of the datasets its stages read.
    RecipeAndData,
}

pub fn check(paths: &[PathBuf], scope: CheckScope, shell: &Shell) -> anyhow::Result<Status> {
    for path in paths {
        super::loading::readable(path)?;
    }
    let mut all = Vec::new();
    for path in paths {
        // The recipe first; then the datasets its stages read (headers only).
        let checked = Recipe::load(path).and_then(|recipe| match scope {
            CheckScope::RecipeOnly => Ok(recipe),
            CheckScope::RecipeAndData => match recipe.check_data(None) {
                problems if problems.is_empty() => Ok(recipe),
                problems => Err(problems),
            },
        });
        match checked {
            Ok(recipe) => {
                shell.status("Valid", &format!("{} ({} stages)", path.display(), recipe.stages.len()))
            }
            Err(diagnostics) => {
                if !shell.json() {
                    for d in &diagnostics {
                        shell.diagnostic(&d.render());
                    }
                }
                all.extend(diagnostics);
            }
        }
    }
    shell.emit(serde_json::json!({ "valid": all.is_empty(), "errors": all }));
    if !all.is_empty() && !shell.json() {
        let n = crate::recipe::diagnostic::error_count(&all);
        shell.error(&format!("{n} error{} found", if n == 1 { "" } else { "s" }));
    }
    Ok(if all.is_empty() { Status::Success } else { Status::Failure })
}

/// Threads that prepare and submit instances under an executor that computes elsewhere
/// (Slurm): submitting takes tens of milliseconds, so a few keep any queue fed.
const SUBMITTING_THREADS: usize = 4;

/// What `pipeline run` was asked to do.
pub struct RunRequest<'a> {
    pub recipe: &'a Path,
    pub only: &'a [String],
    pub force: &'a [String],
    pub jobs: usize,
    pub cache: Option<PathBuf>,
    /// `--remote` (`default`: the configured one), and whether it is only read.
    pub remote: Option<&'a str>,
    pub remote_read_only: bool,
    /// `--executor slurm`, and `--detach`.
    pub slurm: bool,
    pub detach: bool,
    /// `--locked`: fail when the recipe or its data no longer match the lock file.
    pub locked: bool,
}

pub fn run(request: &RunRequest, shell: &Shell) -> anyhow::Result<Status> {
    let started = Instant::now();
    let recipe = load(request.recipe, shell)?;
    let only = selectors(&recipe, request.only, "--only")?;
    let force = selectors(&recipe, request.force, "--force")?;
    if request.detach && !request.slurm {
        return Err(EngineError::Usage("--detach needs --executor slurm".into()).into());
    }
    // The coordinator computes nothing itself: the device is the jobs' business. Elsewhere a
    // device that cannot be had is an error before anything (even the cache) is touched.
    let (device, notice) = if request.slurm {
        (stages::device::Device::Cpu, None)
    } else {
        stages::device::select(recipe.device).map_err(EngineError::Device)?
    };
    if let Some(notice) = notice {
        shell.warn(&notice);
    }
    let store = open_store(request.cache.clone())?;
    if request.detach {
        let mut flags = Vec::new();
        for only in request.only {
            flags.extend(["--only".to_string(), only.clone()]);
        }
        for force in request.force {
            flags.extend(["--force".to_string(), force.clone()]);
        }
        if let Some(remote) = request.remote {
            flags.extend(["--remote".to_string(), remote.to_string()]);
            if request.remote_read_only {
                flags.push("--remote-read-only".into());
            }
        }
        return super::slurm::detach(request.recipe, &flags, &recipe, &store, shell);
    }
    let coordinator = match request.slurm {
        true => Some(super::slurm::start(&recipe, request.recipe, &store, shell)?),
        false => None,
    };
    let plan = plan_for(&recipe, &only);
    warn_of_unusable_data(&recipe, &plan, shell);
    let forced = instances_of(&plan, &force);
    let (found, lock_before) = locked_fingerprints(request.recipe, &recipe, &plan, &store, shell)?;
    if request.locked {
        let verdicts = plan.evaluate(&recipe, &store, &found.map, &BTreeSet::new(), Verification::Metadata);
        let keys: Vec<Option<cache::CacheKey>> = verdicts.iter().map(|v| v.key().cloned()).collect();
        check_locked(request.recipe, &plan, &found, lock_before.as_ref(), &keys)?;
    }
    let fingerprints = found.map.clone();
    // A dataset that is not here fails what reads it, even when the lock names its keys.
    let mut problems: BTreeMap<String, String> = found.problems.iter().cloned().collect();
    for name in &found.from_lock {
        problems.insert(
            name.clone(),
            "its files are not here (the lock gives its fingerprint, not its data)".into(),
        );
    }
    let remote = match request.remote {
        Some(flag) => {
            let remote = open_remote(Some(flag), Some(&recipe))?;
            let mode = if request.remote_read_only { "read only" } else { "pull and push" };
            shell.status("Remote", &format!("{} ({mode})", remote.url()));
            Some(RemoteAccess::new(remote, request.remote_read_only))
        }
        None => None,
    };
    // Under Slurm every ready instance is a job of its own, polled together: a few threads
    // look up, pull and submit, however many jobs there are.
    let jobs = if coordinator.is_some() { SUBMITTING_THREADS } else { request.jobs };
    let executor = coordinator.as_ref().map(|c| c.executor.as_ref() as &dyn crate::executor::Executor);
    let run = Run {
        recipe: &recipe,
        plan: &plan,
        store: &store,
        fingerprints: &fingerprints,
        dataset_problems: &problems,
        jobs,
        forced,
        keep_resume: false,
        device,
        remote,
        executor,
    };
    let outcomes = execute(&run, shell);

    let keys: Vec<(Option<cache::CacheKey>, Option<String>)> = outcomes
        .iter()
        .map(|o| match o.entry() {
            Some(entry) => (Some(entry.key.clone()), Some(entry.manifest.output_digest.clone())),
            None => (None, None),
        })
        .collect();
    let update = LockUpdate {
        recipe: &recipe,
        plan: &plan,
        fingerprints: &found,
        keys: &keys,
        previous: lock_before.as_ref(),
        partial: !request.only.is_empty(),
    };
    update_lock(request.recipe, &update, shell);
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let computed = count(|o| matches!(o, Outcome::Computed { .. }));
    let reused = count(|o| matches!(o, Outcome::Reused { .. }));
    let pulled = count(|o| matches!(o, Outcome::Pulled { .. }));
    let pulled_text = if pulled > 0 { format!(", {pulled} pulled") } else { String::new() };
    let failed = count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skipped { .. }));
    for (instance, outcome) in plan.instances.iter().zip(&outcomes) {
        let report = outcome.entry().map(|e| e.out_dir().join("report.md")).filter(|p| p.is_file());
        if let Some(report) = report {
            shell.status("Report", &format!("{}: {}", instance.label, report.display()));
        }
    }
    let elapsed = duration(started.elapsed().as_secs_f64());
    shell.event(serde_json::json!({"event": "done", "computed": computed, "reused": reused, "pulled": pulled, "failed": failed, "skipped": skipped}));
    if failed > 0 {
        shell.error(&format!(
            "{failed} stage(s) failed, {skipped} skipped, {computed} computed, {reused} reused{pulled_text} ({elapsed})"
        ));
        return Ok(Status::Failure);
    }
    shell.status(
        "Done",
        &format!(
            "{} stage(s): {computed} computed, {reused} reused{pulled_text} in {elapsed}",
            outcomes.len()
        ),
    );
    Ok(Status::Success)
}

/// What a Slurm job asks of `pipeline worker`.
pub struct WorkerRequest<'a> {
    pub recipe: &'a Path,
    /// The instance, as `run` labels it.
    pub label: &'a str,
    pub force: bool,
    /// With `force`: continue an interrupted attempt of the same forced run.
    pub keep_resume: bool,
    /// The key inputs the coordinator planned the job with.
    pub expect: Option<&'a Path>,
    pub cache: Option<PathBuf>,
}

/// The instance label and planned key inputs' file of task `task` of a job array's tasks file.
pub fn array_task(tasks: &Path, task: usize) -> Result<(String, Option<PathBuf>), EngineError> {
    let text = std::fs::read_to_string(tasks)
        .map_err(|e| EngineError::Usage(format!("cannot read the tasks file {}: {e}", tasks.display())))?;
    let line = text.lines().nth(task).ok_or_else(|| {
        EngineError::Usage(format!("{}: no task {task} (it lists {})", tasks.display(), text.lines().count()))
    })?;
    let mut fields = line.split('\t');
    match (fields.next(), fields.next()) {
        (Some(label), Some(expect)) if !label.is_empty() => {
            Ok((label.to_string(), Some(PathBuf::from(expect))))
        }
        _ => Err(EngineError::Usage(format!(
            "{}: task {task} is not `LABEL<TAB>FILE<TAB>NAME`",
            tasks.display()
        ))),
    }
}

/// `pipeline worker`: computes one instance whose upstream entries are in the cache (what a
/// Slurm job runs). Exits with success when the entry is committed (or already was).
pub fn worker(request: &WorkerRequest, shell: &Shell) -> anyhow::Result<Status> {
    let WorkerRequest { recipe: path, label, force, keep_resume, expect, .. } = *request;
    let expected: Option<cache::KeyInputs> = match expect {
        Some(file) => {
            let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            // Floats read back exactly, or a 17-digit one would name another key.
            let inputs = cache::json::from_slice(&text)
                .map_err(|e| EngineError::Usage(format!("{}: {e}", file.display())))?;
            Some(inputs)
        }
        None => None,
    };
    let recipe = load(path, shell)?;
    let plan = Plan::new(&recipe, None);
    let Some(i) = plan.instances.iter().position(|instance| instance.label == label) else {
        let labels: Vec<&str> = plan.instances.iter().map(|i| i.label.as_str()).take(12).collect();
        let edited =
            if expected.is_some() { " (the recipe was edited since `run` planned this job)" } else { "" };
        return Err(EngineError::Usage(format!(
            "{}: no instance labelled `{label}`{edited} (some that are: {})",
            path.display(),
            labels.join(", ")
        ))
        .into());
    };
    let (device, notice) = stages::device::select(recipe.device).map_err(EngineError::Device)?;
    if let Some(notice) = notice {
        shell.warn(&notice);
    }
    let store = open_store(request.cache.clone())?;
    let (fingerprints, problems) = fingerprint_datasets(&recipe, &plan, &store);
    let problems: BTreeMap<String, String> = problems.into_iter().collect();
    let forced = if force { BTreeSet::from([i]) } else { BTreeSet::new() };
    let run = Run {
        recipe: &recipe,
        plan: &plan,
        store: &store,
        fingerprints: &fingerprints,
        dataset_problems: &problems,
        jobs: 1,
        forced,
        keep_resume,
        device,
        remote: None,
        executor: None,
    };
    let outcome = crate::run::execute_one(&run, i, expected.as_ref(), shell);
    Ok(if outcome.entry().is_some() { Status::Success } else { Status::Failure })
}

/// Warns, before anything runs, of every stage of the plan that reads a dataset it cannot use
/// (a missing file, images of another shape than its model's) or names a file that is not here
/// (an imported checkpoint), at its recipe position. Those stages will fail unless their
/// entries are cached; the independent ones still run.
fn warn_of_unusable_data(recipe: &Recipe, plan: &Plan, shell: &Shell) {
    let stages: BTreeSet<usize> = plan.instances.iter().map(|i| i.stage).collect();
    let (diagnostics, unusable) = recipe.data_problems(Some(&stages));
    for d in &diagnostics {
        shell.diagnostic(&d.render_as(Severity::Warning));
    }
    if unusable.is_empty() {
        return;
    }
    // The instances that cannot run: those of the stages above, and everything downstream.
    let mut blocked = vec![false; plan.instances.len()];
    for (i, instance) in plan.instances.iter().enumerate() {
        blocked[i] = unusable.contains(&instance.stage) || instance.deps().any(|d| blocked[d]);
    }
    let n = blocked.iter().filter(|&&b| b).count();
    shell.warn(&format!(
        "{n} of {} instances cannot run for want of data (they, or a stage they read, need a dataset \
         or file above); the other {} can",
        plan.instances.len(),
        plan.instances.len() - n
    ));
}

/// Which instances `plan` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanView {
    /// `pipeline plan`: what will run, with duration estimates; `measure` measures the
    /// throughputs not measured yet.
    WhatWillRun { measure: bool },
    /// `pipeline status`: every instance, cached or not.
    EveryStage,
}

/// What `pipeline plan` or `pipeline status` was asked about.
pub struct PlanRequest<'a> {
    pub recipe: &'a Path,
    pub only: &'a [String],
    pub force: &'a [String],
    pub cache: Option<PathBuf>,
    pub view: PlanView,
    /// How closely cached entries are checked.
    pub depth: Verification,
    /// `--locked`: fail when the recipe or its data no longer match the lock file.
    pub locked: bool,
}

pub fn plan(request: PlanRequest, shell: &Shell) -> anyhow::Result<Status> {
    let PlanRequest { recipe: path, only, force, cache, view, depth, locked } = request;
    let recipe = load(path, shell)?;
    let only = selectors(&recipe, only, "--only")?;
    let force = selectors(&recipe, force, "--force")?;
    let store = open_store(cache)?;
    let plan = plan_for(&recipe, &only);
    let forced = instances_of(&plan, &force);
    warn_of_unusable_data(&recipe, &plan, shell);
    let (found, lock_file) = locked_fingerprints(path, &recipe, &plan, &store, shell)?;
    for (name, problem) in &found.problems {
        shell.warn(&format!("dataset `{name}`: {problem}"));
    }
    let fingerprints = found.map.clone();
    let verdicts = plan.evaluate(&recipe, &store, &fingerprints, &forced, depth);
    if locked {
        let keys: Vec<Option<cache::CacheKey>> = verdicts.iter().map(|v| v.key().cloned()).collect();
        check_locked(path, &plan, &found, lock_file.as_ref(), &keys)?;
    }
    let measure = matches!(view, PlanView::WhatWillRun { measure: true });
    let device = stages::device::select(recipe.device);
    let stage_map: BTreeMap<&str, &dyn stages::Stage> =
        recipe.stages.iter().map(|s| (s.name.as_str(), s.stage())).collect();
    let mut estimator = match &device {
        Ok((device, _)) => Some(Estimator::new(
            stage_map,
            &recipe.datasets,
            device,
            ThroughputTable::open(store.root().join("throughput.json")),
            measure,
        )),
        Err(error) => {
            shell.warn(&format!("no duration estimates: {error}"));
            None
        }
    };
    // Where a Slurm run of this cache stands (`run --executor slurm [--detach]`), if Slurm answers.
    let cache_root = crate::executor::slurm::canonical_cache(store.root());
    let slurm_jobs = match view {
        PlanView::EveryStage => crate::executor::slurm::jobs_by_name(&cache_root),
        PlanView::WhatWillRun { .. } => None,
    };
    let recipe_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let coordinator = crate::executor::slurm::coordinator_name(&cache_root, &recipe_path);
    if let Some(row) = slurm_jobs.as_ref().and_then(|jobs| jobs.get(&coordinator)) {
        shell.out(&format!("coordinator: {}", crate::executor::slurm::describe_row(row)));
    }
    let (mut total_seconds, mut estimated, mut unestimated, mut unmeasured) = (0.0, 0usize, 0usize, 0usize);
    let mut to_run = 0;
    let mut rows = Vec::new();
    let mut summarised = BTreeSet::new();
    // Each stage's instances, found once (not once per swept stage).
    let mut by_stage: Vec<Vec<usize>> = vec![Vec::new(); recipe.stages.len()];
    for (i, instance) in plan.instances.iter().enumerate() {
        by_stage[instance.stage].push(i);
    }
    for (instance, verdict) in plan.instances.iter().zip(&verdicts) {
        let kind = recipe.stages[instance.stage].kind.name();
        // A swept stage is one line, with its values, however many instances it has.
        let swept = !recipe.groups[instance.stage].is_empty();
        let params: serde_json::Map<String, serde_json::Value> = if shell.json() {
            instance.params.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect()
        } else {
            serde_json::Map::new()
        };
        if swept && summarised.insert(instance.stage) {
            shell.out(&sweep_line(&recipe, &plan, &verdicts, &by_stage[instance.stage], view));
        }
        match verdict {
            Verdict::Cached { key, .. } => {
                if shell.json() {
                    rows.push(serde_json::json!({"stage": instance.id, "label": instance.label, "kind": kind, "cached": true, "key": key.as_str(), "params": params}));
                }
                if view == PlanView::EveryStage && !swept {
                    shell.out(&format!("cached    {} ({kind}) {}", instance.label, key.short()));
                }
            }
            Verdict::Run { key, reasons } => {
                to_run += 1;
                let estimate = estimator.as_mut().map(|e| {
                    e.estimate(recipe.stages[instance.stage].variants[instance.variant].stage.as_ref())
                });
                let mut seconds = None;
                let duration = match &estimate {
                    Some(Estimate::Seconds { seconds: s, images, images_per_second }) => {
                        total_seconds += s;
                        estimated += 1;
                        seconds = Some(*s);
                        format!(
                            "  ~{} ({:.0} images at {:.0}/s)",
                            human_duration(*s),
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
                // The per-instance JSON rows are built only for --json (they are most of the
                // memory of a large plan otherwise).
                if shell.json() {
                    rows.push(serde_json::json!({
                        "stage": instance.id, "label": instance.label, "kind": kind, "cached": false, "params": params,
                        "key": key.as_ref().map(|k| k.as_str()), "reasons": reasons, "estimated_seconds": seconds,
                    }));
                }
                let job = key.as_ref().and_then(|key| {
                    let name = crate::executor::slurm::job_name(&cache_root, key);
                    let row = slurm_jobs.as_ref()?.get(&name)?;
                    let log = crate::executor::slurm::logs_dir(&cache_root)
                        .join(crate::executor::slurm::log_file_name(&instance.label, &name));
                    Some((row, log, store.resume_dir(key)))
                });
                if !swept {
                    shell.out(&format!("will run  {} ({kind}){duration}", instance.label));
                    let running = job.as_ref().is_some_and(|(row, ..)| row.state == "RUNNING");
                    for reason in reasons {
                        // A job that runs now is not an interrupted run.
                        if !(running && reason.contains("an earlier run was interrupted")) {
                            shell.out(&format!("            {reason}"));
                        }
                    }
                    if let Some((row, log, resume)) = &job {
                        let epoch = stages::training::resume::progress(resume)
                            .map(|(done, total)| format!(", epoch {done}/{total}"))
                            .unwrap_or_default();
                        let what = match row.state.as_str() {
                            "RUNNING" => format!("running as Slurm job {} on {}{epoch}", row.id, row.node),
                            _ => format!("Slurm {}", crate::executor::slurm::describe_row(row)),
                        };
                        shell.out(&format!("            {what}; log: {}", log.display()));
                    }
                }
            }
        }
    }
    let total = verdicts.len();
    shell.out(&format!("{to_run} of {total} stage(s) will run, {} cached", total - to_run));
    let device_name = device.as_ref().map(|(d, _)| stages::device::describe(d)).unwrap_or_default();
    if estimated > 0 {
        let mut line = format!(
            "estimated duration on {device_name}: ~{} one stage at a time",
            human_duration(total_seconds)
        );
        if unmeasured + unestimated > 0 {
            line.push_str(&format!(
                ", not counting {} stage(s) without an estimate",
                unmeasured + unestimated
            ));
        }
        shell.out(&line);
    }
    if to_run > 0 && unmeasured > 0 {
        shell.out("(`pipeline plan --estimate` measures the missing throughputs: a few steps per model)");
    }
    shell.emit(serde_json::json!({
        "recipe": recipe.name, "instances": rows, "will_run": to_run, "cached": total - to_run,
        "device": device_name, "estimated_seconds": if estimated > 0 { Some(total_seconds) } else { None },
    }));
    Ok(Status::Success)
}

/// The first values of a list, and how many more there are: a sweep of 10^6 values is one short
/// line.
fn shown_list(values: &[&str]) -> String {
    const SHOWN: usize = 8;
    if values.len() <= SHOWN {
        return values.join(", ");
    }
    format!("{}, … {} more", values[..SHOWN].join(", "), values.len() - SHOWN)
}

/// One line for every instance of a swept stage (`mine`, plan indices): how many will run and
/// how many are cached, the values of each swept parameter (the first few of a long sweep), the
/// seeds, and the first reasons. Linear in the stage's instances.
fn sweep_line(recipe: &Recipe, plan: &Plan, verdicts: &[Verdict], mine: &[usize], view: PlanView) -> String {
    use std::collections::HashSet;
    let Some(&first) = mine.first() else { return String::new() };
    let decl = &recipe.stages[plan.instances[first].stage];
    // Each swept parameter's values in first-seen order, and the set of them seen.
    let mut values: Vec<(&str, Vec<&str>, HashSet<&str>)> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    let mut seen_seeds: HashSet<u64> = HashSet::new();
    let mut reasons: Vec<&str> = Vec::new();
    let mut seen_reasons: HashSet<&str> = HashSet::new();
    let mut running = 0;
    for &i in mine {
        let instance = &plan.instances[i];
        for (name, value) in &instance.params {
            // A stage has a few swept parameters: a scan finds each one's slot.
            let slot = match values.iter().position(|(n, _, _)| *n == name.as_str()) {
                Some(at) => at,
                None => {
                    values.push((name.as_str(), Vec::new(), HashSet::new()));
                    values.len() - 1
                }
            };
            let (_, list, set) = &mut values[slot];
            if set.insert(value.as_str()) {
                list.push(value.as_str());
            }
        }
        if let Some(seed) = instance.seed.filter(|s| seen_seeds.insert(*s)) {
            seeds.push(seed);
        }
        if let Verdict::Run { reasons: why, .. } = &verdicts[i] {
            running += 1;
            for reason in why {
                if seen_reasons.insert(reason.as_str()) {
                    reasons.push(reason);
                }
            }
        }
    }
    let axes: Vec<String> = values.iter().map(|(n, v, _)| format!("{n} ∈ {{{}}}", shown_list(v))).collect();
    let seeds = if seeds.len() > 1 {
        let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
        let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
        format!(" × seeds {{{}}}", shown_list(&seeds))
    } else {
        String::new()
    };
    let (verb, count) = match running {
        0 if view == PlanView::EveryStage => ("cached   ", format!("{} cached", mine.len())),
        0 => return format!("cached    {} ({}): {} instances", decl.name, decl.kind.name(), mine.len()),
        n => ("will run ", format!("{n} of {} will run", mine.len())),
    };
    let mut line =
        format!("{verb} {}[{}]{seeds} ({}): {count}", decl.name, axes.join("; "), decl.kind.name());
    const SHOWN: usize = 3;
    for reason in reasons.iter().take(SHOWN) {
        line.push_str(&format!("\n            {reason}"));
    }
    if reasons.len() > SHOWN {
        line.push_str(&format!(
            "\n            … and {} more reasons (--json lists every instance)",
            reasons.len() - SHOWN
        ));
    }
    line
}

pub fn dag(path: &Path, dot: bool, shell: &Shell) -> anyhow::Result<Status> {
    let recipe = load(path, shell)?;
    if dot {
        shell.out(&format!("digraph \"{}\" {{", recipe.name));
        shell.out("  rankdir=LR;");
        for decl in &recipe.stages {
            let node =
                format!("\"{}\" [label=\"{}\\n({})\", shape=box];", decl.name, decl.name, decl.kind.name());
            match &decl.sweep {
                // A swept stage sits in a cluster that names its values.
                Some(sweep) if !sweep.fields.is_empty() => {
                    let values: Vec<String> = sweep
                        .fields
                        .iter()
                        .map(|f| {
                            let shown: Vec<String> =
                                f.values.iter().map(crate::recipe::sweep::show_value).collect();
                            format!("{} ∈ {{{}}}", f.name, shown.join(", "))
                        })
                        .collect();
                    let how = if sweep.zip { "zip" } else { "×" };
                    shell.out(&format!("  subgraph \"cluster_{}\" {{", decl.name));
                    shell.out(&format!(
                        "    label=\"sweep: {}\"; style=dashed;",
                        values.join(&format!(" {how} ")).replace('"', "\\\"")
                    ));
                    shell.out(&format!("    {node}"));
                    shell.out("  }");
                }
                _ => shell.out(&format!("  {node}")),
            }
            for dataset in decl.datasets() {
                shell.out(&format!("  \"dataset:{dataset}\" [label=\"{dataset}\", shape=cylinder];"));
                shell.out(&format!("  \"dataset:{dataset}\" -> \"{}\";", decl.name));
            }
        }
        for &i in recipe.graph.order() {
            for u in recipe.graph.upstream(i) {
                shell.out(&format!("  \"{}\" -> \"{}\";", recipe.stages[u].name, recipe.stages[i].name));
            }
        }
        shell.out("}");
        return Ok(Status::Success);
    }
    let mut nodes = Vec::new();
    for &i in recipe.graph.order() {
        let decl = &recipe.stages[i];
        let upstream: Vec<&str> =
            recipe.graph.upstream(i).iter().map(|&u| recipe.stages[u].name.as_str()).collect();
        let datasets = decl.datasets();
        let mut reads: Vec<String> = upstream.iter().map(|s| s.to_string()).collect();
        reads.extend(datasets.iter().map(|d| format!("dataset {d}")));
        let reads = if reads.is_empty() { String::new() } else { format!(" ← {}", reads.join(", ")) };
        shell.out(&format!("{} ({}){reads}", decl.name, decl.kind.name()));
        nodes.push(serde_json::json!({"stage": decl.name, "kind": decl.kind.name(), "reads": upstream, "datasets": datasets}));
    }
    shell.emit(serde_json::json!({"recipe": recipe.name, "stages": nodes}));
    Ok(Status::Success)
}

/// What the cache holds for the instances of one named stage: the plan, each instance's
/// verdict, which instances are the stage's, and the store.
struct StageVerdicts {
    plan: Plan,
    verdicts: Vec<Verdict>,
    shown: BTreeSet<usize>,
    store: cache::Store,
}

/// The verdicts of `stage` in the recipe at `path` (`show`, `export`), keys named with the
/// lock's fingerprints for datasets not here.
fn stage_verdicts(
    path: &Path,
    stage: &str,
    cache: Option<PathBuf>,
    command: &str,
    depth: Verification,
    shell: &Shell,
) -> anyhow::Result<StageVerdicts> {
    let recipe = load(path, shell)?;
    let target = selectors(&recipe, &[stage.to_string()], command)?;
    let store = open_store(cache)?;
    let plan = plan_for(&recipe, &target);
    let shown = instances_of(&plan, &target);
    let (found, _) = locked_fingerprints(path, &recipe, &plan, &store, shell)?;
    let verdicts = plan.evaluate(&recipe, &store, &found.map, &BTreeSet::new(), depth);
    Ok(StageVerdicts { plan, verdicts, shown, store })
}

pub fn show(
    path: &Path,
    stage: &str,
    cache: Option<PathBuf>,
    depth: Verification,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let StageVerdicts { plan, verdicts, shown, store } =
        stage_verdicts(path, stage, cache, "show", depth, shell)?;
    let mut missing = false;
    let mut listed = Vec::new();
    for (i, (instance, verdict)) in plan.instances.iter().zip(&verdicts).enumerate() {
        if !shown.contains(&i) {
            continue;
        }
        match verdict {
            Verdict::Cached { key, .. } => {
                let dir = store.entry_dir(key).join("out");
                shell.out(&format!("{}: {}", instance.label, dir.display()));
                let mut files = serde_json::Map::new();
                if let Ok(Some(manifest)) = store.peek(key) {
                    for (name, record) in &manifest.files {
                        shell.out(&format!("  {name} ({} bytes)", record.size));
                        files.insert(name.clone(), serde_json::json!(record.size));
                    }
                }
                listed.push(serde_json::json!({"stage": instance.id, "key": key.as_str(), "outputs": dir, "files": files}));
            }
            Verdict::Run { reasons, .. } => {
                missing = true;
                shell.out(&format!("{}: not computed ({})", instance.label, reasons.join("; ")));
                listed.push(serde_json::json!({"stage": instance.id, "outputs": null, "reasons": reasons}));
            }
        }
    }
    shell.emit(serde_json::json!({"instances": listed}));
    Ok(if missing { Status::Failure } else { Status::Success })
}

/// The cached output folder of the one instance of `stage` in the recipe at `path` (for
/// `export`): refused when the stage has several instances (seeds, sweeps) or is not computed.
pub fn cached_output(
    path: &Path,
    stage: &str,
    cache: Option<PathBuf>,
    shell: &Shell,
) -> anyhow::Result<PathBuf> {
    let StageVerdicts { plan, verdicts, shown, store } =
        stage_verdicts(path, stage, cache, "export", Verification::Metadata, shell)?;
    let mut dirs = Vec::new();
    for (i, (instance, verdict)) in plan.instances.iter().zip(&verdicts).enumerate() {
        if !shown.contains(&i) {
            continue;
        }
        match verdict {
            Verdict::Cached { key, .. } => dirs.push(store.entry_dir(key).join("out")),
            Verdict::Run { reasons, .. } => {
                anyhow::bail!("`{}` is not computed ({}): run it first", instance.label, reasons.join("; "))
            }
        }
    }
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("`{stage}` has no instance in the recipe"),
        many => anyhow::bail!(
            "`{stage}` has {} instances (seeds or sweep variants): name one, e.g. `{stage}@SEED`",
            many.len()
        ),
    }
}

/// Whether `gc` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcMode {
    Delete,
    /// List what would be deleted.
    DryRun,
}

pub fn gc(
    paths: &[PathBuf],
    mode: GcMode,
    cache: Option<PathBuf>,
    depth: Verification,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let store = open_store(cache)?;
    let mut keep = BTreeSet::new();
    let mut to_compute = BTreeSet::new();
    for path in paths {
        let recipe = load(path, shell)?;
        let plan = Plan::new(&recipe, None);
        let (found, lock_file) = locked_fingerprints(path, &recipe, &plan, &store, shell)?;
        // What the recipe's lock names is kept too: data here that differ from it must not
        // make the entries it describes look unused.
        keep.extend(lock_keys(lock_file.as_ref()));
        let fingerprints = found.map;
        // Without a dataset's fingerprint (from the data or the lock) the keys of everything
        // that reads it are unknown, and their entries would look unused: refuse rather than
        // delete them.
        if let Some((name, problem)) = found.problems.first() {
            return Err(EngineError::Dataset {
                name: name.clone(),
                message: format!(
                    "{problem}; `{}` needs it to tell which cache entries it uses, so nothing was deleted",
                    path.display()
                ),
            }
            .into());
        }
        for verdict in plan.evaluate(&recipe, &store, &fingerprints, &BTreeSet::new(), depth) {
            match verdict {
                Verdict::Cached { key, .. } => {
                    keep.insert(key);
                }
                // Still to compute: a killed attempt's resume folder is kept for the rerun.
                Verdict::Run { key: Some(key), .. } => {
                    to_compute.insert(key);
                }
                Verdict::Run { key: None, .. } => {}
            }
        }
    }
    let cache_error = |source| EngineError::Cache { path: store.root().to_path_buf(), source };
    let (mut removed, mut in_use, mut bytes) = (Vec::new(), Vec::new(), 0u64);
    for key in store.keys().map_err(cache_error)? {
        if keep.contains(&key) {
            continue;
        }
        let size = store.entry_size(&key);
        // Both locks, without waiting: an entry a running pipeline computes or uses is kept.
        let Some(unused) = store.try_lock_unused(&key).map_err(cache_error)? else {
            shell.warn(&format!("{key} is in use by a running pipeline; kept"));
            in_use.push(key.as_str().to_string());
            continue;
        };
        match mode {
            GcMode::DryRun => shell.out(&format!("would delete {key} ({size} bytes)")),
            GcMode::Delete => store.remove_unused(unused).map_err(cache_error)?,
        }
        removed.push(key.as_str().to_string());
        bytes += size;
    }
    if mode == GcMode::Delete {
        let keys: Vec<cache::CacheKey> = removed.iter().filter_map(|k| cache::CacheKey::parse(k)).collect();
        crate::executor::slurm::remove_logs(&crate::executor::slurm::canonical_cache(store.root()), &keys);
    }
    let swept = match mode {
        GcMode::DryRun => 0,
        GcMode::Delete => {
            let wanted: BTreeSet<_> = keep.union(&to_compute).cloned().collect();
            store.sweep_resume(&wanted).map_err(cache_error)?
                + store.sweep_stale_staging().map_err(cache_error)?
        }
    };
    let verb = if mode == GcMode::DryRun { "would free" } else { "freed" };
    let n = removed.len();
    shell.out(&format!(
        "{n} entr{} {verb} {:.1} MB; {} kept{}{}",
        if n == 1 { "y" } else { "ies" },
        bytes as f64 / 1e6,
        keep.len(),
        if in_use.is_empty() { String::new() } else { format!(", {} in use kept", in_use.len()) },
        if swept > 0 {
            format!("; {swept} interrupted staging or resume folder(s) removed")
        } else {
            String::new()
        }
    ));
    shell.emit(serde_json::json!({
        "dry_run": mode == GcMode::DryRun, "deleted": removed, "bytes": bytes, "kept": keep.len(),
        "in_use": in_use, "staging_removed": swept,
    }));
    Ok(Status::Success)
}

/// `pipeline models`: the architectures with their weight counts.
pub fn models(classes: usize, shell: &Shell) -> anyhow::Result<Status> {
    let catalogue = stages::models::catalogue::model_catalogue(classes).map_err(EngineError::Stage)?;
    shell.out(&format!("{:<18} {:<10} {:>12}", "model", "input", format!("weights ({classes} classes)")));
    let mut rows = Vec::new();
    for entry in catalogue {
        let [c, h, w] = entry.input;
        shell.out(&format!("{:<18} {:<10} {:>12}", entry.name, format!("{c}x{h}x{w}"), entry.weights));
        rows.push(serde_json::json!({"model": entry.name, "input": entry.input, "weights": entry.weights}));
    }
    shell.emit(serde_json::json!({"classes": classes, "models": rows}));
    Ok(Status::Success)
}

/// `pipeline fetch`: one dataset, or the list.
pub fn fetch(
    name: Option<&str>,
    to: Option<PathBuf>,
    archive: Option<&Path>,
    shell: &Shell,
) -> anyhow::Result<Status> {
    use stages::data::catalogue::{catalogue, find, Origin};
    let data_dir =
        to.or_else(|| std::env::var_os("PIPELINE_DATA").map(Into::into)).unwrap_or_else(|| "data".into());
    let Some(name) = name else {
        shell.out(&format!("{:<14} {:<22} source", "name", "folder"));
        let mut rows = Vec::new();
        for entry in catalogue() {
            let source = match entry.origin {
                Origin::Download { url, .. } => url.to_string(),
                Origin::Manual(_) => "by hand (see `pipeline fetch NAME`)".into(),
            };
            shell.out(&format!("{:<14} {:<22} {source}", entry.name, entry.folder));
            rows.push(serde_json::json!({"name": entry.name, "folder": entry.folder, "source": source}));
        }
        shell.emit(serde_json::json!({"datasets": rows}));
        return Ok(Status::Success);
    };
    let Some(entry) = find(name) else {
        let names: Vec<&str> = catalogue().iter().map(|e| e.name).collect();
        return Err(
            EngineError::Usage(format!("unknown dataset `{name}` (known: {})", names.join(", "))).into()
        );
    };
    let fetched = crate::fetch::fetch(entry, &data_dir, archive, shell.quiet())
        .map_err(EngineError::Fetch)
        .with_context(|| format!("fetching {}", entry.name))?;
    let (path, installed) = match fetched {
        crate::fetch::Fetched::Installed(path) => {
            shell.out(&format!("{}: unpacked into {}", entry.name, path.display()));
            (path, true)
        }
        crate::fetch::Fetched::AlreadyPresent(path) => {
            shell.out(&format!("{}: {} already exists; nothing fetched", entry.name, path.display()));
            (path, false)
        }
    };
    shell.emit(serde_json::json!({"dataset": entry.name, "path": path, "installed": installed}));
    Ok(Status::Success)
}
