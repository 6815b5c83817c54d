// optim.wgsl — optimizer updates, one dispatch per parameter per step. (A recorded
// plan updates its fixed buffers in place instead, a few parameters per dispatch, with
// kernels generated around the shared rules below: src/fusion.rs.)
//
// Entry points (workgroup size 256, one element per invocation, grid split as in
// elementwise.wgsl). Each writes fresh buffers (the old values may still be held
// by a user's tensor), so a parameter update is out-of-place:
//   sgd_update           p' = p - lr·(g + wd·p)
//   sgd_momentum_update  m' = μ·m + (g + wd·p);  p' = p - lr·m'
//   adam_update          m' = β1·m + (1-β1)·g;  v' = β2·v + (1-β2)·g²;
//                        p' = p·(1 - lr·wd_decoupled) - lr·(m'/bc1) / (sqrt(v'/bc2) + ε)
//                        with g += wd·p first for plain Adam (L2) decay.

// ---- shared: begin ----
// The params and the per-element update rules, copied verbatim into the in-place
// fused updates that src/fusion.rs generates for recorded plans, so that both paths
// compute the same operations in the same order. (Module-scope declarations are
// order-independent in WGSL: the rules read `params` declared below, or in the
// generated source.)
struct Params {
    n: u32,              // elements in the parameter (all of a fused group's)
    lr: f32,
    weight_decay: f32,   // L2 decay added to the gradient (SGD, Adam)
    momentum: f32,       // SGD momentum μ
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc1: f32,            // 1 - β1^t
    bc2: f32,            // 1 - β2^t
    decoupled_decay: f32, // AdamW: p *= 1 - lr·decay before the step
}

struct MomentumOut { p: f32, m: f32 }

// SGD with momentum of one element: (p', m').
fn momentum_rule(p0: f32, g0: f32, m0: f32) -> MomentumOut {
    let grad = g0 + params.weight_decay * p0;
    let mom = params.momentum * m0 + grad;
    return MomentumOut(p0 - params.lr * mom, mom);
}

struct AdamOut { p: f32, m: f32, v: f32 }

// Adam / AdamW of one element: (p', m', v').
fn adam_rule(p0: f32, g0: f32, m0: f32, v0: f32) -> AdamOut {
    let grad = g0 + params.weight_decay * p0;
    let m1 = params.beta1 * m0 + (1.0 - params.beta1) * grad;
    let v1 = params.beta2 * v0 + (1.0 - params.beta2) * grad * grad;
    let step = params.lr * (m1 / params.bc1) / (sqrt(v1 / params.bc2) + params.eps);
    return AdamOut(p0 * (1.0 - params.lr * params.decoupled_decay) - step, m1, v1);
}
// ---- shared: end ----

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<f32>;            // (n) parameter
@group(0) @binding(2) var<storage, read> g: array<f32>;            // (n) gradient
@group(0) @binding(3) var<storage, read_write> p_out: array<f32>;  // sgd_update: (n) new parameter
@group(0) @binding(3) var<storage, read> m: array<f32>;            // momentum / first moment (n)
@group(0) @binding(4) var<storage, read_write> p_new: array<f32>;  // (n) new parameter
@group(0) @binding(5) var<storage, read_write> m_out: array<f32>;  // (n) new momentum / first moment
@group(0) @binding(6) var<storage, read> v: array<f32>;            // (n) second moment
@group(0) @binding(7) var<storage, read_write> v_out: array<f32>;  // (n) new second moment

fn linear_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;
}

@compute @workgroup_size(256)
fn sgd_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let grad = g[i] + params.weight_decay * p[i];
    p_out[i] = p[i] - params.lr * grad;
}

@compute @workgroup_size(256)
fn sgd_momentum_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let r = momentum_rule(p[i], g[i], m[i]);
    m_out[i] = r.m;
    p_new[i] = r.p;
}

@compute @workgroup_size(256)
fn adam_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= params.n) { return; }
    let r = adam_rule(p[i], g[i], m[i], v[i]);
    m_out[i] = r.m;
    v_out[i] = r.v;
    p_new[i] = r.p;
}
