//! Host f64 stage of the blocked Hessenberg reduction (issue 16, part 4): a nonsymmetric
//! matrix of lower bandwidth `bw` (`a[i][j] = 0` for `i > j + bw`, dense above) to upper
//! Hessenberg form by Householder bulge chasing, and the back-transformation of vectors by
//! the recorded reflectors.
//!
//! The lower part fills exactly as in the symmetric chase of `tridiag.rs` (a reflector mixes
//! `bw` rows, then the same `bw` columns; the next one clears the first column of the bulge
//! `bw` rows further down). What differs is the upper part, dense here: each reflector acts
//! on its rows across every column to the right and on its columns across every row above,
//! so the chase costs about 2n³ flops (the symmetric one O(n²b)). That is still well under
//! the 10/3 n³ of the direct reduction plus the 4/3 n³ of forming Q, which the device's
//! products take over.

use crate::host_qr::{host_dot, householder};

/// `H = I − τvvᵀ` acting on the indices `r..r + v.len()`.
pub(crate) struct Reflector {
    r: usize,
    tau: f64,
    v: Vec<f64>,
}

/// `Q = I − V T Vᵀ` (compact WY) acting on the indices `r0..n`: `Vᵀ (w, n − r0)` and
/// `T (w, w)`, row-major.
pub(crate) struct WyBlock {
    pub r0: usize,
    pub vt: Vec<f64>,
    pub t: Vec<f64>,
}

impl WyBlock {
    /// From QR's panel: `vt_full (w, n)` is zero before `r0`; `t (w, w)`.
    pub(crate) fn new(r0: usize, n: usize, vt_full: &[f64], t: Vec<f64>) -> Self {
        let w = vt_full.len() / n;
        let vt = (0..w)
            .flat_map(|c| vt_full[c * n + r0..(c + 1) * n].iter().copied())
            .collect();
        WyBlock { r0, vt, t }
    }

    /// `Z[r0..] ← Q Z[r0..]` on the row-major `z (n, cols)`: `S = T (Vᵀ Z)`, `Z −= V S`.
    fn apply(&self, z: &mut [f64], cols: usize) {
        let k = z.len() / cols - self.r0;
        let w = self.vt.len() / k;
        let zr = &mut z[self.r0 * cols..];
        let mut s = vec![0.0; w * cols];
        for c in 0..w {
            let si = &mut s[c * cols..(c + 1) * cols];
            for (i, &v) in self.vt[c * k..(c + 1) * k].iter().enumerate() {
                if v != 0.0 {
                    let row = &zr[i * cols..(i + 1) * cols];
                    si.iter_mut().zip(row).for_each(|(s, &x)| *s += v * x);
                }
            }
        }
        let mut ts = vec![0.0; w * cols];
        for r in 0..w {
            for q in r..w {
                let f = self.t[r * w + q];
                let (dst, src) = (
                    &mut ts[r * cols..(r + 1) * cols],
                    &s[q * cols..(q + 1) * cols],
                );
                dst.iter_mut().zip(src).for_each(|(d, &x)| *d += f * x);
            }
        }
        for i in 0..k {
            let row = &mut zr[i * cols..(i + 1) * cols];
            for c in 0..w {
                let v = self.vt[c * k + i];
                if v != 0.0 {
                    let src = &ts[c * cols..(c + 1) * cols];
                    row.iter_mut().zip(src).for_each(|(x, &s)| *x -= v * s);
                }
            }
        }
    }
}

/// `A ← H A H` on the row-major `a (n, n)`: from the left on the reflector's rows over the
/// columns `lo..n` (the rows are zero before `lo`), from the right on its columns over the
/// rows `0..hi` (the columns are zero from row `hi` on).
fn apply_two_sided(a: &mut [f64], n: usize, h: &Reflector, lo: usize, hi: usize) {
    let (r, len) = (h.r, h.v.len());
    let mut s = vec![0.0; n - lo];
    for (k, &vk) in h.v.iter().enumerate() {
        let row = &a[(r + k) * n + lo..(r + k + 1) * n];
        s.iter_mut().zip(row).for_each(|(s, &x)| *s += vk * x);
    }
    for (k, &vk) in h.v.iter().enumerate() {
        let f = h.tau * vk;
        let row = &mut a[(r + k) * n + lo..(r + k + 1) * n];
        row.iter_mut().zip(&s).for_each(|(x, &s)| *x -= f * s);
    }
    for p in 0..hi {
        let row = &mut a[p * n + r..p * n + r + len];
        let t = host_dot(row, &h.v) * h.tau;
        row.iter_mut().zip(&h.v).for_each(|(x, &v)| *x -= t * v);
    }
}

/// Reduces the columns `g..` of `a (n, n)` (dense below the diagonal from column `g` on,
/// lower bandwidth `bw` before it) to lower bandwidth `bw`, one reflector per column
/// (unblocked: the GPU's dense → band stage leaves at most a few blocks here).
pub(crate) fn tail_to_band(a: &mut [f64], n: usize, g: usize, bw: usize) -> Vec<Reflector> {
    let mut refl = Vec::new();
    for c in g..n {
        let r = c + bw;
        if r + 1 >= n {
            break;
        }
        let x: Vec<f64> = (r..n).map(|p| a[p * n + c]).collect();
        let (v, tau, alpha) = householder(&x);
        if tau == 0.0 {
            continue;
        }
        let h = Reflector { r, tau, v };
        apply_two_sided(a, n, &h, c, n);
        a[r * n + c] = alpha;
        for p in r + 1..n {
            a[p * n + c] = 0.0;
        }
        refl.push(h);
    }
    refl
}

/// Reduces `a (n, n)` of lower bandwidth `bw` to upper Hessenberg form `Q₂ᵀ A Q₂` in place,
/// one column per sweep, and returns the reflectors in the order applied (`Q₂ = H₁H₂…`).
/// With `bw = n − 1` this is the plain Householder reduction (one reflector per column).
pub(crate) fn band_to_hessenberg(a: &mut [f64], n: usize, bw: usize) -> Vec<Reflector> {
    chase(a, n, bw, false)
}

fn chase(a: &mut [f64], n: usize, bw: usize, full_range: bool) -> Vec<Reflector> {
    let mut refl = Vec::new();
    if bw < 2 {
        return refl;
    }
    for i in 0..n.saturating_sub(2) {
        let (mut c, mut r) = (i, i + 1);
        while r + 1 < n {
            let len = bw.min(n - r);
            let x: Vec<f64> = (r..r + len).map(|p| a[p * n + c]).collect();
            let (v, tau, alpha) = householder(&x);
            if tau != 0.0 {
                let h = Reflector { r, tau, v };
                // Rows r.. are zero left of column c; columns r..r + len are zero below row
                // r + len + bw − 1 (the band, plus the bulge this reflector makes).
                let (lo, hi) = if full_range {
                    (0, n)
                } else {
                    (c, (r + len + bw).min(n))
                };
                apply_two_sided(a, n, &h, lo, hi);
                // The cleared column, exactly (rounding leaves tiny values behind).
                a[r * n + c] = alpha;
                for p in r + 1..r + len {
                    a[p * n + c] = 0.0;
                }
                refl.push(h);
            }
            c = r;
            r += len;
        }
    }
    refl
}

/// `Y ← B₁…Bₚ H₁…Hₖ Y` (the compact-WY blocks `wy`, then the reflectors `refl`) on the
/// columns `cols` of the row-major `y (n, n)` (the others are left as they are). Columns are
/// independent: blocks of them are shared out to the available threads, each block gathered
/// into an `(n, w)` row-major copy that stays in cache.
pub(crate) fn apply_to_columns(
    y: &mut [f64],
    n: usize,
    refl: &[Reflector],
    wy: &[&WyBlock],
    cols: &[usize],
) {
    const W: usize = 32;
    if (refl.is_empty() && wy.is_empty()) || cols.is_empty() {
        return;
    }
    let blocks: Vec<&[usize]> = cols.chunks(W).collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(blocks.len())
        .max(1);
    let src: &[f64] = y;
    let done: Vec<Vec<(usize, Vec<f64>)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let blocks = &blocks;
                sc.spawn(move || {
                    (t..blocks.len())
                        .step_by(threads)
                        .map(|b| (b, column_block(src, n, refl, wy, blocks[b])))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reflector thread"))
            .collect()
    });
    for (b, z) in done.into_iter().flatten() {
        let w = blocks[b].len();
        for (k, &c) in blocks[b].iter().enumerate() {
            for r in 0..n {
                y[r * n + c] = z[r * w + k];
            }
        }
    }
}

/// The columns `cols` of `B₁…Bₚ H₁…Hₖ Y`, as a row-major `(n, cols.len())` block.
fn column_block(
    y: &[f64],
    n: usize,
    refl: &[Reflector],
    wy: &[&WyBlock],
    cols: &[usize],
) -> Vec<f64> {
    let w = cols.len();
    let mut z = vec![0.0; n * w];
    for r in 0..n {
        for (k, &c) in cols.iter().enumerate() {
            z[r * w + k] = y[r * n + c];
        }
    }
    let mut s = vec![0.0; w];
    for h in refl.iter().rev() {
        s.fill(0.0);
        for (k, &vk) in h.v.iter().enumerate() {
            let row = &z[(h.r + k) * w..(h.r + k + 1) * w];
            s.iter_mut().zip(row).for_each(|(s, &x)| *s += vk * x);
        }
        for (k, &vk) in h.v.iter().enumerate() {
            let f = h.tau * vk;
            let row = &mut z[(h.r + k) * w..(h.r + k + 1) * w];
            row.iter_mut().zip(&s).for_each(|(x, &s)| *x -= f * s);
        }
    }
    for b in wy.iter().rev() {
        b.apply(&mut z, w);
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::eig::hessenberg_reference;

    fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::Rng::new(seed);
        (0..n * n).map(|_| rng.normal()).collect()
    }

    /// Zero below the band: `a[i][j] = 0` for `i > j + bw`.
    fn banded(n: usize, bw: usize, seed: u64) -> Vec<f64> {
        let mut a = random(n, seed);
        for i in 0..n {
            for j in 0..n {
                if i > j + bw {
                    a[i * n + j] = 0.0;
                }
            }
        }
        a
    }

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                let x = a[i * n + k];
                for j in 0..n {
                    c[i * n + j] += x * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        (0..n * n).map(|k| a[(k % n) * n + k / n]).collect()
    }

    /// Q₂ as a matrix: the reflectors applied to every column of the identity.
    fn q_of(refl: &[Reflector], n: usize) -> Vec<f64> {
        let mut q = vec![0.0; n * n];
        (0..n).for_each(|i| q[i * n + i] = 1.0);
        let cols: Vec<usize> = (0..n).collect();
        apply_to_columns(&mut q, n, refl, &[], &cols);
        q
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Touching only the assumed nonzero range gives the same matrix as the full update, the
    /// result is upper Hessenberg, and `Q₂ H Q₂ᵀ` rebuilds the band matrix with `Q₂`
    /// orthogonal.
    #[test]
    fn band_chase_keeps_the_similarity_and_gives_hessenberg() {
        for (n, bw) in [
            (2, 1),
            (3, 2),
            (9, 2),
            (20, 3),
            (37, 5),
            (64, 8),
            (50, 49),
            (33, 16),
        ] {
            let a = banded(n, bw, n as u64 + 7 * bw as u64);
            let (mut x, mut y) = (a.clone(), a.clone());
            let refl = chase(&mut x, n, bw, false);
            chase(&mut y, n, bw, true);
            assert!(max_diff(&x, &y) < 1e-12, "n {n} bw {bw}: range");
            for i in 0..n {
                for j in 0..n {
                    if i > j + 1 {
                        assert_eq!(x[i * n + j], 0.0, "n {n} bw {bw}: ({i}, {j})");
                    }
                }
            }
            let q = q_of(&refl, n);
            let back = matmul(&matmul(&q, &x, n), &transpose(&q, n), n);
            assert!(max_diff(&back, &a) < 1e-11, "n {n} bw {bw}: Q H Qᵀ");
            let qtq = matmul(&transpose(&q, n), &q, n);
            let mut eye = vec![0.0; n * n];
            (0..n).for_each(|i| eye[i * n + i] = 1.0);
            assert!(max_diff(&qtq, &eye) < 1e-13, "n {n} bw {bw}: QᵀQ");
        }
    }

    /// With `bw = n − 1` the chase is the plain Householder reduction: the same H as
    /// `hessenberg_reference` (same reflectors, same signs) and the same Q.
    #[test]
    fn full_bandwidth_chase_is_the_reference_reduction() {
        for n in [1, 2, 3, 10, 31] {
            let a = random(n, 40 + n as u64);
            let (h_ref, q_ref) = hessenberg_reference(&a, n);
            let mut h = a.clone();
            let refl = band_to_hessenberg(&mut h, n, n.saturating_sub(1).max(1));
            assert!(max_diff(&h, &h_ref) < 1e-12, "n {n}: H");
            assert!(max_diff(&q_of(&refl, n), &q_ref) < 1e-12, "n {n}: Q");
        }
    }

    /// A dense tail reduced to the band, then chased: still a similarity to the input, and
    /// Hessenberg; and `apply_to_columns` leaves the columns it is not given alone.
    #[test]
    fn dense_tail_then_chase() {
        for (n, g, bw) in [(12, 4, 3), (40, 16, 8), (23, 0, 5), (9, 3, 4)] {
            // Band for the columns before g, dense from g on.
            let mut a = random(n, 90 + n as u64);
            for i in 0..n {
                for j in 0..g.min(n) {
                    if i > j + bw {
                        a[i * n + j] = 0.0;
                    }
                }
            }
            let mut h = a.clone();
            let mut refl = tail_to_band(&mut h, n, g, bw);
            for i in 0..n {
                for j in 0..n {
                    if i > j + bw {
                        assert_eq!(h[i * n + j], 0.0, "n {n} g {g}: band ({i}, {j})");
                    }
                }
            }
            refl.extend(band_to_hessenberg(&mut h, n, bw));
            let q = q_of(&refl, n);
            let back = matmul(&matmul(&q, &h, n), &transpose(&q, n), n);
            assert!(max_diff(&back, &a) < 1e-11, "n {n} g {g}: Q H Qᵀ");
            let mut y = random(n, 5);
            let before = y.clone();
            apply_to_columns(&mut y, n, &refl, &[], &[1, n - 1]);
            let want = matmul(&q, &before, n);
            for r in 0..n {
                for c in 0..n {
                    let w = if c == 1 || c == n - 1 {
                        want[r * n + c]
                    } else {
                        before[r * n + c]
                    };
                    assert!((y[r * n + c] - w).abs() < 1e-12, "n {n}: ({r}, {c})");
                }
            }
        }
    }

    /// A panel's compact-WY block applied to a column block equals `(I − V T Vᵀ) Z` formed
    /// explicitly, on the rows `r0..` only.
    #[test]
    fn wy_block_applies_i_minus_v_t_vt() {
        let (n, r0, w, cols) = (13, 5, 3, 4);
        let mut rng = crate::Rng::new(11);
        let p: Vec<f64> = (0..w * n).map(|_| rng.normal()).collect();
        let hp = crate::host_qr::factor_panel(&p, r0, w, n);
        let b = WyBlock::new(r0, n, &hp.vt, hp.t.clone());
        let z0: Vec<f64> = (0..n * cols).map(|_| rng.normal()).collect();
        let mut z = z0.clone();
        b.apply(&mut z, cols);
        for i in 0..n {
            for c in 0..cols {
                let mut want = z0[i * cols + c];
                for a in 0..w {
                    for q in 0..w {
                        let vta: f64 = (0..n).map(|l| hp.vt[q * n + l] * z0[l * cols + c]).sum();
                        want -= hp.vt[a * n + i] * hp.t[a * w + q] * vta;
                    }
                }
                assert!((z[i * cols + c] - want).abs() < 1e-12, "({i}, {c})");
            }
        }
    }
}
