// roofline.wgsl — the adapter's own ceilings, measured by `wgrad bench`.
//
// Entry points (workgroup size 256, one invocation per vec4; the grid may be
// split over x/y/z when it exceeds 65535 workgroups per dimension):
//   copy_vec4  dst[i] = src[i]                   memory roof: 32 bytes moved per invocation
//   fma_peak   16 independent vec4 FMA chains of params.iters steps each, seeded from
//              src[i] and summed into dst[i] once (so nothing is optimised away):
//              compute roof, 128 FLOPs per step per invocation. Sixteen chains: on
//              lavapipe 4, 8 and 16 chains measured about 0.85x, 1.2x and 1.5x the
//              subgroup matmul's GFLOP/s at the same moment (more chains hide FMA latency).
// params.iters stays far below lavapipe's 65535-iteration limit per invocation.

struct Params {
    n: u32,      // invocations that do work (vec4s copied / chains written)
    iters: u32,  // fma_peak: steps per chain
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;        // (n) vec4s
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;  // (n) vec4s

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

@compute @workgroup_size(256)
fn copy_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    dst[i] = src[i];
}

@compute @workgroup_size(256)
fn fma_peak(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let s = src[i];
    // x ← x·m + c converges to c / (1 - m) = 1: no overflow and no denormals.
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(0.001);
    var a0 = s;
    var a1 = s + vec4<f32>(0.0625);
    var a2 = s + vec4<f32>(0.125);
    var a3 = s + vec4<f32>(0.1875);
    var a4 = s + vec4<f32>(0.25);
    var a5 = s + vec4<f32>(0.3125);
    var a6 = s + vec4<f32>(0.375);
    var a7 = s + vec4<f32>(0.4375);
    var a8 = s + vec4<f32>(0.5);
    var a9 = s + vec4<f32>(0.5625);
    var a10 = s + vec4<f32>(0.625);
    var a11 = s + vec4<f32>(0.6875);
    var a12 = s + vec4<f32>(0.75);
    var a13 = s + vec4<f32>(0.8125);
    var a14 = s + vec4<f32>(0.875);
    var a15 = s + vec4<f32>(0.9375);
    for (var k = 0u; k < params.iters; k = k + 1u) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
        a8 = fma(a8, m, c);
        a9 = fma(a9, m, c);
        a10 = fma(a10, m, c);
        a11 = fma(a11, m, c);
        a12 = fma(a12, m, c);
        a13 = fma(a13, m, c);
        a14 = fma(a14, m, c);
        a15 = fma(a15, m, c);
    }
    dst[i] = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + (((a8 + a9) + (a10 + a11)) + ((a12 + a13) + (a14 + a15)));
}
