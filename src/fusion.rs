//! Fusion of element-wise chains in a compiled graph into one generated kernel.
//!
//! A chain is a tree of element-wise nodes (unary, binary, scalar) of one output
//! shape whose inner results are used once and are not outputs of the run: say
//! `relu(x·W + b)`'s bias add and ReLU after the matmul, or ReLU's backward
//! `g · (h > 0)`. Its root becomes one dispatch of a WGSL kernel generated for
//! exactly that expression and shape (dims, strides and scalars are literals);
//! the chain's inner nodes never run and never get a buffer.
//!
//! The op bodies are elementwise.wgsl's own `unary_op` / `binary_op`, with the
//! op code turned from an override constant into an argument, so a fused kernel
//! computes exactly what the unfused kernels compute. Generated kernels are
//! cached by source (one module and pipeline per distinct source).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::device::DeviceInner;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::graph::{Node, NodeId, Op};
use crate::ops::elementwise::SHADER as ELEMENTWISE;
use crate::ops::matmul::{Epilogue, MatmulVariant};

use crate::fused::ProductOp;
pub(crate) use crate::fused::{Fused, FusedKind};
use crate::ops::{gpu_output, grid_1d};
use crate::shape::{broadcast_strides, contiguous_strides};
use crate::tensor::Tensor;

/// Environment variable: `0` compiles element-wise chains unfused (for comparisons).
pub const FUSION_ENV: &str = "WGRAD_FUSION";

/// Most tensors a fused kernel reads and writes besides its root's output
/// (within the 8 storage buffers per stage every adapter allows).
const MAX_INPUTS: usize = 6;

fn fusable(n: &Node) -> bool {
    n.dtype == DType::F32 && matches!(n.op, Op::Unary(_) | Op::Binary(_) | Op::Scalar { .. })
}

/// Finds the chains among the live nodes `order` (topological); `keep[j]` marks
/// outputs of the run, `leaf[j]` values that are not computed (parameters,
/// constants, folded nodes).
/// Returns the fused kernel of every chain root and the inner nodes to skip. Chains whose
/// values or operands have more than `max_elems` elements (one storage binding) are left
/// unfused.
///
/// A chain grows back from its root through element-wise operands of the same
/// shape. An operand used only by the chain is computed in registers; one also
/// used elsewhere (the pre-activation that ReLU's gradient reads, say) joins
/// only if all its other users run after the root, and is written out beside it.
pub(crate) fn plan(
    nodes: &[Node],
    order: &[NodeId],
    keep: &[bool],
    leaf: &[bool],
    max_elems: usize,
) -> (HashMap<NodeId, Fused>, Vec<bool>) {
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); nodes.len()];
    let mut live = vec![false; nodes.len()];
    for &i in order {
        live[i] = true;
        for &j in &nodes[i].inputs {
            users[j].push(i);
        }
    }
    // Matmul epilogues first: their element-wise nodes leave the chains below.
    let (mut roots, mut absorbed) = crate::epilogue::plan(nodes, order, &users, keep, leaf);
    for &r in order.iter().rev() {
        if absorbed[r] || leaf[r] || roots.contains_key(&r) || !fusable(&nodes[r]) {
            continue;
        }
        let shape = &nodes[r].shape;
        // Grow the chain back from its root through single-use operands.
        let mut members = vec![r];
        let mut k = 0;
        while k < members.len() {
            for &j in &nodes[members[k]].inputs {
                let candidate = live[j]
                    && !leaf[j]
                    && fusable(&nodes[j])
                    && !absorbed[j]
                    && !roots.contains_key(&j)
                    && !members.contains(&j)
                    && &nodes[j].shape == shape
                    && users[j].iter().all(|&c| c > r || members.contains(&c));
                if candidate {
                    members.push(j);
                }
            }
            k += 1;
        }
        if members.len() < 2 {
            continue;
        }
        members.sort_unstable();
        let mut inputs = Vec::new();
        for &m in &members {
            for &j in &nodes[m].inputs {
                if !members.contains(&j) && !inputs.contains(&j) {
                    inputs.push(j);
                }
            }
        }
        let outputs: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|&m| m != r && (keep[m] || users[m].iter().any(|c| !members.contains(c))))
            .collect();
        let numel = |j: NodeId| nodes[j].shape.iter().product::<usize>();
        if inputs.len() + outputs.len() > MAX_INPUTS
            || inputs.iter().any(|&j| nodes[j].dtype != DType::F32)
            || numel(r) > max_elems
            || inputs.iter().any(|&j| numel(j) > max_elems)
        {
            continue;
        }
        let source = generate(nodes, &members, &inputs, &outputs, shape);
        for &m in &members {
            absorbed[m] = m != r;
        }
        roots.insert(
            r,
            Fused {
                inputs,
                outputs,
                shape: shape.clone(),
                source,
                members: members.len(),
                kind: FusedKind::Chain,
            },
        );
    }
    (roots, absorbed)
}

/// elementwise.wgsl's helper functions with the op code as an argument.
fn op_functions() -> String {
    let src = ELEMENTWISE.source;
    let start = src.find("fn nan()").unwrap_or(0);
    let end = src.find("fn linear_index").unwrap_or(src.len());
    src[start..end]
        .replace(
            "fn unary_op(x: f32) -> f32 {\n    switch OP {",
            "fn unary_op(op: u32, x: f32) -> f32 {\n    switch op {",
        )
        .replace(
            "fn binary_op(x: f32, y: f32) -> f32 {\n    switch OP {",
            "fn binary_op(op: u32, x: f32, y: f32) -> f32 {\n    switch op {",
        )
}

fn f32_literal(v: f32) -> String {
    format!("bitcast<f32>({:#010x}u)", v.to_bits())
}

/// The WGSL of one chain: `members` (sorted, root last) over `inputs`, writing
/// the root to `out` and `outputs` to `out1`, `out2`, ...
fn generate(
    nodes: &[Node],
    members: &[NodeId],
    inputs: &[NodeId],
    outputs: &[NodeId],
    shape: &[usize],
) -> String {
    let n: usize = shape.iter().product();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// fused.wgsl (generated) — one element per invocation, workgroup size 256."
    );
    let _ = writeln!(
        s,
        "// output shape {shape:?}; {} fused nodes.",
        members.len()
    );
    s.push_str("struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }\n");
    s.push_str("@group(0) @binding(0) var<uniform> params: Params;\n");
    for (k, &j) in inputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read> in{k}: array<f32>; // {:?}",
            k + 1,
            nodes[j].shape
        );
    }
    let _ = writeln!(
        s,
        "@group(0) @binding({}) var<storage, read_write> out: array<f32>; // {shape:?}",
        inputs.len() + 1
    );
    for k in 1..=outputs.len() {
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> out{k}: array<f32>; // {shape:?}",
            inputs.len() + 1 + k
        );
    }
    s.push_str(&op_functions());
    s.push_str(
        "@compute @workgroup_size(256)\n\
         fn fused(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
         \x20        @builtin(local_invocation_index) lid: u32) {\n\
         \x20   let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;\n",
    );
    // params.n (= {n}) rather than a literal: binding 0 stays in the derived layout.
    let _ = writeln!(s, "    if (i >= params.n) {{ return; }} // n = {n}");
    let out_strides = contiguous_strides(shape);
    let mut name: HashMap<NodeId, String> = HashMap::new();
    for (k, &j) in inputs.iter().enumerate() {
        let src = &nodes[j].shape;
        let index = if src.as_slice() == shape {
            "i".to_string()
        } else {
            // Broadcast: the source element of output element i.
            let strides = broadcast_strides(src, shape);
            let terms: Vec<String> = (0..shape.len())
                .filter(|&d| strides[d] != 0 && shape[d] > 1)
                .map(|d| {
                    format!(
                        "((i / {}u) % {}u) * {}u",
                        out_strides[d], shape[d], strides[d]
                    )
                })
                .collect();
            if terms.is_empty() {
                "0u".to_string()
            } else {
                terms.join(" + ")
            }
        };
        let _ = writeln!(s, "    let v{j} = in{k}[{index}];");
        name.insert(j, format!("v{j}"));
    }
    for &m in members {
        let arg = |q: usize| name[&nodes[m].inputs[q]].clone();
        let expr = match &nodes[m].op {
            Op::Unary(u) => format!("unary_op({}u, {})", *u as u32, arg(0)),
            Op::Binary(b) => format!("binary_op({}u, {}, {})", *b as u32, arg(0), arg(1)),
            Op::Scalar { op, value, lhs } => {
                let (x, c) = (arg(0), f32_literal(*value));
                if *lhs {
                    format!("binary_op({}u, {c}, {x})", *op as u32)
                } else {
                    format!("binary_op({}u, {x}, {c})", *op as u32)
                }
            }
            _ => unreachable!("only element-wise nodes are fused"),
        };
        let _ = writeln!(s, "    let v{m} = {expr}; // {}", nodes[m].op.name());
        name.insert(m, format!("v{m}"));
    }
    for (k, m) in outputs.iter().enumerate() {
        let _ = writeln!(s, "    out{}[i] = v{m};", k + 1);
    }
    let root = members[members.len() - 1];
    let _ = writeln!(s, "    out[i] = v{root};\n}}");
    s
}

/// The cached kernel of a generated source (its name is unique per source).
fn kernel(source: &str) -> Kernel {
    static KERNELS: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());
    let mut k = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(name, source)) = k.iter().find(|(_, s)| *s == source) {
        return Kernel { name, source };
    }
    // Leaked once per distinct generated source (bounded by the graphs compiled).
    let name: &'static str = Box::leak(format!("fused{}", k.len()).into_boxed_str());
    let source: &'static str = Box::leak(source.to_string().into_boxed_str());
    k.push((name, source));
    Kernel { name, source }
}

/// The inputs of a fused batch norm gradient without the dropout's step that ends them
/// when there is a dropout (p, seed), and the dropout.
fn split_step<'a, 't>(
    args: &'a [&'t Tensor],
    drop: Option<(f32, u64)>,
) -> (&'a [&'t Tensor], Option<crate::ops::batchnorm::Dropped<'t>>) {
    match (drop, args.split_last()) {
        (Some((p, seed)), Some((step, rest))) => (rest, Some((p, seed, *step))),
        _ => (args, None),
    }
}

/// Runs a fused chain on its input values (GPU only: the CPU reference runs the
/// chain's nodes one by one, which is what the fused kernel is checked against).
///
/// Returns the root's value and those of the chain values written beside it. (A batch
/// norm gradient's inputs may end with a dropout's step: see `split_step`.)
///
/// `filters`: a Winograd product's transformed filters, when the plan holds them
/// (`Tensor::winograd_filters`); otherwise they are transformed from the weights here.
pub(crate) fn run(
    f: &Fused,
    root: NodeId,
    args: &[&Tensor],
    filters: Option<&Tensor>,
) -> Result<Vec<(NodeId, Tensor)>> {
    if let FusedKind::Product { op, epi } = f.kind {
        // The epilogue's operands follow the product's, in `EpiParts` order.
        let operands = &args[args.len() - epi.operands()..];
        let mut next = operands.iter().copied();
        let mut take = |present: bool| if present { next.next() } else { None };
        let epilogue = Epilogue {
            scale: take(epi.scale),
            shift: take(epi.shift),
            bias: take(epi.bias),
            residual: take(epi.residual),
            relu: epi.relu,
            mask: take(epi.mask),
            group: epi.group,
        };
        let c = match op {
            ProductOp::MatMul { ta, tb } => {
                args[0].matmul_epilogue(args[1], (ta, tb), MatmulVariant::Auto, epilogue)?
            }
            ProductOp::Conv(geom) => args[0].conv2d_implicit_epilogue(args[1], geom, epilogue)?,
            ProductOp::Winograd(geom) => {
                // The filters come as the product's (F, 9C) operand.
                let (x, w) = (args[1], args[0]);
                let w4 = w.reshape(&[w.shape()[0], x.shape()[1], 3, 3])?;
                x.conv2d_winograd_epilogue(&w4, filters, geom, epilogue)?
            }
            ProductOp::Patches(geom) => args[1].conv2d_patches_epilogue(args[0], geom, epilogue)?,
        };
        // The product's elements in the order the graph's view of them has (a reshape).
        return Ok(vec![(root, c.reshape(&f.shape)?)]);
    }
    if let FusedKind::BatchNormGradXChannelsFirst { drop } = f.kind {
        let (args, drop) = split_step(args, drop);
        let (z, [g, x, stats, gamma, sums]) = match args {
            [g, x, s, gm, su] => (None, [g, x, s, gm, su]),
            [g, x, s, gm, su, z] => (Some(*z), [g, x, s, gm, su]),
            _ => unreachable!("planned with a GradX pass's inputs"),
        };
        let dx = g.batch_norm_grad_x_channels_first(x, stats, gamma, sums, z, drop)?;
        return Ok(vec![(root, dx.reshape(&f.shape)?)]);
    }
    if let FusedKind::BatchNormGradDropped { sums, p, seed } = f.kind {
        let (args, drop) = split_step(args, Some((p, seed)));
        let drop = drop.expect("a step follows the pass's inputs");
        let out = match (sums, args) {
            (true, [g, x, s]) => g.batch_norm_grad_sums_dropped(x, s, None, drop)?,
            (true, [g, x, s, z]) => g.batch_norm_grad_sums_dropped(x, s, Some(z), drop)?,
            (false, [g, x, s, gm, su]) => {
                g.batch_norm_grad_x_dropped(x, (s, gm, su), None, drop)?
            }
            (false, [g, x, s, gm, su, z]) => {
                g.batch_norm_grad_x_dropped(x, (s, gm, su), Some(z), drop)?
            }
            _ => unreachable!("planned with a gradient pass's inputs"),
        };
        return Ok(vec![(root, out)]);
    }
    if let FusedKind::BatchNormApplyDropout { relu, p, seed } = f.kind {
        let [x, stats, gamma, beta, step] = args else {
            unreachable!("planned with the normalisation's inputs and the step")
        };
        let (y, dropped) =
            x.batch_norm_apply_dropout((stats, gamma, beta, relu), (p, seed, step))?;
        return Ok(vec![(root, dropped.reshape(&f.shape)?), (f.outputs[0], y)]);
    }
    if let FusedKind::BatchNormStatsRunning { eps, update } = f.kind {
        let [x, mean, var] = args else {
            unreachable!("planned with x and the running statistics")
        };
        let (stats, running) = x.batch_norm_stats_running(eps, (mean, var), update)?;
        return Ok(vec![(root, stats), (f.outputs[0], running)]);
    }
    if let FusedKind::CrossEntropyReduced { mean, opts, sums } = f.kind {
        use crate::ops::loss::Divide;
        let divide = if mean { Divide::Rows } else { Divide::One };
        return match (&f.outputs[..], args.get(2), sums) {
            (&[grad, r], Some(g), Some(keepdim)) => {
                let (loss, dx, s) = args[0]
                    .cross_entropy_reduced_backward_sums(args[1], divide, g, opts, keepdim)?;
                Ok(vec![(root, loss), (grad, dx), (r, s)])
            }
            (&[grad, ..], Some(g), _) => {
                let (loss, dx) =
                    args[0].cross_entropy_reduced_backward(args[1], divide, g, opts)?;
                Ok(vec![(root, loss), (grad, dx)])
            }
            _ => Ok(vec![(
                root,
                args[0].cross_entropy_reduced_impl(args[1], divide, opts)?,
            )]),
        };
    }
    let dev = args[0].device();
    let DeviceInner::Gpu(ctx) = &dev.inner else {
        return Err(Error::Invalid {
            op: "fused",
            detail: "fused kernels run on a GPU device".into(),
        });
    };
    let mut made = Vec::with_capacity(1 + f.outputs.len());
    for &m in std::iter::once(&root).chain(&f.outputs) {
        made.push((m, gpu_output(ctx, dev, "fused", &f.shape, DType::F32)?));
    }
    let n: usize = f.shape.iter().product();
    if n == 0 {
        return Ok(made);
    }
    let mut bufs = Vec::with_capacity(args.len() + made.len());
    for t in args.iter().copied().chain(made.iter().map(|(_, t)| t)) {
        bufs.push(t.gpu_arg().expect("GPU device holds GPU tensors"));
    }
    ctx.dispatch(
        &kernel(&f.source),
        "fused",
        &[],
        &[n as u32],
        &bufs,
        grid_1d(ctx, n),
    )?;
    Ok(made)
}

/// Most parameters one fused update dispatch binds at `buffers` storage buffers each:
/// as many as the adapter's storage buffers per shader stage hold (WebGPU's default
/// of 8 gives Adam 2, lavapipe's 32 gives it 8), at most [`MAX_FUSED_PARAMS`]. Plain
/// SGD binds 2 per parameter (the parameter, in place, and its gradient), momentum
/// SGD 3 (and its moment), Adam 4 (and the second moment). A dispatch costs ~0.05 ms
/// on lavapipe whatever it updates: digits' Adam step went from 5 dispatches to 2.
pub(crate) fn params_per_dispatch(ctx: &GpuContext, buffers: usize) -> usize {
    let stage = ctx.summary.max_storage_buffers_per_stage as usize;
    (stage / buffers.max(1)).clamp(1, MAX_FUSED_PARAMS)
}

/// Longest if-chain a generated update kernel walks per element.
const MAX_FUSED_PARAMS: usize = 16;

/// Storage buffers plain SGD binds per parameter: the parameter (in place), its gradient.
const SGD_BUFFERS: usize = 2;

/// Elements of one parameter an invocation of a fused update (`sgd_fused`, `adam_fused`,
/// `momentum_fused`) updates.
const UPDATE_CHUNK: usize = 16;

/// Invocations a fused update runs for parameters of `sizes` elements: one per chunk of
/// [`UPDATE_CHUNK`] elements of each.
fn update_invocations(sizes: &[usize]) -> usize {
    sizes.iter().map(|n| n.div_ceil(UPDATE_CHUNK)).sum()
}

/// Appends one parameter's part of a fused update: invocations `start .. start + chunks`
/// each run `body` (WGSL statements on index `j`) for `per` consecutive values `j` of the
/// parameter's `len` (elements, or vec4s where it binds them so).
fn chunk_block(
    s: &mut String,
    (start, chunks): (usize, usize),
    (per, len): (usize, usize),
    body: &[String],
) {
    let _ = writeln!(
        s,
        "    if (i >= {start}u && i < {}u) {{\n\
         \x20       for (var u = 0u; u < {per}u; u = u + 1u) {{\n\
         \x20           let j = (i - {start}u) * {per}u + u;\n\
         \x20           if (j < {len}u) {{",
        start + chunks
    );
    for line in body {
        let _ = writeln!(s, "                {line}");
    }
    s.push_str("            }\n        }\n    }\n");
}

/// The WGSL of one in-place SGD step over parameters of `sizes` elements,
/// concatenated along one index: `p -= lr·(g + wd·p)`, as optim.wgsl's `sgd_update`.
/// One invocation per chunk of [`UPDATE_CHUNK`] elements of a parameter, as four vec4s where
/// its length is a multiple of 4 (else one element at a time): lavapipe pays per
/// workgroup and per lane step, and one element per invocation took 545 ms to update
/// ResNet-50's 25.6M parameters (11 dispatches, batch-8 training step).
pub(crate) fn sgd_source(sizes: &[usize], lr: f32, weight_decay: f32) -> String {
    let mut s = String::new();
    let total: usize = sizes.iter().sum();
    let _ = writeln!(
        s,
        "// sgd_fused.wgsl (generated) — in-place SGD of {} parameters ({total} elements),\n\
         // {UPDATE_CHUNK} elements of one parameter per invocation, workgroup size 256.",
        sizes.len()
    );
    s.push_str("struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }\n");
    s.push_str("@group(0) @binding(0) var<uniform> params: Params;\n");
    for (k, n) in sizes.iter().enumerate() {
        let ty = if n % 4 == 0 { "vec4<f32>" } else { "f32" };
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> p{k}: array<{ty}>; // ({n}) parameter\n\
             @group(0) @binding({}) var<storage, read> g{k}: array<{ty}>; // ({n}) gradient",
            2 * k + 1,
            2 * k + 2
        );
    }
    let (lr, wd) = (f32_literal(lr), f32_literal(weight_decay));
    s.push_str(
        "@compute @workgroup_size(256)\n\
         fn sgd_fused(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
         \x20            @builtin(local_invocation_index) lid: u32) {\n\
         \x20   let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;\n\
         \x20   if (i >= params.n) { return; } // n: chunks\n",
    );
    let mut start = 0;
    for (k, n) in sizes.iter().enumerate() {
        let chunks = n.div_ceil(UPDATE_CHUNK);
        // Values per chunk and their count in this parameter: vec4s or elements.
        let (per, len) = if n % 4 == 0 {
            (UPDATE_CHUNK / 4, n / 4)
        } else {
            (UPDATE_CHUNK, *n)
        };
        let body = [
            format!("let grad = g{k}[j] + {wd} * p{k}[j];"),
            format!("p{k}[j] = p{k}[j] - {lr} * grad;"),
        ];
        chunk_block(&mut s, (start, chunks), (per, len), &body);
        start += chunks;
    }
    s.push_str("}\n");
    s
}

/// Records plain SGD (no momentum) of every `(parameter, gradient)` pair in
/// place, a few parameters per dispatch; returns the generated sources.
pub(crate) fn sgd_update_all(
    pairs: &[(&Tensor, &Tensor)],
    lr: f32,
    weight_decay: f32,
) -> Result<Vec<String>> {
    let mut sources = Vec::new();
    let pairs: Vec<_> = pairs.iter().filter(|(p, _)| p.numel() > 0).collect();
    let Some((first, _)) = pairs.first() else {
        return Ok(sources);
    };
    let DeviceInner::Gpu(ctx) = &first.device().inner else {
        return Err(Error::Invalid {
            op: "sgd_fused",
            detail: "fused updates run on a GPU device".into(),
        });
    };
    for chunk in pairs.chunks(params_per_dispatch(ctx, SGD_BUFFERS)) {
        let sizes: Vec<usize> = chunk.iter().map(|(p, _)| p.numel()).collect();
        let total = update_invocations(&sizes);
        let source = sgd_source(&sizes, lr, weight_decay);
        let mut bufs = Vec::with_capacity(2 * chunk.len());
        for (p, g) in chunk {
            bufs.push(p.gpu_arg().expect("GPU device holds GPU tensors"));
            bufs.push(g.gpu_arg().expect("GPU device holds GPU tensors"));
        }
        let k = kernel(&source);
        ctx.dispatch(
            &k,
            "sgd_fused",
            &[],
            &[total as u32],
            &bufs,
            grid_1d(ctx, total),
        )?;
        sources.push(source);
    }
    Ok(sources)
}

/// Storage buffers a fused Adam (`adam`) or momentum-SGD update binds per parameter:
/// the parameter and its moments, read and written in place, and the gradient.
pub(crate) fn stateful_buffers(adam: bool) -> usize {
    if adam {
        4
    } else {
        3
    }
}

/// One parameter of a fused in-place update: its buffers, all of one size.
pub(crate) struct InPlace<'a> {
    /// The parameter (updated in place).
    pub(crate) p: &'a Tensor,
    /// Its gradient (read).
    pub(crate) g: &'a Tensor,
    /// Momentum / first moment (updated in place).
    pub(crate) m: &'a Tensor,
    /// Second moment (Adam only; updated in place).
    pub(crate) v: Option<&'a Tensor>,
}

/// optim.wgsl's `Params` and its per-element rules (`momentum_rule`, `adam_rule`),
/// the section between its `shared` markers: what a fused update computes per element.
fn optim_rules() -> &'static str {
    let src = crate::optim::SHADER.source;
    let start = src.find("// ---- shared: begin ----").unwrap_or(0);
    let end = src.find("// ---- shared: end ----").unwrap_or(src.len());
    &src[start..end]
}

/// The WGSL of one in-place update of parameters of `sizes` elements, concatenated
/// along one index, with optim.wgsl's `adam_rule` (or `momentum_rule`) and `Params`
/// (the plan writes the same words as for the unfused kernels, `n` being the group's
/// total).
fn stateful_source(entry: &str, sizes: &[usize], adam: bool) -> String {
    let mut s = String::new();
    let total: usize = sizes.iter().sum();
    let _ = writeln!(
        s,
        "// {entry}.wgsl (generated) — in-place update of {} parameters ({total} elements),\n\
         // {UPDATE_CHUNK} elements of one parameter per invocation, workgroup size 256.",
        sizes.len()
    );
    s.push_str(optim_rules());
    s.push_str("@group(0) @binding(0) var<uniform> params: Params;\n");
    let per = if adam { 4 } else { 3 };
    for (k, n) in sizes.iter().enumerate() {
        let b = per * k;
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> p{k}: array<f32>; // ({n}) parameter\n\
             @group(0) @binding({}) var<storage, read> g{k}: array<f32>; // ({n}) gradient\n\
             @group(0) @binding({}) var<storage, read_write> m{k}: array<f32>; // ({n}) first moment",
            b + 1,
            b + 2,
            b + 3
        );
        if adam {
            let _ = writeln!(
                s,
                "@group(0) @binding({}) var<storage, read_write> v{k}: array<f32>; // ({n}) second moment",
                b + 4
            );
        }
    }
    let _ = writeln!(
        s,
        "@compute @workgroup_size(256)\n\
         fn {entry}(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
         \x20          @builtin(local_invocation_index) lid: u32) {{\n\
         \x20   let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 256u + lid;\n\
         \x20   if (i >= {chunks}u) {{ return; }} // chunks of {UPDATE_CHUNK} (params.n = {total} elements)",
        chunks = update_invocations(sizes)
    );
    let mut start = 0;
    for (k, n) in sizes.iter().enumerate() {
        let chunks = n.div_ceil(UPDATE_CHUNK);
        let body = if adam {
            vec![
                format!("let r = adam_rule(p{k}[j], g{k}[j], m{k}[j], v{k}[j]);"),
                format!("m{k}[j] = r.m;"),
                format!("v{k}[j] = r.v;"),
                format!("p{k}[j] = r.p;"),
            ]
        } else {
            vec![
                format!("let r = momentum_rule(p{k}[j], g{k}[j], m{k}[j]);"),
                format!("m{k}[j] = r.m;"),
                format!("p{k}[j] = r.p;"),
            ]
        };
        chunk_block(&mut s, (start, chunks), (UPDATE_CHUNK, *n), &body);
        start += chunks;
    }
    s.push_str("}\n");
    s
}

/// The WGSL of one in-place Adam (or AdamW) step over parameters of `sizes` elements:
/// optim.wgsl's `adam_update`, with `p`, `m` and `v` written back where they were read.
pub(crate) fn adam_source(sizes: &[usize]) -> String {
    stateful_source("adam_fused", sizes, true)
}

/// The WGSL of one in-place SGD-with-momentum step over parameters of `sizes`
/// elements: optim.wgsl's `sgd_momentum_update`, in place.
pub(crate) fn momentum_source(sizes: &[usize]) -> String {
    stateful_source("momentum_fused", sizes, false)
}

/// Records one dispatch updating up to [`params_per_dispatch`] parameters of `group`
/// in place with `opt` (Adam, or SGD with momentum) at step `step`. Returns the
/// elements updated (the `n` of its params), or `None` when all are empty and nothing
/// was dispatched. Its params are optim.rs's `params_words(n, opt, step)`, so a plan
/// rewrites them per step as it does the unfused kernels'.
pub(crate) fn stateful_update(
    opt: &crate::optim::Optimizer,
    group: &[InPlace<'_>],
    step: u64,
) -> Result<Option<usize>> {
    let adam = matches!(opt, crate::optim::Optimizer::Adam { .. });
    let name = if adam { "adam_fused" } else { "momentum_fused" };
    let group: Vec<&InPlace<'_>> = group.iter().filter(|s| s.p.numel() > 0).collect();
    let Some(first) = group.first() else {
        return Ok(None);
    };
    let DeviceInner::Gpu(ctx) = &first.p.device().inner else {
        return Err(Error::Invalid {
            op: name,
            detail: "fused updates run on a GPU device".into(),
        });
    };
    let most = params_per_dispatch(ctx, stateful_buffers(adam));
    if group.len() > most || group.iter().any(|s| adam != s.v.is_some()) {
        return Err(Error::Invalid {
            op: name,
            detail: format!(
                "{} parameters in one dispatch (at most {most} on this adapter, each with \
                 a second moment for Adam and none for momentum SGD)",
                group.len()
            ),
        });
    }
    let sizes: Vec<usize> = group.iter().map(|s| s.p.numel()).collect();
    let total: usize = sizes.iter().sum();
    let source = if adam {
        adam_source(&sizes)
    } else {
        momentum_source(&sizes)
    };
    let mut bufs = Vec::with_capacity(4 * group.len());
    for s in &group {
        for t in [s.p, s.g, s.m].into_iter().chain(s.v) {
            if t.numel() != s.p.numel() {
                return Err(Error::Shape {
                    op: name,
                    detail: format!(
                        "parameter {:?} and its gradient or state {:?} differ",
                        s.p.shape(),
                        t.shape()
                    ),
                });
            }
            bufs.push(t.gpu_arg().ok_or_else(|| Error::Invalid {
                op: name,
                detail: "fused updates read GPU tensors".into(),
            })?);
        }
    }
    let words = crate::optim::params_words(total, opt, step);
    ctx.dispatch(
        &kernel(&source),
        name,
        &[],
        &words,
        &bufs,
        grid_1d(ctx, update_invocations(&sizes)),
    )?;
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(source: &str) {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("parse: {}\n{source}", e.emit_to_string(source)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("validate: {e:?}\n{source}"));
    }

    #[test]
    fn generated_sgd_validates() {
        for sizes in [&[1usize][..], &[8192, 128, 1280, 10], &[3, 0, 5]] {
            validate(&sgd_source(sizes, 0.05, 1e-4));
        }
    }

    #[test]
    fn generated_adam_and_momentum_validate() {
        for sizes in [&[1usize][..], &[8192, 128], &[3, 0], &[257]] {
            let adam = adam_source(sizes);
            validate(&adam);
            assert_eq!(
                adam.matches("let r = adam_rule(").count(),
                sizes.len(),
                "{adam}"
            );
            let momentum = momentum_source(sizes);
            validate(&momentum);
            assert_eq!(
                momentum.matches("let r = momentum_rule(").count(),
                sizes.len(),
                "{momentum}"
            );
        }
    }

    /// One fused step equals optim.wgsl's per-parameter kernels bit for bit (the same
    /// rules, from the same starting values), for two parameters in one dispatch.
    #[test]
    fn fused_updates_equal_the_unfused_kernels() {
        use crate::optim::{update, Optimizer, SlotState};
        use crate::Device;
        let Ok(dev) = Device::gpu() else { return };
        let data = |seed: u64, n: usize, lo: f32| crate::Rng::new(seed).vec_uniform(n, lo, 1.0);
        let adam_l2 = Optimizer::Adam {
            lr: 0.01,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.05,
            decoupled: false,
        };
        let momentum = Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-3,
        };
        for opt in [
            Optimizer::adam(0.01),
            Optimizer::adamw(0.01, 0.1),
            adam_l2,
            momentum,
        ] {
            let adam = matches!(opt, Optimizer::Adam { .. });
            let sizes = [257usize, 3];
            let mut want = Vec::new();
            let mut fused = Vec::new();
            for (k, &n) in sizes.iter().enumerate() {
                let seed = 10 * k as u64;
                let t = |seed: u64, lo: f32| {
                    Tensor::from_slice(&dev, &data(seed, n, lo), &[n]).unwrap()
                };
                let (p, g, m) = (t(seed, -1.0), t(seed + 1, -1e-3), t(seed + 2, -0.1));
                let v = adam.then(|| t(seed + 3, 0.0));
                let mut state = SlotState::with(Some(m.clone()), v.clone());
                let p_new = update(&opt, &p, &g, &mut state, 3).unwrap();
                let (m_new, v_new) = state.parts();
                let mut w = vec![p_new.to_vec::<f32>().unwrap()];
                w.push(m_new.unwrap().to_vec::<f32>().unwrap());
                w.extend(v_new.map(|v| v.to_vec::<f32>().unwrap()));
                want.push(w);
                fused.push((p, g, m, v));
            }
            let group: Vec<InPlace<'_>> = fused
                .iter()
                .map(|(p, g, m, v)| InPlace {
                    p,
                    g,
                    m,
                    v: v.as_ref(),
                })
                .collect();
            assert_eq!(stateful_update(&opt, &group, 3).unwrap(), Some(260));
            for (k, (p, _, m, v)) in fused.iter().enumerate() {
                let mut got = vec![p.to_vec::<f32>().unwrap(), m.to_vec::<f32>().unwrap()];
                got.extend(v.as_ref().map(|v| v.to_vec::<f32>().unwrap()));
                for (part, (g, w)) in got.iter().zip(&want[k]).enumerate() {
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(g), bits(w), "{opt:?}: parameter {k}, part {part}");
                }
            }
        }
    }

    #[test]
    fn optim_rules_are_the_shared_section() {
        let r = optim_rules();
        assert!(r.starts_with("// ---- shared: begin ----"), "{r}");
        for item in ["struct Params", "fn adam_rule(", "fn momentum_rule("] {
            assert!(r.contains(item), "{item} missing from\n{r}");
        }
        assert!(!r.contains("@group"), "{r}");
    }

    #[test]
    fn op_functions_keep_their_switches() {
        let f = op_functions();
        assert!(f.contains("fn unary_op(op: u32, x: f32)"), "{f}");
        assert!(f.contains("fn binary_op(op: u32, x: f32, y: f32)"), "{f}");
        assert!(!f.contains("switch OP"), "{f}");
    }
}
