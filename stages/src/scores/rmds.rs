//! RMDS, the relative Mahalanobis distance (Ren et al., "A simple fix to Mahalanobis distance
//! for improving near-OOD detection", 2021): the class-conditional Gaussian with one tied
//! covariance of `mahalanobis-fit`, minus a background Gaussian of all the ID training features
//! (`feature-fit`): max_k −(MD_k(z) − MD_0(z)) = (−min_k MD_k(z)) + MD_0(z).
use super::gaussian::GaussianFit;
use super::scorer::{ScoreMethod, ScoringInput};
use crate::error::StageError;

pub struct Rmds;

/// The relative scores of `features` given the class fit and the training features.
pub fn rmds_scores(
    class_fit: &GaussianFit,
    train: &[Vec<f32>],
    features: &[Vec<f32>],
) -> Result<Vec<f64>, StageError> {
    let background = GaussianFit::fit(train, &vec![0; train.len()], 1).map_err(StageError::Unsuitable)?;
    let class_scores = class_fit.scores(features).map_err(StageError::Unsuitable)?;
    let background_scores = background.scores(features).map_err(StageError::Unsuitable)?;
    Ok(class_scores.iter().zip(&background_scores).map(|(c, b)| c - b).collect())
}

impl ScoreMethod for Rmds {
    fn name(&self) -> &'static str {
        "rmds"
    }

    fn extra_passes(&self) -> f64 {
        1.0
    }

    fn needs_gaussian(&self) -> bool {
        true
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let class_fit = input
            .gaussian
            .ok_or_else(|| StageError::Internal("the rmds method needs a fitted Gaussian".into()))?;
        rmds_scores(class_fit, &input.features_fit_for("rmds")?.raw, &input.pass.features)
    }
}
