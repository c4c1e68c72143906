//! Bounded fuzzing of recipe validation (issue 12): seeded mutations of every shipped recipe —
//! byte flips, deleted and repeated lines, values swapped for other types, huge and non-finite
//! numbers, deep nesting — must never panic or hang, and every error must carry a line and a
//! column. The `.npy` reader gets the same treatment. Seeds are fixed, so a failure reproduces.
use engine::plan::Plan;
use engine::recipe::Recipe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small seeded generator (SplitMix64): the test needs no dependency for its randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const REPLACEMENTS: &[&str] = &[
    "\"x\"",
    "[1, 2]",
    "{ a = 1 }",
    "true",
    "-1",
    "0",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999",
    "18446744073709551615",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "\"${UNSET_VARIABLE}\"",
    "\"../../../../etc\"",
    "\"\"",
];

fn mutate(text: &str, rng: &mut Rng) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(6) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
            2 | 3 => {
                // A value swapped for another type or an extreme number.
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {}", REPLACEMENTS[rng.below(REPLACEMENTS.len())]);
                }
            }
            4 => lines.insert(i, format!("[stages.s{}]", rng.below(5))),
            _ => {
                let n = rng.below(500);
                lines[i] = format!("{}{}", "[".repeat(n), lines[i]);
            }
        }
    }
    let mut bytes = lines.join("\n").into_bytes();
    if rng.below(3) == 0 && !bytes.is_empty() {
        let at = rng.below(bytes.len());
        bytes[at] ^= 1 << rng.below(8);
    }
    bytes
}

fn shipped_recipes() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for dir in ["recipes", "recipes/smoke", "bench"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn mutated_recipes_never_panic_and_every_error_has_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = shipped_recipes();
    assert!(recipes.len() >= 8);
    let started = Instant::now();
    let mut cases = 0;
    for (r, source) in recipes.iter().enumerate() {
        let text = std::fs::read_to_string(source).unwrap();
        // Keep relative data paths working from the temporary folder.
        let text =
            text.replace("../data/", &format!("{}/", source.parent().unwrap().join("../data").display()));
        let path = dir.path().join(format!("fuzz{r}.toml"));
        let mut rng = Rng(0x5eed + r as u64);
        for case in 0..400 {
            let bytes = mutate(&text, &mut rng);
            std::fs::write(&path, &bytes).unwrap();
            let one = Instant::now();
            let outcome = std::panic::catch_unwind(|| match Recipe::load_with_env(&path, &|_| None) {
                Ok(recipe) => {
                    let plan = Plan::new(&recipe, None);
                    let _ = recipe.check_data(None);
                    Ok(plan.instances.len())
                }
                Err(diagnostics) => Err(diagnostics),
            });
            let result = outcome.unwrap_or_else(|_| {
                panic!(
                    "{} case {case} panicked; input:\n{}",
                    source.display(),
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                one.elapsed() < Duration::from_secs(5),
                "{} case {case} took {:?}",
                source.display(),
                one.elapsed()
            );
            if let Err(diagnostics) = result {
                assert!(!diagnostics.is_empty());
                let n = diagnostics.len();
                for (k, d) in diagnostics.into_iter().enumerate() {
                    // The count of errors left out of a long list comes last, with no position.
                    if d.not_shown > 0 {
                        assert_eq!(k, n - 1, "the count of the errors left out comes last");
                        continue;
                    }
                    assert!(
                        d.line >= 1 && d.column >= 1,
                        "{} case {case}: `{}` has no position; input:\n{}",
                        source.display(),
                        d.message,
                        String::from_utf8_lossy(&bytes)
                    );
                    assert!(d.render().len() < 20_000, "a short rendering");
                }
            }
            cases += 1;
        }
    }
    assert!(cases >= 3000, "{cases} cases");
    assert!(started.elapsed() < Duration::from_secs(120), "{cases} cases in {:?}", started.elapsed());
}

#[test]
fn mutated_npy_files_are_read_or_refused_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.npy");
    stages::formats::npy::write_f64(&path, &[0.5, -1.0, 2.0, 1e300]).unwrap();
    let valid = std::fs::read(&path).unwrap();
    let mut rng = Rng(7);
    for case in 0..3000 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            if bytes.is_empty() {
                break;
            }
            match rng.below(3) {
                0 => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                _ => {
                    let at = rng.below(bytes.len());
                    bytes[at] = b"0123456789(),'<>f8iu:Tr"[rng.below(23)];
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| stages::formats::npy::read_f64(&path));
        assert!(outcome.is_ok(), "case {case} panicked on {bytes:?}");
    }
}
