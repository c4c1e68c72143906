//! Softmax quantities of one sample's logits, computed in f64: log Σ exp and the maximum
//! softmax probability at a temperature.

/// log Σ exp(x), stably, in f64.
pub fn logsumexp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln()
}

/// max softmax(f / T), computed as exp(max f/T − logsumexp(f/T)) in f64.
pub fn max_softmax(logits: &[f32], temperature: f64) -> f64 {
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    (max - lse).exp()
}

/// softmax(`logits`) in f64: exp(l − max) over their sum.
pub fn probabilities(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let logits = [1.0f32, 2.0, 3.0];
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((logsumexp(&logits) - lse).abs() < 1e-12);
        assert!((max_softmax(&logits, 1.0) - 3f64.exp() / lse.exp()).abs() < 1e-12);
        assert!((logsumexp(&[1000.0f32, 985.0]) - 1000.0).abs() < 1e-6, "no overflow");
        // MSP is exp(−log(1 + Σ exp(f_j − f_max))): below 1 for a margin of 15 …
        assert!(max_softmax(&[1000.0f32, 985.0], 1.0) < 1.0);
        // … but exactly 1.0 in f64 once the margin exceeds about 37 (exp(−37) < 2⁻⁵³).
        assert_eq!(max_softmax(&[40.0f32, 0.0], 1.0), 1.0);
        // A high temperature flattens the softmax towards 1/C.
        assert!((max_softmax(&logits, 1000.0) - 1.0 / 3.0).abs() < 1e-3);
    }
}
