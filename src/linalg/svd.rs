//! Thin SVD `A = U Σ Vᵀ`, and what it gives: numerical rank, pseudo-inverse, best rank-r
//! approximation.
//!
//! CPU reference: one-sided (Hestenes) Jacobi in f64 (`svd_reference`).
//! GPU: the blocked two-stage SVD of `svd_blocked` (issue 16): dense → upper band with
//! device products, band → bidiagonal and the bidiagonal SVD (implicit-shift QR) on the host
//! in f64, back-transformation with device products; O(n/b) dispatches. Tall matrices
//! (`m >= 2n` or `8n`, see `TALL_RATIO_BAND`) are first reduced by the blocked QR,
//! `U = Q·U_R`; a wide matrix (m < n) is decomposed as its transpose.
//!
//! The GPU one-sided Jacobi it replaced lost at every size measured (`wgrad bench --filter
//! svd`, lavapipe, one sitting, two cores under a load of about 7, ms, Jacobi → blocked:
//! 128: 878 → 9, 256: 4515 → 68, 512: 50565 → 699; the f64 CPU reference: 44, 351, 2925),
//! so none is kept: small matrices take one read-back and the host path, where one Jacobi
//! sweep alone is 2n dispatches. Blocked 1024: 3.6 s, 2048: 32 s, 4096×256: 0.62 s (NumPy,
//! OpenBLAS on one thread in the same sitting: 1.17 s, 8.7 s, 0.20 s).

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::linalg::reference::svd_reference;
use crate::linalg::svd_blocked::svd_blocked;
use crate::linalg::{check_matrix, check_nonempty, gpu_stats, non_finite_error, tensor_from_f64};
use crate::tensor::Tensor;

/// Column counts up to this skip the device's dense → band stage: the matrix is read back
/// whole (a tall one reduced by a host QR panel applied to U on the device) and bidiagonalised
/// on the host. Measured (lavapipe, loaded, best of 2-3, ms, host whole → device band
/// stage): 192: 36 → 41, 256: 62 → 120, 384: 164 → 226, 512: 512 → 421.
const HOST_MAX: usize = 256;

/// From this many rows per column on the blocked QR reduces A first and the SVD runs on the
/// square R, `U = Q·U_R` (past 64 columns: below, the host QR panel is cheaper). Measured
/// (lavapipe, loaded, best of 2-3, ms, QR first → without): past the host cut-over, with
/// the band stage on A: 512×256: 126 → 152, 1024×256: 197 → 209, 2048×256: 206 → 401,
/// 4096×256: 464 → 531 (cut-over 128 then); below it, with the host path on A: 512×128:
/// 28 → 21, 512×256: 182 → 115, 1024×256: 220 → 228, 2048×128: 67 → 111, 4096×256:
/// 572 → 753.
const TALL_RATIO_BAND: usize = 2;
/// See [`TALL_RATIO_BAND`].
const TALL_RATIO_HOST: usize = 8;

/// Options of [`svd_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SvdOptions {
    /// Unused since the GPU SVD is no longer Jacobi (kept so that callers still build): the
    /// host bidiagonal QR uses LAPACK's relative convergence tests in f64.
    pub tol: f32,
    /// GPU: the bidiagonal QR stops with "did not converge" after `max_sweeps · min(m, n)`
    /// implicit-shift sweeps in all (it typically needs about two per singular value).
    pub max_sweeps: usize,
}

impl Default for SvdOptions {
    fn default() -> Self {
        SvdOptions {
            tol: 1e-6,
            max_sweeps: 30,
        }
    }
}

/// Thin SVD of an `(m, n)` matrix: `U (m, k)` with orthonormal columns, the singular values
/// `(k)` descending, `Vᵀ (k, n)`, `k = min(m, n)`.
pub fn svd(a: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    svd_with(a, &SvdOptions::default())
}

/// [`svd`] with options.
pub fn svd_with(a: &Tensor, opts: &SvdOptions) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "svd";
    let (m, n) = check_matrix(op, a)?;
    check_nonempty(op, a)?;
    match &a.device().inner {
        DeviceInner::Cpu => {
            let x = super::host_finite(op, a, m, n)?;
            let (u, s, vt) = svd_reference(&x, m, n)?;
            let k = m.min(n);
            Ok((
                tensor_from_f64(a, &u, &[m, k])?,
                tensor_from_f64(a, &s, &[k])?,
                tensor_from_f64(a, &vt, &[k, n])?,
            ))
        }
        DeviceInner::Gpu(_) if m < n => {
            // Aᵀ = V Σ Uᵀ.
            let (u2, s, vt2) = svd_with(&a.transpose()?, opts)?;
            Ok((vt2.transpose()?, s, u2.transpose()?))
        }
        DeviceInner::Gpu(ctx) => {
            // No kernel here loops over a column (the products split their sums), so any
            // number of rows goes; the NaN/Inf check walks a row per invocation, which caps
            // the (shorter) side at the loop budget.
            let Some((x, bytes)) = a.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            ctx.check_binding(op, a.shape(), bytes)?;
            let stats = gpu_stats(ctx, op, x, m, n)?;
            if stats.non_finite > 0 {
                return Err(non_finite_error(op, a.shape(), stats.non_finite));
            }
            let ratio = if n > HOST_MAX {
                TALL_RATIO_BAND
            } else {
                TALL_RATIO_HOST
            };
            let (u, s, vt) = if n > 64 && m >= ratio * n {
                let (q, r) = super::qr_blocked::qr_blocked(ctx, a, m, n, n)?;
                let r = r.narrow(0, 0, n)?;
                let (ur, s, vt) = svd_blocked(ctx, &r, n, n, HOST_MAX, opts.max_sweeps)?;
                (q.matmul(&ur)?, s, vt)
            } else {
                svd_blocked(ctx, a, m, n, HOST_MAX, opts.max_sweeps)?
            };
            Ok((u, tensor_from_f64(a, &s, &[n])?, vt))
        }
    }
}

/// The default cutoff below which singular values count as zero: `σ_max·max(m, n)·ε_f32`.
fn default_cutoff(s: &[f32], m: usize, n: usize) -> f32 {
    s.first().copied().unwrap_or(0.0) * m.max(n) as f32 * f32::EPSILON
}

/// Numerical rank: the number of singular values above `tol` (default
/// `σ_max·max(m, n)·ε_f32`).
pub fn rank(a: &Tensor, tol: Option<f32>) -> Result<usize> {
    let (m, n) = check_matrix("rank", a)?;
    let (_, s, _) = svd(a)?;
    let s = s.to_vec::<f32>()?;
    let cut = tol.unwrap_or_else(|| default_cutoff(&s, m, n));
    Ok(s.iter().filter(|&&x| x > cut).count())
}

/// Moore–Penrose pseudo-inverse `V Σ⁺ Uᵀ` (`(n, m)` for an `(m, n)` input); singular values at
/// or below `rcond·σ_max` (default `max(m, n)·ε_f32`) are treated as zero.
pub fn pinv(a: &Tensor, rcond: Option<f32>) -> Result<Tensor> {
    let (m, n) = check_matrix("pinv", a)?;
    let (u, s, vt) = svd(a)?;
    let sv = s.to_vec::<f32>()?;
    let cut = match rcond {
        Some(r) => r * sv.first().copied().unwrap_or(0.0),
        None => default_cutoff(&sv, m, n),
    };
    let inv: Vec<f32> = sv
        .iter()
        .map(|&x| if x > cut { 1.0 / x } else { 0.0 })
        .collect();
    let inv = Tensor::from_slice(a.device(), &inv, &[sv.len(), 1])?;
    // (Σ⁺ Vᵀ)ᵀ · Uᵀ
    vt.mul(&inv)?.matmul_t(&u, true, true)
}

/// A rank-r approximation and what it costs and loses.
#[derive(Clone, Debug)]
pub struct LowRank {
    /// `U_r Σ_r V_rᵀ`, the best rank-r approximation (Eckart–Young), shape of the input.
    pub approx: Tensor,
    /// `‖A − A_r‖_F / ‖A‖_F`, measured (0 for a zero matrix).
    pub rel_error: f32,
    /// Numbers stored by the factored form: `r·(m + n + 1)`.
    pub params: usize,
    /// The rank r.
    pub rank: usize,
}

/// The best rank-`r` approximation of an `(m, n)` matrix, `1 <= r <= min(m, n)`.
pub fn low_rank(a: &Tensor, r: usize) -> Result<LowRank> {
    let (m, n) = check_matrix("low_rank", a)?;
    if r == 0 || r > m.min(n) {
        return Err(Error::Invalid {
            op: "low_rank",
            detail: format!(
                "rank {r} outside 1..={} for shape {:?}",
                m.min(n),
                a.shape()
            ),
        });
    }
    let (u, s, vt) = svd(a)?;
    let approx = u
        .narrow(1, 0, r)?
        .mul(&s.narrow(0, 0, r)?)?
        .matmul(&vt.narrow(0, 0, r)?)?;
    let total = a.square()?.sum()?.item()?;
    let err = a.sub(&approx)?.square()?.sum()?.item()?;
    let rel_error = if total > 0.0 {
        (err / total).sqrt()
    } else {
        0.0
    };
    Ok(LowRank {
        approx,
        rel_error,
        params: r * (m + n + 1),
        rank: r,
    })
}
