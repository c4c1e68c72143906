//! `score`: runs a model on the ID test set and each OOD set and writes one score file per
//! (method, set), higher = more in-distribution (docs/methods.md §7).
//!
//! Outputs: `<method>/<set>.npy` (float64: in float32, MSP saturates at exactly 1.0 for confident
//! samples, and the artificial ties move FPR95), `id_labels.npy` and `id_predictions.npy` (int64),
//! and `scores.json`, the index the report reads (sets, methods, counts, ID accuracy).
//!
//! With `checkpoints = "all"` (or a list of epochs) and a training stage as `model`, every kept
//! checkpoint is scored too, into `epochs/NNNN/<method>/<set>.npy`: the backtracking curve of
//! the paper's Figure 1(a).
use crate::data::{ImageSet, Split};
use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::formats::npy;
use crate::models::checkpoints::model_digest;
use crate::models::checkpoints::{CheckpointIndex, ModelFiles};
use crate::models::evaluation::{argmax, forward_all};
use crate::models::{Network, SavedModel};
use crate::scores::feature_bank::FeatureFit;
use crate::scores::gaussian::GaussianFile;
use crate::scores::gaussian::GaussianFit;

/// The fitted statistics a score stage scores with (none for checkpoints).
#[derive(Default)]
struct Fits<'a> {
    gaussian: Option<&'a GaussianFit>,
    features: Option<&'a FeatureFit>,
}
use crate::scores::methods::{names_where, prose_list};
use crate::scores::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::scores::Method;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

fn default_methods() -> Vec<Method> {
    ["msp", "energy"].into_iter().filter_map(Method::named).collect()
}
fn default_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// The stage whose model to score (a `train` stage means its last checkpoint).
    pub model: String,
    /// The ID dataset (its test split).
    pub id: String,
    /// The OOD datasets (their test splits).
    pub ood: Vec<String>,
    #[serde(default = "default_methods")]
    pub methods: Vec<Method>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Also score these checkpoints of the training stage `model`: `"all"` or a list of epochs.
    #[serde(default)]
    pub checkpoints: Option<EpochSelection>,
    /// ODIN's temperature T.
    #[serde(default = "crate::scores::odin::default_temperature")]
    pub odin_temperature: f64,
    /// ODIN's perturbation size ε (on [0, 1] pixels).
    #[serde(default = "crate::scores::odin::default_epsilon")]
    pub odin_epsilon: f64,
    /// The `mahalanobis-fit` stage of this model (needed by the methods that score with a
    /// class-conditional Gaussian, such as `mahalanobis`).
    #[serde(default)]
    pub mahalanobis: Option<String>,
    /// The `feature-fit` stage of this model (needed by the methods that score with ID training
    /// features, such as `react` and `knn`). Left out of the
    /// parameters when unset, so recipes without it keep their cache keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features_fit: Option<String>,
    /// Also write each set's penultimate features and logits (`features/<set>.npy`,
    /// `logits/<set>.npy`, float32 rows), to plot or try other scores elsewhere. Left out of the
    /// parameters when false, so recipes without it keep their cache keys.
    #[serde(default, skip_serializing_if = "is_false")]
    pub save_features: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Which checkpoints to score.
#[derive(Debug, Clone, PartialEq)]
pub enum EpochSelection {
    All,
    Epochs(Vec<usize>),
}

impl Serialize for EpochSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EpochSelection::All => s.serialize_str("all"),
            EpochSelection::Epochs(list) => list.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for EpochSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EpochSelection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"all\" or a list of epoch numbers")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EpochSelection, E> {
                if v == "all" {
                    Ok(EpochSelection::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<EpochSelection, A::Error> {
                let mut list = Vec::new();
                while let Some(epoch) = seq.next_element::<usize>()? {
                    list.push(epoch);
                }
                Ok(EpochSelection::Epochs(list))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The ID accuracy of one scored checkpoint, in `scores.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointScores {
    pub epoch: usize,
    pub id_accuracy: f64,
}

/// One scored set in `scores.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSet {
    pub name: String,
    pub count: usize,
}

/// `scores.json`: what a score stage computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreIndex {
    pub model: String,
    pub id: ScoredSet,
    pub id_accuracy: f64,
    pub ood: Vec<ScoredSet>,
    pub methods: Vec<Method>,
    /// Checkpoints scored under `epochs/NNNN/` (empty unless `checkpoints` was given).
    #[serde(default)]
    pub checkpoints: Vec<CheckpointScores>,
}

impl ScoreIndex {
    pub const FILE: &'static str = "scores.json";

    pub fn read(dir: &Path) -> Result<ScoreIndex, StageError> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| StageError::Format { path, message: e.to_string() })
    }

    /// Relative path of the scores of `method` on `set`.
    pub fn file(method: Method, set: &str) -> PathBuf {
        PathBuf::from(method.name()).join(format!("{set}.npy"))
    }

    /// Folder, relative to the stage's outputs, of the scores of checkpoint `epoch`.
    pub fn epoch_dir(epoch: usize) -> PathBuf {
        PathBuf::from(format!("epochs/{epoch:04}"))
    }
}

impl StageParams for Score {
    const KIND: &'static str = "score";
    const ROLE: crate::stage::Role = crate::stage::Role::Scores;
    const VERSION: u32 = 3;
    const PRODUCES: &'static [Artifact] = &[Artifact::Scores];

    fn inputs(&self) -> Vec<Input> {
        let expects = if self.checkpoints.is_some() { Artifact::Checkpoints } else { Artifact::Model };
        let mut inputs =
            vec![Input::stage(&["model"], &self.model, expects), Input::dataset(&["id"], &self.id)];
        for (i, name) in self.ood.iter().enumerate() {
            inputs.push(Input::dataset(&["ood", &i.to_string()], name));
        }
        if let Some(fit) = &self.features_fit {
            inputs.push(Input::stage(&["features_fit"], fit, Artifact::Features));
        }
        if let Some(fit) = &self.mahalanobis {
            inputs.push(Input::stage(&["mahalanobis"], fit, Artifact::Gaussian));
        }
        inputs
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if self.ood.is_empty() {
            problems.push(ParamError::new(&["ood"], "needs at least one OOD dataset"));
        }
        if self.methods.is_empty() {
            problems.push(ParamError::new(&["methods"], "needs at least one method"));
        }
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        // Which methods need which fitted statistic is each method's own word (the registry's).
        let listed = |needs: fn(&dyn ScoreMethod) -> bool| -> Vec<&'static str> {
            self.methods.iter().filter(|m| needs(m.get())).map(|m| m.name()).collect()
        };
        let verb = |names: &[&str]| if names.len() == 1 { "needs" } else { "need" };
        let wants_gaussian = listed(|m| m.needs_gaussian());
        match (&self.mahalanobis, wants_gaussian.is_empty()) {
            (None, false) => problems.push(ParamError::new(
                &["methods"],
                format!(
                    "{} {} `mahalanobis = \"STAGE\"`, a mahalanobis-fit stage of the same model",
                    prose_list(&wants_gaussian, "and"),
                    verb(&wants_gaussian)
                ),
            )),
            (Some(_), true) => problems.push(ParamError::new(
                &["mahalanobis"],
                format!(
                    "is set but `methods` has none of {}",
                    prose_list(&names_where(|m| m.needs_gaussian()), "and")
                ),
            )),
            _ => {}
        }
        let wants_features = listed(|m| m.needs_features_fit());
        match (&self.features_fit, wants_features.is_empty()) {
            (None, false) => problems.push(ParamError::new(
                &["methods"],
                format!(
                    "{} {} `features_fit = \"STAGE\"`, a feature-fit stage of the same model",
                    prose_list(&wants_features, "and"),
                    verb(&wants_features)
                ),
            )),
            (Some(_), true) => problems.push(ParamError::new(
                &["features_fit"],
                format!(
                    "is set but `methods` has none of {}",
                    prose_list(&names_where(|m| m.needs_features_fit()), "and")
                ),
            )),
            _ => {}
        }
        if !wants_features.is_empty() && self.checkpoints.is_some() {
            problems.push(ParamError::new(
                &["checkpoints"],
                format!(
                    "cannot be combined with {} (a feature-fit stage's statistics are fitted to one model)",
                    prose_list(&wants_features, "and")
                ),
            ));
        }
        if !wants_gaussian.is_empty() && self.checkpoints.is_some() {
            problems.push(ParamError::new(
                &["checkpoints"],
                format!(
                    "cannot be combined with {} (a mahalanobis-fit stage's Gaussian is fitted to one model)",
                    prose_list(&wants_gaussian, "and")
                ),
            ));
        }
        if !(self.odin_temperature.is_finite() && self.odin_temperature > 0.0) {
            problems.push(ParamError::new(&["odin_temperature"], "must be a positive number"));
        }
        if !(self.odin_epsilon.is_finite() && self.odin_epsilon >= 0.0) {
            problems.push(ParamError::new(&["odin_epsilon"], "must be a finite number ≥ 0"));
        }
        if matches!(&self.checkpoints, Some(EpochSelection::Epochs(list)) if list.is_empty()) {
            problems.push(ParamError::new(
                &["checkpoints"],
                "lists no epoch (write \"all\" for every checkpoint)",
            ));
        }
        for (i, name) in self.ood.iter().enumerate() {
            if name == &self.id || self.ood[..i].contains(name) {
                problems.push(ParamError::new(&["ood", &i.to_string()], format!("`{name}` is listed twice")));
            }
        }
        problems
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.model.clone()))
    }

    /// One forward pass over the ID and OOD test sets per scored checkpoint; ODIN costs about
    /// three more (the input gradient, then the perturbed forward), Mahalanobis one more.
    fn workload(&self) -> Option<crate::estimate::workload::Workload> {
        let mut reads = vec![(self.id.clone(), Split::Test)];
        reads.extend(self.ood.iter().map(|o| (o.clone(), Split::Test)));
        let factor = 1.0 + self.methods.iter().map(|m| m.get().extra_passes()).sum::<f64>();
        let passes = match &self.checkpoints {
            None => crate::estimate::workload::Passes::Fixed(1),
            Some(EpochSelection::Epochs(list)) => crate::estimate::workload::Passes::Fixed(list.len()),
            Some(EpochSelection::All) => crate::estimate::workload::Passes::CheckpointsOf(self.model.clone()),
        };
        Some(crate::estimate::workload::Workload {
            model: crate::estimate::workload::ModelSource::Upstream(self.model.clone()),
            reads,
            passes,
            images_factor: factor,
            training: false,
            batch_size: self.batch_size,
            checkpoints_kept: None,
        })
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let model_dir = ctx.stage_dir(&self.model)?;
        let saved = SavedModel::in_dir(model_dir)?;
        let net = saved.load_frozen(ctx.device)?;
        let gaussian = match &self.mahalanobis {
            Some(stage) => {
                let file = GaussianFile::read(ctx.stage_dir(stage)?)?;
                if file.model_digest != model_digest(&saved)? {
                    return Err(StageError::Unsuitable(format!(
                        "`{stage}` was fitted on another model than `{}`'s: point its `model` at `{}`",
                        self.model, self.model
                    )));
                }
                Some(file.fit)
            }
            None => None,
        };
        let features_fit = match &self.features_fit {
            Some(stage) => {
                let fit = FeatureFit::read(ctx.stage_dir(stage)?)?;
                if fit.file.model_digest != model_digest(&saved)? {
                    return Err(StageError::Unsuitable(format!(
                        "`{stage}` was fitted on another model than `{}`'s: point its `model` at `{}`",
                        self.model, self.model
                    )));
                }
                Some(fit)
            }
            None => None,
        };
        let fits = Fits { gaussian: gaussian.as_ref(), features: features_fit.as_ref() };
        let id = self.load(ctx, &net, &self.id)?;
        if id.num_classes != net.spec.num_classes {
            return Err(StageError::Unsuitable(format!(
                "ID set `{}` has {} classes but the model predicts {}",
                self.id, id.num_classes, net.spec.num_classes
            )));
        }
        let ood = self.ood.iter().map(|name| self.load(ctx, &net, name)).collect::<Result<Vec<_>, _>>()?;
        let predictions = self.score_model(ctx, &net, &fits, &id, &ood, ctx.out_dir, "")?;
        let correct = predictions.iter().zip(&id.labels).filter(|(p, l)| **p == **l as i64).count();
        npy::write_i64(&ctx.out_dir.join("id_predictions.npy"), &predictions)?;
        npy::write_i64(
            &ctx.out_dir.join("id_labels.npy"),
            &id.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
        )?;
        let mut checkpoints = Vec::new();
        if let Some(selection) = &self.checkpoints {
            let kept = CheckpointIndex::read(model_dir)?.epochs;
            let epochs = match selection {
                EpochSelection::All => kept.clone(),
                EpochSelection::Epochs(list) => list.clone(),
            };
            for epoch in epochs {
                if !kept.contains(&epoch) {
                    return Err(StageError::Unsuitable(format!(
                        "`{}` kept no checkpoint of epoch {epoch} (it kept {kept:?})",
                        self.model
                    )));
                }
                let saved = ModelFiles::in_dir(model_dir).at_checkpoint(epoch);
                let net = saved.load_frozen(ctx.device)?;
                let dir = ctx.out_dir.join(ScoreIndex::epoch_dir(epoch));
                let predictions = self.score_model(
                    ctx,
                    &net,
                    &Fits::default(),
                    &id,
                    &ood,
                    &dir,
                    &format!(" (epoch {epoch})"),
                )?;
                let correct = predictions.iter().zip(&id.labels).filter(|(p, l)| **p == **l as i64).count();
                checkpoints.push(CheckpointScores { epoch, id_accuracy: correct as f64 / id.len() as f64 });
            }
        }
        let index = ScoreIndex {
            model: self.model.clone(),
            id: ScoredSet { name: self.id.clone(), count: id.len() },
            id_accuracy: correct as f64 / id.len() as f64,
            ood: self
                .ood
                .iter()
                .zip(&ood)
                .map(|(name, set)| ScoredSet { name: name.clone(), count: set.len() })
                .collect(),
            methods: self.methods.clone(),
            checkpoints,
        };
        ctx.progress.info(&format!("ID accuracy on `{}`: {:.2}%", self.id, 100.0 * index.id_accuracy));
        write_json(&ctx.out_dir.join(ScoreIndex::FILE), &index)
    }
}

impl Score {
    fn load(&self, ctx: &RunContext, net: &Network, name: &str) -> Result<ImageSet, StageError> {
        let set = ctx.dataset(name)?.load(Split::Test)?;
        if set.shape != net.spec.input_shape {
            return Err(StageError::Unsuitable(format!(
                "dataset `{name}` has images of shape {:?}, the model takes {:?}",
                set.shape, net.spec.input_shape
            )));
        }
        Ok(set)
    }

    /// Scores the ID set and every OOD set with `net` into `dir`; returns the ID predictions.
    #[allow(clippy::too_many_arguments)]
    fn score_model(
        &self,
        ctx: &RunContext,
        net: &Network,
        fits: &Fits,
        id: &ImageSet,
        ood: &[ImageSet],
        dir: &Path,
        note: &str,
    ) -> Result<Vec<i64>, StageError> {
        let mut predictions = Vec::new();
        let sets = std::iter::once((&self.id, id)).chain(self.ood.iter().zip(ood));
        for (k, (name, set)) in sets.enumerate() {
            let label = format!("score {name}{note}");
            let pass = forward_all(ctx, net, set, self.batch_size, &label)?;
            if self.save_features {
                for (folder, rows) in [("features", &pass.features), ("logits", &pass.logits)] {
                    let folder = dir.join(folder);
                    std::fs::create_dir_all(&folder).map_err(StageError::io("cannot create", &folder))?;
                    npy::write_f32_rows(&folder.join(format!("{name}.npy")), rows)?;
                }
            }
            if k == 0 {
                predictions = pass.logits.iter().map(|row| argmax(row) as i64).collect();
            }
            let input = ScoringInput {
                net,
                set,
                pass: &pass,
                gaussian: fits.gaussian,
                features_fit: fits.features,
                params: MethodParams {
                    odin_temperature: self.odin_temperature,
                    odin_epsilon: self.odin_epsilon,
                },
                device: ctx.device,
                batch_size: self.batch_size,
                progress: ctx.progress,
                label: &label,
            };
            for &method in &self.methods {
                let scores = method.get().score(&input)?;
                if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
                    let logits = pass.logits.get(index).map_or(&[][..], Vec::as_slice);
                    return Err(StageError::non_finite_score(method.name(), name, index, value, logits));
                }
                let path = dir.join(ScoreIndex::file(method, name));
                let folder = path.parent().expect("score files live in a method folder");
                std::fs::create_dir_all(folder).map_err(StageError::io("cannot create", folder))?;
                npy::write_f64(&path, &scores)?;
            }
        }
        Ok(predictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(params: serde_json::Value) -> Vec<(String, String)> {
        let score: Score = serde_json::from_value(params).unwrap();
        score.check().into_iter().map(|e| (e.path.join("."), e.message)).collect()
    }

    #[test]
    fn missing_and_unused_fits_name_the_methods_that_need_them() {
        let missing = problems(serde_json::json!({
            "model": "m", "id": "i", "ood": ["o"], "methods": ["msp", "rmds", "knn"], "checkpoints": "all",
        }));
        let messages: Vec<&str> = missing.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`rmds` needs `mahalanobis = \"STAGE\"`, a mahalanobis-fit stage of the same model",
                "`rmds` and `knn` need `features_fit = \"STAGE\"`, a feature-fit stage of the same model",
                "cannot be combined with `rmds` and `knn` (a feature-fit stage's statistics are fitted to one model)",
                "cannot be combined with `rmds` (a mahalanobis-fit stage's Gaussian is fitted to one model)",
            ]
        );
        let unused = problems(serde_json::json!({
            "model": "m", "id": "i", "ood": ["o"], "methods": ["msp"], "mahalanobis": "g", "features_fit": "f",
        }));
        assert_eq!(
            unused[0],
            ("mahalanobis".into(), "is set but `methods` has none of `mahalanobis` and `rmds`".into())
        );
        let (path, message) = &unused[1];
        assert_eq!(path, "features_fit");
        for name in ["react", "knn", "dice", "kl-matching", "vim", "rmds"] {
            assert!(message.contains(&format!("`{name}`")), "{message}");
        }
    }
}
