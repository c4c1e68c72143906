//! Which remote a command uses, and a recipe's cache keys resolved against the local cache and
//! a remote together: keys depend on upstream outputs, so a pull learns each upstream's output
//! digest from whichever side has the entry before it can name what comes after.
use crate::plan::{Looked, Plan, Resolved};
use crate::recipe::Recipe;
use cache::remote::Remote;
use cache::{CacheKey, Manifest, Store, Verification};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::recipe::project::PROJECT_FILE;

/// Why no remote address could be worked out.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("`{}`: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The remote to use: the command line's `--remote`, else `$PIPELINE_REMOTE`, else the recipe's
/// `[remote]` table, else the nearest `pipeline.toml` from `start` upwards. `None` when nothing
/// names one.
pub fn remote_url(
    flag: Option<&str>,
    recipe: Option<&Recipe>,
    start: &Path,
) -> Result<Option<String>, RemoteConfigError> {
    if let Some(url) = flag.filter(|u| !u.is_empty()) {
        return Ok(Some(url.to_string()));
    }
    if let Some(url) = std::env::var("PIPELINE_REMOTE").ok().filter(|u| !u.is_empty()) {
        return Ok(Some(url));
    }
    if let Some(url) = recipe.and_then(|r| r.remote.clone()) {
        return Ok(Some(url));
    }
    match crate::recipe::project::find(start) {
        Some(path) => project_remote(&path),
        None => Ok(None),
    }
}

/// The `[remote] url` of a `pipeline.toml`; errors name the file, line and column.
pub fn project_remote(path: &Path) -> Result<Option<String>, RemoteConfigError> {
    crate::recipe::project::read(path).map(|project| project.remote).map_err(|diagnostics| {
        let message: Vec<String> = diagnostics
            .iter()
            .map(|d| {
                if d.line == 0 {
                    d.message.clone()
                } else {
                    format!("{}:{}: {}", d.line, d.column, d.message)
                }
            })
            .collect();
        RemoteConfigError::Invalid { path: path.into(), message: message.join("; ") }
    })
}

/// Where an instance's result is, as far as the local cache and the remote know.
#[derive(Debug)]
pub enum Located {
    /// In the local cache.
    Local { key: CacheKey, output_digest: String },
    /// Only on the remote (its checked manifest).
    Remote { key: CacheKey, manifest: Box<Manifest> },
    /// In neither; `key` is known when every upstream was found.
    Nowhere { key: Option<CacheKey>, why: String },
    /// Not in the local cache, and what the remote holds for `key` is damaged (`why`): a bad
    /// manifest, never used.
    Damaged { key: CacheKey, why: String },
    /// Not asked about, or not answered: the remote could not be reached (`why`), so it may
    /// hold the entry.
    Unknown { why: String },
}

impl Located {
    pub fn key(&self) -> Option<&CacheKey> {
        match self {
            Located::Local { key, .. } | Located::Remote { key, .. } | Located::Damaged { key, .. } => {
                Some(key)
            }
            Located::Nowhere { key, .. } => key.as_ref(),
            Located::Unknown { .. } => None,
        }
    }
}

/// Each instance of `plan` located in the local cache (checked to `depth`) or on the remote, in
/// plan order, by [`Plan::resolve`]. A local entry that fails its check counts as absent; a
/// remote entry that is rejected is absent for that instance alone; once a request fails, the
/// remote is asked nothing more (each request would wait out its retries) and what is not
/// local is [`Located::Unknown`].
pub fn locate(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    remote: &Remote,
    fingerprints: &BTreeMap<String, String>,
    depth: Verification,
) -> Vec<Located> {
    enum Side {
        Local,
        Remote(Box<Manifest>),
    }
    let mut unreachable: Option<String> = None;
    let mut damaged: BTreeMap<CacheKey, String> = BTreeMap::new();
    let mut look = |_: usize, key: &CacheKey| {
        if let Ok(Some(manifest)) = store.verify(key, depth) {
            return Looked::Found { output_digest: manifest.output_digest, found: Side::Local };
        }
        if let Some(why) = &unreachable {
            return Looked::Unanswered { why: why.clone() };
        }
        match remote.manifest(key) {
            Ok(Some(manifest)) => Looked::Found {
                output_digest: manifest.output_digest.clone(),
                found: Side::Remote(Box::new(manifest)),
            },
            Ok(None) => Looked::Absent { problem: None },
            Err(e) if e.is_unreachable() => {
                let why = crate::error_text::error_chain(&e);
                unreachable = Some(why.clone());
                Looked::Unanswered { why }
            }
            Err(e) => {
                let why = crate::error_text::error_chain(&e);
                if matches!(e, cache::remote::RemoteError::Rejected { .. }) {
                    damaged.insert(key.clone(), why.clone());
                }
                Looked::Absent { problem: Some(why) }
            }
        }
    };
    let resolved = plan.resolve(recipe, fingerprints, &|_| true, &mut look);
    resolved
        .into_iter()
        .map(|resolved| match resolved {
            Resolved::Found { key, output_digest, found: Side::Local } => {
                Located::Local { key, output_digest }
            }
            Resolved::Found { key, found: Side::Remote(manifest), .. } => Located::Remote { key, manifest },
            Resolved::Absent { key, .. } if damaged.contains_key(&key) => {
                let why = damaged[&key].clone();
                Located::Damaged { key, why }
            }
            Resolved::Absent { key, problem, .. } => Located::Nowhere {
                key: Some(key),
                why: problem.unwrap_or_else(|| "not on the remote".into()),
            },
            Resolved::Unnamed { upstream } => Located::Nowhere {
                key: None,
                why: format!("upstream `{}` is in neither cache", plan.instances[upstream].label),
            },
            Resolved::Unknown { why } => Located::Unknown { why },
            Resolved::NotAsked => unreachable!("every instance is wanted"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_file_names_the_default_remote_and_its_errors_have_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROJECT_FILE);
        std::fs::write(&path, "[remote]\nurl = \"s3://lab/ood\"\n").unwrap();
        assert_eq!(project_remote(&path).unwrap().as_deref(), Some("s3://lab/ood"));
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::env::remove_var("PIPELINE_REMOTE");
        assert_eq!(remote_url(None, None, &nested).unwrap().as_deref(), Some("s3://lab/ood"));
        assert_eq!(remote_url(Some("/srv/cache"), None, &nested).unwrap().as_deref(), Some("/srv/cache"));

        std::fs::write(&path, "[remote]\nurl = \"s3://lab/ood\"\nbucket = 3\n").unwrap();
        let err = project_remote(&path).unwrap_err().to_string();
        assert!(err.contains("pipeline.toml") && err.contains("3:1") && err.contains("bucket"), "{err}");

        // Site settings for the executors beside the remote do not disturb it.
        std::fs::write(&path, "[remote]\nurl = \"/srv/cache\"\n\n[executor.slurm]\npartition = \"gpu\"\n")
            .unwrap();
        assert_eq!(project_remote(&path).unwrap().as_deref(), Some("/srv/cache"));
    }
}
