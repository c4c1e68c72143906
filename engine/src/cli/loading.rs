//! What most commands open first: the recipe (its diagnostics printed when invalid), the
//! cache, and the remote.
use super::shell::Shell;
use crate::error::EngineError;
use crate::lock;
use crate::recipe::Recipe;
use crate::remote::remote_url;
use cache::remote::{Remote, RemoteOptions};
use cache::Store;
use std::path::{Path, PathBuf};

/// Loads a recipe; an invalid one has its diagnostics printed and becomes a recipe error, one
/// that cannot be read an I/O error.
///
/// A file a stage names that is not here (an imported checkpoint) takes its digest from the
/// recipe's lock file, if it has one, so that the keys are those the lock's author named: a
/// reviewer without the file can still pull and show the entries.
pub fn load(path: &Path, shell: &Shell) -> Result<Recipe, EngineError> {
    readable(path)?;
    let mut recipe = Recipe::load(path).map_err(|diagnostics| {
        for d in &diagnostics {
            shell.diagnostic(&d.render());
        }
        EngineError::Recipe {
            path: path.to_path_buf(),
            count: crate::recipe::diagnostic::error_count(&diagnostics),
        }
    })?;
    let lock_path = lock::lock_path(path);
    // An unreadable lock is reported by the commands that read it for the datasets.
    if let Ok(Some(lock)) = lock::read(&lock_path) {
        let used = lock::use_locked_files(&mut recipe, &lock);
        if !used.is_empty() {
            shell.status(
                "Locked",
                &format!(
                    "digest{} of {} from {}; not here",
                    if used.len() == 1 { "" } else { "s" },
                    used.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "),
                    lock_path.display()
                ),
            );
        }
    }
    Ok(recipe)
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

/// Which remote a command asked for, and how long it may take (`None`: from
/// `$PIPELINE_REMOTE_TIMEOUT` and `$PIPELINE_REMOTE_CONNECT_TIMEOUT`, else 30 s and 5 s).
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteRequest<'a> {
    pub flag: Option<&'a str>,
    pub timeout: Option<f64>,
    pub connect_timeout: Option<f64>,
}

/// The timeouts of `request`, from its flags, else the environment, else the defaults.
pub fn remote_options(request: &RemoteRequest) -> Result<RemoteOptions, EngineError> {
    let seconds = |flag: Option<f64>, variable: &str, default: std::time::Duration| {
        let (value, from) = match flag {
            Some(value) => (value, format!("--{}", variable_flag(variable))),
            None => match std::env::var(variable).ok().filter(|v| !v.trim().is_empty()) {
                Some(text) => (
                    text.trim().parse::<f64>().map_err(|_| {
                        EngineError::Usage(format!("${variable} = `{text}` is not a number of seconds"))
                    })?,
                    format!("${variable}"),
                ),
                None => return Ok(default),
            },
        };
        if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
            return Err(EngineError::Usage(format!(
                "{from} = {value}: a timeout is a number of seconds above 0 and at most 86400"
            )));
        }
        Ok(std::time::Duration::from_secs_f64(value))
    };
    let defaults = RemoteOptions::default();
    Ok(RemoteOptions {
        timeout: seconds(request.timeout, "PIPELINE_REMOTE_TIMEOUT", defaults.timeout)?,
        connect_timeout: seconds(
            request.connect_timeout,
            "PIPELINE_REMOTE_CONNECT_TIMEOUT",
            defaults.connect_timeout,
        )?,
    })
}

fn variable_flag(variable: &str) -> &'static str {
    if variable.ends_with("CONNECT_TIMEOUT") {
        "connect-timeout"
    } else {
        "timeout"
    }
}

/// The remote a command uses: `flag` (`default` or nothing: the configured one), else the
/// environment, the recipe, `pipeline.toml`; none at all is a usage error.
pub fn open_remote(flag: Option<&str>, recipe: Option<&Recipe>) -> Result<Remote, EngineError> {
    open_remote_with(&RemoteRequest { flag, ..RemoteRequest::default() }, recipe)
}

/// [`open_remote`] with the request's timeouts.
pub fn open_remote_with(request: &RemoteRequest, recipe: Option<&Recipe>) -> Result<Remote, EngineError> {
    let options = remote_options(request)?;
    let flag = request.flag.filter(|f| *f != "default");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let Some(url) = remote_url(flag, recipe, &cwd)? else {
        return Err(EngineError::Usage(
            "no remote named: pass --remote URL, set PIPELINE_REMOTE, or add [remote] url = \"…\" to the \
             recipe or to pipeline.toml"
                .into(),
        ));
    };
    Ok(Remote::open_with_options(&url, &[], options)?)
}
