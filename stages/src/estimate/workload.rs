//! What a stage computes, for duration estimates (`pipeline plan`): which model, over which
//! datasets, how many passes, training or evaluation; and the measured throughput of a model on
//! a device (a few training or evaluation steps on a random batch), in images per second.
use crate::data::{DatasetSpec, Split};
use crate::error::StageError;
use crate::estimate::throughput::time_training_steps;
use crate::models::{Architecture, Mode, ModelSpec, Network, Parameters};
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Where a stage's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// Built by the stage itself.
    Architecture(Architecture),
    /// The model of the upstream stage of this name.
    Upstream(String),
}

/// How many times a stage goes over its data.
#[derive(Debug, Clone, PartialEq)]
pub enum Passes {
    Fixed(usize),
    /// Once per checkpoint the named upstream training stage keeps.
    CheckpointsOf(String),
}

/// The bulk of a stage's computation.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub model: ModelSource,
    /// Datasets (by recipe name) and splits read in one pass.
    pub reads: Vec<(String, Split)>,
    /// Passes over `reads`.
    pub passes: Passes,
    /// For a training stage: how many checkpoints it keeps.
    pub checkpoints_kept: Option<usize>,
    /// Images per pass are multiplied by this (outlier exposure also feeds auxiliary batches).
    pub images_factor: f64,
    /// Forward, backward and update (true) or forward only.
    pub training: bool,
    pub batch_size: usize,
}

/// Number of images and their shape of one split, without decoding image folders.
pub fn dataset_size(spec: &DatasetSpec, split: Split) -> Result<(usize, [usize; 3]), StageError> {
    match spec {
        DatasetSpec::ImageFolder(folder) => Ok((spec.files()?.len(), [3, folder.size, folder.size])),
        other => {
            let set = other.load(split)?;
            Ok((set.len(), set.shape))
        }
    }
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
        time_training_steps(&spec, batch_size, 1, 2, 0, device, || ())?
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
