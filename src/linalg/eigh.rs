//! Symmetric eigen-decomposition `A = V diag(λ) Vᵀ` by Jacobi rotations.
//!
//! CPU reference: row-cyclic Jacobi in f64 (`eigh_reference`).
//! GPU: parallel cyclic Jacobi (`jacobi_rotations` + `jacobi_apply` per round-robin step,
//! n/2 disjoint rotations each); a sweep of N-1 steps is recorded as one batch and only the
//! off-diagonal norm (`matrix_stats`) is read back between sweeps. The diagonal and V are read
//! back once at the end, sorted on the host and uploaded.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::linalg::reference::{eigh_reference, not_converged, sort_eigen};
use crate::linalg::{
    check_nonempty, check_square, gpu_stats, grid_32, host_stats, non_finite_error, read_f32,
    tensor_from_f64, SHADER,
};
use crate::ops::grid_1d;
use crate::tensor::Tensor;

/// Options of [`eigh_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EighOptions {
    /// Use `(A + Aᵀ)/2` instead of reporting a non-symmetric input as an error.
    pub symmetrize: bool,
    /// GPU: stop when the off-diagonal Frobenius norm is below `tol·‖A‖_F`; a sweep that no
    /// longer halves it once it is below `10·tol·‖A‖_F` (the f32 rounding floor) also ends.
    pub tol: f32,
    /// GPU: sweeps before giving up with "did not converge" (the f64 reference stops at 60).
    pub max_sweeps: usize,
}

impl Default for EighOptions {
    fn default() -> Self {
        EighOptions {
            symmetrize: false,
            tol: 1e-6,
            max_sweeps: 30,
        }
    }
}

/// Eigenvalues (ascending, shape `(n)`) and orthonormal eigenvectors (the columns of an
/// `(n, n)` matrix) of a symmetric matrix. A non-symmetric input is an [`Error::Invalid`];
/// see [`eigh_with`] to symmetrise it instead.
pub fn eigh(a: &Tensor) -> Result<(Tensor, Tensor)> {
    eigh_with(a, &EighOptions::default())
}

/// [`eigh`] with options.
pub fn eigh_with(a: &Tensor, opts: &EighOptions) -> Result<(Tensor, Tensor)> {
    let op = "eigh";
    let n = check_square(op, a)?;
    check_nonempty(op, a)?;
    match &a.device().inner {
        DeviceInner::Cpu => {
            let x = a.host_f64();
            let stats = host_stats(&x, n, n);
            check_input(op, a.shape(), stats, opts)?;
            let mut m: Vec<f64> = x.into_owned();
            if opts.symmetrize {
                for i in 0..n {
                    for j in 0..i {
                        let s = 0.5 * (m[i * n + j] + m[j * n + i]);
                        m[i * n + j] = s;
                        m[j * n + i] = s;
                    }
                }
            }
            let (values, vectors) = eigh_reference(&m, n)?;
            Ok((
                tensor_from_f64(a, &values, &[n])?,
                tensor_from_f64(a, &vectors, &[n, n])?,
            ))
        }
        DeviceInner::Gpu(ctx) => {
            let Some((x, _)) = a.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            let bytes = (n * n * 4) as u64;
            ctx.check_binding(op, a.shape(), bytes)?;
            let stats = gpu_stats(ctx, op, x, n, n)?;
            check_input(op, a.shape(), stats, opts)?;

            let big_n = n + n % 2;
            let half = big_n / 2;
            let (w, v) = (ctx.alloc(bytes), ctx.alloc(bytes));
            let rot = ctx.alloc((half * 16) as u64);
            let (wa, va, ra) = (
                (w.raw(), bytes),
                (v.raw(), bytes),
                (rot.raw(), (half * 16) as u64),
            );
            let init = [n as u32, big_n as u32, opts.symmetrize as u32, 0, 0];
            ctx.dispatch(
                &SHADER,
                "jacobi_init",
                &[],
                &init,
                &[(x, bytes), wa, va],
                grid_1d(ctx, n * n),
            )?;

            let norm = stats.total;
            let tol = opts.tol as f64;
            let mut off = gpu_stats(ctx, op, w.raw(), n, n)?.off;
            let mut prev = f64::INFINITY;
            let mut sweeps = 0;
            loop {
                let floor = off > 0.5 * prev && off <= 10.0 * tol * norm;
                if off <= tol * norm || floor {
                    break;
                }
                if sweeps == opts.max_sweeps {
                    return Err(not_converged(op, opts.max_sweeps));
                }
                for step in 0..big_n - 1 {
                    let p = [n as u32, big_n as u32, step as u32, 0, 0];
                    ctx.dispatch(
                        &SHADER,
                        "jacobi_rotations",
                        &[],
                        &p,
                        &[wa, ra],
                        grid_32(ctx, half),
                    )?;
                    let items = half * half + n * half;
                    ctx.dispatch(
                        &SHADER,
                        "jacobi_apply",
                        &[],
                        &p,
                        &[wa, ra, va],
                        grid_1d(ctx, items),
                    )?;
                }
                prev = off;
                off = gpu_stats(ctx, op, w.raw(), n, n)?.off;
                sweeps += 1;
            }

            let d = ctx.alloc((n * 4) as u64);
            let p = [n as u32, n as u32, 0, 0, 0];
            let dargs = [wa, (d.raw(), (n * 4) as u64)];
            ctx.dispatch(&SHADER, "diag_forward", &[], &p, &dargs, grid_1d(ctx, n))?;
            let diag: Vec<f64> = read_f32(ctx, op, d.raw(), n)?
                .iter()
                .map(|&x| x as f64)
                .collect();
            let vecs: Vec<f64> = read_f32(ctx, op, v.raw(), n * n)?
                .iter()
                .map(|&x| x as f64)
                .collect();
            let (values, vectors) = sort_eigen(&diag, &vecs, n);
            Ok((
                tensor_from_f64(a, &values, &[n])?,
                tensor_from_f64(a, &vectors, &[n, n])?,
            ))
        }
    }
}

/// NaN/Inf entries, and asymmetry beyond f32 rounding unless asked to symmetrise.
fn check_input(
    op: &'static str,
    shape: &[usize],
    s: super::MatrixStats,
    opts: &EighOptions,
) -> Result<()> {
    if s.non_finite > 0 {
        return Err(non_finite_error(op, shape, s.non_finite));
    }
    if !opts.symmetrize && s.asym > 1e-5 * s.total {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "matrix of shape {shape:?} is not symmetric (max |a_ij - a_ji| = {:e}); \
                 use eigh_with(.., &EighOptions {{ symmetrize: true, .. }}) to use (A + Aᵀ)/2",
                s.asym
            ),
        });
    }
    Ok(())
}
