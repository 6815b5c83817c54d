// matmul.wgsl — C = op(A) · op(B) in f32, batched over broadcast leading dims.
//
// op(A) is (M, K) and op(B) is (K, N); with the override TA the stored A is (K, M) and op(A)
// is its transpose (likewise TB: B stored (N, K)), so backward passes need no transpose copies.
// C is (batch, M, N) row-major. Every workgroup computes one 64x64 tile of one output matrix
// (the subgroup kernels: 32x64, see there).
//
// Entry points (the grid is linear over batch x tiles_m x tiles_n, split over x/y/z):
//   matmul_forward_tiled     16x16 invocations, 4x4 outputs each, workgroup-memory k-tiles of 16.
//                            For real GPUs.
//   matmul_forward_blocked   8x8 invocations, 8x8 outputs each, no workgroup memory, vec4 loads.
//                            For software adapters: barriers are expensive on a CPU. It reads
//                            the transposes from params.flags rather than from overrides: one
//                            pipeline serves every layout (on lavapipe, which compiles a
//                            pipeline with LLVM at its first dispatch, 0.4-0.5 s for this one).
//                            The host sends products of at most 2^21 multiply-adds to
//                            matmul_forward_small instead.
//   matmul_forward_subgroup  8 invocations (one subgroup of exactly 8 lanes: the caller checks the
//                            adapter's subgroup size), 16x16 outputs each, a 32x64 tile; the lanes
//                            share their loads through subgroupBroadcast. 2.5-3x
//                            matmul_forward_blocked on lavapipe, where every load is a loop over
//                            the SIMD lanes. It sits after the marker line below and is compiled
//                            as its own module (it needs subgroups). A second module,
//                            matmul.texture, replaces the panel reads at the file's end with
//                            matmul_texture_reads.wgsl: the same kernels with A and B bound as
//                            rgba32float textures (the default on software adapters); its
//                            matmul_forward_gemv and matmul_forward_small read textures too.
//   matmul_forward_subgroup_edge  the same lanes, a 128x16 tile: the last column tile of a
//                            product whose N mod 64 is 1 to 16, in a dispatch of its own.
//   matmul_forward_small     16x16 invocations, 4x4 outputs each, vec4 loads of any alignment:
//                            small products (any layout, any row length, no padded copies).
//   matmul_forward_gemv      16 invocations, 4 columns of C each, all of its (at most 4) rows:
//                            products with M <= 4, where a 64-row tile would idle.
//   matmul_pad_rows          256 invocations: copies an operand into rows padded to a multiple of
//                            4, so that the vec4 loads of the two kernels above are aligned.
//   matmul_sum_splits        256 invocations, one element of C each: the split-K second pass.
//
// Split-K. Lavapipe silently ends an invocation after 65,535 loop iterations, and every product
// kernel walks K inside one invocation, so a long K runs as `params.splits` chunks of
// `params.k_chunk` (the host keeps each chunk's loop under its budget, src/ops/matmul.rs): the
// grid gains a chunk dimension, chunk s reads op(A)'s columns and op(B)'s rows from
// (split0 + s)·k_chunk and stores its partial product as matrix s of a partials buffer (bound as
// C, with no epilogue), and matmul_sum_splits adds the partials pairwise into C and applies the
// epilogue. One chunk (splits = 1, k_chunk = K) is the ordinary product.
//
// Reads past a matrix (edge tiles, the K tail) stay inside the bound buffer or are clamped by
// wgpu's bounds checks; such values only reach outputs that are not written, or are masked to 0.

override TA: bool = false;  // A stored (K, M): op(A) = Aᵀ
override TB: bool = false;  // B stored (N, K): op(B) = Bᵀ
// What a dispatch of the subgroup kernels can need, set by the host per dispatch: EPI, the
// epilogue bits it may use (the code of the others is compiled out), and K_TAIL, whether a K
// chunk may end in a partial step of 4. On lavapipe 22.3 an `if` only masks its lanes and a
// loop runs its body at least once: every branch's code runs, taken or not, so an epilogue
// step or a K tail that a product does not use cost as much as one it does (a 1x1
// convolution with K = 64: 20% of its time). Every other kernel keeps the defaults.
override EPI: u32 = 476u;  // EPI_ANY
override K_TAIL: bool = true;

struct Params {
    m: u32,                 // rows of op(A) and C
    n: u32,                 // columns of op(B) and C
    k: u32,                 // the contracted dim
    batch: u32,             // output matrices
    tiles_n: u32,           // 64-wide tiles along N
    tiles_m: u32,           // 64-high tiles along M
    batch_rank: u32,        // number of batch dims
    flags: u32,             // 1 = TA, 2 = TB (blocked, small; the others use overrides),
                            // 4, 8, 16, 64, 128, 256: the epilogue (EPI_*)
    lda: u32,               // elements between rows of the stored A (K, or M with TA)
    ldb: u32,               // elements between rows of the stored B (N, or K with TB)
    splits: u32,            // K chunks in this dispatch (1: the whole product)
    k_chunk: u32,           // length of every chunk but the last (K when splits = 1)
    split0: u32,            // index of this dispatch's first chunk
    epi_rows: u32,          // rows of one output matrix for the epilogue's per-row operands
    c_group: u32,           // 0, or C stored in column groups of this many (see c_index)
    small_rows: u32,        // matmul_forward_small: 32 for its narrow tiles, else 64
    batch_dims: array<vec4<u32>, 2>,  // output batch dims, outermost first
    a_strides: array<vec4<u32>, 2>,   // elements between A's matrices per batch dim (0 = broadcast)
    b_strides: array<vec4<u32>, 2>,   // same for B
}

@group(0) @binding(0) var<uniform> params: Params;
// tiled, pad: A as stored, (.., M, K) or (.., K, M) with rows of lda
@group(0) @binding(1) var<storage, read> a: array<f32>;
// tiled: B as stored, (.., K, N) or (.., N, K) with rows of ldb
@group(0) @binding(2) var<storage, read> b: array<f32>;
// blocked, subgroup: the same as vec4s; lda and ldb are multiples of 4 (the caller pads)
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
// every kernel: C, (batch, M, N); split into chunks, the partials (splits, batch, M, N)
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// every kernel but pad: the fused epilogue's operands, read only when params.flags asks (the
// caller binds A in their place otherwise)
@group(0) @binding(4) var<storage, read> bias: array<f32>;   // (N), added to every row of C
@group(0) @binding(5) var<storage, read> aux: array<f32>;    // like C: the residual, or the mask
@group(0) @binding(6) var<storage, read> scale: array<f32>;  // (epi_rows): C·scale[row]
@group(0) @binding(7) var<storage, read> shift: array<f32>;  // (epi_rows): + shift[row]
// matmul_forward_subgroup_v4 (C's rows a multiple of 4 long): C and the residual as vec4s, so
// its stores and residual loads move whole vec4s (an entry may use only one view of a binding)
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> aux4: array<vec4<f32>>;

// The fused epilogue, as the unfused element-wise kernels compute it, in this order:
// C·scale[row] (64), + shift[row] (128) — a convolution's folded batch norm and bias, row being
// the output channel —, + bias[col] (4), + aux (256, a residual), ReLU (8), · [aux > 0] (16,
// ReLU's gradient through the layer's output). They are uniform branches in one pipeline, not
// specialisations: on lavapipe each pipeline of these kernels costs 0.1-0.7 s of LLVM time at
// its first dispatch. Any product kernel adopts it by calling `epilogue` as it stores.
const EPI_BIAS: u32 = 4u;
const EPI_RELU: u32 = 8u;
const EPI_MASK: u32 = 16u;
const EPI_SCALE: u32 = 64u;
const EPI_SHIFT: u32 = 128u;
const EPI_RESIDUAL: u32 = 256u;
const EPI_ANY: u32 = 476u;  // every EPI_ bit

// Flat index of element (m, n) of the output matrix at c_off: row-major, or, with
// params.c_group = g > 0, C's columns in groups of g stored as (N/g, M, g): a batch-folded
// convolution's product (F, N·L) written straight as (N, F, L), its permute done by the
// stores. Only store_row, store_row_v4 and matmul_forward_small take it (the host checks: one
// output matrix, no split K, g a multiple of 4 so a vec4 of columns stays contiguous, no
// residual or mask).
fn c_index(c_off: u32, m: u32, n: u32) -> u32 {
    let g = params.c_group;
    if (g == 0u) { return c_off + m * params.n + n; }
    let q = n / g;
    return c_off + (q * params.m + m) * g + (n - q * g);
}

// The per-row factors of row m of an output matrix: (scale, shift), read once per row.
fn epi_row(m: u32) -> vec2<f32> {
    let f = params.flags & EPI;
    var st = vec2<f32>(1.0, 0.0);
    if ((f & (EPI_SCALE | EPI_SHIFT)) != 0u) {
        let row = m % params.epi_rows;  // a batch folded into the kernel's rows repeats them
        if ((f & EPI_SCALE) != 0u) { st.x = scale[row]; }
        if ((f & EPI_SHIFT) != 0u) { st.y = shift[row]; }
    }
    return st;
}

// Element (m, n) of an output matrix of C, at flat index o of C, with st = epi_row(m).
fn epilogue_at(v: f32, o: u32, st: vec2<f32>, n: u32) -> f32 {
    let f = params.flags & EPI;
    var r = v;
    if ((f & EPI_SCALE) != 0u) { r = r * st.x; }
    if ((f & EPI_SHIFT) != 0u) { r = r + st.y; }
    if ((f & EPI_BIAS) != 0u) { r = r + bias[n]; }
    if ((f & EPI_RESIDUAL) != 0u) { r = r + aux[o]; }
    if ((f & EPI_RELU) != 0u) { r = max(r, 0.0); }
    if ((f & EPI_MASK) != 0u) { r = r * select(0.0, 1.0, aux[o] > 0.0); }
    return r;
}

fn epilogue(v: f32, o: u32, m: u32, n: u32) -> f32 {
    return epilogue_at(v, o, epi_row(m), n);
}

// The epilogue of the 4 consecutive elements (m, n .. n + 4) at flat index o, in registers as
// the register-blocked and subgroup kernels store them (store_row), with st = epi_row(m): the
// same f32 operations per component as `epilogue_at`. Applied before the store rather than by
// re-reading the stored block: on lavapipe every load of C is a gather across the lanes, and the
// re-read cost as much as a separate element-wise pass (1×1 conv 64 -> 256 at 56×56).
fn epilogue4(v: vec4<f32>, o: u32, st: vec2<f32>, n: u32) -> vec4<f32> {
    let f = params.flags & EPI;
    var r = v;
    if ((f & EPI_SCALE) != 0u) { r = r * st.x; }
    if ((f & EPI_SHIFT) != 0u) { r = r + st.y; }
    if ((f & EPI_BIAS) != 0u) {
        r = r + vec4<f32>(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]);
    }
    var x = vec4<f32>(0.0);
    if ((f & (EPI_RESIDUAL | EPI_MASK)) != 0u) {
        x = vec4<f32>(aux[o], aux[o + 1u], aux[o + 2u], aux[o + 3u]);
    }
    if ((f & EPI_RESIDUAL) != 0u) { r = r + x; }
    if ((f & EPI_RELU) != 0u) { r = max(r, vec4<f32>(0.0)); }
    if ((f & EPI_MASK) != 0u) { r = r * select(vec4<f32>(0.0), vec4<f32>(1.0), x > vec4<f32>(0.0)); }
    return r;
}

// One workgroup's job: which K chunk, output matrix and tile, and where its operands start.
struct Job {
    valid: bool,
    tile_m: u32,
    tile_n: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    k: u32,      // length of this job's K chunk: its loops over K run to k, not params.k
}

fn dim_at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

fn job(wg: vec3<u32>, nwg: vec3<u32>) -> Job {
    var j: Job;
    let all = wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y;
    let per_matrix = params.tiles_m * params.tiles_n;
    let per_chunk = per_matrix * params.batch;
    j.valid = all < per_chunk * params.splits;
    let s = all / per_chunk;
    let wid = all % per_chunk;
    j.tile_n = wid % params.tiles_n;
    j.tile_m = (wid / params.tiles_n) % params.tiles_m;
    let bi = wid / per_matrix;
    var rem = bi;
    for (var d = i32(params.batch_rank) - 1; d >= 0; d = d - 1) {
        let size = dim_at(params.batch_dims, u32(d));
        let coord = rem % size;
        rem = rem / size;
        j.a_off += coord * dim_at(params.a_strides, u32(d));
        j.b_off += coord * dim_at(params.b_strides, u32(d));
    }
    // The chunk starts k_start along K: columns of op(A) (elements along a row of the stored A,
    // or whole rows when it is stored transposed), rows of op(B) (likewise).
    let k_start = (params.split0 + s) * params.k_chunk;
    j.k = min(params.k_chunk, params.k - min(k_start, params.k));
    j.a_off += select(k_start, k_start * params.lda, (params.flags & 1u) != 0u);
    j.b_off += select(k_start * params.ldb, k_start, (params.flags & 2u) != 0u);
    j.c_off = (s * params.batch + bi) * params.m * params.n;
    return j;
}

// ---------------------------------------------------------------------------------------------
// matmul_forward_tiled

// [k][m] of op(A)'s 64x16 k-tile, [k][n] of op(B)'s 16x64; rows of 65 so that stores along k
// fall in different banks.
var<workgroup> tile_a: array<array<f32, 65>, 16>;
var<workgroup> tile_b: array<array<f32, 65>, 16>;

@compute @workgroup_size(16, 16)
fn matmul_forward_tiled(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(local_invocation_index) li: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }  // uniform: the whole workgroup leaves together
    let M = params.m;
    let N = params.n;
    let K = t.k;
    let m_base = t.tile_m * 64u;
    let n_base = t.tile_n * 64u;
    // Invocation (x, y) owns rows y + 16i and columns x + 16j: conflict-free reads of tile_b,
    // coalesced writes of C.
    var acc: array<vec4<f32>, 4>;  // acc[i][j] = C(m_base + y + 16i, n_base + x + 16j)
    for (var k0 = 0u; k0 < K; k0 += 16u) {
        // 1024 elements per k-tile, 4 per invocation; consecutive invocations read consecutive
        // addresses along whichever dim is contiguous in memory. Outside the matrix: 0.
        for (var i = 0u; i < 4u; i++) {
            let e = li + 256u * i;
            var mm = e / 16u;
            var kk = e % 16u;
            if (TA) { mm = e % 64u; kk = e / 64u; }
            let gm = m_base + mm;
            let gk = k0 + kk;
            var va = 0.0;
            if (gm < M && gk < K) {
                if (TA) {
                    va = a[t.a_off + gk * params.lda + gm];
                } else {
                    va = a[t.a_off + gm * params.lda + gk];
                }
            }
            tile_a[kk][mm] = va;
            var nn = e % 64u;
            var kb = e / 64u;
            if (TB) { nn = e / 16u; kb = e % 16u; }
            let gn = n_base + nn;
            let gkb = k0 + kb;
            var vb = 0.0;
            if (gn < N && gkb < K) {
                if (TB) {
                    vb = b[t.b_off + gn * params.ldb + gkb];
                } else {
                    vb = b[t.b_off + gkb * params.ldb + gn];
                }
            }
            tile_b[kb][nn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let av = vec4<f32>(tile_a[kk][lid.y], tile_a[kk][lid.y + 16u], tile_a[kk][lid.y + 32u],
                               tile_a[kk][lid.y + 48u]);
            let bv = vec4<f32>(tile_b[kk][lid.x], tile_b[kk][lid.x + 16u], tile_b[kk][lid.x + 32u],
                               tile_b[kk][lid.x + 48u]);
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m_base + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n_base + lid.x + 16u * j;
            if (m < M && n < N) { c[t.c_off + m * N + n] = acc[i][j]; }
        }
    }
    if ((params.flags & EPI_ANY) != 0u) {
        // Trip counts unknown to the compiler: one copy of the epilogue, not 16.
        for (var i = 0u; i < min(4u, M); i++) {
            let m = m_base + lid.y + 16u * i;
            for (var j = 0u; j < min(4u, N); j++) {
                let n = n_base + lid.x + 16u * j;
                let o = t.c_off + m * N + n;
                if (m < M && n < N) { c[o] = epilogue(c[o], o, m, n); }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Register blocking: an invocation owns an 8x8 block of C and walks K four at a time.
// A panel holds op(A) rows as vec4s along k: pa[r][j] = op(A)(m0 + r, k0 + j).
// B panel holds op(B) rows as vec4s along n: pb[2j + h][c] = op(B)(k0 + j, n0 + 4h + c).

// 4 consecutive elements of A (B) from element i, a multiple of 4: the caller pads rows whose
// length is not (matmul_pad_rows).
fn load_a(i: u32) -> vec4<f32> {
    return a4[i / 4u];
}

fn load_b(i: u32) -> vec4<f32> {
    return b4[i / 4u];
}

// This invocation's own A panel for rows m0..m0+8, k0..k0+4.
fn own_panel_a(off: u32, m0: u32, k0: u32, K: u32) -> array<vec4<f32>, 8> {
    // One set of 8 loads for both layouts, their addresses picked by the uniform flag: half
    // the load code of a branch per layout (LLVM time on lavapipe, where loads are gathers).
    // Stored (M, K): q[r] = op(A)(m0 + r, k0 .. k0 + 4), the panel itself.
    // Stored (K, M): q[2j + h] = op(A)(m0 + 4h .. m0 + 4h + 4, k0 + j), transposed after.
    let ta = (params.flags & 1u) != 0u;
    var q: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let row = select(min(m0 + i, params.m - 1u), min(k0 + i / 2u, K - 1u), ta);
        let col = select(k0, m0 + 4u * (i % 2u), ta);
        q[i] = load_a(off + row * params.lda + col);
    }
    if (ta) { return short_from_long(q); }
    return q;
}

// This invocation's own B panel for k0..k0+4, columns n0..n0+8 (loads as own_panel_a).
// Stored (K, N): q[2j + h] = op(B)(k0 + j, n0 + 4h .. n0 + 4h + 4), the panel itself.
// Stored (N, K): q[c] = op(B)(k0 .. k0 + 4, n0 + c), transposed after.
fn own_panel_b(off: u32, n0: u32, k0: u32, K: u32) -> array<vec4<f32>, 8> {
    let tb = (params.flags & 2u) != 0u;
    var q: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let row = select(min(k0 + i / 2u, K - 1u), min(n0 + i, params.n - 1u), tb);
        let col = select(n0 + 4u * (i % 2u), k0, tb);
        q[i] = load_b(off + row * params.ldb + col);
    }
    if (tb) { return long_from_short(q); }
    return q;
}

// An 8x4 panel is held either as 8 vec4s along its short side (p[r][j], r the long index) or
// as 2x4 vec4s along its long side (q[2j + h][c] = element (4h + c, j)). These convert; on
// SIMD-over-invocations hardware that only renames registers.
fn short_from_long(q: array<vec4<f32>, 8>) -> array<vec4<f32>, 8> {
    var p: array<vec4<f32>, 8>;
    for (var r = 0u; r < 4u; r++) {
        p[r] = vec4<f32>(q[0][r], q[2][r], q[4][r], q[6][r]);
        p[r + 4u] = vec4<f32>(q[1][r], q[3][r], q[5][r], q[7][r]);
    }
    return p;
}

fn long_from_short(p: array<vec4<f32>, 8>) -> array<vec4<f32>, 8> {
    var q: array<vec4<f32>, 8>;
    for (var j = 0u; j < 4u; j++) {
        q[2u * j] = vec4<f32>(p[0][j], p[1][j], p[2][j], p[3][j]);
        q[2u * j + 1u] = vec4<f32>(p[4][j], p[5][j], p[6][j], p[7][j]);
    }
    return q;
}

// Zeroes k >= valid in both panels (the K tail).
fn mask_panels(pa: ptr<function, array<vec4<f32>, 8>>, pb: ptr<function, array<vec4<f32>, 8>>,
               valid: u32) {
    let keep = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(valid);
    for (var r = 0u; r < 8u; r++) {
        (*pa)[r] = select(vec4<f32>(0.0), (*pa)[r], keep);
    }
    for (var j = 0u; j < 4u; j++) {
        if (!keep[j]) {
            (*pb)[2u * j] = vec4<f32>(0.0);
            (*pb)[2u * j + 1u] = vec4<f32>(0.0);
        }
    }
}

// acc[2r + h] += sum_j pa[r][j] * pb[2j + h]
fn fma_panels(acc: ptr<function, array<vec4<f32>, 16>>, pa: array<vec4<f32>, 8>,
              pb: array<vec4<f32>, 8>) {
    for (var r = 0u; r < 8u; r++) {
        let x = pa[r];
        (*acc)[2u * r] += x.x * pb[0] + x.y * pb[2] + x.z * pb[4] + x.w * pb[6];
        (*acc)[2u * r + 1u] += x.x * pb[1] + x.y * pb[3] + x.z * pb[5] + x.w * pb[7];
    }
}

// Row m of C, columns n0..n0+8 (only those inside C). Written out so that acc is never indexed
// by a loop variable there: on lavapipe that alone demoted acc to memory and cost 25%.
fn store_row(c_off: u32, m: u32, n0: u32, v0: vec4<f32>, v1: vec4<f32>, st: vec2<f32>) {
    let N = params.n;
    if (m >= params.m || n0 >= N) { return; }
    let o = c_index(c_off, m, n0);
    let epi = (params.flags & EPI & EPI_ANY) != 0u;
    if (n0 + 8u <= N) {
        let o1 = c_index(c_off, m, n0 + 4u);
        var w0 = v0;
        var w1 = v1;
        if (epi) {
            w0 = epilogue4(v0, o, st, n0);
            w1 = epilogue4(v1, o1, st, n0 + 4u);
        }
        c[o] = w0.x; c[o + 1u] = w0.y; c[o + 2u] = w0.z; c[o + 3u] = w0.w;
        c[o1] = w1.x; c[o1 + 1u] = w1.y; c[o1 + 2u] = w1.z; c[o1 + 3u] = w1.w;
        return;
    }
    // The right edge: a loop whose trip count the compiler cannot know, over vector lanes
    // (selects, not a local array): one small copy per row. A local array here cost 0.4 s of
    // LLVM time on lavapipe, straight-line guarded stores 0.25 s.
    for (var i = 0u; i < min(8u, N - n0); i++) {
        let oi = c_index(c_off, m, n0 + i);
        c[oi] = epilogue_at(select(v1[i & 3u], v0[i & 3u], i < 4u), oi, st, n0 + i);
    }
}

fn store_block(c_off: u32, m0: u32, n0: u32, acc: array<vec4<f32>, 16>) {
    store_row(c_off, m0, n0, acc[0], acc[1], epi_row(m0));
    store_row(c_off, m0 + 1u, n0, acc[2], acc[3], epi_row(m0 + 1u));
    store_row(c_off, m0 + 2u, n0, acc[4], acc[5], epi_row(m0 + 2u));
    store_row(c_off, m0 + 3u, n0, acc[6], acc[7], epi_row(m0 + 3u));
    store_row(c_off, m0 + 4u, n0, acc[8], acc[9], epi_row(m0 + 4u));
    store_row(c_off, m0 + 5u, n0, acc[10], acc[11], epi_row(m0 + 5u));
    store_row(c_off, m0 + 6u, n0, acc[12], acc[13], epi_row(m0 + 6u));
    store_row(c_off, m0 + 7u, n0, acc[14], acc[15], epi_row(m0 + 7u));
}

// C block from this invocation's own panels.
fn own_block(t: Job, m0: u32, n0: u32) -> array<vec4<f32>, 16> {
    var acc: array<vec4<f32>, 16>;
    let K = t.k;
    // The K tail is masked inside the loop rather than peeled after it: one copy of the body
    // instead of two is ~0.4 s less LLVM time on lavapipe, and the same speed (measured).
    for (var k0 = 0u; k0 < K; k0 += 4u) {
        var pa = own_panel_a(t.a_off, m0, k0, K);
        var pb = own_panel_b(t.b_off, n0, k0, K);
        mask_panels(&pa, &pb, K - k0);
        fma_panels(&acc, pa, pb);
    }
    return acc;
}

@compute @workgroup_size(8, 8)
fn matmul_forward_blocked(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    let m0 = t.tile_m * 64u + lid.y * 8u;
    let n0 = t.tile_n * 64u + lid.x * 8u;
    store_block(t.c_off, m0, n0, own_block(t, m0, n0));  // with the epilogue
}

// ---------------------------------------------------------------------------------------------
// matmul_forward_small: 16x16 invocations, 4x4 outputs each, vec4 panels of any alignment (a
// misaligned vec4 is two aligned loads and a shift), transposes from params.flags: one small
// pipeline for every layout and row length, with no padded copies. On lavapipe it compiles in
// ~0.26 s at its first dispatch where matmul_forward_blocked takes ~0.45 s, and runs products
// of up to 2^21 multiply-adds within ~0.2 ms of it, so small products take it: a cold MLP
// training step went from ~1.0 s to ~0.63 s. It reads a load past the end of a row or of the
// buffer only into lanes that are masked (the K tail) or never stored.
fn shift4(lo: vec4<f32>, hi: vec4<f32>, r: u32) -> vec4<f32> {
    let v1 = vec4<f32>(lo.yzw, hi.x);
    let v2 = vec4<f32>(lo.zw, hi.xy);
    let v3 = vec4<f32>(lo.w, hi.xyz);
    return select(select(select(lo, v1, r == 1u), v2, r == 2u), v3, r == 3u);
}

// ---- any-alignment reads: matmul_forward_small's and gemv's operand loads, from storage.
// The texture module (src/ops/matmul.rs) cuts this block out and matmul_texture_reads.wgsl
// defines the same two functions over textures, so gemv reads textures there.
fn load_a_any(i: u32) -> vec4<f32> {
    let lo = a4[i / 4u];
    if (ALIGNED || i % 4u == 0u) { return lo; }
    return shift4(lo, a4[i / 4u + 1u], i % 4u);
}

fn load_b_any(i: u32) -> vec4<f32> {
    let lo = b4[i / 4u];
    if (ALIGNED || i % 4u == 0u) { return lo; }
    return shift4(lo, b4[i / 4u + 1u], i % 4u);
}
// ---- end of any-alignment reads

// C has one row and A is stored (M, K) (a batch-1 linear layer on the gemv kernel): the block's
// other three rows, clamped copies of row 0, are neither loaded nor accumulated. A pipeline
// constant, not the uniform M: lavapipe runs both sides of a branch on a uniform. ResNet-50's
// head (1x2048 . 2048x1000) computed all four.
override ONE_ROW: bool = false;

// Every index load_a_any and load_b_any get is a multiple of 4 (the host checks: rows, batch
// strides and K chunks of whole vec4s). A pipeline constant, so that the second load and the
// shift of an unaligned read compile out: on lavapipe a branch runs both sides, and in
// ResNet-50's head (1x2048 . 2048x1000, every read aligned) half of gemv's texel fetches
// were that unused second load.
override ALIGNED: bool = false;

// The 4x4 block of C at (m0, n0) (rows and columns past C are skipped), with the epilogue:
// the body of matmul_forward_small and matmul_forward_gemv.
fn small_tile(t: Job, m0: u32, n0: u32) {
    let M = params.m;
    let N = params.n;
    let K = t.k;
    if (m0 >= M || n0 >= N) { return; }
    let ta = (params.flags & 1u) != 0u;
    let tb = (params.flags & 2u) != 0u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // This block's rows of op(A) and columns of op(B), past the matrix clamped to its last.
    let lane4 = vec4<u32>(0u, 1u, 2u, 3u);
    let ra = min(vec4<u32>(m0) + lane4, vec4<u32>(M - 1u));
    let rn = min(vec4<u32>(n0) + lane4, vec4<u32>(N - 1u));
    for (var k0 = 0u; k0 < K; k0 += 4u) {
        let rk = min(vec4<u32>(k0) + lane4, vec4<u32>(K - 1u));
        // A: stored (M, K): qa_i = op(A)(m0 + i, k0 .. +4); stored (K, M): op(A)(m0 .. +4, k0 + i).
        let arow = select(ra, rk, vec4<bool>(ta));
        let acol = select(k0, m0, ta);
        let qa0 = load_a_any(t.a_off + arow.x * params.lda + acol);
        var qa1 = qa0; var qa2 = qa0; var qa3 = qa0;
        if (!ONE_ROW) {
            qa1 = load_a_any(t.a_off + arow.y * params.lda + acol);
            qa2 = load_a_any(t.a_off + arow.z * params.lda + acol);
            qa3 = load_a_any(t.a_off + arow.w * params.lda + acol);
        }
        // B: stored (K, N): qb_j = op(B)(k0 + j, n0 .. +4); stored (N, K): op(B)(k0 .. +4, n0 + j).
        let brow = select(rk, rn, vec4<bool>(tb));
        let bcol = select(n0, k0, tb);
        let qb0 = load_b_any(t.b_off + brow.x * params.ldb + bcol);
        let qb1 = load_b_any(t.b_off + brow.y * params.ldb + bcol);
        let qb2 = load_b_any(t.b_off + brow.z * params.ldb + bcol);
        let qb3 = load_b_any(t.b_off + brow.w * params.ldb + bcol);
        // Panels pa_r = op(A)(m0 + r, k0 .. +4) and pb_j = op(B)(k0 + j, n0 .. +4).
        var pa0 = qa0; var pa1 = qa1; var pa2 = qa2; var pa3 = qa3;
        if (ta) {
            pa0 = vec4<f32>(qa0.x, qa1.x, qa2.x, qa3.x);
            pa1 = vec4<f32>(qa0.y, qa1.y, qa2.y, qa3.y);
            pa2 = vec4<f32>(qa0.z, qa1.z, qa2.z, qa3.z);
            pa3 = vec4<f32>(qa0.w, qa1.w, qa2.w, qa3.w);
        }
        var pb0 = qb0; var pb1 = qb1; var pb2 = qb2; var pb3 = qb3;
        if (tb) {
            pb0 = vec4<f32>(qb0.x, qb1.x, qb2.x, qb3.x);
            pb1 = vec4<f32>(qb0.y, qb1.y, qb2.y, qb3.y);
            pb2 = vec4<f32>(qb0.z, qb1.z, qb2.z, qb3.z);
            pb3 = vec4<f32>(qb0.w, qb1.w, qb2.w, qb3.w);
        }
        // The K tail: k >= K is zero in both panels (what lies there may be any value).
        let keep = lane4 < vec4<u32>(K - k0);
        let z = vec4<f32>(0.0);
        pa0 = select(z, pa0, keep); pa1 = select(z, pa1, keep);
        pa2 = select(z, pa2, keep); pa3 = select(z, pa3, keep);
        pb1 = select(z, pb1, keep.y); pb2 = select(z, pb2, keep.z); pb3 = select(z, pb3, keep.w);
        acc0 += pa0.x * pb0 + pa0.y * pb1 + pa0.z * pb2 + pa0.w * pb3;
        if (!ONE_ROW) {
            acc1 += pa1.x * pb0 + pa1.y * pb1 + pa1.z * pb2 + pa1.w * pb3;
            acc2 += pa2.x * pb0 + pa2.y * pb1 + pa2.z * pb2 + pa2.w * pb3;
            acc3 += pa3.x * pb0 + pa3.y * pb1 + pa3.z * pb2 + pa3.w * pb3;
        }
    }
    for (var r = 0u; r < min(4u, M - m0); r++) {
        let v = select(select(select(acc0, acc1, r == 1u), acc2, r == 2u), acc3, r == 3u);
        let o = c_index(t.c_off, m0 + r, n0);  // n0 % 4 = 0: 4 columns in one group
        let st = epi_row(m0 + r);
        for (var j = 0u; j < min(4u, N - n0); j++) {
            c[o + j] = epilogue_at(v[j], o + j, st, n0 + j);
        }
    }
}

@compute @workgroup_size(16, 16)
fn matmul_forward_small(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    // Neighbouring invocations (the lanes of one SIMD group on a CPU adapter) run along N,
    // unless C is at most 16 columns wide: then along M, so that a group's lanes all hold
    // rows of C, where along N 5 of its 8 lanes idled past column 12 (a classifier's
    // weight gradient, 512x10) and still cost a lane step at every load and store.
    // The host may make such a tile 32 rows high (params.small_rows; see
    // SMALL_NARROW_TILE_M): only the first 32 invocations hold a block then.
    var sub = lid.xy;
    if (params.n <= 16u) { sub = lid.yx; }
    if (params.small_rows == 32u) {
        let li = lid.y * 16u + lid.x;
        sub = vec2<u32>(li / 8u, li % 8u);  // (column block, row block)
    }
    small_tile(t, t.tile_m * params.small_rows + sub.y * 4u, t.tile_n * 64u + sub.x * 4u);
}

// ---------------------------------------------------------------------------------------------
// matmul_forward_gemv: products with at most 4 rows (M <= 4: a batch-1 linear layer, a
// classifier head). The 64x64-tile kernels leave 60 of every 64 rows idle there: ResNet-50's
// 1×2048 · 2048×1000 head took 12-17 ms on lavapipe. This is matmul_forward_small's 4x4 block
// (small_tile) with only the first row block: 16 invocations per workgroup, 4 columns of C
// each (one 64-column tile, so `job` and the host's tiles hold), vec4 loads of any alignment
// (whole-vec4 bindings).
@compute @workgroup_size(16)
fn matmul_forward_gemv(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    small_tile(t, 0u, t.tile_n * 64u + lid * 4u);  // M <= 4: the first row block is all of C
}

// ---------------------------------------------------------------------------------------------
// matmul_pad_rows: copies an operand whose rows are not a multiple of 4 long into rows of `ld`
// (a multiple of 4), zero-filled, so the register-blocked kernels only make aligned vec4 loads.
// Workgroup 256, one invocation per (row, segment of up to PAD_SEGMENT vec4s of the copy),
// storing vec4s: lavapipe stores one lane at a time, and scalarises the integer division by
// a run-time row length, so one element per invocation (a division and a scalar store each)
// copied ResNet-50's stem patches (12544 x 147 -> 148) in 7.4-9.3 ms.

struct PadParams {
    n: u32,         // invocations, rows * segments
    cols: u32,      // row length of the source
    ld: u32,        // row length of the copy
    segments: u32,  // segments per row of the copy
}

const PAD_SEGMENT: u32 = 64u;

@group(0) @binding(0) var<uniform> pad_params: PadParams;
@group(0) @binding(2) var<storage, read_write> padded: array<vec4<f32>>;  // (rows, ld); source is `a`

@compute @workgroup_size(256)
fn matmul_pad_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
    if (i >= pad_params.n) { return; }
    let r = i / pad_params.segments;
    let v0 = (i - r * pad_params.segments) * PAD_SEGMENT;
    let ld4 = pad_params.ld / 4u;
    let v1 = min(v0 + PAD_SEGMENT, ld4);
    let cols = pad_params.cols;
    let src = r * cols;
    for (var v = v0; v < v1; v = v + 1u) {
        let c = vec4<u32>(v * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
        let inside = c < vec4<u32>(cols);
        // Reads past the row are clamped to its start and their values dropped.
        let at = select(vec4<u32>(src), vec4<u32>(src) + c, inside);
        let x = vec4<f32>(a[at.x], a[at.y], a[at.z], a[at.w]);
        padded[r * ld4 + v] = select(vec4<f32>(0.0), x, inside);
    }
}

// ---------------------------------------------------------------------------------------------
// matmul_sum_splits: C = epilogue(sum of the partials [+ the earlier chunks' total]).
// Workgroup 256, one element of C (batch·M·N) per invocation. The partials are summed pairwise
// (a binary-counter cascade: partial s merges with the pending sums of equal size as they
// complete), so a long K adds rounding errors over log2(splits) levels, not splits.
// A product with more chunks than one partials buffer holds runs as groups of chunks: each group
// but the first also adds `prior`, the total of the groups before it (SPLIT_PRIOR).

const SPLIT_PRIOR: u32 = 32u;

// binding 1 (as `a`): the partials, (splits, batch, M, N)
// binding 2: the earlier groups' total, like C (read only with SPLIT_PRIOR; else any buffer)
@group(0) @binding(2) var<storage, read> prior: array<f32>;

@compute @workgroup_size(256)
fn matmul_sum_splits(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
    let total = params.batch * params.m * params.n;
    if (i >= total) { return; }
    // pending[d] holds a sum of 2^(levels) partials; at most 16 levels (the host sends at most
    // 2^16 - 1 partials, far fewer in practice).
    var pending: array<f32, 16>;
    var depth = 0u;
    for (var s = 0u; s < params.splits; s++) {
        var x = a[s * total + i];
        // s + 1 has as many trailing zero bits as there are pending sums of x's size to merge.
        for (var run = s + 1u; (run & 1u) == 0u; run = run >> 1u) {
            depth -= 1u;
            x = pending[depth] + x;
        }
        pending[depth] = x;
        depth += 1u;
    }
    var v = 0.0;
    for (var d = depth; d > 0u; d--) {
        v = pending[d - 1u] + v;
    }
    if ((params.flags & SPLIT_PRIOR) != 0u) { v = v + prior[i]; }
    c[i] = epilogue(v, i, (i / params.n) % params.m, i % params.n);
}

// ---- subgroup kernels: compiled as a separate module, only on devices with subgroups ----
//
// matmul_forward_subgroup: a lane owns a 16x16 block of C, acc[4r + h] = C(m0 + r, n0 + 4h .. +4);
// the 8 lanes of a subgroup (2 down, 4 across) own a 32x64 tile, and a workgroup is that one
// subgroup (params.tiles_m counts 32-row tiles): two subgroups per 64x64 tile ran no faster on
// large products and idled half of every tile on products 32 rows high. Per step of 4 along k
// a lane loads 12 vec4s of its subgroup's panels and receives the 32 it needs by one
// subgroupShuffle each, from the lane that loaded it: the loads are grouped so that a lane's
// vec4 sits in the same slot of its source lane for every lane, so no select is needed.
// Broadcasting every lane's loads and picking a lane's share by selects (96 broadcasts, 64
// selects per step) was 14-18% slower per product on lavapipe (an AVX-512 host; 5-15% on an
// AVX2-only one). There the loads and exchanges are about 55-60% of a step on AVX-512 hosts and
// over 90% on AVX2-only ones (every storage load is a loop over the lanes that inserts each
// lane's value at a run-time index, a failed store-to-load forward per lane without AVX-512;
// the matmul.texture module reads the panels from textures instead, see
// matmul_texture_reads.wgsl), so fewer of them per multiply-add is what pays; the
// accumulators spill to the stack either way.
// Also tried, not kept (2026-12-07): each lane owning all 32 rows at 8 columns, B loaded per
// lane with no exchange and A's panel (4 vec4s loaded per lane) handed out by 32
// subgroupBroadcasts from constant lanes (an extract and a splat on lavapipe). A standalone
// harness had it 25% ahead of a simplified copy of this kernel, but in the library it was
// level: 1024^3 90-92 ms before and 90 ms after (`wgrad bench`, alternated), and ResNet-50's
// subgroup dispatches summed to 330 ms before and 322 ms after (minima of 2-3 alternated
// profile runs; the single dispatches moved more than that between runs).
// Also tried, not kept (2026-12-07, an AMD EPYC host with AVX-512): one subgroup owning a 64x64
// tile, a lane two 16x16 blocks 32 rows apart accumulated from one B panel (a quarter fewer
// panel loads and shuffles per multiply-add), chosen per product by an override where 64-row
// tiles waste no rows. A standalone harness had it 10-15% ahead of a simplified copy of this
// kernel, but in the library it was level or behind on ResNet-50's shapes (M x K x N): with one
// accumulator array of 128, medians of 15 alternated per-dispatch pairs 0.93-1.13 of the
// 32-row time (256x64x3136 1.06, 512x128x768 1.13, 64x148x12544 0.93, 128x1152x784 1.01,
// 2048x512x49 1.08); with two arrays of 64, minima of 7 rounds 1.02-1.17.
// Panels: pa[r] = op(A)(m0 + r, k0 .. k0 + 4), pb[4j + h] = op(B)(k0 + j, n0 + 4h .. + 4).
// Loops longer than 8 are written out: lavapipe does not unroll them, and an accumulator
// indexed at run time lives in memory (4x slower).

// A 16x4 panel as 16 vec4s along its short side (p[r][j]) or as 4x4 vec4s along its long side
// (q[4j + s][c] = element (4s + c, j)); these convert between the two.
fn short_from_long16(q: array<vec4<f32>, 16>) -> array<vec4<f32>, 16> {
    var p: array<vec4<f32>, 16>;
    for (var c = 0u; c < 4u; c++) {
        p[c] = vec4<f32>(q[0][c], q[4][c], q[8][c], q[12][c]);
        p[c + 4u] = vec4<f32>(q[1][c], q[5][c], q[9][c], q[13][c]);
        p[c + 8u] = vec4<f32>(q[2][c], q[6][c], q[10][c], q[14][c]);
        p[c + 12u] = vec4<f32>(q[3][c], q[7][c], q[11][c], q[15][c]);
    }
    return p;
}

fn long_from_short16(p: array<vec4<f32>, 16>) -> array<vec4<f32>, 16> {
    var q: array<vec4<f32>, 16>;
    for (var j = 0u; j < 4u; j++) {
        q[4u * j] = vec4<f32>(p[0][j], p[1][j], p[2][j], p[3][j]);
        q[4u * j + 1u] = vec4<f32>(p[4][j], p[5][j], p[6][j], p[7][j]);
        q[4u * j + 2u] = vec4<f32>(p[8][j], p[9][j], p[10][j], p[11][j]);
        q[4u * j + 3u] = vec4<f32>(p[12][j], p[13][j], p[14][j], p[15][j]);
    }
    return q;
}

// This lane's A panel, from the subgroup's rows sm0 .. sm0 + 32 (4 loads per lane).
fn shared_panel_a(off: u32, sm0: u32, k0: u32, K: u32, lane: u32, mi: u32)
    -> array<vec4<f32>, 16> {
    let M = params.m;
    var p: array<vec4<f32>, 16>;
    if (TA) {
        // Lane l holds op(A)(sm0 + 16(l%2) + 4(l/2) .. + 4, k0 + s) in slot s: rows
        // 16mi + 4h .. + 4 at k0 + j are slot j of lane 2h + mi.
        let rows = sm0 + 16u * (lane % 2u) + 4u * (lane / 2u);
        var raw: array<vec4<f32>, 4>;
        for (var s = 0u; s < 4u; s++) {
            raw[s] = panel_load_a(off + min(k0 + s, K - 1u) * params.lda + rows);
        }
        var q: array<vec4<f32>, 16>;
        for (var j = 0u; j < 4u; j++) {
            q[4u * j] = subgroupShuffle(raw[j], mi);
            q[4u * j + 1u] = subgroupShuffle(raw[j], 2u + mi);
            q[4u * j + 2u] = subgroupShuffle(raw[j], 4u + mi);
            q[4u * j + 3u] = subgroupShuffle(raw[j], 6u + mi);
        }
        p = short_from_long16(q);
    } else {
        // Lane l holds row sm0 + 16(l%2) + l/2 + 4s in slot s: row 16mi + r of the subgroup's
        // rows is slot r/4 of lane 2(r%4) + mi, fetched by one shuffle.
        var raw: array<vec4<f32>, 4>;
        for (var s = 0u; s < 4u; s++) {
            let row = min(sm0 + 16u * (lane % 2u) + lane / 2u + 4u * s, M - 1u);
            raw[s] = panel_load_a(off + row * params.lda + k0);
        }
        for (var q = 0u; q < 4u; q++) {
            p[4u * q] = subgroupShuffle(raw[q], mi);
            p[4u * q + 1u] = subgroupShuffle(raw[q], 2u + mi);
            p[4u * q + 2u] = subgroupShuffle(raw[q], 4u + mi);
            p[4u * q + 3u] = subgroupShuffle(raw[q], 6u + mi);
        }
    }
    return p;
}

// This lane's B panel, from the subgroup's columns sn0 .. sn0 + 64 (8 loads per lane).
fn shared_panel_b(off: u32, sn0: u32, k0: u32, K: u32, lane: u32, ni: u32)
    -> array<vec4<f32>, 16> {
    let N = params.n;
    var p: array<vec4<f32>, 16>;
    if (TB) {
        // Lane l holds op(B)(k0 .. k0 + 4, sn0 + 16(l%4) + 2s + l/4) in slot s: column
        // 16ni + c is slot c/2 of lane 4(c%2) + ni.
        let col = sn0 + 16u * (lane % 4u) + lane / 4u;
        var raw: array<vec4<f32>, 8>;
        for (var s = 0u; s < 8u; s++) {
            raw[s] = panel_load_b(off + min(col + 2u * s, N - 1u) * params.ldb + k0);
        }
        var q: array<vec4<f32>, 16>;
        for (var s = 0u; s < 8u; s++) {
            q[2u * s] = subgroupShuffle(raw[s], ni);
            q[2u * s + 1u] = subgroupShuffle(raw[s], 4u + ni);
        }
        p = long_from_short16(q);
    } else {
        // Lane l holds op(B)(k0 + s/2, sn0 + 16(l%4) + 8(s%2) + 4(l/4) .. + 4) in slot s:
        // block ni's (k0 + j, 16ni + 4h ..) is slot 2j + h/2 of lane 4(h%2) + ni.
        let col = sn0 + 16u * (lane % 4u) + 4u * (lane / 4u);
        var raw: array<vec4<f32>, 8>;
        for (var s = 0u; s < 8u; s++) {
            raw[s] = panel_load_b(off + min(k0 + s / 2u, K - 1u) * params.ldb + col + 8u * (s % 2u));
        }
        for (var j = 0u; j < 4u; j++) {
            p[4u * j] = subgroupShuffle(raw[2u * j], ni);
            p[4u * j + 1u] = subgroupShuffle(raw[2u * j], 4u + ni);
            p[4u * j + 2u] = subgroupShuffle(raw[2u * j + 1u], ni);
            p[4u * j + 3u] = subgroupShuffle(raw[2u * j + 1u], 4u + ni);
        }
    }
    return p;
}

// Zeroes k >= valid in both panels (the K tail).
fn mask_panels16(pa: ptr<function, array<vec4<f32>, 16>>, pb: ptr<function, array<vec4<f32>, 16>>,
                 valid: u32) {
    let keep = vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(valid);
    for (var r = 0u; r < 8u; r++) {
        (*pa)[r] = select(vec4<f32>(0.0), (*pa)[r], keep);
        (*pa)[r + 8u] = select(vec4<f32>(0.0), (*pa)[r + 8u], keep);
    }
    for (var j = 0u; j < 4u; j++) {
        if (!keep[j]) {
            (*pb)[4u * j] = vec4<f32>(0.0);
            (*pb)[4u * j + 1u] = vec4<f32>(0.0);
            (*pb)[4u * j + 2u] = vec4<f32>(0.0);
            (*pb)[4u * j + 3u] = vec4<f32>(0.0);
        }
    }
}

// acc[4r + h] += sum_j pa[r][j] * pb[4j + h] for every row r of column block h: the four B
// vec4s of the block stay in registers while the 16 rows stream past (row by row, all 16 of
// B's vec4s were reloaded from the stack for each row: lavapipe spills the panels).
struct ColB { x: vec4<f32>, y: vec4<f32>, z: vec4<f32>, w: vec4<f32> }

fn fma_col(acc: ptr<function, array<vec4<f32>, 64>>, h: u32, pa: array<vec4<f32>, 16>, b: ColB) {
    (*acc)[0u + h] += pa[0].x * b.x + pa[0].y * b.y + pa[0].z * b.z + pa[0].w * b.w;
    (*acc)[4u + h] += pa[1].x * b.x + pa[1].y * b.y + pa[1].z * b.z + pa[1].w * b.w;
    (*acc)[8u + h] += pa[2].x * b.x + pa[2].y * b.y + pa[2].z * b.z + pa[2].w * b.w;
    (*acc)[12u + h] += pa[3].x * b.x + pa[3].y * b.y + pa[3].z * b.z + pa[3].w * b.w;
    (*acc)[16u + h] += pa[4].x * b.x + pa[4].y * b.y + pa[4].z * b.z + pa[4].w * b.w;
    (*acc)[20u + h] += pa[5].x * b.x + pa[5].y * b.y + pa[5].z * b.z + pa[5].w * b.w;
    (*acc)[24u + h] += pa[6].x * b.x + pa[6].y * b.y + pa[6].z * b.z + pa[6].w * b.w;
    (*acc)[28u + h] += pa[7].x * b.x + pa[7].y * b.y + pa[7].z * b.z + pa[7].w * b.w;
    (*acc)[32u + h] += pa[8].x * b.x + pa[8].y * b.y + pa[8].z * b.z + pa[8].w * b.w;
    (*acc)[36u + h] += pa[9].x * b.x + pa[9].y * b.y + pa[9].z * b.z + pa[9].w * b.w;
    (*acc)[40u + h] += pa[10].x * b.x + pa[10].y * b.y + pa[10].z * b.z + pa[10].w * b.w;
    (*acc)[44u + h] += pa[11].x * b.x + pa[11].y * b.y + pa[11].z * b.z + pa[11].w * b.w;
    (*acc)[48u + h] += pa[12].x * b.x + pa[12].y * b.y + pa[12].z * b.z + pa[12].w * b.w;
    (*acc)[52u + h] += pa[13].x * b.x + pa[13].y * b.y + pa[13].z * b.z + pa[13].w * b.w;
    (*acc)[56u + h] += pa[14].x * b.x + pa[14].y * b.y + pa[14].z * b.z + pa[14].w * b.w;
    (*acc)[60u + h] += pa[15].x * b.x + pa[15].y * b.y + pa[15].z * b.z + pa[15].w * b.w;
}

fn fma_panels16(acc: ptr<function, array<vec4<f32>, 64>>, pa: array<vec4<f32>, 16>,
                pb: array<vec4<f32>, 16>) {
    fma_col(acc, 0u, pa, ColB(pb[0], pb[4], pb[8], pb[12]));
    fma_col(acc, 1u, pa, ColB(pb[1], pb[5], pb[9], pb[13]));
    fma_col(acc, 2u, pa, ColB(pb[2], pb[6], pb[10], pb[14]));
    fma_col(acc, 3u, pa, ColB(pb[3], pb[7], pb[11], pb[15]));
}

fn store_row16(c_off: u32, m: u32, n0: u32, acc: ptr<function, array<vec4<f32>, 64>>, r: u32) {
    let st = epi_row(m);  // once per row
    store_row(c_off, m, n0, (*acc)[4u * r], (*acc)[4u * r + 1u], st);
    store_row(c_off, m, n0 + 8u, (*acc)[4u * r + 2u], (*acc)[4u * r + 3u], st);
}

fn store_block16(c_off: u32, m0: u32, n0: u32, acc: ptr<function, array<vec4<f32>, 64>>) {
    store_row16(c_off, m0 + 0u, n0, acc, 0u);
    store_row16(c_off, m0 + 1u, n0, acc, 1u);
    store_row16(c_off, m0 + 2u, n0, acc, 2u);
    store_row16(c_off, m0 + 3u, n0, acc, 3u);
    store_row16(c_off, m0 + 4u, n0, acc, 4u);
    store_row16(c_off, m0 + 5u, n0, acc, 5u);
    store_row16(c_off, m0 + 6u, n0, acc, 6u);
    store_row16(c_off, m0 + 7u, n0, acc, 7u);
    store_row16(c_off, m0 + 8u, n0, acc, 8u);
    store_row16(c_off, m0 + 9u, n0, acc, 9u);
    store_row16(c_off, m0 + 10u, n0, acc, 10u);
    store_row16(c_off, m0 + 11u, n0, acc, 11u);
    store_row16(c_off, m0 + 12u, n0, acc, 12u);
    store_row16(c_off, m0 + 13u, n0, acc, 13u);
    store_row16(c_off, m0 + 14u, n0, acc, 14u);
    store_row16(c_off, m0 + 15u, n0, acc, 15u);
}

// The lane's 16x16 block of C, accumulated over its job's K chunk: (m0, n0) of the block.
// The subgroup owns the 32x64 tile at rows sm0 ..; lane = 4mi + ni its 16x16 block at
// (16mi, 16ni) in it.
fn subgroup_block(t: Job, sm0: u32, lane: u32, acc: ptr<function, array<vec4<f32>, 64>>) -> vec2<u32> {
    let mi = lane / 4u;
    let ni = lane % 4u;
    let sn0 = t.tile_n * 64u;
    let K = t.k;
    let full = K / 4u * 4u;
    for (var k0 = 0u; k0 < full; k0 += 4u) {
        fma_panels16(acc, shared_panel_a(t.a_off, sm0, k0, K, lane, mi),
                     shared_panel_b(t.b_off, sn0, k0, K, lane, ni));
    }
    if (K_TAIL && full < K) {
        var pa = shared_panel_a(t.a_off, sm0, full, K, lane, mi);
        var pb = shared_panel_b(t.b_off, sn0, full, K, lane, ni);
        mask_panels16(&pa, &pb, K - full);
        fma_panels16(acc, pa, pb);
    }
    return vec2<u32>(sm0 + 16u * mi, sn0 + 16u * ni);
}

@compute @workgroup_size(8)
fn matmul_forward_subgroup(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(subgroup_invocation_id) lane: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    var acc: array<vec4<f32>, 64>;
    let at = subgroup_block(t, t.tile_m * 32u, lane, &acc);
    store_block16(t.c_off, at.x, at.y, &acc);  // with the epilogue
}

// The epilogue4 of whole aligned vec4s, the residual or mask read as one vec4.
fn epilogue4_v4(v: vec4<f32>, o: u32, st: vec2<f32>, n: u32) -> vec4<f32> {
    let f = params.flags & EPI;
    var r = v;
    if ((f & EPI_SCALE) != 0u) { r = r * st.x; }
    if ((f & EPI_SHIFT) != 0u) { r = r + st.y; }
    if ((f & EPI_BIAS) != 0u) {
        r = r + vec4<f32>(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]);
    }
    var x = vec4<f32>(0.0);
    if ((f & (EPI_RESIDUAL | EPI_MASK)) != 0u) { x = aux4[o / 4u]; }
    if ((f & EPI_RESIDUAL) != 0u) { r = r + x; }
    if ((f & EPI_RELU) != 0u) { r = max(r, vec4<f32>(0.0)); }
    if ((f & EPI_MASK) != 0u) { r = r * select(vec4<f32>(0.0), vec4<f32>(1.0), x > vec4<f32>(0.0)); }
    return r;
}

// store_row for C rows a multiple of 4 long: (m, n0 .. n0 + 8) as whole vec4s; at the right
// edge only the first vec4 lies inside C (N - n0 is then 4).
fn store_row_v4(c_off: u32, m: u32, n0: u32, v0: vec4<f32>, v1: vec4<f32>, st: vec2<f32>) {
    let N = params.n;
    if (m >= params.m || n0 >= N) { return; }
    let o = c_index(c_off, m, n0);
    let epi = (params.flags & EPI & EPI_ANY) != 0u;
    var w0 = v0;
    if (epi) { w0 = epilogue4_v4(v0, o, st, n0); }
    c4[o / 4u] = w0;
    if (n0 + 8u <= N) {
        let o1 = c_index(c_off, m, n0 + 4u);
        var w1 = v1;
        if (epi) { w1 = epilogue4_v4(v1, o1, st, n0 + 4u); }
        c4[o1 / 4u] = w1;
    }
}

fn store_row16_v4(c_off: u32, m: u32, n0: u32, acc: ptr<function, array<vec4<f32>, 64>>, r: u32) {
    let st = epi_row(m);  // once per row
    store_row_v4(c_off, m, n0, (*acc)[4u * r], (*acc)[4u * r + 1u], st);
    store_row_v4(c_off, m, n0 + 8u, (*acc)[4u * r + 2u], (*acc)[4u * r + 3u], st);
}

fn store_block16_v4(c_off: u32, m0: u32, n0: u32, acc: ptr<function, array<vec4<f32>, 64>>) {
    store_row16_v4(c_off, m0 + 0u, n0, acc, 0u);
    store_row16_v4(c_off, m0 + 1u, n0, acc, 1u);
    store_row16_v4(c_off, m0 + 2u, n0, acc, 2u);
    store_row16_v4(c_off, m0 + 3u, n0, acc, 3u);
    store_row16_v4(c_off, m0 + 4u, n0, acc, 4u);
    store_row16_v4(c_off, m0 + 5u, n0, acc, 5u);
    store_row16_v4(c_off, m0 + 6u, n0, acc, 6u);
    store_row16_v4(c_off, m0 + 7u, n0, acc, 7u);
    store_row16_v4(c_off, m0 + 8u, n0, acc, 8u);
    store_row16_v4(c_off, m0 + 9u, n0, acc, 9u);
    store_row16_v4(c_off, m0 + 10u, n0, acc, 10u);
    store_row16_v4(c_off, m0 + 11u, n0, acc, 11u);
    store_row16_v4(c_off, m0 + 12u, n0, acc, 12u);
    store_row16_v4(c_off, m0 + 13u, n0, acc, 13u);
    store_row16_v4(c_off, m0 + 14u, n0, acc, 14u);
    store_row16_v4(c_off, m0 + 15u, n0, acc, 15u);
}

// matmul_forward_subgroup for C whose rows are a multiple of 4 long (the host checks): the
// same block, stored as vec4s. On lavapipe a scalar store is a scatter across the lanes, and
// for a short K the stores were most of the time: ResNet-50's 1×1 64 -> 256 convolutions
// (K = 64) took about as long as the same product with K = 128.
@compute @workgroup_size(8)
fn matmul_forward_subgroup_v4(@builtin(workgroup_id) wg: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(subgroup_invocation_id) lane: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    var acc: array<vec4<f32>, 64>;
    let at = subgroup_block(t, t.tile_m * 32u, lane, &acc);
    store_block16_v4(t.c_off, at.x, at.y, &acc);  // with the epilogue
}

// ---- edge kernels: a product's last column tile when it holds 1 to 16 columns ----
//
// matmul_forward_subgroup_edge(_v4): where N mod 64 is 1 to 16, a 32x64 tile of the kernels
// above spends 48 of its 64 columns on nothing in the last column tile (ResNet-50 at batch 1:
// N = 196 at 14x14 and in 56x56's Winograd tiles, 784 at 28x28). There a subgroup owns a
// 128x16 tile instead, the same 2048 outputs: lane l the 16x16 block at rows 16l, loading its
// own A panel (16 loads, no exchange) and two vec4s of the B panel that all lanes share,
// handed out by 16 broadcasts from constant lanes. The host dispatches it for that column
// beside the wide kernel's dispatch for the others (a branch between the two in one entry
// would run both on lavapipe), with tiles_m counting 128-row tiles and tiles_n = 1: the
// column tile starts at N rounded down to 64. Products of M x K x 196 on lavapipe, AVX-512
// host: 256x1024x196 cost as much as x256 (2.10 against 2.12 ms; x192 1.61 ms).

// This lane's A panel: rows m0 .. m0 + 16 of op(A) at k0 .. k0 + 4.
fn edge_panel_a(off: u32, m0: u32, k0: u32, K: u32) -> array<vec4<f32>, 16> {
    var p: array<vec4<f32>, 16>;
    if (TA) {
        // q[4j + s] = op(A)(m0 + 4s .. + 4, k0 + j): along the stored rows (rows past the
        // last vec4 of a stored row read its last vec4: never stored).
        let last = params.lda - 4u;
        var q: array<vec4<f32>, 16>;
        for (var j = 0u; j < 4u; j++) {
            let row = off + min(k0 + j, K - 1u) * params.lda;
            q[4u * j] = panel_load_a(row + min(m0, last));
            q[4u * j + 1u] = panel_load_a(row + min(m0 + 4u, last));
            q[4u * j + 2u] = panel_load_a(row + min(m0 + 8u, last));
            q[4u * j + 3u] = panel_load_a(row + min(m0 + 12u, last));
        }
        p = short_from_long16(q);
    } else {
        let M = params.m;
        for (var s = 0u; s < 4u; s++) {
            p[4u * s] = panel_load_a(off + min(m0 + 4u * s, M - 1u) * params.lda + k0);
            p[4u * s + 1u] = panel_load_a(off + min(m0 + 4u * s + 1u, M - 1u) * params.lda + k0);
            p[4u * s + 2u] = panel_load_a(off + min(m0 + 4u * s + 2u, M - 1u) * params.lda + k0);
            p[4u * s + 3u] = panel_load_a(off + min(m0 + 4u * s + 3u, M - 1u) * params.lda + k0);
        }
    }
    return p;
}

// The 16 vec4s r0 (lanes 0 .. 8), then r1 (lanes 0 .. 8) of the subgroup, in every lane.
fn broadcast16(r0: vec4<f32>, r1: vec4<f32>) -> array<vec4<f32>, 16> {
    return array<vec4<f32>, 16>(
        subgroupBroadcast(r0, 0u), subgroupBroadcast(r0, 1u), subgroupBroadcast(r0, 2u),
        subgroupBroadcast(r0, 3u), subgroupBroadcast(r0, 4u), subgroupBroadcast(r0, 5u),
        subgroupBroadcast(r0, 6u), subgroupBroadcast(r0, 7u),
        subgroupBroadcast(r1, 0u), subgroupBroadcast(r1, 1u), subgroupBroadcast(r1, 2u),
        subgroupBroadcast(r1, 3u), subgroupBroadcast(r1, 4u), subgroupBroadcast(r1, 5u),
        subgroupBroadcast(r1, 6u), subgroupBroadcast(r1, 7u));
}

// The subgroup's B panel, pb[4j + h] = op(B)(k0 + j, sn0 + 4h .. + 4), two loads per lane.
fn edge_panel_b(off: u32, sn0: u32, k0: u32, K: u32, lane: u32) -> array<vec4<f32>, 16> {
    if (TB) {
        // Lane l loads columns sn0 + l and sn0 + 8 + l along k: column c is vec4 c.
        let N = params.n;
        let r0 = panel_load_b(off + min(sn0 + lane, N - 1u) * params.ldb + k0);
        let r1 = panel_load_b(off + min(sn0 + 8u + lane, N - 1u) * params.ldb + k0);
        return long_from_short16(broadcast16(r0, r1));
    }
    // Lane l loads (k0 + l/4, sn0 + 4(l%4) ..) and (k0 + 2 + l/4, ..): vec4 i of the panel is
    // pb[i] (columns past the stored row read its neighbours: never stored).
    let col = sn0 + 4u * (lane % 4u);
    let r0 = panel_load_b(off + min(k0 + lane / 4u, K - 1u) * params.ldb + col);
    let r1 = panel_load_b(off + min(k0 + 2u + lane / 4u, K - 1u) * params.ldb + col);
    return broadcast16(r0, r1);
}

// The lane's 16x16 block of C in the edge column, accumulated over its job's K chunk.
fn edge_block(t: Job, lane: u32, acc: ptr<function, array<vec4<f32>, 64>>) -> vec2<u32> {
    let m0 = t.tile_m * 128u + 16u * lane;
    let sn0 = params.n / 64u * 64u;
    let K = t.k;
    let full = K / 4u * 4u;
    for (var k0 = 0u; k0 < full; k0 += 4u) {
        fma_panels16(acc, edge_panel_a(t.a_off, m0, k0, K), edge_panel_b(t.b_off, sn0, k0, K, lane));
    }
    if (K_TAIL && full < K) {
        var pa = edge_panel_a(t.a_off, m0, full, K);
        var pb = edge_panel_b(t.b_off, sn0, full, K, lane);
        mask_panels16(&pa, &pb, K - full);
        fma_panels16(acc, pa, pb);
    }
    return vec2<u32>(m0, sn0);
}

@compute @workgroup_size(8)
fn matmul_forward_subgroup_edge(@builtin(workgroup_id) wg: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(subgroup_invocation_id) lane: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    var acc: array<vec4<f32>, 64>;
    let at = edge_block(t, lane, &acc);
    store_block16(t.c_off, at.x, at.y, &acc);  // with the epilogue
}

@compute @workgroup_size(8)
fn matmul_forward_subgroup_edge_v4(@builtin(workgroup_id) wg: vec3<u32>,
                                   @builtin(num_workgroups) nwg: vec3<u32>,
                                   @builtin(subgroup_invocation_id) lane: u32) {
    let t = job(wg, nwg);
    if (!t.valid) { return; }
    var acc: array<vec4<f32>, 64>;
    let at = edge_block(t, lane, &acc);
    store_block16_v4(t.c_off, at.x, at.y, &acc);  // with the epilogue
}

// ---- panel reads: the subgroup kernels' operand loads, from the storage buffers a4 and b4 ----
// src/ops/matmul.rs compiles a second module with this tail replaced by
// matmul_texture_reads.wgsl, which reads the same vec4s from rgba32float textures.
fn panel_load_a(i: u32) -> vec4<f32> {
    return load_a(i);
}

fn panel_load_b(i: u32) -> vec4<f32> {
    return load_b(i);
}
