//! DICE (Sun, Li, "DICE: Leveraging sparsification for out-of-distribution detection", ECCV
//! 2022): the contribution of each weight, W_ck · m_k with m the mean ID training feature
//! (`feature-fit`), is kept only above its p-th percentile over the whole matrix (p = 90, numpy's
//! interpolation; strictly above, as the paper's code); the score is the Energy of the logits of
//! the sparsified head, logsumexp((W ⊙ mask)·h + b).
use super::feature_bank::percentile;
use super::head::{energy, widen};
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::error::StageError;

/// DICE's sparsity p.
pub const PERCENTILE: f64 = 90.0;

pub struct Dice;

/// W with every weight whose contribution W_ck·m_k is not above the p-th percentile zeroed.
pub fn sparsified(weight: &[Vec<f32>], mean: &[f64], p: f64) -> Vec<Vec<f32>> {
    let contributions: Vec<Vec<f64>> =
        weight.iter().map(|row| row.iter().zip(mean).map(|(&w, m)| w as f64 * m).collect()).collect();
    let flat: Vec<f64> = contributions.iter().flatten().copied().collect();
    let threshold = percentile(&flat, p);
    weight
        .iter()
        .zip(&contributions)
        .map(|(row, c)| row.iter().zip(c).map(|(&w, &v)| if v > threshold { w } else { 0.0 }).collect())
        .collect()
}

impl ScoreMethod for Dice {
    fn parameters(&self, _params: &MethodParams) -> String {
        format!("p = {PERCENTILE} (sparsity percentile of the weight contributions)")
    }
    fn name(&self) -> &'static str {
        "dice"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let fit = input.features_fit_for("dice")?;
        let (weight, bias) = input.net.head()?;
        let masked = sparsified(&weight, &fit.mean, PERCENTILE);
        Ok(input.pass.features.iter().map(|h| energy(&widen(h), &masked, &bias)).collect())
    }
}
