//! What a stage kind is to the engine: parameters ([`StageParams`]) that name their inputs and
//! compute their outputs into the folder a [`RunContext`] hands them, the object-safe [`Stage`]
//! and [`StageKind`] the engine holds, and the [`Artifact`]s that stages pass to each other.
use crate::error::{ParamError, StageError};
use crate::fields::struct_fields;
use crate::progress::Progress;
use crate::{data, estimate::workload};
use candle_core::Device;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

/// What a stage's outputs can be used as by other stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// A model that can be loaded and run (`model.json` + weights).
    Model,
    /// A series of checkpoints of one training run.
    Checkpoints,
    /// Scores of an ID test set and OOD sets.
    Scores,
    /// A metrics report.
    Report,
    /// A loss constraint ζ.
    Constraint,
    /// A class-conditional Gaussian of a model's features (for the Mahalanobis score).
    Gaussian,
    /// A model's ID training features and activation statistics (for `react` and `knn`).
    Features,
}

impl Artifact {
    pub fn describe(self) -> &'static str {
        match self {
            Artifact::Model => "a model",
            Artifact::Checkpoints => "training checkpoints",
            Artifact::Scores => "OOD scores",
            Artifact::Report => "a report",
            Artifact::Constraint => "a loss constraint",
            Artifact::Gaussian => "a fitted Gaussian (mahalanobis-fit)",
            Artifact::Features => "ID training features (feature-fit)",
        }
    }
}

/// What a reference in a stage's parameters points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Another stage, whose outputs must be usable as the given artifact.
    Stage { name: String, expects: Artifact },
    /// A dataset declared in the recipe.
    Dataset { name: String },
}

/// One reference in a stage's parameters: the path of the field (e.g. `["ood", "1"]`) and
/// what it points at. The engine turns references into graph edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub field: Vec<String>,
    pub target: Target,
}

impl Input {
    pub fn stage(field: &[&str], name: &str, expects: Artifact) -> Input {
        Input {
            field: field.iter().map(|s| s.to_string()).collect(),
            target: Target::Stage { name: name.to_string(), expects },
        }
    }

    pub fn dataset(field: &[&str], name: &str) -> Input {
        Input {
            field: field.iter().map(|s| s.to_string()).collect(),
            target: Target::Dataset { name: name.to_string() },
        }
    }
}

/// Everything a running stage may read, and the one folder it writes.
pub struct RunContext<'a> {
    /// The fresh, empty folder the stage writes its outputs into.
    pub out_dir: &'a Path,
    /// The seed of this stage (derived from the recipe seed and the stage's name).
    pub seed: u64,
    /// Output folders of upstream stages, by stage name: one folder, or one per seed and
    /// variant for a stage that aggregates across seeds ([`StageParams::ACROSS_SEEDS`]) or
    /// across the variants of a sweep ([`StageParams::ACROSS_VARIANTS`]).
    pub upstream: &'a BTreeMap<String, Vec<PathBuf>>,
    /// What each of those folders is, in the same order: its seed and the swept parameters
    /// it was computed with (empty outside sweeps).
    pub upstream_tags: &'a BTreeMap<String, Vec<UpstreamTag>>,
    /// A folder that outlives this attempt (kept beside the cache, removed once the outputs are
    /// committed), where a long stage records how to continue if it is killed; `None` where
    /// nothing may be kept.
    pub resume_dir: Option<&'a Path>,
    /// Datasets declared in the recipe, paths resolved.
    pub datasets: &'a BTreeMap<String, data::DatasetSpec>,
    pub device: &'a Device,
    pub progress: &'a dyn Progress,
}

/// Which run of an upstream stage a folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct UpstreamTag {
    /// The recipe seed (`None` for a stage across seeds).
    pub seed: Option<u64>,
    /// The swept parameters and their values, as labels show them (`delta` = `0.95`;
    /// `zeta.delta` for a sweep of an upstream stage).
    pub params: Vec<(String, String)>,
}

impl RunContext<'_> {
    /// The tags of `name`'s folders ([`RunContext::stage_dirs`]'s order); plain per-seed tags
    /// when the caller gave none.
    pub fn stage_tags(&self, name: &str) -> Vec<UpstreamTag> {
        match self.upstream_tags.get(name) {
            Some(tags) => tags.clone(),
            None => self
                .upstream
                .get(name)
                .map(|dirs| vec![UpstreamTag::default(); dirs.len()])
                .unwrap_or_default(),
        }
    }

    /// The output folder of the upstream stage `name`.
    pub fn stage_dir(&self, name: &str) -> Result<&Path, StageError> {
        match self.stage_dirs(name)? {
            [one] => Ok(one),
            many => Err(StageError::Internal(format!("expected one output of `{name}`, got {}", many.len()))),
        }
    }

    /// The output folders of the upstream stage `name`, one per seed, in seed order.
    pub fn stage_dirs(&self, name: &str) -> Result<&[PathBuf], StageError> {
        self.upstream
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StageError::Internal(format!("upstream stage `{name}` was not provided")))
    }

    /// The dataset `name` as declared in the recipe.
    pub fn dataset(&self, name: &str) -> Result<&data::DatasetSpec, StageError> {
        self.datasets
            .get(name)
            .ok_or_else(|| StageError::Internal(format!("dataset `{name}` was not provided")))
    }
}

/// What a kind does, as the engine needs to know it without matching kind names: what it asks
/// a cluster for by default, and which kinds the leakage guard and the reports' lineage follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Trains weights for many epochs (a base training, a fine-tuning): a GPU for a day.
    Trains,
    /// Scores test sets with a model.
    Scores,
    /// Chooses one model among candidates on validation data.
    Selects,
    /// Summarises score stages; reads no images.
    Reports,
    /// Anything else: a pass or a few over data (ζ, feature fits), or picking a checkpoint.
    Evaluates,
}

/// A stage kind's parameters: the type that defines the kind.
pub trait StageParams: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name recipes use in `kind = "…"`.
    const KIND: &'static str;
    /// Bump when the computation changes, so cached results are not reused.
    const VERSION: u32;
    /// What its outputs can be used as.
    const PRODUCES: &'static [Artifact];
    /// Whether one instance reads the outputs of every seed (a report), rather than one
    /// instance running per seed.
    const ACROSS_SEEDS: bool = false;
    /// Whether one instance reads every variant of a swept upstream (a report, a selection),
    /// rather than one instance running per variant.
    const ACROSS_VARIANTS: bool = Self::ACROSS_SEEDS;
    /// What the kind does, for the engine.
    const ROLE: Role = Role::Evaluates;
    /// The stages and datasets it reads.
    fn inputs(&self) -> Vec<Input>;
    /// Checks beyond types (ranges, consistency); each problem names its field.
    fn check(&self) -> Vec<ParamError> {
        Vec::new()
    }
    /// Resolves the files the stage names (relative to the recipe's folder `recipe_dir`) and
    /// records what the cache key must hold of them (their content's digest, not their path),
    /// when the recipe is read. Most kinds name no file.
    fn resolve_files(&mut self, recipe_dir: &Path) -> Vec<ParamError> {
        let _ = recipe_dir;
        Vec::new()
    }
    /// The files it named that [`StageParams::resolve_files`] resolved, with their digests.
    fn files(&self) -> Vec<NamedFile> {
        Vec::new()
    }
    /// Takes the digest of the file named in `field` from a lock file (written where the file
    /// was) when the file is not here, so that the key is the one the lock's author computed;
    /// a digest read from the file itself stays.
    fn use_locked_digest(&mut self, field: &str, blake3: &str) {
        let _ = (field, blake3);
    }
    /// Computes the outputs into `ctx.out_dir`.
    fn run(&self, ctx: &RunContext) -> Result<(), StageError>;
    /// Where the model it produces or reads comes from (for duration estimates).
    fn model_source(&self) -> Option<workload::ModelSource> {
        None
    }
    /// The bulk of its computation, when it is worth estimating.
    fn workload(&self) -> Option<workload::Workload> {
        None
    }
    /// The dataset splits whose images go through its model (by default those of its
    /// workload), so that `check` can find missing files and wrong shapes before anything runs.
    fn reads(&self) -> Vec<(String, data::Split)> {
        self.workload().map(|w| w.reads).unwrap_or_default()
    }
    /// The upstream stages of which it reads exactly one instance per seed although it combines
    /// variants (a selection over one training's checkpoints): `check` refuses them swept.
    fn one_instance_of(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A file a stage names (an imported checkpoint), whose content's digest is in its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The parameter that names it (`file`).
    pub field: &'static str,
    /// The path as the recipe writes it (relative to the recipe's folder).
    pub path: String,
    /// Whether the file is here.
    pub present: bool,
    /// Its blake3: read from the file, or taken from a lock file where it is not here.
    pub blake3: Option<String>,
}

/// A configured stage, ready to run.
pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    /// Parameters with defaults filled in: what the cache key hashes.
    fn params(&self) -> serde_json::Value;
    fn inputs(&self) -> Vec<Input>;
    /// See [`StageParams::resolve_files`].
    fn resolve_files(&mut self, recipe_dir: &Path) -> Vec<ParamError>;
    /// See [`StageParams::files`].
    fn files(&self) -> Vec<NamedFile>;
    /// See [`StageParams::use_locked_digest`].
    fn use_locked_digest(&mut self, field: &str, blake3: &str);
    fn run(&self, ctx: &RunContext) -> Result<(), StageError>;
    fn model_source(&self) -> Option<workload::ModelSource>;
    fn workload(&self) -> Option<workload::Workload>;
    fn reads(&self) -> Vec<(String, data::Split)>;
    fn one_instance_of(&self) -> Vec<String>;
}

impl<P: StageParams> Stage for P {
    fn kind(&self) -> &'static str {
        P::KIND
    }
    fn version(&self) -> u32 {
        P::VERSION
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("stage parameters serialise to JSON")
    }
    fn inputs(&self) -> Vec<Input> {
        StageParams::inputs(self)
    }
    fn resolve_files(&mut self, recipe_dir: &Path) -> Vec<ParamError> {
        StageParams::resolve_files(self, recipe_dir)
    }
    fn files(&self) -> Vec<NamedFile> {
        StageParams::files(self)
    }
    fn use_locked_digest(&mut self, field: &str, blake3: &str) {
        StageParams::use_locked_digest(self, field, blake3)
    }
    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        StageParams::run(self, ctx)
    }
    fn model_source(&self) -> Option<workload::ModelSource> {
        StageParams::model_source(self)
    }
    fn workload(&self) -> Option<workload::Workload> {
        StageParams::workload(self)
    }
    fn reads(&self) -> Vec<(String, data::Split)> {
        StageParams::reads(self)
    }
    fn one_instance_of(&self) -> Vec<String> {
        StageParams::one_instance_of(self)
    }
}

/// A stage kind as the engine sees it: a name, its fields, and a constructor from JSON.
pub trait StageKind: Sync {
    fn name(&self) -> &'static str;
    fn fields(&self) -> &'static [&'static str];
    fn produces(&self) -> &'static [Artifact];
    fn across_seeds(&self) -> bool;
    fn across_variants(&self) -> bool;
    fn role(&self) -> Role;
    /// Builds the stage; a type error is reported with the path of the offending field.
    fn build(&self, params: serde_json::Value) -> Result<Box<dyn Stage>, BuildError>;
}

pub(crate) struct KindOf<P>(pub(crate) PhantomData<fn() -> P>);

impl<P: StageParams> StageKind for KindOf<P> {
    fn name(&self) -> &'static str {
        P::KIND
    }
    fn fields(&self) -> &'static [&'static str] {
        struct_fields::<P>()
    }
    fn produces(&self) -> &'static [Artifact] {
        P::PRODUCES
    }
    fn across_seeds(&self) -> bool {
        P::ACROSS_SEEDS
    }
    fn across_variants(&self) -> bool {
        P::ACROSS_VARIANTS
    }
    fn role(&self) -> Role {
        P::ROLE
    }
    fn build(&self, params: serde_json::Value) -> Result<Box<dyn Stage>, BuildError> {
        let parsed: P = ParamError::deserialize(params).map_err(BuildError::Type)?;
        let problems = parsed.check();
        if problems.is_empty() {
            Ok(Box::new(parsed))
        } else {
            Err(BuildError::Invalid(problems))
        }
    }
}

/// Why parameters could not become a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildError {
    /// The first field whose value has the wrong type (or a missing required field).
    Type(ParamError),
    /// Values of the right types that do not make sense together.
    Invalid(Vec<ParamError>),
}
