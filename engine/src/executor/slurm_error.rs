//! Why Slurm did not compute a job: what `sbatch` and `squeue` said, and the states that end
//! an instance's attempts.

/// Why Slurm did not compute a job.
#[derive(Debug, thiserror::Error)]
pub enum SlurmJobError {
    #[error("sbatch refused the job ({asked}): {said}")]
    Refused { asked: String, said: String },
    /// `sbatch` could not be run, or printed no job id.
    #[error("{0}")]
    Broken(String),
    #[error(
        "Slurm will never start job {id} as asked ({reason}: {asked}); cancelled it. Lower the \
         stage's `resources` or set [executor.slurm] defaults, partition, account or qos"
    )]
    NeverStarts { id: String, reason: String, asked: String },
    #[error("job {id} hit its time limit ({limit}) {times} time(s), more than `retries` = {retries}; {log}")]
    OutOfTime { id: String, limit: String, times: u32, retries: u32, log: String },
    #[error("job {id} was lost {times} times ({state}); giving up")]
    Lost { id: String, times: u32, state: String },
    #[error("job {id}: {why}; {log}")]
    Failed { id: String, why: String, log: String },
    #[error("squeue keeps failing: {0}")]
    Squeue(String),
}
