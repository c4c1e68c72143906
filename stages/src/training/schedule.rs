//! Learning-rate schedules, set once per epoch before it starts (docs/methods.md §1).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// lr_e = ½(1 + cos(π e / E)) lr₀
    Cosine,
    /// lr₀ throughout.
    Constant,
    /// Flat for E/3, linear to lr₀/10 at 2E/3, linear to lr₀/100 at E.
    Linear,
    /// Subtract lr₀/10 every E/10 epochs.
    MultipleDecay,
    /// ×0.1 every 30 epochs.
    Multistep,
}

impl Schedule {
    /// The learning rate of epoch `epoch` (0-based) of `epochs`.
    pub fn lr(self, lr0: f64, epoch: usize, epochs: usize) -> f64 {
        let (e, total) = (epoch as f64, epochs.max(1) as f64);
        match self {
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * e / total).cos()) * lr0,
            Schedule::Constant => lr0,
            Schedule::Linear => {
                let (a, b) = (total / 3.0, 2.0 * total / 3.0);
                if e < a {
                    lr0
                } else if e < b {
                    lr0 + (lr0 / 10.0 - lr0) * (e - a) / (b - a)
                } else {
                    lr0 / 10.0 + (lr0 / 100.0 - lr0 / 10.0) * (e - b) / (total - b)
                }
            }
            Schedule::MultipleDecay => {
                let step = (epochs / 10).max(1);
                (lr0 - lr0 / 10.0 * (epoch / step) as f64).max(0.0)
            }
            Schedule::Multistep => lr0 * 0.1f64.powi((epoch / 30) as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn known_values() {
        assert_eq!(Schedule::Cosine.lr(0.1, 0, 10), 0.1);
        assert!((Schedule::Cosine.lr(0.1, 5, 10) - 0.05).abs() < 1e-15);
        assert_eq!(Schedule::Multistep.lr(1.0, 30, 100), 0.1);
        assert!((Schedule::Linear.lr(1.0, 60, 90) - 0.1).abs() < 1e-12);
        assert!((Schedule::MultipleDecay.lr(1.0, 25, 100) - 0.8).abs() < 1e-12);
    }
}
