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
    let mut models = ModelInputs::default();
    for (&name, stage) in stages {
        let model = models.of(stages, stage.model_source(), &mut shape_of);
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

/// The input shape of the model behind each stage, and the dataset it is trained on, found
/// once per stage: a chain of 100,000 fine-tunings is walked once, not once per stage.
#[derive(Default)]
struct ModelInputs {
    /// Stage name → what [`ModelInputs::of`] found for the model it builds or passes on.
    known: HashMap<String, Option<([usize; 3], String)>>,
}

impl ModelInputs {
    /// The input shape of the model behind `source` and the dataset it is trained on: the
    /// first dataset the stage that builds it (its model source is an architecture) reads.
    /// `None` when it cannot be told (a missing stage or dataset, reported elsewhere, or a
    /// cycle).
    fn of(
        &mut self,
        stages: &BTreeMap<&str, &dyn Stage>,
        source: Option<ModelSource>,
        shape_of: &mut ShapeOf,
    ) -> Option<([usize; 3], String)> {
        let ModelSource::Upstream(first) = source? else { return None };
        // Walk up to a stage already known or to the one that builds the model, then record
        // the answer for every stage passed on the way.
        let mut walked: Vec<String> = Vec::new();
        let mut name = first;
        let answer = loop {
            if let Some(known) = self.known.get(&name) {
                break known.clone();
            }
            if walked.len() > stages.len() {
                break None;
            }
            let Some(stage) = stages.get(name.as_str()) else { break None };
            walked.push(name.clone());
            match stage.model_source() {
                Some(ModelSource::Architecture(_)) => {
                    break stage.reads().into_iter().next().and_then(|(dataset, split)| {
                        shape_of(&dataset, split).ok().map(|shape| (shape, dataset))
                    });
                }
                Some(ModelSource::Upstream(upstream)) => name = upstream,
                None => break None,
            }
        };
        for name in walked {
            self.known.insert(name, answer.clone());
        }
        answer
    }
}
