//! The architectures a recipe names (`model = "small-cnn"`, …) with their default sizes, and
//! the catalogue `pipeline models` prints.
use super::spec::{Architecture, ModelSpec};
use crate::error::StageError;
use serde::{Deserialize, Serialize};

/// The architectures `train` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    SmallCnn,
    /// DenseNet-BC, depth 100, growth 12, reduction 0.5 (docs/methods.md §2).
    #[serde(rename = "densenet-bc-100")]
    DensenetBc100,
    /// Wide ResNet 40-4 (docs/methods.md §2).
    #[serde(rename = "wrn-40-4")]
    Wrn404,
    /// Wide ResNet 40-2 (Outlier Exposure's CIFAR network).
    #[serde(rename = "wrn-40-2")]
    Wrn402,
    /// ResNet-18 for 32×32 inputs (OpenOOD v1.5's `ResNet18_32x32`).
    #[serde(rename = "resnet18-cifar")]
    Resnet18Cifar,
}

impl ModelName {
    pub const ALL: [ModelName; 5] = [
        ModelName::SmallCnn,
        ModelName::DensenetBc100,
        ModelName::Wrn404,
        ModelName::Wrn402,
        ModelName::Resnet18Cifar,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelName::SmallCnn => "small-cnn",
            ModelName::DensenetBc100 => "densenet-bc-100",
            ModelName::Wrn404 => "wrn-40-4",
            ModelName::Wrn402 => "wrn-40-2",
            ModelName::Resnet18Cifar => "resnet18-cifar",
        }
    }

    /// The architecture this name builds (`widths` and `strides` are small-cnn's).
    pub fn architecture(self, widths: &[usize], strides: &[usize]) -> Architecture {
        match self {
            ModelName::SmallCnn => {
                Architecture::SmallCnn { widths: widths.to_vec(), strides: strides.to_vec() }
            }
            ModelName::DensenetBc100 => Architecture::DensenetBc { depth: 100, growth: 12, reduction: 0.5 },
            ModelName::Wrn404 => Architecture::WideResnet { depth: 40, widen: 4 },
            ModelName::Wrn402 => Architecture::WideResnet { depth: 40, widen: 2 },
            ModelName::Resnet18Cifar => {
                Architecture::ResnetCifar { widths: vec![64, 128, 256, 512], blocks: vec![2, 2, 2, 2] }
            }
        }
    }

    /// The input the architecture is usually trained on (for `pipeline models`).
    pub fn typical_input(self) -> [usize; 3] {
        match self {
            ModelName::SmallCnn => [1, 28, 28],
            ModelName::DensenetBc100 | ModelName::Wrn404 | ModelName::Wrn402 | ModelName::Resnet18Cifar => {
                [3, 32, 32]
            }
        }
    }
}

pub fn default_widths() -> Vec<usize> {
    vec![16, 32, 64, 128]
}

pub fn default_strides() -> Vec<usize> {
    vec![1, 2, 2, 2]
}

pub fn default_dropout() -> f64 {
    0.3
}

/// One line of `pipeline models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub name: &'static str,
    /// The input the architecture is usually trained on (channels, height, width).
    pub input: [usize; 3],
    /// Learnable values (weights, biases, affine batch norm).
    pub weights: usize,
}

/// Every architecture `train` builds with its defaults, with its number of learnable values for
/// `num_classes` classes.
pub fn model_catalogue(num_classes: usize) -> Result<Vec<CatalogueEntry>, StageError> {
    ModelName::ALL
        .iter()
        .map(|&name| {
            let input = name.typical_input();
            let spec = ModelSpec {
                architecture: name.architecture(&default_widths(), &default_strides()),
                input_shape: input,
                num_classes,
                dropout: default_dropout(),
                affine_bn: false,
                mean: vec![0.0; input[0]],
                std: vec![1.0; input[0]],
                weight_masks: false,
            };
            Ok(CatalogueEntry { name: name.name(), input, weights: spec.learnable_count()? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_lists_every_model_with_its_weight_count() {
        let catalogue = model_catalogue(10).unwrap();
        assert_eq!(catalogue.len(), ModelName::ALL.len());
        let row = |e: &CatalogueEntry| (e.name, e.input, e.weights);
        assert_eq!(row(&catalogue[1]), ("densenet-bc-100", [3, 32, 32], 745_174));
        assert_eq!(row(&catalogue[2]), ("wrn-40-4", [3, 32, 32], 8_938_426));
        // Outlier Exposure's WRN-40-2 with non-affine batch norm (2,243,546 with affine, as
        // PyTorch counts it).
        assert_eq!(row(&catalogue[3]), ("wrn-40-2", [3, 32, 32], 2_238_138));
        // OpenOOD's ResNet18_32x32 has 11,173,962 with its affine batch norm (4,800 channels of
        // scale and shift): 9,600 fewer here.
        assert_eq!(row(&catalogue[4]), ("resnet18-cifar", [3, 32, 32], 11_164_362));
        // 16·9 + 32·16·9 + 64·32·9 + 128·64·9 + 10·128 + 10
        assert_eq!(catalogue[0].weights, 144 + 4608 + 18432 + 73728 + 1280 + 10);
    }
}
