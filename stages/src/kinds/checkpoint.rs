//! `checkpoint`: selects one kept epoch of a `train` stage as a model of its own.
//!
//! Outputs: `model.json`, `model.safetensors`, `selected.json` (`{"epoch": N}`).
use crate::error::StageError;
use crate::formats::json::write_json;
use crate::models::checkpoints::{CheckpointIndex, ModelFiles};
use crate::stage::Artifact;
use crate::stage::Input;
use crate::stage::RunContext;
use crate::stage::StageParams;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which epoch: `"last"` or an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    Last,
    Number(usize),
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Epoch::Last => s.serialize_str("last"),
            Epoch::Number(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Epoch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"last\" or an epoch number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Epoch, E> {
                if v == "last" {
                    Ok(Epoch::Last)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Epoch, E> {
                Ok(Epoch::Number(v as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Epoch, E> {
                usize::try_from(v)
                    .map(Epoch::Number)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn default_epoch() -> Epoch {
    Epoch::Last
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The `train` stage whose checkpoints to choose from.
    pub from: String,
    #[serde(default = "default_epoch")]
    pub epoch: Epoch,
}

impl StageParams for Checkpoint {
    const KIND: &'static str = "checkpoint";
    const VERSION: u32 = 1;
    const PRODUCES: &'static [Artifact] = &[Artifact::Model];

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage(&["from"], &self.from, Artifact::Checkpoints)]
    }

    fn model_source(&self) -> Option<crate::estimate::workload::ModelSource> {
        Some(crate::estimate::workload::ModelSource::Upstream(self.from.clone()))
    }

    fn run(&self, ctx: &RunContext) -> Result<(), StageError> {
        let dir = ctx.stage_dir(&self.from)?;
        let index = CheckpointIndex::read(dir)?;
        let epoch = match self.epoch {
            Epoch::Last => *index.epochs.last().ok_or_else(|| {
                StageError::Unsuitable(format!("training stage `{}` kept no checkpoint", self.from))
            })?,
            Epoch::Number(n) if index.epochs.contains(&n) => n,
            Epoch::Number(n) => {
                return Err(StageError::Unsuitable(format!(
                    "`{}` kept no checkpoint of epoch {n}; it kept epochs {:?} (set its checkpoint_every)",
                    self.from, index.epochs
                )))
            }
        };
        let copy = |from: std::path::PathBuf, to: std::path::PathBuf| {
            std::fs::copy(&from, &to).map(|_| ()).map_err(StageError::io("cannot copy", from))
        };
        let (source, out) = (ModelFiles::in_dir(dir), ModelFiles::in_dir(ctx.out_dir));
        copy(source.spec(), out.spec())?;
        copy(source.checkpoint(epoch), out.weights())?;
        write_json(
            &ctx.out_dir.join("selected.json"),
            &serde_json::json!({ "from": self.from, "epoch": epoch }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_accepts_last_or_a_number() {
        let p: Checkpoint = serde_json::from_value(serde_json::json!({"from": "a"})).unwrap();
        assert_eq!(p.epoch, Epoch::Last);
        let p: Checkpoint = serde_json::from_value(serde_json::json!({"from": "a", "epoch": 5})).unwrap();
        assert_eq!(p.epoch, Epoch::Number(5));
        let err = serde_json::from_value::<Checkpoint>(serde_json::json!({"from": "a", "epoch": "first"}));
        assert!(err.unwrap_err().to_string().contains("\"last\" or an epoch number"));
        assert_eq!(serde_json::to_value(Epoch::Last).unwrap(), "last");
    }
}
