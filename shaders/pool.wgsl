// pool.wgsl — direct 2-D max and average pooling and their gradients, no patch matrix.
//
// x is (I, H, W) with I = N·C images (channels pool independently); y and g are
// (I, OH, OW). A window at output (oy, ox) covers padded-input rows oy·sh + ki·dh and
// columns ox·sw + kj·dw (ki < kh, kj < kw); padded position p reads x at p - pt (rows) or
// p - pl (columns) when that lies inside the image. Padding is never a max candidate; an
// average divides by the taps inside the padded input (count_include_pad, but never the
// taps past pb/pr that ceil_mode's last window reaches) or inside the image only.
//
// Entry points (workgroup size 256, no barriers, no atomics, grid split over x/y/z):
//   pool_max_forward    y[o] = max over the window's real taps          (one invocation per o)
//   pool_avg_forward    y[o] = Σ real taps / count(o)                   (one invocation per o)
//   pool_max_share      s[o] = g[o] / #(real taps equal to y[o])         (one invocation per o)
//   pool_max_backward   dx[i] = Σ over windows o reading i with x[i] == y[o] of s[o]
//   pool_avg_backward   dx[i] = Σ over windows o reading i of g[o] / count(o)
// The backward entries are gathers (one invocation per input element) walking the kh×kw
// taps that could reach it. Every invocation loops at most kh·(kw + 1) times; the host
// refuses a window past gpu::LOOP_BUDGET (lavapipe silently stops an invocation after
// 65535 iterations).

struct Params {
    images: u32, h: u32, w: u32,       // x is (images, h, w)
    oh: u32, ow: u32,                  // output positions
    kh: u32, kw: u32,                  // window taps
    sh: u32, sw: u32,                  // strides (rows, columns)
    dh: u32, dw: u32,                  // dilations (rows, columns)
    pt: u32, pl: u32, pb: u32, pr: u32, // padding: top, left, bottom, right
    total: u32,                        // invocations that write: outputs or input elements
    include_pad: u32,                  // average: count the padding's taps
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;   // x (I, H, W); avg_backward: g (I, OH, OW)
@group(0) @binding(2) var<storage, read_write> b: array<f32>; // forward: y; avg_backward: dx; else y (read)
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // share: g; max_backward: s
@group(0) @binding(4) var<storage, read_write> d: array<f32>; // share: s; max_backward: dx

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// How many of the k taps base + t·dl (t < k) lie in [lo, hi), in closed form (two
// divisions instead of a loop over the taps).
fn axis_count(base: u32, lo: u32, hi: u32, k: u32, dl: u32) -> u32 {
    if (base >= hi) { return 0u; }
    var first = 0u;
    if (base < lo) { first = (lo - base + dl - 1u) / dl; }
    let end = min(k, (hi - 1u - base) / dl + 1u);
    if (end <= first) { return 0u; }
    return end - first;
}

// The divisor of average window (oy, ox).
fn avg_count(oy: u32, ox: u32) -> f32 {
    let y0 = oy * params.sh;
    let x0 = ox * params.sw;
    var rows = 0u;
    var cols = 0u;
    if (params.include_pad != 0u) {
        rows = axis_count(y0, 0u, params.pt + params.h + params.pb, params.kh, params.dh);
        cols = axis_count(x0, 0u, params.pl + params.w + params.pr, params.kw, params.dw);
    } else {
        rows = axis_count(y0, params.pt, params.pt + params.h, params.kh, params.dh);
        cols = axis_count(x0, params.pl, params.pl + params.w, params.kw, params.dw);
    }
    return f32(rows * cols);
}

// Output o as (image, oy, ox).
fn out_pos(o: u32) -> vec3<u32> {
    let ox = o % params.ow;
    let oy = (o / params.ow) % params.oh;
    return vec3<u32>(o / (params.ow * params.oh), oy, ox);
}

// The maximum over window o's real taps (-inf if it has none; the host refuses those).
fn window_max(o: u32) -> f32 {
    let p = out_pos(o);
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    var m = -bitcast<f32>(0x7f800000u);
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w) {
                m = max(m, a[row + u32(ix)]);
            }
        }
    }
    return m;
}

@compute @workgroup_size(256)
fn pool_max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    b[o] = window_max(o);
}

@compute @workgroup_size(256)
fn pool_avg_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    let p = out_pos(o);
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    var s = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w) {
                s = s + a[row + u32(ix)];
            }
        }
    }
    b[o] = s / avg_count(p.y, p.z);
}

@compute @workgroup_size(256)
fn pool_max_share(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    let p = out_pos(o);
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    let m = b[o];
    var ties = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w && a[row + u32(ix)] == m) {
                ties = ties + 1.0;
            }
        }
    }
    // The gradient is shared by the taps equal to the maximum (as the reduction's rule).
    d[o] = c[o] / ties;
}

// The output position t / s when stride s divides t; else 0xffffffff (no position).
fn position(t: u32, s: u32) -> u32 {
    if (s == 1u) { return t; }
    if (t % s != 0u) { return 0xffffffffu; }
    return t / s;
}

// The gathers walk the taps (ki, kj) whose window could contain input i = (image, iy, ix):
// padded row iy + pt - ki·dh must be a multiple of sh below oh·sh (columns alike).
// Max: the sum of s[o] over the windows whose maximum equals x[i].
@compute @workgroup_size(256)
fn pool_max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let ix = i % params.w;
    let iy = (i / params.w) % params.h;
    let out_plane = (i / (params.w * params.h)) * params.oh * params.ow;
    let xi = a[i];
    let py = iy + params.pt;
    let px = ix + params.pl;
    var sum = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let tap_y = ki * params.dh;
        if (tap_y > py) { break; }
        let oy = position(py - tap_y, params.sh);
        if (oy >= params.oh) { continue; }
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let tap_x = kj * params.dw;
            if (tap_x > px) { break; }
            let ox = position(px - tap_x, params.sw);
            if (ox >= params.ow) { continue; }
            let o = out_plane + oy * params.ow + ox;
            if (xi == b[o]) { sum = sum + c[o]; }
        }
    }
    d[i] = sum;
}

// Average: the sum of g[o] / count(o) over the windows reading x[i].
@compute @workgroup_size(256)
fn pool_avg_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let ix = i % params.w;
    let iy = (i / params.w) % params.h;
    let out_plane = (i / (params.w * params.h)) * params.oh * params.ow;
    let py = iy + params.pt;
    let px = ix + params.pl;
    var sum = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let tap_y = ki * params.dh;
        if (tap_y > py) { break; }
        let oy = position(py - tap_y, params.sh);
        if (oy >= params.oh) { continue; }
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let tap_x = kj * params.dw;
            if (tap_x > px) { break; }
            let ox = position(px - tap_x, params.sw);
            if (ox >= params.ow) { continue; }
            sum = sum + a[out_plane + oy * params.ow + ox] / avg_count(oy, ox);
        }
    }
    b[i] = sum;
}
