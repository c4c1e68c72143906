//! Executors: where an instance that is not cached is computed. The scheduler ([`crate::run`])
//! decides what is ready, names its key and hands it over with [`Executor::submit`]; it then
//! asks about every job it has handed over in one [`Executor::poll`] per interval, and can
//! [`Executor::cancel`] them. The committed cache entry, not the job's word, is the proof of
//! success. [`local::LocalExecutor`] computes on this process's threads, [`slurm`] as cluster
//! jobs.
pub mod job;
pub mod local;
pub mod slurm;
pub mod slurm_error;
pub mod squeue;

pub use job::{Executor, ExecutorError, JobEvent, JobSpec, JobState, Polled, Submitted, Ticket};
