//! `train`: trains a classifier from scratch (docs/methods.md §1) and keeps checkpoints (see [`crate::training::fit`]
//! for the outputs).
use crate::data::Split;
use crate::error::ParamError;
use crate::error::StageError;
use crate::estimate::workload::{ModelSource, Workload};
use crate::models::catalogue::{default_dropout, default_strides, default_widths, ModelName};
use crate::models::{ModelSpec, Network, Parameters};
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::training::fit::{fit, Fit, StepOutput};
use crate::training::losses::cross_entropy;
use serde::{Deserialize, Serialize};

/// Where the per-channel input normalisation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// docs/methods.md §2's CIFAR constants for 3×32×32 inputs, otherwise the training set's statistics.
    #[default]
    Auto,
    /// Mean and standard deviation of the training set, per channel.
    Dataset,
    /// mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255 (docs/methods.md §2).
    Cifar,
    /// None: mean 0, std 1.
    None,
}

impl Normalization {
    /// Per-channel mean and standard deviation for `data`.
    pub fn statistics(self, data: &crate::data::ImageSet) -> Result<(Vec<f32>, Vec<f32>), StageError> {
        let cifar = || {
            (
                vec![125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0],
                vec![63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0],
            )
        };
        match self {
            Normalization::Auto if data.shape == [3, 32, 32] => Ok(cifar()),
            Normalization::Auto | Normalization::Dataset => Ok(data.channel_stats()),
            Normalization::Cifar if data.shape[0] == 3 => Ok(cifar()),
            Normalization::Cifar => Err(StageError::Unsuitable(format!(
                "CIFAR normalisation needs 3 channels, the data has {}",
                data.shape[0]
            ))),
            Normalization::None => Ok((vec![0.0; data.shape[0]], vec![1.0; data.shape[0]])),
        }
    }
}

fn default_model() -> ModelName {
    ModelName::SmallCnn
}

crate::training::fit::training_stage! {
    /// Parameters of `train`; every field has docs/methods.md §1's default except `data`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Train {
        /// The dataset to train on (its train split).
        pub data: String,
        /// `small-cnn` (the default), `densenet-bc-100`, `wrn-40-4`, `wrn-40-2` or `resnet18-cifar`.
        #[serde(default = "default_model")]
        pub model: ModelName,
        /// small-cnn: output channels of each conv block.
        #[serde(default = "default_widths")]
        pub widths: Vec<usize>,
        /// small-cnn: stride of each conv block.
        #[serde(default = "default_strides")]
        pub strides: Vec<usize>,
        #[serde(default = "default_dropout")]
        pub dropout: f64,
        #[serde(default)]
        pub affine_bn: bool,
        /// The input normalisation inside the model: `auto`, `dataset`, `cifar` or `none`.
        #[serde(default)]
        pub normalization: Normalization,
    }
}

impl Train {
    /// An estimate of the small CNN's training memory in bytes, before its data is known (3
    /// input channels of 32×32, the largest the shipped data sets have): weights, gradients,
    /// momentum and a checkpoint copy (4 × 4 bytes each), and per layer a batch of activations
    /// kept for the backward pass (3 × 4 bytes each: convolution, batch norm and their
    /// gradient). `None` when it overflows.
    fn training_bytes(&self) -> Option<u128> {
        let (mut channels, mut side, mut bytes) = (3u128, 32u128, 0u128);
        for (&width, &stride) in self.widths.iter().zip(&self.strides) {
            let width = width as u128;
            bytes = bytes.checked_add(width.checked_mul(channels)?.checked_mul(9 * 16)?)?;
            side = side.div_ceil(stride as u128);
            let activations = (self.batch_size as u128).checked_mul(width)?.checked_mul(side * side)?;
            bytes = bytes.checked_add(activations.checked_mul(12)?)?;
            channels = width;
        }
        Some(bytes)
    }
}

impl StageParams for Train {
    const KIND: &'static str = "train";
    const ROLE: crate::stage::Role = crate::stage::Role::Trains;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model, Artifact::Checkpoints];

    fn inputs(&self) -> Vec<Input> {
        vec![Input::dataset(&["data"], &self.data)]
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = self.fit_config().check();
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
        } else if self.model == ModelName::SmallCnn && !self.widths.contains(&0) {
            if let Some(message) =
                crate::memory::does_not_fit("its weights and activations", self.training_bytes())
            {
                problems.push(ParamError::new(&["widths"], message));
            }
        }
        problems
    }

    fn model_source(&self) -> Option<ModelSource> {
        Some(ModelSource::Architecture(self.model.architecture(&self.widths, &self.strides)))
    }

    fn workload(&self) -> Option<Workload> {
        Some(self.fit_config().workload(self.model_source()?, &self.data, 1.0))
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let data = ctx.dataset(&self.data)?.load(Split::Train)?;
        if data.num_classes < 2 {
            return Err(StageError::Unsuitable(format!(
                "dataset `{}` has fewer than two classes",
                self.data
            )));
        }
        let (mean, std) = self.normalization.statistics(&data)?;
        let spec = ModelSpec {
            architecture: self.model.architecture(&self.widths, &self.strides),
            input_shape: data.shape,
            num_classes: data.num_classes,
            dropout: self.dropout,
            affine_bn: self.affine_bn,
            mean,
            std,
            weight_masks: false,
        };
        let initial = spec.initialise(&mut crate::math::rng::derive(ctx.seed, "init"), ctx.device)?;
        let params = Parameters::trainable(&spec, initial)?;
        let net = Network::new(&spec, &params, ctx.device)?;
        fit(
            ctx,
            &data,
            &self.fit_config(),
            Fit {
                spec: &spec,
                vars: params.trainable_vars(),
                before_epoch: &mut |_| Ok(()),
                step: &mut |images, labels, mode| {
                    StepOutput::from_forward(net.forward(images, mode)?, labels, cross_entropy)
                },
                snapshot: &|| Ok(params.values()),
                trained: &|| params.values(),
                restore: Some(&|values| params.restore(values)),
                side: None,
                label: "train",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_auto_uses_cifar_constants_only_for_cifar_shaped_inputs() {
        let set = |shape: [usize; 3]| crate::data::ImageSet {
            pixels: vec![0.5; shape.iter().product()],
            labels: vec![0],
            shape,
            num_classes: 1,
        };
        let (mean, _) = Normalization::Auto.statistics(&set([3, 32, 32])).unwrap();
        assert!((mean[0] - 125.3 / 255.0).abs() < 1e-6);
        let (mean, _) = Normalization::Auto.statistics(&set([1, 28, 28])).unwrap();
        assert_eq!(mean, vec![0.5]);
        assert!(Normalization::Cifar.statistics(&set([1, 28, 28])).is_err());
    }
}
