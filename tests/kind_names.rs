//! The engine knows no stage kind by name: what it needs of a kind (its Slurm defaults, whether
//! it chooses on validation data or reports) comes from the kind's declared role, so a new kind
//! gets the right treatment without an edit in the engine. No kind name appears as a string
//! literal in engine/src outside test modules.
use std::path::Path;

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_stage_kind_name_is_written_in_the_engine() {
    let kinds: Vec<&str> = stages::kinds::registry().iter().map(|k| k.name()).collect();
    assert!(kinds.contains(&"train") && kinds.contains(&"umap"), "{kinds:?}");
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src"), &mut files);
    assert!(files.len() > 20);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Test modules come last in a file and may name kinds in recipes they write.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            for kind in &kinds {
                if line.contains(&format!("\"{kind}\"")) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "stage kind names written in the engine:\n{}", found.join("\n"));
}
