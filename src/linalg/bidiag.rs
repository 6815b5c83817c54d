//! Host f64 stages of the blocked SVD (issue 16, part 3): a dense block to an upper band, an
//! upper band matrix to bidiagonal form by Householder bulge chasing, and the bidiagonal SVD
//! by implicit-shift QR (LAPACK's `dbdsqr`: Demmel–Kahan zero shifts and relative
//! convergence tests, so that small singular values keep their relative accuracy).
//!
//! As in [`super::tridiag`], nothing here needs the singular vectors to choose its next step:
//! every stage records its left and right reflectors and rotations, and the vectors of the
//! band matrix are built afterwards by [`super::tridiag::eigenvectors`], once per side, in
//! cache-sized column blocks on every core.
//!
//! Conventions: a left transformation acts on rows (`A ← H A`, U collects it), a right one on
//! columns (`A ← A H`, V collects it), and the lists are in the order applied, so that
//! `Uᵀ = Gₘᵀ…G₁ᵀ Hₖ…H₁` is exactly what `eigenvectors` builds.

use crate::error::Result;
use crate::linalg::reference::not_converged;
use crate::linalg::tridiag::{Reflector, Rotation};

/// The left (U) and right (V) transformations recorded by a stage.
pub(crate) struct Sides<T> {
    pub left: Vec<T>,
    pub right: Vec<T>,
}

impl<T> Default for Sides<T> {
    fn default() -> Self {
        Sides {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

/// A Householder reflector `(v, τ, α)` mapping `x` to `α e₁`, or `τ = 0` (the identity) when
/// `x` already has that form: LAPACK's `dlarfg`, which keeps a diagonal or already-reduced
/// input from collecting sign-flipping reflectors that the vector builders would apply.
fn house(x: &[f64]) -> (Vec<f64>, f64, f64) {
    if x[1..].iter().all(|&v| v == 0.0) {
        let mut v = vec![0.0; x.len()];
        v[0] = 1.0;
        return (v, 0.0, x[0]);
    }
    crate::host_qr::householder(x)
}

/// `A ← H A` on the rows `r..r + v.len()` of the row-major `a (_, n)`, columns `lo..hi`.
fn apply_left(a: &mut [f64], n: usize, r: usize, v: &[f64], tau: f64, lo: usize, hi: usize) {
    let mut s = vec![0.0; hi - lo];
    for (k, &vk) in v.iter().enumerate() {
        let row = &a[(r + k) * n + lo..(r + k) * n + hi];
        s.iter_mut().zip(row).for_each(|(s, &x)| *s += vk * x);
    }
    for (k, &vk) in v.iter().enumerate() {
        let f = tau * vk;
        let row = &mut a[(r + k) * n + lo..(r + k) * n + hi];
        row.iter_mut().zip(&s).for_each(|(x, &s)| *x -= f * s);
    }
}

/// `A ← A H` on the columns `r..r + v.len()` of the row-major `a (_, n)`, rows `lo..hi`.
fn apply_right(a: &mut [f64], n: usize, r: usize, v: &[f64], tau: f64, lo: usize, hi: usize) {
    for p in lo..hi {
        let row = &mut a[p * n + r..p * n + r + v.len()];
        let t = tau * row.iter().zip(v).map(|(x, v)| x * v).sum::<f64>();
        row.iter_mut().zip(v).for_each(|(x, &v)| *x -= t * v);
    }
}

/// Reduces the dense square `a (k, k)` in place to upper band form of width `bw` (row `c`
/// keeps columns `c..=c + bw`): per column, a left reflector clears it below the diagonal,
/// then a right reflector clears the row beyond `c + bw` (with `bw = 1` this is Golub–Kahan
/// bidiagonalisation, LAPACK's `dgebd2`). Unblocked, for blocks of order at most `2b` and
/// for small matrices taken whole. Reflector indices are shifted by `offset`, the block's
/// place in the whole matrix.
pub(crate) fn dense_to_upper_band(
    a: &mut [f64],
    k: usize,
    bw: usize,
    offset: usize,
) -> Sides<Reflector> {
    let mut out = Sides::default();
    for c in 0..k {
        if c + 1 < k {
            let x: Vec<f64> = (c..k).map(|p| a[p * k + c]).collect();
            let (v, tau, alpha) = house(&x);
            if tau != 0.0 {
                apply_left(a, k, c, &v, tau, c, k);
                a[c * k + c] = alpha;
                (c + 1..k).for_each(|p| a[p * k + c] = 0.0);
                out.left.push(Reflector {
                    r: c + offset,
                    tau,
                    v,
                });
            }
        }
        let r = c + bw;
        if r + 1 < k {
            let (v, tau, alpha) = house(&a[c * k + r..(c + 1) * k]);
            if tau != 0.0 {
                apply_right(a, k, r, &v, tau, c, k);
                a[c * k + r] = alpha;
                a[c * k + r + 1..(c + 1) * k].fill(0.0);
                out.right.push(Reflector {
                    r: r + offset,
                    tau,
                    v,
                });
            }
        }
    }
    out
}

/// Reduces the upper band matrix `a` (dense row-major `(n, n)`, row `i` nonzero only in the
/// columns `i..=i + bw`) to upper bidiagonal form in place, one row per sweep: a right
/// reflector of length `bw` clears row `i` beyond its superdiagonal; the fill it leaves below
/// the diagonal is cleared, one column at a time, by a left reflector, whose own fill beyond
/// the band in its first row is cleared by the next right reflector, `bw` columns further
/// on (the rest of each bulge goes with the next sweeps, as in the symmetric chase of
/// [`super::tridiag::band_to_tridiagonal`]). Returns the diagonal `d`, the superdiagonal `e`
/// (`e[n − 1] = 0`) and the reflectors.
///
/// Each reflector touches only the rows (columns) that can hold nonzeros: checked against the
/// full update by a test.
pub(crate) fn band_to_bidiagonal(
    a: &mut [f64],
    n: usize,
    bw: usize,
) -> (Vec<f64>, Vec<f64>, Sides<Reflector>) {
    band_to_bidiagonal_in(a, n, bw, false)
}

fn band_to_bidiagonal_in(
    a: &mut [f64],
    n: usize,
    bw: usize,
    full_range: bool,
) -> (Vec<f64>, Vec<f64>, Sides<Reflector>) {
    let mut out = Sides::default();
    if bw > 1 {
        for i in 0..n.saturating_sub(2) {
            // Row c is cleared in the columns r + 1..r + len, keeping (c, r).
            let (mut c, mut r) = (i, i + 1);
            while r + 1 < n {
                let len = bw.min(n - r);
                let (v, tau, alpha) = house(&a[c * n + r..c * n + r + len]);
                if tau != 0.0 {
                    let (lo, hi) = if full_range { (0, n) } else { (c, r + len) };
                    apply_right(a, n, r, &v, tau, lo, hi);
                    a[c * n + r] = alpha;
                    a[c * n + r + 1..c * n + r + len].fill(0.0);
                    out.right.push(Reflector { r, tau, v });
                }
                // Column r now holds fill in the rows r + 1..r + len.
                let x: Vec<f64> = (r..r + len).map(|p| a[p * n + r]).collect();
                let (v, tau, alpha) = house(&x);
                if tau != 0.0 {
                    let (lo, hi) = if full_range {
                        (0, n)
                    } else {
                        (r, (r + len + bw).min(n))
                    };
                    apply_left(a, n, r, &v, tau, lo, hi);
                    a[r * n + r] = alpha;
                    (r + 1..r + len).for_each(|p| a[p * n + r] = 0.0);
                    out.left.push(Reflector { r, tau, v });
                }
                // Row r now reaches `len + bw − 1` columns past its diagonal: clear it from
                // the band's edge on.
                c = r;
                r += bw;
            }
        }
    }
    let d = (0..n).map(|i| a[i * n + i]).collect();
    let e = (0..n)
        .map(|i| if i + 1 < n { a[i * n + i + 1] } else { 0.0 })
        .collect();
    (d, e, out)
}

/// LAPACK's `dlartg`: `(c, s, r)` with `[c s; −s c]·[f; g] = [r; 0]`.
fn lartg(f: f64, g: f64) -> (f64, f64, f64) {
    if g == 0.0 {
        (1.0, 0.0, f)
    } else if f == 0.0 {
        (0.0, g.signum(), g.abs())
    } else {
        let d = f.hypot(g);
        let r = d.copysign(f);
        (f.abs() / d, g / r, r)
    }
}

/// Fortran's `SIGN(a, b)`: `|a|` with the sign of `b` (`+` for `b = ±0`).
fn sign(a: f64, b: f64) -> f64 {
    if b >= 0.0 {
        a.abs()
    } else {
        -a.abs()
    }
}

/// LAPACK's `dlas2`: the singular values `(σ_min, σ_max)` of `[f g; 0 h]`.
fn las2(f: f64, g: f64, h: f64) -> (f64, f64) {
    let (fa, ga, ha) = (f.abs(), g.abs(), h.abs());
    let (fhmn, fhmx) = (fa.min(ha), fa.max(ha));
    if fhmn == 0.0 {
        let smax = if fhmx == 0.0 {
            ga
        } else {
            let (mx, mn) = (fhmx.max(ga), fhmx.min(ga));
            mx * (1.0 + (mn / mx) * (mn / mx)).sqrt()
        };
        return (0.0, smax);
    }
    if ga < fhmx {
        let as_ = 1.0 + fhmn / fhmx;
        let at = (fhmx - fhmn) / fhmx;
        let au = (ga / fhmx) * (ga / fhmx);
        let c = 2.0 / ((as_ * as_ + au).sqrt() + (at * at + au).sqrt());
        (fhmn * c, fhmx / c)
    } else {
        let au = fhmx / ga;
        if au == 0.0 {
            ((fhmn * fhmx) / ga, ga)
        } else {
            let as_ = 1.0 + fhmn / fhmx;
            let at = (fhmx - fhmn) / fhmx;
            let c = 1.0
                / ((1.0 + (as_ * au) * (as_ * au)).sqrt() + (1.0 + (at * au) * (at * au)).sqrt());
            (2.0 * (fhmn * c) * au, ga / (c + c))
        }
    }
}

/// LAPACK's `dlasv2`: the SVD of `[f g; 0 h]`, `(σ_min, σ_max, sn_r, cs_r, sn_l, cs_l)` with
/// `[cs_l sn_l; −sn_l cs_l]·[f g; 0 h]·[cs_r −sn_r; sn_r cs_r] = diag(σ_max, σ_min)`.
fn lasv2(f: f64, g: f64, h: f64) -> (f64, f64, f64, f64, f64, f64) {
    let (mut ft, mut ht) = (f, h);
    let (mut fa, mut ha) = (f.abs(), h.abs());
    let mut pmax = 1;
    let swap = ha > fa;
    if swap {
        pmax = 3;
        std::mem::swap(&mut ft, &mut ht);
        std::mem::swap(&mut fa, &mut ha);
    }
    let (gt, ga) = (g, g.abs());
    let (ssmin, ssmax, clt, crt, slt, srt);
    if ga == 0.0 {
        (ssmin, ssmax, clt, crt, slt, srt) = (ha, fa, 1.0, 1.0, 0.0, 0.0);
    } else {
        let mut small_g = true;
        let mut res = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        if ga > fa {
            pmax = 2;
            if fa / ga < f64::EPSILON / 2.0 {
                small_g = false;
                let smin = if ha > 1.0 {
                    fa / (ga / ha)
                } else {
                    (fa / ga) * ha
                };
                res = (smin, ga, 1.0, ft / gt, ht / gt, 1.0);
            }
        }
        if small_g {
            let d = fa - ha;
            let mut l = if d == fa { 1.0 } else { d / fa };
            let m = gt / ft;
            let mut t = 2.0 - l;
            let (mm, tt) = (m * m, t * t);
            let s = (tt + mm).sqrt();
            let r = if l == 0.0 {
                m.abs()
            } else {
                (l * l + mm).sqrt()
            };
            let a = 0.5 * (s + r);
            let (smin, smax) = (ha / a, fa * a);
            if mm == 0.0 {
                t = if l == 0.0 {
                    sign(2.0, ft) * sign(1.0, gt)
                } else {
                    gt / sign(d, ft) + m / t
                };
            } else {
                t = (m / (s + t) + m / (r + l)) * (1.0 + a);
            }
            l = (t * t + 4.0).sqrt();
            let (c_rt, s_rt) = (2.0 / l, t / l);
            let c_lt = (c_rt + s_rt * m) / a;
            let s_lt = (ht / ft) * s_rt / a;
            res = (smin, smax, c_lt, c_rt, s_lt, s_rt);
        }
        (ssmin, ssmax, clt, crt, slt, srt) = res;
    }
    let (csl, snl, csr, snr) = if swap {
        (srt, crt, slt, clt)
    } else {
        (clt, slt, crt, srt)
    };
    let tsign = match pmax {
        1 => sign(1.0, csr) * sign(1.0, csl) * sign(1.0, f),
        2 => sign(1.0, snr) * sign(1.0, csl) * sign(1.0, g),
        _ => sign(1.0, snr) * sign(1.0, snl) * sign(1.0, h),
    };
    let ssmax = sign(ssmax, tsign);
    let ssmin = sign(ssmin, tsign * sign(1.0, f) * sign(1.0, h));
    (ssmin, ssmax, snr, csr, snl, csl)
}

/// A rotation of the indices `i, i + 1` given as LAPACK applies it to a pair of rows (or
/// columns) `x, y`: `x ← c x + s y`, `y ← c y − s x` (`drot`, `dlasr`'s `P(k)`), in the
/// convention of [`Rotation`] (whose `s` has the other sign).
fn rot(i: usize, c: f64, s: f64) -> Rotation {
    Rotation { i, c, s: -s }
}

/// The SVD of the upper bidiagonal matrix (diagonal `d`, superdiagonal `e`, `e[n − 1]`
/// ignored) by implicit-shift QR in f64, as LAPACK's `dbdsqr` (relative accuracy: the
/// convergence tests and the zero-shift sweeps of Demmel and Kahan). `d` ends up holding the
/// singular values, unsorted and possibly negative (the caller flips the sign of the
/// matching right vector). Returns the left and right rotations in the order applied.
///
/// At most `max_sweeps · n` QR sweeps in all (typically about two per singular value), else
/// the "did not converge" error.
pub(crate) fn bidiagonal_qr(
    d: &mut [f64],
    e: &mut [f64],
    max_sweeps: usize,
) -> Result<Sides<Rotation>> {
    let n = d.len();
    let mut out = Sides::default();
    if n <= 1 {
        return Ok(out);
    }
    let eps = f64::EPSILON / 2.0;
    let tol = 10f64.max(100f64.min(eps.powf(-0.125))) * eps;
    // A lower bound of σ_min (Higham's recurrence) for the absolute threshold.
    let mut sminoa = d[0].abs();
    if sminoa != 0.0 {
        let mut mu = sminoa;
        for i in 1..n {
            mu = d[i].abs() * (mu / (mu + e[i - 1].abs()));
            sminoa = sminoa.min(mu);
            if sminoa == 0.0 {
                break;
            }
        }
    }
    sminoa /= (n as f64).sqrt();
    let thresh = (tol * sminoa).max(6.0 * (n * n) as f64 * f64::MIN_POSITIVE);
    let cap = max_sweeps.saturating_mul(n);
    let mut sweeps = 0;
    let (mut oldll, mut oldm) = (usize::MAX, usize::MAX);
    let mut down = true; // chase direction: top to bottom
    let mut m = n - 1;
    'outer: while m > 0 {
        // The block ll..=m: the largest unreduced one at the bottom.
        let mut smax = d[m].abs();
        let mut ll = 0;
        for l in (0..m).rev() {
            if e[l].abs() <= thresh {
                e[l] = 0.0;
                ll = l + 1;
                break;
            }
            smax = smax.max(d[l].abs()).max(e[l].abs());
        }
        if ll == m {
            m -= 1;
            continue;
        }
        if ll + 1 == m {
            // A 2×2 block: its SVD directly.
            let (smin, smx, snr, csr, snl, csl) = lasv2(d[m - 1], e[m - 1], d[m]);
            (d[m - 1], e[m - 1], d[m]) = (smx, 0.0, smin);
            out.right.push(rot(m - 1, csr, snr));
            out.left.push(rot(m - 1, csl, snl));
            if m < 2 {
                break;
            }
            m -= 2;
            continue;
        }
        // A new block: chase towards its smaller end.
        if oldm == usize::MAX || ll > oldm || m < oldll {
            down = d[ll].abs() >= d[m].abs();
        }
        // Convergence tests (relative), and the estimate of the block's σ_min.
        let mut sminl;
        if down {
            if e[m - 1].abs() <= tol * d[m].abs() {
                e[m - 1] = 0.0;
                continue;
            }
            let mut mu = d[ll].abs();
            sminl = mu;
            for l in ll..m {
                if e[l].abs() <= tol * mu {
                    e[l] = 0.0;
                    continue 'outer;
                }
                mu = d[l + 1].abs() * (mu / (mu + e[l].abs()));
                sminl = sminl.min(mu);
            }
        } else {
            if e[ll].abs() <= tol * d[ll].abs() {
                e[ll] = 0.0;
                continue;
            }
            let mut mu = d[m].abs();
            sminl = mu;
            for l in (ll..m).rev() {
                if e[l].abs() <= tol * mu {
                    e[l] = 0.0;
                    continue 'outer;
                }
                mu = d[l].abs() * (mu / (mu + e[l].abs()));
                sminl = sminl.min(mu);
            }
        }
        (oldll, oldm) = (ll, m);
        // The shift: zero where it would spoil the relative accuracy of σ_min.
        let mut shift = 0.0;
        if (n as f64) * tol * (sminl / smax) > eps.max(0.01 * tol) {
            let (sll, (s, _)) = if down {
                (d[ll].abs(), las2(d[m - 1], e[m - 1], d[m]))
            } else {
                (d[m].abs(), las2(d[ll], e[ll], d[ll + 1]))
            };
            shift = s;
            if sll > 0.0 && (shift / sll) * (shift / sll) < eps {
                shift = 0.0;
            }
        }
        sweeps += 1;
        if sweeps > cap {
            return Err(not_converged("svd", max_sweeps));
        }
        match (shift == 0.0, down) {
            (true, true) => {
                let (mut cs, mut oldcs, mut oldsn) = (1.0, 1.0, 0.0);
                for i in ll..m {
                    let (c, s, r) = lartg(d[i] * cs, e[i]);
                    cs = c;
                    if i > ll {
                        e[i - 1] = oldsn * r;
                    }
                    let (oc, os, di) = lartg(oldcs * r, d[i + 1] * s);
                    (oldcs, oldsn, d[i]) = (oc, os, di);
                    out.right.push(rot(i, c, s));
                    out.left.push(rot(i, oc, os));
                }
                let h = d[m] * cs;
                d[m] = h * oldcs;
                e[m - 1] = h * oldsn;
                if e[m - 1].abs() <= thresh {
                    e[m - 1] = 0.0;
                }
            }
            (true, false) => {
                let (mut cs, mut oldcs, mut oldsn) = (1.0, 1.0, 0.0);
                for i in (ll + 1..=m).rev() {
                    let (c, s, r) = lartg(d[i] * cs, e[i - 1]);
                    cs = c;
                    if i < m {
                        e[i] = oldsn * r;
                    }
                    let (oc, os, di) = lartg(oldcs * r, d[i - 1] * s);
                    (oldcs, oldsn, d[i]) = (oc, os, di);
                    out.right.push(rot(i - 1, oc, -os));
                    out.left.push(rot(i - 1, c, -s));
                }
                let h = d[ll] * cs;
                d[ll] = h * oldcs;
                e[ll] = h * oldsn;
                if e[ll].abs() <= thresh {
                    e[ll] = 0.0;
                }
            }
            (false, true) => {
                let mut f = (d[ll].abs() - shift) * (sign(1.0, d[ll]) + shift / d[ll]);
                let mut g = e[ll];
                for i in ll..m {
                    let (cosr, sinr, r) = lartg(f, g);
                    if i > ll {
                        e[i - 1] = r;
                    }
                    f = cosr * d[i] + sinr * e[i];
                    e[i] = cosr * e[i] - sinr * d[i];
                    g = sinr * d[i + 1];
                    d[i + 1] *= cosr;
                    let (cosl, sinl, r) = lartg(f, g);
                    d[i] = r;
                    f = cosl * e[i] + sinl * d[i + 1];
                    d[i + 1] = cosl * d[i + 1] - sinl * e[i];
                    if i + 1 < m {
                        g = sinl * e[i + 1];
                        e[i + 1] *= cosl;
                    }
                    out.right.push(rot(i, cosr, sinr));
                    out.left.push(rot(i, cosl, sinl));
                }
                e[m - 1] = f;
                if e[m - 1].abs() <= thresh {
                    e[m - 1] = 0.0;
                }
            }
            (false, false) => {
                let mut f = (d[m].abs() - shift) * (sign(1.0, d[m]) + shift / d[m]);
                let mut g = e[m - 1];
                for i in (ll + 1..=m).rev() {
                    let (cosr, sinr, r) = lartg(f, g);
                    if i < m {
                        e[i] = r;
                    }
                    f = cosr * d[i] + sinr * e[i - 1];
                    e[i - 1] = cosr * e[i - 1] - sinr * d[i];
                    g = sinr * d[i - 1];
                    d[i - 1] *= cosr;
                    let (cosl, sinl, r) = lartg(f, g);
                    d[i] = r;
                    f = cosl * e[i - 1] + sinl * d[i - 1];
                    d[i - 1] = cosl * d[i - 1] - sinl * e[i - 1];
                    if i > ll + 1 {
                        g = sinl * e[i - 2];
                        e[i - 2] *= cosl;
                    }
                    out.right.push(rot(i - 1, cosl, -sinl));
                    out.left.push(rot(i - 1, cosr, -sinr));
                }
                e[ll] = f;
                if e[ll].abs() <= thresh {
                    e[ll] = 0.0;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::reference::svd_reference;
    use crate::linalg::tridiag::eigenvectors;

    fn random_upper_band(n: usize, bw: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::Rng::new(seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i..n.min(i + bw + 1) {
                a[i * n + j] = rng.normal();
            }
        }
        a
    }

    /// `Σ` sorted descending, from the absolute values of `d`.
    fn sorted_abs(d: &[f64]) -> Vec<f64> {
        let mut s: Vec<f64> = d.iter().map(|x| x.abs()).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    }

    /// Touching only the assumed nonzero range gives the same result as the full update, and
    /// the result is bidiagonal.
    #[test]
    fn band_chase_range_holds_every_nonzero() {
        for (n, bw) in [
            (9, 2),
            (20, 3),
            (37, 5),
            (64, 8),
            (50, 49),
            (33, 16),
            (70, 13),
        ] {
            let a = random_upper_band(n, bw, n as u64);
            let (mut x, mut y) = (a.clone(), a.clone());
            let (d1, e1, _) = band_to_bidiagonal_in(&mut x, n, bw, false);
            let (d2, e2, _) = band_to_bidiagonal_in(&mut y, n, bw, true);
            for (p, q) in d1.iter().zip(&d2).chain(e1.iter().zip(&e2)) {
                assert!((p - q).abs() < 1e-12, "n {n} bw {bw}: {p} vs {q}");
            }
            for i in 0..n {
                for j in 0..n {
                    if j != i && j != i + 1 {
                        assert!(x[i * n + j].abs() < 1e-12, "n {n} bw {bw}: ({i}, {j})");
                    }
                }
            }
        }
    }

    /// Dense block → band → bidiagonal → bidiagonal QR, then U Σ Vᵀ rebuilds the matrix,
    /// U and V are orthogonal, and σ matches the one-sided Jacobi reference.
    #[test]
    fn host_svd_rebuilds_the_matrix_and_matches_the_reference() {
        let mut rng = crate::Rng::new(5);
        let graded: Vec<f64> = (0..900usize)
            .map(|k| rng.normal() * 10f64.powi(-((k % 30) as i32) / 3))
            .collect();
        let mut cases: Vec<(String, usize, Vec<f64>)> = vec![("graded 30".into(), 30, graded)];
        for n in [1, 2, 3, 5, 17, 40, 64] {
            cases.push((
                format!("random {n}"),
                n,
                (0..n * n).map(|_| rng.normal()).collect(),
            ));
        }
        // Rank 3 of 12 and the zero matrix.
        let (u0, v0): (Vec<f64>, Vec<f64>) = (
            (0..36).map(|_| rng.normal()).collect(),
            (0..36).map(|_| rng.normal()).collect(),
        );
        let mut low = vec![0.0; 144];
        for i in 0..12 {
            for j in 0..12 {
                low[i * 12 + j] = (0..3).map(|k| u0[i * 3 + k] * v0[j * 3 + k]).sum();
            }
        }
        cases.push(("rank 3 of 12".into(), 12, low));
        cases.push(("zero 6".into(), 6, vec![0.0; 36]));
        let mut eye = vec![0.0; 49];
        (0..7).for_each(|i| eye[i * 7 + i] = 1.0);
        cases.push(("identity 7".into(), 7, eye));
        for (label, n, a) in cases {
            for bw in [1, 3, 8] {
                let mut b = a.clone();
                // The first rows through dense_to_upper_band, then the chase over all.
                let mut sides = dense_to_upper_band(&mut b, n, bw.min(n), 0);
                let (mut d, mut e, chase) = band_to_bidiagonal(&mut b, n, bw.min(n));
                sides.left.extend(chase.left);
                sides.right.extend(chase.right);
                let rots = bidiagonal_qr(&mut d, &mut e, 30).unwrap();
                let ut = eigenvectors(n, &sides.left, &rots.left);
                let vt = eigenvectors(n, &sides.right, &rots.right);
                let scale = crate::linalg::reference::frobenius(&a).max(1e-300);
                for i in 0..n {
                    for j in 0..n {
                        let r: f64 = (0..n).map(|k| ut[k * n + i] * d[k] * vt[k * n + j]).sum();
                        let err = (r - a[i * n + j]).abs() / scale;
                        assert!(err < 1e-13, "{label} bw {bw}: ({i}, {j}) off by {err:e}");
                        let want = if i == j { 1.0 } else { 0.0 };
                        let ou: f64 = (0..n).map(|k| ut[i * n + k] * ut[j * n + k]).sum();
                        let ov: f64 = (0..n).map(|k| vt[i * n + k] * vt[j * n + k]).sum();
                        assert!((ou - want).abs() < 1e-13 && (ov - want).abs() < 1e-13);
                    }
                }
                let (_, s_ref, _) = svd_reference(&a, n, n).unwrap();
                let smax = s_ref[0].max(1e-300);
                for (k, (x, y)) in sorted_abs(&d).iter().zip(&s_ref).enumerate() {
                    assert!((x - y).abs() <= 1e-13 * smax, "{label}: σ[{k}] {x} vs {y}");
                }
            }
        }
    }

    /// Small singular values of a graded bidiagonal keep their relative accuracy (the point
    /// of the zero shift and the relative tests), against the reference on the same matrix.
    #[test]
    fn bidiagonal_qr_is_relatively_accurate() {
        let n = 12;
        let d0: Vec<f64> = (0..n).map(|i| 10f64.powi(-(i as i32))).collect();
        let e0: Vec<f64> = (0..n)
            .map(|i| {
                if i + 1 < n {
                    0.5 * 10f64.powi(-(i as i32))
                } else {
                    0.0
                }
            })
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            a[i * n + i] = d0[i];
            if i + 1 < n {
                a[i * n + i + 1] = e0[i];
            }
        }
        let (_, s_ref, _) = svd_reference(&a, n, n).unwrap();
        let (mut d, mut e) = (d0.clone(), e0.clone());
        bidiagonal_qr(&mut d, &mut e, 30).unwrap();
        for (k, (x, y)) in sorted_abs(&d).iter().zip(&s_ref).enumerate() {
            assert!((x - y).abs() <= 1e-10 * y, "σ[{k}] {x} vs {y}");
        }
        // A zero on the diagonal: σ_min is exactly zero.
        let (mut d, mut e) = (vec![1.0, 0.0, 2.0, 3.0], vec![1.0, 1.0, 1.0, 0.0]);
        bidiagonal_qr(&mut d, &mut e, 30).unwrap();
        assert!(sorted_abs(&d)[3] < 1e-15, "{d:?}");
        // A cap that cannot be met is an error.
        let (mut d, mut e): (Vec<f64>, Vec<f64>) =
            ((0..40).map(|i| 1.0 + i as f64).collect(), vec![1.0; 40]);
        assert!(bidiagonal_qr(&mut d, &mut e, 0).is_err());
    }
}
