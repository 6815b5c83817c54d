//! Blocked Householder QR on the GPU (issue 16, part 1), in compact-WY form.
//!
//! The matrix lives on the device transposed, `Aᵀ (n, m)`, so that a panel of `b` columns of
//! A, and the trailing columns after it, are contiguous rows: one buffer copy each, no
//! strided access. Per panel of columns `j..j+jb`:
//! - the panel is read back and factored on the host in f64 with the reference's reflectors
//!   ([`householder`](crate::host_qr::householder), the same sign convention:
//!   `α = −sign(x₀)‖x‖`), then written back;
//! - the host forms `T` (upper triangular, LAPACK's `dlarft`, forward) with
//!   `H₁H₂…H_jb = I − V T Vᵀ`, and uploads `Vᵀ`, `(V T)ᵀ` and `T Vᵀ` (each `(jb, m)`, zero
//!   in the columns before `j`, so the rows above the panel are left exactly as they are);
//! - the trailing columns `C = Aᵀ[j+jb.., :]` take `C ← C − (C (V T)) Vᵀ`: two products on
//!   the device with the ordinary matmul kernels and a subtraction.
//!
//! Q is accumulated backwards, also transposed: `Qᵀ (qc, m)` starts as the identity and each
//! block, last first, updates only the rows `j..` of `Qᵀ` (the columns of Q it can change):
//! `Qᵀ[j..] ← Qᵀ[j..] − (Qᵀ[j..] (V Tᵀ)) Vᵀ`. So a factorisation is O(n/b) read-backs and
//! dispatches, every one of them a product of useful size.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::host_qr::factor_panel;
use crate::linalg::QR_SHADER as SHADER;
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

/// Panel width. Measured on lavapipe, `wgrad bench --filter qr`, GPU ms at 256 / 512 / 1024
/// (two shared cores, noisy): b = 32: 35 / 182 / 803, b = 64: 24 / 94 / 455, b = 128: 28 /
/// 112 / 2035. Thinner panels mean more device syncs (one read-back per panel) and products
/// too thin to fill the matmul tiles; wider ones more serial host work per panel
/// (O(m·b²)) and a T that costs more than it saves.
pub(crate) const BLOCK: usize = 64;

/// Below this many reflectors the unblocked kernels keep the work: the blocked path wins
/// wherever measured (16×16: 0.66 ms against 6.5 ms unblocked, 32×32: 0.75 against 8.5), but
/// for a few columns both are a handful of dispatches and the unblocked one needs no
/// read-back (no device sync) at all. It also keeps those kernels, which the Hessenberg
/// reduction of `eig` shares, exercised by the small-shape QR tests.
pub(crate) const BLOCKED_MIN: usize = 8;

/// One factored panel: the first column `j`, its width, and on the device `Vᵀ`, `T Vᵀ`.
struct Panel {
    j: usize,
    vt: Tensor,
    tvt: Tensor,
}

/// Blocked QR of the GPU matrix `a (m, n)` (finite, checked by the caller): `Q (m, qc)` and
/// the full `R (m, n)` (the caller keeps its first rows).
pub(crate) fn qr_blocked(
    ctx: &Arc<GpuContext>,
    a: &Tensor,
    m: usize,
    n: usize,
    qc: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "qr";
    let dev = a.device();
    let at = a.transpose()?; // (n, m), updated in place below
    let nref = n.min(m - 1);
    let row = (m * 4) as u64;
    let mut panels = Vec::with_capacity(nref.div_ceil(BLOCK));
    for j in (0..nref).step_by(BLOCK) {
        let jb = BLOCK.min(nref - j);
        let p = rows_of(ctx, &at, j, jb, m)?.to_vec_f64()?;
        let hp = factor_panel(&p, j, jb, m);
        let cols = Tensor::from_f64(dev, &hp.cols, &[jb, m])?;
        ctx.copy(buf(&cols), 0, buf(&at), j as u64 * row, jb as u64 * row);
        let vt = Tensor::from_f64(dev, &hp.vt, &[jb, m])?;
        // (V T)ᵀ = Tᵀ Vᵀ and T Vᵀ: (jb, jb)·(jb, m) products, on the device rather than
        // O(jb²·m) serial work on the host.
        let t = Tensor::from_f64(dev, &hp.t, &[jb, jb])?;
        update_rows(ctx, &at, j + jb, n, m, &t.matmul_tn(&vt)?, &vt)?;
        let tvt = t.matmul(&vt)?;
        panels.push(Panel { j, vt, tvt });
    }
    let qt = gpu_output(ctx, dev, op, &[qc, m], DType::F32)?;
    let params = [qc as u32, m as u32, 0, 0, 0, 0];
    ctx.dispatch(
        &SHADER,
        "house_eye",
        &[],
        &params,
        &[(buf(&qt), (qc * m * 4) as u64)],
        grid_1d(ctx, qc * m),
    )?;
    for p in panels.iter().rev() {
        update_rows(ctx, &qt, p.j, qc, m, &p.tvt, &p.vt)?;
    }
    Ok((qt.transpose()?, at.transpose()?))
}

pub(crate) fn buf(t: &Tensor) -> &wgpu::Buffer {
    t.gpu_arg().expect("GPU device holds GPU tensors").0
}

/// Rows `r0..r0+len` of the GPU matrix `mat (_, width)` as a new `(len, width)` tensor.
pub(crate) fn rows_of(
    ctx: &Arc<GpuContext>,
    mat: &Tensor,
    r0: usize,
    len: usize,
    width: usize,
) -> Result<Tensor> {
    let out = gpu_output(ctx, mat.device(), "qr", &[len, width], DType::F32)?;
    let row = (width * 4) as u64;
    ctx.copy(buf(mat), r0 as u64 * row, buf(&out), 0, len as u64 * row);
    Ok(out)
}

/// `X[r0..rows] ← (I − V T Vᵀ) X[r0..rows]` on the GPU matrix `x (rows, cols)`, for a block
/// reflector acting on rows `r0..` given as `Vᵀ` and `TᵀVᵀ` (each `(w, rows − r0)`):
/// `W = Vᵀ X[r0..]`, then `X[r0..] −= (TᵀVᵀ)ᵀ W`, written back in place. The
/// back-transformation step of the blocked eigh and SVD.
pub(crate) fn apply_block_reflector(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    r0: usize,
    (rows, cols): (usize, usize),
    vt: &Tensor,
    tvt: &Tensor,
) -> Result<()> {
    let k = rows - r0;
    let sub = rows_of(ctx, x, r0, k, cols)?;
    let w = vt.matmul(&sub)?;
    let new = sub.sub(&tvt.matmul_tn(&w)?)?;
    let row = (cols * 4) as u64;
    ctx.copy(buf(&new), 0, buf(x), r0 as u64 * row, k as u64 * row);
    Ok(())
}

/// `mat[r0..rows] ← mat[r0..rows] − (mat[r0..rows] leftᵀ) vt` on the GPU matrix
/// `mat (rows, m)`: two products and a subtraction, written back in place.
fn update_rows(
    ctx: &Arc<GpuContext>,
    mat: &Tensor,
    r0: usize,
    rows: usize,
    m: usize,
    left: &Tensor,
    vt: &Tensor,
) -> Result<()> {
    if r0 >= rows {
        return Ok(());
    }
    let c = rows_of(ctx, mat, r0, rows - r0, m)?;
    let w = c.matmul_nt(left)?;
    let new = c.sub(&w.matmul(vt)?)?;
    let row = (m * 4) as u64;
    ctx.copy(
        buf(&new),
        0,
        buf(mat),
        r0 as u64 * row,
        (rows - r0) as u64 * row,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compact-WY block equals the product of its reflectors, and the factored panel
    /// equals the reference's columns (host only, f64).
    #[test]
    fn compact_wy_is_the_product_of_the_reflectors() {
        let (m, j, jb) = (11, 2, 5);
        let mut rng = crate::Rng::new(3);
        let p: Vec<f64> = (0..jb * m).map(|_| rng.normal()).collect();
        let hp = factor_panel(&p, j, jb, m);
        // (V T)ᵀ = Tᵀ Vᵀ and T Vᵀ, as the device forms them.
        let (mut vt_t, mut t_vt) = (vec![0.0; jb * m], vec![0.0; jb * m]);
        for c in 0..jb {
            for r in 0..jb {
                for l in 0..m {
                    vt_t[c * m + l] += hp.t[r * jb + c] * hp.vt[r * m + l];
                    t_vt[c * m + l] += hp.t[c * jb + r] * hp.vt[r * m + l];
                }
            }
        }
        // H₁…H_jb applied to e_l column by column, from the reflectors in hp.vt.
        for l in 0..m {
            let mut x = vec![0.0; m];
            x[l] = 1.0;
            for c in (0..jb).rev() {
                let v = &hp.vt[c * m..(c + 1) * m];
                let vv: f64 = v.iter().map(|a| a * a).sum();
                if vv == 0.0 {
                    continue;
                }
                let d: f64 = v.iter().zip(&x).map(|(a, b)| a * b).sum();
                x.iter_mut()
                    .zip(v)
                    .for_each(|(a, b)| *a -= 2.0 * d / vv * b);
            }
            // (I − V T Vᵀ) e_l = e_l − (V T)[:, ·] · Vᵀ[·, l]... column l: e_l − V T (Vᵀ e_l).
            for i in 0..m {
                let mut y = if i == l { 1.0 } else { 0.0 };
                for c in 0..jb {
                    y -= vt_t[c * m + i] * hp.vt[c * m + l];
                }
                assert!((x[i] - y).abs() < 1e-12, "({i}, {l}): {} vs {y}", x[i]);
            }
        }
        // T Vᵀ is (V Tᵀ)ᵀ: the transposed product, the same block transposed.
        for i in 0..m {
            for l in 0..m {
                let a: f64 = (0..jb).map(|c| vt_t[c * m + i] * hp.vt[c * m + l]).sum();
                let b: f64 = (0..jb).map(|c| t_vt[c * m + l] * hp.vt[c * m + i]).sum();
                assert!((a - b).abs() < 1e-12);
            }
        }
        // Below-diagonal entries of the factored columns are exact zeros.
        for c in 0..jb {
            assert!(hp.cols[c * m + j + c + 1..(c + 1) * m]
                .iter()
                .all(|&x| x == 0.0));
        }
    }
}
