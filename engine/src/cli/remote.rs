//! `pipeline push`, `pipeline pull` and `pipeline gc --remote`: a recipe's cache entries moved
//! to and from a remote, and the remote's unused entries removed.
use super::exit::Status;
use super::loading::{load, open_remote_with, open_store, RemoteRequest};
use super::shell::{duration, Shell};
use crate::error::EngineError;
use crate::error_text::error_chain;
use crate::plan::{Plan, Verdict};
use crate::recipe::Recipe;
use crate::remote::{locate, Located};
use cache::remote::{printable, PushOptions, PushOutcome, Remote, RemoteError};
use cache::{CacheKey, Store, Verification};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn rate(bytes: u64, seconds: f64) -> String {
    format!("{:.1} MB/s", bytes as f64 / 1e6 / seconds.max(1e-9))
}

/// The dataset fingerprints a recipe's keys need, from the data or the recipe's lock file;
/// without either, the keys of what reads a dataset are unknown, so the command stops.
fn fingerprints(
    recipe: &Recipe,
    plan: &Plan,
    store: &Store,
    path: &Path,
    shell: &Shell,
) -> Result<crate::lock::Fingerprints, EngineError> {
    let (found, _) = super::commands::locked_fingerprints(path, recipe, plan, store, shell)?;
    if let Some((name, problem)) = found.problems.first() {
        return Err(EngineError::Dataset {
            name: name.clone(),
            message: format!(
                "{problem}; `{}` needs it to name its cache entries (or a lock file, {}, which `pipeline \
                 lock` or `run` writes beside the recipe)",
                path.display(),
                crate::lock::lock_path(path).display()
            ),
        });
    }
    Ok(found)
}

/// What push and pull both start from: the recipe, both caches, the plan and the dataset
/// fingerprints its keys need.
struct Transfer {
    recipe: Recipe,
    store: Store,
    remote: Remote,
    plan: Plan,
    fingerprints: BTreeMap<String, String>,
    /// Where the fingerprints came from (for the lock push writes).
    found: crate::lock::Fingerprints,
}

impl Transfer {
    fn open(
        path: &Path,
        remote: &RemoteRequest,
        cache: Option<PathBuf>,
        shell: &Shell,
    ) -> Result<Transfer, EngineError> {
        let recipe = load(path, shell)?;
        let store = open_store(cache)?;
        let remote = open_remote_with(remote, Some(&recipe))?;
        remote.check().map_err(|e| {
            EngineError::RemoteUnreachable(format!("cannot ask the remote: {}", error_chain(&e)))
        })?;
        let plan = Plan::new(&recipe, None);
        let found = fingerprints(&recipe, &plan, &store, path, shell)?;
        Ok(Transfer { recipe, store, remote, plan, fingerprints: found.map.clone(), found })
    }
}

/// The error a command ends with when the remote could not be used (exit status 5), after it
/// said what it did.
fn unreachable(first: &RemoteError, what: &str) -> anyhow::Error {
    EngineError::RemoteUnreachable(format!("{}; {what}", error_chain(first))).into()
}

pub fn push(
    path: &Path,
    remote: &RemoteRequest,
    cache: Option<PathBuf>,
    verify: bool,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let Transfer { recipe, store, remote, plan, fingerprints, found } =
        Transfer::open(path, remote, cache, shell)?;
    let verdicts = plan.evaluate(&recipe, &store, &fingerprints, &BTreeSet::new(), Verification::Metadata);
    // The lock the reviewer pulls with: every key pushed, with its output digest.
    let previous = crate::lock::read(&crate::lock::lock_path(path)).ok().flatten();
    let keys: Vec<(Option<CacheKey>, Option<String>)> = verdicts.iter().map(Verdict::locked).collect();
    let update = crate::lock::LockUpdate {
        recipe: &recipe,
        plan: &plan,
        fingerprints: &found,
        keys: &keys,
        previous: previous.as_ref(),
        partial: false,
    };
    super::commands::update_lock(path, &update, shell);
    let mut labels = Vec::new();
    let mut entries = Vec::new();
    let mut holds = Vec::new();
    let mut not_local = Vec::new();
    let mut failed = Vec::new();
    let mut seen = BTreeSet::new();
    for (instance, verdict) in plan.instances.iter().zip(&verdicts) {
        let Verdict::Cached { key, .. } = verdict else {
            not_local.push(instance.label.clone());
            continue;
        };
        if !seen.insert(key.clone()) {
            continue;
        }
        // Held while it uploads, so that a `gc` meanwhile leaves it. Files are checked for
        // presence and size here; each one uploaded is hashed as it is read (a damaged file
        // is never pushed), so it is not hashed twice.
        let cache_error = |source| EngineError::Cache { path: store.root().to_path_buf(), source };
        holds.push(store.hold(key).map_err(cache_error)?);
        match store.verify(key, Verification::Metadata) {
            Ok(Some(manifest)) => {
                labels.push(instance.label.clone());
                entries.push(cache::Entry { key: key.clone(), dir: store.entry_dir(key), manifest });
            }
            Ok(None) => not_local.push(instance.label.clone()),
            Err(e) => {
                shell.error(&format!("`{}` is not pushed: {}", instance.label, error_chain(&e)));
                failed.push(instance.label.clone());
            }
        }
    }
    let started = Instant::now();
    let bar = shell.transfer_bar("Pushing");
    let results = remote.push_with(&entries, PushOptions { verify }, &bar);
    drop(bar);
    let seconds = started.elapsed().as_secs_f64();
    let (mut pushed, mut present, mut bytes, mut rows) = (0, 0, 0u64, Vec::new());
    let mut down: Option<RemoteError> = None;
    for ((label, entry), result) in labels.iter().zip(&entries).zip(results) {
        let key = entry.key.as_str();
        match result {
            Ok(PushOutcome::Uploaded { bytes: b }) => {
                pushed += 1;
                bytes += b;
                shell.status("Pushed", &format!("{label} ({}, {})", entry.key.short(), megabytes(b)));
                rows.push(serde_json::json!({"stage": label, "key": key, "pushed": true, "bytes": b}));
            }
            Ok(PushOutcome::AlreadyThere { repaired, manifest_replaced }) => {
                present += 1;
                if repaired > 0 {
                    shell.status(
                        "Repaired",
                        &format!("{label}: {repaired} lost or damaged file(s) uploaded again"),
                    );
                }
                if manifest_replaced {
                    shell.status("Repaired", &format!("{label}: its damaged manifest was replaced"));
                }
                rows.push(
                    serde_json::json!({"stage": label, "key": key, "pushed": false, "repaired": repaired,
                    "manifest_replaced": manifest_replaced}),
                );
            }
            Err(e) if e.is_unreachable() => {
                failed.push(label.clone());
                rows.push(serde_json::json!({"stage": label, "key": key, "error": error_chain(&e)}));
                down.get_or_insert(e);
            }
            Err(e) => {
                shell.error(&format!("`{label}` is not pushed: {}", error_chain(&e)));
                failed.push(label.clone());
                rows.push(serde_json::json!({"stage": label, "key": key, "error": error_chain(&e)}));
            }
        }
    }
    shell.out(&format!(
        "{pushed} entr{} pushed ({} in {}, {}), {present} already on {}{}{}",
        if pushed == 1 { "y" } else { "ies" },
        megabytes(bytes),
        duration(seconds),
        rate(bytes, seconds),
        remote.url(),
        if not_local.is_empty() { String::new() } else { format!(", {} not computed here", not_local.len()) },
        if failed.is_empty() { String::new() } else { format!(", {} failed", failed.len()) },
    ));
    shell.emit(serde_json::json!({
        "remote": remote.url(), "entries": rows, "pushed": pushed, "already_there": present, "bytes": bytes,
        "seconds": seconds, "not_computed": not_local, "failed": failed,
    }));
    if let Some(first) = down {
        return Err(unreachable(&first, "what is not pushed can be pushed again"));
    }
    Ok(if failed.is_empty() { Status::Success } else { Status::Failure })
}

pub fn pull(
    path: &Path,
    remote: &RemoteRequest,
    cache: Option<PathBuf>,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let Transfer { recipe, store, remote, plan, fingerprints, .. } =
        Transfer::open(path, remote, cache, shell)?;
    let located = locate(&recipe, &plan, &store, &remote, &fingerprints, Verification::Metadata);
    let cache_error = |source| EngineError::Cache { path: store.root().to_path_buf(), source };
    // One lock per key (two instances may share one), taken in key order.
    let mut wanted: BTreeMap<CacheKey, (&cache::Manifest, Vec<usize>)> = BTreeMap::new();
    let (mut local, mut missing, mut damaged, mut rows) = (0, Vec::new(), Vec::new(), Vec::new());
    for (i, (instance, where_)) in plan.instances.iter().zip(&located).enumerate() {
        match where_ {
            Located::Local { .. } => local += 1,
            Located::Remote { key, manifest } => {
                wanted.entry(key.clone()).or_insert((manifest, Vec::new())).1.push(i)
            }
            Located::Unknown { why } => {
                return Err(EngineError::RemoteUnreachable(format!(
                    "cannot ask the remote about `{}`: {why}; nothing was pulled",
                    instance.label
                ))
                .into());
            }
            Located::Nowhere { why, .. } => {
                shell.status("Missing", &format!("{}: {why}", instance.label));
                missing.push(instance.label.clone());
                rows.push(serde_json::json!({"stage": instance.id, "pulled": false, "missing": why}));
            }
            Located::Damaged { why, .. } => {
                shell.error(&format!("`{}` is not pulled: {why}", instance.label));
                damaged.push(instance.label.clone());
                rows.push(serde_json::json!({"stage": instance.id, "pulled": false, "error": why}));
            }
        }
    }
    let mut holds = Vec::new();
    let mut taken = Vec::new();
    for key in wanted.keys() {
        holds.push(store.hold(key).map_err(cache_error)?);
        taken.push(store.lock(key).map_err(cache_error)?);
    }
    // Another pull (or run) may have committed an entry while this one waited for its lock:
    // looked at again now that the lock is held, it is not downloaded twice.
    let mut locks = Vec::new();
    for (lock, (key, value)) in taken.into_iter().zip(std::mem::take(&mut wanted)) {
        if let Ok(Some(_)) = store.verify(&key, Verification::Metadata) {
            local += value.1.len();
            continue;
        }
        locks.push(lock);
        wanted.insert(key, value);
    }
    let requests: Vec<(&cache::KeyLock, &cache::Manifest)> =
        locks.iter().zip(wanted.values()).map(|(lock, (manifest, _))| (lock, *manifest)).collect();
    let started = Instant::now();
    let bar = shell.transfer_bar("Pulling");
    let results = remote.pull(&store, &requests, &bar);
    drop(bar);
    let seconds = started.elapsed().as_secs_f64();
    // Reported in plan order, as `run` does.
    let mut outcomes: Vec<(usize, u64, &Result<cache::Entry, cache::remote::RemoteError>)> = Vec::new();
    for ((manifest, instances), result) in wanted.values().zip(&results) {
        let size: u64 = manifest.files.values().map(|f| f.size).sum();
        outcomes.extend(instances.iter().map(|&i| (i, size, result)));
    }
    outcomes.sort_by_key(|(i, ..)| *i);
    let (mut pulled, mut bytes, mut failed) = (0, 0u64, damaged);
    let mut counted = BTreeSet::new();
    let mut down: Option<&RemoteError> = None;
    for (i, size, result) in outcomes {
        let instance = &plan.instances[i];
        match result {
            Ok(entry) => {
                pulled += 1;
                if counted.insert(entry.key.clone()) {
                    bytes += size;
                }
                shell.status(
                    "Pulled",
                    &format!("{} ({}, {})", instance.label, entry.key.short(), megabytes(size)),
                );
                if let Err(e) = store.write_ref(&recipe.name, &instance.id, &entry.manifest.inputs) {
                    shell.warn(&format!("cannot record the pull of `{}`: {e}", instance.label));
                }
                rows.push(serde_json::json!({"stage": instance.id, "key": entry.key.as_str(), "pulled": true, "bytes": size}));
            }
            Err(e) => {
                if e.is_unreachable() {
                    down.get_or_insert(e);
                }
                shell.error(&format!("`{}` is not pulled: {}", instance.label, error_chain(e)));
                failed.push(instance.label.clone());
                rows.push(
                    serde_json::json!({"stage": instance.id, "pulled": false, "error": error_chain(e)}),
                );
            }
        }
    }
    shell.out(&format!(
        "{pulled} stage(s) pulled ({} in {}, {}), {local} already here{}{}",
        megabytes(bytes),
        duration(seconds),
        rate(bytes, seconds),
        if missing.is_empty() {
            String::new()
        } else {
            format!(", {} on neither side (`pipeline run` computes them)", missing.len())
        },
        if failed.is_empty() { String::new() } else { format!(", {} rejected", failed.len()) },
    ));
    shell.emit(serde_json::json!({
        "remote": remote.url(), "instances": rows, "pulled": pulled, "already_here": local, "bytes": bytes,
        "seconds": seconds, "missing": missing, "failed": failed,
    }));
    if let Some(first) = down {
        return Err(unreachable(first, "what is not pulled can be pulled again"));
    }
    Ok(if failed.is_empty() { Status::Success } else { Status::Failure })
}

/// `gc --remote`: the remote's entries that none of `paths` uses are removed, and damaged
/// manifests of those they use; then its blobs that no entry lists and that are older than
/// `grace`. Exit status 1 when damaged manifests were found (named).
pub fn gc(
    paths: &[PathBuf],
    remote: &RemoteRequest,
    grace: Duration,
    dry_run: bool,
    cache: Option<PathBuf>,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let store = open_store(cache)?;
    let mut recipes = Vec::new();
    for path in paths {
        recipes.push((path, load(path, shell)?));
    }
    let remote = open_remote_with(remote, recipes.first().map(|(_, r)| r))?;
    // The entries are listed before the keep set is worked out: an entry pushed meanwhile is
    // not listed, so not deleted, whatever its upstream entries were when the keys were named.
    let nothing_deleted =
        |e: RemoteError| EngineError::RemoteUnreachable(format!("{}; nothing was deleted", error_chain(&e)));
    remote.check().map_err(nothing_deleted)?;
    let listed = remote.keys().map_err(nothing_deleted)?;
    let mut keep = BTreeSet::new();
    for (path, recipe) in &recipes {
        let plan = Plan::new(recipe, None);
        let fingerprints = fingerprints(recipe, &plan, &store, path, shell)?.map;
        // What the recipe's lock names is kept too (a reviewer's data may differ from it).
        let lock_file = crate::lock::read(&crate::lock::lock_path(path)).ok().flatten();
        keep.extend(super::commands::lock_keys(lock_file.as_ref()));
        for (instance, where_) in plan.instances.iter().zip(locate(
            recipe,
            &plan,
            &store,
            &remote,
            &fingerprints,
            Verification::Metadata,
        )) {
            match where_ {
                Located::Local { key, .. }
                | Located::Remote { key, .. }
                | Located::Damaged { key, .. }
                | Located::Nowhere { key: Some(key), .. } => {
                    keep.insert(key);
                }
                // A remote that cannot be asked about a key might hold it: delete nothing.
                Located::Unknown { why } => {
                    return Err(EngineError::RemoteUnreachable(format!(
                        "cannot tell whether the remote holds `{}` ({why}); nothing was deleted",
                        instance.label
                    ))
                    .into());
                }
                Located::Nowhere { key: None, .. } => {}
            }
        }
    }
    let report = remote.gc(&listed, &keep, grace, dry_run).map_err(|e| match e.is_unreachable() {
        true => EngineError::RemoteUnreachable(format!("{}; gc stopped there", error_chain(&e))),
        false => EngineError::Remote(e),
    })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for key in &report.entries {
        shell.out(&format!("{verb} entry {key}"));
    }
    for (key, why) in &report.damaged {
        shell.error(&format!(
            "the remote's entry {key} is damaged ({}); {verb} its manifest (`pipeline push` puts it back)",
            printable(why)
        ));
    }
    let mut extra = String::new();
    if report.recent_blobs_kept > 0 {
        extra += &format!(
            ", {} unlisted blob(s) younger than {}s kept",
            report.recent_blobs_kept,
            grace.as_secs()
        );
    }
    if report.pending_blobs_kept > 0 {
        extra += &format!(", {} blob(s) kept for pushes in progress", report.pending_blobs_kept);
    }
    if report.partial_files > 0 {
        extra += &format!(", {verb} {} partial file(s) of interrupted uploads", report.partial_files);
    }
    if report.stale_markers > 0 {
        extra += &format!(", {verb} {} marker(s) of pushes killed over a day ago", report.stale_markers);
    }
    shell.out(&format!(
        "{}: {verb} {} entr{} and {} blob(s) ({}); {} entries kept{extra}",
        remote.url(),
        report.entries.len(),
        if report.entries.len() == 1 { "y" } else { "ies" },
        report.blobs,
        megabytes(report.bytes),
        report.kept,
    ));
    let entries: Vec<&str> = report.entries.iter().map(|k| k.as_str()).collect();
    let damaged: Vec<serde_json::Value> = report
        .damaged
        .iter()
        .map(|(key, why)| serde_json::json!({"key": key.as_str(), "why": why}))
        .collect();
    shell.emit(serde_json::json!({
        "remote": remote.url(), "dry_run": dry_run, "entries": entries, "blobs": report.blobs,
        "bytes": report.bytes, "kept": report.kept, "recent_blobs_kept": report.recent_blobs_kept,
        "damaged": damaged, "pending_blobs_kept": report.pending_blobs_kept,
        "partial_files": report.partial_files, "stale_markers": report.stale_markers,
    }));
    Ok(if report.damaged.is_empty() { Status::Success } else { Status::Failure })
}
