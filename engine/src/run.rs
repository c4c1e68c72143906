//! The scheduler: runs a plan's instances in dependency order, up to `jobs` at once, reusing
//! cached results, and reports each event to a [`Reporter`]. A failed instance skips what
//! depends on it; independent branches finish.
use crate::plan::{Instance, Plan};
use crate::recipe::resources::Resources;
use crate::recipe::Recipe;
use cache::remote::{Remote, TransferProgress};
use cache::{CacheError, CacheKey, Entry, ReadHold, Store};
use stages::device::Device;
use stages::{Progress, RunContext, UpstreamTag};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// How one instance ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Found in the cache (`waited`: computed meanwhile by a concurrent run).
    Reused {
        entry: Box<Entry>,
        waited: bool,
    },
    Computed {
        entry: Box<Entry>,
        seconds: f64,
    },
    /// Downloaded from the remote (`run --remote`) instead of computed.
    Pulled {
        entry: Box<Entry>,
        bytes: u64,
        seconds: f64,
    },
    Failed {
        message: String,
    },
    Skipped {
        because: String,
    },
}

impl Outcome {
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Outcome::Reused { entry, .. }
            | Outcome::Computed { entry, .. }
            | Outcome::Pulled { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// Receives the scheduler's events; the command line prints them.
pub trait Reporter: Sync {
    fn started(&self, instance: &Instance, key: &CacheKey);
    /// Another process holds the key's lock: this run waits for its result.
    fn waiting(&self, instance: &Instance);
    fn finished(&self, instance: &Instance, outcome: &Outcome);
    fn warn(&self, message: &str);
    /// Where the stage's own progress goes.
    fn progress<'a>(&'a self, instance: &'a Instance) -> Box<dyn Progress + 'a>;
    /// An executor's job for `instance` changed (`what`: "submitted", "running on node7", …).
    fn job(&self, instance: &Instance, job: &str, what: &str) {
        let _ = (instance, job, what);
    }
}

/// Computes an instance that is not cached somewhere other than this process's threads (a
/// Slurm job). The scheduler decides what is ready and checks the result.
pub trait Executor: Sync {
    /// Runs `job` to its end: `Ok` when it says it finished, after which the scheduler looks
    /// for the committed entry; `Err` with what went wrong.
    fn compute(&self, job: &JobSpec, reporter: &dyn Reporter) -> Result<(), String>;
    /// What the job left to read when it ended without committing (its log's tail).
    fn log_of(&self, job: &JobSpec) -> Option<String>;
}

/// One instance for an [`Executor`].
pub struct JobSpec<'a> {
    pub instance: &'a Instance,
    pub key: &'a CacheKey,
    /// The stage's kind (`train`), its role and its declared resources.
    pub kind: &'a str,
    pub role: stages::Role,
    pub resources: &'a Resources,
    /// Recompute even though the entry exists.
    pub forced: bool,
    /// Whether the instance's entry is committed now (a job killed just after committing has
    /// still done its work).
    pub committed: &'a dyn Fn() -> bool,
}

pub struct RunOptions<'a> {
    pub jobs: usize,
    /// Instances (plan indices) to recompute even when cached.
    pub forced: BTreeSet<usize>,
    pub device: Device,
    /// Where to look before computing, and where to push what was computed.
    pub remote: Option<RemoteAccess>,
    /// Where instances are computed: `None` on this process's threads.
    pub executor: Option<&'a dyn Executor>,
}

/// `run --remote`: results the remote has are pulled instead of computed; what is computed is
/// pushed unless `read_only` (CI).
pub struct RemoteAccess {
    pub remote: Remote,
    pub read_only: bool,
    /// Set at the first request that fails: the run goes on without the remote rather than
    /// wait out every stage's retries.
    pub unreachable: std::sync::atomic::AtomicBool,
}

impl RemoteAccess {
    pub fn new(remote: Remote, read_only: bool) -> RemoteAccess {
        RemoteAccess { remote, read_only, unreachable: Default::default() }
    }

    fn usable(&self) -> bool {
        !self.unreachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a failed request; warns the first time only.
    fn failed(&self, error: &cache::remote::RemoteError, reporter: &dyn Reporter) {
        if !self.unreachable.swap(true, std::sync::atomic::Ordering::Relaxed) {
            reporter.warn(&format!("{}; this run goes on without the remote", error_chain(error)));
        }
    }
}

enum Slot {
    Pending,
    Running,
    Done(Outcome),
}

/// What the workers share: each instance's slot, how many of its upstream instances are still
/// unfinished, and the instances ready to run (lowest plan index first, so one worker runs them
/// in plan order). Finishing an instance touches only its dependents: scheduling is
/// O((instances + edges) · log instances), not a scan of the whole plan per pick.
struct Board {
    slots: Vec<Slot>,
    unfinished_deps: Vec<usize>,
    /// How many of each instance's dependents are not finished yet: once none is (and it is
    /// finished itself), nothing in this run reads its entry any more and its hold is let go.
    unfinished_dependents: Vec<usize>,
    ready: BinaryHeap<Reverse<usize>>,
    running: usize,
    done: usize,
}

impl Board {
    /// Marks `i` done; dependents whose upstream is all done become ready, or are skipped
    /// (and reported) when one of their upstream instances did not finish.
    /// Returns the instances whose entries nothing in this run reads any more.
    fn finish(
        &mut self,
        i: usize,
        outcome: Outcome,
        plan: &Plan,
        dependents: &[Vec<usize>],
        reporter: &dyn Reporter,
    ) -> Vec<usize> {
        let mut released = Vec::new();
        let mut stack = vec![(i, outcome)];
        while let Some((i, outcome)) = stack.pop() {
            self.slots[i] = Slot::Done(outcome);
            self.done += 1;
            if self.unfinished_dependents[i] == 0 {
                released.push(i);
            }
            for u in plan.instances[i].deps().collect::<BTreeSet<usize>>() {
                self.unfinished_dependents[u] -= 1;
                if self.unfinished_dependents[u] == 0 && matches!(self.slots[u], Slot::Done(_)) {
                    released.push(u);
                }
            }
            for &d in &dependents[i] {
                self.unfinished_deps[d] -= 1;
                if self.unfinished_deps[d] > 0 {
                    continue;
                }
                let blocked = plan.instances[d]
                    .deps()
                    .find(|&u| matches!(&self.slots[u], Slot::Done(o) if o.entry().is_none()));
                match blocked {
                    Some(u) => {
                        let outcome = Outcome::Skipped {
                            because: format!("`{}` did not finish", plan.instances[u].label),
                        };
                        reporter.finished(&plan.instances[d], &outcome);
                        stack.push((d, outcome));
                    }
                    None => self.ready.push(Reverse(d)),
                }
            }
        }
        released
    }
}

/// Runs every instance of `plan`; returns each one's outcome, in plan order.
pub fn execute(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    fingerprints: &BTreeMap<String, String>,
    dataset_problems: &BTreeMap<String, String>,
    options: &RunOptions,
    reporter: &dyn Reporter,
) -> Vec<Outcome> {
    let n = plan.instances.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut unfinished_deps = vec![0; n];
    for (i, instance) in plan.instances.iter().enumerate() {
        let deps: BTreeSet<usize> = instance.deps().collect();
        unfinished_deps[i] = deps.len();
        for d in deps {
            dependents[d].push(i);
        }
    }
    let ready = (0..n).filter(|&i| unfinished_deps[i] == 0).map(Reverse).collect();
    let board = Mutex::new(Board {
        slots: (0..n).map(|_| Slot::Pending).collect(),
        unfinished_deps,
        unfinished_dependents: dependents.iter().map(Vec::len).collect(),
        ready,
        running: 0,
        done: 0,
    });
    // Each instance's hold on its entry, from when it is looked up until nothing in this run
    // reads it any more: a `gc` meanwhile cannot delete what the run still needs, and a run of
    // 100,000 instances does not keep 100,000 lock files open (the open-file limit is often
    // 1,024 to 20,000).
    let holds: Mutex<HashMap<usize, ReadHold>> = Mutex::new(HashMap::new());
    let changed = Condvar::new();
    let worker = || loop {
        let next = {
            let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(Reverse(i)) = board.ready.pop() {
                    board.slots[i] = Slot::Running;
                    board.running += 1;
                    let entries: BTreeMap<usize, Entry> = plan.instances[i]
                        .deps()
                        .map(|d| match &board.slots[d] {
                            Slot::Done(o) => {
                                (d, o.entry().expect("ready instances read finished entries").clone())
                            }
                            _ => unreachable!("deps are done"),
                        })
                        .collect();
                    break Some((i, entries));
                }
                if board.done == n || board.running == 0 {
                    break None;
                }
                board = changed.wait(board).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Some((i, entries)) = next else {
            changed.notify_all();
            break;
        };
        // A panic anywhere in here (the stage's own panics are caught closer to it) fails this
        // instance; the slot is always marked done, so no worker waits for it forever.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let outcome = run_instance(
                recipe,
                plan,
                i,
                &entries,
                store,
                fingerprints,
                dataset_problems,
                options,
                reporter,
                &holds,
            );
            reporter.finished(&plan.instances[i], &outcome);
            outcome
        }))
        .unwrap_or_else(|panic| Outcome::Failed {
            message: format!("internal error: {}", panic_text(&*panic)),
        });
        let released = {
            let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
            board.running -= 1;
            board.finish(i, outcome, plan, &dependents, reporter)
        };
        changed.notify_all();
        let mut held = holds.lock().unwrap_or_else(|e| e.into_inner());
        for r in released {
            held.remove(&r);
        }
    };
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            scope.spawn(worker);
        }
    });
    board
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .slots
        .into_iter()
        .map(|s| match s {
            Slot::Done(outcome) => outcome,
            _ => unreachable!("every instance finished"),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_instance(
    recipe: &Recipe,
    plan: &Plan,
    i: usize,
    entries: &BTreeMap<usize, Entry>,
    store: &Store,
    fingerprints: &BTreeMap<String, String>,
    dataset_problems: &BTreeMap<String, String>,
    options: &RunOptions,
    reporter: &dyn Reporter,
    holds: &Mutex<HashMap<usize, ReadHold>>,
) -> Outcome {
    let instance = &plan.instances[i];
    let decl = &recipe.stages[instance.stage];
    let failed = |message: String| Outcome::Failed { message };
    for name in decl.datasets() {
        if let Some(problem) = dataset_problems.get(name) {
            return failed(format!("dataset `{name}`: {problem}"));
        }
    }
    let digest = |d: usize| entries[&d].manifest.output_digest.clone();
    let inputs = plan.key_inputs(recipe, i, &digest, fingerprints);
    let key = inputs.key();
    // Held until nothing in this run reads the entry any more, so that a `gc` meanwhile
    // leaves it alone.
    match store.hold(&key) {
        Ok(hold) => {
            holds.lock().unwrap_or_else(|e| e.into_inner()).insert(i, hold);
        }
        Err(e) => return failed(error_chain(&e)),
    }
    let forced = options.forced.contains(&i);
    let remember = |entry: &Entry| {
        if let Err(e) = store.write_ref(&recipe.name, &instance.id, &entry.manifest.inputs) {
            reporter.warn(&format!("cannot record the last run of `{}`: {e}", instance.label));
        }
    };
    let lookup = |reporter: &dyn Reporter| match store.lookup(&key) {
        Ok(found) => Ok(found),
        Err(e @ CacheError::Corrupt { .. }) => {
            reporter.warn(&format!("{e}; recomputing `{}`", instance.label));
            Ok(None)
        }
        Err(e) => Err(error_chain(&e)),
    };
    if !forced {
        match lookup(reporter) {
            Ok(Some(entry)) => {
                remember(&entry);
                return Outcome::Reused { entry: Box::new(entry), waited: false };
            }
            Ok(None) => {}
            Err(message) => return failed(message),
        }
    }
    let lock = match store.try_lock(&key) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            reporter.waiting(instance);
            match store.lock(&key) {
                Ok(lock) => lock,
                Err(e) => return failed(error_chain(&e)),
            }
        }
        Err(e) => return failed(error_chain(&e)),
    };
    if !forced {
        // A concurrent run may have committed it while we waited for the lock.
        if let Ok(Some(entry)) = store.lookup(&key) {
            remember(&entry);
            return Outcome::Reused { entry: Box::new(entry), waited: true };
        }
    }
    if let (Some(access), false) = (&options.remote, forced) {
        if let Some(pulled) = pull_one(access, store, &key, &lock, instance, reporter) {
            remember(&pulled.0);
            return Outcome::Pulled { entry: Box::new(pulled.0), bytes: pulled.1, seconds: pulled.2 };
        }
    }
    if let Some(executor) = options.executor {
        // The job takes the key's lock itself (on its node); this process holds none meanwhile.
        drop(lock);
        reporter.started(instance, &key);
        let committed = || matches!(store.lookup(&key), Ok(Some(_)));
        let job = JobSpec {
            instance,
            key: &key,
            kind: decl.kind.name(),
            role: decl.kind.role(),
            resources: &decl.resources,
            forced,
            committed: &committed,
        };
        let started = Instant::now();
        let ended = executor.compute(&job, reporter);
        let seconds = started.elapsed().as_secs_f64();
        if let Err(message) = ended {
            return failed(message);
        }
        return match store.lookup(&key) {
            Ok(Some(entry)) => {
                remember(&entry);
                push_computed(options, &entry, instance, reporter);
                Outcome::Computed { entry: Box::new(entry), seconds }
            }
            Ok(None) => failed(format!(
                "the job ended without committing its result; {}",
                executor.log_of(&job).unwrap_or_default()
            )),
            Err(e) => failed(error_chain(&e)),
        };
    }
    let staging = match store.stage(&lock) {
        Ok(staging) => staging,
        Err(e) => return failed(error_chain(&e)),
    };
    reporter.started(instance, &key);
    let upstream: BTreeMap<String, Vec<PathBuf>> = instance
        .upstream
        .iter()
        .map(|(name, list)| (name.clone(), list.iter().map(|d| entries[d].out_dir()).collect()))
        .collect();
    let upstream_tags: BTreeMap<String, Vec<UpstreamTag>> = instance
        .upstream
        .iter()
        .map(|(name, list)| {
            let tags = list
                .iter()
                .map(|&d| UpstreamTag {
                    seed: plan.instances[d].seed,
                    params: plan.instances[d].params.clone(),
                })
                .collect();
            (name.clone(), tags)
        })
        .collect();
    let out_dir = staging.out_dir();
    let progress = reporter.progress(instance);
    // A forced rerun starts over; otherwise a killed attempt's record is picked up.
    let resume_dir = store.resume_dir(&key);
    if forced {
        store.remove_resume(&key);
    }
    let ctx = RunContext {
        out_dir: &out_dir,
        seed: instance.stage_seed,
        upstream: &upstream,
        upstream_tags: &upstream_tags,
        resume_dir: Some(&resume_dir),
        datasets: &recipe.datasets,
        device: &options.device,
        progress: progress.as_ref(),
    };
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        on_compute_threads(options.jobs, || decl.variants[instance.variant].stage.run(&ctx))
    }));
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(error_chain(&e)),
        Err(panic) => return failed(format!("the stage panicked: {}", panic_text(&*panic))),
    }
    let meta = serde_json::json!({
        "stage": decl.name,
        "instance": instance.id,
        "recipe": recipe.name,
        "seconds": seconds,
        "device": stages::device::describe(&options.device),
        "pipeline_version": env!("CARGO_PKG_VERSION"),
    });
    match store.commit(staging, &lock, &inputs, meta) {
        Ok(entry) => {
            store.remove_resume(&key);
            remember(&entry);
            drop(lock);
            push_computed(options, &entry, instance, reporter);
            Outcome::Computed { entry: Box::new(entry), seconds }
        }
        Err(e) => failed(format!("cannot store the outputs: {}", error_chain(&e))),
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

/// Pushes a computed entry to the remote of `run --remote` (unless read-only).
fn push_computed(options: &RunOptions, entry: &Entry, instance: &Instance, reporter: &dyn Reporter) {
    if let Some(access) = options.remote.as_ref().filter(|a| !a.read_only && a.usable()) {
        if let Some(Err(e)) = access.remote.push(std::slice::from_ref(entry), &NoProgress).pop() {
            reporter.warn(&format!("`{}` was not pushed to the remote: {}", instance.label, error_chain(&e)));
        }
    }
}

/// Computes instance `i` of `plan` alone (the Slurm worker): its upstream entries must already
/// be in the cache, else it fails naming the first one missing.
#[allow(clippy::too_many_arguments)]
pub fn execute_one(
    recipe: &Recipe,
    plan: &Plan,
    i: usize,
    store: &Store,
    fingerprints: &BTreeMap<String, String>,
    dataset_problems: &BTreeMap<String, String>,
    options: &RunOptions,
    reporter: &dyn Reporter,
) -> Outcome {
    // Every instance `i` depends on, directly or not, in plan (dependency) order.
    let mut needed = BTreeSet::new();
    let mut stack: Vec<usize> = plan.instances[i].deps().collect();
    while let Some(d) = stack.pop() {
        if needed.insert(d) {
            stack.extend(plan.instances[d].deps());
        }
    }
    let mut entries: BTreeMap<usize, Entry> = BTreeMap::new();
    let mut missing = None;
    for &d in &needed {
        let digest = |u: usize| entries[&u].manifest.output_digest.clone();
        let key = plan.key_inputs(recipe, d, &digest, fingerprints).key();
        match store.lookup(&key) {
            Ok(Some(entry)) => {
                entries.insert(d, entry);
            }
            Ok(None) => {
                missing = Some(format!(
                    "upstream `{}` is not in the cache ({}): a worker computes an instance only once \
                     everything it reads is committed",
                    plan.instances[d].label,
                    key.short()
                ));
                break;
            }
            Err(e) => {
                missing = Some(error_chain(&e));
                break;
            }
        }
    }
    let outcome = match missing {
        Some(message) => Outcome::Failed { message },
        None => {
            let holds = Mutex::new(HashMap::new());
            run_instance(
                recipe,
                plan,
                i,
                &entries,
                store,
                fingerprints,
                dataset_problems,
                options,
                reporter,
                &holds,
            )
        }
    };
    reporter.finished(&plan.instances[i], &outcome);
    outcome
}

/// The remote's entry for `key`, pulled into the store under `lock`: `None` (after a warning
/// where something went wrong) when it must be computed here instead.
fn pull_one(
    access: &RemoteAccess,
    store: &Store,
    key: &CacheKey,
    lock: &cache::KeyLock,
    instance: &Instance,
    reporter: &dyn Reporter,
) -> Option<(Entry, u64, f64)> {
    if !access.usable() {
        return None;
    }
    let started = Instant::now();
    let manifest = match access.remote.manifest(key) {
        Ok(found) => found?,
        Err(e @ cache::remote::RemoteError::Request { .. }) => {
            access.failed(&e, reporter);
            return None;
        }
        Err(e) => {
            reporter.warn(&format!("{}; computing `{}` here", error_chain(&e), instance.label));
            return None;
        }
    };
    let bytes = manifest.files.values().map(|f| f.size).sum();
    match access.remote.pull(store, &[(lock, &manifest)], &NoProgress).pop()? {
        Ok(entry) => Some((entry, bytes, started.elapsed().as_secs_f64())),
        Err(e) => {
            reporter.warn(&format!("{}; computing `{}` here", error_chain(&e), instance.label));
            None
        }
    }
}

/// A single entry's transfer inside a run shows no bar: its line says how much moved.
struct NoProgress;

impl TransferProgress for NoProgress {
    fn planned(&self, _bytes: u64) {}
    fn moved(&self, _bytes: u64) {}
}

/// The message of a panic payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// An error and its causes, joined by ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
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
