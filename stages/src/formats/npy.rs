//! NumPy `.npy` files (format 1.0) of one-dimensional arrays: written as float64, float32 or
//! int64, read from float32 or float64, so score files from other tools can be checked too.
use crate::error::StageError;
use std::path::Path;

fn header(descr: &str, len: usize) -> Vec<u8> {
    header_with_shape(descr, &format!("({len},)"))
}

fn header_with_shape(descr: &str, shape: &str) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
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

/// Writes equally long `rows` as a two-dimensional float32 array (rows × columns, C order).
pub fn write_f32_rows(path: &Path, rows: &[Vec<f32>]) -> Result<(), StageError> {
    let columns = rows.first().map_or(0, Vec::len);
    if let Some(i) = rows.iter().position(|r| r.len() != columns) {
        return Err(StageError::Internal(format!("row {i} of `{}` has another length", path.display())));
    }
    let mut bytes = header_with_shape("<f4", &format!("({}, {columns})", rows.len()));
    bytes.extend(rows.iter().flatten().flat_map(|v| v.to_le_bytes()));
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

/// Reads a two-dimensional float32 array (little-endian, C order) as rows, as
/// [`write_f32_rows`] writes it.
pub fn read_f32_rows(path: &Path) -> Result<Vec<Vec<f32>>, StageError> {
    let bytes = std::fs::read(path).map_err(StageError::io("cannot read", path))?;
    let bad = |message: &str| StageError::Format { path: path.into(), message: message.to_string() };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(bad("not a version-1 .npy file"));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let dict = bytes.get(10..10 + header_len).ok_or_else(|| bad("truncated header"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| bad("the header is not text"))?;
    let header = Header::parse(dict).map_err(|e| bad(&format!("unreadable header ({e})")))?;
    let [rows, columns] = header.shape[..] else { return Err(bad("expected a two-dimensional array")) };
    if header.descr != "<f4" || header.fortran_order {
        return Err(bad("expected a C-ordered float32 array"));
    }
    let data = &bytes[10 + header_len..];
    if rows.checked_mul(columns).and_then(|n| n.checked_mul(4)) != Some(data.len()) {
        return Err(bad(&format!("holds {} data bytes for {rows}×{columns} float32 values", data.len())));
    }
    let values: Vec<f32> =
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(values.chunks(columns.max(1)).take(rows).map(<[f32]>::to_vec).collect())
}

/// The longest header dictionary read (numpy writes under 4 KiB; version 2 allows 4 GiB).
const MAX_HEADER: usize = 1 << 20;

/// Reads a one-dimensional float32 or float64 array (little-endian, C order) as f64.
///
/// The header is read and checked first, and the size it declares compared with the file's,
/// before any data is read: a file that is not `.npy` (or `/dev/zero`) is refused after a few
/// bytes, not after reading it whole.
pub fn read_f64(path: &Path) -> Result<Vec<f64>, StageError> {
    use std::io::Read;
    let bad = |message: &str| StageError::Format { path: path.into(), message: message.to_string() };
    let mut file = std::fs::File::open(path).map_err(StageError::io("cannot read", path))?;
    let metadata = file.metadata().map_err(StageError::io("cannot read", path))?;
    let mut read_up_to = |n: usize| -> Result<Vec<u8>, StageError> {
        let mut bytes = Vec::with_capacity(n.min(MAX_HEADER));
        (&mut file).take(n as u64).read_to_end(&mut bytes).map_err(StageError::io("cannot read", path))?;
        Ok(bytes)
    };
    let preamble = read_up_to(10)?;
    if preamble.len() < 10 || &preamble[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let (header_len, start) = match preamble[6] {
        1 => (u16::from_le_bytes([preamble[8], preamble[9]]) as usize, 10),
        2 | 3 => {
            let more = read_up_to(2)?;
            if more.len() < 2 {
                return Err(bad("truncated header"));
            }
            (u32::from_le_bytes([preamble[8], preamble[9], more[0], more[1]]) as usize, 12)
        }
        _ => return Err(bad("unsupported .npy version")),
    };
    if header_len > MAX_HEADER {
        return Err(bad(&format!("a header of {header_len} bytes is not a score file's")));
    }
    let dict = read_up_to(header_len)?;
    if dict.len() < header_len {
        return Err(bad("truncated header"));
    }
    let dict = std::str::from_utf8(&dict).map_err(|_| bad("the header is not text"))?;
    let header =
        Header::parse(dict).map_err(|e| bad(&format!("unreadable header ({e}): {}", dict.trim())))?;
    let width = match header.descr.as_str() {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(bad(&format!(
                "expected a float32 or float64 array (descr '<f4' or '<f8'), found descr '{other}'"
            )))
        }
    };
    if header.fortran_order {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let dims = header.shape;
    if dims.len() != 1 {
        return Err(bad(&format!("expected a one-dimensional array, found shape {dims:?}")));
    }
    let expected = dims[0].checked_mul(width);
    if metadata.is_file() {
        let held = metadata.len().saturating_sub((start + header_len) as u64);
        if expected.map(|n| n as u64) != Some(held) {
            return Err(bad(&format!("holds {held} data bytes for {} values of {width} bytes", dims[0])));
        }
    }
    // A pipe or device has no size to compare: read one byte more than declared, at most.
    let limit = expected.map_or(u64::MAX, |n| n as u64 + 1);
    let mut data = Vec::new();
    data.try_reserve_exact(expected.unwrap_or(0).min(limit as usize))
        .map_err(|_| bad(&format!("{} values do not fit in memory", dims[0])))?;
    file.take(limit).read_to_end(&mut data).map_err(StageError::io("cannot read", path))?;
    if Some(data.len()) != expected {
        return Err(bad(&format!("holds {} data bytes for {} values of {width} bytes", data.len(), dims[0])));
    }
    Ok(if width == 4 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect()
    } else {
        data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
    })
}

/// The text between single quotes, when `v` is exactly one quoted string.
fn quoted(v: &str) -> Option<&str> {
    v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).filter(|v| !v.contains('\''))
}

/// The header dictionary of a `.npy` file: exactly the keys `descr` (a plain type string, not a
/// structured dtype), `fortran_order` and `shape` (a tuple of integers), each once.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> Result<Header, String> {
        let body =
            text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or("not a dictionary")?;
        // Split at the commas outside parentheses.
        let (mut items, mut depth, mut from) = (Vec::new(), 0i32, 0);
        for (i, c) in body.char_indices() {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&body[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        items.push(&body[from..]);
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once(':').ok_or_else(|| format!("no `key: value` in `{item}`"))?;
            let value = value.trim();
            let duplicate = |name: &str| format!("`{name}` given twice");
            match quoted(key.trim()) {
                Some("descr") => {
                    let v = quoted(value).ok_or("descr is not a plain type string")?;
                    if descr.replace(v.to_string()).is_some() {
                        return Err(duplicate("descr"));
                    }
                }
                Some("fortran_order") => {
                    let v = match value {
                        "True" => true,
                        "False" => false,
                        _ => return Err("fortran_order is neither True nor False".into()),
                    };
                    if fortran_order.replace(v).is_some() {
                        return Err(duplicate("fortran_order"));
                    }
                }
                Some("shape") => {
                    let inner = value
                        .strip_prefix('(')
                        .and_then(|v| v.strip_suffix(')'))
                        .ok_or("shape is not a tuple")?;
                    let dims = inner
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.parse::<usize>().map_err(|_| format!("shape entry `{d}` is not a size")))
                        .collect::<Result<Vec<usize>, String>>()?;
                    if shape.replace(dims).is_some() {
                        return Err(duplicate("shape"));
                    }
                }
                _ => return Err(format!("unexpected key {}", key.trim())),
            }
        }
        Ok(Header {
            descr: descr.ok_or("no descr")?,
            fortran_order: fortran_order.ok_or("no fortran_order")?,
            shape: shape.ok_or("no shape")?,
        })
    }
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

    #[test]
    fn two_dimensional_files_have_a_numpy_header_and_c_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.npy");
        write_f32_rows(&path, &[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes[10..]).into_owned();
        assert!(text.contains("'shape': (2, 3)"), "{text}");
        assert_eq!((bytes.len() - 24) % 64, 0, "header padded to 64 bytes");
        let data: Vec<f32> =
            bytes[bytes.len() - 24..].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(write_f32_rows(&path, &[vec![1.0], vec![1.0, 2.0]]).is_err());
        write_f32_rows(&path, &[vec![1.5, -2.0], vec![0.25, 4.0], vec![8.0, 9.0]]).unwrap();
        assert_eq!(read_f32_rows(&path).unwrap(), [vec![1.5, -2.0], vec![0.25, 4.0], vec![8.0, 9.0]]);
        write_f64(&path, &[1.0]).unwrap();
        assert!(read_f32_rows(&path).is_err());
    }

    /// Headers that only look like float arrays, and sizes that overflow, are refused (issue 12).
    #[test]
    fn refuses_structured_dtypes_misplaced_descriptions_and_overflowing_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.npy");
        let with_dict = |dict: &str, data: &[u8]| {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend((dict.len() as u16).to_le_bytes());
            bytes.extend(dict.as_bytes());
            bytes.extend(data);
            std::fs::write(&path, bytes).unwrap();
            read_f64(&path)
        };
        let ok =
            with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", &2.5f64.to_le_bytes());
        assert_eq!(ok.unwrap(), vec![2.5]);
        for (dict, why) in [
            ("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }", "plain type string"),
            ("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), 'x': '<f8'}", "unexpected key"),
            ("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", "'<i8'"),
            ("{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", "twice"),
            ("{'descr': '<f8', 'fortran_order': False, 'shape': (18446744073709551615,), }", "data bytes"),
            ("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }", "not a size"),
        ] {
            let error = with_dict(dict, &2.5f64.to_le_bytes()).unwrap_err().to_string();
            assert!(error.contains(why), "{dict}: {error}");
        }
    }
}
