//! MaxLogit (Hendrycks et al., "Scaling out-of-distribution detection for real-world settings"):
//! the largest logit of the plain forward pass, max_c f_c(x).
use super::scorer::{ScoreMethod, ScoringInput};
use crate::error::StageError;

pub struct MaxLogit;

/// max_c f_c, in f64.
pub fn max_logit(logits: &[f32]) -> f64 {
    logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64
}

impl ScoreMethod for MaxLogit {
    fn name(&self) -> &'static str {
        "maxlogit"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        Ok(input.pass.logits.iter().map(|row| max_logit(row)).collect())
    }
}
