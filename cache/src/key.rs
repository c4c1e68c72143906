//! The cache key: every input of a computation as one struct, hashed canonically.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever the encoding of [`KeyInputs`] changes, so old entries are never confused
/// with new ones.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// Everything a computation's result depends on. Maps are sorted, so the encoding is canonical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub format: u32,
    pub kind: String,
    pub version: u32,
    /// Parameters with defaults filled in; `serde_json` keeps object keys sorted.
    pub params: serde_json::Value,
    pub seed: u64,
    /// Upstream entry name → its output digest.
    pub upstream: BTreeMap<String, String>,
    /// External input name → its content fingerprint.
    pub inputs: BTreeMap<String, String>,
}

/// A blake3 hash of [`KeyInputs`], as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CacheKey(String);

impl KeyInputs {
    /// The key of these inputs: blake3 over their canonical JSON encoding.
    pub fn key(&self) -> CacheKey {
        let encoded = serde_json::to_vec(self).expect("KeyInputs always serialises");
        CacheKey(blake3::hash(&encoded).to_hex().to_string())
    }

    /// Human-readable differences from `old`, one line per changed field, e.g.
    /// `param lr: 0.1 → 0.05` or `upstream base: output changed`.
    pub fn diff(&self, old: &KeyInputs) -> Vec<String> {
        let mut changes = Vec::new();
        if self.format != old.format {
            changes.push(format!("cache format: {} → {}", old.format, self.format));
        }
        if self.kind != old.kind {
            changes.push(format!("kind: {} → {}", old.kind, self.kind));
        }
        if self.version != old.version {
            changes.push(format!("implementation version: {} → {}", old.version, self.version));
        }
        diff_json("param ", &old.params, &self.params, &mut changes);
        if self.seed != old.seed {
            changes.push(format!("seed: {} → {}", old.seed, self.seed));
        }
        diff_maps("upstream", "output changed", &old.upstream, &self.upstream, &mut changes);
        diff_maps("input", "content changed", &old.inputs, &self.inputs, &mut changes);
        changes
    }
}

fn diff_maps(
    label: &str,
    changed: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    for (name, digest) in new {
        match old.get(name) {
            None => out.push(format!("{label} {name}: added")),
            Some(previous) if previous != digest => out.push(format!("{label} {name}: {changed}")),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|name| !new.contains_key(*name)) {
        out.push(format!("{label} {name}: removed"));
    }
}

fn diff_json(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let path = format!("{prefix}{name}");
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => diff_json(&format!("{path}."), x, y, out),
                    (None, Some(y)) => out.push(format!("{path}: added ({y})")),
                    (Some(x), None) => out.push(format!("{path}: removed (was {x})")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => {
            let path = prefix.trim_end_matches('.');
            out.push(format!("{path}: {a} → {b}"));
        }
        _ => {}
    }
}

impl CacheKey {
    /// Wraps a key read back from disk; `None` unless it is 64 hex digits.
    pub fn parse(text: &str) -> Option<CacheKey> {
        let valid = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| CacheKey(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(params: serde_json::Value) -> KeyInputs {
        KeyInputs {
            format: KEY_FORMAT_VERSION,
            kind: "train".into(),
            version: 1,
            params,
            seed: 7,
            upstream: BTreeMap::from([("data".to_string(), "aa".to_string())]),
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn key_is_stable_and_independent_of_key_order() {
        let a = inputs(json!({"lr": 0.1, "epochs": 3}));
        let b = inputs(serde_json::from_str(r#"{"epochs": 3, "lr": 0.1}"#).unwrap());
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().as_str().len(), 64);
        let c = inputs(json!({"lr": 0.2, "epochs": 3}));
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn diff_names_each_changed_field() {
        let old = inputs(json!({"lr": 0.1, "epochs": 3, "model": {"width": 8}}));
        let mut new = inputs(json!({"lr": 0.05, "epochs": 3, "model": {"width": 16}}));
        new.upstream.insert("data".into(), "bb".into());
        new.inputs.insert("mnist".into(), "cc".into());
        let changes = new.diff(&old);
        assert_eq!(
            changes,
            vec![
                "param lr: 0.1 → 0.05",
                "param model.width: 8 → 16",
                "upstream data: output changed",
                "input mnist: added",
            ]
        );
        assert!(old.diff(&old).is_empty());
    }

    #[test]
    fn parse_rejects_non_keys() {
        assert!(CacheKey::parse("../etc").is_none());
        let key = inputs(json!({})).key();
        assert_eq!(CacheKey::parse(key.as_str()), Some(key));
    }
}
