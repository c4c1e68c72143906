//! Checkpoints from elsewhere: reading PyTorch and safetensors state_dicts ([`pth`]), the key
//! layouts of the reference code bases ([`Naming`]), binding a file's tensors to a pipeline
//! architecture with clear refusals ([`bind`]), and recognising what a file holds ([`identify`]).
//!
//! A naming is a bijection between the pipeline's parameter names for an architecture and the
//! keys of another code base's `state_dict()`: [`Naming::foreign_name`] maps one way, and the
//! other way is found through the architecture's parameter list, so the two cannot disagree.
pub mod pth;
mod stored_zip;

use super::spec::{Architecture, ModelSpec, Role};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Whose key layout a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// OpenOOD v1.5 (`ResNet18_32x32`): `layer2.0.shortcut.0.weight`; the pipeline's own names
    /// for `resnet18-cifar`.
    Openood,
    /// torchvision's ResNet layout: `layer2.0.downsample.0.weight` for the projection.
    Torchvision,
    /// The DenseNet3 of the ODIN / energy / Unleashing Mask code:
    /// `block1.layer.0.bn1.weight`, `trans1.conv1.weight`, the last norm `bn1`.
    UmCode,
    /// The WideResNet of the Outlier Exposure code: `block1.layer.0.convShortcut.weight`, the
    /// last norm `bn1`.
    OeCode,
    /// The pipeline's own names (what `model.safetensors` holds), for every architecture.
    Pipeline,
}

impl Naming {
    pub const ALL: [Naming; 5] =
        [Naming::Openood, Naming::Torchvision, Naming::UmCode, Naming::OeCode, Naming::Pipeline];

    pub fn name(self) -> &'static str {
        match self {
            Naming::Openood => "openood",
            Naming::Torchvision => "torchvision",
            Naming::UmCode => "um-code",
            Naming::OeCode => "oe-code",
            Naming::Pipeline => "pipeline",
        }
    }

    /// Whether this naming describes `architecture`.
    pub fn applies_to(self, architecture: &Architecture) -> bool {
        matches!(
            (self, architecture),
            (Naming::Pipeline, _)
                | (Naming::Openood | Naming::Torchvision, Architecture::ResnetCifar { .. })
                | (Naming::UmCode, Architecture::DensenetBc { .. })
                | (Naming::OeCode, Architecture::WideResnet { .. })
        )
    }

    /// The namings that describe `architecture`, for messages.
    pub fn for_architecture(architecture: &Architecture) -> Vec<&'static str> {
        Naming::ALL.iter().filter(|n| n.applies_to(architecture)).map(|n| n.name()).collect()
    }

    /// The key this naming gives the pipeline parameter `name` of `architecture`.
    pub fn foreign_name(self, name: &str, architecture: &Architecture) -> String {
        let parts: Vec<&str> = name.split('.').collect();
        let join = |head: Vec<String>, rest: &[&str]| {
            head.into_iter().chain(rest.iter().map(|s| s.to_string())).collect::<Vec<_>>().join(".")
        };
        match (self, architecture) {
            (Naming::Torchvision, Architecture::ResnetCifar { .. }) => {
                name.replace(".shortcut.", ".downsample.")
            }
            (Naming::UmCode, Architecture::DensenetBc { .. }) => match parts.as_slice() {
                [block, layer, rest @ ..] if block.starts_with("block") && layer.starts_with("layer") => {
                    join(vec![block.to_string(), "layer".into(), layer["layer".len()..].to_string()], rest)
                }
                [trans, "bn", rest @ ..] if trans.starts_with("trans") => {
                    join(vec![trans.to_string(), "bn1".into()], rest)
                }
                [trans, "conv", rest @ ..] if trans.starts_with("trans") => {
                    join(vec![trans.to_string(), "conv1".into()], rest)
                }
                ["bn", rest @ ..] => join(vec!["bn1".into()], rest),
                _ => name.to_string(),
            },
            (Naming::OeCode, Architecture::WideResnet { depth, .. }) => {
                let per_group = ((depth.saturating_sub(4)) / 6).max(1);
                match parts.as_slice() {
                    [block, rest @ ..] if block.starts_with("block") => {
                        let Ok(i) = block["block".len()..].parse::<usize>() else { return name.to_string() };
                        let rest: Vec<&str> =
                            rest.iter().map(|p| if *p == "shortcut" { "convShortcut" } else { p }).collect();
                        join(
                            vec![
                                format!("block{}", i / per_group + 1),
                                "layer".into(),
                                (i % per_group).to_string(),
                            ],
                            &rest,
                        )
                    }
                    ["bn", rest @ ..] => join(vec!["bn1".into()], rest),
                    _ => name.to_string(),
                }
            }
            _ => name.to_string(),
        }
    }
}

/// Why a checkpoint does not fit an architecture: each message names the tensor and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    #[error("the file lacks `{expected}` ({what}){}", closest.as_ref().map(|c| format!("; the closest key in the file is `{c}`")).unwrap_or_default())]
    Missing { expected: String, what: String, closest: Option<String> },
    #[error("the file holds `{key}`, which the architecture does not have{}", closest.as_ref().map(|c| format!(" (closest expected key: `{c}`)")).unwrap_or_default())]
    Unexpected { key: String, closest: Option<String> },
    #[error("`{key}` has shape {found:?}, the architecture expects {expected:?}")]
    Shape { key: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("`{key}` holds {dtype:?} values, not floating-point ones")]
    Dtype { key: String, dtype: DType },
    #[error("the head `{key}` has {rows} rows (classes), the stage says `classes = {classes}`")]
    Classes { key: String, rows: usize, classes: usize },
    #[error("naming `{naming}` does not describe this architecture (it has: {known})")]
    Naming { naming: &'static str, known: String },
}

/// The prefixes wrappers add to every key (`module.` from DataParallel, `model.` from
/// Lightning), stripped while every key carries one.
const WRAPPER_PREFIXES: &[&str] = &["module.", "model."];

/// The file's tensors under the names the checkpoint means: wrapper prefixes stripped, and
/// batch-norm `num_batches_tracked` counters (PyTorch bookkeeping, unused in evaluation and by
/// the pipeline's fixed momentum) left out.
pub fn without_wrappers(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut tensors = tensors;
    while let Some(prefix) = WRAPPER_PREFIXES
        .iter()
        .find(|p| !tensors.is_empty() && tensors.iter().all(|(k, _)| k.starts_with(*p)))
    {
        tensors = tensors.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
    }
    tensors.into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect()
}

fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a String>) -> Option<String> {
    candidates
        .map(|c| (strsim::levenshtein(key, c), c))
        .min_by_key(|(d, c)| (*d, (*c).clone()))
        .map(|(_, c)| c.clone())
}

/// Whether the checkpoint has batch-norm scale and shift: the file holds the key of the
/// first affine parameter of `spec` made affine.
fn file_is_affine(keys: &HashMap<&str, &Tensor>, spec: &ModelSpec, naming: Naming) -> bool {
    let affine = ModelSpec { affine_bn: true, ..spec.clone() };
    let Ok(defs) = affine.parameters() else { return false };
    defs.iter()
        .filter(|d| d.role == Role::NormAffine)
        .any(|d| keys.contains_key(naming.foreign_name(&d.name, &spec.architecture).as_str()))
}

/// The file's tensors as the pipeline's parameters of `spec` (whose `affine_bn` is set from
/// the file), refusing with every problem found: a head that does not have `spec.num_classes`
/// rows, keys the architecture does not have, keys it lacks, non-float dtypes, shapes.
pub fn bind(
    tensors: Vec<(String, Tensor)>,
    spec: &ModelSpec,
    naming: Naming,
) -> Result<(ModelSpec, BTreeMap<String, Tensor>), Vec<BindError>> {
    if !naming.applies_to(&spec.architecture) {
        return Err(vec![BindError::Naming {
            naming: naming.name(),
            known: Naming::for_architecture(&spec.architecture).join(", "),
        }]);
    }
    let tensors = without_wrappers(tensors);
    let by_key: HashMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let spec = ModelSpec { affine_bn: file_is_affine(&by_key, spec, naming), ..spec.clone() };
    let defs = spec
        .parameters()
        .map_err(|e| vec![BindError::Naming { naming: naming.name(), known: e.to_string() }])?;
    let expected: Vec<(String, &super::spec::ParamDef)> =
        defs.iter().map(|d| (naming.foreign_name(&d.name, &spec.architecture), d)).collect();
    let expected_keys: HashMap<&str, &super::spec::ParamDef> =
        expected.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    let mut problems = Vec::new();
    let head = naming.foreign_name("fc.weight", &spec.architecture);
    if let Some(t) = by_key.get(head.as_str()) {
        if t.rank() == 2 && t.dim(0).ok() != Some(spec.num_classes) {
            problems.push(BindError::Classes {
                key: head.clone(),
                rows: t.dims()[0],
                classes: spec.num_classes,
            });
        }
    }
    let mut values = BTreeMap::new();
    for (key, tensor) in &tensors {
        let Some(def) = expected_keys.get(key.as_str()) else {
            problems.push(BindError::Unexpected {
                key: key.clone(),
                closest: closest(
                    key,
                    expected.iter().map(|(k, _)| k).filter(|k| !by_key.contains_key(k.as_str())),
                ),
            });
            continue;
        };
        if !matches!(tensor.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            problems.push(BindError::Dtype { key: key.clone(), dtype: tensor.dtype() });
            continue;
        }
        if tensor.dims() != def.shape.as_slice() {
            if key != &head || problems.iter().all(|p| !matches!(p, BindError::Classes { .. })) {
                problems.push(BindError::Shape {
                    key: key.clone(),
                    found: tensor.dims().to_vec(),
                    expected: def.shape.clone(),
                });
            }
            continue;
        }
        values.insert(def.name.clone(), tensor.clone());
    }
    for (key, def) in &expected {
        if !by_key.contains_key(key.as_str()) {
            let unexpected =
                tensors.iter().map(|(k, _)| k).filter(|k| !expected_keys.contains_key(k.as_str()));
            problems.push(BindError::Missing {
                expected: key.clone(),
                what: format!("shape {:?}", def.shape),
                closest: closest(key, unexpected),
            });
        }
    }
    if problems.is_empty() {
        let values = values
            .into_iter()
            .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|e| vec![BindError::Naming { naming: naming.name(), known: e.to_string() }])?;
        Ok((spec, values))
    } else {
        Err(problems)
    }
}

/// The pipeline's parameters of `architecture` as another code base names them, for export:
/// every tensor renamed, and a `num_batches_tracked` counter (0) after each batch norm's
/// `running_var`, as PyTorch's `state_dict()` lists them.
pub fn export_names(
    values: &BTreeMap<String, Tensor>,
    spec: &ModelSpec,
    naming: Naming,
) -> Result<Vec<(String, Tensor)>, String> {
    if !naming.applies_to(&spec.architecture) {
        return Err(format!(
            "naming `{}` does not describe this architecture (it has: {})",
            naming.name(),
            Naming::for_architecture(&spec.architecture).join(", ")
        ));
    }
    let defs = spec.parameters().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(defs.len());
    for def in defs {
        let value = values.get(&def.name).ok_or_else(|| format!("the model lacks `{}`", def.name))?;
        let key = naming.foreign_name(&def.name, &spec.architecture);
        let counter = key.strip_suffix("running_var").map(|stem| format!("{stem}num_batches_tracked"));
        out.push((key, value.clone()));
        if let Some(counter) = counter {
            let zero = Tensor::new(0i64, value.device()).map_err(|e| e.to_string())?;
            out.push((counter, zero));
        }
    }
    Ok(out)
}

/// The model saved in a stage's output folder `dir` (masks applied) as `naming` names it,
/// for export: its description and tensors.
pub fn exported(dir: &std::path::Path, naming: Naming) -> Result<(ModelSpec, Vec<(String, Tensor)>), String> {
    let saved = super::checkpoints::SavedModel::in_dir(dir).map_err(|e| e.to_string())?;
    let (spec, values) = saved.load_effective(&candle_core::Device::Cpu).map_err(|e| e.to_string())?;
    let tensors = export_names(&values, &spec, naming)?;
    Ok((spec, tensors))
}

/// Writes `tensors` as safetensors (by the extension; PyTorch's `num_batches_tracked`
/// counters left out, as the file holds floating-point weights) or PyTorch's zip format.
pub fn write_checkpoint(tensors: &[(String, Tensor)], path: &std::path::Path) -> Result<(), String> {
    if pth::is_safetensors(path) {
        let map: HashMap<String, Tensor> =
            tensors.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).cloned().collect();
        candle_core::safetensors::save(&map, path).map_err(|e| e.to_string())
    } else {
        pth::write_pth(tensors, path).map_err(|e| e.to_string())
    }
}

/// The architectures a state_dict could be, with their sizes read from its shapes, for each
/// naming that describes them: (naming, architecture, classes, input channels).
pub fn identify(tensors: &[(String, Tensor)]) -> Vec<(Naming, Architecture, usize, usize)> {
    let tensors = without_wrappers(tensors.to_vec());
    let shapes: HashMap<&str, &[usize]> = tensors.iter().map(|(k, v)| (k.as_str(), v.dims())).collect();
    let dim = |key: &str, d: usize| shapes.get(key).and_then(|s| s.get(d)).copied();
    let count =
        |f: &dyn Fn(usize) -> String| (0..).take_while(|&i| shapes.contains_key(f(i).as_str())).count();
    let mut candidates: Vec<(Naming, Architecture)> = Vec::new();
    // ResNet: widths from each stage's first conv, blocks by counting.
    let stages =
        (1..).take_while(|s| shapes.contains_key(format!("layer{s}.0.conv1.weight").as_str())).count();
    if stages > 0 {
        let widths: Vec<usize> =
            (1..=stages).filter_map(|s| dim(&format!("layer{s}.0.conv1.weight"), 0)).collect();
        let blocks: Vec<usize> =
            (1..=stages).map(|s| count(&|b| format!("layer{s}.{b}.conv1.weight"))).collect();
        let architecture = Architecture::ResnetCifar { widths, blocks };
        for naming in [Naming::Openood, Naming::Torchvision] {
            candidates.push((naming, architecture.clone()));
        }
        // The pipeline's names for this architecture are OpenOOD's.
    }
    // DenseNet-BC: layers per block and growth from block1, reduction from trans1.
    for (naming, layer, trans) in [
        (Naming::UmCode, "block1.layer.", "trans1.conv1.weight"),
        (Naming::Pipeline, "block1.layer", "trans1.conv.weight"),
    ] {
        let layers = count(&|l| format!("{layer}{l}.conv2.weight"));
        if let (true, Some(growth), Some(out), Some(input)) =
            (layers > 0, dim(&format!("{layer}0.conv2.weight"), 0), dim(trans, 0), dim(trans, 1))
        {
            let reduction = if out == input / 2 { 0.5 } else { out as f64 / input as f64 };
            candidates.push((naming, Architecture::DensenetBc { depth: 6 * layers + 4, growth, reduction }));
        }
    }
    // Wide ResNet: blocks per group and the widening factor from the first block.
    let oe = count(&|l| format!("block1.layer.{l}.conv1.weight"));
    if let (true, Some(width)) = (oe > 0, dim("block1.layer.0.conv1.weight", 0)) {
        candidates.push((
            Naming::OeCode,
            Architecture::WideResnet { depth: 6 * oe + 4, widen: (width / 16).max(1) },
        ));
    }
    let blocks = count(&|i| format!("block{i}.conv1.weight"));
    if let (true, Some(width)) = (blocks >= 3 && blocks % 3 == 0, dim("block0.conv1.weight", 0)) {
        candidates.push((
            Naming::Pipeline,
            Architecture::WideResnet { depth: 2 * blocks + 4, widen: (width / 16).max(1) },
        ));
    }
    // The small CNN: widths from conv1, conv2, …; strides are not in the weights (1 assumed).
    let convs = count(&|i| format!("conv{}.weight", i + 1));
    if convs > 0 && stages == 0 {
        let widths: Vec<usize> = (1..=convs).filter_map(|i| dim(&format!("conv{i}.weight"), 0)).collect();
        candidates
            .push((Naming::Pipeline, Architecture::SmallCnn { strides: vec![1; widths.len()], widths }));
    }
    let mut found = Vec::new();
    for (naming, architecture) in candidates {
        let head = naming.foreign_name("fc.weight", &architecture);
        let (Some(classes), Some(channels)) = (dim(&head, 0), dim("conv1.weight", 1)) else { continue };
        let spec = ModelSpec {
            architecture: architecture.clone(),
            input_shape: [channels, 32, 32],
            num_classes: classes,
            dropout: 0.0,
            affine_bn: false,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
            weight_masks: false,
        };
        if bind(tensors.clone(), &spec, naming).is_ok() {
            found.push((naming, architecture, classes, channels));
        }
    }
    found
}
