//! Bayesian linear regression for POEM's Thompson sampling (docs/methods.md §6), in f64 on the host:
//! posterior A = ZᵀZ/σ_n + I/σ, μ = A⁻¹Zᵀy/σ_n, Σ = σ·A⁻¹ (the formulas as docs/methods.md writes them,
//! σ_n not squared), a draw β ~ N(μ, Σ), and the candidates closest to the boundary βᵀz = 0.
use crate::math::linalg::Matrix;
use rand_distr::{Distribution, StandardNormal};

/// The posterior over regression weights β.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Vec<f64>,
    pub covariance: Matrix,
    covariance_factor: Matrix,
}

/// Fits the posterior to rows `features` (each of length d) with targets `targets`.
pub fn posterior(
    features: &[Vec<f64>],
    targets: &[f64],
    noise: f64,
    prior_variance: f64,
) -> Result<Posterior, String> {
    let d = features.first().map_or(0, Vec::len);
    if d == 0 || features.len() != targets.len() {
        return Err(format!(
            "need features and targets of the same count ({} vs {})",
            features.len(),
            targets.len()
        ));
    }
    let mut a = Matrix::identity(d);
    a.data.iter_mut().for_each(|v| *v /= prior_variance);
    let mut zty = vec![0.0; d];
    for (z, &y) in features.iter().zip(targets) {
        for i in 0..d {
            zty[i] += z[i] * y / noise;
            for j in 0..d {
                a.data[i * d + j] += z[i] * z[j] / noise;
            }
        }
    }
    let factor = a.cholesky().ok_or("the posterior precision is not positive definite")?;
    let mean = factor.cholesky_solve(&zty);
    // Σ = σ·A⁻¹, column by column.
    let mut covariance = Matrix { n: d, data: vec![0.0; d * d] };
    for j in 0..d {
        let mut e = vec![0.0; d];
        e[j] = 1.0;
        for (i, value) in factor.cholesky_solve(&e).into_iter().enumerate() {
            covariance.data[i * d + j] = prior_variance * value;
        }
    }
    // Symmetrise the rounding before factoring.
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (covariance.at(i, j) + covariance.at(j, i));
            covariance.data[i * d + j] = v;
            covariance.data[j * d + i] = v;
        }
    }
    let covariance_factor =
        covariance.cholesky().ok_or("the posterior covariance is not positive definite")?;
    Ok(Posterior { mean, covariance, covariance_factor })
}

impl Posterior {
    /// A draw β = μ + L·ε, ε ~ N(0, I).
    pub fn sample(&self, rng: &mut crate::math::rng::Rng) -> Vec<f64> {
        let d = self.mean.len();
        let eps: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
        (0..d)
            .map(|i| self.mean[i] + (0..=i).map(|k| self.covariance_factor.at(i, k) * eps[k]).sum::<f64>())
            .collect()
    }
}

/// Indices of the `count` candidates with the smallest |βᵀz| (ties by index), in that order.
pub fn closest_to_boundary(beta: &[f64], candidates: &[Vec<f64>], count: usize) -> Vec<usize> {
    let margin: Vec<f64> =
        candidates.iter().map(|z| z.iter().zip(beta).map(|(a, b)| a * b).sum::<f64>().abs()).collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| margin[a].total_cmp(&margin[b]).then(a.cmp(&b)));
    order.truncate(count);
    order
}

/// The outliers of the last `capacity` epochs; each epoch's selection replaces the oldest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RingBuffer {
    slots: Vec<Vec<usize>>,
    next: usize,
    capacity: usize,
}

impl RingBuffer {
    pub fn new(capacity: usize) -> RingBuffer {
        RingBuffer { slots: Vec::new(), next: 0, capacity: capacity.max(1) }
    }

    pub fn push(&mut self, selection: Vec<usize>) {
        if self.slots.len() < self.capacity {
            self.slots.push(selection);
        } else {
            self.slots[self.next] = selection;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Every held index, oldest epoch first.
    pub fn items(&self) -> Vec<usize> {
        let start = if self.slots.len() < self.capacity { 0 } else { self.next };
        (0..self.slots.len())
            .flat_map(|k| self.slots[(start + k) % self.slots.len()].iter().copied())
            .collect()
    }

    pub fn epochs_held(&self) -> usize {
        self.slots.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posterior_matches_a_direct_two_dimensional_computation() {
        let z = vec![vec![1.0, 2.0], vec![-1.0, 0.5], vec![0.3, -1.0]];
        let y = vec![-3.9, 3.9, 3.9];
        let (noise, prior) = (0.5, 20.0);
        let p = posterior(&z, &y, noise, prior).unwrap();
        // A = ZᵀZ/σ_n + I/σ by hand.
        let (mut a, mut b, mut c) = (1.0 / prior, 0.0, 1.0 / prior);
        let (mut r0, mut r1) = (0.0, 0.0);
        for (row, t) in z.iter().zip(&y) {
            a += row[0] * row[0] / noise;
            b += row[0] * row[1] / noise;
            c += row[1] * row[1] / noise;
            r0 += row[0] * t / noise;
            r1 += row[1] * t / noise;
        }
        let det = a * c - b * b;
        let inv = [c / det, -b / det, -b / det, a / det];
        let mean = [inv[0] * r0 + inv[1] * r1, inv[2] * r0 + inv[3] * r1];
        for i in 0..2 {
            assert!((p.mean[i] - mean[i]).abs() < 1e-12, "{:?} vs {mean:?}", p.mean);
        }
        for (k, v) in inv.iter().enumerate() {
            assert!((p.covariance.data[k] - prior * v).abs() < 1e-12);
        }
        // Draws have the posterior's mean.
        let mut rng = crate::math::rng::derive(0, "beta");
        let draws: Vec<Vec<f64>> = (0..20000).map(|_| p.sample(&mut rng)).collect();
        let avg = (
            draws.iter().map(|d| d[0]).sum::<f64>() / 20000.0,
            draws.iter().map(|d| d[1]).sum::<f64>() / 20000.0,
        );
        let tolerance = 4.0 * (p.covariance.at(0, 0) / 20000.0).sqrt();
        assert!((avg.0 - mean[0]).abs() < tolerance, "{avg:?} vs {mean:?}");
    }

    #[test]
    fn selection_returns_the_smallest_margins() {
        let beta = [1.0, -1.0];
        let candidates =
            vec![vec![3.0, 0.0], vec![1.0, 1.1], vec![0.0, 0.5], vec![-2.0, 2.0], vec![0.2, 0.2]];
        // |βᵀz| = 3, 0.1, 0.5, 4, 0.
        assert_eq!(closest_to_boundary(&beta, &candidates, 3), vec![4, 1, 2]);
    }

    #[test]
    fn ring_buffer_holds_four_epochs_and_rotates() {
        let mut ring = RingBuffer::new(4);
        for epoch in 0..6 {
            ring.push(vec![epoch * 10, epoch * 10 + 1]);
        }
        assert_eq!(ring.epochs_held(), 4);
        assert_eq!(ring.items(), vec![20, 21, 30, 31, 40, 41, 50, 51]);
    }
}
