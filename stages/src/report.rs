//! `report`: the metrics of SPEC §8 for every score stage it names, per OOD set and the mean
//! over sets, mean ± sample std across seeds. One instance reads every seed's scores.
//!
//! Outputs: `report.json` (fractions, per-seed values included), `report.csv` (fractions, one
//! row per score stage × method × OOD set), `report.md` (percentages, like the paper's Table 1).
use crate::fit::write_json;
use crate::metrics::{mean_std, ood_metrics, OodMetrics};
use crate::score::ScoreIndex;
use crate::{npy, Artifact, Input, ParamError, RunContext, StageError, StageParams};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Which conventions the metrics follow; written into every output.
pub const CONVENTION: &str = "idpos";
const CONVENTION_TEXT: &str = "ID is the positive class; FPR95 at the ID recall nearest 95%; \
AUROC with ties counted 1/2; AUPR = average precision (step sum)";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The score stages to report, in table order.
    pub scores: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
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

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    pub title: String,
    pub convention: String,
    pub convention_text: String,
    pub seeds: usize,
    pub rows: Vec<Row>,
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
        let mut rows = Vec::new();
        let mut seeds = 0;
        for name in &self.scores {
            let dirs = ctx.stage_dirs(name)?;
            seeds = seeds.max(dirs.len());
            rows.extend(rows_of(name, dirs)?);
        }
        let report = ReportFile {
            title: self.title.clone().unwrap_or_else(|| "OOD detection".into()),
            convention: CONVENTION.into(),
            convention_text: CONVENTION_TEXT.into(),
            seeds,
            rows,
        };
        write_json(&ctx.out_dir.join("report.json"), &report)?;
        write_text(&ctx.out_dir.join("report.csv"), &csv(&report))?;
        write_text(&ctx.out_dir.join("report.md"), &markdown(&report))
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(StageError::io("cannot write", path))
}

/// Rows of one score stage across its seeds: one per (method, OOD set), then the mean over sets.
fn rows_of(name: &str, dirs: &[std::path::PathBuf]) -> Result<Vec<Row>, StageError> {
    let indexes = dirs.iter().map(|d| ScoreIndex::read(d)).collect::<Result<Vec<_>, _>>()?;
    let first = &indexes[0];
    let accuracy: Vec<f64> = indexes.iter().map(|i| i.id_accuracy).collect();
    let mut rows = Vec::new();
    for &method in &first.methods {
        // per_set[s][seed]
        let mut per_set: Vec<Vec<OodMetrics>> = vec![Vec::new(); first.ood.len()];
        for (dir, index) in dirs.iter().zip(&indexes) {
            if index.ood != first.ood || index.methods != first.methods {
                return Err(StageError::Invalid(format!(
                    "the seeds of `{name}` scored different sets or methods"
                )));
            }
            let id = npy::read_f64(&dir.join(ScoreIndex::file(method, &index.id.name)))?;
            for (s, set) in index.ood.iter().enumerate() {
                let ood = npy::read_f64(&dir.join(ScoreIndex::file(method, &set.name)))?;
                let metrics = ood_metrics(&id, &ood).map_err(|e| {
                    StageError::Invalid(format!("`{name}` {} on `{}`: {e}", method.name(), set.name))
                })?;
                per_set[s].push(metrics);
            }
        }
        let row = |ood: &str, per_seed: &[OodMetrics]| Row {
            scores: name.to_string(),
            method: method.name().to_string(),
            ood: ood.to_string(),
            fpr95: Summary::of(per_seed.iter().map(|m| m.fpr95).collect()),
            auroc: Summary::of(per_seed.iter().map(|m| m.auroc).collect()),
            aupr_in: Summary::of(per_seed.iter().map(|m| m.aupr_in).collect()),
            aupr_out: Summary::of(per_seed.iter().map(|m| m.aupr_out).collect()),
            id_accuracy: Summary::of(accuracy.clone()),
        };
        for (set, per_seed) in first.ood.iter().zip(&per_set) {
            rows.push(row(&set.name, per_seed));
        }
        // The mean over OOD sets, per seed, then summarised across seeds.
        let mean_per_seed: Vec<OodMetrics> = (0..dirs.len())
            .map(|seed| {
                let avg = |f: fn(&OodMetrics) -> f64| {
                    per_set.iter().map(|s| f(&s[seed])).sum::<f64>() / per_set.len() as f64
                };
                OodMetrics {
                    fpr95: avg(|m| m.fpr95),
                    auroc: avg(|m| m.auroc),
                    aupr_in: avg(|m| m.aupr_in),
                    aupr_out: avg(|m| m.aupr_out),
                }
            })
            .collect();
        rows.push(row("mean", &mean_per_seed));
    }
    Ok(rows)
}

fn csv(report: &ReportFile) -> String {
    let mut out = String::from(
        "scores,method,ood,seeds,fpr95_idpos_mean,fpr95_idpos_std,auroc_mean,auroc_std,\
         aupr_in_mean,aupr_in_std,aupr_out_mean,aupr_out_std,id_acc_mean,id_acc_std\n",
    );
    for r in &report.rows {
        let _ = write!(out, "{},{},{},{}", r.scores, r.method, r.ood, r.fpr95.values.len());
        for s in [&r.fpr95, &r.auroc, &r.aupr_in, &r.aupr_out, &r.id_accuracy] {
            let _ = write!(out, ",{:.6},{:.6}", s.mean, s.std);
        }
        out.push('\n');
    }
    out
}

fn markdown(report: &ReportFile) -> String {
    let mut out = format!("# {}\n\n", report.title);
    let seeds =
        if report.seeds > 1 { format!("mean ± std over {} seeds", report.seeds) } else { "1 seed".into() };
    let _ = writeln!(out, "Percentages, {seeds}. Conventions: {}.\n", CONVENTION_TEXT);
    out.push_str(
        "| Scores | Method | OOD set | FPR95 (ID+) ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |\n",
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
