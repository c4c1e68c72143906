//! `oe`: outlier exposure (SPEC §6): fine-tunes a trained model with
//! CE_in + λ·(cross-entropy of the outlier logits to the uniform distribution), outliers drawn
//! at random from the auxiliary set every epoch. With `constraint` or `zeta` the ID term is the
//! UM loss ("OE+UM"). Outputs as `train`.
use crate::error::ParamError;
use crate::error::StageError;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::losses::OutlierTerm;
use crate::training::outliers::{fine_tune_with_outliers, RandomOutliers};
use serde::{Deserialize, Serialize};

fn default_lambda() -> f64 {
    0.5
}

crate::training::outliers::outlier_stage! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Oe {
        #[serde(default = "default_lambda")]
        pub lambda: f64,
    }
}

impl StageParams for Oe {
    const KIND: &'static str = "oe";
    const VERSION: u32 = 2;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    fn inputs(&self) -> Vec<Input> {
        self.setup().inputs()
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = self.fit_config().check();
        problems.extend(self.setup().check());
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            problems.push(ParamError::new(&["lambda"], "must be a finite number ≥ 0"));
        }
        problems
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(self.setup().model_source())
    }

    fn workload(&self) -> Option<crate::estimate::workload::Workload> {
        Some(self.setup().workload(&self.fit_config()))
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let mut choice = RandomOutliers { rng: crate::math::rng::derive(ctx.seed, "outliers") };
        let term = OutlierTerm::Uniform { lambda: self.lambda };
        fine_tune_with_outliers(ctx, &self.setup(), &self.fit_config(), term, &mut choice, "oe")
    }
}
