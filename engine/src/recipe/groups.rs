//! The sweep passes of reading a recipe: each stage's own sweep, the sweep groups every
//! stage's instances range over (its upstream stages' and its own, crossed or zipped), and the
//! instance count checked against the limit before anything is expanded.
use super::model::StageDecl;
use super::sweep::{self, thousands, Axis, Group, Sweep};
use super::tree::{Node, NodeValue};
use super::validate::Validator;
use crate::graph::StageGraph;
use stages::{StageKind, Target};
use std::collections::BTreeSet;

impl Validator<'_> {
    /// Refuses a recipe whose stages expand to more instances than the limit, counted from the
    /// sweep groups (sweeps crossed between stages included) without expanding anything, at the
    /// stage that makes the most, saying where the count comes from.
    pub(super) fn count_instances(&mut self, stages: &[StageDecl], groups: &[Vec<Group>], seeds: usize) {
        let per_stage: Vec<u128> = stages
            .iter()
            .zip(groups)
            .map(|(decl, groups)| {
                let seeds = if decl.kind.across_seeds() { 1 } else { seeds as u128 };
                seeds.saturating_mul(sweep::points(groups))
            })
            .collect();
        let total = per_stage.iter().fold(0u128, |acc, &n| acc.saturating_add(n));
        if total <= self.limit.max as u128 {
            return;
        }
        let Some((largest, &count)) = per_stage.iter().enumerate().max_by_key(|(i, &n)| (n, usize::MAX - i))
        else {
            return;
        };
        if count <= self.limit.max as u128 {
            // No stage alone is past the limit: many stages together are. Said at the stage
            // where the running count (in recipe order) passes it.
            let mut running = 0u128;
            let crossing = per_stage
                .iter()
                .position(|&n| {
                    running = running.saturating_add(n);
                    running > self.limit.max as u128
                })
                .unwrap_or(largest);
            self.error(
                stages[crossing].name_span.clone(),
                format!(
                    "the recipe expands to {} instances over {} stages (the most, {}, from stage `{}`); \
                     stage `{}` passes {}",
                    thousands(total),
                    thousands(stages.len() as u128),
                    thousands(count),
                    stages[largest].name,
                    stages[crossing].name,
                    self.limit.describe()
                ),
            );
            return;
        }
        let decl = &stages[largest];
        let mut factors = Vec::new();
        if !decl.kind.across_seeds() {
            factors.push(format!("{seeds} seed{}", if seeds == 1 { "" } else { "s" }));
        }
        for group in &groups[largest] {
            let names: Vec<String> = group
                .axes
                .iter()
                .map(|a| {
                    if a.stage == largest {
                        format!("`{}`", a.field)
                    } else {
                        format!("`{}.{}`", stages[a.stage].name, a.field)
                    }
                })
                .collect();
            factors.push(format!("{} {}", names.join(" = "), thousands(group.len as u128)));
        }
        let whole = if count < total {
            format!("; the recipe as a whole makes {}", thousands(total))
        } else {
            String::new()
        };
        let span = decl
            .sweep
            .as_ref()
            .and_then(|s| s.fields.first())
            .map_or(decl.name_span.clone(), |f| f.span.clone());
        self.error(
            span,
            format!(
                "stage `{}` expands to {} instances ({}){whole}: more than {}",
                decl.name,
                thousands(count),
                factors.join(" × "),
                self.limit.describe()
            ),
        );
    }

    /// A stage that reads one instance of an upstream per seed (a selection over one training's
    /// checkpoints) may not read a swept one: refused here rather than failing at run time.
    pub(super) fn one_instance_reads(&mut self, stages: &[StageDecl], groups: &[Vec<Group>]) {
        for decl in stages {
            for name in decl.stage().one_instance_of() {
                let Some(u) = stages.iter().position(|s| s.name == name) else { continue };
                if groups[u].is_empty() {
                    continue;
                }
                let variants = sweep::points(&groups[u]);
                let span = decl
                    .inputs
                    .iter()
                    .find(|i| matches!(&i.target, Target::Stage { name: n, .. } if *n == name))
                    .map_or(decl.name_span.clone(), |i| decl.node.locate(&i.field));
                self.error_help(
                    span,
                    format!(
                        "stage `{}` reads a single run of `{name}` per seed, but `{name}` has {} variants \
                         per seed (it is swept)",
                        decl.name,
                        thousands(variants)
                    ),
                    Some(format!(
                        "do not sweep `{name}`, or read its variants instead (a `select` does with \
                         `over = \"variants\"`)"
                    )),
                );
            }
        }
    }

    /// The stage's own sweep: its `{ sweep = [...] }` fields and `zip`.
    pub(super) fn sweep(&mut self, table: &Node, kind: &dyn StageKind, what: &str) -> Option<Option<Sweep>> {
        let (fields, problems) = sweep::swept_fields(table);
        let malformed = !problems.is_empty();
        for (span, message) in problems {
            self.error(span, format!("{what}: {message}"));
        }
        let zip_entry = table.get("zip");
        let zip = match zip_entry.map(|e| &e.node.value) {
            None => false,
            Some(NodeValue::Scalar(serde_json::Value::Bool(b))) => *b,
            Some(_) => {
                let node = &zip_entry.expect("matched").node;
                self.error(
                    node.span.clone(),
                    format!("{what}: `zip` must be true or false, found {}", node.to_json()),
                );
                return None;
            }
        };
        if malformed {
            return None;
        }
        if let (true, Some(first)) = (kind.across_variants(), fields.first()) {
            self.error(
                first.span.clone(),
                format!(
                    "{what}: a `{}` stage combines the variants it reads and cannot be swept itself",
                    kind.name()
                ),
            );
            return None;
        }
        if zip {
            let lengths: BTreeSet<usize> = fields.iter().map(|f| f.values.len()).collect();
            if lengths.len() > 1 {
                let listed: Vec<String> =
                    fields.iter().map(|f| format!("`{}` has {}", f.name, f.values.len())).collect();
                let span = zip_entry.expect("zip is set").node.span.clone();
                self.error(
                    span,
                    format!("{what}: `zip` pairs sweeps of equal length; {}", listed.join(", ")),
                );
                return None;
            }
        }
        if fields.is_empty() && !zip {
            return Some(None);
        }
        Some(Some(Sweep { fields, zip, zip_span: zip_entry.map(|e| e.node.span.clone()) }))
    }

    /// The sweep groups of every stage, in graph order: what its upstream stages range over
    /// (nothing for a stage that combines variants), then its own sweep, crossed, or with
    /// `zip` all paired into one group.
    pub(super) fn groups(&mut self, stages: &[StageDecl], graph: &StageGraph) -> Vec<Vec<Group>> {
        let mut groups: Vec<Vec<Group>> = vec![Vec::new(); stages.len()];
        for &s in graph.order() {
            let decl = &stages[s];
            if decl.kind.across_variants() {
                continue;
            }
            let mut list: Vec<Group> = graph.upstream(s).iter().flat_map(|&u| groups[u].clone()).collect();
            let Some(sweep) = &decl.sweep else {
                groups[s] = sweep::merge(list);
                continue;
            };
            let own = sweep
                .fields
                .iter()
                .map(|f| Group { axes: vec![Axis { stage: s, field: f.name.clone() }], len: f.values.len() });
            if sweep.zip {
                list.extend(own);
                let list = sweep::merge(list);
                let lengths: BTreeSet<usize> = list.iter().map(|g| g.len).collect();
                if lengths.len() > 1 {
                    let listed: Vec<String> = list
                        .iter()
                        .map(|g| {
                            let axis = &g.axes[0];
                            format!("`{}.{}` has {}", stages[axis.stage].name, axis.field, g.len)
                        })
                        .collect();
                    let span = sweep.zip_span.clone().unwrap_or(decl.name_span.clone());
                    self.error(
                        span,
                        format!(
                            "stage `{}`: `zip` pairs sweeps of equal length; {}",
                            decl.name,
                            listed.join(", ")
                        ),
                    );
                    continue;
                }
                let len = list.first().map_or(1, |g| g.len);
                groups[s] = vec![Group { axes: list.into_iter().flat_map(|g| g.axes).collect(), len }];
            } else {
                list.extend(own);
                groups[s] = sweep::merge(list);
            }
        }
        groups
    }
}
