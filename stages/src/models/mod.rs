//! Models: their JSON description ([`ModelSpec`]), their parameters ([`Parameters`]: trainable,
//! buffers such as batch-norm statistics, or frozen), seeded initialisation, checkpoints as
//! safetensors, and the forward pass ([`Network`]).
//!
//! A model on disk is a folder (or a pair of files) with `model.json` (the [`ModelSpec`]) and a
//! safetensors file whose tensor names match PyTorch's conventions (`conv1.weight`,
//! `bn1.running_mean`, `fc.bias`).
mod buffers;
pub mod conv;
mod densenet;
pub mod fused_bn;
mod layers;
mod small_cnn;
mod wide_resnet;

pub use densenet::DenseNetBc;
pub use layers::{Ends, Mode};
pub use small_cnn::SmallCnn;
pub use wide_resnet::WideResNet;

use crate::rng::Rng;
use crate::StageError;
use candle_core::{DType, Device, Tensor, Var};
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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
}

/// Everything needed to rebuild a model from its weights: written as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// (channels, height, width) of the input images, pixels in [0,1].
    pub input_shape: [usize; 3],
    pub num_classes: usize,
    pub dropout: f64,
    /// Batch norm with learnable scale and shift (SPEC default: non-affine).
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

/// The parameters of a batch norm named `prefix` over `channels` (scale and shift if affine).
pub(crate) fn bn_defs(defs: &mut Vec<ParamDef>, prefix: &str, channels: usize, affine: bool) {
    if affine {
        defs.push(ParamDef {
            name: format!("{prefix}.weight"),
            shape: vec![channels],
            init: Init::Const(1.0),
            role: Role::NormAffine,
        });
        defs.push(ParamDef {
            name: format!("{prefix}.bias"),
            shape: vec![channels],
            init: Init::Const(0.0),
            role: Role::NormAffine,
        });
    }
    defs.push(ParamDef {
        name: format!("{prefix}.running_mean"),
        shape: vec![channels],
        init: Init::Const(0.0),
        role: Role::NormStatistic,
    });
    defs.push(ParamDef {
        name: format!("{prefix}.running_var"),
        shape: vec![channels],
        init: Init::Const(1.0),
        role: Role::NormStatistic,
    });
}

/// A bias-free conv weight `out × input × k × k`, kaiming-normal.
pub(crate) fn conv_def(defs: &mut Vec<ParamDef>, name: String, out: usize, input: usize, k: usize) {
    defs.push(ParamDef {
        name,
        shape: vec![out, input, k, k],
        init: Init::KaimingNormal { fan_in: input * k * k },
        role: Role::Weight,
    });
}

/// The linear head `fc` from `input` features to the spec's classes (PyTorch's uniform init).
pub(crate) fn linear_defs(defs: &mut Vec<ParamDef>, input: usize, classes: usize) {
    let init = Init::Uniform { fan_in: input };
    defs.push(ParamDef { name: "fc.weight".into(), shape: vec![classes, input], init, role: Role::Weight });
    defs.push(ParamDef { name: "fc.bias".into(), shape: vec![classes], init, role: Role::Bias });
}

/// How a parameter is initialised (SPEC §2).
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
    /// Every parameter of the model, in a fixed order.
    pub fn parameters(&self) -> Vec<ParamDef> {
        match &self.architecture {
            Architecture::SmallCnn { widths, .. } => small_cnn::parameters(self, widths),
            Architecture::DensenetBc { depth, growth, reduction } => {
                densenet::parameters(self, *depth, *growth, *reduction)
            }
            Architecture::WideResnet { depth, widen } => wide_resnet::parameters(self, *depth, *widen),
        }
    }

    /// Number of learnable values (weights, biases, affine batch norm).
    pub fn learnable_count(&self) -> usize {
        self.parameters()
            .iter()
            .filter(|p| p.role != Role::NormStatistic)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

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

    /// Fresh values for every parameter, drawn from `rng`.
    pub fn initialise(&self, rng: &mut Rng, device: &Device) -> Result<BTreeMap<String, Tensor>, StageError> {
        let mut values = BTreeMap::new();
        for def in self.parameters() {
            let n: usize = def.shape.iter().product();
            let data: Vec<f32> = match def.init {
                Init::KaimingNormal { fan_in } => {
                    let normal = Normal::new(0.0, (2.0 / fan_in as f32).sqrt()).expect("positive std");
                    (0..n).map(|_| normal.sample(rng)).collect()
                }
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let uniform = Uniform::new(-bound, bound).expect("non-empty range");
                    (0..n).map(|_| uniform.sample(rng)).collect()
                }
                Init::Const(c) => vec![c; n],
            };
            let tensor = Tensor::from_vec(data, def.shape.as_slice(), device)
                .map_err(StageError::tensor(format!("cannot create `{}`", def.name)))?;
            values.insert(def.name, tensor);
        }
        Ok(values)
    }
}

/// How one parameter is held.
#[derive(Debug, Clone)]
enum Param {
    /// Updated by the optimiser.
    Trainable(Var),
    /// Updated by the forward pass (batch-norm statistics in training mode).
    Buffer(Var),
    /// Read only; no gradient is recorded.
    Frozen(Tensor),
    /// Derived from other variables in this step (e.g. masked weights): gradients flow through.
    Derived(Tensor),
}

/// A model's parameter values, each held as trainable, buffer or frozen.
#[derive(Debug, Clone)]
pub struct Parameters {
    entries: BTreeMap<String, Param>,
}

/// How to hold each parameter when building [`Parameters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Train,
    Buffer,
    Freeze,
}

impl Parameters {
    /// Checks `values` against the spec (names and shapes) and holds each as `hold` says.
    pub fn new(
        spec: &ModelSpec,
        values: BTreeMap<String, Tensor>,
        hold: impl Fn(&ParamDef) -> Hold,
    ) -> Result<Parameters, StageError> {
        let mut values = values;
        let mut entries = BTreeMap::new();
        for def in spec.parameters() {
            let value = values
                .remove(&def.name)
                .ok_or_else(|| StageError::Invalid(format!("the weights lack `{}`", def.name)))?;
            if value.dims() != def.shape.as_slice() {
                return Err(StageError::Invalid(format!(
                    "`{}` has shape {:?}, the model expects {:?}",
                    def.name,
                    value.dims(),
                    def.shape
                )));
            }
            let value = value.to_dtype(DType::F32)?;
            let param = match hold(&def) {
                Hold::Train => Param::Trainable(Var::from_tensor(&value)?),
                Hold::Buffer => Param::Buffer(Var::from_tensor(&value)?),
                Hold::Freeze => Param::Frozen(value.detach()),
            };
            entries.insert(def.name, param);
        }
        if let Some(extra) = values.keys().next() {
            return Err(StageError::Invalid(format!(
                "the weights hold `{extra}`, which the model does not have"
            )));
        }
        Ok(Parameters { entries })
    }

    /// Everything frozen: for evaluation (no graph is recorded).
    pub fn frozen(spec: &ModelSpec, values: BTreeMap<String, Tensor>) -> Result<Parameters, StageError> {
        Parameters::new(spec, values, |_| Hold::Freeze)
    }

    /// The usual training set-up: every learnable parameter trains, statistics are buffers.
    pub fn trainable(spec: &ModelSpec, values: BTreeMap<String, Tensor>) -> Result<Parameters, StageError> {
        Parameters::new(spec, values, |def| {
            if def.role == Role::NormStatistic {
                Hold::Buffer
            } else {
                Hold::Train
            }
        })
    }

    /// The current value of `name`.
    pub fn get(&self, name: &str) -> Result<Tensor, StageError> {
        match self.entries.get(name) {
            Some(Param::Trainable(v)) | Some(Param::Buffer(v)) => Ok(v.as_tensor().clone()),
            Some(Param::Frozen(t)) | Some(Param::Derived(t)) => Ok(t.clone()),
            None => Err(StageError::Invalid(format!("no parameter `{name}`"))),
        }
    }

    /// The variable behind `name` if it may be updated in place (trainable or buffer).
    pub fn var(&self, name: &str) -> Option<Var> {
        match self.entries.get(name) {
            Some(Param::Trainable(v)) | Some(Param::Buffer(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The variables the optimiser updates.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.entries
            .values()
            .filter_map(|p| match p {
                Param::Trainable(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    /// Current values of every parameter, detached.
    pub fn values(&self) -> BTreeMap<String, Tensor> {
        self.entries
            .iter()
            .map(|(name, p)| {
                let t = match p {
                    Param::Trainable(v) | Param::Buffer(v) => v.as_tensor().detach(),
                    Param::Frozen(t) | Param::Derived(t) => t.detach(),
                };
                (name.clone(), t)
            })
            .collect()
    }

    /// A copy in which the named parameters are replaced by tensors computed from other
    /// variables (gradients flow through them); the rest are shared with `self`.
    pub fn with_derived(&self, derived: BTreeMap<String, Tensor>) -> Result<Parameters, StageError> {
        let mut entries = self.entries.clone();
        for (name, tensor) in derived {
            let slot = entries
                .get_mut(&name)
                .ok_or_else(|| StageError::Invalid(format!("no parameter `{name}`")))?;
            *slot = Param::Derived(tensor);
        }
        Ok(Parameters { entries })
    }

    /// Writes every current value as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), StageError> {
        save_weights(&self.values(), path)
    }
}

/// Writes named tensors as safetensors (written to a temporary name, then renamed).
pub fn save_weights(values: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), StageError> {
    let map: HashMap<String, Tensor> = values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    candle_core::safetensors::save(&map, path)
        .map_err(StageError::tensor(format!("cannot write weights `{}`", path.display())))
}

/// Reads named tensors from a safetensors file onto `device`.
pub fn load_weights(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>, StageError> {
    if !path.is_file() {
        return Err(StageError::Format { path: path.into(), message: "weights file is missing".into() });
    }
    let map = candle_core::safetensors::load(path, device).map_err(|e| StageError::Format {
        path: path.into(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    Ok(map.into_iter().collect())
}

/// A model ready to run: its description and its layers bound to parameter values.
pub struct Network {
    pub spec: ModelSpec,
    body: Body,
}

enum Body {
    SmallCnn(SmallCnn),
    DenseNetBc(DenseNetBc),
    WideResNet(WideResNet),
}

/// What a forward pass gives: penultimate features and logits.
pub struct Forward {
    pub features: Tensor,
    pub logits: Tensor,
}

impl Network {
    pub fn new(spec: &ModelSpec, params: &Parameters, device: &Device) -> Result<Network, StageError> {
        let body = match &spec.architecture {
            Architecture::SmallCnn { widths, strides } => {
                Body::SmallCnn(SmallCnn::new(spec, widths, strides, params, device)?)
            }
            Architecture::DensenetBc { depth, .. } => {
                Body::DenseNetBc(DenseNetBc::new(spec, *depth, params, device)?)
            }
            Architecture::WideResnet { depth, widen } => {
                Body::WideResNet(WideResNet::new(spec, *depth, *widen, params, device)?)
            }
        };
        Ok(Network { spec: spec.clone(), body })
    }

    /// Runs a batch `(n, c, h, w)` of [0,1] pixels.
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        match &self.body {
            Body::SmallCnn(net) => net.forward(images, mode),
            Body::DenseNetBc(net) => net.forward(images, mode),
            Body::WideResNet(net) => net.forward(images, mode),
        }
    }
}

/// A saved model: its description and weights file.
#[derive(Debug, Clone)]
pub struct SavedModel {
    pub spec_path: std::path::PathBuf,
    pub weights_path: std::path::PathBuf,
}

impl SavedModel {
    /// Finds the model in a stage's output folder: `model.json` with `model.safetensors`, or,
    /// for a training stage, its last checkpoint.
    pub fn in_dir(dir: &Path) -> Result<SavedModel, StageError> {
        let spec_path = dir.join("model.json");
        let direct = dir.join("model.safetensors");
        if direct.is_file() {
            return Ok(SavedModel { spec_path, weights_path: direct });
        }
        let index = crate::fit::CheckpointIndex::read(dir)?;
        let last = index.epochs.last().copied().ok_or_else(|| StageError::Format {
            path: dir.join(crate::fit::CHECKPOINT_INDEX),
            message: "lists no checkpoint".into(),
        })?;
        Ok(SavedModel { spec_path, weights_path: dir.join(crate::fit::checkpoint_file(last)) })
    }

    pub fn spec(&self) -> Result<ModelSpec, StageError> {
        ModelSpec::read(&self.spec_path)
    }

    /// The description and the weights the model computes with: where the model carries
    /// binary weight masks (UMAP), each masked weight is multiplied by its mask, and the
    /// description returned no longer mentions masks.
    pub fn load_effective(
        &self,
        device: &Device,
    ) -> Result<(ModelSpec, BTreeMap<String, Tensor>), StageError> {
        let mut spec = self.spec()?;
        let mut values = load_weights(&self.weights_path, device)?;
        if spec.weight_masks {
            let masks: Vec<String> = values.keys().filter(|k| k.starts_with("mask.")).cloned().collect();
            for mask_name in masks {
                let mask = values.remove(&mask_name).expect("listed above");
                let name = &mask_name["mask.".len()..];
                let weight = values.get_mut(name).ok_or_else(|| StageError::Format {
                    path: self.weights_path.clone(),
                    message: format!("`{mask_name}` masks `{name}`, which the weights lack"),
                })?;
                *weight = weight.mul(&mask)?;
            }
            spec.weight_masks = false;
        }
        Ok((spec, values))
    }

    /// Loads it for evaluation (every parameter frozen, masks applied).
    pub fn load_frozen(&self, device: &Device) -> Result<Network, StageError> {
        let (spec, values) = self.load_effective(device)?;
        let params = Parameters::frozen(&spec, values)
            .map_err(|e| StageError::Format { path: self.weights_path.clone(), message: e.to_string() })?;
        Network::new(&spec, &params, device)
    }
}
