//! ONNX normalisation operators (batch, instance, layer, RMS, Lp, group, LRN), each composed from
//! ordinary differentiable [`Var`] ops: reductions along one axis over a reshaped view and
//! broadcasting arithmetic. Variances are `mean((x − mean)²)`, which does not cancel the way
//! `mean(x²) − mean²` does.

use super::{attr_float, attr_int, axis, err, input, input_dims, one, FoldFn, OpFn, OpResult};
use super::{ConstData, Env, Value};
use crate::onnx::proto::NodeProto;
use crate::{Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("LayerNormalization", layer_norm),
    ("RMSNormalization", rms_norm),
    ("LpNormalization", lp_norm),
    ("GroupNormalization", group_norm),
    ("LRN", lrn),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

/// Output `i` of `node` is asked for (present and named).
fn wants_output(node: &NodeProto, i: usize) -> bool {
    node.output.get(i).is_some_and(|n| !n.is_empty())
}

/// X of shape (N, C, …), rank ≥ `min_rank`.
fn nc_input(env: &Env, node: &NodeProto, min_rank: usize) -> Result<Var, String> {
    let x = input(env, node, 0)?;
    if x.shape().len() < min_rank {
        return Err(format!(
            "input X {:?} needs rank >= {min_rank} (N, C, ...)",
            x.shape()
        ));
    }
    Ok(x)
}

/// Input `i`, which must have exactly `want` dims; reshaped to `to`.
fn per_channel(
    env: &Env,
    node: &NodeProto,
    i: usize,
    what: &str,
    want: &[usize],
    to: &[usize],
) -> Result<Var, String> {
    let dims = input_dims(env, node, i)?;
    if dims != want {
        return Err(format!("{what} has shape {dims:?}, expected {want:?}"));
    }
    input(env, node, i)?.reshape(to).map_err(err)
}

/// (1, C, 1, …) for an input of `shape`.
fn channel_shape(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    s[1] = shape[1];
    s
}

/// `stash_type` is the precision of the statistics; wgrad computes them in f32, which is
/// the default (1, FLOAT). Anything else would be silently less precise than asked.
fn check_stash_type(node: &NodeProto) -> Result<(), String> {
    match attr_int(node, "stash_type", 1) {
        1 => Ok(()),
        t => Err(format!(
            "stash_type {t} is not supported (statistics are computed in FLOAT, 1)"
        )),
    }
}

/// The normalisation of `x` (rows × cols, viewed as `rows_shape` first) along its last
/// dim: returns `(x − mean) / √(var + eps)` (rows, cols), the mean and `var + eps`
/// (rows, 1).
fn normalize_rows(x: &Var, rows: usize, cols: usize, eps: f32) -> crate::Result<(Var, Var, Var)> {
    let x = x.reshape(&[rows, cols])?;
    let mean = x.mean_axis(-1, true)?;
    let centred = x.sub(&mean)?;
    let var_eps = centred.square()?.mean_axis(-1, true)?.add_scalar(eps)?;
    let y = centred.div(&var_eps.sqrt()?)?;
    Ok((y, mean, var_eps))
}

/// BatchNormalization at inference: `(x − mean)·scale/√(var + eps) + B` per channel of
/// (N, C, …), computed as one per-channel `x·a + c` with `a = scale/√(var + eps)` and
/// `c = B − mean·a`, which a compiled graph applies in the epilogue of the product before it
/// (src/epilogue.rs). A convolution's bias just before folds into `c` (`+ bias·a`). With all
/// four statistics known at import (`Weights::Constants`) `a` and `c` are computed there in
/// f64; as parameters they are graph ops on (C) values, so fine-tuning trains them as the
/// file's names. Training mode (opset 14+ `training_mode=1`) is [`batch_norm_training`];
/// opset ≤ 6's `is_test=0`, the saved-statistics outputs of opsets 9–13 and opset 7's
/// per-activation form (`spatial=0`) are refused.
fn batch_norm(env: &Env, node: &NodeProto) -> OpResult {
    if attr_int(node, "training_mode", 0) != 0 {
        return batch_norm_training(env, node);
    }
    if env.opset <= 6 && attr_int(node, "is_test", 0) == 0 {
        return Err("is_test=0 (training) is not supported (inference only)".into());
    }
    if attr_int(node, "spatial", 1) != 1 {
        return Err("spatial=0 (per-activation statistics) is not supported".into());
    }
    if (1..5).any(|i| wants_output(node, i)) {
        return Err(
            "only output Y is supported (running or saved statistics are training outputs)".into(),
        );
    }
    let x = nc_input(env, node, 2)?;
    let eps = attr_float(node, "epsilon", 1e-5);
    let c = x.shape()[1];
    let to = channel_shape(x.shape());
    let names = ["scale", "B", "input_mean", "input_var"];
    for (i, what) in (1..5).zip(names) {
        let dims = input_dims(env, node, i)?;
        if dims != [c] {
            return Err(format!("{what} has shape {dims:?}, expected {:?}", [c]));
        }
    }
    // A convolution's output with its bias added: normalise the output before the bias and
    // fold the bias into the shift.
    let conv = env.conv_bias.borrow().get(&x.id()).cloned();
    let (x, conv_bias) = match conv {
        Some((pre, bias, name)) => (pre, Some((bias, env.values.get(&name)))),
        None => (x, None),
    };
    let floats = |v: Option<&Value>| match v {
        Some(Value::Const(k)) if matches!(k.data, ConstData::F32(_)) => Some(k.as_f32()),
        _ => None,
    };
    let stats: Option<Vec<Vec<f32>>> = (1..5)
        .map(|i| floats(node.input.get(i).and_then(|n| env.values.get(n))))
        .collect();
    let known_bias = match &conv_bias {
        None => Some(None),
        Some((_, v)) => floats(*v).map(Some),
    };
    let y = match (stats, known_bias) {
        (Some(st), Some(bias)) => {
            let (a, shift) = fold_constants(&st, bias.as_deref(), eps);
            let constant = |v: &[f32]| {
                Tensor::from_slice(&crate::Device::cpu(), v, &to)
                    .and_then(|t| x.graph().constant(&t))
            };
            (|| x.mul(&constant(&a)?)?.add(&constant(&shift)?))()
        }
        _ => {
            let scale = per_channel(env, node, 1, "scale", &[c], &to)?;
            let b = per_channel(env, node, 2, "B", &[c], &to)?;
            let mean = per_channel(env, node, 3, "input_mean", &[c], &to)?;
            let var = per_channel(env, node, 4, "input_var", &[c], &to)?;
            let bias = conv_bias.map(|(v, _)| v);
            (|| {
                let a = scale.div(&var.add_scalar(eps)?.sqrt()?)?;
                let mut shift = b.sub(&mean.mul(&a)?)?;
                if let Some(bias) = bias {
                    shift = shift.add(&bias.reshape(&to)?.mul(&a)?)?;
                }
                x.mul(&a)?.add(&shift)
            })()
        }
    }
    .map_err(err)?;
    one(y)
}

/// BatchNormalization in training mode (opsets 14, 15): normalised with the batch's own
/// statistics over every axis but the channel's (biased variance), and the running
/// statistics as outputs 1 and 2: `input·momentum + batch·(1 − momentum)` (momentum
/// defaults to 0.9). A composition of reductions, so its gradient is autodiff's.
fn batch_norm_training(env: &Env, node: &NodeProto) -> OpResult {
    let x = nc_input(env, node, 2)?;
    let shape = x.shape().to_vec();
    let (n, c) = (shape[0], shape[1]);
    let spatial = super::dims_product(&shape[2..], &shape)?;
    let eps = attr_float(node, "epsilon", 1e-5);
    let momentum = attr_float(node, "momentum", 0.9);
    let [scale, b, mean_in, var_in] = [(1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")]
        .map(|(i, what)| per_channel(env, node, i, what, &[c], &[c]));
    let (scale, b, mean_in, var_in) = (scale?, b?, mean_in?, var_in?);
    let outs = (|| {
        // (N, C, S): the mean over S then over N is the mean over both (equal counts).
        let x3 = x.reshape(&[n, c, spatial])?;
        let mean = x3.mean_axis(2, true)?.mean_axis(0, true)?;
        let d = x3.sub(&mean)?;
        let var = d.square()?.mean_axis(2, true)?.mean_axis(0, true)?;
        let inv = var.add_scalar(eps)?.sqrt()?;
        let y = d
            .div(&inv)?
            .mul(&scale.reshape(&[1, c, 1])?)?
            .add(&b.reshape(&[1, c, 1])?)?
            .reshape(&shape)?;
        let running = |input: &Var, batch: &Var| -> crate::Result<Var> {
            input
                .mul_scalar(momentum)?
                .add(&batch.reshape(&[c])?.mul_scalar(1.0 - momentum)?)
        };
        Ok::<_, crate::Error>(vec![y, running(&mean_in, &mean)?, running(&var_in, &var)?])
    })()
    .map_err(err)?;
    // Unnamed outputs are dropped by the importer.
    Ok(outs.into_iter().map(Value::Var).collect())
}

/// `a = scale/√(var + eps)` and `c = B − mean·a (+ bias·a)` in f64, rounded to f32 once, from
/// the statistics [scale, B, mean, var] and a convolution's bias.
fn fold_constants(stats: &[Vec<f32>], bias: Option<&[f32]>, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let [scale, b, mean, var] = [0, 1, 2, 3].map(|i| &stats[i]);
    let mut a = Vec::with_capacity(scale.len());
    let mut shift = Vec::with_capacity(scale.len());
    for i in 0..scale.len() {
        let ai = scale[i] as f64 / (var[i] as f64 + eps as f64).sqrt();
        let pre = bias.map_or(0.0, |bias| bias[i] as f64);
        a.push(ai as f32);
        shift.push((b[i] as f64 + (pre - mean[i] as f64) * ai) as f32);
    }
    (a, shift)
}

/// InstanceNormalization: each (n, c) slice normalised over its spatial dims, then
/// `scale[c]·y + B[c]`.
fn instance_norm(env: &Env, node: &NodeProto) -> OpResult {
    let x = nc_input(env, node, 3)?;
    let eps = attr_float(node, "epsilon", 1e-5);
    let shape = x.shape().to_vec();
    let (n, c) = (shape[0], shape[1]);
    let to = channel_shape(&shape);
    let scale = per_channel(env, node, 1, "scale", &[c], &to)?;
    let bias = per_channel(env, node, 2, "B", &[c], &to)?;
    let spatial = super::dims_product(&shape[2..], &shape)?;
    let rows = super::dims_product(&[n, c], &shape)?;
    let y = (|| {
        let (y, _, _) = normalize_rows(&x, rows, spatial, eps)?;
        y.reshape(&shape)?.mul(&scale)?.add(&bias)
    })()
    .map_err(err)?;
    one(y)
}

/// Whether `p` broadcasts onto `target` without growing it (ONNX's unidirectional
/// broadcasting: trailing-aligned, each dim equal or 1).
fn broadcasts_onto(p: &[usize], target: &[usize]) -> bool {
    p.len() <= target.len()
        && p.iter()
            .rev()
            .zip(target.iter().rev())
            .all(|(&a, &b)| a == b || a == 1)
}

/// What LayerNormalization and RMSNormalization share: X (rank >= 1), the first
/// normalised axis, epsilon, X as (rows, cols) with cols the dims `axis..`, and the scale
/// input (named `what` in errors), which must broadcast onto those dims.
struct RowNorm {
    x: Var,
    shape: Vec<usize>,
    a: usize,
    eps: f32,
    rows: usize,
    cols: usize,
    scale: Var,
}

fn row_norm_args(env: &Env, node: &NodeProto, what: &str) -> std::result::Result<RowNorm, String> {
    check_stash_type(node)?;
    let x = input(env, node, 0)?;
    let shape = x.shape().to_vec();
    let r = shape.len();
    if r == 0 {
        return Err("input X must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", -1), r, false)?;
    let inner = &shape[a..];
    let scale_dims = input_dims(env, node, 1)?;
    if !broadcasts_onto(&scale_dims, inner) {
        return Err(format!(
            "{what} {scale_dims:?} does not broadcast onto the normalised dims {inner:?} of X {shape:?}"
        ));
    }
    Ok(RowNorm {
        rows: super::dims_product(&shape[..a], &shape)?,
        cols: super::dims_product(inner, &shape)?,
        scale: input(env, node, 1)?,
        eps: attr_float(node, "epsilon", 1e-5),
        x,
        shape,
        a,
    })
}

/// LayerNormalization (opset 17): normalised over dims `axis..`, then `·Scale + B` with
/// Scale and B broadcast onto those dims. The optional Mean and InvStdDev outputs have
/// X's shape with dims `axis..` set to 1.
fn layer_norm(env: &Env, node: &NodeProto) -> OpResult {
    let RowNorm {
        x,
        shape,
        a,
        eps,
        rows,
        cols,
        scale,
    } = row_norm_args(env, node, "Scale")?;
    let inner = &shape[a..];
    let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(_) => {
            let d = input_dims(env, node, 2)?;
            if !broadcasts_onto(&d, inner) {
                return Err(format!(
                    "B {d:?} does not broadcast onto the normalised dims {inner:?} of X {shape:?}"
                ));
            }
            Some(input(env, node, 2)?)
        }
        None => None,
    };
    let mut stat_shape = shape.clone();
    stat_shape[a..].iter_mut().for_each(|d| *d = 1);
    let outs = (|| {
        let (y, mean, var_eps) = normalize_rows(&x, rows, cols, eps)?;
        let mut y = y.reshape(&shape)?.mul(&scale)?;
        if let Some(b) = &bias {
            y = y.add(b)?;
        }
        let mut outs = vec![Value::Var(y)];
        if wants_output(node, 1) || wants_output(node, 2) {
            outs.push(mean.reshape(&stat_shape)?.into());
            let inv = var_eps.sqrt()?.scalar(crate::BinaryOp::Div, 1.0, true)?;
            outs.push(inv.reshape(&stat_shape)?.into());
        }
        Ok::<_, crate::Error>(outs)
    })()
    .map_err(err)?;
    Ok(outs)
}

/// RMSNormalization (opset 23): `x / √(mean(x²) + eps) · scale`, the mean over dims
/// `axis..`, Scale broadcast onto those dims (as LayerNormalization, without centring or
/// bias).
fn rms_norm(env: &Env, node: &NodeProto) -> OpResult {
    let RowNorm {
        x,
        shape,
        eps,
        rows,
        cols,
        scale,
        ..
    } = row_norm_args(env, node, "scale")?;
    let y = (|| {
        let xr = x.reshape(&[rows, cols])?;
        let ms = xr.square()?.mean_axis(-1, true)?.add_scalar(eps)?;
        xr.div(&ms.sqrt()?)?.reshape(&shape)?.mul(&scale)
    })()
    .map_err(err)?;
    one(y)
}

/// LpNormalization (opsets 1, 22): `x / ‖x‖_p` along `axis` (default -1), p 1 or 2. A line
/// of zeros gives 0 (ONNX's reference; not 0/0 = NaN).
fn lp_norm(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let r = x.shape().len();
    if r == 0 {
        return Err("input must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", -1), r, false)? as isize;
    let y = match attr_int(node, "p", 2) {
        1 => x.abs().and_then(|v| v.sum_axis(a, true)),
        2 => x
            .square()
            .and_then(|v| v.sum_axis(a, true))
            .and_then(|v| v.sqrt()),
        p => return Err(format!("p = {p} is not supported (1 or 2)")),
    }
    .and_then(|n| x.div(&n)?.binary(&n, crate::BinaryOp::KeepWhere))
    .map_err(err)?;
    one(y)
}

/// GroupNormalization: the channels of (N, C, …) split into `num_groups` groups, each
/// (n, group) normalised over its channels and spatial dims. Scale and bias are per group
/// (shape (num_groups)) in opset 18 and per channel (shape (C)) from opset 21.
fn group_norm(env: &Env, node: &NodeProto) -> OpResult {
    check_stash_type(node)?;
    let x = nc_input(env, node, 2)?;
    let shape = x.shape().to_vec();
    let (n, c) = (shape[0], shape[1]);
    let groups = attr_int(node, "num_groups", 0);
    if groups <= 0 || c % groups as usize != 0 {
        return Err(format!(
            "num_groups {groups} must be positive and divide the {c} channels of X {shape:?}"
        ));
    }
    let g = groups as usize;
    let eps = attr_float(node, "epsilon", 1e-5);
    let per_group = super::dims_product(&shape[1..], &shape)? / g;
    let rows = super::dims_product(&[n, g], &shape)?;
    let y = if env.opset >= 21 {
        let to = channel_shape(&shape);
        let scale = per_channel(env, node, 1, "scale", &[c], &to)?;
        let bias = per_channel(env, node, 2, "bias", &[c], &to)?;
        (|| {
            let (y, _, _) = normalize_rows(&x, rows, per_group, eps)?;
            y.reshape(&shape)?.mul(&scale)?.add(&bias)
        })()
    } else {
        let scale = per_channel(env, node, 1, "scale (opset 18: per group)", &[g], &[g, 1])?;
        let bias = per_channel(env, node, 2, "bias (opset 18: per group)", &[g], &[g, 1])?;
        (|| {
            let (y, _, _) = normalize_rows(&x, rows, per_group, eps)?;
            y.reshape(&[n, g, per_group])?
                .mul(&scale)?
                .add(&bias)?
                .reshape(&shape)
        })()
    }
    .map_err(err)?;
    one(y)
}

/// LRN across channels: `x / (bias + alpha/size · Σ x²)^beta`, the sum over channels
/// `c − ⌊(size−1)/2⌋ ..= c + ⌈(size−1)/2⌉` clipped to the channels that exist. The window
/// sum is a sum of shifted slices of x² padded with zeros (only shifts that can reach a
/// channel are built, so a window wider than C costs at most 2C − 1 slices).
fn lrn(env: &Env, node: &NodeProto) -> OpResult {
    let x = nc_input(env, node, 2)?;
    let size = attr_int(node, "size", 0);
    if size <= 0 {
        return Err(format!(
            "attribute size must be given and positive, got {size}"
        ));
    }
    let alpha = attr_float(node, "alpha", 1e-4);
    let beta = attr_float(node, "beta", 0.75);
    let bias = attr_float(node, "bias", 1.0);
    let shape = x.shape().to_vec();
    let c = shape[1];
    let s = size as usize;
    let (lo, hi) = ((s - 1) / 2, s / 2); // ⌊(size−1)/2⌋, ⌈(size−1)/2⌉
                                         // Shifts past the channels only ever reach padding.
    let (lo, hi) = (lo.min(c.saturating_sub(1)), hi.min(c.saturating_sub(1)));
    let y = (|| {
        let sq = x.square()?;
        let zeros = |k: usize| {
            let mut z = shape.clone();
            z[1] = k;
            x.graph().full(0.0, &z)
        };
        let mut parts = Vec::new();
        let (zl, zh) = (zeros(lo), zeros(hi));
        if lo > 0 {
            parts.push(&zl);
        }
        parts.push(&sq);
        if hi > 0 {
            parts.push(&zh);
        }
        let padded = if parts.len() > 1 {
            Var::concat(&parts, 1)?
        } else {
            sq.clone()
        };
        let mut sum = padded.slice(1, 0, c)?;
        for k in 1..=lo + hi {
            sum = sum.add(&padded.slice(1, k, k + c)?)?;
        }
        let denom = sum
            .mul_scalar(alpha / size as f32)?
            .add_scalar(bias)?
            .scalar(crate::BinaryOp::Pow, beta, false)?;
        x.div(&denom)
    })()
    .map_err(err)?;
    one(y)
}
