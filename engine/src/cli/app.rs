//! The entry point: parse, build the shell, run one command, print the error once (cargo's
//! `error: …` then `Caused by:` lines), exit with the status of its class.
use super::args::{Cli, Command, ConventionArg, VerifyArg};
use super::exit::{class_of, Status};
use super::shell::{Format, Shell, Verbosity};
use super::{bench, commands, metrics, remote};
use clap::Parser;
use std::process::ExitCode;

/// Makes candle's element-wise worker pool park at once when it runs out of work instead of
/// spinning 25,000 times first (its default): on a 2-core machine the spinning workers take the
/// cores from the convolution and gemm threads. Measured with `pipeline bench-train` at two
/// threads (median step, 3 interleaved rounds): small CNN 20.1–25.0 ms → 16.4–17.4 ms,
/// ResNet-20 254–289 ms → 235–243 ms; one thread unchanged. A value the user sets is kept.
fn park_idle_candle_workers() {
    const VARIABLE: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VARIABLE).is_none() {
        // Called first thing in `main`, before any thread exists.
        std::env::set_var(VARIABLE, "0");
    }
}

/// Entry point of the `pipeline` binary.
pub fn main() -> ExitCode {
    // First, before any thread starts: glibc keeps freed memory for the next training step.
    stages::models::kernels::allocator::keep_freed_memory();
    park_idle_candle_workers();
    let cli = Cli::parse();
    let verbosity = if cli.quiet { Verbosity::Quiet } else { Verbosity::Normal };
    let shell = Shell::new(verbosity, cli.color, format_of(&cli.command));
    match run(cli.command, &shell) {
        Ok(status) => status.exit_code(),
        Err(error) => {
            let mut message = error.to_string();
            for cause in error.chain().skip(1) {
                message.push_str(&format!("\n\nCaused by:\n    {cause}"));
            }
            shell.error(&message);
            ExitCode::from(class_of(&error).exit_code())
        }
    }
}

/// Whether the command asked for JSON on stdout.
fn format_of(command: &Command) -> Format {
    let json = match command {
        Command::Run { json, .. }
        | Command::Check { json, .. }
        | Command::Metrics { json, .. }
        | Command::Cancel { json, .. } => *json,
        Command::Plan { json, .. }
        | Command::Status { json, .. }
        | Command::Lock { json, .. }
        | Command::Dag { json, .. }
        | Command::Show { json, .. }
        | Command::Gc { json, .. }
        | Command::Push { json, .. }
        | Command::Pull { json, .. }
        | Command::Models { json, .. }
        | Command::Inspect { json, .. }
        | Command::Export { json, .. }
        | Command::Compare { json, .. }
        | Command::Fetch { json, .. } => json.json,
        Command::BenchTrain(_) | Command::BenchKnn { .. } | Command::CheckOps { .. } => true,
        Command::Worker { .. } => false,
    };
    if json {
        Format::Json
    } else {
        Format::Text
    }
}

/// How much of each cache entry to check: `--verify` re-hashes every file.
fn depth(verify: VerifyArg) -> cache::Verification {
    if verify.verify {
        cache::Verification::Hashes
    } else {
        cache::Verification::Metadata
    }
}

fn run(command: Command, shell: &Shell) -> anyhow::Result<Status> {
    use commands::{PlanRequest, PlanView, RunRequest};
    match command {
        Command::Run {
            recipe,
            only,
            force,
            jobs,
            json: _,
            cache,
            remote,
            remote_read_only,
            executor,
            detach,
            locked,
        } => commands::run(
            &RunRequest {
                recipe: &recipe,
                only: &only,
                force: &force,
                jobs,
                cache: cache.cache,
                remote: remote.as_deref(),
                remote_read_only,
                slurm: executor == super::args::ExecutorChoice::Slurm,
                detach,
                locked,
            },
            shell,
        ),
        Command::Worker { recipe, instance, tasks, task, force, keep_resume, expect, cache } => {
            let (label, expect) = match (tasks, task) {
                (Some(tasks), Some(task)) => commands::array_task(&tasks, task)?,
                _ => (instance.unwrap_or_default(), expect),
            };
            let request = commands::WorkerRequest {
                recipe: &recipe,
                label: &label,
                force,
                keep_resume,
                expect: expect.as_deref(),
                cache: cache.cache,
            };
            commands::worker(&request, shell)
        }
        Command::Lock { recipe, json: _, cache } => commands::lock(&recipe, cache.cache, shell),
        Command::Cancel { recipe, json: _, cache } => super::slurm::cancel(&recipe, cache.cache, shell),
        Command::Push { recipe, remote, verify, json: _, cache } => {
            remote::push(&recipe, &remote_request(&remote), cache.cache, verify, shell)
        }
        Command::Pull { recipe, remote, json: _, cache } => {
            remote::pull(&recipe, &remote_request(&remote), cache.cache, shell)
        }
        Command::Plan { recipe, only, force, estimate, json: _, verify, cache } => {
            let view = PlanView::WhatWillRun { measure: estimate };
            let request = PlanRequest {
                recipe: &recipe,
                only: &only,
                force: &force,
                cache: cache.cache,
                view,
                depth: depth(verify),
                locked: false,
            };
            commands::plan(request, shell)
        }
        Command::Status { recipe, locked, json: _, verify, cache } => {
            let view = PlanView::EveryStage;
            let request = PlanRequest {
                recipe: &recipe,
                only: &[],
                force: &[],
                cache: cache.cache,
                view,
                depth: depth(verify),
                locked,
            };
            commands::plan(request, shell)
        }
        Command::Dag { recipe, dot, json: _ } => commands::dag(&recipe, dot, shell),
        Command::Show { recipe, stage, json: _, verify, cache } => {
            commands::show(&recipe, &stage, cache.cache, depth(verify), shell)
        }
        Command::Gc {
            recipes,
            dry_run,
            remote: Some(remote),
            grace,
            timeouts,
            json: _,
            verify: _,
            cache,
        } => {
            let grace = std::time::Duration::from_secs(grace);
            let request = super::loading::RemoteRequest {
                flag: Some(&remote),
                timeout: timeouts.timeout,
                connect_timeout: timeouts.connect_timeout,
            };
            remote::gc(&recipes, &request, grace, dry_run, cache.cache, shell)
        }
        Command::Gc { recipes, dry_run, remote: None, grace: _, timeouts: _, json: _, verify, cache } => {
            let mode = if dry_run { commands::GcMode::DryRun } else { commands::GcMode::Delete };
            commands::gc(&recipes, mode, cache.cache, depth(verify), shell)
        }
        Command::Check { recipes, no_data, json: _ } => {
            let scope =
                if no_data { commands::CheckScope::RecipeOnly } else { commands::CheckScope::RecipeAndData };
            commands::check(&recipes, scope, shell)
        }
        Command::Metrics { id, ood, convention, json: _ } => {
            let convention = match convention {
                ConventionArg::Idpos => stages::metrics::Convention::IdPositive,
                ConventionArg::Openood => stages::metrics::Convention::OpenOod,
            };
            metrics::metrics(&id, &ood, convention, shell)
        }
        Command::Compare { before, after, json: _ } => metrics::compare(&before, &after, shell),
        Command::BenchTrain(bench) => bench::bench_train(&bench, shell),
        Command::BenchKnn { bank, queries, width } => bench::bench_knn(bank, queries, width, shell),
        Command::CheckOps { device } => bench::check_ops(&device, shell),
        Command::Fetch { name, to, archive, json: _ } => {
            commands::fetch(name.as_deref(), to, archive.as_deref(), shell)
        }
        Command::Models { classes, json: _ } => commands::models(classes, shell),
        Command::Inspect { file, json: _ } => super::external::inspect(&file, shell),
        Command::Export { recipe, stage, to, naming, json: _, cache } => {
            super::external::export(&recipe, &stage, &to, &naming, cache.cache, shell)
        }
    }
}

/// What `--remote`, `--timeout` and `--connect-timeout` ask for.
fn remote_request(arg: &super::args::RemoteArg) -> super::loading::RemoteRequest<'_> {
    super::loading::RemoteRequest {
        flag: arg.remote.as_deref(),
        timeout: arg.timeouts.timeout,
        connect_timeout: arg.timeouts.connect_timeout,
    }
}
