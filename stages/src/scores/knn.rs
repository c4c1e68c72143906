//! KNN (Sun, Ming, Zhu, Li, "Out-of-distribution detection with deep nearest neighbors", ICML
//! 2022): with features scaled to unit L2 norm, minus the distance to the k-th nearest ID
//! training feature (`feature-fit`), k = 50 (all of them when there are fewer). Exact search:
//! cosine similarities of a batch of queries against the whole bank as one matrix product,
//! then the k-th largest per row; ‖a − b‖ = √(2 − 2·a·b) for unit vectors. OpenOOD v1.5 returns
//! the squared distance, which ranks the same.
use super::feature_bank::unit;
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::error::StageError;
use candle_core::{Device, Tensor};

/// The paper's k.
pub const K: usize = 50;
/// Queries per matrix product.
const BATCH: usize = 256;

pub struct Knn;

/// −(distance to the k-th nearest row of `bank`) of each query, all rows of unit norm.
pub fn knn_scores(queries: &[Vec<f32>], bank: &[Vec<f32>], k: usize) -> Result<Vec<f64>, StageError> {
    let Some(width) = bank.first().map(Vec::len) else {
        return Err(StageError::Unsuitable("the feature bank is empty".into()));
    };
    let k = k.clamp(1, bank.len());
    let flat: Vec<f32> = bank.iter().flatten().copied().collect();
    let bank_t = Tensor::from_vec(flat, (bank.len(), width), &Device::Cpu)?.t()?.contiguous()?;
    let mut out = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(BATCH) {
        let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
        let q = Tensor::from_vec(flat, (chunk.len(), width), &Device::Cpu)?;
        let similarities: Vec<Vec<f32>> = q.matmul(&bank_t)?.to_vec2()?;
        for mut row in similarities {
            // The k-th largest similarity is the k-th nearest neighbour.
            let (_, kth, _) = row.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let distance = (2.0 - 2.0 * *kth as f64).max(0.0).sqrt();
            out.push(-distance);
        }
    }
    Ok(out)
}

impl ScoreMethod for Knn {
    fn parameters(&self, _params: &MethodParams) -> String {
        format!("k = {K}")
    }
    fn name(&self) -> &'static str {
        "knn"
    }

    fn needs_features_fit(&self) -> bool {
        true
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let bank = &input.features_fit_for("knn")?.normalised;
        let queries: Vec<Vec<f32>> = input.pass.features.iter().map(|h| unit(h)).collect();
        knn_scores(&queries, bank, K)
    }
}
