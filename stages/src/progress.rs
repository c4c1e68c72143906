//! How stages report progress: through these traits, never by printing.

/// Receives progress from a running stage. The engine draws bars or prints lines.
pub trait Progress: Send + Sync {
    /// Starts a bounded piece of work (e.g. the batches of one epoch).
    fn bar<'a>(&'a self, label: &str, total: u64, unit: &str) -> Box<dyn ProgressBar + 'a>;
    /// A line worth keeping in the log (e.g. an epoch's summary).
    fn info(&self, message: &str);
}

/// One piece of work in progress.
pub trait ProgressBar {
    fn inc(&self, n: u64);
    fn set_message(&self, message: &str);
    /// Ends the bar; `summary` is kept as a log line.
    fn finish(&self, summary: &str);
}

/// Discards all progress (tests, library use).
pub struct NoProgress;

struct NoBar;

impl Progress for NoProgress {
    fn bar<'a>(&'a self, _label: &str, _total: u64, _unit: &str) -> Box<dyn ProgressBar + 'a> {
        Box::new(NoBar)
    }
    fn info(&self, _message: &str) {}
}

impl ProgressBar for NoBar {
    fn inc(&self, _n: u64) {}
    fn set_message(&self, _message: &str) {}
    fn finish(&self, _summary: &str) {}
}
