//! Principal component analysis: centre the data, take the SVD of the centred matrix
//! (`Xc = U Σ Vᵀ`); the principal axes are the rows of Vᵀ and the variance along axis j is
//! `σ_j²/(n − 1)`. Runs on the data's device (the mean, the centring and the projections are
//! tensor ops; the SVD is [`svd`](super::svd)); only the singular values and the kept rows of
//! Vᵀ visit the host, to fix the sign of each axis.

use crate::error::{Error, Result};
use crate::linalg::{check_matrix, check_nonempty, svd};
use crate::tensor::Tensor;

/// A fitted PCA (see [`Pca::fit`]).
#[derive(Clone, Debug)]
pub struct Pca {
    /// Per-feature mean of the training data, `(d)`.
    pub mean: Tensor,
    /// Principal axes as rows, `(k, d)`, by decreasing variance; each row's entry of largest
    /// magnitude is positive, so the result does not depend on the SVD's signs.
    pub components: Tensor,
    /// Variance of the data along each axis, `σ²/(n − 1)`, `(k)`.
    pub explained_variance: Tensor,
    /// Share of the total variance along each axis, `(k)`; sums to 1 when all
    /// `min(n, d)` components are kept (all zeros for constant data).
    pub explained_variance_ratio: Tensor,
    /// Singular values of the centred data, `(k)`.
    pub singular_values: Tensor,
}

impl Pca {
    /// Fits `k` components (default all `min(n, d)`) to the rows of `x` `(n, d)`, `n >= 2`.
    ///
    /// ```
    /// use wgrad::{linalg::Pca, Device, Tensor};
    /// # fn main() -> wgrad::Result<()> {
    /// // Points on the line y = 2x: one component carries all the variance.
    /// let x = Tensor::from_slice(&Device::cpu(), &[0.0f32, 0.0, 1.0, 2.0, 2.0, 4.0], &[3, 2])?;
    /// let pca = Pca::fit(&x, Some(1))?;
    /// assert!((pca.explained_variance_ratio.to_vec::<f32>()?[0] - 1.0).abs() < 1e-6);
    /// let back = pca.inverse_transform(&pca.transform(&x)?)?.to_vec::<f32>()?;
    /// assert!((back[5] - 4.0).abs() < 1e-5);
    /// # Ok(()) }
    /// ```
    pub fn fit(x: &Tensor, k: Option<usize>) -> Result<Pca> {
        let op = "pca";
        let (n, d) = check_matrix(op, x)?;
        check_nonempty(op, x)?;
        let full = n.min(d);
        let k = k.unwrap_or(full);
        if n < 2 || k == 0 || k > full {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "{k} components of data of shape {:?}: needs at least 2 samples and \
                     1..={full} components",
                    x.shape()
                ),
            });
        }
        let mean = x.mean_axis(0, false)?;
        let (_, s, vt) = svd(&x.sub(&mean)?)?;
        let s = s.to_vec::<f32>()?;
        let mut axes = vt.narrow(0, 0, k)?.to_vec::<f32>()?;
        for row in axes.chunks_exact_mut(d) {
            let big = row
                .iter()
                .fold(0.0f32, |b, &v| if v.abs() > b.abs() { v } else { b });
            if big < 0.0 {
                row.iter_mut().for_each(|v| *v = -*v);
            }
        }
        let total: f64 = s.iter().map(|&v| (v as f64).powi(2)).sum();
        let var: Vec<f32> = s[..k]
            .iter()
            .map(|&v| ((v as f64).powi(2) / (n - 1) as f64) as f32)
            .collect();
        let ratio: Vec<f32> = s[..k]
            .iter()
            .map(|&v| {
                if total > 0.0 {
                    ((v as f64).powi(2) / total) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let dev = x.device();
        Ok(Pca {
            mean,
            components: Tensor::from_slice(dev, &axes, &[k, d])?,
            explained_variance: Tensor::from_slice(dev, &var, &[k])?,
            explained_variance_ratio: Tensor::from_slice(dev, &ratio, &[k])?,
            singular_values: Tensor::from_slice(dev, &s[..k], &[k])?,
        })
    }

    /// Number of components kept.
    pub fn n_components(&self) -> usize {
        self.components.shape()[0]
    }

    /// Coordinates of the rows of `x` `(m, d)` on the axes: `(x − mean) Cᵀ`, `(m, k)`.
    pub fn transform(&self, x: &Tensor) -> Result<Tensor> {
        let (_, d) = check_matrix("pca_transform", x)?;
        self.expect_width("pca_transform", x, d, self.components.shape()[1])?;
        x.sub(&self.mean)?.matmul_t(&self.components, false, true)
    }

    /// Back from coordinates `z` `(m, k)` to data space: `z C + mean`, `(m, d)`.
    pub fn inverse_transform(&self, z: &Tensor) -> Result<Tensor> {
        let (_, k) = check_matrix("pca_inverse_transform", z)?;
        self.expect_width("pca_inverse_transform", z, k, self.n_components())?;
        z.matmul(&self.components)?.add(&self.mean)
    }

    fn expect_width(&self, op: &'static str, t: &Tensor, got: usize, want: usize) -> Result<()> {
        t.expect_same_device(op, &self.mean)?;
        if got != want {
            return Err(Error::Shape {
                op,
                detail: format!("needs {want} columns, got shape {:?}", t.shape()),
            });
        }
        Ok(())
    }
}
