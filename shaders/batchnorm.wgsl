// batchnorm.wgsl — batch normalisation in training mode: per-channel statistics over N·H·W,
// the normalisation, the running-statistics update and the fused backward.
//
// x, y, g, dx are (N, C, HW) (HW = 1 for (N, C)); channel ch's M = N·HW values sit at
// (n·C + ch)·HW + i. stats is (3, C): mean, biased variance, 1/√(var + eps); sums is (2, C):
// Σg and Σg·x̂ with x̂ = (x − mean)·inv_std.
//
// Entry points (no atomics; grid split over x/y/z):
//   batch_norm_stats        one workgroup (64) per (channel, part of plen values): two passes,
//                           the part's mean, then Σ(x − mean)² (no E[x²] − E[x]² cancellation);
//                           writes stats when parts = 1, else partials (C, parts, 2): mean, M2
//   batch_norm_stats_merge  one invocation per channel: Chan's merge of the parts → stats
//   batch_norm_apply        y = (x − mean)·(γ·inv_std) + β, then max(y, 0) when params.relu
//                           (one per element)
//   batch_norm_running      new (2, C) = keep·(mean, var) + (take_mean·mean, take_var·var)
//                           of the batch                                   (one per channel)
//   batch_norm_grad_sums    one workgroup per (channel, part): Σg, Σg·x̂; writes sums when
//                           parts = 1, else partials (C, parts, 2)
//   batch_norm_sums_merge   one invocation per channel: the parts' sums → sums
//   batch_norm_grad_x       dx = γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M)          (one per element)
//   *_relu                  the same for a normalisation with a ReLU after it: g masked by
//                           the forward output z > 0 (z bound last)
// Loops per invocation: stats 2·plen/64, grad sums plen/64, merges `parts`; the host keeps
// each within gpu::LOOP_BUDGET (lavapipe silently stops an invocation after 65535).

struct Params {
    c: u32, hw: u32, m: u32, total: u32,    // channels, H·W, N·H·W, elements N·C·H·W
    parts: u32, plen: u32, eps: f32, keep: f32, // parts per channel, values per part; running: 1 − momentum
    take_mean: f32, take_var: f32, relu: u32, run: u32, // running: momentum, momentum·n/(n − 1); apply: ReLU;
                                                        // element-wise entries: elements per invocation
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;       // x; merges: partials; running: stats; grads: g
@group(0) @binding(2) var<storage, read_write> b: array<f32>; // stats: out; apply: stats; running: mean; grads: x
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // apply: γ; running: var; grads: stats
@group(0) @binding(4) var<storage, read_write> d: array<f32>; // apply: β; running, grad_sums: out; grad_x: γ
@group(0) @binding(5) var<storage, read_write> e: array<f32>; // apply: y; grad_x: sums; grad_sums_relu: z
@group(0) @binding(6) var<storage, read_write> f: array<f32>; // grad_x: dx
@group(0) @binding(7) var<storage, read_write> z: array<f32>; // grad_x_relu: the forward output

var<workgroup> red: array<f32, 64>;

// t / d as a shift when d is a power of two (lavapipe scalarises integer division).
fn div_by(t: u32, dl: u32) -> u32 {
    if ((dl & (dl - 1u)) == 0u) { return t >> countTrailingZeros(dl); }
    return t / dl;
}

fn workgroup_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y;
}

// Where value e (< M) of channel ch lives.
fn at(e: u32, ch: u32) -> u32 {
    let n = div_by(e, params.hw);
    return (n * params.c + ch) * params.hw + (e - n * params.hw);
}

// The channel of element o of (N, C, HW).
fn channel_of(o: u32) -> u32 {
    let q = div_by(o, params.hw);
    return q - div_by(q, params.c) * params.c;
}

// Sum over the workgroup's 64 invocations (a tree: 6 barriers).
fn workgroup_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier(); // every invocation has read red[0] before it is refilled
    return r;
}

// The values part `part` of a channel covers: [start, end).
fn part_range(part: u32) -> vec2<u32> {
    let start = part * params.plen;
    return vec2<u32>(start, min(start + params.plen, params.m));
}

fn write_stats(ch: u32, mean: f32, v: f32) {
    b[ch] = mean;
    b[params.c + ch] = v;
    b[2u * params.c + ch] = 1.0 / sqrt(v + params.eps);
}

@compute @workgroup_size(64)
fn batch_norm_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let slot = workgroup_index(wg, nwg); // ch·parts + part, uniform over the workgroup
    if (slot >= params.c * params.parts) { return; }
    let ch = slot / params.parts;
    let r = part_range(slot - ch * params.parts);
    let count = f32(r.y - r.x);
    var s = 0.0;
    for (var i = r.x + lid; i < r.y; i = i + 64u) { s = s + a[at(i, ch)]; }
    let mean = workgroup_sum(s, lid) / count;
    var q = 0.0;
    for (var i = r.x + lid; i < r.y; i = i + 64u) {
        let dv = a[at(i, ch)] - mean;
        q = q + dv * dv;
    }
    let m2 = workgroup_sum(q, lid);
    if (lid == 0u) {
        if (params.parts == 1u) {
            write_stats(ch, mean, m2 / count);
        } else {
            b[2u * slot] = mean;
            b[2u * slot + 1u] = m2;
        }
    }
}

@compute @workgroup_size(64)
fn batch_norm_stats_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let ch = workgroup_index(wg, nwg) * 64u + lid;
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

@compute @workgroup_size(256)
fn batch_norm_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let first = (workgroup_index(wg, nwg) * 256u + lid) * params.run;
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

@compute @workgroup_size(256)
fn batch_norm_running(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let ch = workgroup_index(wg, nwg) * 256u + lid;
    if (ch >= params.c) { return; }
    d[ch] = b[ch] * params.keep + a[ch] * params.take_mean;
    d[params.c + ch] = c[ch] * params.keep + a[params.c + ch] * params.take_var;
}

@compute @workgroup_size(64)
fn batch_norm_grad_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let slot = workgroup_index(wg, nwg);
    if (slot >= params.c * params.parts) { return; }
    let ch = slot / params.parts;
    let r = part_range(slot - ch * params.parts);
    let mean = c[ch];
    var sg = 0.0;
    var sgx = 0.0;
    for (var i = r.x + lid; i < r.y; i = i + 64u) {
        let k = at(i, ch);
        sg = sg + a[k];
        sgx = sgx + a[k] * (b[k] - mean);
    }
    let tg = workgroup_sum(sg, lid);
    let tgx = workgroup_sum(sgx, lid) * c[2u * params.c + ch];
    if (lid == 0u) {
        if (params.parts == 1u) {
            d[ch] = tg;
            d[params.c + ch] = tgx;
        } else {
            d[2u * slot] = tg;
            d[2u * slot + 1u] = tgx;
        }
    }
}

@compute @workgroup_size(64)
fn batch_norm_sums_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let ch = workgroup_index(wg, nwg) * 64u + lid;
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

@compute @workgroup_size(256)
fn batch_norm_grad_x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let first = (workgroup_index(wg, nwg) * 256u + lid) * params.run;
    if (first >= params.total) { return; }
    let ch = channel_of(first);
    let mean = c[ch];
    let inv = c[2u * params.c + ch];
    let per = 1.0 / f32(params.m);
    let sg = e[ch] * per;
    let sgx = e[params.c + ch] * per;
    let k = d[ch] * inv;
    for (var o = first; o < first + params.run; o = o + 1u) {
        f[o] = k * (a[o] - sg - (b[o] - mean) * inv * sgx);
    }
}

// The ReLU forms: upstream g (a) counts only where the forward output (e or z) is > 0.
@compute @workgroup_size(64)
fn batch_norm_grad_sums_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let slot = workgroup_index(wg, nwg);
    if (slot >= params.c * params.parts) { return; }
    let ch = slot / params.parts;
    let r = part_range(slot - ch * params.parts);
    let mean = c[ch];
    var sg = 0.0;
    var sgx = 0.0;
    for (var i = r.x + lid; i < r.y; i = i + 64u) {
        let k = at(i, ch);
        let gv = select(0.0, a[k], e[k] > 0.0);
        sg = sg + gv;
        sgx = sgx + gv * (b[k] - mean);
    }
    let tg = workgroup_sum(sg, lid);
    let tgx = workgroup_sum(sgx, lid) * c[2u * params.c + ch];
    if (lid == 0u) {
        if (params.parts == 1u) {
            d[ch] = tg;
            d[params.c + ch] = tgx;
        } else {
            d[2u * slot] = tg;
            d[2u * slot + 1u] = tgx;
        }
    }
}

@compute @workgroup_size(256)
fn batch_norm_grad_x_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let first = (workgroup_index(wg, nwg) * 256u + lid) * params.run;
    if (first >= params.total) { return; }
    let ch = channel_of(first);
    let mean = c[ch];
    let inv = c[2u * params.c + ch];
    let per = 1.0 / f32(params.m);
    let sg = e[ch] * per;
    let sgx = e[params.c + ch] * per;
    let k = d[ch] * inv;
    for (var o = first; o < first + params.run; o = o + 1u) {
        let gv = select(0.0, a[o], z[o] > 0.0);
        f[o] = k * (gv - sg - (b[o] - mean) * inv * sgx);
    }
}
