//! Moving entries between the local store and a remote: push, pull and the remote's gc. Files
//! stream in parts (never a whole checkpoint in memory) and up to `parallel` move at once.
use super::client::{blob_path, chain_text, entry_path, printable, Remote, RemoteError, BLOBS, ENTRIES};
use crate::error::CacheError;
use crate::key::CacheKey;
use crate::store::{Entry, FileRecord, KeyLock, Manifest, Staging, Store};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectMeta, ObjectStoreExt, PutMode, PutPayload};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Files above this size go up in parts of this size (S3 wants at least 5 MiB a part).
const PART: usize = 8 << 20;

/// Push markers: `pending/<id>.json` names every blob a push in progress relies on.
const PENDING: &str = "pending";
/// Gc markers: `gc/<id>.json` exists while a `gc` may delete blobs.
const GC: &str = "gc";
/// A push marker this old is left over from a killed push: gc ignores and removes it.
const STALE_PUSH: Duration = Duration::from_secs(24 * 3600);
/// A gc rewrites its marker at least this often while it runs ...
const GC_REFRESH: Duration = Duration::from_secs(15);
/// ... and a push waits for a gc whose marker was written less than this long ago.
const GC_LIVE: Duration = Duration::from_secs(60);
/// A folder remote's partial upload (`blobs/<digest>#<n>`) untouched this long is left over
/// from a killed push: a push of the same blob removes it.
const STALE_PARTIAL: Duration = Duration::from_secs(600);

/// Told how many bytes a transfer will move, then each time some have moved.
pub trait TransferProgress: Sync {
    fn planned(&self, bytes: u64);
    fn moved(&self, bytes: u64);
    /// The transfer waits for something else on the remote (a `gc` deleting blobs).
    fn waiting(&self, _why: &str) {}
}

/// How to push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// Re-hash the blobs the remote holds for these entries (downloading them) and upload
    /// again those that do not match; replace damaged manifests.
    pub verify: bool,
}

/// What a push did for one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// Its manifest is now on the remote; `bytes` of blobs were uploaded for it (blobs shared
    /// with other entries count once, for the first).
    Uploaded { bytes: u64 },
    /// The remote already had the entry (another pusher may have won the race); `repaired`
    /// blobs it had lost (or, with [`PushOptions::verify`], held damaged) were uploaded again,
    /// and its manifest was replaced when it was damaged.
    AlreadyThere { repaired: usize, manifest_replaced: bool },
}

/// What `gc` removed (or would remove) from a remote.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Entries no given recipe uses.
    pub entries: Vec<CacheKey>,
    /// Blobs no remaining entry lists, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Unlisted blobs younger than the grace period: a push in progress may be about to list them.
    pub recent_blobs_kept: usize,
    /// Entries kept.
    pub kept: usize,
    /// Damaged manifests of entries a given recipe uses (key, why), deleted (a push puts them
    /// back).
    pub damaged: Vec<(CacheKey, String)>,
    /// Markers of pushes killed long ago, removed.
    pub stale_markers: usize,
    /// Partial files of killed uploads on a folder remote, removed.
    pub partial_files: usize,
    /// Unlisted blobs kept because a push in progress relies on them.
    pub pending_blobs_kept: usize,
}

/// What a push marker says.
#[derive(serde::Serialize, serde::Deserialize)]
struct PushMarker {
    blobs: Vec<String>,
}

/// An id for a marker: unique enough across machines and processes.
fn marker_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&now.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        hasher.update(host.as_bytes());
    }
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

fn age(now: i64, meta: &ObjectMeta) -> Duration {
    Duration::from_secs((now - meta.last_modified.timestamp()).max(0) as u64)
}

impl Remote {
    /// Uploads each committed local entry the remote lacks: its missing blobs first, then its
    /// manifest, created only if absent. One result per entry, in order.
    pub fn push(
        &self,
        entries: &[Entry],
        progress: &dyn TransferProgress,
    ) -> Vec<Result<PushOutcome, RemoteError>> {
        self.push_with(entries, PushOptions::default(), progress)
    }

    /// [`Remote::push`] with options.
    ///
    /// Against a concurrent `gc` (see [`Remote::gc`]): before it looks at any blob, the push
    /// writes a marker naming every blob its entries list, uploaded or found there, then waits
    /// for any `gc` that may be deleting blobs to finish; only then does it ask which blobs
    /// are there. The marker goes once every manifest is written.
    pub fn push_with(
        &self,
        entries: &[Entry],
        options: PushOptions,
        progress: &dyn TransferProgress,
    ) -> Vec<Result<PushOutcome, RemoteError>> {
        if entries.is_empty() {
            return Vec::new();
        }
        self.runtime.block_on(async {
            let marker = match self.announce(entries, progress).await {
                Ok(marker) => marker,
                Err(e) => {
                    let why = chain_text(&e);
                    return entries
                        .iter()
                        .map(|_| {
                            Err(RemoteError::Request {
                                url: self.url().to_string(),
                                action: "start the push on",
                                path: PENDING.into(),
                                source: Box::new(object_store::Error::Generic {
                                    store: "remote",
                                    source: why.clone().into(),
                                }),
                            })
                        })
                        .collect();
                }
            };
            let results = self.push_async(entries, options, progress).await;
            // A marker left behind (a failed delete) only keeps its blobs for a day.
            let _ = self.objects.delete(&marker).await;
            results
        })
    }

    /// Writes this push's marker, then waits until no `gc` is running.
    async fn announce(
        &self,
        entries: &[Entry],
        progress: &dyn TransferProgress,
    ) -> Result<ObjectPath, RemoteError> {
        let blobs: BTreeSet<&str> =
            entries.iter().flat_map(|e| e.manifest.files.values().map(|r| r.blake3.as_str())).collect();
        let marker = ObjectPath::from(format!("{PENDING}/{}.json", marker_id()));
        self.ready("write", &marker).await?;
        let body = serde_json::to_vec(&PushMarker { blobs: blobs.into_iter().map(String::from).collect() })
            .expect("markers serialise");
        let mut told = false;
        loop {
            // Rewritten while waiting: its time is the remote's clock, against which the gc
            // markers' ages are measured.
            self.objects
                .put(&marker, PutPayload::from(body.clone()))
                .await
                .map_err(self.request("write", &marker))?;
            let now = self.objects.head(&marker).await.map_err(self.request("look up", &marker))?;
            let now = now.last_modified.timestamp();
            let running = self.list(GC).await?.into_iter().any(|gc| age(now, &gc) < GC_LIVE);
            if !running {
                return Ok(marker);
            }
            if !told {
                progress.waiting("a `gc --remote` is deleting blobs; waiting for it to finish");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every object under `prefix` (none when the folder does not exist).
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, RemoteError> {
        let prefix = ObjectPath::from(prefix);
        self.ready("list", &prefix).await?;
        match self.objects.list(Some(&prefix)).try_collect().await {
            Ok(listed) => Ok(listed),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.request("list", &prefix)(e)),
        }
    }

    async fn push_async(
        &self,
        entries: &[Entry],
        options: PushOptions,
        progress: &dyn TransferProgress,
    ) -> Vec<Result<PushOutcome, RemoteError>> {
        // Which entries are there already (their manifests checked), and which blobs (each
        // content once) are missing.
        let present: Vec<Result<Option<Result<Manifest, String>>, RemoteError>> =
            futures::stream::iter(entries)
                .map(|entry| async move {
                    match self.fetch_manifest(&entry.key).await {
                        Ok(found) => Ok(found.map(Ok)),
                        Err(RemoteError::Rejected { detail, .. }) => Ok(Some(Err(detail))),
                        Err(e) => Err(e),
                    }
                })
                .buffered(self.parallel)
                .collect()
                .await;
        let mut blobs: BTreeMap<&str, (PathBuf, &FileRecord)> = BTreeMap::new();
        for entry in entries {
            for (name, record) in &entry.manifest.files {
                blobs.entry(record.blake3.as_str()).or_insert_with(|| (entry.out_dir().join(name), record));
            }
        }
        let checked: Vec<(&str, Result<bool, RemoteError>)> = futures::stream::iter(&blobs)
            .map(|(digest, (_, record))| async move {
                let has = match self.has_blob(digest, record.size).await {
                    Ok(true) if options.verify => self.blob_matches(digest, record).await,
                    other => other,
                };
                (*digest, has)
            })
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        let mut failed: BTreeMap<&str, String> = BTreeMap::new();
        let mut missing = Vec::new();
        for (digest, has) in checked {
            match has {
                Ok(true) => {}
                Ok(false) => missing.push(digest),
                Err(e) => {
                    failed.insert(digest, chain_text(&e));
                }
            }
        }
        progress.planned(missing.iter().map(|d| blobs[d].1.size).sum());
        let uploads: Vec<(&str, Result<(), RemoteError>)> = futures::stream::iter(&missing)
            .map(|&digest| {
                let (path, record) = &blobs[digest];
                async move { (digest, self.upload_blob(path, record, progress).await) }
            })
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        let mut uploaded = BTreeSet::new();
        for (digest, result) in uploads {
            match result {
                Ok(()) => {
                    uploaded.insert(digest);
                }
                Err(e) => {
                    failed.insert(digest, chain_text(&e));
                }
            }
        }
        // Manifests last, each only once all its blobs are there.
        let mut counted = BTreeSet::new();
        let mut results = Vec::with_capacity(entries.len());
        for (entry, present) in entries.iter().zip(present) {
            let broken = entry
                .manifest
                .files
                .iter()
                .find_map(|(name, r)| Some((name, failed.get(r.blake3.as_str())?)));
            if let Some((name, why)) = broken {
                results.push(Err(RemoteError::Rejected {
                    key: entry.key.to_string(),
                    detail: format!("not pushed: `{name}` could not be uploaded: {why}"),
                }));
                continue;
            }
            let mine: Vec<&str> = entry
                .manifest
                .files
                .values()
                .map(|r| r.blake3.as_str())
                .filter(|d| uploaded.contains(d))
                .collect();
            let result = match present {
                Err(e) => Err(e),
                Ok(Some(Ok(_))) => {
                    Ok(PushOutcome::AlreadyThere { repaired: mine.len(), manifest_replaced: false })
                }
                Ok(Some(Err(_))) if options.verify => self
                    .replace_manifest(&entry.manifest)
                    .await
                    .map(|()| PushOutcome::AlreadyThere { repaired: mine.len(), manifest_replaced: true }),
                Ok(Some(Err(why))) => Err(RemoteError::Rejected {
                    key: entry.key.to_string(),
                    detail: format!(
                        "the remote's manifest is damaged ({why}); `pipeline push --verify` replaces it, \
                         `pipeline gc --remote` removes it"
                    ),
                }),
                Ok(None) => self.create_manifest(&entry.manifest).await.map(|created| {
                    if created {
                        let bytes =
                            mine.iter().filter(|d| counted.insert(**d)).map(|d| blobs[d].1.size).sum();
                        PushOutcome::Uploaded { bytes }
                    } else {
                        PushOutcome::AlreadyThere { repaired: mine.len(), manifest_replaced: false }
                    }
                }),
            };
            results.push(result);
        }
        results
    }

    /// Writes the manifest over a damaged one.
    async fn replace_manifest(&self, manifest: &Manifest) -> Result<(), RemoteError> {
        let path = entry_path(&manifest.key);
        self.ready("write", &path).await?;
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        self.objects.put(&path, PutPayload::from(bytes)).await.map_err(self.request("write", &path))?;
        Ok(())
    }

    /// Whether the blob's content hashes to its digest (downloaded, hashed as it streams).
    async fn blob_matches(&self, digest: &str, record: &FileRecord) -> Result<bool, RemoteError> {
        let path = blob_path(digest);
        self.ready("download", &path).await?;
        let found = match self.objects.get(&path).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.request("download", &path)(e)),
        };
        let mut stream = found.into_stream();
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(self.request("download", &path))? {
            received += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok(received == record.size && hasher.finalize().to_hex().as_str() == digest)
    }

    /// Writes the manifest if the remote has none for its key; `Ok(false)` when it had one.
    async fn create_manifest(&self, manifest: &Manifest) -> Result<bool, RemoteError> {
        let path = entry_path(&manifest.key);
        self.ready("write", &path).await?;
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        match self.objects.put_opts(&path, PutPayload::from(bytes), PutMode::Create.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.request("write", &path)(e)),
        }
    }

    /// Whether the blob is there with the right size (a blob of another size is replaced).
    async fn has_blob(&self, digest: &str, size: u64) -> Result<bool, RemoteError> {
        let path = blob_path(digest);
        self.ready("look up", &path).await?;
        match self.objects.head(&path).await {
            Ok(meta) => Ok(meta.size == size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.request("look up", &path)(e)),
        }
    }

    /// Streams one local file into its blob, hashing what it reads: a file that no longer
    /// matches its record is not uploaded (the upload is aborted, nothing becomes visible).
    async fn upload_blob(
        &self,
        path: &Path,
        record: &FileRecord,
        progress: &dyn TransferProgress,
    ) -> Result<(), RemoteError> {
        let blob = blob_path(&record.blake3);
        self.ready("upload", &blob).await?;
        let mut file = File::open(path).map_err(CacheError::io("cannot open", path))?;
        let mut hasher = blake3::Hasher::new();
        let changed = || {
            RemoteError::Local(CacheError::Corrupt {
                key: record.blake3.clone(),
                detail: format!("`{}` changed since it was committed; not uploaded", path.display()),
            })
        };
        if record.size as usize <= PART {
            let chunk = read_chunk(&mut file, PART + 1, path)?;
            hasher.update(&chunk);
            if chunk.len() as u64 != record.size || hasher.finalize().to_hex().as_str() != record.blake3 {
                return Err(changed());
            }
            self.objects.put(&blob, PutPayload::from(chunk)).await.map_err(self.request("upload", &blob))?;
            progress.moved(record.size);
            self.remove_partials(&record.blake3, STALE_PARTIAL);
            return Ok(());
        }
        let mut upload =
            self.objects.put_multipart(&blob).await.map_err(self.request("start uploading", &blob))?;
        let mut sent = 0u64;
        let outcome: Result<(), RemoteError> = async {
            loop {
                let chunk = read_chunk(&mut file, PART, path)?;
                if chunk.is_empty() {
                    break;
                }
                hasher.update(&chunk);
                let n = chunk.len() as u64;
                sent += n;
                upload.put_part(PutPayload::from(chunk)).await.map_err(self.request("upload", &blob))?;
                progress.moved(n);
            }
            if sent != record.size || hasher.finalize().to_hex().as_str() != record.blake3 {
                return Err(changed());
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                upload.complete().await.map_err(self.request("finish uploading", &blob))?;
                self.remove_partials(&record.blake3, STALE_PARTIAL);
                Ok(())
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads entries whose keys the caller has locked, each checked against its manifest
    /// ([`Remote::manifest`]) file by file as it streams in, then commits each whole one into
    /// `store`. One result per entry, in order; a rejected entry leaves nothing behind.
    pub fn pull(
        &self,
        store: &Store,
        wanted: &[(&KeyLock, &Manifest)],
        progress: &dyn TransferProgress,
    ) -> Vec<Result<Entry, RemoteError>> {
        self.runtime.block_on(self.pull_async(store, wanted, progress))
    }

    async fn pull_async(
        &self,
        store: &Store,
        wanted: &[(&KeyLock, &Manifest)],
        progress: &dyn TransferProgress,
    ) -> Vec<Result<Entry, RemoteError>> {
        let mut stagings: Vec<Result<Staging, RemoteError>> = Vec::with_capacity(wanted.len());
        let mut files = Vec::new();
        for (i, (lock, manifest)) in wanted.iter().enumerate() {
            let staging = match store.stage(lock) {
                Ok(staging) => staging,
                Err(e) => {
                    stagings.push(Err(e.into()));
                    continue;
                }
            };
            let out = staging.out_dir();
            for (name, record) in &manifest.files {
                files.push((i, name.as_str(), record, out.join(name)));
            }
            stagings.push(Ok(staging));
        }
        progress.planned(files.iter().map(|f| f.2.size).sum());
        let downloads: Vec<(usize, Result<(), RemoteError>)> = futures::stream::iter(files)
            .map(|(i, name, record, dest)| {
                let key = &wanted[i].1.key;
                async move { (i, self.download_blob(key, name, record, &dest, progress).await) }
            })
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        let mut failed: BTreeMap<usize, RemoteError> = BTreeMap::new();
        for (i, result) in downloads {
            if let Err(e) = result {
                failed.entry(i).or_insert(e);
            }
        }
        let mut results = Vec::with_capacity(wanted.len());
        for (i, staging) in stagings.into_iter().enumerate() {
            let (lock, manifest) = wanted[i];
            let result = match (staging, failed.remove(&i)) {
                (Err(e), _) | (Ok(_), Some(e)) => Err(e),
                (Ok(staging), None) => {
                    let mut meta = manifest.meta.clone();
                    if let Some(object) = meta.as_object_mut() {
                        object.insert("pulled_from".into(), serde_json::json!(self.url()));
                    }
                    // Every file was checked against its record as it streamed in.
                    store
                        .commit_recorded(staging, lock, &manifest.inputs, manifest.files.clone(), meta)
                        .map_err(RemoteError::from)
                }
            };
            results.push(result);
        }
        results
    }

    /// Streams one blob into `dest`, hashing as it writes; refuses a blob that is missing, of
    /// another size or another content, naming the entry and the file.
    async fn download_blob(
        &self,
        key: &CacheKey,
        name: &str,
        record: &FileRecord,
        dest: &Path,
        progress: &dyn TransferProgress,
    ) -> Result<(), RemoteError> {
        let reject = |detail: String| RemoteError::Rejected { key: key.to_string(), detail };
        let name = printable(name);
        let blob = blob_path(&record.blake3);
        self.ready("download", &blob).await?;
        let found = match self.objects.get(&blob).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(reject(format!("the blob of `{name}` is missing from the remote")))
            }
            Err(e) => return Err(self.request("download", &blob)(e)),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(CacheError::io("cannot create", parent))?;
        }
        let mut file = File::create(dest).map_err(CacheError::io("cannot create", dest))?;
        let mut hasher = blake3::Hasher::new();
        let mut received = 0u64;
        let mut stream = found.into_stream();
        while let Some(chunk) = stream.try_next().await.map_err(self.request("download", &blob))? {
            received += chunk.len() as u64;
            if received > record.size {
                return Err(reject(format!("`{name}` is longer on the remote than its manifest says")));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(CacheError::io("cannot write", dest))?;
            progress.moved(chunk.len() as u64);
        }
        if received != record.size {
            return Err(reject(format!(
                "`{name}` has {received} bytes on the remote, its manifest says {}",
                record.size
            )));
        }
        if hasher.finalize().to_hex().as_str() != record.blake3 {
            return Err(reject(format!("`{name}` does not match its digest (blob {})", record.blake3)));
        }
        file.sync_all().map_err(CacheError::io("cannot sync", dest))?;
        Ok(())
    }

    /// Removes the entries of `listed` (the remote's keys, listed before `keep` was worked
    /// out) not in `keep`, and the damaged manifests of those in it; then the blobs nothing
    /// lists that are older than `grace`. With `dry_run`, only says what it would remove.
    ///
    /// Safe beside pushes ([`Remote::push_with`]): an entry written after `listed` was taken is
    /// not in it, so never deleted. For blobs, gc first writes its own marker (kept fresh while
    /// it runs), chooses candidates, and only then lists the push markers and the manifests
    /// again, keeping every blob they name. A push writes its marker before it looks at blobs
    /// and waits while a gc marker is fresh: either gc sees the push's marker (or, once the
    /// push is done, its manifests), or the push sees gc's marker and waits for it to finish
    /// before it asks which blobs are there, uploading again any gc deleted.
    pub fn gc(
        &self,
        listed: &[CacheKey],
        keep: &BTreeSet<CacheKey>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, RemoteError> {
        self.runtime.block_on(async {
            let marker = ObjectPath::from(format!("{GC}/{}.json", marker_id()));
            let mut clock = GcClock { marker: (!dry_run).then_some(marker), written: None, now: 0 };
            let result = self.gc_async(listed, keep, grace, dry_run, &mut clock).await;
            if let Some(marker) = &clock.marker {
                if clock.written.is_some() {
                    let _ = self.objects.delete(marker).await;
                }
            }
            result
        })
    }

    async fn gc_async(
        &self,
        listed: &[CacheKey],
        keep: &BTreeSet<CacheKey>,
        grace: Duration,
        dry_run: bool,
        clock: &mut GcClock,
    ) -> Result<GcReport, RemoteError> {
        self.refresh(clock, true).await?;
        let mut report = GcReport::default();
        // Blobs listed by the manifests read so far; keys whose manifest was read.
        let mut referenced: BTreeSet<String> = BTreeSet::new();
        let mut read: BTreeSet<CacheKey> = BTreeSet::new();
        for key in listed {
            if !keep.contains(key) {
                report.entries.push(key.clone());
                continue;
            }
            self.refresh(clock, false).await?;
            match self.fetch_manifest(key).await {
                Ok(Some(manifest)) => {
                    report.kept += 1;
                    read.insert(key.clone());
                    referenced.extend(manifest.files.into_values().map(|r| r.blake3));
                }
                Ok(None) => {}
                Err(RemoteError::Rejected { detail, .. }) => report.damaged.push((key.clone(), detail)),
                Err(e) => return Err(e),
            }
        }
        let doomed: BTreeSet<&CacheKey> =
            report.entries.iter().chain(report.damaged.iter().map(|(k, _)| k)).collect();
        if !dry_run {
            for key in &doomed {
                self.refresh(clock, false).await?;
                let path = entry_path(key);
                match self.objects.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.request("delete", &path)(e)),
                }
            }
        }
        // Candidates: blobs no kept manifest lists, older than the grace period.
        let mut candidates: BTreeMap<String, ObjectMeta> = BTreeMap::new();
        for meta in self.list(BLOBS).await? {
            let Some(digest) = meta.location.filename().map(str::to_string) else { continue };
            if referenced.contains(&digest) {
                continue;
            }
            if age(clock.now, &meta) < grace {
                report.recent_blobs_kept += 1;
                continue;
            }
            candidates.insert(digest, meta);
        }
        // Then what pushes in progress rely on, then every manifest written meanwhile: in this
        // order, a push that removes its marker between the two lists has written its
        // manifests before the second.
        let mut stale = Vec::new();
        for meta in self.list(PENDING).await? {
            self.refresh(clock, false).await?;
            if age(clock.now, &meta) >= STALE_PUSH {
                stale.push(meta.location);
                continue;
            }
            let body = match self.objects.get(&meta.location).await {
                Ok(found) => found.bytes().await.map_err(self.request("read", &meta.location))?,
                // Removed by its push meanwhile: its manifests are written.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.request("read", &meta.location)(e)),
            };
            match serde_json::from_slice::<PushMarker>(&body) {
                Ok(pending) => {
                    for digest in pending.blobs {
                        if candidates.remove(&digest).is_some() {
                            report.pending_blobs_kept += 1;
                        }
                    }
                }
                // A marker that cannot be read might name any blob: delete none.
                Err(_) => {
                    report.pending_blobs_kept += candidates.len();
                    candidates.clear();
                }
            }
        }
        let again: Vec<ObjectMeta> = self.list(ENTRIES).await?;
        for meta in again {
            let Some(key) =
                meta.location.filename().and_then(|f| f.strip_suffix(".json")).and_then(CacheKey::parse)
            else {
                continue;
            };
            if read.contains(&key) || (dry_run && doomed.contains(&key)) || candidates.is_empty() {
                continue;
            }
            self.refresh(clock, false).await?;
            match self.fetch_manifest(&key).await {
                Ok(Some(manifest)) => {
                    for record in manifest.files.into_values() {
                        candidates.remove(&record.blake3);
                    }
                }
                Ok(None) | Err(RemoteError::Rejected { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (_, meta) in candidates {
            if !dry_run {
                self.refresh(clock, false).await?;
                match self.objects.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.request("delete", &meta.location)(e)),
                }
            }
            report.blobs += 1;
            report.bytes += meta.size;
        }
        report.stale_markers = stale.len();
        report.partial_files = self.partials(None, grace).len();
        if !dry_run {
            for path in stale {
                match self.objects.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.request("delete", &path)(e)),
                }
            }
            for path in self.partials(None, grace) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(report)
    }

    /// Rewrites gc's marker when it is due (or `now`), and learns the remote's time from it;
    /// a dry run writes none and goes by this machine's clock.
    async fn refresh(&self, clock: &mut GcClock, now: bool) -> Result<(), RemoteError> {
        let Some(marker) = &clock.marker else {
            clock.now =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            return Ok(());
        };
        if !now && clock.written.is_some_and(|at| at.elapsed() < GC_REFRESH) {
            return Ok(());
        }
        self.ready("write", marker).await?;
        self.objects
            .put(marker, PutPayload::from_static(b"{}"))
            .await
            .map_err(self.request("write", marker))?;
        clock.written = Some(std::time::Instant::now());
        let meta = self.objects.head(marker).await.map_err(self.request("look up", marker))?;
        clock.now = meta.last_modified.timestamp();
        Ok(())
    }

    /// On a folder remote, the partial files of uploads (`blobs/<digest>#<n>`, of `digest` or
    /// of any blob) untouched for at least `min_age`: what a killed upload leaves.
    fn partials(&self, digest: Option<&str>, min_age: Duration) -> Vec<PathBuf> {
        let Some(folder) = &self.folder else { return Vec::new() };
        let dir = folder.join(BLOBS);
        let stale = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age))
        };
        let is_partial = |name: &str| {
            name.split_once('#').is_some_and(|(blob, n)| {
                digest.is_none_or(|d| d == blob) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        };
        match digest {
            // One blob's: `#1`, `#2`, … up to the first gap (how they are numbered).
            Some(digest) => (1..)
                .map(|n| dir.join(format!("{digest}#{n}")))
                .take_while(|p| p.exists())
                .filter(|p| stale(p))
                .collect(),
            None => std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|item| item.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_partial) && stale(p))
                .collect(),
        }
    }

    fn remove_partials(&self, digest: &str, min_age: Duration) {
        for path in self.partials(Some(digest), min_age) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// gc's marker and the remote's time as of its last write.
struct GcClock {
    marker: Option<ObjectPath>,
    written: Option<std::time::Instant>,
    now: i64,
}

/// Up to `limit` bytes of `file` (fewer only at its end).
fn read_chunk(file: &mut File, limit: usize, path: &Path) -> Result<Vec<u8>, RemoteError> {
    let mut chunk = Vec::with_capacity(limit.min(PART));
    Read::by_ref(file)
        .take(limit as u64)
        .read_to_end(&mut chunk)
        .map_err(CacheError::io("cannot read", path))?;
    Ok(chunk)
}
