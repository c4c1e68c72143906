//! One key walk: for every shipped recipe, the scheduler (`run`), `status`, `pull` (against a
//! remote that holds everything, and against the local cache) and the Slurm worker name the
//! same cache key for every instance.
//!
//! The recipes' datasets are not here, so each dataset gets a made-up fingerprint, and the
//! scheduler runs with an executor that commits a small made-up output under each key instead of
//! training: what is compared is how keys are named from upstream outputs, which is the same
//! whatever the outputs hold.
use cache::remote::{Remote, TransferProgress};
use cache::{CacheKey, Store, Verification};
use engine::events::{Outcome, Reporter};
use engine::executor::{Executor, ExecutorError, JobSpec, JobState, Polled, Submitted, Ticket};
use engine::plan::{Instance, Plan, Verdict};
use engine::recipe::Recipe;
use engine::remote::{locate, Located};
use engine::run::{execute, execute_one, Run};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Commits, under each key, one file whose bytes depend on the key: downstream keys then depend
/// on upstream ones as with real outputs.
struct Committing<'a> {
    store: &'a Store,
    next: AtomicU64,
    ended: Mutex<BTreeMap<Ticket, JobState>>,
    submitted: AtomicUsize,
}

impl Executor for Committing<'_> {
    fn submit(&self, job: JobSpec, _reporter: &dyn Reporter) -> Result<Submitted, ExecutorError> {
        let lock = job.lock.expect("the scheduler hands over the key's lock");
        let staging = self.store.stage(&lock)?;
        std::fs::write(staging.out_dir().join("out.txt"), format!("made up for {}", job.key)).unwrap();
        self.store.commit(staging, &lock, job.inputs, serde_json::json!({})).map_err(ExecutorError::Store)?;
        let ticket = Ticket(self.next.fetch_add(1, Ordering::Relaxed));
        self.ended.lock().unwrap().insert(ticket, JobState::Ended);
        self.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(Submitted { ticket, events: Vec::new() })
    }

    fn poll(&self, tickets: &[Ticket], _committed: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled> {
        let mut ended = self.ended.lock().unwrap();
        tickets.iter().map(|t| Polled { state: ended.remove(t).unwrap(), events: Vec::new() }).collect()
    }

    fn cancel(&self, _tickets: &[Ticket]) -> Vec<String> {
        Vec::new()
    }

    fn poll_interval(&self) -> Duration {
        // Not zero, so that polls and submissions interleave as they do under Slurm.
        Duration::from_millis(1)
    }

    fn log_of(&self, _ticket: Ticket) -> Option<String> {
        None
    }
}

struct Silent;

impl Reporter for Silent {
    fn started(&self, _: &Instance, _: &CacheKey) {}
    fn waiting(&self, _: &Instance) {}
    fn finished(&self, instance: &Instance, outcome: &Outcome) {
        if let Outcome::Failed { message } = outcome {
            panic!("{} failed: {message}", instance.label);
        }
    }
    fn warn(&self, message: &str) {
        panic!("unexpected warning: {message}");
    }
    fn progress<'a>(&'a self, _: &'a Instance) -> Box<dyn stages::Progress + 'a> {
        Box::new(stages::progress::NoProgress)
    }
}

struct NoBar;

impl TransferProgress for NoBar {
    fn planned(&self, _: u64) {}
    fn moved(&self, _: u64) {}
}

fn shipped_recipes() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut found = Vec::new();
    for dir in [root.clone(), root.join("smoke")] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    found.sort();
    assert!(found.len() >= 10, "the shipped recipes: {found:?}");
    found
}

#[test]
fn the_scheduler_status_pull_and_the_worker_name_the_same_keys_for_every_shipped_recipe() {
    for path in shipped_recipes() {
        let recipe = Recipe::load_with_env(&path, &|_| None).unwrap();
        let plan = Plan::new(&recipe, None);
        let n = plan.instances.len();
        let used: BTreeSet<&str> =
            plan.instances.iter().flat_map(|i| recipe.stages[i.stage].datasets()).collect();
        let fingerprints: BTreeMap<String, String> =
            used.iter().map(|d| (d.to_string(), format!("made-up fingerprint of {d}"))).collect();
        let problems = BTreeMap::new();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("cache")).unwrap();
        let executor = Committing {
            store: &store,
            next: Default::default(),
            ended: Default::default(),
            submitted: Default::default(),
        };
        let run = Run {
            recipe: &recipe,
            plan: &plan,
            store: &store,
            fingerprints: &fingerprints,
            dataset_problems: &problems,
            jobs: 3,
            forced: BTreeSet::new(),
            keep_resume: false,
            device: stages::device::Device::Cpu,
            remote: None,
            executor: Some(&executor),
        };
        let name = path.display();

        // The scheduler names each key from the entries of what it reads, as they are computed.
        let scheduled: Vec<CacheKey> = execute(&run, &Silent)
            .iter()
            .map(|o| o.entry().unwrap_or_else(|| panic!("{name}: {o:?}")).key.clone())
            .collect();
        assert_eq!(
            executor.submitted.load(Ordering::Relaxed),
            scheduled.iter().collect::<BTreeSet<_>>().len()
        );
        assert_eq!(scheduled.len(), n);

        // `status` (and `show`, `gc`): every instance cached, under the same key.
        let verdicts =
            plan.evaluate(&recipe, &store, &fingerprints, &BTreeSet::new(), Verification::Metadata);
        let status: Vec<CacheKey> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Cached { key, .. } => key.clone(),
                other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert_eq!(status, scheduled, "{name}: status");

        // `pull` against the local cache: everything is here.
        let remote_dir = dir.path().join("remote");
        let remote = Remote::open(remote_dir.to_str().unwrap()).unwrap();
        let here: Vec<CacheKey> =
            locate(&recipe, &plan, &store, &remote, &fingerprints, Verification::Metadata)
                .into_iter()
                .map(|l| match l {
                    Located::Local { key, .. } => key,
                    other => panic!("{name}: {other:?}"),
                })
                .collect();
        assert_eq!(here, scheduled, "{name}: pull (local)");

        // `pull` into an empty cache from a remote that holds everything: keys are named from
        // the remote's manifests alone.
        let entries: Vec<cache::Entry> = scheduled
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|k| store.lookup(k).unwrap().unwrap())
            .collect();
        for result in remote.push(&entries, &NoBar) {
            result.unwrap();
        }
        let empty = Store::open(dir.path().join("empty")).unwrap();
        let there: Vec<CacheKey> =
            locate(&recipe, &plan, &empty, &remote, &fingerprints, Verification::Metadata)
                .into_iter()
                .map(|l| match l {
                    Located::Remote { key, .. } => key,
                    other => panic!("{name}: {other:?}"),
                })
                .collect();
        assert_eq!(there, scheduled, "{name}: pull (remote)");

        // The Slurm worker, given one instance, names the keys of everything above it and its
        // own: it finds its entry committed.
        for (i, key) in scheduled.iter().enumerate() {
            match execute_one(&run, i, None, &Silent) {
                Outcome::Reused { entry, .. } => assert_eq!(&entry.key, key, "{name}: worker, instance {i}"),
                other => panic!("{name}: worker, instance {i}: {other:?}"),
            }
        }
    }
}
