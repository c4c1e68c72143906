//! Models on disk: a folder with `model.json` and `model.safetensors`, or a training stage's
//! checkpoints (`checkpoints/epoch-NNNN.safetensors` listed in `checkpoints.json`).
use super::network::Network;
use super::parameters::{load_weights, Parameters};
use super::spec::ModelSpec;
use crate::error::StageError;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// The layout of a model folder, in one place: every stage that writes or reads a model uses
// these names (or [`ModelFiles`]), so the layout cannot drift between writers and readers.

/// The model's description ([`ModelSpec`]).
pub const SPEC_FILE: &str = "model.json";
/// The model's weights (a model stage's output, or a chosen checkpoint's copy).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The folder of a training stage's kept checkpoints.
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// The list of the kept checkpoints ([`CheckpointIndex`]).
pub const CHECKPOINT_INDEX: &str = "checkpoints.json";

/// Relative path of the checkpoint of `epoch` (1-based: the state after that many epochs).
pub fn checkpoint_file(epoch: usize) -> PathBuf {
    PathBuf::from(format!("{CHECKPOINT_DIR}/epoch-{epoch:04}.safetensors"))
}

/// The files of a model folder (a stage's output folder): where its description, weights
/// and checkpoints lie. Only paths: nothing is read or checked.
#[derive(Debug, Clone, Copy)]
pub struct ModelFiles<'a> {
    dir: &'a Path,
}

impl<'a> ModelFiles<'a> {
    pub fn in_dir(dir: &'a Path) -> ModelFiles<'a> {
        ModelFiles { dir }
    }

    /// `model.json`.
    pub fn spec(&self) -> PathBuf {
        self.dir.join(SPEC_FILE)
    }

    /// `model.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// `checkpoints/`.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// `checkpoints/epoch-NNNN.safetensors`.
    pub fn checkpoint(&self, epoch: usize) -> PathBuf {
        self.dir.join(checkpoint_file(epoch))
    }

    /// `checkpoints.json`.
    pub fn checkpoint_index(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_INDEX)
    }

    /// The model as it was after `epoch` (its description with that checkpoint's weights).
    pub fn at_checkpoint(&self, epoch: usize) -> SavedModel {
        SavedModel { spec_path: self.spec(), weights_path: self.checkpoint(epoch) }
    }
}

/// The epochs a training stage kept, in increasing order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointIndex {
    pub epochs: Vec<usize>,
}

impl CheckpointIndex {
    pub fn read(dir: &Path) -> Result<CheckpointIndex, StageError> {
        let path = ModelFiles::in_dir(dir).checkpoint_index();
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read checkpoint index", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }
}

/// A saved model: its description and weights file.
#[derive(Debug, Clone)]
pub struct SavedModel {
    pub spec_path: PathBuf,
    pub weights_path: PathBuf,
}

impl SavedModel {
    /// Finds the model in a stage's output folder: `model.json` with `model.safetensors`, or,
    /// for a training stage, its last checkpoint.
    pub fn in_dir(dir: &Path) -> Result<SavedModel, StageError> {
        let files = ModelFiles::in_dir(dir);
        let direct = files.weights();
        if direct.is_file() {
            return Ok(SavedModel { spec_path: files.spec(), weights_path: direct });
        }
        let index = CheckpointIndex::read(dir)?;
        let last = index.epochs.last().copied().ok_or_else(|| StageError::Format {
            path: files.checkpoint_index(),
            message: "lists no checkpoint".into(),
        })?;
        Ok(files.at_checkpoint(last))
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

/// blake3 of a saved model's description and weights: identifies "the same model".
pub fn model_digest(saved: &SavedModel) -> Result<String, StageError> {
    let mut hasher = blake3::Hasher::new();
    for path in [&saved.spec_path, &saved.weights_path] {
        hasher.update(&std::fs::read(path).map_err(StageError::io("cannot read", path))?);
    }
    Ok(hasher.finalize().to_hex().to_string())
}
