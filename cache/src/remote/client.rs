//! The remote itself: opening it from an address, its layout, reading and checking manifests.
use super::profile::{self, Profile};
use crate::error::CacheError;
use crate::key::CacheKey;
use crate::store::{files_digest, Manifest};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, RetryConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) const ENTRIES: &str = "entries";
pub(super) const BLOBS: &str = "blobs";

/// Why the remote could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The address names no kind of remote this build knows, or is malformed (checked before
    /// any request).
    #[error(
        "`{url}` is not a remote address: {why} (use s3://BUCKET[/PREFIX], file:///PATH or a folder path)"
    )]
    Address { url: String, why: String },
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

impl RemoteError {
    /// Whether the remote itself could not be used (unreachable, refused, too slow, no such
    /// bucket), as opposed to an entry on it being damaged or the local side failing.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Request { .. } | RemoteError::Open { .. })
    }
}

/// How long the remote may take: a connection must be made within `connect_timeout`, and a
/// request (with its retries) that gets no whole answer fails after about `timeout`. After the
/// first request that fails, the remote is asked nothing more by this [`Remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteOptions {
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions { connect_timeout: Duration::from_secs(5), timeout: Duration::from_secs(30) }
    }
}

/// `text` from the remote, safe to print: control characters (terminal escape codes among
/// them) and bidirectional overrides are written as `\u{…}` escapes.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if c.is_control() || bidi {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// An open remote.
pub struct Remote {
    url: String,
    pub(super) objects: Arc<dyn ObjectStore>,
    pub(super) runtime: tokio::runtime::Runtime,
    /// Transfers at once.
    pub(super) parallel: usize,
    /// A folder remote's folder (absolute), for what `object_store` hides: the partial files
    /// of interrupted uploads.
    pub(super) folder: Option<PathBuf>,
    /// An S3 remote's bucket, checked to exist before the first request that could take a
    /// missing bucket for a missing object.
    bucket: Option<String>,
    /// Whether the bucket was found.
    bucket_found: Mutex<bool>,
    /// Set by the first request that fails: later ones fail at once with it rather than each
    /// wait out its timeout.
    down: Mutex<Option<String>>,
}

/// A folder remote at `path`, created by the first write rather than on opening: a pull or a
/// push with nothing to send leaves no folder chain behind. The store is rooted at the nearest
/// folder that exists, with the rest of `path` as a prefix (written files create the folders
/// under it).
fn folder_store(path: &std::path::Path) -> Result<(Arc<dyn ObjectStore>, PathBuf), String> {
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
        return Ok((Arc::new(root), absolute));
    }
    let prefix = ObjectPath::parse(parts.join("/")).map_err(|e| e.to_string())?;
    Ok((Arc::new(PrefixStore::new(root, prefix)), absolute))
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
        Remote::open_with_options(url, settings, RemoteOptions::default())
    }

    /// [`Remote::open_with`], with the given timeouts. The address is checked whole before
    /// anything is opened: a malformed one is [`RemoteError::Address`], never a panic.
    pub fn open_with_options(
        url: &str,
        settings: &[(&str, &str)],
        options: RemoteOptions,
    ) -> Result<Remote, RemoteError> {
        let open_error = |message: String| RemoteError::Open { url: url.to_string(), message };
        let (objects, folder, bucket): (Arc<dyn ObjectStore>, _, _) = match parse_address(url)? {
            Address::S3 { bucket, prefix } => {
                let s3 = s3_builder(profile::load(), settings, options)
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(|e| open_error(e.to_string()))?;
                let objects: Arc<dyn ObjectStore> = match prefix {
                    None => Arc::new(s3),
                    Some(prefix) => Arc::new(PrefixStore::new(s3, prefix)),
                };
                (objects, None, Some(bucket))
            }
            Address::Folder(path) => {
                let (objects, absolute) = folder_store(&path).map_err(open_error)?;
                (objects, Some(absolute), None)
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("pipeline-remote")
            .enable_all()
            .build()
            .map_err(|e| open_error(format!("cannot start the transfer threads: {e}")))?;
        Ok(Remote {
            url: url.to_string(),
            objects,
            runtime,
            parallel: 8,
            folder,
            bucket,
            bucket_found: Mutex::new(false),
            down: Mutex::new(None),
        })
    }

    /// Fails at once when an earlier request failed; on S3, makes sure once that the bucket
    /// exists (S3 answers "not found" for an object of a missing bucket as for a missing object:
    /// without this, a misspelt bucket would look like an empty remote).
    pub(super) async fn ready(&self, action: &'static str, path: &ObjectPath) -> Result<(), RemoteError> {
        if let Some(first) = self.down.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(self.not_tried(action, path, &first));
        }
        let Some(bucket) = &self.bucket else { return Ok(()) };
        if *self.bucket_found.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        let probe = ObjectPath::from(ENTRIES);
        match self.objects.list_with_delimiter(Some(&probe)).await {
            Ok(_) => {
                *self.bucket_found.lock().unwrap_or_else(|e| e.into_inner()) = true;
                Ok(())
            }
            Err(e) if is_missing_bucket(&e) => {
                let source = object_store::Error::Generic {
                    store: "S3",
                    source: format!(
                        "the bucket `{}` does not exist (create it, or correct the address)",
                        printable(bucket)
                    )
                    .into(),
                };
                Err(self.request("find the bucket of", path)(source))
            }
            Err(e) => Err(self.request(action, path)(e)),
        }
    }

    fn not_tried(&self, action: &'static str, path: &ObjectPath, first: &str) -> RemoteError {
        let source = object_store::Error::Generic {
            store: "remote",
            source: format!("not tried: an earlier request failed ({first})").into(),
        };
        RemoteError::Request {
            url: self.url.clone(),
            action,
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    /// Makes sure the remote can be used: on S3, that the bucket exists and answers (one
    /// request); a folder is always usable (created by the first upload).
    pub fn check(&self) -> Result<(), RemoteError> {
        self.runtime.block_on(self.ready("list", &ObjectPath::from(ENTRIES)))
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
        self.ready("read", &path).await?;
        let bytes = match self.objects.get(&path).await {
            Ok(found) => found.bytes().await.map_err(self.request("read", &path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request("read", &path)(e)),
        };
        let manifest: Manifest = crate::json::from_slice(&bytes).map_err(|e| RemoteError::Rejected {
            key: key.to_string(),
            detail: format!("its manifest cannot be parsed: {}", printable(&e)),
        })?;
        check_manifest(key, &manifest)?;
        Ok(Some(manifest))
    }

    /// Every key the remote has a manifest for.
    pub fn keys(&self) -> Result<Vec<CacheKey>, RemoteError> {
        self.runtime.block_on(async {
            use futures::TryStreamExt;
            let prefix = ObjectPath::from(ENTRIES);
            self.ready("list", &prefix).await?;
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

    /// A [`RemoteError::Request`] maker for `map_err`; the first failure is remembered, and
    /// every later request fails at once with it ([`Remote::ready`]).
    pub(super) fn request(
        &self,
        action: &'static str,
        path: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> RemoteError + '_ {
        let path = path.to_string();
        move |source| {
            let error =
                RemoteError::Request { url: self.url.clone(), action, path, source: Box::new(source) };
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            if down.is_none() {
                *down = Some(chain_text(&error));
            }
            error
        }
    }
}

/// An S3 client from the environment, with what it leaves unset taken from the profile files.
/// An `http://` endpoint (a local server) is allowed without also setting `AWS_ALLOW_HTTP`.
fn s3_builder(profile: Profile, settings: &[(&str, &str)], options: RemoteOptions) -> AmazonS3Builder {
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
    // say so while the user still watches. A request is retried only within its timeout, so
    // one that gets no answer fails after about that long.
    let client = |key: ClientConfigKey, value: Duration| {
        (AmazonS3ConfigKey::Client(key), format!("{}ms", value.as_millis().max(1)))
    };
    for (key, value) in [
        client(ClientConfigKey::ConnectTimeout, options.connect_timeout),
        client(ClientConfigKey::Timeout, options.timeout),
    ] {
        builder = builder.with_config(key, value);
    }
    builder.with_retry(RetryConfig {
        max_retries: 3,
        retry_timeout: options.timeout,
        ..RetryConfig::default()
    })
}

/// What an address names.
#[derive(Debug, PartialEq)]
enum Address {
    S3 { bucket: String, prefix: Option<String> },
    Folder(PathBuf),
}

/// Checks an address whole: the kind, the bucket name (S3's rules: 3 to 63 lowercase letters,
/// digits, dots and hyphens, starting and ending with a letter or digit; uppercase and `_` are
/// let through for older S3-compatible stores) and the prefix's segments.
fn parse_address(url: &str) -> Result<Address, RemoteError> {
    let refuse = |why: String| Err(RemoteError::Address { url: printable(url), why });
    if url.trim().is_empty() {
        return refuse("it is empty".into());
    }
    if url.chars().any(|c| c.is_control()) {
        return refuse("it contains control characters".into());
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return refuse("it names no bucket".into());
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if let Some(c) = bucket.chars().find(|c| !allowed(*c)) {
            return refuse(format!(
                "the bucket name `{}` contains {c:?} (a bucket name has letters, digits, `.` and `-` only)",
                printable(bucket)
            ));
        }
        let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if !(3..=63).contains(&bucket.len()) || !ends(bucket.chars().next()) || !ends(bucket.chars().last()) {
            return refuse(format!(
                "the bucket name `{bucket}` must have 3 to 63 characters and start and end with a letter or digit"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(Address::S3 { bucket: bucket.into(), prefix: None });
        }
        if prefix.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return refuse(format!("the prefix `{prefix}` has an empty, `.` or `..` part"));
        }
        if ObjectPath::parse(prefix).is_err() {
            return refuse(format!("the prefix `{prefix}` is not a valid object path"));
        }
        return Ok(Address::S3 { bucket: bucket.into(), prefix: Some(prefix.into()) });
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return refuse("a file:// address needs an absolute path (file:///PATH)".into());
        }
        return Ok(Address::Folder(path.into()));
    }
    // `s3:/lab/x`, `s3:lab`, `gs://…`: a scheme this build does not know, or a misspelt one;
    // never a folder named after it (write `./s3:/x` for that).
    let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if let Some(scheme) = scheme {
        return refuse(if scheme == "s3" || scheme == "file" {
            format!("`{scheme}:` must be followed by `//` (`{scheme}://…`)")
        } else {
            format!("`{}:` is not a kind of remote this build knows", printable(scheme))
        });
    }
    Ok(Address::Folder(url.into()))
}

/// Whether an error listing a bucket says the bucket does not exist.
fn is_missing_bucket(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. }) || chain_text(error).contains("NoSuchBucket")
}

/// An error and its causes, joined by ": ".
pub(super) fn chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
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
        return reject(format!("its manifest names key {}", printable(manifest.key.as_str())));
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
            return reject(format!("file name `{}` leaves the entry's folder", printable(name)));
        }
        let is_digest = record.blake3.len() == 64 && record.blake3.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_digest || record.blake3.bytes().any(|b| b.is_ascii_uppercase()) {
            return reject(format!("`{}` has no valid digest", printable(name)));
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
    fn malformed_addresses_are_refused_and_good_ones_parsed() {
        for url in [
            "s3:/lab/x",
            "s3:lab",
            "s3://my bucket/x",
            "s3://ab",
            "s3://-lab",
            "s3://lab/a//b",
            "s3://lab/../x",
            "file://relative",
            "s3://l\u{1b}[2Jab",
        ] {
            let err = parse_address(url).unwrap_err();
            assert!(matches!(err, RemoteError::Address { .. }), "{url}: {err}");
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
        }
        assert_eq!(
            parse_address("s3://lab-1.x/ood/a/").unwrap(),
            Address::S3 { bucket: "lab-1.x".into(), prefix: Some("ood/a".into()) }
        );
        assert_eq!(parse_address("s3://lab").unwrap(), Address::S3 { bucket: "lab".into(), prefix: None });
        assert_eq!(parse_address("file:///srv/c").unwrap(), Address::Folder("/srv/c".into()));
        assert_eq!(parse_address("./s3:/x").unwrap(), Address::Folder("./s3:/x".into()));
        assert_eq!(parse_address("relative/dir").unwrap(), Address::Folder("relative/dir".into()));
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("a\u{1b}[31mb\tc"), "a\\u{1b}[31mb\\u{9}c");
        assert_eq!(printable("plain/name.npy"), "plain/name.npy");
    }

    #[test]
    fn floats_keep_every_digit_through_a_manifest() {
        // Random bit patterns: every finite f64 must give its key back after a JSON round trip.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = f64::from_bits(x);
            if !value.is_finite() {
                continue;
            }
            let mut m = manifest(&[]);
            m.inputs.params = serde_json::json!({ "lr": value });
            m.key = m.inputs.key();
            let back: Manifest = crate::json::from_slice(&serde_json::to_vec_pretty(&m).unwrap()).unwrap();
            assert!(check_manifest(&m.key, &back).is_ok(), "{value:e} does not round-trip");
        }
    }

    #[test]
    fn addresses_of_unknown_kinds_are_refused() {
        for url in ["gs://bucket", "http://example.com/x", "s3://", ""] {
            let err = Remote::open(url).unwrap_err();
            assert!(matches!(err, RemoteError::Address { .. }), "{url}: {err}");
        }
    }
}
