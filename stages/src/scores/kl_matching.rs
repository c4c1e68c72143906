//! KL matching (Hendrycks et al., "Scaling out-of-distribution detection for real-world
//! settings", ICML 2022): for each class k, d_k is the mean softmax of the ID training images the
//! model predicts as k (`feature-fit`: their logits are the head applied to their features);
//! the score is −min_k KL(p(x) ‖ d_k). Classes no training image is predicted as are left out.
use super::head::{logits, widen};
use super::scorer::{ScoreMethod, ScoringInput};
use super::softmax::probabilities;
use crate::error::StageError;

pub struct KlMatching;

/// The mean softmax per predicted class of the training features (`None` for a class never
/// predicted).
pub fn class_templates(train: &[Vec<f32>], weight: &[Vec<f32>], bias: &[f32]) -> Vec<Option<Vec<f64>>> {
    let classes = weight.len();
    let mut sums = vec![vec![0.0; classes]; classes];
    let mut counts = vec![0usize; classes];
    for h in train {
        let p = probabilities(&logits(&widen(h), weight, bias));
        let predicted = p.iter().enumerate().fold(0, |best, (k, &v)| if v > p[best] { k } else { best });
        counts[predicted] += 1;
        for (s, v) in sums[predicted].iter_mut().zip(&p) {
            *s += v;
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(s, n)| (n > 0).then(|| s.into_iter().map(|v| v / n as f64).collect()))
        .collect()
}

/// −min_k KL(p ‖ d_k) over the templates that exist.
pub fn kl_matching(probabilities: &[f64], templates: &[Option<Vec<f64>>]) -> f64 {
    let kl = |d: &Vec<f64>| -> f64 {
        probabilities.iter().zip(d).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p / q).ln()).sum()
    };
    -templates.iter().flatten().map(kl).fold(f64::INFINITY, f64::min)
}

impl ScoreMethod for KlMatching {
    fn name(&self) -> &'static str {
        "kl-matching"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let fit = input.features_fit_for("kl-matching")?;
        let (weight, bias) = input.net.head()?;
        let templates = class_templates(&fit.raw, &weight, &bias);
        Ok(input
            .pass
            .logits
            .iter()
            .map(|row| {
                kl_matching(&probabilities(&row.iter().map(|&v| v as f64).collect::<Vec<f64>>()), &templates)
            })
            .collect())
    }
}
