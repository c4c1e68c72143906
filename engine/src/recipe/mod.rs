//! Recipes: TOML text → a validated [`Recipe`] whose every problem is reported at once as a
//! [`Diagnostic`](diagnostic::Diagnostic) with file, line and column.
//!
//! Read in steps, as cargo reads manifests: the raw TOML with positions ([`tree`]), then the
//! known sections and keys (unknown ones with "did you mean"), then each dataset and stage
//! through its own typed parameters, then references and cycles ([`crate::graph`]).
//!
//! The recipe model is in `model` ([`Recipe`], [`StageDecl`], [`StageVariant`]), the
//! validation passes in `validate`, the sweep passes (sweep groups, instance count) in
//! `groups`; their public items are re-exported here.
pub mod diagnostic;
pub mod env;
mod groups;
mod model;
pub mod project;
pub mod resources;
pub mod sweep;
pub mod tree;
mod validate;

pub use model::{Recipe, StageDecl, StageVariant};
pub use sweep::thousands;
pub use validate::DEFAULT_MAX_INSTANCES;
