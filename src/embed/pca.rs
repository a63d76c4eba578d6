//! Principal component analysis for distillation: covariance of the token outputs, then a cyclic
//! Jacobi eigen-decomposition of it.
//!
//! Distillation reduces ~30k transformer outputs of 384 dims to the directions that carry their
//! variance (model2vec finds PCA helps even without reducing, as it decorrelates the dimensions
//! that mean pooling adds up). A 384 x 384 symmetric matrix is small enough that Jacobi, which is
//! simple, exact to rounding and deterministic, takes a second or two; that avoids a linear
//! algebra dependency. The big products (covariance, projection) run through candle's matrix
//! kernels, which are optimised even in dev builds.

use candle_core::{DType, Device, Tensor};

use super::EmbedError;

/// A fitted PCA: the data's mean and the leading principal axes, largest variance first.
#[derive(Debug, Clone)]
pub struct Pca {
    pub mean: Vec<f64>,
    /// `components x dims`, row-major; each row a unit eigenvector of the covariance.
    pub components: Vec<f64>,
    pub dims: usize,
    /// Every eigenvalue of the covariance (variance along each axis), descending.
    pub eigenvalues: Vec<f64>,
}

fn candle_err(e: candle_core::Error) -> EmbedError {
    EmbedError::Inference(format!("pca: {e}"))
}

impl Pca {
    /// Fits the first `k` components of `rows x dims` row-major `data` (`k <= dims`).
    pub fn fit(data: &[f32], dims: usize, k: usize) -> Result<Self, EmbedError> {
        if dims == 0 || data.len() % dims != 0 || k == 0 || k > dims {
            return Err(EmbedError::Config(format!(
                "pca: {} values of {dims} dims, {k} components",
                data.len()
            )));
        }
        let rows = data.len() / dims;
        if rows < 2 {
            return Err(EmbedError::Config("pca needs at least two rows".into()));
        }
        let mut mean = vec![0f64; dims];
        for row in data.chunks_exact(dims) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        for m in &mut mean {
            *m /= rows as f64;
        }
        let centred: Vec<f64> = data
            .chunks_exact(dims)
            .flat_map(|row| row.iter().zip(&mean).map(|(&x, m)| f64::from(x) - m))
            .collect();
        let x = Tensor::from_vec(centred, (rows, dims), &Device::Cpu).map_err(candle_err)?;
        let cov = x
            .t()
            .and_then(|t| t.matmul(&x))
            .and_then(|t| t / (rows as f64 - 1.0))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(candle_err)?;
        let (values, vectors) = symmetric_eigen(cov, dims);
        let components = vectors[..k * dims].to_vec();
        Ok(Self {
            mean,
            components,
            dims,
            eigenvalues: values,
        })
    }

    pub fn k(&self) -> usize {
        self.components.len() / self.dims
    }

    /// Share of the total variance the kept components explain.
    pub fn explained_variance_ratio(&self) -> f64 {
        let total: f64 = self.eigenvalues.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        self.eigenvalues[..self.k()].iter().sum::<f64>() / total
    }

    /// Projects `rows x dims` row-major `data` onto the components: `rows x k`.
    pub fn transform(&self, data: &[f32]) -> Result<Vec<f32>, EmbedError> {
        let dims = self.dims;
        if data.len() % dims != 0 {
            return Err(EmbedError::Config(format!(
                "pca: {} values are not rows of {dims}",
                data.len()
            )));
        }
        let rows = data.len() / dims;
        let centred: Vec<f64> = data
            .chunks_exact(dims)
            .flat_map(|row| row.iter().zip(&self.mean).map(|(&x, m)| f64::from(x) - m))
            .collect();
        let x = Tensor::from_vec(centred, (rows, dims), &Device::Cpu).map_err(candle_err)?;
        let w = Tensor::from_vec(self.components.clone(), (self.k(), dims), &Device::Cpu)
            .map_err(candle_err)?;
        x.matmul(&w.t().map_err(candle_err)?)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(candle_err)
    }
}

/// Eigen-decomposition of the symmetric `n x n` row-major matrix `a` by cyclic Jacobi rotations.
/// Returns the eigenvalues in descending order and the matching unit eigenvectors as rows
/// (row-major `n x n`), each signed so that its largest-magnitude entry is positive (the output
/// must not depend on rounding noise).
pub fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..64 {
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= scale * 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J: columns p and q, then rows p and q.
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
                // The eigenvectors accumulate in V's columns; V is kept transposed (rows) so the
                // update runs over contiguous memory.
                for k in 0..n {
                    let (vpk, vqk) = (v[p * n + k], v[q * n + k]);
                    v[p * n + k] = c * vpk - s * vqk;
                    v[q * n + k] = s * vpk + c * vqk;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = Vec::with_capacity(n * n);
    for &i in &order {
        let row = &v[i * n..(i + 1) * n];
        let peak = row
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if peak < 0.0 { -1.0 } else { 1.0 };
        vectors.extend(row.iter().map(|x| x * sign));
    }
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_a_known_matrix() {
        // [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5, 3, 1 with vectors e3, (1,1,0)/√2, (1,-1,0)/√2.
        let a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0];
        let (values, vectors) = symmetric_eigen(a, 3);
        for (got, want) in values.iter().zip([5.0, 3.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{values:?}");
        }
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let want = [0.0, 0.0, 1.0, h, h, 0.0, h, -h, 0.0];
        for (g, w) in vectors.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{vectors:?}");
        }
    }

    #[test]
    fn eigenvectors_reconstruct_a_random_symmetric_matrix() {
        let n = 12;
        let mut a = vec![0f64; n * n];
        let mut x = 7u64;
        for i in 0..n {
            for j in i..n {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                a[i * n + j] = r;
                a[j * n + i] = r;
            }
        }
        let (values, vectors) = symmetric_eigen(a.clone(), n);
        // A = Σ λ v vᵀ
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| values[k] * vectors[k * n + i] * vectors[k * n + j])
                    .sum();
                assert!((r - a[i * n + j]).abs() < 1e-10);
            }
        }
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn pca_finds_the_dominant_direction() {
        // Points along (3, 4)/5 with a little orthogonal noise (alternating, so very slightly
        // correlated with the position: the axis tilts by ~2e-4), offset from the origin.
        let mut data = Vec::new();
        for i in 0..50 {
            let t = i as f32 - 25.0;
            let noise = if i % 2 == 0 { 0.1 } else { -0.1 };
            data.push(10.0 + 0.6 * t - 0.8 * noise);
            data.push(-5.0 + 0.8 * t + 0.6 * noise);
        }
        let pca = Pca::fit(&data, 2, 1).unwrap();
        assert!((pca.mean[0] - 9.7).abs() < 1e-4 && (pca.mean[1] + 5.4).abs() < 1e-4);
        assert!(
            (pca.components[0] - 0.6).abs() < 1e-3,
            "{:?}",
            pca.components
        );
        assert!((pca.components[1] - 0.8).abs() < 1e-3);
        assert!(pca.explained_variance_ratio() > 0.999);
        let projected = pca.transform(&data[..4]).unwrap();
        assert_eq!(projected.len(), 2);
        assert!((projected[0] + 24.5).abs() < 1e-3, "{projected:?}");
    }
}
