//! Layers written out with seeded randomness and PyTorch's batch-norm semantics.
use super::builder::Scope;
use super::kernels::device_bn::batch_norm_relu as device_batch_norm_relu;
use super::kernels::dropout::{mix64, DropoutMask};
use super::kernels::fused_bn::{batch_norm_relu, update_running, Activation, Affine, Statistics};
use super::spec::{Init, ModelSpec, Role};
use crate::error::StageError;
use candle_core::{DType, Device, Tensor, Var, D};

/// Training (batch statistics, dropout) or evaluation.
pub enum Mode {
    Eval,
    Train(DropoutKeys),
}

impl Mode {
    /// Training at step `step` (0-based, within the epoch) of epoch `epoch` (0-based) of a stage
    /// whose dropout seed is `seed`: each dropout layer of the forward pass draws its mask from
    /// (seed, epoch, step, its position in the pass), so a mask does not depend on anything
    /// drawn before it and a resumed run draws the masks an uninterrupted one would.
    pub fn train(seed: u64, epoch: usize, step: usize) -> Mode {
        Mode::Train(DropoutKeys {
            step_key: mix64(mix64(mix64(seed) ^ epoch as u64) ^ step as u64),
            layer: 0,
        })
    }

    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

/// The keys of one training step's dropout masks: one per dropout layer, in forward order.
pub struct DropoutKeys {
    step_key: u64,
    layer: u64,
}

impl DropoutKeys {
    /// The key of the next dropout layer.
    fn next(&mut self) -> u64 {
        self.layer += 1;
        mix64(self.step_key ^ self.layer.wrapping_mul(0xd134_2543_de82_ef95))
    }
}

/// Batch norm over `(n, c, h, w)`: in training, normalises with the batch's mean and biased
/// variance and moves the running statistics by `momentum` towards the batch mean and
/// *unbiased* variance (PyTorch's rule); in evaluation, normalises with the running statistics.
pub struct BatchNorm2d {
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub running_mean_var: Option<Var>,
    pub running_var_var: Option<Var>,
    pub affine: Option<(Tensor, Tensor)>,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm2d {
    /// The batch norm of `scope` over `channels`: `weight` and `bias` (scale and shift, when
    /// affine), `running_mean` and `running_var`.
    pub fn new(scope: &Scope, channels: usize, affine: bool) -> Result<BatchNorm2d, StageError> {
        let affine = if affine {
            Some((
                scope.param("weight", &[channels], Init::Const(1.0), Role::NormAffine)?,
                scope.param("bias", &[channels], Init::Const(0.0), Role::NormAffine)?,
            ))
        } else {
            None
        };
        Ok(BatchNorm2d {
            running_mean: scope.param("running_mean", &[channels], Init::Const(0.0), Role::NormStatistic)?,
            running_var: scope.param("running_var", &[channels], Init::Const(1.0), Role::NormStatistic)?,
            running_mean_var: scope.var("running_mean"),
            running_var_var: scope.var("running_var"),
            affine,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// `relu(batch_norm(x))`: one fused pass on the CPU ([`super::kernels::fused_bn`]), four
    /// kernels on CUDA ([`super::kernels::device_bn`]), op by op elsewhere.
    pub fn forward_relu(&self, x: &Tensor, mode: &Mode) -> Result<Tensor, StageError> {
        self.forward_then(x, mode, Activation::Relu)
    }

    /// `batch_norm(x)` followed by `activation`: fused on the CPU and on CUDA, op by op
    /// elsewhere.
    pub fn forward_then(
        &self,
        x: &Tensor,
        mode: &Mode,
        activation: Activation,
    ) -> Result<Tensor, StageError> {
        if super::kernels::dispatch::device_kernels_apply(x) {
            return self.forward_on_device(x, mode, activation);
        }
        if !super::kernels::dispatch::custom_applies(x) {
            let y = self.forward(x, mode)?;
            return Ok(if activation == Activation::Relu { y.relu()? } else { y });
        }
        let c = x.dim(1)?;
        let (gamma, beta) = match &self.affine {
            Some((weight, bias)) => (weight.clone(), bias.clone()),
            None => (Tensor::ones(c, DType::F32, x.device())?, Tensor::zeros(c, DType::F32, x.device())?),
        };
        let statistics = if mode.is_train() {
            Statistics::Batch
        } else {
            Statistics::fixed(&self.running_mean, &self.running_var)?
        };
        let affine = if self.affine.is_some() { Affine::Learned } else { Affine::Fixed };
        let (y, batch) = batch_norm_relu(x, &gamma, &beta, statistics, self.eps, activation, affine)?;
        if let Some(batch) = batch {
            let (Some(rm), Some(rv)) = (&self.running_mean_var, &self.running_var_var) else {
                return Err(StageError::Internal(
                    "batch norm in training mode needs updatable statistics".into(),
                ));
            };
            let count = batch.count as f64;
            let correction = (count / (count - 1.0).max(1.0)) as f32;
            let m = self.momentum as f32;
            update_running(rm, &batch.mean, 1.0, m)?;
            update_running(rv, &batch.variance, correction, m)?;
        }
        Ok(y)
    }

    /// `batch_norm(x)` then `activation` with the device kernels: the statistics stay on the
    /// device, and the running averages move by candle's ops as in [`BatchNorm2d::forward`].
    fn forward_on_device(
        &self,
        x: &Tensor,
        mode: &Mode,
        activation: Activation,
    ) -> Result<Tensor, StageError> {
        let (n, c, h, w) = x.dims4()?;
        let (gamma, beta) = match &self.affine {
            Some((weight, bias)) => (weight.clone(), bias.clone()),
            None => (Tensor::ones(c, DType::F32, x.device())?, Tensor::zeros(c, DType::F32, x.device())?),
        };
        let running = (!mode.is_train()).then_some((&self.running_mean, &self.running_var));
        let relu = activation == Activation::Relu;
        let (y, batch) =
            device_batch_norm_relu(x, &gamma, &beta, running, self.eps, relu, self.affine.is_some())?;
        if let Some(stats) = batch {
            let (Some(rm), Some(rv)) = (&self.running_mean_var, &self.running_var_var) else {
                return Err(StageError::Internal(
                    "batch norm in training mode needs updatable statistics".into(),
                ));
            };
            let count = (n * h * w) as f64;
            let unbiased = (stats.get(1)? * (count / (count - 1.0).max(1.0)))?;
            let m = self.momentum;
            rm.set(&((rm.as_tensor().detach() * (1.0 - m))? + (stats.get(0)? * m)?)?)?;
            rv.set(&((rv.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?)?;
        }
        Ok(y)
    }

    /// Batch norm alone, op by op.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor, StageError> {
        let (n, c, h, w) = x.dims4()?;
        let normalised = if mode.is_train() {
            let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
            let (Some(rm), Some(rv)) = (&self.running_mean_var, &self.running_var_var) else {
                return Err(StageError::Internal(
                    "batch norm in training mode needs updatable statistics".into(),
                ));
            };
            let count = (n * h * w) as f64;
            let unbiased = (var.detach() * (count / (count - 1.0).max(1.0)))?.reshape(c)?;
            let m = self.momentum;
            rm.set(&((rm.as_tensor().detach() * (1.0 - m))? + (mean.detach().reshape(c)? * m)?)?)?;
            rv.set(&((rv.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?)?;
            centred.broadcast_div(&(var + self.eps)?.sqrt()?)?
        } else {
            let mean = self.running_mean.reshape((1, c, 1, 1))?;
            let std = (self.running_var.reshape((1, c, 1, 1))? + self.eps)?.sqrt()?;
            x.broadcast_sub(&mean)?.broadcast_div(&std)?
        };
        match &self.affine {
            Some((weight, bias)) => Ok(normalised
                .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
                .broadcast_add(&bias.reshape((1, c, 1, 1))?)?),
            None => Ok(normalised),
        }
    }
}

/// What every architecture shares at its two ends: the per-channel input normalisation
/// (`(x − mean) / std`, from the model description) and the linear head (`fc.weight`, `fc.bias`).
pub struct Ends {
    mean: Tensor,
    std: Tensor,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl Ends {
    /// The input normalisation of `spec` and the linear head `fc` from `features` to the spec's
    /// classes (PyTorch's uniform initialisation). Architectures build it last, so `fc` comes
    /// last in the parameter list.
    pub fn new(spec: &ModelSpec, root: &Scope, features: usize, device: &Device) -> Result<Ends, StageError> {
        let c = spec.input_shape[0];
        let fc = root.pp("fc");
        let init = Init::Uniform { fan_in: features };
        Ok(Ends {
            mean: root.constant("input.mean", &spec.mean, &[1, c, 1, 1], device)?,
            std: root.constant("input.std", &spec.std, &[1, c, 1, 1], device)?,
            fc_weight: fc.param("weight", &[spec.num_classes, features], init, Role::Weight)?,
            fc_bias: fc.param("bias", &[spec.num_classes], init, Role::Bias)?,
        })
    }

    /// Normalised input: `(images − mean) / std` per channel.
    pub fn normalise(&self, images: &Tensor) -> Result<Tensor, StageError> {
        Ok(images.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }

    /// The linear head: its weight `(classes, features)` and bias `(classes)`.
    pub fn head(&self) -> (&Tensor, &Tensor) {
        (&self.fc_weight, &self.fc_bias)
    }

    /// Logits of `(n, features)` rows.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor, StageError> {
        Ok(features.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)?)
    }
}

/// Inverted dropout with probability `p` in training mode (the identity in evaluation mode),
/// its mask computed where `x` lives from the mode's next key ([`DropoutMask`]).
pub fn dropout(x: &Tensor, p: f64, mode: &mut Mode) -> Result<Tensor, StageError> {
    let Mode::Train(keys) = mode else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    Ok(DropoutMask::new(keys.next(), p).apply(x)?)
}

/// Mean over the spatial dimensions: `(n, c, h, w)` → `(n, c)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor, StageError> {
    Ok(x.flatten_from(2)?.mean(D::Minus1)?)
}

/// What a forward pass gives: penultimate features and logits.
pub struct Forward {
    pub features: Tensor,
    pub logits: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_norm_matches_hand_computation() {
        let dev = Device::Cpu;
        // One channel, batch of 4 values 1, 2, 3, 6: mean 3, biased var 3.5, unbiased 14/3.
        let x = Tensor::from_vec(vec![1f32, 2.0, 3.0, 6.0], (4, 1, 1, 1), &dev).unwrap();
        let rm = Var::new(&[0f32], &dev).unwrap();
        let rv = Var::new(&[1f32], &dev).unwrap();
        let bn = BatchNorm2d {
            running_mean: rm.as_tensor().clone(),
            running_var: rv.as_tensor().clone(),
            running_mean_var: Some(rm.clone()),
            running_var_var: Some(rv.clone()),
            affine: None,
            eps: 1e-5,
            momentum: 0.1,
        };
        let y = bn.forward(&x, &Mode::train(0, 0, 0)).unwrap();
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let expected = (-2.0f32) / (3.5f32 + 1e-5).sqrt();
        assert!((y[0] - expected).abs() < 1e-5);
        assert!((rm.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.3).abs() < 1e-6);
        let rv_now = rv.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((rv_now - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-5, "{rv_now}");
        // Eval mode uses the (shared) running statistics.
        let e: Vec<f32> = bn.forward(&x, &Mode::Eval).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!((e[0] - (1.0 - 0.3) / (rv_now + 1e-5).sqrt()).abs() < 1e-5);
    }

    /// The fused path moves the running statistics exactly as the op-by-op path does and
    /// returns the ReLU of its output, in training and evaluation mode.
    #[test]
    fn fused_batch_norm_relu_matches_forward_then_relu() {
        let dev = Device::Cpu;
        let x = crate::math::rng::test_images(3, &[4, 2, 3, 5]).affine(2.0, -0.8).unwrap();
        let make = || {
            let rm = Var::new(&[0.1f32, -0.2], &dev).unwrap();
            let rv = Var::new(&[1.5f32, 0.7], &dev).unwrap();
            BatchNorm2d {
                running_mean: rm.as_tensor().clone(),
                running_var: rv.as_tensor().clone(),
                running_mean_var: Some(rm),
                running_var_var: Some(rv),
                affine: None,
                eps: 1e-5,
                momentum: 0.1,
            }
        };
        let (fused, plain) = (make(), make());
        let a = fused.forward_relu(&x, &Mode::train(0, 0, 0)).unwrap();
        let b = plain.forward(&x, &Mode::train(0, 0, 0)).unwrap().relu().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let close = |p: Vec<f32>, q: Vec<f32>| p.iter().zip(&q).all(|(u, v)| (u - v).abs() < 1e-5);
        assert!(close(flat(&a), flat(&b)));
        for (f, p) in [
            (&fused.running_mean_var, &plain.running_mean_var),
            (&fused.running_var_var, &plain.running_var_var),
        ] {
            let (f, p) = (f.as_ref().unwrap().as_tensor(), p.as_ref().unwrap().as_tensor());
            assert!(close(flat(f), flat(p)), "{:?} vs {:?}", flat(f), flat(p));
            assert_ne!(flat(f), vec![0.1, -0.2], "statistics moved");
        }
        let (fused, plain) = (make(), make());
        let a = fused.forward_relu(&x, &Mode::Eval).unwrap();
        let b = plain.forward(&x, &Mode::Eval).unwrap().relu().unwrap();
        assert!(close(flat(&a), flat(&b)));
    }

    #[test]
    fn dropout_masks_depend_on_seed_epoch_step_and_layer_only() {
        let dev = Device::Cpu;
        let x = Tensor::ones((1000,), candle_core::DType::F32, &dev).unwrap();
        let draw = |mode: &mut Mode| -> Vec<f32> { dropout(&x, 0.3, mode).unwrap().to_vec1().unwrap() };
        let mut a = Mode::train(1, 2, 3);
        let (a1, a2) = (draw(&mut a), draw(&mut a));
        let mut b = Mode::train(1, 2, 3);
        assert_eq!((draw(&mut b), draw(&mut b)), (a1.clone(), a2.clone()), "the same keys, the same masks");
        assert_ne!(a1, a2, "the second layer has its own mask");
        for other in [Mode::train(2, 2, 3), Mode::train(1, 3, 3), Mode::train(1, 2, 4)] {
            assert_ne!(draw(&mut { other }), a1);
        }
        let kept = a1.iter().filter(|&&v| v > 0.0).count();
        assert!((600..800).contains(&kept), "{kept}");
        assert!(a1.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        let eval: Vec<f32> = dropout(&x, 0.3, &mut Mode::Eval).unwrap().to_vec1().unwrap();
        assert!(eval.iter().all(|&v| v == 1.0));
    }
}
