//! Models: their JSON description ([`ModelSpec`]), their parameters ([`Parameters`]: trainable,
//! buffers such as batch-norm statistics, or frozen), seeded initialisation, checkpoints as
//! safetensors, and the forward pass ([`Network`]).
//!
//! A model on disk is a folder (or a pair of files) with `model.json` (the [`ModelSpec`]) and a
//! safetensors file whose tensor names match PyTorch's conventions (`conv1.weight`,
//! `bn1.running_mean`, `fc.bias`).
pub mod builder;
pub mod catalogue;
pub mod checkpoints;
mod densenet;
pub mod evaluation;
pub mod external;
#[allow(unsafe_code)]
pub mod kernels;
pub mod layers;
pub mod network;
pub mod parameters;
mod resnet;
mod small_cnn;
pub mod spec;
mod wide_resnet;

pub use checkpoints::{checkpoint_file, CheckpointIndex, ModelFiles, SavedModel, CHECKPOINT_INDEX};
pub use densenet::DenseNetBc;
pub use layers::{Ends, Forward, Mode};
pub use network::Network;
pub use parameters::{load_weights, save_weights, Hold, Parameters};
pub use resnet::ResNetCifar;
pub use small_cnn::SmallCnn;
pub use spec::{Architecture, Init, ModelSpec, ParamDef, Role};
pub use wide_resnet::WideResNet;
