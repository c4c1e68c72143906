//! The interface between the scheduler and an executor: a job handed over ([`JobSpec`]), the
//! ticket it gets, what a poll says of it, and why an executor could not compute it.
use crate::plan::Instance;
use crate::recipe::resources::Resources;
use cache::{CacheKey, Entry, KeyInputs, KeyLock};
use std::collections::BTreeMap;
use std::time::Duration;

/// An executor's handle on one job it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// One instance to compute.
pub struct JobSpec<'a> {
    pub instance: &'a Instance,
    pub key: &'a CacheKey,
    /// What the key is made of (the job commits its outputs under them).
    pub inputs: &'a KeyInputs,
    /// The stage's kind (`train`), its role and its declared resources.
    pub kind: &'a str,
    pub role: stages::Role,
    pub resources: &'a Resources,
    /// Recompute even though the entry exists.
    pub forced: bool,
    /// Start over: a forced job drops the state an interrupted attempt left to resume from
    /// (`false` for a job that continues an earlier attempt of the same forced run).
    pub fresh: bool,
    /// The entries of the instances it reads, by plan index.
    pub upstream: &'a BTreeMap<usize, Entry>,
    /// The key's lock, when the scheduler holds it: an executor that computes here keeps it to
    /// the commit, one that computes elsewhere lets it go (the job takes it there).
    pub lock: Option<KeyLock>,
}

/// What an executor has to say about a job (`job`: its id where it has one, e.g. a Slurm job
/// number; `what`: "submitted", "running on node7", …).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub job: String,
    pub what: String,
}

/// A job handed over: its ticket and what happened on the way.
#[derive(Debug)]
pub struct Submitted {
    pub ticket: Ticket,
    pub events: Vec<JobEvent>,
}

/// Where a job stands at a poll.
#[derive(Debug)]
pub enum JobState {
    /// Queued or running.
    Active,
    /// Ended: the scheduler looks for the committed entry.
    Ended,
    /// Ended without its result, and why.
    Failed(ExecutorError),
}

/// A job's state at a poll, with what changed since the last one.
#[derive(Debug)]
pub struct Polled {
    pub state: JobState,
    pub events: Vec<JobEvent>,
}

/// Why an executor could not compute an instance.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The stage itself failed.
    #[error(transparent)]
    Stage(#[from] stages::StageError),
    #[error("the stage panicked: {0}")]
    Panicked(String),
    /// The cache could not be read, locked or staged into.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error("cannot store the outputs")]
    Store(#[source] cache::CacheError),
    /// The cluster refused the job or could not be asked (`sbatch`, `squeue`, `scancel`).
    #[error(transparent)]
    Slurm(#[from] super::slurm_error::SlurmJobError),
    /// A ticket this executor never gave out.
    #[error("no job with ticket {0:?}")]
    UnknownTicket(Ticket),
}

/// Computes instances that are not cached. Implementations: `local::LocalExecutor` (this
/// process's threads), `slurm::SlurmExecutor` (one cluster job per instance).
pub trait Executor: Sync {
    /// Hands `job` over. An executor that computes on the calling thread returns once the job
    /// has ended; one that computes elsewhere returns once it is queued.
    fn submit(
        &self,
        job: JobSpec,
        reporter: &dyn crate::events::Reporter,
    ) -> Result<Submitted, ExecutorError>;
    /// Where each of `tickets` stands, in the same order: one call for every job the scheduler
    /// waits on. `committed` says whether a key's entry is in the cache now (a job killed
    /// just after committing has still done its work).
    fn poll(&self, tickets: &[Ticket], committed: &dyn Fn(&CacheKey) -> bool) -> Vec<Polled>;
    /// Cancels `tickets`' jobs that have not ended; returns the ids of those cancelled.
    fn cancel(&self, tickets: &[Ticket]) -> Vec<String>;
    /// Whether a job computing `key` that this executor can take over is running already (the
    /// scheduler then takes it over instead of waiting for the key's lock that job holds).
    fn attachable(&self, key: &CacheKey) -> bool {
        let _ = key;
        false
    }
    /// How long the scheduler waits between two polls while jobs are active.
    fn poll_interval(&self) -> Duration;
    /// What a job left to read when it ended without committing (its log's tail).
    fn log_of(&self, ticket: Ticket) -> Option<String>;
}
