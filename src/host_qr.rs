//! Blocked Householder QR on the host, in f64 on every core: the GPU path's choice for the
//! sizes where a device round trip per panel costs more than the work (see `host_max` in
//! `linalg/qr.rs`).
//!
//! The same compact-WY algorithm as `qr_blocked.rs`, with the same panels
//! ([`factor_panel`]) and the same sign convention, but the trailing updates run as
//! cache-friendly row kernels instead of device products. The matrix is held transposed,
//! `Aᵀ (n, m)`, so that a column of A is a contiguous row, and every update is row-wise:
//! a row `x` (a column of A, or of Q) takes `x ← x − ((x V) S) Vᵀ` with `S = T` for R and
//! `S = Tᵀ` for Q. Rows are independent, so they are split between threads.
//!
//! Why it beats the unblocked reference (`qr_reference`, one reflector at a time over the
//! whole trailing matrix): each panel reads the trailing rows twice instead of `2b` times,
//! the panel's `V` stays in cache while it does, and the rows run on all cores.
//!
//! It sits below the graph and `linalg` (it needs nothing of the crate), with the host
//! Householder pieces it is built from ([`householder`], [`factor_panel`], [`host_dot`]):
//! `linalg`'s QR, eigen and SVD paths use them, and so does `Init::Orthogonal`, which must
//! not import `linalg` from the graph layer.

/// Widest panel. `V` (`32·m` f64) stays in L2 up to m = 1024, and the serial panel work
/// (`O(m·b²)`) small.
const BLOCK: usize = 32;

/// Panel width for `n` columns. Measured on the host alone (two cores, load 1.3, ms per
/// square QR at 64 / 128 / 256): b = 8: 0.062 / 0.61 / 3.43; 16: 0.067 / 0.56 / 3.40;
/// 32: 0.090 / 0.58 / 3.75; 64: 0.16 / 0.90 / 4.18 (the reference: 0.095 / 0.74–0.81 /
/// 5.7–6.0). Small matrices want narrow panels (less serial panel work for few trailing
/// columns), large ones products wide enough to run near the FMA rate.
fn block_width(n: usize) -> usize {
    if n <= 256 {
        16
    } else {
        BLOCK
    }
}

/// Rows of trailing work below which a panel's update stays on the calling thread: a
/// thread costs tens of microseconds to start, about the time of this many row updates
/// of a 128-long panel.
const PARALLEL_MIN_FLOPS: usize = 1 << 22;

/// The factored panel in the layouts the row kernel reads: `Vᵀ (jb, m)` for the final
/// axpys and `V (m, jb)` for the dot products (a row of V is the jb reflectors' entries at
/// one position, so `x V` is an accumulation of short contiguous vectors, no reduction).
struct Block {
    j: usize,
    jb: usize,
    vt: Vec<f64>,
    v: Vec<f64>,
    t: Vec<f64>,
}

/// `Q (m, qc)` and `R (min(m, qc'), n)` of the row-major `a (m, n)`, in f64: `R` has `rr`
/// rows (`min(m, n)` for the reduced factorisation, `m` for the complete one), `Q` has `qc`
/// columns (the same choice). Reflectors as the reference's: `nref = min(n, m − 1)`.
pub(crate) fn qr_host(a: &[f64], m: usize, n: usize, qc: usize, rr: usize) -> (Vec<f64>, Vec<f64>) {
    let mut at = transpose(a, m, n); // (n, m)
    let nref = n.min(m.saturating_sub(1));
    let block = block_width(n);
    let mut blocks = Vec::with_capacity(nref.div_ceil(block));
    for j in (0..nref).step_by(block) {
        let jb = block.min(nref - j);
        let hp = factor_panel(&at[j * m..(j + jb) * m], j, jb, m);
        at[j * m..(j + jb) * m].copy_from_slice(&hp.cols);
        let mut v = vec![0.0; m * jb];
        for c in 0..jb {
            for l in j..m {
                v[l * jb + c] = hp.vt[c * m + l];
            }
        }
        let block = Block {
            j,
            jb,
            vt: hp.vt,
            v,
            t: hp.t,
        };
        update_rows(&mut at[(j + jb) * m..], m, &block, false);
        blocks.push(block);
    }
    // Qᵀ (qc, m) from the identity, last block first; block b changes only rows j.. (the
    // columns of Q its reflectors reach), and in those only entries j.. (the earlier
    // columns of the identity are untouched by later reflectors).
    let mut qt = vec![0.0; qc * m];
    for i in 0..qc.min(m) {
        qt[i * m + i] = 1.0;
    }
    for b in blocks.iter().rev() {
        if b.j < qc {
            update_rows(&mut qt[b.j * m..], m, b, true);
        }
    }
    let q = transpose(&qt, qc, m); // (m, qc)
    let mut r = vec![0.0; rr * n];
    for (c, col) in at.chunks_exact(m).enumerate() {
        for (i, &x) in col.iter().take(rr).enumerate() {
            r[i * n + c] = x;
        }
    }
    (q, r)
}

/// The row-major transpose of `x (rows, cols)`.
fn transpose(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for (i, row) in x.chunks_exact(cols).enumerate() {
        for (k, &e) in row.iter().enumerate() {
            out[k * rows + i] = e;
        }
    }
    out
}

/// Every row `x` (length m) of `rows` takes `x ← x − ((x V) S) Vᵀ`, `S = Tᵀ` when
/// `transposed_t` (Q's accumulation) else `T` (R's trailing update): three host matrix
/// products over the entries `j..` (V is zero before row j), split by rows between threads
/// when the work pays for them.
fn update_rows(rows: &mut [f64], m: usize, b: &Block, transposed_t: bool) {
    let count = rows.len() / m;
    if count == 0 {
        return;
    }
    let flops = 4 * count * b.jb * (m - b.j);
    let threads = if flops < PARALLEL_MIN_FLOPS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    };
    if threads <= 1 {
        update_block(rows, m, b, transposed_t);
        return;
    }
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        for chunk in rows.chunks_mut(per * m) {
            s.spawn(move || update_block(chunk, m, b, transposed_t));
        }
    });
}

/// [`update_rows`] on one thread: `W = X V`, `W ← W S`, `X −= W Vᵀ` with `X = rows[:, j..]`.
fn update_block(rows: &mut [f64], m: usize, b: &Block, transposed_t: bool) {
    let (j, jb) = (b.j, b.jb);
    let (count, k) = (rows.len() / m, m - j);
    let mut w = vec![0.0; count * jb];
    let mut ws = vec![0.0; count * jb];
    // T (jb, jb) row-major; Tᵀ is the same buffer with its strides swapped.
    let (rst, cst) = if transposed_t {
        (1, jb as isize)
    } else {
        (jb as isize, 1)
    };
    // SAFETY: every pointer and stride describes memory inside the slice it comes from:
    // `rows` is (count, m) row-major and its sub-block starts at column j, `b.v` is (m, jb)
    // from row j, `b.vt` is (jb, m) from column j, `b.t` is (jb, jb), `w`/`ws` are
    // (count, jb); the output never aliases an input.
    unsafe {
        let x = rows.as_mut_ptr().add(j);
        matrixmultiply::dgemm(
            count,
            k,
            jb,
            1.0,
            x,
            m as isize,
            1,
            b.v.as_ptr().add(j * jb),
            jb as isize,
            1,
            0.0,
            w.as_mut_ptr(),
            jb as isize,
            1,
        );
        matrixmultiply::dgemm(
            count,
            jb,
            jb,
            1.0,
            w.as_ptr(),
            jb as isize,
            1,
            b.t.as_ptr(),
            rst,
            cst,
            0.0,
            ws.as_mut_ptr(),
            jb as isize,
            1,
        );
        matrixmultiply::dgemm(
            count,
            jb,
            k,
            -1.0,
            ws.as_ptr(),
            jb as isize,
            1,
            b.vt.as_ptr().add(j),
            m as isize,
            1,
            1.0,
            x,
            m as isize,
            1,
        );
    }
}

/// The reflector of `x`: `(v, τ, α)` with `(I − τvvᵀ)x = α e₀`, `α = −sign(x₀)‖x‖`, v scaled
/// by `1/max|x|` as on the GPU. A zero `x` gives `τ = 0`.
pub(crate) fn householder(x: &[f64]) -> (Vec<f64>, f64, f64) {
    let scale = x.iter().fold(0.0f64, |s, v| s.max(v.abs()));
    if scale == 0.0 {
        return (vec![0.0; x.len()], 0.0, 0.0);
    }
    let mut v: Vec<f64> = x.iter().map(|&e| e / scale).collect();
    let norm = v.iter().map(|e| e * e).sum::<f64>().sqrt();
    let x0 = v[0];
    let alpha = if x0 >= 0.0 { -norm } else { norm };
    v[0] = x0 - alpha;
    (v, 1.0 / (norm * (norm + x0.abs())), alpha * scale)
}

/// The host half of one panel, row-major: the factored columns `(jb, m)` (R's entries above
/// and on the diagonal, exact zeros below), `Vᵀ (jb, m)` and `T (jb, jb)`.
pub(crate) struct HostPanel {
    pub cols: Vec<f64>,
    pub vt: Vec<f64>,
    pub t: Vec<f64>,
}

/// Factors the panel `p` (jb, m): row c is column `j + c` of A, already updated by the
/// earlier panels. Reflector c acts on entries `j + c..m`.
pub(crate) fn factor_panel(p: &[f64], j: usize, jb: usize, m: usize) -> HostPanel {
    let mut cols = p.to_vec();
    let mut vt = vec![0.0; jb * m];
    let mut tau = vec![0.0; jb];
    for c in 0..jb {
        let col = j + c;
        let (v, t, alpha) = householder(&cols[c * m + col..(c + 1) * m]);
        if t != 0.0 {
            cols[c * m + col] = alpha;
            cols[c * m + col + 1..(c + 1) * m].fill(0.0);
            for c2 in c + 1..jb {
                let x = &mut cols[c2 * m + col..(c2 + 1) * m];
                let d = host_dot(x, &v);
                x.iter_mut().zip(&v).for_each(|(a, b)| *a -= t * d * b);
            }
        }
        vt[c * m + col..(c + 1) * m].copy_from_slice(&v);
        tau[c] = t;
    }
    // Z = Vᵀ V (jb, jb), one host product over the entries j.. (V is zero before them).
    let mut z = vec![0.0; jb * jb];
    let k = m - j;
    // SAFETY: Vᵀ is `vt` (jb, m) from column j, read as A (jb, k) and as B = V (k, jb);
    // `z` is (jb, jb) and aliases neither.
    unsafe {
        let v0 = vt.as_ptr().add(j);
        matrixmultiply::dgemm(
            jb,
            k,
            jb,
            1.0,
            v0,
            m as isize,
            1,
            v0,
            1,
            m as isize,
            0.0,
            z.as_mut_ptr(),
            jb as isize,
            1,
        );
    }
    // T: T[i][i] = τᵢ, T[0..i, i] = −τᵢ T[0..i, 0..i] (Vᵀ vᵢ)[0..i].
    let mut t = vec![0.0; jb * jb];
    for i in 0..jb {
        for r in 0..i {
            let s: f64 = (r..i).map(|q| t[r * jb + q] * z[q * jb + i]).sum();
            t[r * jb + i] = -tau[i] * s;
        }
        t[i * jb + i] = tau[i];
    }
    HostPanel { cols, vt, t }
}

/// `Σ xᵢyᵢ` in four interleaved partial sums, so that the compiler may vectorise it (a
/// single f64 accumulator must be summed in order).
pub(crate) fn host_dot(x: &[f64], y: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let tail: f64 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..4 {
            s[k] += a[k] * b[k];
        }
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}
