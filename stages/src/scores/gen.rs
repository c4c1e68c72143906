//! GEN (Liu, Lochman, Zach, "GEN: Pushing the limits of softmax-based out-of-distribution
//! detection", CVPR 2023): the negative generalized entropy of the softmax,
//! −Σ_{j ≤ M} p_j^γ (1 − p_j)^γ over the M largest probabilities, with the paper's (and OpenOOD
//! v1.5's) γ = 0.1 and M = 100, all classes when there are fewer. Computed in f64 from the
//! plain logits.
use super::head::widen;
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use super::softmax::probabilities;
use crate::error::StageError;

/// γ, the exponent of the generalized entropy.
pub const GAMMA: f64 = 0.1;
/// M, how many of the largest probabilities count.
pub const TOP: usize = 100;

pub struct Gen;

/// −Σ_{j ≤ top} p_j^γ (1 − p_j)^γ of softmax(`logits`), over its `top` largest probabilities.
pub fn generalized_entropy_score(logits: &[f32], gamma: f64, top: usize) -> f64 {
    let mut sorted = probabilities(&widen(logits));
    sorted.sort_by(|a, b| b.total_cmp(a));
    -sorted.iter().take(top).map(|p| p.powf(gamma) * (1.0 - p).powf(gamma)).sum::<f64>()
}

impl ScoreMethod for Gen {
    fn parameters(&self, _params: &MethodParams) -> String {
        format!("γ = {GAMMA}, M = {TOP}")
    }
    fn name(&self) -> &'static str {
        "gen"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        Ok(input.pass.logits.iter().map(|row| generalized_entropy_score(row, GAMMA, TOP)).collect())
    }
}
