//! Helpers for end-to-end tests: a tiny recipe on the embedded MNIST digits, and running the
//! real `pipeline` binary with `--json` events.
#![allow(dead_code)]
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/data/mnist-10k")
}

/// A small recipe: train (tiny CNN, few images) → checkpoint → two score stages → report.
/// `epochs` and `methods` of the second score stage are parameters so tests can change them.
pub fn tiny_recipe(epochs: usize, first_methods: &str) -> String {
    format!(
        r#"[recipe]
name = "tiny"
device = "cpu"

[datasets.id]
format = "idx"
root = "{data}"
classes = [0, 1, 2]
limit = 192

[datasets.ood]
format = "idx"
root = "{data}"
classes = [7, 8]
limit = 96

[datasets.noise]
format = "uniform-noise"
count = 96

[stages.base]
kind = "train"
data = "id"
widths = [4, 8]
strides = [2, 2]
epochs = {epochs}
batch_size = 32
lr = 0.05
checkpoint_every = 1

[stages.first]
kind = "checkpoint"
from = "base"
epoch = 1

[stages.scores_base]
kind = "score"
model = "base"
id = "id"
ood = ["ood", "noise"]

[stages.scores_first]
kind = "score"
model = "first"
id = "id"
ood = ["ood", "noise"]
methods = {first_methods}

[stages.table]
kind = "report"
scores = ["scores_base", "scores_first"]
"#,
        data = data_dir().display()
    )
}

pub fn pipeline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
}

/// Runs `pipeline run RECIPE --json --cache CACHE`; returns the output and its JSON events.
pub fn run(recipe: &Path, cache: &Path, extra: &[&str]) -> (Output, Vec<Value>) {
    let output = pipeline()
        .arg("run")
        .arg(recipe)
        .arg("--json")
        .arg("--cache")
        .arg(cache)
        .args(extra)
        .output()
        .expect("pipeline runs");
    let events = parse_events(&output.stdout);
    (output, events)
}

pub fn parse_events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Stage ids with the given event (`finished`, `reused`, …), sorted.
pub fn stages_with(events: &[Value], event: &str) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| e["stage"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// The output folder of a stage as the events report it.
pub fn outputs_of(events: &[Value], stage: &str) -> PathBuf {
    let e =
        events.iter().find(|e| e["stage"] == stage && e["outputs"].is_string()).expect("stage has outputs");
    PathBuf::from(e["outputs"].as_str().unwrap())
}

pub fn write_recipe(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every output file of every committed entry in `cache`: (entry key, file) → bytes.
pub fn outputs_by_key(cache: &Path) -> std::collections::BTreeMap<(String, String), Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(cache.join("objects")).unwrap().flatten() {
        let key = entry.file_name().to_string_lossy().into_owned();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(entry.path().join("manifest.json")).unwrap()).unwrap();
        for name in manifest["files"].as_object().unwrap().keys() {
            all.insert(
                (key.clone(), name.clone()),
                std::fs::read(entry.path().join("out").join(name)).unwrap(),
            );
        }
    }
    all
}
