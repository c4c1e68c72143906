//! Energy (SPEC §7): the negative free energy T·logsumexp(f(x)/T) with T = 1.
use super::scorer::{ScoreMethod, ScoringInput};
use super::softmax::logsumexp;
use crate::error::StageError;

pub struct Energy;

impl ScoreMethod for Energy {
    fn name(&self) -> &'static str {
        "energy"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        Ok(input.pass.logits.iter().map(|row| logsumexp(row)).collect())
    }
}
