//! What most commands open first: the recipe (its diagnostics printed when invalid), the
//! cache, and the remote.
use super::shell::Shell;
use crate::error::EngineError;
use crate::recipe::Recipe;
use crate::remote::remote_url;
use cache::remote::Remote;
use cache::Store;
use std::path::{Path, PathBuf};

/// Loads a recipe; an invalid one has its diagnostics printed and becomes a recipe error, one
/// that cannot be read an I/O error.
pub fn load(path: &Path, shell: &Shell) -> Result<Recipe, EngineError> {
    readable(path)?;
    Recipe::load(path).map_err(|diagnostics| {
        for d in &diagnostics {
            shell.diagnostic(&d.render());
        }
        EngineError::Recipe {
            path: path.to_path_buf(),
            count: crate::recipe::diagnostic::error_count(&diagnostics),
        }
    })
}

/// A recipe named on the command line that cannot be read (missing, a folder, no permission)
/// is an I/O error, exit status 6, not an invalid recipe.
pub fn readable(path: &Path) -> Result<(), EngineError> {
    let metadata = std::fs::metadata(path).map_err(EngineError::io("read the recipe", path))?;
    if metadata.is_dir() {
        return Err(EngineError::io("read the recipe", path)(std::io::Error::other("it is a folder")));
    }
    std::fs::File::open(path).map_err(EngineError::io("read the recipe", path))?;
    Ok(())
}

pub fn open_store(cache: Option<PathBuf>) -> Result<Store, EngineError> {
    let path = cache
        .or_else(|| std::env::var_os("PIPELINE_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".pipeline-cache"));
    Store::open(&path).map_err(|source| EngineError::Cache { path, source })
}

/// The remote a command uses: `flag` (`default` or nothing: the configured one), else the
/// environment, the recipe, `pipeline.toml`; none at all is a usage error.
pub fn open_remote(flag: Option<&str>, recipe: Option<&Recipe>) -> Result<Remote, EngineError> {
    let flag = flag.filter(|f| *f != "default");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(url) = remote_url(flag, recipe, &cwd)? else {
        return Err(EngineError::Usage(
            "no remote named: pass --remote URL, set PIPELINE_REMOTE, or add [remote] url = \"…\" to the \
             recipe or to pipeline.toml"
                .into(),
        ));
    };
    Ok(Remote::open(&url)?)
}
