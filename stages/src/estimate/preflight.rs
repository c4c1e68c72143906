//! Before anything runs: every dataset split a stage reads is there, and its images have the
//! shape of the model they go through. Only headers are read (IDX), or the presence of the
//! files (formats with a fixed shape), so `pipeline check` finds in a moment what would
//! otherwise fail after the training stages before it.
use super::workload::ModelSource;
use crate::data::{DatasetSpec, Split};
use crate::stage::Stage;
use std::collections::{BTreeMap, HashMap};

/// A dataset a stage cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataProblem {
    /// The stage that reads it.
    pub stage: String,
    /// The dataset, as the recipe names it.
    pub dataset: String,
    pub message: String,
}

/// The problems of every stage of `stages` (by name) with the datasets it reads.
pub fn check_datasets(
    stages: &BTreeMap<&str, &dyn Stage>,
    datasets: &BTreeMap<String, DatasetSpec>,
) -> Vec<DataProblem> {
    let mut shapes: HashMap<(String, bool), Result<[usize; 3], String>> = HashMap::new();
    let mut shape_of = |name: &str, split: Split| -> Result<[usize; 3], String> {
        shapes
            .entry((name.to_string(), split == Split::Train))
            .or_insert_with(|| match datasets.get(name) {
                Some(spec) => spec.shape(split).map_err(|e| e.to_string()),
                None => Err(format!("no dataset `{name}`")),
            })
            .clone()
    };
    let mut problems = Vec::new();
    for (&name, stage) in stages {
        let model = model_input(stages, stage.model_source(), &mut shape_of);
        for (dataset, split) in stage.reads() {
            let problem = match (shape_of(&dataset, split), &model) {
                (Err(message), _) => {
                    Some(format!("dataset `{dataset}` ({} split): {message}", split_name(split)))
                }
                (Ok(shape), Some((model_shape, trained_on))) if shape != *model_shape => Some(format!(
                    "dataset `{dataset}` has images of shape {shape:?}, the model takes {model_shape:?} \
                     (it is trained on `{trained_on}`)"
                )),
                _ => None,
            };
            if let Some(message) = problem {
                problems.push(DataProblem { stage: name.to_string(), dataset, message });
            }
        }
    }
    problems
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// The image shape of a dataset split, or why it cannot be read.
type ShapeOf<'a> = dyn FnMut(&str, Split) -> Result<[usize; 3], String> + 'a;

/// The input shape of the model behind `source` and the dataset it is trained on: the first
/// dataset the stage that builds it (its model source is an architecture) reads. `None` when it
/// cannot be told (a missing stage or dataset, reported elsewhere).
fn model_input(
    stages: &BTreeMap<&str, &dyn Stage>,
    source: Option<ModelSource>,
    shape_of: &mut ShapeOf,
) -> Option<([usize; 3], String)> {
    let mut source = source?;
    for _ in 0..=stages.len() {
        let ModelSource::Upstream(name) = source else { return None };
        let stage = stages.get(name.as_str())?;
        match stage.model_source()? {
            ModelSource::Architecture(_) => {
                let (dataset, split) = stage.reads().into_iter().next()?;
                return shape_of(&dataset, split).ok().map(|shape| (shape, dataset));
            }
            upstream => source = upstream,
        }
    }
    None
}
