// pool.wgsl — direct 2-D max and average pooling and their gradients, no patch matrix.
// Not a module on its own: exact_div.wgsl (div) is appended to it (src/ops/pool.rs).
//
// x is (I, H, W) with I = N·C images (channels pool independently); y and g are
// (I, OH, OW). A window at output (oy, ox) covers padded-input rows oy·sh + ki·dh and
// columns ox·sw + kj·dw (ki < kh, kj < kw); padded position p reads x at p - pt (rows) or
// p - pl (columns) when that lies inside the image. Padding is never a max candidate; an
// average divides by the taps inside the padded input (count_include_pad, but never the
// taps past pb/pr that ceil_mode's last window reaches) or inside the image only.
//
// Entry points (workgroup size 256, no barriers, no atomics, grid split over x/y/z):
//   pool_max_forward    y[o] = max over the window's real taps          (one invocation per o)
//   pool_avg_forward    y[o] = Σ real taps / count(o)                   (one invocation per o)
//   pool_max_forward4, pool_avg_forward4: the same, four outputs of a row per invocation
//   pool_max_share      s[o] = g[o] / #(real taps equal to y[o])         (one invocation per o)
//   pool_max_backward   dx[i] = Σ over windows o reading i with x[i] == y[o] of s[o]
//   pool_avg_backward   dx[i] = Σ over windows o reading i of g[o] / count(o)
// The backward entries are gathers (one invocation per input element) walking the windows
// that cover it: ceil(span/stride) per axis. No integer division inside the loops (lavapipe
// scalarises them; dividing per tap made the gradients 7-10x slower than the forward).
// Every invocation loops at most max(kh, wh)·(max(kw, ww) + 1) times (wh, ww: windows over
// one position); the host refuses a window past gpu::LOOP_BUDGET (lavapipe silently stops
// an invocation after 65535 iterations).

struct Params {
    images: u32, h: u32, w: u32,       // x is (images, h, w)
    oh: u32, ow: u32,                  // output positions
    kh: u32, kw: u32,                  // window taps
    sh: u32, sw: u32,                  // strides (rows, columns)
    dh: u32, dw: u32,                  // dilations (rows, columns)
    pt: u32, pl: u32, pb: u32, pr: u32, // padding: top, left, bottom, right
    total: u32,                        // invocations that write: outputs or input elements
    include_pad: u32,                  // average: count the padding's taps
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;   // x (I, H, W); avg_backward: g (I, OH, OW)
@group(0) @binding(2) var<storage, read_write> b: array<f32>; // forward: y; avg_backward: dx; else y (read)
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // share: g; max_backward: s
@group(0) @binding(4) var<storage, read_write> d: array<f32>; // share: s; max_backward: dx

// t / dl through exact_div.wgsl's `div` (appended to this file by src/ops/pool.rs): in f32
// where every dividend is below 2^24, else (pipeline constant EXACT) exactly. Lavapipe
// scalarises integer division by a run-time value, and runs both sides of a branch on a
// uniform, so a shift for powers of two beside `t / dl` still paid the division: max pool's
// gradient at ResNet-50's size (8x64x112x112) took 144-176 ms for ~7 divisions per element.
fn div_by(t: u32, dl: u32) -> u32 {
    return div(t, dl);
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// How many of the k taps base + t·dl (t < k) lie in [lo, hi), in closed form (two
// divisions instead of a loop over the taps).
fn axis_count(base: u32, lo: u32, hi: u32, k: u32, dl: u32) -> u32 {
    if (base >= hi) { return 0u; }
    var first = 0u;
    if (base < lo) { first = div_by(lo - base + dl - 1u, dl); }
    let end = min(k, div_by(hi - 1u - base, dl) + 1u);
    if (end <= first) { return 0u; }
    return end - first;
}

// The taps of a window starting at padded position `base` that its divisor counts, along
// rows or columns.
fn axis_counts(base: u32, rows: bool) -> u32 {
    var len = params.w; var p0 = params.pl; var p1 = params.pr; var k = params.kw; var dl = params.dw;
    if (rows) { len = params.h; p0 = params.pt; p1 = params.pb; k = params.kh; dl = params.dh; }
    if (params.include_pad != 0u) { return axis_count(base, 0u, p0 + len + p1, k, dl); }
    return axis_count(base, p0, p0 + len, k, dl);
}

// The divisor of average window (oy, ox).
fn avg_count(oy: u32, ox: u32) -> f32 {
    return f32(axis_counts(oy * params.sh, true) * axis_counts(ox * params.sw, false));
}

// Output o as (image, oy, ox).
fn out_pos(o: u32) -> vec3<u32> {
    let row = div(o, params.ow);      // two divisions, not four
    let img = div(row, params.oh);
    return vec3<u32>(img, row - img * params.oh, o - row * params.ow);
}

// Input element i as (image, iy, ix).
fn in_pos(i: u32) -> vec3<u32> {
    let row = div(i, params.w);
    let img = div(row, params.h);
    return vec3<u32>(img, row - img * params.h, i - row * params.w);
}

// The maximum over the real taps of the window at p = (image, oy, ox) (-inf if it has none;
// the host refuses those).
fn window_max(p: vec3<u32>) -> f32 {
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    var m = -bitcast<f32>(0x7f800000u);
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w) {
                m = max(m, x_at(row + u32(ix)));
            }
        }
    }
    return m;
}

@compute @workgroup_size(256)
fn pool_max_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    b[o] = window_max(out_pos(o));
}

// The average of the window at p = (image, oy, ox).
fn window_avg(p: vec3<u32>) -> f32 {
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    var s = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w) {
                s = s + x_at(row + u32(ix));
            }
        }
    }
    return s / avg_count(p.y, p.z);
}

@compute @workgroup_size(256)
fn pool_avg_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    b[o] = window_avg(out_pos(o));
}

// The forward passes four outputs of one row at a time where OW % 4 = 0 (params.total counts
// quads): out_pos's two divisions by run-time sizes (lane by lane on lavapipe) are paid once
// per quad, and the quad is one vec4 store. ResNet-50's max pool (64x112x112 -> 56x56),
// per dispatch on lavapipe: 4.0 ms one output per invocation. window_max4 (the four windows in
// one pass over the taps), AVX-512 host, 6 alternated profile runs: min 4.76 -> 3.41 ms,
// median 6.3 -> 4.0 ms.
@group(0) @binding(2) var<storage, read_write> b4: array<vec4<f32>>; // forward4: y

// The maxima of the four windows at p, p + (0, 0, 1), .., p + (0, 0, 3), taken in one pass
// over the taps with the four columns side by side: the loops, the row checks and the column
// arithmetic are paid once for four outputs (window_max four times paid them four times).
fn window_max4(p: vec3<u32>) -> vec4<f32> {
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = vec4<i32>((vec4<u32>(p.z) + vec4<u32>(0u, 1u, 2u, 3u)) * params.sw) - vec4<i32>(i32(params.pl));
    let w = vec4<i32>(i32(params.w));
    var m = vec4<f32>(-bitcast<f32>(0x7f800000u));
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = vec4<u32>(plane + u32(iy) * params.w);
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + vec4<i32>(i32(kj * params.dw));
            let inside = (ix >= vec4<i32>(0)) & (ix < w);
            // Columns outside read the row's start; their values are dropped.
            let at = row + vec4<u32>(select(vec4<i32>(0), ix, inside));
            let v = vec4<f32>(x_at(at.x), x_at(at.y), x_at(at.z), x_at(at.w));
            m = select(m, max(m, v), inside);
        }
    }
    return m;
}

@compute @workgroup_size(256)
fn pool_max_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wg, nwg, lid);
    if (q >= params.total) { return; }
    b4[q] = window_max4(out_pos(4u * q));
}

// pool_max_forward4 where the windows are 3 columns wide at column stride 2, column dilation
// 1 and left padding 1 (ResNet's stem pool) over rows a multiple of 4 long: a quad's four
// windows span input columns 2·ox - 1 .. 2·ox + 7 (ox a multiple of 4), the last of one vec4
// and two whole vec4s of the input row, so a row of taps is three vec4 loads (x4_at) instead
// of twelve scalar ones. Vec4s outside the row read index 0 and count as -inf (W % 4 = 0: a
// vec4 lies wholly inside or outside).
@compute @workgroup_size(256)
fn pool_max_forward4_k3s2(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wg, nwg, lid);
    if (q >= params.total) { return; }
    let p = out_pos(4u * q);
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let c0 = 2u * p.z;  // the column after the quad's first window's first
    let none = vec4<f32>(-bitcast<f32>(0x7f800000u));
    let left = c0 > 0u;
    let mid = c0 < params.w;
    let right = c0 + 4u < params.w;
    var m = none;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let j = (plane + u32(iy) * params.w + c0) / 4u;
        let l = select(none, x4_at(select(0u, j - 1u, left)), left);
        let a = select(none, x4_at(select(0u, j, mid)), mid);
        let b = select(none, x4_at(select(0u, j + 1u, right)), right);
        m = max(m, vec4<f32>(max(l.w, max(a.x, a.y)), max(a.y, max(a.z, a.w)),
                             max(a.w, max(b.x, b.y)), max(b.y, max(b.z, b.w))));
    }
    b4[q] = m;
}

@compute @workgroup_size(256)
fn pool_avg_forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wg, nwg, lid);
    if (q >= params.total) { return; }
    let p = out_pos(4u * q);
    b4[q] = vec4<f32>(window_avg(p), window_avg(p + vec3<u32>(0u, 0u, 1u)),
                      window_avg(p + vec3<u32>(0u, 0u, 2u)), window_avg(p + vec3<u32>(0u, 0u, 3u)));
}

@compute @workgroup_size(256)
fn pool_max_share(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let o = linear_index(wg, nwg, lid);
    if (o >= params.total) { return; }
    let p = out_pos(o);
    let plane = p.x * params.h * params.w;
    let y0 = i32(p.y * params.sh) - i32(params.pt);
    let x0 = i32(p.z * params.sw) - i32(params.pl);
    let m = b[o];
    var ties = 0.0;
    for (var ki = 0u; ki < params.kh; ki = ki + 1u) {
        let iy = y0 + i32(ki * params.dh);
        if (iy < 0 || u32(iy) >= params.h) { continue; }
        let row = plane + u32(iy) * params.w;
        for (var kj = 0u; kj < params.kw; kj = kj + 1u) {
            let ix = x0 + i32(kj * params.dw);
            if (ix >= 0 && u32(ix) < params.w && a[row + u32(ix)] == m) {
                ties = ties + 1.0;
            }
        }
    }
    // The gradient is shared by the taps equal to the maximum (as the reduction's rule).
    d[o] = c[o] / ties;
}


// The windows [lo, hi) along one axis whose span covers padded position p: o·s <= p and
// p - o·s <= (k - 1)·d, o < outs. Two divisions per axis, none per window.
fn windows_over(p: u32, k: u32, s: u32, dl: u32, outs: u32) -> vec2<u32> {
    let reach = (k - 1u) * dl;
    var lo = 0u;
    if (p > reach) { lo = div_by(p - reach + s - 1u, s); }
    return vec2<u32>(lo, min(outs, div_by(p, s) + 1u));
}

// Whether window o's tap grid (stride dl from o·s) hits padded position p (p >= o·s).
fn on_tap(p: u32, start: u32, dl: u32) -> bool {
    return dl == 1u || (p - start) - div_by(p - start, dl) * dl == 0u;
}

// The gathers walk the windows (oy, ox) whose taps read input i = (image, iy, ix).
// Max: the sum of s[o] over the windows whose maximum equals x[i].
@compute @workgroup_size(256)
fn pool_max_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let q = in_pos(i);
    let out_plane = q.x * params.oh * params.ow;
    let iy = q.y;
    let ix = q.z;
    let xi = a[i];
    let py = iy + params.pt;
    let px = ix + params.pl;
    let ry = windows_over(py, params.kh, params.sh, params.dh, params.oh);
    let rx = windows_over(px, params.kw, params.sw, params.dw, params.ow);
    var sum = 0.0;
    for (var oy = ry.x; oy < ry.y; oy = oy + 1u) {
        if (!on_tap(py, oy * params.sh, params.dh)) { continue; }
        let row = out_plane + oy * params.ow;
        for (var ox = rx.x; ox < rx.y; ox = ox + 1u) {
            if (on_tap(px, ox * params.sw, params.dw) && xi == b[row + ox]) {
                sum = sum + c[row + ox];
            }
        }
    }
    d[i] = sum;
}

// Average: the sum of g[o] / count(o) over the windows reading x[i]; the count is rows(oy)
// times columns(ox), each worked out once per window row or column.
@compute @workgroup_size(256)
fn pool_avg_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.total) { return; }
    let q = in_pos(i);
    let out_plane = q.x * params.oh * params.ow;
    let iy = q.y;
    let ix = q.z;
    let py = iy + params.pt;
    let px = ix + params.pl;
    let ry = windows_over(py, params.kh, params.sh, params.dh, params.oh);
    let rx = windows_over(px, params.kw, params.sw, params.dw, params.ow);
    var sum = 0.0;
    for (var oy = ry.x; oy < ry.y; oy = oy + 1u) {
        if (!on_tap(py, oy * params.sh, params.dh)) { continue; }
        let row = out_plane + oy * params.ow;
        var part = 0.0;
        for (var ox = rx.x; ox < rx.y; ox = ox + 1u) {
            if (on_tap(px, ox * params.sw, params.dw)) {
                part = part + a[row + ox] / f32(axis_counts(ox * params.sw, false));
            }
        }
        sum = sum + part / f32(axis_counts(oy * params.sh, true));
    }
    b[i] = sum;
}

// ---- source reads: the forward entries' loads of x (window_max, window_avg), from the storage
// buffer `a`. A second module, pool.texture, has this block replaced by reads from an
// rgba32float texture (src/ops/texture_reads.rs says why and when).
fn x_at(i: u32) -> f32 {
    return a[i];
}

fn x4_at(j: u32) -> vec4<f32> {
    return vec4<f32>(a[4u * j], a[4u * j + 1u], a[4u * j + 2u], a[4u * j + 3u]);
}
// ---- end of source reads
