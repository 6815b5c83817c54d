//! How much arithmetic a graph does: the multiply-adds of its products (matmuls and every
//! convolution pass). The bench reports it beside ResNet-50's time, and the executor uses it
//! to bound what it times at compile (`crate::plan_reads`).

use crate::graph::{Node, Op};
use crate::ops::conv_gemm::ConvPass;

/// Multiply-adds of `nodes`' products: matmuls (forward or backward), implicit-GEMM
/// convolution passes, convolution data gradients by phases and depthwise convolutions with
/// their gradients. Element-wise work, reductions and data movement count nothing.
/// ResNet-50's often-quoted "4.1 GFLOPs" (batch 1, 224×224) are these: its forward is
/// ~8.2 GFLOP at two FLOPs each.
pub fn multiply_adds(nodes: &[Node]) -> f64 {
    nodes.iter().map(|n| node_multiply_adds(nodes, n)).sum()
}

fn node_multiply_adds(nodes: &[Node], n: &Node) -> f64 {
    let numel = |s: &[usize]| s.iter().product::<usize>() as f64;
    let input = |i: usize| -> &[usize] {
        n.inputs
            .get(i)
            .map_or(&[][..], |&j| nodes[j].shape.as_slice())
    };
    let dim = |s: &[usize], i: usize| s.get(i).copied().unwrap_or(1) as f64;
    let out = numel(&n.shape);
    match &n.op {
        // Each output element sums K products, K being A's reduced dim.
        Op::MatMul { ta, .. } => {
            let a = input(0);
            let k = a.len().saturating_sub(if *ta { 2 } else { 1 });
            out * dim(a, k)
        }
        // Every pass makes N·OH·OW·F·(C/G)·KH·KW products: the upstream-sized operand (y,
        // or gy) times one filter's taps (w's numel over F).
        Op::Conv(pass, _) => {
            let (y, w) = match pass {
                ConvPass::Forward => (n.shape.as_slice(), input(1)),
                ConvPass::GradInput(_) => (input(0), input(1)),
                ConvPass::GradWeight => (input(1), n.shape.as_slice()),
            };
            numel(y) * numel(w) / dim(w, 0).max(1.0)
        }
        // Upstream (F, N·OH·OW) or (N, F, OH·OW) times flattened filters (F, C·KH·KW).
        Op::ConvGradInputPhased(..) => numel(input(0)) * dim(input(1), 1),
        Op::DepthwiseConv2d(g) => out * (g.kh * g.kw) as f64,
        // The upstream gradient (input 0 of the data gradient, 1 of the filter gradient)
        // times the taps, as in the forward.
        Op::DepthwiseGradX(g, _) => numel(input(0)) * (g.kh * g.kw) as f64,
        Op::DepthwiseGradW(g, _) => numel(input(1)) * (g.kh * g.kw) as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::conv::Conv2d;

    #[test]
    fn products_count_their_multiply_adds() {
        let g = Graph::new();
        let a = g.input("a", &[2, 3, 5]);
        let b = g.input("b", &[5, 7]);
        a.matmul(&b).unwrap();
        // 2·3 rows of 7 outputs, 5 products each.
        assert_eq!(multiply_adds(&g.nodes()), (2 * 3 * 7 * 5) as f64);
    }

    #[test]
    fn a_convolution_and_its_gradients_count_the_same_products() {
        let g = Graph::new();
        let x = g.input("x", &[2, 3, 9, 9]);
        let w = g.param("w", &[4, 3, 3, 3], crate::Init::Zeros);
        let y = x.conv2d(&w, Conv2d::new(3, 3).stride(2)).unwrap();
        assert_eq!(y.shape(), vec![2, 4, 4, 4]);
        let forward = (2 * 4 * 4 * 4 * 3 * 3 * 3) as f64;
        assert_eq!(multiply_adds(&g.nodes()), forward);
        crate::autodiff::grad(&y.sum().unwrap(), &[&x, &w]).unwrap();
        let nodes = g.nodes();
        let convs = nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv(..)))
            .count();
        assert_eq!(
            convs, 3,
            "the forward and both gradients are implicit GEMMs"
        );
        assert_eq!(multiply_adds(&nodes), 3.0 * forward);
    }
}
