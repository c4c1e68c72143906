//! `import`: a model trained elsewhere, read from a PyTorch (`.pth`, zip/pickle) or
//! safetensors state_dict, as a model folder like `train`'s final model (`model.json`,
//! `model.safetensors`), so every stage that takes a model takes it.
//!
//! Outputs: `model.json`, `model.safetensors`, `import.json` (the file's blake3, the naming,
//! how many tensors were read and ignored, and the ID test accuracy when `id` is given).
//!
//! The file is named relative to the recipe's folder and may not leave it (no absolute path,
//! no `..`, no link that leads out): a recipe from someone else reads nothing outside its own
//! folder. Its blake3 is
//! computed when the recipe is read and is what the cache key holds (`file_blake3`), not its
//! path: the same checkpoint under another name is the same stage, and a checkpoint that
//! changes is a new one. Reading never executes the pickle (see
//! [`crate::models::external::pth`]).
use crate::data::Split;
use crate::error::{ParamError, StageError};
use crate::estimate::workload::{ModelSource, Passes, Workload};
use crate::formats::json::write_json;
use crate::models::catalogue::ModelName;
use crate::models::checkpoints::ModelFiles;
use crate::models::external::{bind, pth, Naming};
use crate::models::{Architecture, ModelSpec};
use crate::stage::{Artifact, Input, NamedFile, RunContext, StageParams};
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// The architecture: a catalogue name with its standard sizes, or a table as `model.json`
/// writes it (`{ name = "resnet-cifar", widths = [...], blocks = [...] }`) for other sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ArchChoice {
    Named(ModelName),
    Exact(Architecture),
}

impl<'de> Deserialize<'de> for ArchChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(name) => {
                ModelName::deserialize(serde_json::Value::String(name.clone()))
                    .map(ArchChoice::Named)
                    .map_err(|_| {
                        let names: Vec<String> =
                            ModelName::ALL.iter().map(|m| format!("`{}`", m.name())).collect();
                        D::Error::custom(format!(
                            "unknown architecture `{name}`: one of {}, or a table as model.json writes it \
                         (`{{ name = \"resnet-cifar\", widths = [...], blocks = [...] }}`)",
                            names.join(", ")
                        ))
                    })
            }
            table => Architecture::deserialize(table).map(ArchChoice::Exact).map_err(D::Error::custom),
        }
    }
}

impl ArchChoice {
    pub fn architecture(&self) -> Architecture {
        match self {
            ArchChoice::Named(name) => name.architecture(
                &crate::models::catalogue::default_widths(),
                &crate::models::catalogue::default_strides(),
            ),
            ArchChoice::Exact(architecture) => architecture.clone(),
        }
    }
}

/// The per-channel input normalisation the checkpoint was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

fn default_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The checkpoint, relative to the recipe's folder. Not in the cache key: its content's
    /// blake3 (`file_blake3`) is.
    #[serde(skip_serializing)]
    pub file: String,
    /// blake3 of the file, computed when the recipe is read (`None`: the file is not there).
    #[serde(skip_deserializing, default)]
    pub file_blake3: Option<String>,
    /// Where the file is, resolved against the recipe's folder.
    #[serde(skip)]
    pub resolved: Option<PathBuf>,
    pub arch: ArchChoice,
    pub classes: usize,
    /// Whose key layout the file uses.
    pub naming: Naming,
    pub normalize: Normalize,
    /// (channels, height, width) of the inputs; by default the normalisation's channels, 32×32.
    #[serde(default)]
    pub input_shape: Option<[usize; 3]>,
    /// Dropout of the imported model when it is fine-tuned (its architecture's dropout places).
    #[serde(default)]
    pub dropout: f64,
    /// A dataset whose test split gives the ID test accuracy in `import.json`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

impl Import {
    fn input_shape(&self) -> [usize; 3] {
        self.input_shape.unwrap_or([self.normalize.mean.len(), 32, 32])
    }

    /// The model description the file is bound to (`affine_bn` is then read from the file).
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            architecture: self.arch.architecture(),
            input_shape: self.input_shape(),
            num_classes: self.classes,
            dropout: self.dropout,
            affine_bn: false,
            mean: self.normalize.mean.clone(),
            std: self.normalize.std.clone(),
            weight_masks: false,
        }
    }
}

/// A path the recipe may name: relative, and without `..`.
pub fn inside_recipe_folder(file: &str) -> Result<&Path, String> {
    let path = Path::new(file);
    if path.is_absolute() || path.has_root() {
        return Err(format!(
            "`{file}` is an absolute path: name the checkpoint relative to the recipe's folder (a \
             recipe reads nothing outside it; copy the file there)"
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{file}` leaves the recipe's folder (`..`): a recipe reads nothing outside it; copy \
             the file there"
        ));
    }
    if file.is_empty() {
        return Err("is empty".into());
    }
    Ok(path)
}

/// blake3 of a file's bytes.
fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl StageParams for Import {
    const KIND: &'static str = "import";
    const VERSION: u32 = 1;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model];

    fn inputs(&self) -> Vec<Input> {
        self.id.iter().map(|id| Input::dataset(&["id"], id)).collect()
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if let Err(message) = inside_recipe_folder(&self.file) {
            problems.push(ParamError::new(&["file"], message));
        }
        if self.classes < 2 {
            problems.push(ParamError::new(&["classes"], "needs at least 2 classes"));
        }
        let (m, s) = (&self.normalize.mean, &self.normalize.std);
        if m.is_empty() || m.len() != s.len() {
            problems.push(ParamError::new(
                &["normalize"],
                format!("needs one mean and one std per channel ({} means, {} stds)", m.len(), s.len()),
            ));
        }
        if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) || m.iter().any(|v| !v.is_finite()) {
            problems.push(ParamError::new(&["normalize", "std"], "every std must be positive and finite"));
        }
        if self.input_shape().contains(&0) || self.input_shape()[0] != m.len() {
            problems.push(ParamError::new(
                &["input_shape"],
                format!("{:?} must have as many channels as `normalize` ({})", self.input_shape(), m.len()),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            problems.push(ParamError::new(&["dropout"], "must be in [0, 1)"));
        }
        if !Naming::ALL.contains(&self.naming) || !self.naming.applies_to(&self.arch.architecture()) {
            problems.push(ParamError::new(
                &["naming"],
                format!(
                    "`{}` does not describe this architecture; its namings: {}",
                    self.naming.name(),
                    Naming::for_architecture(&self.arch.architecture()).join(", ")
                ),
            ));
        }
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        problems
    }

    fn resolve_files(&mut self, recipe_dir: &Path) -> Vec<ParamError> {
        let relative = match inside_recipe_folder(&self.file) {
            Ok(path) => path.to_path_buf(),
            Err(message) => return vec![ParamError::new(&["file"], message)],
        };
        let path = recipe_dir.join(relative);
        // A link inside the folder may point anywhere (a cloned repository can hold one): what
        // is read is where the links lead, and that must be inside the folder too.
        if let (Ok(real), Ok(root)) = (path.canonicalize(), recipe_dir.canonicalize()) {
            if !real.starts_with(&root) {
                return vec![ParamError::new(
                    &["file"],
                    format!(
                        "`{}` leads to `{}`, outside the recipe's folder: a recipe reads nothing \
                         outside it; copy the file there",
                        self.file,
                        real.display()
                    ),
                )];
            }
        }
        // A missing file leaves the key without a digest (`check --no-data` still works); the
        // stage refuses to run without it.
        self.file_blake3 = std::fs::read(&path).ok().map(|bytes| digest(&bytes));
        self.resolved = Some(path);
        Vec::new()
    }

    fn files(&self) -> Vec<NamedFile> {
        let present = self.resolved.as_ref().is_some_and(|path| path.is_file());
        vec![NamedFile { field: "file", path: self.file.clone(), present, blake3: self.file_blake3.clone() }]
    }

    fn use_locked_digest(&mut self, field: &str, blake3: &str) {
        if field == "file" && self.file_blake3.is_none() {
            self.file_blake3 = Some(blake3.to_string());
        }
    }

    fn model_source(&self) -> Option<ModelSource> {
        Some(ModelSource::Architecture(self.arch.architecture()))
    }

    fn workload(&self) -> Option<Workload> {
        let id = self.id.as_ref()?;
        Some(Workload {
            model: ModelSource::Architecture(self.arch.architecture()),
            reads: vec![(id.clone(), Split::Test)],
            passes: Passes::Fixed(1),
            images_factor: 1.0,
            training: false,
            batch_size: self.batch_size,
            checkpoints_kept: None,
        })
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let path = self.resolved.clone().ok_or_else(|| {
            StageError::Internal("the import's file was not resolved against the recipe".into())
        })?;
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read the checkpoint", &path))?;
        let found = digest(&bytes);
        match &self.file_blake3 {
            Some(expected) if *expected == found => {}
            Some(expected) => {
                return Err(StageError::Format {
                    path,
                    message: format!(
                    "changed since the recipe was read (blake3 {found}, the key was named with {expected})"
                ),
                })
            }
            None => {
                return Err(StageError::Format {
                    path,
                    message: "was not there when the recipe was read; run again".into(),
                })
            }
        }
        let tensors = pth::read_bytes(&bytes, &path)
            .map_err(|e| StageError::Format { path: path.clone(), message: e.to_string() })?;
        let read = tensors.len();
        let (spec, values) = bind(tensors, &self.spec(), self.naming).map_err(|problems| {
            let shown: Vec<String> = problems.iter().take(6).map(|p| p.to_string()).collect();
            let more = if problems.len() > 6 {
                format!(" (and {} more)", problems.len() - 6)
            } else {
                String::new()
            };
            StageError::Format {
                path: path.clone(),
                message: format!(
                    "does not fit {} with naming `{}`: {}{more}",
                    describe(&self.arch.architecture()),
                    self.naming.name(),
                    shown.join("; ")
                ),
            }
        })?;
        let files = ModelFiles::in_dir(ctx.out_dir);
        spec.write(&files.spec())?;
        crate::models::save_weights(&values, &files.weights())?;
        let accuracy = match &self.id {
            Some(id) => {
                let set = ctx.dataset(id)?.load(Split::Test)?;
                if set.shape != spec.input_shape {
                    return Err(StageError::Unsuitable(format!(
                        "dataset `{id}` has images of shape {:?}, the imported model takes {:?} (`input_shape`)",
                        set.shape, spec.input_shape
                    )));
                }
                let net = crate::models::SavedModel::in_dir(ctx.out_dir)?.load_frozen(ctx.device)?;
                let pass = crate::models::evaluation::forward_all(
                    ctx,
                    &net,
                    &set,
                    self.batch_size,
                    "import: ID test",
                )?;
                let right = pass
                    .logits
                    .iter()
                    .zip(&set.labels)
                    .filter(|(row, &label)| crate::models::evaluation::argmax(row) == label as usize)
                    .count();
                Some(right as f64 / set.len().max(1) as f64)
            }
            None => None,
        };
        write_json(
            &ctx.out_dir.join("import.json"),
            &serde_json::json!({
                "file_blake3": found,
                "naming": self.naming.name(),
                "affine_bn": spec.affine_bn,
                "tensors_read": read,
                "parameters": values.len(),
                "id_test_accuracy": accuracy,
            }),
        )
    }
}

/// An architecture as messages name it.
fn describe(architecture: &Architecture) -> String {
    serde_json::to_string(architecture).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(file: &str, arch: &str, naming: &str) -> Import {
        serde_json::from_value(serde_json::json!({
            "file": file, "arch": arch, "classes": 10, "naming": naming,
            "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        }))
        .unwrap()
    }

    #[test]
    fn an_unknown_architecture_name_lists_the_known_ones() {
        let err =
            serde_json::from_value::<ArchChoice>(serde_json::json!("resnet18")).unwrap_err().to_string();
        assert!(err.contains("unknown architecture `resnet18`") && err.contains("`resnet18-cifar`"), "{err}");
        let exact: ArchChoice =
            serde_json::from_value(serde_json::json!({"name": "wide-resnet", "depth": 16, "widen": 1}))
                .unwrap();
        assert_eq!(exact.architecture(), Architecture::WideResnet { depth: 16, widen: 1 });
    }

    #[test]
    fn check_refuses_a_naming_of_another_architecture_and_paths_outside_the_recipe() {
        let paths = |i: &Import| i.check().into_iter().map(|p| p.path.join(".")).collect::<Vec<_>>();
        assert!(paths(&import("a.pth", "resnet18-cifar", "openood")).is_empty());
        assert_eq!(paths(&import("a.pth", "resnet18-cifar", "um-code")), ["naming"]);
        assert_eq!(paths(&import("a.pth", "densenet-bc-100", "um-code")), Vec::<String>::new());
        assert_eq!(paths(&import("/tmp/a.pth", "wrn-40-2", "oe-code")), ["file"]);
        assert_eq!(paths(&import("x/../../a.pth", "wrn-40-2", "oe-code")), ["file"]);
    }

    /// The key holds the content's digest, not the path: two names of the same bytes give the
    /// same parameters, other bytes other parameters, a missing file none.
    #[test]
    fn the_parameters_hold_the_files_digest_and_not_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pth"), b"same").unwrap();
        std::fs::write(dir.path().join("b.pth"), b"same").unwrap();
        std::fs::write(dir.path().join("c.pth"), b"other").unwrap();
        let params = |file: &str| {
            let mut stage = import(file, "resnet18-cifar", "openood");
            assert!(stage.resolve_files(dir.path()).is_empty());
            crate::stage::Stage::params(&stage)
        };
        assert_eq!(params("a.pth"), params("b.pth"));
        assert_ne!(params("a.pth"), params("c.pth"));
        assert_eq!(params("a.pth")["file_blake3"], blake3::hash(b"same").to_hex().to_string());
        assert!(params("a.pth").get("file").is_none(), "the path is not in the key");
        assert!(params("missing.pth")["file_blake3"].is_null());
    }

    /// A link that leads out of the recipe's folder is refused before anything is read.
    #[cfg(unix)]
    #[test]
    fn a_link_out_of_the_recipe_folder_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"key").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("model.pth")).unwrap();
        let mut stage = import("model.pth", "resnet18-cifar", "openood");
        let problems = stage.resolve_files(dir.path());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("outside the recipe's folder"), "{}", problems[0].message);
        assert!(stage.file_blake3.is_none(), "nothing was read");
        // A link that stays inside is followed.
        std::fs::write(dir.path().join("real.pth"), b"weights").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.pth"), dir.path().join("inside.pth")).unwrap();
        let mut stage = import("inside.pth", "resnet18-cifar", "openood");
        assert!(stage.resolve_files(dir.path()).is_empty());
        assert_eq!(stage.file_blake3, Some(blake3::hash(b"weights").to_hex().to_string()));
    }
}
