//! ASH (Djurisic, Bozanic, Ashok, Liu, "Extremely simple activation shaping for
//! out-of-distribution detection", ICLR 2023), as OpenOOD v1.5 applies it: on the penultimate
//! feature vector, keep its k = n − round(n·p/100) largest entries (p = 90, numpy's round: half
//! to even) and zero the rest (ash-p); or set the kept ones to the sum of the whole vector over k
//! (ash-b); or keep them scaled by exp(s₁/s₂), s₁ the sum before and s₂ after pruning (ash-s).
//! The score is the Energy of the logits the linear head gives the shaped vector. Ties among
//! equal entries keep the lower index.
use super::head::energy;
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::error::StageError;

/// ASH's percentile p.
pub const PERCENTILE: f64 = 90.0;

/// The three shapings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shaping {
    /// Prune: keep the top k, zero the rest.
    Prune,
    /// Binarize: the top k positions get sum / k.
    Binarize,
    /// Scale: prune, then multiply by exp(s₁ / s₂).
    Scale,
}

/// `features` shaped by `shaping` at percentile `p`.
pub fn shape(features: &[f32], shaping: Shaping, p: f64) -> Vec<f64> {
    let n = features.len();
    let k = n - ((n as f64 * p / 100.0).round_ties_even() as usize).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| features[b].total_cmp(&features[a]).then(a.cmp(&b)));
    let total: f64 = features.iter().map(|&v| v as f64).sum();
    let mut out = vec![0.0; n];
    for &i in &order[..k] {
        out[i] = features[i] as f64;
    }
    match shaping {
        Shaping::Prune => {}
        Shaping::Binarize => {
            for &i in &order[..k] {
                out[i] = total / k as f64;
            }
        }
        Shaping::Scale => {
            let kept: f64 = out.iter().sum();
            let factor = (total / kept).exp();
            for v in &mut out {
                *v *= factor;
            }
        }
    }
    out
}

/// One of the three ASH methods.
pub struct Ash(pub Shaping);

impl ScoreMethod for Ash {
    fn parameters(&self, _params: &MethodParams) -> String {
        format!("p = {PERCENTILE} (percentile of each sample's activations pruned)")
    }
    fn name(&self) -> &'static str {
        match self.0 {
            Shaping::Prune => "ash-p",
            Shaping::Binarize => "ash-b",
            Shaping::Scale => "ash-s",
        }
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let (weight, bias) = input.net.head()?;
        Ok(input
            .pass
            .features
            .iter()
            .map(|h| energy(&shape(h, self.0, PERCENTILE), &weight, &bias))
            .collect())
    }
}
