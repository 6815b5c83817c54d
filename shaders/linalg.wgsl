// linalg.wgsl — the GPU checks of the decompositions in src/linalg/ (their blocked
// factorisations are matrix products and host f64 panels; the one-sided and two-sided Jacobi
// sweeps that lived here lost to them at every size, see svd.rs and eigh.rs).
//
// Entry points (workgroup size 256, one invocation per item, grid split over x/y/z):
//   matrix_stats     per row of a (rows, cols) matrix: off-diagonal and total sum of squares,
//                    largest |a_ij - a_ji| (square only), count of NaN/Inf entries
//   diag_forward     out[i] = a[i, i], i < min(rows, cols)

struct Params {
    n: u32,     // matrix_stats: rows; diag_forward: min(rows, cols)
    big_n: u32, // cols
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

@group(0) @binding(1) var<storage, read> src: array<f32>;          // input matrix
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;  // (rows, 4) / (n) diag out

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

fn non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
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
