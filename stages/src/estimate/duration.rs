//! Duration estimates for `pipeline plan`: each stage says what it computes (its model, the
//! datasets it reads, how many passes, training or evaluation: `Stage::workload`); the
//! throughput of that model on the recipe's device comes from a table kept in the cache folder
//! (`throughput.json`, images/s per configuration), filled by measuring a few steps when asked
//! (`pipeline plan --estimate`). The estimator only follows stage names and multiplies.
pub use super::throughput::ThroughputTable;
use super::throughput::{measure_throughput, throughput_key};
use super::workload::{dataset_size, ModelSource, Passes, Workload};
use crate::data::{DatasetSpec, Split};
use crate::device::describe;
use crate::error::StageError;
use crate::stage::Stage;
use candle_core::Device;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

type DatasetSize = Result<(usize, [usize; 3]), EstimateError>;

/// Why a stage's duration cannot be estimated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimateError {
    #[error("no stage `{0}`")]
    NoStage(String),
    #[error("stage `{0}` has no model")]
    NoModel(String),
    #[error("model sources form a cycle")]
    ModelCycle,
    #[error("no dataset `{0}`")]
    NoDataset(String),
    #[error("reads no dataset")]
    NoReads,
    #[error("dataset `{name}`: {message}")]
    Dataset { name: String, message: String },
    #[error("measuring {configuration}: {message}")]
    Measure { configuration: String, message: String },
    #[error("cannot record the throughput in `{path}`: {message}")]
    Record { path: PathBuf, message: String },
}

/// An estimate for one stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Estimate {
    /// Seconds, and the throughput it rests on.
    Seconds { seconds: f64, images: f64, images_per_second: f64 },
    /// No throughput measured yet for this configuration (`--estimate` measures it).
    Unmeasured { configuration: String },
    /// The stage's work is not estimated (it is small, or its size is unknown).
    NotEstimated,
    /// Something needed for the estimate is missing (a dataset, a stage).
    Unknown(EstimateError),
}

/// Works out stage durations for one recipe (its stages by name, its datasets) on one device.
pub struct Estimator<'a> {
    stages: BTreeMap<&'a str, &'a dyn Stage>,
    datasets: &'a BTreeMap<String, DatasetSpec>,
    device: &'a Device,
    device_name: String,
    pub table: ThroughputTable,
    /// Measure configurations the table lacks.
    pub measure: bool,
    /// Images and shape per (dataset, is the train split).
    sizes: HashMap<(String, bool), DatasetSize>,
    /// The architecture behind each stage's model, found once: a chain of 100,000 fine-tunings
    /// is walked once, not once per stage.
    architectures: HashMap<String, crate::models::Architecture>,
}

impl<'a> Estimator<'a> {
    pub fn new(
        stages: BTreeMap<&'a str, &'a dyn Stage>,
        datasets: &'a BTreeMap<String, DatasetSpec>,
        device: &'a Device,
        table: ThroughputTable,
        measure: bool,
    ) -> Self {
        Estimator {
            stages,
            datasets,
            device,
            device_name: describe(device),
            table,
            measure,
            sizes: HashMap::new(),
            architectures: HashMap::new(),
        }
    }

    fn stage(&self, name: &str) -> Result<&'a dyn Stage, EstimateError> {
        self.stages.get(name).copied().ok_or_else(|| EstimateError::NoStage(name.to_string()))
    }

    /// The architecture behind a model source, following upstream stages.
    fn architecture(&mut self, source: &ModelSource) -> Result<crate::models::Architecture, EstimateError> {
        let mut source = source.clone();
        let mut walked: Vec<String> = Vec::new();
        let architecture = loop {
            match source {
                ModelSource::Architecture(a) => break a,
                ModelSource::Upstream(name) => {
                    if let Some(known) = self.architectures.get(&name) {
                        break known.clone();
                    }
                    if walked.len() > self.stages.len() {
                        return Err(EstimateError::ModelCycle);
                    }
                    source = self
                        .stage(&name)?
                        .model_source()
                        .ok_or_else(|| EstimateError::NoModel(name.clone()))?;
                    walked.push(name);
                }
            }
        };
        for name in walked {
            self.architectures.insert(name, architecture.clone());
        }
        Ok(architecture)
    }

    fn size(&mut self, dataset: &str, split: Split) -> DatasetSize {
        let datasets = self.datasets;
        self.sizes
            .entry((dataset.to_string(), matches!(split, Split::Train)))
            .or_insert_with(|| {
                let spec =
                    datasets.get(dataset).ok_or_else(|| EstimateError::NoDataset(dataset.to_string()))?;
                dataset_size(spec, split).map_err(|e: StageError| EstimateError::Dataset {
                    name: dataset.to_string(),
                    message: e.to_string(),
                })
            })
            .clone()
    }

    /// The estimate for `stage`.
    pub fn estimate(&mut self, stage: &dyn Stage) -> Estimate {
        let Some(work) = stage.workload() else { return Estimate::NotEstimated };
        match self.estimate_workload(&work) {
            Ok(estimate) => estimate,
            Err(message) => Estimate::Unknown(message),
        }
    }

    fn estimate_workload(&mut self, work: &Workload) -> Result<Estimate, EstimateError> {
        let architecture = self.architecture(&work.model)?;
        let mut images = 0usize;
        let mut shape = None;
        for (dataset, split) in &work.reads {
            let (count, dataset_shape) = self.size(dataset, *split)?;
            images += count;
            shape.get_or_insert(dataset_shape);
        }
        let shape = shape.ok_or(EstimateError::NoReads)?;
        let passes = match &work.passes {
            Passes::Fixed(n) => *n,
            Passes::CheckpointsOf(name) => {
                let mut source = ModelSource::Upstream(name.clone());
                // The training stage behind the model keeps the checkpoints.
                loop {
                    let ModelSource::Upstream(stage) = source else { break 1 };
                    let stage = self.stage(&stage)?;
                    if let Some(kept) = stage.workload().and_then(|w| w.checkpoints_kept) {
                        break kept;
                    }
                    source = stage.model_source().ok_or_else(|| EstimateError::NoModel(name.clone()))?;
                }
            }
        };
        let total = images as f64 * passes as f64 * work.images_factor;
        let key = throughput_key(&architecture, shape, work.batch_size, work.training, &self.device_name);
        let rate = match self.table.get(&key) {
            Some(rate) => rate,
            None if self.measure => {
                let rate =
                    measure_throughput(&architecture, shape, work.batch_size, work.training, self.device)
                        .map_err(|e| EstimateError::Measure {
                            configuration: key.clone(),
                            message: e.to_string(),
                        })?;
                let path = self.table.path().to_path_buf();
                self.table
                    .insert(key, rate)
                    .map_err(|e| EstimateError::Record { path, message: e.to_string() })?;
                rate
            }
            None => return Ok(Estimate::Unmeasured { configuration: key }),
        };
        Ok(Estimate::Seconds { seconds: total / rate, images: total, images_per_second: rate })
    }
}

/// `1h 05m`, `12m 30s`, `45s`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.round().max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(4.4), "4s");
        assert_eq!(human_duration(750.0), "12m 30s");
        assert_eq!(human_duration(3900.0), "1h 05m");
    }
}
