//! Every stage kind of the pipeline, and what they share.
//!
//! A stage kind is a parameter struct implementing [`StageParams`]: serde gives its recipe
//! fields (with defaults), [`StageParams::inputs`] names the stages and datasets it reads, and
//! [`StageParams::run`] computes its outputs into the folder its [`RunContext`] hands it. The
//! [`registry`] lists every kind; adding a kind is one file in `kinds/` plus one line there.
//!
//! This crate knows nothing of TOML files or of the cache: it receives parameters as JSON
//! values and resolved paths of its inputs.
//!
//! - [`stage`]: the stage API the engine sees; [`kinds`]: one module per stage kind and the
//!   registry.
//! - [`training`]: the fit loop and its configuration, optimiser, schedules, losses, masks, the
//!   loss constraint, outlier selection.
//! - [`models`]: architectures, parameters, checkpoints, evaluation over an image set, and
//!   `kernels/` (the CPU convolution and fused batch norm, the allocator settings and the CUDA
//!   library probe: all unsafe code lives there).
//! - [`scores`]: one scorer per OOD score method; [`metrics`]: FPR95, AUROC, AUPR.
//! - [`data`]: dataset specifications and loaders; [`formats`]: `.npy` and JSON outputs.
//! - [`estimate`]: workloads of stages and measured throughput, for duration estimates.
//! - [`math`]: linear algebra and seeded random streams; [`device`]: choosing CPU or CUDA.
//! - [`transfer`]: the counted device boundary of training; [`ops_check`]: every op on the CPU
//!   against the device (the GPU check).
//!
//! Inside the crate every item is named by its home module (`crate::stage::StageParams`), never
//! through the re-exports below, which are for other crates: no file imports a file that
//! imports it back (`tests/module_graph.rs`).
//!
//! `unsafe` code is denied outside `models::kernels` (the only module that allows it).
#![deny(unsafe_code)]

pub mod data;
pub mod device;
pub mod error;
pub mod estimate;
pub mod fields;
pub mod formats;
pub mod kinds;
pub mod math;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod ops_check;
pub mod progress;
pub mod scores;
pub mod stage;
pub mod training;
pub mod transfer;

pub use error::{Fault, ParamError, StageError};
pub use fields::struct_fields;
pub use kinds::{kind, registry};
pub use progress::{NoProgress, Progress, ProgressBar};
pub use stage::{
    Artifact, BuildError, Input, NamedFile, Role, RunContext, Stage, StageKind, StageParams, Target,
    UpstreamTag,
};
