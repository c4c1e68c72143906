//! MNIST's IDX format (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, …):
//! a big-endian header (magic, dimensions) followed by unsigned bytes. Class subsets are
//! relabelled 0..K−1 in the order given.
use super::image_set::{ImageSet, Split};
use super::subset::ClassFilter;
use crate::error::ParamError;
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// An IDX dataset: a folder with the four MNIST files, optionally a subset of its classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdxSpec {
    /// Folder holding `train-*` and `t10k-*` files, gzipped or not.
    pub root: PathBuf,
    /// Keep only these labels, relabelled 0..K−1 in this order (default: all).
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    /// Keep at most this many samples of each split (after the class filter).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Leave out the first `skip` samples of the listed classes (before `limit`): with the
    /// `limit` of a training set's declaration, a held-out validation set from the same split.
    /// Left out of the declaration when unset, so existing fingerprints stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<usize>,
    /// The train split's images and labels files in `root`, when they are not MNIST's names
    /// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, each gzipped or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_files: Option<[String; 2]>,
    /// The test split's images and labels files (default: MNIST's `t10k-…` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_files: Option<[String; 2]>,
}

impl IdxSpec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if let Some(classes) = &self.classes {
            if classes.is_empty() {
                problems.push(ParamError::new(&["classes"], "must name at least one class"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, c) in classes.iter().enumerate() {
                if !seen.insert(c) {
                    problems.push(ParamError::new(
                        &["classes", &i.to_string()],
                        format!("class {c} is listed twice"),
                    ));
                }
            }
        }
        if self.limit == Some(0) {
            problems.push(ParamError::new(&["limit"], "must be at least 1"));
        }
        problems
    }

    fn prefix(split: Split) -> &'static str {
        match split {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// The images and labels file of a split: the names given in the recipe, or MNIST's,
    /// gzipped or plain, whichever exists.
    fn split_files(&self, split: Split) -> Result<(PathBuf, PathBuf), StageError> {
        let given = match split {
            Split::Train => &self.train_files,
            Split::Test => &self.test_files,
        };
        if let Some([images, labels]) = given {
            let find = |name: &String| -> Result<PathBuf, StageError> {
                let path = self.root.join(name);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(StageError::Format {
                        path: path.clone(),
                        message: format!(
                            "missing IDX file (named in the recipe, looked for in `{}`)",
                            self.root.display()
                        ),
                    })
                }
            };
            return Ok((find(images)?, find(labels)?));
        }
        let find = |stem: String| -> Result<PathBuf, StageError> {
            for candidate in [format!("{stem}.gz"), stem.clone()] {
                let path = self.root.join(&candidate);
                if path.is_file() {
                    return Ok(path);
                }
            }
            Err(StageError::Format {
                path: self.root.join(&stem),
                message: format!(
                    "missing IDX file (expected `{stem}` or `{stem}.gz` in `{}`; MNIST's files are \
                     train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, \
                     t10k-labels-idx1-ubyte.gz)",
                    self.root.display()
                ),
            })
        };
        let prefix = Self::prefix(split);
        Ok((find(format!("{prefix}-images-idx3-ubyte"))?, find(format!("{prefix}-labels-idx1-ubyte"))?))
    }

    /// The files of every split present: both for a full set, one split's pair for a set that
    /// has only that split (an OOD set often has only test files). Neither is an error.
    pub(super) fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        match (self.split_files(Split::Train), self.split_files(Split::Test)) {
            (Ok((a, b)), Ok((c, d))) => Ok(vec![a, b, c, d]),
            (Ok((a, b)), Err(_)) | (Err(_), Ok((a, b))) => Ok(vec![a, b]),
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// A requested class beyond the largest label of the split's labels file (a typo such as
    /// class 10 of MNIST's 0–9 would otherwise train on a class without a single image). A class
    /// within the range that a small split happens to lack is allowed.
    fn check_classes_present(&self, labels_path: &Path, labels: &[u8]) -> Result<(), StageError> {
        let Some(classes) = &self.classes else { return Ok(()) };
        let largest = labels.iter().copied().max().unwrap_or(0) as u32;
        match classes.iter().find(|&&c| c > largest) {
            Some(missing) => Err(StageError::Unsuitable(format!(
                "class {missing} does not occur in `{}` (its labels run from 0 to {largest})",
                labels_path.display()
            ))),
            None => Ok(()),
        }
    }

    /// The shape of a split's images, from the images file's header alone; the labels file is
    /// read to check that the requested classes occur.
    pub(super) fn shape(&self, split: Split) -> Result<[usize; 3], StageError> {
        let (images_path, labels_path) = self.split_files(split)?;
        let (_, labels) = read_idx(&labels_path, LABELS_MAGIC, 1)?;
        self.check_classes_present(&labels_path, &labels)?;
        super::subset::check_skip(self.skip, self.classes.as_deref(), labels.iter().copied(), &labels_path)?;
        let file = std::fs::File::open(&images_path).map_err(StageError::io("cannot read", &images_path))?;
        let mut head = Vec::new();
        let mut reader = std::io::BufReader::new(file);
        let mut magic = [0u8; 2];
        reader.read_exact(&mut magic).map_err(StageError::io("cannot read", &images_path))?;
        let chained = std::io::Cursor::new(magic).chain(reader);
        let read = if magic == [0x1f, 0x8b] {
            flate2::read::GzDecoder::new(chained).take(16).read_to_end(&mut head)
        } else {
            chained.take(16).read_to_end(&mut head)
        };
        read.map_err(|e| StageError::Format {
            path: images_path.clone(),
            message: format!("unreadable header: {e}"),
        })?;
        let word =
            |i: usize| head.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match (word(0), word(2), word(3)) {
            (Some(IMAGES_MAGIC), Some(h), Some(w)) => Ok([1, h as usize, w as usize]),
            _ => Err(StageError::Format {
                path: images_path,
                message: "not an IDX images file (magic 0x00000803 and three dimensions expected)".into(),
            }),
        }
    }

    pub(super) fn load(&self, split: Split) -> Result<ImageSet, StageError> {
        let (images_path, labels_path) = self.split_files(split)?;
        let (image_dims, pixels) = read_idx(&images_path, IMAGES_MAGIC, 3)?;
        let (label_dims, raw_labels) = read_idx(&labels_path, LABELS_MAGIC, 1)?;
        self.check_classes_present(&labels_path, &raw_labels)?;
        if image_dims[0] != label_dims[0] {
            return Err(StageError::Format {
                path: labels_path,
                message: format!(
                    "{} labels for {} images in `{}`",
                    label_dims[0],
                    image_dims[0],
                    images_path.display()
                ),
            });
        }
        let (h, w) = (image_dims[1], image_dims[2]);
        // Without a class list, every label up to the largest in the file is a class.
        let total = raw_labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
            .max(256 * usize::from(self.classes.is_some()));
        let filter = ClassFilter::new(self.classes.as_deref(), total, self.limit)
            .map_err(StageError::Unsuitable)?
            .skipping(self.skip.unwrap_or(0));
        let records =
            raw_labels.iter().zip(pixels.chunks_exact(h * w)).map(|(&label, image)| (label as u32, image));
        let set = filter.collect(records, [1, h, w], &labels_path)?;
        Ok(set)
    }
}

/// Reads an IDX file of unsigned bytes: returns its dimensions and data.
fn read_idx(path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>), StageError> {
    let raw = std::fs::read(path).map_err(StageError::io("cannot read", path))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| StageError::Format {
            path: path.into(),
            message: format!("corrupt gzip data: {e}"),
        })?;
        out
    } else {
        raw
    };
    let bad = |message: String| StageError::Format { path: path.into(), message };
    let word = |i: usize| -> Result<u32, StageError> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad(format!("truncated header ({} bytes)", bytes.len())))
    };
    let found = word(0)?;
    if found != magic {
        return Err(bad(format!(
            "not an IDX file of rank {rank} with unsigned bytes (magic {found:#010x}, expected {magic:#010x})"
        )));
    }
    let dims = (1..=rank).map(|i| word(i).map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
    let header = 4 * (rank + 1);
    let expected = dims.iter().product::<usize>();
    if bytes.len() - header != expected {
        return Err(bad(format!(
            "holds {} data bytes, its header {:?} says {expected}",
            bytes.len() - header,
            dims
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Writes an IDX images/labels pair (`{prefix}-images-idx3-ubyte[.gz]`, …) of `side`×`side`
/// images whose pixels `pixel(sample, position)` gives: a fixture for tests.
#[cfg(test)]
pub(crate) fn write_idx_fixture(
    dir: &Path,
    prefix: &str,
    labels: &[u8],
    side: u32,
    gzip: bool,
    pixel: impl Fn(usize, usize) -> u8,
) {
    let n = labels.len() as u32;
    let mut images = Vec::new();
    images.extend(IMAGES_MAGIC.to_be_bytes());
    for d in [n, side, side] {
        images.extend(d.to_be_bytes());
    }
    for i in 0..labels.len() {
        images.extend((0..(side * side) as usize).map(|p| pixel(i, p)));
    }
    let mut label_file = LABELS_MAGIC.to_be_bytes().to_vec();
    label_file.extend(n.to_be_bytes());
    label_file.extend(labels);
    for (name, data) in [("images-idx3-ubyte", images), ("labels-idx1-ubyte", label_file)] {
        if gzip {
            use std::io::Write;
            let file = std::fs::File::create(dir.join(format!("{prefix}-{name}.gz"))).unwrap();
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            enc.write_all(&data).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(dir.join(format!("{prefix}-{name}")), data).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_idx(dir: &Path, prefix: &str, labels: &[u8], gzip: bool) {
        let pixels = [0u8, 255, 0, 51];
        write_idx_fixture(
            dir,
            prefix,
            labels,
            2,
            gzip,
            |i, p| if p == 0 { labels[i] * 10 } else { pixels[p] },
        );
    }

    #[test]
    fn loads_subsets_relabelled_from_gzip_and_plain() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(dir.path(), "train", &[3, 1, 4, 1, 5], true);
        write_idx(dir.path(), "t10k", &[9, 4], false);
        let spec = IdxSpec {
            root: dir.path().into(),
            classes: Some(vec![4, 1]),
            limit: None,
            skip: None,
            train_files: None,
            test_files: None,
        };
        let train = spec.load(Split::Train).unwrap();
        assert_eq!(train.labels, vec![1, 0, 1]);
        assert_eq!(train.shape, [1, 2, 2]);
        assert_eq!(train.num_classes, 2);
        assert_eq!(train.image(1), &[40.0 / 255.0, 1.0, 0.0, 0.2]);
        let test = spec.load(Split::Test).unwrap();
        assert_eq!(test.labels, vec![0]);
        let limited = IdxSpec { limit: Some(2), ..spec.clone() }.load(Split::Train).unwrap();
        assert_eq!(limited.labels, vec![1, 0]);
        // The held-out part after them: disjoint, and what follows in the file.
        let all = spec.load(Split::Train).unwrap();
        let rest = IdxSpec { skip: Some(2), ..spec.clone() }.load(Split::Train).unwrap();
        assert_eq!(rest.labels, all.labels[2..]);
        assert_eq!(rest.pixels, all.pixels[2 * 2 * 2..]);
        assert_eq!(spec.files().unwrap().len(), 4);
    }

    #[test]
    fn malformed_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let spec = IdxSpec {
            root: dir.path().into(),
            classes: None,
            limit: None,
            skip: None,
            train_files: None,
            test_files: None,
        };
        let missing = spec.load(Split::Train).unwrap_err().to_string();
        assert!(missing.contains("train-images-idx3-ubyte"), "{missing}");
        write_idx(dir.path(), "train", &[1, 2], false);
        let path = dir.path().join("train-images-idx3-ubyte");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, bytes).unwrap();
        let err = spec.load(Split::Train).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("header"), "{err}");
        std::fs::write(&path, b"junk").unwrap();
        assert!(spec.load(Split::Train).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn a_test_only_set_loads_and_files_may_have_other_names() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(dir.path(), "t10k", &[2, 0, 1], true);
        let spec = IdxSpec {
            root: dir.path().into(),
            classes: None,
            limit: None,
            skip: None,
            train_files: None,
            test_files: None,
        };
        assert_eq!(spec.load(Split::Test).unwrap().labels, vec![2, 0, 1]);
        assert_eq!(spec.files().unwrap().len(), 2, "the test pair alone");
        assert_eq!(spec.shape(Split::Test).unwrap(), [1, 2, 2], "from the gzipped header");
        assert!(spec.load(Split::Train).unwrap_err().to_string().contains("missing IDX file"));
        // Files under names of one's own, given in the recipe.
        std::fs::rename(dir.path().join("t10k-images-idx3-ubyte.gz"), dir.path().join("digits.gz")).unwrap();
        std::fs::rename(dir.path().join("t10k-labels-idx1-ubyte.gz"), dir.path().join("labels.gz")).unwrap();
        assert!(spec.files().is_err(), "neither split is there under MNIST's names");
        let named = IdxSpec { test_files: Some(["digits.gz".into(), "labels.gz".into()]), ..spec.clone() };
        assert_eq!(named.load(Split::Test).unwrap().len(), 3);
        assert_eq!(named.shape(Split::Test).unwrap(), [1, 2, 2]);
    }

    /// A requested class that no label has is refused, by `check` (through the shape) and by
    /// loading (issue 12).
    #[test]
    fn a_class_that_does_not_occur_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(dir.path(), "t10k", &[0, 1, 2, 1], false);
        let spec = IdxSpec {
            root: dir.path().into(),
            classes: Some(vec![0, 1, 10]),
            limit: None,
            skip: None,
            train_files: None,
            test_files: None,
        };
        let error = spec.shape(Split::Test).unwrap_err().to_string();
        assert!(error.contains("class 10 does not occur") && error.contains("0 to 2"), "{error}");
        assert!(spec.load(Split::Test).is_err());
        let fine = IdxSpec { classes: Some(vec![2, 0]), ..spec };
        assert_eq!(fine.load(Split::Test).unwrap().labels, vec![1, 0]);
    }
}
