// elementwise_f16.wgsl — f16 casts and element-wise ops. Not a module on its own: it is
// appended to elementwise.wgsl behind `enable f16;` (src/ops/half.rs), so the f16 entry
// points share unary_op / binary_op / Params / linear_index with the f32 ones and the two
// cannot drift apart. Needs the SHADER_F16 device feature.
//
// Entry points (workgroup size 256). Each invocation owns a PAIR of f16 elements and writes
// them as one vec2<f16>, so no two invocations write halves of the same 32-bit word; the
// odd element of an odd-sized tensor is written with a padding half the tensor never reads.
//   cast_f32_to_f16    h_out2[p] = f16(a[2p], a[2p+1])
//   cast_f16_to_f32    out2[i]   = f32(h_a[i])             (one element per invocation)
//   unary_f16          f(x) computed in f32, rounded once to f16
//   scalar_f16         g(x, s) or g(s, x), in f32, rounded once
//   binary_f16         g(a[bcast_a(i)], b[bcast_b(i)]) with NumPy broadcasting, in f32
//   binary_broadcast3_f16  the same over a shape merged to rank <= 3, RUN (even) elements
//                      per invocation (one index decomposition per run)
// For + − × ÷ computing in f32 and rounding once to f16 IS the IEEE half result: f32 keeps
// 24 ≥ 2·11 + 2 significand bits, so the double rounding cannot change it.

// binary_broadcast3_f16: false when RUN divides the innermost merged dim (runs never leave
// their row); true otherwise (odd rows), which steps with a carry and guards the end. The
// carry costs ~1.8x on lavapipe, so rows RUN divides are run without it.
override CROSS_ROWS: bool = true;

@group(0) @binding(1) var<storage, read> h_a: array<f16>;              // f16 input
@group(0) @binding(2) var<storage, read_write> h_out2: array<vec2<f16>>; // unary/scalar/cast output, pairs
@group(0) @binding(2) var<storage, read> h_b: array<f16>;              // binary: second operand
@group(0) @binding(3) var<storage, read_write> h_out3: array<vec2<f16>>; // binary output, pairs

// Rounds to f16 with IEEE overflow: |x| ≥ 65520 rounds to ±inf (WGSL leaves the
// conversion of out-of-range values to the implementation).
fn to_f16(x: f32) -> f16 {
    if (abs(x) >= 65520.0) {
        // ±inf is representable, so this conversion is exact.
        return f16(select(bitcast<f32>(0xff800000u), bitcast<f32>(0x7f800000u), x > 0.0));
    }
    return f16(x);
}

fn pair(x: f32, y: f32) -> vec2<f16> {
    return vec2<f16>(to_f16(x), to_f16(y));
}

// The index of the second element of pair p, clamped so the padding half reads a real element.
fn second(e: u32) -> u32 {
    return min(e + 1u, params.n - 1u);
}

@compute @workgroup_size(256)
fn cast_f32_to_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wg, nwg, lid);
    let e = 2u * p;
    if (e >= params.n) { return; }
    h_out2[p] = pair(a[e], a[second(e)]);
}

@compute @workgroup_size(256)
fn cast_f16_to_f32(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    out2[i] = f32(h_a[i]);
}

@compute @workgroup_size(256)
fn unary_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wg, nwg, lid);
    let e = 2u * p;
    if (e >= params.n) { return; }
    h_out2[p] = pair(unary_op(f32(h_a[e])), unary_op(f32(h_a[second(e)])));
}

fn scalar_at(e: u32) -> f32 {
    let x = f32(h_a[e]);
    if (params.scalar_lhs == 1u) {
        return binary_op(params.scalar, x);
    }
    return binary_op(x, params.scalar);
}

@compute @workgroup_size(256)
fn scalar_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wg, nwg, lid);
    let e = 2u * p;
    if (e >= params.n) { return; }
    h_out2[p] = pair(scalar_at(e), scalar_at(second(e)));
}

// g(a, b) at output element e of the broadcast shape.
fn binary_at(e: u32) -> f32 {
    var rem = e;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(params.rank) - 1; d >= 0; d = d - 1) {
        let size = dim_at(params.dims, u32(d));
        let coord = rem % size;
        rem = rem / size;
        ia = ia + coord * dim_at(params.a_strides, u32(d));
        ib = ib + coord * dim_at(params.b_strides, u32(d));
    }
    return binary_op(f32(h_a[ia]), f32(h_b[ib]));
}

@compute @workgroup_size(256)
fn binary_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let p = linear_index(wg, nwg, lid);
    let e = 2u * p;
    if (e >= params.n) { return; }
    h_out3[p] = pair(binary_at(e), binary_at(second(e)));
}

// binary_f16 over a shape merged on the host to (d0, d1, d2) = dims[0].xyz (size-1 dims
// dropped, dims whose a- and b-strides chain folded, padded with leading 1s), like
// binary_broadcast3_forward: the generic per-dim `%` and `/` over dynamically indexed
// uniforms dominates on lavapipe, so an invocation decomposes its first index once (two
// divisions) and steps RUN (even) elements along the innermost strides, carrying into the
// outer coordinates at a row's end (rows of odd length put pairs across rows). Same
// binary_op and rounding as binary_f16, so results are bit-identical to it.
@compute @workgroup_size(256)
fn binary_broadcast3_f16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid) * RUN;
    if (i >= params.n) { return; }
    let d = params.dims[0];
    let sa = params.a_strides[0];
    let sb = params.b_strides[0];
    let c = coords3(i);
    var c0 = c.x;
    var c1 = c.y;
    var c2 = c.z;
    var ia = c0 * sa.x + c1 * sa.y + c2 * sa.z;
    var ib = c0 * sb.x + c1 * sb.y + c2 * sb.z;
    if (!CROSS_ROWS) {
        // RUN divides d2 (so n too): the run stays in its row, pairs straight along it.
        for (var k = 0u; k < RUN; k = k + 2u) {
            let x = binary_op(f32(h_a[ia]), f32(h_b[ib]));
            let y = binary_op(f32(h_a[ia + sa.z]), f32(h_b[ib + sb.z]));
            h_out3[(i + k) / 2u] = pair(x, y);
            ia = ia + 2u * sa.z;
            ib = ib + 2u * sb.z;
        }
        return;
    }
    var lo = 0.0;  // the first value of the pending pair
    for (var k = 0u; k < RUN; k = k + 1u) {
        let e = i + k;  // i is even, so e is odd exactly when k is
        if (e >= params.n) {
            // Past the end: at an odd e the pair's second half is the tensor's padding.
            if ((k & 1u) == 1u) { h_out3[e / 2u] = pair(lo, lo); }
            break;
        }
        let v = binary_op(f32(h_a[ia]), f32(h_b[ib]));
        if ((k & 1u) == 0u) {
            lo = v;
        } else {
            h_out3[e / 2u] = pair(lo, v);
        }
        c2 = c2 + 1u;
        ia = ia + sa.z;
        ib = ib + sb.z;
        if (c2 == d.z) {
            c2 = 0u;
            c1 = c1 + 1u;
            if (c1 == d.y) {
                c1 = 0u;
                c0 = c0 + 1u;
            }
            ia = c0 * sa.x + c1 * sa.y;
            ib = c0 * sb.x + c1 * sb.y;
        }
    }
}
