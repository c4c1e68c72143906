//! What every training stage shares (`train`, `um`, `umap`): the optimisation fields of their
//! parameters (docs/methods.md §1 defaults), and [`fit`], the epoch loop that shuffles, augments, steps the
//! optimiser, stops on a non-finite loss, and writes checkpoints and history.
//!
//! Outputs of [`fit`]: `model.json`, `checkpoints/epoch-NNNN.safetensors` every
//! `checkpoint_every` epochs and at the end, `checkpoints.json` (the kept epochs) and
//! `history.json` (learning rate, loss and accuracy per epoch; no timings, so identical runs give
//! identical bytes).
use crate::data::{ImageSet, Split};
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::models::checkpoints::{CheckpointIndex, ModelFiles};
use crate::models::{Forward, Mode, ModelSpec, SavedModel};
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::training::optim::{Sgd, SgdConfig};
use crate::training::resume;
use crate::training::schedule::Schedule;
use crate::transfer::{read_scalar, read_vec1, upload};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One epoch's record in `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub accuracy: f64,
}

pub fn default_epochs() -> usize {
    100
}
pub fn default_batch_size() -> usize {
    64
}
pub fn default_lr() -> f64 {
    0.1
}
pub fn default_momentum() -> f64 {
    0.9
}
pub fn default_weight_decay() -> f64 {
    1e-4
}
pub fn default_true() -> bool {
    true
}
pub fn default_schedule() -> Schedule {
    Schedule::Cosine
}

/// Declares a stage's parameter struct with the optimisation fields every training stage has
/// (`epochs`, `batch_size`, `lr`, `momentum`, `weight_decay`, `nesterov`, `schedule`,
/// `crop_padding`, `checkpoint_every`, with docs/methods.md §1's defaults, or other defaults for `epochs`
/// and `lr` given as `defaults(epochs = "path", lr = "path");`) after its own fields, and a
/// `fit_config()` method that collects them.
macro_rules! training_stage {
    ($(#[$meta:meta])* pub struct $($rest:tt)*) => {
        $crate::training::fit::training_stage! {
            defaults(epochs = "crate::training::fit::default_epochs", lr = "crate::training::fit::default_lr");
            $(#[$meta])* pub struct $($rest)*
        }
    };
    (defaults(epochs = $epochs:literal, lr = $lr:literal);
     $(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            #[serde(default = $epochs)]
            pub epochs: usize,
            #[serde(default = "crate::training::fit::default_batch_size")]
            pub batch_size: usize,
            #[serde(default = $lr)]
            pub lr: f64,
            #[serde(default = "crate::training::fit::default_momentum")]
            pub momentum: f64,
            #[serde(default = "crate::training::fit::default_weight_decay")]
            pub weight_decay: f64,
            #[serde(default = "crate::training::fit::default_true")]
            pub nesterov: bool,
            #[serde(default = "crate::training::fit::default_schedule")]
            pub schedule: $crate::training::schedule::Schedule,
            /// Random crop with this much zero padding (0: no augmentation).
            #[serde(default)]
            pub crop_padding: usize,
            /// Keep a checkpoint every this many epochs (0: only the last).
            #[serde(default)]
            pub checkpoint_every: usize,
        }

        impl $name {
            pub fn fit_config(&self) -> $crate::training::fit::FitConfig {
                $crate::training::fit::FitConfig {
                    epochs: self.epochs,
                    batch_size: self.batch_size,
                    sgd: $crate::training::optim::SgdConfig {
                        lr: self.lr,
                        momentum: self.momentum,
                        weight_decay: self.weight_decay,
                        nesterov: self.nesterov,
                    },
                    schedule: self.schedule,
                    crop_padding: self.crop_padding,
                    checkpoint_every: self.checkpoint_every,
                }
            }
        }
    };
}
pub(crate) use training_stage;

/// The optimisation settings of a training stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub sgd: SgdConfig,
    pub schedule: Schedule,
    pub crop_padding: usize,
    pub checkpoint_every: usize,
}

impl FitConfig {
    /// A training pass over `data`'s train split, `epochs` times, with the model from `model`.
    pub fn workload(
        &self,
        model: crate::estimate::workload::ModelSource,
        data: &str,
        images_factor: f64,
    ) -> crate::estimate::workload::Workload {
        crate::estimate::workload::Workload {
            model,
            reads: vec![(data.to_string(), crate::data::Split::Train)],
            passes: crate::estimate::workload::Passes::Fixed(self.epochs),
            checkpoints_kept: Some(if self.checkpoint_every == 0 {
                1
            } else {
                self.epochs.div_ceil(self.checkpoint_every)
            }),
            images_factor,
            training: true,
            batch_size: self.batch_size,
        }
    }

    /// Range checks of the shared fields.
    pub fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        for (field, ok) in [("epochs", self.epochs > 0), ("lr", self.sgd.lr > 0.0)] {
            if !ok {
                problems.push(ParamError::new(&[field], "must be greater than 0"));
            }
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) {
            problems.push(ParamError::new(&["momentum"], "must be in [0, 1)"));
        }
        if self.sgd.weight_decay < 0.0 {
            problems.push(ParamError::new(&["weight_decay"], "must not be negative"));
        }
        problems
    }
}

/// What one training step computed.
pub struct StepOutput {
    pub loss: Tensor,
    /// Logits of the ID batch (for the training accuracy).
    pub logits: Tensor,
}

impl StepOutput {
    /// A step whose loss is computed from the ID logits alone.
    pub fn from_forward(
        out: Forward,
        labels: &Tensor,
        loss: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor, StageError>,
    ) -> Result<StepOutput, StageError> {
        Ok(StepOutput { loss: loss(&out.logits, labels)?, logits: out.logits })
    }
}

/// Puts back the tensors a training job's `trained` returned.
pub type Restore<'a> = dyn Fn(&BTreeMap<String, Tensor>) -> Result<(), StageError> + 'a;

/// A stage's own state outside its tensors, at an epoch's end: its random streams' positions
/// and whatever else it carries from epoch to epoch (POEM's ring buffer and log), as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideRecord {
    pub streams: BTreeMap<String, u128>,
    pub values: serde_json::Value,
}

/// How [`fit`] records and puts back a stage's [`SideRecord`].
pub struct Side<'a> {
    pub record: &'a dyn Fn() -> SideRecord,
    pub restore: &'a dyn Fn(&SideRecord) -> Result<(), StageError>,
}

/// Stream names of a side record inside the resume state's streams.
const SIDE_STREAM: &str = "side.";

/// What [`fit`] trains and how.
pub struct Fit<'a> {
    /// Written as `model.json`.
    pub spec: &'a ModelSpec,
    /// What the optimiser updates.
    pub vars: Vec<Var>,
    /// Called before each epoch with its 0-based index (e.g. to choose its outliers).
    pub before_epoch: &'a mut dyn FnMut(usize) -> Result<(), StageError>,
    /// One step: from a batch of ID images and labels, the loss to minimise and the ID logits.
    pub step: &'a mut dyn FnMut(&Tensor, &Tensor, &mut Mode) -> Result<StepOutput, StageError>,
    /// The tensors a checkpoint holds.
    pub snapshot: &'a dyn Fn() -> Result<BTreeMap<String, Tensor>, StageError>,
    /// The tensors training changes (weights or scores, batch-norm statistics), checked to be
    /// finite after every step; cheaper than a snapshot where that derives tensors (UMAP's masks).
    pub trained: &'a dyn Fn() -> BTreeMap<String, Tensor>,
    /// Puts back what `trained` returned, to continue a killed run from its last finished
    /// epoch ([`crate::training::resume`]); `None` for a stage whose state is not all in
    /// `trained` (it starts over).
    pub restore: Option<&'a Restore<'a>>,
    /// The stage's state outside `trained`, for resuming; `None` when it has none.
    pub side: Option<Side<'a>>,
    /// Prefix of progress lines (`train`, `um`, `umap`).
    pub label: &'static str,
}

/// Trains for `config.epochs` epochs on `data`, writing checkpoints and history to the stage's
/// output folder.
pub fn fit(ctx: &RunContext, data: &ImageSet, config: &FitConfig, job: Fit) -> Result<(), StageError> {
    let files = ModelFiles::in_dir(ctx.out_dir);
    job.spec.write(&files.spec())?;
    let checkpoints = files.checkpoint_dir();
    std::fs::create_dir_all(&checkpoints).map_err(StageError::io("cannot create", &checkpoints))?;
    let mut sgd = Sgd::new(job.vars, config.sgd);
    let mut shuffle_rng = crate::math::rng::derive(ctx.seed, "shuffle");
    let (mut history, mut kept): (Vec<EpochRecord>, Vec<usize>) = (Vec::new(), Vec::new());
    let resume_dir = ctx.resume_dir.filter(|_| job.restore.is_some());
    let device_class = crate::device::class(ctx.device);
    let mut first_epoch = 0;
    if let (Some(dir), Some(restore)) = (resume_dir, job.restore) {
        match resume::load(dir, ctx.device) {
            Ok(Some((state, copies)))
                if state.epochs_total == config.epochs && state.epochs_done < config.epochs =>
            {
                restore(&state.trained)?;
                sgd.set_buffers(state.momentum)?;
                shuffle_rng.set_word_pos(state.streams.get("shuffle").copied().unwrap_or(0));
                if let Some(side) = &job.side {
                    let streams = state
                        .streams
                        .iter()
                        .filter_map(|(k, &v)| k.strip_prefix(SIDE_STREAM).map(|k| (k.to_string(), v)))
                        .collect();
                    (side.restore)(&SideRecord { streams, values: state.side.clone() })?;
                }
                history = serde_json::from_value(state.history)
                    .map_err(|e| StageError::Internal(format!("resume history: {e}")))?;
                kept = state.kept;
                for copy in copies {
                    let name = copy.file_name().expect("a checkpoint file");
                    std::fs::copy(&copy, checkpoints.join(name))
                        .map_err(StageError::io("cannot copy", &copy))?;
                }
                first_epoch = state.epochs_done;
                if let Some(earlier) = state.device_class.as_ref().filter(|&earlier| *earlier != device_class)
                {
                    ctx.progress.info(&format!(
                        "{}: the interrupted run computed on {}, this one on {}: results differ in the last bits from an uninterrupted run",
                        job.label,
                        earlier.line(),
                        device_class.line()
                    ));
                }
                ctx.progress.info(&format!(
                    "{}: resuming after epoch {}/{} (an earlier run was interrupted)",
                    job.label, first_epoch, config.epochs
                ));
            }
            Ok(_) => {}
            Err(why) => ctx
                .progress
                .info(&format!("{}: starting over; the resume state is unusable: {why}", job.label)),
        }
    }
    for epoch in first_epoch..config.epochs {
        (job.before_epoch)(epoch)?;
        let lr = config.schedule.lr(config.sgd.lr, epoch, config.epochs);
        sgd.set_lr(lr);
        let started = std::time::Instant::now();
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut shuffle_rng);
        let batches = order.len().div_ceil(config.batch_size);
        let bar =
            ctx.progress.bar(&format!("epoch {}/{}", epoch + 1, config.epochs), batches as u64, "batches");
        let mut totals = EpochTotals::new(ctx.device)?;
        for (b, chunk) in order.chunks(config.batch_size).enumerate() {
            let (images, labels) = batch(data, chunk, config.crop_padding, &mut shuffle_rng, ctx.device)?;
            let out = (job.step)(&images, &labels, &mut Mode::train(ctx.seed, epoch, b))?;
            sgd.step(&out.loss.backward()?)?;
            let place = (epoch + 1, b + 1);
            totals.add(&out, &labels, chunk.len())?;
            totals.check(&out.loss, &(job.trained)(), place)?;
            bar.inc(1);
            if b % 10 == 0 {
                let seen = (b + 1) * config.batch_size;
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(&format!(
                    "loss {:.4} · {rate:.0} img/s",
                    totals.loss_sum / seen.min(data.len()) as f64
                ));
            }
        }
        let (loss_sum, correct) = (totals.loss_sum, totals.correct);
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / data.len() as f64,
            accuracy: correct / data.len() as f64,
        };
        bar.finish(&format!(
            "{} epoch {}/{}: lr {lr:.4} · loss {:.4} · acc {:.2}% · {:.0} img/s",
            job.label,
            epoch + 1,
            config.epochs,
            record.loss,
            100.0 * record.accuracy,
            data.len() as f64 / started.elapsed().as_secs_f64().max(1e-9)
        ));
        history.push(record);
        let done = epoch + 1;
        if done == config.epochs || (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) {
            crate::models::save_weights(&(job.snapshot)()?, &files.checkpoint(done))?;
            kept.push(done);
        }
        if let (Some(dir), true) = (resume_dir, done < config.epochs) {
            let side = job.side.as_ref().map(|side| (side.record)()).unwrap_or_default();
            let mut streams = BTreeMap::from([("shuffle".to_string(), shuffle_rng.get_word_pos())]);
            streams.extend(side.streams.into_iter().map(|(k, v)| (format!("{SIDE_STREAM}{k}"), v)));
            let state = resume::State {
                epochs_done: done,
                epochs_total: config.epochs,
                history: serde_json::to_value(&history).expect("history serialises"),
                kept: kept.clone(),
                streams,
                trained: (job.trained)(),
                momentum: sgd.buffers(),
                side: side.values,
                device_class: Some(device_class.clone()),
            };
            resume::save(dir, &state, ctx.out_dir)?;
        }
    }
    write_json(&files.checkpoint_index(), &CheckpointIndex { epochs: kept })?;
    write_json(&ctx.out_dir.join("history.json"), &history)
}

/// What an epoch has summed so far, kept on the device, and the one read per step that brings
/// it to the host together with the finiteness check of everything the step changed.
struct EpochTotals {
    /// Σ loss·batch size and the count of correct predictions, as f64 device scalars.
    loss_on_device: Tensor,
    correct_on_device: Tensor,
    /// Their values at the last check.
    loss_sum: f64,
    correct: f64,
}

impl EpochTotals {
    fn new(device: &Device) -> Result<EpochTotals, StageError> {
        let zero = Tensor::zeros((), DType::F64, device)?;
        Ok(EpochTotals { loss_on_device: zero.clone(), correct_on_device: zero, loss_sum: 0.0, correct: 0.0 })
    }

    /// Adds a step's loss (times its batch size, in f64) and its correct predictions.
    fn add(&mut self, out: &StepOutput, labels: &Tensor, batch: usize) -> Result<(), StageError> {
        let loss = out.loss.detach().to_dtype(DType::F64)?.affine(batch as f64, 0.0)?;
        self.loss_on_device = (&self.loss_on_device + loss)?;
        let correct = out.logits.argmax(D::Minus1)?.eq(labels)?.to_dtype(DType::F64)?.sum_all()?;
        self.correct_on_device = (&self.correct_on_device + correct)?;
        Ok(())
    }

    /// One read: whether the loss and every tensor of `trained` are finite, with the totals.
    /// Only when something is not does it look further, to name it.
    fn check(
        &mut self,
        loss: &Tensor,
        trained: &BTreeMap<String, Tensor>,
        (epoch, batch): (usize, usize),
    ) -> Result<(), StageError> {
        let residues =
            std::iter::once(loss).chain(trained.values()).map(residue).collect::<Result<Vec<_>, _>>()?;
        let residue = Tensor::stack(&residues, 0)?.sum_all()?;
        let read = Tensor::stack(&[&residue, &self.loss_on_device, &self.correct_on_device], 0)?;
        let values: Vec<f64> = read_vec1(&read)?;
        (self.loss_sum, self.correct) = (values[1], values[2]);
        if values[0] == 0.0 {
            return Ok(());
        }
        let value = read_scalar::<f64>(&loss.to_dtype(DType::F64)?)?;
        if !value.is_finite() {
            return Err(StageError::NonFinite { value, epoch, batch });
        }
        match first_non_finite(trained)? {
            Some(parameter) => Err(StageError::NonFiniteParameter { parameter, epoch, batch }),
            None => Err(StageError::Internal(format!(
                "the finiteness check failed at epoch {epoch}, batch {batch}, but no tensor is non-finite"
            ))),
        }
    }
}

/// x − x summed, in f64: 0 for every finite x and NaN otherwise, so the sum is 0 exactly when
/// all are finite (a sum of the values themselves could overflow on finite ones).
fn residue(value: &Tensor) -> Result<Tensor, StageError> {
    Ok(value.sub(value)?.sum_all()?.to_dtype(DType::F64)?)
}

/// The name of the first tensor of `values` holding a NaN or an infinity, if any (one read per
/// tensor: for naming a tensor once a check has failed).
pub fn first_non_finite(values: &BTreeMap<String, Tensor>) -> Result<Option<String>, StageError> {
    for (name, value) in values {
        if read_scalar::<f64>(&residue(value)?)? != 0.0 {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// The references of a stage that starts from the model of stage `model` and its training
/// data `data`.
pub fn model_and_data_inputs(model: &str, data: &str) -> Vec<Input> {
    vec![Input::stage(&["model"], model, Artifact::Model), Input::dataset(&["data"], data)]
}

/// What a stage that starts from a trained model loads: the model's description, the weights
/// it computes with, and the train split of `data`, checked to fit the model.
pub fn load_model_and_data(
    ctx: &RunContext,
    model: &str,
    data: &str,
) -> Result<(ModelSpec, BTreeMap<String, Tensor>, ImageSet), StageError> {
    let (spec, values) = SavedModel::in_dir(ctx.stage_dir(model)?)?.load_effective(ctx.device)?;
    let set = ctx.dataset(data)?.load(Split::Train)?;
    if set.num_classes != spec.num_classes || set.shape != spec.input_shape {
        return Err(StageError::Unsuitable(format!(
            "dataset `{data}` ({} classes, images {:?}) does not fit the model of `{model}` ({} classes, images {:?})",
            set.num_classes, set.shape, spec.num_classes, spec.input_shape
        )));
    }
    Ok((spec, values, set))
}

/// The training features of a trained model, for the stages that fit statistics to them
/// (`mahalanobis-fit`, `feature-fit`): the model's files, its training set, and the penultimate
/// features of that set in evaluation mode.
pub fn training_features(
    ctx: &RunContext,
    model: &str,
    data: &str,
    batch_size: usize,
) -> Result<(SavedModel, ImageSet, Vec<Vec<f32>>), StageError> {
    let (spec, values, set) = load_model_and_data(ctx, model, data)?;
    let saved = SavedModel::in_dir(ctx.stage_dir(model)?)?;
    let net =
        crate::models::Network::new(&spec, &crate::models::Parameters::frozen(&spec, values)?, ctx.device)?;
    let features = crate::models::evaluation::forward_all(ctx, &net, &set, batch_size, "features")?.features;
    Ok((saved, set, features))
}

/// Gathers the images `indices` into a batch tensor, with an optional random crop of the
/// zero-padded image (a shift by up to `padding` pixels in each direction).
pub fn batch(
    data: &ImageSet,
    indices: &[usize],
    padding: usize,
    rng: &mut crate::math::rng::Rng,
    device: &Device,
) -> Result<(Tensor, Tensor), StageError> {
    let labels: Vec<u32> = indices.iter().map(|&i| data.labels[i]).collect();
    let labels = upload(labels, indices.len(), device)?;
    if padding == 0 {
        return Ok((data.gather(indices, device)?, labels));
    }
    let [c, h, w] = data.shape;
    let mut pixels = Vec::with_capacity(indices.len() * data.image_size());
    for &i in indices {
        let image = data.image(i);
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
    Ok((upload(pixels, (indices.len(), c, h, w), device)?, labels))
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
        let mut rng = crate::math::rng::derive(0, "crop");
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

    #[test]
    fn non_finite_values_are_found_even_where_a_sum_would_overflow() {
        let t = |v: Vec<f32>| Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
        let mut values = BTreeMap::new();
        values.insert("a".to_string(), t(vec![f32::MAX, f32::MAX, -1.0]));
        assert_eq!(first_non_finite(&values).unwrap(), None, "huge but finite");
        values.insert("b".to_string(), t(vec![0.0, f32::INFINITY]));
        values.insert("c".to_string(), t(vec![f32::NAN]));
        assert_eq!(first_non_finite(&values).unwrap().as_deref(), Some("b"));
    }
}
