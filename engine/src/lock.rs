//! The lock file beside a recipe (`recipes/x.toml` → `recipes/x.lock`), to commit with it as
//! `Cargo.lock` or `dvc.lock` are: each dataset's fingerprint (with its files' digests, for
//! datasets of at most [`MAX_LISTED_FILES`] files), the digest of each file a stage names (an
//! imported checkpoint), and each instance's key and output digest.
//!
//! Keys contain dataset fingerprints, so without the data a reviewer could not name a single
//! cache entry. With the lock, commands take the fingerprint of a dataset that is not here from
//! it (and say so); when a dataset is here and differs from the lock, they name it and the file
//! that differs. `--locked` (for CI) fails when the data or the recipe no longer match it.
use crate::plan::{dataset_files, fingerprint_of, Plan};
use crate::recipe::Recipe;
use cache::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The lock file format's version.
pub const LOCK_VERSION: u32 = 1;
/// Datasets with more files than this (image folders) are locked by fingerprint alone, so that
/// the lock stays small enough to read in a review.
pub const MAX_LISTED_FILES: usize = 64;

/// What a lock file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    /// The recipe's name.
    pub recipe: String,
    #[serde(default)]
    pub datasets: BTreeMap<String, LockedDataset>,
    /// The blake3 of each file the stages name (an imported checkpoint), by its path as the
    /// recipe writes it: a reviewer without the file names the same keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// By instance id (`base@0`), in sorted order.
    #[serde(default)]
    pub instances: BTreeMap<String, LockedInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedDataset {
    pub fingerprint: String,
    /// Each file's name and content digest, in reading order (empty past
    /// [`MAX_LISTED_FILES`] files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<[String; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedInstance {
    /// Its key, once its upstream entries are computed (keys depend on their outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The output digest of its entry, once computed somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Why a lock file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{}: not a lock file this version reads ({message}); `pipeline lock` writes it again", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The lock file of the recipe at `recipe`.
pub fn lock_path(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

/// Reads the lock file at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LockError::Io { action: "read", path: path.into(), source }),
    };
    let lock: LockFile = toml::from_str(&text)
        .map_err(|e| LockError::Invalid { path: path.into(), message: e.to_string() })?;
    if lock.version != LOCK_VERSION {
        return Err(LockError::Invalid { path: path.into(), message: format!("version {}", lock.version) });
    }
    Ok(Some(lock))
}

/// Writes `lock` at `path` (a temporary file renamed into place), unless it holds that already;
/// whether it wrote.
pub fn write(path: &Path, lock: &LockFile) -> Result<bool, LockError> {
    if read(path).ok().flatten().as_ref() == Some(lock) {
        return Ok(false);
    }
    let body = toml::to_string(lock)
        .map_err(|e| LockError::Invalid { path: path.into(), message: e.to_string() })?;
    let text = format!(
        "# Written by pipeline (`pipeline lock`, `run`, `push`): the datasets' fingerprints and each\n\
         # instance's cache key and output digest. Commit it with the recipe: a reviewer without the\n\
         # data names the cache entries from it.\n{body}"
    );
    // A name of its own: two runs of one recipe may write at once; the last rename wins whole.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let temporary = path.with_extension(format!("lock.{}.{nanos}.tmp", std::process::id()));
    let io = |action, source| LockError::Io { action, path: path.into(), source };
    std::fs::write(&temporary, text).map_err(|e| io("write", e))?;
    std::fs::rename(&temporary, path).map_err(|e| io("write", e))?;
    Ok(true)
}

/// A dataset that is here and differs from the lock, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub dataset: String,
    pub what: String,
}

/// A file a stage names that is here and differs from the lock.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDifference {
    /// Its path as the recipe writes it.
    pub path: String,
    pub here: String,
    pub locked: String,
}

/// The dataset fingerprints a command names keys with, and where they came from.
#[derive(Debug, Default)]
pub struct Fingerprints {
    pub map: BTreeMap<String, String>,
    /// Each dataset's files (name, digest), where the data are here.
    pub files: BTreeMap<String, Vec<(String, String)>>,
    /// Datasets that are not here, whose fingerprint the lock gave.
    pub from_lock: Vec<String>,
    /// Datasets that are here and differ from the lock (their fingerprint is the one here).
    pub differ: Vec<Difference>,
    /// Datasets that are not here and that no lock gives (`name`, why).
    pub problems: Vec<(String, String)>,
    /// Files the stages name that are here and differ from the lock.
    pub files_differ: Vec<FileDifference>,
}

/// The fingerprint of every dataset `plan` reads: from the data where they are here (compared
/// with `lock`), else from `lock`.
pub fn fingerprints(recipe: &Recipe, plan: &Plan, store: &Store, lock: Option<&LockFile>) -> Fingerprints {
    let used: BTreeSet<&str> =
        plan.instances.iter().flat_map(|i| recipe.stages[i.stage].datasets()).collect();
    let mut found = Fingerprints::default();
    for name in used {
        let spec = &recipe.datasets[name];
        let locked = lock.and_then(|l| l.datasets.get(name));
        match dataset_files(store, spec) {
            Ok(files) => {
                let fingerprint = fingerprint_of(spec, &files);
                if let Some(locked) = locked.filter(|l| l.fingerprint != fingerprint) {
                    found
                        .differ
                        .push(Difference { dataset: name.to_string(), what: difference(locked, &files) });
                }
                found.map.insert(name.to_string(), fingerprint);
                found.files.insert(name.to_string(), files);
            }
            Err(e) => match locked {
                Some(locked) => {
                    found.map.insert(name.to_string(), locked.fingerprint.clone());
                    found.from_lock.push(name.to_string());
                }
                None => found.problems.push((name.to_string(), e.to_string())),
            },
        }
    }
    for file in named_files(recipe) {
        let (Some(locked), Some(here)) = (lock.and_then(|l| l.files.get(&file.path)), &file.blake3) else {
            continue;
        };
        if file.present && locked != here && !found.files_differ.iter().any(|d| d.path == file.path) {
            found.files_differ.push(FileDifference {
                path: file.path.clone(),
                here: here.clone(),
                locked: locked.clone(),
            });
        }
    }
    let _ = store.memo().save();
    found
}

/// Every file the recipe's stages name, each variant's.
pub fn named_files(recipe: &Recipe) -> Vec<stages::NamedFile> {
    recipe.stages.iter().flat_map(|s| &s.variants).flat_map(|v| v.stage.files()).collect()
}

/// Where a file a stage names is not here, takes its digest from `lock`, so that the keys are
/// the lock's author's; the paths whose digest came from the lock.
pub fn use_locked_files(recipe: &mut Recipe, lock: &LockFile) -> Vec<String> {
    let mut used = BTreeSet::new();
    for variant in recipe.stages.iter_mut().flat_map(|s| s.variants.iter_mut()) {
        for file in variant.stage.files() {
            if file.blake3.is_some() {
                continue;
            }
            if let Some(digest) = lock.files.get(&file.path) {
                variant.stage.use_locked_digest(file.field, digest);
                used.insert(file.path);
            }
        }
    }
    used.into_iter().collect()
}

/// How the files here differ from the locked ones.
fn difference(locked: &LockedDataset, files: &[(String, String)]) -> String {
    if locked.files.is_empty() {
        return format!(
            "its {} file(s) or its declaration differ from the lock's (which lists no per-file digests \
             for a dataset of more than {MAX_LISTED_FILES} files)",
            files.len()
        );
    }
    let here: BTreeMap<&str, &str> = files.iter().map(|(n, d)| (n.as_str(), d.as_str())).collect();
    let there: BTreeMap<&str, &str> = locked.files.iter().map(|[n, d]| (n.as_str(), d.as_str())).collect();
    let mut said = Vec::new();
    for (name, digest) in &here {
        match there.get(name) {
            Some(other) if other != digest => said.push(format!("file `{name}` has other contents")),
            None => said.push(format!("file `{name}` is not in the lock")),
            _ => {}
        }
    }
    for name in there.keys().filter(|n| !here.contains_key(*n)) {
        said.push(format!("file `{name}` of the lock is not read here"));
    }
    if said.is_empty() {
        said.push("the same files, declared otherwise (classes, limit, …)".into());
    }
    said.join("; ")
}

/// What a lock is built from: the plan's instances with, for each, its key and output digest
/// where known, and the lock it replaces.
pub struct LockUpdate<'a> {
    pub recipe: &'a Recipe,
    pub plan: &'a Plan,
    pub fingerprints: &'a Fingerprints,
    pub keys: &'a [(Option<cache::CacheKey>, Option<String>)],
    pub previous: Option<&'a LockFile>,
    /// The plan covers part of the recipe (`--only`): the previous lock's other datasets and
    /// instances stay.
    pub partial: bool,
}

/// The lock of `update.recipe`: the datasets as the fingerprints found them (those not here
/// kept from the previous lock), and each instance's key and output digest (an instance whose
/// key cannot be named yet keeps its previous entry).
pub fn build(update: &LockUpdate) -> LockFile {
    let LockUpdate { recipe, plan, fingerprints, keys, previous, partial } = *update;
    let mut datasets = match (partial, previous) {
        (true, Some(previous)) => previous.datasets.clone(),
        _ => BTreeMap::new(),
    };
    for (name, fingerprint) in &fingerprints.map {
        let entry = match fingerprints.files.get(name) {
            Some(files) => LockedDataset {
                fingerprint: fingerprint.clone(),
                files: if files.len() <= MAX_LISTED_FILES {
                    files.iter().map(|(n, d)| [n.clone(), d.clone()]).collect()
                } else {
                    Vec::new()
                },
            },
            None => match previous.and_then(|p| p.datasets.get(name)) {
                Some(kept) => kept.clone(),
                None => continue,
            },
        };
        datasets.insert(name.clone(), entry);
    }
    let mut files = match (partial, previous) {
        (true, Some(previous)) => previous.files.clone(),
        _ => BTreeMap::new(),
    };
    for file in named_files(recipe) {
        if let Some(digest) = file.blake3 {
            files.insert(file.path, digest);
        }
    }
    let mut instances = match (partial, previous) {
        (true, Some(previous)) => previous.instances.clone(),
        _ => BTreeMap::new(),
    };
    for (instance, (key, output)) in plan.instances.iter().zip(keys) {
        let locked = match key {
            Some(key) => LockedInstance { key: Some(key.as_str().to_string()), output: output.clone() },
            None => previous
                .and_then(|p| p.instances.get(&instance.id))
                .cloned()
                .unwrap_or(LockedInstance { key: None, output: None }),
        };
        instances.insert(instance.id.clone(), locked);
    }
    LockFile { version: LOCK_VERSION, recipe: recipe.name.clone(), datasets, files, instances }
}

/// How the recipe as it is now (its instances, with the keys it names) differs from `lock`:
/// what `--locked` refuses.
pub fn mismatches(lock: &LockFile, plan: &Plan, keys: &[Option<cache::CacheKey>]) -> Vec<String> {
    let mut said = Vec::new();
    let ids: BTreeSet<&str> = plan.instances.iter().map(|i| i.id.as_str()).collect();
    for (instance, key) in plan.instances.iter().zip(keys) {
        match (lock.instances.get(&instance.id), key) {
            (None, _) => said.push(format!("instance `{}` is not in the lock", instance.id)),
            (Some(locked), Some(key)) if locked.key.as_deref().is_some_and(|k| k != key.as_str()) => {
                said.push(format!("instance `{}` has another key than the lock's", instance.id))
            }
            _ => {}
        }
    }
    for id in lock.instances.keys().filter(|id| !ids.contains(id.as_str())) {
        said.push(format!("instance `{id}` of the lock is no longer in the recipe"));
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_round_trips_through_its_file_in_a_stable_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.lock");
        let lock = LockFile {
            version: LOCK_VERSION,
            recipe: "r".into(),
            datasets: [(
                "digits".to_string(),
                LockedDataset { fingerprint: "ab".into(), files: vec![["x.gz".into(), "cd".into()]] },
            )]
            .into(),
            files: [("ckpt/a.pth".to_string(), "ef".to_string())].into(),
            instances: [
                ("b@0".to_string(), LockedInstance { key: None, output: None }),
                ("a@0".to_string(), LockedInstance { key: Some("k1".into()), output: Some("o".into()) }),
            ]
            .into(),
        };
        assert!(write(&path, &lock).unwrap());
        assert!(!write(&path, &lock).unwrap(), "unchanged: not written again");
        assert_eq!(read(&path).unwrap().as_ref(), Some(&lock));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("a@0").unwrap() < text.find("b@0").unwrap(), "{text}");
        assert!(text.contains("[files]\n\"ckpt/a.pth\" = \"ef\""), "{text}");
        // A lock written before files were locked reads with none.
        std::fs::write(&path, "version = 1\nrecipe = \"r\"\n").unwrap();
        assert!(read(&path).unwrap().unwrap().files.is_empty());
        assert_eq!(read(&dir.path().join("none.lock")).unwrap(), None);
        std::fs::write(&path, "version = 9\nrecipe = \"r\"\n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("pipeline lock"));
    }

    #[test]
    fn differences_name_the_file() {
        let locked = LockedDataset {
            fingerprint: "f".into(),
            files: vec![["a".into(), "1".into()], ["b".into(), "2".into()]],
        };
        let files = vec![("a".to_string(), "1".to_string()), ("b".to_string(), "3".to_string())];
        assert_eq!(difference(&locked, &files), "file `b` has other contents");
        let renamed = vec![("a".to_string(), "1".to_string()), ("b.gz".to_string(), "2".to_string())];
        let said = difference(&locked, &renamed);
        assert!(
            said.contains("`b.gz` is not in the lock") && said.contains("`b` of the lock is not read"),
            "{said}"
        );
    }
}
