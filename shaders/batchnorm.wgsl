// batchnorm.wgsl — batch normalisation in training mode: per-channel statistics over N·H·W,
// the normalisation, the running-statistics update and the fused backward.
// Not a module on its own: dropout_hash.wgsl is appended to it (batch_norm_apply_dropout4).
//
// x, y, g, dx are (N, C, HW) (HW = 1 for (N, C)); channel ch's M = N·HW values sit at
// (n·C + ch)·HW + i. stats is (3, C): mean, biased variance, 1/√(var + eps); sums is (2, C):
// Σg and Σg·x̂ with x̂ = (x − mean)·inv_std.
//
// Lavapipe runs 8 invocations as one SIMD group; a load at a per-lane address is a gather
// done lane by lane, barriers are dear and integer division by a run-time value is
// scalarised. So the reductions are one invocation per (channel, part of plen values) with
// no workgroup memory and no barriers, walking the channel's runs of HW values image by
// image (one division per invocation), and the `…4` entries (HW % 4 = 0) load a vec4 per
// step: four values per gather. The digits CNN's statistics (C = 16, M = 4096) went from
// 64-invocation workgroups with barrier trees (0.81 ms) to this.
//
// Entry points (no atomics; grid split over x/y/z):
//   batch_norm_stats[4]     one invocation per (channel, part): two passes, the part's mean,
//                           then Σ(x − mean)² (no E[x²] − E[x]² cancellation); writes stats
//                           when parts = 1, else partials (C, parts, 2): mean, M2
//   batch_norm_stats_merge  one invocation per channel: Chan's merge of the parts → stats
//   batch_norm_apply[4]     y = (x − mean)·(γ·inv_std) + β, then max(y, 0) when params.relu
//                           (`run` elements, or vec4s, of one channel per invocation)
//   batch_norm_running      new (2, C) = keep·(mean, var) + (take_mean·mean, take_var·var)
//                           of the batch                                   (one per channel)
//   batch_norm_stats_running[4]  batch_norm_stats[4] and batch_norm_running in one, when every
//                           channel is one part
//   batch_norm_apply_dropout4  batch_norm_apply4, then dropout.wgsl's dropout of y, in one
//   batch_norm_grad_sums[4] one invocation per (channel, part): Σg, Σg·x̂; writes sums when
//                           parts = 1, else partials (C, parts, 2)
//   batch_norm_sums_merge   one invocation per channel: the parts' sums → sums
//   batch_norm_grad_x[4]    dx = γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M)    (`run` per invocation)
// With params.relu the grad entries count g only where the forward output z > 0 (the host
// binds x in z's place otherwise). Loops per invocation: stats ≤ 2·(plen/step + plen/HW + 2),
// grad sums half that, merges `parts`; the host keeps each within gpu::LOOP_BUDGET
// (lavapipe silently stops an invocation after 65535).

struct Params {
    c: u32, hw: u32, m: u32, total: u32,    // channels, H·W, N·H·W, elements N·C·H·W
    parts: u32, plen: u32, eps: f32, keep: f32, // parts per channel, values per part; running: 1 − momentum
    take_mean: f32, take_var: f32, relu: u32, run: u32, // running: momentum, momentum·n/(n − 1); ReLU;
                                                        // element-wise entries: elements (or vec4s) per invocation
    channels_first: u32,                    // grad_x: store dx as (C, N, HW) (see grad_x_at)
    grad_drop: u32,                         // grad entries: g came through a dropout (drop_*)
    pad1: u32, pad2: u32,
    drop_seed_lo: u32, drop_seed_hi: u32,   // apply_dropout4: dropout.wgsl's seed, threshold
    drop_threshold: u32, drop_scale: f32,   // and scale
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;       // x; merges: partials; running: stats; grads: g
@group(0) @binding(2) var<storage, read_write> b: array<f32>; // stats: out; apply: stats; running: mean; grads: x
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // apply: γ; running: var; grads: stats
@group(0) @binding(4) var<storage, read_write> d: array<f32>; // apply: β; running, grad_sums: out; grad_x: γ
@group(0) @binding(5) var<storage, read_write> e: array<f32>; // apply: y; grad_x: sums; grad_sums: z
@group(0) @binding(6) var<storage, read_write> f: array<f32>; // grad_x: dx
// Read-only views for the grad entries: x, and z (the forward output) at 5 (sums) or 7 (dx).
// Read-only, because without a ReLU the host binds x in z's place (two writable bindings of
// one buffer would be refused).
@group(0) @binding(2) var<storage, read> xr: array<f32>;
@group(0) @binding(5) var<storage, read> zr5: array<f32>;
@group(0) @binding(7) var<storage, read> zr7: array<f32>;

// The same bindings seen as vec4s by the `…4` entries.
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;        // x; grads: g
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;        // grads: x
@group(0) @binding(5) var<storage, read_write> y4: array<vec4<f32>>;  // apply: y
@group(0) @binding(5) var<storage, read> zs4: array<vec4<f32>>;       // grad_sums: z
@group(0) @binding(6) var<storage, read_write> dx4: array<vec4<f32>>; // grad_x: dx
@group(0) @binding(7) var<storage, read> zx4: array<vec4<f32>>;       // grad_x: z

// t / d as a shift when d is a power of two (lavapipe scalarises integer division).
fn div_by(t: u32, dl: u32) -> u32 {
    if ((dl & (dl - 1u)) == 0u) { return t >> countTrailingZeros(dl); }
    return t / dl;
}

fn linear(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * size + lid;
}

// The channel of element o of (N, C, HW).
fn channel_of(o: u32) -> u32 {
    let q = div_by(o, params.hw);
    return q - div_by(q, params.c) * params.c;
}

// The values part `part` of a channel covers: [start, end).
fn part_range(part: u32) -> vec2<u32> {
    let start = part * params.plen;
    return vec2<u32>(start, min(start + params.plen, params.m));
}

// A reduction slot: (channel, its range of values), or ch = 0xffffffff past the last slot.
struct Slot { ch: u32, r: vec2<u32>, }

fn slot_of(slot: u32) -> Slot {
    if (slot >= params.c * params.parts) { return Slot(0xffffffffu, vec2<u32>(0u)); }
    let ch = div_by(slot, params.parts);
    return Slot(ch, part_range(slot - ch * params.parts));
}

// A walk over a channel's values [r.x, r.y): its runs inside successive images.
struct Walk { n: u32, i: u32, e: u32, }

fn walk_start(r: vec2<u32>) -> Walk {
    let n = div_by(r.x, params.hw);
    return Walk(n, r.x - n * params.hw, r.x);
}

// The current run's first element and length.
fn run_at(w: Walk, ch: u32, end: u32) -> vec2<u32> {
    return vec2<u32>((w.n * params.c + ch) * params.hw + w.i, min(params.hw - w.i, end - w.e));
}

fn walk_next(w: Walk, len: u32) -> Walk {
    return Walk(w.n + 1u, 0u, w.e + len);
}

fn write_stats(ch: u32, mean: f32, v: f32) {
    b[ch] = mean;
    b[params.c + ch] = v;
    b[2u * params.c + ch] = 1.0 / sqrt(v + params.eps);
}

// A slot's (mean, M2) of `count` values: the stats when parts = 1, else its partials (into b).
fn write_moments(slot: u32, ch: u32, p: vec2<f32>, count: f32) {
    if (params.parts == 1u) {
        write_stats(ch, p.x, p.y / count);
    } else {
        b[2u * slot] = p.x;
        b[2u * slot + 1u] = p.y;
    }
}

// A slot's (Σg, Σg·x̂): the sums when parts = 1, else its partials (into d).
fn write_sums(slot: u32, ch: u32, p: vec2<f32>) {
    if (params.parts == 1u) {
        d[ch] = p.x;
        d[params.c + ch] = p.y;
    } else {
        d[2u * slot] = p.x;
        d[2u * slot + 1u] = p.y;
    }
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// (Σ(x − shift), Σ(x − shift)²) over a slot's values, scalar loads.
fn shifted_sums(s: Slot, shift: f32) -> vec2<f32> {
    var s1 = 0.0;
    var s2 = 0.0;
    var w = walk_start(s.r);
    loop {
        if (w.e >= s.r.y) { break; }
        let run = run_at(w, s.ch, s.r.y);
        for (var j = run.x; j < run.x + run.y; j = j + 1u) {
            let dv = a[j] - shift;
            s1 = s1 + dv;
            s2 = s2 + dv * dv;
        }
        w = walk_next(w, run.y);
    }
    return vec2<f32>(s1, s2);
}

// The same with vec4 loads (HW and plen multiples of 4).
fn shifted_sums4(s: Slot, shift: f32) -> vec2<f32> {
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    var w = walk_start(s.r);
    loop {
        if (w.e >= s.r.y) { break; }
        let run = run_at(w, s.ch, s.r.y) >> vec2<u32>(2u);
        for (var j = run.x; j < run.x + run.y; j = j + 1u) {
            let dv = a4_at(j) - shift;
            s1 = s1 + dv;
            s2 = s2 + dv * dv;
        }
        w = walk_next(w, run.y << 2u);
    }
    return vec2<f32>(hsum(s1), hsum(s2));
}

@compute @workgroup_size(8)
fn batch_norm_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let slot = linear(wg, nwg, lid, 8u);
    let s = slot_of(slot);
    if (s.ch == 0xffffffffu) { return; }
    let count = f32(s.r.y - s.r.x);
    let mean = shifted_sums(s, 0.0).x / count;
    write_moments(slot, s.ch, vec2<f32>(mean, shifted_sums(s, mean).y), count);
}

@compute @workgroup_size(8)
fn batch_norm_stats4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let slot = linear(wg, nwg, lid, 8u);
    let s = slot_of(slot);
    if (s.ch == 0xffffffffu) { return; }
    let count = f32(s.r.y - s.r.x);
    let mean = shifted_sums4(s, 0.0).x / count;
    write_moments(slot, s.ch, vec2<f32>(mean, shifted_sums4(s, mean).y), count);
}

// batch_norm_stats(4) with the running statistics' update (batch_norm_running) in the same
// dispatch, for a channel of one part: a = x, b = stats, c = running mean, d = the updated
// (2, C), e = running variance. The same f32 operations on the same stored mean and variance.
fn write_stats_running(ch: u32, mean: f32, v: f32) {
    write_stats(ch, mean, v);
    d[ch] = c[ch] * params.keep + mean * params.take_mean;
    d[params.c + ch] = e[ch] * params.keep + v * params.take_var;
}

@compute @workgroup_size(8)
fn batch_norm_stats_running(@builtin(workgroup_id) wg: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let s = slot_of(linear(wg, nwg, lid, 8u));
    if (s.ch == 0xffffffffu) { return; }
    let count = f32(s.r.y - s.r.x);
    let mean = shifted_sums(s, 0.0).x / count;
    write_stats_running(s.ch, mean, shifted_sums(s, mean).y / count);
}

@compute @workgroup_size(8)
fn batch_norm_stats_running4(@builtin(workgroup_id) wg: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let s = slot_of(linear(wg, nwg, lid, 8u));
    if (s.ch == 0xffffffffu) { return; }
    let count = f32(s.r.y - s.r.x);
    let mean = shifted_sums4(s, 0.0).x / count;
    write_stats_running(s.ch, mean, shifted_sums4(s, mean).y / count);
}

@compute @workgroup_size(64)
fn batch_norm_stats_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let ch = linear(wg, nwg, lid, 64u);
    if (ch >= params.c) { return; }
    // Chan et al.: merging (n, mean, M2) pairs keeps the two-pass accuracy.
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var p = 0u; p < params.parts; p = p + 1u) {
        let r = part_range(p);
        let cnt = f32(r.y - r.x);
        let at_p = 2u * (ch * params.parts + p);
        let tot = n + cnt;
        let dv = a[at_p] - mean;
        mean = mean + dv * (cnt / tot);
        m2 = m2 + a[at_p + 1u] + dv * dv * (n * (cnt / tot));
        n = tot;
    }
    write_stats(ch, mean, m2 / n);
}

@compute @workgroup_size(64)
fn batch_norm_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let first = linear(wg, nwg, lid, 64u) * params.run;
    if (first >= params.total) { return; }
    let ch = channel_of(first); // a run never straddles two channels (HW % run = 0)
    let mean = b[ch];
    let s = c[ch] * b[2u * params.c + ch];
    let beta = d[ch];
    for (var o = first; o < first + params.run; o = o + 1u) {
        let y = (a[o] - mean) * s + beta;
        if (params.relu == 1u) { e[o] = max(y, 0.0); } else { e[o] = y; }
    }
}

// `run` vec4s (4·run values of one channel) per invocation.
@compute @workgroup_size(64)
fn batch_norm_apply4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let first = linear(wg, nwg, lid, 64u) * params.run;
    if (first * 4u >= params.total) { return; }
    let ch = channel_of(first * 4u);
    let mean = b[ch];
    let s = c[ch] * b[2u * params.c + ch];
    let beta = d[ch];
    for (var o = first; o < first + params.run; o = o + 1u) {
        let y = (a4_at(o) - mean) * s + beta;
        if (params.relu == 1u) { y4[o] = max(y, vec4<f32>(0.0)); } else { y4[o] = y; }
    }
}

// batch_norm_apply4 (its y at binding 5) and then dropout_forward4 of y (binding 6) at the
// step in binding 7, in one pass: the same f32 operations, the same mask (dropout_hash.wgsl).
@group(0) @binding(6) var<storage, read_write> dropped4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> drop_step: array<f32>;

@compute @workgroup_size(64)
fn batch_norm_apply_dropout4(@builtin(workgroup_id) wg: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let first = linear(wg, nwg, lid, 64u) * params.run;
    if (first * 4u >= params.total) { return; }
    let ch = channel_of(first * 4u);
    let mean = b[ch];
    let s = c[ch] * b[2u * params.c + ch];
    let beta = d[ch];
    let key = dropout_key(params.drop_seed_lo, params.drop_seed_hi, drop_step[0]);
    for (var o = first; o < first + params.run; o = o + 1u) {
        var y = (a4_at(o) - mean) * s + beta;
        if (params.relu == 1u) { y = max(y, vec4<f32>(0.0)); }
        y4[o] = y;
        let keep = dropout_keep4(4u * o, key, params.drop_threshold);
        dropped4[o] = select(vec4<f32>(0.0), y * params.drop_scale, keep);
    }
}

@compute @workgroup_size(64)
fn batch_norm_running(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let ch = linear(wg, nwg, lid, 64u);
    if (ch >= params.c) { return; }
    d[ch] = b[ch] * params.keep + a[ch] * params.take_mean;
    d[params.c + ch] = c[ch] * params.keep + a[params.c + ch] * params.take_var;
}

// With params.grad_drop the upstream g came through a dropout (the backward of a dropout of
// this normalisation's output, seen through reshapes): the grad entries apply its mask and
// scale as they read g, dropout.wgsl's same f32 operations on the same draw
// (dropout_hash.wgsl), instead of a dispatch of its own before them. The step is bound at
// the first binding after the entry's own (the host binds x there without a dropout).
@group(0) @binding(6) var<storage, read> sums_step: array<f32>;    // grad_sums: the step
@group(0) @binding(8) var<storage, read> grad_x_step: array<f32>;  // grad_x: the step

fn grad_drop_key(step: f32) -> u32 {
    if (params.grad_drop == 0u) { return 0u; }
    return dropout_key(params.drop_seed_lo, params.drop_seed_hi, step);
}

// Element i of g as the dropout left it (params.grad_drop), else g.
fn grad_dropped(g: f32, i: u32, key: u32) -> f32 {
    if (params.grad_drop == 0u) { return g; }
    let keep = pcg_hash(pcg_hash(i) ^ key) >= params.drop_threshold;
    return select(0.0, g * params.drop_scale, keep);
}

fn grad_dropped4(g: vec4<f32>, first: u32, key: u32) -> vec4<f32> {
    if (params.grad_drop == 0u) { return g; }
    return select(vec4<f32>(0.0), g * params.drop_scale,
                  dropout_keep4(first, key, params.drop_threshold));
}

@compute @workgroup_size(8)
fn batch_norm_grad_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let slot = linear(wg, nwg, lid, 8u);
    let s = slot_of(slot);
    if (s.ch == 0xffffffffu) { return; }
    let mean = c[s.ch];
    var sg = 0.0;
    var sgx = 0.0;
    let key = grad_drop_key(sums_step[0]);
    var w = walk_start(s.r);
    loop {
        if (w.e >= s.r.y) { break; }
        let run = run_at(w, s.ch, s.r.y);
        for (var k = run.x; k < run.x + run.y; k = k + 1u) {
            var gv = grad_dropped(a[k], k, key);
            if (params.relu == 1u && !(zr5[k] > 0.0)) { gv = 0.0; }
            sg = sg + gv;
            sgx = sgx + gv * (xr[k] - mean);
        }
        w = walk_next(w, run.y);
    }
    write_sums(slot, s.ch, vec2<f32>(sg, sgx * c[2u * params.c + s.ch]));
}

@compute @workgroup_size(8)
fn batch_norm_grad_sums4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let slot = linear(wg, nwg, lid, 8u);
    let s = slot_of(slot);
    if (s.ch == 0xffffffffu) { return; }
    let mean = c[s.ch];
    var sg = vec4<f32>(0.0);
    var sgx = vec4<f32>(0.0);
    let key = grad_drop_key(sums_step[0]);
    var w = walk_start(s.r);
    loop {
        if (w.e >= s.r.y) { break; }
        let run = run_at(w, s.ch, s.r.y) >> vec2<u32>(2u);
        for (var k = run.x; k < run.x + run.y; k = k + 1u) {
            var gv = grad_dropped4(a4_at(k), 4u * k, key);
            if (params.relu == 1u) { gv = select(vec4<f32>(0.0), gv, zs4[k] > vec4<f32>(0.0)); }
            sg = sg + gv;
            sgx = sgx + gv * (x4[k] - mean);
        }
        w = walk_next(w, run.y << 2u);
    }
    write_sums(slot, s.ch, vec2<f32>(hsum(sg), hsum(sgx) * c[2u * params.c + s.ch]));
}

@compute @workgroup_size(64)
fn batch_norm_sums_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let ch = linear(wg, nwg, lid, 64u);
    if (ch >= params.c) { return; }
    var sg = 0.0;
    var sgx = 0.0;
    for (var p = 0u; p < params.parts; p = p + 1u) {
        let at_p = 2u * (ch * params.parts + p);
        sg = sg + a[at_p];
        sgx = sgx + a[at_p + 1u];
    }
    b[ch] = sg;
    b[params.c + ch] = sgx;
}

// The per-channel factors of dx = k·(g − sg − (x − mean)·inv·sgx): (k, sg, sgx, mean, inv).
struct GradX { k: f32, sg: f32, sgx: f32, mean: f32, inv: f32, }

fn grad_x_factors(ch: u32) -> GradX {
    let inv = c[2u * params.c + ch];
    let per = 1.0 / f32(params.m);
    return GradX(d[ch] * inv, e[ch] * per, e[params.c + ch] * per, c[ch], inv);
}

// Where grad_x stores element o of (N, C, HW): at o, or with params.channels_first at its
// place in (C, N, HW) — the permute that a batch-folded convolution's gradient runs next
// (src/graph/conv.rs), done by these stores instead of a copy after them.
fn grad_x_at(o: u32) -> u32 {
    if (params.channels_first == 0u) { return o; }
    let q = div_by(o, params.hw);  // n·C + channel
    let n = div_by(q, params.c);
    let ch = q - n * params.c;
    return (ch * div_by(params.m, params.hw) + n) * params.hw + (o - q * params.hw);
}

@compute @workgroup_size(64)
fn batch_norm_grad_x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let first = linear(wg, nwg, lid, 64u) * params.run;
    if (first >= params.total) { return; }
    let q = grad_x_factors(channel_of(first));
    let key = grad_drop_key(grad_x_step[0]);
    for (var o = first; o < first + params.run; o = o + 1u) {
        var gv = grad_dropped(a[o], o, key);
        if (params.relu == 1u && !(zr7[o] > 0.0)) { gv = 0.0; }
        f[grad_x_at(o)] = q.k * (gv - q.sg - (xr[o] - q.mean) * q.inv * q.sgx);
    }
}

@compute @workgroup_size(64)
fn batch_norm_grad_x4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let first = linear(wg, nwg, lid, 64u) * params.run;
    if (first * 4u >= params.total) { return; }
    let q = grad_x_factors(channel_of(first * 4u));
    // A run lies inside one (image, channel) block of HW values: it is stored contiguously
    // in either layout.
    let at = grad_x_at(first * 4u) / 4u;
    let key = grad_drop_key(grad_x_step[0]);
    for (var o = first; o < first + params.run; o = o + 1u) {
        var gv = grad_dropped4(a4_at(o), 4u * o, key);
        if (params.relu == 1u) { gv = select(vec4<f32>(0.0), gv, zx4[o] > vec4<f32>(0.0)); }
        dx4[at + (o - first)] = q.k * (gv - q.sg - (x4[o] - q.mean) * q.inv * q.sgx);
    }
}

// ---- source reads: the vec4 entries' loads of binding 1 (x, or the upstream gradient g),
// from the storage buffer `a4`. A second module, batchnorm.texture, has this block replaced by
// reads from an rgba32float texture (src/ops/texture_reads.rs says why and when).
fn a4_at(j: u32) -> vec4<f32> {
    return a4[j];
}
// ---- end of source reads
