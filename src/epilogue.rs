//! Fusion of an op with the op that consumes it, in a compiled graph: element-wise
//! epilogues into the matmul kernels, and a loss's mean into the loss kernel.
//!
//! Three patterns after a product `C = op(A)·op(B)` whose only user is the pattern, each
//! computed by one matmul dispatch that applies the ops as it stores C (matmul.wgsl's
//! `epilogue`, the same f32 ops the element-wise kernels run):
//! - `C + bias`, bias along C's last dim (`[N]` or `[1, .., 1, N]`): a linear layer;
//! - `relu(C + bias)`: a layer with its activation;
//! - `C · [y > 0]` with `y` shaped like C: ReLU's gradient through the layer's output `y`,
//!   as `autodiff` writes it.
//!
//!
//! And `cross_entropy(x, labels).mean()` (or `.sum()`), a training step's loss, is one
//! dispatch of [`Tensor::cross_entropy_reduced`](crate::Tensor::cross_entropy_reduced),
//! which also computes the loss's gradient when the graph asks for it with an upstream
//! known from the start (the mean's constant `1/rows`).
//!
//! Inner nodes (the product, the bias add, the `[y > 0]` mask, the per-row losses) must
//! not be outputs of the run and must have no other user; then they never run and never
//! get a buffer.

use std::collections::HashMap;

use crate::dtype::DType;
use crate::fusion::{Fused, FusedKind};
use crate::graph::{Node, NodeId, Op};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
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
                let outputs = match grad {
                    Some(j) => {
                        absorbed[j] = true;
                        inputs.push(nodes[j].inputs[2]);
                        vec![j]
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
                        },
                    },
                );
            }
            continue;
        }
        let Op::MatMul { ta, tb } = nodes[m].op else {
            continue;
        };
        if !f32_node(m) || users[m].len() != 1 || !inner(m, users[m][0]) {
            continue;
        }
        let shape = &nodes[m].shape;
        let e = users[m][0];
        if nodes[e].shape != *shape {
            continue; // the product itself is broadcast: not an epilogue
        }
        let other = |e: NodeId| -> Option<NodeId> {
            let ins = &nodes[e].inputs;
            match ins.as_slice() {
                [x, y] if *x == m && *y != m => Some(*y),
                [x, y] if *y == m && *x != m => Some(*x),
                _ => None,
            }
        };
        let kind = |bias, relu, mask| FusedKind::Matmul {
            ta,
            tb,
            bias,
            relu,
            mask,
        };
        let (root, members, extra, kind) = match nodes[e].op {
            Op::Binary(BinaryOp::Add) => {
                let Some(b) =
                    other(e).filter(|&b| f32_node(b) && is_row_bias(&nodes[b].shape, shape))
                else {
                    continue;
                };
                // relu(C + bias) when the sum has no other use.
                let relu = users[e].len() == 1
                    && inner(e, users[e][0])
                    && matches!(nodes[users[e][0]].op, Op::Unary(UnaryOp::Relu));
                if relu {
                    let r = users[e][0];
                    (r, vec![m, e], vec![b], kind(true, true, false))
                } else {
                    (e, vec![m], vec![b], kind(true, false, false))
                }
            }
            Op::Binary(BinaryOp::Mul) => {
                let Some(q) = other(e) else { continue };
                let is_mask = matches!(
                    nodes[q].op,
                    Op::Scalar { op: BinaryOp::Gt, value, lhs: false } if value == 0.0
                ) && inner(q, e);
                let y = nodes[q].inputs.first().copied();
                match y {
                    Some(y) if is_mask && f32_node(y) && nodes[y].shape == *shape => {
                        (e, vec![m, q], vec![y], kind(false, false, true))
                    }
                    _ => continue,
                }
            }
            _ => continue,
        };
        if members.iter().any(|&j| absorbed[j]) || roots.contains_key(&root) {
            continue;
        }
        let mut inputs = nodes[m].inputs.clone();
        inputs.extend(extra);
        for &j in &members {
            absorbed[j] = true;
        }
        roots.insert(
            root,
            Fused {
                inputs,
                outputs: Vec::new(),
                shape: nodes[root].shape.clone(),
                source: String::new(),
                members: members.len() + 1,
                kind,
            },
        );
    }
    (roots, absorbed)
}

/// Whether `bias` adds one value per column of a product shaped `out`: `[N]` or
/// `[1, .., 1, N]` with N the product's last dim.
fn is_row_bias(bias: &[usize], out: &[usize]) -> bool {
    match (bias.split_last(), out.last()) {
        (Some((&n, lead)), Some(&cols)) => {
            n == cols && lead.len() < out.len() && lead.iter().all(|&d| d == 1)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_row_bias;

    #[test]
    fn row_bias_shapes() {
        assert!(is_row_bias(&[10], &[256, 10]));
        assert!(is_row_bias(&[1, 10], &[256, 10]));
        assert!(is_row_bias(&[1, 1, 10], &[4, 256, 10]));
        assert!(!is_row_bias(&[256, 1], &[256, 10])); // along columns
        assert!(!is_row_bias(&[256, 10], &[256, 10])); // not a broadcast row
        assert!(!is_row_bias(&[1, 1, 10], &[256, 10])); // would broadcast C itself
        assert!(!is_row_bias(&[], &[10]));
    }
}
