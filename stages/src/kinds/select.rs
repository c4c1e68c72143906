//! `select`: picks one model among the variants of a swept stage, or among the checkpoints of
//! a training stage, by its OOD detection on **validation** sets: the honest version of
//! choosing ζ, δ or the "once-covered" epoch by looking at the test sets. One instance per seed
//! reads every variant of that seed.
//!
//! The rule: every candidate is scored with `method` on the validation ID set and each
//! validation OOD set; candidates whose validation ID accuracy is more than `max_id_acc_drop`
//! points below the best candidate's are left out; of the rest, the best mean over OOD sets
//! of `metric` wins (lowest FPR95, highest AUROC or AUPR-In), ties going to the first
//! candidate in recipe order (sweep order, or epoch order).
//!
//! Outputs: `model.json` and `model.safetensors` of the chosen candidate (a model like a
//! `checkpoint` stage's), and `selected.json`: the whole validation table and the choice.
use crate::data::{ImageSet, Split};
use crate::error::{ParamError, StageError};
use crate::formats::json::write_json;
use crate::metrics::{mean_over_sets, ood_metrics_with, Convention, OodMetrics};
use crate::models::checkpoints::{CheckpointIndex, ModelFiles, SavedModel};
use crate::models::evaluation::{argmax, forward_all};
use crate::models::Network;
use crate::scores::methods::{names_where, prose_list};
use crate::scores::scorer::{MethodParams, ScoreMethod, ScoringInput};
use crate::scores::Method;
use crate::stage::{Artifact, Input, RunContext, StageParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the candidates are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Over {
    /// The final models of every variant of a swept stage (this seed's).
    #[default]
    Variants,
    /// Every kept checkpoint of one training stage.
    Checkpoints,
}

/// The validation metric the choice optimises (mean over the validation OOD sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectionMetric {
    /// FPR at 95% TPR (ID positive, docs/methods.md §8): lower is better.
    #[default]
    Fpr95,
    /// Higher is better.
    Auroc,
    /// Higher is better.
    AuprIn,
}

impl SelectionMetric {
    fn value(self, m: &OodMetrics) -> f64 {
        match self {
            SelectionMetric::Fpr95 => m.fpr95,
            SelectionMetric::Auroc => m.auroc,
            SelectionMetric::AuprIn => m.aupr_in,
        }
    }

    /// Whether `a` is strictly better than `b`.
    fn better(self, a: f64, b: f64) -> bool {
        match self {
            SelectionMetric::Fpr95 => a < b,
            SelectionMetric::Auroc | SelectionMetric::AuprIn => a > b,
        }
    }
}

fn default_method() -> Method {
    Method::named("energy").expect("energy is a method")
}
fn default_batch_size() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Select {
    /// The swept model stage (or, with `over = "checkpoints"`, the training stage).
    pub from: String,
    #[serde(default)]
    pub over: Over,
    /// The validation ID dataset.
    pub id: String,
    /// The validation OOD datasets: none may be a test set of a report downstream (checked by
    /// `pipeline check`).
    pub ood: Vec<String>,
    /// Which split of those datasets to read (`"test"` or `"train"`; a held-out part of a split
    /// is declared with `skip` or `limit`). Required: a selection that silently read the test
    /// split would choose on the images the reports test on. Always written into the
    /// parameters, so recipes that wrote it out keep their cache keys.
    pub split: Split,
    #[serde(default = "default_method")]
    pub method: Method,
    #[serde(default)]
    pub metric: SelectionMetric,
    /// Leave out candidates more than this many points (percent) of validation ID accuracy
    /// below the best candidate.
    #[serde(default)]
    pub max_id_acc_drop: Option<f64>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

/// One candidate's validation results, in `selected.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The variant's swept parameters, or the checkpoint's epoch.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub params: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch: Option<usize>,
    pub id_accuracy: f64,
    /// Metrics per validation OOD set, then their mean.
    pub per_set: BTreeMap<String, OodMetrics>,
    pub mean: OodMetrics,
    /// Within `max_id_acc_drop` of the best accuracy.
    pub eligible: bool,
}

/// `selected.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub from: String,
    pub over: Over,
    pub method: Method,
    pub metric: SelectionMetric,
    pub max_id_acc_drop: Option<f64>,
    pub validation_id: String,
    pub validation_ood: Vec<String>,
    pub candidates: Vec<Candidate>,
    /// Index into `candidates`.
    pub chosen: usize,
}

impl StageParams for Select {
    const KIND: &'static str = "select";
    const ROLE: crate::stage::Role = crate::stage::Role::Selects;
    const VERSION: u32 = 1;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model];
    const ACROSS_VARIANTS: bool = true;

    fn inputs(&self) -> Vec<Input> {
        let expects = match self.over {
            Over::Variants => Artifact::Model,
            Over::Checkpoints => Artifact::Checkpoints,
        };
        let mut inputs =
            vec![Input::stage(&["from"], &self.from, expects), Input::dataset(&["id"], &self.id)];
        for (i, name) in self.ood.iter().enumerate() {
            inputs.push(Input::dataset(&["ood", &i.to_string()], name));
        }
        inputs
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if self.ood.is_empty() {
            problems.push(ParamError::new(&["ood"], "needs at least one validation OOD dataset"));
        }
        let needs_a_fit = |m: &dyn ScoreMethod| m.needs_gaussian() || m.needs_features_fit();
        if needs_a_fit(self.method.get()) {
            let without = names_where(|m| !needs_a_fit(m));
            problems.push(ParamError::new(
                &["method"],
                format!(
                    "`{}` needs a fitted statistic per candidate; choose a method without one: {}",
                    self.method.name(),
                    prose_list(&without, "or")
                ),
            ));
        }
        if self.max_id_acc_drop.is_some_and(|d| d.is_nan() || d < 0.0) {
            problems.push(ParamError::new(&["max_id_acc_drop"], "must be a non-negative number of points"));
        }
        problems.extend(ParamError::batch_size("batch_size", self.batch_size));
        problems
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.from.clone()))
    }

    fn reads(&self) -> Vec<(String, Split)> {
        std::iter::once(&self.id).chain(&self.ood).map(|d| (d.clone(), self.split)).collect()
    }

    fn one_instance_of(&self) -> Vec<String> {
        match self.over {
            // The checkpoints of one training: a swept one would be several trainings.
            Over::Checkpoints => vec![self.from.clone()],
            Over::Variants => Vec::new(),
        }
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        // (what the candidate is, where its model is)
        let candidates: Vec<(Candidate, SavedModel)> = match self.over {
            Over::Variants => ctx
                .stage_dirs(&self.from)?
                .iter()
                .zip(ctx.stage_tags(&self.from))
                .map(|(dir, tag)| {
                    Ok((blank(tag.params.into_iter().collect(), None), SavedModel::in_dir(dir)?))
                })
                .collect::<Result<_, StageError>>()?,
            Over::Checkpoints => {
                let dir = ctx.stage_dir(&self.from)?;
                CheckpointIndex::read(dir)?
                    .epochs
                    .into_iter()
                    .map(|epoch| {
                        (blank(BTreeMap::new(), Some(epoch)), ModelFiles::in_dir(dir).at_checkpoint(epoch))
                    })
                    .collect()
            }
        };
        if candidates.is_empty() {
            return Err(StageError::Unsuitable(format!(
                "`{}` offers no candidate to select from",
                self.from
            )));
        }
        let id = ctx.dataset(&self.id)?.load(self.split)?;
        let ood: Vec<ImageSet> =
            self.ood.iter().map(|name| ctx.dataset(name)?.load(self.split)).collect::<Result<_, _>>()?;
        let mut scored = Vec::with_capacity(candidates.len());
        for (k, (mut candidate, saved)) in candidates.into_iter().enumerate() {
            let net = saved.load_frozen(ctx.device)?;
            if id.shape != net.spec.input_shape || id.num_classes != net.spec.num_classes {
                return Err(StageError::Unsuitable(format!(
                    "validation set `{}` ({} classes of {:?} images) does not fit `{}`'s model ({} classes of {:?})",
                    self.id, id.num_classes, id.shape, self.from, net.spec.num_classes, net.spec.input_shape
                )));
            }
            let label = format!("candidate {}", k + 1);
            let (id_scores, accuracy) = self.scores(ctx, &net, &id, &label, true)?;
            candidate.id_accuracy = accuracy;
            let mut per_set = Vec::new();
            for (name, set) in self.ood.iter().zip(&ood) {
                let (scores, _) = self.scores(ctx, &net, set, &label, false)?;
                let metrics = ood_metrics_with(Convention::IdPositive, &id_scores, &scores).map_err(|e| {
                    StageError::Unsuitable(format!("{} on `{name}`: {e}", self.method.name()))
                })?;
                per_set.push(metrics);
                candidate.per_set.insert(name.clone(), metrics);
            }
            candidate.mean = mean_over_sets(&per_set);
            scored.push((candidate, saved));
        }
        let mut table: Vec<Candidate> = scored.iter().map(|(c, _)| c.clone()).collect();
        let chosen = choose(&mut table, self.metric, self.max_id_acc_drop);
        let saved = &scored[chosen].1;
        let out = ModelFiles::in_dir(ctx.out_dir);
        for (from, to) in [(&saved.spec_path, out.spec()), (&saved.weights_path, out.weights())] {
            std::fs::copy(from, to).map_err(StageError::io("cannot copy", from))?;
        }
        let pick = &table[chosen];
        let what = match pick.epoch {
            Some(epoch) => format!("epoch {epoch}"),
            None => pick.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        };
        ctx.progress.info(&format!(
            "selected {what}: validation {:?} {:.2}%, ID accuracy {:.2}% ({} candidates)",
            self.metric,
            100.0 * self.metric.value(&pick.mean),
            100.0 * pick.id_accuracy,
            table.len()
        ));
        let selection = Selection {
            from: self.from.clone(),
            over: self.over,
            method: self.method,
            metric: self.metric,
            max_id_acc_drop: self.max_id_acc_drop,
            validation_id: self.id.clone(),
            validation_ood: self.ood.clone(),
            candidates: table,
            chosen,
        };
        write_json(&ctx.out_dir.join("selected.json"), &selection)
    }
}

fn blank(params: BTreeMap<String, String>, epoch: Option<usize>) -> Candidate {
    let zero = OodMetrics { fpr95: 0.0, auroc: 0.0, aupr_in: 0.0, aupr_out: 0.0 };
    Candidate { params, epoch, id_accuracy: 0.0, per_set: BTreeMap::new(), mean: zero, eligible: false }
}

/// Marks the eligible candidates and returns the index of the chosen one: the best `metric`
/// among those within `max_drop` points of the best ID accuracy, the first on ties.
pub fn choose(candidates: &mut [Candidate], metric: SelectionMetric, max_drop: Option<f64>) -> usize {
    let best_accuracy = candidates.iter().map(|c| c.id_accuracy).fold(f64::NEG_INFINITY, f64::max);
    let mut chosen: Option<usize> = None;
    for i in 0..candidates.len() {
        let eligible =
            max_drop.is_none_or(|drop| 100.0 * (best_accuracy - candidates[i].id_accuracy) <= drop + 1e-9);
        candidates[i].eligible = eligible;
        if !eligible {
            continue;
        }
        let value = metric.value(&candidates[i].mean);
        if chosen.is_none_or(|c| metric.better(value, metric.value(&candidates[c].mean))) {
            chosen = Some(i);
        }
    }
    chosen.expect("the most accurate candidate is always eligible")
}

impl Select {
    /// `method`'s scores of `set`, and (for the ID set) the accuracy of the predictions.
    fn scores(
        &self,
        ctx: &RunContext,
        net: &Network,
        set: &ImageSet,
        candidate: &str,
        is_id: bool,
    ) -> Result<(Vec<f64>, f64), StageError> {
        let label = format!("{candidate}: {}", if is_id { &self.id } else { "ood" });
        let pass = forward_all(ctx, net, set, self.batch_size, &label)?;
        let accuracy = if is_id {
            let correct =
                pass.logits.iter().zip(&set.labels).filter(|(row, &l)| argmax(row) == l as usize).count();
            correct as f64 / set.len() as f64
        } else {
            0.0
        };
        let input = ScoringInput {
            net,
            set,
            pass: &pass,
            gaussian: None,
            features_fit: None,
            params: MethodParams {
                odin_temperature: crate::scores::odin::default_temperature(),
                odin_epsilon: crate::scores::odin::default_epsilon(),
            },
            device: ctx.device,
            batch_size: self.batch_size,
            progress: ctx.progress,
            label: &label,
        };
        let scores = self.method.get().score(&input)?;
        if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            let dataset = if is_id { self.id.as_str() } else { "a validation OOD set" };
            let logits = pass.logits.get(index).map_or(&[][..], Vec::as_slice);
            return Err(StageError::non_finite_score(self.method.name(), dataset, index, value, logits));
        }
        Ok((scores, accuracy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(accuracy: f64, fpr95: f64, auroc: f64) -> Candidate {
        let mut c = blank(BTreeMap::new(), None);
        c.id_accuracy = accuracy;
        c.mean = OodMetrics { fpr95, auroc, aupr_in: 0.5, aupr_out: 0.5 };
        c
    }

    #[test]
    fn the_best_metric_wins_and_ties_go_to_the_first() {
        let mut table = vec![candidate(0.9, 0.30, 0.8), candidate(0.9, 0.20, 0.7), candidate(0.9, 0.20, 0.9)];
        assert_eq!(choose(&mut table, SelectionMetric::Fpr95, None), 1, "lowest FPR95, first of the tie");
        assert_eq!(choose(&mut table, SelectionMetric::Auroc, None), 2);
        assert!(table.iter().all(|c| c.eligible));
    }

    #[test]
    fn candidates_that_lose_too_much_accuracy_are_left_out() {
        // The best FPR95 costs 3 points of ID accuracy.
        let mut table =
            vec![candidate(0.95, 0.40, 0.8), candidate(0.92, 0.10, 0.9), candidate(0.945, 0.30, 0.8)];
        assert_eq!(choose(&mut table, SelectionMetric::Fpr95, Some(1.0)), 2);
        assert_eq!(table.iter().map(|c| c.eligible).collect::<Vec<_>>(), [true, false, true]);
        // Exactly at the limit is allowed.
        assert_eq!(choose(&mut table, SelectionMetric::Fpr95, Some(3.0)), 1);
        assert_eq!(choose(&mut table, SelectionMetric::Fpr95, None), 1);
    }

    #[test]
    fn parameters_parse_with_defaults_and_fitted_methods_are_refused() {
        let p: Select = serde_json::from_value(
            serde_json::json!({"from": "um", "id": "v", "ood": ["o"], "split": "train"}),
        )
        .unwrap();
        assert_eq!(
            (p.over, p.metric, p.method.name(), p.split),
            (Over::Variants, SelectionMetric::Fpr95, "energy", Split::Train)
        );
        let missing =
            serde_json::from_value::<Select>(serde_json::json!({"from": "um", "id": "v", "ood": ["o"]}));
        assert!(missing.unwrap_err().to_string().contains("missing field `split`"));
        assert!(p.check().is_empty());
        let p: Select = serde_json::from_value(
            serde_json::json!({"from": "um", "id": "v", "ood": ["o"], "split": "test", "method": "mahalanobis", "max_id_acc_drop": -1.0}),
        )
        .unwrap();
        let problems: Vec<String> = p.check().iter().map(|e| e.path.join(".")).collect();
        assert_eq!(problems, ["method", "max_id_acc_drop"]);
    }
}
