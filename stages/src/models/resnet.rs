//! ResNet for 32×32 inputs (`resnet18-cifar`, OpenOOD v1.5's `ResNet18_32x32`): stem conv3×3
//! (stride 1, no max-pool) → BN → ReLU; stages of basic blocks (2-2-2-2 for ResNet-18) of
//! widths 64, 128, 256, 512, the first block of every stage after the first with stride 2;
//! global average pooling (the penultimate feature) → linear. A block: y = conv3×3 (the
//! block's stride) → BN → ReLU → conv3×3 → BN; out = ReLU(y + shortcut), the shortcut a 1×1
//! conv (the block's stride) → BN where the width or stride changes, the input otherwise.
//! Parameter names are OpenOOD's (`layer1.0.conv1.weight`, `layer2.0.shortcut.0.weight`,
//! `layer2.0.shortcut.1.running_mean`, `fc.weight`).
use super::builder::Scope;
use super::kernels::conv::conv2d;
use super::kernels::fused_bn::Activation;
use super::layers::{global_avg_pool, BatchNorm2d, Ends, Forward, Mode};
use super::spec::ModelSpec;
use crate::error::StageError;
use candle_core::{Device, Tensor};

/// (input width, output width, stride) of every block, by stage: `blocks[s]` blocks of width
/// `widths[s]`, the first of every stage but the first with stride 2.
pub(crate) fn plan(widths: &[usize], blocks: &[usize]) -> Vec<Vec<(usize, usize, usize)>> {
    let mut input = widths.first().copied().unwrap_or(0);
    widths
        .iter()
        .zip(blocks)
        .enumerate()
        .map(|(s, (&width, &count))| {
            (0..count)
                .map(|b| {
                    let stride = if s > 0 && b == 0 { 2 } else { 1 };
                    let block = (input, width, stride);
                    input = width;
                    block
                })
                .collect()
        })
        .collect()
}

struct Shortcut {
    conv: Tensor,
    bn: BatchNorm2d,
}

struct Block {
    conv1: Tensor,
    bn1: BatchNorm2d,
    conv2: Tensor,
    bn2: BatchNorm2d,
    shortcut: Option<Shortcut>,
    stride: usize,
}

pub struct ResNetCifar {
    stem: Tensor,
    bn: BatchNorm2d,
    blocks: Vec<Block>,
    ends: Ends,
}

impl ResNetCifar {
    pub fn new(
        spec: &ModelSpec,
        widths: &[usize],
        blocks: &[usize],
        root: &Scope,
        device: &Device,
    ) -> Result<ResNetCifar, StageError> {
        if widths.is_empty() || widths.len() != blocks.len() || widths.contains(&0) || blocks.contains(&0) {
            return Err(StageError::Unsuitable(format!(
                "resnet-cifar needs one block count (at least 1) per width (at least 1): widths \
                 {widths:?}, blocks {blocks:?}"
            )));
        }
        let affine = spec.affine_bn;
        let stem = root.pp("conv1").conv_weight(widths[0], spec.input_shape[0], 3)?;
        let bn = BatchNorm2d::new(&root.pp("bn1"), widths[0], affine)?;
        let mut list = Vec::new();
        for (s, stage) in plan(widths, blocks).into_iter().enumerate() {
            for (b, (input, output, stride)) in stage.into_iter().enumerate() {
                let block = root.pp(format!("layer{}", s + 1)).pp(b);
                // Declared in PyTorch's order (conv1, bn1, conv2, bn2, shortcut), so that
                // exported state_dicts list their keys as `state_dict()` does.
                let conv1 = block.pp("conv1").conv_weight(output, input, 3)?;
                let bn1 = BatchNorm2d::new(&block.pp("bn1"), output, affine)?;
                let conv2 = block.pp("conv2").conv_weight(output, output, 3)?;
                let bn2 = BatchNorm2d::new(&block.pp("bn2"), output, affine)?;
                let shortcut = if input != output || stride != 1 {
                    let sc = block.pp("shortcut");
                    Some(Shortcut {
                        conv: sc.pp(0).conv_weight(output, input, 1)?,
                        bn: BatchNorm2d::new(&sc.pp(1), output, affine)?,
                    })
                } else {
                    None
                };
                list.push(Block { conv1, bn1, conv2, bn2, shortcut, stride });
            }
        }
        let last = *widths.last().expect("checked non-empty");
        Ok(ResNetCifar { stem, bn, blocks: list, ends: Ends::new(spec, root, last, device)? })
    }

    /// The input normalisation and the linear head.
    pub fn ends(&self) -> &Ends {
        &self.ends
    }

    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        let mut x = self.ends.normalise(images)?;
        x = self.bn.forward_relu(&conv2d(&x, &self.stem, 1, 1)?, mode)?;
        for block in &self.blocks {
            let y = block.bn1.forward_relu(&conv2d(&x, &block.conv1, block.stride, 1)?, mode)?;
            let y = block.bn2.forward_then(&conv2d(&y, &block.conv2, 1, 1)?, mode, Activation::Identity)?;
            let shortcut = match &block.shortcut {
                Some(sc) => {
                    sc.bn.forward_then(&conv2d(&x, &sc.conv, block.stride, 0)?, mode, Activation::Identity)?
                }
                None => x.clone(),
            };
            x = (y + shortcut)?.relu()?;
        }
        let features = global_avg_pool(&x)?;
        let logits = self.ends.logits(&features)?;
        Ok(Forward { features, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn spec(widths: Vec<usize>, blocks: Vec<usize>, affine_bn: bool) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::ResnetCifar { widths, blocks },
            input_shape: [3, 32, 32],
            num_classes: 10,
            dropout: 0.0,
            affine_bn,
            mean: vec![0.49, 0.48, 0.45],
            std: vec![0.25, 0.24, 0.26],
            weight_masks: false,
        }
    }

    #[test]
    fn resnet18_cifar_has_openoods_weight_count_and_names() {
        // ResNet18_32x32 (num_classes 10): 11,173,962 parameters, batch-norm scale and shift included.
        let spec = spec(vec![64, 128, 256, 512], vec![2, 2, 2, 2], true);
        assert_eq!(spec.learnable_count().unwrap(), 11_173_962);
        let names: Vec<String> = spec.parameters().unwrap().into_iter().map(|p| p.name).collect();
        for name in ["conv1.weight", "bn1.bias", "layer1.1.conv2.weight", "layer2.0.shortcut.0.weight"] {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
        assert!(names.iter().any(|n| n == "layer4.0.shortcut.1.running_var"));
        assert!(!names.iter().any(|n| n.starts_with("layer1.0.shortcut")), "no projection in layer1");
        assert_eq!(names.last().map(String::as_str), Some("fc.bias"));
    }

    #[test]
    fn a_small_resnet_trains_a_step_and_keeps_shapes() {
        let dev = candle_core::Device::Cpu;
        let spec = spec(vec![4, 8], vec![1, 2], true);
        let values = spec.initialise(&mut crate::math::rng::derive(0, "init"), &dev).unwrap();
        let params = Parameters::trainable(&spec, values).unwrap();
        let net = Network::new(&spec, &params, &dev).unwrap();
        let images = crate::math::rng::test_images(5, &[2, 3, 32, 32]);
        let out = net.forward(&images, &mut Mode::train(0, 0, 0)).unwrap();
        assert_eq!(out.features.dims(), &[2, 8]);
        assert_eq!(out.logits.dims(), &[2, 10]);
        let labels = candle_core::Tensor::new(&[1u32, 3], &dev).unwrap();
        let grads = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap().backward().unwrap();
        for var in params.trainable_vars() {
            assert!(grads.get(var.as_tensor()).is_some(), "every weight gets a gradient");
        }
        assert_eq!(net.forward(&images, &mut Mode::Eval).unwrap().logits.dims(), &[2, 10]);
    }
}
