//! Class subsets shared by the labelled formats: keep the samples whose label is listed,
//! relabelled 0..K−1 in the order given, at most `limit` of them after leaving out the first
//! `skip` (a held-out part of a split: the images a `limit`ed training set does not use).
use super::image_set::ImageSet;
use crate::error::StageError;
use std::path::Path;

pub(crate) struct ClassFilter {
    relabel: Vec<Option<u32>>,
    classes: Vec<u32>,
    limit: Option<usize>,
    skip: usize,
}

impl ClassFilter {
    /// Leaves out the first `skip` samples of the listed classes.
    pub(crate) fn skipping(self, skip: usize) -> ClassFilter {
        ClassFilter { skip, ..self }
    }

    /// `total` is the number of classes the format has; listed classes must be below it.
    pub(crate) fn new(
        classes: Option<&[u32]>,
        total: usize,
        limit: Option<usize>,
    ) -> Result<ClassFilter, String> {
        let classes: Vec<u32> = classes.map(<[u32]>::to_vec).unwrap_or_else(|| (0..total as u32).collect());
        let mut relabel = vec![None; total];
        for (new, &old) in classes.iter().enumerate() {
            let slot = relabel.get_mut(old as usize).ok_or_else(|| {
                format!("class {old} does not exist (this dataset has classes 0..{})", total - 1)
            })?;
            *slot = Some(new as u32);
        }
        Ok(ClassFilter { relabel, classes, limit, skip: 0 })
    }

    /// Builds the set from `(label, pixels)` records, pixels as bytes in (C, H, W) order.
    pub(crate) fn collect<'a>(
        &self,
        records: impl Iterator<Item = (u32, &'a [u8])>,
        shape: [usize; 3],
        path: &Path,
    ) -> Result<ImageSet, StageError> {
        let mut set =
            ImageSet { pixels: Vec::new(), labels: Vec::new(), shape, num_classes: self.classes.len() };
        let mut skipped = 0;
        for (label, pixels) in records {
            if self.limit.is_some_and(|limit| set.len() >= limit) {
                break;
            }
            let Some(new_label) = self.relabel.get(label as usize).copied().flatten() else { continue };
            if skipped < self.skip {
                skipped += 1;
                continue;
            }
            set.labels.push(new_label);
            set.pixels.extend(pixels.iter().map(|&p| p as f32 / 255.0));
        }
        if set.is_empty() && self.skip > 0 {
            return Err(StageError::Format {
                path: path.into(),
                message: format!(
                    "`skip = {}` leaves no image: the split has {skipped} of the classes {:?}",
                    self.skip, self.classes
                ),
            });
        }
        if set.is_empty() {
            return Err(StageError::Format {
                path: path.into(),
                message: format!("no sample has one of the classes {:?}", self.classes),
            });
        }
        Ok(set)
    }
}

/// For `check`: an error when `skip` (if set) leaves no sample of `classes` (every class when
/// `None`) among `labels`, the labels of one split read from `place`.
pub(crate) fn check_skip(
    skip: Option<usize>,
    classes: Option<&[u32]>,
    labels: impl IntoIterator<Item = u8>,
    place: &Path,
) -> Result<(), StageError> {
    let Some(skip) = skip.filter(|&s| s > 0) else { return Ok(()) };
    let listed = |label: u8| classes.is_none_or(|c| c.contains(&(label as u32)));
    let available = labels.into_iter().filter(|&l| listed(l)).count();
    if skip >= available {
        return Err(StageError::Unsuitable(format!(
            "`skip = {skip}` leaves no image: `{}` has {available} of the listed classes in this split",
            place.display()
        )));
    }
    Ok(())
}
