//! Host f64 stages of the blocked symmetric eigensolver (issue 16, part 2): a symmetric band
//! matrix to tridiagonal form by Householder bulge chasing, the tridiagonal eigenproblem by
//! implicit QL, and the eigenvectors of the band matrix from the recorded transformations.
//!
//! Neither the chase nor QL needs the eigenvectors to choose its next step, so both only
//! record their reflectors and rotations; [`eigenvectors`] applies them afterwards to the
//! identity in column blocks that stay in cache, on every core. Applying each rotation to
//! an n×n matrix as it came (EISPACK's `tql2`) streams the whole matrix through memory once
//! per QL sweep, 2n sweeps in all.
//!
//! The SVD's host stages (`super::bidiag`) record the same [`Reflector`]s and [`Rotation`]s,
//! one list for each side, and build U and V of the band matrix with the same
//! [`eigenvectors`].

use crate::error::Result;
use crate::host_qr::householder;
use crate::linalg::reference::not_converged;

/// `H = I − τvvᵀ` acting on the indices `r..r + v.len()`.
pub(crate) struct Reflector {
    pub r: usize,
    pub tau: f64,
    pub v: Vec<f64>,
}

/// A plane rotation of the indices `i, i + 1` (QL's convention, see [`apply_rotation`]).
#[derive(Clone, Copy)]
pub(crate) struct Rotation {
    pub i: usize,
    pub c: f64,
    pub s: f64,
}

/// Reduces the symmetric band matrix `a` (dense row-major `(n, n)`, zero beyond `bw` off the
/// diagonal) to tridiagonal form `Q₂ᵀ A Q₂` in place, one column per sweep: a reflector of
/// length `bw` clears column `i` below its subdiagonal, and each next reflector clears the
/// first column of the bulge the previous one made, `bw` rows further down (the rest of the
/// bulge is cleared by the next sweep, as in LAPACK's `dsb2st`). Returns the diagonal, the
/// subdiagonal (`e[n − 1] = 0`) and the reflectors, in the order applied (`Q₂ = H₁H₂…`).
///
/// Each reflector touches only the rows and columns that can hold nonzeros: indices from the
/// column it clears to `bw` past its window (checked against the full update by a test).
/// With `bw = n − 1` this is the plain Householder tridiagonalisation.
pub(crate) fn band_to_tridiagonal(
    a: &mut [f64],
    n: usize,
    bw: usize,
) -> (Vec<f64>, Vec<f64>, Vec<Reflector>) {
    band_to_tridiagonal_in(a, n, bw, false)
}

fn band_to_tridiagonal_in(
    a: &mut [f64],
    n: usize,
    bw: usize,
    full_range: bool,
) -> (Vec<f64>, Vec<f64>, Vec<Reflector>) {
    let mut refl = Vec::new();
    if bw > 1 {
        for i in 0..n.saturating_sub(2) {
            let (mut c, mut r) = (i, i + 1);
            while r + 1 < n {
                let len = bw.min(n - r);
                let x: Vec<f64> = (r..r + len).map(|p| a[p * n + c]).collect();
                let (v, tau, alpha) = householder(&x);
                if tau != 0.0 {
                    let (lo, hi) = if full_range {
                        (0, n)
                    } else {
                        (c, (r + len + bw).min(n))
                    };
                    apply_two_sided(a, n, r, &v, tau, lo, hi);
                    // The cleared column, exactly (rounding leaves tiny values behind).
                    a[r * n + c] = alpha;
                    a[c * n + r] = alpha;
                    for p in r + 1..r + len {
                        a[p * n + c] = 0.0;
                        a[c * n + p] = 0.0;
                    }
                    refl.push(Reflector { r, tau, v });
                }
                // The bulge: column r now reaches `len + bw − 1` rows down; clear it below
                // row r + len, which stays inside the band.
                c = r;
                r += len;
            }
        }
    }
    let d = (0..n).map(|i| a[i * n + i]).collect();
    let e = (0..n)
        .map(|i| if i + 1 < n { a[(i + 1) * n + i] } else { 0.0 })
        .collect();
    (d, e, refl)
}

/// Reduces the dense symmetric `a (k, k)` to half-bandwidth `bw` in place, column by column
/// (unblocked, for the last block of the GPU's dense → band stage), and returns its
/// reflectors with their indices shifted by `offset` (its place in the whole matrix).
pub(crate) fn dense_to_band(a: &mut [f64], k: usize, bw: usize, offset: usize) -> Vec<Reflector> {
    let mut refl = Vec::new();
    for c in 0..k.saturating_sub(bw + 1) {
        let r = c + bw;
        let x: Vec<f64> = (r..k).map(|p| a[p * k + c]).collect();
        let (v, tau, alpha) = householder(&x);
        if tau == 0.0 {
            continue;
        }
        apply_two_sided(a, k, r, &v, tau, 0, k);
        a[r * k + c] = alpha;
        a[c * k + r] = alpha;
        for p in r + 1..k {
            a[p * k + c] = 0.0;
            a[c * k + p] = 0.0;
        }
        refl.push(Reflector {
            r: r + offset,
            tau,
            v,
        });
    }
    refl
}

/// `A ← H A H` for `H = I − τvvᵀ` on the indices `r..r + v.len()`, where every nonzero of
/// those rows (and columns) lies in the columns (rows) `lo..hi`.
fn apply_two_sided(a: &mut [f64], n: usize, r: usize, v: &[f64], tau: f64, lo: usize, hi: usize) {
    let mut s = vec![0.0; hi - lo];
    for (k, &vk) in v.iter().enumerate() {
        let row = &a[(r + k) * n + lo..(r + k) * n + hi];
        s.iter_mut().zip(row).for_each(|(s, &x)| *s += vk * x);
    }
    for (k, &vk) in v.iter().enumerate() {
        let row = &mut a[(r + k) * n + lo..(r + k) * n + hi];
        let f = tau * vk;
        row.iter_mut().zip(&s).for_each(|(x, &s)| *x -= f * s);
    }
    for p in lo..hi {
        let row = &mut a[p * n + r..p * n + r + v.len()];
        let t: f64 = row.iter().zip(v).map(|(x, v)| x * v).sum::<f64>() * tau;
        row.iter_mut().zip(v).for_each(|(x, &v)| *x -= t * v);
    }
}

/// Eigenvalues of the symmetric tridiagonal matrix (diagonal `d`, subdiagonal `e`,
/// `e[n − 1]` ignored) by implicit QL with Wilkinson shifts (`tqli`/EISPACK `tql2`), in f64.
/// `d` ends up holding the eigenvalues, unsorted; the rotations are returned in the order
/// applied, so that the eigenvectors are the rows of `Gₘᵀ…G₁ᵀ` (see [`eigenvectors`]).
pub(crate) fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) -> Result<Vec<Rotation>> {
    const MAX_ITER: usize = 60;
    let n = d.len();
    if n > 0 {
        e[n - 1] = 0.0;
    }
    let mut rots = Vec::new();
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > MAX_ITER {
                return Err(not_converged("eigh", MAX_ITER));
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut i = m;
            let mut underflow = false;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                rots.push(Rotation { i, c, s });
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(rots)
}

/// Rows `i, i + 1` of a block `(_, w)`: `zᵢ₊₁ ← s zᵢ + c zᵢ₊₁`, `zᵢ ← c zᵢ − s zᵢ₊₁`.
fn apply_rotation(z: &mut [f64], w: usize, g: Rotation) {
    let (top, bottom) = z[g.i * w..(g.i + 2) * w].split_at_mut(w);
    for (a, b) in top.iter_mut().zip(bottom) {
        let (x, y) = (*a, *b);
        *b = g.s * x + g.c * y;
        *a = g.c * x - g.s * y;
    }
}

/// The eigenvectors of the band matrix, as the rows of `Zᵀ = Gₘᵀ…G₁ᵀ Hₖ…H₁` (n, n): the
/// reflectors of [`band_to_tridiagonal`], then the rotations of [`tridiagonal_ql`], applied
/// to the identity. Columns of `Zᵀ` are independent, so blocks of 32 columns (an n×32 block
/// stays in cache) are shared out to the available threads; within a block a reflector
/// whose rows are still all zero there is skipped.
pub(crate) fn eigenvectors(n: usize, refl: &[Reflector], rots: &[Rotation]) -> Vec<f64> {
    const W: usize = 128;
    let blocks = n.div_ceil(W);
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(blocks)
        .max(1);
    let mut zt = vec![0.0; n * n];
    let results: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    (t..blocks)
                        .step_by(threads)
                        .map(|blk| {
                            (
                                blk,
                                column_block(n, blk * W, W.min(n - blk * W), refl, rots),
                            )
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("eigenvector thread"))
            .collect()
    });
    for (blk, z) in results.into_iter().flatten() {
        let (k0, w) = (blk * W, W.min(n - blk * W));
        for r in 0..n {
            zt[r * n + k0..r * n + k0 + w].copy_from_slice(&z[r * w..(r + 1) * w]);
        }
    }
    zt
}

/// Columns `k0..k0 + w` of `Zᵀ`, as a row-major `(n, w)` block.
fn column_block(n: usize, k0: usize, w: usize, refl: &[Reflector], rots: &[Rotation]) -> Vec<f64> {
    let mut z = vec![0.0; n * w];
    for c in 0..w {
        z[(k0 + c) * w + c] = 1.0;
    }
    // Rows that may be nonzero: a reflector mixes its window into this range.
    let (mut lo, mut hi) = (k0, k0 + w);
    let mut s = vec![0.0; w];
    for h in refl {
        let end = h.r + h.v.len();
        if end <= lo || h.r >= hi {
            continue;
        }
        lo = lo.min(h.r);
        hi = hi.max(end);
        s.fill(0.0);
        for (k, &vk) in h.v.iter().enumerate() {
            let row = &z[(h.r + k) * w..(h.r + k + 1) * w];
            s.iter_mut().zip(row).for_each(|(s, &x)| *s += vk * x);
        }
        for (k, &vk) in h.v.iter().enumerate() {
            let row = &mut z[(h.r + k) * w..(h.r + k + 1) * w];
            let f = h.tau * vk;
            row.iter_mut().zip(&s).for_each(|(x, &s)| *x -= f * s);
        }
    }
    for &g in rots {
        apply_rotation(&mut z, w, g);
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_band(n: usize, bw: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::Rng::new(seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n.min(i + bw + 1) {
                let x = rng.normal();
                a[i * n + j] = x;
                a[j * n + i] = x;
            }
        }
        a
    }

    /// Touching only the assumed nonzero range gives the same result as the full update, so
    /// the fill never leaves it.
    #[test]
    fn band_chase_range_holds_every_nonzero() {
        for (n, bw) in [(9, 2), (20, 3), (37, 5), (64, 8), (50, 49), (33, 16)] {
            let a = random_band(n, bw, n as u64);
            let (mut x, mut y) = (a.clone(), a.clone());
            let (d1, e1, _) = band_to_tridiagonal_in(&mut x, n, bw, false);
            let (d2, e2, _) = band_to_tridiagonal_in(&mut y, n, bw, true);
            for (p, q) in d1.iter().zip(&d2).chain(e1.iter().zip(&e2)) {
                assert!((p - q).abs() < 1e-12, "n {n} bw {bw}: {p} vs {q}");
            }
            // The result is tridiagonal.
            for i in 0..n {
                for j in 0..n {
                    if i.abs_diff(j) > 1 {
                        assert!(x[i * n + j].abs() < 1e-12, "n {n} bw {bw}: ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Z Λ Zᵀ rebuilds the band matrix, and Z is orthogonal.
    #[test]
    fn band_eigenvectors_rebuild_the_matrix() {
        for (n, bw) in [(1, 1), (2, 1), (7, 3), (40, 6), (70, 13)] {
            let a = random_band(n, bw, 7 + n as u64);
            let mut b = a.clone();
            // The last rows go through dense_to_band first, as the GPU stage's last block.
            let k = (n / 2).max(1);
            let off = n - k;
            let mut tail: Vec<f64> = (0..k * k)
                .map(|i| b[(off + i / k) * n + off + i % k])
                .collect();
            let mut refl = dense_to_band(&mut tail, k, bw, off);
            for i in 0..k * k {
                b[(off + i / k) * n + off + i % k] = tail[i];
            }
            let (mut d, mut e, chase) = band_to_tridiagonal(&mut b, n, bw);
            refl.extend(chase);
            let rots = tridiagonal_ql(&mut d, &mut e).unwrap();
            let zt = eigenvectors(n, &refl, &rots);
            for i in 0..n {
                for j in 0..n {
                    let r: f64 = (0..n).map(|k| zt[k * n + i] * d[k] * zt[k * n + j]).sum();
                    assert!((r - a[i * n + j]).abs() < 1e-10, "n {n}: ({i}, {j})");
                    let o: f64 = (0..n).map(|k| zt[i * n + k] * zt[j * n + k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((o - want).abs() < 1e-12);
                }
            }
        }
    }
}
