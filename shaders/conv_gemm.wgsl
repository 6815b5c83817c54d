// conv_gemm.wgsl — implicit-GEMM convolution: the product reads its patch operand through
// the convolution's index map, so no patch matrix (im2col) is ever materialised.
//
// x is (N, C, H, W), filters w (F, Cg, KH, KW) with G groups (Cg = C/G, Fg = F/G), y and its
// gradient gy (N, F, OH, OW), L = OH·OW. Within a group the reduction index k runs over
// (c, ki, kj) channel-major (as im2col's columns): K = Cg·KH·KW. Padding reads as zero;
// only the top and left padding move windows (the host derives oh, ow from all four).
//
// Entry points (workgroup size 64, no barriers, no workgroup memory: on lavapipe register
// blocking beats tiling; grid split over x/y/z past 65535 workgroups):
//   conv_forward      y[n, f, l]  (+)= Σ_{k in k0..k1} w[f, k] · x[n, g·Cg + c(k), tap(l, k)]
//                     — one invocation per 4 filters × 4 consecutive positions (16 sums).
//   conv_grad_input   gx[n, c, p] (+)= Σ_{t in k0..k1} w[f(t), c, ki, kj] · gy[n, f, o(p, ki, kj)]
//                     over t = (f, ki, kj) of the group, the windows that read pixel p —
//                     one invocation per 4 channels × 4 consecutive pixels (a gather: no atomics).
//   conv_grad_weight  part[s, f, k] = Σ_{q in chunk s} gy[n, f, l] · x[n, g·Cg + c(k), tap(l, k)]
//                     over positions q = (n, l) of chunk s — one invocation per 4 filters × 4
//                     consecutive k; the host sums the chunks.
// Inner loops step their indices incrementally (no integer division per tap: lavapipe
// scalarises it), and the host bounds every loop by gpu::LOOP_BUDGET (lavapipe silently stops
// an invocation after 65535 iterations): K and Fg·KH·KW are split over accumulating
// dispatches, positions over chunks.

struct Params {
    n: u32, c: u32, h: u32, w: u32,       // input shape
    f: u32, kh: u32, kw: u32, groups: u32,
    sh: u32, sw: u32, pt: u32, pl: u32,   // strides, top and left padding
    dh: u32, dw: u32, oh: u32, ow: u32,   // dilations, output positions
    cg: u32, fg: u32, k0: u32, k1: u32,   // channels and filters per group; reduction range
    chunk: u32, accumulate: u32, total: u32, blocks: u32, // grad_weight: positions per chunk;
                                           // whether to add to out; invocations; (see entries)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // forward: x; grad_input: gy; grad_weight: x
@group(0) @binding(2) var<storage, read> b: array<f32>;        // forward: w; grad_input: w;  grad_weight: gy
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // y; gx; part (S, F, K)

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

// The one place the forward writes y: an epilogue (bias, batch norm, activation) fused
// later would apply here, per output element (n, filter f, position l).
fn store_output(n: u32, f: u32, l: u32, v: f32) {
    let i = (n * params.f + f) * params.oh * params.ow + l;
    if (params.accumulate != 0u) {
        out[i] = out[i] + v;
    } else {
        out[i] = v;
    }
}

// x[plane + iy·W + ix], or 0 in the padding (the load is clamped to index 0 there).
fn x_at(plane: u32, iy: i32, ix: i32) -> f32 {
    let inside = iy >= 0 && ix >= 0 && iy < i32(params.h) && ix < i32(params.w);
    let idx = select(0u, plane + u32(iy) * params.w + u32(ix), inside);
    return select(0.0, a[idx], inside);
}

@compute @workgroup_size(64)
fn conv_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    // i = ((n·G + g)·FB + fb)·LB + lb: positions fastest, so a workgroup shares its filters.
    let l_count = params.oh * params.ow;
    let lb_count = (l_count + 3u) / 4u;
    let fb_count = (params.fg + 3u) / 4u;
    let lb = i % lb_count;
    let fb = (i / lb_count) % fb_count;
    let ng = i / (lb_count * fb_count);
    let g = ng % params.groups;
    let n = ng / params.groups;
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    // Window origins of the 4 positions (divisions once per invocation).
    var iy0: array<i32, 4>;
    var ix0: array<i32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let l = min(lb * 4u + j, l_count - 1u);
        iy0[j] = i32((l / params.ow) * params.sh) - i32(params.pt);
        ix0[j] = i32((l % params.ow) * params.sw) - i32(params.pl);
    }
    // Filter rows (clamped: the sums of filters past Fg are computed but never stored).
    var wrow: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        wrow[r] = (g * params.fg + min(fb * 4u + r, params.fg - 1u)) * k_count;
    }
    var acc: array<vec4<f32>, 4>;   // acc[r][j]: filter fb·4 + r, position lb·4 + j
    // Tap of k0, then stepped: kj, then ki, then the channel.
    var c = params.k0 / khw;
    var ki = (params.k0 % khw) / params.kw;
    var kj = params.k0 % params.kw;
    let hw = params.h * params.w;
    var plane = (n * params.c + g * params.cg + c) * hw;
    var dy = i32(ki * params.dh);
    var dx = i32(kj * params.dw);
    for (var k = params.k0; k < params.k1; k++) {
        let xv = vec4<f32>(x_at(plane, iy0[0] + dy, ix0[0] + dx), x_at(plane, iy0[1] + dy, ix0[1] + dx),
                           x_at(plane, iy0[2] + dy, ix0[2] + dx), x_at(plane, iy0[3] + dy, ix0[3] + dx));
        acc[0] += b[wrow[0] + k] * xv;
        acc[1] += b[wrow[1] + k] * xv;
        acc[2] += b[wrow[2] + k] * xv;
        acc[3] += b[wrow[3] + k] * xv;
        kj += 1u;
        dx += i32(params.dw);
        if (kj == params.kw) {
            kj = 0u;
            dx = 0;
            ki += 1u;
            dy += i32(params.dh);
            if (ki == params.kh) {
                ki = 0u;
                dy = 0;
                plane += hw;
            }
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let f = fb * 4u + r;
        if (f >= params.fg) { break; }
        for (var j = 0u; j < 4u; j++) {
            let l = lb * 4u + j;
            if (l < l_count) {
                store_output(n, g * params.fg + f, l, acc[r][j]);
            }
        }
    }
}

// One axis of "which window position o reads input coordinate p through tap t": p + pad -
// t·d = o·s must hold with 0 <= o < count. The quotient and remainder of p + pad by s are
// kept and stepped by -d (as -(d/s), -(d%s) with a borrow), so the loop never divides.
struct Axis { q: i32, r: i32 }

fn axis_start(p: u32, pad: u32, s: u32) -> Axis {
    let v = p + pad;
    return Axis(i32(v / s), i32(v % s));
}

fn axis_step(a: Axis, dq: i32, dr: i32, s: i32) -> Axis {
    var r = a.r - dr;
    var q = a.q - dq;
    if (r < 0) { r += s; q -= 1; }
    return Axis(q, r);
}

@compute @workgroup_size(64)
fn conv_grad_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    // i = ((n·G + g)·CB + cb)·PB + pb over 4 channels × 4 consecutive pixels.
    let hw = params.h * params.w;
    let pb_count = (hw + 3u) / 4u;
    let cb_count = (params.cg + 3u) / 4u;
    let pb = i % pb_count;
    let cb = (i / pb_count) % cb_count;
    let ng = i / (pb_count * cb_count);
    let g = ng % params.groups;
    let n = ng / params.groups;
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    let l_count = params.oh * params.ow;
    let sh = i32(params.sh);
    let sw = i32(params.sw);
    let dyq = i32(params.dh / params.sh);
    let dyr = i32(params.dh % params.sh);
    let dxq = i32(params.dw / params.sw);
    let dxr = i32(params.dw % params.sw);
    // Per pixel: its row and column axes at tap (ki, kj) = (0, 0).
    var row0: array<Axis, 4>;
    var col0: array<Axis, 4>;
    for (var j = 0u; j < 4u; j++) {
        let p = min(pb * 4u + j, hw - 1u);
        row0[j] = axis_start(p / params.w, params.pt, params.sh);
        col0[j] = axis_start(p % params.w, params.pl, params.sw);
    }
    // Filter taps w[f, c, ki, kj]: channel offsets (clamped; sums past Cg are not stored).
    var coff: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        coff[r] = min(cb * 4u + r, params.cg - 1u) * khw;
    }
    // t = (fi, ki, kj) within the group, from k0.
    let t_khw = params.k0 % khw;
    var fi = params.k0 / khw;
    var ki = t_khw / params.kw;
    var kj = t_khw % params.kw;
    var row: array<Axis, 4>;
    var col: array<Axis, 4>;
    for (var j = 0u; j < 4u; j++) {
        row[j] = row0[j];
        for (var s = 0u; s < ki; s++) { row[j] = axis_step(row[j], dyq, dyr, sh); }
        col[j] = col0[j];
        for (var s = 0u; s < kj; s++) { col[j] = axis_step(col[j], dxq, dxr, sw); }
    }
    var wbase = (g * params.fg + fi) * k_count + ki * params.kw + kj;
    var gplane = (n * params.f + g * params.fg + fi) * l_count;
    var acc: array<vec4<f32>, 4>;   // acc[r][j]: channel cb·4 + r, pixel pb·4 + j
    for (var t = params.k0; t < params.k1; t++) {
        var gv: vec4<f32>;
        for (var j = 0u; j < 4u; j++) {
            let ok = row[j].r == 0 && col[j].r == 0 && row[j].q >= 0 && col[j].q >= 0
                && row[j].q < i32(params.oh) && col[j].q < i32(params.ow);
            let idx = select(0u, gplane + u32(row[j].q) * params.ow + u32(col[j].q), ok);
            gv[j] = select(0.0, a[idx], ok);
        }
        acc[0] += b[wbase + coff[0]] * gv;
        acc[1] += b[wbase + coff[1]] * gv;
        acc[2] += b[wbase + coff[2]] * gv;
        acc[3] += b[wbase + coff[3]] * gv;
        kj += 1u;
        wbase += 1u;
        for (var j = 0u; j < 4u; j++) { col[j] = axis_step(col[j], dxq, dxr, sw); }
        if (kj == params.kw) {
            kj = 0u;
            ki += 1u;
            for (var j = 0u; j < 4u; j++) {
                col[j] = col0[j];
                row[j] = axis_step(row[j], dyq, dyr, sh);
            }
            if (ki == params.kh) {
                ki = 0u;
                fi += 1u;
                wbase = (g * params.fg + fi) * k_count;
                gplane += l_count;
                for (var j = 0u; j < 4u; j++) { row[j] = row0[j]; }
            }
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let c = cb * 4u + r;
        if (c >= params.cg) { break; }
        for (var j = 0u; j < 4u; j++) {
            let p = pb * 4u + j;
            if (p < hw) {
                let o = (n * params.c + g * params.cg + c) * hw + p;
                if (params.accumulate != 0u) {
                    out[o] = out[o] + acc[r][j];
                } else {
                    out[o] = acc[r][j];
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn conv_grad_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    // i = ((s·G + g)·FB + fb)·KB + kb over 4 filters × 4 consecutive k of chunk s.
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    let kb_count = (k_count + 3u) / 4u;
    let fb_count = (params.fg + 3u) / 4u;
    let kb = i % kb_count;
    let fb = (i / kb_count) % fb_count;
    let sg = i / (kb_count * fb_count);
    let g = sg % params.groups;
    let s = sg / params.groups;
    let l_count = params.oh * params.ow;
    let hw = params.h * params.w;
    // The 4 taps: their channel plane (within an image) and window offsets.
    var tplane: array<u32, 4>;
    var ty: array<i32, 4>;
    var tx: array<i32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let k = min(kb * 4u + j, k_count - 1u);
        let r = k % khw;
        tplane[j] = (g * params.cg + k / khw) * hw;
        ty[j] = i32((r / params.kw) * params.dh) - i32(params.pt);
        tx[j] = i32((r % params.kw) * params.dw) - i32(params.pl);
    }
    var frow: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        frow[r] = (g * params.fg + min(fb * 4u + r, params.fg - 1u)) * l_count;
    }
    // Positions q = n·L + oy·OW + ox of this chunk, stepped without division.
    let q0 = s * params.chunk;
    let q1 = min(q0 + params.chunk, params.n * l_count);
    var n = q0 / l_count;
    var l = q0 % l_count;
    var oy = l / params.ow;
    var ox = l % params.ow;
    var ximg = n * params.c * hw;
    var gimg = n * params.f * l_count;
    var acc: array<vec4<f32>, 4>;   // acc[r][j]: filter fb·4 + r, k = kb·4 + j
    for (var q = q0; q < q1; q++) {
        let by = i32(oy * params.sh);
        let bx = i32(ox * params.sw);
        let xv = vec4<f32>(x_at(ximg + tplane[0], by + ty[0], bx + tx[0]),
                           x_at(ximg + tplane[1], by + ty[1], bx + tx[1]),
                           x_at(ximg + tplane[2], by + ty[2], bx + tx[2]),
                           x_at(ximg + tplane[3], by + ty[3], bx + tx[3]));
        let gl = gimg + l;
        acc[0] += b[gl + frow[0]] * xv;
        acc[1] += b[gl + frow[1]] * xv;
        acc[2] += b[gl + frow[2]] * xv;
        acc[3] += b[gl + frow[3]] * xv;
        l += 1u;
        ox += 1u;
        if (ox == params.ow) {
            ox = 0u;
            oy += 1u;
            if (oy == params.oh) {
                oy = 0u;
                l = 0u;
                ximg += params.c * hw;
                gimg += params.f * l_count;
            }
        }
    }
    for (var r = 0u; r < 4u; r++) {
        let f = fb * 4u + r;
        if (f >= params.fg) { break; }
        for (var j = 0u; j < 4u; j++) {
            let k = kb * 4u + j;
            if (k < k_count) {
                out[(s * params.f + g * params.fg + f) * k_count + k] = acc[r][j];
            }
        }
    }
}
