//! `run --executor slurm`: starting the executor (one coordinator per cache and recipe; Ctrl-C,
//! SIGTERM and SIGHUP cancel its jobs), `--detach`, which submits the coordinator itself as a
//! job so that it survives logout, and `pipeline cancel`.
use super::exit::Status;
use super::shell::Shell;
use crate::error::EngineError;
use crate::executor::slurm::{self, SlurmExecutor};
use crate::plan::{fingerprint_datasets, Looked, Plan};
use crate::recipe::project;
use crate::recipe::resources::SlurmSettings;
use crate::recipe::Recipe;
use cache::Store;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The recipe's `[executor.slurm]` over the nearest `pipeline.toml`'s (site settings: partition,
/// account, default resources); the project file's errors are printed with their positions.
pub fn settings(recipe: &Recipe, shell: &Shell) -> Result<SlurmSettings, EngineError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("."));
    let Some(path) = project::find(&cwd) else { return Ok(recipe.slurm.clone()) };
    match project::slurm_settings(&path) {
        Ok(site) => Ok(recipe.slurm.over(&site)),
        Err(diagnostics) => {
            for d in &diagnostics {
                shell.diagnostic(&d.render());
            }
            Err(EngineError::Recipe { path, count: crate::recipe::diagnostic::error_count(&diagnostics) })
        }
    }
}

/// The coordinator of a run: its executor, and the lock that makes it the only coordinator of
/// this recipe on this cache while it lives.
pub struct Coordinator {
    pub executor: Arc<SlurmExecutor>,
    _lock: std::fs::File,
}

/// Where a run's coordinator is named: the cache and the recipe, both canonical (a symbolic
/// link or a relative spelling names the same run).
struct RunIdentity {
    cache: PathBuf,
    recipe: PathBuf,
    name: String,
}

impl RunIdentity {
    fn of(store: &Store, recipe_path: &Path) -> RunIdentity {
        let cache = slurm::canonical_cache(store.root());
        let recipe = std::fs::canonicalize(recipe_path).unwrap_or_else(|_| recipe_path.to_path_buf());
        let name = slurm::coordinator_name(&cache, &recipe);
        RunIdentity { cache, recipe, name }
    }

    fn lock_path(&self) -> PathBuf {
        slurm::logs_dir(&self.cache).join(format!("{}.lock", self.name))
    }
}

/// This machine's name, for the coordinator lock's note.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Becomes the one coordinator of `recipe_path` on this cache: a second `run --executor slurm`
/// of it (in the foreground, detached, or through another spelling of the paths) waits here for
/// the first to end, saying whose run it is, and then finds its results cached (or re-attaches
/// to what is still running). It never submits a job twice.
fn take_coordination(identity: &RunIdentity, shell: &Shell) -> Result<std::fs::File, EngineError> {
    let path = identity.lock_path();
    let io = |e: std::io::Error| EngineError::Usage(format!("cannot take {}: {e}", path.display()));
    std::fs::create_dir_all(path.parent().expect("the lock is in the logs folder")).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let whose = std::fs::read_to_string(&path).unwrap_or_default();
            shell.status(
                "Waiting",
                &format!(
                    "another coordinator runs this recipe on this cache ({}); waiting for it to end \
                     (`pipeline cancel` stops it and its jobs)",
                    whose.trim()
                ),
            );
            file.lock().map_err(io)?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    use std::io::{Seek, Write};
    let note = format!(
        "pid {} on {}{}",
        std::process::id(),
        host(),
        std::env::var("SLURM_JOB_ID").map(|id| format!(", Slurm job {id}")).unwrap_or_default()
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()))
        .map_err(io)?;
    Ok(file)
}

/// The executor for this run; Ctrl-C, SIGTERM and SIGHUP (Slurm cancelling a detached
/// coordinator sends SIGTERM) cancel every job it submitted or re-attached to and exit with 130.
pub fn start(
    recipe: &Recipe,
    recipe_path: &std::path::Path,
    store: &Store,
    shell: &Shell,
) -> Result<Coordinator, EngineError> {
    let settings = settings(recipe, shell)?;
    let identity = RunIdentity::of(store, recipe_path);
    let lock = take_coordination(&identity, shell)?;
    let executor = Arc::new(
        SlurmExecutor::new(recipe, &identity.recipe, &identity.cache, settings)
            .map_err(|e| EngineError::Usage(e.to_string()))?,
    );
    let on_interrupt = Arc::clone(&executor);
    // A second handler cannot be installed (tests run several commands in one process): the
    // first one stays, which is fine for a command line that runs one command.
    let _ = ctrlc::set_handler(move || {
        let cancelled = on_interrupt.cancel_submitted();
        eprintln!(
            "interrupted: cancelled {} job(s) of this run{}",
            cancelled.len(),
            if cancelled.is_empty() { String::new() } else { format!(" ({})", cancelled.join(", ")) }
        );
        std::process::exit(130);
    });
    shell.status(
        "Slurm",
        &format!("submitting to the cluster; job logs under {}", slurm::logs_dir(&identity.cache).display()),
    );
    Ok(Coordinator { executor, _lock: lock })
}

/// Submits `pipeline run RECIPE --executor slurm FLAGS…` as one small job, unless this run's
/// coordinator is queued or running already.
pub fn detach(
    recipe_path: &std::path::Path,
    flags: &[String],
    recipe: &Recipe,
    store: &Store,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let site = settings(recipe, shell)?;
    let identity = RunIdentity::of(store, recipe_path);
    let follow = format!(
        "`pipeline status {} --cache {}` shows where the run stands",
        recipe_path.display(),
        identity.cache.display()
    );
    if let Some(row) = slurm::jobs_by_name(&identity.cache).and_then(|jobs| jobs.get(&identity.name).cloned())
    {
        if crate::executor::squeue::meaning(&row.state) == crate::executor::squeue::Meaning::Waiting {
            shell.status(
                "Detached",
                &format!(
                    "this run's coordinator is already {}; nothing submitted; {follow}",
                    slurm::describe_row(&row)
                ),
            );
            shell.emit(serde_json::json!({"event": "detached", "job": row.id, "already": true}));
            return Ok(Status::Success);
        }
    }
    // A coordinator in the foreground (or one whose job Slurm no longer shows as ours) holds the
    // run's lock: a detached one would only wait for it.
    if let Ok(file) = std::fs::File::open(identity.lock_path()) {
        if matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
            let whose = std::fs::read_to_string(identity.lock_path()).unwrap_or_default();
            shell.status(
                "Detached",
                &format!(
                    "a coordinator runs this recipe on this cache already ({}); nothing submitted; {follow}",
                    whose.trim()
                ),
            );
            shell.emit(serde_json::json!({"event": "detached", "job": null, "already": true}));
            return Ok(Status::Success);
        }
    }
    let binary = std::env::current_exe()?;
    let logs = slurm::logs_dir(&identity.cache);
    std::fs::create_dir_all(&logs)?;
    let log = format!("{}-%j.log", identity.name);
    let mut command = vec![
        binary.display().to_string(),
        "run".into(),
        identity.recipe.display().to_string(),
        "--executor".into(),
        "slurm".into(),
        "--cache".into(),
        identity.cache.display().to_string(),
    ];
    command.extend(flags.iter().cloned());
    let resources = site.coordinator.or(&crate::recipe::resources::Resources {
        cpus: Some(1),
        mem: Some("1G".into()),
        ..Default::default()
    });
    let mut args = vec!["--parsable".to_string(), format!("--job-name={}", identity.name)];
    let (output, redirect) =
        slurm::output_to(&logs, &log, &format!("\"{}-$SLURM_JOB_ID.log\"", identity.name));
    args.extend(output);
    args.extend(slurm::resource_args(&resources));
    args.extend(site.placement_args());
    args.extend(site.extra.iter().cloned());
    args.push(slurm::wrap(&command) + &redirect);
    let id = slurm::sbatch(&args, &resources).map_err(|refusal| {
        let why = match refusal {
            slurm::SlurmJobError::Refused { said, .. } => said,
            other => other.to_string(),
        };
        EngineError::Usage(format!("sbatch refused the coordinator: {why}"))
    })?;
    shell.status(
        "Detached",
        &format!(
            "the coordinator is job {id}; its log: {}; {follow}; `pipeline cancel {} --cache {}` stops it and its jobs",
            logs.join(log.replace("%j", &id)).display(),
            recipe_path.display(),
            identity.cache.display()
        ),
    );
    shell.emit(serde_json::json!({"event": "detached", "job": id}));
    Ok(Status::Success)
}

/// `pipeline cancel RECIPE`: stops this run's coordinator (a Slurm job, or a process on this
/// machine) and cancels every job of the run that Slurm still shows.
pub fn cancel(recipe_path: &Path, cache: Option<PathBuf>, shell: &Shell) -> anyhow::Result<Status> {
    let recipe = super::loading::load(recipe_path, shell)?;
    let store = super::loading::open_store(cache)?;
    let identity = RunIdentity::of(&store, recipe_path);
    let Some(jobs) = slurm::jobs_by_name(&identity.cache) else {
        return Err(EngineError::Usage("no Slurm answers here (is SLURM_CONF set?)".into()).into());
    };
    let active = |name: &str| {
        jobs.get(name).filter(|row| {
            crate::executor::squeue::meaning(&row.state) == crate::executor::squeue::Meaning::Waiting
        })
    };
    let mut cancelled: Vec<String> = Vec::new();
    // The coordinator first, so that it submits nothing more.
    if let Some(row) = active(&identity.name) {
        cancelled.push(row.id.clone());
    }
    let note = std::fs::read_to_string(identity.lock_path()).unwrap_or_default();
    let coordinator_running = std::fs::File::open(identity.lock_path())
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    let mut stopped = None;
    if coordinator_running && cancelled.is_empty() {
        // A coordinator in the foreground: stopped like Ctrl-C if it runs here.
        let pid = note.strip_prefix("pid ").and_then(|rest| rest.split_whitespace().next());
        let here = note.contains(&format!(" on {}", host()));
        match pid {
            Some(pid) if here => {
                let sent = Command::new("kill").args(["-TERM", pid]).status().is_ok_and(|s| s.success());
                if sent {
                    stopped = Some(format!("pid {pid}"));
                }
            }
            _ => shell.warn(&format!(
                "this run's coordinator ({}) runs on another machine: stop it there (Ctrl-C)",
                note.trim()
            )),
        }
    }
    // Every job of the run: the keys that can be named from what is cached.
    let plan = Plan::new(&recipe, None);
    let (fingerprints, _) = fingerprint_datasets(&recipe, &plan, &store);
    let mut look = |_: usize, key: &cache::CacheKey| match store.lookup(key) {
        Ok(Some(entry)) => Looked::Found { output_digest: entry.manifest.output_digest, found: () },
        _ => Looked::Absent { problem: None },
    };
    for resolved in plan.resolve(&recipe, &fingerprints, &|_| true, &mut look) {
        if let Some(key) = resolved.key() {
            if let Some(row) = active(&slurm::job_name(&identity.cache, key)) {
                cancelled.push(row.id.clone());
            }
        }
    }
    if !cancelled.is_empty() {
        let status = Command::new("scancel").args(&cancelled).status()?;
        if !status.success() {
            return Err(EngineError::Usage(format!("scancel {} failed", cancelled.join(" "))).into());
        }
    }
    match (cancelled.is_empty(), &stopped) {
        (true, None) => shell.status("Cancel", "nothing of this run is queued or running"),
        _ => shell.status(
            "Cancelled",
            &format!(
                "{} Slurm job(s){}{}",
                cancelled.len(),
                if cancelled.is_empty() { String::new() } else { format!(" ({})", cancelled.join(", ")) },
                stopped.as_ref().map(|p| format!("; stopped the coordinator ({p})")).unwrap_or_default()
            ),
        ),
    }
    shell.emit(serde_json::json!({"cancelled": cancelled, "stopped": stopped}));
    Ok(Status::Success)
}
