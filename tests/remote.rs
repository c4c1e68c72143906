//! The remote cache through the real binary, against both kinds of remote: a folder, and a real
//! S3-compatible server (moto, started by the tests; `.ci/run` installs it). Without moto the S3
//! half is skipped with a notice, unless `PIPELINE_REQUIRE_S3=1` (CI) makes that a failure.
mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A moto server on a free port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto/bin/moto_server");
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("moto_server")).find(|p| p.is_file())
}

impl Moto {
    /// A running server, or `None` (after a notice) where moto is not installed.
    fn start() -> Option<Moto> {
        let Some(binary) = moto_binary() else {
            let required = std::env::var("PIPELINE_REQUIRE_S3").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "PIPELINE_REQUIRE_S3=1 but moto_server was not found (bash scripts/install-moto.sh)"
            );
            eprintln!("note: moto_server not found; the S3 half of this test is skipped (bash scripts/install-moto.sh)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// One unsigned HTTP request (the tests' buckets allow anonymous writes); returns the
    /// status code.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nx-amz-acl: public-read-write\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
        ]
    }
}

/// One remote under test, and how to reach into it behind pipeline's back.
enum Backend<'a> {
    Folder(PathBuf),
    S3 { moto: &'a Moto, bucket: String },
}

impl Backend<'_> {
    fn url(&self) -> String {
        match self {
            Backend::Folder(path) => path.display().to_string(),
            Backend::S3 { bucket, .. } => format!("s3://{bucket}/lab/ood"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::Folder(_) => Vec::new(),
            Backend::S3 { moto, .. } => moto.env(),
        }
    }

    /// Replaces the blob with this digest by `bytes`.
    fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        match self {
            Backend::Folder(path) => std::fs::write(path.join("blobs").join(digest), bytes).unwrap(),
            Backend::S3 { moto, bucket } => {
                assert_eq!(moto.request("PUT", &format!("/{bucket}/lab/ood/blobs/{digest}"), bytes), 200)
            }
        }
    }

    fn delete(&self, path: &str) {
        match self {
            Backend::Folder(root) => std::fs::remove_file(root.join(path)).unwrap(),
            Backend::S3 { moto, bucket } => {
                assert_eq!(moto.request("DELETE", &format!("/{bucket}/lab/ood/{path}"), b""), 204)
            }
        }
    }
}

/// Runs `scenario` against a fresh folder remote, then against a fresh bucket on moto.
fn for_each_remote(scenario: impl Fn(&Backend, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    scenario(&Backend::Folder(dir.path().join("remote")), dir.path());
    if let Some(moto) = Moto::start() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = format!("b{}", std::process::id());
        assert_eq!(moto.request("PUT", &format!("/{bucket}"), b""), 200, "bucket created");
        scenario(&Backend::S3 { moto: &moto, bucket }, dir.path());
    }
}

fn command(backend: &Backend, args: &[&str], cache: &Path) -> Output {
    pipeline()
        .args(args)
        .arg("--cache")
        .arg(cache)
        .envs(backend.env())
        .env_remove("PIPELINE_REMOTE")
        .output()
        .unwrap()
}

/// Every output file of every entry in a cache: key/out/path → bytes.
fn cache_files(cache: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for item in std::fs::read_dir(dir).unwrap().flatten() {
            let path = item.path();
            if path.is_dir() {
                walk(base, &path, into);
            } else if path.to_string_lossy().contains("/out/") {
                into.insert(
                    path.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&cache.join("objects"), &cache.join("objects"), &mut files);
    files
}

/// The manifest of the one entry whose manifest names `stage` in its meta.
fn manifest_of(cache: &Path, stage: &str) -> serde_json::Value {
    for item in std::fs::read_dir(cache.join("objects")).unwrap().flatten() {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(item.path().join("manifest.json")).unwrap()).unwrap();
        if manifest["meta"]["stage"] == stage {
            return manifest;
        }
    }
    panic!("no entry of stage {stage}");
}

/// The tiny recipe computed into `dir/a`, and, with `push`, pushed: (recipe path, remote url,
/// cache a).
fn computed(backend: &Backend, dir: &Path, push: bool) -> (String, String, PathBuf) {
    let recipe = write_recipe(dir, &tiny_recipe(2, r#"["energy"]"#));
    let a = dir.join("a");
    let (out, _) = run(&recipe, &a, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (recipe, url) = (recipe.to_str().unwrap().to_string(), backend.url());
    if push {
        let pushed = command(backend, &["push", &recipe, "--remote", &url], &a);
        assert!(pushed.status.success(), "{}", stderr(&pushed));
    }
    (recipe, url, a)
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON on stdout; stderr: {}", stderr(output)))
}

#[test]
fn push_then_pull_into_an_empty_cache_gives_identical_entries() {
    for_each_remote(|backend, dir| {
        let recipe = write_recipe(dir, &tiny_recipe(2, r#"["energy"]"#));
        let (a, b) = (dir.join("a"), dir.join("b"));
        let (out, _) = run(&recipe, &a, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let url = backend.url();
        let recipe_arg = recipe.to_str().unwrap();

        let pushed = command(backend, &["push", recipe_arg, "--remote", &url, "--json"], &a);
        assert!(pushed.status.success(), "{}", stderr(&pushed));
        assert_eq!(json(&pushed)["pushed"], 5, "{}", stderr(&pushed));
        let again = command(backend, &["push", recipe_arg, "--remote", &url, "--json"], &a);
        assert_eq!(
            (json(&again)["pushed"].clone(), json(&again)["already_there"].clone()),
            (0.into(), 5.into())
        );

        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert!(pulled.status.success(), "{}", stderr(&pulled));
        assert_eq!(json(&pulled)["pulled"], 5);
        let status = command(backend, &["status", recipe_arg], &b);
        assert!(String::from_utf8_lossy(&status.stdout).contains("0 of 5 stage(s) will run"));
        assert_eq!(cache_files(&a), cache_files(&b), "every output byte-identical, report included");
        assert!(cache_files(&b).keys().any(|k| k.ends_with("out/report.md")));
        // A second pull has nothing to do.
        let again = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert_eq!(
            (json(&again)["pulled"].clone(), json(&again)["already_here"].clone()),
            (0.into(), 5.into())
        );
    });
}

#[test]
fn a_flipped_byte_on_the_remote_is_rejected_by_name_and_run_recomputes_that_stage() {
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, true);
        let recipe_arg = recipe.as_str();

        // Same size, one byte different: only the content hash can tell.
        let report = manifest_of(&a, "table");
        let record = &report["files"]["report.md"];
        let digest = record["blake3"].as_str().unwrap();
        let mut bytes =
            std::fs::read(a.join("objects").join(report["key"].as_str().unwrap()).join("out/report.md"))
                .unwrap();
        bytes[10] ^= 1;
        backend.overwrite_blob(digest, &bytes);

        let b = dir.join("b");
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert_eq!(pulled.status.code(), Some(1), "a rejected entry fails the pull");
        let err = stderr(&pulled);
        assert!(
            err.contains("`table` is not pulled") && err.contains("`report.md` does not match its digest"),
            "{err}"
        );
        assert_eq!(json(&pulled)["pulled"], 4, "the sound entries are pulled");
        let status = command(backend, &["status", recipe_arg], &b);
        assert!(String::from_utf8_lossy(&status.stdout).contains("1 of 5 stage(s) will run"));
        assert!(
            !cache_files(&b).keys().any(|k| k.ends_with("report.md")),
            "nothing of the rejected entry is kept"
        );

        // `run --remote` pulls what is sound and computes the rejected stage here.
        let c = dir.join("c");
        let out = pipeline()
            .args(["run", recipe_arg, "--json", "--remote", &url, "--remote-read-only", "--cache"])
            .arg(&c)
            .envs(backend.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let events = parse_events(&out.stdout);
        assert_eq!(stages_with(&events, "finished"), ["table"]);
        assert_eq!(stages_with(&events, "pulled").len(), 4);
        assert!(stderr(&out).contains("does not match its digest"), "{}", stderr(&out));
        assert_eq!(cache_files(&a), cache_files(&c));
    });
}

#[test]
fn run_with_a_remote_computes_nothing_the_remote_has_and_pushes_what_it_computes() {
    for_each_remote(|backend, dir| {
        let recipe = write_recipe(dir, &tiny_recipe(2, r#"["energy"]"#));
        let recipe_arg = recipe.to_str().unwrap();
        let url = backend.url();
        let run_remote = |cache: &Path, extra: &[&str]| {
            let out = pipeline()
                .args(["run", recipe_arg, "--json", "--remote", &url])
                .args(extra)
                .arg("--cache")
                .arg(cache)
                .envs(backend.env())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            parse_events(&out.stdout)
        };
        // First machine computes everything and pushes it as it goes.
        let events = run_remote(&dir.join("a"), &[]);
        assert_eq!(stages_with(&events, "finished").len(), 5);
        // Second machine computes nothing.
        let events = run_remote(&dir.join("b"), &[]);
        assert!(stages_with(&events, "finished").is_empty());
        assert_eq!(stages_with(&events, "pulled").len(), 5);
        assert_eq!(cache_files(&dir.join("a")), cache_files(&dir.join("b")));

        // A changed stage in read-only mode is computed and not pushed.
        std::fs::write(&recipe, tiny_recipe(2, r#"["energy", "msp"]"#)).unwrap();
        let events = run_remote(&dir.join("c"), &["--remote-read-only"]);
        assert_eq!(stages_with(&events, "finished"), ["scores_first@0", "table"]);
        let pushed_later =
            command(backend, &["push", recipe_arg, "--remote", &url, "--json"], &dir.join("c"));
        assert_eq!(json(&pushed_later)["pushed"], 2, "read-only pushed nothing");
    });
}

#[test]
fn concurrent_pushes_of_one_entry_leave_one_sound_manifest() {
    for_each_remote(|backend, dir| {
        let recipe = write_recipe(dir, &tiny_recipe(2, r#"["energy"]"#));
        let recipe_arg = recipe.to_str().unwrap();
        let url = backend.url();
        let (a, b) = (dir.join("a"), dir.join("b"));
        assert!(run(&recipe, &a, &[]).0.status.success());
        // The same results computed twice, pushed at once from two caches.
        assert!(run(&recipe, &b, &[]).0.status.success());
        let spawn = |cache: &Path| {
            pipeline()
                .args(["push", recipe_arg, "--json", "--remote", &url, "--cache"])
                .arg(cache)
                .envs(backend.env())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (first, second) = (spawn(&a), spawn(&b));
        let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
        assert!(first.status.success() && second.status.success(), "{}{}", stderr(&first), stderr(&second));
        let won = |o: &Output| json(o)["pushed"].as_u64().unwrap();
        let there = |o: &Output| json(o)["already_there"].as_u64().unwrap();
        assert_eq!(won(&first) + won(&second), 5, "each manifest written once");
        assert_eq!(there(&first) + there(&second), 5);
        let c = dir.join("c");
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &c);
        assert!(pulled.status.success(), "{}", stderr(&pulled));
        assert_eq!(json(&pulled)["pulled"], 5);
        assert_eq!(cache_files(&a), cache_files(&c));
    });
}

#[test]
fn an_interrupted_push_shows_nothing_incomplete_and_the_rerun_completes() {
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, false);
        let recipe_arg = recipe.as_str();

        // A real kill, wherever it lands: every manifest already there must pull whole.
        let mut child = pipeline()
            .args(["push", recipe_arg, "--remote", &url, "--cache"])
            .arg(&a)
            .envs(backend.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let _ = child.kill();
        let _ = child.wait();
        let early = dir.join("early");
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &early);
        assert!(pulled.status.success(), "no torn entry after a kill: {}", stderr(&pulled));

        // What a kill between the blobs and the manifests leaves: blobs, some missing, no
        // manifest. Nothing of it may look complete.
        assert!(command(backend, &["push", recipe_arg, "--remote", &url], &a).status.success());
        let report = manifest_of(&a, "table");
        let key = report["key"].as_str().unwrap();
        backend.delete(&format!("entries/{key}.json"));
        backend.delete(&format!("blobs/{}", report["files"]["report.md"]["blake3"].as_str().unwrap()));
        let b = dir.join("b");
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert!(pulled.status.success());
        assert_eq!(json(&pulled)["pulled"], 4);
        assert_eq!(json(&pulled)["missing"], serde_json::json!(["table"]));

        let rerun = command(backend, &["push", recipe_arg, "--remote", &url, "--json"], &a);
        assert_eq!(json(&rerun)["pushed"], 1, "the rerun pushes what was missing: {}", stderr(&rerun));
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert_eq!(json(&pulled)["pulled"], 1);
        assert_eq!(cache_files(&a), cache_files(&b));
    });
}

#[test]
fn gc_on_the_remote_removes_what_no_recipe_uses() {
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, true);
        let recipe_arg = recipe.as_str();
        std::fs::write(&recipe, tiny_recipe(2, r#"["energy", "msp"]"#)).unwrap();
        assert!(run(Path::new(&recipe), &a, &[]).0.status.success());
        assert!(command(backend, &["push", recipe_arg, "--remote", &url], &a).status.success());

        // The old scores_first and table are used by no recipe now.
        let dry = command(
            backend,
            &["gc", recipe_arg, "--remote", &url, "--grace", "0", "--dry-run", "--json"],
            &a,
        );
        assert!(dry.status.success(), "{}", stderr(&dry));
        assert_eq!(json(&dry)["entries"].as_array().unwrap().len(), 2);
        let gc = command(backend, &["gc", recipe_arg, "--remote", &url, "--grace", "0", "--json"], &a);
        assert_eq!(json(&gc)["entries"], json(&dry)["entries"], "the dry run said what gc deletes");
        assert!(json(&gc)["blobs"].as_u64().unwrap() >= 1, "the old report's blobs go too");
        let again = command(backend, &["gc", recipe_arg, "--remote", &url, "--grace", "0", "--json"], &a);
        assert_eq!(json(&again)["entries"].as_array().unwrap().len(), 0);
        // What the recipe uses is all still there and sound.
        let b = dir.join("b");
        let pulled = command(backend, &["pull", recipe_arg, "--remote", &url, "--json"], &b);
        assert!(pulled.status.success(), "{}", stderr(&pulled));
        assert_eq!(json(&pulled)["pulled"], 5);
    });
}

#[test]
fn a_large_file_streams_in_parts_both_ways() {
    use cache::remote::{PushOutcome, Remote, TransferProgress};
    use cache::{KeyInputs, Store, KEY_FORMAT_VERSION};
    struct Count(std::sync::atomic::AtomicU64);
    impl TransferProgress for Count {
        fn planned(&self, _bytes: u64) {}
        fn moved(&self, bytes: u64) {
            self.0.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
    for_each_remote(|backend, dir| {
        let a = Store::open(dir.join("a")).unwrap();
        let inputs = KeyInputs {
            format: KEY_FORMAT_VERSION,
            kind: "big".into(),
            version: 1,
            params: serde_json::json!({}),
            seed: 0,
            upstream: Default::default(),
            inputs: Default::default(),
        };
        let key = inputs.key();
        let lock = a.lock(&key).unwrap();
        let staging = a.stage(&lock).unwrap();
        // 20 MiB + 3 bytes: two whole 8 MiB parts and a short last one.
        let body: Vec<u8> = (0..(20u64 << 20) + 3).map(|i| ((i * 2654435761) >> 13) as u8).collect();
        std::fs::write(staging.out_dir().join("weights.safetensors"), &body).unwrap();
        let entry = a.commit(staging, &lock, &inputs, serde_json::json!({})).unwrap();
        drop(lock);

        let settings = backend.env();
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let remote = Remote::open_with(&backend.url(), &settings).unwrap();
        let sent = Count(Default::default());
        let pushed = remote.push(std::slice::from_ref(&entry), &sent).pop().unwrap().unwrap();
        assert_eq!(pushed, PushOutcome::Uploaded { bytes: body.len() as u64 });
        assert_eq!(sent.0.into_inner(), body.len() as u64);

        let b = Store::open(dir.join("b")).unwrap();
        let manifest = remote.manifest(&key).unwrap().expect("the manifest is there");
        let lock = b.lock(&key).unwrap();
        let received = Count(Default::default());
        let pulled = remote.pull(&b, &[(&lock, &manifest)], &received).pop().unwrap().unwrap();
        assert_eq!(received.0.into_inner(), body.len() as u64);
        assert_eq!(std::fs::read(pulled.out_dir().join("weights.safetensors")).unwrap(), body);
        assert_eq!(pulled.manifest.output_digest, entry.manifest.output_digest);
    });
}

#[test]
fn a_remote_that_cannot_be_reached_costs_one_warning_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(2, r#"["energy"]"#));
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = pipeline()
        .args(["run", recipe.to_str().unwrap(), "--json", "--remote", "s3://nowhere/x", "--cache"])
        .arg(dir.path().join("cache"))
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&parse_events(&out.stdout), "finished").len(), 5);
    let err = stderr(&out);
    assert_eq!(err.matches("this run goes on without the remote").count(), 1, "{err}");
}

#[test]
fn pull_and_gc_stop_with_exit_status_5_when_the_remote_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(2, r#"["energy"]"#));
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cmd = |args: &[&str]| {
        pipeline()
            .args(args)
            .arg("--cache")
            .arg(dir.path().join("cache"))
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    let recipe = recipe.to_str().unwrap();
    let pulled = cmd(&["pull", recipe, "--remote", "s3://nowhere/x"]);
    assert_eq!(pulled.status.code(), Some(5), "{}", stderr(&pulled));
    assert!(stderr(&pulled).contains("cannot ask the remote"), "{}", stderr(&pulled));
    let gc = cmd(&["gc", recipe, "--remote", "s3://nowhere/x", "--grace", "0"]);
    assert_eq!(gc.status.code(), Some(5), "{}", stderr(&gc));
    assert!(stderr(&gc).contains("nothing was deleted"), "{}", stderr(&gc));
    // Push too: one exit status for the same failure (issue 27, item 4).
    let pushed = cmd(&["push", recipe, "--remote", "s3://nowhere/x"]);
    assert_eq!(pushed.status.code(), Some(5), "{}", stderr(&pushed));
}

/// A folder remote is created by the first upload, not by opening it: a push with nothing to
/// send, a pull or a status leave no folder chain behind; the first real push creates it
/// (issue 32).
#[test]
fn a_folder_remote_is_created_by_the_first_upload_only() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, r#"["energy"]"#));
    let remote = dir.path().join("x/y/z");
    let url = format!("file://{}", remote.display());
    let empty = dir.path().join("empty-cache");
    let push = |cache: &Path| {
        pipeline()
            .arg("push")
            .arg(&recipe)
            .arg("--remote")
            .arg(&url)
            .arg("--cache")
            .arg(cache)
            .output()
            .unwrap()
    };
    let out = push(&empty);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("x").exists(), "nothing pushed, nothing created");
    let out = pipeline()
        .arg("pull")
        .arg(&recipe)
        .arg("--remote")
        .arg(&url)
        .arg("--cache")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!dir.path().join("x").exists(), "a pull creates nothing: {}", stderr(&out));
    let computed = dir.path().join("computed");
    let (out, _) = run(&recipe, &computed, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = push(&computed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(remote.join("entries").is_dir(), "the first upload creates the folder");
}

// ---- Issue 27: a remote that survives concurrency, damage and bad addresses. ----

/// A small deterministic generator for the tests' random offsets and floats (its seed is
/// printed, so a failure can be replayed with `PIPELINE_TEST_SEED`).
struct Lcg(u64);

impl Lcg {
    fn seeded() -> Lcg {
        let seed =
            std::env::var("PIPELINE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            });
        eprintln!("PIPELINE_TEST_SEED={seed}");
        Lcg(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^ (x >> 33)
    }
}

fn open(backend: &Backend) -> cache::remote::Remote {
    let settings = backend.env();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    cache::remote::Remote::open_with(&backend.url(), &settings).unwrap()
}

/// Every manifest on the remote that lists a blob the remote does not hold whole and sound
/// (pulled into a scratch cache, which checks every byte): the broken entries.
fn broken_entries(backend: &Backend, scratch: &Path) -> Vec<String> {
    struct Quiet;
    impl cache::remote::TransferProgress for Quiet {
        fn planned(&self, _: u64) {}
        fn moved(&self, _: u64) {}
    }
    let remote = open(backend);
    let _ = std::fs::remove_dir_all(scratch);
    let store = cache::Store::open(scratch).unwrap();
    let mut broken = Vec::new();
    for key in remote.keys().unwrap() {
        let Some(manifest) = remote.manifest(&key).unwrap() else { continue };
        let lock = store.lock(&key).unwrap();
        if let Err(e) = remote.pull(&store, &[(&lock, &manifest)], &Quiet).pop().unwrap() {
            broken.push(format!("{key}: {e}"));
        }
    }
    broken
}

/// The keys of the entries in a local cache.
fn local_keys(cache: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(cache.join("objects"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    keys.sort();
    keys
}

fn spawn(backend: &Backend, args: &[&str], cache: &Path) -> Child {
    pipeline()
        .args(args)
        .arg("--cache")
        .arg(cache)
        .envs(backend.env())
        .env_remove("PIPELINE_REMOTE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Issue 27, item 2: `gc --remote --grace 0` racing a push, at random offsets, 50 times per
/// remote. Before each race the recipe's manifests are removed and its blobs left: gc (for
/// another recipe) wants to delete exactly the blobs the push finds there and relies on.
/// Every other race, gc is given the pushed recipe itself (with an empty cache, so it names
/// the keys from the remote): then every entry the push wrote must still be there.
#[test]
fn gc_racing_push_never_breaks_an_entry() {
    let rng = std::cell::RefCell::new(Lcg::seeded());
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, true);
        std::fs::create_dir_all(dir.join("other")).unwrap();
        let other = write_recipe(&dir.join("other"), &tiny_recipe(1, r#"["energy"]"#));
        let other = other.to_str().unwrap().to_string();
        let keys = local_keys(&a);
        assert_eq!(keys.len(), 5);
        let (empty, scratch) = (dir.join("empty"), dir.join("scratch"));
        let races = 50;
        for race in 0..races {
            let pushed = command(backend, &["push", &recipe, "--remote", &url], &a);
            assert!(pushed.status.success(), "{}", stderr(&pushed));
            for key in &keys {
                backend.delete(&format!("entries/{key}.json"));
            }
            let keep_recipe = race % 2 == 1;
            let gc_args =
                ["gc", if keep_recipe { &recipe } else { &other }, "--remote", &url, "--grace", "0"];
            let gc_cache = if keep_recipe { empty.clone() } else { a.clone() };
            let offset = Duration::from_millis(rng.borrow_mut().next() % 150);
            let (push, gc) = if rng.borrow_mut().next().is_multiple_of(2) {
                let push = spawn(backend, &["push", &recipe, "--remote", &url, "--json"], &a);
                std::thread::sleep(offset);
                (push, spawn(backend, &gc_args, &gc_cache))
            } else {
                let gc = spawn(backend, &gc_args, &gc_cache);
                std::thread::sleep(offset);
                (spawn(backend, &["push", &recipe, "--remote", &url, "--json"], &a), gc)
            };
            let (push, gc) = (push.wait_with_output().unwrap(), gc.wait_with_output().unwrap());
            assert!(push.status.success(), "race {race}: push: {}", stderr(&push));
            assert!(gc.status.success(), "race {race}: gc: {}", stderr(&gc));
            let broken = broken_entries(backend, &scratch);
            assert!(broken.is_empty(), "race {race} ({offset:?}): broken entries: {broken:#?}");
            if keep_recipe {
                let remote = open(backend);
                let there: Vec<String> = remote.keys().unwrap().iter().map(|k| k.to_string()).collect();
                for key in &keys {
                    assert!(there.contains(key), "race {race}: gc deleted {key}, which the recipe uses");
                }
            }
        }
        eprintln!("{races} races against {url}: no broken entry");
    });
}

/// Issue 27, item 3: a bucket that does not exist is an error (exit status 5) for every
/// command, and `run --remote` says so once and goes on.
#[test]
fn a_missing_bucket_is_an_error_not_an_empty_remote() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (recipe, _, a) = computed(&Backend::Folder(dir.path().join("unused")), dir.path(), false);
    let backend = Backend::S3 { moto: &moto, bucket: "no-such-bucket".into() };
    let url = backend.url();
    for args in [
        &["pull", &recipe, "--remote", &url][..],
        &["push", &recipe, "--remote", &url],
        &["gc", &recipe, "--remote", &url, "--grace", "0"],
    ] {
        let out = command(&backend, args, &a);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("the bucket `no-such-bucket` does not exist"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = pipeline()
        .args(["run", &recipe, "--json", "--remote", &url, "--remote-read-only", "--cache"])
        .arg(dir.path().join("fresh"))
        .envs(backend.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("does not exist").count(), 1, "said once: {err}");
    assert!(err.contains("this run goes on without the remote"), "{err}");
}

/// Issue 27, items 3 and 6: malformed addresses are refused (exit status 2) before any
/// request, never a panic, and no folder named after them is created.
#[test]
fn malformed_addresses_are_refused_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = write_recipe(dir.path(), &tiny_recipe(1, r#"["energy"]"#));
    let recipe = recipe.to_str().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for (url, why) in [
        ("s3:/lab/x", "must be followed by `//`"),
        ("s3:lab", "must be followed by `//`"),
        ("s3://my bucket/x", "contains ' '"),
        ("s3://lab\u{1b}[31m/x", "control characters"),
        ("s3://a/x", "3 to 63 characters"),
        ("s3://lab/a//b", "empty, `.` or `..` part"),
        ("gs://lab/x", "not a kind of remote"),
        ("file://relative/x", "absolute path"),
    ] {
        for command in [&["push", recipe][..], &["pull", recipe], &["gc", recipe, "--grace", "0"]] {
            let out = pipeline()
                .args(command)
                .args(["--remote", url, "--cache"])
                .arg(dir.path().join("cache"))
                .current_dir(&work)
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .env_remove("PIPELINE_REMOTE")
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{command:?} {url}: {err}");
            assert!(err.contains("is not a remote address") && err.contains(why), "{url}: {err}");
            assert!(!err.contains('\u{1b}'), "no raw escape code: {err:?}");
        }
    }
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "nothing created");
}

/// Rewrites the remote's manifest of `key` with `edit` applied to its JSON text.
fn tamper_manifest(backend: &Backend, key: &str, text: &str) {
    match backend {
        Backend::Folder(path) => std::fs::write(path.join(format!("entries/{key}.json")), text).unwrap(),
        Backend::S3 { moto, bucket } => assert_eq!(
            moto.request("PUT", &format!("/{bucket}/lab/ood/entries/{key}.json"), text.as_bytes()),
            200
        ),
    }
}

/// Issue 27, items 4 and 7: damaged manifests (a wrong digest, a `../` name with an escape
/// code in it, unparsable JSON) are named by every command with exit status 1: pull, push
/// (which says how to repair), gc (which removes them); `push --verify` replaces them.
#[test]
fn damaged_manifests_are_named_with_exit_status_1_and_can_be_repaired() {
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, true);
        let recipe = recipe.as_str();
        let report = manifest_of(&a, "table");
        let key = report["key"].as_str().unwrap().to_string();
        let good = serde_json::to_string_pretty(&report).unwrap();
        let mut bad_digest = report.clone();
        bad_digest["files"]["report.md"]["blake3"] = blake3_of(b"other").into();
        let mut escape = report.clone();
        let record = escape["files"]["report.md"].clone();
        escape["files"].as_object_mut().unwrap().insert("\u{1b}[2J../../x".into(), record);
        for (damage, text) in [
            ("a wrong digest", serde_json::to_string(&bad_digest).unwrap()),
            ("a `../` name", serde_json::to_string(&escape).unwrap()),
            ("unparsable JSON", "{\"key\": ".to_string()),
        ] {
            tamper_manifest(backend, &key, &text);
            let b = dir.join("b");
            let _ = std::fs::remove_dir_all(&b);
            let pulled = command(backend, &["pull", recipe, "--remote", &url, "--json"], &b);
            let err = stderr(&pulled);
            assert_eq!(pulled.status.code(), Some(1), "{damage}: {err}");
            assert!(err.contains("`table` is not pulled") && err.contains(&key), "{damage}: {err}");
            assert!(!err.contains('\u{1b}'), "{damage}: names are printed escaped: {err:?}");
            assert_eq!(json(&pulled)["pulled"], 4, "{damage}");

            let pushed = command(backend, &["push", recipe, "--remote", &url], &a);
            let err = stderr(&pushed);
            assert_eq!(pushed.status.code(), Some(1), "{damage}: {err}");
            assert!(err.contains("manifest is damaged") && err.contains("push --verify"), "{damage}: {err}");

            let gc = command(backend, &["gc", recipe, "--remote", &url, "--json"], &a);
            assert_eq!(gc.status.code(), Some(1), "{damage}: {}", stderr(&gc));
            assert_eq!(json(&gc)["damaged"][0]["key"], key.as_str(), "{damage}");
            assert!(stderr(&gc).contains("is damaged"), "{}", stderr(&gc));
            let pushed = command(backend, &["push", recipe, "--remote", &url, "--json"], &a);
            assert!(pushed.status.success(), "{damage}: {}", stderr(&pushed));
            assert_eq!(json(&pushed)["pushed"], 1, "gc removed it, push put it back");

            tamper_manifest(backend, &key, &text);
            let verified = command(backend, &["push", recipe, "--remote", &url, "--verify"], &a);
            assert!(verified.status.success(), "{damage}: {}", stderr(&verified));
            assert!(stderr(&verified).contains("damaged manifest was replaced"), "{}", stderr(&verified));
            let _ = std::fs::remove_dir_all(&b);
            let pulled = command(backend, &["pull", recipe, "--remote", &url, "--json"], &b);
            assert!(pulled.status.success(), "{damage}: {}", stderr(&pulled));
            assert_eq!(json(&pulled)["pulled"], 5);
        }
        let _ = good;
    });
}

fn blake3_of(bytes: &[u8]) -> String {
    let remote_dir = tempfile::tempdir().unwrap();
    let path = remote_dir.path().join("f");
    std::fs::write(&path, bytes).unwrap();
    cache::hash_file(&path).unwrap()
}

/// Issue 27, item 7: a same-size damaged blob is "already there" for a plain push; `push
/// --verify` re-hashes it, uploads it again, and the entry pulls.
#[test]
fn push_verify_replaces_a_same_size_damaged_blob() {
    for_each_remote(|backend, dir| {
        let (recipe, url, a) = computed(backend, dir, true);
        let recipe = recipe.as_str();
        let report = manifest_of(&a, "table");
        let digest = report["files"]["report.md"]["blake3"].as_str().unwrap();
        let path = a.join("objects").join(report["key"].as_str().unwrap()).join("out/report.md");
        let mut bytes = std::fs::read(path).unwrap();
        bytes[3] ^= 1;
        backend.overwrite_blob(digest, &bytes);
        let plain = command(backend, &["push", recipe, "--remote", &url, "--json"], &a);
        assert!(plain.status.success(), "{}", stderr(&plain));
        assert_eq!(json(&plain)["already_there"], 5);
        let verified = command(backend, &["push", recipe, "--remote", &url, "--verify", "--json"], &a);
        assert!(verified.status.success(), "{}", stderr(&verified));
        let repaired: u64 = json(&verified)["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["repaired"].as_u64())
            .sum();
        assert_eq!(repaired, 1, "{}", stderr(&verified));
        let pulled = command(backend, &["pull", recipe, "--remote", &url, "--json"], &dir.join("b"));
        assert!(pulled.status.success(), "{}", stderr(&pulled));
        assert_eq!(json(&pulled)["pulled"], 5);
    });
}

/// Issue 27, item 8: floats with 17 significant digits push and pull (keys re-derive from
/// the manifests), here random ones through a recipe.
#[test]
fn random_floats_in_a_recipe_push_and_pull() {
    let rng = std::cell::RefCell::new(Lcg::seeded());
    for_each_remote(|backend, dir| {
        // A random f64 in [0.01, 0.1), written as the shortest text that gives it back.
        let lr = loop {
            let x = 0.01 + (rng.borrow_mut().next() >> 11) as f64 / (1u64 << 53) as f64 * 0.09;
            if format!("{x}").trim_start_matches("0.").trim_start_matches('0').len() >= 16 {
                break x;
            }
        };
        let text = tiny_recipe(1, r#"["energy"]"#).replace("lr = 0.05", &format!("lr = {lr}"));
        let recipe = write_recipe(dir, &text);
        let a = dir.join("a");
        assert!(run(&recipe, &a, &[]).0.status.success());
        let (recipe, url) = (recipe.to_str().unwrap(), backend.url());
        let pushed = command(backend, &["push", recipe, "--remote", &url, "--json"], &a);
        assert_eq!(json(&pushed)["pushed"], 5, "lr = {lr}: {}", stderr(&pushed));
        let pulled = command(backend, &["pull", recipe, "--remote", &url, "--json"], &dir.join("b"));
        assert!(pulled.status.success(), "lr = {lr}: {}", stderr(&pulled));
        assert_eq!(json(&pulled)["pulled"], 5, "lr = {lr}");
    });
}

/// Issue 27, item 5: an endpoint that accepts connections and never answers fails every
/// command with exit status 5 and a timeout error, within the configured bound.
#[test]
fn a_silent_endpoint_fails_within_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (recipe, _, a) = computed(&Backend::Folder(dir.path().join("unused")), dir.path(), false);
    for command in [&["push", &recipe][..], &["pull", &recipe], &["gc", &recipe, "--grace", "0"]] {
        let mut child = pipeline()
            .args(command)
            .args(["--remote", "s3://silent/x", "--timeout", "1", "--connect-timeout", "1", "--cache"])
            .arg(if command[0] == "pull" { dir.path().join("empty") } else { a.clone() })
            .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("PIPELINE_REMOTE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A watchdog, not a measurement: a command still waiting after two minutes is hung.
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{command:?} still waits for a silent endpoint after 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{command:?}: {err}");
        assert!(err.to_lowercase().contains("timed out") || err.contains("timeout"), "{command:?}: {err}");
    }
}

/// Issue 27, item 9: partial files of killed uploads on a folder remote are removed by gc and
/// by the next push of that blob.
#[test]
fn partial_files_of_killed_uploads_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Folder(dir.path().join("remote"));
    let (recipe, url, a) = computed(&backend, dir.path(), true);
    let blobs = dir.path().join("remote/blobs");
    let report = manifest_of(&a, "table");
    let digest = report["files"]["report.md"]["blake3"].as_str().unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    let partial = |name: &str| {
        let path = blobs.join(name);
        std::fs::write(&path, b"partial").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        path
    };
    // The next push of that blob removes its stale partial file.
    let (one, two) = (partial(&format!("{digest}#1")), partial(&format!("{digest}#2")));
    backend.delete(&format!("blobs/{digest}"));
    let pushed = command(&backend, &["push", &recipe, "--remote", &url], &a);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    assert!(!one.exists() && !two.exists(), "a push of the blob removes its partial files");
    // gc removes every partial file older than the grace period.
    let other = partial("0000#1");
    let gc = command(&backend, &["gc", &recipe, "--remote", &url, "--grace", "60", "--json"], &a);
    assert!(gc.status.success(), "{}", stderr(&gc));
    assert_eq!(json(&gc)["partial_files"], 1);
    assert!(!other.exists());
}

/// Issue 27, item 9: a pull that waited for the locks of entries another process committed
/// meanwhile downloads nothing of them.
#[test]
fn a_pull_that_waited_for_its_locks_downloads_nothing_committed_meanwhile() {
    struct Quiet;
    impl cache::remote::TransferProgress for Quiet {
        fn planned(&self, _: u64) {}
        fn moved(&self, _: u64) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Folder(dir.path().join("remote"));
    let (recipe, url, a) = computed(&backend, dir.path(), true);
    let b = dir.path().join("b");
    let store = cache::Store::open(&b).unwrap();
    let remote = open(&backend);
    let keys: Vec<cache::CacheKey> =
        local_keys(&a).iter().map(|k| cache::CacheKey::parse(k).unwrap()).collect();
    let locks: Vec<cache::KeyLock> = keys.iter().map(|k| store.lock(k).unwrap()).collect();
    let child = spawn(&backend, &["pull", &recipe, "--remote", &url, "--json"], &b);
    // Whether the pull has looked before these commits or not, it must download nothing.
    std::thread::sleep(Duration::from_millis(500));
    for (key, lock) in keys.iter().zip(&locks) {
        let manifest = remote.manifest(key).unwrap().unwrap();
        remote.pull(&store, &[(lock, &manifest)], &Quiet).pop().unwrap().unwrap();
    }
    drop(locks);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["pulled"], 0, "{}", stderr(&out));
    assert_eq!(json(&out)["already_here"], 5);
}
