//! `report.md`: the metrics table as the paper's Table 1, methods × models (does fine-tuning
//! add to a score?), and the backtracking summary.
use super::model::{best_epochs, fpr_header, ReportFile, Summary};
use std::fmt::Write as _;

/// The Markdown text of `report`.
pub fn markdown(report: &ReportFile) -> String {
    let mut out = format!("# {}\n\n", report.title);
    let seeds =
        if report.seeds > 1 { format!("mean ± std over {} seeds", report.seeds) } else { "1 seed".into() };
    let _ = writeln!(out, "Percentages, {seeds}. Conventions: {}.\n", report.convention_text);
    let fpr = fpr_header(report.convention);
    let params = report.param_names();
    let param_heads: String = params.iter().map(|p| format!(" {p} |")).collect();
    let _ = writeln!(
        out,
        "| Scores |{param_heads} Method | OOD set | {fpr} ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |"
    );
    let _ = writeln!(out, "|---|{}---|---|---|---|---|---|---|", "---|".repeat(params.len()));
    for r in &report.rows {
        let bold = |s: String| if r.ood == "mean" { format!("**{s}**") } else { s };
        let param_cells: String =
            params.iter().map(|p| format!(" {} |", r.params.get(*p).map_or("", String::as_str))).collect();
        let _ = writeln!(
            out,
            "| {} |{param_cells} {} | {} | {} | {} | {} | {} | {} |",
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
    methods_by_models(report, &mut out);
    against_baseline(report, &mut out);
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
                r.label(),
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

/// Whether each score stage beats the baseline, per method, on the test sets' means.
fn against_baseline(report: &ReportFile, out: &mut String) {
    let comparisons = report.comparisons();
    let Some(baseline) = &report.baseline else { return };
    if comparisons.is_empty() {
        return;
    }
    let fpr = fpr_header(report.convention);
    let _ = writeln!(out, "\n## Against the baseline `{baseline}` (mean over OOD sets)\n");
    let _ = writeln!(
        out,
        "| Scores | Method | {fpr} ↓ | baseline | beats it? | AUROC ↑ | baseline | beats it? |"
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    use super::model::Comparison;
    for c in &comparisons {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.row.label(),
            c.row.method,
            c.row.fpr95.percent(),
            c.baseline.fpr95.percent(),
            Comparison::verdict(c.beats_on_fpr95(), &c.row.fpr95, &c.baseline.fpr95),
            c.row.auroc.percent(),
            c.baseline.auroc.percent(),
            Comparison::verdict(c.beats_on_auroc(), &c.row.auroc, &c.baseline.auroc)
        );
    }
    for c in &comparisons {
        let verdict = match (c.beats_on_fpr95(), Comparison::clear(&c.row.fpr95, &c.baseline.fpr95)) {
            (true, true) => "beats",
            (true, false) => "beats, within the seeds' spread,",
            (false, true) => "does not beat",
            (false, false) => "does not beat, within the seeds' spread,",
        };
        let _ = writeln!(
            out,
            "\n{} / {} {verdict} `{baseline}` on mean FPR95 ({} vs {}).",
            c.row.label(),
            c.row.method,
            c.row.fpr95.percent(),
            c.baseline.fpr95.percent()
        );
    }
}

/// Picks one metric of a row.
type MetricOf = fn(&super::model::Row) -> &Summary;

/// Where several score stages (models) share several methods: one table per metric with a row
/// per method and a column per score stage, the mean over OOD sets.
fn methods_by_models(report: &ReportFile, out: &mut String) {
    // With sweeps, a stage has several rows per method: the sweep tables say it instead.
    if !report.param_names().is_empty() {
        return;
    }
    let means: Vec<_> = report.rows.iter().filter(|r| r.ood == "mean").collect();
    let mut stages: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for r in &means {
        if !stages.contains(&r.scores.as_str()) {
            stages.push(&r.scores);
        }
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    if stages.len() < 2 || methods.len() < 2 {
        return;
    }
    let fpr = fpr_header(report.convention);
    let tables: [(String, MetricOf); 2] =
        [(format!("{fpr} ↓"), |r| &r.fpr95), ("AUROC ↑".to_string(), |r| &r.auroc)];
    for (title, metric) in tables {
        let _ = writeln!(out, "\n## Methods × models: {title} (mean over OOD sets)\n");
        let _ = writeln!(out, "| Method | {} |", stages.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(stages.len()));
        for method in &methods {
            let cells: Vec<String> = stages
                .iter()
                .map(|stage| {
                    means
                        .iter()
                        .find(|r| r.scores == *stage && r.method == *method)
                        .map_or("–".to_string(), |r| metric(r).percent())
                })
                .collect();
            let _ = writeln!(out, "| {method} | {} |", cells.join(" | "));
        }
    }
}
