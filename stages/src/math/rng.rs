//! Seeded randomness. candle's CPU generator cannot be seeded, so every random number the
//! stages use (initial weights, shuffling, dropout, augmentation, noise) comes from here.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub type Rng = ChaCha8Rng;

/// A generator for `purpose` derived from `seed`: independent streams for independent uses.
pub fn derive(seed: u64, purpose: &str) -> Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    Rng::from_seed(*hasher.finalize().as_bytes())
}

/// A seed for the stage `name` of a recipe run with `recipe_seed`.
pub fn stage_seed(recipe_seed: u64, name: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"stage-seed");
    hasher.update(&recipe_seed.to_le_bytes());
    hasher.update(name.as_bytes());
    let bytes = hasher.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Seeded uniform [0,1) values as a CPU tensor of `shape` (candle's own `rand` is unseeded).
#[cfg(test)]
pub(crate) fn test_images(seed: u64, shape: &[usize]) -> candle_core::Tensor {
    use rand::Rng as _;
    let mut rng = derive(seed, "test-images");
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).expect("shape matches")
}

#[cfg(test)]
mod tests {
    use rand::Rng as _;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u32> = (0..4).map(|_| super::derive(1, "x").random()).collect();
        let mut r1 = super::derive(1, "x");
        let mut r2 = super::derive(1, "y");
        let x: u64 = r1.random();
        let y: u64 = r2.random();
        assert_ne!(x, y);
        assert_eq!(a[0], a[1]);
        assert_eq!(super::stage_seed(0, "base"), super::stage_seed(0, "base"));
        assert_ne!(super::stage_seed(0, "base"), super::stage_seed(1, "base"));
    }
}
