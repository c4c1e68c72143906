//! Mahalanobis (docs/methods.md §7): max_c −(z − μ_c)ᵀ Σ⁻¹ (z − μ_c) on the penultimate features z of the
//! plain forward pass, with the Gaussian of a `mahalanobis-fit` stage ([`super::gaussian`]).
use super::scorer::{ScoreMethod, ScoringInput};
use crate::error::StageError;

pub struct Mahalanobis;

impl ScoreMethod for Mahalanobis {
    fn name(&self) -> &'static str {
        "mahalanobis"
    }

    fn extra_passes(&self) -> f64 {
        1.0
    }

    fn needs_gaussian(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        input
            .gaussian
            .ok_or_else(|| StageError::Internal("the mahalanobis method needs a fitted Gaussian".into()))?
            .scores(&input.pass.features)
            .map_err(StageError::Unsuitable)
    }
}
