// winograd.wgsl — 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
// Not a module on its own: exact_div.wgsl (div) is appended to it (src/ops/winograd.rs).
//
// The output is cut into 2×2 tiles; tile t of image n reads the 4×4 input patch d at padded
// rows 2·ty .. 2·ty + 4 and columns 2·tx .. 2·tx + 4 (zero outside the image). Per tile and
// per pair (filter f, channel c) the 2×2 output is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, so the
// convolution is 16 products, one per position ξ of the 4×4 transformed tile:
//   M[ξ] (F, T) = U[ξ] (F, C) · V[ξ] (C, T),  U[ξ] = (G g Gᵀ)[ξ],  V[ξ] = (Bᵀ d B)[ξ],
// 16·F·C·T multiply-adds against 36·F·C·T direct (2.25x fewer). The host runs them as one
// batched matmul (the subgroup kernel on lavapipe); these entries are its three transforms:
//   winograd_filter  w (F, C, 3, 3) → U (16, F, C4)      one invocation per (f, c < C4)
//   winograd_input   x (N, C, H, W) → V (16, C4, T4)     one invocation per (c < C4, quad of T4)
//   winograd_output  M (16, F, T4)  → y (N, F, OH, OW)   one invocation per (f, quad of T4)
// The input and output transforms take four consecutive tiles t = 4q .. 4q + 4 per invocation,
// so that V is stored and M loaded as whole vec4s (16 per invocation, not 64 scalars): on
// lavapipe each scalar store is a scatter across the lanes.
// C4 and T4 are C and T = N·TH·TW rounded up to 4, the padding zero, so the product's
// operands have rows of whole vec4s (no padded copies) and its reduction adds zeros.
// The output transform applies the epilogue matmul.wgsl's flags name, in its order:
// y·scale[f] (64), + shift[f] (128), + residual (256, shaped like y), ReLU (8).
//
// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
// Aᵀ = [1 1 1 0; 0 1 -1 -1]. Every invocation runs a fixed number of steps (no loops over
// sizes), so lavapipe's per-invocation loop cap never applies.

struct Params {
    n: u32, c: u32, h: u32, w: u32,      // x
    f: u32, oh: u32, ow: u32, pt: u32,   // filters, output size, top padding
    pl: u32, th: u32, tw: u32, c4: u32,  // left padding, tiles per column and row, C4
    t4: u32, total: u32, flags: u32, tiles: u32,  // T4, invocations, epilogue, T
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;           // w, x or M
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;     // U, V or y
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>;  // V (winograd_input)
@group(0) @binding(3) var<storage, read> scale: array<f32>;         // output: (F), or any buffer
@group(0) @binding(4) var<storage, read> shift: array<f32>;         // output: (F), or any buffer
@group(0) @binding(5) var<storage, read> residual: array<f32>;      // output: like y, or any buffer

const EPI_RELU: u32 = 8u;
const EPI_SCALE: u32 = 64u;
const EPI_SHIFT: u32 = 128u;
const EPI_RESIDUAL: u32 = 256u;

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// v·B for a row v of 4 (B's columns): the input transform's second half.
fn times_b(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(v.x - v.z, v.y + v.z, v.z - v.y, v.y - v.w);
}

// v·Gᵀ for a row v of 3.
fn times_gt(v: vec3<f32>) -> vec4<f32> {
    return vec4<f32>(v.x, 0.5 * (v.x + v.y + v.z), 0.5 * (v.x - v.y + v.z), v.z);
}

// v·A for a row v of 4.
fn times_a(v: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(v.x + v.y + v.z, v.y - v.z - v.w);
}

// Tile t's image and its (ty, tx) among the TH x TW tiles of one image.
fn tile_at(t: u32) -> vec3<u32> {
    let per_image = params.th * params.tw;
    let n = div(t, per_image);
    let r = t - n * per_image;
    let ty = div(r, params.tw);
    return vec3<u32>(n, ty, r - ty * params.tw);
}

// Stores the 4x4 tile `v` (rows) as element `at` of the 16 planes of `plane` values each.
fn store_planes(at: u32, plane: u32, v: array<vec4<f32>, 4>) {
    for (var r = 0u; r < 4u; r++) {
        let base = 4u * r * plane + at;
        dst[base] = v[r].x;
        dst[base + plane] = v[r].y;
        dst[base + 2u * plane] = v[r].z;
        dst[base + 3u * plane] = v[r].w;
    }
}

@compute @workgroup_size(256)
fn winograd_filter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let f = div(i, params.c4);
    let c = i - f * params.c4;
    var u: array<vec4<f32>, 4>;  // rows of G g Gᵀ; zero for the padding channels
    if (c < params.c) {
        let o = (f * params.c + c) * 9u;
        let g0 = vec3<f32>(src[o], src[o + 1u], src[o + 2u]);
        let g1 = vec3<f32>(src[o + 3u], src[o + 4u], src[o + 5u]);
        let g2 = vec3<f32>(src[o + 6u], src[o + 7u], src[o + 8u]);
        u[0] = times_gt(g0);
        u[1] = times_gt(0.5 * (g0 + g1 + g2));
        u[2] = times_gt(0.5 * (g0 - g1 + g2));
        u[3] = times_gt(g2);
    }
    store_planes(f * params.c4 + c, params.f * params.c4, u);  // U[ξ] is (F, C4)
}

// Row `row` of padded columns x0 .. x0 + 4 of channel plane `base`, zero outside the image.
fn input_row(base: u32, row: i32, x0: i32) -> vec4<f32> {
    if (row < 0 || row >= i32(params.h)) { return vec4<f32>(0.0); }
    let cols = vec4<i32>(x0) + vec4<i32>(0, 1, 2, 3);
    let inside = (cols >= vec4<i32>(0)) & (cols < vec4<i32>(i32(params.w)));
    // Reads outside are clamped to the row's start and their values dropped.
    let at = vec4<u32>(select(vec4<i32>(0), cols, inside)) + vec4<u32>(base + u32(row) * params.w);
    let v = vec4<f32>(src_at(at.x), src_at(at.y), src_at(at.z), src_at(at.w));
    return select(vec4<f32>(0.0), v, inside);
}

// Rows of Bᵀ d B for tile t of channel c: zero for padding channels and tiles.
fn input_tile(c: u32, t: u32) -> array<vec4<f32>, 4> {
    var v: array<vec4<f32>, 4>;
    if (c < params.c && t < params.tiles) {
        let at = tile_at(t);
        let base = (at.x * params.c + c) * params.h * params.w;
        let y0 = i32(2u * at.y) - i32(params.pt);
        let x0 = i32(2u * at.z) - i32(params.pl);
        let d0 = input_row(base, y0, x0);
        let d1 = input_row(base, y0 + 1, x0);
        let d2 = input_row(base, y0 + 2, x0);
        let d3 = input_row(base, y0 + 3, x0);
        v[0] = times_b(d0 - d2);
        v[1] = times_b(d1 + d2);
        v[2] = times_b(d2 - d1);
        v[3] = times_b(d1 - d3);
    }
    return v;
}

@compute @workgroup_size(256)
fn winograd_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let c = div(i, quads);
    let t = 4u * (i - c * quads);
    let v0 = input_tile(c, t);
    let v1 = input_tile(c, t + 1u);
    let v2 = input_tile(c, t + 2u);
    let v3 = input_tile(c, t + 3u);
    // V[ξ] is (C4, T4): the quad's element ξ = 4r + k of each tile is one vec4 of plane ξ.
    let plane = params.c4 * params.t4 / 4u;
    let at = i;  // (c·T4 + t) / 4
    for (var r = 0u; r < 4u; r++) {
        let base = 4u * r * plane + at;
        dst4[base] = vec4<f32>(v0[r].x, v1[r].x, v2[r].x, v3[r].x);
        dst4[base + plane] = vec4<f32>(v0[r].y, v1[r].y, v2[r].y, v3[r].y);
        dst4[base + 2u * plane] = vec4<f32>(v0[r].z, v1[r].z, v2[r].z, v3[r].z);
        dst4[base + 3u * plane] = vec4<f32>(v0[r].w, v1[r].w, v2[r].w, v3[r].w);
    }
}

// Element (f, oy, ox) of image n with the epilogue, stored if inside the output.
fn store_output(n: u32, f: u32, oy: u32, ox: u32, v: f32, st: vec2<f32>) {
    if (oy >= params.oh || ox >= params.ow) { return; }
    let o = ((n * params.f + f) * params.oh + oy) * params.ow + ox;
    var r = v;
    if ((params.flags & EPI_SCALE) != 0u) { r = r * st.x; }
    if ((params.flags & EPI_SHIFT) != 0u) { r = r + st.y; }
    if ((params.flags & EPI_RESIDUAL) != 0u) { r = r + residual[o]; }
    if ((params.flags & EPI_RELU) != 0u) { r = max(r, 0.0); }
    dst[o] = r;
}

// The 2×2 output of tile t (of image n at tile row ty, column tx) from its 4×4 M tile `m`
// (rows), with the epilogue.
fn output_tile(f: u32, t: u32, m: array<vec4<f32>, 4>, st: vec2<f32>) {
    let y0 = times_a(m[0] + m[1] + m[2]);
    let y1 = times_a(m[1] - m[2] - m[3]);
    let tile = tile_at(t);
    let n = tile.x;
    let oy = 2u * tile.y;
    let ox = 2u * tile.z;
    store_output(n, f, oy, ox, y0.x, st);
    store_output(n, f, oy, ox + 1u, y0.y, st);
    store_output(n, f, oy + 1u, ox, y1.x, st);
    store_output(n, f, oy + 1u, ox + 1u, y1.y, st);
}

@compute @workgroup_size(256)
fn winograd_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let f = div(i, quads);
    let t = 4u * (i - f * quads);
    // M[ξ] is (F, T4): element ξ = 4r + k of the quad's four tiles is one vec4 of plane ξ.
    let plane = params.f * params.t4 / 4u;
    let at = i;  // (f·T4 + t) / 4
    var m: array<array<vec4<f32>, 4>, 4>;  // [tile][row of its 4×4 M tile]
    for (var r = 0u; r < 4u; r++) {
        let base = 4u * r * plane + at;
        let e0 = src4_at(base);
        let e1 = src4_at(base + plane);
        let e2 = src4_at(base + 2u * plane);
        let e3 = src4_at(base + 3u * plane);
        m[0][r] = vec4<f32>(e0.x, e1.x, e2.x, e3.x);
        m[1][r] = vec4<f32>(e0.y, e1.y, e2.y, e3.y);
        m[2][r] = vec4<f32>(e0.z, e1.z, e2.z, e3.z);
        m[3][r] = vec4<f32>(e0.w, e1.w, e2.w, e3.w);
    }
    var st = vec2<f32>(1.0, 0.0);
    if ((params.flags & EPI_SCALE) != 0u) { st.x = scale[f]; }
    if ((params.flags & EPI_SHIFT) != 0u) { st.y = shift[f]; }
    for (var k = 0u; k < 4u; k++) {
        if (t + k < params.tiles) { output_tile(f, t + k, m[k], st); }
    }
}

// ---- source reads: winograd_input's loads of x (elements) and winograd_output's of M (vec4s),
// from the storage buffer `src`. A second module, winograd.texture, has this block replaced by
// reads from an rgba32float texture (src/ops/texture_reads.rs says why and when).
fn src_at(i: u32) -> f32 {
    return src[i];
}
fn src4_at(j: u32) -> vec4<f32> {
    return vec4<f32>(src[4u * j], src[4u * j + 1u], src[4u * j + 2u], src[4u * j + 3u]);
}
// ---- end of source reads
