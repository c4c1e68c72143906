//! Golden regression test: the cache keys of every shipped recipe and the output bytes of the
//! smoke recipes, recorded in `tests/golden/` before the "one home per concept" refactor.
//!
//! A refactor must change neither. When a stage's outputs change on purpose (and its version is
//! bumped), regenerate the files deliberately with `PIPELINE_BLESS=1 cargo test --test golden`
//! and say why in the commit.
//!
//! - `keys.txt`: for every instance of every recipe under `recipes/`, a *structural* key: the
//!   real key inputs (kind, version, parameters with defaults, stage seed, dataset fingerprints)
//!   with each upstream's output digest replaced by that upstream's structural key. Downstream
//!   keys need upstream outputs, which only running gives; this covers everything a stage's
//!   declaration contributes to its key without running dozens of GPU-hours.
//! - `smoke_outputs.txt`: the smoke recipes run for real: every instance's real cache key, its
//!   output digest and the blake3 of each output file. One file per CPU class (`cpu_class`:
//!   AVX-512, AVX2): training's last bits differ between them. Bless on each class when outputs
//!   change on purpose.
mod common;
use common::pipeline;
use engine::plan::Plan;
use engine::recipe::Recipe;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recipes_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    found
}

/// Compares `actual` with the golden file `name`, or writes it under `PIPELINE_BLESS=1`.
fn check_golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("PIPELINE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (PIPELINE_BLESS=1 writes it)", path.display()));
    let (expected_lines, actual_lines): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let differing: Vec<String> = expected_lines
        .iter()
        .zip(&actual_lines)
        .filter(|(e, a)| e != a)
        .take(10)
        .map(|(e, a)| format!("  expected {e}\n  actual   {a}"))
        .collect();
    assert!(
        expected == actual,
        "{} differs ({} lines expected, {} actual); first differences:\n{}",
        path.display(),
        expected_lines.len(),
        actual_lines.len(),
        differing.join("\n")
    );
}

#[test]
fn structural_cache_keys_of_every_shipped_recipe_are_unchanged() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = cache::Store::open(store_dir.path()).unwrap();
    let mut out = String::new();
    let mut recipes = recipes_in(&root().join("recipes"));
    recipes.extend(recipes_in(&root().join("recipes/smoke")));
    for path in recipes {
        // No environment: `${PIPELINE_DATA:-data}` takes its default on every machine.
        let recipe = Recipe::load_with_env(&path, &|_| None)
            .unwrap_or_else(|d| panic!("{} is invalid: {d:?}", path.display()));
        let plan = Plan::new(&recipe, None);
        let (fingerprints, _missing) = engine::plan::fingerprint_datasets(&recipe, &plan, &store);
        let mut keys: Vec<String> = Vec::new();
        let relative = path.strip_prefix(root()).unwrap().display().to_string();
        for i in 0..plan.instances.len() {
            let digest = |d: usize| keys[d].clone();
            let key = plan.key_inputs(&recipe, i, &digest, &fingerprints).key();
            writeln!(out, "{relative} {} {}", plan.instances[i].id, key.as_str()).unwrap();
            keys.push(key.as_str().to_string());
        }
    }
    check_golden("keys.txt", &out);
}

#[test]
fn smoke_recipes_give_the_same_keys_and_output_bytes() {
    let mut out = String::new();
    for path in recipes_in(&root().join("recipes/smoke")) {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let run =
            pipeline().arg("run").arg(&path).arg("--quiet").arg("--cache").arg(&cache_dir).output().unwrap();
        assert!(run.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&run.stderr));
        let recipe = Recipe::load(&path).unwrap();
        let refs = cache_dir.join("refs").join(&recipe.name);
        let mut ids: BTreeMap<String, PathBuf> = BTreeMap::new();
        for entry in std::fs::read_dir(&refs).unwrap() {
            let p = entry.unwrap().path();
            ids.insert(p.file_stem().unwrap().to_string_lossy().into_owned(), p);
        }
        let relative = path.strip_prefix(root()).unwrap().display().to_string();
        for (id, ref_path) in ids {
            let inputs: cache::KeyInputs = serde_json::from_slice(&std::fs::read(ref_path).unwrap()).unwrap();
            let key = inputs.key();
            let manifest: cache::Manifest = serde_json::from_slice(
                &std::fs::read(cache_dir.join("objects").join(key.as_str()).join("manifest.json")).unwrap(),
            )
            .unwrap();
            writeln!(out, "{relative} {id} key {} output {}", key.as_str(), manifest.output_digest).unwrap();
            for (file, record) in &manifest.files {
                writeln!(out, "{relative} {id}   {file} {} {}", record.size, record.blake3).unwrap();
            }
        }
    }
    check_golden(&format!("smoke_outputs{}.txt", cpu_class()), &out);
}

/// The suffix of the smoke outputs' golden file for this CPU. Training's bytes depend on the
/// CPU's vector instructions (and cache sizes): a DenseNet step on an AVX-512 Xeon and on an
/// AVX2-only EPYC give different last bits, the same keys for every stage that reads no other
/// stage's output. Each class keeps its own file: `smoke_outputs.txt` for AVX-512,
/// `smoke_outputs.avx2.txt` for AVX2 without it, `smoke_outputs.other.txt` for the rest.
fn cpu_class() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ".avx2";
        }
    }
    ".other"
}
