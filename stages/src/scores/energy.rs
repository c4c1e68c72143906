//! Energy (docs/methods.md §7): the negative free energy T·logsumexp(f(x)/T) with T = 1.
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use super::softmax::logsumexp;
use crate::error::StageError;

pub struct Energy;

impl ScoreMethod for Energy {
    fn parameters(&self, _params: &MethodParams) -> String {
        "T = 1".into()
    }
    fn name(&self) -> &'static str {
        "energy"
    }

    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        Ok(input.pass.logits.iter().map(|row| logsumexp(row)).collect())
    }
}
