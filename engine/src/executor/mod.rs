//! Executors that compute an instance outside this process. The scheduler ([`crate::run`])
//! decides what is ready; an executor runs one instance and says how its job ended; the
//! committed cache entry is the proof of success. Without one, instances run on this process's
//! threads.
pub mod slurm;
pub mod squeue;
