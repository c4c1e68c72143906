#![forbid(unsafe_code)]
//! The engine of `pipeline`: recipes ([`recipe`]), the stage graph ([`graph`]), the expansion
//! of stages into runnable instances with their cache keys ([`plan`]), the scheduler ([`run`]) and the executors that compute elsewhere ([`executor`]: Slurm)
//! and the command line ([`cli`]). It knows nothing of machine learning: stages come from the
//! `stages` crate's registry, outputs are stored by the `cache` crate.
pub mod cli;
pub mod error;
pub mod error_text;
pub mod events;
pub mod executor;
pub mod fetch;
pub mod graph;
pub mod lock;
pub mod plan;
pub mod recipe;
pub mod remote;
pub mod run;
pub mod selector;
