//! `mahalanobis-fit`: the class-conditional Gaussian the Mahalanobis score needs, fitted once
//! per model on its training set (penultimate features, evaluation mode) and cached as its own
//! artifact. Outputs `gaussian.json` ([`GaussianFit`] and the digest of the model it was fitted
//! on, so a score stage cannot pair it with another model).
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::models::checkpoints::model_digest;
use crate::scores::gaussian::GaussianFile;
use crate::scores::gaussian::GaussianFit;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::fit::{model_and_data_inputs, training_features};
use serde::{Deserialize, Serialize};

fn default_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MahalanobisFit {
    /// The model whose features to fit.
    pub model: String,
    /// Its training data (train split).
    pub data: String,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

impl StageParams for MahalanobisFit {
    const KIND: &'static str = "mahalanobis-fit";
    const VERSION: u32 = 2;
    const PRODUCES: &'static [Artifact] = &[Artifact::Gaussian];

    fn inputs(&self) -> Vec<Input> {
        model_and_data_inputs(&self.model, &self.data)
    }

    fn check(&self) -> Vec<ParamError> {
        ParamError::batch_size("batch_size", self.batch_size).into_iter().collect()
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.model.clone()))
    }

    fn reads(&self) -> Vec<(String, crate::data::Split)> {
        vec![(self.data.clone(), crate::data::Split::Train)]
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let (saved, data, rows) = training_features(ctx, &self.model, &self.data, self.batch_size)?;
        let fit = GaussianFit::fit(&rows, &data.labels, data.num_classes).map_err(StageError::Unsuitable)?;
        if fit.ridge > 0.0 {
            ctx.progress
                .info(&format!("singular feature covariance: added {:.3e} to its diagonal", fit.ridge));
        }
        write_json(
            &ctx.out_dir.join(GaussianFile::FILE),
            &GaussianFile { model_digest: model_digest(&saved)?, fit },
        )
    }
}
