//! SGD with PyTorch's semantics (`torch.optim.SGD`): weight decay added to the gradient, a
//! momentum buffer (b ← μb + g, no dampening), and optionally Nesterov's look-ahead
//! (g ← g + μb). candle's own SGD has none of these.
use candle_core::{backprop::GradStore, Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

pub struct Sgd {
    vars: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    pub config: SgdConfig,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, config: SgdConfig) -> Self {
        let buffers = vec![None; vars.len()];
        Sgd { vars, buffers, config }
    }

    /// The momentum buffers, one per variable (`None` before its first update).
    pub fn buffers(&self) -> Vec<Option<Tensor>> {
        self.buffers.clone()
    }

    /// Puts back buffers [`Sgd::buffers`] returned (to continue an interrupted run).
    pub fn set_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<()> {
        if buffers.len() != self.vars.len() {
            candle_core::bail!("{} momentum buffers for {} variables", buffers.len(), self.vars.len());
        }
        self.buffers = buffers;
        Ok(())
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One update from the gradients of `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let SgdConfig { lr, momentum, weight_decay, nesterov } = self.config;
        for (var, buffer) in self.vars.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            // Detached: gradients carry the graph that computed them, and a momentum buffer
            // holding it would chain every step's graph together (unbounded memory).
            let mut grad = grad.detach();
            let value = var.as_tensor().detach();
            if weight_decay != 0.0 {
                grad = (grad + (&value * weight_decay)?)?;
            }
            if momentum != 0.0 {
                let next = match buffer.take() {
                    Some(b) => ((b * momentum)? + &grad)?,
                    None => grad.clone(),
                };
                grad = if nesterov { (grad + (&next * momentum)?)? } else { next.clone() };
                *buffer = Some(next);
            }
            var.set(&(value - (grad * lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Minimising ½x² from x = 1 with lr 0.1, momentum 0.9, Nesterov, weight decay 0.01,
    /// written out by hand (PyTorch's update rule): g = x + wd·x; b = μb + g; x -= lr (g + μb).
    #[test]
    fn matches_the_pytorch_update_rule() {
        let x = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let config = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.01, nesterov: true };
        let mut sgd = Sgd::new(vec![x.clone()], config);
        let (mut expected, mut b) = (1.0f64, 0.0f64);
        for step in 0..5 {
            let loss = (x.as_tensor().sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap()).unwrap();
            let g = expected + 0.01 * expected;
            b = if step == 0 { g } else { 0.9 * b + g };
            expected -= 0.1 * (g + 0.9 * b);
            let got = x.as_tensor().to_vec1::<f64>().unwrap()[0];
            assert!((got - expected).abs() < 1e-12, "step {step}: {got} vs {expected}");
        }
    }
}
