//! A model's parameter values ([`Parameters`]: each trainable, a buffer, frozen or derived), and
//! safetensors files of named tensors.
use super::spec::ParamDef;
use crate::error::StageError;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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
    /// Constant tensors the architecture builds from its description (the input
    /// normalisation), uploaded once and shared by every copy ([`Parameters::with_derived`]), so
    /// a model rebuilt every step (UMAP's masked weights) uploads nothing again.
    constants: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Tensor>>>,
}

/// How to hold each parameter when building [`Parameters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Train,
    Buffer,
    Freeze,
}

impl Parameters {
    /// Checks `values` against the parameter list `defs` (names and shapes) and holds each as
    /// `hold` says.
    pub fn bind(
        defs: Vec<ParamDef>,
        values: BTreeMap<String, Tensor>,
        hold: impl Fn(&ParamDef) -> Hold,
    ) -> Result<Parameters, StageError> {
        let mut values = values;
        let mut entries = BTreeMap::new();
        for def in defs {
            let value = values
                .remove(&def.name)
                .ok_or_else(|| StageError::Unsuitable(format!("the weights lack `{}`", def.name)))?;
            if value.dims() != def.shape.as_slice() {
                return Err(StageError::Unsuitable(format!(
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
            return Err(StageError::Unsuitable(format!(
                "the weights hold `{extra}`, which the model does not have"
            )));
        }
        Ok(Parameters { entries, constants: Default::default() })
    }

    /// The constant `name`: the tensor uploaded the first time it was asked for, else
    /// `values` of `shape` uploaded onto `device` now.
    pub fn constant(
        &self,
        name: &str,
        values: &[f32],
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor, StageError> {
        let mut constants = self.constants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(tensor) =
            constants.get(name).filter(|t| t.dims() == shape && t.device().same_device(device))
        {
            return Ok(tensor.clone());
        }
        let tensor = crate::transfer::upload(values.to_vec(), shape, device)?;
        constants.insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    /// The current value of `name`.
    pub fn get(&self, name: &str) -> Result<Tensor, StageError> {
        match self.entries.get(name) {
            Some(Param::Trainable(v)) | Some(Param::Buffer(v)) => Ok(v.as_tensor().clone()),
            Some(Param::Frozen(t)) | Some(Param::Derived(t)) => Ok(t.clone()),
            None => Err(StageError::Internal(format!("no parameter `{name}`"))),
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

    /// Sets every variable (trainable or buffer) named in `values` to its value, to continue an
    /// interrupted run; names it does not hold as variables are refused.
    pub fn restore(&self, values: &BTreeMap<String, Tensor>) -> Result<(), StageError> {
        for (name, value) in values {
            match self.entries.get(name) {
                Some(Param::Trainable(v)) | Some(Param::Buffer(v)) => v.set(value)?,
                Some(Param::Frozen(_)) | Some(Param::Derived(_)) => {}
                None => {
                    return Err(StageError::Internal(format!("cannot restore `{name}`: no such parameter")))
                }
            }
        }
        Ok(())
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
                .ok_or_else(|| StageError::Internal(format!("no parameter `{name}`")))?;
            *slot = Param::Derived(tensor);
        }
        Ok(Parameters { entries, constants: self.constants.clone() })
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
