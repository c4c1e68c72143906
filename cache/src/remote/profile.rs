//! The AWS shared configuration files (`~/.aws/credentials`, `~/.aws/config`): what the AWS CLI
//! and SDKs read when the environment does not say. `object_store` reads only the environment,
//! so a user whose keys live in a profile would otherwise be refused.
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings of one profile that a remote uses, each `None` when no file sets it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// The profile named by `AWS_PROFILE` (else `default`), from `AWS_SHARED_CREDENTIALS_FILE` and
/// `AWS_CONFIG_FILE` (else the files under `~/.aws`). Files that do not exist add nothing.
pub fn load() -> Profile {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |variable: &str, default: &str| {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let read = |path: Option<PathBuf>| path.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    resolve(
        &name,
        &read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials")),
        &read(file("AWS_CONFIG_FILE", "config")),
    )
}

/// The profile `name` from the two files' texts; the credentials file wins where both set a key.
pub fn resolve(name: &str, credentials: &str, config: &str) -> Profile {
    let config_section = if name == "default" { "default".to_string() } else { format!("profile {name}") };
    let mut values = sections(config).remove(&config_section).unwrap_or_default();
    values.extend(sections(credentials).remove(name).unwrap_or_default());
    let mut take = |key: &str| values.remove(key).filter(|v| !v.is_empty());
    Profile {
        access_key_id: take("aws_access_key_id"),
        secret_access_key: take("aws_secret_access_key"),
        session_token: take("aws_session_token"),
        region: take("region"),
        endpoint_url: take("endpoint_url"),
    }
}

/// `[section]` → key → value of an INI text; comments (`#`, `;`) and nested blocks are skipped.
fn sections(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        // An indented line belongs to a nested block (`s3 =` followed by its settings).
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some(section), Some((key, value))) = (&current, trimmed.split_once('=')) {
            all.entry(section.clone()).or_default().insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDENTIALS: &str = "[default]\naws_access_key_id = AKIDEFAULT\naws_secret_access_key = s3cret\n\n\
        # a comment\n[lab]\naws_access_key_id=AKILAB\naws_secret_access_key=labsecret\naws_session_token = tok\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n[profile lab]\nregion = us-east-2\n\
        endpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\n";

    #[test]
    fn the_default_profile_reads_both_files() {
        let p = resolve("default", CREDENTIALS, CONFIG);
        assert_eq!(p.access_key_id.as_deref(), Some("AKIDEFAULT"));
        assert_eq!(p.secret_access_key.as_deref(), Some("s3cret"));
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(p.session_token, None);
        assert_eq!(p.endpoint_url, None);
    }

    #[test]
    fn a_named_profile_uses_its_profile_section_and_skips_nested_blocks() {
        let p = resolve("lab", CREDENTIALS, CONFIG);
        assert_eq!(p.access_key_id.as_deref(), Some("AKILAB"));
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.region.as_deref(), Some("us-east-2"));
        assert_eq!(p.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn an_unknown_profile_is_empty() {
        assert_eq!(resolve("nobody", CREDENTIALS, CONFIG), Profile::default());
    }
}
