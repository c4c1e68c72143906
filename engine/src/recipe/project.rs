//! A project's `pipeline.toml`: site settings that belong to the machine or cluster rather than
//! to an experiment. This module finds the file; `[remote]` is read by the remote-cache module;
//! this module reads
//! `[executor.slurm]` (partition, account, default resources…), which a recipe's own
//! `[executor.slurm]` overrides field by field. Errors carry the file, line and column.
use super::diagnostic::{Diagnostic, Source};
use super::resources::{read_slurm, SlurmSettings};
use super::tree::Node;
use std::path::{Path, PathBuf};

/// The project file: `[remote] url = "…"`, `[executor.slurm]`.
pub const PROJECT_FILE: &str = "pipeline.toml";

/// The nearest `pipeline.toml` from `start` upwards, if any.
pub fn find(start: &Path) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join(PROJECT_FILE)).find(|p| p.is_file())
}

/// The `[executor.slurm]` table of the project file at `path` (default settings without one).
pub fn slurm_settings(path: &Path) -> Result<SlurmSettings, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::whole_file(path, format!("cannot read the project file: {e}"))])?;
    let source = Source { path: path.to_path_buf(), text };
    let (root, mut diagnostics) = Node::parse(&source, &|s| Ok(s.to_string()))?;
    let mut settings = SlurmSettings::default();
    if let Some(executor) = root.get("executor") {
        if let Some(slurm) = executor.node.get("slurm") {
            let kinds: Vec<&str> = stages::registry().iter().map(|k| k.name()).collect();
            match read_slurm(&slurm.node, &kinds) {
                Ok(read) => settings = read,
                Err(problems) => {
                    for p in problems {
                        diagnostics.push(Diagnostic::new(&source, executor.node.locate(&p.path), p.message));
                    }
                }
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(settings)
    } else {
        Err(diagnostics)
    }
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
    }
}
