//! Eigenvalues of a general real square matrix (and eigenvectors of the real ones):
//! Householder reduction to Hessenberg form `A = Q H Qᵀ`, then Francis double-shift QR on H.
//!
//! What runs where:
//! - CPU device: all of it in f64 on the host (`eig_reference`): the reduction with Q
//!   formed, Francis QR, inverse iteration, `V = Q·Y` as a dense product.
//! - GPU device, orders above [`EigOptions::host_max`]: the blocked two-stage reduction of
//!   `hessenberg_blocked.rs` (issue 16): dense → block Hessenberg with device products,
//!   O(n/b) read-backs and dispatches, then block Hessenberg → Hessenberg by bulge chasing
//!   on the host in f64. Francis QR and inverse iteration run on the host in f64; the
//!   eigenvectors come back through the recorded reflectors (host) and the panels' compact
//!   WY blocks (device products, or the host when at most half the eigenvalues are real).
//! - GPU device, smaller orders: A is read back once and reduced on the host in f64,
//!   without forming Q; the reflectors go to the real eigenvalues' vectors only, and the
//!   result is uploaded. On a software adapter that is every order up to 1024 (see
//!   `host_max`). The one-reflector-per-column GPU kernels this replaced (3 dispatches per
//!   column, Q accumulated on the device) lost to the f64 reference at every size.
//!
//! Inverse iteration's solves are independent and shared out to the available threads.
//!
//! Measured on lavapipe, one sitting, two cores shared with other builds (load 6–7), ms,
//! random uniform(−1, 1) input, best of a few runs (ranges: two runs):
//!
//! | n | GPU before | GPU now | GPU blocked | f64 reference | NumPy (1 thread) |
//! | --- | --- | --- | --- | --- | --- |
//! | 128 | 71–95 (885) | 4.0 (0) | no panel yet | 9.6 → 4.9–11.7 | 16 |
//! | 256 | 435–704 (1,782) | 31–63 (0) | 48–60 (22) | 63–87 → 55–71 | 64 |
//! | 512 | 3,379–3,683 (3,573) | 405–528 (0) | 708–728 (62) | 779–791 → 545–706 | 417 |
//!
//! (Dispatches in brackets. Before: the unblocked kernels; blocked: `host_max: Some(0)`;
//! the reference got faster from the threaded inverse iteration and leaner Francis steps.)
//! (NumPy computes every eigenvector, complex ones too; this computes the real ones'.)

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::host_qr::householder;
use crate::linalg::hessenberg_blocked;
use crate::linalg::qr::{apply_left, apply_right};
use crate::linalg::{check_nonempty, check_square, gpu_stats, non_finite_error};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Options of [`eig_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EigOptions {
    /// Francis iterations allowed per eigenvalue (or pair) before giving up with "did not
    /// converge"; exceptional shifts are tried every 10.
    pub max_iterations: usize,
    /// GPU device only: matrices of order up to this are reduced to Hessenberg form on the
    /// host (one read-back); larger ones by the blocked device reduction. `None`: chosen by
    /// the adapter (see [`eig`]).
    pub host_max: Option<usize>,
}

impl Default for EigOptions {
    fn default() -> Self {
        EigOptions {
            max_iterations: 60,
            host_max: None,
        }
    }
}

/// The eigen-decomposition of a general real matrix, on the input's device.
#[derive(Clone, Debug)]
pub struct Eig {
    /// Real parts of the eigenvalues, `(n)`, ascending; a complex-conjugate pair is adjacent,
    /// the one with positive imaginary part first.
    pub re: Tensor,
    /// Imaginary parts, `(n)` (zero for real eigenvalues).
    pub im: Tensor,
    /// `(n, n)`: column j is a unit eigenvector (sign arbitrary) when eigenvalue j is real,
    /// and zero when it is one of a complex pair.
    pub vectors: Tensor,
}

/// Eigenvalues `(re, im)` of a square matrix, with eigenvectors for the real ones (see
/// [`Eig`]). For symmetric input [`eigh`](super::eigh) is faster and gives orthonormal vectors.
///
/// ```
/// use wgrad::{linalg, Device, Tensor};
/// # fn main() -> wgrad::Result<()> {
/// let w = Tensor::from_slice(&Device::cpu(), &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
/// let e = linalg::eig(&w)?;
/// let re = e.re.to_vec::<f32>()?;
/// assert!((re[0] + 0.3723).abs() < 1e-4 && (re[1] - 5.3723).abs() < 1e-4);
/// # Ok(()) }
/// ```
pub fn eig(a: &Tensor) -> Result<Eig> {
    eig_with(a, &EigOptions::default())
}

/// [`eig`] with options.
pub fn eig_with(a: &Tensor, opts: &EigOptions) -> Result<Eig> {
    let op = "eig";
    let n = check_square(op, a)?;
    check_nonempty(op, a)?;
    match &a.device().inner {
        DeviceInner::Cpu => {
            let x = super::host_finite(op, a, n, n)?;
            let (re, im, v) = eig_reference(&x, n, opts.max_iterations)?;
            Ok(Eig {
                re: super::tensor_from_f64(a, &re, &[n])?,
                im: super::tensor_from_f64(a, &im, &[n])?,
                vectors: super::tensor_from_f64(a, &v, &[n, n])?,
            })
        }
        DeviceInner::Gpu(ctx) => {
            let Some((x, _)) = a.gpu_arg() else {
                unreachable!("GPU device holds GPU tensors")
            };
            ctx.check_binding(op, a.shape(), (n * n * 4) as u64)?;
            let red = if n <= opts.host_max.unwrap_or_else(|| host_max(ctx)) {
                // One read-back, checked for NaN/Inf on the host.
                let x = a.to_vec_f64()?;
                let stats = super::host_stats(&x, n, n);
                if stats.non_finite > 0 {
                    return Err(non_finite_error(op, a.shape(), stats.non_finite));
                }
                hessenberg_blocked::reduce_on_host(x, n)
            } else {
                let stats = gpu_stats(ctx, op, x, n, n)?;
                if stats.non_finite > 0 {
                    return Err(non_finite_error(op, a.shape(), stats.non_finite));
                }
                hessenberg_blocked::reduce(ctx, a, n)?
            };
            let (re, im, y) = eig_hessenberg(&red.h, n, opts.max_iterations)?;
            let real: Vec<usize> = (0..n).filter(|&j| im[j] == 0.0).collect();
            Ok(Eig {
                re: super::tensor_from_f64(a, &re, &[n])?,
                im: super::tensor_from_f64(a, &im, &[n])?,
                vectors: red.back_transform(ctx, a, y, n, &real)?,
            })
        }
    }
}

/// Orders up to this are reduced on the host whole (one read-back), by adapter. On a
/// software adapter (lavapipe) the device is the same cores as the host, and the two-stage
/// device path does more work in all (4n³ flops of products, then a 2n³ host chase) than
/// the host's direct reduction (10/3 n³, no Q formed): measured there, the direct reduction
/// takes 63 ms at 512 against 150 ms, and 1.2 s at 1024 against 1.25–1.55 s. On a hardware
/// GPU the products are the cheap part, so only small orders stay on the host (as eigh's).
fn host_max(ctx: &GpuContext) -> usize {
    if ctx.info.device_type == wgpu::DeviceType::Cpu {
        1024
    } else {
        128
    }
}

// ----- f64 reference and the host half of the GPU path -----

/// `eig_reference`: (re, im, vectors (n, n) row-major) of `a` (n, n), all in f64.
pub(crate) fn eig_reference(
    a: &[f64],
    n: usize,
    max_its: usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (h, q) = hessenberg_reference(a, n);
    let (re, im, y) = eig_hessenberg(&h, n, max_its)?;
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = q[i * n + k];
            for j in 0..n {
                v[i * n + j] += x * y[k * n + j];
            }
        }
    }
    Ok((re, im, v))
}

/// `A = Q H Qᵀ` with H upper Hessenberg: (H, Q), row-major (n, n).
pub(crate) fn hessenberg_reference(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut h = a.to_vec();
    let mut refl = Vec::new();
    for k in 0..n.saturating_sub(2) {
        let x: Vec<f64> = (k + 1..n).map(|i| h[i * n + k]).collect();
        let (v, tau, alpha) = householder(&x);
        if tau != 0.0 {
            h[(k + 1) * n + k] = alpha;
            for i in k + 2..n {
                h[i * n + k] = 0.0;
            }
            apply_left(&mut h, n, k + 1, k + 1, &v, tau);
            apply_right(&mut h, n, k + 1, 0, &v, tau);
        }
        refl.push((v, tau));
    }
    let mut q = vec![0.0; n * n];
    for i in 0..n {
        q[i * n + i] = 1.0;
    }
    for (k, (v, tau)) in refl.iter().enumerate().rev() {
        apply_left(&mut q, n, k + 1, k + 1, v, *tau);
    }
    (h, q)
}

/// Eigenvalues of the Hessenberg `h` (sorted as [`Eig`] documents) and Y (n, n): unit
/// eigenvectors of H for the real ones (inverse iteration), zero columns for complex pairs.
fn eig_hessenberg(h: &[f64], n: usize, max_its: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let norm = h.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (wr, wi) = if norm == 0.0 {
        (vec![0.0; n], vec![0.0; n])
    } else {
        hqr(&mut h.to_vec(), n, max_its)?
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| wr[i].total_cmp(&wr[j]).then(wi[j].total_cmp(&wi[i])));
    // (column, eigenvalue) of the real eigenvalues: independent solves, shared out to the
    // available threads (each an O(n²) elimination and three solves).
    let real: Vec<(usize, f64)> = order
        .iter()
        .enumerate()
        .filter(|&(_, &src)| wi[src] == 0.0)
        .map(|(col, &src)| (col, wr[src]))
        .collect();
    let solve = |&(col, lambda): &(usize, f64)| -> Vec<f64> {
        if norm == 0.0 {
            (0..n).map(|i| if i == col { 1.0 } else { 0.0 }).collect()
        } else {
            inverse_iteration(h, n, lambda, norm, col as u64)
        }
    };
    let threads = if n >= 64 {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    } else {
        1
    }
    .min(real.len())
    .max(1);
    let vecs: Vec<Vec<f64>> = if threads == 1 {
        real.iter().map(solve).collect()
    } else {
        let chunk = real.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let handles: Vec<_> = real
                .chunks(chunk)
                .map(|part| sc.spawn(move || part.iter().map(solve).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("inverse iteration thread"))
                .collect()
        })
    };
    let mut y = vec![0.0; n * n];
    for (&(col, _), v) in real.iter().zip(&vecs) {
        for i in 0..n {
            y[i * n + col] = v[i];
        }
    }
    let re = order.iter().map(|&i| wr[i]).collect();
    let im = order.iter().map(|&i| wi[i]).collect();
    Ok((re, im, y))
}

/// Unit y with `H y ≈ λ y`: three solves of `(H − λI) y' = y` by Gaussian elimination with
/// partial pivoting on the Hessenberg matrix (pivots at most one row apart), tiny pivots
/// replaced by `1e-14·‖H‖` as in LAPACK's hsein. The seeded start vector makes repeated
/// eigenvalues get different vectors of their eigenspace.
fn inverse_iteration(h: &[f64], n: usize, lambda: f64, norm: f64, seed: u64) -> Vec<f64> {
    let eps = 1e-14 * norm;
    let mut u = h.to_vec();
    for i in 0..n {
        u[i * n + i] -= lambda;
    }
    let mut swapped = vec![false; n];
    let mut mult = vec![0.0; n];
    for k in 0..n.saturating_sub(1) {
        if u[(k + 1) * n + k].abs() > u[k * n + k].abs() {
            for c in k..n {
                u.swap(k * n + c, (k + 1) * n + c);
            }
            swapped[k] = true;
        }
        if u[k * n + k] == 0.0 {
            u[k * n + k] = eps;
        }
        let l = u[(k + 1) * n + k] / u[k * n + k];
        mult[k] = l;
        for c in k..n {
            u[(k + 1) * n + c] -= l * u[k * n + c];
        }
    }
    for k in 0..n {
        if u[k * n + k].abs() < eps {
            u[k * n + k] = if u[k * n + k] < 0.0 { -eps } else { eps };
        }
    }
    let mut rng = Rng::new(0x5eed ^ seed);
    let mut y: Vec<f64> = (0..n).map(|_| 1.0 + 0.5 * rng.normal()).collect();
    for _ in 0..3 {
        for k in 0..n.saturating_sub(1) {
            if swapped[k] {
                y.swap(k, k + 1);
            }
            y[k + 1] -= mult[k] * y[k];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|c| u[i * n + c] * y[c]).sum();
            y[i] = (y[i] - s) / u[i * n + i];
        }
        let big = y.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        y.iter_mut().for_each(|x| *x /= big);
        let len = y.iter().map(|x| x * x).sum::<f64>().sqrt();
        y.iter_mut().for_each(|x| *x /= len);
    }
    y
}

/// Eigenvalues (wr, wi) of the upper Hessenberg `a` (n, n, row-major; destroyed) by the
/// Francis double-shift QR iteration with deflation (EISPACK's hqr, as in Numerical
/// Recipes), `max_its` iterations per eigenvalue or pair, exceptional shifts every 10.
fn hqr(a: &mut [f64], n: usize, max_its: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let ix = |i: usize, j: usize| i * n + j;
    let (mut wr, mut wi) = (vec![0.0; n], vec![0.0; n]);
    let mut anorm = 0.0;
    for i in 0..n {
        for j in i.saturating_sub(1)..n {
            anorm += a[ix(i, j)].abs();
        }
    }
    let mut t = 0.0;
    let mut nn = n;
    while nn > 0 {
        let e = nn - 1; // the last row still active
        let mut its = 0;
        loop {
            // l: start of the unreduced block ending at e (a negligible subdiagonal above it).
            let mut l = e;
            while l >= 1 {
                let mut s = a[ix(l - 1, l - 1)].abs() + a[ix(l, l)].abs();
                if s == 0.0 {
                    s = anorm;
                }
                if a[ix(l, l - 1)].abs() + s == s {
                    a[ix(l, l - 1)] = 0.0;
                    break;
                }
                l -= 1;
            }
            let mut x = a[ix(e, e)];
            if l == e {
                wr[e] = x + t;
                wi[e] = 0.0;
                nn -= 1;
                break;
            }
            let mut y = a[ix(e - 1, e - 1)];
            let mut w = a[ix(e, e - 1)] * a[ix(e - 1, e)];
            if l == e - 1 {
                // A 2x2 block: its two roots.
                let p = 0.5 * (y - x);
                let q = p * p + w;
                let z = q.abs().sqrt();
                x += t;
                if q >= 0.0 {
                    let z = p + if p >= 0.0 { z } else { -z };
                    wr[e - 1] = x + z;
                    wr[e] = if z != 0.0 { x - w / z } else { x + z };
                    wi[e - 1] = 0.0;
                    wi[e] = 0.0;
                } else {
                    wr[e - 1] = x + p;
                    wr[e] = x + p;
                    wi[e - 1] = z;
                    wi[e] = -z;
                }
                nn -= 2;
                break;
            }
            if its == max_its {
                return Err(Error::Invalid {
                    op: "eig",
                    detail: format!(
                        "did not converge within {max_its} iterations (matrix of order {n}, \
                         {nn} eigenvalues left)"
                    ),
                });
            }
            if its > 0 && its % 10 == 0 {
                // Exceptional shift: breaks cycles of the standard shift.
                t += x;
                for i in 0..=e {
                    a[ix(i, i)] -= x;
                }
                let s = a[ix(e, e - 1)].abs() + a[ix(e - 1, e - 2)].abs();
                x = 0.75 * s;
                y = x;
                w = -0.4375 * s * s;
            }
            its += 1;
            // m: where the double-shift bulge starts (two small consecutive subdiagonals).
            let mut m = e - 2;
            let (mut p, mut q, mut r);
            loop {
                let z = a[ix(m, m)];
                let r0 = x - z;
                let s0 = y - z;
                p = (r0 * s0 - w) / a[ix(m + 1, m)] + a[ix(m, m + 1)];
                q = a[ix(m + 1, m + 1)] - z - r0 - s0;
                r = a[ix(m + 2, m + 1)];
                let s = p.abs() + q.abs() + r.abs();
                if s != 0.0 {
                    p /= s;
                    q /= s;
                    r /= s;
                }
                if m == l {
                    break;
                }
                let u = a[ix(m, m - 1)].abs() * (q.abs() + r.abs());
                let v = p.abs() * (a[ix(m - 1, m - 1)].abs() + z.abs() + a[ix(m + 1, m + 1)].abs());
                if u + v == v {
                    break;
                }
                m -= 1;
            }
            for i in m + 2..=e {
                a[ix(i, i - 2)] = 0.0;
                if i != m + 2 {
                    a[ix(i, i - 3)] = 0.0;
                }
            }
            // The double QR step on rows l..=e, columns m..=e: chase the bulge down.
            for k in m..e {
                let mut xs = 0.0;
                if k != m {
                    p = a[ix(k, k - 1)];
                    q = a[ix(k + 1, k - 1)];
                    r = if k != e - 1 { a[ix(k + 2, k - 1)] } else { 0.0 };
                    xs = p.abs() + q.abs() + r.abs();
                    if xs != 0.0 {
                        p /= xs;
                        q /= xs;
                        r /= xs;
                    }
                }
                let sq = (p * p + q * q + r * r).sqrt();
                let s = if p >= 0.0 { sq } else { -sq };
                if s == 0.0 {
                    continue;
                }
                if k == m {
                    if l != m {
                        a[ix(k, k - 1)] = -a[ix(k, k - 1)];
                    }
                } else {
                    a[ix(k, k - 1)] = -s * xs;
                }
                p += s;
                let (xk, yk, zk) = (p / s, q / s, r / s);
                q /= p;
                r /= p;
                // The rows k..k+2 (columns k..=e) and the columns k..k+2 (rows l..=k+3) as
                // slices: one bounds check per row instead of per element, and the 2- or
                // 3-row choice made once per step.
                let (top, below) = a[k * n..].split_at_mut(n);
                let (mid, below) = below.split_at_mut(n);
                let (r0, r1) = (&mut top[k..=e], &mut mid[k..=e]);
                if k != e - 1 {
                    let r2 = &mut below[k..=e];
                    for ((x0, x1), x2) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()) {
                        let pp = *x0 + q * *x1 + r * *x2;
                        *x2 -= pp * zk;
                        *x1 -= pp * yk;
                        *x0 -= pp * xk;
                    }
                } else {
                    for (x0, x1) in r0.iter_mut().zip(r1.iter_mut()) {
                        let pp = *x0 + q * *x1;
                        *x1 -= pp * yk;
                        *x0 -= pp * xk;
                    }
                }
                let rows = e.min(k + 3) + 1 - l;
                for row in a[l * n..].chunks_exact_mut(n).take(rows) {
                    if k != e - 1 {
                        let c = &mut row[k..k + 3];
                        let pp = xk * c[0] + yk * c[1] + zk * c[2];
                        c[2] -= pp * r;
                        c[1] -= pp * q;
                        c[0] -= pp;
                    } else {
                        let c = &mut row[k..k + 2];
                        let pp = xk * c[0] + yk * c[1];
                        c[1] -= pp * q;
                        c[0] -= pp;
                    }
                }
            }
        }
    }
    Ok((wr, wi))
}
