// reduce.wgsl — sum / mean / max / min / argmax along one axis of an f32 tensor.
//
// The input is viewed as (outer, r, inner) with the reduced axis in the middle. A pass
// reduces each line (o, j) of r elements to `parts` partials (outer, parts, inner); the host
// repeats passes until parts is 1. One output per invocation and no workgroup barriers: on
// lavapipe barrier trees run 1-2 GB/s, these walks ~9-10 GB/s.
//
// Which elements partial c reads: the line is cut into blocks of `block` elements and
// `lanes` consecutive partials share a block, interleaved (c = g·lanes + l reads k =
// g·block + l, + lanes, ... below the block's end). With inner = 1 the host uses 8 lanes
// on GPUs, so neighbouring invocations read neighbouring addresses (coalesced), and 2 on
// CPU adapters such as lavapipe, where each lane's loads are gathered one by one anyway and
// long runs per lane measured faster (11.5 GB/s against 7 GB/s with 8 lanes). With
// inner > 1 lanes = 1: neighbours are neighbouring columns already, and short blocks keep
// each strided walk on few memory pages. The host also keeps every walk far below the
// 65535 loop iterations after which Mesa 22.3's lavapipe silently ends an invocation.
//
// Entry points (workgroup size 256, grid split over x/y/z past 65535 workgroups; OP picks
// the op of the first two):
//   reduce_rows_vec4   rows (inner = 1, r % 4 == 0) read as vec4s
//   reduce_cols_vec4   four neighbouring columns (inner % 4 == 0) per invocation, as vec4s
//   reduce_forward     any layout, one float at a time
//   argmax_forward     first pass of argmax: (max, index) of each partial of x
//   argmax_partials    later passes: (max, index) over earlier (max, index) partials
// Sums are Kahan-compensated in every partial (a mean's last pass divides by
// params.divisor); max and min propagate NaN like NumPy.

override OP: u32 = 0u; // 0 sum (and mean), 1 max, 2 min

struct Params {
    outer: u32,   // product of the dimensions before the axis
    r: u32,       // length of the axis in this pass's input
    inner: u32,   // product of the dimensions after the axis
    lanes: u32,   // partials interleaved over one block: 1, 2, 4 or 8
    lane_bits: u32, // log2(lanes): lanes split off with a shift, not a division
    block: u32,   // elements of r per block (a multiple of lanes)
    parts: u32,   // partials per line: ceil(r / block) * lanes, at least 1
    n: u32,       // outer * parts * inner: outputs of this pass
    divisor: f32, // the output is acc / divisor (mean's last pass; 1 otherwise)
    one: f32,     // 1.0, unknown to the compiler: keeps it from folding Kahan's correction
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (outer, r, inner)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;      // (outer, parts, inner)
// argmax_forward: indices of the partial maxima (outer, parts, inner); values go to `out`.
@group(0) @binding(3) var<storage, read_write> idx_out3: array<i32>;
// argmax_partials: the previous pass's indices (outer, r, inner), then this pass's
// values and indices (outer, parts, inner).
@group(0) @binding(2) var<storage, read> idx_in: array<i32>;
@group(0) @binding(3) var<storage, read_write> vals_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx_out4: array<i32>;

fn is_nan(v: f32) -> bool {
    // Exponent all ones and a non-zero mantissa; robust against fast-math folding of v != v.
    let bits = bitcast<u32>(v);
    return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0u;
}

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

// The elements output i reads: k = start, start + lanes, ... < end, at x[base + k * inner].
struct Walk {
    base: u32,
    start: u32,
    end: u32,
}

fn walk(i: u32) -> Walk {
    let per_outer = params.parts * params.inner;
    let o = i / per_outer;
    let rem = i - o * per_outer;
    let c = rem / params.inner;
    let j = rem - c * params.inner;
    let first = (c >> params.lane_bits) * params.block;
    let end = min(first + params.block, params.r);
    return Walk(o * params.r * params.inner + j, first + (c & (params.lanes - 1u)), end);
}

// walk() for inner = 1 with one integer division instead of three (each is eight scalar
// divisions per SIMD vector on lavapipe).
fn walk_rows(i: u32) -> Walk {
    let o = i / params.parts;
    let c = i - o * params.parts;
    let first = (c >> params.lane_bits) * params.block;
    let end = min(first + params.block, params.r);
    return Walk(o * params.r, first + (c & (params.lanes - 1u)), end);
}

@compute @workgroup_size(256)
fn reduce_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    let step = params.lanes * params.inner;
    var acc = 0.0;
    if (OP == 0u) {
        // Kahan summation: c carries the low bits lost by each addition, so a partial's
        // error stays a few ulps instead of growing with its length. Without the runtime
        // factor 1, lavapipe's compiler rewrites (acc + y) - acc as y and c becomes 0.
        var c = 0.0;
        var a = w.base + w.start * params.inner;
        for (var k = w.start; k < w.end; k = k + params.lanes) {
            let y = x[a] - c;
            let t = acc + y;
            c = (t * params.one - acc) - y;
            acc = t;
            a = a + step;
        }
        // An infinity makes Kahan's correction inf - inf = NaN; only then (a NaN result is
        // rare) sum again plainly, which gives the IEEE inf, -inf or NaN.
        if (is_nan(acc)) {
            acc = 0.0;
            a = w.base + w.start * params.inner;
            for (var k = w.start; k < w.end; k = k + params.lanes) {
                acc = acc + x[a];
                a = a + step;
            }
        }
    } else {
        // NaN propagates like NumPy: remembered apart, since max/min of NaN are unspecified.
        var nan_seen = false;
        acc = select(bitcast<f32>(0x7f800000u), bitcast<f32>(0xff800000u), OP == 1u);
        var a = w.base + w.start * params.inner;
        for (var k = w.start; k < w.end; k = k + params.lanes) {
            let v = x[a];
            nan_seen = nan_seen || is_nan(v);
            acc = select(min(acc, v), max(acc, v), OP == 1u);
            a = a + step;
        }
        if (nan_seen) { acc = bitcast<f32>(0x7fc00000u); }
    }
    out[i] = acc / params.divisor;
}

// The running argmax of a partial. An empty partial stays (-inf, i32 max) and loses to
// any element, -inf included.
struct Best {
    v: f32,
    i: i32,
    nan: bool,
}

// NumPy's rule as a total order, so partials can be merged in any grouping: a NaN beats
// every number, a larger value beats a smaller, and between equals the lower index wins.
fn better(b: Best, v: f32, i: i32) -> Best {
    let v_nan = is_nan(v);
    let take = select(v_nan || v > b.v || (v == b.v && i < b.i), v_nan && i < b.i, b.nan);
    return Best(select(b.v, v, take), select(b.i, i, take), b.nan || v_nan);
}

@compute @workgroup_size(256)
fn argmax_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    var b = Best(bitcast<f32>(0xff800000u), 0x7fffffff, false);
    var a = w.base + w.start * params.inner;
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        b = better(b, x[a], i32(k));
        a = a + params.lanes * params.inner;
    }
    out[i] = b.v;
    idx_out3[i] = b.i;
}

@compute @workgroup_size(256)
fn argmax_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    var b = Best(bitcast<f32>(0xff800000u), 0x7fffffff, false);
    var a = w.base + w.start * params.inner;
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        b = better(b, x[a], idx_in[a]);
        a = a + params.lanes * params.inner;
    }
    vals_out[i] = b.v;
    idx_out4[i] = b.i;
}

// ---- vec4 kernels: lavapipe turns every per-invocation load into a gather (one lane at a
// time), so reading a vec4 per lane moves four times the data per gather. Both unroll four
// loads per step: more loads in flight, and the Kahan chain runs once per 16 elements.

@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;        // input, 4 floats each
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>; // reduce_cols_vec4 output

// A Kahan accumulator of four independent sums: the total is acc - c.
struct K4 {
    acc: vec4<f32>,
    c: vec4<f32>,
}

// One Kahan step on (sum, correction).
fn kahan1(k: vec2<f32>, v: f32) -> vec2<f32> {
    let y = v - k.y;
    let t = k.x + y;
    return vec2<f32>(t, (t * params.one - k.x) - y);
}

fn kahan4(k: K4, v: vec4<f32>) -> K4 {
    let y = v - k.c;
    let t = k.acc + y;
    return K4(t, (t * params.one - k.acc) - y);
}

// Max or min of a and b by OP; NaN is tracked apart (see nan_bits).
fn pick4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return select(min(a, b), max(a, b), OP == 1u);
}

// |v| as bits: above 0x7f800000 exactly when v is NaN. Its running max flags a NaN with one
// integer max per vec4, where WGSL's float max/min leave NaN unspecified.
fn nan_bits(v: vec4<f32>) -> vec4<u32> {
    return bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu);
}

fn identity4() -> vec4<f32> {
    return vec4<f32>(select(bitcast<f32>(0x7f800000u), bitcast<f32>(0xff800000u), OP == 1u));
}

fn nan_or(v: vec4<f32>, bits: vec4<u32>) -> vec4<f32> {
    return select(v, vec4<f32>(bitcast<f32>(0x7fc00000u)), bits > vec4<u32>(0x7f800000u));
}

// Rows: inner = 1, r a multiple of 4; params count r, block and lanes in vec4s. Each output
// is a scalar partial, the compensated total of its vec4 lanes.
@compute @workgroup_size(256)
fn reduce_rows_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk_rows(i);
    let l = params.lanes;
    var k = w.start;
    if (OP == 0u) {
        var s = K4(vec4<f32>(0.0), vec4<f32>(0.0));
        for (; k + 3u * l < w.end; k = k + 4u * l) {
            let b = w.base + k;
            // Pairwise pre-adds: their rounding is relative to 4 terms, not the running total.
            s = kahan4(s, (x4[b] + x4[b + l]) + (x4[b + 2u * l] + x4[b + 3u * l]));
        }
        for (; k < w.end; k = k + l) {
            s = kahan4(s, x4[w.base + k]);
        }
        // acc - c as one number: the eight terms summed compensated, straight-line.
        var h = vec2<f32>(0.0);
        h = kahan1(kahan1(kahan1(kahan1(h, s.acc.x), s.acc.y), s.acc.z), s.acc.w);
        h = kahan1(kahan1(kahan1(kahan1(h, -s.c.x), -s.c.y), -s.c.z), -s.c.w);
        var t = h.x - h.y;
        if (is_nan(t)) { t = sum_plain(w.base, w.start, w.end); }
        out[i] = t / params.divisor;
    } else {
        var m = identity4();
        var bits = vec4<u32>(0u);
        for (; k + 3u * l < w.end; k = k + 4u * l) {
            let b = w.base + k;
            let v0 = x4[b];
            let v1 = x4[b + l];
            let v2 = x4[b + 2u * l];
            let v3 = x4[b + 3u * l];
            m = pick4(m, pick4(pick4(v0, v1), pick4(v2, v3)));
            bits = max(bits, max(max(nan_bits(v0), nan_bits(v1)), max(nan_bits(v2), nan_bits(v3))));
        }
        for (; k < w.end; k = k + l) {
            m = pick4(m, x4[w.base + k]);
            bits = max(bits, nan_bits(x4[w.base + k]));
        }
        let p = pick4(m, m.yxwz);
        let q = pick4(p, p.zwxy);
        // Any NaN lane makes the result NaN.
        out[i] = select(q.x, bitcast<f32>(0x7fc00000u), any(bits > vec4<u32>(0x7f800000u)));
    }
}

// Plain sum of a rows_vec4 walk (in vec4s from vec4 index start), for the rare NaN total:
// an infinity breaks Kahan's correction, and the plain sum gives the IEEE inf, -inf or NaN.
fn sum_plain(base: u32, start: u32, end: u32) -> f32 {
    var acc = vec4<f32>(0.0);
    for (var k = start; k < end; k = k + params.lanes) {
        acc = acc + x4[base + k];
    }
    return (acc.x + acc.y) + (acc.z + acc.w);
}

// Columns: inner a multiple of 4; params.inner counts vec4s of columns, lanes = 1. Each
// invocation reduces four neighbouring columns and writes them as one vec4 partial.
@compute @workgroup_size(256)
fn reduce_cols_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    let st = params.inner;
    var a = w.base + w.start * st;
    let stop = w.base + w.end * st;
    if (OP == 0u) {
        var s = K4(vec4<f32>(0.0), vec4<f32>(0.0));
        for (; a + 3u * st < stop; a = a + 4u * st) {
            s = kahan4(s, (x4[a] + x4[a + st]) + (x4[a + 2u * st] + x4[a + 3u * st]));
        }
        for (; a < stop; a = a + st) {
            s = kahan4(s, x4[a]);
        }
        var total = s.acc - s.c;
        // Infinities break the correction (inf - inf); sum those columns again plainly.
        if (any(nan_bits(total) > vec4<u32>(0x7f800000u))) {
            var plain = vec4<f32>(0.0);
            for (var b = w.base + w.start * st; b < stop; b = b + st) {
                plain = plain + x4[b];
            }
            total = plain;
        }
        out4[i] = total / params.divisor;
    } else {
        var m = identity4();
        var bits = vec4<u32>(0u);
        for (; a + 3u * st < stop; a = a + 4u * st) {
            let v0 = x4[a];
            let v1 = x4[a + st];
            let v2 = x4[a + 2u * st];
            let v3 = x4[a + 3u * st];
            m = pick4(m, pick4(pick4(v0, v1), pick4(v2, v3)));
            bits = max(bits, max(max(nan_bits(v0), nan_bits(v1)), max(nan_bits(v2), nan_bits(v3))));
        }
        for (; a < stop; a = a + st) {
            m = pick4(m, x4[a]);
            bits = max(bits, nan_bits(x4[a]));
        }
        out4[i] = nan_or(m, bits);
    }
}
