//! `run --executor slurm`: starting the executor (Ctrl-C cancels the jobs it submitted) and
//! `--detach`, which submits the coordinator itself as a job so that it survives logout.
use super::exit::Status;
use super::shell::Shell;
use crate::error::EngineError;
use crate::executor::slurm::{self, SlurmExecutor};
use crate::recipe::project;
use crate::recipe::resources::{Resources, SlurmSettings};
use crate::recipe::Recipe;
use cache::Store;
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

/// The executor for this run; Ctrl-C cancels what it submitted and exits with 130.
pub fn start(
    recipe: &Recipe,
    recipe_path: &std::path::Path,
    store: &Store,
    shell: &Shell,
) -> Result<Arc<SlurmExecutor>, EngineError> {
    let settings = settings(recipe, shell)?;
    let executor = Arc::new(
        SlurmExecutor::new(recipe, recipe_path, store.root(), settings)
            .map_err(|e| EngineError::Usage(e.to_string()))?,
    );
    let on_interrupt = Arc::clone(&executor);
    // A second handler cannot be installed (tests run several commands in one process): the
    // first one stays, which is fine for a command line that runs one command.
    let _ = ctrlc::set_handler(move || {
        let cancelled = on_interrupt.cancel_submitted();
        eprintln!(
            "interrupted: cancelled {} job(s) this run submitted{}",
            cancelled.len(),
            if cancelled.is_empty() { String::new() } else { format!(" ({})", cancelled.join(", ")) }
        );
        std::process::exit(130);
    });
    shell.status(
        "Slurm",
        &format!("submitting to the cluster; job logs under {}", store.root().join("logs/slurm").display()),
    );
    Ok(executor)
}

/// Submits `pipeline run RECIPE --executor slurm FLAGS…` as one small job.
pub fn detach(
    recipe_path: &std::path::Path,
    flags: &[String],
    recipe: &Recipe,
    store: &Store,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let site = settings(recipe, shell)?;
    let binary = std::env::current_exe()?;
    let logs = store.root().join("logs").join("slurm");
    std::fs::create_dir_all(&logs)?;
    let log = absolute(&logs.join(format!("coordinator-{}-%j.log", recipe.name)));
    let mut command = vec![
        binary.display().to_string(),
        "run".into(),
        absolute(recipe_path).display().to_string(),
        "--executor".into(),
        "slurm".into(),
        "--cache".into(),
        absolute(store.root()).display().to_string(),
    ];
    command.extend(flags.iter().cloned());
    let mut args = vec![
        "--parsable".to_string(),
        format!("--job-name={}", slurm::coordinator_name(&recipe.name)),
        format!("--output={}", log.display()),
        "--cpus-per-task=1".into(),
        "--mem=1G".into(),
    ];
    args.extend(site.placement_args());
    args.push(slurm::wrap(&command));
    let id = slurm::sbatch(&args, &Resources::default()).map_err(|refusal| {
        let why = match refusal {
            slurm::SlurmJobError::Refused { said, .. } => said,
            other => other.to_string(),
        };
        EngineError::Usage(format!("sbatch refused the coordinator: {why}"))
    })?;
    shell.status(
        "Detached",
        &format!(
            "the coordinator is job {id}; its log: {}; `pipeline status {}` shows where the run stands",
            log.display().to_string().replace("%j", &id),
            recipe_path.display()
        ),
    );
    shell.emit(serde_json::json!({"event": "detached", "job": id}));
    Ok(Status::Success)
}
