//! `report.csv`: one line per row, mean and standard deviation of each metric.
use super::model::ReportFile;
use std::fmt::Write as _;

/// The CSV text of `report`.
pub fn csv(report: &ReportFile) -> String {
    let tag = report.convention.tag();
    let params = report.param_names();
    let param_columns: String = params.iter().map(|p| format!("{p},")).collect();
    let mut out = format!(
        "scores,{param_columns}method,ood,seeds,fpr95_{tag}_mean,fpr95_{tag}_std,auroc_mean,auroc_std,\
         aupr_in_mean,aupr_in_std,aupr_out_mean,aupr_out_std,id_acc_mean,id_acc_std\n",
    );
    for r in &report.rows {
        let _ = write!(out, "{},", r.scores);
        for p in &params {
            let _ = write!(out, "{},", r.params.get(*p).map_or("", String::as_str));
        }
        let _ = write!(out, "{},{},{}", r.method, r.ood, r.fpr95.values.len());
        for s in [&r.fpr95, &r.auroc, &r.aupr_in, &r.aupr_out, &r.id_accuracy] {
            let _ = write!(out, ",{},{}", s.mean, s.std);
        }
        out.push('\n');
    }
    out
}
