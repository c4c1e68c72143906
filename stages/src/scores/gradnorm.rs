//! GradNorm (Huang, Geng, Li, "On the importance of gradients for detecting distributional
//! shifts in the wild", NeurIPS 2021): the L1 norm of the gradient of KL(u ‖ softmax(f(x))), u
//! uniform over the C classes, with respect to the weight of the last layer. With f = W·h + b
//! that gradient is (p − u)·hᵀ, an outer product, so its L1 norm is Σ_k |p_k − 1/C| · Σ_j |h_j|:
//! computed from the plain pass's logits and penultimate features, no second backward pass.
//! OpenOOD v1.5 takes all-ones targets instead of u, which multiplies every score by C: the same
//! ranking, the same metrics.
use super::head::widen;
use super::scorer::{ScoreMethod, ScoringInput};
use super::softmax::probabilities;
use crate::error::StageError;

pub struct GradNorm;

/// Σ_k |softmax(logits)_k − 1/C| · Σ_j |features_j|.
pub fn gradnorm(features: &[f32], logits: &[f32]) -> f64 {
    let uniform = 1.0 / logits.len() as f64;
    let away: f64 = probabilities(&widen(logits)).iter().map(|p| (p - uniform).abs()).sum();
    away * features.iter().map(|&h| (h as f64).abs()).sum::<f64>()
}

impl ScoreMethod for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let pass = input.pass;
        Ok(pass.features.iter().zip(&pass.logits).map(|(h, f)| gradnorm(h, f)).collect())
    }
}
