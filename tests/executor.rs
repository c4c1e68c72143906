//! The scheduler's side of the executor interface, with executors made for the purpose: what
//! counts as a job's success. The committed entry is the proof, and for a forced instance the
//! entry that was there before the job is not; a worker computes only over committed upstream.
use cache::{CacheKey, Store};
use engine::events::{Outcome, Reporter};
use engine::executor::{Executor, ExecutorError, JobSpec, JobState, Polled, Submitted, Ticket};
use engine::plan::{Instance, Plan};
use engine::recipe::Recipe;
use engine::run::{execute, execute_one, Run};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A job that dies without committing (a time limit, a lost node). It ends, by the executor's
/// rule, when its key's entry is committed, and fails otherwise: the rule the Slurm executor
/// applies to jobs that ran out of time or were preempted.
struct Dies {
    next: AtomicU64,
    keys: Mutex<BTreeMap<Ticket, CacheKey>>,
}

impl Executor for Dies {
    fn submit(&self, job: JobSpec, _: &dyn Reporter) -> Result<Submitted, ExecutorError> {
        let ticket = Ticket(self.next.fetch_add(1, Ordering::Relaxed));
        self.keys.lock().unwrap().insert(ticket, job.key.clone());
        Ok(Submitted { ticket, events: Vec::new() })
    }
    fn poll(&self, tickets: &[Ticket], committed: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled> {
        let keys = self.keys.lock().unwrap();
        tickets
            .iter()
            .map(|t| Polled {
                state: if committed(&keys[t]) {
                    JobState::Ended
                } else {
                    JobState::Failed(ExecutorError::Panicked("killed at its time limit".into()))
                },
                events: Vec::new(),
            })
            .collect()
    }
    fn cancel(&self, _: &[Ticket]) -> Vec<String> {
        Vec::new()
    }
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn log_of(&self, _: Ticket) -> Option<String> {
        None
    }
}

/// A job that says it ended and commits nothing.
struct EndsEmpty(AtomicU64);

impl Executor for EndsEmpty {
    fn submit(&self, _: JobSpec, _: &dyn Reporter) -> Result<Submitted, ExecutorError> {
        Ok(Submitted { ticket: Ticket(self.0.fetch_add(1, Ordering::Relaxed)), events: Vec::new() })
    }
    fn poll(&self, tickets: &[Ticket], _: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled> {
        tickets.iter().map(|_| Polled { state: JobState::Ended, events: Vec::new() }).collect()
    }
    fn cancel(&self, _: &[Ticket]) -> Vec<String> {
        Vec::new()
    }
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn log_of(&self, _: Ticket) -> Option<String> {
        Some("(its log)".into())
    }
}

struct Quiet;

impl Reporter for Quiet {
    fn started(&self, _: &Instance, _: &CacheKey) {}
    fn waiting(&self, _: &Instance) {}
    fn finished(&self, _: &Instance, _: &Outcome) {}
    fn warn(&self, _: &str) {}
    fn progress<'a>(&'a self, _: &'a Instance) -> Box<dyn stages::Progress + 'a> {
        Box::new(stages::progress::NoProgress)
    }
}

#[test]
fn a_forced_job_that_dies_is_not_saved_by_the_entry_from_before() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/smoke.toml");
    let recipe = Recipe::load_with_env(&path, &|_| None).unwrap();
    let plan = Plan::new(&recipe, None);
    let first = plan.instances.iter().position(|i| i.deps().next().is_none()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let used: BTreeSet<&str> =
        plan.instances.iter().flat_map(|i| recipe.stages[i.stage].datasets()).collect();
    let fingerprints: BTreeMap<String, String> =
        used.iter().map(|d| (d.to_string(), "made up".into())).collect();
    let problems = BTreeMap::new();
    // The instance's entry exists: committed by an earlier run.
    let digest = |_: usize| unreachable!("the first instance reads nothing");
    let inputs = plan.key_inputs(&recipe, first, &digest, &fingerprints);
    let lock = store.lock(&inputs.key()).unwrap();
    let staging = store.stage(&lock).unwrap();
    std::fs::write(staging.out_dir().join("out.txt"), "from before").unwrap();
    store.commit(staging, &lock, &inputs, serde_json::json!({})).unwrap();
    drop(lock);

    let only_first = |executor: &dyn Executor, forced: bool| {
        let only = BTreeSet::from([plan.instances[first].stage]);
        let plan = Plan::new(&recipe, Some(&only));
        let run = Run {
            recipe: &recipe,
            plan: &plan,
            store: &store,
            fingerprints: &fingerprints,
            dataset_problems: &problems,
            jobs: 1,
            forced: if forced { (0..plan.instances.len()).collect() } else { BTreeSet::new() },
            keep_resume: false,
            device: stages::device::Device::Cpu,
            remote: None,
            executor: Some(executor),
        };
        execute(&run, &Quiet)
    };
    // Not forced: the entry is simply reused, nothing is submitted.
    let dies = Dies { next: AtomicU64::new(0), keys: Mutex::default() };
    assert!(matches!(only_first(&dies, false)[0], Outcome::Reused { .. }));
    assert_eq!(dies.next.load(Ordering::Relaxed), 0);
    // Forced, and killed: the old entry does not make it a success.
    match &only_first(&dies, true)[0] {
        Outcome::Failed { message } => assert!(message.contains("killed at its time limit"), "{message}"),
        other => panic!("a forced job that died must fail: {other:?}"),
    }
    assert_eq!(dies.next.load(Ordering::Relaxed), 1);
    // Forced, and ended without committing: neither.
    match &only_first(&EndsEmpty(AtomicU64::new(0)), true)[0] {
        Outcome::Failed { message } => {
            assert!(
                message.contains("without committing a new result") && message.contains("(its log)"),
                "{message}"
            )
        }
        other => panic!("a forced job that committed nothing must fail: {other:?}"),
    }
}

/// The Slurm worker computes an instance only once everything it reads is committed, and says
/// which upstream is not.
#[test]
fn a_worker_names_the_first_upstream_that_is_not_committed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/smoke/smoke.toml");
    let recipe = Recipe::load_with_env(&path, &|_| None).unwrap();
    let plan = Plan::new(&recipe, None);
    let last = plan.instances.len() - 1;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fingerprints = BTreeMap::new();
    let problems = BTreeMap::new();
    let run = Run {
        recipe: &recipe,
        plan: &plan,
        store: &store,
        fingerprints: &fingerprints,
        dataset_problems: &problems,
        jobs: 1,
        forced: BTreeSet::new(),
        keep_resume: false,
        device: stages::device::Device::Cpu,
        remote: None,
        executor: None,
    };
    let first_upstream = plan.instances.iter().position(|i| i.deps().next().is_none()).unwrap();
    match execute_one(&run, last, None, &Quiet) {
        Outcome::Failed { message } => {
            let label = &plan.instances[first_upstream].label;
            assert!(message.contains(&format!("upstream `{label}` is not in the cache")), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
