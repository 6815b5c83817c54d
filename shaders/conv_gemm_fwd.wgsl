// conv_gemm_fwd.wgsl — the implicit-GEMM convolution forward (see conv_gemm.wgsl for the
// index map and the gradients). Not a module on its own: exact_div.wgsl (div, div4) is
// appended to it (src/ops/conv_gemm.rs). It computes
//   y[n, f, l] (+)= Σ_{k in k0..k1} w[f, k] · x[n, g·Cg + c(k), tap(l, k)].
//
// Entry points conv_forward and conv_forward4 (OH·OW % 4 = 0: vec4 stores), workgroup size
// 64, no barriers: one invocation per 16 filters × 4 consecutive output positions. The filters come packed by conv_weight_pack as
// wp (G, K, Fgp) with Fgp = Fg rounded up to 16 (zeros past Fg), so one step of k loads the
// 16 filter values as 4 vec4s (the same for every lane of a workgroup) and the 4 patch values
// as one gather: 5 loads per 64 multiply-adds (on lavapipe loads are what costs). The
// accumulators are 16 named vec4s (an array indexed in a loop would live in memory).
// k is split by the host within gpu::LOOP_BUDGET steps (`accumulate` adds to y).

struct Params {
    n: u32, c: u32, h: u32, w: u32,       // input shape
    f: u32, kh: u32, kw: u32, groups: u32,
    sh: u32, sw: u32, pt: u32, pl: u32,   // strides, top and left padding
    dh: u32, dw: u32, oh: u32, ow: u32,   // dilations, output positions
    cg: u32, fg: u32, k0: u32, k1: u32,   // channels and filters per group; reduction range
    chunk: u32, accumulate: u32, total: u32, blocks: u32, // grad_weight: positions per chunk;
                                           // whether to add to out; invocations; (see entries)
    epi: u32,                              // the epilogue's parts: matmul.wgsl's EPI_* bits
    pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // x (N, C, H, W)
@group(0) @binding(2) var<storage, read> wp: array<vec4<f32>>;   // packed filters (G, K, Fgp)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // y (N, F, OH, OW)
// The epilogue's per-filter operands (F values each; any buffer when that part is off).
@group(0) @binding(4) var<storage, read> epi_scale: array<f32>;
@group(0) @binding(5) var<storage, read> epi_shift: array<f32>;

// The epilogue, applied to a filter's finished sums (the last part of a split reduction):
// relu?(v·scale[f] + shift[f]), in the order and with the f32 ops of the element-wise
// kernels it replaces (a convolution's bias, a folded batch norm, a ReLU). The bits are
// matmul.wgsl's EPI_RELU, EPI_SCALE and EPI_SHIFT (src/ops/matmul.rs: Epilogue::flags).
const CONV_EPI_RELU: u32 = 8u;
const CONV_EPI_SCALE: u32 = 64u;
const CONV_EPI_SHIFT: u32 = 128u;

fn conv_epilogue(f: u32, v: vec4<f32>) -> vec4<f32> {
    let e = params.epi;
    var r = v;
    if ((e & CONV_EPI_SCALE) != 0u) { r = r * epi_scale[f]; }
    if ((e & CONV_EPI_SHIFT) != 0u) { r = r + epi_shift[f]; }
    if ((e & CONV_EPI_RELU) != 0u) { r = max(r, vec4<f32>(0.0)); }
    return r;
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

// The one place conv_forward writes y, per output element (n, filter f, position l).
fn store_output(n: u32, f: u32, l: u32, v: f32) {
    let o = (n * params.f + f) * params.oh * params.ow + l;
    var y = v;
    if (params.accumulate != 0u) { y = y + out[o]; }
    if (params.epi != 0u) { y = conv_epilogue(f, vec4<f32>(y)).x; }
    out[o] = y;
}

// Filter f's sums at positions l0..l0+4 (those below L).
fn store_row(n: u32, f: u32, l0: u32, v: vec4<f32>) {
    let l_count = params.oh * params.ow;
    if (l0 < l_count) { store_output(n, f, l0, v.x); }
    if (l0 + 1u < l_count) { store_output(n, f, l0 + 1u, v.y); }
    if (l0 + 2u < l_count) { store_output(n, f, l0 + 2u, v.z); }
    if (l0 + 3u < l_count) { store_output(n, f, l0 + 3u, v.w); }
}

// x at 4 positions (plane + iy·W + ix), 0 in the padding (loads there clamp to index 0).
fn x_at4(plane: vec4<u32>, iy: vec4<i32>, ix: vec4<i32>) -> vec4<f32> {
    let inside = (iy >= vec4<i32>(0)) & (ix >= vec4<i32>(0))
        & (iy < vec4<i32>(i32(params.h))) & (ix < vec4<i32>(i32(params.w)));
    let idx = select(vec4<u32>(0u), plane + vec4<u32>(iy) * params.w + vec4<u32>(ix), inside);
    return select(vec4<f32>(0.0), vec4<f32>(a_at(idx.x), a_at(idx.y), a_at(idx.z), a_at(idx.w)), inside);
}

// One invocation's block: image n, its first filter fo (f0 within the group), its first
// position l0, and the 16 filters' sums at the 4 positions.
struct Block {
    n: u32, fo: u32, f0: u32, l0: u32,
    acc0: vec4<f32>, acc1: vec4<f32>, acc2: vec4<f32>, acc3: vec4<f32>,
    acc4: vec4<f32>, acc5: vec4<f32>, acc6: vec4<f32>, acc7: vec4<f32>,
    acc8: vec4<f32>, acc9: vec4<f32>, acc10: vec4<f32>, acc11: vec4<f32>,
    acc12: vec4<f32>, acc13: vec4<f32>, acc14: vec4<f32>, acc15: vec4<f32>,
}

fn conv_block(i: u32) -> Block {
    // i = ((n·G + g)·FB + fb)·LB + lb: positions fastest, so a workgroup shares its filters.
    let fgp = params.blocks;
    let l_count = params.oh * params.ow;
    let lb_count = (l_count + 3u) / 4u;
    let fb_count = fgp / 16u;
    let q = div(i, lb_count);
    let lb = i - q * lb_count;
    let ng = div(q, fb_count);
    let fb = q - ng * fb_count;
    let n = div(ng, params.groups);
    let g = ng - n * params.groups;
    let khw = params.kh * params.kw;
    let k_count = params.cg * khw;
    // Window origins of the 4 positions (divisions once per invocation).
    let l4 = min(vec4<u32>(lb * 4u) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(l_count - 1u));
    let oy4 = div4(l4, params.ow);
    let iy0 = vec4<i32>(oy4 * params.sh) - i32(params.pt);
    let ix0 = vec4<i32>((l4 - oy4 * params.ow) * params.sw) - i32(params.pl);
    let f0 = fb * 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
    var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);
    // Tap of k0, then stepped: kj, then ki, then the channel (uniform: exact division).
    var c = params.k0 / khw;
    var ki = (params.k0 % khw) / params.kw;
    var kj = params.k0 % params.kw;
    let hw = params.h * params.w;
    var plane = (n * params.c + g * params.cg + c) * hw;
    var dy = i32(ki * params.dh);
    var dx = i32(kj * params.dw);
    let wstep = fgp / 4u;
    var wi = ((g * k_count + params.k0) * fgp + f0) / 4u;
    for (var k = params.k0; k < params.k1; k++) {
        let xv = x_at4(vec4<u32>(plane), iy0 + dy, ix0 + dx);
        let w0 = wp_at(wi);
        let w1 = wp_at(wi + 1u);
        let w2 = wp_at(wi + 2u);
        let w3 = wp_at(wi + 3u);
        acc0 += w0.x * xv;
        acc1 += w0.y * xv;
        acc2 += w0.z * xv;
        acc3 += w0.w * xv;
        acc4 += w1.x * xv;
        acc5 += w1.y * xv;
        acc6 += w1.z * xv;
        acc7 += w1.w * xv;
        acc8 += w2.x * xv;
        acc9 += w2.y * xv;
        acc10 += w2.z * xv;
        acc11 += w2.w * xv;
        acc12 += w3.x * xv;
        acc13 += w3.y * xv;
        acc14 += w3.z * xv;
        acc15 += w3.w * xv;
        wi += wstep;
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
    return Block(n, g * params.fg + f0, f0, lb * 4u, acc0, acc1, acc2, acc3, acc4, acc5, acc6,
                 acc7, acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15);
}

@compute @workgroup_size(64)
fn conv_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let b = conv_block(i);
    let n = b.n;
    let fo = b.fo;
    let f0 = b.f0;
    let l0 = b.l0;
    store_row(n, fo, l0, b.acc0);
    if (f0 + 1u < params.fg) { store_row(n, fo + 1u, l0, b.acc1); }
    if (f0 + 2u < params.fg) { store_row(n, fo + 2u, l0, b.acc2); }
    if (f0 + 3u < params.fg) { store_row(n, fo + 3u, l0, b.acc3); }
    if (f0 + 4u < params.fg) { store_row(n, fo + 4u, l0, b.acc4); }
    if (f0 + 5u < params.fg) { store_row(n, fo + 5u, l0, b.acc5); }
    if (f0 + 6u < params.fg) { store_row(n, fo + 6u, l0, b.acc6); }
    if (f0 + 7u < params.fg) { store_row(n, fo + 7u, l0, b.acc7); }
    if (f0 + 8u < params.fg) { store_row(n, fo + 8u, l0, b.acc8); }
    if (f0 + 9u < params.fg) { store_row(n, fo + 9u, l0, b.acc9); }
    if (f0 + 10u < params.fg) { store_row(n, fo + 10u, l0, b.acc10); }
    if (f0 + 11u < params.fg) { store_row(n, fo + 11u, l0, b.acc11); }
    if (f0 + 12u < params.fg) { store_row(n, fo + 12u, l0, b.acc12); }
    if (f0 + 13u < params.fg) { store_row(n, fo + 13u, l0, b.acc13); }
    if (f0 + 14u < params.fg) { store_row(n, fo + 14u, l0, b.acc14); }
    if (f0 + 15u < params.fg) { store_row(n, fo + 15u, l0, b.acc15); }
}

@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>; // conv_forward4: y

// Filter f's 4 sums as one vec4 store (OH·OW % 4 = 0, so l0 starts a vec4 of y), added to
// what y holds for a later part of a split reduction.
fn store_row4(n: u32, f: u32, l0: u32, v: vec4<f32>) {
    let o = ((n * params.f + f) * params.oh * params.ow + l0) / 4u;
    var y = v;
    if (params.accumulate != 0u) { y = y + out4[o]; }
    if (params.epi != 0u) { y = conv_epilogue(f, y); }
    out4[o] = y;
}

// conv_forward for OH·OW % 4 = 0: one vec4 store per filter instead of four scalar ones
// behind bounds tests (on lavapipe a store is a per-lane step; the digits CNN's first
// convolution spent most of its time storing).
@compute @workgroup_size(64)
fn conv_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let b = conv_block(i);
    let n = b.n;
    let fo = b.fo;
    let f0 = b.f0;
    let l0 = b.l0;
    store_row4(n, fo, l0, b.acc0);
    if (f0 + 1u < params.fg) { store_row4(n, fo + 1u, l0, b.acc1); }
    if (f0 + 2u < params.fg) { store_row4(n, fo + 2u, l0, b.acc2); }
    if (f0 + 3u < params.fg) { store_row4(n, fo + 3u, l0, b.acc3); }
    if (f0 + 4u < params.fg) { store_row4(n, fo + 4u, l0, b.acc4); }
    if (f0 + 5u < params.fg) { store_row4(n, fo + 5u, l0, b.acc5); }
    if (f0 + 6u < params.fg) { store_row4(n, fo + 6u, l0, b.acc6); }
    if (f0 + 7u < params.fg) { store_row4(n, fo + 7u, l0, b.acc7); }
    if (f0 + 8u < params.fg) { store_row4(n, fo + 8u, l0, b.acc8); }
    if (f0 + 9u < params.fg) { store_row4(n, fo + 9u, l0, b.acc9); }
    if (f0 + 10u < params.fg) { store_row4(n, fo + 10u, l0, b.acc10); }
    if (f0 + 11u < params.fg) { store_row4(n, fo + 11u, l0, b.acc11); }
    if (f0 + 12u < params.fg) { store_row4(n, fo + 12u, l0, b.acc12); }
    if (f0 + 13u < params.fg) { store_row4(n, fo + 13u, l0, b.acc13); }
    if (f0 + 14u < params.fg) { store_row4(n, fo + 14u, l0, b.acc14); }
    if (f0 + 15u < params.fg) { store_row4(n, fo + 15u, l0, b.acc15); }
}

// ---- source reads: the forward's loads of x (x_at4) and of the packed filters, from the
// storage buffers `a` and `wp`. A second module, conv_gemm_fwd.texture, has this block replaced
// by reads from rgba32float textures (src/ops/texture_reads.rs says why and when).
fn a_at(i: u32) -> f32 {
    return a[i];
}

fn wp_at(j: u32) -> vec4<f32> {
    return wp[j];
}
// ---- end of source reads
