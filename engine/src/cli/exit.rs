//! Exit statuses: 0 success; 1 a stage failed (or `check` found an invalid recipe, or `show`
//! a stage not computed yet); otherwise the [`ErrorClass`] of the error (2 usage or recipe,
//! 3 data, 4 device, 5 cache, 6 other I/O, 70 internal).
use crate::error::{remote_error_class, stage_error_class, EngineError, ErrorClass};
use std::process::ExitCode;

/// How a command that ran to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    /// The command did its work and the answer is "no": a stage failed, a recipe is invalid.
    Failure,
}

impl Status {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Status::Success => ExitCode::SUCCESS,
            Status::Failure => ExitCode::from(1),
        }
    }
}

/// The class of an error: the first typed error in its chain decides; a plain message from the
/// command line itself is a usage error.
pub fn class_of(error: &anyhow::Error) -> ErrorClass {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return e.class();
        }
        if cause.downcast_ref::<cache::CacheError>().is_some() {
            return ErrorClass::Cache;
        }
        if let Some(e) = cause.downcast_ref::<cache::remote::RemoteError>() {
            return remote_error_class(e);
        }
        if let Some(e) = cause.downcast_ref::<stages::StageError>() {
            return stage_error_class(e);
        }
        if cause.downcast_ref::<stages::device::DeviceError>().is_some() {
            return ErrorClass::Device;
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return ErrorClass::Io;
        }
    }
    ErrorClass::Usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_first_typed_error_in_the_chain_decides() {
        let cache = cache::CacheError::Corrupt { key: "k".into(), detail: "d".into() };
        let error = anyhow::Error::new(cache).context("cannot open the cache");
        assert_eq!(class_of(&error), ErrorClass::Cache);
        let io: anyhow::Result<()> =
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)).context("cannot read `x`");
        assert_eq!(class_of(&io.unwrap_err()), ErrorClass::Io);
        assert_eq!(class_of(&anyhow::anyhow!("--only x: no such stage")), ErrorClass::Usage);
        let device = stages::device::DeviceError::NoCudaSupport { ordinal: 0 };
        assert_eq!(class_of(&anyhow::Error::new(device)), ErrorClass::Device);
        // A remote's error, however it travels, is a cache error; a malformed address usage.
        let remote = cache::remote::Remote::open("s3:/lab/x").unwrap_err();
        assert_eq!(class_of(&anyhow::Error::new(remote)), ErrorClass::Usage);
        let open = cache::remote::RemoteError::Open { url: "u".into(), message: "m".into() };
        assert_eq!(class_of(&anyhow::Error::new(open).context("gc")), ErrorClass::Cache);
    }
}
