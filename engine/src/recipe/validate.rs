//! Reading a recipe: the validation passes from the parsed TOML tree to a [`Recipe`] (known
//! sections and keys, the header, datasets, each stage through its typed parameters,
//! references, lineage, the leakage guard), every problem collected as a [`Diagnostic`]. The
//! sweep passes (sweep groups, the instance count) are `groups.rs`'.
use super::diagnostic::{self, did_you_mean, Diagnostic, Source};
use super::env;
use super::model::{Recipe, StageDecl, StageVariant};
use super::resources::{self, FieldProblem, Resources, SlurmSettings};
use super::sweep::{self, thousands};
use super::tree::{Entry, Node, NodeValue};
use crate::graph::StageGraph;
use stages::data::{DatasetSpec, FORMATS};
use stages::device::DeviceChoice;
use stages::{BuildError, ParamError, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

impl Recipe {
    /// Reads and validates the recipe at `path`, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Recipe, Vec<Diagnostic>> {
        Recipe::load_with_env(path, &|name| std::env::var(name).ok())
    }

    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Recipe, Vec<Diagnostic>> {
        let bytes = std::fs::read(path)
            .map_err(|e| vec![Diagnostic::whole_file(path, format!("cannot read the recipe: {e}"))])?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                // Point at the first byte that is not UTF-8, in the text before it.
                let at = e.utf8_error().valid_up_to();
                let bytes = e.into_bytes();
                let before = String::from_utf8_lossy(&bytes[..at]).into_owned();
                let line_end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| at + n);
                let text = before.clone() + &String::from_utf8_lossy(&bytes[at..line_end]);
                let source = Source::new(path, text);
                return Err(vec![Diagnostic::new(
                    &source,
                    before.len()..before.len() + 1,
                    format!("the recipe is not UTF-8 text (byte 0x{:02x})", bytes[at]),
                )]);
            }
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let dir = dir.canonicalize().unwrap_or(dir);
        let source = Source::new(path, text);
        let (root, diagnostics) = Node::parse(&source, &|key, s| env::expand_at(key, s, env))?;
        Validator { source: &source, diagnostics, limit: InstanceLimit::default() }
            .recipe(&root, path, dir)
            .map(|mut r| {
                r.source = source.clone();
                r
            })
            .map_err(|diagnostics| diagnostic::bounded(diagnostics, path))
    }
}

pub(super) struct Validator<'a> {
    pub(super) source: &'a Source,
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) limit: InstanceLimit,
}

/// The most instances a recipe may expand to unless its `[recipe] max_instances` says
/// otherwise. At 100,000 instances `plan` takes 1–3 s and 180–310 MB and a cached run about
/// 10 s (bench/README.md, "Recipe scale"); no cluster accepts that many jobs in one go
/// (Slurm's default MaxJobCount is 10,000).
/// A sweep past it is far more often a mistake (a range one zero too long, two sweeps crossed
/// that were meant to be zipped) than an experiment, and is refused before anything is built.
pub const DEFAULT_MAX_INSTANCES: usize = 100_000;

/// The instance budget of the recipe being read: its limit, and how many stage variants may
/// still be built (every variant is at least one instance, so variants are counted as they are
/// built, before the whole expansion is counted from the sweep groups).
pub(super) struct InstanceLimit {
    pub(super) max: usize,
    /// Where `max_instances` was written, if it was.
    span: Option<Range<usize>>,
    variants_left: usize,
}

impl Default for InstanceLimit {
    fn default() -> InstanceLimit {
        InstanceLimit { max: DEFAULT_MAX_INSTANCES, span: None, variants_left: DEFAULT_MAX_INSTANCES }
    }
}

impl InstanceLimit {
    /// How the limit is named in messages.
    pub(super) fn describe(&self) -> String {
        let n = thousands(self.max as u128);
        match self.span {
            Some(_) => format!("the recipe's limit of {n} instances (`[recipe] max_instances`)"),
            None => format!(
                "the limit of {n} instances (raise it with `max_instances = N` under [recipe] if this \
                 size is meant)"
            ),
        }
    }
}

const SECTIONS: &[&str] = &["recipe", "remote", "executor", "datasets", "stages"];
const REMOTE_KEYS: &[&str] = &["url"];
/// The longest recipe, stage or dataset name: names become file names in the cache and appear
/// in every message.
const MAX_NAME: usize = 128;
const RECIPE_KEYS: &[&str] = &["name", "description", "seeds", "device", "max_instances"];

impl Validator<'_> {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::new(self.source, span, message));
    }

    pub(super) fn error_help(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let mut d = Diagnostic::new(self.source, span, message);
        d.help = help;
        self.diagnostics.push(d);
    }

    fn unknown_keys(&mut self, table: &Node, known: &[&str], what: &str) {
        let found = table.unknown_keys(known, what, self.source);
        self.diagnostics.extend(found);
    }

    fn table<'n>(&mut self, entry: &'n Entry, what: &str) -> Option<&'n Node> {
        if matches!(entry.node.value, NodeValue::Table(_)) {
            Some(&entry.node)
        } else {
            self.error(
                entry.node.span.clone(),
                format!("{what} must be a table, found {}", entry.node.type_name()),
            );
            None
        }
    }

    /// Reports a bad name; `false` for a name too long to be used further (its table is then
    /// not read, so no other message repeats it).
    fn check_name(&mut self, entry: &Entry, what: &str) -> bool {
        let valid = !entry.key.is_empty()
            && entry.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if entry.key.len() > MAX_NAME {
            self.error(
                entry.key_span.clone(),
                format!("{what} name is {} characters long; at most {MAX_NAME}", entry.key.len()),
            );
            return false;
        }
        if !valid {
            self.error(
                entry.key_span.clone(),
                format!("{what} name `{}` may only contain letters, digits, `_` and `-`", entry.key),
            );
        }
        true
    }

    fn recipe(mut self, root: &Node, path: &Path, dir: PathBuf) -> Result<Recipe, Vec<Diagnostic>> {
        self.unknown_keys(root, SECTIONS, "the recipe");
        let default_name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (name, seeds, device) = match root.get("recipe") {
            Some(entry) => match self.table(entry, "[recipe]") {
                Some(table) => self.header(table, default_name),
                None => (default_name, vec![0], DeviceChoice::Auto),
            },
            None => (default_name, vec![0], DeviceChoice::Auto),
        };

        let remote = root.get("remote").and_then(|entry| self.remote(entry));
        let slurm = root.get("executor").map(|entry| self.executor(entry)).unwrap_or_default();

        let mut datasets = BTreeMap::new();
        if let Some(entry) = root.get("datasets") {
            if let Some(table) = self.table(entry, "[datasets]") {
                for entry in table.entries() {
                    if !self.check_name(entry, "dataset") {
                        continue;
                    }
                    if let Some(spec) = self.dataset(entry, &dir) {
                        datasets.insert(entry.key.clone(), spec);
                    }
                }
            }
        }

        let mut stages = Vec::new();
        match root.get("stages") {
            Some(entry) => {
                if let Some(table) = self.table(entry, "[stages]") {
                    // Every stage is at least one instance: more stages than the limit are
                    // refused before any is built.
                    if let Some(past) = table.entries().get(self.limit.max) {
                        self.error(
                            past.key_span.clone(),
                            format!(
                                "the recipe declares {} stages, each at least one instance: more than {}",
                                thousands(table.entries().len() as u128),
                                self.limit.describe()
                            ),
                        );
                        self.diagnostics.sort_by_key(|d| (d.line, d.column));
                        return Err(self.diagnostics);
                    }
                    for entry in table.entries() {
                        if !self.check_name(entry, "stage") {
                            continue;
                        }
                        if let Some(decl) = self.stage(entry, &dir) {
                            stages.push(decl);
                        }
                    }
                }
            }
            None => self.error(0..0, "the recipe declares no stages (add a [stages.NAME] table)"),
        }
        self.fill_lineage(&mut stages);

        let by_name: std::collections::HashMap<String, usize> =
            stages.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let all_stage_names: BTreeSet<String> = root
            .get("stages")
            .map(|e| e.node.entries().iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default();
        // Names declared but invalid are known too, so their errors do not cascade.
        let all_dataset_names: BTreeSet<String> = root
            .get("datasets")
            .map(|e| e.node.entries().iter().map(|e| e.key.clone()).collect())
            .unwrap_or_default();
        for decl in &stages {
            self.references(decl, &stages, &by_name, &all_stage_names, &all_dataset_names);
        }
        // References to stages that do not exist were reported above; they add no edge.
        let upstream: Vec<Vec<usize>> = stages
            .iter()
            .map(|decl| decl.upstream().iter().filter_map(|name| by_name.get(*name).copied()).collect())
            .collect();
        let graph = match StageGraph::new(&upstream) {
            Ok(graph) => Some(graph),
            Err(cycle) => {
                let decl = &stages[cycle[0]];
                let names: Vec<&str> = cycle
                    .iter()
                    .chain(std::iter::once(&cycle[0]))
                    .map(|&i| stages[i].name.as_str())
                    .collect();
                let next = &stages[cycle[1 % cycle.len()]].name;
                let span = decl
                    .inputs
                    .iter()
                    .find(|i| matches!(&i.target, Target::Stage { name, .. } if name == next))
                    .map(|i| decl.node.locate(&i.field))
                    .unwrap_or(decl.name_span.clone());
                self.error(
                    span,
                    format!("the stages form a cycle: {} (each reads the next)", names.join(" → ")),
                );
                None
            }
        };
        let groups = graph.as_ref().map(|g| self.groups(&stages, g)).unwrap_or_default();
        if self.diagnostics.is_empty() {
            self.count_instances(&stages, &groups, seeds.len());
            self.one_instance_reads(&stages, &groups);
        }
        if let Some(graph) = &graph {
            self.leakage(&stages, graph, &datasets);
        }
        match graph {
            Some(graph) if self.diagnostics.is_empty() => Ok(Recipe {
                source: self.source.clone(),
                name,
                dir,
                seeds,
                device,
                remote,
                slurm,
                datasets,
                stages,
                graph,
                groups,
                by_name,
            }),
            _ => {
                self.diagnostics.sort_by_key(|d| (d.line, d.column));
                Err(self.diagnostics)
            }
        }
    }

    fn header(&mut self, table: &Node, default_name: String) -> (String, Vec<u64>, DeviceChoice) {
        self.unknown_keys(table, RECIPE_KEYS, "[recipe]");
        let mut name = default_name;
        let mut seeds = vec![0];
        let mut device = DeviceChoice::Auto;
        for entry in table.entries() {
            let node = &entry.node;
            match entry.key.as_str() {
                "name" | "description" => match node.as_str() {
                    Some(text) if entry.key == "name" && text.chars().count() > MAX_NAME => self.error(
                        node.span.clone(),
                        format!(
                            "the recipe name is {} characters long; at most {MAX_NAME} (it names the \
                             recipe's records in the cache)",
                            text.chars().count()
                        ),
                    ),
                    Some(text) if entry.key == "name" => name = text.to_string(),
                    Some(_) => {}
                    None => self.error(
                        node.span.clone(),
                        format!("`{}` must be a string, found {}", entry.key, node.type_name()),
                    ),
                },
                "seeds" => match serde_json::from_value::<Vec<u64>>(node.to_json()) {
                    Ok(list)
                        if !list.is_empty() && list.iter().collect::<BTreeSet<_>>().len() == list.len() =>
                    {
                        seeds = list
                    }
                    Ok(_) => self.error(node.span.clone(), "`seeds` must list at least one seed, each once"),
                    Err(_) => self.error(
                        node.span.clone(),
                        "`seeds` must be an array of non-negative integers, e.g. [0, 1, 2]",
                    ),
                },
                "max_instances" => match node.to_json().as_u64() {
                    Some(n) if n >= 1 => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        self.limit =
                            InstanceLimit { max: n, span: Some(node.span.clone()), variants_left: n };
                    }
                    _ => self.error(
                        node.span.clone(),
                        format!("`max_instances` must be a positive integer, found {}", node.to_json()),
                    ),
                },
                "device" => match node.as_str().map(DeviceChoice::parse) {
                    Some(Some(choice)) => device = choice,
                    _ => self.error_help(
                        node.span.clone(),
                        format!("invalid device {}", node.to_json()),
                        Some("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"".into()),
                    ),
                },
                _ => {}
            }
        }
        (name, seeds, device)
    }

    /// `[remote]`: `url`, a non-empty string (checked further when the remote is opened).
    fn remote(&mut self, entry: &Entry) -> Option<String> {
        let table = self.table(entry, "[remote]")?;
        self.unknown_keys(table, REMOTE_KEYS, "[remote]");
        let Some(url) = table.get("url") else {
            self.error(entry.key_span.clone(), "[remote] has no `url` (e.g. url = \"s3://bucket/prefix\")");
            return None;
        };
        match url.node.as_str() {
            Some(text) if !text.trim().is_empty() => Some(text.to_string()),
            _ => {
                self.error(
                    url.node.span.clone(),
                    format!("`url` must be a non-empty string, found {}", url.node.to_json()),
                );
                None
            }
        }
    }

    /// `[executor]`: settings per executor (only `slurm` has any).
    fn executor(&mut self, entry: &Entry) -> SlurmSettings {
        let Some(table) = self.table(entry, "[executor]") else { return SlurmSettings::default() };
        self.unknown_keys(table, &["slurm"], "[executor]");
        let Some(slurm) = table.get("slurm") else { return SlurmSettings::default() };
        let kinds: Vec<&str> = stages::registry().iter().map(|k| k.name()).collect();
        match resources::read_slurm(&slurm.node, &kinds) {
            Ok(settings) => settings,
            Err(problems) => {
                self.field_problems(table, &problems);
                SlurmSettings::default()
            }
        }
    }

    /// Reports problems whose paths are relative to `table`.
    fn field_problems(&mut self, table: &Node, problems: &[FieldProblem]) {
        for p in problems {
            self.error(table.locate(&p.path), p.message.clone());
        }
    }

    fn param_errors(&mut self, table: &Node, errors: &[ParamError], what: &str) {
        for e in errors {
            let span = table.locate(&e.path);
            let field =
                if e.path.is_empty() { String::new() } else { format!(", field `{}`", e.path.join(".")) };
            self.error(span, format!("{what}{field}: {}", e.message));
        }
    }

    fn dataset(&mut self, entry: &Entry, dir: &Path) -> Option<DatasetSpec> {
        let what = format!("dataset `{}`", entry.key);
        let table = self.table(entry, &what)?;
        let Some(format_entry) = table.get("format") else {
            let names: Vec<&str> = FORMATS.iter().map(|f| f.name).collect();
            self.error_help(
                entry.key_span.clone(),
                format!("{what} has no `format`"),
                Some(format!("one of: {}", names.join(", "))),
            );
            return None;
        };
        let Some(format) = FORMATS.iter().find(|f| Some(f.name) == format_entry.node.as_str()) else {
            let given = format_entry.node.to_json();
            let help = format_entry
                .node
                .as_str()
                .and_then(|s| did_you_mean(s, FORMATS.iter().map(|f| f.name)))
                .unwrap_or_else(|| {
                    format!(
                        "expected one of: {}",
                        FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                    )
                });
            self.error_help(
                format_entry.node.span.clone(),
                format!("{what}: unknown format {given}"),
                Some(help),
            );
            return None;
        };
        let mut known: Vec<&str> = (format.fields)().to_vec();
        known.push("format");
        self.unknown_keys(table, &known, &format!("{what} (format `{}`)", format.name));
        let json = self.without_unknown(table, &known);
        let spec = self.build_collecting(table, json, &what, |json| {
            DatasetSpec::from_json(json).map_err(BuildError::Type).and_then(|spec| {
                let problems = spec.check();
                if problems.is_empty() {
                    Ok(spec)
                } else {
                    Err(BuildError::Invalid(problems))
                }
            })
        });
        spec.map(|mut spec| {
            spec.resolve_paths(dir);
            spec
        })
    }

    fn without_unknown(&self, table: &Node, known: &[&str]) -> serde_json::Value {
        let mut json = table.to_json();
        if let Some(object) = json.as_object_mut() {
            object.retain(|key, _| known.contains(&key.as_str()) && key != "kind");
        }
        json
    }

    /// Builds typed parameters, collecting every type error: after each one, the offending
    /// field is dropped and the build tried again.
    fn build_collecting<T>(
        &mut self,
        table: &Node,
        mut json: serde_json::Value,
        what: &str,
        build: impl Fn(serde_json::Value) -> Result<T, BuildError>,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        loop {
            match build(json.clone()) {
                Ok(value) => return if removed.is_empty() { Some(value) } else { None },
                Err(BuildError::Invalid(problems)) => {
                    self.param_errors(table, &problems, what);
                    return None;
                }
                Err(BuildError::Type(problem)) => {
                    let is_consequence = removed.iter().any(|f| problem.message.contains(&format!("`{f}`")));
                    if is_consequence {
                        return None;
                    }
                    if problem.path.is_empty() {
                        // A missing required field: point at the table's header.
                        self.error(
                            table.span.start..table.span.start,
                            format!("{what}: {}", problem.message),
                        );
                        return None;
                    }
                    self.param_errors(table, std::slice::from_ref(&problem), what);
                    let field = problem.path[0].clone();
                    if let Some(object) = json.as_object_mut() {
                        object.remove(&field);
                    }
                    removed.push(field);
                }
            }
        }
    }

    fn stage(&mut self, entry: &Entry, dir: &Path) -> Option<StageDecl> {
        let what = format!("stage `{}`", entry.key);
        let table = self.table(entry, &what)?;
        let names: Vec<&str> = stages::registry().iter().map(|k| k.name()).collect();
        let Some(kind_entry) = table.get("kind") else {
            self.error_help(
                entry.key_span.clone(),
                format!("{what} has no `kind`"),
                Some(format!("one of: {}", names.join(", "))),
            );
            return None;
        };
        let Some(kind) = kind_entry.node.as_str().and_then(stages::kind) else {
            let help = kind_entry
                .node
                .as_str()
                .and_then(|s| did_you_mean(s, names.iter().copied()))
                .unwrap_or_else(|| format!("expected one of: {}", names.join(", ")));
            self.error_help(
                kind_entry.node.span.clone(),
                format!("{what}: unknown stage kind {}", kind_entry.node.to_json()),
                Some(help),
            );
            return None;
        };
        let mut known: Vec<&str> = kind.fields().to_vec();
        known.push("kind");
        known.push("zip");
        known.push("resources");
        self.unknown_keys(table, &known, &format!("{what} (kind `{}`)", kind.name()));
        let mut json = self.without_unknown(table, &known);
        if let Some(object) = json.as_object_mut() {
            object.remove("zip");
            object.remove("resources");
        }
        let resources = match table.get("resources") {
            Some(entry) => match resources::read_resources(&entry.node, &["resources"]) {
                Ok(r) => r,
                Err(problems) => {
                    let problems: Vec<FieldProblem> = problems
                        .into_iter()
                        .map(|p| FieldProblem { message: format!("{what}: {}", p.message), ..p })
                        .collect();
                    self.field_problems(table, &problems);
                    return None;
                }
            },
            None => Resources::default(),
        };
        let sweep = self.sweep(table, kind, &what)?;
        let fields = sweep.as_ref().map(|s| s.fields.as_slice()).unwrap_or_default();
        let zip = sweep.as_ref().is_some_and(|s| s.zip);
        // Counted before anything is built: a sweep past the limit is refused in a moment.
        let count = sweep::variant_count(fields, zip);
        // An unswept stage is one variant: a long recipe of them is counted as a whole below.
        if !fields.is_empty() && count > self.limit.variants_left as u128 {
            let before = self.limit.max - self.limit.variants_left;
            let already = if before > 0 {
                format!(" (the stages before it already make {})", thousands(before as u128))
            } else {
                String::new()
            };
            let span = fields.first().map_or(entry.key_span.clone(), |f| f.span.clone());
            self.error(
                span,
                format!(
                    "{what}: its sweep makes {} variants ({}), more than {}{already}",
                    thousands(count),
                    sweep::describe_count(fields, zip),
                    self.limit.describe()
                ),
            );
            self.limit.variants_left = 0;
            return None;
        }
        self.limit.variants_left = self.limit.variants_left.saturating_sub(count as usize);
        let combos = sweep::combinations(fields, zip);
        // The swept fields' `{ sweep = [...] }` tables are replaced in each variant: leave them
        // out of what is cloned per variant (a 10^4-value sweep cloned 10^4 times is quadratic).
        if let Some(object) = json.as_object_mut() {
            for field in fields {
                object.remove(&field.name);
            }
        }
        let with = |combo: &[usize]| {
            let mut json = json.clone();
            if let Some(object) = json.as_object_mut() {
                for (field, &i) in fields.iter().zip(combo) {
                    object.insert(field.name.clone(), field.values[i].clone());
                }
            }
            json
        };
        let first = self.build_collecting(table, with(&combos[0]), &what, |json| kind.build(json))?;
        let inputs = first.inputs();
        // A sweep may not change what the stage reads: the graph is one for every variant.
        for field in fields {
            if inputs.iter().any(|i| i.field.first() == Some(&field.name)) {
                self.error(
                    field.span.clone(),
                    format!("{what}: `{}` names what the stage reads and cannot be swept", field.name),
                );
                return None;
            }
        }
        let mut variants = vec![StageVariant { indices: combos[0].clone(), stage: first }];
        let mut failed = false;
        for combo in &combos[1..] {
            let shown: Vec<String> = fields
                .iter()
                .zip(combo)
                .map(|(f, &i)| format!("{}={}", f.name, sweep::show_value(&f.values[i])))
                .collect();
            let problems = match kind.build(with(combo)) {
                Ok(stage) => {
                    variants.push(StageVariant { indices: combo.clone(), stage });
                    continue;
                }
                Err(stages::BuildError::Type(problem)) => vec![problem],
                Err(stages::BuildError::Invalid(problems)) => problems,
            };
            failed = true;
            for problem in problems {
                // Point at the swept value when the problem is in a swept field.
                let span = fields
                    .iter()
                    .zip(combo)
                    .find(|(f, _)| problem.path.first() == Some(&f.name))
                    .map(|(f, &i)| f.value_spans[i].clone())
                    .unwrap_or_else(|| table.locate(&problem.path));
                self.error(span, format!("{what} with {}: {}", shown.join(", "), problem.message));
            }
        }
        if failed {
            return None;
        }
        // Files the stage names (an imported checkpoint): resolved against the recipe's folder,
        // their digests recorded for the key.
        for variant in &mut variants {
            let problems = variant.stage.resolve_files(dir);
            if !problems.is_empty() {
                self.param_errors(table, &problems, &what);
                return None;
            }
        }
        // Two values that give the same parameters (`[1, 1.0]`) would be two variants with one
        // cache key.
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (v, variant) in variants.iter().enumerate() {
            let first = *seen.entry(variant.stage.params().to_string()).or_insert(v);
            if first == v {
                continue;
            }
            let differing =
                fields.iter().enumerate().find(|(k, _)| variants[first].indices[*k] != variant.indices[*k]);
            if let Some((k, field)) = differing {
                let (a, b) = (variants[first].indices[k], variant.indices[k]);
                self.error(
                    field.value_spans[b].clone(),
                    format!(
                        "{what}: the sweep of `{}` lists {} and {}, which give the same stage (one cache \
                         key); list each value once",
                        field.name, field.values[a], field.values[b]
                    ),
                );
                return None;
            }
        }
        // A stage whose header is an implicit table has an empty span: fall back to its key.
        let node = Node {
            span: if table.span.is_empty() { entry.key_span.clone() } else { table.span.clone() },
            ..table.clone()
        };
        Some(StageDecl {
            name: entry.key.clone(),
            kind,
            variants,
            sweep,
            inputs,
            name_span: entry.key_span.clone(),
            node,
            resources,
        })
    }

    /// Gives every report the declarations of its score stages, their models and what a
    /// selection chooses among (`lineage`, see [`stages::kinds::report::lineage`]): rebuilt
    /// with them, a report reads the selections and constraint stages it reports on, and its
    /// `ood_groups` are checked against its score stages' OOD sets.
    fn fill_lineage(&mut self, stages: &mut [StageDecl]) {
        use stages::kinds::report::lineage::{derive, Declared};
        let declared = |name: &str| -> Option<Declared> {
            let decl = stages.iter().find(|s| s.name == name)?;
            let mut params = decl.stage().params();
            if let (Some(sweep), Some(object)) = (&decl.sweep, params.as_object_mut()) {
                for field in &sweep.fields {
                    object.insert(field.name.clone(), serde_json::json!({ "sweep": field.values }));
                }
            }
            Some(Declared { stage: name.to_string(), kind: decl.kind.name().to_string(), params })
        };
        let mut rebuilt = Vec::new();
        for (i, decl) in stages.iter().enumerate() {
            if decl.kind.role() != stages::Role::Reports || decl.variants.len() != 1 {
                continue;
            }
            let mut params = decl.stage().params();
            let scores: Vec<String> = serde_json::from_value(params["scores"].clone()).unwrap_or_default();
            params["lineage"] = serde_json::to_value(derive(&scores, &declared)).unwrap_or_default();
            rebuilt.push((i, decl.kind.build(params)));
        }
        for (i, built) in rebuilt {
            let what = format!("stage `{}`", stages[i].name);
            match built {
                Ok(stage) => {
                    stages[i].inputs = stage.inputs();
                    stages[i].variants[0].stage = stage;
                }
                Err(BuildError::Type(problem)) => self.param_errors(&stages[i].node, &[problem], &what),
                Err(BuildError::Invalid(problems)) => self.param_errors(&stages[i].node, &problems, &what),
            }
        }
    }

    /// The leakage guard: the images a `select` stage chooses on (its ID and OOD sets, in the
    /// split it reads) may not be any of the images a score stage of a report downstream of
    /// that selection tests on (its ID and OOD sets, test split), compared by what the sets
    /// resolve to ([`stages::data::Extent`]: format, resolved root, split, classes, skip/limit
    /// range), not by their names. Reported at the selection's field, naming the score stage's
    /// field and its position.
    fn leakage(
        &mut self,
        stages: &[StageDecl],
        graph: &StageGraph,
        datasets: &BTreeMap<String, DatasetSpec>,
    ) {
        // The dataset fields of a stage with the split each is read in and its extent.
        let reads = |decl: &StageDecl| -> Vec<(String, String, Range<usize>, stages::data::Extent)> {
            let splits = decl.stage().reads();
            decl.inputs
                .iter()
                .filter_map(|i| match &i.target {
                    Target::Dataset { name } => {
                        let (_, split) = splits.iter().find(|(d, _)| d == name)?;
                        let extent = datasets.get(name)?.extent(*split);
                        Some((name.clone(), i.field.join("."), decl.node.locate(&i.field), extent))
                    }
                    _ => None,
                })
                .collect()
        };
        for (s, select) in stages.iter().enumerate() {
            if select.kind.role() != stages::Role::Selects {
                continue;
            }
            let chosen_on = reads(select);
            let mut reported = BTreeSet::new();
            for r in graph.with_descendants(s) {
                if stages[r].kind.role() != stages::Role::Reports {
                    continue;
                }
                for u in graph.upstream(r) {
                    let score = &stages[u];
                    if score.kind.role() != stages::Role::Scores {
                        continue;
                    }
                    for (tested, field, at, extent) in reads(score) {
                        for (name, _, span, chosen) in &chosen_on {
                            let Some(why) = chosen.overlap(&extent) else { continue };
                            if !reported.insert((name.clone(), u, tested.clone())) {
                                continue;
                            }
                            let there = Diagnostic::new(self.source, at.clone(), "");
                            self.error_help(
                                span.clone(),
                                format!(
                                    "stage `{}` selects on dataset `{name}`, whose images report `{}` also tests on: \
                                     stage `{}`, field `{field}`, dataset `{tested}` ({}:{}:{}); {why}",
                                    select.name,
                                    stages[r].name,
                                    score.name,
                                    self.source.path.display(),
                                    there.line,
                                    there.column
                                ),
                                Some("select on validation data the reports do not test on (a held-out part of a split, declared with `skip`/`limit`, or another split)".into()),
                            );
                        }
                    }
                }
            }
        }
    }

    fn references(
        &mut self,
        decl: &StageDecl,
        stages: &[StageDecl],
        declared: &std::collections::HashMap<String, usize>,
        all_names: &BTreeSet<String>,
        datasets: &BTreeSet<String>,
    ) {
        for input in &decl.inputs {
            let span = decl.node.locate(&input.field);
            let field = input.field.join(".");
            match &input.target {
                Target::Dataset { name } if !datasets.contains(name) => {
                    let help = did_you_mean(name, datasets.iter().map(String::as_str));
                    self.error_help(
                        span,
                        format!("stage `{}`, field `{field}`: no dataset named `{name}`", decl.name),
                        help,
                    );
                }
                Target::Stage { name, .. } if name == &decl.name => {
                    self.error(span, format!("stage `{}` refers to itself in `{field}`", decl.name));
                }
                Target::Stage { name, .. } if !all_names.contains(name) => {
                    let mut names: Vec<&str> = declared.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    let help = did_you_mean(name, names);
                    self.error_help(
                        span,
                        format!("stage `{}`, field `{field}`: no stage named `{name}`", decl.name),
                        help,
                    );
                }
                Target::Stage { name, expects } => {
                    if let Some(target) = declared.get(name).map(|&i| &stages[i]) {
                        if !target.kind.produces().contains(expects) {
                            self.error(
                                span,
                                format!(
                                    "stage `{}`, field `{field}`: `{name}` is a `{}` stage, which does not produce {}",
                                    decl.name,
                                    target.kind.name(),
                                    expects.describe()
                                ),
                            );
                        } else if target.kind.across_seeds() && !decl.kind.across_seeds() {
                            self.error(
                                span,
                                format!(
                                    "stage `{}` cannot read `{name}`, which combines every seed",
                                    decl.name
                                ),
                            );
                        }
                    }
                }
                Target::Dataset { .. } => {}
            }
        }
    }
}
