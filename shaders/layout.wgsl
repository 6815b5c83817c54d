// layout.wgsl — data movement: batched 2-D transposes and general strided copies.
//
// Elements travel as u32 bit patterns, so f32 (NaN payloads included), i32 and u32
// tensors are copied exactly. Every index is bounded by counts from the params
// uniform (pooled buffers may be larger than the tensors). The grid may be split
// over x/y/z; every entry rebuilds its linear workgroup id.
//
// Transposes, (B, M, N) -> (B, N, M); the host picks one per adapter:
//   transpose_forward          one output per invocation; workgroup 16x16 = one 16x16
//                              output tile. Simple; reads gather, writes are contiguous.
//   transpose_tiled_forward    a 32x32 tile staged through workgroup memory (workgroup
//                              32x8, four elements per invocation, the tile padded to 33
//                              columns so column reads hit distinct banks): coalesced
//                              reads and writes, for real GPUs.
//   transpose_blocked_forward  a 32x32 block per invocation, no workgroup memory and no
//                              barrier; workgroup 8x8 = a 256x256 tile. For CPU adapters,
//                              where the cost per invocation and barriers dominate: each
//                              invocation reads and writes whole 128-byte rows.
//   transpose_blocked4_forward the same with vec4 loads and stores (M, N multiples of 4).
//   transpose_small4_forward   one 4x4 sub-block per invocation, numbered across the whole
//                              batch; workgroup 64. Where the blocked kernel is chosen and
//                              the matrices are small (M, N multiples of 4, M·N at most
//                              128·128, src/ops/layout.rs): there the blocked kernels leave
//                              most of a workgroup idle and one lane walks a whole matrix.
// Strided copies (permute, broadcast_to, slice, concat):
//   strided_copy_forward       out[out_offset + sum c_d*out_stride_d] =
//                                in[in_offset + sum c_d*in_stride_d] for every coordinate c
//                              of `dims`; each invocation copies a run of `run` elements
//                              along the innermost dim (one index unravel per run);
//                              workgroup 64.
//   strided_copy4_forward      the same in vec4 units, when the innermost dim is contiguous
//                              on both sides and every offset and stride is a multiple of 4.
// The host sets `run`: 1 on real GPUs (neighbouring invocations touch neighbouring elements,
// so accesses coalesce), long on CPU adapters (amortises the per-invocation cost).

struct TransposeParams {
    m: u32,        // input rows (output columns)
    n: u32,        // input columns (output rows)
    batch: u32,    // number of matrices
    tiles_m: u32,  // workgroup tiles along m
    tiles_n: u32,  // workgroup tiles along n
}

struct CopyParams {
    runs: u32,          // invocations with work: rows * runs_per_row
    runs_per_row: u32,  // ceil(innermost dim / run)
    rank: u32,          // number of dims used (1..=8)
    run: u32,           // elements (vec4s) per invocation along the innermost dim
    in_offset: u32,     // first input element (vec4 entry: first vec4)
    out_offset: u32,    // first output element
    pad2: u32,
    pad3: u32,
    dims: array<vec4<u32>, 2>,         // sizes of the copied block, outermost first
    in_strides: array<vec4<u32>, 2>,   // input strides per dim (0 = broadcast)
    out_strides: array<vec4<u32>, 2>,  // output strides per dim
}

@group(0) @binding(0) var<uniform> tp: TransposeParams;  // transpose entries
@group(0) @binding(0) var<uniform> cp: CopyParams;       // strided copy entries
@group(0) @binding(1) var<storage, read> src: array<u32>;               // (B, M, N) or any input
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;         // (B, N, M) or any output
@group(0) @binding(1) var<storage, read> src4: array<vec4<u32>>;        // vec4 view of the input
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<u32>>;  // vec4 view of the output

const TILE: u32 = 32u;
const TILE_ROWS: u32 = 8u;  // workgroup rows of the tiled kernel; each covers TILE / TILE_ROWS
const BLOCK: u32 = 32u;     // side of one invocation's block in the blocked kernels
const SUB: u32 = 8u;        // BLOCK / 4: the block in 4x4 sub-blocks (vec4 kernel)

var<workgroup> tile: array<u32, 1056>;  // TILE x (TILE + 1)

fn dim_at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

fn group_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y;
}

@compute @workgroup_size(16, 16)
fn transpose_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = group_id(wg, nwg);
    let per_matrix = tp.tiles_m * tp.tiles_n;
    let b = t / per_matrix;
    if (b >= tp.batch) { return; }
    let r = t % per_matrix;
    let i = (r % tp.tiles_m) * 16u + lid.x;  // output column = input row
    let j = (r / tp.tiles_m) * 16u + lid.y;  // output row = input column
    if (i >= tp.m || j >= tp.n) { return; }
    let base = b * tp.m * tp.n;
    dst[base + j * tp.m + i] = src[base + i * tp.n + j];
}

@compute @workgroup_size(32, 8)
fn transpose_tiled_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = group_id(wg, nwg);
    let per_matrix = tp.tiles_m * tp.tiles_n;
    let b = t / per_matrix;
    // Uniform across the workgroup (workgroup id and params only), so the barrier below is legal.
    if (b >= tp.batch) { return; }
    let r = t % per_matrix;
    let i0 = (r % tp.tiles_m) * TILE;  // first input row of the tile
    let j0 = (r / tp.tiles_m) * TILE;  // first input column of the tile
    let base = b * tp.m * tp.n;
    // Load: consecutive invocations read consecutive input columns.
    for (var k = 0u; k < TILE; k = k + TILE_ROWS) {
        let i = i0 + lid.y + k;
        let j = j0 + lid.x;
        if (i < tp.m && j < tp.n) {
            tile[(lid.y + k) * (TILE + 1u) + lid.x] = src[base + i * tp.n + j];
        }
    }
    workgroupBarrier();
    // Store: consecutive invocations write consecutive output columns (input rows).
    for (var k = 0u; k < TILE; k = k + TILE_ROWS) {
        let j = j0 + lid.y + k;
        let i = i0 + lid.x;
        if (i < tp.m && j < tp.n) {
            dst[base + j * tp.m + i] = tile[lid.x * (TILE + 1u) + lid.y + k];
        }
    }
}

@compute @workgroup_size(8, 8)
fn transpose_blocked_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = group_id(wg, nwg);
    let per_matrix = tp.tiles_m * tp.tiles_n;
    let b = t / per_matrix;
    if (b >= tp.batch) { return; }
    let r = t % per_matrix;
    // Neighbouring invocations take neighbouring blocks down the input rows.
    let i0 = ((r % tp.tiles_m) * 8u + lid.x) * BLOCK;
    let j0 = ((r / tp.tiles_m) * 8u + lid.y) * BLOCK;
    let i1 = min(i0 + BLOCK, tp.m);
    let j1 = min(j0 + BLOCK, tp.n);
    let base = b * tp.m * tp.n;
    for (var j = j0; j < j1; j = j + 1u) {
        for (var i = i0; i < i1; i = i + 1u) {
            dst[base + j * tp.m + i] = src[base + i * tp.n + j];
        }
    }
}

// The 4x4 sub-block (bi, bj), in vec4 units, of the (M, N) matrix whose first vec4 is base4:
// its four input rows written back as its four output columns.
fn transpose_sub4(base4: u32, bi: u32, bj: u32, m4: u32, n4: u32) {
    let a0 = src4[base4 + (bi * 4u + 0u) * n4 + bj];
    let a1 = src4[base4 + (bi * 4u + 1u) * n4 + bj];
    let a2 = src4[base4 + (bi * 4u + 2u) * n4 + bj];
    let a3 = src4[base4 + (bi * 4u + 3u) * n4 + bj];
    dst4[base4 + (bj * 4u + 0u) * m4 + bi] = vec4<u32>(a0.x, a1.x, a2.x, a3.x);
    dst4[base4 + (bj * 4u + 1u) * m4 + bi] = vec4<u32>(a0.y, a1.y, a2.y, a3.y);
    dst4[base4 + (bj * 4u + 2u) * m4 + bi] = vec4<u32>(a0.z, a1.z, a2.z, a3.z);
    dst4[base4 + (bj * 4u + 3u) * m4 + bi] = vec4<u32>(a0.w, a1.w, a2.w, a3.w);
}

@compute @workgroup_size(8, 8)
fn transpose_blocked4_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = group_id(wg, nwg);
    let per_matrix = tp.tiles_m * tp.tiles_n;
    let b = t / per_matrix;
    if (b >= tp.batch) { return; }
    let r = t % per_matrix;
    let m4 = tp.m / 4u;
    let n4 = tp.n / 4u;
    let base4 = b * m4 * tp.n;  // first vec4 of matrix b
    // In vec4 units: this invocation owns SUB x SUB sub-blocks of 4x4 elements.
    let bi0 = ((r % tp.tiles_m) * 8u + lid.x) * SUB;
    let bj0 = ((r / tp.tiles_m) * 8u + lid.y) * SUB;
    for (var p = 0u; p < SUB; p = p + 1u) {
        let bi = bi0 + p;
        if (bi >= m4) { break; }
        for (var q = 0u; q < SUB; q = q + 1u) {
            let bj = bj0 + q;
            if (bj >= n4) { break; }
            transpose_sub4(base4, bi, bj, m4, n4);
        }
    }
}

@compute @workgroup_size(64)
fn transpose_small4_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = group_id(wg, nwg) * 64u + lid;
    let m4 = tp.m / 4u;
    let n4 = tp.n / 4u;
    let per_matrix = m4 * n4;
    let b = i / per_matrix;
    if (b >= tp.batch) { return; }
    // Neighbouring invocations take neighbouring sub-blocks down the input rows, so their
    // stores land side by side in the output rows.
    let r = i - b * per_matrix;
    let bj = r / m4;
    let bi = r - bj * m4;
    transpose_sub4(b * per_matrix * 4u, bi, bj, m4, n4);  // from the first vec4 of matrix b
}

// Start of run `e`: the input and output positions of its first element, and the
// index along the innermost dim where it starts.
struct Run {
    at_in: u32,
    at_out: u32,
    k0: u32,
}

fn run_start(e: u32) -> Run {
    let last = cp.rank - 1u;
    var rem = e / cp.runs_per_row;
    let k0 = (e % cp.runs_per_row) * cp.run;
    var at_in = cp.in_offset + k0 * dim_at(cp.in_strides, last);
    var at_out = cp.out_offset + k0 * dim_at(cp.out_strides, last);
    for (var d = i32(last) - 1; d >= 0; d = d - 1) {
        let size = dim_at(cp.dims, u32(d));
        let c = rem % size;
        rem = rem / size;
        at_in = at_in + c * dim_at(cp.in_strides, u32(d));
        at_out = at_out + c * dim_at(cp.out_strides, u32(d));
    }
    return Run(at_in, at_out, k0);
}

@compute @workgroup_size(64)
fn strided_copy_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let e = group_id(wg, nwg) * 64u + lid;
    if (e >= cp.runs) { return; }
    let s = run_start(e);
    let last = cp.rank - 1u;
    let len = min(cp.run, dim_at(cp.dims, last) - s.k0);
    let si = dim_at(cp.in_strides, last);
    let so = dim_at(cp.out_strides, last);
    for (var k = 0u; k < len; k = k + 1u) {
        dst[s.at_out + k * so] = src[s.at_in + k * si];
    }
}

@compute @workgroup_size(64)
fn strided_copy4_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let e = group_id(wg, nwg) * 64u + lid;
    if (e >= cp.runs) { return; }
    let s = run_start(e);  // in vec4 units; the innermost strides are 1
    let len = min(cp.run, dim_at(cp.dims, cp.rank - 1u) - s.k0);
    for (var k = 0u; k < len; k = k + 1u) {
        dst4[s.at_out + k] = src4[s.at_in + k];
    }
}
