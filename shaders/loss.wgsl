// loss.wgsl — fused, stable softmax cross-entropy with integer class labels.
//
// Logits are viewed as (rows, classes); labels are i32, one per row. Stable: every
// exponent is relative to the row maximum, found with the sum by the online rule
// (see softmax.wgsl); a row holding +inf or NaN gives NaN. A label outside 0..classes
// gives NaN for that row and is reported in the recording thread's status words, so its next
// readback returns the same error the CPU reference gives at once. A row whose label is the
// ignore index (PyTorch's ignore_index, when the params enable it) has loss 0 and gradient 0
// and is not counted by a mean over counted rows.
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
//   cross_entropy_reduced_backward_sums
//                           the same, and dx's column sums Σ_i dx[i, c] (the gradient of a
//                           bias added to the logits), summed once the rows are written
// Rows too long for one invocation's loop budget (a vocabulary), or few long rows, are split
// into parts of at most part_len classes (src/ops/loss_vocab.rs plans them):
//   cross_entropy_partials  (max, sum of e^(x - max)) of each part, one part per invocation
//   cross_entropy_merge     the parts of row i merged: lse[i] and loss[i], one row per invocation
//   cross_entropy_backward_parts
//                           then the gradient from lse, one part per invocation
//   cross_entropy_counted   w[i] = 1 for a counted row, 0 for an ignored one (a mean's divisor)

struct Params {
    rows: u32,
    classes: u32,
    // cross_entropy_reduced only (the other entries ignore them):
    divisor: f32, // 1 for the sum, rows for the mean
    one: f32,   // 1.0, unknown to the compiler: keeps it from folding Kahan's correction
    ignore: i32,     // the ignore index, when flags bit 0 is set
    flags: u32,      // bit 0: labels equal to `ignore` are ignored; bit 1: the reduced
                     // entries divide by the rows counted instead of `divisor`
    part_len: u32,   // split rows: classes per part
    parts: u32,      // split rows: parts per row
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
@group(0) @binding(7) var<storage, read_write> col_sums: array<f32>; // reduced_backward_sums: (classes)
// Split rows: the (max, sum) of each part, (rows, parts), written by cross_entropy_partials and
// read by cross_entropy_merge, which writes the loss (binding 3) and lse_rows.
@group(0) @binding(2) var<storage, read_write> part_out: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> part_stats: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> lse_rows: array<f32>;   // merge: (rows)
// cross_entropy_counted: labels in, (rows) weights out.
@group(0) @binding(1) var<storage, read> labels_in: array<i32>;
@group(0) @binding(2) var<storage, read_write> counted: array<f32>;

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

// (max m, sum s of e^(x - m)) of x[start..end], with the online rule: one exp per element.
fn range_stats(start: u32, end: u32) -> vec2<f32> {
    var m = bitcast<f32>(0xff800000u);
    var s = 0.0;
    for (var a = start; a < end; a = a + 1u) {
        let v = x[a];
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
    return vec2<f32>(m, s);
}

// logsumexp of row i (classes loop steps).
fn row_lse(i: u32) -> f32 {
    let st = range_stats(i * params.classes, (i + 1u) * params.classes);
    return st.x + log(st.y);
}

// Statistics of two disjoint pieces of a row (as softmax.wgsl merges them). A piece with
// s = 0 is all -inf and adds nothing (its factor would be e^(-inf + inf) = NaN).
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let e = select(exp(-abs(a.x - b.x)), 0.0, a.y == 0.0 || b.y == 0.0);
    return vec2<f32>(max(a.x, b.x), select(a.y + b.y * e, a.y * e + b.y, b.x > a.x));
}

// Whether label l is the ignore index (checked before the range: any value may be it).
fn ignored(l: i32) -> bool {
    return (params.flags & 1u) != 0u && l == params.ignore;
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
    if (ignored(l)) {
        loss[i] = 0.0;
        return;
    }
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
    // Ignored rows: no lse needed (their dx is 0). Rows with a bad label get NaN here
    // already (and so in every dx of the row).
    if (ignored(labels[i])) {
        lse_out[i] = 0.0;
        return;
    }
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
    if (ignored(l)) {
        dx[e] = 0.0;
        return;
    }
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
    if (ignored(l)) {
        for (var c = 0u; c < params.classes; c = c + 1u) { dx[base + c] = 0.0; }
        return;
    }
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

// The 64 partial sums of cross_entropy_reduced, and the rows each counted.
var<workgroup> partials: array<f32, 64>;
var<workgroup> counts: array<f32, 64>;

// Both entries below are dispatched as one workgroup; the host keeps ceil(rows / 64) ·
// (classes + 1) loop steps per invocation (with the gradient, 3 · classes + 2) within
// gpu::LOOP_BUDGET, well below lavapipe's 65535 (src/ops/loss.rs, reduced_steps).

// This invocation's share of the rows' losses (Kahan-compensated; the plain sum when that is
// NaN) and of the rows counted (exact in f32: at most 2^20 rows take these kernels).
fn reduced_partial(lid: u32) -> vec2<f32> {
    // Kahan summation: c carries the low bits each addition loses. Without the runtime
    // factor 1, lavapipe's compiler rewrites (acc + y) - acc as y and c becomes 0.
    var acc = 0.0;
    var c = 0.0;
    // The plain sum, kept for when an infinite loss makes Kahan's correction inf - inf =
    // NaN: it gives the IEEE inf or NaN.
    var plain = 0.0;
    var n = 0.0;
    for (var i = lid; i < params.rows; i = i + 64u) {
        let l = labels[i];
        var v = nan();
        if (ignored(l)) {
            continue;
        }
        n = n + 1.0;
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
    return vec2<f32>(select(kahan, plain, is_nan(kahan)), n);
}

// Adds the 64 partials in workgroup memory; invocation 0 writes the total.
// The divisor is the rows counted when flags bit 1 is set (all ignored: 0 / 0 = NaN, as
// PyTorch's mean).
fn store_total(lid: u32, partial: vec2<f32>) {
    partials[lid] = partial.x;
    counts[lid] = partial.y;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partials[lid] = partials[lid] + partials[lid + s];
            counts[lid] = counts[lid] + counts[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        total[0] = partials[0] / select(params.divisor, counts[0], (params.flags & 2u) != 0u);
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

// cross_entropy_reduced_backward, then invocation lid sums dx over the rows for classes lid,
// lid + 64, …: the bias gradient of a linear layer that made the logits, where a separate
// reduction was a dispatch of its own. The storage barrier makes every invocation's rows
// visible to the others (one workgroup). The host keeps ceil(classes / 64) · rows more steps
// within the walk's budget.
@compute @workgroup_size(64)
fn cross_entropy_reduced_backward_sums(@builtin(local_invocation_index) lid: u32) {
    for (var i = lid; i < params.rows; i = i + 64u) {
        grad_row(i, g_up[i]);
    }
    storageBarrier();
    for (var c = lid; c < params.classes; c = c + 64u) {
        var s = 0.0;
        for (var i = 0u; i < params.rows; i = i + 1u) {
            s = s + dx[i * params.classes + c];
        }
        col_sums[c] = s;
    }
    store_total(lid, reduced_partial(lid));
}

// Split rows. Invocation n = i * parts + p takes classes p·part_len .. of row i: at most
// part_len (<= gpu::LOOP_BUDGET) loop steps.
@compute @workgroup_size(64)
fn cross_entropy_partials(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let n = linear_index(wg, nwg, lid);
    if (n >= params.rows * params.parts) { return; }
    let i = n / params.parts;
    let first = (n - i * params.parts) * params.part_len;
    let base = i * params.classes;
    part_out[n] = range_stats(base + first, base + min(first + params.part_len, params.classes));
}

// Row i's parts merged (parts <= gpu::LOOP_BUDGET loop steps): lse_rows[i] and loss[i]. An
// ignored row: 0 and 0; a bad label: NaN and NaN, reported.
@compute @workgroup_size(64)
fn cross_entropy_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.rows) { return; }
    let l = labels[i];
    if (ignored(l)) {
        lse_rows[i] = 0.0;
        loss[i] = 0.0;
        return;
    }
    if (!label_ok(l)) {
        report_bad_label(l);
        lse_rows[i] = nan();
        loss[i] = nan();
        return;
    }
    var st = vec2<f32>(bitcast<f32>(0xff800000u), 0.0);
    for (var p = 0u; p < params.parts; p = p + 1u) {
        st = merge(st, part_stats[i * params.parts + p]);
    }
    let lse_i = st.x + log(st.y);
    lse_rows[i] = lse_i;
    loss[i] = lse_i - x[i * params.classes + u32(l)];
}

// 1 for a row a mean counts, 0 for an ignored one (no loop).
@compute @workgroup_size(64)
fn cross_entropy_counted(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.rows) { return; }
    counted[i] = select(1.0, 0.0, ignored(labels_in[i]));
}

// The gradient of split rows from the merged lse, one part per invocation (at most part_len
// loop steps): the row's label, lse and upstream are read once per part, not per element.
@compute @workgroup_size(64)
fn cross_entropy_backward_parts(@builtin(workgroup_id) wg: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let n = linear_index(wg, nwg, lid);
    if (n >= params.rows * params.parts) { return; }
    let i = n / params.parts;
    let first = (n - i * params.parts) * params.part_len;
    let base = i * params.classes;
    let end = base + min(first + params.part_len, params.classes);
    let l = labels[i];
    // An ignored row: 0; a bad label: NaN (its lse is NaN already; reported by the merge).
    let keep = select(1.0, 0.0, ignored(l));
    let lse_i = select(lse[i], nan(), !ignored(l) && !label_ok(l));
    let gi = g[i] * keep;
    let at_label = base + u32(l);
    for (var a = base + first; a < end; a = a + 1u) {
        let onehot = select(0.0, 1.0, a == at_label && label_ok(l));
        dx[a] = select((exp(x[a] - lse_i) - onehot) * gi, 0.0, keep == 0.0);
    }
}
