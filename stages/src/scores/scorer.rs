//! What a score method is ([`ScoreMethod`]) and what it is given ([`ScoringInput`]). Every
//! score is "higher = more in-distribution", one f64 per image.
use super::feature_bank::FeatureFit;
use super::gaussian::GaussianFit;
use crate::data::ImageSet;
use crate::error::StageError;
use crate::models::evaluation::ForwardPass;
use crate::models::Network;
use crate::progress::Progress;
use candle_core::Device;

/// The parameters of the methods that have any (the score stage's fields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodParams {
    /// ODIN's temperature T.
    pub odin_temperature: f64,
    /// ODIN's perturbation size ε (on [0, 1] pixels).
    pub odin_epsilon: f64,
}

/// Everything a method may use to score one image set.
pub struct ScoringInput<'a> {
    /// The model, frozen (for methods that run it again, such as ODIN).
    pub net: &'a Network,
    /// The images.
    pub set: &'a ImageSet,
    /// The plain forward pass over the set in evaluation mode: logits and penultimate features.
    pub pass: &'a ForwardPass,
    /// The class-conditional Gaussian of a `mahalanobis-fit` stage, when the stage has one.
    pub gaussian: Option<&'a GaussianFit>,
    /// The ID training features of a `feature-fit` stage, when the stage has one.
    pub features_fit: Option<&'a FeatureFit>,
    pub params: MethodParams,
    pub device: &'a Device,
    pub batch_size: usize,
    pub progress: &'a dyn Progress,
    /// What progress calls this set (`"score mnist_6_9 (epoch 2)"`).
    pub label: &'a str,
}

impl<'a> ScoringInput<'a> {
    /// The `feature-fit` statistics `method` needs, or the error a recipe check should have
    /// prevented.
    pub fn features_fit_for(&self, method: &str) -> Result<&'a FeatureFit, StageError> {
        self.features_fit
            .ok_or_else(|| StageError::Internal(format!("the {method} method needs a feature-fit stage")))
    }
}

/// One OOD score method: a file in `scores/` and a line in the registry of `methods.rs`.
pub trait ScoreMethod: Sync {
    /// The name recipes use in `methods = [...]`; also the folder of its score files.
    fn name(&self) -> &'static str;
    /// Forward passes per image beyond the plain one (for duration estimates): ODIN 3 (the
    /// input gradient, then the perturbed forward), Mahalanobis 1.
    fn extra_passes(&self) -> f64 {
        0.0
    }
    /// Whether it needs the Gaussian of a `mahalanobis-fit` stage.
    fn needs_gaussian(&self) -> bool {
        false
    }
    /// Whether it needs the ID training features of a `feature-fit` stage.
    fn needs_features_fit(&self) -> bool {
        false
    }
    /// The score of every image of the set, in order.
    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError>;
    /// Its hyper-parameters as it runs with `params`, for reports (`T = 1000, ε = 0.0014`);
    /// "none" for methods without any.
    fn parameters(&self, _params: &MethodParams) -> String {
        "none".into()
    }
}
