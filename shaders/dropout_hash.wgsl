// dropout_hash.wgsl — dropout's mask draw, shared by dropout.wgsl and batchnorm.wgsl (appended
// to each; not a module on its own). An element i is kept when
//   pcg(pcg(i) ^ key) >= threshold,   key = pcg(seed_lo ^ pcg(seed_hi ^ pcg(step))),
// a counter-based draw that needs no state, is recomputed by the backward pass, and equals
// the CPU reference (src/ops/dropout.rs) bit for bit: u32 arithmetic wraps identically there.

fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn pcg_hash4(v: vec4<u32>) -> vec4<u32> {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> vec4<u32>(28u)) + 4u)) ^ state) * 277803737u;
    return (word >> vec4<u32>(22u)) ^ word;
}

// The draw key of one step (an integer held as f32): the same for every element.
fn dropout_key(seed_lo: u32, seed_hi: u32, step: f32) -> u32 {
    return pcg_hash(seed_lo ^ pcg_hash(seed_hi ^ pcg_hash(u32(step))));
}

// Which of the elements first .. first + 4 are kept.
fn dropout_keep4(first: u32, key: u32, threshold: u32) -> vec4<bool> {
    let i = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
    return pcg_hash4(pcg_hash4(i) ^ vec4<u32>(key)) >= vec4<u32>(threshold);
}
