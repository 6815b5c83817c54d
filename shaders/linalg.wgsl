// linalg.wgsl — the GPU halves of the decompositions in src/linalg/: parallel cyclic
// Jacobi for the symmetric eigenproblem (two-sided) and for the SVD (one-sided).
//
// Both use the round-robin (circle) pairing of N = n rounded up to even indices: step r of a
// sweep pairs every index with exactly one other, so the N/2 rotations of a step touch
// disjoint rows/columns and run in parallel; N-1 steps meet every pair once. With n odd the
// index n is a bye: its pair is skipped (c = 1, s = 0).
//
// Entry points (workgroup size 256, one invocation per item, grid split over x/y/z; the two
// per-pair `*_rotations` entries use workgroups of 32 so that their few long invocations
// spread over the cores of a CPU adapter):
//   matrix_stats     per row of a (rows, cols) matrix: off-diagonal and total sum of squares,
//                    largest |a_ij - a_ji| (square only), count of NaN/Inf entries
//   diag_forward     out[i] = a[i, i], i < min(rows, cols)
//   jacobi_init      W = A or (A + Aᵀ)/2, V = I
//   jacobi_rotations one invocation per pair: the rotation zeroing W[p, q]
//   jacobi_apply     W ← JᵀWJ by 2x2 blocks (one per pair of pairs), V ← VJ
//   svd_init         Vt = I
//   svd_rotations    one invocation per pair: column dot products of G, the rotation that
//                    makes columns p and q orthogonal, and the sweep's largest |cos angle|
//   svd_apply        rotates rows p, q of Gt (= columns of G) and of Vt

struct Params {
    n: u32,     // matrix order (eigh) or number of columns (svd); `rows` for matrix_stats
    big_n: u32, // n rounded up to even: players of the round-robin; `cols` for matrix_stats
    step: u32,  // step of the sweep, 0..big_n-1; `symmetrize` flag for jacobi_init
    m: u32,     // svd: rows of G
    tiny: f32,  // svd: pairs with min(|g_p|², |g_q|²) <= tiny do not count for convergence
}

@group(0) @binding(0) var<uniform> params: Params;

// Bindings are declared per entry (auto layout): each entry uses 1..k contiguously.
@group(0) @binding(1) var<storage, read> src: array<f32>;          // stats/diag/init: input matrix
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;  // (rows, 4) / (n) diag out
@group(0) @binding(2) var<storage, read_write> w_init: array<f32>; // jacobi_init: W (n, n)
@group(0) @binding(3) var<storage, read_write> v_init: array<f32>; // jacobi_init: V (n, n)
@group(0) @binding(1) var<storage, read_write> w: array<f32>;      // eigh: W (n, n); svd: Gt (n, m)
@group(0) @binding(2) var<storage, read_write> rot: array<vec4<f32>>; // (big_n/2): c, s, t, -
@group(0) @binding(3) var<storage, read_write> v: array<f32>;      // eigh: V (n, n); svd: Vt (n, n)
@group(0) @binding(3) var<storage, read_write> conv: array<f32>;   // svd_rotations: (big_n/2) max |cos|

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

fn linear_index_32(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 32u + lid;
}

fn non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

// The pair k of round-robin step r among big_n players, as (p, q) with p < q.
// Player 0 stays; the others rotate one seat per step (circle method).
fn pair_of(k: u32, r: u32, big_n: u32) -> vec2<u32> {
    let ring = big_n - 1u;
    let seat_a = k;
    let seat_b = big_n - 1u - k;
    var a = 0u;
    if (seat_a > 0u) { a = 1u + (seat_a - 1u + r) % ring; }
    let b = 1u + (seat_b - 1u + r) % ring;
    return vec2<u32>(min(a, b), max(a, b));
}

// Rotation (c, s, t) with t = tan φ that zeroes the off-diagonal of [[app, apq], [apq, aqq]]
// under JᵀAJ, J = [[c, s], [-s, c]] (the stable small-angle root; Numerical Recipes).
fn jacobi_angle(app: f32, aqq: f32, apq: f32) -> vec4<f32> {
    if (apq == 0.0) {
        return vec4<f32>(1.0, 0.0, 0.0, 0.0);
    }
    let theta = (aqq - app) / (2.0 * apq);
    var t = 1.0 / (abs(theta) + sqrt(theta * theta + 1.0));
    if (abs(theta) > 1e18) { t = 0.5 / abs(theta); } // θ² would overflow
    if (theta < 0.0) { t = -t; }
    let c = 1.0 / sqrt(t * t + 1.0);
    return vec4<f32>(c, t * c, t, 0.0);
}

@compute @workgroup_size(256)
fn matrix_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let rows = params.n;
    let cols = params.big_n;
    let i = linear_index(wg, nwg, lid);
    if (i >= rows) { return; }
    var off = 0.0;
    var total = 0.0;
    var asym = 0.0;
    var bad = 0.0;
    for (var j = 0u; j < cols; j++) {
        let x = src[i * cols + j];
        if (non_finite(x)) { bad += 1.0; continue; }
        total += x * x;
        if (j != i) { off += x * x; }
        if (rows == cols) {
            let y = src[j * cols + i];
            if (!non_finite(y)) { asym = max(asym, abs(x - y)); }
        }
    }
    stats[4u * i] = off;
    stats[4u * i + 1u] = total;
    stats[4u * i + 2u] = asym;
    stats[4u * i + 3u] = bad;
}

@compute @workgroup_size(256)
fn diag_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    stats[i] = src[i * params.big_n + i]; // n = min(rows, cols), big_n = cols
}

@compute @workgroup_size(256)
fn jacobi_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let idx = linear_index(wg, nwg, lid);
    if (idx >= n * n) { return; }
    let i = idx / n;
    let j = idx % n;
    var x = src[idx];
    if (params.step != 0u) { x = 0.5 * (x + src[j * n + i]); }
    w_init[idx] = x;
    v_init[idx] = select(0.0, 1.0, i == j);
}

@compute @workgroup_size(32)
fn jacobi_rotations(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let k = linear_index_32(wg, nwg, lid);
    if (k >= params.big_n / 2u) { return; }
    let pq = pair_of(k, params.step, params.big_n);
    if (pq.y >= n) {
        rot[k] = vec4<f32>(1.0, 0.0, 0.0, 0.0);
        return;
    }
    rot[k] = jacobi_angle(w[pq.x * n + pq.x], w[pq.y * n + pq.y], w[pq.x * n + pq.y]);
}

// Invocations [0, P²) each own the 2x2 block (rows of pair k1, columns of pair k2) of W, so
// the in-place update is race-free; invocations [P², P² + nP) rotate columns of V.
@compute @workgroup_size(256)
fn jacobi_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let half = params.big_n / 2u;
    let idx = linear_index(wg, nwg, lid);
    if (idx < half * half) {
        let k1 = idx / half;
        let k2 = idx % half;
        let r1 = pair_of(k1, params.step, params.big_n);
        let r2 = pair_of(k2, params.step, params.big_n);
        let g1 = rot[k1];
        let g2 = rot[k2];
        let q1ok = r1.y < n;
        let q2ok = r2.y < n;
        if (k1 == k2) {
            // Diagonal block: the rotation's own pair; set the zeroed form exactly.
            if (q1ok && g1.y != 0.0) {
                let apq = w[r1.x * n + r1.y];
                w[r1.x * n + r1.x] -= g1.z * apq;
                w[r1.y * n + r1.y] += g1.z * apq;
                w[r1.x * n + r1.y] = 0.0;
                w[r1.y * n + r1.x] = 0.0;
            }
            return;
        }
        var b00 = w[r1.x * n + r2.x];
        var b01 = 0.0;
        var b10 = 0.0;
        var b11 = 0.0;
        if (q2ok) { b01 = w[r1.x * n + r2.y]; }
        if (q1ok) { b10 = w[r1.y * n + r2.x]; }
        if (q1ok && q2ok) { b11 = w[r1.y * n + r2.y]; }
        // Rows: Jᵀ B
        let t00 = g1.x * b00 - g1.y * b10;
        let t01 = g1.x * b01 - g1.y * b11;
        let t10 = g1.y * b00 + g1.x * b10;
        let t11 = g1.y * b01 + g1.x * b11;
        // Columns: (Jᵀ B) J
        w[r1.x * n + r2.x] = g2.x * t00 - g2.y * t01;
        if (q2ok) { w[r1.x * n + r2.y] = g2.y * t00 + g2.x * t01; }
        if (q1ok) { w[r1.y * n + r2.x] = g2.x * t10 - g2.y * t11; }
        if (q1ok && q2ok) { w[r1.y * n + r2.y] = g2.y * t10 + g2.x * t11; }
        return;
    }
    let j = idx - half * half;
    if (j >= n * half) { return; }
    let i = j / half;
    let k = j % half;
    let pq = pair_of(k, params.step, params.big_n);
    let g = rot[k];
    if (pq.y >= n || g.y == 0.0) { return; }
    let vp = v[i * n + pq.x];
    let vq = v[i * n + pq.y];
    let tau = g.y / (1.0 + g.x);
    v[i * n + pq.x] = vp - g.y * (vq + tau * vp);
    v[i * n + pq.y] = vq + g.y * (vp - tau * vq);
}

@compute @workgroup_size(256)
fn svd_init(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let idx = linear_index(wg, nwg, lid);
    if (idx >= n * n) { return; }
    w[idx] = select(0.0, 1.0, idx / n == idx % n);
}

@compute @workgroup_size(32)
fn svd_rotations(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let m = params.m;
    let k = linear_index_32(wg, nwg, lid);
    if (k >= params.big_n / 2u) { return; }
    let pq = pair_of(k, params.step, params.big_n);
    var measure = 0.0;
    var g = vec4<f32>(1.0, 0.0, 0.0, 0.0);
    if (pq.y < n) {
        // Four interleaved partial sums: shorter addition chains, less rounding error.
        var al = vec4<f32>(0.0);
        var be = vec4<f32>(0.0);
        var ga = vec4<f32>(0.0);
        let op = pq.x * m;
        let oq = pq.y * m;
        // Eight rows per loop step, the last < 8 straight-line: floor(m / 8) steps, which
        // the host keeps within gpu::LOOP_BUDGET (svd::MAX_GPU_ROWS). The same additions in
        // the same order as four rows per step.
        var i = 0u;
        for (; i + 8u <= m; i += 8u) {
            let x0 = vec4<f32>(w[op + i], w[op + i + 1u], w[op + i + 2u], w[op + i + 3u]);
            let y0 = vec4<f32>(w[oq + i], w[oq + i + 1u], w[oq + i + 2u], w[oq + i + 3u]);
            al += x0 * x0;
            be += y0 * y0;
            ga += x0 * y0;
            let x1 = vec4<f32>(w[op + i + 4u], w[op + i + 5u], w[op + i + 6u], w[op + i + 7u]);
            let y1 = vec4<f32>(w[oq + i + 4u], w[oq + i + 5u], w[oq + i + 6u], w[oq + i + 7u]);
            al += x1 * x1;
            be += y1 * y1;
            ga += x1 * y1;
        }
        if (i + 4u <= m) {
            let x = vec4<f32>(w[op + i], w[op + i + 1u], w[op + i + 2u], w[op + i + 3u]);
            let y = vec4<f32>(w[oq + i], w[oq + i + 1u], w[oq + i + 2u], w[oq + i + 3u]);
            al += x * x;
            be += y * y;
            ga += x * y;
            i += 4u;
        }
        // At most three rows left (a constant trip count: unrolled, no loop at run time).
        for (var r = 0u; r < 3u; r++) {
            if (i + r < m) {
                let x = w[op + i + r];
                let y = w[oq + i + r];
                al.x += x * x;
                be.x += y * y;
                ga.x += x * y;
            }
        }
        let alpha = (al.x + al.y) + (al.z + al.w);
        let beta = (be.x + be.y) + (be.z + be.w);
        let gamma = (ga.x + ga.y) + (ga.z + ga.w);
        g = jacobi_angle(alpha, beta, gamma);
        if (min(alpha, beta) > params.tiny) {
            measure = abs(gamma) / sqrt(alpha * beta);
        }
    }
    rot[k] = g;
    if (params.step == 0u) {
        conv[k] = measure;
    } else {
        conv[k] = max(conv[k], measure);
    }
}

// Invocations [0, P·m) rotate rows p, q of Gt; [P·m, P·m + P·n) rows p, q of Vt.
@compute @workgroup_size(256)
fn svd_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let n = params.n;
    let m = params.m;
    let half = params.big_n / 2u;
    var idx = linear_index(wg, nwg, lid);
    var len = m;
    var on_v = false;
    if (idx >= half * m) {
        idx -= half * m;
        len = n;
        on_v = true;
        if (idx >= half * n) { return; }
    }
    let k = idx / len;
    let i = idx % len;
    let pq = pair_of(k, params.step, params.big_n);
    let g = rot[k];
    if (pq.y >= n || g.y == 0.0) { return; }
    let a = pq.x * len + i;
    let b = pq.y * len + i;
    // x_p - s(x_q + τ x_p) with τ = s/(1 + c) equals c x_p - s x_q but rounds far less when
    // the rotation is small, as in the late sweeps (Numerical Recipes' form).
    let tau = g.y / (1.0 + g.x);
    if (on_v) {
        let xp = v[a];
        let xq = v[b];
        v[a] = xp - g.y * (xq + tau * xp);
        v[b] = xq + g.y * (xp - tau * xq);
    } else {
        let xp = w[a];
        let xq = w[b];
        w[a] = xp - g.y * (xq + tau * xp);
        w[b] = xq + g.y * (xp - tau * xq);
    }
}
