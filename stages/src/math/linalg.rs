//! Small dense linear algebra in f64 on the host: Cholesky factorisation and triangular solves,
//! for POEM's posterior and the Mahalanobis scores, and the symmetric eigen-decomposition ViM
//! needs (d×d with d the feature width, ≤ a few hundred).

/// A square matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn identity(n: usize) -> Matrix {
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Matrix { n, data }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    /// Eigenvalues and unit eigenvectors of a symmetric matrix, largest eigenvalue first, by
    /// cyclic Jacobi rotations (to machine precision; at most 100 sweeps). Eigenvector k is
    /// column k of the returned matrix.
    pub fn symmetric_eigen(&self) -> (Vec<f64>, Matrix) {
        let n = self.n;
        let mut a = self.data.clone();
        let mut v = Matrix::identity(n).data;
        for _ in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| a[i * n + j].powi(2))
                .sum();
            let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
            if off <= 1e-30 * scale {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = a[p * n + q];
                    if apq == 0.0 {
                        continue;
                    }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                    let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                    let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for k in 0..n {
                        let (akp, akq) = (a[k * n + p], a[k * n + q]);
                        a[k * n + p] = c * akp - s * akq;
                        a[k * n + q] = s * akp + c * akq;
                    }
                    for k in 0..n {
                        let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                        a[p * n + k] = c * apk - s * aqk;
                        a[q * n + k] = s * apk + c * aqk;
                    }
                    for k in 0..n {
                        let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                        v[k * n + p] = c * vkp - s * vkq;
                        v[k * n + q] = s * vkp + c * vkq;
                    }
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
        let values = order.iter().map(|&i| a[i * n + i]).collect();
        let mut vectors = vec![0.0; n * n];
        for (new, &old) in order.iter().enumerate() {
            for k in 0..n {
                vectors[k * n + new] = v[k * n + old];
            }
        }
        (values, Matrix { n, data: vectors })
    }

    /// The lower-triangular L with L·Lᵀ = self; `None` unless positive definite.
    pub fn cholesky(&self) -> Option<Matrix> {
        let n = self.n;
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let mut sum = self.at(i, j);
                for k in 0..j {
                    sum -= l[i * n + k] * l[j * n + k];
                }
                if i == j {
                    if sum <= 0.0 || !sum.is_finite() {
                        return None;
                    }
                    l[i * n + i] = sum.sqrt();
                } else {
                    l[i * n + j] = sum / l[j * n + j];
                }
            }
        }
        Some(Matrix { n, data: l })
    }

    /// Solves L·Lᵀ·x = b with `self` = L (lower-triangular).
    pub fn cholesky_solve(&self, b: &[f64]) -> Vec<f64> {
        let n = self.n;
        let mut y = b.to_vec();
        for i in 0..n {
            for k in 0..i {
                y[i] -= self.at(i, k) * y[k];
            }
            y[i] /= self.at(i, i);
        }
        for i in (0..n).rev() {
            for k in i + 1..n {
                y[i] -= self.at(k, i) * y[k];
            }
            y[i] /= self.at(i, i);
        }
        y
    }

    /// Solves L·v = b by forward substitution, with `self` = L (lower-triangular).
    pub fn forward_solve(&self, b: &[f64]) -> Vec<f64> {
        let mut y = b.to_vec();
        for i in 0..self.n {
            for k in 0..i {
                y[i] -= self.at(i, k) * y[k];
            }
            y[i] /= self.at(i, i);
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix() {
        // A = [[4, 1, 0], [1, 3, 1], [0, 1, 2]].
        let a = Matrix { n: 3, data: vec![4.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 2.0] };
        let (values, vectors) = a.symmetric_eigen();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        assert!((values.iter().sum::<f64>() - 9.0).abs() < 1e-12, "the trace");
        for i in 0..3 {
            for j in 0..3 {
                let back: f64 = (0..3).map(|k| vectors.at(i, k) * values[k] * vectors.at(j, k)).sum();
                assert!((back - a.at(i, j)).abs() < 1e-10, "({i}, {j}): {back}");
            }
        }
    }

    #[test]
    fn cholesky_factors_and_solves() {
        let a = Matrix { n: 2, data: vec![4.0, 2.0, 2.0, 3.0] };
        let l = a.cholesky().unwrap();
        assert_eq!(l.data, vec![2.0, 0.0, 1.0, 2f64.sqrt()]);
        // A x = b with b = A·[1, −1] = [2, −1].
        let x = l.cholesky_solve(&[2.0, -1.0]);
        assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] + 1.0).abs() < 1e-12);
        let v = l.forward_solve(&[2.0, 1.0]);
        assert!((v[0] - 1.0).abs() < 1e-12 && v[1].abs() < 1e-12);
    }

    #[test]
    fn cholesky_rejects_indefinite_matrices() {
        let m = Matrix { n: 2, data: vec![1.0, 2.0, 2.0, 1.0] };
        assert!(m.cholesky().is_none());
    }
}
