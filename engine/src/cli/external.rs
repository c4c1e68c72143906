//! `pipeline inspect` and `pipeline export`: checkpoints to and from other code bases.
use super::commands::cached_output;
use super::exit::Status;
use super::shell::Shell;
use stages::models::external::{exported, identify, pth, write_checkpoint, Naming};
use std::path::{Path, PathBuf};

/// `pipeline inspect FILE`: every tensor, then what the file matches.
pub fn inspect(file: &Path, shell: &Shell) -> anyhow::Result<Status> {
    let tensors = pth::read_any(file).map_err(|e| anyhow::anyhow!("`{}`: {e}", file.display()))?;
    let mut rows = Vec::new();
    for (name, tensor) in &tensors {
        let dtype = format!("{:?}", tensor.dtype()).to_lowercase();
        shell.out(&format!("{name:<48} {:<20} {dtype}", format!("{:?}", tensor.dims())));
        rows.push(serde_json::json!({"name": name, "shape": tensor.dims(), "dtype": dtype}));
    }
    let matches = identify(&tensors);
    if matches.is_empty() {
        shell.out("matches no architecture and naming the pipeline knows");
    }
    let mut found = Vec::new();
    for (naming, architecture, classes, channels) in &matches {
        let arch = serde_json::to_value(architecture)?;
        shell.out(&format!(
            "matches: naming = \"{}\", arch = {}, classes = {classes}, {channels} input channels",
            naming.name(),
            inline_table(architecture)?
        ));
        found.push(serde_json::json!({"naming": naming.name(), "arch": arch, "classes": classes, "channels": channels}));
    }
    shell.emit(serde_json::json!({"file": file, "tensors": rows, "matches": found}));
    Ok(Status::Success)
}

/// An architecture as a recipe writes it: a TOML inline table, keys in declaration order.
fn inline_table(architecture: &impl serde::Serialize) -> anyhow::Result<String> {
    let lines = toml::to_string(architecture)?;
    Ok(format!("{{ {} }}", lines.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(", ")))
}

/// The naming called `name`.
fn naming(name: &str) -> anyhow::Result<Naming> {
    Naming::ALL.into_iter().find(|n| n.name() == name).ok_or_else(|| {
        let known: Vec<&str> = Naming::ALL.iter().map(|n| n.name()).collect();
        anyhow::anyhow!("unknown naming `{name}` (one of: {})", known.join(", "))
    })
}

/// `pipeline export RECIPE STAGE --to FILE --naming NAMING`.
pub fn export(
    recipe: &Path,
    stage: &str,
    to: &Path,
    naming_name: &str,
    cache: Option<PathBuf>,
    shell: &Shell,
) -> anyhow::Result<Status> {
    let naming = naming(naming_name)?;
    let dir = cached_output(recipe, stage, cache, shell)?;
    let (spec, tensors) = exported(&dir, naming).map_err(|e| anyhow::anyhow!("`{stage}`: {e}"))?;
    write_checkpoint(&tensors, to).map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", to.display()))?;
    let arch = serde_json::to_value(&spec.architecture)?;
    shell.out(&format!(
        "{}: {} tensors ({} naming), arch = {}, {} classes, affine batch norm: {}",
        to.display(),
        tensors.len(),
        naming.name(),
        inline_table(&spec.architecture)?,
        spec.num_classes,
        spec.affine_bn
    ));
    shell.out(&format!(
        "normalise inputs with mean {:?}, std {:?} (the model file holds no normalisation)",
        spec.mean, spec.std
    ));
    shell.emit(serde_json::json!({
        "file": to, "naming": naming.name(), "tensors": tensors.len(), "architecture": arch,
        "classes": spec.num_classes, "affine_bn": spec.affine_bn, "mean": spec.mean, "std": spec.std,
    }));
    Ok(Status::Success)
}
