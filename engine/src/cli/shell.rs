//! The one place that prints, for every command: status lines on stderr (verb right-aligned in
//! 12 columns, as cargo does; silenced by `--quiet`), warnings and errors, progress bars when
//! stderr is a terminal, a command's results on stdout as text, or as JSON with `--json`, and
//! colour as `--color` says.
use crate::events::{Outcome, Reporter};
use crate::plan::Instance;
use cache::CacheKey;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stages::Progress;
use std::io::IsTerminal;
use std::time::Duration;

/// How much goes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Normal,
    /// Only warnings and errors.
    Quiet,
}

/// Whether stderr gets ANSI colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stderr is a terminal and `NO_COLOR` is unset.
    Auto,
    Always,
    Never,
}

/// What a command prints its results as on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    /// One JSON value per result or event, nothing else on stdout.
    Json,
}

pub struct Shell {
    verbosity: Verbosity,
    format: Format,
    /// Progress bars are drawn (stderr is a terminal and not quiet).
    terminal: bool,
    color: bool,
    bars: MultiProgress,
    /// Set when a write to stdout failed (the reader went away).
    stdout_closed: std::sync::atomic::AtomicBool,
}

impl Shell {
    pub fn new(verbosity: Verbosity, color: ColorChoice, format: Format) -> Shell {
        let stderr_terminal = std::io::stderr().is_terminal();
        let terminal = stderr_terminal && verbosity == Verbosity::Normal;
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stderr_terminal && std::env::var_os("NO_COLOR").is_none(),
        };
        let bars = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        });
        Shell { verbosity, format, terminal, color, bars, stdout_closed: Default::default() }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// `{verb:>12} {message}` on stderr, the verb in bold green with colour.
    pub fn status(&self, verb: &str, message: &str) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        let verb = self.paint("1;32", &format!("{verb:>12}"));
        self.line(&format!("{verb} {message}"));
    }

    pub fn warn(&self, message: &str) {
        self.line(&format!("{}: {message}", self.paint("1;33", "warning")));
    }

    pub fn error(&self, message: &str) {
        self.line(&format!("{}: {message}", self.paint("1;31", "error")));
    }

    /// A rendered recipe diagnostic (already labelled `error:`) and a blank line, on stderr.
    pub fn diagnostic(&self, rendered: &str) {
        self.line(&format!("{rendered}\n"));
    }

    /// Whether only warnings and errors go to stderr (no progress either).
    pub fn quiet(&self) -> bool {
        self.verbosity == Verbosity::Quiet
    }

    /// Whether results go out as JSON.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// A line of a command's text result on stdout (nothing in JSON mode).
    pub fn out(&self, text: &str) {
        if self.format == Format::Text {
            self.stdout_line(text);
        }
    }

    /// A command's JSON result on stdout (nothing in text mode).
    pub fn emit(&self, value: serde_json::Value) {
        if self.format == Format::Json {
            self.stdout_line(&value.to_string());
        }
    }

    /// Writes a line to stdout. Once stdout is closed (`pipeline status R | head -1`), further
    /// output is dropped instead of panicking, from whichever thread writes it.
    fn stdout_line(&self, text: &str) {
        use std::io::Write;
        if self.stdout_closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{text}").and_then(|_| stdout.flush()).is_err() {
            self.stdout_closed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A line on stderr that does not tear the progress bars.
    fn line(&self, text: &str) {
        if self.terminal {
            let _ = self.bars.println(text);
        } else {
            use std::io::Write;
            // A closed stderr loses the message; it must not panic.
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }

    /// One JSON event on stdout (with `--json`).
    pub fn event(&self, value: serde_json::Value) {
        self.emit(value);
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
                self.event(serde_json::json!({"event": "reused", "stage": id, "key": entry.key.as_str(), "outputs": entry.out_dir(), "waited": waited}));
            }
            Outcome::Computed { entry, seconds } => {
                self.status("Finished", &format!("{} in {}", instance.label, duration(*seconds)));
                self.event(serde_json::json!({"event": "finished", "stage": id, "key": entry.key.as_str(), "seconds": seconds, "outputs": entry.out_dir()}));
            }
            Outcome::Pulled { entry, bytes, seconds } => {
                self.status(
                    "Pulled",
                    &format!(
                        "{} ({}, {:.1} MB in {})",
                        instance.label,
                        entry.key.short(),
                        *bytes as f64 / 1e6,
                        duration(*seconds)
                    ),
                );
                self.event(serde_json::json!({"event": "pulled", "stage": id, "key": entry.key.as_str(), "bytes": bytes, "seconds": seconds, "outputs": entry.out_dir()}));
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

    fn job(&self, instance: &Instance, job: &str, what: &str) {
        self.status("Slurm", &format!("{}: job {job} {what}", instance.label));
        self.event(serde_json::json!({"event": "job", "stage": instance.id, "job": job, "state": what}));
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

/// A push's or pull's progress: one bar in bytes with rate and ETA on a terminal, nothing
/// otherwise (the command prints its summary).
pub struct TransferBar {
    bar: ProgressBar,
}

impl Shell {
    /// A bar for a transfer, labelled `verb` (`Pushing`, `Pulling`).
    pub fn transfer_bar(&self, verb: &str) -> TransferBar {
        let bar = if self.terminal { self.bars.add(ProgressBar::new(0)) } else { ProgressBar::hidden() };
        let style = ProgressStyle::with_template(
            "{prefix:>12.cyan.bold} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} (ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(verb.to_string());
        TransferBar { bar }
    }
}

impl cache::remote::TransferProgress for TransferBar {
    fn planned(&self, bytes: u64) {
        self.bar.inc_length(bytes);
    }
    fn moved(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn waiting(&self, why: &str) {
        let line = format!("{:>12} {why}", "Waiting");
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Drop for TransferBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
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
