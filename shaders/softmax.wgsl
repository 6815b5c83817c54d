// softmax.wgsl — softmax and log-softmax along one axis of an f32 tensor.
//
// The input is viewed as (outer, r, inner) with the softmax axis in the middle; a "line" is
// the r elements of one (o, j), at stride inner. Stable: every exponent is taken relative
// to the line maximum, found together with the sum by the online rule
//   m' = max(m, v),  s' = s·e^(m - m') + e^(v - m')
// which needs one exp per element (one of the two factors is e^0) and one read of the line.
// Special values: a -inf element adds nothing (log-softmax gives -inf there); a line that is
// all -inf (s = 0), holds a NaN (s = NaN) or holds a +inf (e^(inf - inf) = NaN, so s = NaN)
// gives NaN everywhere, like PyTorch and the CPU reference.
//
// Entry points (workgroup size 64, so a few hundred lines still spread over several
// workgroups and cores; grid split over x/y/z past 65535 workgroups; override LOG picks
// 0 softmax, 1 log-softmax). No barriers anywhere: on lavapipe they cost more than they save.
// The vec4 entries exist because lavapipe gathers every per-invocation load lane by lane,
// so a vec4 load moves four times the data per gather.
//   softmax_forward             one line per invocation: online (max, sum), then the outputs
//   softmax_rows_vec4           the same for rows (inner = 1, r % 4 == 0), as vec4s
//   softmax_cols_vec4           four neighbouring lines (inner % 4 == 0) per invocation
// Few or very long lines are split into parts (blocks with interleaved lanes, as in
// reduce.wgsl), which also keeps every invocation under lavapipe's loop limit:
//   softmax_partials            pass 1: (max, sum) of each part
//   softmax_rows_partials_vec4  pass 1 for rows as vec4s
//   softmax_merge               pass 2: the parts of one line merged, per invocation
//   softmax_write_split         pass 3: the outputs of one part
//   softmax_rows_write_vec4     pass 3 for rows as vec4s

override LOG: u32 = 0u;

struct Params {
    outer: u32, // product of the dimensions before the axis
    r: u32,     // length of the axis (in vec4s for the rows_vec4 entries)
    inner: u32, // product of the dimensions after the axis (in vec4s for softmax_cols_vec4)
    lanes: u32, // split variant: parts interleaved over one block (1 otherwise)
    lane_bits: u32, // log2(lanes)
    block: u32, // split variant: elements per block (r otherwise)
    parts: u32, // split variant: parts per line (1 otherwise)
    n: u32,     // invocations: outer * parts * inner
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;                  // (outer, r, inner)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;            // (outer, r, inner)
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;           // vec4 entries: x
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;     // vec4 entries: y
// softmax_partials: (max, sum) of each part, (outer, parts, inner).
@group(0) @binding(2) var<storage, read_write> stats_out: array<vec2<f32>>;
// softmax_merge: those part statistics in, line statistics (outer, inner) out.
@group(0) @binding(1) var<storage, read> part_stats: array<vec2<f32>>;
// softmax_write_split: the line statistics (outer, inner), then the output.
@group(0) @binding(2) var<storage, read> line_stats: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> y3: array<f32>;           // (outer, r, inner)
@group(0) @binding(3) var<storage, read_write> y4_3: array<vec4<f32>>;   // rows as vec4s

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn pos_inf() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// The elements invocation i handles: k = start, start + lanes, ... < end of its line, at
// x[base + k * inner]; `line` = o * inner + j numbers the line. Parts interleave over
// blocks as in reduce.wgsl.
struct Walk {
    base: u32,
    start: u32,
    end: u32,
    line: u32,
}

fn walk(i: u32) -> Walk {
    let per_outer = params.parts * params.inner;
    let o = i / per_outer;
    let rem = i - o * per_outer;
    let c = rem / params.inner;
    let j = rem - c * params.inner;
    let first = (c >> params.lane_bits) * params.block;
    let end = min(first + params.block, params.r);
    let start = first + (c & (params.lanes - 1u));
    return Walk(o * params.r * params.inner + j, start, end, o * params.inner + j);
}

// Online statistics (max m, sum s of e^(v - m)) of one line, or of four lines as vec4.
struct Stats {
    m: f32,
    s: f32,
}

struct Stats4 {
    m: vec4<f32>,
    s: vec4<f32>,
}

fn online(st: Stats, v: f32) -> Stats {
    // e^(-|v - m|) is whichever factor is not e^0. A -inf element adds nothing (and must
    // not form -inf - -inf = NaN); a NaN turns s into NaN for good.
    // A +inf element makes s NaN for good: its own term is e^(inf - inf).
    let e = select(exp(-abs(v - st.m)), 0.0, v == neg_inf());
    let s = select(st.s + e, st.s * e + 1.0, v > st.m);
    return Stats(max(st.m, v), select(s, nan(), v == pos_inf()));
}

fn online4(st: Stats4, v: vec4<f32>) -> Stats4 {
    let e = select(exp(-abs(v - st.m)), vec4<f32>(0.0), v == vec4<f32>(neg_inf()));
    let s = select(st.s + e, st.s * e + 1.0, v > st.m);
    return Stats4(max(st.m, v), select(s, vec4<f32>(nan()), v == vec4<f32>(pos_inf())));
}

// Statistics of two disjoint pieces of a line. A piece with s = 0 is all -inf and adds
// nothing (its e would be e^(-inf + inf) = NaN).
fn merge(a: Stats, b: Stats) -> Stats {
    let e = select(exp(-abs(a.m - b.m)), 0.0, a.s == 0.0 || b.s == 0.0);
    return Stats(max(a.m, b.m), select(a.s + b.s * e, a.s * e + b.s, b.m > a.m));
}

fn start4() -> Stats4 {
    return Stats4(vec4<f32>(neg_inf()), vec4<f32>(0.0));
}

// The output for input v of a line with statistics (m, s): e^(v - m) / s or v - m - log s.
fn out1(v: f32, m: f32, inv_s: f32, log_s: f32) -> f32 {
    if (LOG == 1u) {
        return (v - m) - log_s;
    }
    return exp(v - m) * inv_s;
}

fn out4(v: vec4<f32>, m: vec4<f32>, inv_s: vec4<f32>, log_s: vec4<f32>) -> vec4<f32> {
    if (LOG == 1u) {
        return (v - m) - log_s;
    }
    return exp(v - m) * inv_s;
}

@compute @workgroup_size(64)
fn softmax_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    let stop = w.base + w.end * params.inner;
    var st = Stats(neg_inf(), 0.0);
    for (var a = w.base; a < stop; a = a + params.inner) {
        st = online(st, x[a]);
    }
    let inv = 1.0 / st.s;
    let log_s = log(st.s);
    for (var a = w.base; a < stop; a = a + params.inner) {
        y[a] = out1(x[a], st.m, inv, log_s);
    }
}

@compute @workgroup_size(64)
fn softmax_rows_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let base = i * params.r;
    var st4 = start4();
    for (var a = base; a < base + params.r; a = a + 1u) {
        st4 = online4(st4, x4[a]);
    }
    // The four components saw interleaved quarters of the row: merge them.
    let st = merge(merge(Stats(st4.m.x, st4.s.x), Stats(st4.m.y, st4.s.y)),
                   merge(Stats(st4.m.z, st4.s.z), Stats(st4.m.w, st4.s.w)));
    let m = vec4<f32>(st.m);
    let inv = vec4<f32>(1.0 / st.s);
    let log_s = vec4<f32>(log(st.s));
    for (var a = base; a < base + params.r; a = a + 1u) {
        y4[a] = out4(x4[a], m, inv, log_s);
    }
}

@compute @workgroup_size(64)
fn softmax_cols_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let o = i / params.inner;
    let base = o * params.r * params.inner + (i - o * params.inner);
    let stop = base + params.r * params.inner;
    var st = start4();
    for (var a = base; a < stop; a = a + params.inner) {
        st = online4(st, x4[a]);
    }
    let inv = 1.0 / st.s;
    let log_s = log(st.s);
    for (var a = base; a < stop; a = a + params.inner) {
        y4[a] = out4(x4[a], st.m, inv, log_s);
    }
}

@compute @workgroup_size(64)
fn softmax_partials(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    var st = Stats(neg_inf(), 0.0);
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        st = online(st, x[w.base + k * params.inner]);
    }
    stats_out[i] = vec2<f32>(st.m, st.s);
}

@compute @workgroup_size(64)
fn softmax_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.outer * params.inner) { return; }
    let o = i / params.inner;
    let first = o * params.parts * params.inner + (i - o * params.inner);
    var st = Stats(neg_inf(), 0.0);
    for (var c = 0u; c < params.parts; c = c + 1u) {
        let p = part_stats[first + c * params.inner];
        st = merge(st, Stats(p.x, p.y));
    }
    stats_out[i] = vec2<f32>(st.m, st.s);
}

@compute @workgroup_size(64)
fn softmax_write_split(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    let st = line_stats[w.line];
    let inv = 1.0 / st.y;
    let log_s = log(st.y);
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        let a = w.base + k * params.inner;
        y3[a] = out1(x[a], st.x, inv, log_s);
    }
}

// Rows split into parts, as vec4s (inner = 1, r % 4 == 0; params count vec4s).
@compute @workgroup_size(64)
fn softmax_rows_partials_vec4(@builtin(workgroup_id) wg: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    var st4 = start4();
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        st4 = online4(st4, x4[w.base + k]);
    }
    let st = merge(merge(Stats(st4.m.x, st4.s.x), Stats(st4.m.y, st4.s.y)),
                   merge(Stats(st4.m.z, st4.s.z), Stats(st4.m.w, st4.s.w)));
    stats_out[i] = vec2<f32>(st.m, st.s);
}

@compute @workgroup_size(64)
fn softmax_rows_write_vec4(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let w = walk(i);
    let st = line_stats[w.line];
    let m = vec4<f32>(st.x);
    let inv = vec4<f32>(1.0 / st.y);
    let log_s = vec4<f32>(log(st.y));
    for (var k = w.start; k < w.end; k = k + params.lanes) {
        let a = w.base + k;
        y4_3[a] = out4(x4[a], m, inv, log_s);
    }
}
