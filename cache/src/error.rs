//! The cache's error type.
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file system operation failed.
    #[error("{action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A manifest or ref could not be parsed.
    #[error("cannot parse `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    /// An entry's outputs no longer match the digests recorded when it was committed.
    #[error("cache entry {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
}

impl CacheError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CacheError::Io { action, path, source }
    }
}
