//! A model's description ([`ModelSpec`], written as `model.json`) and its parameter list
//! ([`ParamDef`]: name, shape, initialisation, role), with seeded initialisation.
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The architecture and its size parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Architecture {
    /// conv3×3 + BN + ReLU blocks (one per width, with its stride), global average pooling,
    /// dropout, linear head.
    SmallCnn { widths: Vec<usize>, strides: Vec<usize> },
    /// DenseNet-BC (depth 100, growth 12, reduction 0.5 is the paper's network).
    DensenetBc { depth: usize, growth: usize, reduction: f64 },
    /// Wide ResNet of depth `depth` and widening factor `widen` (WRN-40-4: 40, 4).
    WideResnet { depth: usize, widen: usize },
    /// ResNet for 32×32 inputs with basic blocks: `blocks[s]` blocks of width `widths[s]` per
    /// stage (ResNet-18: widths 64, 128, 256, 512, blocks 2, 2, 2, 2).
    ResnetCifar { widths: Vec<usize>, blocks: Vec<usize> },
}

/// Everything needed to rebuild a model from its weights: written as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// (channels, height, width) of the input images, pixels in [0, 1].
    pub input_shape: [usize; 3],
    pub num_classes: usize,
    pub dropout: f64,
    /// Batch norm with learnable scale and shift (docs/methods.md default: non-affine).
    pub affine_bn: bool,
    /// Per-channel normalisation applied inside the forward pass.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The weights file also holds a binary `mask.<name>` for each masked layer (UMAP); the
    /// model computes with `<name> ⊙ mask.<name>`.
    #[serde(default)]
    pub weight_masks: bool,
}

/// A tiny small-cnn (widths [4, 8], strides [2, 2], 1×8×8 inputs, 3 classes, no dropout) for
/// unit tests.
#[cfg(test)]
pub(crate) fn tiny_spec() -> ModelSpec {
    ModelSpec {
        architecture: Architecture::SmallCnn { widths: vec![4, 8], strides: vec![2, 2] },
        input_shape: [1, 8, 8],
        num_classes: 3,
        dropout: 0.0,
        affine_bn: false,
        mean: vec![0.5],
        std: vec![0.25],
        weight_masks: false,
    }
}

/// How a parameter is initialised (docs/methods.md §2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, 2/fan_in): kaiming-normal with ReLU gain.
    KaimingNormal {
        fan_in: usize,
    },
    /// U(−1/√fan_in, 1/√fan_in): PyTorch's default for linear layers.
    Uniform {
        fan_in: usize,
    },
    Const(f32),
}

/// What a parameter is for, so callers can decide what trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A conv or linear weight (what masks act on).
    Weight,
    /// A linear bias.
    Bias,
    /// Batch-norm scale or shift (only with `affine_bn`).
    NormAffine,
    /// Batch-norm running statistics: updated by the forward pass in training mode.
    NormStatistic,
}

/// One named parameter of an architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub role: Role,
}

impl ModelSpec {
    pub fn read(path: &Path) -> Result<ModelSpec, StageError> {
        let bytes = std::fs::read(path).map_err(StageError::io("cannot read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format {
            path: path.into(),
            message: format!("not a model description: {e}"),
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), StageError> {
        let bytes = serde_json::to_vec_pretty(self).expect("model spec serialises");
        std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
    }
}
