// gather.wgsl — gather along one axis with i32 indices, and its adjoint scatter-add.
//
// Both see the data as (outer, n, inner) around the gathered axis (n = its length) and the
// indices flattened to (m); the gathered tensor is (outer, m, inner). A negative index counts
// from the end (j + n). See src/ops/gather.rs for the CPU reference.
//
// Entry points (workgroup size 256, one output element per invocation, no barriers, grid
// split over x/y/z past 65535 workgroups):
//   gather_forward   dst[o, p, k] = data[o, idx[p], k]; an index outside -n..n gives 0 and
//                    is reported in the recording thread's status words (code 2), so the
//                    next readback is an error; nothing is read out of bounds
//   scatter_add      one invocation per (o, j, chunk of `kchunk` along inner): walks the
//                    positions p0..p1 in order and, where idx[p] = j, adds src[o, p, chunk]
//                    into dst[o, j, chunk] (deterministic: no float atomics, a fixed order).
//                    Work: (p1 - p0) index reads per invocation, plus kchunk adds per match.
//                    The host sizes p1 - p0 so the worst case (every position matching) stays
//                    within LOOP_BUDGET steps (lavapipe stops an invocation after 65,535 loop
//                    steps); longer index lists take several dispatches, the first zeroing
//                    dst (accumulate = 0) and the rest adding. Bad indices match no j
//                    (reported).

struct Params {
    total: u32,       // invocations: output elements (gather), rows × chunks (scatter_add)
    n: u32,           // length of the gathered axis (data for gather, dst for scatter_add)
    inner: u32,       // product of the dims after the axis
    m: u32,           // index count
    p0: u32,          // scatter_add: first position walked
    p1: u32,          // scatter_add: one past the last position walked
    accumulate: u32,  // scatter_add: 1 adds to dst, 0 overwrites it
    kchunk: u32,      // scatter_add: inner elements per invocation
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;      // gather: data; scatter_add: values
@group(0) @binding(2) var<storage, read> idx: array<i32>;      // (m)
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>, 4>;

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// Reports an index outside -n..n (any one of several bad ones wins; the error names it).
fn report_bad_index(raw: i32) {
    atomicStore(&status[1], bitcast<u32>(raw));
    atomicStore(&status[2], params.n);
    atomicStore(&status[0], 2u);
}

// The index at position p with a negative one counted from the end; -1 when out of range
// (reported).
fn wrapped(p: u32) -> i32 {
    let raw = idx[p];
    var q = raw;
    if (q < 0) { q = q + i32(params.n); }
    if (q < 0 || q >= i32(params.n)) {
        report_bad_index(raw);
        return -1;
    }
    return q;
}

@compute @workgroup_size(256)
fn gather_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let k = i % params.inner;
    let row = i / params.inner;
    let p = row % params.m;
    let o = row / params.m;
    let q = wrapped(p);
    if (q < 0) {
        dst[i] = 0.0;
        return;
    }
    dst[i] = src[(o * params.n + u32(q)) * params.inner + k];
}

@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let chunks = (params.inner + params.kchunk - 1u) / params.kchunk;
    let k0 = (i % chunks) * params.kchunk;
    let k1 = min(k0 + params.kchunk, params.inner);
    let row = i / chunks;
    let j = i32(row % params.n);
    let o = row / params.n;
    let out = row * params.inner;
    if (params.accumulate == 0u) {
        for (var k = k0; k < k1; k = k + 1u) { dst[out + k] = 0.0; }
    }
    for (var p = params.p0; p < params.p1; p = p + 1u) {
        let raw = idx[p];
        var q = raw;
        if (q < 0) { q = q + i32(params.n); }
        if (q < 0 || q >= i32(params.n)) { report_bad_index(raw); }
        if (q == j) {
            let at = (o * params.m + p) * params.inner;
            for (var k = k0; k < k1; k = k + 1u) { dst[out + k] = dst[out + k] + src[at + k]; }
        }
    }
}
