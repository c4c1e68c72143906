//! Which images a dataset declaration resolves to, compared by content rather than by name: the
//! leakage guard of `pipeline check` asks whether the images a `select` stage chooses on can be
//! any of the images a report tests on, however the two sets are called.
//!
//! A labelled format read from files resolves to a *source* (its format, its resolved root, the
//! split and the split's files) and, within that source, the samples of some classes at
//! positions `skip .. skip + limit` of the class-filtered stream. Image folders have no split and
//! no classes: the first `limit` files of the folder. Synthetic noise is identical exactly when
//! its whole declaration is (same count, shape, distribution and seed), whatever the split.
use super::image_set::Split;
use std::path::{Path, PathBuf};

/// The images one split of a dataset declaration resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Extent {
    /// Samples read from files.
    Files {
        /// Format, resolved root, split and split files: two extents with different sources
        /// share no image.
        source: String,
        /// The classes kept, sorted (`None`: all of them).
        classes: Option<Vec<u32>>,
        /// Positions in the class-filtered stream: `start .. end` (`end` `None`: to the end).
        start: usize,
        end: Option<usize>,
    },
    /// Generated images: the declaration in full.
    Generated(String),
}

/// The root as the file system resolves it (symbolic links, `.`, `..`), or, where it does not
/// exist, with `.` and `..` resolved in the text.
pub(crate) fn resolved(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| {
        let mut out = PathBuf::new();
        for part in root.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    })
}

pub(crate) fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

fn sorted(classes: &Option<Vec<u32>>) -> Option<Vec<u32>> {
    classes.as_ref().map(|list| {
        let mut list = list.clone();
        list.sort_unstable();
        list
    })
}

/// The samples of `classes` at `skip .. skip + limit` of `source`.
pub(crate) fn files(
    source: String,
    classes: &Option<Vec<u32>>,
    skip: Option<usize>,
    limit: Option<usize>,
) -> Extent {
    let start = skip.unwrap_or(0);
    Extent::Files { source, classes: sorted(classes), start, end: limit.map(|l| start + l) }
}

impl Extent {
    /// Why the two extents may share images, or `None` when they cannot.
    pub fn overlap(&self, other: &Extent) -> Option<String> {
        match (self, other) {
            (Extent::Generated(a), Extent::Generated(b)) if a == b => {
                Some(format!("both are the same generated images ({a})"))
            }
            (
                Extent::Files { source: a, classes: ca, start: sa, end: ea },
                Extent::Files { source: b, classes: cb, start: sb, end: eb },
            ) if a == b => {
                let common: Option<Vec<u32>> = match (ca, cb) {
                    (None, None) => None,
                    (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                    (Some(x), Some(y)) => Some(x.iter().copied().filter(|c| y.contains(c)).collect()),
                };
                if common.as_ref().is_some_and(Vec::is_empty) {
                    return None;
                }
                let which = match &common {
                    None => "every class".to_string(),
                    Some(list) => format!("classes {list:?}"),
                };
                if ca == cb {
                    // The same class-filtered stream: positions compare directly.
                    let (lo, hi) = ((*sa).max(*sb), end_min(*ea, *eb));
                    if hi.is_some_and(|hi| hi <= lo) {
                        return None;
                    }
                    let hi = hi.map_or("the end".to_string(), |h| h.to_string());
                    Some(format!("both read positions {lo}..{hi} of {which} of {a}"))
                } else {
                    // Different class filters number the samples differently; without reading
                    // the labels the ranges cannot be told apart, so any shared class counts.
                    Some(format!("both read {which} of {a} (class filters differ, so their skip/limit ranges cannot be told apart)"))
                }
            }
            _ => None,
        }
    }
}

fn end_min(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (Some(x), None) | (None, Some(x)) => Some(x),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DatasetSpec;

    fn spec(json: serde_json::Value) -> DatasetSpec {
        DatasetSpec::from_json(json).unwrap()
    }

    fn idx(extra: serde_json::Value) -> DatasetSpec {
        let mut json = serde_json::json!({"format": "idx", "root": "/data/mnist"});
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec(json)
    }

    #[test]
    fn renamed_declarations_of_the_same_images_overlap() {
        let a = idx(serde_json::json!({"classes": [8, 9]}));
        let b = idx(serde_json::json!({"classes": [9, 8]}));
        let why = a.extent(Split::Test).overlap(&b.extent(Split::Test)).expect("same images");
        assert!(why.contains("positions 0..the end of classes [8, 9]"), "{why}");
        // The other split is other images.
        assert_eq!(a.extent(Split::Train).overlap(&b.extent(Split::Test)), None);
        // Disjoint classes share nothing; one shared class is enough to overlap.
        let c = idx(serde_json::json!({"classes": [6, 7]}));
        assert_eq!(a.extent(Split::Test).overlap(&c.extent(Split::Test)), None);
        let d = idx(serde_json::json!({"classes": [7, 8]}));
        assert!(a.extent(Split::Test).overlap(&d.extent(Split::Test)).is_some());
        // The same folder written another way is the same source.
        let dotted =
            spec(serde_json::json!({"format": "idx", "root": "/data/x/../mnist/.", "classes": [8, 9]}));
        assert!(a.extent(Split::Test).overlap(&dotted.extent(Split::Test)).is_some());
        // Another root is another source.
        let e = spec(serde_json::json!({"format": "idx", "root": "/data/other", "classes": [8, 9]}));
        assert_eq!(a.extent(Split::Test).overlap(&e.extent(Split::Test)), None);
    }

    #[test]
    fn skip_and_limit_ranges_overlap_only_where_they_meet() {
        let head = idx(serde_json::json!({"limit": 4000}));
        let rest = idx(serde_json::json!({"skip": 4000}));
        let middle = idx(serde_json::json!({"skip": 3990, "limit": 20}));
        let t = Split::Train;
        assert_eq!(head.extent(t).overlap(&rest.extent(t)), None, "0..4000 and 4000..");
        let why = head.extent(t).overlap(&middle.extent(t)).expect("3990..4000 is shared");
        assert!(why.contains("positions 3990..4000"), "{why}");
        assert!(rest.extent(t).overlap(&middle.extent(t)).unwrap().contains("4000..4010"));
        // With different class filters the positions are not comparable: refused.
        let digits = idx(serde_json::json!({"classes": [0, 1], "skip": 4000}));
        assert!(head.extent(t).overlap(&digits.extent(t)).unwrap().contains("cannot be told apart"));
    }

    #[test]
    fn generated_sets_overlap_when_declared_alike_whatever_the_split() {
        let a = spec(serde_json::json!({"format": "uniform-noise", "count": 8, "seed": 2}));
        let b = spec(serde_json::json!({"format": "uniform-noise", "count": 8, "seed": 2}));
        let c = spec(serde_json::json!({"format": "uniform-noise", "count": 8, "seed": 3}));
        let g = spec(serde_json::json!({"format": "gaussian-noise", "count": 8, "seed": 2}));
        assert!(a.extent(Split::Train).overlap(&b.extent(Split::Test)).is_some());
        assert_eq!(a.extent(Split::Test).overlap(&c.extent(Split::Test)), None);
        assert_eq!(a.extent(Split::Test).overlap(&g.extent(Split::Test)), None);
        // A folder has no split.
        let f = spec(serde_json::json!({"format": "image-folder", "root": "/data/ood"}));
        assert!(f.extent(Split::Train).overlap(&f.extent(Split::Test)).is_some());
    }
}
