//! What the `feature-fit` stage learns from a model's ID training set for the post-hoc scores
//! that need ID statistics: the penultimate features themselves (`features.npy`, float32 rows:
//! KNN's bank) and `feature_fit.json` (ReAct's clipping threshold and the digest of the model
//! they were computed with, so that a score stage cannot pair them with another model).
use crate::error::StageError;
use crate::formats::npy;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `feature_fit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureFitFile {
    pub model_digest: String,
    /// How many training images, and the width of their features.
    pub count: usize,
    pub width: usize,
    /// ReAct's percentile p and the p-th percentile of every penultimate activation of the
    /// training set (numpy's default, linear interpolation).
    pub react_percentile: f64,
    pub react_threshold: f64,
}

impl FeatureFitFile {
    pub const FILE: &'static str = "feature_fit.json";
    pub const FEATURES: &'static str = "features.npy";

    pub fn read(dir: &Path) -> Result<FeatureFitFile, StageError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }
}

/// A `feature-fit` stage's outputs, loaded for scoring.
#[derive(Debug, Clone)]
pub struct FeatureFit {
    pub file: FeatureFitFile,
    /// The training features as computed.
    pub raw: Vec<Vec<f32>>,
    /// The same, each scaled to unit L2 norm (KNN's bank).
    pub normalised: Vec<Vec<f32>>,
    /// Their mean (DICE's m).
    pub mean: Vec<f64>,
}

impl FeatureFit {
    pub fn read(dir: &Path) -> Result<FeatureFit, StageError> {
        let file = FeatureFitFile::read(dir)?;
        let raw = npy::read_f32_rows(&dir.join(FeatureFitFile::FEATURES))?;
        let normalised = raw.iter().map(|r| unit(r)).collect();
        let width = raw.first().map_or(0, Vec::len);
        let mut mean = vec![0.0; width];
        for row in &raw {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        let count = raw.len().max(1) as f64;
        let mean = mean.into_iter().map(|m| m / count).collect();
        Ok(FeatureFit { file, raw, normalised, mean })
    }
}

/// `row` scaled to unit L2 norm (a zero row stays zero).
pub fn unit(row: &[f32]) -> Vec<f32> {
    let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
    if norm == 0.0 {
        row.to_vec()
    } else {
        row.iter().map(|&v| (v as f64 / norm) as f32).collect()
    }
}

/// numpy's `percentile(values, p)` with its default linear interpolation; NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let position = (sorted.len() - 1) as f64 * p / 100.0;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_as_numpy() {
        // numpy.percentile([1, 2, 3, 4], 90) = 3.7; of [5] = 5.
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 90.0), 5.0);
        assert_eq!(unit(&[3.0, 4.0]), vec![0.6, 0.8]);
    }
}
