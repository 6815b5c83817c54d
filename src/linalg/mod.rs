//! Linear algebra: dot products, norms, trace, the QR factorisation, the symmetric and the
//! general eigen-decomposition, the SVD (with rank, pseudo-inverse and low-rank
//! approximation) and PCA.
//!
//! Every function takes f32 tensors on either device and returns tensors on the same device.
//! The CPU device runs the f64 references (cyclic Jacobi, one-sided Jacobi, Householder QR,
//! Hessenberg + Francis QR). The GPU runs blocked algorithms (issue 16): [`qr`], [`eigh`] and
//! [`svd`] factor panels on the host in f64 and do the trailing updates and the
//! back-transformations as device products; [`eig`] reduces to Hessenberg form with device
//! products and host f64 stages, or on the host where that is measured faster (software
//! adapters), and the small QRs use the reflector kernels of `shaders/linalg_qr.wgsl`;
//! `shaders/linalg.wgsl` keeps the input checks and the diagonal (see each function for
//! what runs where).
//!
//! Bad input is a typed error on both devices: non-matrix or non-square shapes
//! ([`Error::Shape`]), empty matrices ([`Error::Empty`]), NaN/Inf entries, non-symmetric input
//! to [`eigh`] and an iteration cap reached ([`Error::Invalid`]).
//!
//! ```
//! use wgrad::{linalg, Device, Tensor};
//! # fn main() -> wgrad::Result<()> {
//! let dev = Device::cpu();
//! let a = Tensor::from_slice(&dev, &[2.0f32, 1.0, 1.0, 2.0], &[2, 2])?;
//! let (values, vectors) = linalg::eigh(&a)?;
//! let l = values.to_vec::<f32>()?;
//! assert!((l[0] - 1.0).abs() < 1e-6 && (l[1] - 3.0).abs() < 1e-6);
//! assert_eq!(vectors.shape(), &[2, 2]);
//! assert!((linalg::norm(&a, linalg::Norm::L2)?.item()? - 3.0).abs() < 1e-6);
//! # Ok(()) }
//! ```

mod bidiag;
mod eig;
mod eigh;
mod eigh_blocked;
mod hessenberg_blocked;
mod hessenberg_chase;
mod pca;
pub(crate) mod qr;
mod qr_blocked;
pub(crate) mod reference;
mod svd;
mod svd_blocked;
mod tridiag;

use std::sync::Arc;

pub use eig::{eig, eig_with, Eig, EigOptions};
pub use eigh::{eigh, eigh_with, EighOptions};
pub use pca::Pca;
pub use qr::{qr, qr_with, qr_with_options, QrMode, QrOptions};
pub use svd::{low_rank, pinv, rank, svd, svd_with, LowRank, SvdOptions};

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

/// The Householder kernels (`shaders/linalg_qr.wgsl`), shared by the unblocked QR
/// (`qr.rs`, also the Hessenberg reduction of `eig`) and the blocked one (`qr_blocked.rs`).
pub(crate) const QR_SHADER: Kernel = Kernel {
    name: "linalg_qr",
    source: include_str!("../../shaders/linalg_qr.wgsl"),
};

pub(crate) const SHADER: Kernel = Kernel {
    name: "linalg",
    source: include_str!("../../shaders/linalg.wgsl"),
};

/// Which norm [`norm`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    /// Vectors: `Σ|x|`. Matrices: the induced 1-norm, the largest column sum of `|a|`.
    L1,
    /// Vectors: `√Σx²`. Matrices: the spectral norm, the largest singular value.
    L2,
    /// Frobenius: `√Σx²` over every element (vectors and matrices).
    Fro,
    /// The largest `|x|` over every element (vectors and matrices).
    Max,
}

/// Dot product of two 1-D tensors of equal length, as a rank-0 tensor.
pub fn dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.expect_f32("dot")?;
    b.expect_f32("dot")?;
    a.expect_same_device("dot", b)?;
    if a.rank() != 1 || b.rank() != 1 || a.numel() != b.numel() {
        return Err(Error::Shape {
            op: "dot",
            detail: format!(
                "needs two 1-D tensors of equal length, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        });
    }
    a.mul(b)?.sum()
}

/// A vector (1-D) or matrix (2-D) norm, as a rank-0 tensor (see [`Norm`]).
///
/// Empty tensors give 0 except for [`Norm::Max`] and the matrix [`Norm::L2`]
/// ([`Error::Empty`]). Built from element-wise ops and reductions (and [`svd`] for the
/// spectral norm), so it runs where its input lives.
pub fn norm(a: &Tensor, kind: Norm) -> Result<Tensor> {
    a.expect_f32("norm")?;
    if a.rank() == 0 || a.rank() > 2 {
        return Err(Error::Shape {
            op: "norm",
            detail: format!("needs a vector or a matrix, got shape {:?}", a.shape()),
        });
    }
    let matrix = a.rank() == 2;
    match kind {
        Norm::L1 if matrix => {
            if a.numel() == 0 {
                return Tensor::scalar(a.device(), 0.0);
            }
            a.abs()?.sum_axis(0, false)?.max()
        }
        Norm::L1 => a.abs()?.sum(),
        Norm::L2 if matrix => {
            let (_, s, _) = svd(a)?;
            s.narrow(0, 0, 1)?.reshape(&[])
        }
        Norm::L2 | Norm::Fro => a.square()?.sum()?.sqrt(),
        Norm::Max => a.abs()?.max(),
    }
}

/// Sum of the diagonal of a square matrix, as a rank-0 tensor (0 for a 0x0 matrix).
pub fn trace(a: &Tensor) -> Result<Tensor> {
    let n = check_square("trace", a)?;
    if n == 0 {
        return Tensor::scalar(a.device(), 0.0);
    }
    diagonal(a)?.sum()
}

/// The diagonal `a[i, i]`, `i < min(rows, cols)`, of a matrix as a 1-D tensor.
pub fn diagonal(a: &Tensor) -> Result<Tensor> {
    let (rows, cols) = check_matrix("diagonal", a)?;
    let k = rows.min(cols);
    match &a.device().inner {
        DeviceInner::Cpu => {
            let x = a.host_f64();
            let d = (0..k).map(|i| x[i * cols + i]).collect();
            Ok(Tensor::cpu_from_f64(a.device(), &[k], d))
        }
        DeviceInner::Gpu(ctx) => {
            let out = gpu_output(ctx, a.device(), "diagonal", &[k], DType::F32)?;
            if k == 0 {
                return Ok(out);
            }
            let (Some(x), Some(o)) = (a.gpu_arg(), out.gpu_arg()) else {
                unreachable!("GPU device holds GPU tensors")
            };
            let params = [k as u32, cols as u32, 0, 0, 0];
            ctx.dispatch(
                &SHADER,
                "diag_forward",
                &[],
                &params,
                &[x, o],
                grid_1d(ctx, k),
            )?;
            Ok(out)
        }
    }
}

// ----- shared checks and plumbing for eigh.rs / svd.rs -----

/// (rows, cols) of an f32 matrix, or the typed error naming `op`.
pub(crate) fn check_matrix(op: &'static str, a: &Tensor) -> Result<(usize, usize)> {
    a.expect_f32(op)?;
    if a.rank() != 2 {
        return Err(Error::Shape {
            op,
            detail: format!("needs a matrix (2-D), got shape {:?}", a.shape()),
        });
    }
    Ok((a.shape()[0], a.shape()[1]))
}

/// The order of a square f32 matrix.
pub(crate) fn check_square(op: &'static str, a: &Tensor) -> Result<usize> {
    let (rows, cols) = check_matrix(op, a)?;
    if rows != cols {
        return Err(Error::Shape {
            op,
            detail: format!("needs a square matrix, got shape {:?}", a.shape()),
        });
    }
    Ok(rows)
}

/// Errors on a matrix with no elements.
pub(crate) fn check_nonempty(op: &'static str, a: &Tensor) -> Result<()> {
    if a.numel() == 0 {
        return Err(Error::Empty {
            op,
            shape: a.shape().to_vec(),
        });
    }
    Ok(())
}

pub(crate) fn non_finite_error(op: &'static str, shape: &[usize], count: usize) -> Error {
    Error::Invalid {
        op,
        detail: format!("input of shape {shape:?} holds {count} NaN or infinite entries"),
    }
}

/// What `matrix_stats` measures of a (rows, cols) matrix, summed over rows in f64.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MatrixStats {
    /// Frobenius norm of the off-diagonal part.
    pub off: f64,
    /// Frobenius norm of the whole (finite entries).
    pub total: f64,
    /// Largest `|a_ij - a_ji|` (square matrices).
    pub asym: f64,
    /// Number of NaN or infinite entries.
    pub non_finite: usize,
}

/// The values of a CPU matrix (rows, cols) in f64, or the op's error when any is NaN or ±inf.
pub(crate) fn host_finite<'a>(
    op: &'static str,
    a: &'a Tensor,
    rows: usize,
    cols: usize,
) -> Result<std::borrow::Cow<'a, [f64]>> {
    let x = a.host_f64();
    let stats = host_stats(&x, rows, cols);
    if stats.non_finite > 0 {
        return Err(non_finite_error(op, a.shape(), stats.non_finite));
    }
    Ok(x)
}

/// The [`MatrixStats`] of a host matrix, in f64.
pub(crate) fn host_stats(x: &[f64], rows: usize, cols: usize) -> MatrixStats {
    let mut s = MatrixStats::default();
    for i in 0..rows {
        for j in 0..cols {
            let v = x[i * cols + j];
            if !v.is_finite() {
                s.non_finite += 1;
                continue;
            }
            s.total += v * v;
            if i != j {
                s.off += v * v;
            }
            if rows == cols && x[j * cols + i].is_finite() {
                s.asym = s.asym.max((v - x[j * cols + i]).abs());
            }
        }
    }
    s.off = s.off.sqrt();
    s.total = s.total.sqrt();
    s
}

/// Runs `matrix_stats` on `src` (rows, cols) and reads the per-row partials back.
pub(crate) fn gpu_stats(
    ctx: &Arc<GpuContext>,
    op: &'static str,
    src: &wgpu::Buffer,
    rows: usize,
    cols: usize,
) -> Result<MatrixStats> {
    // One invocation walks a whole row: longer rows would pass the loop budget (lavapipe
    // silently stops an invocation after 65535 iterations). QR refuses such sizes
    // earlier; this is eigh's and eig's limit, and the SVD's for its columns.
    if cols > crate::gpu::LOOP_BUDGET {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "matrix of shape [{rows}, {cols}]: the GPU kernels support at most {} columns \
                 (one invocation loops over a whole row, within the GPU loop budget)",
                crate::gpu::LOOP_BUDGET
            ),
        });
    }
    let out = ctx.alloc((rows * 4 * 4) as u64);
    let params = [rows as u32, cols as u32, 0, 0, 0];
    let bytes = (rows * cols * 4) as u64;
    let args = [(src, bytes), (out.raw(), (rows * 16) as u64)];
    ctx.dispatch(
        &SHADER,
        "matrix_stats",
        &[],
        &params,
        &args,
        grid_1d(ctx, rows),
    )?;
    let v = read_f32(ctx, op, out.raw(), rows * 4)?;
    let mut s = MatrixStats::default();
    for r in v.chunks_exact(4) {
        s.off += r[0] as f64;
        s.total += r[1] as f64;
        s.asym = s.asym.max(r[2] as f64);
        s.non_finite += r[3] as usize;
    }
    s.off = s.off.sqrt();
    s.total = s.total.sqrt();
    Ok(s)
}

/// Reads `n` f32 values from the start of `buf` after all recorded work.
pub(crate) fn read_f32(
    ctx: &GpuContext,
    op: &'static str,
    buf: &wgpu::Buffer,
    n: usize,
) -> Result<Vec<f32>> {
    let bytes = pollster::block_on(ctx.read_async(op, buf, (n * 4) as u64))?;
    Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
}

/// f64 values as an f32 tensor on `like`'s device.
pub(crate) fn tensor_from_f64(like: &Tensor, data: &[f64], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_f64(like.device(), data, shape)
}
