//! OOD scores (docs/methods.md §7), one method per file behind [`scorer::ScoreMethod`], every one "higher
//! = more in-distribution", computed in f64:
//! - from the plain logits: [`msp`] (maximum softmax probability), [`energy`]
//!   (T·logsumexp(f/T), T = 1), [`maxlogit`] (the largest logit) and [`gen`] (the negative
//!   generalized entropy of the softmax);
//! - from the logits and penultimate features: [`gradnorm`] (the L1 norm of the last layer's
//!   gradient of KL(uniform ‖ softmax));
//! - from the features through the linear head: [`ash`] (`ash-p`, `ash-b`, `ash-s`: Energy of
//!   shaped activations);
//! - with the ID training features of a `feature-fit` stage ([`feature_bank`]): [`react`]
//!   (Energy of clipped activations), [`knn`] (distance to the k-th nearest ID feature),
//!   [`dice`] (Energy of a sparsified head), [`kl_matching`] (KL to class templates), [`vim`]
//!   (Energy minus a virtual logit) and, with `mahalanobis-fit` too, [`rmds`] (relative
//!   Mahalanobis);
//! - [`odin`]: temperature scaling of an input perturbed against the gradient;
//! - [`mahalanobis`]: the closest class-conditional Gaussian of penultimate features with one
//!   tied covariance (fitted by the `mahalanobis-fit` stage).
//!
//! [`methods`] lists them; a new method is one file here and one line there.
pub mod ash;
pub mod dice;
pub mod energy;
pub mod feature_bank;
pub mod gaussian;
pub mod gen;
pub mod gradnorm;
pub mod head;
pub mod kl_matching;
pub mod knn;
pub mod mahalanobis;
pub mod maxlogit;
pub mod methods;
pub mod msp;
pub mod odin;
pub mod react;
pub mod rmds;
pub mod scorer;
pub mod softmax;
pub mod vim;

pub use methods::Method;
