//! JSON outputs, pretty-printed.
use crate::error::StageError;
use serde::Serialize;
use std::path::Path;

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StageError> {
    let bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
}
