//! DenseNet-BC (docs/methods.md §2; the paper's "DenseNet-101" is depth 100, growth 12, reduction 0.5):
//! conv3×3 3→2k → three dense blocks of n = (depth − 4)/6 bottleneck layers with transitions
//! after the first two → BN → ReLU → global average pooling (the penultimate feature) → linear.
//! Bottleneck on C channels: BN → ReLU → conv1×1 C→4k → dropout → BN → ReLU → conv3×3 4k→k →
//! dropout, concatenated after its input. Transition: BN → ReLU → conv1×1 C→⌊C·reduction⌋ →
//! dropout → average pooling 2×2. Batch norm is non-affine unless `affine_bn`.
use super::builder::Scope;
use super::kernels::conv::conv2d;
use super::layers::{dropout, global_avg_pool, BatchNorm2d, Ends, Forward, Mode};
use super::spec::ModelSpec;
use crate::error::StageError;
use candle_core::{Device, Tensor};

/// Channels after the stem, each block and each transition.
fn plan(depth: usize, growth: usize, reduction: f64) -> (usize, Vec<(usize, usize)>) {
    let layers = (depth - 4) / 6;
    let mut channels = 2 * growth;
    let stem = channels;
    let mut blocks = Vec::new();
    for b in 0..3 {
        let input = channels;
        channels += layers * growth;
        if b < 2 {
            channels = (channels as f64 * reduction).floor() as usize;
        }
        blocks.push((input, channels));
    }
    (stem, blocks)
}

struct Bottleneck {
    bn1: BatchNorm2d,
    conv1: Tensor,
    bn2: BatchNorm2d,
    conv2: Tensor,
}

struct Transition {
    bn: BatchNorm2d,
    conv: Tensor,
}

pub struct DenseNetBc {
    stem: Tensor,
    blocks: Vec<Vec<Bottleneck>>,
    transitions: Vec<Transition>,
    bn: BatchNorm2d,
    ends: Ends,
    dropout: f64,
}

impl DenseNetBc {
    pub fn new(
        spec: &ModelSpec,
        depth: usize,
        growth: usize,
        reduction: f64,
        root: &Scope,
        device: &Device,
    ) -> Result<DenseNetBc, StageError> {
        let layers = (depth - 4) / 6;
        let affine = spec.affine_bn;
        let (stem_width, _) = plan(depth, growth, reduction);
        let stem = root.pp("conv1").conv_weight(stem_width, spec.input_shape[0], 3)?;
        let mut channels = stem_width;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for b in 1..=3 {
            let mut block = Vec::new();
            for l in 0..layers {
                let layer = root.pp(format!("block{b}")).pp(format!("layer{l}"));
                block.push(Bottleneck {
                    bn1: BatchNorm2d::new(&layer.pp("bn1"), channels, affine)?,
                    conv1: layer.pp("conv1").conv_weight(4 * growth, channels, 1)?,
                    bn2: BatchNorm2d::new(&layer.pp("bn2"), 4 * growth, affine)?,
                    conv2: layer.pp("conv2").conv_weight(growth, 4 * growth, 3)?,
                });
                channels += growth;
            }
            blocks.push(block);
            if b < 3 {
                let out = (channels as f64 * reduction).floor() as usize;
                let transition = root.pp(format!("trans{b}"));
                transitions.push(Transition {
                    bn: BatchNorm2d::new(&transition.pp("bn"), channels, affine)?,
                    conv: transition.pp("conv").conv_weight(out, channels, 1)?,
                });
                channels = out;
            }
        }
        Ok(DenseNetBc {
            stem,
            blocks,
            transitions,
            bn: BatchNorm2d::new(&root.pp("bn"), channels, affine)?,
            ends: Ends::new(spec, root, channels, device)?,
            dropout: spec.dropout,
        })
    }

    /// The input normalisation and the linear head.
    pub fn ends(&self) -> &Ends {
        &self.ends
    }

    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        let mut x = self.ends.normalise(images)?;
        x = conv2d(&x, &self.stem, 1, 1)?;
        for (b, block) in self.blocks.iter().enumerate() {
            for layer in block {
                let mut out = conv2d(&layer.bn1.forward_relu(&x, mode)?, &layer.conv1, 1, 0)?;
                out = dropout(&out, self.dropout, mode)?;
                out = conv2d(&layer.bn2.forward_relu(&out, mode)?, &layer.conv2, 1, 1)?;
                out = dropout(&out, self.dropout, mode)?;
                x = Tensor::cat(&[&x, &out], 1)?;
            }
            if let Some(t) = self.transitions.get(b) {
                x = conv2d(&t.bn.forward_relu(&x, mode)?, &t.conv, 1, 0)?;
                x = dropout(&x, self.dropout, mode)?;
                x = x.avg_pool2d(2)?;
            }
        }
        let features = global_avg_pool(&self.bn.forward_relu(&x, mode)?)?;
        let logits = self.ends.logits(&features)?;
        Ok(Forward { features, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn spec(depth: usize, classes: usize) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::DensenetBc { depth, growth: 12, reduction: 0.5 },
            input_shape: [3, 32, 32],
            num_classes: classes,
            dropout: 0.3,
            affine_bn: false,
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
            weight_masks: false,
        }
    }

    #[test]
    fn densenet_bc_100_has_the_papers_width_and_weight_count() {
        let spec = spec(100, 10);
        assert_eq!(spec.learnable_count().unwrap(), 745_174, "docs/methods.md §2");
        assert_eq!(super::plan(100, 12, 0.5), (24, vec![(24, 108), (108, 150), (150, 342)]));
        let fc = spec.parameters().unwrap().into_iter().find(|p| p.name == "fc.weight").unwrap();
        assert_eq!(fc.shape, vec![10, 342]);
    }

    #[test]
    fn a_small_densenet_trains_a_step_and_keeps_shapes() {
        let dev = candle_core::Device::Cpu;
        let spec = spec(10, 4); // one bottleneck per block
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let params = Parameters::trainable(&spec, values).unwrap();
        let net = Network::new(&spec, &params, &dev).unwrap();
        let images = crate::math::rng::test_images(5, &[2, 3, 32, 32]);
        let out = net.forward(&images, &mut Mode::train(0, 0, 0)).unwrap();
        assert_eq!(out.logits.dims(), &[2, 4]);
        // Channels: 24 → +12 = 36 → 18 → +12 = 30 → 15 → +12 = 27 pooled features.
        assert_eq!(out.features.dims(), &[2, 27]);
        let labels = candle_core::Tensor::new(&[1u32, 3], &dev).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        for var in params.trainable_vars() {
            assert!(grads.get(var.as_tensor()).is_some(), "every weight gets a gradient");
        }
        let eval = net.forward(&images, &mut Mode::Eval).unwrap();
        assert_eq!(eval.logits.dims(), &[2, 4]);
    }
}
