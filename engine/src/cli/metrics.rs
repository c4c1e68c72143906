//! `pipeline metrics` (metrics of score files from any tool) and `pipeline compare` (the
//! differences between two reports).
use super::exit::Status;
use super::shell::Shell;
use anyhow::{bail, Context};
use stages::kinds::report::model::{fpr_header, ReportFile, Row};
use stages::metrics::{ood_metrics_with, Convention, OodMetrics};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn read_scores(path: &Path) -> anyhow::Result<Vec<f64>> {
    stages::formats::npy::read_f64(path).with_context(|| format!("cannot use `{}` as scores", path.display()))
}

pub fn metrics(id: &Path, ood: &[PathBuf], convention: Convention, shell: &Shell) -> anyhow::Result<Status> {
    let id_scores = read_scores(id)?;
    let mut per_file: Vec<(String, OodMetrics)> = Vec::new();
    for path in ood {
        let scores = read_scores(path)?;
        // Scores that cannot be ranked (NaN, none at all) are a data error, exit status 3.
        let m =
            ood_metrics_with(convention, &id_scores, &scores).map_err(|e| stages::StageError::Format {
                path: path.clone(),
                message: format!("against `{}`: {e}", id.display()),
            })?;
        per_file.push((path.display().to_string(), m));
    }
    let n = per_file.len() as f64;
    let mean = OodMetrics {
        fpr95: per_file.iter().map(|(_, m)| m.fpr95).sum::<f64>() / n,
        auroc: per_file.iter().map(|(_, m)| m.auroc).sum::<f64>() / n,
        aupr_in: per_file.iter().map(|(_, m)| m.aupr_in).sum::<f64>() / n,
        aupr_out: per_file.iter().map(|(_, m)| m.aupr_out).sum::<f64>() / n,
    };
    let tag = convention.tag();
    let object = |m: &OodMetrics| {
        serde_json::json!({
            format!("fpr95_{tag}"): m.fpr95, "auroc": m.auroc, "aupr_in": m.aupr_in, "aupr_out": m.aupr_out
        })
    };
    if shell.json() {
        let ood: Vec<serde_json::Value> = per_file
            .iter()
            .map(|(file, m)| {
                let mut o = object(m);
                o["file"] = file.clone().into();
                o
            })
            .collect();
        let document = serde_json::json!({
            "convention": convention.name(),
            "convention_text": convention.describe(),
            "id": id.display().to_string(),
            "id_count": id_scores.len(),
            "ood": ood,
            "mean": object(&mean),
        });
        shell.emit(document);
    } else {
        shell.out(&format!("{} ({} ID scores). {}.", id.display(), id_scores.len(), convention.describe()));
        shell.out(&format!(
            "{:<40} {:>22} {:>8} {:>10} {:>10}",
            "OOD scores",
            fpr_header(convention),
            "AUROC",
            "AUPR-In",
            "AUPR-Out"
        ));
        let line = |name: &str, m: &OodMetrics| {
            shell.out(&format!(
                "{name:<40} {:>22.2} {:>8.2} {:>10.2} {:>10.2}",
                100.0 * m.fpr95,
                100.0 * m.auroc,
                100.0 * m.aupr_in,
                100.0 * m.aupr_out
            ))
        };
        for (path, (_, m)) in ood.iter().zip(&per_file) {
            let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            line(&label, m);
        }
        if per_file.len() > 1 {
            line("mean", &mean);
        }
    }
    Ok(Status::Success)
}

fn read_report(path: &Path) -> anyhow::Result<ReportFile> {
    let file = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("`{}` is not a pipeline report.json", file.display()))
}

/// Rows keyed by (score stage, method, OOD set); when the two reports share no score stage
/// (e.g. `scores_base` before, `scores_um` after), by (method, OOD set) if that is unambiguous.
fn keyed(rows: &[Row], with_stage: bool) -> BTreeMap<(String, String, String), &Row> {
    rows.iter()
        .map(|r| {
            let stage = if with_stage { r.scores.clone() } else { String::new() };
            ((stage, r.method.clone(), r.ood.clone()), r)
        })
        .collect()
}

pub fn compare(before: &Path, after: &Path, shell: &Shell) -> anyhow::Result<Status> {
    let (a, b) = (read_report(before)?, read_report(after)?);
    if a.convention != b.convention {
        bail!(
            "the reports use different conventions ({} vs {}); rerun one with the other",
            a.convention.name(),
            b.convention.name()
        );
    }
    let (mut ka, mut kb) = (keyed(&a.rows, true), keyed(&b.rows, true));
    if !ka.keys().any(|k| kb.contains_key(k)) {
        ka = keyed(&a.rows, false);
        kb = keyed(&b.rows, false);
        if ka.len() != a.rows.len() || kb.len() != b.rows.len() {
            bail!("the reports share no score stage, and each holds several: nothing to match rows by");
        }
    }
    shell.out(&format!(
        "{} → {} ({}; percentages, means over seeds)",
        before.display(),
        after.display(),
        a.convention_text
    ));
    shell.out(&format!(
        "{:<28} {:<8} {:<14} {:>24} {:>24} {:>24}",
        "scores",
        "method",
        "OOD set",
        fpr_header(a.convention),
        "AUROC",
        "ID-ACC"
    ));
    let mut matched = 0;
    let mut pairs = Vec::new();
    let with_stage = ka.keys().next().is_some_and(|k| !k.0.is_empty());
    for row in &a.rows {
        let key = (
            if with_stage { row.scores.clone() } else { String::new() },
            row.method.clone(),
            row.ood.clone(),
        );
        let (Some(ra), Some(rb)) = (ka.get(&key), kb.get(&key)) else { continue };
        matched += 1;
        let cell = |x: f64, y: f64| format!("{:.2} → {:.2} ({:+.2})", 100.0 * x, 100.0 * y, 100.0 * (y - x));
        let stage = if ra.scores == rb.scores {
            ra.scores.clone()
        } else {
            format!("{} → {}", ra.scores, rb.scores)
        };
        shell.out(&format!(
            "{stage:<28} {:<8} {:<14} {:>24} {:>24} {:>24}",
            ra.method,
            ra.ood,
            cell(ra.fpr95.mean, rb.fpr95.mean),
            cell(ra.auroc.mean, rb.auroc.mean),
            cell(ra.id_accuracy.mean, rb.id_accuracy.mean)
        ));
        let metric = |x: f64, y: f64| serde_json::json!({"before": x, "after": y, "change": y - x});
        pairs.push(serde_json::json!({
            "scores_before": ra.scores, "scores_after": rb.scores, "method": ra.method, "ood": ra.ood,
            "fpr95": metric(ra.fpr95.mean, rb.fpr95.mean), "auroc": metric(ra.auroc.mean, rb.auroc.mean),
            "id_accuracy": metric(ra.id_accuracy.mean, rb.id_accuracy.mean),
        }));
    }
    if matched == 0 {
        bail!("the reports have no (method, OOD set) row in common");
    }
    shell.emit(serde_json::json!({"convention": a.convention.name(), "rows": pairs}));
    Ok(Status::Success)
}
