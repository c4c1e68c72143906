//! What the outlier-exposure stages (`oe`, `energy-oe`, `poem`) share (docs/methods.md §6): their common
//! parameters, the two outlier terms, and the fine-tuning loop that concatenates each ID batch
//! with an outlier batch in one forward pass (batch norm sees both), with the ID term plain
//! cross-entropy or, given ζ, the UM loss ("OE+UM").
use crate::data::{ImageSet, Split};
use crate::error::StageError;
use crate::models::{Mode, Network, Parameters};
use crate::stage::RunContext;
use crate::training::constraint::resolve_zeta;
use crate::training::fine_tuning::FineTuneSetup;
use crate::training::fit::{batch, fit, load_model_and_data, Fit, FitConfig, Side, SideRecord, StepOutput};
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
/// optimisation fields with docs/methods.md §6's defaults (10 epochs, lr 0.01); and an `outlier_setup()`
/// method for its [`crate::training::fine_tuning::FineTuning`] implementation.
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
            /// The fine-tuning fields, outliers included.
            fn outlier_setup(&self) -> $crate::training::fine_tuning::FineTuneSetup<'_> {
                $crate::training::fine_tuning::FineTuneSetup {
                    model: &self.model,
                    data: &self.data,
                    constraint: &self.constraint,
                    zeta: self.zeta,
                    zeta_use: $crate::training::fine_tuning::ZetaUse::Optional,
                    outliers: Some($crate::training::fine_tuning::OutlierSetup {
                        aux: &self.aux,
                        aux_batch_size: self.aux_batch_size,
                        pool_size: self.pool_size,
                    }),
                }
            }
        }
    };
}
pub(crate) use outlier_stage;

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
    /// What the choice carries from epoch to epoch (its random stream, POEM's memory).
    fn record(&self) -> SideRecord;
    /// Puts back what [`OutlierChoice::record`] returned.
    fn restore(&mut self, record: &SideRecord) -> Result<(), StageError>;
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

    fn record(&self) -> SideRecord {
        SideRecord {
            streams: [("outliers".to_string(), self.rng.get_word_pos())].into(),
            ..Default::default()
        }
    }

    fn restore(&mut self, record: &SideRecord) -> Result<(), StageError> {
        let position = record.streams.get("outliers").copied();
        self.rng.set_word_pos(
            position.ok_or_else(|| StageError::Internal("resume state: no `outliers` stream".into()))?,
        );
        Ok(())
    }
}

/// Fine-tunes the model of `setup` on ID batches joined with outlier batches.
pub fn fine_tune_with_outliers(
    ctx: &RunContext,
    setup: &FineTuneSetup,
    config: &FitConfig,
    term: OutlierTerm,
    choice: &mut dyn OutlierChoice,
    label: &'static str,
) -> Result<(), StageError> {
    let zeta = match (setup.constraint, setup.zeta) {
        (None, None) => None,
        (constraint, zeta) => Some(resolve_zeta(ctx, constraint, zeta)?),
    };
    let outliers = setup
        .outliers
        .as_ref()
        .ok_or_else(|| StageError::Internal("fine-tuning with outliers needs an auxiliary set".into()))?;
    let (spec, values, id) = load_model_and_data(ctx, setup.model, setup.data)?;
    let aux = ctx.dataset(outliers.aux)?.load(Split::Train)?;
    if aux.shape != spec.input_shape {
        return Err(StageError::Unsuitable(format!(
            "auxiliary set `{}` has images of shape {:?}, the model takes {:?}",
            outliers.aux, aux.shape, spec.input_shape
        )));
    }
    let aux_batch = outliers.aux_batch_size.unwrap_or(config.batch_size);
    let mut pool_rng = crate::math::rng::derive(ctx.seed, "outlier-pool");
    let mut pool: Vec<usize> = (0..aux.len()).collect();
    pool.shuffle(&mut pool_rng);
    pool.truncate(outliers.pool_size.unwrap_or(aux.len()));
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
    let crop_rng = RefCell::new(crate::math::rng::derive(ctx.seed, "outlier-crop"));
    let choice = RefCell::new(choice);
    // What a resumed run needs beside the weights: the crop stream and the choice's state (the
    // epoch's outliers are chosen again at its start, from the restored state).
    let record = || {
        let mut record = choice.borrow().record();
        record.streams.insert("outlier-crop".to_string(), crop_rng.borrow().get_word_pos());
        record
    };
    let restore_side = |record: &SideRecord| {
        let crop = record.streams.get("outlier-crop").copied();
        crop_rng.borrow_mut().set_word_pos(
            crop.ok_or_else(|| StageError::Internal("resume state: no `outlier-crop` stream".into()))?,
        );
        choice.borrow_mut().restore(record)
    };
    fit(
        ctx,
        &id,
        config,
        Fit {
            spec: &spec,
            vars: params.trainable_vars(),
            before_epoch: &mut |epoch| {
                let candidates = Candidates { pool: &pool, net: &net, id: &id, aux: &aux };
                let outliers = choice.borrow_mut().choose(epoch, per_epoch, &candidates, ctx)?;
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
                let (outliers, _) =
                    batch(&aux, &indices, config.crop_padding, &mut crop_rng.borrow_mut(), ctx.device)?;
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
            trained: &|| params.values(),
            restore: Some(&|values| params.restore(values)),
            side: Some(Side { record: &record, restore: &restore_side }),
            label,
        },
    )
}
