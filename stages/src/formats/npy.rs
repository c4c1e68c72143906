//! NumPy `.npy` files (format 1.0) of one-dimensional arrays: written as float64, float32 or
//! int64, read from float32 or float64, so score files from other tools can be checked too.
use crate::error::StageError;
use std::path::Path;

fn header(descr: &str, len: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({len},), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend(((dict.len() + padding + 1) as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

/// Writes `values` as a float32 array.
pub fn write_f32(path: &Path, values: &[f32]) -> Result<(), StageError> {
    let mut bytes = header("<f4", values.len());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
}

/// Writes `values` as a float64 array.
pub fn write_f64(path: &Path, values: &[f64]) -> Result<(), StageError> {
    let mut bytes = header("<f8", values.len());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
}

/// Writes `values` as an int64 array.
pub fn write_i64(path: &Path, values: &[i64]) -> Result<(), StageError> {
    let mut bytes = header("<i8", values.len());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).map_err(StageError::io("cannot write", path))
}

/// Reads a one-dimensional float32 or float64 array (little-endian, C order) as f64.
pub fn read_f64(path: &Path) -> Result<Vec<f64>, StageError> {
    let bytes = std::fs::read(path).map_err(StageError::io("cannot read", path))?;
    let bad = |message: &str| StageError::Format { path: path.into(), message: message.to_string() };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        _ => return Err(bad("unsupported .npy version")),
    };
    let dict = bytes.get(start..start + header_len).ok_or_else(|| bad("truncated header"))?;
    let dict = String::from_utf8_lossy(dict);
    let width = if dict.contains("'<f4'") {
        4
    } else if dict.contains("'<f8'") {
        8
    } else {
        return Err(bad(&format!(
            "expected a float32 or float64 array (descr '<f4' or '<f8'), found {}",
            dict.trim()
        )));
    };
    if dict.contains("'fortran_order': True") {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape = dict.split("'shape':").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<usize> =
        shape.trim().trim_start_matches('(').split(',').filter_map(|d| d.trim().parse().ok()).collect();
    if dims.len() != 1 {
        return Err(bad(&format!("expected a one-dimensional array, found shape {shape})")));
    }
    let data = &bytes[start + header_len..];
    if data.len() != dims[0] * width {
        return Err(bad(&format!("holds {} data bytes for {} values of {width} bytes", data.len(), dims[0])));
    }
    Ok(if width == 4 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()
    } else {
        data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_header_is_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npy");
        write_f32(&path, &[1.5, -2.0, 0.25]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len() - 12) % 64, 0, "header padded to 64 bytes");
        assert_eq!(read_f64(&path).unwrap(), vec![1.5, -2.0, 0.25]);
        std::fs::write(&path, b"nope").unwrap();
        assert!(read_f64(&path).is_err());
        write_f64(&path, &[1.0 - 1e-12, 1.0]).unwrap();
        assert_eq!(read_f64(&path).unwrap(), vec![1.0 - 1e-12, 1.0], "float64 keeps near-1 scores apart");
        write_i64(&path, &[1, 2]).unwrap();
        assert!(read_f64(&path).unwrap_err().to_string().contains("float32"));
    }
}
