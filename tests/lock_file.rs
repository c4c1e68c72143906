//! The lock file beside a recipe: a reviewer with the recipe and its lock but without the data
//! pulls the author's results and reads the report; data that differ from the lock are named
//! with the file; `--locked` fails when the recipe or the data no longer match it.
mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A copy of the embedded digits that the test may delete or damage.
fn copy_of_the_data(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(data_dir()).unwrap().flatten() {
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    data
}

fn tiny_on(data: &Path) -> String {
    tiny_recipe(1, r#"["msp", "energy"]"#)
        .replace(&data_dir().display().to_string(), &data.display().to_string())
}

fn output(args: &[&str], recipe: &Path, cache: &Path) -> std::process::Output {
    pipeline().args(args).arg(recipe).arg("--cache").arg(cache).output().unwrap()
}

#[test]
fn a_reviewer_without_the_data_pulls_with_the_lock_and_reads_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_the_data(dir.path());
    let author = dir.path().join("author");
    std::fs::create_dir_all(&author).unwrap();
    let recipe = write_recipe(&author, &tiny_on(&data));
    let remote = dir.path().join("remote");
    let locked = output(&["lock"], &recipe, &dir.path().join("author-cache"));
    assert!(locked.status.success(), "{}", stderr(&locked));
    let lock = recipe.with_extension("lock");
    let before = std::fs::read_to_string(&lock).expect("`pipeline lock` writes the lock");
    let (out, _) = run(&recipe, &dir.path().join("author-cache"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&lock).unwrap();
    assert_ne!(text, before, "run keeps it current: every key and output digest now");
    assert!(text.matches("output = ").count() == 5, "{text}");
    assert!(text.contains("[datasets.id]") && text.contains("train-labels-idx1-ubyte.gz"), "{text}");
    assert!(
        text.contains("[instances.\"base@0\"]")
            || text.contains("[instances.base@0]")
            || text.contains("base@0"),
        "{text}"
    );
    let pushed = pipeline()
        .args(["push", "--remote"])
        .arg(&remote)
        .arg("--cache")
        .arg(dir.path().join("author-cache"))
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", stderr(&pushed));

    // The reviewer: the recipe and its lock, no data (and no cache).
    let reviewer = dir.path().join("reviewer");
    std::fs::create_dir_all(&reviewer).unwrap();
    let reviewed = reviewer.join("tiny.toml");
    std::fs::copy(&recipe, &reviewed).unwrap();
    std::fs::copy(&lock, reviewer.join("tiny.lock")).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    let cache = reviewer.join("cache");
    let pulled = pipeline()
        .args(["pull", "--remote"])
        .arg(&remote)
        .arg("--cache")
        .arg(&cache)
        .arg(&reviewed)
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    assert!(stderr(&pulled).contains("keys from") && stderr(&pulled).contains("`id`"), "{}", stderr(&pulled));
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains("5 stage(s) pulled"),
        "{}",
        String::from_utf8_lossy(&pulled.stdout)
    );
    let status = output(&["status"], &reviewed, &cache);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("0 of 5 stage(s) will run"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let shown =
        pipeline().arg("show").arg(&reviewed).arg("table").arg("--cache").arg(&cache).output().unwrap();
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("report.md"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    // `run` finds everything cached, though it has no data.
    let (out, events) = run(&reviewed, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stages_with(&events, "reused").len(), 5);
}

#[test]
fn data_that_differ_from_the_lock_are_named_and_locked_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_the_data(dir.path());
    let recipe = write_recipe(dir.path(), &tiny_on(&data));
    let cache = dir.path().join("cache");
    let locked = output(&["lock"], &recipe, &cache);
    assert!(locked.status.success(), "{}", stderr(&locked));
    assert!(output(&["status", "--locked"], &recipe, &cache).status.success());

    // The same digits, another file: its labels damaged.
    let labels = data.join("train-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&labels).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&labels, bytes).unwrap();
    let status = output(&["status"], &recipe, &cache);
    assert!(
        stderr(&status).contains("dataset `id` differs from")
            && stderr(&status).contains("file `train-labels-idx1-ubyte.gz` has other contents"),
        "{}",
        stderr(&status)
    );
    let refused = output(&["status", "--locked"], &recipe, &cache);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--locked") && stderr(&refused).contains("dataset `id`"),
        "{}",
        stderr(&refused)
    );
    let (out, _) = run(&recipe, &cache, &["--locked"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // Restored data and an edited recipe: `--locked` names the instances whose key changed.
    std::fs::copy(data_dir().join("train-labels-idx1-ubyte.gz"), &labels).unwrap();
    assert!(output(&["status", "--locked"], &recipe, &cache).status.success());
    let edited = std::fs::read_to_string(&recipe).unwrap().replace("lr = 0.05", "lr = 0.07");
    std::fs::write(&recipe, edited).unwrap();
    let refused = output(&["status", "--locked"], &recipe, &cache);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("instance `base@0` has another key"), "{}", stderr(&refused));
}

/// A reviewer whose copy of the data differs from the author's cannot delete the author's
/// entries from the shared remote: `gc --remote` keeps every entry the recipe's lock names.
#[test]
fn gc_on_the_remote_by_a_reviewer_with_other_data_keeps_what_the_lock_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = copy_of_the_data(dir.path());
    let recipe = write_recipe(dir.path(), &tiny_on(&data));
    let (cache, remote) = (dir.path().join("cache"), dir.path().join("remote"));
    assert!(output(&["lock"], &recipe, &cache).status.success());
    let (out, _) = run(&recipe, &cache, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pushed = pipeline()
        .args(["push", "--remote"])
        .arg(&remote)
        .arg("--cache")
        .arg(&cache)
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let entries = || std::fs::read_dir(remote.join("entries")).unwrap().count();
    assert_eq!(entries(), 5);

    // The reviewer's labels differ: every key it names is another one.
    let labels = data.join("train-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&labels).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&labels, bytes).unwrap();
    let gc = pipeline()
        .args(["gc", "--grace", "0", "--remote"])
        .arg(&remote)
        .arg("--cache")
        .arg(dir.path().join("reviewer-cache"))
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(stderr(&gc).contains("dataset `id` differs from"), "{}", stderr(&gc));
    assert_eq!(entries(), 5, "the author's entries stay: {}", String::from_utf8_lossy(&gc.stdout));
}
