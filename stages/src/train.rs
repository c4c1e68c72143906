//! `train`: trains a classifier from scratch (SPEC §1) and keeps checkpoints (see [`crate::fit`]
//! for the outputs).
use crate::data::Split;
use crate::fit::{fit, Fit, StepOutput};
use crate::models::{Architecture, ModelSpec, Network, Parameters};
use crate::workload::{ModelSource, Workload};
use crate::{Artifact, Input, ParamError, RunContext, StageError, StageParams};
use serde::{Deserialize, Serialize};

/// The architectures `train` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    SmallCnn,
    /// DenseNet-BC, depth 100, growth 12, reduction 0.5 (SPEC §2).
    #[serde(rename = "densenet-bc-100")]
    DensenetBc100,
    /// Wide ResNet 40-4 (SPEC §2).
    #[serde(rename = "wrn-40-4")]
    Wrn404,
}

impl ModelName {
    pub const ALL: [ModelName; 3] = [ModelName::SmallCnn, ModelName::DensenetBc100, ModelName::Wrn404];

    pub fn name(self) -> &'static str {
        match self {
            ModelName::SmallCnn => "small-cnn",
            ModelName::DensenetBc100 => "densenet-bc-100",
            ModelName::Wrn404 => "wrn-40-4",
        }
    }

    /// The architecture this name builds (`widths` and `strides` are small-cnn's).
    pub fn architecture(self, widths: &[usize], strides: &[usize]) -> Architecture {
        match self {
            ModelName::SmallCnn => {
                Architecture::SmallCnn { widths: widths.to_vec(), strides: strides.to_vec() }
            }
            ModelName::DensenetBc100 => Architecture::DensenetBc { depth: 100, growth: 12, reduction: 0.5 },
            ModelName::Wrn404 => Architecture::WideResnet { depth: 40, widen: 4 },
        }
    }

    /// The input the architecture is usually trained on (for `pipeline models`).
    pub fn typical_input(self) -> [usize; 3] {
        match self {
            ModelName::SmallCnn => [1, 28, 28],
            ModelName::DensenetBc100 | ModelName::Wrn404 => [3, 32, 32],
        }
    }
}

/// Every architecture `train` builds with its defaults: name, input shape and the number of
/// learnable values for `num_classes` classes.
pub fn model_catalogue(num_classes: usize) -> Vec<(&'static str, [usize; 3], usize)> {
    ModelName::ALL
        .iter()
        .map(|&name| {
            let input = name.typical_input();
            let spec = ModelSpec {
                architecture: name.architecture(&default_widths(), &default_strides()),
                input_shape: input,
                num_classes,
                dropout: default_dropout(),
                affine_bn: false,
                mean: vec![0.0; input[0]],
                std: vec![1.0; input[0]],
                weight_masks: false,
            };
            (name.name(), input, spec.learnable_count())
        })
        .collect()
}

/// Where the per-channel input normalisation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// SPEC §2's CIFAR constants for 3×32×32 inputs, otherwise the training set's statistics.
    #[default]
    Auto,
    /// Mean and standard deviation of the training set, per channel.
    Dataset,
    /// mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255 (SPEC §2).
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
            Normalization::Cifar => Err(StageError::Invalid(format!(
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
fn default_widths() -> Vec<usize> {
    vec![16, 32, 64, 128]
}
fn default_strides() -> Vec<usize> {
    vec![1, 2, 2, 2]
}
fn default_dropout() -> f64 {
    0.3
}

crate::training_stage! {
    /// Parameters of `train`; every field has SPEC §1's default except `data`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Train {
        /// The dataset to train on (its train split).
        pub data: String,
        /// `small-cnn` (the default), `densenet-bc-100` or `wrn-40-4`.
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

impl StageParams for Train {
    const KIND: &'static str = "train";
    const VERSION: u32 = 2;
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
            return Err(StageError::Invalid(format!("dataset `{}` has fewer than two classes", self.data)));
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
        let initial = spec.initialise(&mut crate::rng::derive(ctx.seed, "init"), ctx.device)?;
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
                label: "train",
            },
        )
    }
}

/// Batch-mean cross-entropy of logits against integer labels.
pub fn cross_entropy(
    logits: &candle_core::Tensor,
    labels: &candle_core::Tensor,
) -> Result<candle_core::Tensor, StageError> {
    candle_nn::loss::cross_entropy(logits, labels).map_err(StageError::tensor("cross-entropy failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_every_model_with_its_weight_count() {
        let catalogue = model_catalogue(10);
        assert_eq!(catalogue.len(), ModelName::ALL.len());
        assert_eq!(catalogue[1], ("densenet-bc-100", [3, 32, 32], 745_174));
        assert_eq!(catalogue[2], ("wrn-40-4", [3, 32, 32], 8_938_426));
        // 16·9 + 32·16·9 + 64·32·9 + 128·64·9 + 10·128 + 10
        assert_eq!(catalogue[0].2, 144 + 4608 + 18432 + 73728 + 1280 + 10);
    }

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
