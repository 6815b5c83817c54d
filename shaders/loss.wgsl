// loss.wgsl — fused, stable softmax cross-entropy with integer class labels.
//
// Logits are viewed as (rows, classes); labels are i32, one per row. Stable: every
// exponent is relative to the row maximum, found with the sum by the online rule
// (see softmax.wgsl); a row holding +inf or NaN gives NaN. A label outside 0..classes
// gives NaN for that row and is reported in the recording thread's status words, so its next
// readback returns the same error the CPU reference gives at once.
//
// Entry points (workgroup size 64, one row or one element per invocation, grid split
// over x/y/z past 65535 workgroups):
//   cross_entropy_forward   loss[i] = logsumexp(x[i, :]) - x[i, label[i]]; lse[i] kept
//   cross_entropy_lse       lse[i] = logsumexp(x[i, :])   (backward, pass 1)
//   cross_entropy_backward  dx[i, c] = (exp(x[i, c] - lse[i]) - [c == label[i]]) · g[i]
//   cross_entropy_backward_rows
//                           the same, one row per invocation with its lse computed in place:
//                           for rows of at most 64 classes, one dispatch instead of two
//   cross_entropy_reduced   total[0] = sum_i loss[i] / divisor (1 for the sum, rows for the mean):
//                           ONE workgroup; invocation lid walks rows lid, lid + 64, …, then a
//                           workgroup-memory tree adds the 64 partials (6 barriers)
//   cross_entropy_reduced_backward
//                           the same, and dx as cross_entropy_backward computes it (upstream
//                           g_up): a training step's loss and its gradient in one dispatch

struct Params {
    rows: u32,
    classes: u32,
    // cross_entropy_reduced only (the other entries ignore them):
    divisor: f32, // 1 for the sum, rows for the mean
    one: f32,   // 1.0, unknown to the compiler: keeps it from folding Kahan's correction
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // (rows, classes) logits
@group(0) @binding(2) var<storage, read> labels: array<i32>;        // (rows)
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;    // forward: (rows) losses
@group(0) @binding(3) var<storage, read_write> lse_out: array<f32>; // lse pass: (rows)
@group(0) @binding(3) var<storage, read> lse: array<f32>;           // backward: (rows)
@group(0) @binding(3) var<storage, read> g_rows: array<f32>;        // backward_rows: (rows) upstream
@group(0) @binding(3) var<storage, read_write> total: array<f32>;   // reduced: (1) sum or mean
@group(0) @binding(4) var<storage, read> g: array<f32>;             // backward: (rows) upstream
// Forward, lse pass, backward_rows and reduced: the recording thread's status words (src/gpu/mod.rs, STATUS_BYTES); a bad
// label is reported there as code 1 with the label and the class count.
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>, 4>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;      // backward: (rows, classes)
@group(0) @binding(6) var<storage, read> g_up: array<f32>;          // reduced_backward: (rows)

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn is_nan(v: f32) -> bool {
    // Exponent all ones and a non-zero mantissa; robust against fast-math folding of v != v.
    let bits = bitcast<u32>(v);
    return (bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0u;
}

// logsumexp of row i, with the online (max, sum) rule: one exp per element.
fn row_lse(i: u32) -> f32 {
    let base = i * params.classes;
    var m = bitcast<f32>(0xff800000u);
    var s = 0.0;
    for (var c = 0u; c < params.classes; c = c + 1u) {
        let v = x[base + c];
        // A -inf logit adds nothing; skipping it also avoids exp(-inf - -inf) = NaN
        // while the running max is still -inf.
        if (v == bitcast<f32>(0xff800000u)) { continue; }
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s = s + exp(v - m);
        }
        // A +inf logit: its own term is e^(inf - inf) = NaN, so the row is NaN (as
        // PyTorch and the CPU reference), not inf.
        if (v == bitcast<f32>(0x7f800000u)) { s = nan(); }
    }
    return m + log(s);
}

fn label_ok(l: i32) -> bool {
    return l >= 0 && u32(l) < params.classes;
}

// Reports a bad label in the status words (any one of several bad rows wins; the error
// names one of them).
fn report_bad_label(l: i32) {
    atomicStore(&status[1], bitcast<u32>(l));
    atomicStore(&status[2], params.classes);
    atomicStore(&status[0], 1u);
}

@compute @workgroup_size(64)
fn cross_entropy_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.rows) { return; }
    let l = labels[i];
    if (!label_ok(l)) {
        report_bad_label(l);
        loss[i] = nan();
        return;
    }
    loss[i] = row_lse(i) - x[i * params.classes + u32(l)];
}

@compute @workgroup_size(64)
fn cross_entropy_lse(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.rows) { return; }
    // Rows with a bad label get NaN here already (and so in every dx of the row).
    if (!label_ok(labels[i])) {
        report_bad_label(labels[i]);
        lse_out[i] = nan();
        return;
    }
    lse_out[i] = row_lse(i);
}

@compute @workgroup_size(64)
fn cross_entropy_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wg, nwg, lid);
    if (e >= params.rows * params.classes) { return; }
    let i = e / params.classes;
    let c = e % params.classes;
    let l = labels[i];
    if (!label_ok(l)) {
        dx[e] = nan();
        return;
    }
    let onehot = select(0.0, 1.0, u32(l) == c);
    dx[e] = (exp(x[e] - lse[i]) - onehot) * g[i];
}

@compute @workgroup_size(64)
fn cross_entropy_backward_rows(@builtin(workgroup_id) wg: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.rows) { return; }
    grad_row(i, g_rows[i]);
}

// dx of row i for the upstream gi, its lse computed in place; a bad label: NaN, reported.
fn grad_row(i: u32, gi: f32) {
    let base = i * params.classes;
    let l = labels[i];
    if (!label_ok(l)) {
        report_bad_label(l);
        for (var c = 0u; c < params.classes; c = c + 1u) { dx[base + c] = nan(); }
        return;
    }
    let lse_i = row_lse(i);
    for (var c = 0u; c < params.classes; c = c + 1u) {
        let onehot = select(0.0, 1.0, u32(l) == c);
        dx[base + c] = (exp(x[base + c] - lse_i) - onehot) * gi;
    }
}

// The 64 partial sums of cross_entropy_reduced.
var<workgroup> partials: array<f32, 64>;

// Both entries below are dispatched as one workgroup; the host keeps ceil(rows / 64) ·
// (classes + 1) loop steps per invocation (with the gradient, 3 · classes + 2) within
// gpu::LOOP_BUDGET, well below lavapipe's 65535 (src/ops/loss.rs, reduced_steps).

// This invocation's share of the rows' losses (Kahan-compensated; the plain sum when that is
// NaN).
fn reduced_partial(lid: u32) -> f32 {
    // Kahan summation: c carries the low bits each addition loses. Without the runtime
    // factor 1, lavapipe's compiler rewrites (acc + y) - acc as y and c becomes 0.
    var acc = 0.0;
    var c = 0.0;
    // The plain sum, kept for when an infinite loss makes Kahan's correction inf - inf =
    // NaN: it gives the IEEE inf or NaN.
    var plain = 0.0;
    for (var i = lid; i < params.rows; i = i + 64u) {
        let l = labels[i];
        var v = nan();
        if (label_ok(l)) {
            v = row_lse(i) - x[i * params.classes + u32(l)];
        } else {
            report_bad_label(l);
        }
        let y = v - c;
        let t = acc + y;
        c = (t * params.one - acc) - y;
        acc = t;
        plain = plain + v;
    }
    let kahan = acc - c;
    return select(kahan, plain, is_nan(kahan));
}

// Adds the 64 partials in workgroup memory; invocation 0 writes the total.
fn store_total(lid: u32, partial: f32) {
    partials[lid] = partial;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partials[lid] = partials[lid] + partials[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        total[0] = partials[0] / params.divisor;
    }
}

@compute @workgroup_size(64)
fn cross_entropy_reduced(@builtin(local_invocation_index) lid: u32) {
    store_total(lid, reduced_partial(lid));
}

// The gradient rows first, then the loss (each row's lse computed twice: cheaper than a
// dispatch, and the bindings of cross_entropy_reduced stay its own).
@compute @workgroup_size(64)
fn cross_entropy_reduced_backward(@builtin(local_invocation_index) lid: u32) {
    for (var i = lid; i < params.rows; i = i + 64u) {
        grad_row(i, g_up[i]);
    }
    store_total(lid, reduced_partial(lid));
}
