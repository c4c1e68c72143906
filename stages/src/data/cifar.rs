//! CIFAR-10 and CIFAR-100, binary versions (docs/methods.md §9): records of label byte(s) followed by 3,072
//! bytes, the R, G and B planes of a 32×32 image. CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin`
//! and `test_batch.bin`, one label byte. CIFAR-100: `train.bin` and `test.bin`, a coarse then a
//! fine label byte.
use super::image_set::{ImageSet, Split};
use super::subset::ClassFilter;
use crate::error::ParamError;
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const IMAGE_BYTES: usize = 3 * 32 * 32;

/// A CIFAR-10 binary folder (`cifar-10-batches-bin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar10Spec {
    pub root: PathBuf,
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Leave out the first `skip` images of the listed classes (before `limit`): a part of a
    /// split held out from another declaration's `limit`. Left out of the declaration when
    /// unset, so existing fingerprints stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<usize>,
}

/// Which CIFAR-100 label to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cifar100Labels {
    /// The 100 fine classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// A CIFAR-100 binary folder (`cifar-100-binary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar100Spec {
    pub root: PathBuf,
    #[serde(default)]
    pub labels: Cifar100Labels,
    #[serde(default)]
    pub classes: Option<Vec<u32>>,
    #[serde(default)]
    pub limit: Option<usize>,
}

fn check_common(classes: &Option<Vec<u32>>, limit: Option<usize>, total: usize) -> Vec<ParamError> {
    let mut problems = Vec::new();
    if let Some(list) = classes {
        if let Err(message) = ClassFilter::new(Some(list), total, limit) {
            problems.push(ParamError::new(&["classes"], message));
        }
        if list.is_empty() {
            problems.push(ParamError::new(&["classes"], "must name at least one class"));
        }
    }
    if limit == Some(0) {
        problems.push(ParamError::new(&["limit"], "must be at least 1"));
    }
    problems
}

/// `root/name`, or an error saying how to get it (`fetch` names the catalogue entry).
fn require(root: &Path, name: &str, fetch: &str) -> Result<PathBuf, StageError> {
    let path = root.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(StageError::Format {
            path,
            message: format!(
                "missing CIFAR file `{name}` in `{}` ({})",
                root.display(),
                super::catalogue::how_to_get(fetch, root)
            ),
        })
    }
}

/// Reads `files`, each a whole number of records of `label_bytes` label bytes + one image.
fn read_records(files: &[PathBuf], label_bytes: usize) -> Result<Vec<(Vec<u8>, PathBuf)>, StageError> {
    let record = label_bytes + IMAGE_BYTES;
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(StageError::io("cannot read", path))?;
            if bytes.is_empty() || bytes.len() % record != 0 {
                return Err(StageError::Format {
                    path: path.clone(),
                    message: format!("{} bytes is not a whole number of {record}-byte records", bytes.len()),
                });
            }
            Ok((bytes, path.clone()))
        })
        .collect()
}

impl Cifar10Spec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        check_common(&self.classes, self.limit, 10)
    }

    fn split_files(&self, split: Split) -> Result<Vec<PathBuf>, StageError> {
        let names: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".into()],
        };
        names.iter().map(|n| require(&self.root, n, "cifar10")).collect()
    }

    pub(super) fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        let mut files = self.split_files(Split::Train)?;
        files.extend(self.split_files(Split::Test)?);
        Ok(files)
    }

    /// The files of a split, and (for `check`) a `skip` that leaves no image of the listed
    /// classes, found from the label bytes alone (one read per record, not the 150 MB).
    pub(super) fn check_split(&self, split: Split) -> Result<(), StageError> {
        let files = self.split_files(split)?;
        if self.skip.is_none_or(|s| s == 0) {
            return Ok(());
        }
        let mut labels = Vec::new();
        for path in &files {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(path).map_err(StageError::io("cannot read", path))?;
            let len = file.metadata().map_err(StageError::io("cannot read", path))?.len();
            let record = (1 + IMAGE_BYTES) as u64;
            let mut label = [0u8; 1];
            for at in (0..len / record).map(|r| r * record) {
                file.seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(&mut label))
                    .map_err(StageError::io("cannot read", path))?;
                labels.push(label[0]);
            }
        }
        super::subset::check_skip(self.skip, self.classes.as_deref(), labels, &self.root)
    }

    pub(super) fn load(&self, split: Split) -> Result<ImageSet, StageError> {
        let files = read_records(&self.split_files(split)?, 1)?;
        let filter = ClassFilter::new(self.classes.as_deref(), 10, self.limit)
            .map_err(StageError::Unsuitable)?
            .skipping(self.skip.unwrap_or(0));
        let records = files
            .iter()
            .flat_map(|(bytes, _)| bytes.chunks_exact(1 + IMAGE_BYTES).map(|r| (r[0] as u32, &r[1..])));
        check_labels(&files)?;
        filter.collect(records, [3, 32, 32], &self.root)
    }
}

impl Cifar100Spec {
    fn total(&self) -> usize {
        match self.labels {
            Cifar100Labels::Fine => 100,
            Cifar100Labels::Coarse => 20,
        }
    }

    pub(super) fn check(&self) -> Vec<ParamError> {
        check_common(&self.classes, self.limit, self.total())
    }

    pub(super) fn split_file(&self, split: Split) -> Result<PathBuf, StageError> {
        let name = match split {
            Split::Train => "train.bin",
            Split::Test => "test.bin",
        };
        require(&self.root, name, "cifar100")
    }

    pub(super) fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        Ok(vec![self.split_file(Split::Train)?, self.split_file(Split::Test)?])
    }

    pub(super) fn load(&self, split: Split) -> Result<ImageSet, StageError> {
        let files = read_records(&[self.split_file(split)?], 2)?;
        let filter = ClassFilter::new(self.classes.as_deref(), self.total(), self.limit)
            .map_err(StageError::Unsuitable)?;
        let which = usize::from(self.labels == Cifar100Labels::Fine);
        let records = files.iter().flat_map(|(bytes, _)| {
            bytes.chunks_exact(2 + IMAGE_BYTES).map(move |r| (r[which] as u32, &r[2..]))
        });
        filter.collect(records, [3, 32, 32], &self.root)
    }
}

/// A CIFAR-10 label byte above 9 means the file is not CIFAR-10 (e.g. CIFAR-100's layout).
fn check_labels(files: &[(Vec<u8>, PathBuf)]) -> Result<(), StageError> {
    for (bytes, path) in files {
        if let Some(bad) = bytes.chunks_exact(1 + IMAGE_BYTES).map(|r| r[0]).find(|&l| l >= 10) {
            return Err(StageError::Format {
                path: path.clone(),
                message: format!(
                    "label byte {bad} is not a CIFAR-10 class (0–9): is this CIFAR-100's train.bin?"
                ),
            });
        }
    }
    Ok(())
}
