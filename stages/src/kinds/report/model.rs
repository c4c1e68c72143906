//! What a report holds ([`ReportFile`], written as `report.json`): rows of metrics summarised
//! over seeds (per OOD set, per group of sets, and over all sets), the backtracking curve, what
//! each selection chose, the comparisons with a baseline, and the score samples the plots draw.
use super::paired::Paired;
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

/// What a row's metrics average over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One OOD set.
    #[default]
    Set,
    /// The plain mean over the sets of one OOD group.
    Group,
    /// The plain mean over every OOD set (`ood` is `"mean"`).
    All,
}

/// The name of the all-set rows.
pub const ALL: &str = "mean";

/// One row of the report: a score stage, a method, and an OOD set, a group of sets, or all sets
/// (`mean`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub scores: String,
    /// The swept parameters of the variant this row reports (`delta` → `0.95`; `zeta.delta` for
    /// an upstream stage's sweep); absent outside sweeps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    pub method: String,
    pub ood: String,
    #[serde(default)]
    pub scope: Scope,
    /// Images in the ID test set, and in the OOD set(s) the row averages over (summed).
    pub n_id: usize,
    pub n_ood: usize,
    /// The sets of this row whose mean AUROC over seeds is below 50%: the score ranks them as
    /// more in-distribution than the ID set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inverted: Vec<String>,
    /// The ζ the model was fine-tuned with, per seed (UM and UMAP models, selected or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeta: Option<Summary>,
    pub fpr95: Summary,
    pub auroc: Summary,
    pub aupr_in: Summary,
    pub aupr_out: Summary,
    pub id_accuracy: Summary,
}

impl Row {
    /// The flag every table shows where a set of this row is inverted, else "".
    pub fn inverted_note(&self) -> String {
        if self.inverted.is_empty() {
            String::new()
        } else if self.scope == Scope::Set {
            "inverted".into()
        } else {
            format!("inverted on {}", self.inverted.join(", "))
        }
    }

    /// The score stage with its swept parameters: `scores[delta=0.95]`.
    pub fn label(&self) -> String {
        if self.params.is_empty() {
            return self.scores.clone();
        }
        let parts: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}[{}]", self.scores, parts.join(","))
    }
}

/// One point of a backtracking curve: one set, group or all sets at one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacktrackRow {
    pub epoch: usize,
    #[serde(flatten)]
    pub row: Row,
}

/// An OOD group: a name and its sets, in the order the score stages list them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodGroup {
    pub name: String,
    pub sets: Vec<String>,
}

/// One seed's choice of a `select` stage, as its `selected.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedChoice {
    pub seed: Option<u64>,
    /// The variant's swept parameters (`zeta=0`) or the checkpoint (`epoch 5`).
    pub chosen: String,
    pub validation_fpr95: f64,
    pub validation_auroc: f64,
    pub validation_id_accuracy: f64,
    pub candidates: usize,
    pub eligible: usize,
    /// The ζ the chosen model was fine-tuned with, where it is a UM or UMAP model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeta: Option<f64>,
    /// The chosen configuration is the baseline model's own (same kind and parameters).
    pub same_as_baseline: bool,
}

impl SeedChoice {
    /// The columns of its row, as both report formats show them (text only; the chosen
    /// configuration as written, for the format to escape): seed, chosen, ζ used, validation
    /// FPR95, AUROC (flagged when inverted) and ID-ACC in percent, candidates (eligible).
    /// Whether it is the baseline's own recipe is left to the format to mark.
    pub fn cells(&self) -> [String; 7] {
        [
            self.seed.map_or("–".into(), |s| s.to_string()),
            self.chosen.clone(),
            self.zeta.map_or("–".into(), |z| format!("{z:.4}")),
            format!("{:.2}", 100.0 * self.validation_fpr95),
            format!(
                "{:.2}{}",
                100.0 * self.validation_auroc,
                if self.validation_auroc < 0.5 { " ⚠ inverted" } else { "" }
            ),
            format!("{:.2}", 100.0 * self.validation_id_accuracy),
            format!("{} ({})", self.candidates, self.eligible),
        ]
    }
}

/// What one selection chose for a reported score stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionReport {
    pub scores: String,
    pub select: String,
    /// The stage chosen among (its variants or checkpoints).
    pub from: String,
    pub method: String,
    pub metric: String,
    pub validation_id: String,
    pub validation_ood: Vec<String>,
    pub per_seed: Vec<SeedChoice>,
    /// Why a choice equals the baseline's configuration (`ζ = 0 is plain cross-entropy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A method's hyper-parameters as one score stage ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodParameters {
    pub scores: String,
    pub method: String,
    pub parameters: String,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFile {
    pub title: String,
    pub convention: Convention,
    pub convention_text: String,
    pub seeds: usize,
    /// The OOD groups every summary is given for (one per set unless the recipe names them).
    pub groups: Vec<OodGroup>,
    /// Rows per set, per group and over all sets.
    pub rows: Vec<Row>,
    /// Metrics per scored checkpoint, per set, group and all sets (empty unless a score stage
    /// scored checkpoints).
    pub backtracking: Vec<BacktrackRow>,
    /// The score stage the others are compared with, if the recipe names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selections: Vec<SelectionReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<MethodParameters>,
}

/// One row against the baseline's row of the same method and the same set, group or all sets.
pub struct Comparison<'a> {
    pub row: &'a Row,
    pub baseline: &'a Row,
}

/// A paired verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The 95% interval of the paired differences lies wholly on the better side.
    Better,
    /// Wholly on the worse side.
    Worse,
    /// The interval contains 0.
    Unclear,
    /// One seed, or different seeds on the two sides: no interval.
    NoInterval,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Unclear => "no clear difference",
            Verdict::NoInterval => "no interval (one seed)",
        }
    }
}

impl Comparison<'_> {
    /// Per-seed differences of FPR95 (row − baseline, in points of a fraction).
    pub fn fpr95(&self) -> Option<Paired> {
        Paired::of(&self.row.fpr95.values, &self.baseline.fpr95.values)
    }
    pub fn auroc(&self) -> Option<Paired> {
        Paired::of(&self.row.auroc.values, &self.baseline.auroc.values)
    }
    /// The verdict of a paired difference where `lower_is_better` says which side wins.
    pub fn verdict(paired: Option<Paired>, lower_is_better: bool) -> Verdict {
        match paired {
            None => Verdict::NoInterval,
            Some(p) => match (p.interval, p.sign()) {
                (None, _) => Verdict::NoInterval,
                (_, None) => Verdict::Unclear,
                (_, Some(above)) if above != lower_is_better => Verdict::Better,
                _ => Verdict::Worse,
            },
        }
    }
    /// "−2.31 [−4.02, −0.60]" in points.
    pub fn difference(paired: Option<Paired>) -> String {
        match paired {
            None => "–".into(),
            Some(Paired { mean, interval: None, .. }) => format!("{:+.2}", 100.0 * mean),
            Some(Paired { mean, interval: Some((lo, hi)), .. }) => {
                format!("{:+.2} [{:+.2}, {:+.2}]", 100.0 * mean, 100.0 * lo, 100.0 * hi)
            }
        }
    }
}

/// One seed's scores of a (score stage, method): ID, and each OOD set's.
pub struct SeedScores {
    pub seed: Option<u64>,
    pub id: Vec<f64>,
    pub ood: Vec<(String, Vec<f64>)>,
}

/// The scores one plot needs: a score stage, a method, every seed's scores.
pub struct ScoreSample {
    pub scores: String,
    pub method: String,
    pub seeds: Vec<SeedScores>,
}

impl ReportFile {
    /// Every non-baseline row of `target` (a group name, or [`ALL`]) against the baseline's
    /// row of the same method and target.
    pub fn comparisons<'a>(&'a self, target: &'a str) -> Vec<Comparison<'a>> {
        let Some(baseline) = &self.baseline else { return Vec::new() };
        let rows = || self.summary_rows(target);
        rows()
            .filter(|r| &r.scores != baseline)
            .filter_map(|row| {
                let base = rows().find(|b| &b.scores == baseline && b.method == row.method)?;
                Some(Comparison { row, baseline: base })
            })
            .collect()
    }

    /// The rows summarising `target`: a group's rows, or the all-set rows for [`ALL`].
    pub fn summary_rows<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
        let scope = if target == ALL { Scope::All } else { Scope::Group };
        self.rows.iter().filter(move |r| r.scope == scope && r.ood == target)
    }

    /// What every summary is given for: each group, then all sets.
    pub fn targets(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).chain(std::iter::once(ALL.to_string())).collect()
    }

    /// A heading for `target`: `group semantic (mnist_6_9)` or `all OOD sets (mean)`.
    pub fn target_title(&self, target: &str) -> String {
        match self.groups.iter().find(|g| g.name == target) {
            Some(g) => format!("group `{}` ({})", g.name, g.sets.join(", ")),
            None => "all OOD sets (plain mean)".into(),
        }
    }

    /// The set rows, in table order.
    pub fn set_rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.scope == Scope::Set)
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

/// For each (score stage, method) curve of `target` (a group name, or [`ALL`]): the checkpoint
/// with the lowest mean FPR95 (the first on ties) and the last checkpoint.
pub fn best_epochs<'a>(
    curve: &'a [BacktrackRow],
    target: &str,
) -> Vec<(String, String, &'a BacktrackRow, &'a BacktrackRow)> {
    let mut out: Vec<(String, String, &BacktrackRow, &BacktrackRow)> = Vec::new();
    let scope = if target == ALL { Scope::All } else { Scope::Group };
    for b in curve.iter().filter(|b| b.row.scope == scope && b.row.ood == target) {
        match out.iter_mut().find(|(_, m, best, _)| {
            best.row.scores == b.row.scores && *m == b.row.method && best.row.params == b.row.params
        }) {
            Some(entry) => {
                if b.row.fpr95.mean < entry.2.row.fpr95.mean {
                    entry.2 = b;
                }
                if b.epoch > entry.3.epoch {
                    entry.3 = b;
                }
            }
            None => out.push((b.row.label(), b.row.method.clone(), b, b)),
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
