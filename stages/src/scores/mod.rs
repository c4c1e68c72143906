//! OOD scores (SPEC §7), every one "higher = more in-distribution", computed in f64:
//! - from logits: [`Method::Msp`] (from log-softmax, so confident samples do not saturate) and
//!   [`Method::Energy`] (T·logsumexp(f/T), T = 1);
//! - [`Method::Odin`]: temperature scaling of an input perturbed against the gradient
//!   ([`odin`]);
//! - [`Method::Mahalanobis`]: the closest class-conditional Gaussian of penultimate features
//!   with one tied covariance ([`mahalanobis`]).
pub mod mahalanobis;
pub mod odin;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Maximum softmax probability.
    Msp,
    /// T·logsumexp(f(x)/T) with T = 1.
    Energy,
    /// Max softmax(f(x̃)/T) of the perturbed input x̃ = x − ε·sign(∇ₓ CE(f(x)/T, ŷ)).
    Odin,
    /// max_c −(z − μ_c)ᵀ Σ⁻¹ (z − μ_c) on penultimate features z.
    Mahalanobis,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Msp => "msp",
            Method::Energy => "energy",
            Method::Odin => "odin",
            Method::Mahalanobis => "mahalanobis",
        }
    }

    /// Whether the score is a function of the logits of the plain forward pass.
    pub fn from_logits(self) -> bool {
        matches!(self, Method::Msp | Method::Energy)
    }

    /// The score of one sample's logits (MSP and Energy only).
    pub fn score(self, logits: &[f32]) -> f64 {
        match self {
            Method::Msp => max_softmax(logits, 1.0),
            Method::Energy => logsumexp(logits),
            Method::Odin | Method::Mahalanobis => {
                unreachable!("{} is not a function of the logits alone", self.name())
            }
        }
    }
}

/// log Σ exp(x), stably, in f64.
pub fn logsumexp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

/// max softmax(f / T), computed as exp(max f/T − logsumexp(f/T)) in f64.
pub fn max_softmax(logits: &[f32], temperature: f64) -> f64 {
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    (max - lse).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let logits = [1.0f32, 2.0, 3.0];
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((Method::Energy.score(&logits) - lse).abs() < 1e-12);
        assert!((Method::Msp.score(&logits) - 3f64.exp() / lse.exp()).abs() < 1e-12);
        // Large logits neither overflow nor saturate to exactly 1.
        let big = [1000.0f32, 985.0];
        assert!(Method::Msp.score(&big) < 1.0);
        assert!((Method::Energy.score(&big) - 1000.0).abs() < 1e-6);
        // A high temperature flattens the softmax towards 1/C.
        assert!((max_softmax(&logits, 1000.0) - 1.0 / 3.0).abs() < 1e-3);
    }
}
