//! `energy-oe`: energy-bounded fine-tuning with auxiliary outliers (SPEC §6, "Energy w. D_aux"):
//! CE_in + w·(mean_in relu(E − m_in)² + mean_out relu(m_out − E)²), E = −logsumexp f, outliers
//! drawn at random every epoch. With `constraint` or `zeta` the ID term is the UM loss.
//! Outputs as `train`.
use crate::error::ParamError;
use crate::error::StageError;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::losses::OutlierTerm;
use crate::training::outliers::{fine_tune_with_outliers, RandomOutliers};
use serde::{Deserialize, Serialize};

pub fn default_m_in() -> f64 {
    -25.0
}
pub fn default_m_out() -> f64 {
    -7.0
}
pub fn default_energy_weight() -> f64 {
    0.1
}

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

/// Checks of the energy-bounded fields, shared with `poem`.
pub fn check_energy(m_in: f64, m_out: f64, weight: f64) -> Vec<ParamError> {
    let mut problems = Vec::new();
    if m_in.partial_cmp(&m_out) != Some(std::cmp::Ordering::Less) {
        problems.push(ParamError::new(
            &["m_out"],
            format!("must be above m_in ({m_in}): outliers get the higher energy"),
        ));
    }
    if !(weight.is_finite() && weight >= 0.0) {
        problems.push(ParamError::new(&["energy_weight"], "must be a finite number ≥ 0"));
    }
    problems
}

impl StageParams for EnergyOe {
    const KIND: &'static str = "energy-oe";
    const VERSION: u32 = 2;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    fn inputs(&self) -> Vec<Input> {
        self.setup().inputs()
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = self.fit_config().check();
        problems.extend(self.setup().check());
        problems.extend(check_energy(self.m_in, self.m_out, self.energy_weight));
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
        let term = OutlierTerm::Energy { weight: self.energy_weight, m_in: self.m_in, m_out: self.m_out };
        fine_tune_with_outliers(ctx, &self.setup(), &self.fit_config(), term, &mut choice, "energy-oe")
    }
}
