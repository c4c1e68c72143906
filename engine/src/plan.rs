//! From a recipe to runnable instances: each stage once per seed (or once for a stage that
//! combines every seed), with what each reads, and the cache key of each.
//!
//! [`Plan::evaluate`] answers "what would run, and why" without running anything: the basis
//! of `pipeline plan` and `pipeline status`.
use crate::recipe::sweep::{product, show_value, Axis};
use crate::recipe::Recipe;
use cache::{CacheKey, KeyInputs, Store, Verification, KEY_FORMAT_VERSION};
use stages::data::DatasetSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One stage run with one seed (or across seeds).
#[derive(Debug, Clone)]
pub struct Instance {
    /// Index of the stage in the recipe.
    pub stage: usize,
    /// The recipe seed, or `None` for a stage that combines every seed.
    pub seed: Option<u64>,
    /// Stable identifier (`base@0`, or `table` for a stage across seeds): names refs and keys.
    pub id: String,
    /// What messages call it: the stage name, with `@seed` when the recipe has several seeds.
    pub label: String,
    /// The seed the stage draws its randomness from.
    pub stage_seed: u64,
    /// Which variant of the stage's sweep it runs (0 without a sweep).
    pub variant: usize,
    /// The value index of every sweep axis it ranges over (its own and its upstream's).
    pub coords: BTreeMap<Axis, usize>,
    /// Those axes as labels show them: `field` = `value` for its own, `stage.field` for an
    /// upstream's.
    pub params: Vec<(String, String)>,
    /// For each upstream stage name, the instances it stands for (one, or one per seed).
    pub upstream: Vec<(String, Vec<usize>)>,
}

impl Instance {
    /// Every instance this one reads.
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        self.upstream.iter().flat_map(|(_, list)| list.iter().copied())
    }
}

/// The instances of a recipe in an order where each comes after everything it reads.
pub struct Plan {
    pub instances: Vec<Instance>,
}

/// Whether an instance's result is in the cache, and if not, why it must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Cached { key: CacheKey, output_digest: String },
    Run { key: Option<CacheKey>, reasons: Vec<String> },
}

impl Verdict {
    /// The instance's key, where it can be named.
    pub fn key(&self) -> Option<&CacheKey> {
        match self {
            Verdict::Cached { key, .. } => Some(key),
            Verdict::Run { key, .. } => key.as_ref(),
        }
    }

    /// Its key and, when cached, its output digest (what a lock file records).
    pub fn locked(&self) -> (Option<CacheKey>, Option<String>) {
        match self {
            Verdict::Cached { key, output_digest } => (Some(key.clone()), Some(output_digest.clone())),
            Verdict::Run { key, .. } => (key.clone(), None),
        }
    }
}

impl Plan {
    /// Expands `recipe`; with `only`, just those stages and what they need. Each stage runs
    /// once per seed (or once across seeds) and per point of its sweep groups; upstream
    /// instances are found by (stage, seed, coordinates) in a hash map, so expansion is linear
    /// in the number of instances and edges.
    pub fn new(recipe: &Recipe, only: Option<&BTreeSet<usize>>) -> Plan {
        let selected: BTreeSet<usize> = match only {
            Some(targets) => targets.iter().flat_map(|&t| recipe.graph.with_ancestors(t)).collect(),
            None => (0..recipe.stages.len()).collect(),
        };
        let several = recipe.seeds.len() > 1;
        let mut instances: Vec<Instance> = Vec::new();
        let mut by_stage: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        // (stage, seed, coordinates) → instance.
        type Place = (usize, Option<u64>, Vec<(Axis, usize)>);
        let mut index: HashMap<Place, usize> = HashMap::new();
        for &s in recipe.graph.order() {
            if !selected.contains(&s) {
                continue;
            }
            let decl = &recipe.stages[s];
            let groups = &recipe.groups[s];
            let seeds: Vec<Option<u64>> = if decl.kind.across_seeds() {
                vec![None]
            } else {
                recipe.seeds.iter().map(|&x| Some(x)).collect()
            };
            let variant_of: HashMap<&[usize], usize> = decl
                .variants
                .iter()
                .enumerate()
                .map(|(v, variant)| (variant.indices.as_slice(), v))
                .collect();
            let own: Vec<&str> = decl
                .sweep
                .as_ref()
                .map(|sw| sw.fields.iter().map(|f| f.name.as_str()).collect())
                .unwrap_or_default();
            for seed in seeds {
                for point in product(&groups.iter().map(|g| g.len).collect::<Vec<_>>()) {
                    let coords: BTreeMap<Axis, usize> = groups
                        .iter()
                        .zip(&point)
                        .flat_map(|(g, &i)| g.axes.iter().map(move |a| (a.clone(), i)))
                        .collect();
                    let own_indices: Vec<usize> =
                        own.iter().map(|f| coords[&Axis { stage: s, field: f.to_string() }]).collect();
                    let variant = variant_of.get(own_indices.as_slice()).copied().unwrap_or(0);
                    let upstream = decl
                        .upstream()
                        .into_iter()
                        .map(|name| {
                            let u = recipe.stage_index(name).expect("references were validated");
                            let u_decl = &recipe.stages[u];
                            let chosen: Vec<usize> = if decl.kind.across_variants() {
                                // Every variant of the upstream; every seed too for a stage
                                // across seeds.
                                by_stage[&u]
                                    .iter()
                                    .copied()
                                    .filter(|&i| match seed {
                                        Some(seed) if !u_decl.kind.across_seeds() => {
                                            instances[i].seed == Some(seed)
                                        }
                                        _ => true,
                                    })
                                    .collect()
                            } else {
                                let u_seed = if u_decl.kind.across_seeds() { None } else { seed };
                                let u_coords: Vec<(Axis, usize)> = recipe.groups[u]
                                    .iter()
                                    .flat_map(|g| g.axes.iter().map(|a| (a.clone(), coords[a])))
                                    .collect::<BTreeMap<_, _>>()
                                    .into_iter()
                                    .collect();
                                match index.get(&(u, u_seed, u_coords)) {
                                    Some(&i) => vec![i],
                                    None => Vec::new(),
                                }
                            };
                            (name.to_string(), chosen)
                        })
                        .collect();
                    let params = shown_params(recipe, s, &coords);
                    let bracket = if params.is_empty() {
                        String::new()
                    } else {
                        let parts: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("[{}]", parts.join(","))
                    };
                    let base = format!("{}{bracket}", decl.name);
                    let (id, label) = match seed {
                        Some(seed) => (
                            format!("{base}@{seed}"),
                            if several { format!("{base}@{seed}") } else { base.clone() },
                        ),
                        None => (base.clone(), base.clone()),
                    };
                    let stage_seed = stages::math::rng::stage_seed(seed.unwrap_or(0), &decl.name);
                    let n = instances.len();
                    by_stage.entry(s).or_default().push(n);
                    index.insert((s, seed, coords.clone().into_iter().collect()), n);
                    instances.push(Instance {
                        stage: s,
                        seed,
                        id,
                        label,
                        stage_seed,
                        upstream,
                        variant,
                        coords,
                        params,
                    });
                }
            }
        }
        Plan { instances }
    }

    /// The key inputs of instance `i`, given the output digests of the instances it reads.
    pub fn key_inputs(
        &self,
        recipe: &Recipe,
        i: usize,
        digests: &dyn Fn(usize) -> String,
        fingerprints: &BTreeMap<String, String>,
    ) -> KeyInputs {
        let instance = &self.instances[i];
        let decl = &recipe.stages[instance.stage];
        KeyInputs {
            format: KEY_FORMAT_VERSION,
            kind: decl.variants[instance.variant].stage.kind().to_string(),
            version: decl.variants[instance.variant].stage.version(),
            params: decl.variants[instance.variant].stage.params(),
            seed: instance.stage_seed,
            upstream: instance.deps().map(|d| (self.instances[d].id.clone(), digests(d))).collect(),
            inputs: decl
                .datasets()
                .into_iter()
                .map(|name| (name.to_string(), fingerprints.get(name).cloned().unwrap_or_default()))
                .collect(),
        }
    }

    /// The one walk that names cache keys: each instance in plan order (every instance comes
    /// after what it reads) gets its key from its upstream instances' output digests, and
    /// `look` says whether a source (the local cache, a remote, both) holds that key and with
    /// which output digest. An instance whose upstream was not found cannot be named; one
    /// whose upstream could not be asked about is unknown. Instances `wanted` rejects are not
    /// asked about. `run`'s scheduler, `status`, `pull` and `gc --remote`, and the Slurm
    /// worker all name keys through it (or, for an instance the scheduler has just computed
    /// the upstream of, through the same [`Plan::key_inputs`] step).
    pub fn resolve<T>(
        &self,
        recipe: &Recipe,
        fingerprints: &BTreeMap<String, String>,
        wanted: &dyn Fn(usize) -> bool,
        look: &mut dyn FnMut(usize, &CacheKey) -> Looked<T>,
    ) -> Vec<Resolved<T>> {
        let mut resolved: Vec<Resolved<T>> = Vec::with_capacity(self.instances.len());
        for (i, instance) in self.instances.iter().enumerate() {
            if !wanted(i) {
                resolved.push(Resolved::NotAsked);
                continue;
            }
            if let Some(why) = instance.deps().find_map(|d| match &resolved[d] {
                Resolved::Unknown { why } => Some(why.clone()),
                _ => None,
            }) {
                resolved.push(Resolved::Unknown { why });
                continue;
            }
            if let Some(upstream) = instance.deps().find(|&d| resolved[d].output_digest().is_none()) {
                resolved.push(Resolved::Unnamed { upstream });
                continue;
            }
            let digest = |d: usize| resolved[d].output_digest().expect("checked above").to_string();
            let inputs = self.key_inputs(recipe, i, &digest, fingerprints);
            let key = inputs.key();
            resolved.push(match look(i, &key) {
                Looked::Found { output_digest, found } => Resolved::Found { key, output_digest, found },
                Looked::Absent { problem } => Resolved::Absent { key, inputs: Box::new(inputs), problem },
                Looked::Unanswered { why } => Resolved::Unknown { why },
            });
        }
        resolved
    }

    /// What would run and why, without running anything. `forced` instances (plan indices)
    /// always run.
    pub fn evaluate(
        &self,
        recipe: &Recipe,
        store: &Store,
        fingerprints: &BTreeMap<String, String>,
        forced: &BTreeSet<usize>,
        depth: Verification,
    ) -> Vec<Verdict> {
        let mut look = |i: usize, key: &CacheKey| match store.verify(key, depth) {
            Ok(Some(_)) if forced.contains(&i) => Looked::Absent { problem: None },
            Ok(Some(manifest)) => Looked::Found { output_digest: manifest.output_digest, found: () },
            Ok(None) => Looked::Absent { problem: None },
            Err(e) => Looked::Absent { problem: Some(e.to_string()) },
        };
        let resolved = self.resolve(recipe, fingerprints, &|_| true, &mut look);
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(self.instances.len());
        for (i, (instance, resolved)) in self.instances.iter().zip(resolved).enumerate() {
            let verdict = match resolved {
                Resolved::Found { key, output_digest, .. } => Verdict::Cached { key, output_digest },
                Resolved::Absent { key, inputs, problem } => {
                    let reasons = if forced.contains(&i) {
                        vec!["forced".to_string()]
                    } else if let Some(problem) = problem {
                        vec![format!("its cache entry is unusable ({problem})")]
                    } else {
                        match store.read_ref(&recipe.name, &instance.id) {
                            None => vec!["never run".to_string()],
                            Some(old) => match inputs.diff(&old) {
                                changes if changes.is_empty() => {
                                    vec!["its output is not in the cache".to_string()]
                                }
                                changes => changes,
                            },
                        }
                    };
                    let mut reasons = reasons;
                    if let (false, Some((done, total))) =
                        (forced.contains(&i), stages::training::resume::progress(&store.resume_dir(&key)))
                    {
                        reasons.push(format!(
                            "will resume after epoch {done}/{total} (an earlier run was interrupted)"
                        ));
                    }
                    Verdict::Run { key: Some(key), reasons }
                }
                // The local cache is always answered: what is left waits for an upstream.
                Resolved::Unnamed { .. } | Resolved::Unknown { .. } | Resolved::NotAsked => {
                    let reasons = instance
                        .deps()
                        .filter(|&d| matches!(verdicts[d], Verdict::Run { .. }))
                        .map(|d| format!("upstream `{}` will run", self.instances[d].label))
                        .collect();
                    Verdict::Run { key: None, reasons }
                }
            };
            verdicts.push(verdict);
        }
        verdicts
    }
}

/// What a source says of one key, for [`Plan::resolve`].
#[derive(Debug)]
pub enum Looked<T> {
    /// It holds the entry, whose outputs digest to `output_digest`; `found` is what the source
    /// gives with it (a manifest, an entry).
    Found { output_digest: String, found: T },
    /// It does not hold it (`problem`: it holds one that cannot be used, and why).
    Absent { problem: Option<String> },
    /// It could not be asked (`why`): it may hold the entry.
    Unanswered { why: String },
}

/// An instance's key, as far as [`Plan::resolve`] could name it, and where it was found.
#[derive(Debug)]
pub enum Resolved<T> {
    Found {
        key: CacheKey,
        output_digest: String,
        found: T,
    },
    /// Named, and not held by the source (its key inputs say what the key is made of).
    Absent {
        key: CacheKey,
        inputs: Box<KeyInputs>,
        problem: Option<String>,
    },
    /// Not nameable: upstream instance `upstream` (a plan index) was not found.
    Unnamed {
        upstream: usize,
    },
    /// An upstream (or this instance) could not be asked about.
    Unknown {
        why: String,
    },
    /// Left out by the walk's `wanted`.
    NotAsked,
}

impl<T> Resolved<T> {
    /// The key, where it could be named.
    pub fn key(&self) -> Option<&CacheKey> {
        match self {
            Resolved::Found { key, .. } | Resolved::Absent { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The output digest of a found entry.
    pub fn output_digest(&self) -> Option<&str> {
        match self {
            Resolved::Found { output_digest, .. } => Some(output_digest),
            _ => None,
        }
    }
}

/// The swept parameters of stage `s` at `coords`, as labels show them: its own fields first
/// (`delta`), then its upstream's (`zeta.delta`), in recipe order.
fn shown_params(recipe: &Recipe, s: usize, coords: &BTreeMap<Axis, usize>) -> Vec<(String, String)> {
    let value = |axis: &Axis, i: usize| {
        let sweep = recipe.stages[axis.stage].sweep.as_ref().expect("an axis belongs to a swept stage");
        let field = sweep.fields.iter().find(|f| f.name == axis.field).expect("the axis is a swept field");
        show_value(&field.values[i])
    };
    let mut own = Vec::new();
    if let Some(sweep) = &recipe.stages[s].sweep {
        for field in &sweep.fields {
            let axis = Axis { stage: s, field: field.name.clone() };
            if let Some(&i) = coords.get(&axis) {
                own.push((field.name.clone(), value(&axis, i)));
            }
        }
    }
    let inherited = coords
        .iter()
        .filter(|(a, _)| a.stage != s)
        .map(|(a, &i)| (format!("{}.{}", recipe.stages[a.stage].name, a.field), value(a, i)));
    own.into_iter().chain(inherited).collect()
}

/// Why a dataset has no fingerprint.
#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    /// Its files cannot be listed (a missing folder, a bad declaration).
    #[error(transparent)]
    Files(#[from] stages::StageError),
    /// A file cannot be read to digest it.
    #[error(transparent)]
    Digest(#[from] cache::CacheError),
}

/// The fingerprint of a dataset: its declaration (paths left out, so moving a project keeps its
/// keys) and the content digests of the files it reads, memoised by the store.
pub fn fingerprint_dataset(store: &Store, spec: &DatasetSpec) -> Result<String, FingerprintError> {
    Ok(fingerprint_of(spec, &dataset_files(store, spec)?))
}

/// The files a dataset reads, each by file name with its content digest, in reading order.
pub fn dataset_files(store: &Store, spec: &DatasetSpec) -> Result<Vec<(String, String)>, FingerprintError> {
    let mut files = Vec::new();
    for file in spec.files()? {
        let digest = store.memo().digest(&file)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.push((name, digest));
    }
    Ok(files)
}

/// The fingerprint of a dataset declared as `spec` whose files are `files` (name, digest).
pub fn fingerprint_of(spec: &DatasetSpec, files: &[(String, String)]) -> String {
    let mut declaration = serde_json::to_value(spec).expect("dataset specs serialise");
    if let Some(object) = declaration.as_object_mut() {
        object.remove("root");
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(declaration.to_string().as_bytes());
    for (name, digest) in files {
        hasher.update(format!("\n{name}:{digest}").as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Fingerprints of every dataset the instances read. Datasets that cannot be read are left out
/// and reported in the second list (`name: why`).
pub fn fingerprint_datasets(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let used: BTreeSet<&str> =
        plan.instances.iter().flat_map(|i| recipe.stages[i.stage].datasets()).collect();
    let mut fingerprints = BTreeMap::new();
    let mut problems = Vec::new();
    for name in used {
        match fingerprint_dataset(store, &recipe.datasets[name]) {
            Ok(fp) => {
                fingerprints.insert(name.to_string(), fp);
            }
            Err(e) => problems.push((name.to_string(), e.to_string())),
        }
    }
    let _ = store.memo().save();
    (fingerprints, problems)
}
