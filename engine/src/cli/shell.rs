//! The one place that prints: status lines on stderr (verb right-aligned in 12 columns, as
//! cargo does), progress bars when stderr is a terminal, plain lines otherwise, JSON events on
//! stdout with `--json`.
use crate::plan::Instance;
use crate::run::{Outcome, Reporter};
use cache::CacheKey;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stages::Progress;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Normal,
    Quiet,
}

pub struct Shell {
    verbosity: Verbosity,
    json: bool,
    terminal: bool,
    bars: MultiProgress,
}

impl Shell {
    pub fn new(verbosity: Verbosity, json: bool) -> Shell {
        let terminal = std::io::stderr().is_terminal() && verbosity == Verbosity::Normal;
        let bars = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        });
        Shell { verbosity, json, terminal, bars }
    }

    /// `{verb:>12} {message}` on stderr, the verb in bold green on a terminal.
    pub fn status(&self, verb: &str, message: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let verb = if self.terminal { format!("\x1b[1;32m{verb:>12}\x1b[0m") } else { format!("{verb:>12}") };
        self.line(&format!("{verb} {message}"));
    }

    pub fn warn(&self, message: &str) {
        let label = if self.terminal { "\x1b[1;33mwarning\x1b[0m" } else { "warning" };
        self.line(&format!("{label}: {message}"));
    }

    pub fn error(&self, message: &str) {
        let label = if std::io::stderr().is_terminal() { "\x1b[1;31merror\x1b[0m" } else { "error" };
        self.line(&format!("{label}: {message}"));
    }

    /// A line on stderr that does not tear the progress bars.
    fn line(&self, text: &str) {
        if self.terminal {
            let _ = self.bars.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// One JSON event on stdout (with `--json`).
    pub fn event(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        }
    }
}

impl Reporter for Shell {
    fn started(&self, instance: &Instance, key: &CacheKey) {
        self.status("Running", &format!("{} ({})", instance.label, key.short()));
        self.event(serde_json::json!({"event": "started", "stage": instance.id, "key": key.as_str()}));
    }

    fn waiting(&self, instance: &Instance) {
        self.status("Waiting", &format!("for another run computing {}", instance.label));
    }

    fn finished(&self, instance: &Instance, outcome: &Outcome) {
        let id = &instance.id;
        match outcome {
            Outcome::Reused { entry, waited } => {
                let how = if *waited { "computed by a concurrent run" } else { "cached" };
                self.status("Reused", &format!("{} ({how}, {})", instance.label, entry.key.short()));
                self.event(serde_json::json!({"event": "reused", "stage": id, "key": entry.key.as_str(), "outputs": entry.out_dir()}));
            }
            Outcome::Computed { entry, seconds } => {
                self.status("Finished", &format!("{} in {}", instance.label, duration(*seconds)));
                self.event(serde_json::json!({"event": "finished", "stage": id, "key": entry.key.as_str(), "seconds": seconds, "outputs": entry.out_dir()}));
            }
            Outcome::Failed { message } => {
                self.error(&format!("stage `{}` failed: {message}", instance.label));
                self.event(serde_json::json!({"event": "failed", "stage": id, "error": message}));
            }
            Outcome::Skipped { because } => {
                self.status("Skipped", &format!("{}: {because}", instance.label));
                self.event(serde_json::json!({"event": "skipped", "stage": id, "because": because}));
            }
        }
    }

    fn warn(&self, message: &str) {
        Shell::warn(self, message);
    }

    fn progress<'a>(&'a self, instance: &'a Instance) -> Box<dyn Progress + 'a> {
        Box::new(StageProgress { shell: self, label: &instance.label })
    }
}

/// A stage's progress: bars on a terminal, its summaries as plain lines.
struct StageProgress<'a> {
    shell: &'a Shell,
    label: &'a str,
}

impl Progress for StageProgress<'_> {
    fn bar<'b>(&'b self, label: &str, total: u64, unit: &str) -> Box<dyn stages::ProgressBar + 'b> {
        if !self.shell.terminal {
            return Box::new(PlainBar { shell: self.shell, prefix: self.label.to_string() });
        }
        let bar = self.shell.bars.add(ProgressBar::new(total));
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:>12.cyan.bold}} {label} [{{bar:25}}] {{pos}}/{{len}} {unit} {{msg}} (ETA {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(self.label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Box::new(TerminalBar { bar, shell: self.shell, prefix: self.label.to_string() })
    }

    fn info(&self, message: &str) {
        self.shell.status("", &format!("{}: {message}", self.label));
    }
}

struct TerminalBar<'a> {
    bar: ProgressBar,
    shell: &'a Shell,
    prefix: String,
}

impl stages::ProgressBar for TerminalBar<'_> {
    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
    fn finish(&self, summary: &str) {
        self.bar.finish_and_clear();
        self.shell.bars.remove(&self.bar);
        if !summary.is_empty() {
            self.shell.status("", &format!("{}: {summary}", self.prefix));
        }
    }
}

impl Drop for TerminalBar<'_> {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
            self.shell.bars.remove(&self.bar);
        }
    }
}

struct PlainBar<'a> {
    shell: &'a Shell,
    prefix: String,
}

impl stages::ProgressBar for PlainBar<'_> {
    fn inc(&self, _n: u64) {}
    fn set_message(&self, _message: &str) {}
    fn finish(&self, summary: &str) {
        if !summary.is_empty() {
            self.shell.status("", &format!("{}: {summary}", self.prefix));
        }
    }
}

/// `850ms`, `12.3s`, `4m05s`.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{}m{:02}s", (seconds / 60.0) as u64, (seconds % 60.0) as u64)
    }
}
