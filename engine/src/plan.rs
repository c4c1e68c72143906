//! From a recipe to runnable instances: each stage once per seed (or once for a stage that
//! combines every seed), with what each reads, and the cache key of each.
//!
//! [`Plan::evaluate`] answers "what would run, and why" without running anything: the basis
//! of `pipeline plan` and `pipeline status`.
use crate::recipe::Recipe;
use cache::{CacheKey, KeyInputs, Store, Verification, KEY_FORMAT_VERSION};
use stages::data::DatasetSpec;
use std::collections::{BTreeMap, BTreeSet};

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

impl Plan {
    /// Expands `recipe`; with `only`, just those stages and what they need.
    pub fn new(recipe: &Recipe, only: Option<&BTreeSet<usize>>) -> Plan {
        let selected: BTreeSet<usize> = match only {
            Some(targets) => targets.iter().flat_map(|&t| recipe.graph.with_ancestors(t)).collect(),
            None => (0..recipe.stages.len()).collect(),
        };
        let several = recipe.seeds.len() > 1;
        let mut instances: Vec<Instance> = Vec::new();
        let mut by_stage: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &s in recipe.graph.order() {
            if !selected.contains(&s) {
                continue;
            }
            let decl = &recipe.stages[s];
            let seeds: Vec<Option<u64>> = if decl.kind.across_seeds() {
                vec![None]
            } else {
                recipe.seeds.iter().map(|&x| Some(x)).collect()
            };
            for seed in seeds {
                let upstream = decl
                    .upstream()
                    .into_iter()
                    .map(|name| {
                        let u = recipe.stage_index(name).expect("references were validated");
                        let all = &by_stage[&u];
                        let chosen = match seed {
                            Some(seed) if !recipe.stages[u].kind.across_seeds() => {
                                all.iter().copied().filter(|&i| instances[i].seed == Some(seed)).collect()
                            }
                            _ => all.clone(),
                        };
                        (name.to_string(), chosen)
                    })
                    .collect();
                let (id, label) = match seed {
                    Some(seed) => (
                        format!("{}@{seed}", decl.name),
                        if several { format!("{}@{seed}", decl.name) } else { decl.name.clone() },
                    ),
                    None => (decl.name.clone(), decl.name.clone()),
                };
                let stage_seed = stages::math::rng::stage_seed(seed.unwrap_or(0), &decl.name);
                by_stage.entry(s).or_default().push(instances.len());
                instances.push(Instance { stage: s, seed, id, label, stage_seed, upstream });
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
            kind: decl.stage.kind().to_string(),
            version: decl.stage.version(),
            params: decl.stage.params(),
            seed: instance.stage_seed,
            upstream: instance.deps().map(|d| (self.instances[d].id.clone(), digests(d))).collect(),
            inputs: decl
                .datasets()
                .into_iter()
                .map(|name| (name.to_string(), fingerprints.get(name).cloned().unwrap_or_default()))
                .collect(),
        }
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
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(self.instances.len());
        for (i, instance) in self.instances.iter().enumerate() {
            let waiting: Vec<&str> = instance
                .deps()
                .filter(|&d| matches!(verdicts[d], Verdict::Run { .. }))
                .map(|d| self.instances[d].label.as_str())
                .collect();
            if !waiting.is_empty() {
                let reasons = waiting.iter().map(|w| format!("upstream `{w}` will run")).collect();
                verdicts.push(Verdict::Run { key: None, reasons });
                continue;
            }
            let digest = |d: usize| match &verdicts[d] {
                Verdict::Cached { output_digest, .. } => output_digest.clone(),
                Verdict::Run { .. } => unreachable!("upstream that runs was handled above"),
            };
            let inputs = self.key_inputs(recipe, i, &digest, fingerprints);
            let key = inputs.key();
            let (cached, problem) = match store.verify(&key, depth) {
                Ok(found) => (found, None),
                Err(e) => (None, Some(e.to_string())),
            };
            let verdict = match cached {
                Some(manifest) if !forced.contains(&i) => {
                    Verdict::Cached { key, output_digest: manifest.output_digest }
                }
                _ => {
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
                    Verdict::Run { key: Some(key), reasons }
                }
            };
            verdicts.push(verdict);
        }
        verdicts
    }
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
    let mut declaration = serde_json::to_value(spec).expect("dataset specs serialise");
    if let Some(object) = declaration.as_object_mut() {
        object.remove("root");
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(declaration.to_string().as_bytes());
    for file in spec.files()? {
        let digest = store.memo().digest(&file)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hasher.update(format!("\n{name}:{digest}").as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
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
