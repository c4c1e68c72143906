//! OOD scores from logits (SPEC §7), computed in f64 from log-softmax so confident samples do
//! not saturate; every score is "higher = more in-distribution".
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Maximum softmax probability.
    Msp,
    /// T·logsumexp(f(x)/T) with T = 1.
    Energy,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Msp => "msp",
            Method::Energy => "energy",
        }
    }

    /// The score of one sample's logits.
    pub fn score(self, logits: &[f32]) -> f64 {
        let lse = logsumexp(logits);
        match self {
            Method::Msp => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                (max - lse).exp()
            }
            Method::Energy => lse,
        }
    }
}

/// log Σ exp(x), stably, in f64.
pub fn logsumexp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
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
    }
}
