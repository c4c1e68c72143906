//! `pipeline fetch`: downloads a public dataset archive (or takes a local copy), checks it
//! against its published MD5, and unpacks it where the recipes expect it. Nothing is left
//! half-done: downloads go to `DIR/.fetch/NAME.part` and are renamed once complete, archives are
//! unpacked into a staging folder that is renamed into place only when every entry is out, and
//! a folder that already exists is never overwritten.
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use stages::data::catalogue::{CatalogueEntry, Origin, Unpack};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot use `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a readable .tar.gz archive", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot download {url}: {message}")]
    Download { url: String, message: String },
    #[error("{path}: MD5 is {actual}, but the published checksum of {name} is {expected} (a corrupt or different file; nothing was unpacked)")]
    Checksum { path: PathBuf, name: String, expected: String, actual: String },
    #[error("{path}: unsafe or unsupported archive entry `{entry}` ({why})")]
    UnsafeEntry { path: PathBuf, entry: String, why: &'static str },
    #[error("{path}: the archive has no top-level folder `{folder}`")]
    MissingFolder { path: PathBuf, folder: String },
    #[error("{name} cannot be fetched automatically: {instructions}")]
    Manual { name: String, instructions: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io { path: path.to_path_buf(), source }
}

/// What `fetch` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The folder was unpacked (or the file placed) at this path.
    Installed(PathBuf),
    /// The folder was already there; nothing was downloaded.
    AlreadyPresent(PathBuf),
}

/// The MD5 of a file, as lowercase hex.
pub fn md5_of(path: &Path) -> Result<String, FetchError> {
    let mut reader = BufReader::new(File::open(path).map_err(io(path))?);
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetches `entry` into `data_dir`, from `local_archive` when given, else from its URL.
pub fn fetch(
    entry: &CatalogueEntry,
    data_dir: &Path,
    local_archive: Option<&Path>,
    quiet: bool,
) -> Result<Fetched, FetchError> {
    let (url, md5, bytes, unpack) = match entry.origin {
        Origin::Download { url, md5, bytes, unpack } => (url, md5, bytes, unpack),
        Origin::Manual(instructions) => {
            return Err(FetchError::Manual { name: entry.name.into(), instructions: instructions.into() })
        }
    };
    let target = data_dir.join(entry.folder);
    // An empty folder (made by hand, or left by a mount point) holds nothing: it is filled.
    let empty = std::fs::read_dir(&target).is_ok_and(|mut entries| entries.next().is_none());
    if target.exists() && !empty {
        return Ok(Fetched::AlreadyPresent(target));
    }
    let staging_root = data_dir.join(".fetch");
    std::fs::create_dir_all(&staging_root).map_err(io(&staging_root))?;
    let file_name = entry.file_name().unwrap_or(entry.name);
    let archive = match local_archive {
        Some(path) => path.to_path_buf(),
        None => {
            let done = staging_root.join(file_name);
            if !done.is_file() {
                download(url, &staging_root.join(format!("{file_name}.part")), &done, bytes, quiet)?;
            }
            done
        }
    };
    let actual = md5_of(&archive)?;
    if actual != md5 {
        if local_archive.is_none() {
            // A corrupt download is useless; a user's own file is left alone.
            let _ = std::fs::remove_file(&archive);
        }
        return Err(FetchError::Checksum {
            path: archive,
            name: entry.name.into(),
            expected: md5.into(),
            actual,
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!("{}-", entry.name))
        .tempdir_in(&staging_root)
        .map_err(io(&staging_root))?;
    let produced = match unpack {
        Unpack::TarGz => {
            unpack_tar_gz(&archive, staging.path())?;
            let top = staging.path().join(entry.folder);
            if !top.is_dir() {
                return Err(FetchError::MissingFolder { path: archive, folder: entry.folder.into() });
            }
            top
        }
        Unpack::Plain => {
            let folder = staging.path().join(entry.folder);
            std::fs::create_dir_all(&folder).map_err(io(&folder))?;
            let placed = folder.join(file_name);
            std::fs::copy(&archive, &placed).map_err(io(&placed))?;
            folder
        }
    };
    std::fs::rename(&produced, &target).map_err(io(&target))?;
    if local_archive.is_none() {
        let _ = std::fs::remove_file(&archive);
    }
    Ok(Fetched::Installed(target))
}

/// Streams `url` into `part`, then renames it to `done`.
fn download(url: &str, part: &Path, done: &Path, expected_bytes: u64, quiet: bool) -> Result<(), FetchError> {
    let failed = |message: String| FetchError::Download { url: url.into(), message };
    let response = ureq::get(url).call().map_err(|e| failed(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(expected_bytes);
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar.set_message(format!("downloading {url}"));
    let mut reader = response.into_body().into_reader();
    let mut out = File::create(part).map_err(io(part))?;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buffer).map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n]).map_err(io(part))?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(io(part))?;
    bar.finish_and_clear();
    std::fs::rename(part, done).map_err(io(done))
}

/// Unpacks regular files and folders of a .tar.gz into `into`, refusing absolute paths, `..`,
/// links and devices (an archive must not write outside its folder).
pub fn unpack_tar_gz(archive_path: &Path, into: &Path) -> Result<(), FetchError> {
    let file = File::open(archive_path).map_err(io(archive_path))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let broken = |source: std::io::Error| FetchError::Archive { path: archive_path.to_path_buf(), source };
    for item in archive.entries().map_err(broken)? {
        let mut item = item.map_err(broken)?;
        let path = item.path().map_err(broken)?.into_owned();
        let unsafe_entry = |why| FetchError::UnsafeEntry {
            path: archive_path.to_path_buf(),
            entry: path.display().to_string(),
            why,
        };
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(unsafe_entry("absolute or `..` path"));
        }
        let kind = item.header().entry_type();
        let destination = into.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&destination).map_err(io(&destination))?;
        } else if kind.is_file() {
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            let mut out = File::create(&destination).map_err(io(&destination))?;
            std::io::copy(&mut item, &mut out).map_err(broken)?;
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname()
        {
            continue;
        } else {
            return Err(unsafe_entry("links and special files are not unpacked"));
        }
    }
    Ok(())
}
