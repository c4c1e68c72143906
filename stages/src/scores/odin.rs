//! ODIN (docs/methods.md §7): with ŷ = argmax f(x), the input is moved against the gradient of
//! CE(f(x)/T, ŷ) with respect to the raw [0, 1] pixels, x̃ = x − ε·sign(g) (sign(0) = +1, no
//! clamping), and scored by max softmax(f(x̃)/T). Defaults T = 1000, ε = 0.0014.
use super::scorer::{MethodParams, ScoreMethod, ScoringInput};
use super::softmax::max_softmax;
use crate::error::StageError;
use crate::models::{Mode, Network};
use candle_core::{Tensor, Var, D};

pub struct Odin;

impl ScoreMethod for Odin {
    fn parameters(&self, params: &MethodParams) -> String {
        format!("T = {}, ε = {}", params.odin_temperature, params.odin_epsilon)
    }
    fn name(&self) -> &'static str {
        "odin"
    }

    fn extra_passes(&self) -> f64 {
        3.0
    }

    /// The set batch by batch: each batch's input gradient, then its perturbed forward pass.
    fn score(&self, input: &ScoringInput) -> Result<Vec<f64>, StageError> {
        let set = input.set;
        let label = format!("odin{}", input.label.strip_prefix("score").unwrap_or(input.label));
        let bar = input.progress.bar(&label, set.batch_count(input.batch_size) as u64, "batches");
        let mut out = Vec::with_capacity(set.len());
        for images in set.batches(input.batch_size, input.device) {
            out.extend(scores(
                input.net,
                &images?,
                input.params.odin_temperature,
                input.params.odin_epsilon,
            )?);
            bar.inc(1);
        }
        bar.finish("");
        Ok(out)
    }
}

pub fn default_temperature() -> f64 {
    1000.0
}
pub fn default_epsilon() -> f64 {
    0.0014
}

/// x − ε·sign(g), with sign(0) = +1.
pub fn perturb(images: &Tensor, gradient: &Tensor, epsilon: f64) -> Result<Tensor, StageError> {
    let positive = gradient.ge(0f32)?.to_dtype(images.dtype())?;
    // sign = 2·[g ≥ 0] − 1
    let sign = positive.affine(2.0, -1.0)?;
    Ok((images - (sign * epsilon)?)?)
}

/// ODIN scores of a batch `(n, c, h, w)` of [0, 1] pixels.
pub fn scores(
    net: &Network,
    images: &Tensor,
    temperature: f64,
    epsilon: f64,
) -> Result<Vec<f64>, StageError> {
    let input = Var::from_tensor(images)?;
    let logits = net.forward(input.as_tensor(), &mut Mode::Eval)?.logits;
    let predicted = logits.argmax(D::Minus1)?;
    let loss = candle_nn::loss::cross_entropy(&(&logits / temperature)?, &predicted)?;
    let gradient = loss.backward()?.get(input.as_tensor()).cloned().ok_or_else(|| {
        StageError::Internal("ODIN: the loss has no gradient with respect to the input".into())
    })?;
    let perturbed = perturb(images, &gradient, epsilon)?;
    let logits = net.forward(&perturbed.detach(), &mut Mode::Eval)?.logits.to_vec2::<f32>()?;
    Ok(logits.iter().map(|row| max_softmax(row, temperature)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::spec::tiny_spec;
    use crate::models::Parameters;
    use candle_core::Device;

    #[test]
    fn perturbation_uses_sign_with_zero_as_plus() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[0.5f32, 0.5, 0.5], &dev).unwrap();
        let g = Tensor::new(&[2.0f32, 0.0, -3.0], &dev).unwrap();
        let y: Vec<f32> = perturb(&x, &g, 0.1).unwrap().to_vec1().unwrap();
        assert_eq!(y, vec![0.4, 0.4, 0.6]);
    }

    #[test]
    fn epsilon_zero_is_temperature_scaled_msp_and_the_step_raises_confidence() {
        let dev = Device::Cpu;
        let spec = tiny_spec();
        let values = spec.initialise(&mut crate::math::rng::derive(3, "init"), &dev).unwrap();
        let net = Network::new(&spec, &Parameters::frozen(&spec, values).unwrap(), &dev).unwrap();
        let images = crate::math::rng::test_images(11, &[4, 1, 8, 8]);
        let plain = scores(&net, &images, 10.0, 0.0).unwrap();
        let logits = net.forward(&images, &mut Mode::Eval).unwrap().logits.to_vec2::<f32>().unwrap();
        for (s, row) in plain.iter().zip(&logits) {
            assert!((s - max_softmax(row, 10.0)).abs() < 1e-9);
        }
        // A small step against the gradient of the CE raises the tempered confidence.
        let stepped = scores(&net, &images, 10.0, 1e-3).unwrap();
        for (a, b) in plain.iter().zip(&stepped) {
            assert!(b > a, "{b} should exceed {a}");
        }
    }
}
