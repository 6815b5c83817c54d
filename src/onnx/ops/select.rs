//! ONNX operators that select, reorder or re-frame elements by rules known at import:
//! ReverseSequence, Compress and CenterCropPad. Each is one gather of the flattened input
//! at constant positions, or slices and zero blocks, so each is differentiable (a gather's
//! gradient is a scatter-add) and runs where the graph runs.

use super::index::i32_const;
use super::{attr_int, attr_ints, axis, const_input, dims_product, err, input, one, Env};
use super::{OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::Var;

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("ReverseSequence", reverse_sequence),
    ("Compress", compress),
    ("CenterCropPad", center_crop_pad),
];

type Res<T> = std::result::Result<T, String>;

/// `x` gathered at the flat positions `pos`, shaped `dims`.
fn gather_flat(env: &Env, x: &Var, pos: &[usize], dims: &[usize]) -> Res<Var> {
    let total = dims_product(x.shape(), x.shape())?;
    let idx = i32_const(env, &[pos.len()], pos)?;
    x.reshape(&[total])
        .and_then(|f| f.gather(&idx, 0))
        .and_then(|y| y.reshape(dims))
        .map_err(err)
}

/// ReverseSequence (opset 10): along `time_axis`, the first `sequence_lens[b]` elements
/// of each batch entry `b` (along `batch_axis`) in reverse order, the rest as they were.
/// The lengths must be known at import (the node cases feed them as integers).
fn reverse_sequence(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let shape = x.shape().to_vec();
    if shape.len() < 2 {
        return Err(format!("input {shape:?} must have rank >= 2"));
    }
    let ta = axis(attr_int(node, "time_axis", 0), shape.len(), false)?;
    let ba = axis(attr_int(node, "batch_axis", 1), shape.len(), false)?;
    if ta > 1 || ba > 1 || ta == ba {
        return Err(format!(
            "time_axis {ta} and batch_axis {ba} must be 0 and 1 in some order"
        ));
    }
    let lens = const_input(env, node, 1)?.as_i64()?;
    let (time, batch) = (shape[ta], shape[ba]);
    if lens.len() != batch {
        return Err(format!(
            "sequence_lens has {} entries for a batch of {batch} (input {shape:?})",
            lens.len()
        ));
    }
    if let Some(bad) = lens.iter().find(|&&l| l < 0 || l as usize > time) {
        return Err(format!(
            "sequence length {bad} outside 0..={time} (input {shape:?})"
        ));
    }
    // The positions are a host list of the input's size.
    let total = super::host_numel(&shape)?;
    let inner = total / (time * batch).max(1);
    let strides = |a: usize| if a == 0 { shape[1] * inner } else { inner };
    let (st, sb) = (strides(ta), strides(ba));
    let mut pos: Vec<usize> = (0..total).collect();
    for (b, &l) in lens.iter().enumerate() {
        let l = l as usize;
        for t in 0..l {
            for i in 0..inner {
                pos[b * sb + t * st + i] = b * sb + (l - 1 - t) * st + i;
            }
        }
    }
    one(gather_flat(env, &x, &pos, &shape)?)
}

/// Compress (opsets 9, 11): the slices along `axis` (the flattened input without one)
/// where `condition` (known at import) is true; a condition shorter than the axis leaves
/// the rest out, one longer must be false past it (NumPy's `compress`).
fn compress(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let cond = const_input(env, node, 1)?.as_i64()?;
    let has_axis = node.attribute.iter().any(|a| a.name() == "axis");
    let (x, a) = if has_axis {
        let a = axis(attr_int(node, "axis", 0), x.shape().len(), false)?;
        (x, a)
    } else {
        let total = dims_product(x.shape(), x.shape())?;
        (x.reshape(&[total]).map_err(err)?, 0)
    };
    let shape = x.shape().to_vec();
    let n = shape[a];
    if let Some(i) = (n..cond.len()).find(|&i| cond[i] != 0) {
        return Err(format!(
            "condition is true at {i}, past axis {a} of {shape:?} ({n} long)"
        ));
    }
    let keep: Vec<usize> = (0..n.min(cond.len())).filter(|&i| cond[i] != 0).collect();
    if keep.is_empty() {
        return Err(format!(
            "condition selects nothing from {shape:?}: an empty output is not supported"
        ));
    }
    super::host_numel(&shape)?;
    let outer: usize = shape[..a].iter().product();
    let inner: usize = shape[a + 1..].iter().product();
    let mut pos = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in &keep {
            pos.extend((0..inner).map(|i| (o * n + k) * inner + i));
        }
    }
    let mut dims = shape.clone();
    dims[a] = keep.len();
    one(gather_flat(env, &x, &pos, &dims)?)
}

/// CenterCropPad (opset 18): each axis in `axes` (default all) cropped or zero-padded to
/// the length in `shape`, centred; an odd difference leaves the extra element at the end
/// (ONNX's reference).
fn center_crop_pad(env: &Env, node: &NodeProto) -> OpResult {
    let mut x = input(env, node, 0)?;
    let rank = x.shape().len();
    let target = const_input(env, node, 1)?.as_i64()?;
    let axes: Vec<usize> = match attr_ints(node, "axes") {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, rank, false))
            .collect::<Res<_>>()?,
        None => (0..rank).collect(),
    };
    if axes.len() != target.len() {
        return Err(format!(
            "shape has {} entries for {} axes (input {:?})",
            target.len(),
            axes.len(),
            x.shape()
        ));
    }
    if (1..axes.len()).any(|i| axes[..i].contains(&axes[i])) {
        return Err(format!("axes {axes:?} repeat an axis"));
    }
    for (&a, &t) in axes.iter().zip(&target) {
        let t = usize::try_from(t)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| format!("target length {t} for axis {a} must be positive"))?;
        let dim = x.shape()[a];
        let y = if t < dim {
            let start = (dim - t) / 2;
            x.slice(a as isize, start, start + t)
        } else if t > dim {
            let before = (t - dim) / 2;
            let zeros = |n: usize| {
                let mut s = x.shape().to_vec();
                s[a] = n;
                x.graph().full(0.0, &s)
            };
            let (lo, hi) = (zeros(before), zeros(t - dim - before));
            let parts: Vec<&Var> = [&lo, &x, &hi]
                .into_iter()
                .filter(|v| v.shape()[a] > 0)
                .collect();
            Var::concat(&parts, a as isize)
        } else {
            continue;
        };
        x = y.map_err(err)?;
    }
    one(x)
}
