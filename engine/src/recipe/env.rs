//! `${VAR}` and `${VAR:-default}` in recipe strings, expanded from the environment — in the
//! values that name locations only (a dataset's `root`, the remote's `url`). A recipe is shared
//! in reviews and run on its readers' machines: a variable anywhere else (a report's title, a
//! stage parameter) would carry the reader's environment, secrets included, into outputs that
//! are then pushed, so it is refused where it is written.

/// The keys whose values name locations, where variables are expanded.
pub const LOCATION_KEYS: &[&str] = &["root", "url"];

/// Why a string cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("unclosed `${{` in \"{text}\"")]
    Unclosed { text: String },
    #[error("`${{{inner}}}` is not a variable reference (expected ${{NAME}} or ${{NAME:-default}})")]
    NotAReference { inner: String },
    #[error("environment variable `{name}` is not set (write ${{{name}:-default}} for a fallback)")]
    Unset { name: String },
    #[error(
        "`${{…}}` in `{key}`: environment variables are expanded only in locations ({}), so that a \
         recipe from someone else cannot carry your environment into its outputs; write the value itself",
        LOCATION_KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    )]
    NotALocation { key: String },
}

/// Expands `text`, written under `key`, if `key` names a location; elsewhere a `${` is refused.
pub fn expand_at(key: &str, text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    if LOCATION_KEYS.contains(&key) {
        expand(text, lookup)
    } else if text.contains("${") {
        Err(EnvError::NotALocation { key: key.to_string() })
    } else {
        Ok(text.to_string())
    }
}

/// Expands every `${…}` in `text` using `lookup`; an unset variable without a default is an
/// error naming it.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| EnvError::Unclosed { text: text.to_string() })?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvError::NotAReference { inner: inner.to_string() });
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(EnvError::Unset { name: name.to_string() }),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        (name == "DATA").then(|| "/data".to_string())
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand("${DATA}/mnist", &env).unwrap(), "/data/mnist");
        assert_eq!(expand("${NOPE:-data}/x", &env).unwrap(), "data/x");
        assert_eq!(expand("${DATA:-data}", &env).unwrap(), "/data");
        assert_eq!(expand("plain $HOME", &env).unwrap(), "plain $HOME");
        assert!(expand("${NOPE}", &env).unwrap_err().to_string().contains("`NOPE` is not set"));
        assert!(expand("${DATA", &env).unwrap_err().to_string().contains("unclosed"));
    }

    #[test]
    fn only_locations_are_expanded() {
        use super::expand_at;
        assert_eq!(expand_at("root", "${DATA}/mnist", &env).unwrap(), "/data/mnist");
        assert_eq!(expand_at("url", "${DATA}", &env).unwrap(), "/data");
        assert_eq!(expand_at("title", "plain", &env).unwrap(), "plain");
        let refused = expand_at("title", "run by ${AWS_SECRET_ACCESS_KEY}", &|_| Some("secret".into()));
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("`title`") && message.contains("only in locations"), "{message}");
        assert!(!message.contains("secret"));
    }
}
