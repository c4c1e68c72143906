//! `estimate-loss-constraint`: ζ, the mean training cross-entropy of the model with a seeded
//! random mask that keeps the fraction δ of each masked layer's weights (docs/methods.md §3). The model runs
//! in evaluation mode on the training set, augmented as in training; `draws` averages over
//! independent masks. Outputs `constraint.json` ([`ConstraintFile`]).
use crate::data::ImageSet;
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::metrics::mean_std;
use crate::models::{Mode, ModelSpec, Network, Parameters};
use crate::scores::softmax::logsumexp;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::constraint::{AtypicalSample, ConstraintFile};
use crate::training::fit::{batch, load_model_and_data, model_and_data_inputs};
use crate::training::masks::{masked_layers, random_mask};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn default_delta() -> f64 {
    0.975
}
/// The most masks ζ may be averaged over: each is a full evaluation pass over the training set,
/// so 10^12 of them would never end.
const MAX_DRAWS: usize = 10_000;

fn default_draws() -> usize {
    1
}
fn default_batch_size() -> usize {
    256
}
fn default_atypical() -> usize {
    100
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateLossConstraint {
    /// The trained model to mask.
    pub model: String,
    /// Its training data (the train split is evaluated).
    pub data: String,
    /// Fraction of each layer's weights kept.
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Independent masks to average ζ over.
    #[serde(default = "default_draws")]
    pub draws: usize,
    /// Evaluate only the first N batches.
    #[serde(default)]
    pub batches: Option<usize>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The augmentation used in training (random crop with this padding).
    #[serde(default)]
    pub crop_padding: usize,
    /// How many of the samples whose loss the mask raises most to list.
    #[serde(default = "default_atypical")]
    pub atypical: usize,
}

impl StageParams for EstimateLossConstraint {
    const KIND: &'static str = "estimate-loss-constraint";
    const VERSION: u32 = 2;
    const PRODUCES: &'static [Artifact] = &[Artifact::Constraint];

    fn inputs(&self) -> Vec<Input> {
        model_and_data_inputs(&self.model, &self.data)
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if !(self.delta > 0.0 && self.delta <= 1.0) {
            problems.push(ParamError::new(&["delta"], "must be in (0, 1]: the fraction of weights kept"));
        }
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        if self.draws > MAX_DRAWS {
            problems.push(ParamError::new(
                &["draws"],
                format!(
                    "{} masks is more than the most this accepts, {MAX_DRAWS} (each one is a pass over the \
                     training set; the paper uses one)",
                    self.draws
                ),
            ));
        }
        for (field, ok) in [("draws", self.draws > 0), ("batches", self.batches != Some(0))] {
            if !ok {
                problems.push(ParamError::new(&[field], "must be greater than 0"));
            }
        }
        problems
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.model.clone()))
    }

    fn reads(&self) -> Vec<(String, crate::data::Split)> {
        vec![(self.data.clone(), crate::data::Split::Train)]
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let (spec, values, data) = load_model_and_data(ctx, &self.model, &self.data)?;
        let unmasked = self.per_sample_loss(ctx, &spec, values.clone(), &data, "unmasked")?;
        let layers = masked_layers(&spec)?;
        let mut zetas = Vec::new();
        let mut accuracies = Vec::new();
        let mut masked_loss_sum = vec![0.0; unmasked.losses.len()];
        let mut kept_fraction = BTreeMap::new();
        for draw in 0..self.draws {
            let mut rng = crate::math::rng::derive(ctx.seed, &format!("mask-{draw}"));
            let mut masked = values.clone();
            for layer in &layers {
                let weight = &values[&layer.name];
                let n = weight.elem_count();
                let mask = random_mask(n, self.delta, &mut rng);
                if draw == 0 {
                    let kept = mask.iter().filter(|&&m| m == 1.0).count();
                    kept_fraction.insert(layer.name.clone(), kept as f64 / n as f64);
                }
                let mask = Tensor::from_vec(mask, weight.shape(), ctx.device)?;
                masked.insert(layer.name.clone(), weight.mul(&mask)?);
            }
            let result = self.per_sample_loss(
                ctx,
                &spec,
                masked,
                &data,
                &format!("mask {}/{}", draw + 1, self.draws),
            )?;
            zetas.push(result.mean_loss());
            accuracies.push(result.accuracy());
            for (sum, loss) in masked_loss_sum.iter_mut().zip(&result.losses) {
                *sum += loss;
            }
        }
        let (zeta, zeta_std) = mean_std(&zetas);
        ctx.progress
            .info(&format!("ζ = {zeta:.4} (δ = {}, {} draw(s), std {zeta_std:.4})", self.delta, self.draws));
        let mut atypical: Vec<AtypicalSample> = unmasked
            .indices
            .iter()
            .enumerate()
            .map(|(k, &index)| AtypicalSample {
                index,
                label: data.labels[index],
                loss_unmasked: unmasked.losses[k],
                loss_masked: masked_loss_sum[k] / self.draws as f64,
            })
            .collect();
        atypical.sort_by(|a, b| {
            (b.loss_masked - b.loss_unmasked)
                .total_cmp(&(a.loss_masked - a.loss_unmasked))
                .then(a.index.cmp(&b.index))
        });
        atypical.truncate(self.atypical);
        let file = ConstraintFile {
            zeta,
            zeta_draws: zetas,
            zeta_std,
            delta: self.delta,
            kept_fraction,
            masked_accuracy: accuracies.iter().sum::<f64>() / accuracies.len() as f64,
            unmasked_accuracy: unmasked.accuracy(),
            unmasked_loss: unmasked.mean_loss(),
            samples: unmasked.losses.len(),
            atypical,
        };
        write_json(&ctx.out_dir.join(ConstraintFile::FILE), &file)
    }
}

/// Per-sample cross-entropy and correctness over (a prefix of) the training set.
struct SampleLosses {
    indices: Vec<usize>,
    losses: Vec<f64>,
    correct: usize,
}

impl SampleLosses {
    fn mean_loss(&self) -> f64 {
        self.losses.iter().sum::<f64>() / self.losses.len() as f64
    }
    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.losses.len() as f64
    }
}

impl EstimateLossConstraint {
    /// Runs the model with `values` in evaluation mode; every pass draws the same augmentation.
    fn per_sample_loss(
        &self,
        ctx: &RunContext,
        spec: &ModelSpec,
        values: BTreeMap<String, Tensor>,
        data: &ImageSet,
        label: &str,
    ) -> Result<SampleLosses, StageError> {
        let net = Network::new(spec, &Parameters::frozen(spec, values)?, ctx.device)?;
        let all: Vec<usize> = (0..data.len()).collect();
        let batches: Vec<&[usize]> =
            all.chunks(self.batch_size).take(self.batches.unwrap_or(usize::MAX)).collect();
        let mut augment = crate::math::rng::derive(ctx.seed, "augment");
        let bar = ctx.progress.bar(label, batches.len() as u64, "batches");
        let mut out = SampleLosses { indices: Vec::new(), losses: Vec::new(), correct: 0 };
        for chunk in batches {
            let (images, _) = batch(data, chunk, self.crop_padding, &mut augment, ctx.device)?;
            let logits = net.forward(&images, &mut Mode::Eval)?.logits.to_vec2::<f32>()?;
            for (row, &i) in logits.iter().zip(chunk) {
                let label = data.labels[i] as usize;
                out.losses.push(logsumexp(row) - row[label] as f64);
                let best = row.iter().enumerate().fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
                out.correct += usize::from(best == label);
                out.indices.push(i);
            }
            bar.inc(1);
        }
        bar.finish("");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::data::{DatasetSpec, IdxSpec};
    use crate::models::save_weights;
    use crate::progress::NoProgress;
    use candle_core::Device;

    /// Runs the stage on a 3-class 8×8 fixture and a freshly initialised small CNN.
    fn run(delta: f64, draws: usize) -> (ConstraintFile, f64) {
        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let labels: Vec<u8> = (0..40).map(|i| (i % 3) as u8).collect();
        for prefix in ["train", "t10k"] {
            crate::data::idx::write_idx_fixture(&data_dir, prefix, &labels, 8, false, |i, p| {
                ((i * 37 + p * 11) % 256) as u8
            });
        }
        let spec = crate::models::spec::tiny_spec();
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir_all(&model_dir).unwrap();
        let files = crate::models::ModelFiles::in_dir(&model_dir);
        spec.write(&files.spec()).unwrap();
        save_weights(&values, &files.weights()).unwrap();
        // The independent reference: batch-mean CE of the whole set in one batch, via candle.
        let dataset = DatasetSpec::Idx(IdxSpec {
            root: data_dir,
            classes: None,
            limit: None,
            skip: None,
            train_files: None,
            test_files: None,
        });
        let set = dataset.load(Split::Train).unwrap();
        let net = Network::new(&spec, &Parameters::frozen(&spec, values).unwrap(), &dev).unwrap();
        let images = Tensor::from_vec(set.pixels.clone(), (set.len(), 1, 8, 8), &dev).unwrap();
        let logits = net.forward(&images, &mut Mode::Eval).unwrap().logits;
        let targets = Tensor::from_vec(set.labels.clone(), set.len(), &dev).unwrap();
        let reference =
            candle_nn::loss::cross_entropy(&logits, &targets).unwrap().to_scalar::<f32>().unwrap() as f64;

        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let upstream = BTreeMap::from([("m".to_string(), vec![model_dir])]);
        let datasets = BTreeMap::from([("d".to_string(), dataset)]);
        let ctx = RunContext {
            out_dir: &out,
            seed: 5,
            upstream: &upstream,
            upstream_tags: &BTreeMap::new(),
            resume_dir: None,
            datasets: &datasets,
            device: &dev,
            progress: &NoProgress,
        };
        let stage = EstimateLossConstraint {
            model: "m".into(),
            data: "d".into(),
            delta,
            draws,
            batches: None,
            batch_size: 16,
            crop_padding: 0,
            atypical: 5,
        };
        stage.run(&ctx).unwrap();
        (ConstraintFile::read(&out).unwrap(), reference)
    }

    #[test]
    fn with_delta_one_zeta_is_the_unmasked_training_loss() {
        let (file, reference) = run(1.0, 1);
        assert!((file.zeta - reference).abs() < 1e-5, "ζ {} vs CE {reference}", file.zeta);
        assert!((file.unmasked_loss - reference).abs() < 1e-5);
        assert!(file.kept_fraction.values().all(|&f| f == 1.0));
        assert_eq!(file.samples, 40);
    }

    #[test]
    fn masking_reports_fractions_draws_and_atypical_samples() {
        let (file, _) = run(0.5, 3);
        assert_eq!(file.zeta_draws.len(), 3);
        let mean = file.zeta_draws.iter().sum::<f64>() / 3.0;
        assert!((file.zeta - mean).abs() < 1e-12);
        // conv1 has 4·1·9 = 36 weights: ⌊0.5·36⌋ = 18 zeroed.
        assert_eq!(file.kept_fraction["conv1.weight"], 0.5);
        // conv2: 8·4·9 = 288 weights, 144 kept; fc: 3·8 = 24, 12 kept. Nothing else is masked.
        assert_eq!(file.kept_fraction["conv2.weight"], 0.5);
        assert_eq!(file.kept_fraction["fc.weight"], 0.5);
        assert_eq!(file.kept_fraction.len(), 3, "two convs and the linear weight; no bias, no batch norm");
        assert_eq!(file.atypical.len(), 5);
        let rise = |a: &AtypicalSample| a.loss_masked - a.loss_unmasked;
        assert!(file.atypical.windows(2).all(|w| rise(&w[0]) >= rise(&w[1])));
    }
}
