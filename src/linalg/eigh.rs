//! Symmetric eigen-decomposition `A = V diag(λ) Vᵀ`.
//!
//! CPU reference: row-cyclic Jacobi in f64 (`eigh_reference`).
//! GPU: the blocked two-stage solver of `eigh_blocked` (issue 16): dense → band with device
//! products, band → tridiagonal and implicit QL on the host in f64, back-transformation with
//! device products. The GPU Jacobi sweeps it replaced lost at every size measured
//! (`wgrad bench --filter eigh`, ms, Jacobi → blocked: 256: 3900 → 47, 512: 28700 → 457;
//! 16 and 32 now take 0.35 and 0.55 ms, one read-back, where a Jacobi sweep alone is 2n
//! dispatches), so none is kept.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::linalg::eigh_blocked::eigh_blocked;
use crate::linalg::reference::eigh_reference;
use crate::linalg::{
    check_nonempty, check_square, gpu_stats, host_stats, non_finite_error, tensor_from_f64,
};
use crate::tensor::Tensor;

/// Options of [`eigh_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EighOptions {
    /// Use `(A + Aᵀ)/2` instead of reporting a non-symmetric input as an error.
    pub symmetrize: bool,
    /// Unused since the GPU solver is no longer Jacobi (kept so that callers still build).
    pub tol: f32,
    /// Unused since the GPU solver is no longer Jacobi (kept so that callers still build).
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

            let (values, vectors) = eigh_blocked(ctx, a, n, HOST_MAX)?;
            Ok((tensor_from_f64(a, &values, &[n])?, vectors))
        }
    }
}

/// Orders up to this go to the host whole (one read-back, f64 Householder tridiagonalisation
/// and QL): 128 takes 5.7 ms there; above it the device's dense → band stage runs.
const HOST_MAX: usize = 128;

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
