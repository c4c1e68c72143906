//! What the outlier-exposure stages (`oe`, `energy-oe`, `poem`) share (SPEC §6): their common
//! parameters, the two outlier terms, and the fine-tuning loop that concatenates each ID batch
//! with an outlier batch in one forward pass (batch norm sees both), with the ID term plain
//! cross-entropy or, given ζ, the UM loss ("OE+UM").
use crate::constraint::{check_zeta_source, fine_tuning_inputs, resolve_zeta, um_loss};
use crate::data::{ImageSet, Split};
use crate::fit::{batch, fit, load_model_and_data, Fit, FitConfig, StepOutput};
use crate::models::{Mode, Network, Parameters};
use crate::train::cross_entropy;
use crate::{Input, ParamError, RunContext, StageError};
use candle_core::{Tensor, D};
use rand::seq::SliceRandom;
use std::cell::RefCell;

pub fn default_epochs() -> usize {
    10
}
pub fn default_lr() -> f64 {
    0.01
}

/// The outlier term added to the ID term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutlierTerm {
    /// λ·mean_out[logsumexp f − mean_c f]: cross-entropy of the outlier logits to uniform.
    Uniform { lambda: f64 },
    /// w·(mean_in relu(E − m_in)² + mean_out relu(m_out − E)²), E = −logsumexp f.
    Energy { weight: f64, m_in: f64, m_out: f64 },
}

/// mean over rows of logsumexp(f) − mean_c f: the cross-entropy of softmax(f) to the uniform
/// distribution (up to the constant log C).
pub fn uniform_cross_entropy(logits: &Tensor) -> Result<Tensor, StageError> {
    let lse = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    // −mean_c log_softmax = logsumexp − mean_c f.
    Ok(lse.mean(D::Minus1)?.neg()?.mean_all()?)
}

/// mean_in relu(E_in − m_in)² + mean_out relu(m_out − E_out)², with E = −logsumexp.
pub fn energy_margin_loss(
    id_logits: &Tensor,
    ood_logits: &Tensor,
    m_in: f64,
    m_out: f64,
) -> Result<Tensor, StageError> {
    let energy = |logits: &Tensor| -> Result<Tensor, StageError> {
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        Ok(lse.squeeze(D::Minus1)?.neg()?)
    };
    let id_term = (energy(id_logits)? - m_in)?.relu()?.sqr()?.mean_all()?;
    let ood_term = energy(ood_logits)?.neg()?.affine(1.0, m_out)?.relu()?.sqr()?.mean_all()?;
    Ok((id_term + ood_term)?)
}

impl OutlierTerm {
    pub fn loss(&self, id_logits: &Tensor, ood_logits: &Tensor) -> Result<Tensor, StageError> {
        match *self {
            OutlierTerm::Uniform { lambda } => Ok((uniform_cross_entropy(ood_logits)? * lambda)?),
            OutlierTerm::Energy { weight, m_in, m_out } => {
                Ok((energy_margin_loss(id_logits, ood_logits, m_in, m_out)? * weight)?)
            }
        }
    }
}

/// Declares an outlier-exposure stage's parameters: the fields every such stage has (`model`,
/// `data`, `aux`, `aux_batch_size`, `pool_size`, `constraint`, `zeta`), then its own, then the
/// optimisation fields with SPEC §6's defaults (10 epochs, lr 0.01); and a `setup()` method.
#[macro_export]
macro_rules! outlier_stage {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $crate::training_stage! {
            defaults(epochs = "crate::outliers::default_epochs", lr = "crate::outliers::default_lr");
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
            fn setup(&self) -> $crate::outliers::OutlierSetup<'_> {
                $crate::outliers::OutlierSetup {
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
    pub fn model_source(&self) -> crate::workload::ModelSource {
        crate::workload::ModelSource::Upstream(self.model.to_string())
    }

    /// Training passes over the ID data; each step also feeds its auxiliary batch.
    pub fn workload(&self, fit: &crate::fit::FitConfig) -> crate::workload::Workload {
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
    pub rng: crate::rng::Rng,
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
        return Err(StageError::Invalid(format!(
            "auxiliary set `{}` has images of shape {:?}, the model takes {:?}",
            setup.aux, aux.shape, spec.input_shape
        )));
    }
    let aux_batch = setup.aux_batch_size.unwrap_or(config.batch_size);
    let mut pool_rng = crate::rng::derive(ctx.seed, "outlier-pool");
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
    let mut crop_rng = crate::rng::derive(ctx.seed, "outlier-crop");
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn uniform_term_matches_hand_computed_values() {
        // Rows [0, 0, 0] (uniform: lse − mean = ln 3) and [2, 0, −2] (lse − 0).
        let logits = Tensor::new(&[[0f32, 0.0, 0.0], [2.0, 0.0, -2.0]], &Device::Cpu).unwrap();
        let lse2 = (2f64.exp() + 1.0 + (-2f64).exp()).ln();
        let expected = (3f64.ln() + lse2) / 2.0;
        let got = uniform_cross_entropy(&logits).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        let term =
            OutlierTerm::Uniform { lambda: 0.5 }.loss(&logits, &logits).unwrap().to_scalar::<f32>().unwrap();
        assert!((term as f64 - 0.5 * expected).abs() < 1e-6);
    }

    #[test]
    fn energy_term_is_zero_inside_the_margins_and_pushes_otherwise() {
        let dev = Device::Cpu;
        // ID energies below −25 (logits ≈ 30) and outlier energies above −7 (logits ≈ 0).
        let id = Tensor::new(&[[30f32, 0.0], [31.0, 1.0]], &dev).unwrap();
        let ood = Tensor::new(&[[0f32, 0.5], [1.0, -1.0]], &dev).unwrap();
        let zero = energy_margin_loss(&id, &ood, -25.0, -7.0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(zero, 0.0);
        // An ID sample with high energy (small logits): the gradient raises its logits
        // (lowers its energy); an outlier with low energy (large logits): lowered.
        let id_var = Var::new(&[[1f32, 0.0]], &dev).unwrap();
        let ood_var = Var::new(&[[20f32, 0.0]], &dev).unwrap();
        let loss = energy_margin_loss(id_var.as_tensor(), ood_var.as_tensor(), -25.0, -7.0).unwrap();
        let grads = loss.backward().unwrap();
        let g_id: Vec<f32> = grads.get(id_var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let g_ood: Vec<f32> =
            grads.get(ood_var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(g_id.iter().all(|&g| g < 0.0), "descent raises ID logits: {g_id:?}");
        assert!(g_ood[0] > 0.0, "descent lowers the outlier's top logit: {g_ood:?}");
        // relu(E − m_in)² with E = −logsumexp([1, 0]).
        let e = -((1f64).exp() + 1.0).ln();
        let e_out = -((20f64).exp() + 1.0).ln();
        let expected = (e + 25.0).powi(2) + (-7.0 - e_out).powi(2);
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-3);
    }
}
