// dropout.wgsl — seeded inverted dropout: y = x / (1 - p) where kept, 0 elsewhere.
//
// The mask is a counter-based draw, pcg(pcg(index) ^ key) with key = a hash of (seed,
// step), so it needs no state, is recomputed by the backward pass, and equals the CPU
// reference (src/ops/dropout.rs) bit for bit: u32 arithmetic wraps identically there.
//
// Entry point (workgroup size 256, one element per invocation, no barriers, grid split
// over x/y/z past 65535 workgroups):
//   dropout_forward   dst[i] = draw(i) >= threshold ? src[i] * scale : 0

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

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

@compute @workgroup_size(256)
fn dropout_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let key = pcg_hash(params.seed_lo ^ pcg_hash(params.seed_hi ^ pcg_hash(u32(step_buf[0]))));
    let keep = pcg_hash(pcg_hash(i) ^ key) >= params.threshold;
    dst[i] = select(0.0, src[i] * params.scale, keep);
}
