//! The engine's errors, by what the user can do about them. Each [`ErrorClass`] has its own
//! exit status (README, "Exit status"); the OS cause of every I/O error is kept as its source.
use std::path::PathBuf;

/// The kind of failure, as the exit status tells it to scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad arguments, or a recipe that does not validate: exit status 2.
    Usage,
    /// A dataset that cannot be found, read or fetched: exit status 3.
    Data,
    /// The device the recipe asks for cannot be used: exit status 4.
    Device,
    /// The cache cannot be opened, read or written: exit status 5.
    Cache,
    /// Another file cannot be read or written (score files, reports, downloads): exit status 6.
    Io,
    /// A bug in pipeline: exit status 70 (`EX_SOFTWARE`).
    Internal,
}

impl ErrorClass {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Usage => 2,
            ErrorClass::Data => 3,
            ErrorClass::Device => 4,
            ErrorClass::Cache => 5,
            ErrorClass::Io => 6,
            ErrorClass::Internal => 70,
        }
    }
}

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The command line names something that does not exist, or combines options wrongly.
    #[error("{0}")]
    Usage(String),
    /// A recipe is invalid; its diagnostics have been printed with their positions.
    #[error("`{}` has {count} error{}", path.display(), if *count == 1 { "" } else { "s" })]
    Recipe { path: PathBuf, count: usize },
    /// A dataset cannot be read, fingerprinted or fetched.
    #[error("dataset `{name}`: {message}")]
    Dataset { name: String, message: String },
    /// The device the recipe asks for cannot be used.
    #[error(transparent)]
    Device(#[from] stages::device::DeviceError),
    /// The cache cannot be opened, read or written.
    #[error("the cache at `{}` cannot be used", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: cache::CacheError,
    },
    /// A file named on the command line, or written by the command, cannot be used.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dataset could not be downloaded, checked or unpacked.
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// The remote cannot be opened or asked.
    #[error(transparent)]
    Remote(#[from] cache::remote::RemoteError),
    /// The remote could not answer, so the command stopped rather than act on a guess.
    #[error("{0}")]
    RemoteUnreachable(String),
    /// The project file that names the default remote is unreadable or invalid.
    #[error(transparent)]
    RemoteConfig(#[from] crate::remote::RemoteConfigError),
    /// Work the command does itself (a benchmark, a throughput measurement) failed.
    #[error(transparent)]
    Stage(#[from] stages::StageError),
}

impl EngineError {
    pub fn class(&self) -> ErrorClass {
        match self {
            EngineError::Usage(_) | EngineError::Recipe { .. } => ErrorClass::Usage,
            EngineError::Dataset { .. } => ErrorClass::Data,
            EngineError::Fetch(crate::fetch::FetchError::Io { .. }) => ErrorClass::Io,
            // A set with no archive to download: the request, not the data, is at fault.
            EngineError::Fetch(crate::fetch::FetchError::Manual { .. }) => ErrorClass::Usage,
            EngineError::Fetch(_) => ErrorClass::Data,
            EngineError::Device(_) => ErrorClass::Device,
            EngineError::Remote(e) => remote_error_class(e),
            EngineError::Cache { .. } | EngineError::RemoteUnreachable(_) => ErrorClass::Cache,
            EngineError::RemoteConfig(_) => ErrorClass::Usage,
            EngineError::Io { .. } => ErrorClass::Io,
            EngineError::Stage(e) => stage_error_class(e),
        }
    }

    /// An [`EngineError::Io`] maker for `map_err`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io { action, path, source }
    }
}

/// The class of a remote's error: a malformed address is a usage error (nothing was asked);
/// everything else (unreachable, refused, too slow, no such bucket, the local side) is a cache
/// error, exit status 5.
pub fn remote_error_class(error: &cache::remote::RemoteError) -> ErrorClass {
    match error {
        cache::remote::RemoteError::Address { .. } => ErrorClass::Usage,
        _ => ErrorClass::Cache,
    }
}

/// The class of a stage's error: a file that cannot be read is I/O, one that is not what it
/// should be is data, other problems the user can fix are usage, the rest internal.
pub fn stage_error_class(error: &stages::StageError) -> ErrorClass {
    match error {
        stages::StageError::Io { .. } => ErrorClass::Io,
        stages::StageError::Format { .. } => ErrorClass::Data,
        other => match other.fault() {
            stages::Fault::User => ErrorClass::Usage,
            stages::Fault::Internal => ErrorClass::Internal,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_exit_status() {
        let classes = [
            ErrorClass::Usage,
            ErrorClass::Data,
            ErrorClass::Device,
            ErrorClass::Cache,
            ErrorClass::Io,
            ErrorClass::Internal,
        ];
        let codes: std::collections::BTreeSet<u8> = classes.iter().map(|c| c.exit_code()).collect();
        assert_eq!(codes.len(), classes.len());
        assert!(!codes.contains(&0) && !codes.contains(&1), "0 is success, 1 a failed stage");
    }

    #[test]
    fn io_errors_keep_their_os_cause() {
        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        let error = EngineError::io("read", "x.npy")(source);
        assert_eq!(error.class(), ErrorClass::Io);
        assert!(std::error::Error::source(&error).is_some());
        assert_eq!(error.to_string(), "cannot read `x.npy`");
    }
}
