//! Convolutions and pooling for the exporter. wgrad records them as compositions:
//!
//! - `Var::conv2d`: matmul_t(filters reshaped to (F, C·KH·KW), im2col, tb) → reshape
//!   (N, F, OH, OW); a 1×1 window with stride 1 and no padding: matmul(filters reshaped to
//!   (F, C), x reshaped to (N, C, H·W)) → reshape; grouped (G > 1): matmul_t(filters as
//!   (G, F/G, CgK), im2col → reshape (N, L, G, CgK) → permute (0, 2, 1, 3), tb) → reshape
//!   (N, F, OH, OW);
//! - pooling: reshape (N·C, 1, H, W) → im2col → [+ the −∞ padding mask, max with padding] →
//!   max or mean over the window axis → reshape (N, C, OH, OW).
//!
//! Those are found here and written as one `Conv`, `MaxPool` or `AveragePool`. An im2col
//! outside them is written exactly as a grouped `Conv` with one-hot kernels (each output
//! channel copies one tap of one input channel) followed by Reshape and Transpose.
//!
//! [`Window`] is the only code that reads [`Conv2d`]'s fields.

use std::collections::HashMap;

use super::{attr_int, attr_ints, Emitter};
use crate::error::Result;
use crate::graph::{Node, NodeId, Op};
use crate::onnx::proto::AttributeProto;
use crate::ops::conv::Conv2d;
use crate::ops::elementwise::BinaryOp;
use crate::ops::pool::{Pool2d, PoolKind};
use crate::ops::reduce::ReduceOp;
use crate::{Device, Tensor};

/// A window in ONNX's terms: per-axis kernel, strides and dilations, and pads as
/// `[top, left, bottom, right]` (ONNX's `[x1_begin, x2_begin, x1_end, x2_end]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 4],
}

impl Window {
    /// The window of `g` (the one place that reads `Conv2d`'s fields).
    fn of(g: &Conv2d) -> Window {
        Window {
            kernel: [g.kh, g.kw],
            strides: g.strides,
            dilations: g.dilations,
            pads: g.pads,
        }
    }

    /// Taps per window, kh·kw.
    fn taps_count(&self) -> f64 {
        (self.kernel[0] * self.kernel[1]) as f64
    }

    fn dilated(&self) -> bool {
        self.dilations != [1, 1]
    }

    /// Every tap of the window over x (N, C, H, W) as a channel: (N, C·KH·KW, OH, OW) from a
    /// depthwise `Conv` whose one-hot kernels each pick one tap (exact: one product by 1, the
    /// rest by 0). Returns the value and (OH, OW).
    fn taps(&self, x: &str, xs: &[usize], e: &mut Emitter) -> Result<(String, (usize, usize))> {
        let [_, c, h, w] = xs[..] else {
            return Err(super::refuse(format!(
                "im2col input {xs:?} is not (N, C, H, W)"
            )));
        };
        let span = |k: usize, d: usize| d * (k - 1) + 1;
        let out = |size: usize, axis: usize| {
            (size + self.pads[axis] + self.pads[axis + 2]
                - span(self.kernel[axis], self.dilations[axis]))
                / self.strides[axis]
                + 1
        };
        let taps = self.kernel[0] * self.kernel[1];
        let mut kernels = vec![0.0f32; c * taps * taps];
        for ch in 0..c {
            for t in 0..taps {
                // Output channel ch·taps + t reads channel ch (group ch), tap t of the window.
                kernels[(ch * taps + t) * taps + t] = 1.0;
            }
        }
        let k = e.constant(&[c * taps, 1, self.kernel[0], self.kernel[1]], &kernels);
        let mut attrs = self.attrs(true);
        attrs.push(attr_int("group", c as i64));
        Ok((e.node("Conv", &[x, &k], attrs), (out(h, 0), out(w, 1))))
    }

    /// `kernel_shape`, `strides`, `pads` and (where the operator has it) `dilations`.
    fn attrs(&self, dilations: bool) -> Vec<AttributeProto> {
        let ints = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<i64>>();
        let mut a = vec![
            attr_ints("kernel_shape", ints(&self.kernel)),
            attr_ints("strides", ints(&self.strides)),
            attr_ints("pads", ints(&self.pads)),
        ];
        if dilations {
            a.push(attr_ints("dilations", ints(&self.dilations)));
        }
        a
    }
}

/// A recognised composition, keyed by its last node.
#[derive(Clone, Debug)]
pub(super) enum Pattern {
    /// `Conv(x, w[, bias])` with `groups` channel groups; `bias` (F) where the composition
    /// adds it inside (the batch-folded form of `Var::conv2d_bias`).
    Conv {
        x: NodeId,
        w: NodeId,
        window: Window,
        groups: usize,
        bias: Option<NodeId>,
    },
    /// Pooling: the window's taps reduced by `reduce`, after adding `mask` (L, KH·KW) (max
    /// pooling's −∞ on padded taps) and before scaling by `scale` (L) (average pooling's
    /// 1/count where border windows count fewer taps). `native`: it is exactly ONNX's
    /// `MaxPool` or `AveragePool` (count_include_pad).
    Pool {
        x: NodeId,
        window: Window,
        reduce: ReduceOp,
        mask: Option<NodeId>,
        scale: Option<NodeId>,
        native: bool,
    },
}

impl Pattern {
    /// The nodes it reads, the image first.
    pub(super) fn operands(&self) -> Vec<NodeId> {
        match self {
            Pattern::Conv { x, w, bias, .. } => std::iter::once(*x)
                .chain(std::iter::once(*w))
                .chain(*bias)
                .collect(),
            // A native pool reads only the image; its mask is ONNX's own padding rule.
            Pattern::Pool {
                x, native: true, ..
            } => vec![*x],
            Pattern::Pool { x, mask, scale, .. } => {
                std::iter::once(*x).chain(*mask).chain(*scale).collect()
            }
        }
    }
}

/// Every convolution and pooling composition in `nodes`, by the id of its final reshape.
pub(super) fn find_patterns(nodes: &[Node]) -> Result<HashMap<NodeId, Pattern>> {
    let mut found = HashMap::new();
    for id in 0..nodes.len() {
        if let Some(p) = match_conv(nodes, id).or_else(|| match_pool(nodes, id)) {
            found.insert(id, p);
        }
    }
    Ok(found)
}

/// The single input of node `id` when its op satisfies `want`.
fn input_if(nodes: &[Node], id: NodeId, want: impl Fn(&Op) -> bool) -> Option<NodeId> {
    want(&nodes[id].op).then(|| nodes[id].inputs.first().copied())?
}

fn match_conv(nodes: &[Node], id: NodeId) -> Option<Pattern> {
    // The implicit-GEMM forward is a Conv as it stands.
    if let Op::Conv(crate::ops::conv_gemm::ConvPass::Forward, geom) = &nodes[id].op {
        return Some(Pattern::Conv {
            x: nodes[id].inputs[0],
            w: nodes[id].inputs[1],
            window: Window::of(geom),
            groups: geom.groups,
            bias: None,
        });
    }
    if let Some(p) = match_folded_conv(nodes, id) {
        return Some(p);
    }
    let Op::Reshape(target) = &nodes[id].op else {
        return None;
    };
    let mm = nodes[id].inputs[0];
    let Op::MatMul { ta: false, tb } = nodes[mm].op else {
        return None;
    };
    let (filters, right) = (nodes[mm].inputs[0], nodes[mm].inputs[1]);
    let w = input_if(nodes, filters, |op| matches!(op, Op::Reshape(_)))?;
    // The image and the window: im2col (dense), im2col → reshape → permute (grouped), or
    // x reshaped to (N, C, H·W) (1×1, no im2col).
    let (x, geom, groups) = match &nodes[right].op {
        Op::Im2Col(geom) if tb => (nodes[right].inputs[0], *geom, 1),
        Op::Permute(a) if tb && a == &[0, 2, 1, 3] => {
            // right = permute(reshape(im2col(x)))
            let reshaped = input_if(nodes, right, |op| matches!(op, Op::Permute(_)))?;
            let im = input_if(nodes, reshaped, |op| matches!(op, Op::Reshape(_)))?;
            let Op::Im2Col(geom) = &nodes[im].op else {
                return None;
            };
            (nodes[im].inputs[0], *geom, *nodes[filters].shape.first()?)
        }
        Op::Reshape(_) if !tb => (nodes[right].inputs[0], Conv2d::new(1, 1), 1),
        _ => return None,
    };
    let (xs, ws) = (&nodes[x].shape, &nodes[w].shape);
    let window = Window::of(&geom);
    let [n, c, h, wd] = xs[..] else { return None };
    let (oh, ow) = geom.output_size("conv2d", xs).ok()?;
    let f = *target.get(1)?;
    if groups == 0 || c % groups != 0 || f % groups != 0 {
        return None;
    }
    let (cg, fg) = (c / groups, f / groups);
    let cgk = cg * window.kernel[0] * window.kernel[1];
    let shapes_fit = *ws == [f, cg, window.kernel[0], window.kernel[1]]
        && *target == [n, f, oh, ow]
        && match (groups, tb) {
            (1, true) => nodes[filters].shape == [f, cgk],
            (1, false) => nodes[filters].shape == [f, c] && nodes[right].shape == [n, c, h * wd],
            _ => {
                nodes[filters].shape == [groups, fg, cgk]
                    && nodes[right].shape == [n, groups, oh * ow, cgk]
            }
        };
    shapes_fit.then_some(Pattern::Conv {
        x,
        w,
        window,
        groups,
        bias: None,
    })
}

/// The batch-folded convolution (`Var::conv2d` and `Var::conv2d_bias` on images with few
/// output positions): reshape (N, F, OH, OW) ← permute (1, 0, 2) ← reshape (F, N, L) ←
/// [add the bias, (F) reshaped to (F, 1)] ← matmul_t(filters reshaped to (F, CK), reshape (N·L, CK) of
/// im2col(x), tb).
fn match_folded_conv(nodes: &[Node], id: NodeId) -> Option<Pattern> {
    let Op::Reshape(target) = &nodes[id].op else {
        return None;
    };
    let perm = nodes[id].inputs[0];
    if !matches!(&nodes[perm].op, Op::Permute(a) if a == &[1, 0, 2]) {
        return None;
    }
    let rows = input_if(nodes, perm, |_| true)?;
    let mut below = input_if(nodes, rows, |op| matches!(op, Op::Reshape(_)))?;
    let mut bias = None;
    if let Op::Binary(BinaryOp::Add) = nodes[below].op {
        // The bias as (F), under its reshape to the product's rows (F, 1).
        bias = Some(input_if(nodes, nodes[below].inputs[1], |op| {
            matches!(op, Op::Reshape(_))
        })?);
        below = nodes[below].inputs[0];
    }
    let Op::MatMul {
        ta: false,
        tb: true,
    } = nodes[below].op
    else {
        return None;
    };
    let (filters, patches) = (nodes[below].inputs[0], nodes[below].inputs[1]);
    let im = input_if(nodes, patches, |op| matches!(op, Op::Reshape(_)))?;
    let w = input_if(nodes, filters, |op| matches!(op, Op::Reshape(_)))?;
    let Op::Im2Col(geom) = &nodes[im].op else {
        return None;
    };
    let x = nodes[im].inputs[0];
    let [n, c, _, _] = nodes[x].shape[..] else {
        return None;
    };
    let (oh, ow) = geom.output_size("conv2d", &nodes[x].shape).ok()?;
    let window = Window::of(geom);
    let ck = c * window.kernel[0] * window.kernel[1];
    let f = *target.get(1)?;
    let fits = geom.groups == 1
        && *target == [n, f, oh, ow]
        && nodes[w].shape == [f, c, window.kernel[0], window.kernel[1]]
        && nodes[patches].shape == [n * oh * ow, ck]
        && nodes[filters].shape == [f, ck]
        && nodes[rows].shape == [f, n, oh * ow]
        && bias.is_none_or(|b| nodes[b].shape == [f]);
    fits.then_some(Pattern::Conv {
        x,
        w,
        window,
        groups: 1,
        bias,
    })
}

fn match_pool(nodes: &[Node], id: NodeId) -> Option<Pattern> {
    let Op::Reshape(target) = &nodes[id].op else {
        return None;
    };
    let mut below = nodes[id].inputs[0];
    // Average pooling whose border windows count fewer taps: a sum times 1/count.
    let mut scale = None;
    if let Op::Binary(BinaryOp::Mul) = nodes[below].op {
        scale = Some(nodes[below].inputs[1]);
        below = nodes[below].inputs[0];
    }
    let reduce = match nodes[below].op {
        Op::Reduce {
            op,
            axis: 2,
            keepdim: false,
        } => op,
        _ => return None,
    };
    below = nodes[below].inputs[0];
    // Max pooling adds −∞ to the padded taps (zeros elsewhere).
    let mut mask = None;
    if let Op::Binary(BinaryOp::Add) = nodes[below].op {
        mask = Some(nodes[below].inputs[1]);
        below = nodes[below].inputs[0];
    }
    let Op::Im2Col(geom) = &nodes[below].op else {
        return None;
    };
    let window = Window::of(geom);
    let flat = nodes[below].inputs[0];
    let x = input_if(nodes, flat, |op| matches!(op, Op::Reshape(_)))?;
    let [n, c, h, w] = nodes[x].shape[..] else {
        return None;
    };
    let (oh, ow) = geom.output_size("pool2d", &nodes[x].shape).ok()?;
    let (l, kk) = (oh * ow, window.kernel[0] * window.kernel[1]);
    let fits = nodes[flat].shape == [n * c, 1, h, w]
        && *target == [n, c, oh, ow]
        && mask.is_none_or(|m| nodes[m].shape == [l, kk])
        && scale.is_none_or(|m| nodes[m].shape == [l]);
    if !fits {
        return None;
    }
    let native = match reduce {
        // MaxPool pads with −∞: the mask must be exactly that (or absent where no window
        // reaches the padding).
        ReduceOp::Max => {
            scale.is_none()
                && pad_mask(geom, [h, w]).is_some_and(|want| match mask {
                    Some(m) => const_values(&nodes[m]).is_some_and(|got| got == want),
                    None => want.iter().all(|&v| v == 0.0),
                })
        }
        // AveragePool has no dilations before opset 19.
        ReduceOp::Mean => mask.is_none() && scale.is_none() && !window.dilated(),
        _ => false,
    };
    Some(Pattern::Pool {
        x,
        window,
        reduce,
        mask,
        scale,
        native,
    })
}

fn const_values(node: &Node) -> Option<Vec<f32>> {
    match &node.op {
        Op::Const(t) => t.to_vec::<f32>().ok(),
        _ => None,
    }
}

/// The mask MaxPool's padding amounts to: −∞ on the taps im2col pads, 0 elsewhere.
fn pad_mask(geom: &Conv2d, [h, w]: [usize; 2]) -> Option<Vec<f32>> {
    let ones = Tensor::full(&Device::cpu(), 1.0, &[1, 1, h, w]).ok()?;
    Some(
        ones.im2col(*geom)
            .ok()?
            .to_vec::<f32>()
            .ok()?
            .into_iter()
            .map(|v| if v == 1.0 { 0.0 } else { f32::NEG_INFINITY })
            .collect(),
    )
}

/// Writes a recognised composition as one operator.
pub(super) fn emit_pattern(e: &mut Emitter, p: &Pattern, out: &str) -> Result<()> {
    match p {
        Pattern::Conv {
            x,
            w,
            window,
            groups,
            bias,
        } => {
            let (x, w) = (e.name(*x)?, e.name(*w)?);
            let mut attrs = window.attrs(true);
            attrs.push(attr_int("group", *groups as i64));
            match bias {
                Some(b) => {
                    let b = e.name(*b)?;
                    e.node_to("Conv", &[&x, &w, &b], attrs, out);
                }
                None => e.node_to("Conv", &[&x, &w], attrs, out),
            }
        }
        Pattern::Pool {
            x: xid,
            window,
            reduce,
            mask,
            scale,
            native,
        } => {
            let x = e.name(*xid)?;
            match (native, reduce) {
                (true, ReduceOp::Max) => e.node_to("MaxPool", &[&x], window.attrs(true), out),
                (true, _) => {
                    let mut attrs = window.attrs(false);
                    // Every tap counts, padding included (PyTorch's default).
                    attrs.push(attr_int("count_include_pad", 1));
                    e.node_to("AveragePool", &[&x], attrs, out);
                }
                _ => {
                    let mask = mask.map(|m| e.name(m)).transpose()?;
                    let scale = scale.map(|m| e.name(m)).transpose()?;
                    general_pool(e, window, *reduce, (&x, *xid), mask, scale, out)?;
                }
            }
        }
    }
    Ok(())
}

/// A depthwise convolution ([`Op::DepthwiseConv2d`], inputs x and filters) as one `Conv`.
pub(super) fn emit_depthwise(e: &mut Emitter, geom: &Conv2d, ins: &[&str], out: &str) {
    let mut attrs = Window::of(geom).attrs(true);
    attrs.push(attr_int("group", geom.groups as i64));
    e.node_to("Conv", &ins[..2], attrs, out);
}

/// A direct pooling ([`Op::Pool2d`]) as `MaxPool` or `AveragePool` with ceil_mode folded
/// into the end padding (exact: the same windows), or, where opset 17's AveragePool
/// cannot say it (dilations, ceil_mode's divisors), as [`general_pool`]'s sum of taps times
/// 1/count.
pub(super) fn emit_pool(
    e: &mut Emitter,
    p: &Pool2d,
    (x, xid): (&str, NodeId),
    out: &str,
) -> Result<()> {
    let xs = e.nodes[xid].shape.clone();
    let floor = p.floor_form(&xs)?;
    let window = Window::of(&floor.window);
    match p.kind {
        PoolKind::Max => e.node_to("MaxPool", &[x], window.attrs(true), out),
        PoolKind::Avg { count_include_pad } => {
            let divisors = p.divisors(&xs)?;
            if !window.dilated() && floor.divisors(&xs)? == divisors {
                let mut attrs = window.attrs(false);
                attrs.push(attr_int("count_include_pad", count_include_pad as i64));
                e.node_to("AveragePool", &[x], attrs, out);
            } else if divisors.iter().all(|&d| d == divisors[0])
                && divisors[0] == window.taps_count()
            {
                general_pool(e, &window, ReduceOp::Mean, (x, xid), None, None, out)?;
            } else {
                let inv: Vec<f32> = divisors.iter().map(|&d| (1.0 / d) as f32).collect();
                let scale = e.constant(&[inv.len()], &inv);
                general_pool(e, &window, ReduceOp::Sum, (x, xid), None, Some(scale), out)?;
            }
        }
    }
    Ok(())
}

/// Pooling that no ONNX pool expresses exactly (dilated average pooling, border windows
/// counting fewer taps, ceil mode's cut windows): the window's taps as channels
/// (N, C·KH·KW, OH, OW) → (N, C, KH·KW, L) [+ the mask transposed to (KH·KW, L)] → reduce
/// over the taps [· the per-position scale (L)] → (N, C, OH, OW).
fn general_pool(
    e: &mut Emitter,
    window: &Window,
    reduce: ReduceOp,
    (x, xid): (&str, NodeId),
    mask: Option<String>,
    scale: Option<String>,
    out: &str,
) -> Result<()> {
    let (xs, batched) = (e.nodes[xid].shape.clone(), e.batched[xid]);
    let (taps, (oh, ow)) = window.taps(x, &xs, e)?;
    let (kk, l) = (window.kernel[0] * window.kernel[1], oh * ow);
    let split = e.fresh("pool_taps");
    e.reshape(&taps, &[xs[0], xs[1], kk, l], batched, &split);
    let masked = match mask {
        Some(m) => {
            let mt = e.node("Transpose", &[&m], vec![attr_ints("perm", vec![1, 0])]);
            e.node("Add", &[&split, &mt], vec![])
        }
        None => split,
    };
    let reduced = e.fresh("pool_reduced");
    e.reduce(reduce, Some(2), false, &masked, &reduced);
    let scaled = match scale {
        Some(s) => e.node("Mul", &[&reduced, &s], vec![]),
        None => reduced,
    };
    e.reshape(&scaled, &[xs[0], xs[1], oh, ow], batched, out);
    Ok(())
}

/// A bare im2col of x (N, C, H, W) → (N, OH·OW, C·KH·KW): a depthwise `Conv` whose C·KH·KW
/// one-hot kernels each pick one tap (exact: one product by 1, the rest by 0), then
/// (N, C·KH·KW, OH, OW) → (N, C·KH·KW, OH·OW) → transposed.
pub(super) fn emit_im2col(
    e: &mut Emitter,
    geom: &Conv2d,
    x: &str,
    xs: &[usize],
    batched: bool,
    out: &str,
) -> Result<()> {
    let window = Window::of(geom);
    let (conv, (oh, ow)) = window.taps(x, xs, e)?;
    let c_taps = xs[1] * window.kernel[0] * window.kernel[1];
    let flat = e.fresh("im2col_flat");
    e.reshape(&conv, &[xs[0], c_taps, oh * ow], batched, &flat);
    e.node_to(
        "Transpose",
        &[&flat],
        vec![attr_ints("perm", vec![0, 2, 1])],
        out,
    );
    Ok(())
}
