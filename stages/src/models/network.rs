//! A model ready to run: its description and its layers bound to parameter values. Each
//! architecture's constructor is its only declaration: run on a listing [`Builder`] it gives
//! [`ModelSpec::parameters`], run on a loading one it binds a [`Parameters`].
use super::builder::{Builder, Scope};
use super::densenet::DenseNetBc;
use super::layers::{Forward, Mode};
use super::parameters::{Hold, Parameters};
use super::resnet::ResNetCifar;
use super::small_cnn::SmallCnn;
use super::spec::{Architecture, Init, ModelSpec, ParamDef, Role};
use super::wide_resnet::WideResNet;
use crate::error::StageError;
use crate::math::rng::Rng;
use candle_core::{Device, Tensor};
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;

/// A model ready to run: its description and its layers bound to parameter values.
pub struct Network {
    pub spec: ModelSpec,
    body: Body,
}

enum Body {
    SmallCnn(SmallCnn),
    DenseNetBc(DenseNetBc),
    WideResNet(WideResNet),
    ResNetCifar(ResNetCifar),
}

impl Body {
    fn build(spec: &ModelSpec, root: &Scope, device: &Device) -> Result<Body, StageError> {
        Ok(match &spec.architecture {
            Architecture::SmallCnn { widths, strides } => {
                Body::SmallCnn(SmallCnn::new(spec, widths, strides, root, device)?)
            }
            Architecture::DensenetBc { depth, growth, reduction } => {
                Body::DenseNetBc(DenseNetBc::new(spec, *depth, *growth, *reduction, root, device)?)
            }
            Architecture::WideResnet { depth, widen } => {
                Body::WideResNet(WideResNet::new(spec, *depth, *widen, root, device)?)
            }
            Architecture::ResnetCifar { widths, blocks } => {
                Body::ResNetCifar(ResNetCifar::new(spec, widths, blocks, root, device)?)
            }
        })
    }
}

impl Network {
    pub fn new(spec: &ModelSpec, params: &Parameters, device: &Device) -> Result<Network, StageError> {
        let builder = Builder::loading(params);
        let body = Body::build(spec, &builder.root(), device)?;
        Ok(Network { spec: spec.clone(), body })
    }

    /// The linear head's weight `(classes, features)` and bias, as f32 rows and values on the
    /// host (for scores that recompute logits from modified features).
    pub fn head(&self) -> Result<(Vec<Vec<f32>>, Vec<f32>), StageError> {
        let ends = match &self.body {
            Body::SmallCnn(net) => net.ends(),
            Body::DenseNetBc(net) => net.ends(),
            Body::WideResNet(net) => net.ends(),
            Body::ResNetCifar(net) => net.ends(),
        };
        let (weight, bias) = ends.head();
        Ok((
            weight.to_dtype(candle_core::DType::F32)?.to_vec2()?,
            bias.to_dtype(candle_core::DType::F32)?.to_vec1()?,
        ))
    }

    /// Runs a batch `(n, c, h, w)` of [0, 1] pixels.
    pub fn forward(&self, images: &Tensor, mode: &mut Mode) -> Result<Forward, StageError> {
        match &self.body {
            Body::SmallCnn(net) => net.forward(images, mode),
            Body::DenseNetBc(net) => net.forward(images, mode),
            Body::WideResNet(net) => net.forward(images, mode),
            Body::ResNetCifar(net) => net.forward(images, mode),
        }
    }
}

impl ModelSpec {
    /// Every parameter of the model, in the order its architecture declares them.
    pub fn parameters(&self) -> Result<Vec<ParamDef>, StageError> {
        let builder = Builder::listing();
        Body::build(self, &builder.root(), &Device::Cpu)?;
        Ok(builder.into_defs())
    }

    /// Number of learnable values (weights, biases, affine batch norm).
    pub fn learnable_count(&self) -> Result<usize, StageError> {
        Ok(self
            .parameters()?
            .iter()
            .filter(|p| p.role != Role::NormStatistic)
            .map(|p| p.shape.iter().product::<usize>())
            .sum())
    }

    /// Fresh values for every parameter, drawn from `rng`.
    pub fn initialise(&self, rng: &mut Rng, device: &Device) -> Result<BTreeMap<String, Tensor>, StageError> {
        let mut values = BTreeMap::new();
        for def in self.parameters()? {
            let n: usize = def.shape.iter().product();
            let mut data: Vec<f32> = crate::memory::try_vec(n, &format!("`{}`", def.name))?;
            match def.init {
                Init::KaimingNormal { fan_in } => {
                    let normal = Normal::new(0.0, (2.0 / fan_in as f32).sqrt()).expect("positive std");
                    data.extend((0..n).map(|_| normal.sample(rng)));
                }
                Init::Uniform { fan_in } => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    let uniform = Uniform::new(-bound, bound).expect("non-empty range");
                    data.extend((0..n).map(|_| uniform.sample(rng)));
                }
                Init::Const(c) => data.resize(n, c),
            }
            let tensor = Tensor::from_vec(data, def.shape.as_slice(), device)
                .map_err(StageError::tensor(format!("cannot create `{}`", def.name)))?;
            values.insert(def.name, tensor);
        }
        Ok(values)
    }
}

impl Parameters {
    /// Checks `values` against the spec's parameters (names and shapes) and holds each as
    /// `hold` says.
    pub fn new(
        spec: &ModelSpec,
        values: BTreeMap<String, Tensor>,
        hold: impl Fn(&ParamDef) -> Hold,
    ) -> Result<Parameters, StageError> {
        Parameters::bind(spec.parameters()?, values, hold)
    }

    /// Everything frozen: for evaluation (no graph is recorded).
    pub fn frozen(spec: &ModelSpec, values: BTreeMap<String, Tensor>) -> Result<Parameters, StageError> {
        Parameters::new(spec, values, |_| Hold::Freeze)
    }

    /// The usual training set-up: every learnable parameter trains, statistics are buffers.
    pub fn trainable(spec: &ModelSpec, values: BTreeMap<String, Tensor>) -> Result<Parameters, StageError> {
        Parameters::new(spec, values, |def| {
            if def.role == Role::NormStatistic {
                Hold::Buffer
            } else {
                Hold::Train
            }
        })
    }
}
