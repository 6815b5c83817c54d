// linalg_qr.wgsl — Householder reflectors on the GPU for the unblocked QR of a few columns
// and the accumulation of its orthogonal factor (src/linalg/qr.rs; the blocked QR, eigh,
// svd and eig apply reflectors as products instead).
//
// A reflector H = I − τ v vᵀ is stored as row k of V (rows of length `len`, zero below r0)
// and τ in tau[k]. Applying it (from the left) is two barrier-free passes: one invocation
// per column forms the scaled dot product w = τ vᵀx, then one invocation per element
// subtracts v w. The dots loop rows − r0 times per invocation,
// house_make ceil(len / 256) per pass; the host keeps rows and cols <= gpu::LOOP_BUDGET
// (qr::MAX_GPU_DIM), well below the 65535 loop iterations after which lavapipe silently
// stops an invocation.
//
// Entry points (workgroup size 256, grid split over x/y/z):
//   house_eye          M = I (rows, cols)
//   house_make         one workgroup: reflector k from column k of M, rows r0..rows; writes
//                      V[k, :], tau[k], and sets M[r0, k] = α, M[r0+1.., k] = 0
//   house_left_dots    w[c] = τ_k Σ_{i>=r0} V[k, i] M[i, c],      c in c0..cols
//   house_left_update  M[i, c] -= V[k, i] w[c],                   i in r0..rows, c in c0..cols

struct Params {
    rows: u32, // rows of M
    cols: u32, // columns of M
    r0: u32,   // first index the reflector touches (rows for left, columns for right)
    c0: u32,   // first column (left) or row (right) that is updated
    k: u32,    // reflector index: row of V, entry of tau; house_make: the column of M
    len: u32,  // length of the rows of V
}

@group(0) @binding(0) var<uniform> params: Params;

// Bindings are declared per entry (auto layout).
@group(0) @binding(1) var<storage, read_write> m: array<f32>;   // M (rows, cols), in place
@group(0) @binding(2) var<storage, read_write> v: array<f32>;   // V (reflectors, len)
@group(0) @binding(3) var<storage, read_write> tau: array<f32>; // (reflectors)
@group(0) @binding(3) var<storage, read_write> w: array<f32>;   // dots: (max(rows, cols))
@group(0) @binding(4) var<storage, read_write> tau_r: array<f32>; // dots: tau, read only

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

@compute @workgroup_size(256)
fn house_eye(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let idx = linear_index(wg, nwg, lid);
    if (idx >= params.rows * params.cols) { return; }
    m[idx] = select(0.0, 1.0, idx / params.cols == idx % params.cols);
}

// The 256 partials of house_make's workgroup.
var<workgroup> part: array<f32, 256>;

// The max (or the sum) of every invocation's `x`, returned to all of them. Called from
// uniform control flow; the last barrier lets the next call reuse `part`.
fn combine(lid: u32, x: f32, is_max: bool) -> f32 {
    part[lid] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let y = part[lid + s];
            part[lid] = select(part[lid] + y, max(part[lid], y), is_max);
        }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier();
    return r;
}

// x = M[r0.., k]; α = −sign(x₀)‖x‖; v = x − α e₀ and τ = 2/(vᵀv) = 1/(‖x‖(‖x‖ + |x₀|)),
// computed on x/max|x| so that squares neither overflow nor underflow (H does not depend on
// the scale of v). A zero column gives τ = 0: H = I.
// One workgroup: invocation lid owns entries lid, lid + 256, … of the column and of v (so
// each entry of M is read and written by one invocation only, with no storage barrier), and
// loops ceil(len / 256) times per pass where one invocation looped 4·len - 1 times (65,535
// at len = 16,384: all of the budget's margin below lavapipe's cap).
@compute @workgroup_size(256)
fn house_make(@builtin(local_invocation_index) lid: u32) {
    let rows = params.rows;
    let cols = params.cols;
    let r0 = params.r0;
    let k = params.k;
    let len = params.len;
    let base = k * len;
    var mx = 0.0;
    for (var i = lid; i < rows; i += 256u) {
        if (i >= r0) { mx = max(mx, abs(m[i * cols + k])); }
    }
    let scale = combine(lid, mx, true);
    var ss = 0.0;
    for (var i = lid; i < len; i += 256u) {
        var x = 0.0;
        if (scale > 0.0 && i >= r0 && i < rows) {
            x = m[i * cols + k] / scale;
            if (i > r0) { m[i * cols + k] = 0.0; }
        }
        v[base + i] = x;
        ss += x * x;
    }
    let norm = sqrt(combine(lid, ss, false));
    // The owner of row r0 wrote v[r0] itself and alone touches M[r0, k].
    if (lid != r0 % 256u) { return; }
    if (scale == 0.0) {
        tau[k] = 0.0;
        return;
    }
    let x0 = v[base + r0];
    let alpha = select(norm, -norm, x0 >= 0.0);
    v[base + r0] = x0 - alpha;
    tau[k] = 1.0 / (norm * (norm + abs(x0)));
    m[r0 * cols + k] = alpha * scale;
}

@compute @workgroup_size(256)
fn house_left_dots(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let c = params.c0 + linear_index(wg, nwg, lid);
    if (c >= params.cols) { return; }
    let base = params.k * params.len;
    var s = 0.0;
    for (var i = params.r0; i < params.rows; i++) {
        s += v[base + i] * m[i * params.cols + c];
    }
    w[c] = tau_r[params.k] * s;
}

@compute @workgroup_size(256)
fn house_left_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let width = params.cols - params.c0;
    let idx = linear_index(wg, nwg, lid);
    if (idx >= (params.rows - params.r0) * width) { return; }
    let i = params.r0 + idx / width;
    let c = params.c0 + idx % width;
    m[i * params.cols + c] -= v[params.k * params.len + i] * w[c];
}
