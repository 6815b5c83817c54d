// conv.wgsl — convolution as matrix multiplication: im2col and its adjoint col2im.
//
// x is (N, C, H, W); a patch matrix is (N, L, CK) with L = OH·OW output positions and
// CK = C·KH·KW values per patch (channel-major, then kernel row, then kernel column), so a
// convolution is patches · W_flatᵀ with W_flat (F, CK). Padding reads as zeros.
//
// Entry points (workgroup size 256, one output element per invocation, no barriers, grid
// split over x/y/z past 65535 workgroups):
//   im2col_forward   cols[n, l, ck] = x[n, c, oh·s - p + kh·d, ow·s - p + kw·d]   (or 0)
//   col2im_forward   x[n, c, ih, iw] = Σ over the (l, kh, kw) that read it of cols[n, l, ck]
//                    — a gather (each invocation owns one output), so no atomics are needed.
//                    It walks the kernel rows ki0..ki1 and columns kj0..kj1 only, adding to
//                    what x holds when `accumulate` is set: the host splits a large window
//                    over several dispatches so that no invocation loops more than
//                    gpu::LOOP_BUDGET times (lavapipe silently stops one after 65535).

struct Params {
    n: u32, c: u32, h: u32, w: u32,   // input shape
    kh: u32, kw: u32,                  // kernel size
    stride: u32, pad: u32, dil: u32,
    oh: u32, ow: u32,                  // output positions
    total: u32,                        // elements written by this dispatch
    // col2im only: the block of the window this dispatch walks, and whether it adds to dst.
    ki0: u32, ki1: u32, kj0: u32, kj1: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // im2col: x; col2im: cols
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // im2col: cols; col2im: x

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

@compute @workgroup_size(256)
fn im2col_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let k = params.kh * params.kw;
    let ck = params.c * k;
    let l_count = params.oh * params.ow;
    let col = i % ck;
    let l = (i / ck) % l_count;
    let b = i / (ck * l_count);
    let c = col / k;
    let ki = (col % k) / params.kw;
    let kj = col % params.kw;
    let oy = l / params.ow;
    let ox = l % params.ow;
    // i32 so that positions in the padding are negative, not wrapped.
    let iy = i32(oy * params.stride + ki * params.dil) - i32(params.pad);
    let ix = i32(ox * params.stride + kj * params.dil) - i32(params.pad);
    var v = 0.0;
    if (iy >= 0 && ix >= 0 && u32(iy) < params.h && u32(ix) < params.w) {
        v = src[((b * params.c + c) * params.h + u32(iy)) * params.w + u32(ix)];
    }
    dst[i] = v;
}

// The first kernel tap (row or column) whose window can cover input position `at`, with
// `outs` output positions: ceil((at + p - (outs-1)·s) / d), or 0.
fn first_tap(at: u32, outs: u32) -> u32 {
    let t = i32(at + params.pad) - i32((outs - 1u) * params.stride);
    if (t <= 0) { return 0u; }
    return (u32(t) + params.dil - 1u) / params.dil;
}

@compute @workgroup_size(256)
fn col2im_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let ix = i % params.w;
    let iy = (i / params.w) % params.h;
    let c = (i / (params.w * params.h)) % params.c;
    let b = i / (params.w * params.h * params.c);
    let k = params.kh * params.kw;
    let ck = params.c * k;
    let l_count = params.oh * params.ow;
    var sum = 0.0;
    if (params.accumulate != 0u) { sum = dst[i]; }
    // Only the kernel rows and columns that can reach an output position: ki·d lies in
    // [iy + p - (oh-1)·s, iy + p] (likewise kj), so a wide window with few outputs is cheap.
    let ki_lo = max(params.ki0, first_tap(iy, params.oh));
    let ki_hi = min(params.ki1, (iy + params.pad) / params.dil + 1u);
    let kj_lo = max(params.kj0, first_tap(ix, params.ow));
    let kj_hi = min(params.kj1, (ix + params.pad) / params.dil + 1u);
    for (var ki = ki_lo; ki < ki_hi; ki = ki + 1u) {
        // oy·s = iy + p - ki·d must be a non-negative multiple of s below oh·s
        let ty = i32(iy + params.pad) - i32(ki * params.dil);
        if (ty < 0 || u32(ty) % params.stride != 0u) { continue; }
        let oy = u32(ty) / params.stride;
        if (oy >= params.oh) { continue; }
        for (var kj = kj_lo; kj < kj_hi; kj = kj + 1u) {
            let tx = i32(ix + params.pad) - i32(kj * params.dil);
            if (tx < 0 || u32(tx) % params.stride != 0u) { continue; }
            let ox = u32(tx) / params.stride;
            if (ox >= params.ow) { continue; }
            let l = oy * params.ow + ox;
            sum = sum + src[(b * l_count + l) * ck + c * k + ki * params.kw + kj];
        }
    }
    dst[i] = sum;
}
