enable f16;

// matmul_f16.wgsl — C = op(A)·op(B) on f16 tensors: f16 storage, products and sums in f32
// (a product of two halves is exact in f32, as on tensor cores), C rounded once to f16.
// Needs the SHADER_F16 device feature. Shape rules as for f32 (src/ops/matmul.rs, MatmulPlan);
// batch dims broadcast through per-dim strides (0 = broadcast).
//
// Entry point (workgroup size 256):
//   matmul_f16   each invocation computes a PAIR of consecutive output elements (flat index
//                2p, 2p+1, possibly in different rows) and writes them as one vec2<f16>, so no
//                two invocations write halves of one 32-bit word. 2·K loop steps per
//                invocation: the host refuses K > 16384 (lavapipe stops an invocation after
//                65535 loop iterations).
// A plain kernel: correctness and f16 storage first; the fast f32 kernels' register
// blocking is not repeated here.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    total: u32,        // batch·M·N output elements
    ta: u32,           // 1: A stored (K, M)
    tb: u32,           // 1: B stored (N, K)
    rank: u32,         // number of batch dims
    _pad: u32,
    dims: array<vec4<u32>, 2>,       // batch dims, outermost first
    a_strides: array<vec4<u32>, 2>,  // elements between A's matrices along each batch dim
    b_strides: array<vec4<u32>, 2>,  // the same for B
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;            // (batch.., M, K) or (.., K, M)
@group(0) @binding(2) var<storage, read> b: array<f16>;            // (batch.., K, N) or (.., N, K)
@group(0) @binding(3) var<storage, read_write> c: array<vec2<f16>>; // (batch.., M, N), pairs

fn dim_at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

fn to_f16(x: f32) -> f16 {
    if (abs(x) >= 65520.0) {
        // ±inf is representable, so this conversion is exact.
        return f16(select(bitcast<f32>(0xff800000u), bitcast<f32>(0x7f800000u), x > 0.0));
    }
    return f16(x);
}

// Output element e (flat over batch, M, N), accumulated in f32.
fn element(e: u32) -> f32 {
    let mn = params.m * params.n;
    var rem = e / mn;
    let i = (e % mn) / params.n;
    let j = e % params.n;
    var oa = 0u;
    var ob = 0u;
    for (var d = i32(params.rank) - 1; d >= 0; d = d - 1) {
        let size = dim_at(params.dims, u32(d));
        let coord = rem % size;
        rem = rem / size;
        oa = oa + coord * dim_at(params.a_strides, u32(d));
        ob = ob + coord * dim_at(params.b_strides, u32(d));
    }
    // Steps between consecutive l along a row of op(A) and a column of op(B).
    let a_base = oa + select(i * params.k, i, params.ta == 1u);
    let a_step = select(1u, params.m, params.ta == 1u);
    let b_base = ob + select(j, j * params.k, params.tb == 1u);
    let b_step = select(params.n, 1u, params.tb == 1u);
    var acc = 0.0;
    for (var l = 0u; l < params.k; l = l + 1u) {
        acc = acc + f32(a[a_base + l * a_step]) * f32(b[b_base + l * b_step]);
    }
    return acc;
}

@compute @workgroup_size(256)
fn matmul_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let p = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
    let e = 2u * p;
    if (e >= params.total) { return; }
    let second = min(e + 1u, params.total - 1u);
    c[p] = vec2<f16>(to_f16(element(e)), to_f16(element(second)));
}
