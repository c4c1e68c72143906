//! Error types of the stages crate.
use std::path::PathBuf;

/// A problem with one parameter, located by the path of its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    /// Field path from the stage's table, e.g. `["ood", "1"]`; empty for the table itself.
    pub path: Vec<String>,
    pub message: String,
}

impl ParamError {
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        ParamError { path: path.iter().map(|s| s.to_string()).collect(), message: message.into() }
    }

    /// Deserialises `T`, turning the first error into a [`ParamError`] at its field's path.
    pub fn deserialize<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ParamError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            ParamError { path, message: e.into_inner().to_string() }
        })
    }
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading or writing a file failed.
    #[error("{action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but is not what it should be.
    #[error("`{path}`: {message}")]
    Format { path: PathBuf, message: String },
    /// A tensor operation failed.
    #[error("{context}")]
    Tensor {
        context: String,
        #[source]
        source: candle_core::Error,
    },
    /// Training diverged: the loss stopped being a finite number.
    #[error("loss is {value} at epoch {epoch}, batch {batch}: training diverged (try a lower lr)")]
    NonFinite { value: f64, epoch: usize, batch: usize },
    /// Training diverged: a weight or batch-norm statistic stopped being finite (the loss may
    /// still be finite), so nothing of it is kept.
    #[error("`{parameter}` holds a non-finite value after epoch {epoch}, batch {batch}: training diverged (try a lower lr)")]
    NonFiniteParameter { parameter: String, epoch: usize, batch: usize },
    /// A score that is not a finite number; no score file holds one.
    #[error("{method} score of `{dataset}` sample {index} is {value}: the model's outputs are not finite")]
    NonFiniteScore { method: String, dataset: String, index: usize, value: f64 },
    /// Inputs or parameters that do not fit together (a dataset of the wrong shape for the
    /// model, an epoch the training stage did not keep): the user can fix the recipe.
    #[error("{0}")]
    Unsuitable(String),
    /// A broken invariant that the recipe checks should have prevented: a bug in pipeline.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who can fix a [`StageError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The recipe, its data or its files: a bad parameter, missing or malformed data,
    /// diverged training.
    User,
    /// pipeline itself (or the system under it: a failed tensor operation).
    Internal,
}

impl StageError {
    /// Whether the user can fix this (bad parameter, missing or malformed data) or it is
    /// internal.
    pub fn fault(&self) -> Fault {
        match self {
            StageError::Io { .. }
            | StageError::Format { .. }
            | StageError::NonFinite { .. }
            | StageError::NonFiniteParameter { .. }
            | StageError::NonFiniteScore { .. }
            | StageError::Unsuitable(_) => Fault::User,
            StageError::Tensor { .. } | StageError::Internal(_) => Fault::Internal,
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StageError::Io { action, path, source }
    }

    pub fn tensor(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| StageError::Tensor { context, source }
    }
}

impl From<candle_core::Error> for StageError {
    fn from(source: candle_core::Error) -> Self {
        StageError::Tensor { context: "tensor operation failed".into(), source }
    }
}
