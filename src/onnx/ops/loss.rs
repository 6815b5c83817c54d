//! ONNX loss operators: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, composed from
//! ordinary differentiable [`Var`] ops (gather, log-softmax, the fused cross-entropy,
//! reductions), so gradients reach the scores (and class weights) by their usual rules.
//!
//! Both take scores/log-probabilities `(N, C, d1..dk)` and labels `(N, d1..dk)`:
//!
//! - Labels known at import (initializers, constants, feeds bound at import): one gather of
//!   flat indices `(n·C + t)·D + d` (D = d1·…·dk) from the flattened input picks each
//!   position's entry in ONNX's own layout, without a transpose. An ignored position reads
//!   entry 0 of its row and is zeroed by a constant mask (its weight is 0); labels out of
//!   range are an import error naming the label.
//! - Labels fed when the graph runs (INT64/INT32 graph inputs, i32 in the graph): scores go
//!   channel-last. SoftmaxCrossEntropyLoss is then the fused cross-entropy, whose
//!   `ignore_index` is the ONNX one; NegativeLogLikelihoodLoss picks with one-hot rows
//!   gathered from a constant C×C identity (C bounded, [`MAX_RUNTIME_CLASSES`]), with the
//!   fused cross-entropy of zeros as a range check of the labels (gather would wrap −1). Class
//!   weights are gathered at the labels, which an ignored label (outside 0..C) cannot be, so
//!   runtime labels with both weights and `ignore_index`, and NLL with `ignore_index`, are
//!   refused (with labels known at import they work).
//!
//! Reductions: `none` keeps `(N, d1..dk)`, `sum` sums, `mean` divides the sum by the sum of
//! the weights of the positions not ignored (their count without weights): 0/0 = NaN when
//! every position is ignored, as ONNX's reference gives.

use super::{
    attr_string, dims_product, err, input, opt_input, value, Env, FoldFn, OpFn, OpResult, Value,
};
use crate::ops::elementwise::BinaryOp;
use crate::ops::loss::CrossEntropyOptions;
use crate::{Device, Op, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("NegativeLogLikelihoodLoss", nll),
    ("SoftmaxCrossEntropyLoss", sce),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

/// Most classes NegativeLogLikelihoodLoss takes with runtime labels: its one-hot rows come
/// from a C×C identity constant (4096² floats are 64 MiB).
pub(crate) const MAX_RUNTIME_CLASSES: usize = 4096;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Reduction {
    None,
    Sum,
    Mean,
}

fn reduction(node: &crate::onnx::proto::NodeProto) -> Result<Reduction, String> {
    match attr_string(node, "reduction").as_deref().unwrap_or("mean") {
        "none" => Ok(Reduction::None),
        "sum" => Ok(Reduction::Sum),
        "mean" => Ok(Reduction::Mean),
        r => Err(format!("reduction '{r}' is not one of none, sum, mean")),
    }
}

/// The `ignore_index` attribute, if set.
fn ignore_index(node: &crate::onnx::proto::NodeProto) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name() == "ignore_index")
        .and_then(|a| a.i)
}

/// Checks scores `x` (N, C, d1..dk) against labels and weights; returns C.
fn check_dims(x: &[usize], labels: &[usize], weight: Option<&[usize]>) -> Result<usize, String> {
    if x.len() < 2 {
        return Err(format!("input {x:?} needs rank >= 2 (N, C, d1, ...)"));
    }
    let want: Vec<usize> = std::iter::once(x[0])
        .chain(x[2..].iter().copied())
        .collect();
    if labels != want.as_slice() {
        return Err(format!(
            "labels {labels:?} must be the input {x:?} without its class dim (expected {want:?})"
        ));
    }
    if x[1] == 0 {
        return Err(format!("input {x:?} has 0 classes"));
    }
    if let Some(w) = weight {
        if w != [x[1]] {
            return Err(format!(
                "weight {w:?} must be [C] = [{}] for input {x:?}",
                x[1]
            ));
        }
    }
    Ok(x[1])
}

fn i32_const(env: &Env, dims: &[usize], v: Vec<i32>) -> Result<Var, String> {
    let t = Tensor::from_slice(&Device::cpu(), &v, dims).map_err(err)?;
    env.graph.constant_i32(&t).map_err(err)
}

fn f32_const(env: &Env, dims: &[usize], v: Vec<f32>) -> Result<Var, String> {
    let t = Tensor::from_slice(&Device::cpu(), &v, dims).map_err(err)?;
    env.graph.constant(&t).map_err(err)
}

/// The per-position losses before reduction and the mean's divisor.
struct Terms {
    /// (N, d1..dk).
    losses: Var,
    /// What `mean` divides the sum by: a graph value, or a count known at import.
    divisor: Divisor,
}

enum Divisor {
    Var(Var),
    Count(f32),
}

fn reduce(t: Terms, r: Reduction) -> Result<Var, String> {
    match r {
        Reduction::None => Ok(t.losses),
        Reduction::Sum => t.losses.sum().map_err(err),
        Reduction::Mean => {
            let s = t.losses.sum().map_err(err)?;
            match t.divisor {
                Divisor::Var(d) => s.div(&d),
                Divisor::Count(n) => s.scalar(BinaryOp::Div, n, false),
            }
            .map_err(err)
        }
    }
}

/// `−logp[n, t, d]·w[t]` with labels known at import (see the module comment).
fn nll_const_labels(
    env: &Env,
    logp: &Var,
    labels: &[i64],
    label_dims: &[usize],
    weight: Option<Var>,
    ignore: Option<i64>,
) -> Result<Terms, String> {
    let shape = logp.shape();
    let c = shape[1];
    let total = dims_product(shape, shape)?;
    let d = dims_product(&shape[2..], shape)?;
    if total > i32::MAX as usize {
        return Err(format!(
            "input {shape:?} has more elements than i32 indices reach"
        ));
    }
    let mut flat = Vec::with_capacity(labels.len());
    let mut class = Vec::with_capacity(labels.len());
    let mut keep = Vec::with_capacity(labels.len());
    for (p, &t) in labels.iter().enumerate() {
        let (row, pos) = (p / d, p % d);
        let ignored = ignore == Some(t);
        if !ignored && !(0..c as i64).contains(&t) {
            return Err(format!(
                "label {t} at position {p} outside 0..{c} (and not ignore_index {ignore:?})"
            ));
        }
        let t = if ignored { 0 } else { t as usize };
        flat.push(((row * c + t) * d + pos) as i32);
        class.push(t as i32);
        keep.push(if ignored { 0.0 } else { 1.0 });
    }
    let any_ignored = keep.contains(&0.0);
    let kept = keep.iter().sum::<f32>();
    let flat = i32_const(env, label_dims, flat)?;
    let picked = logp
        .reshape(&[total])
        .and_then(|f| f.gather(&flat, 0))
        .map_err(err)?;
    let mask = match any_ignored {
        true => Some(f32_const(env, label_dims, keep)?),
        false => None,
    };
    // w[t] per position (0 where ignored), or the mask, or nothing (all ones).
    let w = match (weight, mask) {
        (Some(w), mask) => {
            let wt = w
                .gather(&i32_const(env, label_dims, class)?, 0)
                .map_err(err)?;
            Some(match mask {
                Some(m) => wt.binary(&m, BinaryOp::KeepWhere).map_err(err)?,
                None => wt,
            })
        }
        (None, mask) => mask,
    };
    let (losses, divisor) = match &w {
        // KeepWhere, not a product: an ignored position's −inf log-probability (a class of
        // probability 0) gives 0, not NaN.
        Some(w) => (
            picked
                .binary(w, BinaryOp::KeepWhere)
                .and_then(|p| p.mul(w))
                .and_then(|p| p.neg())
                .map_err(err)?,
            Divisor::Var(w.sum().map_err(err)?),
        ),
        None => (picked.neg().map_err(err)?, Divisor::Count(kept)),
    };
    Ok(Terms { losses, divisor })
}

/// Scores (N, C, d1..dk) → (N, d1..dk, C).
fn channel_last(x: &Var) -> Result<Var, String> {
    let r = x.shape().len();
    let mut axes = vec![0];
    axes.extend(2..r);
    axes.push(1);
    x.permute(&axes).map_err(err)
}

/// Weights gathered at runtime labels; refused with `ignore_index` (see the module comment).
fn runtime_weights(
    weight: Option<Var>,
    labels: &Var,
    ignore: Option<i64>,
) -> Result<Option<Var>, String> {
    match (weight, ignore) {
        (Some(_), Some(i)) => Err(format!(
            "class weights with ignore_index {i} need labels known at import (an ignored \
             label has no weight to gather at run time)"
        )),
        (Some(w), None) => Ok(Some(w.gather(labels, 0).map_err(err)?)),
        (None, _) => Ok(None),
    }
}

/// Losses (N, d1..dk), weighted where `w` is given: `Terms` with the mean's divisor.
fn weighted(losses: Var, w: Option<Var>) -> Result<Terms, String> {
    Ok(match w {
        Some(w) => Terms {
            losses: losses.mul(&w).map_err(err)?,
            divisor: Divisor::Var(w.sum().map_err(err)?),
        },
        None => {
            let n = losses.shape().iter().product::<usize>() as f32;
            Terms {
                losses,
                divisor: Divisor::Count(n),
            }
        }
    })
}

/// The node's label value and optional weight, with the scores' dims checked.
fn operands<'a>(
    env: &'a Env,
    node: &crate::onnx::proto::NodeProto,
    x: &Var,
) -> Result<(&'a Value, Option<Var>, usize), String> {
    let labels = value(env, node, 1)?;
    let label_dims = match labels {
        Value::Var(v) => v.shape().to_vec(),
        Value::Const(c) => c.dims.clone(),
    };
    let weight = opt_input(env, node, 2)?;
    let c = check_dims(x.shape(), &label_dims, weight.as_ref().map(|w| w.shape()))?;
    Ok((labels, weight, c))
}

/// NegativeLogLikelihoodLoss (opsets 12, 13, 22): `−input[n, t, d]·w[t]`, reduced.
fn nll(env: &Env, node: &crate::onnx::proto::NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let r = reduction(node)?;
    let ignore = ignore_index(node);
    let (labels, weight, c) = operands(env, node, &x)?;
    let terms = match labels {
        Value::Const(k) => nll_const_labels(env, &x, &k.as_i64()?, &k.dims, weight, ignore)?,
        Value::Var(t) => {
            if let Some(i) = ignore {
                return Err(format!(
                    "ignore_index {i} needs labels known at import (runtime labels select \
                     through a gather, which cannot skip them)"
                ));
            }
            if c > MAX_RUNTIME_CLASSES {
                return Err(format!(
                    "{c} classes with runtime labels: at most {MAX_RUNTIME_CLASSES} (one-hot rows \
                     come from a C×C constant); bind the labels at import"
                ));
            }
            let mut eye = vec![0.0f32; c * c];
            for k in 0..c {
                eye[k * c + k] = 1.0;
            }
            let onehot = f32_const(env, &[c, c], eye)?.gather(t, 0).map_err(err)?;
            let xl = channel_last(&x)?;
            // Gather wraps a negative label (−1 would pick class C−1): the fused
            // cross-entropy of zeros checks every label against 0..C when the graph runs
            // (an error, as for SoftmaxCrossEntropyLoss), and adds exactly 0 (ln C · 0).
            let guard = env
                .graph
                .full(0.0, xl.shape())
                .cross_entropy_with(t, CrossEntropyOptions { ignore_index: None })
                .and_then(|g| g.mul_scalar(0.0))
                .map_err(err)?;
            let picked = xl
                .binary(&onehot, BinaryOp::KeepWhere)
                .and_then(|p| p.sum_axis(-1, false))
                .and_then(|p| p.add(&guard))
                .and_then(|p| p.neg())
                .map_err(err)?;
            weighted(picked, runtime_weights(weight, t, ignore)?)?
        }
    };
    Ok(vec![reduce(terms, r)?.into()])
}

/// SoftmaxCrossEntropyLoss (opsets 12, 13): NegativeLogLikelihoodLoss of
/// `log_softmax(scores, axis 1)`, with that as the optional second output `log_prob`.
fn sce(env: &Env, node: &crate::onnx::proto::NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let r = reduction(node)?;
    let ignore = ignore_index(node);
    let (labels, weight, _) = operands(env, node, &x)?;
    let wants_log_prob = node.output.get(1).is_some_and(|n| !n.is_empty());
    let mut log_prob = None;
    let terms = match labels {
        Value::Const(k) => {
            let logp = x.log_softmax(1).map_err(err)?;
            let t = nll_const_labels(env, &logp, &k.as_i64()?, &k.dims, weight, ignore)?;
            log_prob = Some(logp);
            t
        }
        Value::Var(t) => {
            let w = runtime_weights(weight, t, ignore)?;
            // An ignore index no i32 label can equal ignores nothing.
            let opts = CrossEntropyOptions {
                ignore_index: ignore.and_then(|i| i32::try_from(i).ok()),
            };
            let xl = channel_last(&x)?;
            let ce = xl.cross_entropy_with(t, opts).map_err(err)?;
            match (w, opts.ignore_index) {
                // Without weights the mean counts the rows not ignored: the fused count.
                (None, Some(_)) if r == Reduction::Mean => Terms {
                    losses: ce,
                    divisor: Divisor::Var(
                        env.graph
                            .push(Op::CrossEntropyCount(opts), &[t])
                            .map_err(err)?,
                    ),
                },
                (w, _) => weighted(ce, w)?,
            }
        }
    };
    let out = reduce(terms, r)?;
    let mut outs: Vec<Value> = vec![out.into()];
    if wants_log_prob {
        let lp = match log_prob {
            Some(l) => l,
            None => x.log_softmax(1).map_err(err)?,
        };
        outs.push(lp.into());
    }
    Ok(outs)
}
