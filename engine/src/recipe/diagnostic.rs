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

/// The most characters of a source line a rendered diagnostic shows.
const WINDOW: usize = 120;

/// How a diagnostic is shown: an error stops the command, a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// A recipe's text, with what is needed to turn byte offsets into lines and columns.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, self.text[line_start..offset].chars().count() + 1)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }
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
    #[serde(skip)]
    source_line: String,
}

impl Diagnostic {
    pub fn new(source: &Source, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, column) = source.line_col(span.start);
        Diagnostic {
            file: source.path.clone(),
            line,
            column,
            message: message.into(),
            help: None,
            source_line: source.line_text(line).to_string(),
            span,
        }
    }

    /// An error about a file as a whole (no position).
    pub fn whole_file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
            help: None,
            span: 0..0,
            source_line: String::new(),
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
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
        // A window of the line around the column: a 10 MB line prints as 120 characters.
        let chars: Vec<char> = self.source_line.chars().collect();
        let first = (self.column - 1).saturating_sub(WINDOW / 2).min(chars.len());
        let last = (first + WINDOW).min(chars.len());
        let mut shown: String = chars[first..last].iter().collect();
        let mut caret_at = self.column - 1 - first;
        if first > 0 {
            shown.insert(0, '…');
            caret_at += 1;
        }
        if last < chars.len() {
            shown.push('…');
        }
        let width = self.span.len().max(1);
        let caret_width = width.min(last.saturating_sub(self.column - 1)).max(1);
        let mut out = format!(
            "{label}: {}\n{pad}--> {}:{}:{}\n{pad} |\n{number} | {}\n{pad} | {}{}",
            self.message,
            self.file.display(),
            self.line,
            self.column,
            shown,
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

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
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
        let source = Source { path: "r.toml".into(), text: "[stages.a]\nlrr = 0.1\n".into() };
        let d = Diagnostic::new(&source, 11..14, "unknown key `lrr`").with_help("did you mean `lr`?");
        assert_eq!((d.line, d.column), (2, 1));
        assert_eq!(
            d.render(),
            "error: unknown key `lrr`\n --> r.toml:2:1\n  |\n2 | lrr = 0.1\n  | ^^^ did you mean `lr`?"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("lrr", ["lr", "epochs"]).as_deref(), Some("did you mean `lr`?"));
        assert_eq!(did_you_mean("epoch", ["lr", "epochs"]).as_deref(), Some("did you mean `epochs`?"));
        assert_eq!(did_you_mean("zzzzzz", ["lr", "epochs"]), None);
    }
}
