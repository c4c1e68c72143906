//! `feature-fit`: the ID training statistics the post-hoc scores `react` and `knn` need, computed
//! once per model from its training set (penultimate features, evaluation mode) and cached as
//! their own artifact: `features.npy` (the features, float32 rows) and `feature_fit.json`
//! ([`FeatureFitFile`]: ReAct's threshold and the model's digest).
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::formats::npy;
use crate::models::checkpoints::model_digest;
use crate::scores::feature_bank::{percentile, FeatureFitFile};
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::fit::{model_and_data_inputs, training_features};
use serde::{Deserialize, Serialize};

fn default_batch_size() -> usize {
    256
}
fn default_react_percentile() -> f64 {
    90.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFit {
    /// The model whose features to fit.
    pub model: String,
    /// Its training data (train split).
    pub data: String,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// ReAct clips activations at this percentile of the training activations (its paper: 90).
    #[serde(default = "default_react_percentile")]
    pub react_percentile: f64,
}

impl StageParams for FeatureFit {
    const KIND: &'static str = "feature-fit";
    const VERSION: u32 = 1;
    const PRODUCES: &'static [Artifact] = &[Artifact::Features];

    fn inputs(&self) -> Vec<Input> {
        model_and_data_inputs(&self.model, &self.data)
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        if !(0.0..=100.0).contains(&self.react_percentile) {
            problems.push(ParamError::new(&["react_percentile"], "must be in [0, 100]"));
        }
        problems
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.model.clone()))
    }

    fn reads(&self) -> Vec<(String, crate::data::Split)> {
        vec![(self.data.clone(), crate::data::Split::Train)]
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let (saved, _, features) = training_features(ctx, &self.model, &self.data, self.batch_size)?;
        let all: Vec<f64> = features.iter().flatten().map(|&v| v as f64).collect();
        let threshold = percentile(&all, self.react_percentile);
        ctx.progress.info(&format!(
            "{} training features; ReAct threshold (p{}) {threshold:.4}",
            features.len(),
            self.react_percentile
        ));
        npy::write_f32_rows(&ctx.out_dir.join(FeatureFitFile::FEATURES), &features)?;
        write_json(
            &ctx.out_dir.join(FeatureFitFile::FILE),
            &FeatureFitFile {
                model_digest: model_digest(&saved)?,
                count: features.len(),
                width: features.first().map_or(0, Vec::len),
                react_percentile: self.react_percentile,
                react_threshold: threshold,
            },
        )
    }
}
