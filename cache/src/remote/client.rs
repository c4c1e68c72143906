//! The remote itself: opening it from an address, its layout, reading and checking manifests.
use super::profile::{self, Profile};
use crate::error::CacheError;
use crate::key::CacheKey;
use crate::store::{files_digest, Manifest};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

pub(super) const ENTRIES: &str = "entries";
pub(super) const BLOBS: &str = "blobs";

/// Why the remote could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address names no kind of remote this build knows.
    #[error("`{url}` is not a remote address (use s3://BUCKET[/PREFIX], file:///PATH or a folder path)")]
    Address { url: String },
    /// The remote could not be set up (credentials, a folder that cannot be created).
    #[error("cannot open the remote `{url}`: {message}")]
    Open { url: String, message: String },
    /// A request to the remote failed.
    #[error("remote `{url}`: cannot {action} `{path}`")]
    Request {
        url: String,
        action: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// What the remote holds for a key is not a sound entry; nothing of it was kept.
    #[error("the remote's entry {key} is rejected: {detail}")]
    Rejected { key: String, detail: String },
    /// The local side of a transfer failed.
    #[error(transparent)]
    Local(#[from] CacheError),
}

/// An open remote.
pub struct Remote {
    url: String,
    pub(super) objects: Arc<dyn ObjectStore>,
    pub(super) runtime: tokio::runtime::Runtime,
    /// Transfers at once.
    pub(super) parallel: usize,
}

/// A folder remote at `path`, created by the first write rather than on opening: a pull or a
/// push with nothing to send leaves no folder chain behind. The store is rooted at the nearest
/// folder that exists, with the rest of `path` as a prefix (written files create the folders
/// under it).
fn folder_store(path: &std::path::Path) -> Result<Arc<dyn ObjectStore>, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let absolute = cwd.join(path);
    let existing = absolute
        .ancestors()
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("no folder of `{}` exists", absolute.display()))?;
    let rest = absolute.strip_prefix(existing).map_err(|e| e.to_string())?;
    let root = LocalFileSystem::new_with_prefix(existing).map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for part in rest.components() {
        match part {
            std::path::Component::Normal(name) => parts.push(
                name.to_str().ok_or_else(|| format!("`{}` is not UTF-8", absolute.display()))?.to_string(),
            ),
            // `..` below a folder that does not exist: nothing sensible to write to.
            _ => return Err(format!("`{}` goes through a folder that does not exist", absolute.display())),
        }
    }
    if parts.is_empty() {
        return Ok(Arc::new(root));
    }
    let prefix = ObjectPath::parse(parts.join("/")).map_err(|e| e.to_string())?;
    Ok(Arc::new(PrefixStore::new(root, prefix)))
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Opens the remote at `url`: `s3://bucket/prefix` (endpoint, region and credentials from
    /// the `AWS_*` environment variables, else the AWS profile files), `file:///path` or a plain
    /// folder path (created if missing).
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Remote::open_with(url, &[])
    }

    /// [`Remote::open`], with `settings` (`AWS_*` variable names and values) taking the place
    /// of the process environment's, for callers that must not change the environment.
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<Remote, RemoteError> {
        let open_error = |message: String| RemoteError::Open { url: url.to_string(), message };
        let objects: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RemoteError::Address { url: url.to_string() });
            }
            let s3 = s3_builder(profile::load(), settings)
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| open_error(e.to_string()))?;
            match prefix.trim_matches('/') {
                "" => Arc::new(s3),
                prefix => Arc::new(PrefixStore::new(s3, prefix)),
            }
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(RemoteError::Address { url: url.to_string() });
        } else {
            let path = url.strip_prefix("file://").unwrap_or(url);
            if path.is_empty() {
                return Err(RemoteError::Address { url: url.to_string() });
            }
            folder_store(std::path::Path::new(path)).map_err(open_error)?
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("pipeline-remote")
            .enable_all()
            .build()
            .map_err(|e| open_error(format!("cannot start the transfer threads: {e}")))?;
        Ok(Remote { url: url.to_string(), objects, runtime, parallel: 8 })
    }

    /// The address it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The manifest the remote holds for `key`, checked (see the module's doc); a miss is
    /// `Ok(None)`.
    pub fn manifest(&self, key: &CacheKey) -> Result<Option<Manifest>, RemoteError> {
        self.runtime.block_on(self.fetch_manifest(key))
    }

    pub(super) async fn fetch_manifest(&self, key: &CacheKey) -> Result<Option<Manifest>, RemoteError> {
        let path = entry_path(key);
        let bytes = match self.objects.get(&path).await {
            Ok(found) => found.bytes().await.map_err(self.request("read", &path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request("read", &path)(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| RemoteError::Rejected {
            key: key.to_string(),
            detail: format!("its manifest cannot be parsed: {e}"),
        })?;
        check_manifest(key, &manifest)?;
        Ok(Some(manifest))
    }

    /// Every key the remote has a manifest for.
    pub fn keys(&self) -> Result<Vec<CacheKey>, RemoteError> {
        self.runtime.block_on(async {
            use futures::TryStreamExt;
            let prefix = ObjectPath::from(ENTRIES);
            let listed: Vec<_> = self
                .objects
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(self.request("list", &prefix))?;
            let mut keys: Vec<CacheKey> = listed
                .iter()
                .filter_map(|meta| meta.location.filename()?.strip_suffix(".json").and_then(CacheKey::parse))
                .collect();
            keys.sort();
            Ok(keys)
        })
    }

    pub(super) fn request(
        &self,
        action: &'static str,
        path: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> RemoteError {
        let (url, path) = (self.url.clone(), path.to_string());
        move |source| RemoteError::Request { url, action, path, source: Box::new(source) }
    }
}

/// An S3 client from the environment, with what it leaves unset taken from the profile files.
/// An `http://` endpoint (a local server) is allowed without also setting `AWS_ALLOW_HTTP`.
fn s3_builder(profile: Profile, settings: &[(&str, &str)]) -> AmazonS3Builder {
    let setting = |variable: &str| {
        settings
            .iter()
            .find(|(k, _)| *k == variable)
            .map(|(_, v)| v.to_string())
            .or_else(|| std::env::var(variable).ok())
    };
    let unset = |variable: &str| setting(variable).is_none();
    let mut builder = AmazonS3Builder::from_env();
    for (variable, value) in settings {
        if let Ok(key) = variable.to_ascii_lowercase().parse() {
            builder = builder.with_config(key, *value);
        }
    }
    if unset("AWS_ACCESS_KEY_ID") {
        if let Some(value) = profile.access_key_id {
            builder = builder.with_access_key_id(value);
        }
        if let (Some(value), true) = (profile.secret_access_key, unset("AWS_SECRET_ACCESS_KEY")) {
            builder = builder.with_secret_access_key(value);
        }
        if let (Some(value), true) = (profile.session_token, unset("AWS_SESSION_TOKEN")) {
            builder = builder.with_token(value);
        }
    }
    if unset("AWS_REGION") && unset("AWS_DEFAULT_REGION") {
        if let Some(value) = profile.region {
            builder = builder.with_region(value);
        }
    }
    let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|variable| setting(variable))
        .or_else(|| {
            let value = profile.endpoint_url?;
            builder = std::mem::take(&mut builder).with_endpoint(value.clone());
            Some(value)
        });
    if endpoint.is_some_and(|e| e.starts_with("http://")) && unset("AWS_ALLOW_HTTP") {
        builder = builder.with_allow_http(true);
    }
    // A few retries, not object_store's three minutes of them: a remote that is down should
    // say so while the user still watches.
    builder.with_retry(RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    })
}

pub(super) fn entry_path(key: &CacheKey) -> ObjectPath {
    ObjectPath::from(format!("{ENTRIES}/{key}.json"))
}

pub(super) fn blob_path(digest: &str) -> ObjectPath {
    ObjectPath::from(format!("{BLOBS}/{digest}"))
}

/// A manifest fetched for `key` that may be used: it names `key`, its inputs hash to `key`, its
/// file list gives its output digest, and every file name stays inside the entry and every
/// digest is a blake3 hex string (it names a blob).
fn check_manifest(key: &CacheKey, manifest: &Manifest) -> Result<(), RemoteError> {
    let reject = |detail: String| Err(RemoteError::Rejected { key: key.to_string(), detail });
    if &manifest.key != key {
        return reject(format!("its manifest names key {}", manifest.key));
    }
    if &manifest.inputs.key() != key {
        return reject("its manifest's inputs do not hash to its key".into());
    }
    if files_digest(&manifest.files) != manifest.output_digest {
        return reject("its file list does not give its output digest".into());
    }
    for (name, record) in &manifest.files {
        let inside = !name.is_empty()
            && !name.contains('\\')
            && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !inside {
            return reject(format!("file name `{name}` leaves the entry's folder"));
        }
        let is_digest = record.blake3.len() == 64 && record.blake3.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_digest || record.blake3.bytes().any(|b| b.is_ascii_uppercase()) {
            return reject(format!("`{name}` has no valid digest"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{KeyInputs, KEY_FORMAT_VERSION};
    use crate::store::FileRecord;
    use std::collections::BTreeMap;

    fn manifest(files: &[(&str, &str)]) -> Manifest {
        let inputs = KeyInputs {
            format: KEY_FORMAT_VERSION,
            kind: "test".into(),
            version: 1,
            params: serde_json::json!({}),
            seed: 0,
            upstream: BTreeMap::new(),
            inputs: BTreeMap::new(),
        };
        let files: BTreeMap<String, FileRecord> = files
            .iter()
            .map(|(name, digest)| (name.to_string(), FileRecord { size: 1, blake3: digest.to_string() }))
            .collect();
        Manifest {
            key: inputs.key(),
            inputs,
            output_digest: files_digest(&files),
            files,
            meta: serde_json::json!({}),
        }
    }

    #[test]
    fn sound_manifests_pass_and_unsound_ones_are_rejected_by_reason() {
        let digest = blake3::hash(b"x").to_hex().to_string();
        let good = manifest(&[("a/b.npy", &digest)]);
        assert!(check_manifest(&good.key, &good).is_ok());

        let mut other_key = good.clone();
        other_key.inputs.seed = 1;
        let err = check_manifest(&good.key, &other_key).unwrap_err().to_string();
        assert!(err.contains("do not hash to its key"), "{err}");

        let mut edited = good.clone();
        edited.files.get_mut("a/b.npy").unwrap().blake3 = blake3::hash(b"y").to_hex().to_string();
        let err = check_manifest(&good.key, &edited).unwrap_err().to_string();
        assert!(err.contains("output digest"), "{err}");

        for name in ["../escape", "/abs", "a//b", "a/./b", "a\\b"] {
            let bad = manifest(&[(name, &digest)]);
            let err = check_manifest(&bad.key, &bad).unwrap_err().to_string();
            assert!(err.contains("leaves the entry's folder"), "{name}: {err}");
        }
        let bad = manifest(&[("f", "../../etc/passwd")]);
        assert!(check_manifest(&bad.key, &bad).unwrap_err().to_string().contains("no valid digest"));
    }

    #[test]
    fn addresses_of_unknown_kinds_are_refused() {
        for url in ["gs://bucket", "http://example.com/x", "s3://", ""] {
            let err = Remote::open(url).unwrap_err();
            assert!(matches!(err, RemoteError::Address { .. }), "{url}: {err}");
        }
    }
}
