//! `train`: trains a classifier from scratch (SPEC §1) and keeps checkpoints.
//!
//! Outputs: `model.json`, `checkpoints/epoch-NNNN.safetensors` every `checkpoint_every` epochs
//! and at the end, `checkpoints.json` (the list of kept epochs) and `history.json` (learning
//! rate, loss and accuracy per epoch).
use crate::data::{ImageSet, Split};
use crate::models::{Architecture, Mode, ModelSpec, Network, Parameters};
use crate::optim::{Sgd, SgdConfig};
use crate::schedule::Schedule;
use crate::{Artifact, Input, ParamError, RunContext, StageError, StageParams};
use candle_core::{Device, Tensor, D};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CHECKPOINT_INDEX: &str = "checkpoints.json";

/// Relative path of the checkpoint of `epoch` (1-based: the state after that many epochs).
pub fn checkpoint_file(epoch: usize) -> PathBuf {
    PathBuf::from(format!("checkpoints/epoch-{epoch:04}.safetensors"))
}

/// The epochs a training stage kept, in increasing order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointIndex {
    pub epochs: Vec<usize>,
}

impl CheckpointIndex {
    pub fn read(dir: &Path) -> Result<CheckpointIndex, StageError> {
        let path = dir.join(CHECKPOINT_INDEX);
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read checkpoint index", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }
}

/// The architectures `train` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    SmallCnn,
}

fn default_model() -> ModelName {
    ModelName::SmallCnn
}
fn default_widths() -> Vec<usize> {
    vec![32, 64, 128]
}
fn default_strides() -> Vec<usize> {
    vec![1, 2, 2]
}
fn default_epochs() -> usize {
    100
}
fn default_batch_size() -> usize {
    64
}
fn default_lr() -> f64 {
    0.1
}
fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_true() -> bool {
    true
}
fn default_schedule() -> Schedule {
    Schedule::Cosine
}
fn default_dropout() -> f64 {
    0.3
}

/// Parameters of `train`; every field has SPEC §1's default except `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// The dataset to train on (its train split).
    pub data: String,
    #[serde(default = "default_model")]
    pub model: ModelName,
    /// small-cnn: output channels of each conv block.
    #[serde(default = "default_widths")]
    pub widths: Vec<usize>,
    /// small-cnn: stride of each conv block.
    #[serde(default = "default_strides")]
    pub strides: Vec<usize>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_true")]
    pub nesterov: bool,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub affine_bn: bool,
    /// Random crop with this much zero padding (0: no augmentation).
    #[serde(default)]
    pub crop_padding: usize,
    /// Keep a checkpoint every this many epochs (0: only the last).
    #[serde(default)]
    pub checkpoint_every: usize,
}

/// One epoch's record in `history.json`. No timings: outputs must be a function of the
/// inputs alone, so identical runs give byte-identical artifacts (timings go to the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub accuracy: f64,
}

impl StageParams for Train {
    const KIND: &'static str = "train";
    const VERSION: u32 = 1;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    fn inputs(&self) -> Vec<Input> {
        vec![Input::dataset(&["data"], &self.data)]
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        let mut positive = |field: &str, ok: bool| {
            if !ok {
                problems.push(ParamError::new(&[field], "must be greater than 0"));
            }
        };
        positive("epochs", self.epochs > 0);
        positive("batch_size", self.batch_size > 0);
        positive("lr", self.lr > 0.0);
        if !(0.0..1.0).contains(&self.dropout) {
            problems.push(ParamError::new(&["dropout"], "must be in [0, 1)"));
        }
        if self.widths.is_empty() || self.widths.contains(&0) {
            problems.push(ParamError::new(&["widths"], "needs at least one width, each at least 1"));
        }
        if self.strides.len() != self.widths.len() || self.strides.contains(&0) {
            problems.push(ParamError::new(
                &["strides"],
                format!("needs one stride (at least 1) per width: {} widths", self.widths.len()),
            ));
        }
        problems
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let data = ctx.dataset(&self.data)?.load(Split::Train)?;
        if data.num_classes < 2 {
            return Err(StageError::Invalid(format!("dataset `{}` has fewer than two classes", self.data)));
        }
        let (mean, std) = data.channel_stats();
        let spec = ModelSpec {
            architecture: match self.model {
                ModelName::SmallCnn => {
                    Architecture::SmallCnn { widths: self.widths.clone(), strides: self.strides.clone() }
                }
            },
            input_shape: data.shape,
            num_classes: data.num_classes,
            dropout: self.dropout,
            affine_bn: self.affine_bn,
            mean,
            std,
        };
        spec.write(&ctx.out_dir.join("model.json"))?;
        let initial = spec.initialise(&mut crate::rng::derive(ctx.seed, "init"), ctx.device)?;
        let params = Parameters::trainable(&spec, initial)?;
        let net = Network::new(&spec, &params, ctx.device)?;
        let config = SgdConfig {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        };
        let mut sgd = Sgd::new(params.trainable_vars(), config);
        let loop_config =
            EpochLoop { batch_size: self.batch_size, crop_padding: self.crop_padding, label: "train" };
        let mut shuffle_rng = crate::rng::derive(ctx.seed, "shuffle");
        let mut dropout_rng = crate::rng::derive(ctx.seed, "dropout");
        std::fs::create_dir_all(ctx.out_dir.join("checkpoints"))
            .map_err(StageError::io("cannot create", ctx.out_dir.join("checkpoints")))?;
        let mut history = Vec::new();
        let mut kept = Vec::new();
        for epoch in 0..self.epochs {
            let lr = self.schedule.lr(self.lr, epoch, self.epochs);
            sgd.set_lr(lr);
            let record = loop_config.run_epoch(
                ctx,
                &net,
                &data,
                epoch,
                self.epochs,
                lr,
                &mut shuffle_rng,
                &mut dropout_rng,
                &mut |logits, labels| {
                    candle_nn::loss::cross_entropy(logits, labels)
                        .map_err(StageError::tensor("cross-entropy failed"))
                },
                &mut sgd,
            )?;
            history.push(record);
            let done = epoch + 1;
            if done == self.epochs || (self.checkpoint_every > 0 && done % self.checkpoint_every == 0) {
                params.save(&ctx.out_dir.join(checkpoint_file(done)))?;
                kept.push(done);
            }
        }
        write_json(&ctx.out_dir.join(CHECKPOINT_INDEX), &CheckpointIndex { epochs: kept })?;
        write_json(&ctx.out_dir.join("history.json"), &history)
    }
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StageError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
}

/// The mini-batch loop shared by the stages that train: shuffles, augments, runs the forward in
/// training mode, takes one optimiser step per batch, reports progress, and stops on a
/// non-finite loss.
pub struct EpochLoop {
    pub batch_size: usize,
    pub crop_padding: usize,
    pub label: &'static str,
}

impl EpochLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn run_epoch(
        &self,
        ctx: &RunContext,
        net: &Network,
        data: &ImageSet,
        epoch: usize,
        epochs: usize,
        lr: f64,
        shuffle_rng: &mut crate::rng::Rng,
        dropout_rng: &mut crate::rng::Rng,
        loss_fn: &mut dyn FnMut(&Tensor, &Tensor) -> Result<Tensor, StageError>,
        sgd: &mut Sgd,
    ) -> Result<EpochRecord, StageError> {
        let started = std::time::Instant::now();
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(shuffle_rng);
        let batches = order.len().div_ceil(self.batch_size);
        let bar = ctx.progress.bar(&format!("epoch {}/{epochs}", epoch + 1), batches as u64, "batch");
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for (b, chunk) in order.chunks(self.batch_size).enumerate() {
            let (images, labels) = batch(data, chunk, self.crop_padding, shuffle_rng, ctx.device)?;
            let out = net.forward(&images, &mut Mode::Train { rng: dropout_rng })?;
            let loss = loss_fn(&out.logits, &labels)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(StageError::NonFinite { value, epoch: epoch + 1, batch: b + 1 });
            }
            sgd.step(&loss.backward()?)?;
            let predicted: Vec<u32> = out.logits.argmax(D::Minus1)?.to_vec1()?;
            let truth: Vec<u32> = labels.to_vec1()?;
            correct += predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
            loss_sum += value * chunk.len() as f64;
            seen += chunk.len();
            bar.inc(1);
            if b % 10 == 0 {
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(&format!("loss {:.4} · {rate:.0} img/s", loss_sum / seen as f64));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
        };
        bar.finish(&format!(
            "{} epoch {}/{epochs}: lr {lr:.4} · loss {:.4} · acc {:.2}% · {:.0} img/s",
            self.label,
            epoch + 1,
            record.loss,
            100.0 * record.accuracy,
            seen as f64 / seconds.max(1e-9)
        ));
        Ok(record)
    }
}

/// Gathers the images `indices` into a batch tensor, with an optional random crop of the
/// zero-padded image (a shift by up to `padding` pixels in each direction).
pub fn batch(
    data: &ImageSet,
    indices: &[usize],
    padding: usize,
    rng: &mut crate::rng::Rng,
    device: &Device,
) -> Result<(Tensor, Tensor), StageError> {
    let [c, h, w] = data.shape;
    let mut pixels = Vec::with_capacity(indices.len() * data.image_size());
    for &i in indices {
        let image = data.image(i);
        if padding == 0 {
            pixels.extend_from_slice(image);
            continue;
        }
        let p = padding as i64;
        let dy = rng.random_range(-p..=p) as isize;
        let dx = rng.random_range(-p..=p) as isize;
        for ch in 0..c {
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let (sy, sx) = (y + dy, x + dx);
                    let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                    pixels.push(if inside { image[ch * h * w + sy as usize * w + sx as usize] } else { 0.0 });
                }
            }
        }
    }
    let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
    Ok((
        Tensor::from_vec(pixels, (indices.len(), c, h, w), device)?,
        Tensor::from_vec(labels, indices.len(), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_shifts_within_padding_and_keeps_pixels() {
        let data = ImageSet {
            pixels: (1..=9).map(|v| v as f32).collect(),
            labels: vec![0],
            shape: [1, 3, 3],
            num_classes: 1,
        };
        let mut rng = crate::rng::derive(0, "crop");
        for _ in 0..20 {
            let (x, _) = batch(&data, &[0], 1, &mut rng, &Device::Cpu).unwrap();
            let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            // A shift by at most one pixel keeps the centre value 5 somewhere and zero-fills.
            assert!(v.contains(&5.0));
            assert!(v.iter().all(|&p| p == 0.0 || (1.0..=9.0).contains(&p)));
        }
        let (x, _) = batch(&data, &[0], 0, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), data.pixels);
    }
}
