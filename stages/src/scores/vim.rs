//! ViM (Wang, Li, Feng, Zhang, "ViM: Out-of-distribution with virtual-logit matching", CVPR
//! 2022), as OpenOOD v1.5 computes it: with the head f = W·x + b, the origin u = −W⁺·b; the
//! principal subspace is spanned by the D leading eigenvectors of the covariance of the ID
//! training features about u (`feature-fit`), the residual by the rest; the virtual logit of x
//! is α·‖(x − u)·R‖ with α = mean max-logit / mean residual norm over the training set; the score
//! is logsumexp(f(x)) − α‖(x − u)·R‖. D = N/2 for an N-wide feature (OpenOOD's 256 of
//! ResNet-18's 512), 1000 from N = 2048 on (the paper's).
use super::head::{logits, widen};
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use super::softmax::logsumexp;
use crate::error::StageError;
use crate::math::linalg::Matrix;

pub struct Vim;

/// The principal dimension D for N-wide features.
pub fn principal_dimension(width: usize) -> usize {
    if width >= 2048 {
        1000
    } else {
        width / 2
    }
}

/// What ViM learns from the training features and the head.
pub struct VimFit {
    pub origin: Vec<f64>,
    /// The residual basis, one unit vector per row (N − D of them).
    pub residual: Vec<Vec<f64>>,
    pub alpha: f64,
}

impl VimFit {
    pub fn new(
        train: &[Vec<f32>],
        weight: &[Vec<f32>],
        bias: &[f32],
        dimension: usize,
    ) -> Result<VimFit, StageError> {
        let width = train.first().map_or(0, Vec::len);
        let classes = weight.len();
        // u = −Wᵀ·(W·Wᵀ)⁻¹·b, W of full row rank.
        let mut gram = Matrix { n: classes, data: vec![0.0; classes * classes] };
        for i in 0..classes {
            for j in 0..classes {
                gram.data[i * classes + j] =
                    weight[i].iter().zip(&weight[j]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
            }
        }
        let factor = gram.cholesky().ok_or_else(|| {
            StageError::Unsuitable("vim: the head's weight does not have full row rank".into())
        })?;
        let y = factor.cholesky_solve(&bias.iter().map(|&b| b as f64).collect::<Vec<f64>>());
        let origin: Vec<f64> =
            (0..width).map(|k| -(0..classes).map(|c| weight[c][k] as f64 * y[c]).sum::<f64>()).collect();
        let centred: Vec<Vec<f64>> =
            train.iter().map(|x| x.iter().zip(&origin).map(|(&v, u)| v as f64 - u).collect()).collect();
        let mut covariance = Matrix { n: width, data: vec![0.0; width * width] };
        for x in &centred {
            for i in 0..width {
                for j in 0..width {
                    covariance.data[i * width + j] += x[i] * x[j];
                }
            }
        }
        for value in &mut covariance.data {
            *value /= train.len().max(1) as f64;
        }
        let (_, vectors) = covariance.symmetric_eigen();
        let residual: Vec<Vec<f64>> =
            (dimension.min(width)..width).map(|k| (0..width).map(|i| vectors.at(i, k)).collect()).collect();
        let norm = |x: &[f64]| residual_norm(x, &residual);
        let mean_norm = centred.iter().map(|x| norm(x)).sum::<f64>() / train.len().max(1) as f64;
        let mean_max_logit = train
            .iter()
            .map(|x| {
                logits(&widen(x), weight, bias)
                    .into_iter()
                    .map(|l| l as f32)
                    .fold(f32::NEG_INFINITY, f32::max) as f64
            })
            .sum::<f64>()
            / train.len().max(1) as f64;
        Ok(VimFit { origin, residual, alpha: mean_max_logit / mean_norm })
    }

    /// logsumexp(logits) − α·‖(x − u)·R‖.
    pub fn score(&self, features: &[f32], logits: &[f32]) -> f64 {
        let centred: Vec<f64> = features.iter().zip(&self.origin).map(|(&v, u)| v as f64 - u).collect();
        logsumexp(logits) - self.alpha * residual_norm(&centred, &self.residual)
    }
}

/// ‖x·R‖: the norm of x's projection on the residual space.
fn residual_norm(x: &[f64], residual: &[Vec<f64>]) -> f64 {
    residual.iter().map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum::<f64>().powi(2)).sum::<f64>().sqrt()
}

impl ScoreMethod for Vim {
    fn parameters(&self, _params: &MethodParams) -> String {
        "D = N/2 for N-wide features (1000 from N = 2048 on)".into()
    }
    fn name(&self) -> &'static str {
        "vim"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let fit = input.features_fit_for("vim")?;
        let (weight, bias) = input.net.head()?;
        let vim = VimFit::new(&fit.raw, &weight, &bias, principal_dimension(fit.file.width))?;
        Ok(input.pass.features.iter().zip(&input.pass.logits).map(|(h, f)| vim.score(h, f)).collect())
    }
}
