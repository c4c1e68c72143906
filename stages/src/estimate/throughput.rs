//! Throughput of a model on a device, in images per second: measured for duration estimates
//! ([`measure_throughput`]: a few training or evaluation steps on a random batch), kept by
//! configuration ([`throughput_key`], [`ThroughputTable`]: `throughput.json` in the cache
//! folder); and the training-step benchmark (`pipeline bench-train`), which times forward,
//! backward and an SGD update of a model on one fixed random batch, exactly as a training stage
//! computes them, so that bench/ can compare the step time with PyTorch's on the same network.
use crate::data::ImageSet;
use crate::error::StageError;
use crate::kinds::umap::MaskedModel;
use crate::math::rng;
use crate::models::{Architecture, Mode, ModelSpec, Network, Parameters};
use crate::progress::NoProgress;
use crate::stage::RunContext;
use crate::training::fit::{fit, Fit, FitConfig, StepOutput};
use crate::training::losses::{cross_entropy, um_loss};
use crate::training::optim::SgdConfig;
use crate::training::schedule::Schedule;
use crate::transfer::Traffic;
use candle_core::{Device, Tensor};
use rand::Rng as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The networks the benchmark knows, by the names bench/ uses for both frameworks.
pub const BENCH_NETS: [&str; 6] =
    ["small-cnn", "resnet-20", "densenet-bc-40", "densenet-bc-100", "wrn-40-4", "resnet-18"];

/// The model description of a benchmark network (10 classes, no dropout, non-affine batch
/// norm, identity input normalisation). `resnet-20` is the pre-activation wide ResNet of depth
/// 22 and width 1: three groups of three basic blocks of widths 16, 32 and 64, i.e. ResNet-20's
/// 19 weighted 3×3 layers and head, plus the two 1×1 projection shortcuts.
pub fn bench_spec(name: &str) -> Option<ModelSpec> {
    let (architecture, input_shape) = match name {
        "small-cnn" => {
            (Architecture::SmallCnn { widths: vec![16, 32, 64, 128], strides: vec![1, 2, 2, 2] }, [1, 28, 28])
        }
        "resnet-20" => (Architecture::WideResnet { depth: 22, widen: 1 }, [3, 32, 32]),
        "densenet-bc-40" => (Architecture::DensenetBc { depth: 40, growth: 12, reduction: 0.5 }, [3, 32, 32]),
        "densenet-bc-100" => {
            (Architecture::DensenetBc { depth: 100, growth: 12, reduction: 0.5 }, [3, 32, 32])
        }
        "wrn-40-4" => (Architecture::WideResnet { depth: 40, widen: 4 }, [3, 32, 32]),
        "resnet-18" => (
            Architecture::ResnetCifar { widths: vec![64, 128, 256, 512], blocks: vec![2, 2, 2, 2] },
            [3, 32, 32],
        ),
        _ => return None,
    };
    let channels = input_shape[0];
    Some(ModelSpec {
        architecture,
        input_shape,
        num_classes: 10,
        dropout: 0.0,
        affine_bn: false,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
        weight_masks: false,
    })
}

/// Runs `step(index)` `warmup + steps` times and returns the wall-clock seconds of the last
/// `steps`, calling `before_timed` once before the first timed one.
fn timed(
    warmup: usize,
    steps: usize,
    mut before_timed: impl FnMut(),
    mut step: impl FnMut(usize) -> Result<(), StageError>,
) -> Result<Vec<f64>, StageError> {
    let mut times = Vec::with_capacity(steps);
    for index in 0..warmup + steps {
        if index == warmup {
            before_timed();
        }
        let start = Instant::now();
        step(index)?;
        if index >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Which training stage's step the benchmark runs: `train`'s (cross-entropy on the network's
/// weights) or `umap`'s (the UM loss on masked weights, the masks recomputed from learnable
/// scores every step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchStage {
    Train,
    Umap,
}

impl BenchStage {
    /// Every stage the benchmark runs, by its kind's name.
    pub const ALL: [BenchStage; 2] = [BenchStage::Train, BenchStage::Umap];

    /// The name of the stage kind whose step it is.
    pub fn name(self) -> &'static str {
        use crate::stage::StageParams;
        match self {
            BenchStage::Train => crate::kinds::train::Train::KIND,
            BenchStage::Umap => crate::kinds::umap::Umap::KIND,
        }
    }

    /// The stage named `name`, if the benchmark runs it.
    pub fn parse(name: &str) -> Option<BenchStage> {
        BenchStage::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

/// What the training-step benchmark runs: the stage, the batch size, the steps before and under
/// the clock, the seed and the random crop's padding (the network's dropout is in its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBench {
    pub stage: BenchStage,
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    pub seed: u64,
    pub crop_padding: usize,
}

/// Each timed step's wall-clock seconds and its traffic across the device boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTimes {
    pub seconds: Vec<f64>,
    pub traffic: Vec<Traffic>,
}

/// A seeded random training set of `count` images in [0, 1) for `spec`.
fn bench_set(spec: &ModelSpec, count: usize, seed: u64) -> ImageSet {
    let mut data_rng = rng::derive(seed, "bench-data");
    let [c, h, w] = spec.input_shape;
    ImageSet {
        pixels: (0..count * c * h * w).map(|_| data_rng.random::<f32>()).collect(),
        labels: (0..count).map(|_| data_rng.random_range(0..spec.num_classes as u32)).collect(),
        shape: spec.input_shape,
        num_classes: spec.num_classes,
    }
}

/// Times training steps of `spec` as a training stage runs them: one epoch of [`fit`] over
/// seeded random data of `warmup + steps + 1` batches (gathering and cropping each batch, the
/// stage's forward and loss, backward, SGD with Nesterov momentum, the on-device sums and the
/// per-step finiteness check), the clock read at the start of each step, so each timed step's
/// time is everything from its start to the next one's. `before_timed` runs once, just before
/// the first timed step.
pub fn time_training_steps(
    spec: &ModelSpec,
    bench: &StepBench,
    device: &Device,
    mut before_timed: impl FnMut(),
) -> Result<StepTimes, StageError> {
    let StepBench { stage, batch, warmup, steps, seed, crop_padding } = *bench;
    let data = bench_set(spec, (warmup + steps + 1) * batch, seed);
    let out_dir = std::env::temp_dir().join(format!(
        "pipeline-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&out_dir).map_err(StageError::io("cannot create", &out_dir))?;
    let empty = BTreeMap::new();
    let ctx = RunContext {
        out_dir: &out_dir,
        seed,
        upstream: &empty,
        upstream_tags: &BTreeMap::new(),
        resume_dir: None,
        datasets: &BTreeMap::new(),
        device,
        progress: &NoProgress,
    };
    let config = FitConfig {
        epochs: 1,
        batch_size: batch,
        sgd: SgdConfig { lr: 0.01, momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        schedule: Schedule::Constant,
        crop_padding,
        checkpoint_every: 0,
    };
    let values = spec.initialise(&mut rng::derive(seed, "bench-init"), device)?;
    let mut marks: Vec<(Instant, Traffic)> = Vec::with_capacity(warmup + steps + 1);
    let mut mark = || {
        if marks.len() == warmup {
            before_timed();
        }
        marks.push((Instant::now(), crate::transfer::traffic()));
    };
    let result = match stage {
        BenchStage::Train => {
            let params = Parameters::trainable(spec, values)?;
            let net = Network::new(spec, &params, device)?;
            fit(
                &ctx,
                &data,
                &config,
                Fit {
                    spec,
                    vars: params.trainable_vars(),
                    before_epoch: &mut |_| Ok(()),
                    step: &mut |images, labels, mode| {
                        mark();
                        StepOutput::from_forward(net.forward(images, mode)?, labels, cross_entropy)
                    },
                    snapshot: &|| Ok(params.values()),
                    trained: &|| params.values(),
                    restore: None,
                    side: None,
                    label: "bench",
                },
            )
        }
        BenchStage::Umap => {
            let masked = MaskedModel::new(spec, values, 0.8, &mut rng::derive(seed, "bench-scores"), device)?;
            fit(
                &ctx,
                &data,
                &config,
                Fit {
                    spec,
                    vars: masked.scores.values().cloned().collect(),
                    before_epoch: &mut |_| Ok(()),
                    step: &mut |images, labels, mode| {
                        mark();
                        StepOutput::from_forward(masked.forward(images, mode)?, labels, |logits, labels| {
                            um_loss(&cross_entropy(logits, labels)?, 0.5)
                        })
                    },
                    snapshot: &|| masked.snapshot(),
                    trained: &|| masked.trained_values(),
                    restore: None,
                    side: None,
                    label: "bench",
                },
            )
        }
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    result?;
    let timed = &marks[warmup..];
    Ok(StepTimes {
        seconds: timed.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64()).collect(),
        traffic: timed.windows(2).map(|w| w[1].1.since(w[0].1)).collect(),
    })
}

/// Seconds of each of `steps` evaluation-mode forward passes (batch-norm running statistics, no
/// gradient graph: the network holds detached weights) of a batch of `batch` seeded random
/// images, after `warmup` untimed ones: what scoring costs per batch.
pub fn time_evaluation_batches(
    spec: &ModelSpec,
    batch: usize,
    warmup: usize,
    steps: usize,
    seed: u64,
    device: &Device,
    before_timed: impl FnMut(),
) -> Result<Vec<f64>, StageError> {
    let values = spec.initialise(&mut rng::derive(seed, "bench-init"), device)?;
    let net = Network::new(spec, &Parameters::frozen(spec, values)?, device)?;
    let set = bench_set(spec, batch, seed);
    let images = set.gather(&(0..batch).collect::<Vec<usize>>(), device)?;
    timed(warmup, steps, before_timed, |step| {
        let logits = net.forward(&images, &mut Mode::Eval)?.logits;
        // Reading a value waits for the batch to finish (asynchronous devices).
        let total: f32 = logits.sum_all()?.to_scalar()?;
        if !total.is_finite() {
            return Err(StageError::Unsuitable(format!("benchmark logits sum to {total} at batch {step}")));
        }
        Ok(())
    })
}

/// Images per second of `architecture` on `input_shape` at `batch_size`, measured with a
/// warm-up step and two timed ones (training: forward, backward and SGD; else forward only).
pub fn measure_throughput(
    architecture: &Architecture,
    input_shape: [usize; 3],
    batch_size: usize,
    training: bool,
    device: &Device,
) -> Result<f64, StageError> {
    let spec = ModelSpec {
        architecture: architecture.clone(),
        input_shape,
        num_classes: 10,
        dropout: 0.0,
        affine_bn: false,
        mean: vec![0.0; input_shape[0]],
        std: vec![1.0; input_shape[0]],
        weight_masks: false,
    };
    let seconds: Vec<f64> = if training {
        let bench = StepBench {
            stage: BenchStage::Train,
            batch: batch_size,
            warmup: 1,
            steps: 2,
            seed: 0,
            crop_padding: 0,
        };
        time_training_steps(&spec, &bench, device, || ())?.seconds
    } else {
        let values = spec.initialise(&mut crate::math::rng::derive(0, "throughput"), device)?;
        let net = Network::new(&spec, &Parameters::frozen(&spec, values)?, device)?;
        let [c, h, w] = input_shape;
        let images = Tensor::zeros((batch_size, c, h, w), candle_core::DType::F32, device)?;
        let mut times = Vec::new();
        for step in 0..3 {
            let start = Instant::now();
            let logits = net.forward(&images, &mut Mode::Eval)?.logits;
            let _: Vec<f32> = logits.flatten_all()?.narrow(0, 0, 1)?.to_vec1()?;
            if step > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times
    };
    let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
    Ok(batch_size as f64 / mean.max(1e-9))
}

/// A stable name of a measured configuration, the key of the throughput table.
pub fn throughput_key(
    architecture: &Architecture,
    input_shape: [usize; 3],
    batch_size: usize,
    training: bool,
    device: &str,
) -> String {
    let arch = serde_json::to_string(architecture).expect("architectures serialise");
    let [c, h, w] = input_shape;
    let mode = if training { "train" } else { "eval" };
    format!("{arch} {c}x{h}x{w} batch {batch_size} {mode} on {device}")
}

/// Measured images/s by configuration, stored as JSON in the cache folder.
pub struct ThroughputTable {
    path: PathBuf,
    entries: BTreeMap<String, f64>,
}

impl ThroughputTable {
    /// The table kept in the file `path` (empty when there is none or it is unreadable).
    pub fn open(path: PathBuf) -> ThroughputTable {
        let entries =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        ThroughputTable { path, entries }
    }

    /// The file the table is kept in.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.entries.get(key).copied().filter(|v| v.is_finite() && *v > 0.0)
    }

    /// Records a measurement and writes the table (through a temporary file and a rename).
    pub fn insert(&mut self, key: String, images_per_second: f64) -> std::io::Result<()> {
        self.entries.insert(key, images_per_second);
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.entries).expect("numbers serialise"))?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bench_net_has_a_spec_and_resnet_20_has_resnet_20s_layers() {
        for name in BENCH_NETS {
            assert!(bench_spec(name).is_some(), "{name}");
        }
        assert!(bench_spec("resnet-56").is_none());
        // ResNet-20 (He et al.): 16·3·9 stem, 3×3 convs of the three groups, 10-way head;
        // the pre-activation variant adds two 1×1 projections (16→32, 32→64).
        let group = |i: usize, o: usize| o * i * 9 + o * o * 9 + 4 * o * o * 9;
        let expected = 16 * 27 + group(16, 16) + group(16, 32) + group(32, 64) + 32 * 16 + 64 * 32 + 650;
        assert_eq!(bench_spec("resnet-20").unwrap().learnable_count().unwrap(), expected);
    }

    #[test]
    fn training_steps_are_timed_after_the_warmup_with_one_read_and_the_batch_uploaded() {
        for (stage, dropout, crop_padding) in
            [(BenchStage::Train, 0.3, 2), (BenchStage::Train, 0.0, 0), (BenchStage::Umap, 0.3, 2)]
        {
            let spec = ModelSpec { dropout, ..bench_spec("small-cnn").unwrap() };
            let mut marked = 0;
            let bench = StepBench { stage, batch: 4, warmup: 1, steps: 2, seed: 0, crop_padding };
            let times = time_training_steps(&spec, &bench, &Device::Cpu, || marked += 1).unwrap();
            assert_eq!(times.seconds.len(), 2);
            assert_eq!(marked, 1);
            assert!(times.seconds.iter().all(|&t| t > 0.0));
            // Each step: the one read of its check, and the next batch (4 images of 28×28 f32
            // and 4 u32 labels) uploaded.
            let batch_bytes = 4 * 28 * 28 * 4 + 4 * 4;
            for traffic in &times.traffic {
                assert_eq!(*traffic, Traffic { host_syncs: 1, bytes_to_device: batch_bytes }, "{stage:?}");
            }
        }
    }

    #[test]
    fn evaluation_batches_are_timed_after_the_warmup() {
        let spec = bench_spec("small-cnn").unwrap();
        let mut marked = 0;
        let times = time_evaluation_batches(&spec, 8, 2, 3, 0, &Device::Cpu, || marked += 1).unwrap();
        assert_eq!(times.len(), 3);
        assert_eq!(marked, 1);
        assert!(times.iter().all(|&t| t > 0.0));
    }

    #[test]
    fn throughput_is_measured_and_keys_tell_configurations_apart() {
        let arch = Architecture::SmallCnn { widths: vec![4, 8], strides: vec![2, 2] };
        let train = measure_throughput(&arch, [1, 8, 8], 4, true, &Device::Cpu).unwrap();
        let eval = measure_throughput(&arch, [1, 8, 8], 4, false, &Device::Cpu).unwrap();
        assert!(train.is_finite() && train > 0.0 && eval.is_finite() && eval > 0.0);
        let a = throughput_key(&arch, [1, 8, 8], 4, true, "cpu");
        assert_ne!(a, throughput_key(&arch, [1, 8, 8], 4, false, "cpu"));
        assert_ne!(a, throughput_key(&arch, [1, 8, 8], 8, true, "cpu"));
        assert_ne!(a, throughput_key(&arch, [1, 8, 8], 4, true, "cuda"));
        assert_eq!(a, throughput_key(&arch, [1, 8, 8], 4, true, "cpu"));
    }

    #[test]
    fn the_table_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = ThroughputTable::open(dir.path().join("throughput.json"));
        assert_eq!(table.get("x"), None);
        table.insert("x".into(), 123.5).unwrap();
        assert_eq!(ThroughputTable::open(dir.path().join("throughput.json")).get("x"), Some(123.5));
        std::fs::write(dir.path().join("throughput.json"), b"not json").unwrap();
        assert_eq!(
            ThroughputTable::open(dir.path().join("throughput.json")).get("x"),
            None,
            "a damaged table is ignored"
        );
    }
}
