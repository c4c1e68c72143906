//! Content hashes of files, and a memo that avoids re-reading unchanged large files.
use crate::error::CacheError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

/// blake3 of a file's bytes, as hex.
pub fn hash_file(path: &Path) -> Result<String, CacheError> {
    let file = std::fs::File::open(path).map_err(CacheError::io("cannot open", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(CacheError::io("cannot read", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MemoEntry {
    size: u64,
    mtime_ns: u128,
    /// Status-change time and inode (Unix): an edit in place that restores size and mtime
    /// (`touch -r`) still changes the ctime, a file replaced by another the inode. Entries of
    /// memos written before they were recorded lack them and are hashed again.
    #[serde(default)]
    ctime_ns: Option<i128>,
    #[serde(default)]
    inode: Option<u64>,
    digest: String,
}

/// (ctime in ns, inode) of a file where the platform has them.
fn change_stamp(meta: &std::fs::Metadata) -> (Option<i128>, Option<u64>) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (Some(meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128), Some(meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (None, None)
    }
}

/// File digests memoised by canonical path, size, modification time, status-change time and
/// inode, persisted as JSON. A file where any of them changed is hashed again.
#[derive(Debug)]
pub struct FingerprintMemo {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, MemoEntry>>,
    dirty: Mutex<bool>,
}

impl FingerprintMemo {
    /// Loads the memo at `path`; a missing or unreadable memo starts empty (it is only a memo).
    pub fn load(path: PathBuf) -> Self {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FingerprintMemo { path, entries: Mutex::new(entries), dirty: Mutex::new(false) }
    }

    /// The content digest of `file`, from the memo when its size and mtime are unchanged.
    pub fn digest(&self, file: &Path) -> Result<String, CacheError> {
        let canonical = file.canonicalize().map_err(CacheError::io("cannot find", file))?;
        let meta = std::fs::metadata(&canonical).map_err(CacheError::io("cannot stat", file))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let (ctime_ns, inode) = change_stamp(&meta);
        let name = canonical.to_string_lossy().into_owned();
        if let Some(hit) = self.lock_entries().get(&name) {
            let same_change = ctime_ns.is_none() || (hit.ctime_ns == ctime_ns && hit.inode == inode);
            if hit.size == meta.len() && hit.mtime_ns == mtime_ns && same_change {
                return Ok(hit.digest.clone());
            }
        }
        let digest = hash_file(&canonical)?;
        let entry = MemoEntry { size: meta.len(), mtime_ns, ctime_ns, inode, digest: digest.clone() };
        self.lock_entries().insert(name, entry);
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(digest)
    }

    /// Writes the memo back if it changed (atomically: temporary file, then rename).
    pub fn save(&self) -> Result<(), CacheError> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !*dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&*self.lock_entries()).expect("memo serialises");
        let tmp = self.path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(CacheError::io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(CacheError::io("cannot rename into", &self.path))?;
        *dirty = false;
        Ok(())
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemoEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_rehashes_only_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, b"hello").unwrap();
        let memo = FingerprintMemo::load(dir.path().join("memo.json"));
        let first = memo.digest(&file).unwrap();
        assert_eq!(first, blake3::hash(b"hello").to_hex().to_string());
        memo.save().unwrap();

        let reloaded = FingerprintMemo::load(dir.path().join("memo.json"));
        assert_eq!(reloaded.digest(&file).unwrap(), first);
        std::fs::write(&file, b"hello, world").unwrap();
        let changed = reloaded.digest(&file).unwrap();
        assert_eq!(changed, blake3::hash(b"hello, world").to_hex().to_string());
    }

    /// An edit in place that keeps the size and restores the mtime is still seen (issue 12).
    #[cfg(unix)]
    #[test]
    fn an_edit_with_size_and_mtime_restored_is_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, b"hello").unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let memo = FingerprintMemo::load(dir.path().join("memo.json"));
        assert_eq!(memo.digest(&file).unwrap(), blake3::hash(b"hello").to_hex().to_string());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"jello").unwrap();
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
        assert_eq!(memo.digest(&file).unwrap(), blake3::hash(b"jello").to_hex().to_string());
    }
}
