//! `oe`: outlier exposure (SPEC §6): fine-tunes a trained model with
//! CE_in + λ·(cross-entropy of the outlier logits to the uniform distribution), outliers drawn
//! at random from the auxiliary set every epoch. With `constraint` or `zeta` the ID term is the
//! UM loss ("OE+UM"). Outputs as `train`.
use crate::outliers::{fine_tune_with_outliers, OutlierSetup, OutlierTerm, RandomOutliers};
use crate::{Artifact, Input, ParamError, RunContext, StageError, StageParams};
use serde::{Deserialize, Serialize};

fn default_lambda() -> f64 {
    0.5
}

crate::training_stage! {
    defaults(epochs = "crate::outliers::default_epochs", lr = "crate::outliers::default_lr");
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Oe {
        /// The trained model to fine-tune.
        pub model: String,
        /// The ID training data (its train split).
        pub data: String,
        /// The auxiliary outliers (their train split), disjoint from the OOD test sets.
        pub aux: String,
        /// Outliers per step (default: `batch_size`).
        #[serde(default)]
        pub aux_batch_size: Option<usize>,
        /// Use only this many auxiliary images (a seeded random subset).
        #[serde(default)]
        pub pool_size: Option<usize>,
        /// An `estimate-loss-constraint` stage: the ID term becomes the UM loss.
        #[serde(default)]
        pub constraint: Option<String>,
        #[serde(default)]
        pub zeta: Option<f64>,
        #[serde(default = "default_lambda")]
        pub lambda: f64,
    }
}

impl Oe {
    fn setup(&self) -> OutlierSetup<'_> {
        OutlierSetup {
            model: &self.model,
            data: &self.data,
            aux: &self.aux,
            aux_batch_size: self.aux_batch_size,
            pool_size: self.pool_size,
            constraint: &self.constraint,
            zeta: self.zeta,
        }
    }
}

impl StageParams for Oe {
    const KIND: &'static str = "oe";
    const VERSION: u32 = 1;
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

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let mut choice = RandomOutliers { rng: crate::rng::derive(ctx.seed, "outliers") };
        let term = OutlierTerm::Uniform { lambda: self.lambda };
        fine_tune_with_outliers(ctx, &self.setup(), &self.fit_config(), term, &mut choice, "oe")
    }
}
