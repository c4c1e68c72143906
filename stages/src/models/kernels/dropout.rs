//! Dropout masks computed where the tensor lives, from a counter-based hash: element `i` of a
//! layer is kept when `hash(i, key) < keep · 2²⁴`, so a mask is a pure function of its key
//! (derived from the stage seed, epoch, step and layer: `models::layers::Mode`) and of
//! the element's position. No generator state, no host work per element, no upload: the CPU
//! computes it in the forward loop, CUDA in one kernel (`dropout_f32` in `cuda_kernels.cu`); both
//! give the same mask. The backward pass applies the same op to the gradient (same key, same
//! mask), so nothing is stored between the two.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The 32-bit finaliser of MurmurHash3: a bijection that mixes every input bit into every
/// output bit.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// SplitMix64's finaliser, to derive keys from (seed, epoch, step, layer).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 24-bit uniform draw of element `index` under the key halves `k0`, `k1`.
#[inline(always)]
pub fn draw24(index: u32, k0: u32, k1: u32) -> u32 {
    fmix32(fmix32(index ^ k0).wrapping_add(k1)) >> 8
}

/// One layer's inverted dropout: keep with probability `threshold / 2²⁴`, scale kept values by
/// `scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub k0: u32,
    pub k1: u32,
    pub threshold: u32,
    pub scale: f32,
}

impl DropoutMask {
    /// The mask of `layer_key` dropping with probability `p` (in (0, 1)).
    pub fn new(layer_key: u64, p: f64) -> DropoutMask {
        let keep = 1.0 - p;
        DropoutMask {
            k0: layer_key as u32,
            k1: (layer_key >> 32) as u32,
            threshold: (keep * (1u32 << 24) as f64).round().clamp(0.0, (1u32 << 24) as f64) as u32,
            scale: (1.0 / keep) as f32,
        }
    }

    /// Whether element `index` is kept.
    #[inline(always)]
    pub fn keeps(&self, index: u32) -> bool {
        draw24(index, self.k0, self.k1) < self.threshold
    }

    /// `x` with dropped elements zeroed and kept ones scaled (its gradient flows through the
    /// same mask).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.elem_count() > u32::MAX as usize {
            candle_core::bail!("dropout over {} elements: at most 2³² per tensor", x.elem_count());
        }
        x.contiguous()?.apply_op1(*self)
    }
}

/// Elements per parallel chunk on the CPU.
const CHUNK: usize = 1 << 15;

cpu_variants! {
    fn mask_chunk(src: &[f32], dst: &mut [f32], first: u32, mask: DropoutMask) {
        for (j, (out, &value)) in dst.iter_mut().zip(src).enumerate() {
            let kept = draw24(first.wrapping_add(j as u32), mask.k0, mask.k1) < mask.threshold;
            *out = if kept { value * mask.scale } else { 0.0 };
        }
    }
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "pipeline-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("dropout needs a contiguous tensor");
        };
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("dropout is written for f32 tensors, not {:?}", storage.dtype());
        };
        let src = &values[start..end];
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).enumerate().for_each(|(c, (out, input))| {
            mask_chunk(input, out, (c * CHUNK) as u32, *self);
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::dropout([self.k0, self.k1, self.threshold], self.scale, storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn keeps_about_the_fraction_and_scales_kept_values() {
        let x = Tensor::ones(200_000, candle_core::DType::F32, &Device::Cpu).unwrap();
        let mask = DropoutMask::new(mix64(7), 0.3);
        let y: Vec<f32> = mask.apply(&x).unwrap().to_vec1().unwrap();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        // Binomial standard deviation at n = 200 000 is about 0.001.
        assert!((kept - 0.7).abs() < 0.005, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / 0.7f32));
        // Element by element, the op agrees with the scalar rule.
        assert!(y.iter().enumerate().all(|(i, &v)| (v != 0.0) == mask.keeps(i as u32)));
    }

    #[test]
    fn different_keys_give_independent_masks() {
        let n = 100_000;
        let a = DropoutMask::new(mix64(1), 0.5);
        let b = DropoutMask::new(mix64(2), 0.5);
        let agree = (0..n).filter(|&i| a.keeps(i) == b.keeps(i)).count() as f64 / n as f64;
        assert!((agree - 0.5).abs() < 0.01, "{agree}");
        // Neighbouring elements are not correlated either.
        let runs = (0..n - 1).filter(|&i| a.keeps(i) == a.keeps(i + 1)).count() as f64 / n as f64;
        assert!((runs - 0.5).abs() < 0.01, "{runs}");
    }

    #[test]
    fn the_gradient_goes_through_the_same_mask() {
        let x = Var::new(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &Device::Cpu).unwrap();
        let mask = DropoutMask::new(mix64(3), 0.5);
        let y = mask.apply(x.as_tensor()).unwrap();
        let grad = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grad.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.to_vec1().unwrap();
        for (i, (&gi, &yi)) in g.iter().zip(&y).enumerate() {
            let expected = if mask.keeps(i as u32) { 2.0 } else { 0.0 };
            assert_eq!(gi, expected, "element {i}");
            assert_eq!(yi, if expected > 0.0 { (i + 1) as f32 * 2.0 } else { 0.0 });
        }
    }

    #[test]
    fn a_strided_tensor_is_masked_by_its_logical_positions() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
        let mask = DropoutMask::new(mix64(9), 0.5);
        let t = mask.apply(&x.t().unwrap()).unwrap();
        let direct = mask.apply(&x.t().unwrap().contiguous().unwrap()).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            direct.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
