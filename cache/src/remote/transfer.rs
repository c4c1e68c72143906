//! Moving entries between the local store and a remote: push, pull and the remote's gc. Files
//! stream in parts (never a whole checkpoint in memory) and up to `parallel` move at once.
use super::client::{blob_path, entry_path, Remote, RemoteError, BLOBS};
use crate::error::CacheError;
use crate::key::CacheKey;
use crate::store::{Entry, FileRecord, KeyLock, Manifest, Staging, Store};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStoreExt, PutMode, PutPayload};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Files above this size go up in parts of this size (S3 wants at least 5 MiB a part).
const PART: usize = 8 << 20;

/// Told how many bytes a transfer will move, then each time some have moved.
pub trait TransferProgress: Sync {
    fn planned(&self, bytes: u64);
    fn moved(&self, bytes: u64);
}

/// What a push did for one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// Its manifest is now on the remote; `bytes` of blobs were uploaded for it (blobs shared
    /// with other entries count once, for the first).
    Uploaded { bytes: u64 },
    /// The remote already had the entry (another pusher may have won the race); blobs it had
    /// lost were uploaded again.
    AlreadyThere { repaired: usize },
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
}

impl Remote {
    /// Uploads each committed local entry the remote lacks: its missing blobs first, then its
    /// manifest, created only if absent. One result per entry, in order.
    pub fn push(
        &self,
        entries: &[Entry],
        progress: &dyn TransferProgress,
    ) -> Vec<Result<PushOutcome, RemoteError>> {
        self.runtime.block_on(self.push_async(entries, progress))
    }

    async fn push_async(
        &self,
        entries: &[Entry],
        progress: &dyn TransferProgress,
    ) -> Vec<Result<PushOutcome, RemoteError>> {
        // Which entries are there already, and which blobs (each content once) are missing.
        let present: Vec<Result<bool, RemoteError>> = futures::stream::iter(entries)
            .map(|entry| self.exists(entry_path(&entry.key)))
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
            .map(|(digest, (_, record))| async move { (*digest, self.has_blob(digest, record.size).await) })
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
                    failed.insert(digest, chain(&e));
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
                    failed.insert(digest, chain(&e));
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
                Ok(true) => Ok(PushOutcome::AlreadyThere { repaired: mine.len() }),
                Ok(false) => self.create_manifest(&entry.manifest).await.map(|created| {
                    if created {
                        let bytes =
                            mine.iter().filter(|d| counted.insert(**d)).map(|d| blobs[d].1.size).sum();
                        PushOutcome::Uploaded { bytes }
                    } else {
                        PushOutcome::AlreadyThere { repaired: mine.len() }
                    }
                }),
            };
            results.push(result);
        }
        results
    }

    /// Writes the manifest if the remote has none for its key; `Ok(false)` when it had one.
    async fn create_manifest(&self, manifest: &Manifest) -> Result<bool, RemoteError> {
        let path = entry_path(&manifest.key);
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        match self.objects.put_opts(&path, PutPayload::from(bytes), PutMode::Create.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.request("write", &path)(e)),
        }
    }

    async fn exists(&self, path: ObjectPath) -> Result<bool, RemoteError> {
        match self.objects.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.request("look up", &path)(e)),
        }
    }

    /// Whether the blob is there with the right size (a blob of another size is replaced).
    async fn has_blob(&self, digest: &str, size: u64) -> Result<bool, RemoteError> {
        let path = blob_path(digest);
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
        let blob = blob_path(&record.blake3);
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

    /// Removes the entries not in `keep`, then the blobs no remaining entry lists that are older
    /// than `grace`. With `dry_run`, only says what it would remove.
    pub fn gc(
        &self,
        keep: &BTreeSet<CacheKey>,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, RemoteError> {
        let keys = self.keys()?;
        self.runtime.block_on(async {
            let mut report = GcReport::default();
            let mut referenced = BTreeSet::new();
            for key in &keys {
                if !keep.contains(key) {
                    report.entries.push(key.clone());
                    continue;
                }
                report.kept += 1;
                if let Some(manifest) = self.fetch_manifest(key).await? {
                    referenced.extend(manifest.files.into_values().map(|r| r.blake3));
                }
            }
            if !dry_run {
                for key in &report.entries {
                    let path = entry_path(key);
                    match self.objects.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.request("delete", &path)(e)),
                    }
                }
            }
            let prefix = ObjectPath::from(BLOBS);
            let blobs: Vec<_> = self
                .objects
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(self.request("list", &prefix))?;
            let now =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
            for meta in blobs {
                let Some(digest) = meta.location.filename() else { continue };
                if referenced.contains(digest) {
                    continue;
                }
                if now - meta.last_modified.timestamp() < grace.as_secs() as i64 {
                    report.recent_blobs_kept += 1;
                    continue;
                }
                if !dry_run {
                    match self.objects.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(self.request("delete", &meta.location)(e)),
                    }
                }
                report.blobs += 1;
                report.bytes += meta.size;
            }
            Ok(report)
        })
    }
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

/// An error and its causes, joined by ": ".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
