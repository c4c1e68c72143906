//! What a report holds ([`ReportFile`], written as `report.json`): rows of metrics summarised
//! over seeds, the backtracking curve, and the score samples the plots draw.
use crate::metrics::{mean_std, Convention};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Mean, sample standard deviation and the per-seed values of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub values: Vec<f64>,
}

impl Summary {
    pub fn of(values: Vec<f64>) -> Summary {
        let (mean, std) = mean_std(&values);
        Summary { mean, std, values }
    }

    /// As a percentage, with "± std" when there are several seeds.
    pub fn percent(&self) -> String {
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
    /// The swept parameters of the variant this row reports (`delta` → `0.95`; `zeta.delta` for
    /// an upstream stage's sweep); absent outside sweeps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    pub method: String,
    pub ood: String,
    pub fpr95: Summary,
    pub auroc: Summary,
    pub aupr_in: Summary,
    pub aupr_out: Summary,
    pub id_accuracy: Summary,
}

impl Row {
    /// The score stage with its swept parameters: `scores[delta=0.95]`.
    pub fn label(&self) -> String {
        if self.params.is_empty() {
            return self.scores.clone();
        }
        let parts: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}[{}]", self.scores, parts.join(","))
    }
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
    /// The score stage the others are compared with, if the recipe names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

/// One row against the baseline's row of the same method (means over OOD sets).
pub struct Comparison<'a> {
    pub row: &'a Row,
    pub baseline: &'a Row,
}

impl Comparison<'_> {
    /// Lower mean FPR95 than the baseline's.
    pub fn beats_on_fpr95(&self) -> bool {
        self.row.fpr95.mean < self.baseline.fpr95.mean
    }
    /// Higher mean AUROC than the baseline's.
    pub fn beats_on_auroc(&self) -> bool {
        self.row.auroc.mean > self.baseline.auroc.mean
    }
    /// Whether the means differ by more than either side's standard deviation over seeds (with
    /// one seed there is no spread to compare with: any difference counts).
    pub fn clear(a: &Summary, b: &Summary) -> bool {
        (a.mean - b.mean).abs() > a.std.max(b.std)
    }
    /// "yes" / "no", with "within noise" where the difference is inside the seeds' spread.
    pub fn verdict(beats: bool, a: &Summary, b: &Summary) -> &'static str {
        match (beats, Self::clear(a, b)) {
            (true, true) => "yes",
            (true, false) => "yes, within noise",
            (false, true) => "no",
            (false, false) => "no, within noise",
        }
    }
}

/// The scores one plot needs: a score stage, a method, the ID scores and each OOD set's scores.
pub struct ScoreSample {
    pub scores: String,
    pub method: String,
    pub id: Vec<f64>,
    pub ood: Vec<(String, Vec<f64>)>,
}

impl ReportFile {
    /// Every non-baseline "mean" row against the baseline's "mean" row of the same method.
    pub fn comparisons(&self) -> Vec<Comparison<'_>> {
        let Some(baseline) = &self.baseline else { return Vec::new() };
        let means = || self.rows.iter().filter(|r| r.ood == "mean");
        means()
            .filter(|r| &r.scores != baseline)
            .filter_map(|row| {
                let base = means().find(|b| &b.scores == baseline && b.method == row.method)?;
                Some(Comparison { row, baseline: base })
            })
            .collect()
    }

    /// The swept parameters any row has, in first-seen order: one column each.
    pub fn param_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for row in &self.rows {
            for name in row.params.keys() {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// The FPR95 column header, naming the positive class.
pub fn fpr_header(convention: Convention) -> &'static str {
    match convention {
        Convention::IdPositive => "FPR95 (ID+)",
        Convention::OpenOod => "FPR95 (OOD+, OpenOOD)",
    }
}

/// For each (score stage, method) curve: the checkpoint with the lowest mean FPR95 (the first on
/// ties) and the last checkpoint.
pub fn best_epochs(curve: &[BacktrackRow]) -> Vec<(String, String, &BacktrackRow, &BacktrackRow)> {
    let mut out: Vec<(String, String, &BacktrackRow, &BacktrackRow)> = Vec::new();
    for b in curve {
        match out.iter_mut().find(|(s, m, best, _)| {
            *s == b.row.scores && *m == b.row.method && best.row.params == b.row.params
        }) {
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
