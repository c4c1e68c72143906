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

/// The most images one batch may hold. Far above any batch a GPU takes (65,536 CIFAR images are
/// 805 MB of pixels, ImageNet-sized ones 39 GB), and low enough that a typo such as
/// `aux_batch_size = 9223372036854775807` is a recipe error at `check`, not an allocation that
/// overflows at run time. The same on every machine, so `check` agrees with the cluster.
pub const MAX_BATCH_SIZE: usize = 1 << 16;

impl ParamError {
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        ParamError { path: path.iter().map(|s| s.to_string()).collect(), message: message.into() }
    }

    /// The problem with a batch size, if any: it must be 1 to [`MAX_BATCH_SIZE`].
    pub fn batch_size(field: &str, value: usize) -> Option<ParamError> {
        match value {
            0 => Some(ParamError::new(&[field], "must be greater than 0")),
            n if n > MAX_BATCH_SIZE => Some(ParamError::new(
                &[field],
                format!("{n} images per batch is more than the most this accepts, {MAX_BATCH_SIZE}"),
            )),
            _ => None,
        }
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
    /// A score that is not a finite number; no score file holds one. `why` says whether the
    /// model's outputs for that sample were finite (then the method broke down, not the model).
    #[error("{method} score of `{dataset}` sample {index} is {value}: {why}")]
    NonFiniteScore { method: String, dataset: String, index: usize, value: f64, why: String },
    /// Inputs or parameters that do not fit together (a dataset of the wrong shape for the
    /// model, an epoch the training stage did not keep): the user can fix the recipe.
    #[error("{0}")]
    Unsuitable(String),
    /// A broken invariant that the recipe checks should have prevented: a bug in pipeline.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StageError {
    /// A [`StageError::NonFiniteScore`] for `method`'s score `value` of sample `index`, whose
    /// logits were `logits`.
    pub fn non_finite_score(
        method: &str,
        dataset: &str,
        index: usize,
        value: f64,
        logits: &[f32],
    ) -> StageError {
        let why = if logits.iter().all(|v| v.is_finite()) {
            format!(
                "the model's outputs for it are finite, so `{method}` itself breaks down on this model or \
                 at these settings (remove it from `methods` to score with the others)"
            )
        } else {
            "the model's outputs for it are not finite".to_string()
        };
        StageError::NonFiniteScore { method: method.into(), dataset: dataset.into(), index, value, why }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN score from finite outputs blames the method, not the model (issue 32).
    #[test]
    fn a_non_finite_score_says_whether_the_outputs_were_finite() {
        let finite =
            StageError::non_finite_score("ash-s", "mnist_6_9", 3, f64::NAN, &[0.5, -1.0]).to_string();
        assert!(
            finite.contains("outputs for it are finite") && finite.contains("`ash-s` itself"),
            "{finite}"
        );
        assert!(finite.contains("remove it from `methods`"), "{finite}");
        let inf = StageError::non_finite_score("energy", "x", 0, f64::INFINITY, &[f32::INFINITY]).to_string();
        assert!(inf.contains("are not finite"), "{inf}");
    }

    #[test]
    fn batch_sizes_are_bounded() {
        assert!(ParamError::batch_size("batch_size", 0).is_some());
        assert!(ParamError::batch_size("batch_size", 1).is_none());
        assert!(ParamError::batch_size("batch_size", MAX_BATCH_SIZE).is_none());
        let e = ParamError::batch_size("aux_batch_size", usize::MAX).unwrap();
        assert_eq!(e.path, ["aux_batch_size"]);
    }
}
