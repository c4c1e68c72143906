//! UMAP's binary mask computed where the scores live: zero the ⌊(1 − keep)·n⌋ entries of
//! smallest |score| (ties broken by position), keep the rest. On the CPU it is
//! [`keep_top_fraction`] over the tensor's own storage; on CUDA a
//! radix select in one thread block (`top_fraction_mask` in `cuda_kernels.cu`), which orders the
//! same way: |s| as IEEE bits (monotone for non-negative floats), then the position. Either way
//! the scores never leave the device and the mask is never uploaded.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// How many of `n` weights a mask keeping the fraction `keep` zeroes: ⌊(1 − keep)·n⌋.
pub fn zeroed_count(n: usize, keep: f64) -> usize {
    // A small tolerance so that e.g. (1 − 0.975)·400 = 10 is not floored to 9 by rounding.
    (((1.0 - keep) * n as f64) + 1e-9).floor() as usize
}

/// A 0/1 mask over `scores` that zeroes the ⌊(1 − keep)·n⌋ entries of smallest |score| (ties
/// broken by position) and keeps the rest.
pub fn keep_top_fraction(scores: &[f32], keep: f64) -> Vec<f32> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].abs().total_cmp(&scores[b].abs()).then(a.cmp(&b)));
    let mut mask = vec![1.0; scores.len()];
    for &i in &order[..zeroed_count(scores.len(), keep)] {
        mask[i] = 0.0;
    }
    mask
}

/// The mask keeping the fraction `keep` of a tensor's entries by largest magnitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopFraction {
    pub keep: f64,
}

impl TopFraction {
    /// The 0/1 mask (f32, the shape of `scores`); not differentiable.
    pub fn mask(&self, scores: &Tensor) -> Result<Tensor> {
        scores.contiguous()?.apply_op1_no_bwd(self)
    }

    /// How many entries of `n` the mask zeroes.
    pub fn zeroed(&self, n: usize) -> usize {
        zeroed_count(n, self.keep)
    }
}

impl CustomOp1 for TopFraction {
    fn name(&self) -> &'static str {
        "pipeline-top-fraction"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the top-fraction mask needs a contiguous tensor");
        };
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("the top-fraction mask is written for f32 scores, not {:?}", storage.dtype());
        };
        Ok((CpuStorage::F32(keep_top_fraction(&values[start..end], self.keep)), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::top_fraction(self.zeroed(layout.shape().elem_count()) as u32, storage, layout)
    }
}

/// What the CUDA kernel computes, written the kernel's way (a radix select on |s|'s bits, then
/// the first ties by position): the reference the GPU check and the test below hold it to.
pub fn radix_select_mask(scores: &[f32], keep: f64) -> Vec<f32> {
    let zeroed = zeroed_count(scores.len(), keep);
    if zeroed == 0 {
        return vec![1.0; scores.len()];
    }
    let keys: Vec<u32> = scores.iter().map(|s| s.abs().to_bits()).collect();
    // The key of rank `zeroed - 1` (0-based) among the sorted keys, 8 bits at a time.
    let (mut prefix, mut prefix_mask, mut rank) = (0u32, 0u32, zeroed - 1);
    for shift in [24u32, 16, 8, 0] {
        let mut histogram = [0usize; 256];
        for &k in keys.iter().filter(|&&k| k & prefix_mask == prefix) {
            histogram[((k >> shift) & 0xff) as usize] += 1;
        }
        let mut bin = 0;
        while rank >= histogram[bin] {
            rank -= histogram[bin];
            bin += 1;
        }
        prefix |= (bin as u32) << shift;
        prefix_mask |= 0xff << shift;
    }
    let below = keys.iter().filter(|&&k| k < prefix).count();
    let mut equal_to_zero = zeroed - below;
    keys.iter()
        .map(|&k| {
            if k < prefix {
                0.0
            } else if k > prefix {
                1.0
            } else if equal_to_zero > 0 {
                equal_to_zero -= 1;
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::Rng as _;

    #[test]
    fn the_op_and_the_kernels_algorithm_agree_with_the_sort() {
        let mut rng = crate::math::rng::derive(5, "top");
        for (n, keep) in [(1, 0.5), (7, 0.5), (400, 0.975), (1000, 0.8), (5000, 0.3), (64, 1.0), (10, 0.0)] {
            // Few distinct values, so that ties (and signs of equal magnitude) are frequent.
            let scores: Vec<f32> = (0..n).map(|_| rng.random_range(-8i32..8) as f32 / 4.0).collect();
            let expected = keep_top_fraction(&scores, keep);
            assert_eq!(radix_select_mask(&scores, keep), expected, "n {n}, keep {keep}");
            let t = Tensor::from_vec(scores.clone(), n, &Device::Cpu).unwrap();
            let op: Vec<f32> = TopFraction { keep }.mask(&t).unwrap().to_vec1().unwrap();
            assert_eq!(op, expected);
            let zeroed = expected.iter().filter(|&&m| m == 0.0).count();
            assert_eq!(zeroed, TopFraction { keep }.zeroed(n));
        }
        let continuous: Vec<f32> = (0..3000).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        assert_eq!(radix_select_mask(&continuous, 0.9), keep_top_fraction(&continuous, 0.9));
    }
}
