// im2col_nhwc.wgsl — the patch matrix of a channels-last (N, H, W, C) batch, for the layout
// measurement of issue 15 (see src/ops/nhwc.rs).
//
// cols[(n, oy, ox), (ki, kj, c)] = x[n, oy·sh - pt + ki·dh, ox·sw - pl + kj·dw, c]   (or 0)
//
// Each patch row is KH·KW runs of C contiguous floats, one run per kernel tap, copied from
// one contiguous run of x: one invocation per (n, l, tap) copies its run. As written the file
// moves floats (`im2col_nhwc`); for C a multiple of 4 the host builds a second module from it
// moving vec4s (`im2col_nhwc_vec4`: Elem = vec4<f32>, WIDTH = 4). Runs are at most
// gpu::LOOP_BUDGET steps (the host checks).
// Workgroup size 256, no barriers, the grid split over x/y/z past 65535 workgroups.

struct Params {
    n: u32, c: u32, h: u32, w: u32,   // input shape (N, C, H, W) though stored channels-last
    kh: u32, kw: u32,                  // kernel size
    sh: u32, sw: u32,                  // strides (rows, columns)
    pt: u32, pl: u32,                  // top and left padding
    dh: u32, dw: u32,                  // dilations (rows, columns)
    oh: u32, ow: u32,                  // output positions
    total: u32,                        // invocations: N·OH·OW·KH·KW
}

alias Elem = f32;       // the element moved (the vec4 module: vec4<f32>)
const WIDTH: u32 = 1u;  // channels per Elem (the vec4 module: 4u)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<Elem>;
@group(0) @binding(2) var<storage, read_write> dst: array<Elem>;

@compute @workgroup_size(256)
fn im2col_nhwc(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
    if (i >= params.total) { return; }
    let run = params.c / WIDTH;              // elements per tap
    let taps = params.kh * params.kw;
    let tap = i % taps;
    let nl = i / taps;
    let ox = nl % params.ow;
    let oy = (nl / params.ow) % params.oh;
    let n = nl / (params.ow * params.oh);
    let iy = i32(oy * params.sh + (tap / params.kw) * params.dh) - i32(params.pt);
    let ix = i32(ox * params.sw + (tap % params.kw) * params.dw) - i32(params.pl);
    let out = i * run;
    if (iy < 0 || ix < 0 || u32(iy) >= params.h || u32(ix) >= params.w) {
        for (var e = 0u; e < run; e = e + 1u) { dst[out + e] = Elem(0.0); }
        return;
    }
    let first = ((n * params.h + u32(iy)) * params.w + u32(ix)) * run;
    for (var e = 0u; e < run; e = e + 1u) { dst[out + e] = src[first + e]; }
}
