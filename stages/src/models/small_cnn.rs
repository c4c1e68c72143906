//! The small CNN for MNIST-like data and smoke recipes: per width a conv3×3 (padding 1, the
//! block's stride, no bias) → batch norm → ReLU; then global average pooling (the penultimate
//! feature), dropout, and a linear head. Widths [32, 64, 128] with strides [1, 2, 2] give the
//! 93k-parameter MNIST network docs/methods.md §3 mentions.
use super::builder::Scope;
use super::kernels::conv::conv2d;
use super::layers::{dropout, global_avg_pool, BatchNorm2d, Ends, Forward, Mode};
use super::spec::ModelSpec;
use crate::error::StageError;
use candle_core::{Device, Tensor};

struct Block {
    weight: Tensor,
    stride: usize,
    norm: BatchNorm2d,
}

pub struct SmallCnn {
    blocks: Vec<Block>,
    ends: Ends,
    dropout: f64,
}

impl SmallCnn {
    pub fn new(
        spec: &ModelSpec,
        widths: &[usize],
        strides: &[usize],
        root: &Scope,
        device: &Device,
    ) -> Result<SmallCnn, StageError> {
        if widths.len() != strides.len() || widths.is_empty() {
            return Err(StageError::Unsuitable(format!(
                "small-cnn needs one stride per width (widths {widths:?}, strides {strides:?})"
            )));
        }
        let mut blocks = Vec::new();
        let mut channels = spec.input_shape[0];
        for (i, (&width, &stride)) in widths.iter().zip(strides).enumerate() {
            let n = i + 1;
            blocks.push(Block {
                weight: root.pp(format!("conv{n}")).conv_weight(width, channels, 3)?,
                stride,
                norm: BatchNorm2d::new(&root.pp(format!("bn{n}")), width, spec.affine_bn)?,
            });
            channels = width;
        }
        Ok(SmallCnn { blocks, ends: Ends::new(spec, root, channels, device)?, dropout: spec.dropout })
    }

    /// The input normalisation and the linear head.
    pub fn ends(&self) -> &Ends {
        &self.ends
    }

    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        let mut x = self.ends.normalise(images)?;
        for block in &self.blocks {
            x = conv2d(&x, &block.weight, block.stride, 1)?;
            x = block.norm.forward_relu(&x, mode)?;
        }
        let features = global_avg_pool(&x)?;
        let dropped = dropout(&features, self.dropout, mode)?;
        let logits = self.ends.logits(&dropped)?;
        Ok(Forward { features, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use candle_core::{Device, Tensor};

    fn spec() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::SmallCnn { widths: vec![32, 64, 128], strides: vec![1, 2, 2] },
            input_shape: [1, 28, 28],
            num_classes: 6,
            dropout: 0.3,
            affine_bn: false,
            mean: vec![0.13],
            std: vec![0.31],
            weight_masks: false,
        }
    }

    #[test]
    fn parameter_count_and_forward_shapes() {
        let spec = spec();
        // 32·9 + 64·32·9 + 128·64·9 + 6·128 + 6
        assert_eq!(spec.learnable_count().unwrap(), 288 + 18432 + 73728 + 768 + 6);
        let dev = Device::Cpu;
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let net = Network::new(&spec, &Parameters::frozen(&spec, values).unwrap(), &dev).unwrap();
        let x = Tensor::zeros((3, 1, 28, 28), candle_core::DType::F32, &dev).unwrap();
        let out = net.forward(&x, &mut Mode::Eval).unwrap();
        assert_eq!(out.logits.dims(), &[3, 6]);
        assert_eq!(out.features.dims(), &[3, 128]);
    }

    #[test]
    fn initialisation_is_seeded_and_has_kaiming_scale() {
        let spec = spec();
        let dev = Device::Cpu;
        let a = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let b = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let w: Vec<f32> = a["conv3.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(w, b["conv3.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!((var - 2.0 / 576.0).abs() < 2.0 / 576.0 * 0.05, "{var}");
        let fc: Vec<f32> = a["fc.weight"].flatten_all().unwrap().to_vec1().unwrap();
        assert!(fc.iter().all(|v| v.abs() <= 1.0 / 128f32.sqrt()));
    }

    #[test]
    fn weights_round_trip_through_safetensors() {
        let spec = spec();
        let dev = Device::Cpu;
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save_weights(&values, &path).unwrap();
        let loaded = load_weights(&path, &dev).unwrap();
        for (name, t) in &values {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = loaded[name].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{name}");
        }
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load_weights(&path, &dev).unwrap_err().to_string().contains("w.safetensors"));
    }

    /// Analytic gradients (training mode: batch statistics) against central differences.
    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let spec = ModelSpec {
            architecture: Architecture::SmallCnn { widths: vec![3, 4], strides: vec![2, 1] },
            input_shape: [1, 6, 6],
            num_classes: 3,
            dropout: 0.0,
            affine_bn: true,
            mean: vec![0.5],
            std: vec![0.25],
            weight_masks: false,
        };
        let values = spec.initialise(&mut crate::math::rng::derive(7, "init"), &dev).unwrap();
        let images = crate::math::rng::test_images(11, &[5, 1, 6, 6]);
        let labels = Tensor::new(&[0u32, 1, 2, 1, 0], &dev).unwrap();
        let loss_of = |values: &std::collections::BTreeMap<String, Tensor>| {
            // Buffers are fresh copies each time, so statistics updates do not leak between evaluations.
            let params = Parameters::trainable(&spec, values.clone()).unwrap();
            let net = Network::new(&spec, &params, &dev).unwrap();
            let out = net.forward(&images, &mut Mode::train(0, 0, 0)).unwrap();
            (candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap(), params)
        };
        let (loss, params) = loss_of(&values);
        let grads = loss.backward().unwrap();
        for name in ["conv1.weight", "conv2.weight", "bn1.weight", "bn2.bias", "fc.weight", "fc.bias"] {
            let var = params.var(name).unwrap();
            let analytic: Vec<f32> =
                grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f32> = values[name].flatten_all().unwrap().to_vec1().unwrap();
            for i in [0, base.len() / 2, base.len() - 1] {
                let eps = 1e-2f32;
                let eval = |delta: f32| {
                    let mut shifted = base.clone();
                    shifted[i] += delta;
                    let mut values = values.clone();
                    values.insert(
                        name.to_string(),
                        Tensor::from_vec(shifted, values[name].shape(), &dev).unwrap(),
                    );
                    loss_of(&values).0.to_scalar::<f32>().unwrap()
                };
                let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
                let tolerance = 2e-3 + 2e-2 * numeric.abs();
                assert!(
                    (analytic[i] - numeric).abs() < tolerance,
                    "{name}[{i}]: analytic {} vs numeric {numeric}",
                    analytic[i]
                );
            }
        }
    }
}
