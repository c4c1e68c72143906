//! The store: lookup with verification, per-key locks, staging and atomic commit, refs.
use crate::digest::{hash_file, FingerprintMemo};
use crate::error::CacheError;
use crate::key::{CacheKey, KeyInputs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MANIFEST: &str = "manifest.json";
const OUT: &str = "out";

/// Size and content hash of one output file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub blake3: String,
}

/// The record of a committed entry, written after its outputs are in place.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub key: CacheKey,
    pub inputs: KeyInputs,
    /// Output files by path relative to the entry's `out/` folder (with `/` separators).
    pub files: BTreeMap<String, FileRecord>,
    /// blake3 over the sorted (path, digest) pairs: what downstream keys depend on.
    pub output_digest: String,
    /// Free-form facts about the computation (timings, device, versions).
    pub meta: serde_json::Value,
}

/// How much of an entry [`Store::verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Presence, type and size of every file, and the file list against the output digest.
    Metadata,
    /// That, and every file's content against its digest.
    Hashes,
}

/// One commit of an entry, told from another: see [`Store::commit_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStamp {
    inode: u64,
    modified: Option<std::time::SystemTime>,
}

/// A committed, verified entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: CacheKey,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Entry {
    /// The folder holding the outputs.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join(OUT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockMode {
    Exclusive,
    Shared,
}

/// Locks the file at `path` (created if missing), waiting for it when `wait`; `None` when it is
/// taken and `wait` is false. Lock files are deleted with their entry ([`Store::remove_unused`]),
/// so a lock taken on a file that is no longer the one at `path` is let go and taken again on
/// the file that is.
fn lock_path_file(path: &Path, mode: LockMode, wait: bool) -> Result<Option<File>, CacheError> {
    loop {
        let file = Store::open_lock_file(path)?;
        let taken = match (mode, wait) {
            (LockMode::Exclusive, true) => file.lock().map(|()| true),
            (LockMode::Shared, true) => file.lock_shared().map(|()| true),
            (LockMode::Exclusive, false) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
            (LockMode::Shared, false) => match file.try_lock_shared() {
                Ok(()) => Ok(true),
                Err(fs::TryLockError::WouldBlock) => Ok(false),
                Err(fs::TryLockError::Error(e)) => Err(e),
            },
        }
        .map_err(CacheError::io("cannot lock", path))?;
        if !taken {
            return Ok(None);
        }
        if same_file(&file, path) {
            return Ok(Some(file));
        }
    }
}

/// Whether `file` is the file at `path` now (it may have been deleted, or replaced by another).
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// An exclusive lock on one key, released on drop or when the process dies.
#[derive(Debug)]
pub struct KeyLock {
    key: CacheKey,
    _file: File,
}

impl KeyLock {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }
}

/// A shared hold on one key ([`Store::hold`]), released on drop or when the process dies.
#[derive(Debug)]
pub struct ReadHold {
    _file: File,
}

/// A key nobody computes or holds ([`Store::try_lock_unused`]): safe to delete.
#[derive(Debug)]
pub struct UnusedLock {
    key_lock: KeyLock,
    _readers: File,
}

impl UnusedLock {
    pub fn key_lock(&self) -> &KeyLock {
        &self.key_lock
    }
}

/// A fresh folder to write outputs into; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    key: CacheKey,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Where the computation writes its outputs.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join(OUT)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A content-addressed store rooted at one folder.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    memo: FingerprintMemo,
    counter: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, CacheError> {
        let root = root.into();
        for sub in ["objects", "tmp", "locks", "refs"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(CacheError::io("cannot create", &dir))?;
        }
        let memo = FingerprintMemo::load(root.join("fingerprints.json"));
        Ok(Store { root, memo, counter: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The memo of file digests kept in this store.
    pub fn memo(&self) -> &FingerprintMemo {
        &self.memo
    }

    /// Where an entry lives, committed or not.
    pub fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.root.join("objects").join(key.as_str())
    }

    /// What tells one commit of `key`'s entry from another (its manifest file's identity and
    /// modification time); `None` without an entry. A recomputation that gives the same bytes
    /// still commits anew: this is how a forced job's result is told from the one before it.
    pub fn commit_stamp(&self, key: &CacheKey) -> Option<CommitStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = fs::metadata(self.entry_dir(key).join(MANIFEST)).ok()?;
        Some(CommitStamp { inode: metadata.ino(), modified: metadata.modified().ok() })
    }

    /// A folder for `key` that outlives one attempt at computing it (`resume/<key>/`): where a
    /// long computation records how to continue after a kill. Not created here; removed by
    /// [`Store::remove_resume`] once the entry is committed, and by `gc` when orphaned.
    pub fn resume_dir(&self, key: &CacheKey) -> PathBuf {
        self.root.join("resume").join(key.as_str())
    }

    /// Removes `key`'s resume folder, if any.
    pub fn remove_resume(&self, key: &CacheKey) {
        let _ = fs::remove_dir_all(self.resume_dir(key));
    }

    /// Removes the resume folders of keys that nobody is computing (their lock is free) and
    /// that `keep` does not name; returns how many.
    pub fn sweep_resume(&self, keep: &std::collections::BTreeSet<CacheKey>) -> Result<usize, CacheError> {
        let dir = self.root.join("resume");
        let Ok(items) = fs::read_dir(&dir) else { return Ok(0) };
        let mut removed = 0;
        for item in items.flatten() {
            let Some(key) = CacheKey::parse(&item.file_name().to_string_lossy()) else { continue };
            if keep.contains(&key) {
                continue;
            }
            if let Some(_lock) = self.try_lock(&key)? {
                if fs::remove_dir_all(item.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The manifest of a committed entry, without verifying its outputs. A miss is `Ok(None)`.
    pub fn peek(&self, key: &CacheKey) -> Result<Option<Manifest>, CacheError> {
        let path = self.entry_dir(key).join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io { action: "cannot read", path, source: e }),
        };
        let manifest: Manifest = crate::json::from_slice(&bytes)
            .map_err(|message| CacheError::Parse { path: path.clone(), message })?;
        if &manifest.key != key {
            return Err(CacheError::Corrupt {
                key: key.to_string(),
                detail: format!("its manifest names key {}", manifest.key),
            });
        }
        Ok(Some(manifest))
    }

    /// A committed entry whose every output matches its recorded digest. A miss is `Ok(None)`;
    /// an entry whose files were changed or lost is [`CacheError::Corrupt`].
    pub fn lookup(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        let Some(manifest) = self.verify(key, Verification::Hashes)? else { return Ok(None) };
        Ok(Some(Entry { key: key.clone(), dir: self.entry_dir(key), manifest }))
    }

    /// The manifest of a committed entry whose outputs pass `depth` of checks: every file of
    /// its list is a regular file of the recorded size (never opened otherwise: a FIFO or a
    /// device in its place is corruption), the list still gives the recorded output digest, and
    /// with [`Verification::Hashes`] every file's content matches its digest. A miss is
    /// `Ok(None)`; a failed check is [`CacheError::Corrupt`].
    pub fn verify(&self, key: &CacheKey, depth: Verification) -> Result<Option<Manifest>, CacheError> {
        let corrupt = |detail: String| CacheError::Corrupt { key: key.to_string(), detail };
        let manifest = match self.peek(key) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(CacheError::Parse { path, message }) => {
                return Err(corrupt(format!("unreadable manifest `{}`: {message}", path.display())))
            }
            Err(e) => return Err(e),
        };
        if files_digest(&manifest.files) != manifest.output_digest {
            return Err(corrupt("its manifest's file list no longer gives its output digest".into()));
        }
        let out = self.entry_dir(key).join(OUT);
        for (name, record) in &manifest.files {
            let path = out.join(name);
            let metadata = match fs::symlink_metadata(&path) {
                Ok(metadata) => metadata,
                Err(_) => return Err(corrupt(format!("`{name}` is missing"))),
            };
            if !metadata.file_type().is_file() {
                return Err(corrupt(format!("`{name}` is not a regular file")));
            }
            if metadata.len() != record.size {
                return Err(corrupt(format!(
                    "`{name}` has {} bytes, its manifest says {}",
                    metadata.len(),
                    record.size
                )));
            }
            if depth == Verification::Hashes {
                let actual = hash_file(&path).map_err(|_| corrupt(format!("`{name}` cannot be read")))?;
                if actual != record.blake3 {
                    return Err(corrupt(format!("`{name}` does not match its recorded digest")));
                }
            }
        }
        Ok(Some(manifest))
    }

    /// Takes the key's lock, waiting while another process or thread holds it.
    pub fn lock(&self, key: &CacheKey) -> Result<KeyLock, CacheError> {
        let file = lock_path_file(&self.lock_path(key), LockMode::Exclusive, true)?
            .expect("a waiting lock is always taken");
        Ok(KeyLock { key: key.clone(), _file: file })
    }

    /// Takes the key's lock if it is free.
    pub fn try_lock(&self, key: &CacheKey) -> Result<Option<KeyLock>, CacheError> {
        Ok(lock_path_file(&self.lock_path(key), LockMode::Exclusive, false)?
            .map(|file| KeyLock { key: key.clone(), _file: file }))
    }

    /// Deletes an entry nobody uses, and its two lock files, so `gc` leaves nothing of it behind.
    /// Whoever opened a lock file before it went away finds, once it has the lock, that the file
    /// is no longer the one at the path, and takes the new one (`lock_path_file`).
    pub fn remove_unused(&self, unused: UnusedLock) -> Result<(), CacheError> {
        self.remove(unused.key_lock())?;
        let key = unused.key_lock().key().clone();
        for path in [self.readers_path(&key), self.lock_path(&key)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::Io { action: "cannot remove", path, source: e }),
            }
        }
        drop(unused);
        Ok(())
    }

    fn lock_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    fn readers_path(&self, key: &CacheKey) -> PathBuf {
        self.root.join("locks").join(format!("{key}.readers"))
    }

    fn open_lock_file(path: &Path) -> Result<File, CacheError> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(CacheError::io("cannot open lock", path))
    }

    /// A shared hold on the key for as long as the returned value lives: a running pipeline
    /// takes one before it looks an entry up or computes it, and [`Store::try_lock_unused`]
    /// (what `gc` deletes under) is refused while any process holds one. Waits only while a
    /// `gc` is deleting this very entry.
    pub fn hold(&self, key: &CacheKey) -> Result<ReadHold, CacheError> {
        let file = lock_path_file(&self.readers_path(key), LockMode::Shared, true)?
            .expect("a waiting lock is always taken");
        Ok(ReadHold { _file: file })
    }

    /// The key's lock and its readers' lock, both exclusive and taken without waiting: `None`
    /// when a process computes the key or holds it ([`Store::hold`]).
    pub fn try_lock_unused(&self, key: &CacheKey) -> Result<Option<UnusedLock>, CacheError> {
        let Some(key_lock) = self.try_lock(key)? else { return Ok(None) };
        Ok(lock_path_file(&self.readers_path(key), LockMode::Exclusive, false)?
            .map(|readers| UnusedLock { key_lock, _readers: readers }))
    }

    /// A fresh staging folder for the locked key. Leftovers of interrupted runs for the same key
    /// (their processes are gone, or the lock would not be ours) are swept first.
    pub fn stage(&self, lock: &KeyLock) -> Result<Staging, CacheError> {
        let key = lock.key();
        self.sweep_staging(key)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("tmp").join(format!("{key}.{}.{n}", std::process::id()));
        let out = dir.join(OUT);
        fs::create_dir_all(&out).map_err(CacheError::io("cannot create", &out))?;
        Ok(Staging { key: key.clone(), dir, committed: false })
    }

    fn sweep_staging(&self, key: &CacheKey) -> Result<(), CacheError> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{key}.");
        for item in fs::read_dir(&tmp).map_err(CacheError::io("cannot list", &tmp))? {
            let item = item.map_err(CacheError::io("cannot list", &tmp))?;
            if item.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(item.path());
            }
        }
        Ok(())
    }

    /// Hashes the staged outputs, moves them into place and writes the manifest last.
    /// The caller must hold the key's lock.
    pub fn commit(
        &self,
        staging: Staging,
        lock: &KeyLock,
        inputs: &KeyInputs,
        meta: serde_json::Value,
    ) -> Result<Entry, CacheError> {
        let out = staging.out_dir();
        let mut files = BTreeMap::new();
        collect_files(&out, &out, &mut files)?;
        self.commit_recorded(staging, lock, inputs, files, meta)
    }

    /// Commits staged outputs whose records the caller made while writing them (each file
    /// synced, hashed as it was written, and the only files staged): a pull hashes every file
    /// as it streams in, so it is not read again here. The caller must hold the key's lock.
    pub fn commit_recorded(
        &self,
        mut staging: Staging,
        _lock: &KeyLock,
        inputs: &KeyInputs,
        files: BTreeMap<String, FileRecord>,
        meta: serde_json::Value,
    ) -> Result<Entry, CacheError> {
        let key = staging.key.clone();
        let output_digest = files_digest(&files);
        let manifest = Manifest { key: key.clone(), inputs: inputs.clone(), files, output_digest, meta };
        let dir = self.entry_dir(&key);
        if dir.exists() {
            // An incomplete entry (no manifest) or one found corrupt: replaced under our lock.
            fs::remove_dir_all(&dir).map_err(CacheError::io("cannot remove", &dir))?;
        }
        fs::rename(&staging.dir, &dir).map_err(CacheError::io("cannot move into place", &dir))?;
        staging.committed = true;
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_atomic(&dir.join(MANIFEST), &bytes)?;
        sync_dir(&dir);
        sync_dir(&self.root.join("objects"));
        Ok(Entry { key, dir, manifest })
    }

    /// Deletes an entry (the caller holds its lock).
    pub fn remove(&self, lock: &KeyLock) -> Result<(), CacheError> {
        let dir = self.entry_dir(lock.key());
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Io { action: "cannot remove", path: dir, source: e }),
        }
    }

    /// Every key with a folder under `objects/`, complete or not.
    pub fn keys(&self) -> Result<Vec<CacheKey>, CacheError> {
        let objects = self.root.join("objects");
        let mut keys = Vec::new();
        for item in fs::read_dir(&objects).map_err(CacheError::io("cannot list", &objects))? {
            let item = item.map_err(CacheError::io("cannot list", &objects))?;
            if let Some(key) = CacheKey::parse(&item.file_name().to_string_lossy()) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Total size in bytes of an entry's folder.
    pub fn entry_size(&self, key: &CacheKey) -> u64 {
        dir_size(&self.entry_dir(key))
    }

    /// Removes staging folders whose key is not locked by anyone (left by killed runs).
    pub fn sweep_stale_staging(&self) -> Result<usize, CacheError> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for item in fs::read_dir(&tmp).map_err(CacheError::io("cannot list", &tmp))? {
            let item = item.map_err(CacheError::io("cannot list", &tmp))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(key) = name.split('.').next().and_then(CacheKey::parse) else { continue };
            if let Some(_lock) = self.try_lock(&key)? {
                if fs::remove_dir_all(item.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Records the inputs last used under `namespace/name`.
    pub fn write_ref(&self, namespace: &str, name: &str, inputs: &KeyInputs) -> Result<(), CacheError> {
        let dir = self.root.join("refs").join(sanitize(namespace));
        fs::create_dir_all(&dir).map_err(CacheError::io("cannot create", &dir))?;
        let bytes = serde_json::to_vec_pretty(inputs).expect("inputs serialise");
        let path = dir.join(format!("{}.json", sanitize(name)));
        // A rerun records the same inputs again: skip the write (and its fsync).
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        write_atomic(&path, &bytes)
    }

    /// The inputs last recorded under `namespace/name`, if any.
    pub fn read_ref(&self, namespace: &str, name: &str) -> Option<KeyInputs> {
        let path = self.root.join("refs").join(sanitize(namespace)).join(format!("{}.json", sanitize(name)));
        crate::json::from_slice(&fs::read(path).ok()?).ok()
    }
}

/// Keeps names usable as single path components.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_@".contains(c) { c } else { '_' }).collect()
}

/// blake3 over the sorted (path, digest) pairs of an entry's files: its output digest.
pub(crate) fn files_digest(files: &BTreeMap<String, FileRecord>) -> String {
    let mut digest = blake3::Hasher::new();
    for (name, record) in files {
        digest.update(name.as_bytes());
        digest.update(b"\0");
        digest.update(record.blake3.as_bytes());
        digest.update(b"\n");
    }
    digest.finalize().to_hex().to_string()
}

fn collect_files(
    base: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, FileRecord>,
) -> Result<(), CacheError> {
    for item in fs::read_dir(dir).map_err(CacheError::io("cannot list", dir))? {
        let item = item.map_err(CacheError::io("cannot list", dir))?;
        let path = item.path();
        let kind = item.file_type().map_err(CacheError::io("cannot stat", &path))?;
        if kind.is_dir() {
            collect_files(base, &path, files)?;
        } else if !kind.is_file() {
            // A FIFO, socket, device or link among a stage's outputs would block or mislead
            // every reader: never committed.
            return Err(CacheError::Io {
                action: "refusing to store",
                path,
                source: std::io::Error::other("not a regular file"),
            });
        } else {
            let file = File::open(&path).map_err(CacheError::io("cannot open", &path))?;
            file.sync_all().map_err(CacheError::io("cannot sync", &path))?;
            let size = file.metadata().map_err(CacheError::io("cannot stat", &path))?.len();
            let name = path
                .strip_prefix(base)
                .expect("walked below base")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.insert(name, FileRecord { size, blake3: hash_file(&path)? });
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        use std::io::Write;
        let mut file = File::create(&tmp).map_err(CacheError::io("cannot create", &tmp))?;
        file.write_all(bytes).map_err(CacheError::io("cannot write", &tmp))?;
        file.sync_all().map_err(CacheError::io("cannot sync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(CacheError::io("cannot rename into", path))
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(items) = fs::read_dir(dir) else { return 0 };
    items
        .flatten()
        .map(|item| match item.file_type() {
            Ok(t) if t.is_dir() => dir_size(&item.path()),
            _ => item.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KEY_FORMAT_VERSION;

    fn inputs(seed: u64) -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT_VERSION,
            kind: "test".into(),
            version: 1,
            params: serde_json::json!({"a": 1}),
            seed,
            upstream: BTreeMap::new(),
            inputs: BTreeMap::new(),
        }
    }

    fn commit_one(store: &Store, inputs: &KeyInputs, body: &[u8]) -> Entry {
        let key = inputs.key();
        let lock = store.lock(&key).unwrap();
        let staging = store.stage(&lock).unwrap();
        fs::create_dir_all(staging.out_dir().join("sub")).unwrap();
        fs::write(staging.out_dir().join("sub/result.txt"), body).unwrap();
        store.commit(staging, &lock, inputs, serde_json::json!({})).unwrap()
    }

    #[test]
    fn commit_then_lookup_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inputs = inputs(1);
        assert!(store.lookup(&inputs.key()).unwrap().is_none());
        let entry = commit_one(&store, &inputs, b"42");
        let found = store.lookup(&inputs.key()).unwrap().expect("committed entry is found");
        assert_eq!(found.manifest.output_digest, entry.manifest.output_digest);
        assert_eq!(fs::read(found.out_dir().join("sub/result.txt")).unwrap(), b"42");
        assert_eq!(found.manifest.files["sub/result.txt"].size, 2);
        assert!(fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none(), "staging moved away");
    }

    #[test]
    fn identical_outputs_give_identical_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = commit_one(&store, &inputs(1), b"same");
        let b = commit_one(&store, &inputs(2), b"same");
        let c = commit_one(&store, &inputs(3), b"different");
        assert_eq!(a.manifest.output_digest, b.manifest.output_digest);
        assert_ne!(a.manifest.output_digest, c.manifest.output_digest);
    }

    #[test]
    fn uncommitted_staging_is_not_an_entry_and_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inputs = inputs(1);
        let key = inputs.key();
        {
            let lock = store.lock(&key).unwrap();
            let staging = store.stage(&lock).unwrap();
            fs::write(staging.out_dir().join("partial"), b"half").unwrap();
            std::mem::forget(staging); // as if the process died mid-write
        }
        assert!(store.lookup(&key).unwrap().is_none());
        // An entry moved into place whose manifest was never written is a miss too.
        fs::create_dir_all(store.entry_dir(&key).join("out")).unwrap();
        assert!(store.lookup(&key).unwrap().is_none());
        assert_eq!(store.sweep_stale_staging().unwrap(), 1);
        let entry = commit_one(&store, &inputs, b"whole");
        assert_eq!(store.lookup(&key).unwrap().unwrap().manifest.output_digest, entry.manifest.output_digest);
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let inputs = inputs(1);
        let entry = commit_one(&store, &inputs, b"42");
        fs::write(entry.out_dir().join("sub/result.txt"), b"43").unwrap();
        let err = store.lookup(&inputs.key()).unwrap_err();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("sub/result.txt"), "{err}");
        fs::remove_file(entry.out_dir().join("sub/result.txt")).unwrap();
        assert!(store.lookup(&inputs.key()).unwrap_err().to_string().contains("missing"));
        fs::write(entry.dir.join("manifest.json"), b"{not json").unwrap();
        assert!(matches!(store.lookup(&inputs.key()).unwrap_err(), CacheError::Corrupt { .. }));
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = inputs(1).key();
        let held = store.lock(&key).unwrap();
        assert!(store.try_lock(&key).unwrap().is_none());
        drop(held);
        assert!(store.try_lock(&key).unwrap().is_some());
    }

    /// gc deletes an entry's lock files; a process that opened the old lock file before and
    /// waited on it takes the new one, so two holders never hold "the" lock at once.
    #[test]
    fn deleted_lock_files_are_not_held_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let entry = commit_one(&store, &inputs(3), b"x");
        let key = entry.key.clone();
        let unused = store.try_lock_unused(&key).unwrap().expect("nobody uses it");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                let lock = store.lock(&key).unwrap();
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
                drop(lock);
            })
        };
        // Let the waiter open the old lock file and block on it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        store.remove_unused(unused).unwrap();
        assert!(!store.entry_dir(&key).exists());
        rx.recv().unwrap();
        assert!(store.try_lock(&key).unwrap().is_none(), "the waiter holds the lock at the path");
        waiter.join().unwrap();
        assert!(store.try_lock(&key).unwrap().is_some());
    }

    #[test]
    fn refs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.read_ref("recipe", "base@0").is_none());
        store.write_ref("recipe", "base@0", &inputs(5)).unwrap();
        assert_eq!(store.read_ref("recipe", "base@0"), Some(inputs(5)));
    }
}
