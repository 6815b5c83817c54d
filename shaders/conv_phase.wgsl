// conv_phase.wgsl — a strided convolution's data gradient as one product over phases
// (src/ops/conv_phase.rs has the derivation and the CPU references).
//
// The convolution: x (N, C, H, W), filters W (F, C, KH, KW), strides (sh, sw), top and left
// padding (pt, pl), dilation 1, output y (N, F, OH, OW). Input row ih = sh·a + rh (phase rh of
// phase row a) is reached from output rows oh = a + t for th consecutive shifts t, t0_h = -p0h
// the first, through kernel row kh = rh + off_h − sh·(t − t0_h) (off_h = pt + sh·p0h); columns
// likewise. So
//   dx[n, c, sh·a + rh, sw·b + rw] = Σ_{f, ti, tj} P[(n, a, b), (f, ti, tj)] · Wp[(f, ti, tj), (rh, rw, c)]
// with the patches P[(n, a, b), (f, ti, tj)] = gy[n, f, a − p0h + ti, b − p0w + tj] (0 outside)
// and Wp the filters rearranged (0 where kh or kw falls outside the window).
//
// Not a module on its own: exact_div.wgsl (div) is appended to it (src/ops/conv_phase.rs).
//
// Entry points (workgroup size 64, no barriers, no loop past gpu::LOOP_BUDGET: the host checks):
//   conv_phase_weight    Wp (F·th·tw, sh·sw·C) from W (F, C·KH·KW), one invocation per row.
//   conv_phase_patches4  P (N·ah·aw, F·th·tw) from the upstream gradient, stored channels first
//                        (F, N, OH, OW) or NCHW (plane strides in params); one invocation per
//                        row writing vec4s ((F·th·tw) % 4 = 0).
//   conv_phase_scatter   dx (N, C, H, W) from the product (N·ah·aw, sh·sw·C), one invocation per
//                        row of dx (n, c, ih) walking its W columns; conv_phase_scatter_rows4
//                        the same by rows of the product ((sh·sw·C) % 4 = 0).

struct Params {
    n: u32, c: u32, h: u32, w: u32,    // the data gradient's shape
    f: u32, oh: u32, ow: u32,          // the upstream gradient's channels and positions
    kh: u32, kw: u32,                  // kernel size
    sh: u32, sw: u32,                  // strides
    th: u32, tw: u32,                  // shifts per phase (rows, columns)
    p0h: u32, p0w: u32,                // -(first shift): the patches' top and left padding
    off_h: u32, off_w: u32,            // kernel row (column) of phase 0 at shift index 0
    ah: u32, aw: u32,                  // phase rows and columns: ceil(H / sh), ceil(W / sw)
    total: u32,                        // invocations that write
    // conv_phase_patches4: elements between the upstream gradient's images and between its
    // channels (F·OH·OW and OH·OW for NCHW; OH·OW and N·OH·OW channels first)
    image_stride: u32, channel_stride: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>;

fn invocation(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

// One invocation per row (f, ti, tj) of Wp, walking its (rh, rw, c) columns: the integer
// divisions (one lane at a time on a CPU adapter) are paid once per row, not per element.
@compute @workgroup_size(64)
fn conv_phase_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, nwg, lid);
    if (i >= params.total) { return; }
    let taps = params.th * params.tw;
    let f = div(i, taps);
    let t = i - f * taps;
    let ti = div(t, params.tw);
    let tj = t - ti * params.tw;
    var o = i * params.sh * params.sw * params.c;
    for (var rh = 0u; rh < params.sh; rh = rh + 1u) {
        let kh = i32(rh + params.off_h) - i32(params.sh * ti);
        let row_in = kh >= 0 && u32(kh) < params.kh;
        for (var rw = 0u; rw < params.sw; rw = rw + 1u) {
            let kw = i32(rw + params.off_w) - i32(params.sw * tj);
            let ok = row_in && kw >= 0 && u32(kw) < params.kw;
            // W[f, c, kh, kw] for c = 0, 1, ..: KH·KW apart
            let tap = select(0u, u32(kh) * params.kw + u32(kw), ok);
            var at = f * params.c * params.kh * params.kw + tap;
            for (var c = 0u; c < params.c; c = c + 1u) {
                dst[o] = select(0.0, src[at], ok);
                o = o + 1u;
                at = at + params.kh * params.kw;
            }
        }
    }
}

@compute @workgroup_size(64)
fn conv_phase_patches4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, nwg, lid);  // the patch row (n, a, b)
    if (i >= params.total) { return; }
    let grid = params.ah * params.aw;
    let n = div(i, grid);
    let l = i - n * grid;
    let a = div(l, params.aw);
    let y0 = i32(a) - i32(params.p0h);
    let x0 = i32(l - a * params.aw) - i32(params.p0w);
    let hw = params.oh * params.ow;
    let n4 = params.f * params.th * params.tw / 4u;
    var plane = n * params.image_stride;
    var ti = 0u;
    var tj = 0u;
    for (var v = 0u; v < n4; v = v + 1u) {
        var out = vec4<f32>(0.0);
        for (var u = 0u; u < 4u; u = u + 1u) {
            let iy = y0 + i32(ti);
            let ix = x0 + i32(tj);
            let ok = iy >= 0 && u32(iy) < params.oh && ix >= 0 && u32(ix) < params.ow;
            out[u] = select(0.0, src[select(0u, plane + u32(iy) * params.ow + u32(ix), ok)], ok);
            // next: tj, then ti, then the channel
            let wrap_j = tj + 1u == params.tw;
            let wrap_i = wrap_j && ti + 1u == params.th;
            tj = select(tj + 1u, 0u, wrap_j);
            ti = select(ti + u32(wrap_j), 0u, wrap_i);
            plane = plane + select(0u, params.channel_stride, wrap_i);
        }
        dst4[i * n4 + v] = out;
    }
}

@compute @workgroup_size(64)
fn conv_phase_scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, nwg, lid);  // the row (n, c, ih) of dx
    if (i >= params.total) { return; }
    let q = div(i, params.h);
    let ih = i - q * params.h;
    let n = div(q, params.c);
    let c = q - n * params.c;
    let a = div(ih, params.sh);
    let rh = ih - a * params.sh;
    let cols = params.sh * params.sw * params.c;
    // Product row (n, a, b) at b = 0, and column (rh, rw, c) at rw = 0.
    var at = (n * params.ah + a) * params.aw * cols + rh * params.sw * params.c + c;
    var rw = 0u;
    let out = i * params.w;
    for (var iw = 0u; iw < params.w; iw = iw + 1u) {
        dst[out + iw] = src[at];
        // next column: the next phase, or phase 0 of the next b
        let wrap = rw + 1u == params.sw;
        at = select(at + params.c, at + cols - (params.sw - 1u) * params.c, wrap);
        rw = select(rw + 1u, 0u, wrap);
    }
}

// The same scatter by rows of the product ((sh·sw·C) % 4 = 0): one invocation per product row
// (n, a, b), reading its sh·sw·C values as vec4s and storing each at its pixel
// (n, c, sh·a + rh, sw·b + rw), those past the image's last row or column dropped. Eight
// times fewer invocations than one per row of dx for a 3×3 stride-2 window.
@compute @workgroup_size(64)
fn conv_phase_scatter_rows4(@builtin(workgroup_id) wg: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let i = invocation(wg, nwg, lid);  // the product row (n, a, b)
    if (i >= params.total) { return; }
    let grid = params.ah * params.aw;
    let n = div(i, grid);
    let l = i - n * grid;
    let a = div(l, params.aw);
    let ih0 = params.sh * a;
    let iw0 = params.sw * (l - a * params.aw);
    let hw = params.h * params.w;
    let n4 = params.sh * params.sw * params.c / 4u;
    // dx index of column (rh, rw, c), kept by counters as the columns advance
    var o = n * params.c * hw + ih0 * params.w + iw0;
    var c = 0u;
    var rh = 0u;
    var rw = 0u;
    for (var v = 0u; v < n4; v = v + 1u) {
        let q = src4[i * n4 + v];
        for (var u = 0u; u < 4u; u = u + 1u) {
            if (ih0 + rh < params.h && iw0 + rw < params.w) {
                dst[o] = q[u];
            }
            // next column: the channel, then rw, then rh
            let wrap_c = c + 1u == params.c;
            let wrap_w = wrap_c && rw + 1u == params.sw;
            c = select(c + 1u, 0u, wrap_c);
            o = select(o + hw, o - (params.c - 1u) * hw + select(1u, 0u, wrap_w), wrap_c);
            o = select(o, o + params.w - (params.sw - 1u), wrap_w);
            rw = select(rw + u32(wrap_c), 0u, wrap_w);
            rh = rh + u32(wrap_w);
        }
    }
}
