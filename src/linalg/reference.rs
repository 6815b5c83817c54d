//! CPU references in f64: cyclic Jacobi for the symmetric eigenproblem and one-sided
//! (Hestenes) Jacobi for the SVD, plus the host-side finishing shared with the GPU path
//! (sorting, normalising, completing the null space of U).
//!
//! Matrices are row-major `Vec<f64>`.

use crate::error::{Error, Result};

/// Sweep cap of the f64 references (they converge quadratically in well under 20).
pub(crate) const MAX_SWEEPS_F64: usize = 60;

/// Rotation `(c, s, t)` with `t = tan φ` zeroing the off-diagonal of `[[app, apq], [apq, aqq]]`
/// under `JᵀAJ`, `J = [[c, s], [-s, c]]` (the stable small root).
pub(crate) fn jacobi_angle(app: f64, aqq: f64, apq: f64) -> (f64, f64, f64) {
    if apq == 0.0 {
        return (1.0, 0.0, 0.0);
    }
    let theta = (aqq - app) / (2.0 * apq);
    let mut t = 1.0 / (theta.abs() + (theta * theta + 1.0).sqrt());
    if theta.abs() > 1e150 {
        t = 0.5 / theta.abs();
    }
    if theta < 0.0 {
        t = -t;
    }
    let c = 1.0 / (t * t + 1.0).sqrt();
    (c, t * c, t)
}

/// `eigh_reference`: eigenvalues ascending and eigenvectors (columns of an (n, n) row-major
/// matrix) of the symmetric `a` by row-cyclic Jacobi, until the off-diagonal norm is below
/// 1e-15·‖A‖_F.
pub(crate) fn eigh_reference(a: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut w = a.to_vec();
    let mut v = identity(n);
    let total = frobenius(&w);
    let mut converged = total == 0.0;
    for _ in 0..MAX_SWEEPS_F64 {
        if converged {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let (c, s, _) = jacobi_angle(w[p * n + p], w[q * n + q], w[p * n + q]);
                if s == 0.0 {
                    continue;
                }
                for k in 0..n {
                    let (xp, xq) = (w[p * n + k], w[q * n + k]);
                    w[p * n + k] = c * xp - s * xq;
                    w[q * n + k] = s * xp + c * xq;
                }
                for k in 0..n {
                    let (xp, xq) = (w[k * n + p], w[k * n + q]);
                    w[k * n + p] = c * xp - s * xq;
                    w[k * n + q] = s * xp + c * xq;
                    let (vp, vq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vp - s * vq;
                    v[k * n + q] = s * vp + c * vq;
                }
                w[p * n + q] = 0.0;
                w[q * n + p] = 0.0;
            }
        }
        converged = off_diagonal(&w, n) <= 1e-15 * total;
    }
    if !converged {
        return Err(not_converged("eigh", MAX_SWEEPS_F64));
    }
    let diag: Vec<f64> = (0..n).map(|i| w[i * n + i]).collect();
    Ok(sort_eigen(&diag, &v, n))
}

/// Orders eigenpairs by ascending eigenvalue: values and the matching columns of `v`.
pub(crate) fn sort_eigen(diag: &[f64], v: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| diag[i].total_cmp(&diag[j]));
    let values = order.iter().map(|&i| diag[i]).collect();
    let mut vecs = vec![0.0; n * n];
    for (col, &src) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + col] = v[r * n + src];
        }
    }
    (values, vecs)
}

/// One-sided Jacobi on `gt` (n, m): the rows of `gt` are the columns of G (m, n), m >= n.
/// Rotates pairs of rows of `gt` and of `vt` (n, n) until every pair with both norms above
/// `tiny` is orthogonal to 1e-15 (cosine of the angle between them).
pub(crate) fn svd_jacobi_reference(
    gt: &mut [f64],
    vt: &mut [f64],
    m: usize,
    n: usize,
) -> Result<()> {
    let total: f64 = gt.iter().map(|x| x * x).sum();
    let tiny = (1e-15f64).powi(2) * total;
    for _ in 0..MAX_SWEEPS_F64 {
        let mut worst = 0.0f64;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (gt[p * m + i], gt[q * m + i]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if alpha.min(beta) > tiny {
                    worst = worst.max(gamma.abs() / (alpha * beta).sqrt());
                }
                let (c, s, _) = jacobi_angle(alpha, beta, gamma);
                if s == 0.0 {
                    continue;
                }
                rotate_rows(gt, m, p, q, c, s);
                rotate_rows(vt, n, p, q, c, s);
            }
        }
        if worst <= 1e-15 {
            return Ok(());
        }
    }
    Err(not_converged("svd", MAX_SWEEPS_F64))
}

fn rotate_rows(x: &mut [f64], len: usize, p: usize, q: usize, c: f64, s: f64) {
    for i in 0..len {
        let (xp, xq) = (x[p * len + i], x[q * len + i]);
        x[p * len + i] = c * xp - s * xq;
        x[q * len + i] = s * xp + c * xq;
    }
}

/// From converged `gt` (n, m) and `vt` (n, n): U (m, n), σ descending (n), Vᵀ (n, n).
/// Columns whose σ is at most `null_tol` span nothing reliable; they are replaced by an
/// orthonormal completion (Gram–Schmidt, twice, of the standard basis vector furthest from
/// the columns so far) so that UᵀU = I holds for rank-deficient and zero matrices too.
pub(crate) fn finish_svd(
    gt: &[f64],
    vt: &[f64],
    m: usize,
    n: usize,
    null_tol: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let norms: Vec<f64> = (0..n)
        .map(|j| {
            gt[j * m..(j + 1) * m]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let s: Vec<f64> = order.iter().map(|&j| norms[j]).collect();
    // Columns of U stored as rows here (n, m); transposed at the end.
    let mut ut = vec![0.0; n * m];
    let mut vt_sorted = vec![0.0; n * n];
    let mut kept = 0;
    for (k, &j) in order.iter().enumerate() {
        vt_sorted[k * n..(k + 1) * n].copy_from_slice(&vt[j * n..(j + 1) * n]);
        if s[k] > null_tol {
            for i in 0..m {
                ut[k * m + i] = gt[j * m + i] / s[k];
            }
            kept = k + 1;
        }
    }
    // Residual of each standard basis vector outside the span so far: 1 − Σ_r u_r[i]².
    // Completing with the e_i of largest residual keeps Gram–Schmidt well conditioned.
    let mut residual = vec![1.0f64; m];
    for r in 0..kept {
        for (i, res) in residual.iter_mut().enumerate() {
            *res -= ut[r * m + i] * ut[r * m + i];
        }
    }
    for k in kept..n {
        let best = (0..m).fold(0, |b, i| if residual[i] > residual[b] { i } else { b });
        let mut u = vec![0.0; m];
        u[best] = 1.0;
        for _ in 0..2 {
            for r in 0..k {
                let row = &ut[r * m..(r + 1) * m];
                let d: f64 = row.iter().zip(&u).map(|(a, b)| a * b).sum();
                u.iter_mut().zip(row).for_each(|(x, a)| *x -= d * a);
            }
        }
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        for (i, x) in u.iter().enumerate() {
            ut[k * m + i] = x / norm;
            residual[i] -= (x / norm) * (x / norm);
        }
    }
    let mut u = vec![0.0; m * n];
    for k in 0..n {
        for i in 0..m {
            u[i * n + k] = ut[k * m + i];
        }
    }
    (u, s, vt_sorted)
}

/// `svd_reference`: thin SVD of `a` (m, n): U (m, k), σ (k) descending, Vᵀ (k, n),
/// k = min(m, n).
pub(crate) fn svd_reference(
    a: &[f64],
    m: usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    if m < n {
        // Aᵀ = V Σ Uᵀ: decompose the transpose and swap the factors.
        let at = transpose(a, m, n);
        let (u2, s, vt2) = svd_reference(&at, n, m)?;
        return Ok((transpose(&vt2, m, m), s, transpose(&u2, n, m)));
    }
    let mut gt = transpose(a, m, n);
    let mut vt = identity(n);
    svd_jacobi_reference(&mut gt, &mut vt, m, n)?;
    let null_tol = 1e-13 * frobenius(a);
    Ok(finish_svd(&gt, &vt, m, n, null_tol))
}

/// (rows, cols) row-major → (cols, rows).
pub(crate) fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

pub(crate) fn identity(n: usize) -> Vec<f64> {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    v
}

pub(crate) fn frobenius(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn off_diagonal(w: &[f64], n: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                s += w[i * n + j] * w[i * n + j];
            }
        }
    }
    s.sqrt()
}

/// The error an iterative method reports when its sweep cap is reached.
pub(crate) fn not_converged(op: &'static str, sweeps: usize) -> Error {
    Error::Invalid {
        op,
        detail: format!("did not converge within {sweeps} sweeps"),
    }
}
