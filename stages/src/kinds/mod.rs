//! One file per stage kind, and the registry that lists them. Adding a kind is one file here
//! plus one line in [`registry`].
pub mod checkpoint;
pub mod energy_oe;
pub mod estimate_loss_constraint;
pub mod feature_fit;
pub mod import;
pub mod mahalanobis_fit;
pub mod oe;
pub mod poem;
pub mod report;
pub mod score;
pub mod select;
pub mod train;
pub mod um;
pub mod umap;

use crate::stage::{KindOf, StageKind};
use std::marker::PhantomData;

/// Every stage kind, by name.
pub fn registry() -> &'static [&'static dyn StageKind] {
    &[
        &KindOf::<train::Train>(PhantomData),
        &KindOf::<import::Import>(PhantomData),
        &KindOf::<checkpoint::Checkpoint>(PhantomData),
        &KindOf::<estimate_loss_constraint::EstimateLossConstraint>(PhantomData),
        &KindOf::<um::Um>(PhantomData),
        &KindOf::<umap::Umap>(PhantomData),
        &KindOf::<oe::Oe>(PhantomData),
        &KindOf::<energy_oe::EnergyOe>(PhantomData),
        &KindOf::<poem::Poem>(PhantomData),
        &KindOf::<mahalanobis_fit::MahalanobisFit>(PhantomData),
        &KindOf::<feature_fit::FeatureFit>(PhantomData),
        &KindOf::<score::Score>(PhantomData),
        &KindOf::<select::Select>(PhantomData),
        &KindOf::<report::Report>(PhantomData),
    ]
}

/// The stage kind called `name`, if there is one.
pub fn kind(name: &str) -> Option<&'static dyn StageKind> {
    registry().iter().copied().find(|k| k.name() == name)
}

#[cfg(test)]
mod tests {
    use crate::stage::Role;

    /// The engine chooses Slurm defaults and follows selections and reports by role, never by
    /// kind name: every training kind says it trains, and each special role has its one kind.
    #[test]
    fn every_kind_states_its_role() {
        let with = |role: Role| -> Vec<&str> {
            let mut names: Vec<&str> =
                super::registry().iter().filter(|k| k.role() == role).map(|k| k.name()).collect();
            names.sort_unstable();
            names
        };
        assert_eq!(with(Role::Trains), ["energy-oe", "oe", "poem", "train", "um", "umap"]);
        assert_eq!(with(Role::Scores), ["score"]);
        assert_eq!(with(Role::Selects), ["select"]);
        assert_eq!(with(Role::Reports), ["report"]);
        assert!(with(Role::Evaluates).contains(&"estimate-loss-constraint"));
    }
}
