// dropout.wgsl — seeded inverted dropout: y = x / (1 - p) where kept, 0 elsewhere.
// Not a module on its own: dropout_hash.wgsl (the mask's draw) is appended to it.
//
// Entry points (workgroup size 64, no barriers, grid split over x/y/z past 65535
// workgroups):
//   dropout_forward   dst[i] = draw(i) >= threshold ? src[i] * scale : 0, one element per
//                     invocation
//   dropout_forward4  the same for 16 elements (4 vec4s) per invocation, when total % 4 = 0:
//                     lavapipe loads and stores one lane at a time, so a vec4 moves four
//                     values per lane step, and the key is hashed once per 16 draws.

struct Params {
    total: u32,       // elements
    seed_lo: u32,     // seed bits 0..32
    seed_hi: u32,     // seed bits 32..64
    threshold: u32,   // round(p · 2^32): draws below it drop their element
    scale: f32,       // 1 / (1 - p), computed once in f32 on the host
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // x (total)
@group(0) @binding(2) var<storage, read> step_buf: array<f32>;      // (1): the step, an integer
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;  // y (total)
@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;       // x as vec4s
@group(0) @binding(3) var<storage, read_write> dst4: array<vec4<f32>>; // y as vec4s

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

// The draw key of this step: the same for every element.
fn step_key() -> u32 {
    return dropout_key(params.seed_lo, params.seed_hi, step_buf[0]);
}

@compute @workgroup_size(64)
fn dropout_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let keep = pcg_hash(pcg_hash(i) ^ step_key()) >= params.threshold;
    dst[i] = select(0.0, src[i] * params.scale, keep);
}

@compute @workgroup_size(64)
fn dropout_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let first = linear_index(wg, nwg, lid) * 4u; // in vec4s
    let n4 = params.total / 4u;
    if (first >= n4) { return; }
    let key = step_key();
    for (var v = first; v < min(first + 4u, n4); v = v + 1u) {
        let keep = dropout_keep4(4u * v, key, params.threshold);
        dst4[v] = select(vec4<f32>(0.0), src4[v] * params.scale, keep);
    }
}
