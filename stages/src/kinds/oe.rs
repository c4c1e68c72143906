//! `oe`: outlier exposure (docs/methods.md §6): fine-tunes a trained model with
//! CE_in + λ·(cross-entropy of the outlier logits to the uniform distribution), outliers drawn
//! at random from the auxiliary set every epoch. With `constraint` or `zeta` the ID term is the
//! UM loss ("OE+UM"). Outputs as `train`.
use crate::error::ParamError;
use crate::error::StageError;
use crate::stage::Artifact;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::fine_tuning::{FineTuneSetup, FineTuning};
use crate::training::fit::FitConfig;
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

impl FineTuning for Oe {
    fn setup(&self) -> FineTuneSetup<'_> {
        self.outlier_setup()
    }

    fn config(&self) -> FitConfig {
        self.fit_config()
    }

    fn own_check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            problems.push(ParamError::new(&["lambda"], "must be a finite number ≥ 0"));
        }
        problems
    }
}

impl StageParams for Oe {
    const KIND: &'static str = "oe";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    crate::training::fine_tuning::delegate_to_fine_tuning!();

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let mut choice = RandomOutliers { rng: crate::math::rng::derive(ctx.seed, "outliers") };
        let term = OutlierTerm::Uniform { lambda: self.lambda };
        fine_tune_with_outliers(ctx, &self.outlier_setup(), &self.fit_config(), term, &mut choice, "oe")
    }
}
