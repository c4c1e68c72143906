//! `poem`: energy-bounded fine-tuning whose outliers are re-chosen every epoch by Thompson
//! sampling (docs/methods.md §6): a Bayesian linear regression on penultimate features (ID −3.9, outliers
//! +3.9), a draw β from its posterior, and the pool's candidates with the smallest |βᵀz|. The
//! regression sees the ID training features and the outliers chosen in the last four epochs (a
//! ring buffer that rotates). Outputs as `train`, plus `selection.json` (per epoch, how many
//! outliers the regression saw and the chosen candidates' mean |βᵀz|).
use crate::data::ImageSet;
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::models::{Mode, Network};
use crate::stage::Artifact;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::bayes::{closest_to_boundary, posterior, RingBuffer};
use crate::training::fine_tuning::{FineTuneSetup, FineTuning};
use crate::training::fit::{FitConfig, SideRecord};
use crate::training::losses::OutlierTerm;
use crate::training::losses::{check_energy, default_energy_weight, default_m_in, default_m_out};
use crate::training::outliers::{fine_tune_with_outliers, Candidates, OutlierChoice};
use serde::{Deserialize, Serialize};

fn default_target() -> f64 {
    3.9
}
fn default_noise() -> f64 {
    0.5
}
fn default_prior_variance() -> f64 {
    20.0
}
fn default_ring_epochs() -> usize {
    4
}

crate::training::outliers::outlier_stage! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Poem {
        #[serde(default = "default_m_in")]
        pub m_in: f64,
        #[serde(default = "default_m_out")]
        pub m_out: f64,
        #[serde(default = "default_energy_weight")]
        pub energy_weight: f64,
        /// Regression targets: −target for ID, +target for outliers.
        #[serde(default = "default_target")]
        pub target: f64,
        /// σ_n of the regression.
        #[serde(default = "default_noise")]
        pub noise: f64,
        /// σ, the prior variance of β.
        #[serde(default = "default_prior_variance")]
        pub prior_variance: f64,
        /// Epochs of chosen outliers the regression remembers.
        #[serde(default = "default_ring_epochs")]
        pub ring_epochs: usize,
    }
}

impl FineTuning for Poem {
    fn setup(&self) -> FineTuneSetup<'_> {
        self.outlier_setup()
    }

    fn config(&self) -> FitConfig {
        self.fit_config()
    }

    fn own_check(&self) -> Vec<ParamError> {
        let mut problems = check_energy(self.m_in, self.m_out, self.energy_weight);
        for (field, value) in
            [("noise", self.noise), ("prior_variance", self.prior_variance), ("target", self.target)]
        {
            if !(value.is_finite() && value > 0.0) {
                problems.push(ParamError::new(&[field], "must be a positive number"));
            }
        }
        if self.ring_epochs == 0 {
            problems.push(ParamError::new(&["ring_epochs"], "must be at least 1"));
        }
        problems
    }
}

impl StageParams for Poem {
    const KIND: &'static str = "poem";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    crate::training::fine_tuning::delegate_to_fine_tuning!();

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let mut choice = ThompsonOutliers {
            rng: crate::math::rng::derive(ctx.seed, "thompson"),
            ring: RingBuffer::new(self.ring_epochs),
            target: self.target,
            noise: self.noise,
            prior_variance: self.prior_variance,
            log: Vec::new(),
        };
        let term = OutlierTerm::Energy { weight: self.energy_weight, m_in: self.m_in, m_out: self.m_out };
        fine_tune_with_outliers(ctx, &self.outlier_setup(), &self.fit_config(), term, &mut choice, "poem")?;
        write_json(&ctx.out_dir.join("selection.json"), &choice.log)
    }
}

/// One epoch's selection, in `selection.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionRecord {
    pub epoch: usize,
    pub id_features: usize,
    pub remembered_outliers: usize,
    pub chosen: usize,
    pub mean_margin: f64,
}

/// Thompson sampling over the candidate pool.
struct ThompsonOutliers {
    rng: crate::math::rng::Rng,
    ring: RingBuffer,
    target: f64,
    noise: f64,
    prior_variance: f64,
    log: Vec<SelectionRecord>,
}

/// Penultimate features (evaluation mode) of `indices` of `set`, as f64 rows.
fn features(
    net: &Network,
    set: &ImageSet,
    indices: &[usize],
    ctx: &RunContext,
) -> Result<Vec<Vec<f64>>, StageError> {
    let mut rows = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(256) {
        let images = set.gather(chunk, ctx.device)?;
        let feats = net.forward(&images, &mut Mode::Eval)?.features;
        let feats = crate::transfer::read_vec2::<f32>(&feats)?;
        rows.extend(feats.into_iter().map(|r| r.into_iter().map(f64::from).collect::<Vec<f64>>()));
    }
    Ok(rows)
}

impl OutlierChoice for ThompsonOutliers {
    fn choose(
        &mut self,
        epoch: usize,
        count: usize,
        candidates: &Candidates,
        ctx: &RunContext,
    ) -> Result<Vec<usize>, StageError> {
        let Candidates { pool, net, id, aux } = *candidates;
        if pool.len() < count {
            return Err(StageError::Unsuitable(format!(
                "POEM chooses {count} outliers per epoch but the pool holds {} (raise pool_size or lower aux_batch_size)",
                pool.len()
            )));
        }
        let all_id: Vec<usize> = (0..id.len()).collect();
        let remembered = self.ring.items();
        let mut z = features(net, id, &all_id, ctx)?;
        let mut y = vec![-self.target; z.len()];
        z.extend(features(net, aux, &remembered, ctx)?);
        y.resize(z.len(), self.target);
        let posterior = posterior(&z, &y, self.noise, self.prior_variance).map_err(StageError::Unsuitable)?;
        let beta = posterior.sample(&mut self.rng);
        let candidates = features(net, aux, pool, ctx)?;
        let picked = closest_to_boundary(&beta, &candidates, count);
        let margin = |k: usize| candidates[k].iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>().abs();
        let mean_margin = picked.iter().map(|&k| margin(k)).sum::<f64>() / picked.len().max(1) as f64;
        let chosen: Vec<usize> = picked.into_iter().map(|k| pool[k]).collect();
        self.log.push(SelectionRecord {
            epoch: epoch + 1,
            id_features: id.len(),
            remembered_outliers: remembered.len(),
            chosen: chosen.len(),
            mean_margin,
        });
        self.ring.push(chosen.clone());
        Ok(chosen)
    }

    fn record(&self) -> SideRecord {
        SideRecord {
            streams: [("thompson".to_string(), self.rng.get_word_pos())].into(),
            values: serde_json::json!({ "ring": self.ring, "log": self.log }),
        }
    }

    fn restore(&mut self, record: &SideRecord) -> Result<(), StageError> {
        let broken = |what: &str| StageError::Internal(format!("POEM's resume state: {what}"));
        let position =
            record.streams.get("thompson").copied().ok_or_else(|| broken("no `thompson` stream"))?;
        let ring: RingBuffer = serde_json::from_value(record.values["ring"].clone())
            .map_err(|e| broken(&format!("ring buffer: {e}")))?;
        if ring.capacity() != self.ring.capacity() {
            return Err(broken("the ring buffer was recorded with another ring_epochs"));
        }
        self.log =
            serde_json::from_value(record.values["log"].clone()).map_err(|e| broken(&format!("log: {e}")))?;
        self.ring = ring;
        self.rng.set_word_pos(position);
        Ok(())
    }
}
