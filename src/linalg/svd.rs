//! Thin SVD `A = U Σ Vᵀ` by one-sided (Hestenes) Jacobi, and what it gives: numerical rank,
//! pseudo-inverse, best rank-r approximation.
//!
//! CPU reference: one-sided Jacobi in f64 (`svd_reference`).
//! GPU: the columns of A are kept as the rows of `Gt = Aᵀ` (contiguous); per round-robin step
//! `svd_rotations` computes the n/2 column dot products and rotations, `svd_apply` rotates
//! those columns of G and of V. A sweep is one batch; the largest `|cos ∠(g_p, g_q)|` of the
//! sweep is read back to test convergence. After the sweeps the host re-orthogonalises V in
//! f64 (one Newton–Schulz step); σ_j = ‖g_j‖, U = G/σ, the descending sort and the completion
//! of U's null columns run on the host (see `finish_svd`).
//! A wide matrix (m < n) is decomposed as its transpose.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::linalg::reference::{finish_svd, not_converged, reorthogonalize_rows, svd_reference};
use crate::linalg::{
    check_matrix, check_nonempty, gpu_stats, grid_32, non_finite_error, read_f32, tensor_from_f64,
    SHADER,
};
use crate::ops::grid_1d;
use crate::tensor::Tensor;

/// Most rows of the GPU SVD: `svd_rotations` forms a pair's column dot products in one
/// invocation, 8 rows per loop step (the rest straight-line), so m rows take floor(m / 8)
/// steps, kept within the loop budget (lavapipe silently stops an invocation after 65535).
const MAX_GPU_ROWS: usize = 8 * crate::gpu::LOOP_BUDGET;

/// Options of [`svd_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SvdOptions {
    /// GPU: converged when every pair of columns (both with norm above `1e-6·‖A‖_F`) has
    /// `|cos ∠| <= tol`; a sweep that no longer halves the largest cosine once it is below
    /// `10·tol` (the f32 rounding floor) also ends.
    pub tol: f32,
    /// GPU: sweeps before giving up with "did not converge" (the f64 reference stops at 60).
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
            if m > MAX_GPU_ROWS {
                return Err(Error::Invalid {
                    op,
                    detail: format!(
                        "shape {:?}: the GPU SVD supports at most {MAX_GPU_ROWS} rows \
                         (one invocation loops over a whole column, within the GPU loop budget)",
                        a.shape()
                    ),
                });
            }
            let Some((x, _)) = a.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            let stats = gpu_stats(ctx, op, x, m, n)?;
            if stats.non_finite > 0 {
                return Err(non_finite_error(op, a.shape(), stats.non_finite));
            }
            // Gt is a fresh tensor nobody else holds, so it is rotated in place.
            let gt = a.transpose()?;
            let Some(ga) = gt.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            let big_n = n + n % 2;
            let half = big_n / 2;
            let vbytes = (n * n * 4) as u64;
            let vt = ctx.alloc(vbytes);
            let rot = ctx.alloc((half * 16) as u64);
            let conv = ctx.alloc((half * 4) as u64);
            let va = (vt.raw(), vbytes);
            let ra = (rot.raw(), (half * 16) as u64);
            let ca = (conv.raw(), (half * 4) as u64);
            let p = [n as u32, big_n as u32, 0, 0, 0];
            ctx.dispatch(&SHADER, "svd_init", &[], &p, &[va], grid_1d(ctx, n * n))?;

            let null_tol = 1e-6 * stats.total;
            let tiny = (null_tol * null_tol).min(f32::MAX as f64) as f32;
            let tol = opts.tol as f64;
            let mut prev = f64::INFINITY;
            let mut sweeps = 0;
            loop {
                if sweeps == opts.max_sweeps {
                    return Err(not_converged(op, opts.max_sweeps));
                }
                for step in 0..big_n - 1 {
                    let p = [
                        n as u32,
                        big_n as u32,
                        step as u32,
                        m as u32,
                        tiny.to_bits(),
                    ];
                    let g = grid_32(ctx, half);
                    ctx.dispatch(&SHADER, "svd_rotations", &[], &p, &[ga, ra, ca], g)?;
                    let g = grid_1d(ctx, half * (m + n));
                    ctx.dispatch(&SHADER, "svd_apply", &[], &p, &[ga, ra, va], g)?;
                }
                sweeps += 1;
                let worst = read_f32(ctx, op, conv.raw(), half)?
                    .iter()
                    .fold(0.0f64, |w, &c| w.max(c as f64));
                let floor = worst > 0.5 * prev && worst <= 10.0 * tol;
                if worst <= tol || floor {
                    break;
                }
                prev = worst;
            }
            // Host: σ_j = ‖g_j‖ and U = G/σ from the rotated G (not A·V, which would lose the
            // small singular directions to f32 rounding); V gets one f64 Newton–Schulz step.
            let g: Vec<f64> = read_f32(ctx, op, ga.0, n * m)?
                .iter()
                .map(|&x| x as f64)
                .collect();
            let v: Vec<f64> = read_f32(ctx, op, vt.raw(), n * n)?
                .iter()
                .map(|&x| x as f64)
                .collect();
            let v = reorthogonalize_rows(&v, n);
            let (u, s, vt) = finish_svd(&g, &v, m, n, null_tol);
            Ok((
                tensor_from_f64(a, &u, &[m, n])?,
                tensor_from_f64(a, &s, &[n])?,
                tensor_from_f64(a, &vt, &[n, n])?,
            ))
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
