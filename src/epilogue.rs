//! Fusion of an op with the op that consumes it, in a compiled graph: element-wise
//! epilogues into the product kernels, and a loss's mean into the loss kernel.
//!
//! After a product `C = op(A)·op(B)` whose only user is the pattern, seen through reshapes
//! (which keep the element order: a convolution's (N, F, L) viewed as (N, F, OH, OW)), the
//! pattern `relu?(C·a + c + bias + residual)` is computed by one product dispatch that applies
//! the ops as it stores C (matmul.wgsl's `epilogue`, the same f32 ops the element-wise kernels
//! run, in the same order). Each part is optional, in that order:
//! - `· a` with `a` one value per row of the product (per output channel of a convolution:
//!   `[F, 1, 1]`, `[1, F, 1, 1]`): a folded batch norm's factor;
//! - `+ c` per row (a folded batch norm's shift, a convolution's bias), or `+ bias` along the
//!   last dim of a plain product (`[N]` or `[1, .., 1, N]`: a linear layer);
//! - `+ residual`, a tensor shaped like the result (a residual connection);
//! - ReLU;
//!
//! and, directly after the product, `C · [y > 0]` with `y` shaped like C: ReLU's gradient
//! through the layer's output `y`, as `autodiff` writes it.
//!
//! And `cross_entropy(x, labels).mean()` (or `.sum()`), a training step's loss, is one
//! dispatch of [`Tensor::cross_entropy_reduced`](crate::Tensor::cross_entropy_reduced),
//! which also computes the loss's gradient when the graph asks for it with an upstream
//! known from the start (the mean's constant `1/rows`).
//!
//! Inner nodes (the product, the reshapes, all but the last op, the `[y > 0]` mask, the
//! per-row losses) must not be outputs of the run and must have no other user; then they
//! never run and never get a buffer. A training graph's forward values have other users
//! (their gradients read them), so there the pattern stops where it must.
//!
//! A product-like op other than `MatMul` joins by giving its `(rows, cols)` in
//! [`product_of`] and a [`ProductOp`] that `fusion::run` dispatches with the epilogue.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::fused::{EpiParts, Fused, FusedKind, ProductOp};
use crate::graph::{Node, NodeId, Op};
use crate::ops::batchnorm::BatchNormPass;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::matmul_plan::MatmulPlan;
use crate::ops::reduce::ReduceOp;

/// The epilogue fusions among the live nodes: the fused op of every root, and the
/// nodes they absorb. `users[j]` lists the live nodes reading `j`; `keep[j]` marks
/// outputs of the run, `leaf[j]` values that are not computed.
pub(crate) fn plan(
    nodes: &[Node],
    order: &[NodeId],
    users: &[Vec<NodeId>],
    keep: &[bool],
    leaf: &[bool],
) -> (HashMap<NodeId, Fused>, Vec<bool>) {
    let mut roots = HashMap::new();
    let mut absorbed = vec![false; nodes.len()];
    // Dropouts whose backward the batch norm gradient passes reading them apply.
    let mut dropped: Vec<NodeId> = Vec::new();
    // An inner node: computed, not asked for, read by `by` alone.
    let inner = |j: NodeId, by: NodeId| !keep[j] && !leaf[j] && users[j] == [by];
    let f32_node = |j: NodeId| nodes[j].dtype == DType::F32;
    for &m in order {
        if let Op::ReduceAll(op @ (ReduceOp::Mean | ReduceOp::Sum)) = nodes[m].op {
            let losses = nodes[m].inputs[0];
            if let (Op::CrossEntropy(opts), true) = (&nodes[losses].op, inner(losses, m)) {
                let opts = *opts;
                absorbed[losses] = true;
                let mut inputs = nodes[losses].inputs.clone();
                // The loss's gradient on the same logits and labels, when its upstream is
                // a value from the start (a mean's or sum's constant): the same dispatch.
                let grad = order.iter().copied().find(|&j| {
                    matches!(nodes[j].op, Op::CrossEntropyGrad(o) if o == opts)
                        && nodes[j].inputs[..2] == inputs[..]
                        && leaf[nodes[j].inputs[2]]
                        && !absorbed[j]
                });
                let mut sums = None;
                let outputs = match grad {
                    Some(j) => {
                        absorbed[j] = true;
                        inputs.push(nodes[j].inputs[2]);
                        // The gradient's sum over rows (a bias's gradient): the same kernel.
                        match column_sums(nodes, users, &absorbed, j) {
                            Some(r) => {
                                absorbed[r] = true;
                                if let Op::Reduce { keepdim, .. } = nodes[r].op {
                                    sums = Some(keepdim);
                                }
                                vec![j, r]
                            }
                            None => vec![j],
                        }
                    }
                    None => Vec::new(),
                };
                roots.insert(
                    m,
                    Fused {
                        inputs,
                        members: 2 + outputs.len(),
                        outputs,
                        shape: nodes[m].shape.clone(),
                        source: String::new(),
                        kind: FusedKind::CrossEntropyReduced {
                            mean: op == ReduceOp::Mean,
                            opts,
                            sums,
                        },
                    },
                );
            }
            continue;
        }
        if let Some((fused, reshapes)) = apply_and_dropout(nodes, order, users, keep, &absorbed, m)
        {
            for j in reshapes {
                absorbed[j] = true;
            }
            absorbed[fused.outputs[0]] = true;
            roots.insert(m, fused);
            continue;
        }
        if let Some(fused) = stats_and_running(nodes, users, leaf, &absorbed, m) {
            absorbed[fused.outputs[0]] = true;
            roots.insert(m, fused);
            continue;
        }
        if let Some(absorbs) = dropped_gradient(nodes, users, keep, &absorbed, m) {
            for j in absorbs {
                absorbed[j] = true;
            }
            dropped.push(m);
            continue;
        }
        // A batch norm gradient pass reading the dropout (through reshapes) absorbed above:
        // its upstream before the dropout, and the dropout's step, instead.
        let from_dropout = |m: NodeId| {
            let mut g = nodes[m].inputs[0];
            while let Op::Reshape(_) = nodes[g].op {
                g = nodes[g].inputs[0];
            }
            let Op::Dropout { p, seed } = nodes[g].op else {
                return None;
            };
            dropped.contains(&g).then(|| {
                let mut inputs = nodes[m].inputs.clone();
                inputs[0] = nodes[g].inputs[0];
                inputs.push(nodes[g].inputs[1]);
                (inputs, (p, seed))
            })
        };
        if let Some((members, root)) = grad_x_channels_first(nodes, users, &inner, m) {
            for j in members {
                absorbed[j] = true;
            }
            let (inputs, drop) = match from_dropout(m) {
                Some((inputs, drop)) => (inputs, Some(drop)),
                None => (nodes[m].inputs.clone(), None),
            };
            roots.insert(
                root,
                Fused {
                    inputs,
                    outputs: Vec::new(),
                    shape: nodes[root].shape.clone(),
                    source: String::new(),
                    members: 3,
                    kind: FusedKind::BatchNormGradXChannelsFirst { drop },
                },
            );
            continue;
        }
        if let Op::BatchNorm(
            pass @ (BatchNormPass::GradSums { .. } | BatchNormPass::GradX { .. }),
        ) = nodes[m].op
        {
            if let Some((inputs, (p, seed))) = from_dropout(m) {
                let sums = matches!(pass, BatchNormPass::GradSums { .. });
                roots.insert(
                    m,
                    Fused {
                        inputs,
                        outputs: Vec::new(),
                        shape: nodes[m].shape.clone(),
                        source: String::new(),
                        members: 1,
                        kind: FusedKind::BatchNormGradDropped { sums, p, seed },
                    },
                );
                continue;
            }
        }
        let Some((op, rows, cols)) = product_of(nodes, m) else {
            continue;
        };
        if !f32_node(m) {
            continue;
        }
        // A product of im2col patches that nothing else reads: Winograd where it pays, else
        // patches made the adapter's cheapest way where that differs from im2col's.
        let patches = patches_of(nodes, m).filter(|&(cols, _)| inner(cols, m));
        let op = match patches {
            Some((_, op)) => op,
            None => op,
        };
        let taken = |j: NodeId| absorbed[j] || roots.contains_key(&j);
        let found = grow(nodes, users, &inner, &taken, m, (rows, cols), &op);
        // Both replace the product and im2col even with no epilogue after them.
        let found = match (found, patches) {
            (Some(f), _) => f,
            (None, Some(_)) => Found {
                root: m,
                members: Vec::new(),
                epi: EpiParts::default(),
                operands: Vec::new(),
            },
            (None, None) => continue,
        };
        let mut inputs = nodes[m].inputs.clone();
        if let Some((cols, _)) = patches {
            // The image in place of its patches, which are never made.
            inputs[1] = nodes[cols].inputs[0];
            absorbed[cols] = true;
        }
        inputs.extend(found.operands);
        for &j in &found.members {
            absorbed[j] = true;
        }
        roots.insert(
            found.root,
            Fused {
                inputs,
                outputs: Vec::new(),
                shape: nodes[found.root].shape.clone(),
                source: String::new(),
                members: found.members.len() + 1,
                kind: FusedKind::Product { op, epi: found.epi },
            },
        );
    }
    (roots, absorbed)
}

/// A dropout at `m` (the backward of a dropout of a batch norm's output) whose value
/// only batch norm gradient passes read, as their upstream g, directly or through
/// reshapes that nothing else reads: those passes can apply it as they read g (see
/// `FusedKind::BatchNormGradDropped`). Returns the nodes it absorbs: the dropout and the
/// reshapes.
fn dropped_gradient(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    keep: &[bool],
    absorbed: &[bool],
    m: NodeId,
) -> Option<Vec<NodeId>> {
    let Op::Dropout { .. } = nodes[m].op else {
        return None;
    };
    let mut absorbs = vec![m];
    let mut passes = Vec::new();
    let mut at = vec![m];
    while let Some(v) = at.pop() {
        if keep[v] || absorbed[v] || nodes[v].dtype != DType::F32 || users[v].is_empty() {
            return None;
        }
        for &u in &users[v] {
            match nodes[u].op {
                Op::Reshape(_) => {
                    absorbs.push(u);
                    at.push(u);
                }
                Op::BatchNorm(BatchNormPass::GradSums { .. } | BatchNormPass::GradX { .. })
                    if nodes[u].inputs[0] == v && !nodes[u].inputs[1..].contains(&v) =>
                {
                    passes.push(u)
                }
                _ => return None,
            }
        }
    }
    (!passes.is_empty()).then_some(absorbs)
}

/// A sum over the rows of the 2-D gradient `j`, read directly or through reshapes to the
/// same shape (`sum_back_to` in src/autodiff.rs writes one before it reduces): the
/// gradient of a bias added to logits, which the loss's gradient kernel can sum.
fn column_sums(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    absorbed: &[bool],
    j: NodeId,
) -> Option<NodeId> {
    let shape = &nodes[j].shape;
    if shape.len() != 2 {
        return None;
    }
    let mut readers: Vec<NodeId> = users[j].clone();
    for &v in &users[j] {
        if matches!(&nodes[v].op, Op::Reshape(s) if s == shape) {
            readers.extend(&users[v]);
        }
    }
    readers.into_iter().find(|&r| {
        let rows = matches!(
            nodes[r].op,
            Op::Reduce {
                op: ReduceOp::Sum,
                axis: 0,
                ..
            }
        );
        let from = nodes[r].inputs[0];
        rows && nodes[from].shape == *shape && nodes[r].dtype == DType::F32 && !absorbed[r]
    })
}

/// A dropout at `m` of a batch norm's normalisation, seen through reshapes (a flatten)
/// that nothing else reads: one kernel writes both, the normalisation beside the dropout.
/// Only when every other reader of the normalisation runs after the dropout (a training
/// graph's backward pass), which is where the kernel makes its value. Returns the fused
/// node and the reshapes it absorbs.
fn apply_and_dropout(
    nodes: &[Node],
    order: &[NodeId],
    users: &[Vec<NodeId>],
    keep: &[bool],
    absorbed: &[bool],
    m: NodeId,
) -> Option<(Fused, Vec<NodeId>)> {
    let Op::Dropout { p, seed } = nodes[m].op else {
        return None;
    };
    let [mut v, step] = nodes[m].inputs[..] else {
        return None;
    };
    let mut reshapes = Vec::new();
    let mut reader = m;
    while let Op::Reshape(_) = nodes[v].op {
        if keep[v] || users[v] != [reader] || absorbed[v] {
            return None;
        }
        reshapes.push(v);
        reader = v;
        v = nodes[v].inputs[0];
    }
    let Op::BatchNorm(BatchNormPass::Apply { relu }) = nodes[v].op else {
        return None;
    };
    let at = |j: NodeId| order.iter().position(|&o| o == j);
    let dropout_at = at(m)?;
    let later = users[v]
        .iter()
        .all(|&u| u == reader || at(u).is_some_and(|k| k > dropout_at));
    // The step is read where the dropout runs; the normalisation's inputs come before it.
    if !later || absorbed[v] || nodes[v].dtype != DType::F32 {
        return None;
    }
    let mut inputs = nodes[v].inputs.clone();
    inputs.push(step);
    let fused = Fused {
        inputs,
        outputs: vec![v],
        shape: nodes[m].shape.clone(),
        source: String::new(),
        members: 2 + reshapes.len(),
        kind: FusedKind::BatchNormApplyDropout { relu, p, seed },
    };
    Some((fused, reshapes))
}

/// A batch norm's statistics at `m` and the running statistics' update that reads them,
/// when the running mean and variance it also reads are values from the start (state): one
/// kernel, the update written beside the statistics.
fn stats_and_running(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    leaf: &[bool],
    absorbed: &[bool],
    m: NodeId,
) -> Option<Fused> {
    let Op::BatchNorm(BatchNormPass::Stats { eps }) = nodes[m].op else {
        return None;
    };
    users[m].iter().find_map(|&j| {
        let Op::BatchNorm(BatchNormPass::Running {
            keep,
            take_mean,
            take_var,
        }) = nodes[j].op
        else {
            return None;
        };
        let [s, mean, var] = nodes[j].inputs[..] else {
            return None;
        };
        (s == m && leaf[mean] && leaf[var] && !absorbed[j]).then(|| Fused {
            inputs: vec![nodes[m].inputs[0], mean, var],
            outputs: vec![j],
            shape: nodes[m].shape.clone(),
            source: String::new(),
            members: 2,
            kind: FusedKind::BatchNormStatsRunning {
                eps,
                update: (keep, take_mean, take_var),
            },
        })
    })
}

/// A batch norm's input gradient at `m` (x (N, C, …)) whose one user is a reshape to
/// (N, C, L) and a permute to (C, N, L): the gradient a batch-folded convolution
/// (src/graph/conv.rs) reads, stored in that order by the gradient's kernel. Returns the
/// nodes it absorbs (the gradient, the reshape) and the permute, the root.
fn grad_x_channels_first(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    inner: &dyn Fn(NodeId, NodeId) -> bool,
    m: NodeId,
) -> Option<(Vec<NodeId>, NodeId)> {
    let Op::BatchNorm(BatchNormPass::GradX { .. }) = nodes[m].op else {
        return None;
    };
    let x = &nodes[m].shape;
    let [r] = users[m][..] else { return None };
    let [p] = users.get(r)?[..] else { return None };
    let grouped = [x[0], x[1], x[2..].iter().product()];
    let permutes = matches!(&nodes[p].op, Op::Permute(axes) if axes[..] == [1, 0, 2]);
    let fits = matches!(nodes[r].op, Op::Reshape(_))
        && nodes[r].shape == grouped
        && permutes
        && inner(m, r)
        && inner(r, p)
        && nodes[p].dtype == DType::F32;
    fits.then_some((vec![m, r], p))
}

/// The product a node computes, with the rows and columns of its output matrices (its
/// elements are (batch, rows, cols) in that order), if it can take an epilogue.
fn product_of(nodes: &[Node], m: NodeId) -> Option<(ProductOp, usize, usize)> {
    if let Op::Conv(crate::ops::conv_gemm::ConvPass::Forward, geom) = nodes[m].op {
        // (N, F, OH, OW): N matrices of F rows (the output channels), OH·OW columns.
        let [_, f, oh, ow] = nodes[m].shape[..] else {
            return None;
        };
        return Some((ProductOp::Conv(geom), f, oh * ow));
    }
    let Op::MatMul { ta, tb } = nodes[m].op else {
        return None;
    };
    let [a, b] = nodes[m].inputs[..] else {
        return None;
    };
    let plan = MatmulPlan::new(&nodes[a].shape, &nodes[b].shape, ta, tb).ok()?;
    Some((ProductOp::MatMul { ta, tb }, plan.m, plan.n))
}

/// The im2col node of product `m`, when `m` is `(F, CK)·im2col(x)ᵀ` (the product
/// `Var::conv2d` records for a dense convolution), and what computes the two from x:
/// Winograd where it computes the convolution and pays (`ops::winograd::prefer_winograd`),
/// else `ProductOp::Patches` where the patch rows are not a multiple of 4 (the product would
/// copy them into padded rows). `None`: the product stays as it is.
fn patches_of(nodes: &[Node], m: NodeId) -> Option<(NodeId, ProductOp)> {
    let Op::MatMul {
        ta: false,
        tb: true,
    } = nodes[m].op
    else {
        return None;
    };
    let [a, cols] = nodes[m].inputs[..] else {
        return None;
    };
    let Op::Im2Col(geom) = nodes[cols].op else {
        return None;
    };
    let x = &nodes[nodes[cols].inputs[0]];
    let (&[f, k], &[_, c, _, _]) = (&nodes[a].shape[..], &x.shape[..]) else {
        return None;
    };
    let dense = k == c * geom.kh * geom.kw && x.dtype == DType::F32 && nodes[a].dtype == DType::F32;
    if !dense {
        return None;
    }
    if k == 9 * c && crate::ops::winograd::prefer_winograd(&x.shape, &[f, c, 3, 3], &geom) {
        return Some((cols, ProductOp::Winograd(geom)));
    }
    let wanted = k % 4 != 0 && crate::ops::conv::patches_routes_on();
    wanted.then_some((cols, ProductOp::Patches(geom)))
}

/// An epilogue found after a product.
struct Found {
    /// The last node it computes.
    root: NodeId,
    /// The nodes it absorbs (the product included, the root not).
    members: Vec<NodeId>,
    /// The parts, and their operands in [`EpiParts`] order.
    epi: EpiParts,
    operands: Vec<NodeId>,
}

/// Grows the epilogue of product `m` through its single users, in the order the kernel
/// applies the parts (see the module doc); `None` when no part follows it. `inner(j, by)`:
/// `j` is computed, not asked for, and read by `by` alone; `taken(j)`: `j` already belongs
/// to another fusion.
fn grow(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    inner: &dyn Fn(NodeId, NodeId) -> bool,
    taken: &dyn Fn(NodeId) -> bool,
    m: NodeId,
    (rows, cols): (usize, usize),
    op: &ProductOp,
) -> Option<Found> {
    // Stages: 0 reshapes, 1 scale, 2 shift or bias, 3 residual, 4 relu, 5 mask (last).
    let mut stage = 0;
    let mut epi = EpiParts::default();
    let mut ops: [Option<NodeId>; 5] = [None; 5]; // scale, shift, bias, residual, y
    let mut chain = vec![m];
    let mut extra_members = Vec::new();
    let mut view = nodes[m].shape.clone();
    loop {
        let cur = chain[chain.len() - 1];
        let [u] = users[cur][..] else { break };
        if !inner(cur, u) || taken(u) || nodes[u].dtype != DType::F32 {
            break;
        }
        // The operand of binary `u` that is not `cur`.
        let other = match nodes[u].inputs[..] {
            [x, y] if x == cur && y != cur => Some(y),
            [x, y] if y == cur && x != cur => Some(x),
            _ => None,
        }
        .filter(|&q| nodes[q].dtype == DType::F32);
        let axis = other.and_then(|q| along(&nodes[q].shape, &view, rows, cols));
        // A permute of the columns' groups ends the pattern: the product's stores do it.
        // One output matrix whose (rows, cols) the permute sees as (rows, cols / g, g), g a
        // multiple of 4 (the stores move vec4s of columns); not with a residual or a mask,
        // which the kernel would read in the permuted order.
        if let Some(([r, q, g], permute)) = column_groups(nodes, users, inner, taken, u, &view) {
            let grouped = EpiParts { group: g, ..epi };
            let one_matrix = view.iter().product::<usize>() == rows * cols;
            if one_matrix
                && (r, q * g) == (rows, cols)
                && g % 4 == 0
                && !epi.residual
                && !epi.mask
                && op.takes(&grouped)
            {
                epi = grouped;
                chain.extend(permute);
            }
            break;
        }
        // What the parts were before `u`: restored when its part is one the kernel does not
        // take (ProductOp::takes), which ends the pattern there.
        let before = (epi, ops, stage, extra_members.len());
        match nodes[u].op {
            Op::Reshape(_) if stage == 0 => {
                view = nodes[u].shape.clone();
                chain.push(u);
                continue;
            }
            _ if nodes[u].shape != view => break,
            Op::Binary(BinaryOp::Mul) if stage < 1 && axis == Some(Along::Row) => {
                (epi.scale, ops[0], stage) = (true, other, 1);
            }
            Op::Binary(BinaryOp::Add) if stage < 2 && axis == Some(Along::Row) => {
                (epi.shift, ops[1], stage) = (true, other, 2);
            }
            Op::Binary(BinaryOp::Add) if stage < 2 && axis == Some(Along::Col) => {
                (epi.bias, ops[2], stage) = (true, other, 2);
            }
            Op::Binary(BinaryOp::Add)
                if stage < 3 && other.is_some_and(|q| nodes[q].shape == view) =>
            {
                (epi.residual, ops[3], stage) = (true, other, 3);
            }
            Op::Unary(UnaryOp::Relu) if stage < 4 => {
                (epi.relu, stage) = (true, 4);
            }
            // C · [y > 0], directly after the product: ReLU's gradient.
            Op::Binary(BinaryOp::Mul) if chain.len() == 1 => {
                let Some(q) = other else { break };
                let is_mask = matches!(
                    nodes[q].op,
                    Op::Scalar { op: BinaryOp::Gt, value, lhs: false } if value == 0.0
                ) && inner(q, u)
                    && !taken(q);
                match nodes[q].inputs.first().copied() {
                    Some(y)
                        if is_mask && nodes[y].dtype == DType::F32 && nodes[y].shape == view =>
                    {
                        (epi.mask, ops[4], stage) = (true, Some(y), 5);
                        extra_members.push(q);
                    }
                    _ => break,
                }
            }
            _ => break,
        }
        if !op.takes(&epi) {
            (epi, ops, stage) = (before.0, before.1, before.2);
            extra_members.truncate(before.3);
            break;
        }
        chain.push(u);
    }
    // Trailing reshapes stay outside: the root is the last part.
    while chain.len() > 1 && matches!(nodes[chain[chain.len() - 1]].op, Op::Reshape(_)) {
        chain.pop();
    }
    if stage == 0 && epi.group == 0 {
        return None;
    }
    let root = chain.pop()?;
    chain.extend(extra_members);
    Some(Found {
        root,
        members: chain,
        epi,
        operands: ops.into_iter().flatten().collect(),
    })
}

/// The permute (R, Q, G) → (Q, R, G) at `u`, of the product's elements viewed as
/// (R, Q, G) by a reshape at `u` or already: ([R, Q, G], the nodes it takes: the reshape,
/// if any, and the permute). A batch-folded convolution's last step.
fn column_groups(
    nodes: &[Node],
    users: &[Vec<NodeId>],
    inner: &dyn Fn(NodeId, NodeId) -> bool,
    taken: &dyn Fn(NodeId) -> bool,
    u: NodeId,
    view: &[usize],
) -> Option<([usize; 3], Vec<NodeId>)> {
    let permutes = |j: NodeId| matches!(&nodes[j].op, Op::Permute(axes) if axes[..] == [1, 0, 2]);
    let (grouped, members) = match nodes[u].op {
        Op::Reshape(_) => match users[u][..] {
            [p] if permutes(p) && inner(u, p) && !taken(p) => (&nodes[u].shape[..], vec![u, p]),
            _ => return None,
        },
        _ if permutes(u) => (view, vec![u]),
        _ => return None,
    };
    let [r, q, g] = grouped[..] else { return None };
    Some(([r, q, g], members))
}

/// Which index of a product's elements an operand follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Along {
    /// One value per row of each output matrix (an output channel).
    Row,
    /// One value per column (a linear layer's bias).
    Col,
}

/// How `operand`, broadcast against `view` (the shape the graph gives the product's
/// (batch, rows, cols) elements), is indexed: one value per row, one per column, or
/// neither (`None`). Its dims other than 1 must be whole dims of `view` that together span
/// exactly the rows (with the columns inside them) or exactly the columns.
fn along(operand: &[usize], view: &[usize], rows: usize, cols: usize) -> Option<Along> {
    if operand.len() > view.len() {
        return None;
    }
    let pad = view.len() - operand.len();
    let at = |d: usize| if d < pad { 1 } else { operand[d - pad] };
    let spread: Vec<usize> = (0..view.len()).filter(|&d| at(d) != 1).collect();
    let (Some(&first), Some(&last)) = (spread.first(), spread.last()) else {
        // One value for everything: a column bias of a one-column product.
        return (cols == 1).then_some(Along::Col);
    };
    if (first..=last).any(|d| at(d) != view[d]) {
        return None;
    }
    let span: usize = view[first..=last].iter().product();
    let inside: usize = view[last + 1..].iter().product();
    match (span, inside) {
        (s, 1) if s == cols => Some(Along::Col),
        (s, i) if s == rows && i == cols => Some(Along::Row),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{along, Along};

    #[test]
    fn column_bias_shapes() {
        let col = |b: &[usize], out: &[usize], rows, cols| along(b, out, rows, cols);
        assert_eq!(col(&[10], &[256, 10], 256, 10), Some(Along::Col));
        assert_eq!(col(&[1, 10], &[256, 10], 256, 10), Some(Along::Col));
        assert_eq!(col(&[1, 1, 10], &[4, 256, 10], 256, 10), Some(Along::Col));
        assert_eq!(col(&[256, 1], &[256, 10], 256, 10), Some(Along::Row)); // along columns
        assert_eq!(col(&[256, 10], &[256, 10], 256, 10), None); // not a broadcast row
        assert_eq!(col(&[1, 1, 10], &[256, 10], 256, 10), None); // would broadcast C itself
        assert_eq!(col(&[], &[10], 1, 10), None);
        assert_eq!(col(&[1], &[7, 1], 7, 1), Some(Along::Col));
    }

    #[test]
    fn channel_shapes_of_a_convolution() {
        // A convolution's (N, F, L) product viewed as (N, F, OH, OW).
        let (view, f, l) = ([2, 6, 3, 5], 6, 15);
        for ch in [&[6, 1, 1][..], &[1, 6, 1, 1]] {
            assert_eq!(along(ch, &view, f, l), Some(Along::Row), "{ch:?}");
        }
        assert_eq!(along(&[6, 1], &[2, 6, 15], f, l), Some(Along::Row));
        assert_eq!(along(&[6, 3, 1], &view, f, l), None); // per channel and row of pixels
        assert_eq!(along(&[3, 5], &view, f, l), Some(Along::Col)); // per pixel: a column bias
        assert_eq!(along(&[1, 6, 1, 5], &view, f, l), None);
        assert_eq!(along(&[2, 6, 1, 1], &view, f, l), None); // per image and channel
        assert_eq!(along(&[1, 1, 1, 1], &view, f, l), None);
        // A batch of images folded into rows: (N·F) rows per matrix of one image each.
        assert_eq!(along(&[6, 1, 1], &[1, 6, 3, 5], 6, 15), Some(Along::Row));
    }
}
