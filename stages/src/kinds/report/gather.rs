//! Reading a report's inputs into a [`ReportFile`]: every seed's scores of every score stage
//! (grouped by sweep variant), turned into rows per OOD set, per group and over all sets; the
//! backtracking rows where checkpoints were scored; each selection's choices from its
//! `selected.json`; the ζ each UM or UMAP model used, from its declaration or its constraint
//! stage's `constraint.json`; and the method hyper-parameters the score stages ran with.
use super::lineage::{same_configuration, ScoreLineage};
use super::model::{
    BacktrackRow, MethodParameters, OodGroup, ReportFile, Row, Scope, ScoreSample, SeedChoice, SeedScores,
    SelectionReport, Summary, ALL,
};
use super::params::Report;
use crate::error::StageError;
use crate::formats::npy;
use crate::kinds::score::ScoreIndex;
use crate::kinds::select::Selection;
use crate::metrics::{mean_over_sets, ood_metrics_with, Convention, OodMetrics};
use crate::scores::scorer::MethodParams;
use crate::scores::Method;
use crate::stage::{RunContext, UpstreamTag};
use crate::training::constraint::ConstraintFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One seed's output folder of a score stage, with the seed.
struct Member {
    dir: PathBuf,
    seed: Option<u64>,
}

/// The whole report, before rendering.
pub fn gather(report: &Report, ctx: &RunContext) -> Result<ReportFile, StageError> {
    let (mut rows, mut backtracking, mut groups) = (Vec::new(), Vec::new(), Vec::<OodGroup>::new());
    let (mut parameters, mut selections) = (Vec::new(), Vec::new());
    let mut seeds = 0;
    for name in &report.scores {
        let lineage = report.lineage.get(name);
        let choices = match lineage.and_then(ScoreLineage::selection) {
            Some(select) => read_choices(ctx, select)?,
            None => Vec::new(),
        };
        let mut methods: Vec<Method> = Vec::new();
        for (params, members) in by_variant(ctx.stage_dirs(name)?, &ctx.stage_tags(name)) {
            seeds = seeds.max(members.len());
            let indexes = members.iter().map(|m| ScoreIndex::read(&m.dir)).collect::<Result<Vec<_>, _>>()?;
            let sets: Vec<String> = indexes[0].ood.iter().map(|s| s.name.clone()).collect();
            let stage_groups = resolve_groups(report.ood_groups.as_ref(), &sets);
            merge_groups(&mut groups, &stage_groups);
            let zeta: Vec<Option<f64>> = members
                .iter()
                .map(|m| match choices.iter().find(|(seed, _)| *seed == m.seed) {
                    Some((_, s)) => zeta_of(ctx, lineage, &chosen_params(s), Naming::Own, m.seed),
                    None => zeta_of(ctx, lineage, &params, Naming::Downstream, m.seed),
                })
                .collect::<Result<_, _>>()?;
            let zeta = zeta.iter().copied().collect::<Option<Vec<f64>>>().map(Summary::of);
            let dirs: Vec<PathBuf> = members.iter().map(|m| m.dir.clone()).collect();
            let (mut table, mut curve) = rows_of(name, &dirs, &indexes, report.convention, &stage_groups)?;
            for row in table.iter_mut().chain(curve.iter_mut().map(|b| &mut b.row)) {
                row.params = params.clone();
                row.zeta = zeta.clone();
            }
            rows.extend(table);
            backtracking.extend(curve);
            methods = indexes[0].methods.clone();
        }
        let method_params = method_params(lineage);
        for method in methods {
            parameters.push(MethodParameters {
                scores: name.clone(),
                method: method.name().into(),
                parameters: method.get().parameters(&method_params),
            });
        }
        if let (Some(l), false) = (lineage, choices.is_empty()) {
            selections.push(selection_report(ctx, report, name, l, &choices)?);
        }
    }
    Ok(ReportFile {
        title: report.title.clone().unwrap_or_else(|| "OOD detection".into()),
        convention: report.convention,
        convention_text: report.convention.describe().into(),
        seeds,
        groups,
        rows,
        backtracking,
        baseline: report.baseline.clone(),
        selections,
        parameters,
    })
}

/// The groups of `sets` (one score stage's OOD sets, in its order): the named groups that hold
/// them, a set in no group being a group of its own; in the order of each group's first set.
pub fn resolve_groups(named: Option<&BTreeMap<String, Vec<String>>>, sets: &[String]) -> Vec<OodGroup> {
    let mut out: Vec<OodGroup> = Vec::new();
    for set in sets {
        let name = named
            .and_then(|groups| groups.iter().find(|(_, members)| members.contains(set)))
            .map_or_else(|| set.clone(), |(name, _)| name.clone());
        match out.iter_mut().find(|g| g.name == name) {
            Some(group) => group.sets.push(set.clone()),
            None => out.push(OodGroup { name, sets: vec![set.clone()] }),
        }
    }
    out
}

fn merge_groups(all: &mut Vec<OodGroup>, more: &[OodGroup]) {
    for group in more {
        match all.iter_mut().find(|g| g.name == group.name) {
            Some(known) => {
                for set in &group.sets {
                    if !known.sets.contains(set) {
                        known.sets.push(set.clone());
                    }
                }
            }
            None => all.push(group.clone()),
        }
    }
}

/// The folders of one score stage grouped by their swept parameters, in first-seen order (one
/// group outside sweeps), each group's folders in seed order.
fn by_variant(dirs: &[PathBuf], tags: &[UpstreamTag]) -> Vec<(BTreeMap<String, String>, Vec<Member>)> {
    let mut groups: Vec<(BTreeMap<String, String>, Vec<Member>)> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let tag = tags.get(i).cloned().unwrap_or_default();
        let params: BTreeMap<String, String> = tag.params.into_iter().collect();
        let member = Member { dir: dir.clone(), seed: tag.seed };
        match groups.iter_mut().find(|(p, _)| *p == params) {
            Some((_, list)) => list.push(member),
            None => groups.push((params, vec![member])),
        }
    }
    groups
}

/// Each seed's `selected.json` of the `select` stage `select`.
fn read_choices(ctx: &RunContext, select: &str) -> Result<Vec<(Option<u64>, Selection)>, StageError> {
    let tags = ctx.stage_tags(select);
    ctx.stage_dirs(select)?
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let path = dir.join("selected.json");
            let bytes = std::fs::read(&path).map_err(StageError::io("cannot read", &path))?;
            let selection: Selection = serde_json::from_slice(&bytes)
                .map_err(|e| StageError::Format { path: path.clone(), message: e.to_string() })?;
            Ok((tags.get(i).and_then(|t| t.seed), selection))
        })
        .collect()
}

/// The chosen candidate's parameters (empty for a checkpoint).
fn chosen_params(selection: &Selection) -> BTreeMap<String, String> {
    selection.candidates.get(selection.chosen).map(|c| c.params.clone()).unwrap_or_default()
}

/// How a variant's swept parameters are named: as the stage's own instances name them (`zeta`,
/// what a selection records), or as its downstream stages do (`um_zeta.zeta`); an upstream
/// stage's field is `stage.field` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    Own,
    Downstream,
}

/// The ζ a UM or UMAP model was fine-tuned with, for the variant `values` and `seed`: its
/// swept or written `zeta`, or its constraint stage's estimate.
fn zeta_of(
    ctx: &RunContext,
    lineage: Option<&ScoreLineage>,
    values: &BTreeMap<String, String>,
    naming: Naming,
    seed: Option<u64>,
) -> Result<Option<f64>, StageError> {
    let Some(l) = lineage else { return Ok(None) };
    let trained = l.trained();
    if !matches!(trained.kind.as_str(), "um" | "umap") {
        return Ok(None);
    }
    let own = match naming {
        Naming::Own => "zeta".to_string(),
        Naming::Downstream => format!("{}.zeta", trained.stage),
    };
    match trained.params.get("zeta") {
        Some(v) if v.get("sweep").is_some() => Ok(values.get(&own).and_then(|z| z.parse().ok())),
        Some(v) if v.is_number() => Ok(v.as_f64()),
        _ => {
            let Some(constraint) = l.constraint() else { return Ok(None) };
            let tags = ctx.stage_tags(constraint);
            for (i, dir) in ctx.stage_dirs(constraint)?.iter().enumerate() {
                let tag = tags.get(i).cloned().unwrap_or_default();
                let matches = tag.seed == seed
                    && tag.params.iter().all(|(k, v)| values.get(&format!("{constraint}.{k}")) == Some(v));
                if matches {
                    return Ok(Some(ConstraintFile::read(dir)?.zeta));
                }
            }
            Ok(None)
        }
    }
}

/// The method parameters the score stage ran with (its declaration's, defaults filled).
fn method_params(lineage: Option<&ScoreLineage>) -> MethodParams {
    let field =
        |name: &str| lineage.and_then(|l| l.score.params.get(name)).and_then(serde_json::Value::as_f64);
    MethodParams {
        odin_temperature: field("odin_temperature").unwrap_or_else(crate::scores::odin::default_temperature),
        odin_epsilon: field("odin_epsilon").unwrap_or_else(crate::scores::odin::default_epsilon),
    }
}

fn selection_report(
    ctx: &RunContext,
    report: &Report,
    name: &str,
    l: &ScoreLineage,
    choices: &[(Option<u64>, Selection)],
) -> Result<SelectionReport, StageError> {
    let baseline = report.baseline.as_ref().filter(|b| *b != name).and_then(|b| report.lineage.get(b));
    let mut per_seed = Vec::new();
    let mut note = None;
    for (seed, s) in choices {
        let Some(c) = s.candidates.get(s.chosen) else { continue };
        let chosen = match c.epoch {
            Some(epoch) => format!("epoch {epoch}"),
            None => c.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        };
        let last_epoch = s.candidates.iter().filter_map(|c| c.epoch).max();
        let same = baseline.is_some_and(|b| match c.epoch {
            None => same_configuration(l.trained(), &c.params, &b.model),
            // A checkpoint: the baseline scores the same checkpoint of the same run.
            Some(epoch) => {
                b.model.kind == "checkpoint"
                    && b.model.params.get("from").and_then(|f| f.as_str()) == Some(l.trained().stage.as_str())
                    && match b.model.params.get("epoch") {
                        Some(serde_json::Value::String(last)) if last == "last" => last_epoch == Some(epoch),
                        Some(e) => e.as_u64() == Some(epoch as u64),
                        None => false,
                    }
            }
        });
        let zeta = zeta_of(ctx, Some(l), &c.params, Naming::Own, *seed)?;
        if same {
            let b = report.baseline.clone().unwrap_or_default();
            let plain = if zeta == Some(0.0) { "ζ = 0 is plain cross-entropy: " } else { "" };
            note = Some(format!(
                "{plain}same recipe as `{b}` (its model `{}`); where chosen, the comparison is of two random streams of one recipe",
                baseline.map_or("", |b| b.model.stage.as_str())
            ));
        }
        per_seed.push(SeedChoice {
            seed: *seed,
            chosen,
            validation_fpr95: c.mean.fpr95,
            validation_auroc: c.mean.auroc,
            validation_id_accuracy: c.id_accuracy,
            candidates: s.candidates.len(),
            eligible: s.candidates.iter().filter(|c| c.eligible).count(),
            zeta,
            same_as_baseline: same,
        });
    }
    let first = &choices[0].1;
    Ok(SelectionReport {
        scores: name.to_string(),
        select: l.model.stage.clone(),
        from: first.from.clone(),
        method: first.method.name().into(),
        metric: format!("{:?}", first.metric).to_lowercase(),
        validation_id: first.validation_id.clone(),
        validation_ood: first.validation_ood.clone(),
        per_seed,
        note,
    })
}

/// Metrics of `method` for each OOD set, from the score files under `dir` (one seed).
fn set_metrics(
    name: &str,
    dir: &Path,
    index: &ScoreIndex,
    method: Method,
    convention: Convention,
) -> Result<Vec<OodMetrics>, StageError> {
    let id = npy::read_f64(&dir.join(ScoreIndex::file(method, &index.id.name)))?;
    index
        .ood
        .iter()
        .map(|set| {
            let ood = npy::read_f64(&dir.join(ScoreIndex::file(method, &set.name)))?;
            ood_metrics_with(convention, &id, &ood).map_err(|e| {
                StageError::Unsuitable(format!("`{name}` {} on `{}`: {e}", method.name(), set.name))
            })
        })
        .collect()
}

/// What one row summarises.
struct Target<'a> {
    name: &'a str,
    scope: Scope,
    /// Indices of its sets among the score stage's OOD sets.
    sets: Vec<usize>,
}

/// Each set, each group, then all sets.
fn targets<'a>(sets: &'a [String], groups: &'a [OodGroup]) -> Vec<Target<'a>> {
    let index = |name: &String| sets.iter().position(|s| s == name);
    let mut out: Vec<Target> =
        sets.iter().enumerate().map(|(i, s)| Target { name: s, scope: Scope::Set, sets: vec![i] }).collect();
    for g in groups {
        out.push(Target {
            name: &g.name,
            scope: Scope::Group,
            sets: g.sets.iter().filter_map(index).collect(),
        });
    }
    out.push(Target { name: ALL, scope: Scope::All, sets: (0..sets.len()).collect() });
    out
}

/// The row of `target` from per-seed, per-set metrics (`per_seed[seed][set]`).
fn summarise(
    (name, method): (&str, Method),
    target: &Target,
    per_seed: &[Vec<OodMetrics>],
    accuracy: &[f64],
    index: &ScoreIndex,
) -> Row {
    let means: Vec<OodMetrics> = per_seed
        .iter()
        .map(|m| mean_over_sets(&target.sets.iter().map(|&s| m[s]).collect::<Vec<_>>()))
        .collect();
    let inverted: Vec<String> = target
        .sets
        .iter()
        .filter(|&&s| per_seed.iter().map(|m| m[s].auroc).sum::<f64>() / (per_seed.len() as f64) < 0.5)
        .map(|&s| index.ood[s].name.clone())
        .collect();
    Row {
        scores: name.to_string(),
        params: BTreeMap::new(),
        method: method.name().to_string(),
        ood: target.name.to_string(),
        scope: target.scope,
        n_id: index.id.count,
        n_ood: target.sets.iter().map(|&s| index.ood[s].count).sum(),
        inverted,
        zeta: None,
        fpr95: Summary::of(means.iter().map(|m| m.fpr95).collect()),
        auroc: Summary::of(means.iter().map(|m| m.auroc).collect()),
        aupr_in: Summary::of(means.iter().map(|m| m.aupr_in).collect()),
        aupr_out: Summary::of(means.iter().map(|m| m.aupr_out).collect()),
        id_accuracy: Summary::of(accuracy.to_vec()),
    }
}

/// Rows of one score stage (one variant) across its seeds: per method, one per OOD set, group
/// and all sets; and, where checkpoints were scored, the same per epoch.
fn rows_of(
    name: &str,
    dirs: &[PathBuf],
    indexes: &[ScoreIndex],
    convention: Convention,
    groups: &[OodGroup],
) -> Result<(Vec<Row>, Vec<BacktrackRow>), StageError> {
    let first = &indexes[0];
    let epochs: Vec<usize> = first.checkpoints.iter().map(|c| c.epoch).collect();
    for index in indexes {
        let same_epochs = index.checkpoints.iter().map(|c| c.epoch).eq(epochs.iter().copied());
        if index.ood != first.ood || index.methods != first.methods || !same_epochs {
            return Err(StageError::Unsuitable(format!(
                "the seeds of `{name}` scored different sets, methods or checkpoints"
            )));
        }
    }
    let sets: Vec<String> = first.ood.iter().map(|s| s.name.clone()).collect();
    let targets = targets(&sets, groups);
    let accuracy: Vec<f64> = indexes.iter().map(|i| i.id_accuracy).collect();
    let (mut rows, mut curve) = (Vec::new(), Vec::new());
    for &method in &first.methods {
        let per_seed: Vec<Vec<OodMetrics>> = dirs
            .iter()
            .zip(indexes)
            .map(|(dir, index)| set_metrics(name, dir, index, method, convention))
            .collect::<Result<_, _>>()?;
        for target in &targets {
            rows.push(summarise((name, method), target, &per_seed, &accuracy, first));
        }
        for (k, &epoch) in epochs.iter().enumerate() {
            let per_seed: Vec<Vec<OodMetrics>> = dirs
                .iter()
                .zip(indexes)
                .map(|(dir, index)| {
                    set_metrics(name, &dir.join(ScoreIndex::epoch_dir(epoch)), index, method, convention)
                })
                .collect::<Result<_, _>>()?;
            let accuracy: Vec<f64> = indexes.iter().map(|i| i.checkpoints[k].id_accuracy).collect();
            for target in &targets {
                curve.push(BacktrackRow {
                    epoch,
                    row: summarise((name, method), target, &per_seed, &accuracy, first),
                });
            }
        }
    }
    Ok((rows, curve))
}

/// Every seed's scores of every (score stage, method) for the plots: of the first variant of a
/// swept score stage.
pub fn samples(report: &Report, ctx: &RunContext) -> Result<Vec<ScoreSample>, StageError> {
    let mut samples = Vec::new();
    for name in &report.scores {
        let variants = by_variant(ctx.stage_dirs(name)?, &ctx.stage_tags(name));
        let Some((params, members)) = variants.into_iter().next() else { continue };
        let indexes = members.iter().map(|m| ScoreIndex::read(&m.dir)).collect::<Result<Vec<_>, _>>()?;
        let label = if params.is_empty() {
            name.clone()
        } else {
            let parts: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}[{}]", parts.join(","))
        };
        for &method in &indexes[0].methods {
            let mut seeds = Vec::new();
            for (m, index) in members.iter().zip(&indexes) {
                let id = npy::read_f64(&m.dir.join(ScoreIndex::file(method, &index.id.name)))?;
                let ood = index
                    .ood
                    .iter()
                    .map(|set| {
                        Ok((
                            set.name.clone(),
                            npy::read_f64(&m.dir.join(ScoreIndex::file(method, &set.name)))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, StageError>>()?;
                seeds.push(SeedScores { seed: m.seed, id, ood });
            }
            samples.push(ScoreSample { scores: label.clone(), method: method.name().into(), seeds });
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_in_no_named_group_are_groups_of_their_own_in_list_order() {
        let sets: Vec<String> = ["digits", "gaussian", "uniform", "letters"].map(String::from).to_vec();
        let named =
            BTreeMap::from([("noise".to_string(), vec!["uniform".to_string(), "gaussian".to_string()])]);
        let groups = resolve_groups(Some(&named), &sets);
        let shown: Vec<(&str, Vec<&str>)> =
            groups.iter().map(|g| (g.name.as_str(), g.sets.iter().map(String::as_str).collect())).collect();
        assert_eq!(
            shown,
            [
                ("digits", vec!["digits"]),
                ("noise", vec!["gaussian", "uniform"]),
                ("letters", vec!["letters"])
            ]
        );
        assert_eq!(resolve_groups(None, &sets).len(), 4, "one group per set by default");
    }

    #[test]
    fn group_rows_average_their_sets_and_name_the_inverted_ones() {
        let index = ScoreIndex {
            model: "m".into(),
            id: crate::kinds::score::ScoredSet { name: "id".into(), count: 10 },
            id_accuracy: 0.9,
            ood: ["a", "b", "c"]
                .map(|n| crate::kinds::score::ScoredSet { name: n.into(), count: 4 })
                .to_vec(),
            methods: vec![Method::named("msp").unwrap()],
            checkpoints: Vec::new(),
        };
        let m = |fpr95: f64, auroc: f64| OodMetrics { fpr95, auroc, aupr_in: auroc, aupr_out: auroc };
        // Two seeds; set b is inverted on average (0.45, 0.40), set c only in seed 2 (0.6, 0.45).
        let per_seed =
            vec![vec![m(0.2, 0.9), m(1.0, 0.45), m(0.5, 0.6)], vec![m(0.4, 0.8), m(1.0, 0.40), m(0.6, 0.45)]];
        let sets: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let groups = vec![
            OodGroup { name: "noise".into(), sets: vec!["b".into(), "c".into()] },
            OodGroup { name: "a".into(), sets: vec!["a".into()] },
        ];
        let targets = targets(&sets, &groups);
        let names: Vec<(&str, Scope)> = targets.iter().map(|t| (t.name, t.scope)).collect();
        assert_eq!(names[3..], [("noise", Scope::Group), ("a", Scope::Group), (ALL, Scope::All)]);
        let row =
            summarise(("s", Method::named("msp").unwrap()), &targets[3], &per_seed, &[0.9, 0.9], &index);
        assert_eq!(row.fpr95.values, [0.75, 0.8]);
        assert!((row.auroc.values[0] - 0.525).abs() < 1e-12 && (row.auroc.values[1] - 0.425).abs() < 1e-12);
        assert_eq!((row.n_id, row.n_ood), (10, 8));
        assert_eq!(row.inverted, ["b"], "c's mean AUROC is 52.5%");
        assert_eq!(row.inverted_note(), "inverted on b");
        let all =
            summarise(("s", Method::named("msp").unwrap()), &targets[5], &per_seed, &[0.9, 0.9], &index);
        assert!((all.fpr95.values[0] - (0.2 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        let set =
            summarise(("s", Method::named("msp").unwrap()), &targets[1], &per_seed, &[0.9, 0.9], &index);
        assert_eq!((set.scope, set.inverted_note().as_str()), (Scope::Set, "inverted"));
    }
}
