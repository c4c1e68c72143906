//! The model's linear head applied on the host to features a method has changed (clipped,
//! shaped, masked): logits W·x + b summed in f64, and their Energy. ReAct, ASH, DICE, KL
//! matching and ViM share it.
use super::softmax::logsumexp;

/// W·x + b, each logit summed in f64.
pub fn logits(x: &[f64], weight: &[Vec<f32>], bias: &[f32]) -> Vec<f64> {
    weight
        .iter()
        .zip(bias)
        .map(|(row, &b)| row.iter().zip(x).map(|(&w, v)| w as f64 * v).sum::<f64>() + b as f64)
        .collect()
}

/// logsumexp(W·x + b) of the logits rounded to f32, as the network's own logits are.
pub fn energy(x: &[f64], weight: &[Vec<f32>], bias: &[f32]) -> f64 {
    let rounded: Vec<f32> = logits(x, weight, bias).into_iter().map(|l| l as f32).collect();
    logsumexp(&rounded)
}

/// `features` in f64.
pub fn widen(features: &[f32]) -> Vec<f64> {
    features.iter().map(|&v| v as f64).collect()
}
