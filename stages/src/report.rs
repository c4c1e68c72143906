//! `report`: the metrics of SPEC §8 for every score stage it names, per OOD set and the mean
//! over sets, mean ± sample std across seeds. One instance reads every seed's scores.
//!
//! Outputs: `report.json` (fractions, per-seed values included), `report.csv` (fractions, one
//! row per score stage × method × OOD set), `report.md` (percentages, like the paper's Table 1),
//! `report.html` (the table and plots, see [`crate::report_html`]).
use crate::fit::write_json;
use crate::metrics::{mean_std, ood_metrics_with, Convention, OodMetrics};
use crate::report_html::ScoreSample;
use crate::score::ScoreIndex;
use crate::scores::Method;
use crate::{npy, Artifact, Input, ParamError, RunContext, StageError, StageParams};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

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
}

/// Mean, sample standard deviation and the per-seed values of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub values: Vec<f64>,
}

impl Summary {
    fn of(values: Vec<f64>) -> Summary {
        let (mean, std) = mean_std(&values);
        Summary { mean, std, values }
    }

    /// As a percentage, with "± std" when there are several seeds.
    fn percent(&self) -> String {
        if self.values.len() > 1 {
            format!("{:.2} ± {:.2}", 100.0 * self.mean, 100.0 * self.std)
        } else {
            format!("{:.2}", 100.0 * self.mean)
        }
    }
}

/// One row of the report: a score stage, a method, an OOD set (or `mean`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub scores: String,
    pub method: String,
    pub ood: String,
    pub fpr95: Summary,
    pub auroc: Summary,
    pub aupr_in: Summary,
    pub aupr_out: Summary,
    pub id_accuracy: Summary,
}

/// One point of a backtracking curve: the mean over OOD sets at one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktrackRow {
    pub epoch: usize,
    #[serde(flatten)]
    pub row: Row,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    pub title: String,
    pub convention: Convention,
    pub convention_text: String,
    pub seeds: usize,
    pub rows: Vec<Row>,
    /// Metrics per scored checkpoint (empty unless a score stage scored checkpoints).
    pub backtracking: Vec<BacktrackRow>,
}

impl StageParams for Report {
    const KIND: &'static str = "report";
    const VERSION: u32 = 1;
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
        if self.scores.is_empty() {
            vec![ParamError::new(&["scores"], "needs at least one score stage")]
        } else {
            Vec::new()
        }
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let (mut rows, mut backtracking) = (Vec::new(), Vec::new());
        let mut seeds = 0;
        for name in &self.scores {
            let dirs = ctx.stage_dirs(name)?;
            seeds = seeds.max(dirs.len());
            let (table, curve) = rows_of(name, dirs, self.convention)?;
            rows.extend(table);
            backtracking.extend(curve);
        }
        let report = ReportFile {
            title: self.title.clone().unwrap_or_else(|| "OOD detection".into()),
            convention: self.convention,
            convention_text: self.convention.describe().into(),
            seeds,
            rows,
            backtracking,
        };
        write_json(&ctx.out_dir.join("report.json"), &report)?;
        write_text(&ctx.out_dir.join("report.csv"), &csv(&report))?;
        write_text(&ctx.out_dir.join("report.md"), &markdown(&report))?;
        let samples = self.first_seed_samples(ctx)?;
        write_text(&ctx.out_dir.join("report.html"), &crate::report_html::render(&report, &samples))
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
                StageError::Invalid(format!("`{name}` {} on `{}`: {e}", method.name(), set.name))
            })
        })
        .collect()
}

/// The plain mean over OOD sets.
fn mean_over_sets(per_set: &[OodMetrics]) -> OodMetrics {
    let avg = |f: fn(&OodMetrics) -> f64| per_set.iter().map(f).sum::<f64>() / per_set.len() as f64;
    OodMetrics {
        fpr95: avg(|m| m.fpr95),
        auroc: avg(|m| m.auroc),
        aupr_in: avg(|m| m.aupr_in),
        aupr_out: avg(|m| m.aupr_out),
    }
}

fn row(scores: &str, method: Method, ood: &str, per_seed: &[OodMetrics], accuracy: &[f64]) -> Row {
    Row {
        scores: scores.to_string(),
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
            return Err(StageError::Invalid(format!(
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

fn csv(report: &ReportFile) -> String {
    let tag = report.convention.tag();
    let mut out = format!(
        "scores,method,ood,seeds,fpr95_{tag}_mean,fpr95_{tag}_std,auroc_mean,auroc_std,\
         aupr_in_mean,aupr_in_std,aupr_out_mean,aupr_out_std,id_acc_mean,id_acc_std\n",
    );
    for r in &report.rows {
        let _ = write!(out, "{},{},{},{}", r.scores, r.method, r.ood, r.fpr95.values.len());
        for s in [&r.fpr95, &r.auroc, &r.aupr_in, &r.aupr_out, &r.id_accuracy] {
            let _ = write!(out, ",{},{}", s.mean, s.std);
        }
        out.push('\n');
    }
    out
}

/// The FPR95 column header, naming the positive class.
pub fn fpr_header(convention: Convention) -> &'static str {
    match convention {
        Convention::IdPositive => "FPR95 (ID+)",
        Convention::OpenOod => "FPR95 (OOD+, OpenOOD)",
    }
}

fn markdown(report: &ReportFile) -> String {
    let mut out = format!("# {}\n\n", report.title);
    let seeds =
        if report.seeds > 1 { format!("mean ± std over {} seeds", report.seeds) } else { "1 seed".into() };
    let _ = writeln!(out, "Percentages, {seeds}. Conventions: {}.\n", report.convention_text);
    let fpr = fpr_header(report.convention);
    let _ = writeln!(
        out,
        "| Scores | Method | OOD set | {fpr} ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |"
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &report.rows {
        let bold = |s: String| if r.ood == "mean" { format!("**{s}**") } else { s };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scores,
            r.method,
            bold(r.ood.clone()),
            bold(r.fpr95.percent()),
            bold(r.auroc.percent()),
            bold(r.aupr_in.percent()),
            bold(r.aupr_out.percent()),
            r.id_accuracy.percent()
        );
    }
    if !report.backtracking.is_empty() {
        out.push_str("\n## Backtracking: metrics per checkpoint (mean over OOD sets)\n\n");
        let _ = writeln!(
            out,
            "| Scores | Method | Epoch | {fpr} ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |"
        );
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for b in &report.backtracking {
            let r = &b.row;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scores,
                r.method,
                b.epoch,
                r.fpr95.percent(),
                r.auroc.percent(),
                r.aupr_in.percent(),
                r.aupr_out.percent(),
                r.id_accuracy.percent()
            );
        }
        for (scores, method, best, last) in best_epochs(&report.backtracking) {
            let _ = writeln!(
                out,
                "\n{scores} / {method}: lowest mean FPR95 at epoch {} ({}), last epoch {} ({}).",
                best.epoch,
                best.row.fpr95.percent(),
                last.epoch,
                last.row.fpr95.percent()
            );
        }
    }
    out
}

/// For each (score stage, method) curve: the checkpoint with the lowest mean FPR95 (the first on
/// ties) and the last checkpoint.
pub fn best_epochs(curve: &[BacktrackRow]) -> Vec<(String, String, &BacktrackRow, &BacktrackRow)> {
    let mut out: Vec<(String, String, &BacktrackRow, &BacktrackRow)> = Vec::new();
    for b in curve {
        match out.iter_mut().find(|(s, m, _, _)| *s == b.row.scores && *m == b.row.method) {
            Some(entry) => {
                if b.row.fpr95.mean < entry.2.row.fpr95.mean {
                    entry.2 = b;
                }
                if b.epoch > entry.3.epoch {
                    entry.3 = b;
                }
            }
            None => out.push((b.row.scores.clone(), b.row.method.clone(), b, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_formats_percent_with_std_only_for_several_seeds() {
        assert_eq!(Summary::of(vec![0.5]).percent(), "50.00");
        assert_eq!(Summary::of(vec![0.5, 0.7]).percent(), "60.00 ± 14.14");
    }
}
