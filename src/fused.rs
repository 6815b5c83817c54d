//! What a fused node of a compiled graph is: the shared description that the planners
//! (`fusion` for element-wise chains, `epilogue` for products, losses and layouts) produce and
//! `fusion::run`, the executor and the recorded plan consume. It sits below both planners
//! so that neither imports the other's types.

use crate::graph::NodeId;

/// One fused node: a chain of graph nodes computed by one kernel, ending at its root.
#[derive(Clone, Debug)]
pub(crate) struct Fused {
    /// The nodes outside the chain it reads, in binding order.
    pub(crate) inputs: Vec<NodeId>,
    /// Chain values also used outside it (or asked for): written beside the root.
    pub(crate) outputs: Vec<NodeId>,
    /// Output shape.
    pub(crate) shape: Vec<usize>,
    /// The generated WGSL (entry point `fused`) of a [`FusedKind::Chain`].
    pub(crate) source: String,
    /// Nodes fused (root included).
    pub(crate) members: usize,
    /// What computes it.
    pub(crate) kind: FusedKind,
}

/// The kernel of a fused node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FusedKind {
    /// The generated element-wise kernel in `source`.
    Chain,
    /// A product applying an epilogue as it stores (src/epilogue.rs): inputs are the
    /// product's operands, then the epilogue's operands in [`EpiParts`] order.
    Product { op: ProductOp, epi: EpiParts },
    /// `cross_entropy(x, labels)` and its mean (or sum) over rows in one kernel; inputs
    /// are the logits and the labels, then the upstream of the loss's gradient when that
    /// gradient (the one output) is computed by the same kernel.
    /// `mean` divides by all rows (the graph's `.mean()`), ignored ones included.
    /// `sums`: the gradient's column sums (a reduction over rows, keeping that axis or not:
    /// the gradient of a bias added to the logits) are a second output, made by the kernel.
    CrossEntropyReduced {
        mean: bool,
        opts: crate::ops::loss::CrossEntropyOptions,
        sums: Option<bool>,
    },
    /// A batch norm's input gradient (`BatchNormPass::GradX`) and the permute
    /// (N, C, L) → (C, N, L) after it, stored channels first by the one kernel: a
    /// batch-folded convolution's gradient. Inputs are the gradient pass's; with `drop`,
    /// as in [`FusedKind::BatchNormGradDropped`].
    BatchNormGradXChannelsFirst { drop: Option<(f32, u64)> },
    /// A batch norm's gradient sums (`sums`) or input gradient whose upstream is the
    /// backward of a dropout (p, seed) of the normalisation's output, seen through
    /// reshapes: the kernel applies the dropout as it reads the upstream. Inputs are the
    /// pass's, the upstream taken before the dropout, then the dropout's step.
    BatchNormGradDropped { sums: bool, p: f32, seed: u64 },
    /// A batch norm's statistics (`BatchNormPass::Stats`, the root) and the running
    /// statistics' update from them (`BatchNormPass::Running`, the one output beside it)
    /// in one kernel. Inputs are x, then the running mean and variance.
    /// A batch norm's normalisation (`BatchNormPass::Apply`, written beside the root) and a
    /// dropout of it (the root, seen through reshapes) in one kernel. Inputs are the
    /// normalisation's (x, stats, γ, β), then the dropout's step.
    BatchNormApplyDropout { relu: bool, p: f32, seed: u64 },
    BatchNormStatsRunning {
        eps: f32,
        /// (keep, take_mean, take_var) of the update.
        update: (f32, f32, f32),
    },
}

/// The product under an epilogue. Its result has `(batch, rows, cols)` elements in that
/// order, whatever shape the graph views it as; the epilogue's per-row operands follow
/// `rows` (a convolution's output channels), the column bias `cols`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProductOp {
    /// `op(A)·op(B)` (`Op::MatMul`).
    MatMul { ta: bool, tb: bool },
    /// The implicit-GEMM convolution forward (`Op::Conv(ConvPass::Forward, geom)`): output
    /// (N, F, OH, OW) as N matrices of F rows and OH·OW columns. Takes the per-row parts
    /// (scale, shift) and the ReLU only.
    Conv(crate::ops::conv::Conv2d),
    /// `im2col(x)` and the product `(F, 9C)·colsᵀ` after it, computed from x by Winograd
    /// F(2×2, 3×3) (`Tensor::conv2d_winograd_epilogue`): inputs (filters as (F, 9C), x),
    /// output (N, F, OH·OW). Only where nothing else reads the patches (inference).
    /// Takes the per-row parts, a residual and the ReLU.
    Winograd(crate::ops::conv::Conv2d),
    /// `im2col(x)` of a dense convolution whose patch rows CK are not a multiple of 4 and
    /// the product `(F, CK)·colsᵀ` after it, where nothing else reads the patches
    /// (inference): im2col writes the rows padded where the product would copy them padded
    /// (`Tensor::conv2d_patches_epilogue`). Inputs (filters as (F, CK), x), output
    /// (N, F, OH·OW). Takes every part a matmul takes.
    Patches(crate::ops::conv::Conv2d),
}

impl ProductOp {
    /// Whether the product's kernel applies epilogue `epi` (the convolution kernels take
    /// the per-row parts and the ReLU, not a column bias, a residual or a mask).
    pub(crate) fn takes(&self, epi: &EpiParts) -> bool {
        match self {
            ProductOp::MatMul { .. } | ProductOp::Patches(_) => true,
            ProductOp::Conv(_) => !(epi.bias || epi.residual || epi.mask || epi.group > 0),
            ProductOp::Winograd(_) => !(epi.bias || epi.mask || epi.group > 0),
        }
    }
}

/// Which parts of `relu?(C·scale[row] + shift[row] + bias[col] + residual) · [y > 0]?` a
/// fused product applies, each optional, and the order it stores them in; the operands present are inputs in this order:
/// scale, shift, bias, residual, the mask's `y`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpiParts {
    pub(crate) scale: bool,
    pub(crate) shift: bool,
    pub(crate) bias: bool,
    pub(crate) residual: bool,
    pub(crate) relu: bool,
    pub(crate) mask: bool,
    /// 0, or the permute (rows, cols/group, group) → (cols/group, rows, group) that ends the
    /// pattern, done by the product's stores (`Epilogue::group`): a batch-folded
    /// convolution's (F, N·L) product written as (N, F, L).
    pub(crate) group: usize,
}

impl EpiParts {
    /// How many operands (graph inputs) the parts read.
    pub(crate) fn operands(&self) -> usize {
        [self.scale, self.shift, self.bias, self.residual, self.mask]
            .iter()
            .filter(|&&b| b)
            .count()
    }
}
