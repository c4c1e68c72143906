//! SVHN's `test_32x32.mat` / `train_32x32.mat` (MATLAB level-5 MAT files): variables `X`
//! (32×32×3×N uint8, column-major) and `y` (N×1, labels 1–10 where 10 is the digit 0), stored
//! as plain or zlib-compressed (`miCOMPRESSED`) data elements.
use super::image_set::{ImageSet, Split};
use super::subset::ClassFilter;
use crate::error::ParamError;
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An SVHN folder holding `test_32x32.mat` (and `train_32x32.mat` to train on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvhnSpec {
    pub root: PathBuf,
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    #[serde(default)]
    pub limit: Option<usize>,
}

impl SvhnSpec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if let Some(list) = &self.classes {
            if let Err(message) = ClassFilter::new(Some(list), 10, self.limit) {
                problems.push(ParamError::new(&["classes"], message));
            }
        }
        if self.limit == Some(0) {
            problems.push(ParamError::new(&["limit"], "must be at least 1"));
        }
        problems
    }

    fn split_file(&self, split: Split) -> PathBuf {
        self.root.join(match split {
            Split::Train => "train_32x32.mat",
            Split::Test => "test_32x32.mat",
        })
    }

    /// The test file (what OOD evaluation reads), and the train file if present.
    pub(super) fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        let test = self.split_file(Split::Test);
        if !test.is_file() {
            return Err(missing(&test));
        }
        let train = self.split_file(Split::Train);
        Ok(if train.is_file() { vec![train, test] } else { vec![test] })
    }

    pub(super) fn load(&self, split: Split) -> Result<ImageSet, StageError> {
        let path = self.split_file(split);
        if !path.is_file() {
            return Err(missing(&path));
        }
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
        let bad = |message: String| StageError::Format { path: path.clone(), message };
        let variables = read_mat(&bytes).map_err(bad)?;
        let x = variables.get("X").ok_or_else(|| bad("no variable `X`".into()))?;
        let y = variables.get("y").ok_or_else(|| bad("no variable `y`".into()))?;
        if x.dims.len() != 4 || x.dims[..3] != [32, 32, 3] {
            return Err(bad(format!("`X` has dimensions {:?}, expected 32×32×3×N", x.dims)));
        }
        let n = x.dims[3];
        if y.values.len() != n {
            return Err(bad(format!("`y` holds {} labels for {n} images", y.values.len())));
        }
        // Column-major X(row, col, channel, sample) → (channel, row, col) per sample.
        let mut images = vec![0u8; n * 3072];
        for (i, image) in images.chunks_exact_mut(3072).enumerate() {
            for c in 0..3 {
                for col in 0..32 {
                    for row in 0..32 {
                        let v = x.values[row + 32 * col + 1024 * c + 3072 * i];
                        image[c * 1024 + row * 32 + col] = v as u8;
                    }
                }
            }
        }
        let mut labels = Vec::with_capacity(n);
        for &v in &y.values {
            match v as i64 {
                1..=9 => labels.push(v as u32),
                10 => labels.push(0),
                other => {
                    return Err(bad(format!(
                        "label {other} is not an SVHN label (1–10, 10 meaning the digit 0)"
                    )))
                }
            }
        }
        let filter =
            ClassFilter::new(self.classes.as_deref(), 10, self.limit).map_err(StageError::Unsuitable)?;
        filter.collect(labels.iter().copied().zip(images.chunks_exact(3072)), [3, 32, 32], &path)
    }
}

fn missing(path: &Path) -> StageError {
    let root = path.parent().unwrap_or(path);
    StageError::Format {
        path: path.into(),
        message: format!("missing SVHN file ({})", super::catalogue::how_to_get("svhn", root)),
    }
}

/// A numeric MAT array: its dimensions and its values (converted to f64), column-major.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    pub dims: Vec<usize>,
    pub values: Vec<f64>,
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// One data element: its type and bytes, and where the next one starts.
fn element(bytes: &[u8], at: usize) -> Result<(u32, &[u8], usize), String> {
    let word = |i: usize| -> Result<u32, String> {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("truncated element tag".to_string())
    };
    let first = word(at)?;
    if first >> 16 != 0 {
        // Small data element: type and size in one word, up to 4 bytes of data in the next.
        let (kind, size) = (first & 0xffff, (first >> 16) as usize);
        let data = bytes.get(at + 4..at + 4 + size).ok_or("truncated small element")?;
        return Ok((kind, data, at + 8));
    }
    let size = word(at + 4)? as usize;
    let data = bytes.get(at + 8..at + 8 + size).ok_or("truncated element")?;
    let padded = if first == MI_COMPRESSED { size } else { size.div_ceil(8) * 8 };
    Ok((first, data, at + 8 + padded))
}

fn numbers(kind: u32, data: &[u8]) -> Result<Vec<f64>, String> {
    macro_rules! read {
        ($t:ty) => {
            data.chunks_exact(std::mem::size_of::<$t>())
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk")) as f64)
                .collect()
        };
    }
    Ok(match kind {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => read!(i16),
        MI_UINT16 => read!(u16),
        MI_INT32 => read!(i32),
        MI_UINT32 => read!(u32),
        MI_SINGLE => read!(f32),
        MI_DOUBLE => read!(f64),
        MI_INT64 => read!(i64),
        MI_UINT64 => read!(u64),
        other => return Err(format!("unsupported numeric data type {other}")),
    })
}

/// The numeric variables of a little-endian level-5 MAT file, by name.
pub fn read_mat(bytes: &[u8]) -> Result<BTreeMap<String, MatArray>, String> {
    if bytes.len() < 128 {
        return Err("shorter than a MAT header (128 bytes)".into());
    }
    if &bytes[126..128] != b"IM" {
        return Err("not a little-endian level-5 MAT file (MATLAB v7.3 HDF5 files are not supported)".into());
    }
    let mut variables = BTreeMap::new();
    let mut at = 128;
    while at + 8 <= bytes.len() {
        let (kind, data, next) = element(bytes, at)?;
        match kind {
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(data)
                    .read_to_end(&mut inflated)
                    .map_err(|e| format!("corrupt compressed element: {e}"))?;
                let (inner, payload, _) = element(&inflated, 0)?;
                if inner == MI_MATRIX {
                    let (name, array) = matrix(payload)?;
                    variables.insert(name, array);
                }
            }
            MI_MATRIX => {
                let (name, array) = matrix(data)?;
                variables.insert(name, array);
            }
            _ => {}
        }
        at = next;
    }
    Ok(variables)
}

/// A miMATRIX payload: flags, dimensions, name, real part.
fn matrix(payload: &[u8]) -> Result<(String, MatArray), String> {
    let (_, _flags, at) = element(payload, 0)?;
    let (dims_kind, dims, at) = element(payload, at)?;
    let dims: Vec<usize> = numbers(dims_kind, dims)?.into_iter().map(|d| d as usize).collect();
    let (_, name, at) = element(payload, at)?;
    let name = String::from_utf8_lossy(name).into_owned();
    let (kind, real, _) = element(payload, at)?;
    let values = numbers(kind, real)?;
    if values.len() != dims.iter().product::<usize>() {
        return Err(format!("`{name}` holds {} values for dimensions {dims:?}", values.len()));
    }
    Ok((name, MatArray { dims, values }))
}
