//! `report.html`: one self-contained page (inline SVG, no network) that opens with what a reader
//! wants first. Per OOD group, then over all sets: the sweep curves and the backtracking curve,
//! the paired verdicts against the baseline, then the summary table with inverted scores
//! flagged (folded when a sweep makes it long). Then what each selection chose, ROC curves of
//! every seed in the table's convention, score histograms ID vs OOD of the first seed, and the
//! full per-set table last, folded in a `<details>`.
use super::model::{fpr_header, BacktrackRow, Comparison, ReportFile, Row, Scope, ScoreSample, Summary, ALL};
use crate::metrics::{cut_points, Convention};
use std::fmt::Write as _;

const COLOURS: [&str; 8] =
    ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const ID_COLOUR: &str = "#444444";
/// Summary tables longer than this many rows (a sweep's) are folded below their plots.
const FOLD_ABOVE: usize = 16;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Plain text with `code` spans, as HTML.
fn inline(text: &str) -> String {
    let mut html = String::new();
    for (k, part) in escape(text).split('`').enumerate() {
        if k % 2 == 1 {
            let _ = write!(html, "<code>{part}</code>");
        } else {
            html.push_str(part);
        }
    }
    html
}

/// Plain text with `code` spans and blank-line paragraphs, as HTML.
fn paragraphs(text: &str) -> String {
    text.split("\n\n").map(|p| format!("<p>{}</p>\n", inline(p))).collect()
}

/// The whole page.
pub fn render(report: &ReportFile, samples: &[ScoreSample]) -> String {
    let mut page = String::new();
    let title = escape(&report.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;font-size:14px;margin:0.5em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:nth-child(-n+3),th{{text-align:left}}\
         tr.mean td{{font-weight:bold;background:#f4f4f4}} td.inv{{background:#fde2e1;color:#a40000}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}\
         figure{{margin:0}} figcaption{{font-size:13px;text-align:center}} svg text{{font-size:11px;fill:#333}}\
         p.note{{background:#fff4d6;padding:4px 8px}} details summary{{cursor:pointer;font-size:1.1em;font-weight:bold;margin:0.8em 0}}\
         </style></head><body>\n<h1>{title}</h1>\n{}",
        paragraphs(&super::markdown::preamble(report))
    );
    // Per group, then all sets: its curves, its verdicts, then its table (folded when long).
    for target in report.targets() {
        let title = inline(&report.target_title(&target));
        let _ = writeln!(page, "<h2>Summary: {title}</h2>");
        let sweeps = sweep_curves(report, &target);
        if !sweeps.is_empty() {
            page.push_str("<h3>Each metric against each swept parameter (band: ± std over seeds)</h3>\n<div class=\"grid\">\n");
            page.push_str(&sweeps);
            page.push_str("</div>\n");
        }
        let scope = if target == ALL { Scope::All } else { Scope::Group };
        let curve: Vec<BacktrackRow> = report
            .backtracking
            .iter()
            .filter(|b| b.row.scope == scope && b.row.ood == target)
            .cloned()
            .collect();
        if !curve.is_empty() {
            page.push_str(
                "<h3>Backtracking: metrics per checkpoint (mean over seeds)</h3>\n<div class=\"grid\">\n",
            );
            page.push_str(&backtracking(&curve, report.convention));
            page.push_str("</div>\n");
        }
        verdicts(report, &target, &mut page);
        let rows: Vec<&Row> = report.summary_rows(&target).collect();
        if rows.len() > FOLD_ABOVE {
            let _ = writeln!(page, "<details><summary>Table, {title} ({} rows)</summary>", rows.len());
            page.push_str(&table(report, &rows));
            page.push_str("</details>\n");
        } else {
            page.push_str(&table(report, &rows));
        }
    }
    selections(report, &mut page);
    let positive = match report.convention {
        Convention::IdPositive => "ID positive, as the table: x is the fraction of OOD images accepted as ID, y of ID images kept; FPR95 is x where y = 0.95",
        Convention::OpenOod => "OOD positive, as the table (OpenOOD): x is the fraction of ID images flagged, y of OOD images flagged",
    };
    let _ =
        writeln!(page, "<h2>ROC curves (every seed, one line each; {positive})</h2>\n<div class=\"grid\">");
    for sample in samples {
        page.push_str(&roc(sample, report.convention));
    }
    page.push_str("</div>\n<h2>Score histograms, ID vs OOD (first seed)</h2>\n<div class=\"grid\">\n");
    for sample in samples {
        if let Some(first) = sample.seeds.first() {
            for (name, ood) in &first.ood {
                page.push_str(&histogram(sample, &first.id, name, ood));
            }
        }
    }
    page.push_str("</div>\n");
    let set_rows: Vec<&Row> = report.rows.iter().filter(|r| r.scope != Scope::Group).collect();
    let _ = writeln!(
        page,
        "<details><summary>Full table: every OOD set, then all sets ({} rows)</summary>",
        set_rows.len()
    );
    page.push_str(&table(report, &set_rows));
    page.push_str("</details>\n<script>console.log('plots: ' + document.querySelectorAll('svg').length);</script>\n</body></html>\n");
    page
}

fn cell(s: &Summary) -> String {
    if s.values.len() > 1 {
        format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.std)
    } else {
        format!("{:.2}", 100.0 * s.mean)
    }
}

fn table(report: &ReportFile, rows: &[&Row]) -> String {
    let params = report.param_names();
    let param_heads: String = params.iter().map(|p| format!("<th>{}</th>", escape(p))).collect();
    let has_zeta = rows.iter().any(|r| r.zeta.is_some());
    let mut out = format!(
        "<table>\n<tr><th>Scores</th>{param_heads}<th>Method</th><th>OOD</th><th>n seeds</th><th>n ID / OOD</th><th>{} ↓</th><th>AUROC ↑</th><th>AUPR-In ↑</th>\
         <th>AUPR-Out ↑</th><th>ID-ACC ↑</th>{}</tr>\n",
        fpr_header(report.convention),
        if has_zeta { "<th>ζ used (per seed)</th>" } else { "" }
    );
    for r in rows {
        let class = if r.scope == Scope::All { " class=\"mean\"" } else { "" };
        let auroc = if r.inverted.is_empty() {
            format!("<td>{}</td>", cell(&r.auroc))
        } else {
            format!(
                "<td class=\"inv\" title=\"{}\">{} ⚠ {}</td>",
                escape(super::markdown::INVERTED),
                cell(&r.auroc),
                escape(&r.inverted_note())
            )
        };
        let zeta = match (&r.zeta, has_zeta) {
            (_, false) => String::new(),
            (None, true) => "<td>–</td>".into(),
            (Some(z), true) => {
                format!(
                    "<td>{}</td>",
                    z.values.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", ")
                )
            }
        };
        let _ = writeln!(
            out,
            "<tr{class}><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td>{auroc}<td>{}</td><td>{}</td><td>{}</td>{zeta}</tr>",
            escape(&r.scores),
            params
                .iter()
                .map(|p| format!("<td>{}</td>", escape(r.params.get(*p).map_or("", String::as_str))))
                .collect::<String>(),
            escape(&r.method),
            escape(&r.ood),
            r.fpr95.values.len(),
            r.n_id,
            r.n_ood,
            cell(&r.fpr95),
            cell(&r.aupr_in),
            cell(&r.aupr_out),
            cell(&r.id_accuracy)
        );
    }
    out.push_str("</table>\n");
    out
}

/// The paired verdicts against the baseline for one target.
fn verdicts(report: &ReportFile, target: &str, page: &mut String) {
    let (Some(baseline), comparisons) = (&report.baseline, report.comparisons(target)) else { return };
    if comparisons.is_empty() {
        return;
    }
    let _ = writeln!(
        page,
        "<p>Against the baseline <code>{}</code>, paired over seeds (Δ = mean per-seed difference, model − baseline, in points, with its 95% Student-t interval):</p>\n<ul>",
        escape(baseline)
    );
    for c in comparisons {
        let (f, a) = (c.fpr95(), c.auroc());
        let _ = writeln!(
            page,
            "<li>{} / {}: FPR95 {} vs {}, Δ {} → <b>{}</b>; AUROC {} vs {}, Δ {} → <b>{}</b> (n = {})</li>",
            escape(&c.row.label()),
            escape(&c.row.method),
            cell(&c.row.fpr95),
            cell(&c.baseline.fpr95),
            Comparison::difference(f),
            Comparison::verdict(f, true).text(),
            cell(&c.row.auroc),
            cell(&c.baseline.auroc),
            Comparison::difference(a),
            Comparison::verdict(a, false).text(),
            c.row.fpr95.values.len()
        );
    }
    page.push_str("</ul>\n");
}

/// What each selection chose, per seed.
fn selections(report: &ReportFile, page: &mut String) {
    for s in &report.selections {
        let _ = writeln!(
            page,
            "<h2>What <code>{}</code> chose (for <code>{}</code>)</h2>\n<p>Among <code>{}</code>, by validation {} of {} on ID <code>{}</code> and OOD {}.</p>",
            escape(&s.select),
            escape(&s.scores),
            escape(&s.from),
            escape(&s.metric),
            escape(&s.method),
            escape(&s.validation_id),
            escape(&s.validation_ood.join(", "))
        );
        page.push_str("<table>\n<tr><th>Seed</th><th>Chosen</th><th>ζ used</th><th>Validation FPR95</th><th>Validation AUROC</th><th>Validation ID-ACC</th><th>Candidates (eligible)</th><th>Same recipe as the baseline?</th></tr>\n");
        for c in &s.per_seed {
            let cells: String = c.cells().iter().map(|cell| format!("<td>{}</td>", escape(cell))).collect();
            let same = if c.same_as_baseline { "<td class=\"inv\">yes</td>" } else { "<td>no</td>" };
            let _ = writeln!(page, "<tr>{cells}{same}</tr>");
        }
        page.push_str("</table>\n");
        if let Some(note) = &s.note {
            let _ = writeln!(page, "<p class=\"note\">⚠ {}.</p>", inline(note));
        }
    }
}

/// A plotting frame: maps data coordinates into a `w`×`h` panel with margins.
struct Frame {
    w: f64,
    h: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    const LEFT: f64 = 42.0;
    const BOTTOM: f64 = 30.0;
    const TOP: f64 = 10.0;
    const RIGHT: f64 = 10.0;

    fn px(&self, x: f64) -> f64 {
        let span = (self.x.1 - self.x.0).max(1e-12);
        Self::LEFT + (x - self.x.0) / span * (self.w - Self::LEFT - Self::RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let span = (self.y.1 - self.y.0).max(1e-12);
        self.h - Self::BOTTOM - (y - self.y.0) / span * (self.h - Self::BOTTOM - Self::TOP)
    }

    /// Axes, four ticks on each, and axis labels.
    fn axes(&self, x_label: &str, y_label: &str) -> String {
        self.axes_with(x_label, y_label, Ticks::Even)
    }

    /// Axes with the x ticks `x_ticks` asks for, four y ticks, and axis labels.
    fn axes_with(&self, x_label: &str, y_label: &str, x_ticks: Ticks) -> String {
        let mut out = String::new();
        let (x0, y0) = (self.px(self.x.0), self.py(self.y.0));
        let _ = write!(
            out,
            "<line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{:.1}\" y2=\"{y0:.1}\" stroke=\"#333\"/>\
             <line x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x0:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>",
            self.px(self.x.1),
            self.py(self.y.1)
        );
        for xv in x_ticks.values(self.x) {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                self.px(xv),
                y0 + 13.0,
                short(xv),
            );
        }
        for yv in Ticks::Even.values(self.y) {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 4.0,
                self.py(yv) + 4.0,
                short(yv)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"10\" y=\"{:.1}\" transform=\"rotate(-90 10 {:.1})\" text-anchor=\"middle\">{}</text>",
            (x0 + self.px(self.x.1)) / 2.0,
            self.h - 3.0,
            escape(x_label),
            (y0 + self.py(self.y.1)) / 2.0,
            (y0 + self.py(self.y.1)) / 2.0,
            escape(y_label)
        );
        out
    }

    /// A line with a dot at each point.
    fn dotted_line(&self, points: &[(f64, f64)], colour: &str) -> String {
        let mut out = self.polyline(points, colour);
        for &(x, y) in points {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                self.px(x),
                self.py(y)
            );
        }
        out
    }

    fn polyline(&self, points: &[(f64, f64)], colour: &str) -> String {
        let coords: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y))).collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"/>",
            coords.join(" ")
        )
    }
}

/// Where an axis has its tick labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticks {
    /// Five evenly spaced values, ends included.
    Even,
    /// Whole numbers only (epochs), at most five, starting at the axis' first whole number.
    Integers,
}

impl Ticks {
    fn values(self, (lo, hi): (f64, f64)) -> Vec<f64> {
        match self {
            Ticks::Even => (0..=4).map(|k| lo + k as f64 / 4.0 * (hi - lo)).collect(),
            Ticks::Integers => {
                let first = lo.ceil();
                let step = ((hi.floor() - first) / 4.0).ceil().max(1.0);
                (0..=4).map(|k| first + k as f64 * step).filter(|&v| v <= hi).collect()
            }
        }
    }
}

fn short(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{}", (v * 100.0).round() / 100.0)
    }
}

fn legend(entries: &[(&str, &str)], x: f64, top: f64) -> String {
    let mut out = String::new();
    for (k, (name, colour)) in entries.iter().enumerate() {
        let y = top + 14.0 * k as f64;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y - 9.0,
            x + 14.0,
            y,
            escape(name)
        );
    }
    out
}

/// An SVG figure of `w`×`h` pixels with a caption.
fn figure(caption: &str, w: f64, h: f64, body: &str) -> String {
    format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">{body}</svg>\
         <figcaption>{}</figcaption></figure>\n",
        escape(caption)
    )
}

/// ROC points from (0, 0), threshold by threshold: the cut points of
/// [`crate::metrics::cut_points`], the same points the AUROC of the table integrates. With ID
/// positive (docs/methods.md §8) x is the fraction of OOD images scored at or above the threshold
/// (accepted as ID) and y the fraction of ID images; with OOD positive (OpenOOD) the scores are
/// negated and x is ID images flagged, y OOD images flagged.
pub fn roc_points(id: &[f64], ood: &[f64], convention: Convention) -> Vec<(f64, f64)> {
    let (n_id, n_ood) = (id.len().max(1) as f64, ood.len().max(1) as f64);
    let points: Vec<(f64, f64)> = match convention {
        Convention::IdPositive => {
            cut_points(id, ood).into_iter().map(|(tp, fp)| (fp / n_ood, tp / n_id)).collect()
        }
        Convention::OpenOod => {
            let negated = |scores: &[f64]| scores.iter().map(|s| -s).collect::<Vec<f64>>();
            cut_points(&negated(ood), &negated(id))
                .into_iter()
                .map(|(tp, fp)| (fp / n_id, tp / n_ood))
                .collect()
        }
    };
    std::iter::once((0.0, 0.0)).chain(points).collect()
}

/// At most `n` points, evenly spaced along the list (the first and last kept), to keep pages small.
fn thin(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    if points.len() <= n {
        return points;
    }
    let step = (points.len() - 1) as f64 / (n - 1) as f64;
    (0..n).map(|k| points[((k as f64 * step).round() as usize).min(points.len() - 1)]).collect()
}

fn roc(sample: &ScoreSample, convention: Convention) -> String {
    let frame = Frame { w: 300.0, h: 260.0, x: (0.0, 1.0), y: (0.0, 1.0) };
    let (x_label, y_label) = match convention {
        Convention::IdPositive => ("FPR (OOD accepted as ID)", "TPR (ID kept)"),
        Convention::OpenOod => ("FPR (ID flagged as OOD)", "TPR (OOD flagged)"),
    };
    let mut body = frame.axes(x_label, y_label);
    body.push_str(&frame.polyline(&[(0.0, 0.0), (1.0, 1.0)], "#bbbbbb"));
    if convention == Convention::IdPositive {
        // Where the table reads FPR95.
        let _ = write!(
            body,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#999\" stroke-dasharray=\"3 3\"/>",
            frame.px(0.0),
            frame.px(1.0),
            y = frame.py(0.95)
        );
    }
    let mut entries = Vec::new();
    let opacity = if sample.seeds.len() > 1 { 0.7 } else { 1.0 };
    for seed in &sample.seeds {
        for (k, (_, ood)) in seed.ood.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let line = frame.polyline(&thin(roc_points(&seed.id, ood, convention), 300), colour);
            body.push_str(&line.replace("<polyline ", &format!("<polyline stroke-opacity=\"{opacity}\" ")));
        }
    }
    if let Some(first) = sample.seeds.first() {
        for (k, (name, _)) in first.ood.iter().enumerate() {
            entries.push((name.as_str(), COLOURS[k % COLOURS.len()]));
        }
    }
    // Bottom right: where a useful detector's curves are not.
    let top = frame.h - Frame::BOTTOM - 8.0 - 14.0 * (entries.len() as f64 - 1.0);
    body.push_str(&legend(&entries, 190.0, top));
    let seeds = sample.seeds.len();
    figure(
        &format!("{} / {} ({seeds} seed{})", sample.scores, sample.method, if seeds == 1 { "" } else { "s" }),
        frame.w,
        frame.h,
        &body,
    )
}

/// The scale a method's scores are histogrammed on: MSP as −log(1 − MSP), where confident
/// samples (MSP 0.99, 0.9999, …) spread out instead of filling the last bin; 1 − MSP is
/// floored at 2⁻⁵³, the gap below 1.0 in f64 (MSP is exactly 1.0 once the logit margin exceeds
/// about 37). Other methods as they are.
fn histogram_scale(method: &str) -> (fn(f64) -> f64, &'static str) {
    match method {
        "msp" => (|s: f64| -(1.0 - s).max(f64::EPSILON / 2.0).ln(), "−log(1 − MSP)"),
        _ => (|s: f64| s, ""),
    }
}

fn histogram(sample: &ScoreSample, id: &[f64], name: &str, ood: &[f64]) -> String {
    const BINS: usize = 40;
    let (scale, scale_label) = histogram_scale(&sample.method);
    let scaled = |values: &[f64]| values.iter().map(|&v| scale(v)).collect::<Vec<f64>>();
    let (id, ood) = (scaled(id), scaled(ood));
    let ood = ood.as_slice();
    let finite = |v: &&f64| v.is_finite();
    let lo = id.iter().chain(ood).filter(finite).copied().fold(f64::INFINITY, f64::min);
    let hi = id.iter().chain(ood).filter(finite).copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let density = |values: &[f64]| -> Vec<f64> {
        let mut counts = vec![0.0; BINS];
        for &v in values.iter().filter(|v| v.is_finite()) {
            let bin = (((v - lo) / (hi - lo)) * BINS as f64).floor().clamp(0.0, (BINS - 1) as f64) as usize;
            counts[bin] += 1.0;
        }
        let total = values.len().max(1) as f64;
        counts.into_iter().map(|c| c / total).collect()
    };
    let (id_density, ood_density) = (density(&id), density(ood));
    let top = id_density.iter().chain(&ood_density).copied().fold(0.0, f64::max).max(1e-9);
    let frame = Frame { w: 300.0, h: 200.0, x: (lo, hi), y: (0.0, top) };
    let x_label =
        if scale_label.is_empty() { format!("{} score", sample.method) } else { scale_label.to_string() };
    let mut body = frame.axes(&x_label, "fraction");
    let width = (hi - lo) / BINS as f64;
    for (values, colour) in [(&id_density, ID_COLOUR), (&ood_density, COLOURS[0])] {
        for (k, &d) in values.iter().enumerate() {
            if d == 0.0 {
                continue;
            }
            let (x0, x1) = (frame.px(lo + k as f64 * width), frame.px(lo + (k + 1) as f64 * width));
            let (y0, y1) = (frame.py(d), frame.py(0.0));
            let _ = write!(
                body,
                "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.45\"/>",
                (x1 - x0).max(0.5),
                y1 - y0
            );
        }
    }
    body.push_str(&legend(&[("ID", ID_COLOUR), (name, COLOURS[0])], 200.0, 18.0));
    figure(&format!("{} / {} — ID vs {name}", sample.scores, sample.method), frame.w, frame.h, &body)
}

/// A line of the backtracking plot: its name, the value it draws, its colour.
type Series = (&'static str, fn(&BacktrackRow) -> f64, &'static str);

/// For every swept parameter with numeric values: one figure per (score stage, method, values
/// of the other parameters), FPR95, AUROC and ID accuracy against the parameter, each a line
/// through the means with a band of ± one standard deviation over seeds.
fn sweep_curves(report: &ReportFile, target: &str) -> String {
    let mut out = String::new();
    let means: Vec<&Row> = report.summary_rows(target).filter(|r| !r.params.is_empty()).collect();
    for param in report.param_names() {
        // (scores, method, the other parameters) → the rows along `param`.
        type Curve<'a> = ((String, String, Vec<(String, String)>), Vec<(f64, &'a Row)>);
        let mut curves: Vec<Curve> = Vec::new();
        for r in &means {
            let Some(x) = r.params.get(param).and_then(|v| v.parse::<f64>().ok()) else { continue };
            let others: Vec<(String, String)> =
                r.params.iter().filter(|(k, _)| *k != param).map(|(k, v)| (k.clone(), v.clone())).collect();
            let key = (r.scores.clone(), r.method.clone(), others);
            match curves.iter_mut().find(|(k, _)| *k == key) {
                Some((_, points)) => points.push((x, r)),
                None => curves.push((key, vec![(x, r)])),
            }
        }
        for ((scores, method, others), mut points) in curves {
            if points.len() < 2 {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lo, hi) = (points[0].0, points[points.len() - 1].0);
            let frame = Frame { w: 360.0, h: 240.0, x: (lo, hi.max(lo + 1e-9)), y: (0.0, 100.0) };
            let mut body = frame.axes(param, "percent");
            let series: [(&str, MetricOf, &str); 3] = [
                (fpr_header(report.convention), |r| &r.fpr95, COLOURS[0]),
                ("AUROC", |r| &r.auroc, COLOURS[1]),
                ("ID-ACC", |r| &r.id_accuracy, COLOURS[2]),
            ];
            let mut entries = Vec::new();
            for (name, metric, colour) in series {
                let band: Vec<(f64, f64)> = points
                    .iter()
                    .map(|(x, r)| (*x, 100.0 * (metric(r).mean + metric(r).std)))
                    .chain(points.iter().rev().map(|(x, r)| (*x, 100.0 * (metric(r).mean - metric(r).std))))
                    .collect();
                let polygon: Vec<String> = band
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", frame.px(x), frame.py(y.clamp(0.0, 100.0))))
                    .collect();
                let _ = write!(
                    body,
                    "<polygon class=\"band\" fill=\"{colour}\" fill-opacity=\"0.18\" stroke=\"none\" points=\"{}\"/>",
                    polygon.join(" ")
                );
                let line: Vec<(f64, f64)> =
                    points.iter().map(|(x, r)| (*x, 100.0 * metric(r).mean)).collect();
                body.push_str(&frame.dotted_line(&line, colour));
                entries.push((name, colour));
            }
            body.push_str(&legend(&entries, frame.w + 4.0, 18.0));
            let fixed: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let caption = if fixed.is_empty() {
                format!("{scores} / {method} on {target}: against {param}")
            } else {
                format!("{scores} / {method} on {target}: against {param} ({})", fixed.join(", "))
            };
            out.push_str(&figure(&caption, frame.w + 150.0, frame.h, &body));
        }
    }
    out
}

/// Picks one metric of a row.
type MetricOf = fn(&Row) -> &Summary;

fn backtracking(curve: &[BacktrackRow], convention: Convention) -> String {
    let mut out = String::new();
    let mut groups: Vec<(String, String)> = Vec::new();
    for b in curve {
        let key = (b.row.label(), b.row.method.clone());
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    for (scores, method) in groups {
        let points: Vec<&BacktrackRow> =
            curve.iter().filter(|b| b.row.label() == scores && b.row.method == method).collect();
        let first = points.first().map_or(0.0, |b| b.epoch as f64);
        let last = points.last().map_or(1.0, |b| b.epoch as f64);
        let frame = Frame { w: 360.0, h: 240.0, x: (first, last.max(first + 1.0)), y: (0.0, 100.0) };
        let mut body = frame.axes_with("epoch", "percent", Ticks::Integers);
        let series: [Series; 3] = [
            (fpr_header(convention), |b| b.row.fpr95.mean, COLOURS[0]),
            ("AUROC", |b| b.row.auroc.mean, COLOURS[1]),
            ("ID-ACC", |b| b.row.id_accuracy.mean, COLOURS[2]),
        ];
        let mut entries = Vec::new();
        for (name, value, colour) in series {
            let line: Vec<(f64, f64)> = points.iter().map(|b| (b.epoch as f64, 100.0 * value(b))).collect();
            body.push_str(&frame.dotted_line(&line, colour));
            entries.push((name, colour));
        }
        // The legend sits right of the plot area, clear of the lines.
        body.push_str(&legend(&entries, frame.w + 4.0, 18.0));
        out.push_str(&figure(&format!("{scores} / {method}"), frame.w + 150.0, frame.h, &body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plotted_curve_integrates_to_the_tables_auroc() {
        let id = [0.9, 0.8, 0.8, 0.3, 0.1, -0.0];
        let ood = [0.1, 0.5, 0.8, 0.2, 0.0, -2.0];
        let auroc = crate::metrics::ood_metrics(&id, &ood).unwrap().auroc;
        for convention in [Convention::IdPositive, Convention::OpenOod] {
            let points = roc_points(&id, &ood, convention);
            let area: f64 = points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
            assert!((area - auroc).abs() < 1e-12, "{convention:?}: {area} vs {auroc}");
        }
    }

    #[test]
    fn epoch_ticks_are_whole_numbers_and_msp_spreads_confident_scores() {
        assert_eq!(Ticks::Integers.values((1.0, 8.0)), [1.0, 3.0, 5.0, 7.0]);
        assert_eq!(Ticks::Integers.values((2.0, 4.0)), [2.0, 3.0, 4.0]);
        assert_eq!(Ticks::Integers.values((1.0, 2.0)), [1.0, 2.0]);
        assert_eq!(Ticks::Even.values((0.0, 100.0)), [0.0, 25.0, 50.0, 75.0, 100.0]);
        let (scale, label) = histogram_scale("msp");
        assert_eq!(label, "−log(1 − MSP)");
        assert!((scale(0.9) - 10f64.ln()).abs() < 1e-12 && (scale(0.999) - 1000f64.ln()).abs() < 1e-9);
        assert!((scale(1.0) - 53.0 * 2f64.ln()).abs() < 1e-9, "saturated MSP stays finite");
        assert_eq!(histogram_scale("energy").0(-3.5), -3.5);
    }

    #[test]
    fn roc_points_run_from_origin_to_one_one_in_the_tables_convention() {
        let (id, ood) = ([0.9, 0.8, 0.3], [0.1, 0.5]);
        // ID positive, highest score first: ID 0.9 → (0, 1/3); ID 0.8 → (0, 2/3); OOD 0.5 →
        // (1/2, 2/3); ID 0.3 → (1/2, 1); OOD 0.1 → (1, 1). FPR95 is x where y first reaches 0.95.
        let points = roc_points(&id, &ood, Convention::IdPositive);
        assert_eq!(
            points,
            [(0.0, 0.0), (0.0, 1.0 / 3.0), (0.0, 2.0 / 3.0), (0.5, 2.0 / 3.0), (0.5, 1.0), (1.0, 1.0)]
        );
        // OOD positive, lowest score first: OOD 0.1 → (0, 0.5); ID 0.3 → (1/3, 0.5); OOD 0.5 → (1/3, 1).
        let points = roc_points(&id, &ood, Convention::OpenOod);
        assert_eq!((points[1], points[3], points.last()), ((0.0, 0.5), (1.0 / 3.0, 1.0), Some(&(1.0, 1.0))));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
