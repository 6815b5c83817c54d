//! Blocked Hessenberg reduction on the GPU (issue 16, part 4), in two stages like the
//! blocked `eigh`:
//!
//! 1. dense → block Hessenberg (lower bandwidth `b`) on the device, panel by panel. The
//!    matrix lives transposed, `Aᵀ`, and only its rows `g..` (the columns of A not yet
//!    final) are kept, so a panel of `b` columns of A is `b` contiguous rows: one copy and
//!    one read-back. The host factors the panel below its `b`-block subdiagonal in f64 with
//!    QR's panel code ([`factor_panel`], compact WY, `Q = I − V T Vᵀ`); those `b` columns of
//!    A are then final. The rest, `B = Aᵀ[r0..]`, takes `A ← Qᵀ A Q` (from the left on A's
//!    trailing rows, from the right on every row) as three products, the update expanded as
//!    in LAPACK's `dsytrd` (see the loop). V is zero-padded over the columns of A before
//!    `r0`, whose rows below `r0` are zero: exact, for a product somewhat wider than needed.
//! 2. block Hessenberg → Hessenberg on the host in f64 ([`super::hessenberg_chase`]): the
//!    last columns (fewer than `2b + 1`) to the band, then bulge chasing, reflectors recorded.
//!
//! LAPACK's one-stage `dgehrd` (its `dlahr2` panel) needs `A·v` of the whole trailing matrix
//! for every column of a panel: a device round trip per column, n in all. Here a reduction
//! is O(n/b) read-backs and about 10 dispatches per panel (62 at n = 512). The price is the
//! chase, about 2n³ host flops (see that module), on top of about 4n³ of device products.
//!
//! The eigenvectors come back the same way: the host applies the chase's reflectors to the
//! eigenvectors of H (only to the columns of real eigenvalues, the others are zero), then
//! each panel's `Q`, last first: on the host too when at most half the columns are nonzero
//! (a random matrix has about √(2n/π) real eigenvalues), else with two device products.
//!
//! Where the time goes at n = 512 on lavapipe (two cores shared with other builds, load
//! 5–7): device stage 100–170 ms, last read-back 20–25 ms, host chase 100–110 ms (2,351
//! reflectors); then Francis QR 300–500 ms and inverse iteration 11–25 ms (shared with the
//! reference); back-transformation 8–22 ms. The host's direct reduction of the same matrix
//! (`reduce_on_host`) takes 57–118 ms: on a software adapter the device is the same cores,
//! so `eig` keeps the host reduction up to 1024 there (see `eig.rs`).

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::host_qr::factor_panel;
use crate::linalg::hessenberg_chase::{apply_to_columns, band_to_hessenberg, tail_to_band};
use crate::linalg::hessenberg_chase::{Reflector, WyBlock};
use crate::linalg::qr_blocked::{buf, rows_of};
use crate::ops::matmul::{Epilogue, MatmulVariant};
use crate::tensor::Tensor;

/// Panel width, the bandwidth left for the host chase. Measured on lavapipe at 512 (two
/// shared, loaded cores): b = 32: 16 panels, 143 dispatches, the reduction 430–470 ms;
/// b = 64: 7 panels, 80 dispatches, 270–400 ms (wider products run faster, and there are
/// half the device syncs; the chase's cost barely depends on b).
pub(crate) const BLOCK: usize = 64;

/// One panel's reflectors, acting on the indices `r0..n`: on the host `Vᵀ` and `T`, on the
/// device `Vᵀ` and `−TᵀVᵀ`, each `(w, n − r0)`.
struct Panel {
    host: WyBlock,
    vt: Tensor,
    ttvt_neg: Tensor,
}

/// A Hessenberg reduction `A = Q₁ Q₂ H Q₂ᵀ Q₁ᵀ`: H on the host (row-major, f64), `Q₁` as the
/// device panels, `Q₂` as the host reflectors.
pub(crate) struct Reduction {
    pub h: Vec<f64>,
    panels: Vec<Panel>,
    host: Vec<Reflector>,
}

/// `op(a)·op(b) + residual` in one product (the matmul epilogue adds it as it stores).
fn product_plus(a: &Tensor, b: &Tensor, t: (bool, bool), residual: &Tensor) -> Result<Tensor> {
    let epi = Epilogue {
        residual: Some(residual),
        ..Epilogue::default()
    };
    a.matmul_epilogue(b, t, MatmulVariant::Auto, epi)
}

/// Reduces the host copy `h (n, n)` (row-major) to Hessenberg form on the host: the chase
/// with `b = n − 1` is the plain Householder reduction, one reflector per column, Q not
/// formed (the reflectors go to the eigenvectors of real eigenvalues only).
pub(crate) fn reduce_on_host(mut h: Vec<f64>, n: usize) -> Reduction {
    let host = band_to_hessenberg(&mut h, n, n.saturating_sub(1).max(1));
    Reduction {
        h,
        panels: Vec::new(),
        host,
    }
}

/// Reduces the `(n, n)` GPU matrix `a` (finite, checked by the caller) to Hessenberg form:
/// panels on the device while more than `2b + 1` columns are left, then the host.
pub(crate) fn reduce(ctx: &Arc<GpuContext>, a: &Tensor, n: usize) -> Result<Reduction> {
    let dev = a.device();
    let bw = BLOCK;
    let mut h = vec![0.0; n * n];
    let mut panels = Vec::new();
    let mut g = 0;
    // Rows g.. of Aᵀ: the columns of A that are not final yet, `(n − g, n)`.
    let mut cur = a.transpose()?;
    while n - g > 2 * bw {
        let w = bw;
        let r0 = g + w;
        let k = n - r0;
        let p = rows_of(ctx, &cur, 0, w, n)?.to_vec_f64()?;
        let hp = factor_panel(&p, r0, w, n);
        for c in 0..w {
            for i in 0..n {
                h[i * n + g + c] = hp.cols[c * n + i];
            }
        }
        let host = WyBlock::new(r0, n, &hp.vt, hp.t);
        let t_neg: Vec<f64> = host.t.iter().map(|x| -x).collect();
        let v: Vec<f64> = (0..k * w).map(|i| host.vt[(i % w) * k + i / w]).collect();
        let vt_pad = Tensor::from_f64(dev, &hp.vt, &[w, n])?;
        let vt = Tensor::from_f64(dev, &host.vt, &[w, k])?;
        let v = Tensor::from_f64(dev, &v, &[k, w])?;
        let t_neg = Tensor::from_f64(dev, &t_neg, &[w, w])?;
        // With B = Aᵀ[r0..] (k, n), Vp = V zero-padded to n rows and Q = I − V T Vᵀ, the
        // update B ← Qᵀ B Q' (Q' the padded Q) expands to
        //   B − Y T Vpᵀ − V Tᵀ (Z − M T Vpᵀ),  Y = B Vp, Z = Vᵀ B, M = Vᵀ Y,
        // so three products of size carry it: Y, Z and [Y V]·[−T Vpᵀ; −Tᵀ(Z − M T Vpᵀ)],
        // the last adding B in its epilogue.
        let b = rows_of(ctx, &cur, w, k, n)?;
        let y = b.matmul_nt(&vt_pad)?; // (k, w)
        let z = vt.matmul(&b)?; // (w, n)
        let m = vt.matmul(&y)?; // (w, w)
        let tvp_neg = t_neg.matmul(&vt_pad)?; // −T Vpᵀ (w, n)
        let zc = product_plus(&m, &tvp_neg, (false, false), &z)?; // Z − M T Vpᵀ
        let w2_neg = t_neg.matmul_tn(&zc)?; // −Tᵀ(Z − M T Vpᵀ)
        let left = Tensor::concat(&[&y, &v], 1)?; // (k, 2w)
        let right = Tensor::concat(&[&tvp_neg, &w2_neg], 0)?; // (2w, n)
        cur = product_plus(&left, &right, (false, false), &b)?;
        let ttvt_neg = t_neg.matmul_tn(&vt)?;
        panels.push(Panel { host, vt, ttvt_neg });
        g = r0;
    }
    let rest = cur.to_vec_f64()?;
    for c in 0..n - g {
        for i in 0..n {
            h[i * n + g + c] = rest[c * n + i];
        }
    }
    if panels.is_empty() {
        return Ok(reduce_on_host(h, n));
    }
    let mut host = tail_to_band(&mut h, n, g, bw);
    host.extend(band_to_hessenberg(&mut h, n, bw));
    Ok(Reduction { h, panels, host })
}

impl Reduction {
    /// `Q₁ Q₂ Y` for the row-major host `y (n, n)` whose nonzero columns are `cols`, as a GPU
    /// tensor on `like`'s device. `Q₂` is applied on the host (only to `cols`); `Q₁` too when
    /// at most half the columns are nonzero (for a random matrix, the real eigenvalues are
    /// about √(2n/π) of n), else on the device with two products per panel.
    pub(crate) fn back_transform(
        &self,
        ctx: &Arc<GpuContext>,
        like: &Tensor,
        mut y: Vec<f64>,
        n: usize,
        cols: &[usize],
    ) -> Result<Tensor> {
        let on_host = 2 * cols.len() <= n;
        let blocks: Vec<&WyBlock> = if on_host {
            self.panels.iter().map(|p| &p.host).collect()
        } else {
            Vec::new()
        };
        apply_to_columns(&mut y, n, &self.host, &blocks, cols);
        let x = Tensor::from_f64(like.device(), &y, &[n, n])?;
        if on_host {
            return Ok(x);
        }
        for p in self.panels.iter().rev() {
            // X[r0..] ← (I − V T Vᵀ) X[r0..] = X[r0..] + (−TᵀVᵀ)ᵀ (Vᵀ X[r0..]).
            let r0 = p.host.r0;
            let k = n - r0;
            let sub = rows_of(ctx, &x, r0, k, n)?;
            let new = product_plus(&p.ttvt_neg, &p.vt.matmul(&sub)?, (true, false), &sub)?;
            let row = (n * 4) as u64;
            ctx.copy(buf(&new), 0, buf(&x), r0 as u64 * row, k as u64 * row);
        }
        Ok(x)
    }
}
