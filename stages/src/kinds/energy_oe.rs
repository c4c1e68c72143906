//! `energy-oe`: energy-bounded fine-tuning with auxiliary outliers (docs/methods.md §6, "Energy w. D_aux"):
//! CE_in + w·(mean_in relu(E − m_in)² + mean_out relu(m_out − E)²), E = −logsumexp f, outliers
//! drawn at random every epoch. With `constraint` or `zeta` the ID term is the UM loss.
//! Outputs as `train`.
use crate::error::ParamError;
use crate::error::StageError;
use crate::stage::Artifact;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::fine_tuning::{FineTuneSetup, FineTuning};
use crate::training::fit::FitConfig;
use crate::training::losses::OutlierTerm;
use crate::training::losses::{check_energy, default_energy_weight, default_m_in, default_m_out};
use crate::training::outliers::{fine_tune_with_outliers, RandomOutliers};
use serde::{Deserialize, Serialize};

crate::training::outliers::outlier_stage! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EnergyOe {
        #[serde(default = "default_m_in")]
        pub m_in: f64,
        #[serde(default = "default_m_out")]
        pub m_out: f64,
        #[serde(default = "default_energy_weight")]
        pub energy_weight: f64,
    }
}

impl FineTuning for EnergyOe {
    fn setup(&self) -> FineTuneSetup<'_> {
        self.outlier_setup()
    }

    fn config(&self) -> FitConfig {
        self.fit_config()
    }

    fn own_check(&self) -> Vec<ParamError> {
        check_energy(self.m_in, self.m_out, self.energy_weight)
    }
}

impl StageParams for EnergyOe {
    const KIND: &'static str = "energy-oe";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    crate::training::fine_tuning::delegate_to_fine_tuning!();

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let mut choice = RandomOutliers { rng: crate::math::rng::derive(ctx.seed, "outliers") };
        let term = OutlierTerm::Energy { weight: self.energy_weight, m_in: self.m_in, m_out: self.m_out };
        fine_tune_with_outliers(
            ctx,
            &self.outlier_setup(),
            &self.fit_config(),
            term,
            &mut choice,
            "energy-oe",
        )
    }
}
