//! Errors located in a recipe file, rendered like a compiler's:
//!
//! ```text
//! error: unknown key `lrr` in stage `base`
//!   --> recipes/x.toml:12:1
//!    |
//! 12 | lrr = 0.1
//!    | ^^^ did you mean `lr`?
//! ```
use serde::Serialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The most characters of a source line a rendered diagnostic shows.
const WINDOW: usize = 120;
/// The most characters of a message kept: a message quoting a multi-megabyte value is cut in
/// the middle, so no error repeats a whole string.
const MAX_MESSAGE: usize = 1_000;
/// The most diagnostics one recipe reports; the count of the rest is given instead, so a file
/// of 100,000 bad lines prints 50 errors and a total, not 100,000 errors.
pub const MAX_DIAGNOSTICS: usize = 50;

/// How a diagnostic is shown: an error stops the command, a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A recipe's text, with what is needed to turn byte offsets into lines and columns: the
/// offsets where lines start, found once (the file is scanned once, however many errors it has).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    line_starts: OnceLock<Vec<usize>>,
}

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Source {
        Source { path: path.into(), text: text.into(), line_starts: OnceLock::new() }
    }

    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            std::iter::once(0).chain(self.text.match_indices('\n').map(|(i, _)| i + 1)).collect()
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let starts = self.line_starts();
        let line = starts.partition_point(|&start| start <= offset);
        let line_start = starts[line - 1];
        (line, self.text[line_start..offset].chars().count() + 1)
    }

    /// The text of 1-based `line`, without its line break.
    fn line_text(&self, line: usize) -> &str {
        let starts = self.line_starts();
        let Some(&start) = starts.get(line.wrapping_sub(1)) else { return "" };
        let end = starts.get(line).map_or(self.text.len(), |&next| next - 1);
        self.text[start..end].strip_suffix('\r').unwrap_or(&self.text[start..end])
    }
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `text` cut to at most `max` characters, the middle replaced by the count of what was left out.
pub fn elide(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let keep = max / 2;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(count - keep).collect();
    format!("{head}…({} characters left out)…{tail}", count - 2 * keep)
}

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// A hint shown under the caret ("did you mean `lr`?", "expected …").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip)]
    pub span: Range<usize>,
    /// At most [`WINDOW`] characters of the line around the column, with `…` where cut.
    #[serde(skip)]
    window: String,
    /// Where the caret goes in `window`, in characters, and how many carets.
    #[serde(skip)]
    caret: (usize, usize),
    /// For the last diagnostic of a bounded list: how many errors it stands for.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_shown: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How many errors `diagnostics` reports, those left out of a bounded list included.
pub fn error_count(diagnostics: &[Diagnostic]) -> usize {
    diagnostics.iter().map(|d| d.not_shown.max(1)).sum()
}

impl Diagnostic {
    pub fn new(source: &Source, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = source.line_col(span.start);
        // Only a window of the line is kept: 20,000 errors on one 129 KB line hold 20,000
        // short windows, not 20,000 copies of the line.
        let text = source.line_text(line);
        let start_byte =
            text.char_indices().nth((column - 1).saturating_sub(WINDOW / 2)).map_or(text.len(), |(i, _)| i);
        let first = text[..start_byte].chars().count();
        let shown: String = text[start_byte..].chars().take(WINDOW).collect();
        let cut_after = text.len() > start_byte + shown.len();
        let last = first + shown.chars().count();
        let mut caret_at = column - 1 - first.min(column - 1);
        let mut window = shown;
        if first > 0 {
            window.insert(0, '…');
            caret_at += 1;
        }
        if cut_after {
            window.push('…');
        }
        let caret_width = span.len().max(1).min(last.saturating_sub(column - 1)).max(1);
        Diagnostic {
            file: source.path.clone(),
            line,
            column,
            message: elide(&message.into(), MAX_MESSAGE),
            help: None,
            span,
            window,
            caret: (caret_at, caret_width),
            not_shown: 0,
        }
    }

    /// An error about a file as a whole (no position).
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: elide(&message.into(), MAX_MESSAGE),
            help: None,
            span: 0..0,
            window: String::new(),
            caret: (0, 0),
            not_shown: 0,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(elide(&help.into(), MAX_MESSAGE));
        self
    }

    /// The compiler-style text of this diagnostic (without a trailing newline).
    pub fn render(&self) -> String {
        self.render_as(Severity::Error)
    }

    /// The rendering with `warning:` or `error:` in front.
    pub fn render_as(&self, severity: Severity) -> String {
        let label = match severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            let mut out = format!("{label}: {}\n  --> {}", self.message, self.file.display());
            if let Some(help) = &self.help {
                out.push_str(&format!("\n  = help: {help}"));
            }
            return out;
        }
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        let (caret_at, caret_width) = self.caret;
        let mut out = format!(
            "{label}: {}\n{pad}--> {}:{}:{}\n{pad} |\n{number} | {}\n{pad} | {}{}",
            self.message,
            self.file.display(),
            self.line,
            self.column,
            self.window,
            " ".repeat(caret_at),
            "^".repeat(caret_width),
        );
        if let Some(help) = &self.help {
            out.push(' ');
            out.push_str(help);
        }
        out
    }
}

/// At most [`MAX_DIAGNOSTICS`] of `diagnostics`, sorted by position, and a last one giving the
/// count of those left out.
pub fn bounded(mut diagnostics: Vec<Diagnostic>, path: &Path) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.line, d.column));
    if diagnostics.len() > MAX_DIAGNOSTICS {
        let rest = diagnostics.len() - MAX_DIAGNOSTICS;
        diagnostics.truncate(MAX_DIAGNOSTICS);
        diagnostics.push(left_out(rest, path));
    }
    diagnostics
}

/// The last diagnostic of a bounded list: how many were left out.
pub fn left_out(rest: usize, path: &Path) -> Diagnostic {
    let mut summary = Diagnostic::whole_file(
        path,
        format!("{rest} more error{} not shown (the first {MAX_DIAGNOSTICS} are)", plural(rest)),
    );
    summary.not_shown = rest;
    summary
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    // A long word is no typo of a short name (and comparing it would cost its length squared).
    if word.len() > 64 {
        return None;
    }
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_line_column_and_caret() {
        let source = Source::new("r.toml", "[stages.a]\nlrr = 0.1\n");
        let d = Diagnostic::new(&source, 11..14, "unknown key `lrr`").with_help("did you mean `lr`?");
        assert_eq!((d.line, d.column), (2, 1));
        assert_eq!(
            d.render(),
            "error: unknown key `lrr`\n --> r.toml:2:1\n  |\n2 | lrr = 0.1\n  | ^^^ did you mean `lr`?"
        );
    }

    #[test]
    fn long_lines_and_messages_are_cut_and_lines_found_by_index() {
        let line = format!("key = \"{}\"", "x".repeat(10_000));
        let source = Source::new("r.toml", format!("a = 1\n{line}\r\nb = 2\n"));
        assert_eq!(source.line_col(0), (1, 1));
        assert_eq!(source.line_col(6 + 5000), (2, 5001));
        assert_eq!(source.line_text(2), line, "without its line break");
        assert_eq!(source.line_text(3), "b = 2");
        let d = Diagnostic::new(&source, 6 + 5000..6 + 5003, "x".repeat(50_000));
        let rendered = d.render();
        assert!(rendered.len() < 2_000, "{}", rendered.len());
        assert!(rendered.contains("…^^^") || rendered.contains("^^^"), "{rendered}");
        assert!(d.message.contains("characters left out"));
        assert_eq!(elide("short", 10), "short");
        let cut = bounded(vec![d; MAX_DIAGNOSTICS + 7], Path::new("r.toml"));
        assert_eq!(cut.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(error_count(&cut), MAX_DIAGNOSTICS + 7);
        assert!(cut[MAX_DIAGNOSTICS].message.starts_with("7 more errors not shown"));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("lrr", ["lr", "epochs"]).as_deref(), Some("did you mean `lr`?"));
        assert_eq!(did_you_mean("epoch", ["lr", "epochs"]).as_deref(), Some("did you mean `epochs`?"));
        assert_eq!(did_you_mean("zzzzzz", ["lr", "epochs"]), None);
    }
}
