//! `report`: the metrics of docs/methods.md §8 for every score stage it names, per OOD set, per group of
//! OOD sets (`ood_groups`; one group per set by default) and the plain mean over all sets,
//! mean ± sample std across seeds. One instance reads every seed's scores. Every summary is
//! given per group and for all sets, never for all sets alone: a mean over semantic and noise
//! sets hides what either says.
//!
//! It also says what each selection chose per seed and with which validation metrics, which ζ
//! each UM or UMAP model used ([`lineage`]), each method's hyper-parameters, and compares each
//! score stage with a `baseline` through the paired differences over seeds ([`paired`]).
//!
//! Outputs: `report.json` (fractions, per-seed values included), `report.csv` (fractions, one
//! row per score stage × method × set, group or all sets, then one per seed, then the
//! backtracking table), `report.md` (percentages, like the paper's Table 1), `report.html`
//! (summaries and plots first, the full table folded, see [`html`]).
mod csv;
mod gather;
pub mod html;
pub mod lineage;
mod markdown;
pub mod model;
pub mod paired;
mod params;

pub use params::Report;

use crate::error::ParamError;
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use std::path::Path;

impl StageParams for Report {
    const KIND: &'static str = "report";
    const ROLE: crate::stage::Role = crate::stage::Role::Reports;
    const VERSION: u32 = 4;
    const PRODUCES: &'static [Artifact] = &[Artifact::Report];
    const ACROSS_SEEDS: bool = true;

    fn inputs(&self) -> Vec<Input> {
        let mut inputs: Vec<Input> = self
            .scores
            .iter()
            .enumerate()
            .map(|(i, name)| Input::stage(&["scores", &i.to_string()], name, Artifact::Scores))
            .collect();
        // What the report says of each model: a selection's choice, a constraint's ζ.
        for (score, l) in &self.lineage {
            if let Some(select) = l.selection() {
                inputs.push(Input::stage(&["lineage", score, "model"], select, Artifact::Model));
            }
            if let Some(constraint) = l.constraint() {
                inputs.push(Input::stage(
                    &["lineage", score, "constraint"],
                    constraint,
                    Artifact::Constraint,
                ));
            }
        }
        inputs
    }

    fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if self.scores.is_empty() {
            problems.push(ParamError::new(&["scores"], "needs at least one score stage"));
        }
        if let Some(baseline) = self.baseline.as_ref().filter(|b| !self.scores.contains(b)) {
            problems.push(ParamError::new(
                &["baseline"],
                format!("`{baseline}` is not one of this report's `scores`"),
            ));
        }
        if let Some(groups) = &self.ood_groups {
            problems.extend(lineage::check_groups(groups, &self.lineage));
        }
        problems
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let report = gather::gather(self, ctx)?;
        write_json(&ctx.out_dir.join("report.json"), &report)?;
        write_text(&ctx.out_dir.join("report.csv"), &csv::csv(&report))?;
        write_text(&ctx.out_dir.join("report.md"), &markdown::markdown(&report))?;
        let samples = gather::samples(self, ctx)?;
        write_text(&ctx.out_dir.join("report.html"), &html::render(&report, &samples))
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), StageError> {
    std::fs::write(path, text).map_err(StageError::io("cannot write", path))
}
