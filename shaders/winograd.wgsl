// winograd.wgsl — 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3)
// and, in the entries named winograd4_* further down, F(4×4, 3×3) (Lavin & Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2015). The host picks one per layer
// (src/ops/winograd.rs).
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
// side by side, one per vec4 lane, so that V is stored and M loaded as whole vec4s (16 per
// invocation, not 64 scalars; on lavapipe each scalar store is a scatter across the lanes)
// and no array is indexed at run time.
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
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>;  // V (the inputs), y (winograd4_output_v4)
@group(0) @binding(3) var<storage, read> scale: array<f32>;         // output: (F), or any buffer
@group(0) @binding(4) var<storage, read> shift: array<f32>;         // output: (F), or any buffer
@group(0) @binding(5) var<storage, read> residual: array<f32>;      // output: like y, or any buffer
@group(0) @binding(5) var<storage, read> residual4: array<vec4<f32>>;  // the same (winograd4_output_v4)

const EPI_RELU: u32 = 8u;
const EPI_SCALE: u32 = 64u;
const EPI_SHIFT: u32 = 128u;
const EPI_RESIDUAL: u32 = 256u;

// The epilogue steps an output dispatch may use (set by the host from its flags): a pipeline
// constant, so that the others compile out. On lavapipe 22.3 an `if` on the uniform flags only
// masks its lanes, so every step ran, taken or not: the residual's load among them.
override EPI: u32 = 456u;  // every EPI_ bit

// Whether this dispatch applies epilogue step `bit`.
fn epi(bit: u32) -> bool {
    return (EPI & bit) != 0u && (params.flags & bit) != 0u;
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// v·Gᵀ for a row v of 3.
fn times_gt(v: vec3<f32>) -> vec4<f32> {
    return vec4<f32>(v.x, 0.5 * (v.x + v.y + v.z), 0.5 * (v.x - v.y + v.z), v.z);
}

// Tile t's image and its (ty, tx) among the TH x TW tiles of one image.
fn tile_at(t: u32) -> vec3<u32> {
    let per_image = params.th * params.tw;
    let n = div(t, per_image);
    let r = t - n * per_image;
    let ty = div(r, params.tw);
    return vec3<u32>(n, ty, r - ty * params.tw);
}

// Four tiles t .. t + 4 of channel c, one per lane, with m×m outputs each: their patches'
// plane offsets, top rows and left columns (padded coordinates), and which are real tiles of
// a real channel. The input transforms compute a quad's four tiles side by side this way,
// so V is stored as whole vec4s with no shuffling and every array index is a constant.
struct Quad { base: vec4<u32>, y0: vec4<i32>, x0: vec4<i32>, live: vec4<bool>, }

fn quad_of(c: u32, t: u32, m: u32) -> Quad {
    let ts = vec4<u32>(t) + vec4<u32>(0u, 1u, 2u, 3u);
    let n = div4(ts, params.th * params.tw);
    let r = ts - n * (params.th * params.tw);
    let ty = div4(r, params.tw);
    let tx = r - ty * params.tw;
    let live = (ts < vec4<u32>(params.tiles)) & vec4<bool>(c < params.c);
    return Quad((n * params.c + c) * (params.h * params.w),
                vec4<i32>(m * ty) - vec4<i32>(i32(params.pt)),
                vec4<i32>(m * tx) - vec4<i32>(i32(params.pl)), live);
}

// Element (r, k) of the four patches, zero outside the image and for dead tiles.
fn quad_at(q: Quad, r: i32, k: i32) -> vec4<f32> {
    let iy = q.y0 + vec4<i32>(r);
    let ix = q.x0 + vec4<i32>(k);
    let inside = q.live & (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(params.h)))
        & (ix >= vec4<i32>(0)) & (ix < vec4<i32>(i32(params.w)));
    // Reads outside load index 0 and their values are dropped.
    let at = select(vec4<u32>(0u), q.base + vec4<u32>(iy) * params.w + vec4<u32>(ix), inside);
    let v = vec4<f32>(src_at(at.x), src_at(at.y), src_at(at.z), src_at(at.w));
    return select(vec4<f32>(0.0), v, inside);
}

// The epilogue's scale and shift of filter f.
fn filter_epilogue(f: u32) -> vec2<f32> {
    var st = vec2<f32>(1.0, 0.0);
    if (epi(EPI_SCALE)) { st.x = scale[f]; }
    if (epi(EPI_SHIFT)) { st.y = shift[f]; }
    return st;
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

// Bᵀ·v for four values v (each a vec4: four tiles).
fn bt4(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]);
}

// Aᵀ·v for four values: two.
fn at4(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(v[0] + v[1] + v[2], v[1] - v[2] - v[3]);
}

// Row r of the four 4×4 patches times B: (d B)[r][0 .. 4].
fn quad_row4(q: Quad, r: i32) -> array<vec4<f32>, 4> {
    return bt4(array<vec4<f32>, 4>(quad_at(q, r, 0), quad_at(q, r, 1), quad_at(q, r, 2),
                                   quad_at(q, r, 3)));
}

// Column j of the quad's Bᵀ d B (rows 0 .. 4): element ξ = 4·row + j of plane ξ.
fn store_column4(at: u32, plane: u32, j: u32, v: array<vec4<f32>, 4>) {
    dst4[j * plane + at] = v[0];
    dst4[(4u + j) * plane + at] = v[1];
    dst4[(8u + j) * plane + at] = v[2];
    dst4[(12u + j) * plane + at] = v[3];
}

@compute @workgroup_size(256)
fn winograd_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let c = div(i, quads);
    let q = quad_of(c, 4u * (i - c * quads), 2u);
    let w0 = quad_row4(q, 0);
    let w1 = quad_row4(q, 1);
    let w2 = quad_row4(q, 2);
    let w3 = quad_row4(q, 3);
    // V[ξ] is (C4, T4): element ξ of the quad's four tiles is one vec4 of plane ξ, at i.
    let plane = params.c4 * params.t4 / 4u;
    store_column4(i, plane, 0u, bt4(array<vec4<f32>, 4>(w0[0], w1[0], w2[0], w3[0])));
    store_column4(i, plane, 1u, bt4(array<vec4<f32>, 4>(w0[1], w1[1], w2[1], w3[1])));
    store_column4(i, plane, 2u, bt4(array<vec4<f32>, 4>(w0[2], w1[2], w2[2], w3[2])));
    store_column4(i, plane, 3u, bt4(array<vec4<f32>, 4>(w0[3], w1[3], w2[3], w3[3])));
}

// Element (f, oy, ox) of image n with the epilogue, stored if inside the output.
fn store_output(n: u32, f: u32, oy: u32, ox: u32, v: f32, st: vec2<f32>) {
    if (oy >= params.oh || ox >= params.ow) { return; }
    let o = ((n * params.f + f) * params.oh + oy) * params.ow + ox;
    var r = v;
    if (epi(EPI_SCALE)) { r = r * st.x; }
    if (epi(EPI_SHIFT)) { r = r + st.y; }
    if (epi(EPI_RESIDUAL)) { r = r + residual[o]; }
    if (epi(EPI_RELU)) { r = max(r, 0.0); }
    dst[o] = r;
}

// Row r of the quad's 4×4 M tiles (element ξ = 4r + k of the four tiles per vec4) times A.
fn m_row4(at: u32, plane: u32, r: u32) -> array<vec4<f32>, 2> {
    let b = 4u * r * plane + at;
    return at4(array<vec4<f32>, 4>(src4_at(b), src4_at(b + plane), src4_at(b + 2u * plane),
                                   src4_at(b + 3u * plane)));
}

// Lane k's tile (tile t + k): its 2×2 pixels from output columns c0 and c1 (rows 0, 1).
fn store_tile2(f: u32, t: u32, k: u32, c0: array<vec4<f32>, 2>, c1: array<vec4<f32>, 2>,
               st: vec2<f32>) {
    if (t + k >= params.tiles) { return; }
    let tile = tile_at(t + k);
    let oy = 2u * tile.y;
    let ox = 2u * tile.z;
    store_output(tile.x, f, oy, ox, c0[0][k], st);
    store_output(tile.x, f, oy, ox + 1u, c1[0][k], st);
    store_output(tile.x, f, oy + 1u, ox, c0[1][k], st);
    store_output(tile.x, f, oy + 1u, ox + 1u, c1[1][k], st);
}

@compute @workgroup_size(256)
fn winograd_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let f = div(i, quads);
    let t = 4u * (i - f * quads);
    let st = filter_epilogue(f);
    // M[ξ] is (F, T4): element ξ of the quad's four tiles is one vec4 of plane ξ, at i.
    let plane = params.f * params.t4 / 4u;
    let a0 = m_row4(i, plane, 0u);
    let a1 = m_row4(i, plane, 1u);
    let a2 = m_row4(i, plane, 2u);
    let a3 = m_row4(i, plane, 3u);
    let c0 = at4(array<vec4<f32>, 4>(a0[0], a1[0], a2[0], a3[0]));  // output column 0
    let c1 = at4(array<vec4<f32>, 4>(a0[1], a1[1], a2[1], a3[1]));  // output column 1
    store_tile2(f, t, 0u, c0, c1, st);
    store_tile2(f, t, 1u, c0, c1, st);
    store_tile2(f, t, 2u, c0, c1, st);
    store_tile2(f, t, 3u, c0, c1, st);
}

// ---- F(4×4, 3×3): 4×4 output tiles from 6×6 input patches, 36 products of (F, C)·(C, T)
// over a quarter of F(2×2)'s tiles. Multiply-adds per output pixel and (filter, channel)
// pair: 36/16 = 2.25, against F(2×2)'s 16/4 = 4 and the direct 9. Points 0, ±1, ±2 and ∞
// (Lavin & Gray):
//   Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   G = [¼ 0 0; -⅙ -⅙ -⅙; -⅙ ⅙ -⅙; 1/24 1/12 ⅙; 1/24 -1/12 ⅙; 0 0 1]
//   Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
// Entries, as F(2×2)'s with 36 planes: winograd4_filter, winograd4_input (four tiles per
// invocation) and winograd4_output (four tiles per invocation; winograd4_output_v4 stores
// whole output rows as vec4s where OW % 4 = 0). Like F(2×2)'s, the input and output
// transforms compute the quad's four tiles side by side, one per vec4 lane (see `Quad`): a
// first version that filled 36-element arrays in loops ran 3x slower than F(2×2)'s input
// transform on lavapipe (10 against 3.3 ms at 56×56), most likely from arrays indexed at
// run time.

// Bᵀ·v for six values v (each a vec4: four tiles, or four columns of a row).
fn bt6(v: array<vec4<f32>, 6>) -> array<vec4<f32>, 6> {
    return array<vec4<f32>, 6>(
        4.0 * v[0] - 5.0 * v[2] + v[4],
        -4.0 * (v[1] + v[2]) + v[3] + v[4],
        4.0 * (v[1] - v[2]) - v[3] + v[4],
        2.0 * (v[3] - v[1]) - v[2] + v[4],
        2.0 * (v[1] - v[3]) - v[2] + v[4],
        4.0 * v[1] - 5.0 * v[3] + v[5]);
}

// Aᵀ·v for six values v (each a vec4): four.
fn at6(v: array<vec4<f32>, 6>) -> array<vec4<f32>, 4> {
    let s1 = v[1] + v[2];
    let s2 = v[3] + v[4];
    let d1 = v[1] - v[2];
    let d2 = v[3] - v[4];
    return array<vec4<f32>, 4>(v[0] + s1 + s2, d1 + 2.0 * d2, s1 + 4.0 * s2, d1 + 8.0 * d2 + v[5]);
}

// G·v for three values: six.
fn g6(v: vec3<f32>) -> array<f32, 6> {
    let e = v.x + v.z;
    return array<f32, 6>(0.25 * v.x, -(e + v.y) / 6.0, (v.y - e) / 6.0,
                         v.x / 24.0 + v.y / 12.0 + v.z / 6.0, v.x / 24.0 - v.y / 12.0 + v.z / 6.0, v.z);
}

@compute @workgroup_size(256)
fn winograd4_filter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let f = div(i, params.c4);
    let c = i - f * params.c4;
    var u: array<f32, 36>;  // G g Gᵀ, row-major; zero for the padding channels
    if (c < params.c) {
        let o = (f * params.c + c) * 9u;
        // G·g column by column, then each of its six rows by Gᵀ.
        let c0 = g6(vec3<f32>(src[o], src[o + 3u], src[o + 6u]));
        let c1 = g6(vec3<f32>(src[o + 1u], src[o + 4u], src[o + 7u]));
        let c2 = g6(vec3<f32>(src[o + 2u], src[o + 5u], src[o + 8u]));
        for (var r = 0u; r < 6u; r++) {
            let row = g6(vec3<f32>(c0[r], c1[r], c2[r]));
            for (var k = 0u; k < 6u; k++) { u[6u * r + k] = row[k]; }
        }
    }
    // Once per weight update (inference plans hold U), so scalar stores are fine here.
    let plane = params.f * params.c4;  // U[ξ] is (F, C4)
    for (var xi = 0u; xi < 36u; xi++) { dst[xi * plane + f * params.c4 + c] = u[xi]; }
}

// Row r of the four patches times B: (d B)[r][0 .. 6].
fn quad_row(q: Quad, r: i32) -> array<vec4<f32>, 6> {
    return bt6(array<vec4<f32>, 6>(quad_at(q, r, 0), quad_at(q, r, 1), quad_at(q, r, 2),
                                   quad_at(q, r, 3), quad_at(q, r, 4), quad_at(q, r, 5)));
}

// Column j of the quad's Bᵀ d B (rows 0 .. 6): element ξ = 6·row + j of plane ξ.
fn store_column(at: u32, plane: u32, j: u32, v: array<vec4<f32>, 6>) {
    dst4[j * plane + at] = v[0];
    dst4[(6u + j) * plane + at] = v[1];
    dst4[(12u + j) * plane + at] = v[2];
    dst4[(18u + j) * plane + at] = v[3];
    dst4[(24u + j) * plane + at] = v[4];
    dst4[(30u + j) * plane + at] = v[5];
}

@compute @workgroup_size(256)
fn winograd4_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let q = input4_quad(i);
    store_input4(i, array<array<vec4<f32>, 6>, 6>(quad_row(q, 0), quad_row(q, 1), quad_row(q, 2),
                                                  quad_row(q, 3), quad_row(q, 4), quad_row(q, 5)));
}

// Invocation i's quad of F(4×4) input tiles: channel i / (T4/4), tiles 4·(i mod T4/4) + 0 .. 4.
fn input4_quad(i: u32) -> Quad {
    let quads = params.t4 / 4u;
    let c = div(i, quads);
    return quad_of(c, 4u * (i - c * quads), 4u);
}

// Stores Bᵀ d B of the quad from its rows d B (w[r], rows 0 .. 6): V[ξ] is (C4, T4), element
// ξ of the quad's four tiles one vec4 of plane ξ, at i.
fn store_input4(i: u32, w: array<array<vec4<f32>, 6>, 6>) {
    let plane = params.c4 * params.t4 / 4u;
    store_column(i, plane, 0u, bt6(array<vec4<f32>, 6>(w[0][0], w[1][0], w[2][0], w[3][0], w[4][0], w[5][0])));
    store_column(i, plane, 1u, bt6(array<vec4<f32>, 6>(w[0][1], w[1][1], w[2][1], w[3][1], w[4][1], w[5][1])));
    store_column(i, plane, 2u, bt6(array<vec4<f32>, 6>(w[0][2], w[1][2], w[2][2], w[3][2], w[4][2], w[5][2])));
    store_column(i, plane, 3u, bt6(array<vec4<f32>, 6>(w[0][3], w[1][3], w[2][3], w[3][3], w[4][3], w[5][3])));
    store_column(i, plane, 4u, bt6(array<vec4<f32>, 6>(w[0][4], w[1][4], w[2][4], w[3][4], w[4][4], w[5][4])));
    store_column(i, plane, 5u, bt6(array<vec4<f32>, 6>(w[0][5], w[1][5], w[2][5], w[3][5], w[4][5], w[5][5])));
}

// winograd4_input where x's rows are a multiple of 4 long and the left padding is 1
// (ResNet's 3x3 layers at 56x56 and 28x28): a patch row, columns 4·tx - 1 .. 4·tx + 4, is the
// last value of one vec4 of x, a whole vec4 and the first of the next, so a row of the four
// patches is 12 vec4 loads (src4_at) instead of 24 scalar ones, with one row check per tile.
// A vec4 outside the row reads index 0 and counts as zeros (W % 4 = 0: a vec4 lies wholly
// inside or outside).
fn quad_row_w4(q: Quad, r: i32) -> array<vec4<f32>, 6> {
    let iy = q.y0 + vec4<i32>(r);
    let w = i32(params.w);
    let row = q.live & (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(params.h)));
    // The vec4 holding column x0 + 1 = 4·tx of each patch row (index 0 for rows outside).
    let j = select(vec4<u32>(0u), (q.base + vec4<u32>(iy) * params.w + vec4<u32>(q.x0 + 1)) / 4u, row);
    let left = row & (q.x0 >= vec4<i32>(0));
    let mid = row & (q.x0 + 1 < vec4<i32>(w));
    let right = row & (q.x0 + 5 < vec4<i32>(w));
    let z = vec4<f32>(0.0);
    let l0 = select(z, src4_at(select(0u, j.x - 1u, left.x)), left.x);
    let l1 = select(z, src4_at(select(0u, j.y - 1u, left.y)), left.y);
    let l2 = select(z, src4_at(select(0u, j.z - 1u, left.z)), left.z);
    let l3 = select(z, src4_at(select(0u, j.w - 1u, left.w)), left.w);
    let m0 = select(z, src4_at(select(0u, j.x, mid.x)), mid.x);
    let m1 = select(z, src4_at(select(0u, j.y, mid.y)), mid.y);
    let m2 = select(z, src4_at(select(0u, j.z, mid.z)), mid.z);
    let m3 = select(z, src4_at(select(0u, j.w, mid.w)), mid.w);
    let r0 = select(z, src4_at(select(0u, j.x + 1u, right.x)), right.x);
    let r1 = select(z, src4_at(select(0u, j.y + 1u, right.y)), right.y);
    let r2 = select(z, src4_at(select(0u, j.z + 1u, right.z)), right.z);
    let r3 = select(z, src4_at(select(0u, j.w + 1u, right.w)), right.w);
    return bt6(array<vec4<f32>, 6>(
        vec4<f32>(l0.w, l1.w, l2.w, l3.w), vec4<f32>(m0.x, m1.x, m2.x, m3.x),
        vec4<f32>(m0.y, m1.y, m2.y, m3.y), vec4<f32>(m0.z, m1.z, m2.z, m3.z),
        vec4<f32>(m0.w, m1.w, m2.w, m3.w), vec4<f32>(r0.x, r1.x, r2.x, r3.x)));
}

@compute @workgroup_size(256)
fn winograd4_input_w4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let q = input4_quad(i);
    store_input4(i, array<array<vec4<f32>, 6>, 6>(quad_row_w4(q, 0), quad_row_w4(q, 1),
                                                  quad_row_w4(q, 2), quad_row_w4(q, 3),
                                                  quad_row_w4(q, 4), quad_row_w4(q, 5)));
}

// Row r of the quad's M tiles (element ξ = 6r + k of the four tiles per vec4) times A.
fn m_row(at: u32, plane: u32, r: u32) -> array<vec4<f32>, 4> {
    let b = 6u * r * plane + at;
    return at6(array<vec4<f32>, 6>(src4_at(b), src4_at(b + plane), src4_at(b + 2u * plane),
                                   src4_at(b + 3u * plane), src4_at(b + 4u * plane),
                                   src4_at(b + 5u * plane)));
}

// The quad's Aᵀ M A by output column: [x][y] = pixel (y, x) of the four tiles.
fn output_columns(at: u32) -> array<array<vec4<f32>, 4>, 4> {
    let plane = params.f * params.t4 / 4u;  // M[ξ] is (F, T4)
    let a0 = m_row(at, plane, 0u);
    let a1 = m_row(at, plane, 1u);
    let a2 = m_row(at, plane, 2u);
    let a3 = m_row(at, plane, 3u);
    let a4 = m_row(at, plane, 4u);
    let a5 = m_row(at, plane, 5u);
    return array<array<vec4<f32>, 4>, 4>(
        at6(array<vec4<f32>, 6>(a0[0], a1[0], a2[0], a3[0], a4[0], a5[0])),
        at6(array<vec4<f32>, 6>(a0[1], a1[1], a2[1], a3[1], a4[1], a5[1])),
        at6(array<vec4<f32>, 6>(a0[2], a1[2], a2[2], a3[2], a4[2], a5[2])),
        at6(array<vec4<f32>, 6>(a0[3], a1[3], a2[3], a3[3], a4[3], a5[3])));
}

// Row y of lane k's tile: its four pixels.
fn tile_row(c: array<array<vec4<f32>, 4>, 4>, y: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(c[0][y][k], c[1][y][k], c[2][y][k], c[3][y][k]);
}

// Lane k's tile (tile t + k) stored pixel by pixel, with the epilogue.
fn store_tile(f: u32, t: u32, k: u32, c: array<array<vec4<f32>, 4>, 4>, st: vec2<f32>) {
    if (t + k >= params.tiles) { return; }
    let tile = tile_at(t + k);
    for (var y = 0u; y < 4u; y++) {
        let row = tile_row(c, y, k);
        let oy = 4u * tile.y + y;
        let ox = 4u * tile.z;
        store_output(tile.x, f, oy, ox, row.x, st);
        store_output(tile.x, f, oy, ox + 1u, row.y, st);
        store_output(tile.x, f, oy, ox + 2u, row.z, st);
        store_output(tile.x, f, oy, ox + 3u, row.w, st);
    }
}

@compute @workgroup_size(256)
fn winograd4_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let f = div(i, quads);
    let t = 4u * (i - f * quads);
    let st = filter_epilogue(f);
    let c = output_columns(i);
    store_tile(f, t, 0u, c, st);
    store_tile(f, t, 1u, c, st);
    store_tile(f, t, 2u, c, st);
    store_tile(f, t, 3u, c, st);
}

// Lane k's tile stored as four whole vec4 rows (OW % 4 = 0), with the epilogue.
fn store_tile_v4(f: u32, t: u32, k: u32, c: array<array<vec4<f32>, 4>, 4>, st: vec2<f32>) {
    if (t + k >= params.tiles) { return; }
    let tile = tile_at(t + k);
    for (var y = 0u; y < 4u; y++) {
        let oy = 4u * tile.y + y;
        if (oy >= params.oh) { return; }
        let o = (((tile.x * params.f + f) * params.oh + oy) * params.ow + 4u * tile.z) / 4u;
        var v = tile_row(c, y, k);
        if (epi(EPI_SCALE)) { v = v * st.x; }
        if (epi(EPI_SHIFT)) { v = v + st.y; }
        if (epi(EPI_RESIDUAL)) { v = v + residual4[o]; }
        if (epi(EPI_RELU)) { v = max(v, vec4<f32>(0.0)); }
        dst4[o] = v;
    }
}

// winograd4_output for OW % 4 = 0 (the host checks): every tile's rows are whole aligned
// vec4s of y, stored (and their residual read) as such. On lavapipe a scalar store is a
// scatter across the lanes.
@compute @workgroup_size(256)
fn winograd4_output_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let quads = params.t4 / 4u;
    let f = div(i, quads);
    let t = 4u * (i - f * quads);
    let st = filter_epilogue(f);
    let c = output_columns(i);
    store_tile_v4(f, t, 0u, c, st);
    store_tile_v4(f, t, 1u, c, st);
    store_tile_v4(f, t, 2u, c, st);
    store_tile_v4(f, t, 3u, c, st);
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
