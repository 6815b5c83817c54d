//! QR factorisation `A = QR` by Householder reflectors.
//!
//! CPU reference: Householder in f64 (`qr_reference`), also used on the host by
//! [`Init::Orthogonal`](crate::Init::Orthogonal).
//! GPU, up to [`QrOptions::host_max`] columns (4096 on a software adapter, 128 on a hardware
//! GPU): one read-back, then blocked Householder on the host in f64, with the trailing
//! updates and Q as host matrix products on every core (`host_qr.rs`), and Q and R
//! uploaded.
//! GPU, above that, from 8 reflectors up: blocked Householder in compact-WY form,
//! panels factored on the host in f64 and the trailing update and Q as device matmul
//! products (see `qr_blocked.rs`; O(n/b) read-backs and dispatches).
//! GPU, fewer reflectors: per reflector j, `house_make` (one invocation) forms v and τ from column j, then
//! `house_left_dots`/`house_left_update` apply `I − τvvᵀ` to the trailing columns (one
//! invocation per column, then per element; no barriers). Q is accumulated backwards from the
//! identity by the same two kernels. Everything stays on the GPU; nothing is read back except
//! the NaN/Inf check of the input.
//!
//! Conventions (LAPACK's): `α = −sign(x₀)‖x‖`, so the diagonal of R may be negative; a
//! column of one element gets no reflector. Rows of R below its diagonal are exact zeros.

use std::sync::Arc;

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::linalg::{check_matrix, check_nonempty, gpu_stats, non_finite_error};
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

use super::{qr_blocked, QR_SHADER as SHADER};
use crate::host_qr::{self, householder};

/// Largest row or column count of the GPU reflector kernels: `house_left_dots` loops over
/// a whole column in one invocation (`house_make`
/// spreads its column over a workgroup), so this is the per-invocation loop budget.
pub(crate) const MAX_GPU_DIM: usize = crate::gpu::LOOP_BUDGET;

/// Which Q (and R) [`qr_with`] returns for an `(m, n)` input, `k = min(m, n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QrMode {
    /// `Q (m, k)` with orthonormal columns, `R (k, n)` upper triangular (the thin QR).
    #[default]
    Reduced,
    /// `Q (m, m)` orthogonal, `R (m, n)` upper triangular (zero rows below row k).
    Complete,
}

/// The reduced QR factorisation: `Q (m, k)` with orthonormal columns and an upper-triangular
/// `R (k, n)`, `k = min(m, n)`, with `A = QR`.
///
/// ```
/// use wgrad::{linalg, Device, Tensor};
/// # fn main() -> wgrad::Result<()> {
/// let a = Tensor::from_slice(&Device::cpu(), &[3.0f32, 1.0, 4.0, 2.0, 0.0, 5.0], &[3, 2])?;
/// let (q, r) = linalg::qr(&a)?;
/// assert_eq!((q.shape(), r.shape()), (&[3, 2][..], &[2, 2][..]));
/// assert!((r.to_vec::<f32>()?[0].abs() - 5.0).abs() < 1e-6); // ‖column 0‖
/// let back = q.matmul(&r)?.to_vec::<f32>()?;
/// assert!(back.iter().zip([3.0, 1.0, 4.0, 2.0, 0.0, 5.0]).all(|(x, y)| (x - y).abs() < 1e-5));
/// # Ok(()) }
/// ```
pub fn qr(a: &Tensor) -> Result<(Tensor, Tensor)> {
    qr_with(a, QrMode::Reduced)
}

/// [`qr`] with the choice of the reduced or complete factorisation.
pub fn qr_with(a: &Tensor, mode: QrMode) -> Result<(Tensor, Tensor)> {
    qr_with_options(
        a,
        &QrOptions {
            mode,
            ..Default::default()
        },
    )
}

/// Options of [`qr_with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QrOptions {
    /// The reduced or the complete factorisation.
    pub mode: QrMode,
    /// GPU device only: when the column count (and Q's, when complete) is at most this, the
    /// matrix is read back once and factored by the blocked host QR; above it, by the
    /// blocked device QR. `None`: 4096 on a software adapter (where the device is the
    /// host's own cores), 128 on a hardware GPU.
    pub host_max: Option<usize>,
}

/// [`qr`] with every option.
pub fn qr_with_options(a: &Tensor, opts: &QrOptions) -> Result<(Tensor, Tensor)> {
    let op = "qr";
    let mode = opts.mode;
    let (m, n) = check_matrix(op, a)?;
    check_nonempty(op, a)?;
    let complete = mode == QrMode::Complete;
    let (qc, rr) = if complete {
        (m, m)
    } else {
        (m.min(n), m.min(n))
    };
    match &a.device().inner {
        DeviceInner::Cpu => {
            let x = super::host_finite(op, a, m, n)?;
            let (q, r) = qr_reference(&x, m, n, complete);
            Ok((
                super::tensor_from_f64(a, &q, &[m, qc])?,
                super::tensor_from_f64(a, &r, &[rr, n])?,
            ))
        }
        DeviceInner::Gpu(ctx) => {
            // The blocked path has no loop over a whole column in one invocation (the
            // products split K themselves), so it takes any number of rows; the columns stay
            // capped by the NaN/Inf check, which walks a row per invocation.
            let nref = n.min(m - 1);
            let host_max = opts.host_max.unwrap_or_else(|| host_max(ctx));
            if n.max(qc) <= host_max && m * n.max(qc) <= HOST_MAX_ELEMENTS {
                // One read-back, checked for NaN/Inf on the host, then the blocked host QR.
                let x = a.to_vec_f64()?;
                let stats = super::host_stats(&x, m, n);
                if stats.non_finite > 0 {
                    return Err(non_finite_error(op, a.shape(), stats.non_finite));
                }
                let (q, r) = host_qr::qr_host(&x, m, n, qc, rr);
                return Ok((
                    super::tensor_from_f64(a, &q, &[m, qc])?,
                    super::tensor_from_f64(a, &r, &[rr, n])?,
                ));
            }
            let blocked = nref >= qr_blocked::BLOCKED_MIN || m > MAX_GPU_DIM;
            if n > MAX_GPU_DIM {
                return Err(too_large(op, a.shape()));
            }
            let Some((x, bytes)) = a.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            let stats = gpu_stats(ctx, op, x, m, n)?;
            if stats.non_finite > 0 {
                return Err(non_finite_error(op, a.shape(), stats.non_finite));
            }
            if blocked {
                let (q, r) = qr_blocked::qr_blocked(ctx, a, m, n, qc)?;
                let r = if rr < m { r.narrow(0, 0, rr)? } else { r };
                return Ok((q, r));
            }
            // Unblocked, one reflector at a time: for a few columns (nref < BLOCKED_MIN)
            // this beats the blocked path, whose every panel costs a device sync.
            let r = gpu_output(ctx, a.device(), op, &[m, n], DType::F32)?;
            let q = gpu_output(ctx, a.device(), op, &[m, qc], DType::F32)?;
            let (Some(rb), Some(qb)) = (r.gpu_arg(), q.gpu_arg()) else {
                unreachable!("GPU device holds GPU tensors")
            };
            ctx.copy(x, 0, rb.0, 0, bytes);
            let house = GpuHouse::new(ctx, nref, m, m.max(n));
            for j in 0..nref {
                house.make(rb, m, n, j, j)?;
                if j + 1 < n {
                    house.left(rb, m, n, j, j, j + 1)?;
                }
            }
            house.eye(qb, m, qc)?;
            for j in (0..nref).rev() {
                house.left(qb, m, qc, j, j, j)?;
            }
            let r = if rr < m { r.narrow(0, 0, rr)? } else { r };
            Ok((q, r))
        }
    }
}

/// Column counts (of R, and of Q when complete) up to this are factored on the host whole
/// (one read-back), by adapter. On a software adapter (lavapipe) the device is the host's
/// own cores, and the host QR (f64 products with AVX/FMA, no device round trip per panel)
/// won at every size measured, `wgrad bench --filter qr` (ms, host `qr` against
/// `qr_device`, one run at load 2): 128: 0.73 against 7.0, 256: 4.1 against 28, 512: 22
/// against 113, 1024: 146 against 586; 2048 (another run, load 4): 1,352 against 5,773.
/// Past [`HOST_MAX_ELEMENTS`] the device path takes it. On a hardware GPU the products are
/// the cheap part, so only small matrices stay on the host (as eigh's and eig's; not
/// measured there).
fn host_max(ctx: &GpuContext) -> usize {
    if ctx.info.device_type == wgpu::DeviceType::Cpu {
        4096
    } else {
        128
    }
}

/// The host path's size cap, in elements of the larger of A and Q: its f64 copies of `Aᵀ`
/// and `Qᵀ` are a few times this many bytes.
const HOST_MAX_ELEMENTS: usize = 1 << 23;

pub(crate) fn too_large(op: &'static str, shape: &[usize]) -> Error {
    Error::Invalid {
        op,
        detail: format!(
            "shape {shape:?}: the GPU reflector kernels support at most {MAX_GPU_DIM} rows and columns \
             (one invocation loops over a whole column, within the GPU loop budget)"
        ),
    }
}

/// Scratch of the GPU reflector kernels: `V (reflectors, len)`, `τ` and the dot products.
pub(crate) struct GpuHouse<'a> {
    ctx: &'a Arc<GpuContext>,
    v: crate::gpu::pool::GpuBuffer,
    tau: crate::gpu::pool::GpuBuffer,
    w: crate::gpu::pool::GpuBuffer,
    vbytes: u64,
    tbytes: u64,
    wbytes: u64,
    len: usize,
}

type Arg<'b> = (&'b wgpu::Buffer, u64);

impl<'a> GpuHouse<'a> {
    /// Room for `count` reflectors of length `len` and `width` dot products.
    pub(crate) fn new(ctx: &'a Arc<GpuContext>, count: usize, len: usize, width: usize) -> Self {
        let vbytes = (count.max(1) * len * 4) as u64;
        let tbytes = (count.max(1) * 4) as u64;
        let wbytes = (width * 4) as u64;
        GpuHouse {
            ctx,
            v: ctx.alloc(vbytes),
            tau: ctx.alloc(tbytes),
            w: ctx.alloc(wbytes),
            vbytes,
            tbytes,
            wbytes,
            len,
        }
    }

    fn params(&self, rows: usize, cols: usize, r0: usize, c0: usize, k: usize) -> [u32; 6] {
        [rows, cols, r0, c0, k, self.len].map(|x| x as u32)
    }

    fn args(&self) -> (Arg<'_>, Arg<'_>, Arg<'_>) {
        (
            (self.v.raw(), self.vbytes),
            (self.tau.raw(), self.tbytes),
            (self.w.raw(), self.wbytes),
        )
    }

    /// `M = I` for an `(rows, cols)` matrix.
    pub(crate) fn eye(&self, mat: Arg<'_>, rows: usize, cols: usize) -> Result<()> {
        let p = self.params(rows, cols, 0, 0, 0);
        let g = grid_1d(self.ctx, rows * cols);
        self.ctx.dispatch(&SHADER, "house_eye", &[], &p, &[mat], g)
    }

    /// Reflector `k` from column `k` of `mat`, rows `r0..rows`; writes α into `mat[r0, k]`
    /// and zeros below it.
    pub(crate) fn make(
        &self,
        mat: Arg<'_>,
        rows: usize,
        cols: usize,
        k: usize,
        r0: usize,
    ) -> Result<()> {
        let (v, t, _) = self.args();
        let p = self.params(rows, cols, r0, 0, k);
        self.ctx
            .dispatch(&SHADER, "house_make", &[], &p, &[mat, v, t], [1, 1, 1])
    }

    /// `mat[r0.., c0..] ← (I − τ_k v_k v_kᵀ) mat[r0.., c0..]`.
    pub(crate) fn left(
        &self,
        mat: Arg<'_>,
        rows: usize,
        cols: usize,
        k: usize,
        r0: usize,
        c0: usize,
    ) -> Result<()> {
        let p = self.params(rows, cols, r0, c0, k);
        let (lines, len) = (cols - c0, rows - r0); // a dot per column of the block
        self.apply(
            mat,
            &p,
            ("house_left_dots", "house_left_update"),
            lines,
            len,
        )
    }

    /// A reflector on `lines` lines of `len` elements: their dots with v, then the update.
    fn apply(
        &self,
        mat: Arg<'_>,
        p: &[u32],
        (dots, update): (&str, &str),
        lines: usize,
        len: usize,
    ) -> Result<()> {
        let (v, t, w) = self.args();
        let g = grid_1d(self.ctx, lines);
        self.ctx
            .dispatch(&SHADER, dots, &[], p, &[mat, v, w, t], g)?;
        let g = grid_1d(self.ctx, lines * len);
        self.ctx.dispatch(&SHADER, update, &[], p, &[mat, v, w], g)
    }
}

// ----- f64 reference -----

/// `a[r0.., c0..] ← (I − τvvᵀ) a[r0.., c0..]` on a row-major (rows, cols) matrix, `v` of
/// length `rows − r0`.
pub(crate) fn apply_left(a: &mut [f64], cols: usize, r0: usize, c0: usize, v: &[f64], tau: f64) {
    if tau == 0.0 {
        return;
    }
    let mut w = vec![0.0; cols];
    for (i, vi) in v.iter().enumerate() {
        let row = &a[(r0 + i) * cols..(r0 + i + 1) * cols];
        for c in c0..cols {
            w[c] += vi * row[c];
        }
    }
    for (i, vi) in v.iter().enumerate() {
        let row = &mut a[(r0 + i) * cols..(r0 + i + 1) * cols];
        for c in c0..cols {
            row[c] -= tau * vi * w[c];
        }
    }
}

/// `a[c0.., r0..] ← a[c0.., r0..] (I − τvvᵀ)`, `v` of length `cols − r0`.
pub(crate) fn apply_right(a: &mut [f64], cols: usize, r0: usize, c0: usize, v: &[f64], tau: f64) {
    if tau == 0.0 {
        return;
    }
    for row in a.chunks_exact_mut(cols).skip(c0) {
        let d: f64 = row[r0..].iter().zip(v).map(|(x, y)| x * y).sum();
        row[r0..]
            .iter_mut()
            .zip(v)
            .for_each(|(x, y)| *x -= tau * d * y);
    }
}

/// `qr_reference`: Householder QR of `a` (m, n) in f64. Returns `Q (m, qc)` and `R (qc, n)`,
/// `qc = m` when `complete`, else `min(m, n)`.
pub(crate) fn qr_reference(a: &[f64], m: usize, n: usize, complete: bool) -> (Vec<f64>, Vec<f64>) {
    let mut r = a.to_vec();
    let nref = n.min(m.saturating_sub(1));
    let mut refl = Vec::with_capacity(nref);
    for j in 0..nref {
        let x: Vec<f64> = (j..m).map(|i| r[i * n + j]).collect();
        let (v, tau, alpha) = householder(&x);
        if tau != 0.0 {
            r[j * n + j] = alpha;
            for i in j + 1..m {
                r[i * n + j] = 0.0;
            }
            apply_left(&mut r, n, j, j + 1, &v, tau);
        }
        refl.push((v, tau));
    }
    let qc = if complete { m } else { m.min(n) };
    let mut q = vec![0.0; m * qc];
    for i in 0..qc {
        q[i * qc + i] = 1.0;
    }
    for (j, (v, tau)) in refl.iter().enumerate().rev() {
        apply_left(&mut q, qc, j, j, v, *tau);
    }
    r.truncate(qc * n);
    (q, r)
}

#[cfg(test)]
mod tests {
    use super::qr_reference;
    use crate::host_qr::qr_host;

    /// The blocked host QR matches the unblocked reference to rounding (the same
    /// reflectors, the same signs), reduced and complete, tall, wide, square, and across
    /// several panels.
    #[test]
    fn host_blocked_qr_matches_the_reference() {
        let mut rng = crate::Rng::new(11);
        for &(m, n) in &[
            (1, 1),
            (5, 3),
            (3, 5),
            (70, 70),
            (100, 37),
            (37, 100),
            (130, 65),
        ] {
            let a: Vec<f64> = (0..m * n).map(|_| rng.normal()).collect();
            for complete in [false, true] {
                let k = m.min(n);
                let (qc, rr) = if complete { (m, m) } else { (k, k) };
                let (q, r) = qr_host(&a, m, n, qc, rr);
                let (q0, r0) = qr_reference(&a, m, n, complete);
                let err = |x: &[f64], y: &[f64]| {
                    x.iter()
                        .zip(y)
                        .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()))
                };
                assert_eq!((q.len(), r.len()), (q0.len(), r0.len()), "{m}x{n}");
                assert!(err(&q, &q0) < 1e-10, "Q {m}x{n}: {}", err(&q, &q0));
                assert!(err(&r, &r0) < 1e-10, "R {m}x{n}: {}", err(&r, &r0));
            }
        }
    }
}
