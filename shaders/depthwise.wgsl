// depthwise.wgsl — depthwise 2-D convolution (groups = input channels C, F = C·m filters of
// one channel each) and its gradients, with no patch matrix.
//
// x (N, C, H, W), w (F, 1, KH, KW), y and g (N, F, OH, OW); filter f reads channel f / m.
// Window (oy, ox) covers padded rows oy·sh + ki·dh and columns ox·sw + kj·dw; padded
// position p reads x at p - pt (rows) or p - pl (columns) inside the image, else zero.
//
// Entry points (workgroup size 256, no barriers, no atomics, grid split over x/y/z):
//   depthwise_forward          y[n, f, oy, ox] = Σ_ki,kj x(tap) · w[f, ki, kj]    (per output)
//   depthwise_backward_data    dx[n, c, iy, ix] = Σ_f of c, windows over (iy, ix) of
//                              g[n, f, oy, ox] · w[f, ki, kj]                       (per input)
//   depthwise_backward_filter  partial[(f, ki, kj), part] = Σ over positions part·plen ..
//                              of the (n, oy, ox) of g · x(tap)  (the host sums the parts)
// Loops per invocation: forward kh·(kw + 1); data m·wh·(ww + 1) (wh, ww: windows over one
// position); filter plen. The host keeps each within gpu::LOOP_BUDGET.

struct Params {
    n: u32, c: u32, h: u32, w: u32,   // x
    f: u32, m: u32,                    // filters, filters per channel
    oh: u32, ow: u32,                  // output positions
    kh: u32, kw: u32,                  // window
    sh: u32, sw: u32,                  // strides
    dh: u32, dw: u32,                  // dilations
    pt: u32, pl: u32,                  // top and left padding
    total: u32,                        // invocations that write
    plen: u32, parts: u32,             // filter gradient: positions per part, parts
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // forward, filter: x; data: g
@group(0) @binding(2) var<storage, read> b: array<f32>;        // forward, data: w; filter: g
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // y, dx or the partials

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// t / d as a shift when d is a power of two (lavapipe scalarises integer division).
fn div_by(t: u32, dl: u32) -> u32 {
    if ((dl & (dl - 1u)) == 0u) { return t >> countTrailingZeros(dl); }
    return t / dl;
}

@compute @workgroup_size(256)
fn depthwise_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    let row = o / params.ow;
    let ox = o - row * params.ow;
    let plane = row / params.oh;          // n·F + f
    let oy = row - plane * params.oh;
    let nn = plane / params.f;
    let f = plane - nn * params.f;
    let x_plane = (nn * params.c + div_by(f, params.m)) * params.h * params.w;
    let w_at = f * params.kh * params.kw;
    let y0 = i32(oy * params.sh) - i32(params.pt);
    let x0 = i32(ox * params.sw) - i32(params.pl);
    var s = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let xr = x_plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w) {
                s = s + a[xr + u32(ix)] * b[w_at + ki * params.kw + kj];
            }
        }
    }
    out[o] = s;
}

// The windows [lo, hi) along one axis whose span covers padded position p.
fn windows_over(p: u32, k: u32, s: u32, dl: u32, outs: u32) -> vec2<u32> {
    let reach = (k - 1u) * dl;
    var lo = 0u;
    if (p > reach) { lo = div_by(p - reach + s - 1u, s); }
    return vec2<u32>(lo, min(outs, div_by(p, s) + 1u));
}

@compute @workgroup_size(256)
fn depthwise_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let row = i / params.w;
    let ix = i - row * params.w;
    let plane = row / params.h;           // n·C + c
    let iy = row - plane * params.h;
    let nn = plane / params.c;
    let ch = plane - nn * params.c;
    let py = iy + params.pt;
    let px = ix + params.pl;
    let ry = windows_over(py, params.kh, params.sh, params.dh, params.oh);
    let rx = windows_over(px, params.kw, params.sw, params.dw, params.ow);
    var s = 0.0;
    for (var j = 0u; j < params.m; j = j + 1u) {
        let f = ch * params.m + j;
        let g_plane = (nn * params.f + f) * params.oh * params.ow;
        let w_at = f * params.kh * params.kw;
        for (var oy = ry.x; oy < ry.y; oy = oy + 1u) {
            let ty = py - oy * params.sh;
            let ki = div_by(ty, params.dh);
            if (ki * params.dh != ty) { continue; }
            for (var ox = rx.x; ox < rx.y; ox = ox + 1u) {
                let tx = px - ox * params.sw;
                let kj = div_by(tx, params.dw);
                if (kj * params.dw == tx) {
                    s = s + a[g_plane + oy * params.ow + ox] * b[w_at + ki * params.kw + kj];
                }
            }
        }
    }
    out[i] = s;
}

@compute @workgroup_size(256)
fn depthwise_backward_filter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wg, nwg, lid);
    if (t >= params.total) { return; }
    let tap = t / params.parts;            // f·K + ki·kw + kj
    let part = t - tap * params.parts;
    let k = params.kh * params.kw;
    let f = tap / k;
    let kk = tap - f * k;
    let ki = kk / params.kw;
    let kj = kk - ki * params.kw;
    let ch = div_by(f, params.m);
    let l = params.oh * params.ow;
    let positions = params.n * l;
    let start = part * params.plen;
    let end = min(positions, start + params.plen);
    let dy = i32(ki * params.dh) - i32(params.pt);
    let dx = i32(kj * params.dw) - i32(params.pl);
    var s = 0.0;
    // Positions walk (n, oy, ox) with counters, not a division per position.
    var nn = start / l;
    var r = start - nn * l;
    var oy = r / params.ow;
    var ox = r - oy * params.ow;
    for (var p = start; p < end; p = p + 1u) {
        let iy = i32(oy * params.sh) + dy;
        let ix = i32(ox * params.sw) + dx;
        if (iy >= 0 && u32(iy) < params.h && ix >= 0 && u32(ix) < params.w) {
            let xv = a[((nn * params.c + ch) * params.h + u32(iy)) * params.w + u32(ix)];
            s = s + xv * b[((nn * params.f + f) * params.oh + oy) * params.ow + ox];
        }
        ox = ox + 1u;
        if (ox == params.ow) {
            ox = 0u;
            oy = oy + 1u;
            if (oy == params.oh) { oy = 0u; nn = nn + 1u; }
        }
    }
    out[t] = s;
}
