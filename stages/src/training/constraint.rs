//! The Unleashing-Mask loss constraint ζ: the file `estimate-loss-constraint` writes, how the
//! fine-tuning stages obtain ζ (from that stage, or written in the recipe), and the UM loss.
use crate::error::ParamError;
use crate::error::StageError;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A training sample whose loss the mask raised most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtypicalSample {
    /// Index in the (class-filtered) training split.
    pub index: usize,
    pub label: u32,
    pub loss_unmasked: f64,
    pub loss_masked: f64,
}

/// `constraint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstraintFile {
    /// The ζ the fine-tuning stages use: the mean over draws.
    pub zeta: f64,
    /// ζ of each mask draw, and their sample standard deviation.
    pub zeta_draws: Vec<f64>,
    pub zeta_std: f64,
    pub delta: f64,
    /// Fraction of each masked layer's weights the mask kept (measured on the first draw).
    pub kept_fraction: BTreeMap<String, f64>,
    /// Training accuracy and mean CE of the masked model (mean over draws) and of the model.
    pub masked_accuracy: f64,
    pub unmasked_accuracy: f64,
    pub unmasked_loss: f64,
    /// Samples evaluated.
    pub samples: usize,
    pub atypical: Vec<AtypicalSample>,
}

impl ConstraintFile {
    pub const FILE: &'static str = "constraint.json";

    pub fn read(dir: &Path) -> Result<ConstraintFile, StageError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }
}

/// What a fine-tuning stage reads: the model of stage `model`, its training data `data`, and
/// the `estimate-loss-constraint` stage giving ζ when there is one (else ζ is written out).
pub fn fine_tuning_inputs(model: &str, data: &str, constraint: &Option<String>) -> Vec<Input> {
    let mut inputs = crate::training::fit::model_and_data_inputs(model, data);
    inputs.extend(constraint.iter().map(|name| Input::stage(&["constraint"], name, Artifact::Constraint)));
    inputs
}

/// Exactly one of `constraint` and `zeta`, and ζ ≥ 0.
pub fn check_zeta_source(constraint: &Option<String>, zeta: Option<f64>) -> Vec<ParamError> {
    match (constraint, zeta) {
        (Some(_), Some(_)) => {
            vec![ParamError::new(&["zeta"], "give either `constraint` or `zeta`, not both")]
        }
        (None, None) => {
            vec![ParamError::new(&[], "needs `constraint` (an estimate-loss-constraint stage) or `zeta`")]
        }
        (None, Some(z)) if !(z.is_finite() && z >= 0.0) => {
            vec![ParamError::new(&["zeta"], "must be a finite number ≥ 0")]
        }
        _ => Vec::new(),
    }
}

/// The ζ a fine-tuning stage uses.
pub fn resolve_zeta(
    ctx: &RunContext,
    constraint: &Option<String>,
    zeta: Option<f64>,
) -> Result<f64, StageError> {
    match (constraint, zeta) {
        (Some(name), _) => Ok(ConstraintFile::read(ctx.stage_dir(name)?)?.zeta),
        (None, Some(z)) => Ok(z),
        (None, None) => Err(StageError::Internal("no ζ given".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_zeta_source() {
        assert!(check_zeta_source(&Some("z".into()), None).is_empty());
        assert!(check_zeta_source(&None, Some(0.1)).is_empty());
        assert_eq!(check_zeta_source(&Some("z".into()), Some(0.1)).len(), 1);
        assert_eq!(check_zeta_source(&None, None).len(), 1);
        assert_eq!(check_zeta_source(&None, Some(-1.0)).len(), 1);
    }
}
