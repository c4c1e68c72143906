//! `umap`: Unleashing-Mask Adopted Pruning (docs/methods.md §5). The model's weights stay frozen; each
//! masked layer gets learnable scores s (seeded, uniform ±1/√fan_in), and every forward keeps
//! the top fraction `keep` of |s| per layer, computing with W ⊙ m. The scores learn through the
//! straight-through estimator m + |s| − detach(|s|) under the UM loss; batch-norm statistics
//! update as in training. Outputs as `train`, with `model.json` marking weight masks and each
//! checkpoint holding the untouched weights, the statistics and the binary masks
//! (`mask.<layer>`); `scores.safetensors` holds the final scores and `masks.json` the kept
//! fraction per layer.
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::models::kernels::top_fraction::TopFraction;
use crate::models::{Forward, Hold, Mode, ModelSpec, Network, ParamDef, Parameters, Role};
use crate::stage::Artifact;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::constraint::resolve_zeta;
use crate::training::fine_tuning::{FineTuneSetup, FineTuning};
use crate::training::fit::{fit, load_model_and_data, Fit, FitConfig, StepOutput};
use crate::training::losses::cross_entropy;
use crate::training::losses::um_loss;
use crate::training::masks::masked_layers;
use crate::transfer::{read_scalar, upload};
use candle_core::{Device, Tensor, Var};
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn default_keep() -> f64 {
    0.8
}

crate::training::fit::training_stage! {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Umap {
        /// The trained model to mask.
        pub model: String,
        /// The training data (its train split).
        pub data: String,
        #[serde(default)]
        pub constraint: Option<String>,
        #[serde(default)]
        pub zeta: Option<f64>,
        /// Fraction p of each layer's weights kept (by largest |score|).
        #[serde(default = "default_keep")]
        pub keep: f64,
    }
}

impl FineTuning for Umap {
    fn setup(&self) -> FineTuneSetup<'_> {
        FineTuneSetup::um_objective(&self.model, &self.data, &self.constraint, self.zeta)
    }

    fn config(&self) -> FitConfig {
        self.fit_config()
    }

    fn own_check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            problems.push(ParamError::new(&["keep"], "must be in (0, 1]"));
        }
        problems
    }
}

impl StageParams for Umap {
    const KIND: &'static str = "umap";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    crate::training::fine_tuning::delegate_to_fine_tuning!();

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let zeta = resolve_zeta(ctx, &self.constraint, self.zeta)?;
        let (spec, values, data) = load_model_and_data(ctx, &self.model, &self.data)?;
        ctx.progress.info(&format!(
            "learning masks keeping {:.0}% of each layer with ζ = {zeta:.4}",
            100.0 * self.keep
        ));
        let masked = MaskedModel::new(
            &spec,
            values,
            self.keep,
            &mut crate::math::rng::derive(ctx.seed, "scores"),
            ctx.device,
        )?;
        let saved_spec = ModelSpec { weight_masks: true, ..spec.clone() };
        fit(
            ctx,
            &data,
            &self.fit_config(),
            Fit {
                spec: &saved_spec,
                vars: masked.scores.values().cloned().collect(),
                before_epoch: &mut |_| Ok(()),
                step: &mut |images, labels, mode| {
                    StepOutput::from_forward(masked.forward(images, mode)?, labels, |logits, labels| {
                        um_loss(&cross_entropy(logits, labels)?, zeta)
                    })
                },
                snapshot: &|| masked.snapshot(),
                trained: &|| masked.trained_values(),
                restore: Some(&|values| masked.restore(values)),
                side: None,
                label: "umap",
            },
        )?;
        let scores: BTreeMap<String, Tensor> =
            masked.scores.iter().map(|(name, s)| (format!("score.{name}"), s.as_tensor().detach())).collect();
        crate::models::save_weights(&scores, &ctx.out_dir.join("scores.safetensors"))?;
        write_json(&ctx.out_dir.join("masks.json"), &masked.kept_fractions()?)
    }
}

/// A model whose masked layers compute with W ⊙ m, m the top fraction of learnable scores.
pub struct MaskedModel {
    spec: ModelSpec,
    params: Parameters,
    layers: Vec<ParamDef>,
    pub scores: BTreeMap<String, Var>,
    keep: f64,
    device: Device,
}

impl MaskedModel {
    /// Freezes `values` (batch-norm statistics stay updatable) and draws the scores.
    pub fn new(
        spec: &ModelSpec,
        values: BTreeMap<String, Tensor>,
        keep: f64,
        rng: &mut crate::math::rng::Rng,
        device: &Device,
    ) -> Result<MaskedModel, StageError> {
        let params = Parameters::new(spec, values, |def| {
            if def.role == Role::NormStatistic {
                Hold::Buffer
            } else {
                Hold::Freeze
            }
        })?;
        let layers = masked_layers(spec)?;
        let mut scores = BTreeMap::new();
        for layer in &layers {
            let fan_in: usize = layer.shape[1..].iter().product();
            let bound = 1.0 / (fan_in as f32).sqrt();
            let uniform = Uniform::new(-bound, bound).expect("non-empty range");
            let n: usize = layer.shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| uniform.sample(rng)).collect();
            scores.insert(
                layer.name.clone(),
                Var::from_tensor(&upload(data, layer.shape.as_slice(), device)?)?,
            );
        }
        Ok(MaskedModel { spec: spec.clone(), params, layers, scores, keep, device: device.clone() })
    }

    /// The binary mask of one layer from its current scores, computed where they live.
    fn mask(&self, name: &str) -> Result<Tensor, StageError> {
        Ok(TopFraction { keep: self.keep }.mask(self.scores[name].as_tensor())?)
    }

    /// The forward pass with masked weights; gradients reach the scores straight through.
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        let mut derived = BTreeMap::new();
        for layer in &self.layers {
            let magnitude = self.scores[&layer.name].as_tensor().abs()?;
            let straight_through = (self.mask(&layer.name)? + (&magnitude - magnitude.detach())?)?;
            derived.insert(layer.name.clone(), self.params.get(&layer.name)?.mul(&straight_through)?);
        }
        let params = self.params.with_derived(derived)?;
        Network::new(&self.spec, &params, &self.device)?.forward(images, mode)
    }

    /// Untouched weights, current statistics, and the binary masks as `mask.<layer>`.
    /// What training changes: the batch-norm statistics (and the frozen weights) and the
    /// scores, named `score.<layer>`.
    pub fn trained_values(&self) -> BTreeMap<String, Tensor> {
        let mut values = self.params.values();
        values.extend(self.scores.iter().map(|(name, s)| (format!("score.{name}"), s.as_tensor().detach())));
        values
    }

    /// Puts back what [`MaskedModel::trained_values`] returned.
    pub fn restore(&self, values: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        let mut params = BTreeMap::new();
        for (name, value) in values {
            match name.strip_prefix("score.").and_then(|layer| self.scores.get(layer)) {
                Some(score) => score.set(value)?,
                None => {
                    params.insert(name.clone(), value.clone());
                }
            }
        }
        self.params.restore(&params)
    }

    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>, StageError> {
        let mut values = self.params.values();
        for layer in &self.layers {
            values.insert(format!("mask.{}", layer.name), self.mask(&layer.name)?);
        }
        Ok(values)
    }

    /// Fraction of each layer's weights the current masks keep.
    pub fn kept_fractions(&self) -> Result<BTreeMap<String, f64>, StageError> {
        self.layers
            .iter()
            .map(|layer| {
                let mask = self.mask(&layer.name)?;
                let kept = read_scalar::<f32>(&mask.sum_all()?)? as f64;
                Ok((layer.name.clone(), kept / mask.elem_count() as f64))
            })
            .collect()
    }

    pub fn parameters(&self) -> &Parameters {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::optim::{Sgd, SgdConfig};

    #[test]
    fn weights_stay_bit_identical_scores_learn_and_keep_p() {
        let dev = Device::Cpu;
        let spec = crate::models::spec::tiny_spec();
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let masked =
            MaskedModel::new(&spec, values.clone(), 0.8, &mut crate::math::rng::derive(0, "s"), &dev)
                .unwrap();
        let images = crate::math::rng::test_images(11, &[6, 1, 8, 8]);
        let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev).unwrap();
        let vars: Vec<Var> = masked.scores.values().cloned().collect();
        let before: Vec<Vec<f32>> =
            vars.iter().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        let mut sgd =
            Sgd::new(vars.clone(), SgdConfig { lr: 0.5, momentum: 0.9, weight_decay: 1e-4, nesterov: true });
        for step in 0..3 {
            let out = masked.forward(&images, &mut Mode::train(0, 0, step)).unwrap();
            let loss = um_loss(&cross_entropy(&out.logits, &labels).unwrap(), 0.1).unwrap();
            let grads = loss.backward().unwrap();
            for var in &vars {
                let g = grads.get(var.as_tensor()).expect("every score gets a gradient");
                let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(norm > 0.0, "zero gradient on a score tensor");
            }
            sgd.step(&grads).unwrap();
        }
        // Scores moved; every weight (and the linear bias) is bit-identical; statistics moved.
        let after: Vec<Vec<f32>> =
            vars.iter().map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect();
        assert_ne!(before, after);
        let now = masked.parameters().values();
        for def in spec.parameters().unwrap() {
            let a: Vec<f32> = values[&def.name].flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = now[&def.name].flatten_all().unwrap().to_vec1().unwrap();
            if def.role == Role::NormStatistic {
                assert_ne!(a, b, "{} should update in training mode", def.name);
            } else {
                assert_eq!(a, b, "{} must stay untouched", def.name);
            }
        }
        // Each layer keeps n − ⌊0.2 n⌋ weights.
        for (name, fraction) in masked.kept_fractions().unwrap() {
            let n = values[&name].elem_count();
            let expected = (n - crate::models::kernels::top_fraction::zeroed_count(n, 0.8)) as f64 / n as f64;
            assert_eq!(fraction, expected, "{name}");
        }
        // The saved snapshot reloads as the masked model.
        let dir = tempfile::tempdir().unwrap();
        let files = crate::models::ModelFiles::in_dir(dir.path());
        crate::models::save_weights(&masked.snapshot().unwrap(), &files.weights()).unwrap();
        ModelSpec { weight_masks: true, ..spec.clone() }.write(&files.spec()).unwrap();
        let saved = crate::models::SavedModel::in_dir(dir.path()).unwrap();
        let (loaded_spec, effective) = saved.load_effective(&dev).unwrap();
        assert!(!loaded_spec.weight_masks);
        let w: Vec<f32> = effective["conv1.weight"].flatten_all().unwrap().to_vec1().unwrap();
        let zeros = w.iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, crate::models::kernels::top_fraction::zeroed_count(w.len(), 0.8));
    }
}
