//! The convolution family's graph side: which composition of primitives a convolution
//! records. `Var::conv2d` picks the direct depthwise kernel, the implicit GEMM, a plain
//! product for 1×1 windows, the batch-folded product or an im2col product; the shape
//! rules, CPU references, kernels and gradients of those primitives live in `ops::conv`,
//! `ops::conv_gemm` and `ops::depthwise`.

use crate::error::{Error, Result};
use crate::graph::{Op, Var};
use crate::ops::conv::{check_conv_transpose2d, Conv2d};

impl Var {
    /// 2-D convolution with filters (F, C/groups, KH, KW) as W_flat · im2colᵀ: (N, F, OH, OW)
    /// (a 1×1 window with stride 1 and no padding: W · x, with no im2col).
    /// Differentiable in both the input and the filters. With `geom.groups` G > 1 the
    /// channels split into G groups, each convolved with its own F/G filters.
    pub fn conv2d(&self, weight: &Var, geom: Conv2d) -> Result<Var> {
        let (n, f) = crate::ops::conv::check_conv2d(self.shape(), weight.shape(), geom)?;
        let (oh, ow) = geom.output_size("conv2d", self.shape())?;
        let cgk = weight.shape()[1..].iter().product::<usize>();
        let groups = geom.groups;
        if crate::ops::depthwise::is_depthwise(self.shape(), weight.shape(), &geom) {
            // groups = channels: the direct kernels of ops/depthwise.rs, no patch matrix.
            return self
                .graph()
                .push(Op::DepthwiseConv2d(geom), &[self, weight]);
        }
        if crate::ops::conv::prefer_implicit(self.shape(), weight.shape(), &geom) {
            // Implicit GEMM: no patch matrix (see ops::conv_gemm for when it wins).
            return self.graph().push(
                Op::Conv(crate::ops::conv_gemm::ConvPass::Forward, geom),
                &[self, weight],
            );
        }
        if groups == 1 && geom.is_pointwise() {
            // (F, C) · (N, C, H·W) = (N, F, H·W): already NCHW, so no im2col (on lavapipe it
            // cost as much as the product: ResNet-50's 1×1 layers) and no permute copy.
            // Gradients: dx = Wᵀ·g per image, dW = Σ_n g·xᵀ (the matmul rule, summed over
            // the broadcast batch).
            let c = self.shape()[1];
            return weight
                .reshape(&[f, c])?
                .matmul(&self.reshape(&[n, c, oh * ow])?)?
                .reshape(&[n, f, oh, ow]);
        }
        if folds(self.shape(), weight.shape(), &geom) {
            // Few output positions per image: one product (N·L, CK) · (F, CK)ᵀ over the
            // whole batch fills whole tiles, where N products of (F, CK) · (CK, L) would
            // each fill a sliver of one; a permute copy then makes it NCHW.
            return self.conv2d_folded(weight, None, geom);
        }
        let cols = self.im2col(geom.groups(1))?;
        if groups == 1 {
            // (F, CK) · (N, L, CK)ᵀ = (N, F, L) → (N, F, OH, OW): the product writes NCHW,
            // so no permute copy follows it.
            return weight
                .reshape(&[f, cgk])?
                .matmul_t(&cols, false, true)?
                .reshape(&[n, f, oh, ow]);
        }
        // (G, Fg, CgK) · ((N, L, G, CgK) → (N, G, L, CgK))ᵀ = (N, G, Fg, L): the product
        // writes NCHW (the filters broadcast over the batch), so no permute follows it.
        let split = cols
            .reshape(&[n, oh * ow, groups, cgk])?
            .permute(&[0, 2, 1, 3])?;
        weight
            .reshape(&[groups, f / groups, cgk])?
            .matmul_t(&split, false, true)?
            .reshape(&[n, f, oh, ow])
    }
}

impl Var {
    /// [`Var::conv2d`] plus a bias of F values (any shape of F elements, such as (F, 1, 1)),
    /// added per filter. Where the product folds the batch into its rows (few output
    /// positions per image), the bias is added to the product's columns, before its permute
    /// to NCHW, so that it joins the product's epilogue instead of a dispatch of its own.
    pub fn conv2d_bias(&self, weight: &Var, bias: &Var, geom: Conv2d) -> Result<Var> {
        let (_, f) = crate::ops::conv::check_conv2d(self.shape(), weight.shape(), geom)?;
        if bias.shape().iter().product::<usize>() != f {
            return Err(Error::Shape {
                op: "conv2d",
                detail: format!(
                    "bias of shape {:?} for {f} filters (weights {:?}): it needs {f} values",
                    bias.shape(),
                    weight.shape()
                ),
            });
        }
        if folds(self.shape(), weight.shape(), &geom) {
            return self.conv2d_folded(weight, Some(bias), geom);
        }
        self.conv2d(weight, geom)?
            .add(&bias.reshape(&[1, f, 1, 1])?)
    }

    /// The batch-folded convolution (see [`folds`]): one product (F, CK)·(N·L, CK)ᵀ over the
    /// whole batch, the bias (if any) added to its rows so it joins the product's epilogue,
    /// then a permute (F, N, L) → (N, F, L). F is short (32 in the digits CNN): as the
    /// product's rows it fills the 32-row tiles of the subgroup kernel, where as its columns
    /// it idled half of every 64-wide tile. Measured on lavapipe, per dispatch, digits conv2:
    /// 0.36-0.65 ms against 1.13-1.65 ms. The exporter's `match_folded_conv` reads this chain.
    fn conv2d_folded(&self, weight: &Var, bias: Option<&Var>, geom: Conv2d) -> Result<Var> {
        let (n, f) = (self.shape()[0], weight.shape()[0]);
        let (oh, ow) = geom.output_size("conv2d", self.shape())?;
        let cgk = weight.shape()[1..].iter().product::<usize>();
        let mut y = weight.reshape(&[f, cgk])?.matmul_t(
            &self.im2col(geom)?.reshape(&[n * oh * ow, cgk])?,
            false,
            true,
        )?;
        if let Some(b) = bias {
            // Through (F) so that the exporter finds the bias as ONNX's Conv wants it.
            y = y.add(&b.reshape(&[f])?.reshape(&[f, 1])?)?;
        }
        y.reshape(&[f, n, oh * ow])?
            .permute(&[1, 0, 2])?
            .reshape(&[n, f, oh, ow])
    }

    /// Adds patches (N, OH·OW, C·KH·KW) back into an image batch of `image_shape`
    /// (N, C, H, W): the adjoint of [`Var::im2col`], differentiable (its gradient is im2col).
    pub fn col2im(&self, geom: Conv2d, image_shape: &[usize]) -> Result<Var> {
        self.graph()
            .push(Op::Col2Im(geom.groups(1), image_shape.to_vec()), &[self])
    }

    /// Transposed convolution, the adjoint of [`Var::conv2d`] in its input: x (N, C, H, W)
    /// with filters (C, F/groups, KH, KW) gives (N, F, OH, OW) for `output` = [OH, OW].
    /// `geom` is the window of the convolution that maps (N, F, OH, OW) back to (N, C, H, W),
    /// so `geom.output_size` of the output must be (H, W): its top and left padding crop the
    /// result, its bottom and right padding only have to make the window count come out.
    /// Computed as col2im(x·W): each input pixel scatters its filter-weighted patch.
    pub fn conv_transpose2d(&self, weight: &Var, geom: Conv2d, output: [usize; 2]) -> Result<Var> {
        let [n, c, h, w, f] = check_conv_transpose2d(self.shape(), weight.shape(), geom, output)?;
        let (g, l, k) = (geom.groups, h * w, geom.kh * geom.kw);
        let (cg, fgk) = (c / g, (f / g) * k);
        let cols = if g == 1 {
            // (N, C, L)ᵀ · (C, F·K) = (N, L, F·K)
            self.reshape(&[n, c, l])?
                .matmul_t(&weight.reshape(&[c, fgk])?, true, false)?
        } else {
            // (N, G, Cg, L)ᵀ · (G, Cg, Fg·K) = (N, G, L, Fg·K) → (N, L, G, Fg·K): the patch
            // columns are channel-major, so group g's output channels are one block of them.
            self.reshape(&[n, g, cg, l])?
                .matmul_t(&weight.reshape(&[g, cg, fgk])?, true, false)?
                .permute(&[0, 2, 1, 3])?
                .reshape(&[n, l, f * k])?
        };
        cols.col2im(geom, &[n, f, output[0], output[1]])
    }
}

/// Whether [`Var::conv2d`] runs as one product over the whole batch, (N·L, CK)·(F, CK)ᵀ,
/// then a permute to NCHW, rather than N products (F, CK)·(CK, L) that write NCHW: for
/// an im2col convolution without groups whose images have fewer output positions than a
/// product tile's 64 columns, where each image's product fills a sliver of one tile.
/// Measured on the digits CNN (its 3×3 stride-2 conv: 16 output positions, CK = 144,
/// F = 32, batch 64), alternated, under load: epoch 514 / 728 / 600 ms folded against
/// 852 / 964 / 1,107 ms per image.
fn folds(x: &[usize], w: &[usize], geom: &Conv2d) -> bool {
    let Ok((oh, ow)) = geom.output_size("conv2d", x) else {
        return false;
    };
    geom.groups == 1
        && x[0] > 1
        && oh * ow < 64
        && !geom.is_pointwise()
        && !crate::ops::depthwise::is_depthwise(x, w, geom)
        && !crate::ops::conv::prefer_implicit(x, w, geom)
        && std::env::var("WGRAD_FOLD").map_or(true, |v| v != "0")
}
