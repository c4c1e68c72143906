//! `train`: trains a classifier from scratch (SPEC §1) and keeps checkpoints (see [`crate::fit`]
//! for the outputs).
use crate::data::Split;
use crate::fit::{fit, Fit, StepOutput};
use crate::models::{Architecture, ModelSpec, Network, Parameters};
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
        /// `small-cnn` (the default) or `densenet-bc-100`.
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
                ModelName::DensenetBc100 => {
                    Architecture::DensenetBc { depth: 100, growth: 12, reduction: 0.5 }
                }
            },
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
