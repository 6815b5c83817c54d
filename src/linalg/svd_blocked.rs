//! Blocked SVD on the GPU (issue 16, part 3), MAGMA's two-stage structure:
//!
//! 1. dense → upper band of width `b` on the device. Per panel the host reads back the `b`
//!    columns of the trailing matrix, factors them in f64 with QR's panel code
//!    ([`factor_panel`], compact WY `Q = I − V T Vᵀ`) and the trailing columns take
//!    `C ← QᵀC` as two products; then the first `b` rows of the result go the same way
//!    transposed (an LQ: `P = I − V T Vᵀ` from the right) and the rows below take `D ← D P`.
//!    The R block and the L block beside it are the band's entries.
//! 2. band → bidiagonal (bulge chasing) and the bidiagonal SVD (implicit-shift QR) on the
//!    host in f64 ([`super::bidiag`]); U and V of the band matrix are built from the recorded
//!    reflectors and rotations by [`eigenvectors`], in cache-sized blocks on every core.
//! 3. back-transformation on the device: U (padded with zero rows) and V go up once and each
//!    panel's `Q` or `P`, last first, is applied with two products.
//!
//! A solve is O(n/b) read-backs and O(n/b) dispatches, each a product of useful size. The
//! last block (at most `2b` columns, or the whole matrix below the host cut-over) is read
//! back and reduced on the host; if it has more rows than columns a host QR panel reduces it
//! first, and that panel is applied to U on the device like the others.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::host_qr::factor_panel;
use crate::linalg::bidiag::{band_to_bidiagonal, bidiagonal_qr, dense_to_upper_band};
use crate::linalg::qr_blocked::{apply_block_reflector, rows_of};
use crate::linalg::reference::transpose;
use crate::linalg::tridiag::eigenvectors;
use crate::tensor::Tensor;

/// Panel width, the band's width. Measured at 1024×1024 on lavapipe (two shared cores under
/// a load of 5-6, one run each, so ±20%): b = 32: 4.5 s (stage 1 1.15 s, back-transformation
/// 1.5 s: thin products), b = 64: 3.5 s (0.7 s, 0.74 s; the chase 0.14 s, the vectors of
/// the band 1.7 s), b = 128: 4.3 s (the chase 0.37 s and the vectors 2.2 s grow with b).
/// The host vectors are the largest part: about 2·(6n³ + 4n³) f64 flops of rotations and
/// reflectors, as for eigh.
pub(crate) const BAND: usize = 64;

/// One panel's reflectors, acting on the rows `r0..` of what they are applied to: `Vᵀ` and
/// `TᵀVᵀ`, each `(w, rows − r0)`, and `T (w, w)`, so that `X[r0..] ← (I − V T Vᵀ) X[r0..]`.
struct Panel {
    r0: usize,
    vt: Tensor,
    t: Tensor,
    tvt: Tensor,
}

impl Panel {
    fn new(dev: &crate::Device, r0: usize, vt: &[f64], t: &[f64], w: usize) -> Result<Self> {
        let len = vt.len() / w;
        let vt = Tensor::from_f64(dev, vt, &[w, len])?;
        let t = Tensor::from_f64(dev, t, &[w, w])?;
        let tvt = t.matmul_tn(&vt)?;
        Ok(Panel { r0, vt, t, tvt })
    }
}

/// Thin SVD of the finite GPU matrix `a (m, n)`, `m >= n`: `U (m, n)`, σ descending (f64,
/// on the host) and `Vᵀ (n, n)`. Matrices with at most `host_max` columns skip stage 1.
/// `max_sweeps` caps the bidiagonal QR (see [`bidiagonal_qr`]).
pub(crate) fn svd_blocked(
    ctx: &Arc<GpuContext>,
    a: &Tensor,
    m: usize,
    n: usize,
    host_max: usize,
    max_sweeps: usize,
) -> Result<(Tensor, Vec<f64>, Tensor)> {
    let dev = a.device();
    let b = BAND;
    let mut band = vec![0.0; n * n];
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut cur = a.clone(); // the trailing matrix, (m − g, n − g)
    let mut g = 0;
    // Full panels while more than 2b columns remain: each LQ then has more columns than
    // reflectors.
    while n > host_max && n - g > 2 * b {
        let (mm, nn) = (m - g, n - g);
        let k = nn - b;
        // QR of the column panel: R on and above the diagonal of the band.
        let p = transpose(&cur.narrow(1, 0, b)?.to_vec_f64()?, mm, b);
        let hp = factor_panel(&p, 0, b, mm);
        for c in 0..b {
            for r in 0..=c {
                band[(g + r) * n + g + c] = hp.cols[c * mm + r];
            }
        }
        let panel = Panel::new(dev, g, &hp.vt, &hp.t, b)?;
        // C ← QᵀC = C − V Tᵀ (Vᵀ C).
        let c = cur.narrow(1, b, k)?;
        let w = panel.vt.matmul(&c)?;
        let c = c.sub(&panel.vt.matmul_tn(&panel.t.matmul_tn(&w)?)?)?;
        left.push(panel);
        // LQ of the first b rows of C: the L block beside R.
        let rp = rows_of(ctx, &c, 0, b, k)?.to_vec_f64()?;
        let hr = factor_panel(&rp, 0, b, k);
        for r in 0..b {
            for q in 0..=r {
                band[(g + r) * n + g + b + q] = hr.cols[r * k + q];
            }
        }
        let panel = Panel::new(dev, g + b, &hr.vt, &hr.t, b)?;
        // D ← D P = D − (D V) T Vᵀ, the rows of C below the panel.
        let d = rows_of(ctx, &c, b, mm - b, k)?;
        let y = d.matmul_nt(&panel.vt)?;
        cur = d.sub(&y.matmul(&panel.t)?.matmul(&panel.vt)?)?;
        right.push(panel);
        g += b;
    }
    // The rest: read back, a host QR panel if it has more rows than columns, then to band.
    let (mm, nn) = (m - g, n - g);
    let mut rest = cur.to_vec_f64()?;
    if mm > nn {
        let hp = factor_panel(&transpose(&rest, mm, nn), 0, nn, mm);
        rest = vec![0.0; nn * nn];
        for c in 0..nn {
            for r in 0..=c {
                rest[r * nn + c] = hp.cols[c * mm + r];
            }
        }
        left.push(Panel::new(dev, g, &hp.vt, &hp.t, nn)?);
    }
    // Without panels the whole matrix goes straight to bidiagonal form.
    let bw = if g == 0 { 1 } else { b };
    let mut refl = dense_to_upper_band(&mut rest, nn, bw, g);
    for r in 0..nn {
        band[(g + r) * n + g..(g + r + 1) * n].copy_from_slice(&rest[r * nn..(r + 1) * nn]);
    }
    let (mut d, mut e, chase) = band_to_bidiagonal(&mut band, n, bw);
    refl.left.extend(chase.left);
    refl.right.extend(chase.right);
    let rots = bidiagonal_qr(&mut d, &mut e, max_sweeps)?;
    let (ut, vt) = std::thread::scope(|s| {
        // The two builders share the cores between them.
        let u = s.spawn(|| eigenvectors(n, &refl.left, &rots.left));
        let v = eigenvectors(n, &refl.right, &rots.right);
        (u.join().expect("left vectors"), v)
    });
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].abs().total_cmp(&d[i].abs()));
    let values: Vec<f64> = order.iter().map(|&i| d[i].abs()).collect();
    // U (m, n): the band's left vectors as columns, zero rows below n; Vᵀ's rows signed.
    let mut u = vec![0.0; m * n];
    let mut vts = vec![0.0; n * n];
    for (col, &src) in order.iter().enumerate() {
        let sgn = if d[src] < 0.0 { -1.0 } else { 1.0 };
        for r in 0..n {
            u[r * n + col] = ut[src * n + r];
            vts[r * n + col] = sgn * vt[src * n + r];
        }
    }
    let u = Tensor::from_f64(dev, &u, &[m, n])?;
    for p in left.iter().rev() {
        apply_block_reflector(ctx, &u, p.r0, (m, n), &p.vt, &p.tvt)?;
    }
    let v = Tensor::from_f64(dev, &vts, &[n, n])?;
    for p in right.iter().rev() {
        apply_block_reflector(ctx, &v, p.r0, (n, n), &p.vt, &p.tvt)?;
    }
    Ok((u, values, v.transpose()?))
}
