// conv.wgsl — convolution as matrix multiplication: im2col and its adjoint col2im.
//
// x is (N, C, H, W); a patch matrix is (N, L, CK) with L = OH·OW output positions and
// CK = C·KH·KW values per patch (channel-major, then kernel row, then kernel column), so a
// convolution is patches · W_flatᵀ with W_flat (F, CK). Padding reads as zeros. Strides and
// dilations are per axis; only the top and left padding move the windows (the bottom and
// right padding only decide, on the host, how many windows fit: oh and ow).
//
// Entry points (workgroup size 256, no barriers, grid split over x/y/z past 65535
// workgroups):
//   im2col_forward   cols[n, l, ck] = x[n, c, oy·sh - pt + ki·dh, ox·sw - pl + kj·dw]   (or 0)
//                    — one invocation per (n, c, l), looping over the kernel rows ki0..ki1
//                    and columns kj0..kj1 (the host splits a large window as for col2im).
//   col2im_forward   x[n, c, ih, iw] = Σ over the (l, kh, kw) that read it of cols[n, l, ck]
//                    — a gather (one invocation per output element), so no atomics.
//                    It walks the kernel rows ki0..ki1 and columns kj0..kj1 only, adding to
//                    what x holds when `accumulate` is set: the host splits a large window
//                    over several dispatches so that no invocation loops more than
//                    gpu::LOOP_BUDGET times (lavapipe silently stops one after 65535).

struct Params {
    n: u32, c: u32, h: u32, w: u32,   // input shape
    kh: u32, kw: u32,                  // kernel size
    sh: u32, sw: u32,                  // strides (rows, columns)
    pt: u32, pl: u32,                  // top and left padding
    dh: u32, dw: u32,                  // dilations (rows, columns)
    oh: u32, ow: u32,                  // output positions
    total: u32,                        // invocations that write (im2col: N·L·C; col2im: N·C·H·W)
    // The block of the window this dispatch walks; col2im: whether it adds to dst.
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
    // One invocation per (b, c, l): it writes channel c's taps of patch (b, l), the block
    // ki0..ki1 × kj0..kj1 of the window. The integer divisions below (scalarised on a CPU
    // adapter: one per tap made im2col ~20x slower than a copy on lavapipe) are paid once
    // per channel. Neighbouring invocations are neighbouring positions, so their reads of
    // x are neighbours too (ResNet-50 on lavapipe 10% faster than channel-fastest).
    let l_count = params.oh * params.ow;
    let l = i % l_count;
    let c = (i / l_count) % params.c;
    let b = i / (l_count * params.c);
    let bl = b * l_count + l;
    let k = params.kh * params.kw;
    let out = (bl * params.c + c) * k;      // cols[b, l, c·K]
    let plane = (b * params.c + c) * params.h * params.w;
    // i32 so that positions in the padding are negative, not wrapped.
    let y0 = i32((l / params.ow) * params.sh) - i32(params.pt);
    let x0 = i32((l % params.ow) * params.sw) - i32(params.pl);
    for (var ki = params.ki0; ki < params.ki1; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        let row_in = iy >= 0 && u32(iy) < params.h;
        for (var kj = params.kj0; kj < params.kj1; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            var v = 0.0;
            if (row_in && ix >= 0 && u32(ix) < params.w) {
                v = src[plane + u32(iy) * params.w + u32(ix)];
            }
            dst[out + ki * params.kw + kj] = v;
        }
    }
}

// t / d, skipping the division when d is 1 (strides and dilations mostly are): lavapipe
// scalarises integer division by a run-time value, and col2im divides per tap.
fn div_by(t: u32, d: u32) -> u32 {
    if (d == 1u) { return t; }
    return t / d;
}

// The output position t / s when stride s divides t; else 0xffffffff (no position).
fn position(t: u32, s: u32) -> u32 {
    if (s == 1u) { return t; }
    if (t % s != 0u) { return 0xffffffffu; }
    return t / s;
}

// The first kernel tap (row or column) whose window can cover input position `at`, with
// `outs` output positions, padding `pad` before, stride `s` and dilation `d` along that axis:
// ceil((at + pad - (outs-1)·s) / d), or 0.
fn first_tap(at: u32, outs: u32, pad: u32, s: u32, d: u32) -> u32 {
    let t = i32(at + pad) - i32((outs - 1u) * s);
    if (t <= 0) { return 0u; }
    return div_by(u32(t) + d - 1u, d);
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
    // Only the kernel rows and columns that can reach an output position: ki·dh lies in
    // [iy + pt - (oh-1)·sh, iy + pt] (likewise kj), so a wide window with few outputs is cheap.
    let ki_lo = max(params.ki0, first_tap(iy, params.oh, params.pt, params.sh, params.dh));
    let ki_hi = min(params.ki1, div_by(iy + params.pt, params.dh) + 1u);
    let kj_lo = max(params.kj0, first_tap(ix, params.ow, params.pl, params.sw, params.dw));
    let kj_hi = min(params.kj1, div_by(ix + params.pl, params.dw) + 1u);
    for (var ki = ki_lo; ki < ki_hi; ki = ki + 1u) {
        // oy·sh = iy + pt - ki·dh must be a non-negative multiple of sh below oh·sh
        let ty = i32(iy + params.pt) - i32(ki * params.dh);
        if (ty < 0) { continue; }
        let oy = position(u32(ty), params.sh);
        if (oy >= params.oh) { continue; }
        for (var kj = kj_lo; kj < kj_hi; kj = kj + 1u) {
            let tx = i32(ix + params.pl) - i32(kj * params.dw);
            if (tx < 0) { continue; }
            let ox = position(u32(tx), params.sw);
            if (ox >= params.ow) { continue; }
            let l = oy * params.ow + ox;
            sum = sum + src[(b * l_count + l) * ck + c * k + ki * params.kw + kj];
        }
    }
    dst[i] = sum;
}
