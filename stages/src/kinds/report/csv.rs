//! `report.csv`: one table, fractions, one line per record. `record` says what a line is:
//! `summary` (mean and sample std over seeds of a set, group or all sets), `seed` (one seed's
//! values of the same row, `seed` its position in the recipe's seed list) and `backtracking`
//! (mean and std at one checkpoint, `epoch` set). `scope` is `set`, `group` or `all`;
//! `inverted` lists the sets of the row whose mean AUROC is below 50%.
use super::model::{ReportFile, Row, Scope};
use std::fmt::Write as _;

fn scope(s: Scope) -> &'static str {
    match s {
        Scope::Set => "set",
        Scope::Group => "group",
        Scope::All => "all",
    }
}

/// The CSV text of `report`.
pub fn csv(report: &ReportFile) -> String {
    let tag = report.convention.tag();
    let params = report.param_names();
    let param_columns: String = params.iter().map(|p| format!("{p},")).collect();
    let mut out = format!(
        "record,scores,{param_columns}method,ood,scope,epoch,seed,seeds,n_id,n_ood,fpr95_{tag}_mean,fpr95_{tag}_std,\
         auroc_mean,auroc_std,aupr_in_mean,aupr_in_std,aupr_out_mean,aupr_out_std,id_acc_mean,id_acc_std,zeta,inverted\n",
    );
    let line = |out: &mut String, record: &str, r: &Row, epoch: Option<usize>, seed: Option<usize>| {
        let _ = write!(out, "{record},{},", r.scores);
        for p in &params {
            let _ = write!(out, "{},", r.params.get(*p).map_or("", String::as_str));
        }
        let (epoch, seed_text) =
            (epoch.map_or(String::new(), |e| e.to_string()), seed.map_or(String::new(), |s| s.to_string()));
        let _ = write!(
            out,
            "{},{},{},{epoch},{seed_text},{},{},{}",
            r.method,
            r.ood,
            scope(r.scope),
            r.fpr95.values.len(),
            r.n_id,
            r.n_ood
        );
        for s in [&r.fpr95, &r.auroc, &r.aupr_in, &r.aupr_out, &r.id_accuracy] {
            match seed {
                Some(k) => {
                    let _ = write!(out, ",{},", s.values.get(k).copied().unwrap_or(f64::NAN));
                }
                None => {
                    let _ = write!(out, ",{},{}", s.mean, s.std);
                }
            }
        }
        let zeta = match (&r.zeta, seed) {
            (None, _) => String::new(),
            (Some(z), Some(k)) => z.values.get(k).map_or(String::new(), |v| v.to_string()),
            (Some(z), None) => z.mean.to_string(),
        };
        let _ = writeln!(out, ",{zeta},{}", r.inverted.join(" "));
    };
    for r in &report.rows {
        line(&mut out, "summary", r, None, None);
    }
    for r in &report.rows {
        for k in 0..r.fpr95.values.len() {
            line(&mut out, "seed", r, None, Some(k));
        }
    }
    for b in &report.backtracking {
        line(&mut out, "backtracking", &b.row, Some(b.epoch), None);
    }
    out
}
