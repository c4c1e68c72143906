//! The local executor: computes an instance on the calling thread, stages its outputs and
//! commits them under the key's lock. `run` without `--executor` uses it for every instance, and
//! the Slurm worker for the one instance its job computes.
use super::job::{Executor, ExecutorError, JobSpec, JobState, Polled, Submitted, Ticket};
use crate::error_text::panic_text;
use crate::events::Reporter;
use crate::plan::Plan;
use crate::recipe::Recipe;
use cache::{CacheKey, Store};
use stages::device::Device;
use stages::{RunContext, UpstreamTag};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Computes on this process's threads. A job has ended when [`LocalExecutor::submit`] returns;
/// its state waits for the next poll. Cancelling cannot stop a stage that runs (stages do not
/// check for it), and nothing else is ever pending, so it cancels nothing.
pub struct LocalExecutor<'a> {
    recipe: &'a Recipe,
    plan: &'a Plan,
    store: &'a Store,
    device: &'a Device,
    /// How many instances run at once (each stage's parallel loops start accordingly).
    jobs: usize,
    next: AtomicU64,
    ended: Mutex<HashMap<Ticket, JobState>>,
}

impl<'a> LocalExecutor<'a> {
    pub fn new(
        recipe: &'a Recipe,
        plan: &'a Plan,
        store: &'a Store,
        device: &'a Device,
        jobs: usize,
    ) -> Self {
        LocalExecutor { recipe, plan, store, device, jobs, next: AtomicU64::new(0), ended: Mutex::default() }
    }

    /// Computes `job` and commits its outputs.
    fn compute(&self, job: JobSpec, reporter: &dyn Reporter) -> Result<(), ExecutorError> {
        let instance = job.instance;
        let store = self.store;
        let lock = match job.lock {
            Some(lock) => lock,
            None => {
                let lock = match store.try_lock(job.key)? {
                    Some(lock) => lock,
                    None => {
                        reporter.waiting(instance);
                        store.lock(job.key)?
                    }
                };
                // Committed meanwhile by whoever held the lock (a damaged entry is recomputed).
                if !job.forced && matches!(store.lookup(job.key), Ok(Some(_))) {
                    return Ok(());
                }
                lock
            }
        };
        let decl = &self.recipe.stages[instance.stage];
        let staging = store.stage(&lock)?;
        let upstream: BTreeMap<String, Vec<PathBuf>> = instance
            .upstream
            .iter()
            .map(|(name, list)| (name.clone(), list.iter().map(|d| job.upstream[d].out_dir()).collect()))
            .collect();
        let upstream_tags: BTreeMap<String, Vec<UpstreamTag>> = instance
            .upstream
            .iter()
            .map(|(name, list)| {
                let tags = list
                    .iter()
                    .map(|&d| UpstreamTag {
                        seed: self.plan.instances[d].seed,
                        params: self.plan.instances[d].params.clone(),
                    })
                    .collect();
                (name.clone(), tags)
            })
            .collect();
        let out_dir = staging.out_dir();
        let progress = reporter.progress(instance);
        // A forced rerun starts over (unless it continues an attempt of its own); otherwise a
        // killed attempt's record is picked up.
        let resume_dir = store.resume_dir(job.key);
        if job.forced && job.fresh {
            store.remove_resume(job.key);
        }
        let ctx = RunContext {
            out_dir: &out_dir,
            seed: instance.stage_seed,
            upstream: &upstream,
            upstream_tags: &upstream_tags,
            resume_dir: Some(&resume_dir),
            datasets: &self.recipe.datasets,
            device: self.device,
            progress: progress.as_ref(),
        };
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            on_compute_threads(self.jobs, || decl.variants[instance.variant].stage.run(&ctx))
        }));
        drop(progress);
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(panic) => return Err(ExecutorError::Panicked(panic_text(&*panic))),
        }
        let meta = serde_json::json!({
            "stage": decl.name,
            "instance": instance.id,
            "recipe": self.recipe.name,
            "seconds": seconds,
            "device": stages::device::describe(self.device),
            "device_class": stages::device::class(self.device),
            "pipeline_version": env!("CARGO_PKG_VERSION"),
        });
        store.commit(staging, &lock, job.inputs, meta).map_err(ExecutorError::Store)?;
        store.remove_resume(job.key);
        Ok(())
    }
}

impl Executor for LocalExecutor<'_> {
    fn submit(&self, job: JobSpec, reporter: &dyn Reporter) -> Result<Submitted, ExecutorError> {
        let ticket = Ticket(self.next.fetch_add(1, Ordering::Relaxed));
        let state = match self.compute(job, reporter) {
            Ok(()) => JobState::Ended,
            Err(e) => JobState::Failed(e),
        };
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).insert(ticket, state);
        Ok(Submitted { ticket, events: Vec::new() })
    }

    fn poll(&self, tickets: &[Ticket], _committed: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled> {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        tickets
            .iter()
            .map(|ticket| Polled {
                state: ended
                    .remove(ticket)
                    .unwrap_or(JobState::Failed(ExecutorError::UnknownTicket(*ticket))),
                events: Vec::new(),
            })
            .collect()
    }

    fn cancel(&self, _tickets: &[Ticket]) -> Vec<String> {
        Vec::new()
    }

    fn poll_interval(&self) -> Duration {
        Duration::ZERO
    }

    fn log_of(&self, _ticket: Ticket) -> Option<String> {
        None
    }
}

/// Runs `work` (one stage) where its parallel kernels are cheapest to start. With one stage at
/// a time it runs on a thread of rayon's pool: each parallel loop in it then starts from inside
/// the pool, where from any other thread it is handed over and waited for, a wake-up and a
/// sleep per operation (5% of a ResNet-20 training step and 15% of a small CNN's at one thread,
/// `pipeline bench-train`). With several stages at once it stays on the calling thread: a pool
/// thread that waits for its loop could otherwise pick up a whole other stage and hold the
/// first one until that one ends.
fn on_compute_threads<R: Send>(jobs: usize, work: impl FnOnce() -> R + Send) -> R {
    if jobs <= 1 {
        rayon::scope(|_| work())
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::on_compute_threads;

    #[test]
    fn one_stage_at_a_time_runs_on_a_pool_thread_and_several_stay_on_their_own() {
        assert_eq!(rayon::current_thread_index(), None, "the test itself is not on a pool thread");
        assert!(on_compute_threads(1, rayon::current_thread_index).is_some());
        assert_eq!(on_compute_threads(2, rayon::current_thread_index), None);
        // What the work returns, and a panic in it, reach the caller.
        assert_eq!(on_compute_threads(1, || 41 + 1), 42);
        let panic = std::panic::catch_unwind(|| on_compute_threads(1, || panic!("stage failed")));
        assert!(panic.is_err());
    }
}
