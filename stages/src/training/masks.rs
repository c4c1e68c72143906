//! Weight masks of the Unleashing-Mask method (docs/methods.md §3, §5). Masks act per layer on every conv
//! weight and the final linear weight (parameters of role [`Role::Weight`]); batch norm and the
//! linear bias are never masked.
use crate::error::StageError;
use crate::models::kernels::top_fraction::keep_top_fraction;
use crate::models::{ModelSpec, ParamDef, Role};
use rand::Rng as _;

/// The parameters masks act on.
pub fn masked_layers(spec: &ModelSpec) -> Result<Vec<ParamDef>, StageError> {
    Ok(spec.parameters()?.into_iter().filter(|p| p.role == Role::Weight).collect())
}

/// A seeded random mask of `n` weights keeping the fraction `keep` (docs/methods.md §3: a random score per
/// weight, ranked by magnitude).
pub fn random_mask(n: usize, keep: f64, rng: &mut crate::math::rng::Rng) -> Vec<f32> {
    let scores: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    keep_top_fraction(&scores, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroes_exactly_floor_of_the_dropped_fraction() {
        for (n, keep, zeroed) in [(400, 0.975, 10), (1000, 0.97, 30), (7, 0.5, 3), (10, 1.0, 0), (3, 0.0, 3)]
        {
            let mut rng = crate::math::rng::derive(1, "mask");
            let mask = random_mask(n, keep, &mut rng);
            assert_eq!(mask.iter().filter(|&&m| m == 0.0).count(), zeroed, "n {n}, keep {keep}");
            assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0));
        }
        let mut a = crate::math::rng::derive(3, "mask");
        let mut b = crate::math::rng::derive(3, "mask");
        assert_eq!(random_mask(500, 0.9, &mut a), random_mask(500, 0.9, &mut b));
    }

    #[test]
    fn only_conv_and_linear_weights_are_masked() {
        let mut spec = crate::models::spec::tiny_spec();
        spec.affine_bn = true;
        let names: Vec<String> = masked_layers(&spec).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["conv1.weight", "conv2.weight", "fc.weight"]);
    }

    #[test]
    fn keeps_the_largest_magnitudes() {
        assert_eq!(keep_top_fraction(&[0.1, -5.0, 0.3, -0.05], 0.5), vec![0.0, 1.0, 1.0, 0.0]);
    }
}
