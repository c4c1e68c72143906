//! Datasets: how a recipe declares them ([`DatasetSpec`]), and loading them into memory as
//! [`ImageSet`]s of [0, 1] pixels. Formats: MNIST's IDX files (`idx`), CIFAR-10/100 binary
//! (`cifar10-bin`, `cifar100-bin`), SVHN's MAT files (`svhn-mat`), folders of images
//! (`image-folder`), and seeded synthetic noise (`gaussian-noise`, `uniform-noise`).
pub mod catalogue;
mod cifar;
pub mod extent;
pub(crate) mod idx;
mod image_folder;
pub mod image_set;
mod subset;
mod svhn;
mod synthetic;

pub use cifar::{Cifar100Labels, Cifar100Spec, Cifar10Spec};
pub use extent::Extent;
pub use idx::IdxSpec;
pub use image_folder::ImageFolderSpec;
pub use image_set::{ImageSet, Split};
pub use svhn::{read_mat, MatArray, SvhnSpec};
pub use synthetic::{GaussianNoiseSpec, UniformNoiseSpec};

use crate::error::ParamError;
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A dataset as a recipe declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum DatasetSpec {
    Idx(IdxSpec),
    Cifar10Bin(Cifar10Spec),
    Cifar100Bin(Cifar100Spec),
    SvhnMat(SvhnSpec),
    ImageFolder(ImageFolderSpec),
    GaussianNoise(GaussianNoiseSpec),
    UniformNoise(UniformNoiseSpec),
}

/// A dataset format: its name in recipes and its fields (besides `format`).
pub struct DatasetFormat {
    pub name: &'static str,
    pub fields: fn() -> &'static [&'static str],
}

/// Every dataset format.
pub const FORMATS: &[DatasetFormat] = &[
    DatasetFormat { name: "idx", fields: crate::fields::struct_fields::<IdxSpec> },
    DatasetFormat { name: "cifar10-bin", fields: crate::fields::struct_fields::<Cifar10Spec> },
    DatasetFormat { name: "cifar100-bin", fields: crate::fields::struct_fields::<Cifar100Spec> },
    DatasetFormat { name: "svhn-mat", fields: crate::fields::struct_fields::<SvhnSpec> },
    DatasetFormat { name: "image-folder", fields: crate::fields::struct_fields::<ImageFolderSpec> },
    DatasetFormat { name: "gaussian-noise", fields: crate::fields::struct_fields::<GaussianNoiseSpec> },
    DatasetFormat { name: "uniform-noise", fields: crate::fields::struct_fields::<UniformNoiseSpec> },
];

/// The format names, for messages.
pub fn format_names() -> String {
    FORMATS.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
}

impl DatasetSpec {
    /// Parses a dataset declaration; errors name the offending field.
    pub fn from_json(value: serde_json::Value) -> Result<DatasetSpec, ParamError> {
        let serde_json::Value::Object(mut fields) = value else {
            return Err(ParamError::new(&[], "a dataset must be a table"));
        };
        let format = match fields.remove("format") {
            Some(serde_json::Value::String(format)) => format,
            Some(other) => {
                return Err(ParamError::new(&["format"], format!("expected a string, found {other}")))
            }
            None => {
                return Err(ParamError::new(
                    &[],
                    format!("missing field `format` (one of {})", format_names()),
                ))
            }
        };
        let fields = serde_json::Value::Object(fields);
        // Deserialised per format so that errors keep the path of the offending field.
        match format.as_str() {
            "idx" => ParamError::deserialize(fields).map(DatasetSpec::Idx),
            "cifar10-bin" => ParamError::deserialize(fields).map(DatasetSpec::Cifar10Bin),
            "cifar100-bin" => ParamError::deserialize(fields).map(DatasetSpec::Cifar100Bin),
            "svhn-mat" => ParamError::deserialize(fields).map(DatasetSpec::SvhnMat),
            "image-folder" => ParamError::deserialize(fields).map(DatasetSpec::ImageFolder),
            "gaussian-noise" => ParamError::deserialize(fields).map(DatasetSpec::GaussianNoise),
            "uniform-noise" => ParamError::deserialize(fields).map(DatasetSpec::UniformNoise),
            other => Err(ParamError::new(
                &["format"],
                format!("unknown format `{other}`, expected one of {}", format_names()),
            )),
        }
    }

    /// Makes relative paths absolute against `base` (the recipe's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        let root = match self {
            DatasetSpec::Idx(spec) => &mut spec.root,
            DatasetSpec::Cifar10Bin(spec) => &mut spec.root,
            DatasetSpec::Cifar100Bin(spec) => &mut spec.root,
            DatasetSpec::SvhnMat(spec) => &mut spec.root,
            DatasetSpec::ImageFolder(spec) => &mut spec.root,
            DatasetSpec::GaussianNoise(_) | DatasetSpec::UniformNoise(_) => return,
        };
        if root.is_relative() {
            *root = base.join(&*root);
        }
    }

    /// The files this dataset reads, for fingerprinting. Errors if a required file is missing.
    pub fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        match self {
            DatasetSpec::Idx(spec) => spec.files(),
            DatasetSpec::Cifar10Bin(spec) => spec.files(),
            DatasetSpec::Cifar100Bin(spec) => spec.files(),
            DatasetSpec::SvhnMat(spec) => spec.files(),
            DatasetSpec::ImageFolder(spec) => spec.files(),
            DatasetSpec::GaussianNoise(_) | DatasetSpec::UniformNoise(_) => Ok(Vec::new()),
        }
    }

    /// Checks beyond types.
    pub fn check(&self) -> Vec<ParamError> {
        match self {
            DatasetSpec::Idx(spec) => spec.check(),
            DatasetSpec::Cifar10Bin(spec) => spec.check(),
            DatasetSpec::Cifar100Bin(spec) => spec.check(),
            DatasetSpec::SvhnMat(spec) => spec.check(),
            DatasetSpec::ImageFolder(spec) => spec.check(),
            DatasetSpec::GaussianNoise(spec) => spec.check(),
            DatasetSpec::UniformNoise(spec) => spec.check(),
        }
    }

    /// The shape of a split's images without loading them (headers only), checking that the
    /// files it needs are there.
    pub fn shape(&self, split: Split) -> Result<[usize; 3], StageError> {
        match self {
            DatasetSpec::Idx(spec) => spec.shape(split),
            DatasetSpec::Cifar10Bin(spec) => {
                spec.check_split(split)?;
                Ok([3, 32, 32])
            }
            DatasetSpec::Cifar100Bin(spec) => {
                spec.split_file(split)?;
                Ok([3, 32, 32])
            }
            DatasetSpec::SvhnMat(_) => {
                self.files()?;
                Ok([3, 32, 32])
            }
            DatasetSpec::ImageFolder(spec) => {
                self.files()?;
                Ok([3, spec.size, spec.size])
            }
            DatasetSpec::GaussianNoise(spec) => Ok(spec.shape),
            DatasetSpec::UniformNoise(spec) => Ok(spec.shape),
        }
    }

    /// The images `split` of this declaration resolves to ([`extent`]).
    pub fn extent(&self, split: Split) -> Extent {
        use extent::{files, resolved, split_name};
        let at = |format: &str, root: &Path, extra: String| {
            format!("{format} at {} ({} split{extra})", resolved(root).display(), split_name(split))
        };
        match self {
            DatasetSpec::Idx(spec) => {
                let given = match split {
                    Split::Train => &spec.train_files,
                    Split::Test => &spec.test_files,
                };
                let extra = given.as_ref().map(|[i, l]| format!(", files {i} and {l}")).unwrap_or_default();
                files(at("idx", &spec.root, extra), &spec.classes, spec.skip, spec.limit)
            }
            DatasetSpec::Cifar10Bin(spec) => {
                files(at("cifar10-bin", &spec.root, String::new()), &spec.classes, spec.skip, spec.limit)
            }
            DatasetSpec::Cifar100Bin(spec) => {
                let extra = format!(", {:?} labels", spec.labels).to_lowercase();
                files(at("cifar100-bin", &spec.root, extra), &spec.classes, None, spec.limit)
            }
            DatasetSpec::SvhnMat(spec) => {
                files(at("svhn-mat", &spec.root, String::new()), &spec.classes, None, spec.limit)
            }
            // A folder has no split: both read the same files.
            DatasetSpec::ImageFolder(spec) => {
                files(format!("image-folder at {}", resolved(&spec.root).display()), &None, None, spec.limit)
            }
            DatasetSpec::GaussianNoise(spec) => Extent::Generated(format!("gaussian-noise {spec:?}")),
            DatasetSpec::UniformNoise(spec) => Extent::Generated(format!("uniform-noise {spec:?}")),
        }
    }

    /// Loads one split. Synthetic sets have no splits and give the same images for both.
    pub fn load(&self, split: Split) -> Result<ImageSet, StageError> {
        match self {
            DatasetSpec::Idx(spec) => spec.load(split),
            DatasetSpec::Cifar10Bin(spec) => spec.load(split),
            DatasetSpec::Cifar100Bin(spec) => spec.load(split),
            DatasetSpec::SvhnMat(spec) => spec.load(split),
            DatasetSpec::ImageFolder(spec) => spec.load(),
            DatasetSpec::GaussianNoise(spec) => spec.generate(),
            DatasetSpec::UniformNoise(spec) => spec.generate(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_format_and_reports_bad_fields() {
        let spec =
            DatasetSpec::from_json(serde_json::json!({"format": "uniform-noise", "count": 5})).unwrap();
        assert_eq!(spec.load(Split::Test).unwrap().len(), 5);
        let err = DatasetSpec::from_json(serde_json::json!({"format": "gaussian-noise", "count": "many"}))
            .unwrap_err();
        assert_eq!(err.path, vec!["count"]);
        assert_eq!((FORMATS[0].fields)(), &["root", "classes", "limit", "skip", "train_files", "test_files"]);
    }
}
