//! Resume state of a training run, written at the end of every epoch so that a killed run
//! (Ctrl-C, `kill -9`, a crash, a preemption) continues from its last finished epoch and ends
//! with the bytes an uninterrupted run writes (on the CPU).
//!
//! Layout of the folder the engine hands a stage (`resume/<key>/` beside the cache entries):
//! - `epoch-NNNN/tensors.safetensors`: what training changes (weights or scores, batch-norm
//!   statistics) and the optimiser's momentum buffers (`momentum.<i>`);
//! - `checkpoints/epoch-NNNN.safetensors`: copies of the checkpoints kept so far;
//! - `latest.json`, written last and atomically: which state is current, the random streams'
//!   positions, the history, the kept epochs, and the blake3 of every file it relies on, so a
//!   torn or edited state is never used.
use crate::error::StageError;
use crate::models::checkpoints::{checkpoint_file, CHECKPOINT_DIR};
use crate::models::parameters::{load_weights, save_weights};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const LATEST: &str = "latest.json";
const TENSORS: &str = "tensors.safetensors";

/// A training run's state after `epochs_done` epochs.
pub struct State {
    pub epochs_done: usize,
    pub epochs_total: usize,
    /// `history.json`'s records so far.
    pub history: serde_json::Value,
    pub kept: Vec<usize>,
    /// Word positions of the random streams, by name.
    pub streams: BTreeMap<String, u128>,
    /// What training changes.
    pub trained: BTreeMap<String, Tensor>,
    pub momentum: Vec<Option<Tensor>>,
    /// The stage's own state beside its tensors (POEM's ring buffer and log): JSON, its
    /// floats kept bit for bit.
    pub side: serde_json::Value,
    /// The class of device that computed it.
    pub device_class: Option<crate::device::DeviceClass>,
}

/// `latest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latest {
    state: String,
    epochs_done: usize,
    epochs_total: usize,
    history: serde_json::Value,
    kept: Vec<usize>,
    /// As decimal strings: JSON numbers cannot hold a u128.
    streams: BTreeMap<String, String>,
    momentum: Vec<bool>,
    tensors_blake3: String,
    checkpoints_blake3: BTreeMap<usize, String>,
    #[serde(default)]
    side: serde_json::Value,
    #[serde(default)]
    device_class: Option<crate::device::DeviceClass>,
}

/// Floats as their bit patterns (`"f64:<hex>"`): JSON text round-trips an f64 only to within
/// a unit in the last place, and a resumed history must be the uninterrupted one's bytes.
fn exact_floats(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            Value::String(format!("f64:{:016x}", n.as_f64().unwrap_or(0.0).to_bits()))
        }
        Value::Array(items) => Value::Array(items.iter().map(exact_floats).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), exact_floats(v))).collect()),
        other => other.clone(),
    }
}

/// Undoes [`exact_floats`].
fn plain_floats(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => match s.strip_prefix("f64:").and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
            Some(bits) => {
                serde_json::Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number)
            }
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(plain_floats).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), plain_floats(v))).collect()),
        other => other.clone(),
    }
}

fn digest(path: &Path) -> Result<String, StageError> {
    let file = std::fs::File::open(path).map_err(StageError::io("cannot read", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(StageError::io("cannot read", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Records `state`, taking the kept checkpoints from `out_dir` (the run's output folder).
pub fn save(dir: &Path, state: &State, out_dir: &Path) -> Result<(), StageError> {
    let kept_dir = dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&kept_dir).map_err(StageError::io("cannot create", &kept_dir))?;
    // Copies recorded at an earlier epoch keep their digests: only new ones are read.
    let earlier: BTreeMap<usize, String> = std::fs::read(dir.join(LATEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Latest>(&bytes).ok())
        .map(|latest| latest.checkpoints_blake3)
        .unwrap_or_default();
    let mut checkpoints_blake3 = BTreeMap::new();
    for &epoch in &state.kept {
        let copy = dir.join(checkpoint_file(epoch));
        let known = earlier.get(&epoch).filter(|_| copy.is_file());
        let hash = match known {
            Some(hash) => hash.clone(),
            None => {
                let tmp = copy.with_extension("tmp");
                let source = crate::models::ModelFiles::in_dir(out_dir).checkpoint(epoch);
                std::fs::copy(&source, &tmp).map_err(StageError::io("cannot copy", &source))?;
                std::fs::rename(&tmp, &copy).map_err(StageError::io("cannot rename", &copy))?;
                digest(&copy)?
            }
        };
        checkpoints_blake3.insert(epoch, hash);
    }
    let name = format!("epoch-{:04}", state.epochs_done);
    let folder = dir.join(&name);
    std::fs::create_dir_all(&folder).map_err(StageError::io("cannot create", &folder))?;
    let mut tensors = state.trained.clone();
    for (i, buffer) in state.momentum.iter().enumerate() {
        if let Some(b) = buffer {
            tensors.insert(format!("momentum.{i}"), b.clone());
        }
    }
    save_weights(&tensors, &folder.join(TENSORS))?;
    let latest = Latest {
        state: name.clone(),
        epochs_done: state.epochs_done,
        epochs_total: state.epochs_total,
        history: exact_floats(&state.history),
        kept: state.kept.clone(),
        streams: state.streams.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        momentum: state.momentum.iter().map(Option::is_some).collect(),
        tensors_blake3: digest(&folder.join(TENSORS))?,
        checkpoints_blake3,
        side: exact_floats(&state.side),
        device_class: state.device_class.clone(),
    };
    let tmp = dir.join("latest.json.tmp");
    crate::formats::json::write_json(&tmp, &latest)?;
    std::fs::rename(&tmp, dir.join(LATEST)).map_err(StageError::io("cannot rename", dir.join(LATEST)))?;
    // Older states are no longer needed.
    if let Ok(items) = std::fs::read_dir(dir) {
        for item in items.flatten() {
            let file_name = item.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("epoch-") && file_name != name {
                let _ = std::fs::remove_dir_all(item.path());
            }
        }
    }
    Ok(())
}

/// How far a recorded run got: (epochs done, epochs in all), if `dir` holds a state.
pub fn progress(dir: &Path) -> Option<(usize, usize)> {
    let latest: Latest = serde_json::from_slice(&std::fs::read(dir.join(LATEST)).ok()?).ok()?;
    Some((latest.epochs_done, latest.epochs_total))
}

/// The recorded state, every file checked against its digest; `Ok(None)` when there is none,
/// `Err` (with the reason) when there is one that cannot be used.
pub fn load(dir: &Path, device: &Device) -> Result<Option<(State, Vec<PathBuf>)>, String> {
    let path = dir.join(LATEST);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read `{}`: {e}", path.display())),
    };
    let latest: Latest =
        serde_json::from_slice(&bytes).map_err(|e| format!("`{}` cannot be parsed: {e}", path.display()))?;
    let tensors_path = dir.join(&latest.state).join(TENSORS);
    if digest(&tensors_path).map_err(|e| e.to_string())? != latest.tensors_blake3 {
        return Err(format!("`{}` does not match its recorded digest", tensors_path.display()));
    }
    let mut checkpoints = Vec::new();
    for (epoch, expected) in &latest.checkpoints_blake3 {
        let copy = dir.join(checkpoint_file(*epoch));
        if digest(&copy).map_err(|e| e.to_string())? != *expected {
            return Err(format!("`{}` does not match its recorded digest", copy.display()));
        }
        checkpoints.push(copy);
    }
    let mut tensors = load_weights(&tensors_path, device).map_err(|e| e.to_string())?;
    let mut momentum = Vec::with_capacity(latest.momentum.len());
    for (i, present) in latest.momentum.iter().enumerate() {
        let buffer = tensors.remove(&format!("momentum.{i}"));
        if *present && buffer.is_none() {
            return Err(format!("momentum buffer {i} is missing"));
        }
        momentum.push(buffer);
    }
    let streams = latest
        .streams
        .iter()
        .map(|(k, v)| v.parse::<u128>().map(|p| (k.clone(), p)).map_err(|e| format!("stream `{k}`: {e}")))
        .collect::<Result<_, _>>()?;
    let state = State {
        epochs_done: latest.epochs_done,
        epochs_total: latest.epochs_total,
        history: plain_floats(&latest.history),
        kept: latest.kept,
        streams,
        trained: tensors,
        momentum,
        side: plain_floats(&latest.side),
        device_class: latest.device_class,
    };
    Ok(Some((state, checkpoints)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_survive_the_record_bit_for_bit() {
        let values = [0.1, 1.0 / 3.0, 2.7415317243928431e-7, f64::MIN_POSITIVE, 123456.789];
        let history = serde_json::json!([{"epoch": 3, "lr": values[0], "loss": values[1], "accuracy": values[2]}, values]);
        let text = serde_json::to_string(&exact_floats(&history)).unwrap();
        let back = plain_floats(&serde_json::from_str(&text).unwrap());
        assert_eq!(back, history);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(back[1][i].as_f64().unwrap().to_bits(), v.to_bits());
        }
        assert_eq!(back[0]["epoch"], 3, "integers stay integers");
    }
}
