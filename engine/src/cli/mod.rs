//! The `pipeline` command line: `main` parses arguments, runs one command and maps its outcome
//! to the exit status (0: success, 1: a stage failed or a recipe is invalid under `check`,
//! 2: a usage or recipe error).
mod args;
mod bench;
mod commands;
mod metrics;
pub mod shell;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// What a command wants the process to exit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    UsageError,
}

/// Keeps freed memory in the process instead of returning large blocks to the OS after every
/// training step: with glibc's defaults each step's tensors are fresh mmaps, and the page faults
/// of re-touching them cost about a fifth of a small CNN's step (../shared/CANDLE_NOTES.md).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Entry point of the `pipeline` binary.
pub fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(Status::Success) => ExitCode::SUCCESS,
        Ok(Status::Failure) => ExitCode::from(1),
        Ok(Status::UsageError) => ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("\nCaused by:\n    {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Status> {
    match cli.command {
        Command::Run { recipe, only, force, jobs, quiet, json, cache } => {
            commands::run(&recipe, &only, &force, jobs, quiet, json, cache.cache)
        }
        Command::Plan { recipe, only, force, estimate, cache } => {
            commands::plan(&recipe, &only, &force, cache.cache, false, estimate)
        }
        Command::Status { recipe, cache } => commands::plan(&recipe, &[], &[], cache.cache, true, false),
        Command::Dag { recipe, dot } => commands::dag(&recipe, dot),
        Command::Show { recipe, stage, cache } => commands::show(&recipe, &stage, cache.cache),
        Command::Gc { recipes, dry_run, cache } => commands::gc(&recipes, dry_run, cache.cache),
        Command::Check { recipes, json } => commands::check(&recipes, json),
        Command::Metrics { id, ood, convention, json } => metrics::metrics(&id, &ood, &convention, json),
        Command::Compare { before, after } => metrics::compare(&before, &after),
        Command::BenchTrain { net, batch, warmup, steps, seed, device } => {
            bench::bench_train(&net, batch, warmup, steps, seed, &device)
        }
        Command::Fetch { name, to, archive, quiet } => fetch(name.as_deref(), to, archive.as_deref(), quiet),
        Command::Models { classes } => {
            println!("{:<18} {:<10} {:>12}", "model", "input", format!("weights ({classes} classes)"));
            for (name, [c, h, w], count) in stages::models::catalogue::model_catalogue(classes)? {
                println!("{name:<18} {:<10} {count:>12}", format!("{c}x{h}x{w}"));
            }
            Ok(Status::Success)
        }
    }
}

/// `pipeline fetch`: one dataset, or the list.
fn fetch(
    name: Option<&str>,
    to: Option<std::path::PathBuf>,
    archive: Option<&std::path::Path>,
    quiet: bool,
) -> anyhow::Result<Status> {
    use stages::data::catalogue::{catalogue, find, Origin};
    let data_dir =
        to.or_else(|| std::env::var_os("PIPELINE_DATA").map(Into::into)).unwrap_or_else(|| "data".into());
    let Some(name) = name else {
        println!("{:<14} {:<22} source", "name", "folder");
        for entry in catalogue() {
            let source = match entry.origin {
                Origin::Download { url, .. } => url.to_string(),
                Origin::Manual(_) => "by hand (see `pipeline fetch NAME`)".into(),
            };
            println!("{:<14} {:<22} {source}", entry.name, entry.folder);
        }
        return Ok(Status::Success);
    };
    let Some(entry) = find(name) else {
        let names: Vec<&str> = catalogue().iter().map(|e| e.name).collect();
        eprintln!("error: unknown dataset `{name}` (known: {})", names.join(", "));
        return Ok(Status::UsageError);
    };
    match crate::fetch::fetch(entry, &data_dir, archive, quiet)? {
        crate::fetch::Fetched::Installed(path) => {
            println!("{}: unpacked into {}", entry.name, path.display())
        }
        crate::fetch::Fetched::AlreadyPresent(path) => {
            println!("{}: {} already exists; nothing fetched", entry.name, path.display())
        }
    }
    Ok(Status::Success)
}
