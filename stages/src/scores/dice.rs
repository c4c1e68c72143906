//! DICE (Sun, Li, "DICE: Leveraging sparsification for out-of-distribution detection", ECCV
//! 2022): the contribution of each weight, W_ck · m_k with m the mean ID training feature
//! (`feature-fit`), is kept only above its p-th percentile over the whole matrix (p = 90, numpy's
//! interpolation; strictly above, as the paper's code); the score is the Energy of the logits of
//! the sparsified head, logsumexp((W ⊙ mask)·h + b).
use super::ash::head_energy;
use super::react::fit_of;
use super::scorer::{ScoreMethod, ScoringInput};
use crate::error::StageError;

/// DICE's sparsity p.
pub const PERCENTILE: f64 = 90.0;

pub struct Dice;

/// W with every weight whose contribution W_ck·m_k is not above the p-th percentile zeroed.
pub fn sparsified(weight: &[Vec<f32>], mean: &[f64], p: f64) -> Vec<Vec<f32>> {
    let contributions: Vec<Vec<f64>> =
        weight.iter().map(|row| row.iter().zip(mean).map(|(&w, m)| w as f64 * m).collect()).collect();
    let flat: Vec<f64> = contributions.iter().flatten().copied().collect();
    let threshold = percentile_f64(&flat, p);
    weight
        .iter()
        .zip(&contributions)
        .map(|(row, c)| row.iter().zip(c).map(|(&w, &v)| if v > threshold { w } else { 0.0 }).collect())
        .collect()
}

/// numpy's `percentile` (linear interpolation) of f64 values.
fn percentile_f64(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = (sorted.len() - 1) as f64 * p / 100.0;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

impl ScoreMethod for Dice {
    fn name(&self) -> &'static str {
        "dice"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let fit = fit_of(input, "dice")?;
        let (weight, bias) = input.net.head()?;
        let masked = sparsified(&weight, &fit.mean, PERCENTILE);
        Ok(input
            .pass
            .features
            .iter()
            .map(|h| head_energy(&h.iter().map(|&v| v as f64).collect::<Vec<f64>>(), &masked, &bias))
            .collect())
    }
}
