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
//   conv_weight_pack  the filters packed (G, K, Fg rounded up to 16) for the forward, which
//                     lives in conv_gemm_fwd.wgsl (it binds them as vec4s).
//   conv_grad_input   gx[n, c, p] (+)= Σ_{t in k0..k1} w[f(t), c, ki, kj] · gy[n, f, o(p, ki, kj)]
//                     over t = (f, ki, kj) of the group, the windows that read pixel p —
//                     one invocation per 4 channels × 4 consecutive pixels (a gather: no atomics).
//   conv_grad_input_s1  the same for stride 1 and dilation 1, one invocation per 4 channels ×
//                     8 consecutive pixels of one image row: the row's bounds are checked
//                     once per (f, ki) and each filter tap is loaded once for 8 pixels.
//   conv_grad_weight  part[s, f, k] = Σ_{q in chunk s} gy[n, f, l] · x[n, g·Cg + c(k), tap(l, k)]
//                     over positions q = (n, l) of chunk s — one invocation per 4 filters × 4
//                     consecutive k; the host sums the chunks.
//   conv_grad_weight8 the same for Fg a multiple of 8, 8 filters × 4 k per invocation.
// Every per-lane block lives in vec4 values, never in function-scope arrays: an array that
// a loop indexes is placed in memory by lavapipe (the first version of this file, with
// arrays, ran ~5x slower). Inner loops step their indices incrementally (no integer division per tap: lavapipe
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

// x at 4 positions (plane + iy·W + ix), 0 in the padding (loads there clamp to index 0).
fn x_at4(plane: vec4<u32>, iy: vec4<i32>, ix: vec4<i32>) -> vec4<f32> {
    let inside = (iy >= vec4<i32>(0)) & (ix >= vec4<i32>(0))
        & (iy < vec4<i32>(i32(params.h))) & (ix < vec4<i32>(i32(params.w)));
    let idx = select(vec4<u32>(0u), plane + vec4<u32>(iy) * params.w + vec4<u32>(ix), inside);
    return select(vec4<f32>(0.0), vec4<f32>(a_at(idx.x), a_at(idx.y), a_at(idx.z), a_at(idx.w)), inside);
}

const LANES = vec4<u32>(0u, 1u, 2u, 3u);


// conv_weight_pack: wp[(g·K + k)·Fgp + f] = w[g·Fg + f, k] for f < Fg, else 0 — the filters
// as conv_gemm_fwd.wgsl reads them (Fgp = Fg rounded up to 16, in `blocks`). One invocation
// per element of wp; a is w, out is wp (b, bound to w too, is unused).
@compute @workgroup_size(64)
fn conv_weight_pack(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    _ = b[0];
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let fgp = params.blocks;
    let k_count = params.cg * params.kh * params.kw;
    let f = i % fgp;
    let gk = i / fgp;
    let k = gk % k_count;
    let g = gk / k_count;
    var v = 0.0;
    if (f < params.fg) { v = a[(g * params.fg + f) * k_count + k]; }
    out[i] = v;
}

// One axis of "which window position o reads input coordinate p through tap t", for 4
// pixels: p + pad - t·d = o·s must hold with 0 <= o < count. The quotient q and remainder r
// of p + pad by s are kept and stepped by -d (as -(d/s), -(d%s) with a borrow), so the loop
// never divides.
fn axis_step(q: ptr<function, vec4<i32>>, r: ptr<function, vec4<i32>>, dq: i32, dr: i32, s: i32) {
    let rr = *r - dr;
    let borrow = rr < vec4<i32>(0);
    *r = select(rr, rr + s, borrow);
    *q = select(*q - dq, *q - dq - 1, borrow);
}

// Writes channel c's gradient at pixels p0..p0+4 (those below H·W).
fn store_grad_input(n: u32, c: u32, p0: u32, v: vec4<f32>) {
    let hw = params.h * params.w;
    let base = (n * params.c + c) * hw + p0;
    if (p0 < hw) { store_add(base, v.x); }
    if (p0 + 1u < hw) { store_add(base + 1u, v.y); }
    if (p0 + 2u < hw) { store_add(base + 2u, v.z); }
    if (p0 + 3u < hw) { store_add(base + 3u, v.w); }
}

// out[o] = v, or += v when this dispatch adds to an earlier part of the reduction.
fn store_add(o: u32, v: f32) {
    if (params.accumulate != 0u) { out[o] = out[o] + v; } else { out[o] = v; }
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
    let p4 = min(vec4<u32>(pb * 4u) + LANES, vec4<u32>(hw - 1u));
    let vy = p4 / params.w + params.pt;
    let vx = p4 % params.w + params.pl;
    let rq0 = vec4<i32>(vy / params.sh);
    let rr0 = vec4<i32>(vy % params.sh);
    let cq0 = vec4<i32>(vx / params.sw);
    let cr0 = vec4<i32>(vx % params.sw);
    // Filter taps w[f, c, ki, kj]: channel offsets (clamped; sums past Cg are not stored).
    let c0 = cb * 4u;
    let cmax = params.cg - 1u;
    let o0 = min(c0, cmax) * khw;
    let o1 = min(c0 + 1u, cmax) * khw;
    let o2 = min(c0 + 2u, cmax) * khw;
    let o3 = min(c0 + 3u, cmax) * khw;
    // t = (fi, ki, kj) within the group, from k0.
    let t_khw = params.k0 % khw;
    var fi = params.k0 / khw;
    var ki = t_khw / params.kw;
    var kj = t_khw % params.kw;
    var rq = rq0;
    var rr = rr0;
    var cq = cq0;
    var cr = cr0;
    for (var s = 0u; s < ki; s++) { axis_step(&rq, &rr, dyq, dyr, sh); }
    for (var s = 0u; s < kj; s++) { axis_step(&cq, &cr, dxq, dxr, sw); }
    var wbase = (g * params.fg + fi) * k_count + ki * params.kw + kj;
    var gplane = (n * params.f + g * params.fg + fi) * l_count;
    var acc0 = vec4<f32>(0.0);   // channel c0 + 0 at the 4 pixels
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let oh = vec4<i32>(i32(params.oh));
    let ow = vec4<i32>(i32(params.ow));
    let zero = vec4<i32>(0);
    for (var t = params.k0; t < params.k1; t++) {
        let ok = (rr == zero) & (cr == zero) & (rq >= zero) & (cq >= zero) & (rq < oh) & (cq < ow);
        let idx = select(vec4<u32>(0u), gplane + vec4<u32>(rq) * params.ow + vec4<u32>(cq), ok);
        let gv = select(vec4<f32>(0.0), vec4<f32>(a_at(idx.x), a_at(idx.y), a_at(idx.z), a_at(idx.w)), ok);
        acc0 += b_at(wbase + o0) * gv;
        acc1 += b_at(wbase + o1) * gv;
        acc2 += b_at(wbase + o2) * gv;
        acc3 += b_at(wbase + o3) * gv;
        kj += 1u;
        wbase += 1u;
        axis_step(&cq, &cr, dxq, dxr, sw);
        if (kj == params.kw) {
            kj = 0u;
            ki += 1u;
            cq = cq0;
            cr = cr0;
            axis_step(&rq, &rr, dyq, dyr, sh);
            if (ki == params.kh) {
                ki = 0u;
                fi += 1u;
                wbase = (g * params.fg + fi) * k_count;
                gplane += l_count;
                rq = rq0;
                rr = rr0;
            }
        }
    }
    let co = g * params.cg + c0;
    let p0 = pb * 4u;
    store_grad_input(n, co, p0, acc0);
    if (c0 + 1u < params.cg) { store_grad_input(n, co + 1u, p0, acc1); }
    if (c0 + 2u < params.cg) { store_grad_input(n, co + 2u, p0, acc2); }
    if (c0 + 3u < params.cg) { store_grad_input(n, co + 3u, p0, acc3); }
}

// Writes channel c's gradient at pixels (y, x0 .. x0 + 8) (those inside the row).
fn store_grad_input_row8(n: u32, c: u32, y: u32, x0: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let base = ((n * params.c + c) * params.h + y) * params.w + x0;
    let w = params.w;
    if (x0 < w) { store_add(base, lo.x); }
    if (x0 + 1u < w) { store_add(base + 1u, lo.y); }
    if (x0 + 2u < w) { store_add(base + 2u, lo.z); }
    if (x0 + 3u < w) { store_add(base + 3u, lo.w); }
    if (x0 + 4u < w) { store_add(base + 4u, hi.x); }
    if (x0 + 5u < w) { store_add(base + 5u, hi.y); }
    if (x0 + 6u < w) { store_add(base + 6u, hi.z); }
    if (x0 + 7u < w) { store_add(base + 7u, hi.w); }
}

// gy at row `row` (already checked) and columns `cols`, 0 where a column lies outside.
fn gy_cols(row: u32, cols: vec4<i32>) -> vec4<f32> {
    let ok = (cols >= vec4<i32>(0)) & (cols < vec4<i32>(i32(params.ow)));
    let idx = select(vec4<u32>(0u), vec4<u32>(row) + vec4<u32>(cols), ok);
    return select(vec4<f32>(0.0), vec4<f32>(a_at(idx.x), a_at(idx.y), a_at(idx.z), a_at(idx.w)), ok);
}

// conv_grad_input with stride 1 and dilation 1: pixel (y, x) reads gy at (y + pt - ki,
// x + pl - kj), so the 8 pixels of a row segment share the row and step their columns
// together. i = ((n·G + g)·CB + cb)·(H·W8) + y·W8 + xb over 4 channels × 8 pixels.
@compute @workgroup_size(64)
fn conv_grad_input_s1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let w8 = (params.w + 7u) / 8u;
    let pb_count = params.h * w8;
    let cb_count = (params.cg + 3u) / 4u;
    let pb = i % pb_count;
    let cb = (i / pb_count) % cb_count;
    let ng = i / (pb_count * cb_count);
    let g = ng % params.groups;
    let n = ng / params.groups;
    let y = pb / w8;
    let x0 = (pb % w8) * 8u;
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    let l_count = params.oh * params.ow;
    let c0 = cb * 4u;
    let cmax = params.cg - 1u;
    let o0 = min(c0, cmax) * khw;
    let o1 = min(c0 + 1u, cmax) * khw;
    let o2 = min(c0 + 2u, cmax) * khw;
    let o3 = min(c0 + 3u, cmax) * khw;
    // t = (fi, ki, kj) within the group, from k0; gy's row and columns at that tap.
    let t_khw = params.k0 % khw;
    var fi = params.k0 / khw;
    var ki = t_khw / params.kw;
    var kj = t_khw % params.kw;
    let oy0 = i32(y + params.pt);
    var oy = oy0 - i32(ki);
    let cols0 = vec4<i32>(vec4<u32>(x0 + params.pl) + LANES);
    var cols = cols0 - vec4<i32>(i32(kj));
    var wbase = (g * params.fg + fi) * k_count + ki * params.kw + kj;
    var gplane = (n * params.f + g * params.fg + fi) * l_count;
    var acc0 = vec4<f32>(0.0);   // channel c0 + 0 at pixels x0 .. x0 + 4
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);   // channel c0 + 0 at pixels x0 + 4 .. x0 + 8
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    for (var t = params.k0; t < params.k1; t++) {
        if (oy >= 0 && oy < i32(params.oh)) {
            let row = gplane + u32(oy) * params.ow;
            let lo = gy_cols(row, cols);
            let hi = gy_cols(row, cols + vec4<i32>(4));
            let w0 = b_at(wbase + o0);
            let w1 = b_at(wbase + o1);
            let w2 = b_at(wbase + o2);
            let w3 = b_at(wbase + o3);
            acc0 += w0 * lo;
            acc1 += w1 * lo;
            acc2 += w2 * lo;
            acc3 += w3 * lo;
            acc4 += w0 * hi;
            acc5 += w1 * hi;
            acc6 += w2 * hi;
            acc7 += w3 * hi;
        }
        kj += 1u;
        wbase += 1u;
        cols -= vec4<i32>(1);
        if (kj == params.kw) {
            kj = 0u;
            ki += 1u;
            cols = cols0;
            oy -= 1;
            if (ki == params.kh) {
                ki = 0u;
                fi += 1u;
                wbase = (g * params.fg + fi) * k_count;
                gplane += l_count;
                oy = oy0;
            }
        }
    }
    let co = g * params.cg + c0;
    store_grad_input_row8(n, co, y, x0, acc0, acc4);
    if (c0 + 1u < params.cg) { store_grad_input_row8(n, co + 1u, y, x0, acc1, acc5); }
    if (c0 + 2u < params.cg) { store_grad_input_row8(n, co + 2u, y, x0, acc2, acc6); }
    if (c0 + 3u < params.cg) { store_grad_input_row8(n, co + 3u, y, x0, acc3, acc7); }
}

// Writes filter f's partial sums for k0..k0+4 (those below K) of chunk s.
fn store_grad_weight(s: u32, f: u32, k0: u32, v: vec4<f32>) {
    let k_count = params.cg * params.kh * params.kw;
    let base = (s * params.f + f) * k_count;
    if (k0 < k_count) { out[base + k0] = v.x; }
    if (k0 + 1u < k_count) { out[base + k0 + 1u] = v.y; }
    if (k0 + 2u < k_count) { out[base + k0 + 2u] = v.z; }
    if (k0 + 3u < k_count) { out[base + k0 + 3u] = v.w; }
}

// One weight-gradient invocation's block: chunk s, group g, filters f0 .. f0 + `filters`
// (a block of 4 or 8), taps k0 .. k0 + 4 with their channel planes and window offsets.
struct WeightBlock {
    s: u32, g: u32, f0: u32, k0: u32,
    tplane: vec4<u32>, ty: vec4<i32>, tx: vec4<i32>,
}

// i = ((s·G + g)·FB + fb)·KB + kb over blocks of `filters` filters × 4 consecutive k.
fn weight_block(i: u32, filters: u32) -> WeightBlock {
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    let kb_count = (k_count + 3u) / 4u;
    let fb_count = (params.fg + filters - 1u) / filters;
    let kb = i % kb_count;
    let fb = (i / kb_count) % fb_count;
    let sg = i / (kb_count * fb_count);
    let k4 = min(vec4<u32>(kb * 4u) + LANES, vec4<u32>(k_count - 1u));
    let r4 = k4 % khw;
    let g = sg % params.groups;
    return WeightBlock(
        sg / params.groups, g, fb * filters, kb * 4u,
        (g * params.cg + k4 / khw) * params.h * params.w,
        vec4<i32>((r4 / params.kw) * params.dh) - i32(params.pt),
        vec4<i32>((r4 % params.kw) * params.dw) - i32(params.pl));
}

// The walk over chunk s's positions q = n·L + oy·OW + ox, stepped without division:
// x's image offset, gy's, and l = oy·OW + ox.
struct Positions {
    q: u32, q1: u32, l: u32, oy: u32, ox: u32, ximg: u32, gimg: u32,
}

fn positions(s: u32) -> Positions {
    let l_count = params.oh * params.ow;
    let q0 = s * params.chunk;
    let l = q0 % l_count;
    let img = q0 / l_count;
    return Positions(q0, min(q0 + params.chunk, params.n * l_count), l, l / params.ow,
                     l % params.ow, img * params.c * params.h * params.w, img * params.f * l_count);
}

// x at the block's 4 taps for the current position.
fn taps_at(b: WeightBlock, p: Positions) -> vec4<f32> {
    let by = i32(p.oy * params.sh);
    let bx = i32(p.ox * params.sw);
    return x_at4(vec4<u32>(p.ximg) + b.tplane, b.ty + by, b.tx + bx);
}

fn next_position(p: ptr<function, Positions>) {
    (*p).q += 1u;
    (*p).l += 1u;
    (*p).ox += 1u;
    if ((*p).ox == params.ow) {
        (*p).ox = 0u;
        (*p).oy += 1u;
        if ((*p).oy == params.oh) {
            (*p).oy = 0u;
            (*p).l = 0u;
            (*p).ximg += params.c * params.h * params.w;
            (*p).gimg += params.f * params.oh * params.ow;
        }
    }
}

@compute @workgroup_size(64)
fn conv_grad_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let b = weight_block(i, 4u);
    let l_count = params.oh * params.ow;
    // Filters past Fg are clamped (their sums are not stored).
    let fmax = params.fg - 1u;
    let g0 = (b.g * params.fg + min(b.f0, fmax)) * l_count;
    let g1 = (b.g * params.fg + min(b.f0 + 1u, fmax)) * l_count;
    let g2 = (b.g * params.fg + min(b.f0 + 2u, fmax)) * l_count;
    let g3 = (b.g * params.fg + min(b.f0 + 3u, fmax)) * l_count;
    var acc0 = vec4<f32>(0.0);   // filter f0 + 0 at the 4 taps
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var p = positions(b.s);
    while (p.q < p.q1) {
        let xv = taps_at(b, p);
        let gl = p.gimg + p.l;
        acc0 += a_g(gl + g0) * xv;
        acc1 += a_g(gl + g1) * xv;
        acc2 += a_g(gl + g2) * xv;
        acc3 += a_g(gl + g3) * xv;
        next_position(&p);
    }
    let fo = b.g * params.fg + b.f0;
    store_grad_weight(b.s, fo, b.k0, acc0);
    if (b.f0 + 1u < params.fg) { store_grad_weight(b.s, fo + 1u, b.k0, acc1); }
    if (b.f0 + 2u < params.fg) { store_grad_weight(b.s, fo + 2u, b.k0, acc2); }
    if (b.f0 + 3u < params.fg) { store_grad_weight(b.s, fo + 3u, b.k0, acc3); }
}

// conv_grad_weight for Fg a multiple of 8: one invocation per 8 filters × 4 consecutive k,
// so each x load (with its padding checks) serves 8 filters, not 4.
@compute @workgroup_size(64)
fn conv_grad_weight8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let b = weight_block(i, 8u);
    let l_count = params.oh * params.ow;
    let g0 = (b.g * params.fg + b.f0) * l_count;
    var acc0 = vec4<f32>(0.0);   // filter f0 + 0 at the 4 taps
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var p = positions(b.s);
    while (p.q < p.q1) {
        let xv = taps_at(b, p);
        let gl = p.gimg + p.l + g0;
        acc0 += a_g(gl) * xv;
        acc1 += a_g(gl + l_count) * xv;
        acc2 += a_g(gl + 2u * l_count) * xv;
        acc3 += a_g(gl + 3u * l_count) * xv;
        acc4 += a_g(gl + 4u * l_count) * xv;
        acc5 += a_g(gl + 5u * l_count) * xv;
        acc6 += a_g(gl + 6u * l_count) * xv;
        acc7 += a_g(gl + 7u * l_count) * xv;
        next_position(&p);
    }
    let fo = b.g * params.fg + b.f0;
    store_grad_weight(b.s, fo, b.k0, acc0);
    store_grad_weight(b.s, fo + 1u, b.k0, acc1);
    store_grad_weight(b.s, fo + 2u, b.k0, acc2);
    store_grad_weight(b.s, fo + 3u, b.k0, acc3);
    store_grad_weight(b.s, fo + 4u, b.k0, acc4);
    store_grad_weight(b.s, fo + 5u, b.k0, acc5);
    store_grad_weight(b.s, fo + 6u, b.k0, acc6);
    store_grad_weight(b.s, fo + 7u, b.k0, acc7);
}

// grad_weight's gy operand (binding b).
fn a_g(i: u32) -> f32 {
    return b_at(i);
}

// ---- source reads: conv_grad_input's and conv_grad_weight's loads of a and b (and x_at4's),
// from the storage buffers. A second module, conv_gemm.texture, has this block replaced by
// reads from rgba32float textures (src/ops/texture_reads.rs says why and when).
fn a_at(i: u32) -> f32 {
    return a[i];
}

fn b_at(i: u32) -> f32 {
    return b[i];
}
// ---- end of source reads
