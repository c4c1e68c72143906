//! Small dense linear algebra in f64 on the host: Cholesky factorisation and triangular solves,
//! for POEM's posterior and the Mahalanobis score (d×d with d the feature width, ≤ a few hundred).

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
