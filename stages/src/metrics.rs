//! OOD detection metrics under two conventions; every score is "higher = more in-distribution".
//!
//! [`Convention::IdPositive`] (the default, docs/methods.md §8, what the paper's numbers use):
//! - FPR95: sort descending, cut only after the last of each run of tied scores, take the cut
//!   whose ID recall is nearest 0.95 (on a plateau of equal recall, the lowest threshold: the
//!   largest FPR, as the paper's code), report the fraction of OOD samples above it.
//! - AUROC: Mann–Whitney, ties counted ½ (sklearn's `roc_auc_score`).
//! - AUPR-In: average precision with ID positive, Σ (R_n − R_{n−1}) P_n (sklearn's
//!   `average_precision_score`); AUPR-Out: the same with OOD positive on −score.
//!
//! [`Convention::OpenOod`] (OpenOOD v1.5's `auc_and_fpr_recall`, for comparison with its
//! published numbers): OOD is the positive class. FPR95 is the fraction of ID samples flagged as
//! OOD at the first point of scikit-learn's `roc_curve` (with its default `drop_intermediate`)
//! whose OOD recall reaches 0.95; AUPR-In and AUPR-Out are trapezoid areas under
//! `precision_recall_curve` (`auc`), not average precision. AUROC is the same in both.
use serde::{Deserialize, Serialize};

/// Which definitions the metrics follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// ID positive, nearest-recall FPR95, average precision (docs/methods.md §8).
    #[default]
    #[serde(rename = "idpos")]
    IdPositive,
    /// OpenOOD v1.5: OOD positive, first TPR ≥ 0.95, trapezoid AUPR.
    #[serde(rename = "openood")]
    OpenOod,
}

impl Convention {
    /// Short tag used in column names (`fpr95_idpos`, `fpr95_oodpos`).
    pub fn tag(self) -> &'static str {
        match self {
            Convention::IdPositive => "idpos",
            Convention::OpenOod => "oodpos",
        }
    }

    /// The recipe / command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Convention::IdPositive => "idpos",
            Convention::OpenOod => "openood",
        }
    }

    /// One sentence saying what the numbers mean.
    pub fn describe(self) -> &'static str {
        match self {
            Convention::IdPositive => {
                "ID is the positive class; FPR95 at the ID recall nearest 95% (the largest FPR on a plateau); \
                 AUROC with ties counted 1/2; \
                 AUPR = average precision (step sum)"
            }
            Convention::OpenOod => {
                "OpenOOD v1.5: OOD is the positive class; FPR95 = ID samples flagged as OOD at the first \
                 threshold with OOD recall >= 95%; AUPR = trapezoid area under the PR curve"
            }
        }
    }
}

/// The four OOD metrics of one (ID, OOD) pair, as fractions in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    pub fpr95: f64,
    pub auroc: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
}

/// Cut points of a descending sort: for each distinct score (highest first), how many positives
/// and negatives score at or above it. Every metric here and every plotted ROC curve
/// (report.html) is computed from these points.
pub fn cut_points(positive: &[f64], negative: &[f64]) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, bool)> =
        positive.iter().map(|&s| (s, true)).chain(negative.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0.0, 0.0);
    for (i, &(score, is_pos)) in all.iter().enumerate() {
        if is_pos {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if i + 1 == all.len() || all[i + 1].0 != score {
            out.push((tp, fp));
        }
    }
    out
}

/// FPR at the cut whose recall of `positive` is nearest 0.95 (docs/methods.md §8). Among cut points of
/// equal recall (a plateau: negatives scored between two positives) the one with the lowest
/// threshold, i.e. the largest FPR, as the paper's `fpr_and_fdr_at_recall` does: it cuts its
/// arrays at the first point of full recall, reverses them, and `argmin` returns the first tie
/// it meets. Scanning from the highest threshold, that is the last nearest point up to full
/// recall.
pub fn fpr_at_95_tpr(positive: &[f64], negative: &[f64]) -> f64 {
    let n_pos = positive.len() as f64;
    let n_neg = negative.len() as f64;
    let mut best: Option<(f64, f64)> = None; // (distance, fpr)
    for (tp, fp) in cut_points(positive, negative) {
        let distance = (tp / n_pos - 0.95).abs();
        if best.is_none_or(|(d, _)| distance <= d) {
            best = Some((distance, fp / n_neg));
        }
        if tp == n_pos {
            break;
        }
    }
    best.map_or(f64::NAN, |(_, fpr)| fpr)
}

/// Area under the ROC curve with ties counted ½.
pub fn auroc(positive: &[f64], negative: &[f64]) -> f64 {
    let (mut area, mut prev_tp, mut prev_fp) = (0.0, 0.0, 0.0);
    for (tp, fp) in cut_points(positive, negative) {
        area += (fp - prev_fp) * (tp + prev_tp) / 2.0;
        prev_tp = tp;
        prev_fp = fp;
    }
    area / (positive.len() as f64 * negative.len() as f64)
}

/// Average precision of `positive` against `negative`: Σ (R_n − R_{n−1}) P_n over cut points.
pub fn average_precision(positive: &[f64], negative: &[f64]) -> f64 {
    let n_pos = positive.len() as f64;
    let (mut ap, mut prev_recall) = (0.0, 0.0);
    for (tp, fp) in cut_points(positive, negative) {
        let recall = tp / n_pos;
        ap += (recall - prev_recall) * (tp / (tp + fp));
        prev_recall = recall;
    }
    ap
}

/// scikit-learn's `roc_curve(drop_intermediate=True)` points as (tps, fps), starting at (0, 0).
fn roc_points(positive: &[f64], negative: &[f64]) -> Vec<(f64, f64)> {
    let all = cut_points(positive, negative);
    let mut kept: Vec<(f64, f64)> = Vec::with_capacity(all.len() + 1);
    for (i, &point) in all.iter().enumerate() {
        let interior = i > 0 && i + 1 < all.len() && all.len() > 2;
        if interior {
            let (prev, next) = (all[i - 1], all[i + 1]);
            let second_fps = next.1 - 2.0 * point.1 + prev.1;
            let second_tps = next.0 - 2.0 * point.0 + prev.0;
            if second_fps == 0.0 && second_tps == 0.0 {
                continue;
            }
        }
        kept.push(point);
    }
    kept.insert(0, (0.0, 0.0));
    kept
}

/// OpenOOD's FPR95: with `positive` the OOD scores negated, the FPR at the first ROC point whose
/// TPR reaches 0.95.
fn fpr_at_first_tpr_95(positive: &[f64], negative: &[f64]) -> f64 {
    let (n_pos, n_neg) = (positive.len() as f64, negative.len() as f64);
    roc_points(positive, negative)
        .into_iter()
        .find(|(tp, _)| tp / n_pos >= 0.95)
        .map_or(f64::NAN, |(_, fp)| fp / n_neg)
}

/// Trapezoid area under scikit-learn's `precision_recall_curve` (which ends at recall 0,
/// precision 1), as `auc(recall, precision)`.
fn trapezoid_pr_area(positive: &[f64], negative: &[f64]) -> f64 {
    let n_pos = positive.len() as f64;
    let (mut area, mut prev_recall, mut prev_precision) = (0.0, 0.0, 1.0);
    for (tp, fp) in cut_points(positive, negative) {
        let recall = tp / n_pos;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        area += (recall - prev_recall) * (precision + prev_precision) / 2.0;
        prev_recall = recall;
        prev_precision = precision;
    }
    area
}

/// All four metrics of ID scores against OOD scores (docs/methods.md §8's convention).
pub fn ood_metrics(id: &[f64], ood: &[f64]) -> Result<OodMetrics, String> {
    ood_metrics_with(Convention::IdPositive, id, ood)
}

/// The plain mean of each metric over several OOD sets (the "mean" row of a report).
pub fn mean_over_sets(per_set: &[OodMetrics]) -> OodMetrics {
    let avg = |f: fn(&OodMetrics) -> f64| per_set.iter().map(f).sum::<f64>() / per_set.len() as f64;
    OodMetrics {
        fpr95: avg(|m| m.fpr95),
        auroc: avg(|m| m.auroc),
        aupr_in: avg(|m| m.aupr_in),
        aupr_out: avg(|m| m.aupr_out),
    }
}

/// All four metrics under `convention`. NaN scores and empty sets are errors.
pub fn ood_metrics_with(convention: Convention, id: &[f64], ood: &[f64]) -> Result<OodMetrics, String> {
    if id.is_empty() || ood.is_empty() {
        return Err(format!("need scores on both sides ({} ID, {} OOD)", id.len(), ood.len()));
    }
    if let Some(i) = id.iter().position(|s| s.is_nan()) {
        return Err(format!("ID score {i} is NaN"));
    }
    if let Some(i) = ood.iter().position(|s| s.is_nan()) {
        return Err(format!("OOD score {i} is NaN"));
    }
    let negated_id: Vec<f64> = id.iter().map(|s| -s).collect();
    let negated_ood: Vec<f64> = ood.iter().map(|s| -s).collect();
    Ok(match convention {
        Convention::IdPositive => OodMetrics {
            fpr95: fpr_at_95_tpr(id, ood),
            auroc: auroc(id, ood),
            aupr_in: average_precision(id, ood),
            aupr_out: average_precision(&negated_ood, &negated_id),
        },
        Convention::OpenOod => OodMetrics {
            fpr95: fpr_at_first_tpr_95(&negated_ood, &negated_id),
            auroc: auroc(id, ood),
            aupr_in: trapezoid_pr_area(id, ood),
            aupr_out: trapezoid_pr_area(&negated_ood, &negated_id),
        },
    })
}

/// Mean and sample standard deviation (n − 1); the deviation is 0 for a single value.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn perfect_and_reversed_separation() {
        let id = [0.9, 0.8, 0.7];
        let ood = [0.1, 0.2];
        let m = ood_metrics(&id, &ood).unwrap();
        assert_eq!((m.fpr95, m.auroc, m.aupr_in, m.aupr_out), (0.0, 1.0, 1.0, 1.0));
        let r = ood_metrics(&ood, &id).unwrap();
        assert_eq!(r.auroc, 0.0);
        assert_eq!(r.fpr95, 1.0);
    }

    #[test]
    fn hand_computed_with_ties() {
        // ID: 3, 2, 2, 1; OOD: 2, 0.
        // Sorted: 3(I) | 2(I) 2(I) 2(O) | 1(I) | 0(O) → cuts (tp, fp): (1,0) (3,1) (4,1) (4,2).
        let id = [3.0, 2.0, 2.0, 1.0];
        let ood = [2.0, 0.0];
        // AUROC: pairs ID>OOD: 3>2,3>0,2>0,2>0,1>0 = 5, ties 2=2 twice → 1; total 6/8.
        close(auroc(&id, &ood), 0.75);
        // Recalls 0.25, 0.75, 1.0, 1.0: nearest 0.95 is 1.0; the paper's code stops at the first
        // full-recall cut (4,1) → FPR 0.5, not the later (4,2).
        close(fpr_at_95_tpr(&id, &ood), 0.5);
        // AP-in: 0.25·1 + 0.5·(3/4) + 0.25·(4/5) + 0 = 0.825.
        close(average_precision(&id, &ood), 0.825);
        // AP-out on −score: −0(O) | −1(I) | −2: O I I | −3(I): cuts (1,0) (1,1) (2,3) (2,4).
        // = 0.5·1 + 0 + 0.5·(2/5) + 0 = 0.7.
        close(ood_metrics(&id, &ood).unwrap().aupr_out, 0.7);
    }

    #[test]
    fn fpr95_takes_the_largest_fpr_on_a_recall_plateau() {
        // 20 ID scores 20..1, OOD scores between: recall after k ID samples = k/20.
        // With OOD 1.5 (between ID 2 and ID 1): recall 0.95 is reached exactly at ID 2 (FPR 0)
        // and stays 0.95 after OOD 1.5 (FPR 1/2): the plateau's lowest threshold counts (issue
        // 18, docs/methods.md §8 as corrected), as in the paper's `fpr_and_fdr_at_recall`.
        let id: Vec<f64> = (1..=20).map(f64::from).collect();
        close(fpr_at_95_tpr(&id, &[1.5, 0.5]), 0.5);
        // Nothing between ID 2 and ID 1: no plateau, FPR 0.
        close(fpr_at_95_tpr(&id, &[0.5, 0.25]), 0.0);
        // All scores tied: the only cut has recall 1 and FPR 1.
        close(fpr_at_95_tpr(&[1.0; 4], &[1.0; 3]), 1.0);
        close(auroc(&[1.0; 4], &[1.0; 3]), 0.5);
    }

    #[test]
    fn rejects_nan_and_empty() {
        assert!(ood_metrics(&[f64::NAN], &[1.0]).is_err());
        assert!(ood_metrics(&[], &[1.0]).is_err());
    }

    #[test]
    fn mean_std_uses_n_minus_one() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        close(m, 2.0);
        close(s, 1.0);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
