//! ReAct (Sun, Guo, Li, "ReAct: Out-of-distribution detection with rectified activations",
//! NeurIPS 2021): the penultimate activations clipped at c, the p-th percentile (p = 90) of the
//! ID training activations (`feature-fit`), then the Energy score of the logits the linear head
//! gives them: logsumexp(W·min(h, c) + b).
use super::head::energy;
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::error::StageError;

pub struct React;

/// logsumexp(W·min(h, c) + b) in f64.
pub fn react_energy(features: &[f32], threshold: f64, weight: &[Vec<f32>], bias: &[f32]) -> f64 {
    let clipped: Vec<f64> = features.iter().map(|&h| (h as f64).min(threshold)).collect();
    energy(&clipped, weight, bias)
}

impl ScoreMethod for React {
    fn parameters(&self, _params: &MethodParams) -> String {
        "c = the p-th percentile of the ID training activations, p = the feature-fit stage's `react_percentile` (default 90)".into()
    }
    fn name(&self) -> &'static str {
        "react"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let threshold = input.features_fit_for("react")?.file.react_threshold;
        let (weight, bias) = input.net.head()?;
        Ok(input.pass.features.iter().map(|h| react_energy(h, threshold, &weight, &bias)).collect())
    }
}
