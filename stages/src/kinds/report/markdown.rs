//! `report.md`: the metrics table as the paper's Table 1, and the backtracking summary.
use super::model::{best_epochs, fpr_header, ReportFile};
use std::fmt::Write as _;

/// The Markdown text of `report`.
pub fn markdown(report: &ReportFile) -> String {
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
