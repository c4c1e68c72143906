//! A recipe's TOML as a tree of JSON values that remembers where each key and value was
//! written, so every later error can point at its line and column.
use super::diagnostic::{left_out, Diagnostic, Source, MAX_DIAGNOSTICS};
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct Node {
    pub span: Range<usize>,
    pub value: NodeValue,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Table(Vec<Entry>),
    Array(Vec<Node>),
    Scalar(serde_json::Value),
}

/// One key of a table, where the key was written, and its value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub node: Node,
}

impl Node {
    /// Parses TOML text; syntax errors (all of them, where the parser can recover) come back
    /// as diagnostics. Strings go through `expand` with the key they are written under (it
    /// expands `${VAR}` where the key names a location); values that cannot be
    /// expanded or represented are reported in the second element, and validation goes on.
    pub fn parse(
        source: &Source,
        expand: &dyn Fn(&str, &str) -> Result<String, super::env::EnvError>,
    ) -> Result<(Node, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (table, errors) = DeTable::parse_recoverable(&source.text);
        if !errors.is_empty() {
            // The first errors only: one bad 129 KB line can give 20,000 of them.
            let mut shown: Vec<Diagnostic> = errors
                .iter()
                .take(MAX_DIAGNOSTICS)
                .map(|e| {
                    let span = e.span().unwrap_or(0..0);
                    Diagnostic::new(source, span, format!("invalid TOML: {}", e.message().trim()))
                })
                .collect();
            if errors.len() > MAX_DIAGNOSTICS {
                shown.push(left_out(errors.len() - MAX_DIAGNOSTICS, &source.path));
            }
            return Err(shown);
        }
        let mut diagnostics = Vec::new();
        let span = table.span();
        let node = convert_table(table.into_inner(), span, source, expand, &mut diagnostics);
        Ok((node, diagnostics))
    }

    /// An error for each key of this table that is not in `known`, with "did you mean" or the
    /// list of what is expected; `what` names the table in the message.
    pub fn unknown_keys(&self, known: &[&str], what: &str, source: &Source) -> Vec<Diagnostic> {
        self.entries()
            .iter()
            .filter(|e| !known.contains(&e.key.as_str()))
            .map(|entry| {
                let help = super::diagnostic::did_you_mean(&entry.key, known.iter().copied())
                    .unwrap_or_else(|| format!("expected one of: {}", known.join(", ")));
                Diagnostic::new(
                    source,
                    entry.key_span.clone(),
                    format!("unknown key `{}` in {what}", entry.key),
                )
                .with_help(help)
            })
            .collect()
    }

    pub fn entries(&self) -> &[Entry] {
        match &self.value {
            NodeValue::Table(entries) => entries,
            _ => &[],
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries().iter().find(|e| e.key == key)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar(serde_json::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The TOML type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Table(_) => "a table",
            NodeValue::Array(_) => "an array",
            NodeValue::Scalar(serde_json::Value::String(_)) => "a string",
            NodeValue::Scalar(serde_json::Value::Bool(_)) => "a boolean",
            NodeValue::Scalar(serde_json::Value::Number(n)) if n.is_f64() => "a float",
            NodeValue::Scalar(serde_json::Value::Number(_)) => "an integer",
            NodeValue::Scalar(_) => "a value",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            NodeValue::Table(entries) => {
                serde_json::Value::Object(entries.iter().map(|e| (e.key.clone(), e.node.to_json())).collect())
            }
            NodeValue::Array(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Scalar(value) => value.clone(),
        }
    }

    /// Where the value at `path` (keys and array indices) was written: the deepest part of
    /// the path that exists. For a missing key, the span of its table.
    pub fn locate(&self, path: &[String]) -> Range<usize> {
        let Some((first, rest)) = path.split_first() else { return self.span.clone() };
        match &self.value {
            NodeValue::Table(entries) => match entries.iter().find(|e| &e.key == first) {
                Some(entry) if rest.is_empty() => entry.node.span.clone(),
                Some(entry) => entry.node.locate(rest),
                None => self.span.clone(),
            },
            NodeValue::Array(items) => match first.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(item) => item.locate(rest),
                None => self.span.clone(),
            },
            NodeValue::Scalar(_) => self.span.clone(),
        }
    }
}

fn convert_table(
    table: DeTable<'_>,
    span: Range<usize>,
    source: &Source,
    expand: &dyn Fn(&str, &str) -> Result<String, super::env::EnvError>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Node {
    let mut entries: Vec<Entry> = table
        .into_iter()
        .map(|(key, value)| {
            let key_span = key.span();
            let key = key.into_inner().into_owned();
            let node = convert(value, &key, source, expand, diagnostics);
            Entry { key, key_span, node }
        })
        .collect();
    // The parser's map is sorted by key; keep the order the file declares.
    entries.sort_by_key(|e| e.key_span.start);
    Node { span, value: NodeValue::Table(entries) }
}

/// `key`: the key the value is written under (a list's items are under the list's key).
fn convert(
    value: Spanned<DeValue<'_>>,
    key: &str,
    source: &Source,
    expand: &dyn Fn(&str, &str) -> Result<String, super::env::EnvError>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Node {
    let span = value.span();
    let scalar = |v: serde_json::Value| NodeValue::Scalar(v);
    let value = match value.into_inner() {
        DeValue::String(s) => match expand(key, &s) {
            Ok(expanded) => scalar(serde_json::Value::String(expanded)),
            Err(error) => {
                diagnostics.push(Diagnostic::new(source, span.clone(), error.to_string()));
                scalar(serde_json::Value::String(s.into_owned()))
            }
        },
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => scalar(n.into()),
            Err(_) => {
                diagnostics.push(Diagnostic::new(source, span.clone(), "integer out of range"));
                scalar(serde_json::Value::Null)
            }
        },
        DeValue::Float(f) => match f.as_str().parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            Some(n) => scalar(serde_json::Value::Number(n)),
            None => {
                diagnostics.push(Diagnostic::new(
                    source,
                    span.clone(),
                    "only finite numbers are allowed here",
                ));
                scalar(serde_json::Value::Null)
            }
        },
        DeValue::Boolean(b) => scalar(b.into()),
        DeValue::Datetime(d) => scalar(d.to_string().into()),
        DeValue::Array(items) => NodeValue::Array(
            items.into_iter().map(|item| convert(item, key, source, expand, diagnostics)).collect(),
        ),
        DeValue::Table(table) => return convert_table(table, span, source, expand, diagnostics),
    };
    Node { span, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Node, Vec<Diagnostic>), Vec<Diagnostic>> {
        let source = Source::new("t.toml", text);
        Node::parse(&source, &|_, s| Ok(s.to_string()))
    }

    #[test]
    fn keeps_spans_and_converts_to_json() {
        let text = "[stages.a]\nkind = \"train\"\nood = [\"x\", \"y\"]\nlr = 0.5\n";
        let (root, _) = parse(text).unwrap();
        let json = root.to_json();
        assert_eq!(json["stages"]["a"]["ood"][1], "y");
        assert_eq!(json["stages"]["a"]["lr"], 0.5);
        let stage = &root.get("stages").unwrap().node.get("a").unwrap().node;
        let span = stage.locate(&["ood".into(), "1".into()]);
        assert_eq!(&text[span], "\"y\"");
        let kind = stage.get("kind").unwrap();
        assert_eq!(&text[kind.key_span.clone()], "kind");
        let keys: Vec<&str> = stage.entries().iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["kind", "ood", "lr"], "file order is kept");
    }

    #[test]
    fn reports_syntax_errors_with_positions() {
        let errors = parse("[a]\nx = \n").unwrap_err();
        assert_eq!(errors[0].line, 2);
    }
}
