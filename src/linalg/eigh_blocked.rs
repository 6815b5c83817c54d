//! Blocked symmetric eigensolver on the GPU (issue 16, part 2), in three stages:
//!
//! 1. dense → band of half-width `b` on the device. Per panel of `w ≤ b` columns the host
//!    reads back the panel's rows, factors the block below the diagonal block in f64 with
//!    QR's panel code ([`factor_panel`], compact-WY `Q = I − V T Vᵀ`) and keeps the band
//!    entries; the trailing matrix takes the two-sided update `A ← QᵀAQ` as products
//!    (LAPACK's `dsytrd`/`dsyr2k` form): `Yᵀ = TᵀVᵀA`, `Zᵀ = Yᵀ − ½(TᵀVᵀY)ᵀVᵀ`,
//!    `A ← A − [V Z][Z V]ᵀ`.
//! 2. band → tridiagonal and the tridiagonal eigenproblem on the host in f64
//!    ([`super::tridiag`]: bulge chasing, implicit QL, eigenvectors of the band matrix).
//! 3. back-transformation on the device: the band eigenvectors go up once and each panel's
//!    `Q`, last first, is applied with two products.
//!
//! So a solve is O(n/b) read-backs and O(n/b) dispatches, each a product of useful size
//! (the last block, of order at most 2b, is reduced on the host).

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::host_qr::factor_panel;
use crate::linalg::qr_blocked::{apply_block_reflector, rows_of};
use crate::linalg::tridiag::{band_to_tridiagonal, dense_to_band, eigenvectors, tridiagonal_ql};
use crate::tensor::Tensor;
use crate::BinaryOp;

/// Panel width, the band's half-width: QR's measured best panel (the device products want
/// wide panels; the chase on the host costs O(n²b)). Where the time goes at n = 1024 on
/// lavapipe (two shared, loaded cores, one run): stage 1 0.5 s, the chase 0.36 s, QL 0.11 s,
/// the band eigenvectors 0.85–1.4 s (reflectors 2n³ and rotations about 6n³ flops, host f64
/// on both cores), back-transformation 0.2 s: 1.7–2.9 s in all (NumPy's eigh, f32: 0.74 s).
pub(crate) const BAND: usize = 64;

/// One panel's reflectors, acting on the rows `r0..n`: `Vᵀ` and `TᵀVᵀ`, each `(w, n − r0)`.
struct Panel {
    r0: usize,
    vt: Tensor,
    tvt: Tensor,
}

/// Eigenvalues (ascending) and eigenvectors (the columns of the `(n, n)` result) of the
/// symmetric GPU matrix `a` (finite, checked by the caller). Matrices of order at most
/// `host_max` skip stage 1: read back whole, they go to the host chase as one band.
pub(crate) fn eigh_blocked(
    ctx: &Arc<GpuContext>,
    a: &Tensor,
    n: usize,
    host_max: usize,
) -> Result<(Vec<f64>, Tensor)> {
    let dev = a.device();
    // (A + Aᵀ)/2: the products below take A as exactly symmetric.
    let mut cur = a
        .add(&a.transpose()?)?
        .binary_scalar(BinaryOp::Mul, 0.5, false)?;
    let mut band = vec![0.0; n * n];
    let mut panels = Vec::new();
    let mut g = 0;
    // `cur` is the trailing matrix, of order k0 = n − g.
    // Full panels only: a narrower one would mix rows of the last one's R (outside the band
    // kept so far). The last block, of order at most 2b, is reduced to the band on the host.
    while n > host_max && n - g > 2 * BAND {
        let k0 = n - g;
        let w = BAND;
        let k = k0 - w;
        let p = rows_of(ctx, &cur, 0, w, k0)?.to_vec_f64()?;
        let hp = factor_panel(&p, w, w, k0);
        // Band entries: the diagonal block (symmetrised) and R below it.
        for r in 0..w {
            for c in 0..w {
                band[(g + r) * n + g + c] = 0.5 * (p[r * k0 + c] + p[c * k0 + r]);
            }
            for rr in 0..=r {
                let x = hp.cols[r * k0 + w + rr];
                band[(g + w + rr) * n + g + r] = x;
                band[(g + r) * n + g + w + rr] = x;
            }
        }
        // Vᵀ, ½Vᵀ and T restricted to the trailing rows (V is zero above them).
        let vt_host: Vec<f64> = (0..w)
            .flat_map(|c| hp.vt[c * k0 + w..(c + 1) * k0].iter().copied())
            .collect();
        let half: Vec<f64> = vt_host.iter().map(|x| 0.5 * x).collect();
        let vt = Tensor::from_f64(dev, &vt_host, &[w, k])?;
        let vt_half = Tensor::from_f64(dev, &half, &[w, k])?;
        let t = Tensor::from_f64(dev, &hp.t, &[w, w])?;
        let a22 = cur.narrow(0, w, k)?.narrow(1, w, k)?;
        let tvt = t.matmul_tn(&vt)?; // TᵀVᵀ
        let yt = tvt.matmul(&a22)?; // Yᵀ = TᵀVᵀA, Y = AVT
        let m = tvt.matmul_nt(&yt)?; // TᵀVᵀY
        let zt = yt.sub(&m.matmul_tn(&vt_half)?)?; // Zᵀ = Yᵀ − ½MᵀVᵀ
        let left = Tensor::concat(&[&vt, &zt], 0)?;
        let right = Tensor::concat(&[&zt, &vt], 0)?;
        cur = a22.sub(&left.matmul_tn(&right)?)?; // A − VZᵀ − ZVᵀ
        panels.push(Panel { r0: g + w, vt, tvt });
        g += w;
    }
    // The rest (all of A for small orders) is read back whole.
    let k0 = n - g;
    let mut rest = cur.to_vec_f64()?;
    for r in 0..k0 {
        for c in 0..r {
            let s = 0.5 * (rest[r * k0 + c] + rest[c * k0 + r]);
            rest[r * k0 + c] = s;
            rest[c * k0 + r] = s;
        }
    }
    // Without panels the whole matrix is one band (the chase is then plain Householder
    // tridiagonalisation).
    let (bw, mut refl) = if panels.is_empty() {
        (n.saturating_sub(1), Vec::new())
    } else {
        (BAND, dense_to_band(&mut rest, k0, BAND, g))
    };
    for r in 0..k0 {
        band[(g + r) * n + g..(g + r) * n + n].copy_from_slice(&rest[r * k0..(r + 1) * k0]);
    }
    let (mut d, mut e, chase) = band_to_tridiagonal(&mut band, n, bw.max(1));
    refl.extend(chase);
    let rots = tridiagonal_ql(&mut d, &mut e)?;
    let zt = eigenvectors(n, &refl, &rots);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values: Vec<f64> = order.iter().map(|&i| d[i]).collect();
    let mut z = vec![0.0; n * n];
    for (col, &src) in order.iter().enumerate() {
        for r in 0..n {
            z[r * n + col] = zt[src * n + r];
        }
    }
    let x = Tensor::from_f64(dev, &z, &[n, n])?;
    for p in panels.iter().rev() {
        apply_block_reflector(ctx, &x, p.r0, (n, n), &p.vt, &p.tvt)?;
    }
    Ok((values, x))
}
