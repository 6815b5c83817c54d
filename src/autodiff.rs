//! Reverse-mode autodiff as a graph transformation: [`grad`] walks the graph
//! backwards from the output and appends backward nodes — ordinary forward
//! ops — to the same graph, so the backward pass runs on any device through
//! the same executor. Each op's rule is in `backward`, with its math in a comment.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{Node, NodeId, Op, Var};
use crate::ops::batchnorm::BatchNormPass;
use crate::ops::conv::Conv2d;
use crate::ops::conv_gemm::ConvPass;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::reduce::ReduceOp;

/// Gradients of a scalar `loss` with respect to each of `wrt` (zeros where
/// `loss` does not depend on it).
pub fn grad(loss: &Var, wrt: &[&Var]) -> Result<Vec<Var>> {
    if loss.shape().iter().product::<usize>() != 1 {
        return Err(Error::Shape {
            op: "grad",
            detail: format!(
                "the gradient needs a scalar output, got shape {:?}; use vjp with an upstream gradient",
                loss.shape()
            ),
        });
    }
    let seed = loss.graph().full(1.0, loss.shape());
    vjp(loss, &seed, wrt)
}

/// Vector-Jacobian product: gradients of `Σ output·upstream` with respect to each of `wrt`.
pub fn vjp(output: &Var, upstream: &Var, wrt: &[&Var]) -> Result<Vec<Var>> {
    let g = output.graph().clone();
    if upstream.shape() != output.shape() {
        return Err(Error::Shape {
            op: "vjp",
            detail: format!(
                "upstream {:?} does not match output {:?}",
                upstream.shape(),
                output.shape()
            ),
        });
    }
    for v in std::iter::once(upstream).chain(wrt.iter().copied()) {
        if !v.graph().same(&g) {
            return Err(Error::Invalid {
                op: "grad",
                detail: format!("node #{} is not in the output's graph", v.id()),
            });
        }
    }
    let nodes = g.nodes();
    // needs[i]: node i depends on some node of `wrt`, so its gradient matters.
    let mut needs = vec![false; nodes.len()];
    for w in wrt {
        needs[w.id()] = true;
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.inputs.iter().any(|&j| needs[j]) {
            needs[i] = true;
        }
    }
    let mut grads: HashMap<NodeId, Var> = HashMap::new();
    grads.insert(output.id(), upstream.clone());
    for id in (0..=output.id()).rev() {
        let Some(gy) = grads.get(&id).cloned() else {
            continue;
        };
        let node = &nodes[id];
        if node.inputs.iter().all(|&j| !needs[j]) {
            continue;
        }
        let inputs: Vec<Var> = node
            .inputs
            .iter()
            .map(|&j| g.var(j))
            .collect::<Result<_>>()?;
        let y = g.var(id)?;
        let rules = backward(node, &inputs, &y, &gy)?;
        for (k, gx) in rules.into_iter().enumerate() {
            let (Some(gx), j) = (gx, node.inputs[k]) else {
                continue;
            };
            if !needs[j] {
                continue;
            }
            let total = match grads.remove(&j) {
                Some(prev) => prev.add(&gx)?, // a node used twice accumulates
                None => gx,
            };
            grads.insert(j, total);
        }
    }
    wrt.iter()
        .map(|w| match grads.get(&w.id()) {
            Some(gw) => Ok(gw.clone()),
            None => Ok(g.full(0.0, w.shape())),
        })
        .collect()
}

/// The gradient of x through `cols = im2col(x)`, given cols' gradient `g`: col2im(g), or,
/// where g is the patch gradients of a convolution, gyᵀ·W_flat of an upstream gradient
/// stored channels first (the batch-folded convolution's) or per image, the same sum by phases
/// (`ops::conv_phase`), which needs no col2im. The product that made g is then left
/// unused, and the executor skips it.
fn im2col_grad(geom: Conv2d, x: &Var, g: &Var) -> Result<Var> {
    let graph = g.graph();
    let nodes = graph.nodes();
    let mut at = g.id();
    while let Op::Reshape(_) = nodes[at].op {
        at = nodes[at].inputs[0];
    }
    if let (
        Op::MatMul {
            ta: true,
            tb: false,
        },
        [gy, w],
    ) = (&nodes[at].op, &nodes[at].inputs[..])
    {
        let (gs, ws) = (&nodes[*gy].shape[..], &nodes[*w].shape[..]);
        let patches = geom.patches_shape("im2col", x.shape())?;
        let [n, l, ck] = patches;
        // gy channels first (F, N·L) (the batch-folded convolution) or (N, F, L) per image
        let layout = match (ws, gs) {
            (&[f, k], &[f2, r]) if k == ck && f2 == f && r == n * l => Some((f, true)),
            (&[f, k], &[n2, f2, l2]) if k == ck && [n2, f2, l2] == [n, f, l] => Some((f, false)),
            _ => None,
        };
        let phased = layout.is_some_and(|(f, first)| {
            crate::ops::conv_phase::PhaseGeom::new(&geom, x.shape(), f)
                .is_some_and(|p| p.pays(first))
        });
        if phased {
            let op = Op::ConvGradInputPhased(geom, x.shape().to_vec());
            return graph.push(op, &[&graph.var(*gy)?, &graph.var(*w)?]);
        }
    }
    graph.push(Op::Col2Im(geom, x.shape().to_vec()), &[g])
}

/// `g` summed back to `shape` when an op broadcast its input.
fn unbroadcast(g: Var, shape: &[usize]) -> Result<Var> {
    if g.shape() == shape {
        Ok(g)
    } else {
        sum_back_to(&g, shape)
    }
}

/// `g` summed back to `shape`, which broadcasts to it. Neighbouring axes that are all
/// stretched or all kept are merged by a reshape (free), so each run of stretched axes
/// is one reduction: (N, C, H, W) → (1, C, 1, 1), batch norm's statistics, takes two
/// instead of `sum_to`'s three. Anything else goes to `sum_to`, which names the error.
fn sum_back_to(g: &Var, shape: &[usize]) -> Result<Var> {
    let Some(lead) = g.shape().len().checked_sub(shape.len()) else {
        return g.sum_to(shape);
    };
    // (length, stretched) of each run of merged axes; axes of length 1 join any run.
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for (d, &len) in g.shape().iter().enumerate() {
        let target = if d < lead { 1 } else { shape[d - lead] };
        if target != len && target != 1 {
            return g.sum_to(shape);
        }
        let stretched = target != len;
        match runs.last_mut() {
            Some((l, s)) if *s == stretched || len == 1 => *l *= len,
            _ => runs.push((len, stretched)),
        }
    }
    let dims: Vec<usize> = runs.iter().map(|r| r.0).collect();
    let mut sum = g.reshape(&dims)?;
    for (axis, &(_, stretched)) in runs.iter().enumerate() {
        if stretched {
            sum = sum.sum_axis(axis as isize, true)?;
        }
    }
    sum.reshape(shape)
}

/// `g` of a reduction, reshaped with the reduced axis kept as 1 and broadcast back to `x`.
fn expand_reduced(g: &Var, x: &Var, axis: Option<usize>, keepdim: bool) -> Result<Var> {
    let mut kept = x.shape().to_vec();
    match axis {
        Some(a) => kept[a] = 1,
        None => kept.iter_mut().for_each(|d| *d = 1),
    }
    let g = if keepdim && axis.is_some() {
        g.clone()
    } else {
        g.reshape(&kept)?
    };
    g.broadcast_to(x.shape())
}

/// A mean's upstream gradient divided by its count `n` before it is expanded to the
/// input's shape: the same values as scaling after, on the small tensor. Other
/// reductions pass `g` through.
fn mean_scaled(g: &Var, op: ReduceOp, n: usize) -> Result<Var> {
    if op == ReduceOp::Mean {
        g.mul_scalar(1.0 / n as f32)
    } else {
        Ok(g.clone())
    }
}

/// The gradient of each input of `node` (None: not differentiable there),
/// given its inputs `x`, its output `y` and the upstream gradient `g`.
fn backward(node: &Node, x: &[Var], y: &Var, g: &Var) -> Result<Vec<Option<Var>>> {
    use BinaryOp as B;
    use UnaryOp as U;
    let one = |v: Var| Ok(vec![Some(v)]);
    match &node.op {
        Op::Input(_) | Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_) => Ok(vec![]),
        // a state update is not part of any value: nothing flows back through it
        Op::Assign => Ok(vec![None, None]),
        // d dropout: the same mask and scale times g (same seed, same step); none to the step
        Op::Dropout { p, seed } => Ok(vec![Some(g.dropout(*p, *seed, &x[1])?), None]),
        Op::Unary(u) => {
            let a = &x[0];
            match u {
                U::Neg => one(g.neg()?), // -g
                U::Abs => one(g.mul(&a.scalar(B::Gt, 0.0, false)?.sub(&a.scalar(
                    B::Lt,
                    0.0,
                    false,
                )?)?)?), // g·sign(x)
                U::Exp => one(g.mul(y)?), // g·y
                U::Log => one(g.div(a)?), // g/x
                U::Sqrt => one(g.div(&y.mul_scalar(2.0)?)?), // g/(2y)
                U::Square => one(g.mul(&a.mul_scalar(2.0)?)?), // 2x·g
                // g·[y>0], the same as g·[x>0]; through the output, so a matmul's epilogue
                // can fuse both (src/epilogue.rs) and the pre-activation need not be kept
                U::Relu => one(g.mul(&y.scalar(B::Gt, 0.0, false)?)?),
                U::Sigmoid => one(g.mul(&y.mul(&y.scalar(B::Sub, 1.0, true)?)?)?), // g·y(1-y)
                U::Tanh => one(g.mul(&y.square()?.scalar(B::Sub, 1.0, true)?)?),   // g·(1-y²)
                U::Gelu => one(g.mul(&a.unary(U::GeluGrad)?)?), // g·(Φ(x) + xφ(x))
                U::GeluGrad => Err(Error::Invalid {
                    op: "grad",
                    detail: "second derivative of gelu is not implemented".into(),
                }),
                // g·2/√π·e^{-x²}
                U::Erf => one(g.mul(
                    &a.square()?
                        .neg()?
                        .exp()?
                        .mul_scalar(std::f32::consts::FRAC_2_SQRT_PI)?,
                )?),
                // piecewise constant: zero almost everywhere (no contribution)
                U::Floor | U::Ceil | U::Round => Ok(vec![None]),
                U::Log1p => one(g.div(&a.add_scalar(1.0)?)?), // g/(1+x)
                U::Sin => one(g.mul(&a.unary(U::Cos)?)?),     // g·cos x
                U::Cos => one(g.mul(&a.unary(U::Sin)?.neg()?)?), // -g·sin x
                U::Tan => one(g.mul(&y.square()?.add_scalar(1.0)?)?), // g·(1 + y²)
                U::Sinh => one(g.mul(&a.unary(U::Cosh)?)?),   // g·cosh x
                U::Cosh => one(g.mul(&a.unary(U::Sinh)?)?),   // g·sinh x
                U::Atan => one(g.div(&a.square()?.add_scalar(1.0)?)?), // g/(1 + x²)
                U::Atanh => one(g.div(&a.square()?.scalar(B::Sub, 1.0, true)?)?), // g/(1 − x²)
                // g/√(1 − x²), negated for acos
                U::Asin => one(g.div(&a.square()?.scalar(B::Sub, 1.0, true)?.sqrt()?)?),
                U::Acos => one(g
                    .div(&a.square()?.scalar(B::Sub, 1.0, true)?.sqrt()?)?
                    .neg()?),
                U::Asinh => one(g.div(&a.square()?.add_scalar(1.0)?.sqrt()?)?), // g/√(x² + 1)
                U::Acosh => one(g.div(&a.square()?.add_scalar(-1.0)?.sqrt()?)?), // g/√(x² − 1)
            }
        }
        Op::Binary(b) => {
            let (a, c) = (&x[0], &x[1]);
            let (ga, gc) = match b {
                B::Add => (Some(g.clone()), Some(g.clone())),
                B::Sub => (Some(g.clone()), Some(g.neg()?)),
                B::Mul => (Some(g.mul(c)?), Some(g.mul(a)?)),
                // d(a/c) = g/c, -g·y/c
                B::Div => (Some(g.div(c)?), Some(g.mul(y)?.div(c)?.neg()?)),
                // ties send the gradient to the left operand
                B::Maximum => (
                    Some(g.mul(&a.binary(c, B::Ge)?)?),
                    Some(g.mul(&a.binary(c, B::Lt)?)?),
                ),
                B::Minimum => (
                    Some(g.mul(&a.binary(c, B::Le)?)?),
                    Some(g.mul(&a.binary(c, B::Gt)?)?),
                ),
                // d(a^c) = g·c·a^(c-1), g·y·ln a
                B::Pow => (
                    Some(g.mul(c)?.mul(&a.pow(&c.add_scalar(-1.0)?)?)?),
                    Some(g.mul(y)?.mul(&a.log()?)?),
                ),
                B::Eq | B::Ne | B::Lt | B::Le | B::Gt | B::Ge => (None, None),
                // the selection of g by the same mask (exactly 0, never 0·inf, where
                // unselected); none to the mask
                B::KeepWhere | B::KeepWhereNot => (Some(g.binary(c, *b)?), None),
            };
            let ga = ga.map(|v| unbroadcast(v, a.shape())).transpose()?;
            let gc = gc.map(|v| unbroadcast(v, c.shape())).transpose()?;
            Ok(vec![ga, gc])
        }
        Op::Scalar { op, value, lhs } => {
            let (a, v) = (&x[0], *value);
            let r = match (op, lhs) {
                (B::Add, _) => Some(g.clone()),
                (B::Sub, false) => Some(g.clone()),
                (B::Sub, true) => Some(g.neg()?),
                (B::Mul, _) => Some(g.mul_scalar(v)?),
                (B::Div, false) => Some(g.mul_scalar(1.0 / v)?),
                (B::Div, true) => Some(g.mul(y)?.div(a)?.neg()?), // d(v/x) = -g·y/x
                (B::Pow, false) => Some(g.mul(&a.scalar(B::Pow, v - 1.0, false)?.mul_scalar(v)?)?), // v·x^(v-1)
                (B::Pow, true) => Some(g.mul(y)?.mul_scalar(v.ln())?), // d(v^x) = g·y·ln v
                (B::Maximum, _) => Some(g.mul(&a.scalar(B::Ge, v, false)?)?),
                (B::Minimum, _) => Some(g.mul(&a.scalar(B::Le, v, false)?)?),
                // x kept or not by a fixed mask: g kept the same way (x as the mask: none)
                (B::KeepWhere | B::KeepWhereNot, false) => Some(g.scalar(*op, v, false)?),
                _ => None,
            };
            Ok(vec![r])
        }
        Op::MatMul { ta, tb } => {
            // C = op(A)·op(B); see each case's transposes in the comments.
            let (a, b) = (&x[0], &x[1]);
            let (ga, gb) = match (ta, tb) {
                (false, false) => (g.matmul_t(b, false, true)?, a.matmul_t(g, true, false)?), // g·Bᵀ, Aᵀ·g
                (true, false) => (b.matmul_t(g, false, true)?, a.matmul_t(g, false, false)?), // B·gᵀ, A·g
                (false, true) => (g.matmul_t(b, false, false)?, g.matmul_t(a, true, false)?), // g·B, gᵀ·A
                (true, true) => (b.matmul_t(g, true, true)?, g.matmul_t(a, true, true)?), // Bᵀ·gᵀ, gᵀ·Aᵀ
            };
            Ok(vec![
                Some(unbroadcast(ga, a.shape())?),
                Some(unbroadcast(gb, b.shape())?),
            ])
        }
        Op::Reduce { op, axis, keepdim } => {
            let a = &x[0];
            let ge = expand_reduced(
                &mean_scaled(g, *op, a.shape()[*axis])?,
                a,
                Some(*axis),
                *keepdim,
            )?;
            one(match op {
                ReduceOp::Sum | ReduceOp::Mean => ge,
                // the gradient is shared by the elements equal to the extreme
                ReduceOp::Max | ReduceOp::Min => {
                    let ye = expand_reduced(y, a, Some(*axis), *keepdim)?;
                    let mask = a.binary(&ye, B::Eq)?;
                    let count = expand_reduced(
                        &mask.sum_axis(*axis as isize, true)?,
                        a,
                        Some(*axis),
                        true,
                    )?;
                    ge.mul(&mask)?.div(&count)?
                }
            })
        }
        Op::ReduceAll(op) => {
            let a = &x[0];
            let n = a.shape().iter().product::<usize>();
            let ge = expand_reduced(&mean_scaled(g, *op, n)?, a, None, false)?;
            one(match op {
                ReduceOp::Sum | ReduceOp::Mean => ge,
                ReduceOp::Max | ReduceOp::Min => {
                    let mask = a.binary(&expand_reduced(y, a, None, false)?, B::Eq)?;
                    let count = expand_reduced(&mask.sum()?, a, None, false)?;
                    ge.mul(&mask)?.div(&count)?
                }
            })
        }
        // d softmax: y·(g - Σ g·y)
        Op::Softmax(axis) => one(y.mul(&g.sub(&g.mul(y)?.sum_axis(*axis as isize, true)?)?)?),
        // d log_softmax: g - exp(y)·Σ g
        Op::LogSoftmax(axis) => one(g.sub(&y.exp()?.mul(&g.sum_axis(*axis as isize, true)?)?)?),
        Op::Permute(axes) => {
            let mut inv = vec![0; axes.len()];
            for (i, &a) in axes.iter().enumerate() {
                inv[a] = i;
            }
            one(g.permute(&inv)?)
        }
        Op::Reshape(_) => one(g.reshape(x[0].shape())?),
        Op::BroadcastTo(_) => one(sum_back_to(g, x[0].shape())?),
        Op::SumTo(_) => one(g.broadcast_to(x[0].shape())?),
        Op::Slice { axis, start, end } => {
            // zeros before and after the slice, the gradient in between
            let full = x[0].shape();
            let mut parts = Vec::new();
            let mut before = full.to_vec();
            before[*axis] = *start;
            let mut after = full.to_vec();
            after[*axis] = full[*axis] - end;
            if *start > 0 {
                parts.push(g.graph().full(0.0, &before));
            }
            parts.push(g.clone());
            if after[*axis] > 0 {
                parts.push(g.graph().full(0.0, &after));
            }
            let refs: Vec<&Var> = parts.iter().collect();
            one(Var::concat(&refs, *axis as isize)?)
        }
        // d loss_i / d x_i = softmax(x_i) - onehot(label_i), times g_i; labels get none
        Op::CrossEntropy(opts) => Ok(vec![
            Some(
                g.graph()
                    .push(Op::CrossEntropyGrad(*opts), &[&x[0], &x[1], g])?,
            ),
            None,
        ]),
        // a count of labels: constant in the logits
        Op::CrossEntropyCount(_) => Ok(vec![None]),
        Op::CrossEntropyGrad(_) => Err(Error::Invalid {
            op: "grad",
            detail: "second derivative of cross_entropy is not implemented".into(),
        }),
        // im2col and col2im are each other's transpose (by phases where that pays)
        Op::Im2Col(geom) => one(im2col_grad(*geom, &x[0], g)?),
        Op::Col2Im(geom, _) => one(g.im2col(*geom)?),
        Op::ConvGradInputPhased(..) => Err(Error::Invalid {
            op: "grad",
            detail: "second derivative of a convolution's data gradient by phases is not \
                     implemented"
                .into(),
        }),
        // d pool: max routes g to the taps equal to the maximum, average spreads g / count
        Op::Pool2d(p) => {
            let grad = Op::Pool2dGrad(*p, x[0].shape().to_vec());
            one(match p.kind {
                crate::ops::pool::PoolKind::Max => g.graph().push(grad, &[&x[0], y, g])?,
                crate::ops::pool::PoolKind::Avg { .. } => g.graph().push(grad, &[g])?,
            })
        }
        Op::Pool2dGrad(..) => Err(Error::Invalid {
            op: "grad",
            detail: "second derivative of pooling is not implemented".into(),
        }),
        // d depthwise: dx gathers g·w over the windows covering each pixel, dw sums g·x(tap)
        Op::DepthwiseConv2d(geom) => {
            let graph = g.graph();
            let dx = Op::DepthwiseGradX(*geom, x[0].shape().to_vec());
            let dw = Op::DepthwiseGradW(*geom, x[1].shape().to_vec());
            Ok(vec![
                Some(graph.push(dx, &[g, &x[1]])?),
                Some(graph.push(dw, &[&x[0], g])?),
            ])
        }
        Op::DepthwiseGradX(..) | Op::DepthwiseGradW(..) => Err(Error::Invalid {
            op: "grad",
            detail: "second derivative of depthwise convolution is not implemented".into(),
        }),
        // d batch norm, y = apply(x, stats(x), γ, β) with x̂ = (x − mean)·inv_std over M values
        // per channel: dβ = Σg, dγ = Σg·x̂, dx = γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M) (the
        // statistics' dependence on x is inside dx, so none flows to them)
        Op::BatchNorm(BatchNormPass::Apply { relu }) => batch_norm_grad(x, y, g, *relu),
        Op::BatchNorm(p) => Err(Error::Invalid {
            op: "grad",
            detail: format!(
                "{} has no gradient (batch statistics are differentiated through batch_norm's \
                 output; its backward passes have no second derivative)",
                p.name()
            ),
        }),
        // every convolution pass is bilinear; its adjoints are the other two passes
        Op::Conv(pass, geom) => conv_grad(*pass, *geom, x, g),
        // gather and scatter-add are each other's adjoint; indices get no gradient
        Op::Gather(axis) => Ok(vec![
            Some(g.scatter_add(&x[1], *axis as isize, x[0].shape()[*axis])?),
            None,
        ]),
        Op::ScatterAdd { axis, .. } => Ok(vec![Some(g.gather(&x[1], *axis as isize)?), None]),
        Op::Concat(axis) => {
            let mut start = 0;
            x.iter()
                .map(|xi| {
                    let len = xi.shape()[*axis];
                    let s = g.slice(*axis as isize, start, start + len);
                    start += len;
                    s.map(Some)
                })
                .collect()
        }
    }
}

/// Adjoints of a convolution pass (each is bilinear, so they are the other passes):
/// y = fwd(x, w): dx = grad_input(g, w), dw = grad_weight(x, g);
/// gx = grad_input(gy, w): dgy = fwd(g, w), dw = grad_weight(g, gy);
/// gw = grad_weight(x, gy): dx = grad_input(gy, g), dgy = fwd(x, g).
fn conv_grad(pass: ConvPass, geom: Conv2d, x: &[Var], g: &Var) -> Result<Vec<Option<Var>>> {
    let graph = g.graph();
    let conv = |p: ConvPass, a: &Var, b: &Var| graph.push(Op::Conv(p, geom), &[a, b]);
    let hw = |s: &[usize]| [s[2], s[3]];
    let (d0, d1) = match pass {
        ConvPass::Forward => (
            conv(ConvPass::GradInput(hw(x[0].shape())), g, &x[1])?,
            conv(ConvPass::GradWeight, &x[0], g)?,
        ),
        ConvPass::GradInput(_) => (
            conv(ConvPass::Forward, g, &x[1])?,
            conv(ConvPass::GradWeight, g, &x[0])?,
        ),
        ConvPass::GradWeight => (
            conv(ConvPass::GradInput(hw(x[0].shape())), &x[1], g)?,
            conv(ConvPass::Forward, &x[0], g)?,
        ),
    };
    Ok(vec![Some(d0), Some(d1)])
}

/// The gradients of a batch norm's normalisation (inputs x, stats, γ, β): one sums pass, then
/// dx; dγ and dβ are the sums' rows. Only valid when stats are x's own batch statistics.
/// With `relu` (a ReLU fused after it, output y), g counts where y > 0.
fn batch_norm_grad(x: &[Var], y: &Var, g: &Var, relu: bool) -> Result<Vec<Option<Var>>> {
    let graph = g.graph();
    let own_stats = {
        let nodes = graph.lock();
        let s = &nodes[x[1].id()];
        matches!(s.op, Op::BatchNorm(BatchNormPass::Stats { .. })) && s.inputs == [x[0].id()]
    };
    if !own_stats {
        return Err(Error::Invalid {
            op: "grad",
            detail: format!(
                "batch_norm of {:?} is differentiable only with the batch statistics of its own input (Var::batch_norm_train)",
                x[0].shape()
            ),
        });
    }
    let pass = |p: BatchNormPass, ins: &[&Var]| graph.push(Op::BatchNorm(p), ins);
    let mut ins = vec![g, &x[0], &x[1]];
    ins.extend(relu.then_some(y));
    let sums = pass(BatchNormPass::GradSums { relu }, &ins)?;
    let mut ins = vec![g, &x[0], &x[1], &x[2], &sums];
    ins.extend(relu.then_some(y));
    let dx = pass(BatchNormPass::GradX { relu }, &ins)?;
    let row = |r: usize| sums.slice(0, r, r + 1)?.reshape(x[2].shape());
    Ok(vec![Some(dx), None, Some(row(1)?), Some(row(0)?)])
}
