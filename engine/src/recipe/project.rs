//! A project's `pipeline.toml`: site settings that belong to the machine or cluster rather than
//! to an experiment: `[remote] url` (the default remote) and `[executor.slurm]` (partition,
//! account, default resources…, which a recipe's own `[executor.slurm]` overrides field by
//! field). This module finds the file and is its one reader. Errors carry the file, line and
//! column.
use super::diagnostic::{Diagnostic, Source};
use super::resources::{read_slurm, SlurmSettings};
use super::tree::{Node, NodeValue};
use std::path::{Path, PathBuf};

/// The project file: `[remote] url = "…"`, `[executor.slurm]`.
pub const PROJECT_FILE: &str = "pipeline.toml";

/// The nearest `pipeline.toml` from `start` upwards, if any.
pub fn find(start: &Path) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join(PROJECT_FILE)).find(|p| p.is_file())
}

/// What a project file sets.
#[derive(Debug, Default)]
pub struct Project {
    /// `[remote] url`, if set (and not blank).
    pub remote: Option<String>,
    /// `[executor.slurm]` (default settings without one).
    pub slurm: SlurmSettings,
}

const SECTIONS: &[&str] = &["remote", "executor"];

/// Reads the project file at `path`: the one reader of `pipeline.toml`, so every command
/// agrees on what it accepts. Unknown sections and keys are errors (with "did you mean"), each
/// at its line and column.
pub fn read(path: &Path) -> Result<Project, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::whole_file(path, format!("cannot read the project file: {e}"))])?;
    let source = Source::new(path, text);
    let (root, mut diagnostics) = Node::parse(&source, &|_, s| Ok(s.to_string()))?;
    diagnostics.extend(root.unknown_keys(SECTIONS, "the project file", &source));
    let mut project = Project::default();
    for entry in root.entries() {
        let is_table = matches!(entry.node.value, NodeValue::Table(_));
        if SECTIONS.contains(&entry.key.as_str()) && !is_table {
            diagnostics.push(Diagnostic::new(
                &source,
                entry.node.span.clone(),
                format!("[{}] must be a table, found {}", entry.key, entry.node.type_name()),
            ));
        }
    }
    if let Some(remote) = root.get("remote").filter(|e| matches!(e.node.value, NodeValue::Table(_))) {
        diagnostics.extend(remote.node.unknown_keys(&["url"], "[remote]", &source));
        if let Some(url) = remote.node.get("url") {
            match url.node.as_str() {
                Some(text) => project.remote = Some(text.to_string()).filter(|u| !u.trim().is_empty()),
                None => diagnostics.push(Diagnostic::new(
                    &source,
                    url.node.span.clone(),
                    format!("`url` must be a string, found {}", url.node.type_name()),
                )),
            }
        }
    }
    if let Some(executor) = root.get("executor").filter(|e| matches!(e.node.value, NodeValue::Table(_))) {
        diagnostics.extend(executor.node.unknown_keys(&["slurm"], "[executor]", &source));
        if let Some(slurm) = executor.node.get("slurm") {
            let kinds: Vec<&str> = stages::registry().iter().map(|k| k.name()).collect();
            match read_slurm(&slurm.node, &kinds) {
                Ok(read) => project.slurm = read,
                Err(problems) => {
                    for p in problems {
                        diagnostics.push(Diagnostic::new(&source, executor.node.locate(&p.path), p.message));
                    }
                }
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(project)
    } else {
        diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(diagnostics)
    }
}

/// The `[executor.slurm]` table of the project file at `path` (default settings without one).
pub fn slurm_settings(path: &Path) -> Result<SlurmSettings, Vec<Diagnostic>> {
    read(path).map(|project| project.slurm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_file_gives_site_settings_with_positions_for_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(
            &path,
            "[remote]\nurl = \"/srv/cache\"\n\n[executor.slurm]\npartition = \"gpu\"\ndefaults = { mem = \"4G\", cpus = 2 }\n",
        )
        .unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(find(&nested).as_deref(), Some(path.as_path()));
        let settings = slurm_settings(&path).unwrap();
        assert_eq!(settings.partition.as_deref(), Some("gpu"));
        assert_eq!(settings.defaults.mem.as_deref(), Some("4G"));

        std::fs::write(&path, "[executor.slurm]\ndefaults = { time = \"forever\" }\n").unwrap();
        let errors = slurm_settings(&path).unwrap_err();
        assert_eq!((errors[0].line, errors[0].column), (2, 21), "{:?}", errors[0].message);
        assert!(errors[0].message.contains("not a Slurm time"));

        // Unknown keys are refused by the one reader, whichever command reads the file.
        std::fs::write(
            &path,
            "[remote]\nurl = \"/srv\"\nbucket = 3\n\n[executr.slurm]\npartition = \"gpu\"\n",
        )
        .unwrap();
        let errors = read(&path).unwrap_err();
        let at: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(3, 1), (5, 2)], "{errors:?}");
        assert!(errors[1].help.as_deref().is_some_and(|h| h.contains("executor")));
        assert!(slurm_settings(&path).is_err(), "the Slurm reader refuses what the remote reader refuses");
    }
}
