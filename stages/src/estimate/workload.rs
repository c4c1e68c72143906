//! What a stage computes, for duration estimates (`pipeline plan`): which model, over which
//! datasets, how many passes, training or evaluation, and how many images a split holds. How
//! fast a model goes through them is `estimate::throughput`'s.
use crate::data::{DatasetSpec, Split};
use crate::error::StageError;
use crate::models::Architecture;

/// Where a stage's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// Built by the stage itself.
    Architecture(Architecture),
    /// The model of the upstream stage of this name.
    Upstream(String),
}

/// How many times a stage goes over its data.
#[derive(Debug, Clone, PartialEq)]
pub enum Passes {
    Fixed(usize),
    /// Once per checkpoint the named upstream training stage keeps.
    CheckpointsOf(String),
}

/// The bulk of a stage's computation.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub model: ModelSource,
    /// Datasets (by recipe name) and splits read in one pass.
    pub reads: Vec<(String, Split)>,
    /// Passes over `reads`.
    pub passes: Passes,
    /// For a training stage: how many checkpoints it keeps.
    pub checkpoints_kept: Option<usize>,
    /// Images per pass are multiplied by this (outlier exposure also feeds auxiliary batches).
    pub images_factor: f64,
    /// Forward, backward and update (true) or forward only.
    pub training: bool,
    pub batch_size: usize,
}

/// Number of images and their shape of one split, without decoding image folders.
pub fn dataset_size(spec: &DatasetSpec, split: Split) -> Result<(usize, [usize; 3]), StageError> {
    match spec {
        DatasetSpec::ImageFolder(folder) => Ok((spec.files()?.len(), [3, folder.size, folder.size])),
        other => {
            let set = other.load(split)?;
            Ok((set.len(), set.shape))
        }
    }
}
