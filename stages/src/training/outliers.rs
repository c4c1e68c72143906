//! What the outlier-exposure stages (`oe`, `energy-oe`, `poem`) share (SPEC §6): their common
//! parameters, the two outlier terms, and the fine-tuning loop that concatenates each ID batch
//! with an outlier batch in one forward pass (batch norm sees both), with the ID term plain
//! cross-entropy or, given ζ, the UM loss ("OE+UM").
use crate::data::{ImageSet, Split};
use crate::error::ParamError;
use crate::error::StageError;
use crate::models::{Mode, Network, Parameters};
use crate::stage::Input;
use crate::stage::RunContext;
use crate::training::constraint::{check_zeta_source, fine_tuning_inputs, resolve_zeta};
use crate::training::fit::{batch, fit, load_model_and_data, Fit, FitConfig, StepOutput};
use crate::training::losses::cross_entropy;
use crate::training::losses::um_loss;
use crate::training::losses::OutlierTerm;
use candle_core::Tensor;
use rand::seq::SliceRandom;
use std::cell::RefCell;

pub fn default_epochs() -> usize {
    10
}
pub fn default_lr() -> f64 {
    0.01
}

/// Declares an outlier-exposure stage's parameters: the fields every such stage has (`model`,
/// `data`, `aux`, `aux_batch_size`, `pool_size`, `constraint`, `zeta`), then its own, then the
/// optimisation fields with SPEC §6's defaults (10 epochs, lr 0.01); and a `setup()` method.
macro_rules! outlier_stage {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $crate::training::fit::training_stage! {
            defaults(epochs = "crate::training::outliers::default_epochs", lr = "crate::training::outliers::default_lr");
            $(#[$meta])*
            pub struct $name {
                /// The trained model to fine-tune.
                pub model: String,
                /// The ID training data (its train split).
                pub data: String,
                /// The auxiliary outliers (their train split), disjoint from the OOD test sets.
                pub aux: String,
                /// Outliers per step (default: `batch_size`).
                #[serde(default)]
                pub aux_batch_size: Option<usize>,
                /// Draw outliers from only this many auxiliary images (a seeded random subset).
                #[serde(default)]
                pub pool_size: Option<usize>,
                /// An `estimate-loss-constraint` stage: the ID term becomes the UM loss.
                #[serde(default)]
                pub constraint: Option<String>,
                /// ζ written out instead (the UM loss with this constraint).
                #[serde(default)]
                pub zeta: Option<f64>,
                $($(#[$fmeta])* pub $field: $ty,)*
            }
        }

        impl $name {
            fn setup(&self) -> $crate::training::outliers::OutlierSetup<'_> {
                $crate::training::outliers::OutlierSetup {
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
    };
}
pub(crate) use outlier_stage;

/// The fields every outlier-exposure stage has besides the optimisation ones.
pub struct OutlierSetup<'a> {
    pub model: &'a str,
    pub data: &'a str,
    pub aux: &'a str,
    pub aux_batch_size: Option<usize>,
    pub pool_size: Option<usize>,
    pub constraint: &'a Option<String>,
    pub zeta: Option<f64>,
}

impl OutlierSetup<'_> {
    /// The model is the upstream one being fine-tuned.
    pub fn model_source(&self) -> crate::estimate::workload::ModelSource {
        crate::estimate::workload::ModelSource::Upstream(self.model.to_string())
    }

    /// Training passes over the ID data; each step also feeds its auxiliary batch.
    pub fn workload(&self, fit: &crate::training::fit::FitConfig) -> crate::estimate::workload::Workload {
        let per_id_image =
            1.0 + self.aux_batch_size.unwrap_or(fit.batch_size) as f64 / fit.batch_size.max(1) as f64;
        fit.workload(self.model_source(), self.data, per_id_image)
    }

    pub fn inputs(&self) -> Vec<Input> {
        let mut inputs = fine_tuning_inputs(self.model, self.data, self.constraint);
        inputs.push(Input::dataset(&["aux"], self.aux));
        inputs
    }

    pub fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if let Some(z) = self.zeta {
            if !(z.is_finite() && z >= 0.0) {
                problems.push(ParamError::new(&["zeta"], "must be a finite number ≥ 0"));
            }
        }
        if self.constraint.is_some() && self.zeta.is_some() {
            problems.extend(check_zeta_source(self.constraint, self.zeta));
        }
        for (field, value) in [("aux_batch_size", self.aux_batch_size), ("pool_size", self.pool_size)] {
            if value == Some(0) {
                problems.push(ParamError::new(&[field], "must be greater than 0"));
            }
        }
        if self.aux == self.data {
            problems
                .push(ParamError::new(&["aux"], "the auxiliary outliers must not be the ID training data"));
        }
        problems
    }
}

/// What an outlier choice may look at: the candidate pool (indices into `aux`), the model being
/// fine-tuned as it is now, and the ID training set.
pub struct Candidates<'a> {
    pub pool: &'a [usize],
    pub net: &'a Network,
    pub id: &'a ImageSet,
    pub aux: &'a ImageSet,
}

/// Chooses the outliers (indices into the auxiliary set) of each epoch.
pub trait OutlierChoice {
    /// `count` outliers for `epoch`, drawn from the pool.
    fn choose(
        &mut self,
        epoch: usize,
        count: usize,
        candidates: &Candidates,
        ctx: &RunContext,
    ) -> Result<Vec<usize>, StageError>;
}

/// Uniformly random outliers, reshuffled every epoch (OE, energy-bounded fine-tuning).
pub struct RandomOutliers {
    pub rng: crate::math::rng::Rng,
}

impl OutlierChoice for RandomOutliers {
    fn choose(
        &mut self,
        _epoch: usize,
        count: usize,
        candidates: &Candidates,
        _ctx: &RunContext,
    ) -> Result<Vec<usize>, StageError> {
        let mut chosen = Vec::with_capacity(count);
        while chosen.len() < count {
            let mut round = candidates.pool.to_vec();
            round.shuffle(&mut self.rng);
            chosen.extend(round.into_iter().take(count - chosen.len()));
        }
        Ok(chosen)
    }
}

/// Fine-tunes the model of `setup` on ID batches joined with outlier batches.
pub fn fine_tune_with_outliers(
    ctx: &RunContext,
    setup: &OutlierSetup,
    config: &FitConfig,
    term: OutlierTerm,
    choice: &mut dyn OutlierChoice,
    label: &'static str,
) -> Result<(), StageError> {
    let zeta = match (setup.constraint, setup.zeta) {
        (None, None) => None,
        (constraint, zeta) => Some(resolve_zeta(ctx, constraint, zeta)?),
    };
    let (spec, values, id) = load_model_and_data(ctx, setup.model, setup.data)?;
    let aux = ctx.dataset(setup.aux)?.load(Split::Train)?;
    if aux.shape != spec.input_shape {
        return Err(StageError::Unsuitable(format!(
            "auxiliary set `{}` has images of shape {:?}, the model takes {:?}",
            setup.aux, aux.shape, spec.input_shape
        )));
    }
    let aux_batch = setup.aux_batch_size.unwrap_or(config.batch_size);
    let mut pool_rng = crate::math::rng::derive(ctx.seed, "outlier-pool");
    let mut pool: Vec<usize> = (0..aux.len()).collect();
    pool.shuffle(&mut pool_rng);
    pool.truncate(setup.pool_size.unwrap_or(aux.len()));
    let per_epoch = id.len().div_ceil(config.batch_size) * aux_batch;
    ctx.progress.info(&format!(
        "{} ID + {per_epoch} outlier images per epoch from a pool of {}{}",
        id.len(),
        pool.len(),
        zeta.map(|z| format!(", UM loss with ζ = {z:.4}")).unwrap_or_default()
    ));
    let params = Parameters::trainable(&spec, values)?;
    let net = Network::new(&spec, &params, ctx.device)?;
    let chosen: RefCell<(Vec<usize>, usize)> = RefCell::new((Vec::new(), 0));
    let mut crop_rng = crate::math::rng::derive(ctx.seed, "outlier-crop");
    fit(
        ctx,
        &id,
        config,
        Fit {
            spec: &spec,
            vars: params.trainable_vars(),
            before_epoch: &mut |epoch| {
                let candidates = Candidates { pool: &pool, net: &net, id: &id, aux: &aux };
                let outliers = choice.choose(epoch, per_epoch, &candidates, ctx)?;
                *chosen.borrow_mut() = (outliers, 0);
                Ok(())
            },
            step: &mut |images, labels, mode: &mut Mode| {
                let indices = {
                    let mut state = chosen.borrow_mut();
                    let start = state.1 * aux_batch;
                    state.1 += 1;
                    state.0[start..start + aux_batch].to_vec()
                };
                let (outliers, _) = batch(&aux, &indices, config.crop_padding, &mut crop_rng, ctx.device)?;
                let n = images.dim(0)?;
                let joined = Tensor::cat(&[images, &outliers], 0)?;
                let logits = net.forward(&joined, mode)?.logits;
                let id_logits = logits.narrow(0, 0, n)?;
                let ood_logits = logits.narrow(0, n, indices.len())?;
                let ce = cross_entropy(&id_logits, labels)?;
                let id_term = match zeta {
                    Some(z) => um_loss(&ce, z)?,
                    None => ce,
                };
                let loss = (id_term + term.loss(&id_logits, &ood_logits)?)?;
                Ok(StepOutput { loss, logits: id_logits })
            },
            snapshot: &|| Ok(params.values()),
            label,
        },
    )
}
