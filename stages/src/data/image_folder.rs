//! A folder of images (Textures/DTD, Places365, LSUN, iSUN, iNaturalist, TinyImageNet subsets,
//! or auxiliary outliers): every `.png`, `.jpg` and `.jpeg` below it, in sorted path order,
//! decoded, forced to RGB and resized to `size`×`size`. Unlabelled; both splits are the same set.
use super::image_set::ImageSet;
use crate::error::ParamError;
use crate::error::StageError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

fn default_size() -> usize {
    32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderSpec {
    pub root: PathBuf,
    /// Side of the square the images are resized to.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Use only the first N images (in path order).
    #[serde(default)]
    pub limit: Option<usize>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StageError> {
    let entries = std::fs::read_dir(dir).map_err(StageError::io("cannot list", dir))?;
    for entry in entries {
        let path = entry.map_err(StageError::io("cannot list", dir))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageFolderSpec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        let mut problems = Vec::new();
        if self.size == 0 {
            problems.push(ParamError::new(&["size"], "must be at least 1"));
        }
        if self.limit == Some(0) {
            problems.push(ParamError::new(&["limit"], "must be at least 1"));
        }
        problems
    }

    /// The images, sorted, after `limit`.
    pub(super) fn files(&self) -> Result<Vec<PathBuf>, StageError> {
        if !self.root.is_dir() {
            return Err(StageError::Format {
                path: self.root.clone(),
                message: match super::catalogue::for_folder(&self.root) {
                    Some(entry) => format!(
                        "missing image folder ({})",
                        super::catalogue::how_to_get(entry.name, &self.root)
                    ),
                    None => {
                        "missing image folder (expected a folder of .png/.jpg files, searched recursively)"
                            .into()
                    }
                },
            });
        }
        let mut files = Vec::new();
        walk(&self.root, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(StageError::Format {
                path: self.root.clone(),
                message: "holds no .png or .jpg image".into(),
            });
        }
        files.truncate(self.limit.unwrap_or(usize::MAX));
        Ok(files)
    }

    pub(super) fn load(&self) -> Result<ImageSet, StageError> {
        let files = self.files()?;
        let side = self.size as u32;
        let mut pixels = Vec::with_capacity(files.len() * 3 * self.size * self.size);
        for path in &files {
            let image = image::open(path)
                .map_err(|e| StageError::Format {
                    path: path.clone(),
                    message: format!("cannot decode: {e}"),
                })?
                .to_rgb8();
            let image = if image.dimensions() == (side, side) {
                image
            } else {
                image::imageops::resize(&image, side, side, image::imageops::FilterType::Triangle)
            };
            // Interleaved RGB → (C, H, W) planes.
            for c in 0..3 {
                pixels.extend(image.pixels().map(|p| p.0[c] as f32 / 255.0));
            }
        }
        Ok(ImageSet {
            pixels,
            labels: vec![0; files.len()],
            shape: [3, self.size, self.size],
            num_classes: 0,
        })
    }
}
