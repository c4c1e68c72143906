//! `report`: the metrics of SPEC §8 for every score stage it names, per OOD set and the mean
//! over sets, mean ± sample std across seeds. One instance reads every seed's scores.
//!
//! Outputs: `report.json` (fractions, per-seed values included), `report.csv` (fractions, one
//! row per score stage × method × OOD set), `report.md` (percentages, like the paper's Table 1),
//! `report.html` (the table and plots, see [`html`]).
mod csv;
pub mod html;
mod markdown;
pub mod model;

use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::formats::npy;
use crate::kinds::score::ScoreIndex;
use crate::metrics::{mean_over_sets, ood_metrics_with, Convention, OodMetrics};
use crate::scores::Method;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use crate::stage::UpstreamTag;
use model::{BacktrackRow, ReportFile, Row, ScoreSample, Summary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The score stages to report, in table order.
    pub scores: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
    /// `"idpos"` (SPEC §8, default) or `"openood"` (OpenOOD v1.5's definitions).
    #[serde(default)]
    pub convention: Convention,
    /// One of `scores` to compare every other with: the report then says, per method, whether
    /// each beats it on the mean over OOD sets. Left out of the parameters when unset, so
    /// recipes without it keep their cache keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

impl StageParams for Report {
    const KIND: &'static str = "report";
    const VERSION: u32 = 3;
    const PRODUCES: &'static [Artifact] = &[Artifact::Report];
    const ACROSS_SEEDS: bool = true;

    fn inputs(&self) -> Vec<Input> {
        self.scores
            .iter()
            .enumerate()
            .map(|(i, name)| Input::stage(&["scores", &i.to_string()], name, Artifact::Scores))
            .collect()
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if self.scores.is_empty() {
            problems.push(ParamError::new(&["scores"], "needs at least one score stage"));
        }
        if let Some(baseline) = self.baseline.as_ref().filter(|b| !self.scores.contains(b)) {
            problems.push(ParamError::new(
                &["baseline"],
                format!("`{baseline}` is not one of this report's `scores`"),
            ));
        }
        problems
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let (mut rows, mut backtracking) = (Vec::new(), Vec::new());
        let mut seeds = 0;
        for name in &self.scores {
            // One group of rows per variant of a sweep, its seeds summarised together.
            for (params, dirs) in by_variant(ctx.stage_dirs(name)?, &ctx.stage_tags(name)) {
                seeds = seeds.max(dirs.len());
                let (mut table, mut curve) = rows_of(name, &dirs, self.convention)?;
                for row in table.iter_mut().chain(curve.iter_mut().map(|b| &mut b.row)) {
                    row.params = params.clone();
                }
                rows.extend(table);
                backtracking.extend(curve);
            }
        }
        let report = ReportFile {
            title: self.title.clone().unwrap_or_else(|| "OOD detection".into()),
            convention: self.convention,
            convention_text: self.convention.describe().into(),
            seeds,
            rows,
            backtracking,
            baseline: self.baseline.clone(),
        };
        write_json(&ctx.out_dir.join("report.json"), &report)?;
        write_text(&ctx.out_dir.join("report.csv"), &csv::csv(&report))?;
        write_text(&ctx.out_dir.join("report.md"), &markdown::markdown(&report))?;
        let samples = self.first_seed_samples(ctx)?;
        write_text(&ctx.out_dir.join("report.html"), &html::render(&report, &samples))
    }
}

impl Report {
    /// The first seed's scores of every (score stage, method), for the plots.
    fn first_seed_samples(&self, ctx: &RunContext) -> Result<Vec<ScoreSample>, StageError> {
        let mut samples = Vec::new();
        for name in &self.scores {
            let dir = &ctx.stage_dirs(name)?[0];
            let index = ScoreIndex::read(dir)?;
            for &method in &index.methods {
                let id = npy::read_f64(&dir.join(ScoreIndex::file(method, &index.id.name)))?;
                let ood = index
                    .ood
                    .iter()
                    .map(|set| {
                        Ok((set.name.clone(), npy::read_f64(&dir.join(ScoreIndex::file(method, &set.name)))?))
                    })
                    .collect::<Result<Vec<_>, StageError>>()?;
                samples.push(ScoreSample { scores: name.clone(), method: method.name().into(), id, ood });
            }
        }
        Ok(samples)
    }
}

/// The folders of one score stage grouped by their swept parameters, in first-seen order (one
/// group outside sweeps), each group's folders in seed order.
fn by_variant(dirs: &[PathBuf], tags: &[UpstreamTag]) -> Vec<(BTreeMap<String, String>, Vec<PathBuf>)> {
    let mut groups: Vec<(BTreeMap<String, String>, Vec<PathBuf>)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let params: BTreeMap<String, String> =
            tags.get(i).map(|t| t.params.iter().cloned().collect()).unwrap_or_default();
        match groups.iter_mut().find(|(p, _)| *p == params) {
            Some((_, list)) => list.push(dir.clone()),
            None => groups.push((params, vec![dir.clone()])),
        }
    }
    groups
}

fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(StageError::io("cannot write", path))
}

/// Metrics of `method` for each OOD set, from the score files under `dir` (one seed).
fn set_metrics(
    name: &str,
    dir: &Path,
    index: &ScoreIndex,
    method: Method,
    convention: Convention,
) -> Result<Vec<OodMetrics>, StageError> {
    let id = npy::read_f64(&dir.join(ScoreIndex::file(method, &index.id.name)))?;
    index
        .ood
        .iter()
        .map(|set| {
            let ood = npy::read_f64(&dir.join(ScoreIndex::file(method, &set.name)))?;
            ood_metrics_with(convention, &id, &ood).map_err(|e| {
                StageError::Unsuitable(format!("`{name}` {} on `{}`: {e}", method.name(), set.name))
            })
        })
        .collect()
}

fn row(scores: &str, method: Method, ood: &str, per_seed: &[OodMetrics], accuracy: &[f64]) -> Row {
    Row {
        scores: scores.to_string(),
        params: BTreeMap::new(),
        method: method.name().to_string(),
        ood: ood.to_string(),
        fpr95: Summary::of(per_seed.iter().map(|m| m.fpr95).collect()),
        auroc: Summary::of(per_seed.iter().map(|m| m.auroc).collect()),
        aupr_in: Summary::of(per_seed.iter().map(|m| m.aupr_in).collect()),
        aupr_out: Summary::of(per_seed.iter().map(|m| m.aupr_out).collect()),
        id_accuracy: Summary::of(accuracy.to_vec()),
    }
}

/// Rows of one score stage across its seeds: one per (method, OOD set), then the mean over
/// sets; and, where checkpoints were scored, one backtracking row per (method, epoch) with the
/// mean over sets.
fn rows_of(
    name: &str,
    dirs: &[std::path::PathBuf],
    convention: Convention,
) -> Result<(Vec<Row>, Vec<BacktrackRow>), StageError> {
    let indexes = dirs.iter().map(|d| ScoreIndex::read(d)).collect::<Result<Vec<_>, _>>()?;
    let first = &indexes[0];
    let epochs: Vec<usize> = first.checkpoints.iter().map(|c| c.epoch).collect();
    for index in &indexes {
        let same_epochs = index.checkpoints.iter().map(|c| c.epoch).eq(epochs.iter().copied());
        if index.ood != first.ood || index.methods != first.methods || !same_epochs {
            return Err(StageError::Unsuitable(format!(
                "the seeds of `{name}` scored different sets, methods or checkpoints"
            )));
        }
    }
    let accuracy: Vec<f64> = indexes.iter().map(|i| i.id_accuracy).collect();
    let (mut rows, mut curve) = (Vec::new(), Vec::new());
    for &method in &first.methods {
        // per_seed[seed][set]
        let per_seed: Vec<Vec<OodMetrics>> = dirs
            .iter()
            .zip(&indexes)
            .map(|(dir, index)| set_metrics(name, dir, index, method, convention))
            .collect::<Result<_, _>>()?;
        for (s, set) in first.ood.iter().enumerate() {
            let across: Vec<OodMetrics> = per_seed.iter().map(|m| m[s]).collect();
            rows.push(row(name, method, &set.name, &across, &accuracy));
        }
        let means: Vec<OodMetrics> = per_seed.iter().map(|m| mean_over_sets(m)).collect();
        rows.push(row(name, method, "mean", &means, &accuracy));
        for (k, &epoch) in epochs.iter().enumerate() {
            let means = dirs
                .iter()
                .zip(&indexes)
                .map(|(dir, index)| {
                    set_metrics(name, &dir.join(ScoreIndex::epoch_dir(epoch)), index, method, convention)
                        .map(|m| mean_over_sets(&m))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let accuracy: Vec<f64> = indexes.iter().map(|i| i.checkpoints[k].id_accuracy).collect();
            curve.push(BacktrackRow { epoch, row: row(name, method, "mean", &means, &accuracy) });
        }
    }
    Ok((rows, curve))
}
