// conv.wgsl — convolution as matrix multiplication: im2col and its adjoint col2im.
// Not a module on its own: exact_div.wgsl (div) is appended to it (src/ops/conv.rs).
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
//   im2col_rows4     the same, one invocation per patch row (b, l) or four, vec4 stores (see there).
//   col2im_forward   x[n, c, ih, iw] = Σ over the (l, kh, kw) that read it of cols[n, l, ck]
//                    — a gather (one invocation per output element), so no atomics.
//                    It walks only the (tap, position) pairs that exist, per axis (see
//                    `axis`), of the kernel rows ki0..ki1 and columns kj0..kj1, adding to
//                    what x holds when `accumulate` is set: the host splits a large window
//                    over several dispatches so that no invocation loops more than
//                    gpu::LOOP_BUDGET times (lavapipe silently stops one after 65535).
//   col2im_forward4  the same, four neighbours of a row per invocation (W % 4 = 0).
//   col2im_phase4    the same by row phases, walking only the pairs that exist (see there).

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
    // im2col_rows4: the patch rows' length in cols, C·KH·KW or (PATCH_ROWS = 1) more, the
    // values past C·KH·KW zero (rows the vec4 product kernels read unpadded).
    ld: u32,
    // im2col_rows4 with PATCH_ROWS = 1: vec4s of a patch row per invocation (the row cut
    // into pieces of this many; ld / 4 for whole rows).
    piece: u32,
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
    // per channel (and those in f32, see `div`). Neighbouring invocations are neighbouring positions, so their reads of
    // x are neighbours too (ResNet-50 on lavapipe 10% faster than channel-fastest).
    let l_count = params.oh * params.ow;
    let q = div(i, l_count);
    let l = i - q * l_count;
    let b = div(q, params.c);
    let c = q - b * params.c;
    let bl = b * l_count + l;
    let k = params.kh * params.kw;
    let out = (bl * params.c + c) * k;      // cols[b, l, c·K]
    let plane = (b * params.c + c) * params.h * params.w;
    // i32 so that positions in the padding are negative, not wrapped.
    let oy = div(l, params.ow);
    let y0 = i32(oy * params.sh) - i32(params.pt);
    let x0 = i32((l - oy * params.ow) * params.sw) - i32(params.pl);
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

@group(0) @binding(2) var<storage, read_write> cols4: array<vec4<f32>>; // im2col_rows4: cols

// One invocation per patch row (b, l) writing its C·KH·KW values as vec4s (the host uses it
// when C·KH·KW % 4 = 0 and (C·KH·KW)/4 ≤ gpu::LOOP_BUDGET), or per four consecutive patch
// rows (PATCH_ROWS = 4: C·KH·KW % 4 ≠ 0, the rows a multiple of 4, C·KH·KW ≤
// LOOP_BUDGET; four rows start on a vec4 boundary whatever their length): lavapipe stores one
// lane at a time, so a vec4 store moves four values per lane step. The tap (c, ki, kj)
// advances by counters, with no division per value (two per patch row); out-of-image taps
// load index 0 and select 0. ResNet-50's stem (3x7x7 patches, 147 values) took 6.8-9.4 ms
// per dispatch on lavapipe with one invocation per (b, c, l) and scalar stores.
// Patch rows per invocation of im2col_rows4: 1 or 4. A pipeline constant, so that the row
// change compiles out where rows are whole vec4s (as a uniform it cost the digits CNN's
// im2col 0.23 -> 0.35 ms).
override PATCH_ROWS: u32 = 1u;

struct PatchOrigin { plane: u32, y0: i32, x0: i32, }

fn patch_origin(r: u32) -> PatchOrigin {
    let l_count = params.oh * params.ow;
    let b = div(r, l_count);
    let l = r - b * l_count;
    let oy = div(l, params.ow);
    return PatchOrigin(b * params.c * params.h * params.w,
                       i32(oy * params.sh) - i32(params.pt),
                       i32((l - oy * params.ow) * params.sw) - i32(params.pl));
}

// With PATCH_ROWS = 1 a row may be cut into pieces of params.piece vec4s, one per
// invocation, neighbouring invocations taking the same piece of neighbouring rows: a few
// rows of many values (ResNet-50's 3x3 layers at 7x7, 49 rows of 4608) were otherwise a
// workgroup or two, on one or two of lavapipe's threads (1.0 ms a layer, 0.25 ms cut).
@compute @workgroup_size(64)
fn im2col_rows4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
    if (i >= params.total) { return; }
    let rows = PATCH_ROWS;
    let hw = params.h * params.w;
    let ck = params.c * params.kh * params.kw;
    var n4 = rows * params.ld / 4u;
    var row_call = i;  // the patch rows' call: i, or (one row a call) its row
    var first = 0u;    // the first vec4 of the call's rows
    var ki = 0u;
    var kj = 0u;
    var t = 0u;  // tap within the row
    var c = 0u;  // its channel
    if (rows == 1u && params.piece < n4) {
        let row_count = params.total / div_ceil(n4, params.piece);
        let piece = div(i, row_count);
        row_call = i - piece * row_count;
        first = piece * params.piece;
        n4 = min(params.piece, n4 - first);
        t = 4u * first;
        let khw = params.kh * params.kw;
        c = div(t, khw);
        let in_window = t - c * khw;
        ki = div(in_window, params.kw);
        kj = in_window - ki * params.kw;
    }
    var r = row_call * rows;
    var o = patch_origin(r);
    var plane = o.plane + min(c, params.c) * hw;
    for (var v = 0u; v < n4; v = v + 1u) {
        var out = vec4<f32>(0.0);
        for (var u = 0u; u < 4u; u = u + 1u) {
            let iy = o.y0 + i32(ki * params.dh);
            let ix = o.x0 + i32(kj * params.dw);
            let ok = t < ck && iy >= 0 && u32(iy) < params.h && ix >= 0 && u32(ix) < params.w;
            out[u] = select(0.0, src_at(select(0u, plane + u32(iy) * params.w + u32(ix), ok)), ok);
            // next tap: kj, then ki, then the channel, then (four rows a call) the row
            let wrap_j = kj + 1u == params.kw;
            let wrap_i = wrap_j && ki + 1u == params.kh;
            kj = select(kj + 1u, 0u, wrap_j);
            ki = select(ki + u32(wrap_j), 0u, wrap_i);
            plane = plane + select(0u, hw, wrap_i);
            t = t + 1u;
            if (t == ck && rows > 1u) {  // the same step in every lane
                t = 0u;
                r = r + 1u;
                o = patch_origin(r);
                plane = o.plane;
            }
        }
        cols4[row_call * rows * params.ld / 4u + first + v] = out;
    }
}

fn div_ceil(a: u32, b: u32) -> u32 {
    return div(a + b - 1u, b);
}

// ---- source reads: im2col_rows4's loads of x, from the storage buffer `src`. A second
// module, conv.texture, has this block replaced by reads from an rgba32float texture
// (src/ops/texture_reads.rs says why and when).
fn src_at(i: u32) -> f32 {
    return src[i];
}
// ---- end of source reads

// div(t, d): integer division in f32 where exact (exact_div.wgsl, appended to this file).

// The (tap, output position) pairs along one axis that reach input position `at`: taps k in
// [k0, k1) and positions o < outs with o·s + k·dil = at + pad, as k = k_first + j·k_step,
// o = o_first + j·o_step for j < count. With both s and dil past 1 the pairs are every k in
// the range and `check` is set: o = (at + pad − k·dil)/s must then divide exactly.
struct Axis { k_first: i32, k_step: i32, o_first: i32, o_step: i32, count: i32, check: bool, }

// ceil(t / d) for t ≤ 0 is ≤ 0: callers clamp it up, so only t > 0 divides.
fn ceil_div(t: i32, d: u32) -> i32 {
    if (t <= 0) { return 0; }
    return i32(div(u32(t) + d - 1u, d));
}

fn axis(at: u32, pad: u32, s: u32, dil: u32, k0: u32, k1: u32, outs: u32) -> Axis {
    let t = i32(at + pad);
    if (dil == 1u) {
        // k = t − o·s in [k0, k1): o in [ceil((t − k1 + 1)/s), floor((t − k0)/s)]
        if (t < i32(k0)) { return Axis(0, 0, 0, 0, 0, false); }
        let o_lo = ceil_div(t - i32(k1) + 1, s);
        let o_hi = min(i32(outs) - 1, i32(div(u32(t - i32(k0)), s)));
        return Axis(t - o_lo * i32(s), -i32(s), o_lo, 1, o_hi - o_lo + 1, false);
    }
    // o = t − k·dil (s = 1) in [0, outs): k in [ceil((t − outs + 1)/dil), floor(t/dil)]
    let k_lo = max(i32(k0), ceil_div(t - i32(outs) * i32(s) + 1, dil));
    let k_hi = min(i32(k1) - 1, i32(div(u32(t), dil)));
    return Axis(k_lo, 1, t - k_lo * i32(dil), -i32(dil), k_hi - k_lo + 1, s != 1u);
}

// The output position of pair j on axis `a` (t = at + pad), or -1 when there is none.
fn out_at(a: Axis, j: i32, t: u32, s: u32, dil: u32, outs: u32) -> i32 {
    if (!a.check) { return a.o_first + j * a.o_step; }
    let r = t - u32(a.k_first + j) * dil;
    let o = div(r, s);
    if (o * s != r || o >= outs) { return -1; }
    return i32(o);
}

// Σ of the patch values that image position (b, c, iy, ix) received, given its row pairs
// `ay`: uniform trip counts (the most pairs any position has on each axis) and loads from a
// clamped index, selected: on lavapipe faster than per-lane counts or guarded loads.
fn col2im_sum(b: u32, c: u32, iy: u32, ix: u32, ay: Axis) -> f32 {
    let k = params.kh * params.kw;
    let ck = params.c * k;
    let ax = axis(ix, params.pl, params.sw, params.dw, params.kj0, params.kj1, params.ow);
    let base = b * params.oh * params.ow * ck + c * k;
    let ny = i32(select(params.ki1 - params.ki0, div(params.ki1 - params.ki0 + params.sh - 1u, params.sh), params.dh == 1u));
    let nx = i32(select(params.kj1 - params.kj0, div(params.kj1 - params.kj0 + params.sw - 1u, params.sw), params.dw == 1u));
    var sum = 0.0;
    for (var jy = 0; jy < ny; jy = jy + 1) {
        let oy = select(-1, out_at(ay, jy, iy + params.pt, params.sh, params.dh, params.oh), jy < ay.count);
        let row = base + u32(oy) * params.ow * ck + u32(ay.k_first + jy * ay.k_step) * params.kw;
        for (var jx = 0; jx < nx; jx = jx + 1) {
            let ox = select(-1, out_at(ax, jx, ix + params.pl, params.sw, params.dw, params.ow), jx < ax.count);
            let ok = oy >= 0 && ox >= 0;
            let at = select(0u, row + u32(ox) * ck + u32(ax.k_first + jx * ax.k_step), ok);
            sum = sum + select(0.0, src[at], ok);
        }
    }
    return sum;
}

// (b, c, iy, ix) of image element i.
fn image_pos(i: u32) -> vec4<u32> {
    let q1 = div(i, params.w);
    let q2 = div(q1, params.h);
    let b = div(q2, params.c);
    return vec4<u32>(b, q2 - b * params.c, q1 - q2 * params.h, i - q1 * params.w);
}

fn row_axis(iy: u32) -> Axis {
    return axis(iy, params.pt, params.sh, params.dh, params.ki0, params.ki1, params.oh);
}

@compute @workgroup_size(256)
fn col2im_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let p = image_pos(i);
    var sum = col2im_sum(p.x, p.y, p.z, p.w, row_axis(p.z));
    if (params.accumulate != 0u) { sum = sum + dst[i]; }
    dst[i] = sum;
}

@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>; // col2im_forward4: x

// Four neighbours of one image row per invocation (W % 4 = 0): the position and the row's
// pairs found once, one vec4 store.
@compute @workgroup_size(64)
fn col2im_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i4 = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
    if (i4 * 4u >= params.total) { return; }
    let p = image_pos(i4 * 4u);
    let ay = row_axis(p.z);
    var sum = vec4<f32>(
        col2im_sum(p.x, p.y, p.z, p.w, ay),
        col2im_sum(p.x, p.y, p.z, p.w + 1u, ay),
        col2im_sum(p.x, p.y, p.z, p.w + 2u, ay),
        col2im_sum(p.x, p.y, p.z, p.w + 3u, ay),
    );
    if (params.accumulate != 0u) { sum = sum + dst4[i4]; }
    dst4[i4] = sum;
}

// col2im_phase4: col2im_forward4 when both dilations are 1, a row's stride divides 4 (1, 2
// or 4, so the four columns of a vec4 have the same phases in every invocation) and the
// whole window is one block. Image rows go phase by phase (iy = a·sh + py, py slowest), so
// the lanes of a SIMD group share py and with it which kernel rows reach them, and each
// invocation walks only the (tap, position) pairs that exist: 2.25 per pixel for a 3×3
// window of stride 2, where col2im_forward4's uniform trip counts walk 4 (the rest masked
// loads). `total` counts invocations: sh·N·C·ceil(H/sh)·W/4.
@compute @workgroup_size(64)
fn col2im_phase4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
    if (i >= params.total) { return; }
    let q_count = params.w / 4u;
    let a_count = div(params.h + params.sh - 1u, params.sh);
    let nc_count = params.n * params.c;
    let t = div(i, q_count);
    let q = i - t * q_count;
    let t2 = div(t, a_count);
    let a = t - t2 * a_count;
    let py = div(t2, nc_count);
    let nc = t2 - py * nc_count;
    let iy = a * params.sh + py;
    if (iy >= params.h) { return; }
    let n = div(nc, params.c);
    let k = params.kh * params.kw;
    let ck = params.c * k;
    let base = n * params.oh * params.ow * ck + (nc - n * params.c) * k;
    // Kernel rows ki = ry + j·sh reach row iy, from output row oy = a + dy − j.
    let ry = py + params.pt - div(py + params.pt, params.sh) * params.sh;
    let dy = i32(div(py + params.pt - ry, params.sh));
    let ny = select(0u, div(params.kh - ry + params.sh - 1u, params.sh), ry < params.kh);
    let ox0 = i32(div(q * 4u, params.sw));
    var sum = vec4<f32>(0.0);
    for (var jy = 0u; jy < ny; jy = jy + 1u) {
        let oy = i32(a) + dy - i32(jy);
        let row_ok = oy >= 0 && oy < i32(params.oh);
        let row = base + u32(max(oy, 0)) * params.ow * ck + (ry + jy * params.sh) * params.kw;
        sum = sum + vec4<f32>(phase_col(row, row_ok, ox0, 0u), phase_col(row, row_ok, ox0, 1u),
                              phase_col(row, row_ok, ox0, 2u), phase_col(row, row_ok, ox0, 3u));
    }
    dst4[(nc * params.h + iy) * q_count + q] = sum;
}

// Σ over the kernel columns that reach column u of a vec4 (ix = 4q + u, 4q a multiple of sw)
// of patch row `row`'s values: kj = rx + j·sw, from output column ox0 + dx − j.
fn phase_col(row: u32, row_ok: bool, ox0: i32, u: u32) -> f32 {
    let rx = u + params.pl - div(u + params.pl, params.sw) * params.sw;
    let dx = i32(div(u + params.pl - rx, params.sw));
    let nx = select(0u, div(params.kw - rx + params.sw - 1u, params.sw), rx < params.kw);
    let ck = params.c * params.kh * params.kw;
    var s = 0.0;
    for (var jx = 0u; jx < nx; jx = jx + 1u) {
        let ox = ox0 + dx - i32(jx);
        let ok = row_ok && ox >= 0 && ox < i32(params.ow);
        s = s + select(0.0, src[select(0u, row + u32(ox) * ck + rx + jx * params.sw, ok)], ok);
    }
    return s;
}
