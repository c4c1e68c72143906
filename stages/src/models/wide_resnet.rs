//! Wide ResNet (docs/methods.md §2, `wrn-40-4`): stem conv3×3 3→16, three groups of (depth − 4)/6
//! pre-activation basic blocks of widths 16·k·(1, 2, 4) and strides 1, 2, 2, then BN → ReLU →
//! global average pooling (the penultimate feature) → linear. A block: o = ReLU(BN(x));
//! y = conv3×3(o) (the block's stride) → BN → ReLU → dropout → conv3×3; plus the shortcut, a
//! 1×1 conv of the pre-activated o where the width or stride changes, the raw x otherwise.
use super::builder::Scope;
use super::kernels::conv::{conv2d, conv2d_add};
use super::layers::{dropout, global_avg_pool, BatchNorm2d, Ends, Forward, Mode};
use super::spec::ModelSpec;
use crate::error::StageError;
use candle_core::{Device, Tensor};

/// (input width, output width, stride) of every block.
fn blocks(depth: usize, widen: usize) -> Vec<(usize, usize, usize)> {
    let per_group = (depth - 4) / 6;
    let mut out = Vec::new();
    let mut width = 16;
    for (g, stride) in [1, 2, 2].into_iter().enumerate() {
        let group_width = (16 * widen) << g;
        for b in 0..per_group {
            out.push((width, group_width, if b == 0 { stride } else { 1 }));
            width = group_width;
        }
    }
    out
}

fn needs_projection(input: usize, output: usize, stride: usize) -> bool {
    input != output || stride != 1
}

struct Block {
    bn1: BatchNorm2d,
    conv1: Tensor,
    bn2: BatchNorm2d,
    conv2: Tensor,
    shortcut: Option<Tensor>,
    stride: usize,
}

pub struct WideResNet {
    stem: Tensor,
    blocks: Vec<Block>,
    bn: BatchNorm2d,
    ends: Ends,
    dropout: f64,
}

impl WideResNet {
    pub fn new(
        spec: &ModelSpec,
        depth: usize,
        widen: usize,
        root: &Scope,
        device: &Device,
    ) -> Result<WideResNet, StageError> {
        let affine = spec.affine_bn;
        let stem = root.pp("conv1").conv_weight(16, spec.input_shape[0], 3)?;
        let mut list = Vec::new();
        let mut last = 16;
        for (i, (input, output, stride)) in blocks(depth, widen).into_iter().enumerate() {
            let block = root.pp(format!("block{i}"));
            list.push(Block {
                bn1: BatchNorm2d::new(&block.pp("bn1"), input, affine)?,
                conv1: block.pp("conv1").conv_weight(output, input, 3)?,
                bn2: BatchNorm2d::new(&block.pp("bn2"), output, affine)?,
                conv2: block.pp("conv2").conv_weight(output, output, 3)?,
                shortcut: if needs_projection(input, output, stride) {
                    Some(block.pp("shortcut").conv_weight(output, input, 1)?)
                } else {
                    None
                },
                stride,
            });
            last = output;
        }
        Ok(WideResNet {
            stem,
            blocks: list,
            bn: BatchNorm2d::new(&root.pp("bn"), last, affine)?,
            ends: Ends::new(spec, root, last, device)?,
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
        for block in &self.blocks {
            let activated = block.bn1.forward_relu(&x, mode)?;
            let mut y = conv2d(&activated, &block.conv1, block.stride, 1)?;
            y = block.bn2.forward_relu(&y, mode)?;
            y = dropout(&y, self.dropout, mode)?;
            let shortcut = match &block.shortcut {
                Some(weight) => conv2d(&activated, weight, block.stride, 0)?,
                None => x.clone(),
            };
            x = conv2d_add(&y, &block.conv2, 1, 1, &shortcut)?;
        }
        let features = global_avg_pool(&self.bn.forward_relu(&x, mode)?)?;
        let logits = self.ends.logits(&features)?;
        Ok(Forward { features, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn spec(depth: usize, widen: usize) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::WideResnet { depth, widen },
            input_shape: [3, 32, 32],
            num_classes: 10,
            dropout: 0.3,
            affine_bn: false,
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
            weight_masks: false,
        }
    }

    #[test]
    fn wrn_40_4_has_the_expected_weight_count() {
        // stem 16·3·9; per group the first block's two 3×3 convs and 1×1 shortcut, then five
        // blocks of two 3×3 convs; widths 64, 128, 256; linear 256→10.
        let group = |i: usize, o: usize| o * i * 9 + o * o * 9 + o * i + 5 * 2 * o * o * 9;
        let expected = 16 * 3 * 9 + group(16, 64) + group(64, 128) + group(128, 256) + 256 * 10 + 10;
        assert_eq!(expected, 8_938_426);
        assert_eq!(spec(40, 4).learnable_count().unwrap(), expected);
    }

    #[test]
    fn a_small_wide_resnet_runs_forward_and_backward() {
        let dev = candle_core::Device::Cpu;
        let spec = spec(10, 1); // one block per group, widths 16/32/64
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let params = Parameters::trainable(&spec, values).unwrap();
        let net = Network::new(&spec, &params, &dev).unwrap();
        let images = crate::math::rng::test_images(2, &[2, 3, 32, 32]);
        let out = net.forward(&images, &mut Mode::train(0, 0, 0)).unwrap();
        assert_eq!(out.features.dims(), &[2, 64]);
        assert_eq!(out.logits.dims(), &[2, 10]);
        let labels = candle_core::Tensor::new(&[1u32, 3], &dev).unwrap();
        let grads = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap().backward().unwrap();
        for var in params.trainable_vars() {
            assert!(grads.get(var.as_tensor()).is_some(), "every weight gets a gradient");
        }
    }
}
