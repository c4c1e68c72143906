//! The recipe model: a validated [`Recipe`] and its stages as declared ([`StageDecl`], one
//! [`StageVariant`] per point of a stage's sweep), and what is asked of them once read (stages
//! by name, the data check). Reading and validating one is `validate.rs`'s.
use super::diagnostic::{Diagnostic, Source};
use super::resources::{Resources, SlurmSettings};
use super::sweep::{self, Group, Sweep};
use super::tree::Node;
use crate::graph::StageGraph;
use stages::data::DatasetSpec;
use stages::device::DeviceChoice;
use stages::{Input, Stage, StageKind, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

/// One stage as declared: its name, kind, parsed parameters and references.
pub struct StageDecl {
    pub name: String,
    pub kind: &'static dyn StageKind,
    /// One configured stage per variant of its sweep (just one without a sweep), in the order
    /// of [`sweep::combinations`].
    pub variants: Vec<StageVariant>,
    /// Its own swept fields, if any.
    pub sweep: Option<Sweep>,
    pub inputs: Vec<Input>,
    /// Where `[stages.NAME]` was written.
    pub name_span: Range<usize>,
    /// The stage's table, to locate its fields in later messages.
    pub node: Node,
    /// What its instances ask a cluster for (`resources = {…}`); part of no cache key.
    pub resources: Resources,
}

/// One variant of a swept stage: the value index of each swept field, and the stage built with
/// those values.
pub struct StageVariant {
    pub indices: Vec<usize>,
    pub stage: Box<dyn Stage>,
}

impl StageDecl {
    /// The stage as configured (its first variant when swept).
    pub fn stage(&self) -> &dyn Stage {
        self.variants[0].stage.as_ref()
    }

    /// The swept fields and their values for variant `v`, as labels show them.
    pub fn assignment(&self, v: usize) -> Vec<(String, String)> {
        let Some(sweep) = &self.sweep else { return Vec::new() };
        sweep
            .fields
            .iter()
            .zip(&self.variants[v].indices)
            .map(|(f, &i)| (f.name.clone(), sweep::show_value(&f.values[i])))
            .collect()
    }

    /// Names of the stages this one reads, in the order its fields name them.
    pub fn upstream(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.inputs
            .iter()
            .filter_map(|i| match &i.target {
                Target::Stage { name, .. } if seen.insert(name.as_str()) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Names of the datasets this one reads.
    pub fn datasets(&self) -> BTreeSet<&str> {
        self.inputs
            .iter()
            .filter_map(|i| match &i.target {
                Target::Dataset { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// A validated recipe.
pub struct Recipe {
    pub source: Source,
    pub name: String,
    /// The folder relative paths resolve against.
    pub dir: PathBuf,
    pub seeds: Vec<u64>,
    pub device: DeviceChoice,
    /// `[remote] url`: where `push`, `pull` and `run --remote` go unless told otherwise. Not part
    /// of any cache key.
    pub remote: Option<String>,
    /// `[executor.slurm]`: how `run --executor slurm` submits. Not part of any cache key.
    pub slurm: SlurmSettings,
    pub datasets: BTreeMap<String, DatasetSpec>,
    /// Stages in the order the recipe declares them.
    pub stages: Vec<StageDecl>,
    pub graph: StageGraph,
    /// For each stage, the sweep groups its instances range over (empty without sweeps).
    pub groups: Vec<Vec<Group>>,
    /// Stage name → index in `stages`.
    pub(super) by_name: std::collections::HashMap<String, usize>,
}

impl Recipe {
    pub fn stage(&self, name: &str) -> Option<&StageDecl> {
        self.stage_index(name).map(|i| &self.stages[i])
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The stages of `only` (every stage when `None`) by name.
    pub fn stage_map(&self, only: Option<&BTreeSet<usize>>) -> BTreeMap<&str, &dyn Stage> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|set| set.contains(i)))
            .map(|(_, s)| (s.name.as_str(), s.stage()))
            .collect()
    }

    /// The datasets that stages cannot use (missing files, images of another shape than their
    /// model's), read from headers without running anything. Each problem is said once, at the
    /// field of the first stage (in recipe order) that meets it, with the other stages that
    /// meet it counted: a missing CIFAR folder is one message, not one per stage. Only the
    /// stages of `only` are checked (every stage when `None`); the model behind a stage is
    /// followed through every stage.
    pub fn check_data(&self, only: Option<&BTreeSet<usize>>) -> Vec<Diagnostic> {
        self.data_problems(only).0
    }

    /// [`Recipe::check_data`]'s diagnostics, and the stages (indices) that meet a problem.
    pub fn data_problems(&self, only: Option<&BTreeSet<usize>>) -> (Vec<Diagnostic>, BTreeSet<usize>) {
        let all = self.stage_map(None);
        let problems = stages::estimate::preflight::check_datasets(&all, &self.datasets);
        // (dataset, message) → the stages (indices) that meet it.
        let mut grouped: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
        for problem in problems {
            let Some(index) = self.stage_index(&problem.stage) else { continue };
            if only.is_some_and(|set| !set.contains(&index)) {
                continue;
            }
            grouped.entry((problem.dataset, problem.message)).or_default().insert(index);
        }
        let unusable: BTreeSet<usize> = grouped.values().flatten().copied().collect();
        let mut diagnostics: Vec<Diagnostic> = grouped
            .into_iter()
            .map(|((dataset, message), stages)| {
                let first = *stages.first().expect("a group has a stage");
                let decl = &self.stages[first];
                let span = decl
                    .inputs
                    .iter()
                    .find(|i| matches!(&i.target, Target::Dataset { name } if *name == dataset))
                    .map(|i| decl.node.locate(&i.field))
                    .unwrap_or(decl.name_span.clone());
                let others = match stages.len() - 1 {
                    0 => String::new(),
                    n => {
                        let named: Vec<&str> =
                            stages.iter().skip(1).take(3).map(|&i| self.stages[i].name.as_str()).collect();
                        let more = if n > 3 { format!(" and {} more", n - 3) } else { String::new() };
                        format!(
                            " (and {n} other stage{} read it: {}{more})",
                            if n == 1 { "" } else { "s" },
                            named.join(", ")
                        )
                    }
                };
                Diagnostic::new(&self.source, span, format!("stage `{}`: {message}{others}", decl.name))
            })
            .collect();
        // Files the stages name (an imported checkpoint) that are not here.
        let mut unusable = unusable;
        for (index, decl) in self.stages.iter().enumerate() {
            if only.is_some_and(|set| !set.contains(&index)) {
                continue;
            }
            let mut said = BTreeSet::new();
            for file in decl.variants.iter().flat_map(|v| v.stage.files()) {
                if file.present || !said.insert(file.path.clone()) {
                    continue;
                }
                unusable.insert(index);
                let span = decl.node.locate(&[file.field.to_string()]);
                let locked = if file.blake3.is_some() {
                    " (its digest, from the lock file, names the keys: `pipeline pull` can fetch what \
                     the author computed)"
                } else {
                    ""
                };
                diagnostics.push(Diagnostic::new(
                    &self.source,
                    span,
                    format!(
                        "stage `{}`: `{}` is not here, in {}{locked}",
                        decl.name,
                        file.path,
                        self.dir.display()
                    ),
                ));
            }
        }
        diagnostics.sort_by_key(|d| (d.line, d.column));
        (diagnostics, unusable)
    }
}
