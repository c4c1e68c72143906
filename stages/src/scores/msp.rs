//! MSP (docs/methods.md §7): the maximum softmax probability of the plain logits, max softmax(f(x)), from
//! log-softmax in f64. It saturates at exactly 1.0 once the logit margin exceeds about 37.
use super::scorer::{ScoreMethod, ScoringInput};
use super::softmax::max_softmax;
use crate::error::StageError;

pub struct Msp;

impl ScoreMethod for Msp {
    fn name(&self) -> &'static str {
        "msp"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        Ok(input.pass.logits.iter().map(|row| max_softmax(row, 1.0)).collect())
    }
}
