//! The scheduler: runs a plan's instances in dependency order, up to `jobs` at once, reusing
//! cached results, and reports each event to a [`Reporter`]. What is not cached is handed to an
//! [`Executor`] (this process's threads, or Slurm), whose jobs are polled together. A failed
//! instance skips what depends on it; independent branches finish.
use crate::error_text::{error_chain, panic_text};
use crate::events::{Outcome, Reporter};
use crate::executor::job::{Executor, JobEvent, JobSpec, JobState, Ticket};
use crate::executor::local::LocalExecutor;
use crate::plan::{Instance, Looked, Plan, Resolved};
use crate::recipe::Recipe;
use cache::remote::{Remote, TransferProgress};
use cache::{CacheError, CacheKey, CommitStamp, Entry, KeyInputs, ReadHold, Store};
use stages::device::Device;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

/// One run, frozen: everything the scheduler walks, built once by the command.
pub struct Run<'a> {
    pub recipe: &'a Recipe,
    pub plan: &'a Plan,
    pub store: &'a Store,
    /// The dataset fingerprints the keys need, and the datasets that cannot be read (`name`:
    /// why): the instances that read one fail.
    pub fingerprints: &'a BTreeMap<String, String>,
    pub dataset_problems: &'a BTreeMap<String, String>,
    /// How many instances are prepared (and, locally, computed) at once.
    pub jobs: usize,
    /// Instances (plan indices) to recompute even when cached.
    pub forced: BTreeSet<usize>,
    /// Whether forced instances continue from the state an interrupted attempt of the same
    /// forced run left (a Slurm job resubmitted after its time limit), instead of starting over.
    pub keep_resume: bool,
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

/// A job handed to the executor and not yet concluded.
struct Flight {
    ticket: Ticket,
    instance: usize,
    key: CacheKey,
    /// The entry that was there when a forced job was submitted: it is no proof of the job's
    /// success.
    stale: Option<CommitStamp>,
    started: Instant,
}

/// What the workers share: each instance's slot, how many of its upstream instances are still
/// unfinished, the instances ready to run (lowest plan index first, so one worker runs them
/// in plan order) and the jobs handed to the executor. Finishing an instance touches only its
/// dependents: scheduling is O((instances + edges) · log instances), not a scan of the whole
/// plan per pick.
struct Board {
    slots: Vec<Slot>,
    unfinished_deps: Vec<usize>,
    /// How many of each instance's dependents are not finished yet: once none is (and it is
    /// finished itself), nothing in this run reads its entry any more and its hold is let go.
    unfinished_dependents: Vec<usize>,
    ready: BinaryHeap<Reverse<usize>>,
    /// Instances a worker is preparing (looking up, pulling, submitting).
    running: usize,
    in_flight: Vec<Flight>,
    /// A worker is polling the executor; when the last poll started.
    polling: bool,
    polled_at: Option<Instant>,
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

    /// Whether the executor's jobs are due for a poll (and no worker polls already).
    fn poll_due(&self, interval: std::time::Duration) -> bool {
        !self.in_flight.is_empty()
            && !self.polling
            && self.polled_at.is_none_or(|at| at.elapsed() >= interval)
    }
}

/// What a worker does next.
enum Next {
    Prepare(usize, BTreeMap<usize, Entry>),
    /// The tickets to poll, and each one's key with the entry that is no proof of it.
    Poll(Vec<Ticket>, HashMap<CacheKey, Option<CommitStamp>>),
    Stop,
}

/// How preparing an instance ended: done without computing, or handed to the executor.
enum Prepared {
    Done(Outcome),
    Submitted(Flight),
}

/// One scheduling of a run: the run, where it computes, who hears of it, and the holds on the
/// entries it still reads.
struct Scheduler<'a> {
    run: &'a Run<'a>,
    executor: &'a dyn Executor,
    reporter: &'a dyn Reporter,
    holds: Mutex<HashMap<usize, ReadHold>>,
}

/// Runs every instance of the run's plan; returns each one's outcome, in plan order.
pub fn execute(run: &Run, reporter: &dyn Reporter) -> Vec<Outcome> {
    let plan = run.plan;
    let local = LocalExecutor::new(run.recipe, plan, run.store, &run.device, run.jobs);
    let scheduler =
        Scheduler { run, executor: run.executor.unwrap_or(&local), reporter, holds: Mutex::default() };
    let interval = scheduler.executor.poll_interval();
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
        in_flight: Vec::new(),
        polling: false,
        polled_at: None,
        done: 0,
    });
    let changed = Condvar::new();
    // Marks instances done (ending one worker's turn), lets go of the entries nothing reads any more, wakes the others.
    let finish = |finished: Vec<(usize, Outcome)>| {
        let released: Vec<usize> = {
            let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
            board.running -= 1;
            finished
                .into_iter()
                .flat_map(|(i, outcome)| board.finish(i, outcome, plan, &dependents, reporter))
                .collect()
        };
        changed.notify_all();
        let mut held = scheduler.holds.lock().unwrap_or_else(|e| e.into_inner());
        for r in released {
            held.remove(&r);
        }
    };
    let worker = || loop {
        let next = {
            let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Polling first: a job that ended frees its dependents before anything else starts.
                if board.poll_due(interval) {
                    board.polling = true;
                    board.polled_at = Some(Instant::now());
                    // The poller counts as running until what ended is finished, so no worker
                    // takes the moment between for the end of the run.
                    board.running += 1;
                    let proofs = board.in_flight.iter().map(|f| (f.key.clone(), f.stale)).collect();
                    break Next::Poll(board.in_flight.iter().map(|f| f.ticket).collect(), proofs);
                }
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
                    break Next::Prepare(i, entries);
                }
                if board.done == n || (board.running == 0 && board.in_flight.is_empty()) {
                    break Next::Stop;
                }
                board = match board.polled_at.filter(|_| !board.in_flight.is_empty() && !board.polling) {
                    Some(at) => {
                        let wait = interval.saturating_sub(at.elapsed());
                        changed.wait_timeout(board, wait).unwrap_or_else(|e| e.into_inner()).0
                    }
                    None => changed.wait(board).unwrap_or_else(|e| e.into_inner()),
                };
            }
        };
        match next {
            Next::Stop => {
                changed.notify_all();
                break;
            }
            Next::Prepare(i, entries) => {
                // A panic anywhere in here (the stage's own panics are caught closer to it)
                // fails this instance; the slot is always marked done, so no worker waits for
                // it forever.
                let prepared =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scheduler.prepare(i, &entries)))
                        .unwrap_or_else(|panic| {
                            Prepared::Done(Outcome::Failed {
                                message: format!("internal error: {}", panic_text(&*panic)),
                            })
                        });
                match prepared {
                    Prepared::Done(outcome) => {
                        reporter.finished(&plan.instances[i], &outcome);
                        finish(vec![(i, outcome)]);
                    }
                    Prepared::Submitted(flight) => {
                        {
                            let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
                            board.running -= 1;
                            board.in_flight.push(flight);
                        }
                        changed.notify_all();
                    }
                }
            }
            Next::Poll(tickets, stale) => {
                // Committed, and not the entry that was there before a forced job.
                let committed = |key: &CacheKey| {
                    let present = matches!(run.store.lookup(key), Ok(Some(_)));
                    match stale.get(key).copied().flatten() {
                        Some(before) => present && run.store.commit_stamp(key) != Some(before),
                        None => present,
                    }
                };
                let polled = scheduler.executor.poll(&tickets, &committed);
                let ended: Vec<(Flight, JobState)> = {
                    let mut board = board.lock().unwrap_or_else(|e| e.into_inner());
                    board.polling = false;
                    let mut states: HashMap<Ticket, JobState> = HashMap::new();
                    let instance_of: HashMap<Ticket, usize> =
                        board.in_flight.iter().map(|f| (f.ticket, f.instance)).collect();
                    for (ticket, polled) in tickets.iter().zip(polled) {
                        if let Some(&i) = instance_of.get(ticket) {
                            scheduler.report_events(i, &polled.events);
                        }
                        if !matches!(polled.state, JobState::Active) {
                            states.insert(*ticket, polled.state);
                        }
                    }
                    let (ended, active): (Vec<Flight>, Vec<Flight>) = std::mem::take(&mut board.in_flight)
                        .into_iter()
                        .partition(|f| states.contains_key(&f.ticket));
                    board.in_flight = active;
                    ended
                        .into_iter()
                        .map(|f| {
                            let state = states.remove(&f.ticket).expect("partitioned by it");
                            (f, state)
                        })
                        .collect()
                };
                changed.notify_all();
                let finished: Vec<(usize, Outcome)> = ended
                    .into_iter()
                    .map(|(flight, state)| {
                        let i = flight.instance;
                        let outcome = scheduler.conclude(flight, state);
                        reporter.finished(&plan.instances[i], &outcome);
                        (i, outcome)
                    })
                    .collect();
                finish(finished);
            }
        }
    };
    // Ctrl-C is the command's business; the threads only prepare and poll under an executor
    // that computes elsewhere, so a handful serves any number of jobs.
    std::thread::scope(|scope| {
        for _ in 0..run.jobs.max(1) {
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

impl Scheduler<'_> {
    /// Instance `i`'s key, from the entries it reads; then the cache (or a concurrent run, or
    /// the remote) gives its result, or it is handed to the executor.
    fn prepare(&self, i: usize, entries: &BTreeMap<usize, Entry>) -> Prepared {
        let Run { recipe, plan, store, .. } = *self.run;
        let reporter = self.reporter;
        let instance = &plan.instances[i];
        let decl = &recipe.stages[instance.stage];
        let failed = |message: String| Prepared::Done(Outcome::Failed { message });
        // A dataset that is not here fails the instance where it must be computed; its entry,
        // named from the lock file's fingerprint, may still be cached or on the remote.
        // Without its fingerprint the key cannot even be named: it fails at once.
        let mut unusable = None;
        for name in decl.datasets() {
            if let Some(problem) = self.run.dataset_problems.get(name) {
                let message = format!("dataset `{name}`: {problem}");
                if !self.run.fingerprints.contains_key(name) {
                    return failed(message);
                }
                unusable.get_or_insert(message);
            }
        }
        let digest = |d: usize| entries[&d].manifest.output_digest.clone();
        let inputs = plan.key_inputs(recipe, i, &digest, self.run.fingerprints);
        let key = inputs.key();
        // Held until nothing in this run reads the entry any more, so that a `gc` meanwhile
        // leaves it alone.
        match store.hold(&key) {
            Ok(hold) => {
                self.holds.lock().unwrap_or_else(|e| e.into_inner()).insert(i, hold);
            }
            Err(e) => return failed(error_chain(&e)),
        }
        let forced = self.run.forced.contains(&i);
        let lookup = || match store.lookup(&key) {
            Ok(found) => Ok(found),
            Err(e @ CacheError::Corrupt { .. }) => {
                reporter.warn(&format!("{e}; recomputing `{}`", instance.label));
                Ok(None)
            }
            Err(e) => Err(error_chain(&e)),
        };
        if !forced {
            match lookup() {
                Ok(Some(entry)) => {
                    self.remember(i, &entry);
                    return Prepared::Done(Outcome::Reused { entry: Box::new(entry), waited: false });
                }
                Ok(None) => {}
                Err(message) => return failed(message),
            }
        }
        let lock = match store.try_lock(&key) {
            Ok(Some(lock)) => Some(lock),
            // The job of an earlier coordinator holds it: take that job over rather than wait.
            Ok(None) if self.executor.attachable(&key) => None,
            Ok(None) => {
                reporter.waiting(instance);
                match store.lock(&key) {
                    Ok(lock) => Some(lock),
                    Err(e) => return failed(error_chain(&e)),
                }
            }
            Err(e) => return failed(error_chain(&e)),
        };
        if !forced {
            // A concurrent run may have committed it while we waited for the lock.
            if let Ok(Some(entry)) = store.lookup(&key) {
                self.remember(i, &entry);
                return Prepared::Done(Outcome::Reused { entry: Box::new(entry), waited: true });
            }
        }
        if let (Some(access), false, Some(lock)) = (&self.run.remote, forced, &lock) {
            if let Some(pulled) = pull_one(access, store, &key, lock, instance, reporter) {
                self.remember(i, &pulled.0);
                return Prepared::Done(Outcome::Pulled {
                    entry: Box::new(pulled.0),
                    bytes: pulled.1,
                    seconds: pulled.2,
                });
            }
        }
        if let Some(problem) = unusable {
            return failed(problem);
        }
        reporter.started(instance, &key);
        let job = JobSpec {
            instance,
            key: &key,
            inputs: &inputs,
            kind: decl.kind.name(),
            role: decl.kind.role(),
            resources: &decl.resources,
            forced,
            fresh: forced && !self.run.keep_resume,
            upstream: entries,
            lock,
        };
        // What is there now is no proof that a forced job did its work.
        let stale = if forced { store.commit_stamp(&key) } else { None };
        let started = Instant::now();
        match self.executor.submit(job, reporter) {
            Ok(submitted) => {
                self.report_events(i, &submitted.events);
                Prepared::Submitted(Flight { ticket: submitted.ticket, instance: i, key, stale, started })
            }
            Err(e) => failed(error_chain(&e)),
        }
    }

    /// The outcome of a job that is no longer active: its committed entry (pushed to the
    /// remote of `run --remote`), or why there is none.
    fn conclude(&self, flight: Flight, state: JobState) -> Outcome {
        let failed = |message: String| Outcome::Failed { message };
        if let JobState::Failed(e) = state {
            return failed(error_chain(&e));
        }
        let instance = &self.run.plan.instances[flight.instance];
        match self.run.store.lookup(&flight.key) {
            Ok(Some(_))
                if flight.stale.is_some() && self.run.store.commit_stamp(&flight.key) == flight.stale =>
            {
                failed(format!(
                    "the job ended without committing a new result (the entry there is the one from \
                     before --force); {}",
                    self.executor.log_of(flight.ticket).unwrap_or_default()
                ))
            }
            Ok(Some(entry)) => {
                self.remember(flight.instance, &entry);
                self.push_computed(&entry, instance);
                Outcome::Computed { entry: Box::new(entry), seconds: flight.started.elapsed().as_secs_f64() }
            }
            Ok(None) => failed(format!(
                "the job ended without committing its result; {}",
                self.executor.log_of(flight.ticket).unwrap_or_default()
            )),
            Err(e) => failed(error_chain(&e)),
        }
    }

    fn report_events(&self, i: usize, events: &[JobEvent]) {
        for event in events {
            self.reporter.job(&self.run.plan.instances[i], &event.job, &event.what);
        }
    }

    /// Records `entry` as instance `i`'s last result (what `status` compares with).
    fn remember(&self, i: usize, entry: &Entry) {
        let instance = &self.run.plan.instances[i];
        if let Err(e) = self.run.store.write_ref(&self.run.recipe.name, &instance.id, &entry.manifest.inputs)
        {
            self.reporter.warn(&format!("cannot record the last run of `{}`: {e}", instance.label));
        }
    }

    /// Pushes a computed entry to the remote of `run --remote` (unless read-only).
    fn push_computed(&self, entry: &Entry, instance: &Instance) {
        if let Some(access) = self.run.remote.as_ref().filter(|a| !a.read_only && a.usable()) {
            if let Some(Err(e)) = access.remote.push(std::slice::from_ref(entry), &NoProgress).pop() {
                self.reporter.warn(&format!(
                    "`{}` was not pushed to the remote: {}",
                    instance.label,
                    error_chain(&e)
                ));
            }
        }
    }
}

/// Computes instance `i` of the run's plan alone, on this process (the Slurm worker): its
/// upstream entries must already be in the cache, else it fails naming the first one missing.
///
/// `expected`: the key inputs the coordinator planned the job with. When the recipe or its data
/// changed since, the instance is not computed under another key: it fails, naming what changed.
pub fn execute_one(run: &Run, i: usize, expected: Option<&KeyInputs>, reporter: &dyn Reporter) -> Outcome {
    let plan = run.plan;
    // Every instance `i` depends on, directly or not.
    let mut needed = BTreeSet::new();
    let mut stack: Vec<usize> = plan.instances[i].deps().collect();
    while let Some(d) = stack.pop() {
        if needed.insert(d) {
            stack.extend(plan.instances[d].deps());
        }
    }
    let mut look = |_: usize, key: &CacheKey| match run.store.lookup(key) {
        Ok(Some(entry)) => {
            Looked::Found { output_digest: entry.manifest.output_digest.clone(), found: entry }
        }
        Ok(None) => Looked::Absent { problem: None },
        Err(e) => Looked::Unanswered { why: error_chain(&e) },
    };
    let resolved = plan.resolve(run.recipe, run.fingerprints, &|d| needed.contains(&d), &mut look);
    let mut entries: BTreeMap<usize, Entry> = BTreeMap::new();
    let mut missing = None;
    for (d, resolved) in resolved.into_iter().enumerate() {
        match resolved {
            Resolved::Found { found, .. } => {
                entries.insert(d, found);
            }
            Resolved::Absent { key, .. } => {
                missing = Some(format!(
                    "upstream `{}` is not in the cache ({}): a worker computes an instance only once \
                     everything it reads is committed",
                    plan.instances[d].label,
                    key.short()
                ));
                break;
            }
            Resolved::Unknown { why } => {
                missing = Some(why);
                break;
            }
            Resolved::Unnamed { .. } | Resolved::NotAsked => {}
        }
    }
    if let (None, Some(expected)) = (&missing, expected) {
        let digest = |d: usize| entries[&d].manifest.output_digest.clone();
        let inputs = plan.key_inputs(run.recipe, i, &digest, run.fingerprints);
        if inputs.key() != expected.key() {
            missing = Some(format!(
                "the recipe or its data changed since `run` planned this job ({}); it computes \
                 nothing rather than another instance: run `pipeline run` again",
                inputs.diff(expected).join("; ")
            ));
        }
    }
    let outcome = match missing {
        Some(message) => Outcome::Failed { message },
        None => {
            let local = LocalExecutor::new(run.recipe, plan, run.store, &run.device, 1);
            let scheduler = Scheduler { run, executor: &local, reporter, holds: Mutex::default() };
            match scheduler.prepare(i, &entries) {
                Prepared::Done(outcome) => outcome,
                Prepared::Submitted(flight) => {
                    let state = local
                        .poll(&[flight.ticket], &|_| false)
                        .pop()
                        .map(|p| p.state)
                        .unwrap_or(JobState::Ended);
                    scheduler.conclude(flight, state)
                }
            }
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
