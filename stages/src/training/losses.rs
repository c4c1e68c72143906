//! The losses of the training stages: cross-entropy, the Unleashing-Mask loss |CE − ζ| + ζ
//! (docs/methods.md §4), and the outlier terms of the outlier-exposure stages (docs/methods.md §6).
use crate::error::{ParamError, StageError};
use candle_core::{Tensor, D};

/// Batch-mean cross-entropy of logits against integer labels.
pub fn cross_entropy(
    logits: &candle_core::Tensor,
    labels: &candle_core::Tensor,
) -> Result<candle_core::Tensor, StageError> {
    candle_nn::loss::cross_entropy(logits, labels).map_err(StageError::tensor("cross-entropy failed"))
}

/// The UM loss |CE − ζ| + ζ (docs/methods.md §4): its gradient is sign(CE − ζ)·∇CE, descent above ζ,
/// ascent below, and 0 at equality. The sign is taken on the device, of CE − ζ in f64 (exact in
/// sign, so sign(0) = 0 only when CE = ζ), and held constant for the gradient: no read.
pub fn um_loss(ce: &Tensor, zeta: f64) -> Result<Tensor, StageError> {
    if zeta == 0.0 {
        return Ok(ce.clone()); // |CE| = CE: plain cross-entropy, bit for bit.
    }
    let sign =
        ce.detach().to_dtype(candle_core::DType::F64)?.affine(1.0, -zeta)?.sign()?.to_dtype(ce.dtype())?;
    Ok(((ce - zeta)?.broadcast_mul(&sign))?.affine(1.0, zeta)?)
}

/// The outlier term added to the ID term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutlierTerm {
    /// λ·mean_out[logsumexp f − mean_c f]: cross-entropy of the outlier logits to uniform.
    Uniform { lambda: f64 },
    /// w·(mean_in relu(E − m_in)² + mean_out relu(m_out − E)²), E = −logsumexp f.
    Energy { weight: f64, m_in: f64, m_out: f64 },
}

/// mean over rows of logsumexp(f) − mean_c f: the cross-entropy of softmax(f) to the uniform
/// distribution (up to the constant log C).
pub fn uniform_cross_entropy(logits: &Tensor) -> Result<Tensor, StageError> {
    let lse = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    // −mean_c log_softmax = logsumexp − mean_c f.
    Ok(lse.mean(D::Minus1)?.neg()?.mean_all()?)
}

/// mean_in relu(E_in − m_in)² + mean_out relu(m_out − E_out)², with E = −logsumexp.
pub fn energy_margin_loss(
    id_logits: &Tensor,
    ood_logits: &Tensor,
    m_in: f64,
    m_out: f64,
) -> Result<Tensor, StageError> {
    let energy = |logits: &Tensor| -> Result<Tensor, StageError> {
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        Ok(lse.squeeze(D::Minus1)?.neg()?)
    };
    let id_term = (energy(id_logits)? - m_in)?.relu()?.sqr()?.mean_all()?;
    let ood_term = energy(ood_logits)?.neg()?.affine(1.0, m_out)?.relu()?.sqr()?.mean_all()?;
    Ok((id_term + ood_term)?)
}

/// The energy margins m_in and m_out and the weight of the energy term (docs/methods.md §6), shared by
/// `energy-oe` and `poem`.
pub fn default_m_in() -> f64 {
    -25.0
}
pub fn default_m_out() -> f64 {
    -7.0
}
pub fn default_energy_weight() -> f64 {
    0.1
}

/// Checks of the energy-bounded fields, shared with `poem`.
pub fn check_energy(m_in: f64, m_out: f64, weight: f64) -> Vec<ParamError> {
    let mut problems = Vec::new();
    if m_in.partial_cmp(&m_out) != Some(std::cmp::Ordering::Less) {
        problems.push(ParamError::new(
            &["m_out"],
            format!("must be above m_in ({m_in}): outliers get the higher energy"),
        ));
    }
    if !(weight.is_finite() && weight >= 0.0) {
        problems.push(ParamError::new(&["energy_weight"], "must be a finite number ≥ 0"));
    }
    problems
}

impl OutlierTerm {
    pub fn loss(&self, id_logits: &Tensor, ood_logits: &Tensor) -> Result<Tensor, StageError> {
        match *self {
            OutlierTerm::Uniform { lambda } => Ok((uniform_cross_entropy(ood_logits)? * lambda)?),
            OutlierTerm::Energy { weight, m_in, m_out } => {
                Ok((energy_margin_loss(id_logits, ood_logits, m_in, m_out)? * weight)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn um_loss_value_and_gradient_sign() {
        for (ce, zeta, value, grad) in [(0.5f32, 0.2, 0.5, 1.0), (0.1, 0.3, 0.5, -1.0), (0.4, 0.0, 0.4, 1.0)]
        {
            let x = Var::new(&[ce], &Device::Cpu).unwrap();
            let loss = um_loss(&x.as_tensor().sum_all().unwrap(), zeta).unwrap();
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((got - value).abs() < 1e-6, "ce {ce} ζ {zeta}: {got}");
            let g = loss.backward().unwrap().get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
            assert_eq!(g as f64, grad);
        }
    }

    #[test]
    fn uniform_term_matches_hand_computed_values() {
        // Rows [0, 0, 0] (uniform: lse − mean = ln 3) and [2, 0, −2] (lse − 0).
        let logits = Tensor::new(&[[0f32, 0.0, 0.0], [2.0, 0.0, -2.0]], &Device::Cpu).unwrap();
        let lse2 = (2f64.exp() + 1.0 + (-2f64).exp()).ln();
        let expected = (3f64.ln() + lse2) / 2.0;
        let got = uniform_cross_entropy(&logits).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        let term =
            OutlierTerm::Uniform { lambda: 0.5 }.loss(&logits, &logits).unwrap().to_scalar::<f32>().unwrap();
        assert!((term as f64 - 0.5 * expected).abs() < 1e-6);
    }

    #[test]
    fn energy_term_is_zero_inside_the_margins_and_pushes_otherwise() {
        let dev = Device::Cpu;
        // ID energies below −25 (logits ≈ 30) and outlier energies above −7 (logits ≈ 0).
        let id = Tensor::new(&[[30f32, 0.0], [31.0, 1.0]], &dev).unwrap();
        let ood = Tensor::new(&[[0f32, 0.5], [1.0, -1.0]], &dev).unwrap();
        let zero = energy_margin_loss(&id, &ood, -25.0, -7.0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(zero, 0.0);
        // An ID sample with high energy (small logits): the gradient raises its logits
        // (lowers its energy); an outlier with low energy (large logits): lowered.
        let id_var = Var::new(&[[1f32, 0.0]], &dev).unwrap();
        let ood_var = Var::new(&[[20f32, 0.0]], &dev).unwrap();
        let loss = energy_margin_loss(id_var.as_tensor(), ood_var.as_tensor(), -25.0, -7.0).unwrap();
        let grads = loss.backward().unwrap();
        let g_id: Vec<f32> = grads.get(id_var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let g_ood: Vec<f32> =
            grads.get(ood_var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(g_id.iter().all(|&g| g < 0.0), "descent raises ID logits: {g_id:?}");
        assert!(g_ood[0] > 0.0, "descent lowers the outlier's top logit: {g_ood:?}");
        // relu(E − m_in)² with E = −logsumexp([1, 0]).
        let e = -((1f64).exp() + 1.0).ln();
        let e_out = -((20f64).exp() + 1.0).ln();
        let expected = (e + 25.0).powi(2) + (-7.0 - e_out).powi(2);
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-3);
    }
}
