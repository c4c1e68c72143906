//! The class-conditional Gaussian of the Mahalanobis score (docs/methods.md §7): class means and one tied
//! covariance of penultimate features, fitted by maximum likelihood (divide by N) on the
//! training set in evaluation mode, and `gaussian.json`, the file the `mahalanobis-fit` stage
//! writes. The score of z is max_c −(z − μ_c)ᵀ Σ⁻¹ (z − μ_c), computed with a Cholesky factor
//! (Σ = L·Lᵀ, the distance is |L⁻¹(z − μ_c)|² by forward substitution), never an explicit
//! inverse.
use crate::error::StageError;
use crate::math::linalg::Matrix;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A fitted class-conditional Gaussian with a tied covariance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianFit {
    /// `means[c]` is the mean feature of class c.
    pub means: Vec<Vec<f64>>,
    /// d×d, row-major.
    pub covariance: Vec<f64>,
    /// Added to the diagonal where the covariance is singular (dead features); 0 otherwise.
    pub ridge: f64,
    pub samples: usize,
}

impl GaussianFit {
    /// Fits means and the tied maximum-likelihood covariance to `features` with `labels`.
    pub fn fit(features: &[Vec<f32>], labels: &[u32], num_classes: usize) -> Result<GaussianFit, String> {
        let d = features.first().map_or(0, Vec::len);
        if d == 0 || features.len() != labels.len() {
            return Err("need one feature row per label".into());
        }
        let mut means = vec![vec![0.0; d]; num_classes];
        let mut counts = vec![0usize; num_classes];
        for (z, &y) in features.iter().zip(labels) {
            let y = y as usize;
            counts[y] += 1;
            for (m, &v) in means[y].iter_mut().zip(z) {
                *m += v as f64;
            }
        }
        for (c, (mean, &count)) in means.iter_mut().zip(&counts).enumerate() {
            if count == 0 {
                return Err(format!("class {c} has no training sample"));
            }
            mean.iter_mut().for_each(|m| *m /= count as f64);
        }
        let mut covariance = vec![0.0; d * d];
        for (z, &y) in features.iter().zip(labels) {
            let centred: Vec<f64> = z.iter().zip(&means[y as usize]).map(|(&v, m)| v as f64 - m).collect();
            for i in 0..d {
                for j in 0..=i {
                    covariance[i * d + j] += centred[i] * centred[j];
                }
            }
        }
        let n = features.len() as f64;
        for i in 0..d {
            for j in 0..=i {
                covariance[i * d + j] /= n;
                covariance[j * d + i] = covariance[i * d + j];
            }
        }
        let mut fit = GaussianFit { means, covariance, ridge: 0.0, samples: features.len() };
        if fit.factor().is_none() {
            let trace: f64 = (0..d).map(|i| fit.covariance[i * d + i]).sum();
            fit.ridge = 1e-6 * (trace / d as f64).max(1e-12);
            if fit.factor().is_none() {
                return Err("the feature covariance is not positive definite even with a ridge".into());
            }
        }
        Ok(fit)
    }

    /// The Cholesky factor of Σ + ridge·I.
    pub fn factor(&self) -> Option<Matrix> {
        let d = self.means.first().map_or(0, Vec::len);
        let mut m = Matrix { n: d, data: self.covariance.clone() };
        for i in 0..d {
            m.data[i * d + i] += self.ridge;
        }
        m.cholesky()
    }

    /// Scores of feature rows (higher = more in-distribution).
    pub fn scores(&self, features: &[Vec<f32>]) -> Result<Vec<f64>, String> {
        let factor = self.factor().ok_or("the fitted covariance is not positive definite")?;
        let d = factor.n;
        features
            .iter()
            .map(|z| {
                if z.len() != d {
                    return Err(format!("features of width {} for a fit of width {d}", z.len()));
                }
                let closest = self
                    .means
                    .iter()
                    .map(|mean| {
                        let diff: Vec<f64> = z.iter().zip(mean).map(|(&v, m)| v as f64 - m).collect();
                        factor.forward_solve(&diff).iter().map(|v| v * v).sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min);
                Ok(-closest)
            })
            .collect()
    }
}

/// `gaussian.json`: the fit, and the digest of the model it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianFile {
    pub model_digest: String,
    pub fit: GaussianFit,
}

impl GaussianFile {
    pub const FILE: &'static str = "gaussian.json";

    pub fn read(dir: &Path) -> Result<GaussianFile, StageError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_and_score_match_a_direct_computation() {
        let features: Vec<Vec<f32>> = vec![
            vec![1.0, 2.0],
            vec![2.0, 1.0],
            vec![3.0, 4.0],
            vec![-1.0, 0.0],
            vec![0.0, -2.0],
            vec![-2.0, 1.0],
        ];
        let labels = [0, 0, 0, 1, 1, 1];
        let fit = GaussianFit::fit(&features, &labels, 2).unwrap();
        assert_eq!(fit.means[0], vec![2.0, 7.0 / 3.0]);
        assert_eq!(fit.ridge, 0.0);
        // Tied ML covariance by hand.
        let (mut a, mut b, mut c) = (0.0, 0.0, 0.0);
        for (z, &y) in features.iter().zip(&labels) {
            let m = &fit.means[y as usize];
            let (u, v) = (z[0] as f64 - m[0], z[1] as f64 - m[1]);
            a += u * u / 6.0;
            b += u * v / 6.0;
            c += v * v / 6.0;
        }
        for (got, want) in fit.covariance.iter().zip([a, b, b, c]) {
            assert!((got - want).abs() < 1e-12);
        }
        // Score of a point against the explicit inverse.
        let det = a * c - b * b;
        let inv = [c / det, -b / det, -b / det, a / det];
        let z = [0.5f32, 1.5];
        let dist = |m: &[f64]| {
            let (u, v) = (z[0] as f64 - m[0], z[1] as f64 - m[1]);
            u * (inv[0] * u + inv[1] * v) + v * (inv[2] * u + inv[3] * v)
        };
        let expected = -dist(&fit.means[0]).min(dist(&fit.means[1]));
        let got = fit.scores(&[z.to_vec()]).unwrap()[0];
        assert!((got - expected).abs() < 1e-10, "{got} vs {expected}");
    }

    #[test]
    fn a_dead_feature_gets_a_ridge_instead_of_failing() {
        let features: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![2.0, 0.0], vec![-1.0, 0.0], vec![-3.0, 0.0]];
        let fit = GaussianFit::fit(&features, &[0, 0, 1, 1], 2).unwrap();
        assert!(fit.ridge > 0.0);
        assert!(fit.scores(&features).unwrap().iter().all(|s| s.is_finite()));
    }
}
