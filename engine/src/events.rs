//! What the scheduler tells as it goes: how each instance ended ([`Outcome`]), and the
//! [`Reporter`] that hears of it (the command line prints it; executors use its progress).
use crate::plan::Instance;
use cache::{CacheKey, Entry};
use stages::Progress;

/// How one instance ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Found in the cache (`waited`: computed meanwhile by a concurrent run).
    Reused {
        entry: Box<Entry>,
        waited: bool,
    },
    Computed {
        entry: Box<Entry>,
        seconds: f64,
    },
    /// Downloaded from the remote (`run --remote`) instead of computed.
    Pulled {
        entry: Box<Entry>,
        bytes: u64,
        seconds: f64,
    },
    Failed {
        message: String,
    },
    Skipped {
        because: String,
    },
}

impl Outcome {
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Outcome::Reused { entry, .. }
            | Outcome::Computed { entry, .. }
            | Outcome::Pulled { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// Receives the scheduler's events; the command line prints them.
pub trait Reporter: Sync {
    fn started(&self, instance: &Instance, key: &CacheKey);
    /// Another process holds the key's lock: this run waits for its result.
    fn waiting(&self, instance: &Instance);
    fn finished(&self, instance: &Instance, outcome: &Outcome);
    fn warn(&self, message: &str);
    /// Where the stage's own progress goes.
    fn progress<'a>(&'a self, instance: &'a Instance) -> Box<dyn Progress + 'a>;
    /// An executor's job for `instance` changed (`what`: "submitted", "running on node7", …).
    fn job(&self, instance: &Instance, job: &str, what: &str) {
        let _ = (instance, job, what);
    }
}
