//! PyTorch's checkpoint format, read without running anything and written the way `torch.save`
//! writes a state_dict.
//!
//! A `.pth` file is a zip archive: `<root>/data.pkl`, a pickle of the saved object in which
//! every tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` and
//! every storage a persistent id `('storage', torch.FloatStorage, '<key>', 'cpu', numel)`;
//! `<root>/data/<key>`, each storage's raw little-endian bytes; `<root>/version` and
//! `<root>/byteorder`.
//!
//! Reading: candle's pickle interpreter ([`candle_core::pickle::Stack`]) turns `data.pkl` into
//! a tree of objects without calling anything: a `GLOBAL` only names a class, a `REDUCE` only
//! records "call this with these arguments". The tree is then accepted only if it is a plain
//! state_dict: a dict (or `collections.OrderedDict`, with its `_metadata`) from names to
//! tensors, naming no other global than the tensor and storage constructors listed in
//! [`ALLOWED_GLOBALS`] (a whole pickled module names its class, `__main__.Net`, and is refused).
//! Unlike `torch.load(weights_only=False)`, nothing in the file is ever executed.
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::path::Path;

/// The largest `data.pkl` read: a state_dict's pickle is names and tensor headers (about 200
/// bytes a tensor), far below this; a larger one is refused rather than interpreted.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// The globals a plain state_dict's pickle names: the dict type, the tensor constructors and
/// the storage types. Any other is refused by name.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Why a `.pth` file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("not a PyTorch zip checkpoint: {0}")]
    Zip(String),
    #[error("its pickle cannot be read: {0}")]
    Pickle(String),
    #[error(
        "not a plain state_dict: the pickle names `{0}`, which is not a tensor constructor (save \
         `model.state_dict()`, not the model: a pickled object would need its code run to load)"
    )]
    Global(String),
    #[error("not a plain state_dict: {0}")]
    NotStateDict(String),
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
}

fn zip_error(e: impl std::fmt::Display) -> PthError {
    PthError::Zip(e.to_string())
}

/// Every class `object` names, anywhere in it.
fn globals(object: &Object, out: &mut Vec<(String, String)>) {
    match object {
        Object::Class { module_name, class_name } => out.push((module_name.clone(), class_name.clone())),
        Object::Tuple(items) | Object::List(items) => items.iter().for_each(|o| globals(o, out)),
        Object::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            globals(k, out);
            globals(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            globals(callable, out);
            globals(args, out)
        }
        Object::PersistentLoad(inner) => globals(inner, out),
        _ => {}
    }
}

/// A short description of a pickled value, for messages.
fn describe(object: &Object) -> String {
    match object {
        Object::Dict(pairs) => {
            let keys: Vec<String> = pairs
                .iter()
                .take(4)
                .map(|(k, _)| match k {
                    Object::Unicode(s) => format!("`{s}`"),
                    other => format!("{other:?}"),
                })
                .collect();
            format!("a dict with keys {}{}", keys.join(", "), if pairs.len() > 4 { ", …" } else { "" })
        }
        Object::Int(v) => format!("the integer {v}"),
        Object::Long(v) => format!("the integer {v}"),
        Object::Float(v) => format!("the number {v}"),
        Object::Unicode(s) => format!("the string {s:?}"),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::None => "None".into(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// The tensors of a PyTorch state_dict file, by name, in the file's order, onto the CPU.
/// Refuses anything but a plain state_dict (see the module documentation).
pub fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let bytes = std::fs::read(path).map_err(zip_error)?;
    read_pth_bytes(&bytes)
}

/// [`read_pth`] of a file's bytes.
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthError> {
    let entries = super::stored_zip::entries(bytes).map_err(PthError::Zip)?;
    let pickles: Vec<&String> =
        entries.keys().filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl").collect();
    let pickle_name = match pickles.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(PthError::Zip("no `data.pkl` in the archive".into())),
        many => return Err(PthError::Zip(format!("several pickles in the archive: {many:?}"))),
    };
    let root = pickle_name.strip_suffix("data.pkl").unwrap_or_default().to_string();
    let object = {
        let range = entries[&pickle_name].clone();
        if range.len() as u64 > MAX_PICKLE_BYTES {
            return Err(PthError::Pickle(format!(
                "`{pickle_name}` is {} bytes, more than a state_dict's pickle ({MAX_PICKLE_BYTES} at most)",
                range.len()
            )));
        }
        let mut reader = BufReader::new(&bytes[range]);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader).map_err(|e| PthError::Pickle(e.to_string()))?;
        stack.finalize().map_err(|e| PthError::Pickle(e.to_string()))?
    };
    let mut named = Vec::new();
    globals(&object, &mut named);
    if let Some((module, class)) =
        named.iter().find(|(m, c)| !ALLOWED_GLOBALS.iter().any(|(am, ac)| am == m && ac == c))
    {
        return Err(PthError::Global(format!("{module}.{class}")));
    }
    let Object::Dict(pairs) = object else {
        return Err(PthError::NotStateDict(format!(
            "the file holds {}, not a dict of tensors",
            describe(&object)
        )));
    };
    let mut tensors = Vec::with_capacity(pairs.len());
    let data_dir = Path::new(root.trim_end_matches('/')).join("data");
    for (key, value) in pairs {
        let Object::Unicode(name) = key.clone() else {
            return Err(PthError::NotStateDict(format!("a key is {}, not a name", describe(&key))));
        };
        // An OrderedDict state_dict carries its modules' versions as `_metadata`.
        if name == "_metadata" && matches!(value, Object::Dict(_)) {
            continue;
        }
        let shown = describe(&value);
        let info = value
            .into_tensor_info(key, &data_dir)
            .map_err(|e| PthError::Tensor { name: name.clone(), message: e.to_string() })?
            .ok_or_else(|| {
                PthError::NotStateDict(format!(
                    "`{name}` is {shown}, not a tensor (a training checkpoint that holds a state_dict \
                     under a key: save that entry on its own)"
                ))
            })?;
        let storage = entries.get(&info.path).map(|r| &bytes[r.clone()]).ok_or_else(|| PthError::Tensor {
            name: name.clone(),
            message: format!("its storage `{}` is not in the archive", info.path),
        })?;
        let tensor = read_storage(storage, &info)
            .map_err(|message| PthError::Tensor { name: name.clone(), message })?;
        let order = info.path.rsplit('/').next().and_then(|k| k.parse::<u64>().ok()).unwrap_or(u64::MAX);
        tensors.push((order, name, tensor));
    }
    // candle's interpreter reverses each batch of SETITEMS; PyTorch numbers storages in the
    // order it pickles them (the state_dict's order), which gives the file's order back.
    tensors.sort_by_key(|(order, _, _)| *order);
    Ok(tensors.into_iter().map(|(_, name, tensor)| (name, tensor)).collect())
}

/// One tensor's values: its storage's bytes, from its offset, in its (contiguous) layout.
fn read_storage(storage: &[u8], info: &candle_core::pickle::TensorInfo) -> Result<Tensor, String> {
    let layout = &info.layout;
    if !layout.is_contiguous() {
        return Err(format!("strided storage {:?} (only contiguous tensors are read)", layout.stride()));
    }
    let size = info.dtype.size_in_bytes();
    let start = layout.start_offset();
    let end = start + layout.shape().elem_count() * size;
    let data = storage.get(start..end).ok_or_else(|| {
        format!(
            "storage `{}` holds {} bytes, the tensor needs bytes {start}..{end}",
            info.path,
            storage.len()
        )
    })?;
    Tensor::from_raw_buffer(data, info.dtype, layout.dims(), &Device::Cpu).map_err(|e| e.to_string())
}

/// The storage class and element size PyTorch pickles for `dtype`.
fn storage_class(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::U8 => "ByteStorage",
        _ => return None,
    })
}

/// A pickle (protocol 2) writer for exactly what a state_dict needs.
struct Pickle {
    out: Vec<u8>,
    memo: u32,
}

impl Pickle {
    fn op(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
    fn put(&mut self) {
        // BINPUT / LONG_BINPUT: PyTorch's unpickler does not need memo entries, but a memo
        // index per object keeps the stream what `pickle.dumps` writes.
        if self.memo < 256 {
            self.op(&[b'q', self.memo as u8]);
        } else {
            self.op(b"r");
            self.op(&self.memo.to_le_bytes());
        }
        self.memo += 1;
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b"c");
        self.op(module.as_bytes());
        self.op(b"\n");
        self.op(name.as_bytes());
        self.op(b"\n");
        self.put();
    }
    fn string(&mut self, s: &str) {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
        self.put();
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.op(&[b'K', v as u8]);
        } else if v < 65536 {
            self.op(b"M");
            self.op(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.op(b"J");
            self.op(&(v as i32).to_le_bytes());
        } else {
            // LONG1 with 8 bytes: storage sizes past 2^31 elements.
            self.op(&[0x8a, 8]);
            self.op(&(v as i64).to_le_bytes());
        }
    }
    fn tuple_of_ints(&mut self, values: &[usize]) {
        match values.len() {
            0 => self.op(b")"),
            1..=3 => {
                values.iter().for_each(|&v| self.int(v));
                self.op(&[[0x85, 0x86, 0x87][values.len() - 1]]);
            }
            _ => {
                self.op(b"(");
                values.iter().for_each(|&v| self.int(v));
                self.op(b"t");
            }
        }
        self.put();
    }
}

/// Writes `tensors` as PyTorch writes `torch.save(state_dict)`: a zip (entries stored, as
/// PyTorch stores them) of `archive/data.pkl` (an `OrderedDict` of `_rebuild_tensor_v2`
/// calls), `archive/data/<i>` (each tensor's values, little-endian), `archive/version` and
/// `archive/byteorder`. `torch.load(…, weights_only=True)` reads it.
pub fn write_pth(tensors: &[(String, Tensor)], path: &Path) -> Result<(), PthError> {
    let mut p = Pickle { out: vec![0x80, 2], memo: 0 };
    p.global("collections", "OrderedDict");
    p.op(b")");
    p.op(b"R");
    p.put();
    let mut storages: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    if !tensors.is_empty() {
        p.op(b"(");
    }
    for (i, (name, tensor)) in tensors.iter().enumerate() {
        let dtype = tensor.dtype();
        let class = storage_class(dtype).ok_or_else(|| PthError::Tensor {
            name: name.clone(),
            message: format!("dtype {dtype:?} has no PyTorch storage here"),
        })?;
        let tensor = tensor
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .map_err(|e| PthError::Tensor { name: name.clone(), message: e.to_string() })?;
        let dims = tensor.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * dims[d + 1];
        }
        let numel = tensor.elem_count();
        storages
            .push(tensor_bytes(&tensor).map_err(|message| PthError::Tensor { name: name.clone(), message })?);
        p.string(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        // (persistent id, offset, size, stride, requires_grad, backward_hooks)
        p.op(b"(");
        p.op(b"(");
        p.string("storage");
        p.global("torch", class);
        p.string(&i.to_string());
        p.string("cpu");
        p.int(numel);
        p.op(b"t");
        p.put();
        p.op(b"Q");
        p.int(0);
        p.tuple_of_ints(&dims);
        p.tuple_of_ints(&strides);
        p.op(b"\x89"); // False
        p.global("collections", "OrderedDict");
        p.op(b")");
        p.op(b"R");
        p.put();
        p.op(b"t");
        p.put();
        p.op(b"R");
        p.put();
    }
    if !tensors.is_empty() {
        p.op(b"u");
    }
    p.op(b".");

    let file = std::fs::File::create(path).map_err(zip_error)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let add = |zip: &mut zip::ZipWriter<std::fs::File>, name: &str, bytes: &[u8]| -> Result<(), PthError> {
        zip.start_file(name, options).map_err(zip_error)?;
        zip.write_all(bytes).map_err(zip_error)
    };
    add(&mut zip, "archive/data.pkl", &p.out)?;
    add(&mut zip, "archive/byteorder", b"little")?;
    for (i, bytes) in storages.iter().enumerate() {
        add(&mut zip, &format!("archive/data/{i}"), bytes)?;
    }
    add(&mut zip, "archive/version", b"3\n")?;
    zip.finish().map_err(zip_error)?;
    Ok(())
}

/// A contiguous CPU tensor's values as little-endian bytes.
fn tensor_bytes(tensor: &Tensor) -> Result<Vec<u8>, String> {
    let flat = tensor.flatten_all().map_err(|e| e.to_string())?;
    let bytes = match tensor.dtype() {
        DType::F32 => {
            flat.to_vec1::<f32>().map_err(|e| e.to_string())?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::F64 => {
            flat.to_vec1::<f64>().map_err(|e| e.to_string())?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I64 => {
            flat.to_vec1::<i64>().map_err(|e| e.to_string())?.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::U8 => flat.to_vec1::<u8>().map_err(|e| e.to_string())?,
        other => {
            let f = flat.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            return Err(format!("dtype {other:?} is written as f32 only ({} values)", f.elem_count()));
        }
    };
    Ok(bytes)
}

/// Whether `path` names a safetensors file (by its extension); anything else is read as
/// PyTorch's zip format.
pub fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// The tensors of the bytes of the file `path` (safetensors or PyTorch's zip format, by the
/// extension), in the file's order (safetensors: by name), on the CPU.
pub fn read_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    if is_safetensors(path) {
        let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| PthError::Zip(format!("not a valid safetensors file: {e}")))?;
        let sorted: BTreeMap<String, Tensor> = map.into_iter().collect();
        Ok(sorted.into_iter().collect())
    } else {
        read_pth_bytes(bytes)
    }
}

/// [`read_bytes`] of the file at `path`.
pub fn read_any(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let bytes = std::fs::read(path).map_err(|e| PthError::Zip(format!("cannot read: {e}")))?;
    read_bytes(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written here reads back with the same names, order, shapes, dtypes and values.
    #[test]
    fn written_pth_reads_back_the_same_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin()).collect();
        let tensors = vec![
            ("z.weight".to_string(), Tensor::from_vec(values.clone(), (3, 4, 5, 5), &dev).unwrap()),
            ("a.bias".to_string(), Tensor::from_vec(values[..7].to_vec(), 7, &dev).unwrap()),
            ("bn.num_batches_tracked".to_string(), Tensor::new(12i64, &dev).unwrap()),
        ];
        write_pth(&tensors, &path).unwrap();
        let back = read_pth(&path).unwrap();
        assert_eq!(back.len(), 3);
        for ((name, t), (back_name, b)) in tensors.iter().zip(&back) {
            assert_eq!(name, back_name);
            assert_eq!(t.dims(), b.dims());
            assert_eq!(t.dtype(), b.dtype());
        }
        assert_eq!(back[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
        assert_eq!(back[2].1.to_scalar::<i64>().unwrap(), 12);
    }

    #[test]
    fn a_pickle_that_names_another_class_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.pth");
        // The pickle of `os.system("true")`: GLOBAL os.system, ("true",), REDUCE.
        let pickle = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        let file = std::fs::File::create(&path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let options =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", options).unwrap();
        zip.write_all(pickle).unwrap();
        zip.finish().unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(err.contains("`os.system`"), "{err}");
        assert!(err.contains("not a plain state_dict"), "{err}");
    }
}
