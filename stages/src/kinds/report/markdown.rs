//! `report.md`: per OOD group, then over all sets, the summaries (methods × models, or the rows
//! of a sweep), the paired comparisons with the baseline, what each selection chose, the
//! backtracking table and sentences; then the methods' hyper-parameters and the full table per
//! OOD set (like the paper's Table 1). Every table says how many seeds and images it rests on,
//! and flags AUROC below 50% as inverted.
use super::model::{best_epochs, fpr_header, Comparison, ReportFile, Row, Summary, Verdict};
use std::fmt::Write as _;

/// What the "inverted" flag means, written under every table that can carry it.
pub const INVERTED: &str =
    "inverted: AUROC below 50%, this score ranks the OOD set as more in-distribution than the ID set";

/// The Markdown text of `report`.
pub fn markdown(report: &ReportFile) -> String {
    let mut out = format!("# {}\n\n", report.title);
    let _ = writeln!(out, "{}\n", preamble(report));
    for target in report.targets() {
        let _ = writeln!(out, "## Summary: {}\n", report.target_title(&target));
        summary(report, &target, &mut out);
    }
    against_baseline(report, &mut out);
    selections(report, &mut out);
    backtracking(report, &mut out);
    if !report.parameters.is_empty() {
        out.push_str("\n## Method hyper-parameters\n\n| Scores | Method | Parameters |\n|---|---|---|\n");
        for p in &report.parameters {
            let _ = writeln!(out, "| {} | {} | {} |", p.scores, p.method, p.parameters);
        }
    }
    let _ = writeln!(out, "\n## Full table: every OOD set, then all sets (plain mean)\n");
    let rows: Vec<&Row> = report.rows.iter().filter(|r| r.scope != super::model::Scope::Group).collect();
    rows_table(report, &rows, &mut out);
    out
}

/// Seeds, convention, set sizes and groups: what every table below rests on.
pub fn preamble(report: &ReportFile) -> String {
    let seeds = if report.seeds > 1 {
        format!("mean ± sample std over n = {} seeds; baseline verdicts pair the seeds", report.seeds)
    } else {
        "1 seed (n = 1: no spread, no interval)".into()
    };
    let mut sizes: Vec<String> = Vec::new();
    let mut id_sizes: Vec<usize> = Vec::new();
    for r in report.set_rows() {
        let size = format!(
            "`{}` {} (one image = {:.2} FPR95 points)",
            r.ood,
            r.n_ood,
            100.0 / r.n_ood.max(1) as f64
        );
        if !sizes.contains(&size) {
            sizes.push(size);
        }
        if !id_sizes.contains(&r.n_id) {
            id_sizes.push(r.n_id);
        }
    }
    let id: Vec<String> = id_sizes.iter().map(|n| n.to_string()).collect();
    let groups: Vec<String> =
        report.groups.iter().map(|g| format!("`{}` = {}", g.name, g.sets.join(" + "))).collect();
    format!(
        "Percentages, {seeds}. Conventions: {}.\n\nSet sizes: ID test set {} images; OOD {}.\n\n\
         OOD groups: {}. Every summary is given per group and for all sets; the plain mean over all sets mixes \
         groups and is never the only summary.\n\n{INVERTED}.",
        report.convention_text,
        id.join(" / "),
        sizes.join(", "),
        groups.join("; ")
    )
}

/// "93.73 ± 0.36", with the flag where the row's sets are inverted.
fn auroc_cell(r: &Row) -> String {
    let note = r.inverted_note();
    if note.is_empty() {
        r.auroc.percent()
    } else {
        format!("{} ⚠ {note}", r.auroc.percent())
    }
}

fn zeta_cell(r: &Row) -> String {
    match &r.zeta {
        None => "–".into(),
        Some(z) if z.values.len() > 1 => {
            let each: Vec<String> = z.values.iter().map(|v| format!("{v:.4}")).collect();
            format!("{} (per seed)", each.join(", "))
        }
        Some(z) => format!("{:.4}", z.mean),
    }
}

/// The rows as a table: score stage, swept parameters, method, set, sizes, metrics, ζ.
fn rows_table(report: &ReportFile, rows: &[&Row], out: &mut String) {
    let fpr = fpr_header(report.convention);
    let params = report.param_names();
    let param_heads: String = params.iter().map(|p| format!(" {p} |")).collect();
    let has_zeta = rows.iter().any(|r| r.zeta.is_some());
    let zeta_head = if has_zeta { " ζ used |" } else { "" };
    let _ = writeln!(
        out,
        "| Scores |{param_heads} Method | OOD | n seeds | n ID / OOD | {fpr} ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |{zeta_head}"
    );
    let _ = writeln!(
        out,
        "|---|{}---|---|---|---|---|---|---|---|---|{}",
        "---|".repeat(params.len()),
        if has_zeta { "---|" } else { "" }
    );
    for r in rows {
        let bold = |s: String| if r.scope == super::model::Scope::Set { s } else { format!("**{s}**") };
        let param_cells: String =
            params.iter().map(|p| format!(" {} |", r.params.get(*p).map_or("", String::as_str))).collect();
        let zeta = if has_zeta { format!(" {} |", zeta_cell(r)) } else { String::new() };
        let _ = writeln!(
            out,
            "| {} |{param_cells} {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |{zeta}",
            r.scores,
            r.method,
            bold(r.ood.clone()),
            r.fpr95.values.len(),
            r.n_id,
            r.n_ood,
            bold(r.fpr95.percent()),
            bold(auroc_cell(r)),
            bold(r.aupr_in.percent()),
            bold(r.aupr_out.percent()),
            r.id_accuracy.percent()
        );
    }
}

/// Picks one metric of a row.
type MetricOf = fn(&Row) -> &Summary;

/// One target's summary: methods × models where several score stages share several methods
/// (no sweep), else its rows.
fn summary(report: &ReportFile, target: &str, out: &mut String) {
    let rows: Vec<&Row> = report.summary_rows(target).collect();
    let mut stages: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for r in &rows {
        if !stages.contains(&r.scores.as_str()) {
            stages.push(&r.scores);
        }
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    if !report.param_names().is_empty() || stages.len() < 2 || methods.len() < 2 {
        rows_table(report, &rows, out);
        return;
    }
    let n = rows.first().map_or(String::new(), |r| {
        format!("n = {} seeds; {} ID / {} OOD images", r.fpr95.values.len(), r.n_id, r.n_ood)
    });
    let fpr = fpr_header(report.convention);
    let tables: [(String, MetricOf); 2] =
        [(format!("{fpr} ↓"), |r| &r.fpr95), ("AUROC ↑".to_string(), |r| &r.auroc)];
    for (title, metric) in tables {
        let _ = writeln!(out, "Methods × models, {title} ({n}):\n");
        let _ = writeln!(out, "| Method | {} |", stages.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(stages.len()));
        for method in &methods {
            let cells: Vec<String> = stages
                .iter()
                .map(|stage| {
                    rows.iter().find(|r| r.scores == *stage && r.method == *method).map_or(
                        "–".to_string(),
                        |r| {
                            let flag = if r.inverted.is_empty() { "" } else { " ⚠" };
                            format!("{}{flag}", metric(r).percent())
                        },
                    )
                })
                .collect();
            let _ = writeln!(out, "| {method} | {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    let inverted: Vec<String> = rows
        .iter()
        .filter(|r| !r.inverted.is_empty())
        .map(|r| format!("{} / {} ({})", r.scores, r.method, r.inverted.join(", ")))
        .collect();
    if !inverted.is_empty() {
        let _ = writeln!(out, "⚠ inverted (AUROC < 50%) on: {}.\n", inverted.join("; "));
    }
}

/// Per target, each score stage against the baseline: the paired per-seed differences.
fn against_baseline(report: &ReportFile, out: &mut String) {
    let Some(baseline) = &report.baseline else { return };
    let fpr = fpr_header(report.convention);
    let mut header = false;
    for target in report.targets() {
        let comparisons = report.comparisons(&target);
        if comparisons.is_empty() {
            continue;
        }
        if !header {
            let _ = writeln!(
                out,
                "\n## Against the baseline `{baseline}`\n\nPaired over seeds: Δ is the mean of the per-seed \
                 differences (model − baseline, points) with its 95% Student-t interval; \"better\" or \"worse\" \
                 only where the interval excludes 0.\n"
            );
            header = true;
        }
        let _ = writeln!(out, "### {}\n", report.target_title(&target));
        let _ = writeln!(
            out,
            "| Scores | Method | n | {fpr} ↓ | baseline | Δ [95% CI] | verdict | AUROC ↑ | baseline | Δ [95% CI] | verdict |"
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &comparisons {
            let (f, a) = (c.fpr95(), c.auroc());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.row.label(),
                c.row.method,
                c.row.fpr95.values.len(),
                c.row.fpr95.percent(),
                c.baseline.fpr95.percent(),
                Comparison::difference(f),
                Comparison::verdict(f, true).text(),
                auroc_cell(c.row),
                auroc_cell(c.baseline),
                Comparison::difference(a),
                Comparison::verdict(a, false).text()
            );
        }
        out.push('\n');
        for c in &comparisons {
            let f = c.fpr95();
            let verdict = match Comparison::verdict(f, true) {
                Verdict::Better => "beats",
                Verdict::Worse => "does worse than",
                Verdict::Unclear => "does not clearly differ from",
                Verdict::NoInterval => "cannot be compared (one seed) with",
            };
            let _ = writeln!(
                out,
                "On {}, {} / {} {verdict} `{baseline}` on FPR95 ({} vs {}; Δ {}, n = {}).\n",
                report.target_title(&target),
                c.row.label(),
                c.row.method,
                c.row.fpr95.percent(),
                c.baseline.fpr95.percent(),
                Comparison::difference(f),
                c.row.fpr95.values.len()
            );
        }
    }
}

/// What each selection chose, per seed.
fn selections(report: &ReportFile, out: &mut String) {
    for s in &report.selections {
        let _ = writeln!(
            out,
            "\n## What `{}` chose (for `{}`)\n\nAmong the {} of `{}`, by validation {} of {} on ID `{}` and OOD {}:\n",
            s.select,
            s.scores,
            if s.per_seed.iter().any(|c| c.chosen.starts_with("epoch")) { "checkpoints" } else { "variants" },
            s.from,
            s.metric,
            s.method,
            s.validation_id,
            s.validation_ood.join(", ")
        );
        out.push_str("| Seed | Chosen | ζ used | Validation FPR95 | Validation AUROC | Validation ID-ACC | Candidates (eligible) | Same recipe as the baseline? |\n");
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for c in &s.per_seed {
            let same = if c.same_as_baseline { "**yes**" } else { "no" };
            let _ = writeln!(out, "| {} | {same} |", c.cells().join(" | "));
        }
        if let Some(note) = &s.note {
            let _ = writeln!(out, "\n⚠ {note}.");
        }
    }
}

/// Per target, metrics per checkpoint and the best-vs-last sentences.
fn backtracking(report: &ReportFile, out: &mut String) {
    if report.backtracking.is_empty() {
        return;
    }
    let fpr = fpr_header(report.convention);
    for target in report.targets() {
        let scope =
            if target == super::model::ALL { super::model::Scope::All } else { super::model::Scope::Group };
        let points: Vec<_> =
            report.backtracking.iter().filter(|b| b.row.scope == scope && b.row.ood == target).collect();
        if points.is_empty() {
            continue;
        }
        let _ =
            writeln!(out, "\n## Backtracking: metrics per checkpoint, {}\n", report.target_title(&target));
        let _ = writeln!(
            out,
            "| Scores | Method | Epoch | n | {fpr} ↓ | AUROC ↑ | AUPR-In ↑ | AUPR-Out ↑ | ID-ACC ↑ |"
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for b in &points {
            let r = &b.row;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label(),
                r.method,
                b.epoch,
                r.fpr95.values.len(),
                r.fpr95.percent(),
                auroc_cell(r),
                r.aupr_in.percent(),
                r.aupr_out.percent(),
                r.id_accuracy.percent()
            );
        }
        for (scores, method, best, last) in best_epochs(&report.backtracking, &target) {
            let _ = writeln!(
                out,
                "\n{scores} / {method} on {}: lowest mean FPR95 at epoch {} ({}), last epoch {} ({}).",
                report.target_title(&target),
                best.epoch,
                best.row.fpr95.percent(),
                last.epoch,
                last.row.fpr95.percent()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::report::model::{OodGroup, Scope, ALL};
    use crate::metrics::Convention;

    fn row(scores: &str, ood: &str, scope: Scope, fpr95: [f64; 3], auroc: [f64; 3]) -> Row {
        Row {
            scores: scores.into(),
            params: Default::default(),
            method: "energy".into(),
            ood: ood.into(),
            scope,
            n_id: 3000,
            n_ood: if ood == "digits" { 400 } else { 4000 },
            inverted: if auroc.iter().sum::<f64>() < 1.5 { vec!["gaussian".into()] } else { Vec::new() },
            zeta: None,
            fpr95: Summary::of(fpr95.to_vec()),
            auroc: Summary::of(auroc.to_vec()),
            aupr_in: Summary::of(auroc.to_vec()),
            aupr_out: Summary::of(auroc.to_vec()),
            id_accuracy: Summary::of(vec![0.99; 3]),
        }
    }

    fn report() -> ReportFile {
        let mut rows = Vec::new();
        for (scores, shift) in [("control", 0.0), ("um", -0.1)] {
            rows.push(row(scores, "digits", Scope::Set, [0.5 + shift, 0.6 + shift, 0.4 + shift], [0.9; 3]));
            rows.push(row(scores, "gaussian", Scope::Set, [1.0; 3], [0.1, 0.2, 0.3]));
            rows.push(row(
                scores,
                "semantic",
                Scope::Group,
                [0.5 + shift, 0.6 + shift, 0.4 + shift],
                [0.9; 3],
            ));
            rows.push(row(scores, "noise", Scope::Group, [1.0; 3], [0.1, 0.2, 0.3]));
            rows.push(row(
                scores,
                ALL,
                Scope::All,
                [0.75 + shift / 2.0, 0.8 + shift / 2.0, 0.7 + shift / 2.0],
                [0.5, 0.55, 0.6],
            ));
        }
        ReportFile {
            title: "t".into(),
            convention: Convention::IdPositive,
            convention_text: "ID positive".into(),
            seeds: 3,
            groups: vec![
                OodGroup { name: "semantic".into(), sets: vec!["digits".into()] },
                OodGroup { name: "noise".into(), sets: vec!["gaussian".into()] },
            ],
            rows,
            backtracking: Vec::new(),
            baseline: Some("control".into()),
            selections: Vec::new(),
            parameters: Vec::new(),
        }
    }

    #[test]
    fn every_summary_is_per_group_then_all_sets_with_sizes_and_flags() {
        let md = markdown(&report());
        let at = |needle: &str| md.find(needle).unwrap_or_else(|| panic!("{needle} missing from\n{md}"));
        assert!(at("## Summary: group `semantic` (digits)") < at("## Summary: group `noise` (gaussian)"));
        assert!(at("## Summary: group `noise` (gaussian)") < at("## Summary: all OOD sets (plain mean)"));
        assert!(md.contains("n = 3 seeds") && md.contains("`digits` 400 (one image = 0.25 FPR95 points)"));
        // The noise rows are inverted (mean AUROC 20%) and say so in the table.
        assert!(md.contains("20.00 ± 10.00 ⚠ inverted on gaussian"), "{md}");
        assert!(md.contains(INVERTED));
    }

    #[test]
    fn baseline_verdicts_are_paired_per_group() {
        let md = markdown(&report());
        // semantic: every seed 10 points lower: Δ = −10.00 with a zero-width interval → better.
        assert!(md.contains("On group `semantic` (digits), um / energy beats `control` on FPR95"), "{md}");
        assert!(md.contains("-10.00 [-10.00, -10.00]"), "{md}");
        // noise: identical → the interval is [0, 0], which contains 0.
        assert!(
            md.contains("On group `noise` (gaussian), um / energy does not clearly differ from `control`"),
            "{md}"
        );
        assert!(md.contains("On all OOD sets (plain mean), um / energy beats `control`"), "{md}");
    }
}
