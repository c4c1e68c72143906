//! Seeded synthetic OOD sets: Gaussian noise (clipped to [0, 1]) and uniform noise. Their seed
//! belongs to the dataset, not to the recipe run, so every run is scored on the same images.
use super::image_set::ImageSet;
use crate::error::{ParamError, StageError};
use rand::Rng as _;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

fn default_count() -> usize {
    2000
}
fn default_shape() -> [usize; 3] {
    [1, 28, 28]
}
fn default_mean() -> f32 {
    0.5
}
fn default_std() -> f32 {
    0.25
}
fn default_high() -> f32 {
    1.0
}

/// Pixels drawn from N(mean, std²), clipped to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianNoiseSpec {
    #[serde(default = "default_count")]
    pub count: usize,
    /// (channels, height, width)
    #[serde(default = "default_shape")]
    pub shape: [usize; 3],
    #[serde(default = "default_mean")]
    pub mean: f32,
    #[serde(default = "default_std")]
    pub std: f32,
    #[serde(default)]
    pub seed: u64,
}

/// Pixels drawn uniformly from [low, high).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniformNoiseSpec {
    #[serde(default = "default_count")]
    pub count: usize,
    #[serde(default = "default_shape")]
    pub shape: [usize; 3],
    #[serde(default)]
    pub low: f32,
    #[serde(default = "default_high")]
    pub high: f32,
    #[serde(default)]
    pub seed: u64,
}

fn check_common(count: usize, shape: [usize; 3]) -> Vec<ParamError> {
    let mut problems = Vec::new();
    if count == 0 {
        problems.push(ParamError::new(&["count"], "must be at least 1"));
    }
    if shape.contains(&0) {
        problems.push(ParamError::new(&["shape"], "every dimension must be at least 1"));
    }
    // f32 pixels, held once while they are generated and once as the batch tensors.
    let bytes = shape.iter().try_fold(count as u128 * 8, |acc, &d| acc.checked_mul(d as u128));
    if let Some(message) = crate::memory::does_not_fit(&format!("{count} images of shape {shape:?}"), bytes) {
        problems.push(ParamError::new(&["count"], message));
    }
    problems
}

/// Room for the pixels of `count` images of `shape` and their number, or the error saying they
/// do not fit.
fn pixel_buffer(count: usize, shape: [usize; 3]) -> Result<(Vec<f32>, usize), StageError> {
    let n = shape.iter().try_fold(count, |acc, &d| acc.checked_mul(d)).unwrap_or(usize::MAX);
    Ok((crate::memory::try_vec(n, &format!("{count} noise images of shape {shape:?}"))?, n))
}

fn unlabelled(pixels: Vec<f32>, count: usize, shape: [usize; 3]) -> ImageSet {
    ImageSet { pixels, labels: vec![0; count], shape, num_classes: 0 }
}

impl GaussianNoiseSpec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        let mut problems = check_common(self.count, self.shape);
        if !(self.std.is_finite() && self.std > 0.0) {
            problems.push(ParamError::new(&["std"], "must be a positive number"));
        }
        if !self.mean.is_finite() {
            problems.push(ParamError::new(&["mean"], "must be a finite 32-bit float"));
        }
        problems
    }

    pub(super) fn generate(&self) -> Result<ImageSet, StageError> {
        let mut rng = crate::math::rng::derive(self.seed, "gaussian-noise");
        let normal = Normal::new(self.mean, self.std)
            .map_err(|e| StageError::Unsuitable(format!("gaussian noise with std {}: {e}", self.std)))?;
        let (mut pixels, n) = pixel_buffer(self.count, self.shape)?;
        pixels.extend((0..n).map(|_| normal.sample(&mut rng).clamp(0.0, 1.0)));
        Ok(unlabelled(pixels, self.count, self.shape))
    }
}

impl UniformNoiseSpec {
    pub(super) fn check(&self) -> Vec<ParamError> {
        let mut problems = check_common(self.count, self.shape);
        // Pixels are f32: a bound past f32's range (1e39) becomes infinite, and the range to
        // draw from would be empty or infinite.
        for (field, value) in [("low", self.low), ("high", self.high)] {
            if !value.is_finite() {
                problems.push(ParamError::new(
                    &[field],
                    format!("must be a finite 32-bit float (±{:e})", f32::MAX),
                ));
            }
        }
        if problems.iter().any(|p| p.path == ["low"] || p.path == ["high"]) {
            return problems;
        }
        if self.low.partial_cmp(&self.high) != Some(std::cmp::Ordering::Less) {
            problems.push(ParamError::new(&["high"], "must be greater than `low`"));
        } else if !(self.high - self.low).is_finite() {
            problems.push(ParamError::new(&["high"], "`high` − `low` must be a finite 32-bit float"));
        }
        problems
    }

    pub(super) fn generate(&self) -> Result<ImageSet, StageError> {
        let mut rng = crate::math::rng::derive(self.seed, "uniform-noise");
        let (mut pixels, n) = pixel_buffer(self.count, self.shape)?;
        pixels.extend((0..n).map(|_| rng.random_range(self.low..self.high)));
        Ok(unlabelled(pixels, self.count, self.shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_seeded_and_in_range() {
        let spec = GaussianNoiseSpec { count: 10, shape: [1, 4, 4], mean: 0.5, std: 0.25, seed: 3 };
        let a = spec.generate().unwrap();
        assert_eq!(a, spec.generate().unwrap());
        assert_eq!(a.pixels.len(), 160);
        assert!(a.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
        let mean = a.pixels.iter().sum::<f32>() / 160.0;
        assert!((mean - 0.5).abs() < 0.1, "{mean}");
        let other = GaussianNoiseSpec { seed: 4, ..spec }.generate().unwrap();
        assert_ne!(a.pixels, other.pixels);
        let u = UniformNoiseSpec { count: 10, shape: [1, 4, 4], low: 0.0, high: 1.0, seed: 0 }
            .generate()
            .unwrap();
        assert!(u.pixels.iter().all(|&p| (0.0..1.0).contains(&p)));
    }
}
