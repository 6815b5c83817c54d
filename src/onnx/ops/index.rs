//! ONNX indexing operators on graph values, each composed from ordinary differentiable ops:
//!
//! - GatherElements, ScatterElements (and opset 9's Scatter), ScatterND: with indices known
//!   at import (initializers, constants, feeds bound at import) every index becomes a flat
//!   element position, checked (negative counts from the end, anything else out of range is
//!   an import error naming the index), and the op one gather or scatter-add of the
//!   flattened tensor ([`Var::gather`], [`Var::scatter_add`]). Indices fed at run time are
//!   refused: they would need a per-element gather primitive.
//! - Trilu: a constant 0/1 mask over the last two dims, applied with `KeepWhere` (which
//!   leaves no `inf·0 = NaN`).
//! - TopK: k rounds of (extreme, first index of it, mask it out), exact and differentiable
//!   in the values; for the small k of the node cases (rounds are bounded, [`MAX_TOPK`]).
//!
//! - OneHot: depth known at import; constant indices give a constant 0/1 mask, runtime
//!   (float) indices one compare against the class numbers, and the off/on values select
//!   with `KeepWhere`.
//!
//! Every one also folds on constants (integer data: the node cases' Trilu, TopK).

use super::{
    attr_int, attr_string, axis, const_input, dims_product, err, input, one, opt_const_input,
    value, Const, ConstData, Env, FoldFn, OpFn, OpResult, Value,
};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::BinaryOp as B;
use crate::ops::reduce::ReduceOp;
use crate::shape::contiguous_strides as strides;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("GatherElements", gather_elements),
    ("ScatterElements", scatter_elements),
    ("Scatter", scatter_elements),
    ("ScatterND", scatter_nd),
    ("Trilu", trilu),
    ("TopK", topk),
    ("OneHot", one_hot),
    ("GatherND", gather_nd),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[
    ("Trilu", fold_trilu),
    ("TopK", fold_topk),
    ("OneHot", fold_one_hot),
    ("GatherND", fold_gather_nd),
];

/// Most rounds TopK unrolls on a graph value (each is a reduction, a compare and a mask
/// over the whole input).
pub(crate) const MAX_TOPK: usize = 64;

/// Most updates to one position ScatterElements / ScatterND combine with `mul`, `max` or
/// `min` (each a layer: a scatter-add and an element-wise pass over the data).
pub(crate) const MAX_LAYERS: usize = 64;

/// Most elements a fold or a host-side index list of this family builds (64 MiB of f32).
const MAX_FOLD: usize = 1 << 24;

type Res<T> = std::result::Result<T, String>;

/// Input `i` of a fold (absent, or past the node's inputs, is an error).
fn folded<'a>(c: &[Option<&'a Const>], i: usize) -> Res<&'a Const> {
    c.get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("missing input {i}"))
}

/// The multi-index of flat position `p` in `dims`.
fn unflatten(mut p: usize, dims: &[usize]) -> Vec<usize> {
    let mut m = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        if dims[d] > 0 {
            m[d] = p % dims[d];
            p /= dims[d];
        }
    }
    m
}

/// Index `j` of an axis of length `n`, negative counted from the end.
fn wrap(j: i64, n: usize, what: &str) -> Res<usize> {
    let q = if j < 0 { j + n as i64 } else { j };
    if q < 0 || q >= n as i64 {
        return Err(format!("{what} {j} outside -{n}..{n}"));
    }
    Ok(q as usize)
}

/// Integer indices known at import (runtime ones are refused, see the module comment).
fn const_indices<'a>(env: &'a Env, node: &NodeProto, i: usize) -> Res<&'a Const> {
    match value(env, node, i)? {
        Value::Const(c) => Ok(c),
        Value::Var(_) => Err(format!(
            "indices '{}' must be known at import (an initializer, a Constant, or computed from \
             them); indices fed at run time are not supported",
            node.input[i]
        )),
    }
}

pub(super) fn i32_const(env: &Env, dims: &[usize], v: &[usize]) -> Res<Var> {
    let v: Vec<i32> = v
        .iter()
        .map(|&j| i32::try_from(j).map_err(|_| format!("position {j} does not fit i32")))
        .collect::<Res<_>>()?;
    let t = Tensor::from_slice(&Device::cpu(), &v, dims).map_err(err)?;
    env.graph.constant_i32(&t).map_err(err)
}

fn f32_const(env: &Env, dims: &[usize], v: &[f32]) -> Res<Var> {
    let t = Tensor::from_slice(&Device::cpu(), v, dims).map_err(err)?;
    env.graph.constant(&t).map_err(err)
}

/// The flat positions in `data` that per-element `indices` along axis `a` address
/// (GatherElements, ScatterElements): `indices` has `data`'s rank and no dim larger than
/// `data`'s except along `a`.
fn element_positions(data: &[usize], idx: &Const, a: usize) -> Res<Vec<usize>> {
    if idx.dims.len() != data.len() {
        return Err(format!(
            "indices {:?} must have the rank of data {data:?}",
            idx.dims
        ));
    }
    if let Some(d) = (0..data.len()).find(|&d| d != a && idx.dims[d] > data[d]) {
        return Err(format!(
            "indices {:?} exceed data {data:?} along axis {d}",
            idx.dims
        ));
    }
    let st = strides(data);
    let v = idx.as_i64()?;
    v.iter()
        .enumerate()
        .map(|(p, &j)| {
            let mut m = unflatten(p, &idx.dims);
            m[a] = wrap(j, data[a], "index")
                .map_err(|e| format!("{e} for axis {a} of data {data:?}"))?;
            Ok(m.iter().zip(&st).map(|(i, s)| i * s).sum())
        })
        .collect()
}

/// GatherElements (opsets 11, 13): `out[m] = data[m with m[axis] = indices[m]]`, shaped
/// like the indices.
fn gather_elements(env: &Env, node: &NodeProto) -> OpResult {
    let data = input(env, node, 0)?;
    let shape = data.shape().to_vec();
    if shape.is_empty() {
        return Err("data must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", 0), shape.len(), false)?;
    let idx = const_indices(env, node, 1)?;
    let flat = element_positions(&shape, idx, a)?;
    let total = dims_product(&shape, &shape)?;
    let flat = i32_const(env, &idx.dims, &flat)?;
    one(data
        .reshape(&[total])
        .and_then(|f| f.gather(&flat, 0))
        .map_err(err)?)
}

/// GatherND (opsets 11–13): the output dims and the flat positions in `data` (dims
/// `shape`) that `indices` address: each index tuple (the last indices dim, `k` long,
/// after `batch_dims` leading dims shared with data) picks a slice `data[b.., i0, .., ik]`
/// of the trailing dims, which are contiguous, so each tuple gives `slice` consecutive
/// positions.
fn gather_nd_positions(shape: &[usize], idx: &Const, b: usize) -> Res<(Vec<usize>, Vec<usize>)> {
    let q = idx.dims.len();
    let Some(&k) = idx.dims.last() else {
        return Err("indices must have rank >= 1".into());
    };
    let r = shape.len();
    if b >= q.min(r) || k == 0 || b + k > r {
        return Err(format!(
            "indices {:?} with batch_dims {b} do not address data {shape:?}",
            idx.dims
        ));
    }
    if idx.dims[..b] != shape[..b] {
        return Err(format!(
            "the batch dims of indices {:?} and data {shape:?} differ (batch_dims {b})",
            idx.dims
        ));
    }
    let tuples = &idx.dims[..q - 1];
    let out: Vec<usize> = tuples.iter().chain(&shape[b + k..]).copied().collect();
    let slice = dims_product(&shape[b + k..], shape)?;
    let n = dims_product(&out, &out)?;
    if n > MAX_FOLD {
        return Err(format!(
            "output {out:?} has {n} elements: at most {MAX_FOLD} (their positions are listed at import)"
        ));
    }
    let st = strides(shape);
    let v = idx.as_i64()?;
    let mut pos = Vec::with_capacity(n);
    for (t, tuple) in v.chunks(k).enumerate() {
        let m = unflatten(t, tuples);
        let mut off: usize = (0..b).map(|d| m[d] * st[d]).sum();
        for (j, &i) in tuple.iter().enumerate() {
            let d = b + j;
            off += wrap(i, shape[d], "index")
                .map_err(|e| format!("{e} for dim {d} of data {shape:?}"))?
                * st[d];
        }
        pos.extend(off..off + slice);
    }
    Ok((out, pos))
}

fn gather_nd(env: &Env, node: &NodeProto) -> OpResult {
    let data = input(env, node, 0)?;
    let shape = data.shape().to_vec();
    let b = usize::try_from(attr_int(node, "batch_dims", 0)).map_err(|_| "batch_dims < 0")?;
    let (out, pos) = gather_nd_positions(&shape, const_indices(env, node, 1)?, b)?;
    let total = dims_product(&shape, &shape)?;
    let flat = i32_const(env, &[pos.len()], &pos)?;
    one(data
        .reshape(&[total])
        .and_then(|f| f.gather(&flat, 0))
        .and_then(|g| g.reshape(&out))
        .map_err(err)?)
}

fn fold_gather_nd(_env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = folded(c, 0)?;
    let b = usize::try_from(attr_int(node, "batch_dims", 0)).map_err(|_| "batch_dims < 0")?;
    let (out, pos) = gather_nd_positions(&x.dims, folded(c, 1)?, b)?;
    let data = match &x.data {
        ConstData::F32(v) => ConstData::F32(pos.iter().map(|&p| v[p]).collect()),
        ConstData::I64(v) => ConstData::I64(pos.iter().map(|&p| v[p]).collect()),
    };
    Ok(vec![Const { dims: out, data }.into()])
}

/// A scatter's reduction attribute (opset 16+: none, add, mul; 18+: max, min).
fn scatter_reduction(node: &NodeProto) -> Res<String> {
    let r = attr_string(node, "reduction").unwrap_or_else(|| "none".into());
    match r.as_str() {
        "none" | "add" | "mul" | "max" | "min" => Ok(r),
        _ => Err(format!(
            "reduction '{r}' is not one of none, add, mul, max, min"
        )),
    }
}

/// `data` with `updates` (flattened, in order) combined into flat positions `targets`
/// under `reduction`. `add` is one scatter-add (duplicates add up). `none` keeps the last
/// update of each position (ONNX leaves duplicates undefined; its reference keeps the last).
/// `mul`, `max`, `min` go in layers, the k-th update of every position in layer k, each a
/// scatter-add of distinct positions combined with the running result.
fn scatter_flat(env: &Env, data: &Var, updates: &Var, targets: &[usize], r: &str) -> Res<Var> {
    let shape = data.shape().to_vec();
    let total = dims_product(&shape, &shape)?;
    let m = targets.len();
    if m == 0 {
        return Ok(data.clone());
    }
    let upd = updates.reshape(&[m]).map_err(err)?;
    let scatter = |positions: &[usize]| -> Res<(Var, Var)> {
        let vals = if positions.len() == m {
            upd.clone()
        } else {
            upd.gather(&i32_const(env, &[positions.len()], positions)?, 0)
                .map_err(err)?
        };
        let to: Vec<usize> = positions.iter().map(|&p| targets[p]).collect();
        let to = i32_const(env, &[to.len()], &to)?;
        // The positions a layer writes, 1 there and 0 elsewhere (distinct within a
        // layer), scattered on the device: no host buffer the size of the data.
        let (s, hit) = (|| {
            let s = vals.scatter_add(&to, 0, total)?.reshape(&shape)?;
            let hit = env.graph.full(1.0, &[positions.len()]);
            Ok::<_, crate::Error>((s, hit.scatter_add(&to, 0, total)?.reshape(&shape)?))
        })()
        .map_err(err)?;
        Ok((s, hit))
    };
    if r == "add" {
        let all: Vec<usize> = (0..m).collect();
        return data.add(&scatter(&all)?.0).map_err(err);
    }
    // Layers of distinct positions: layer k holds each position's k-th update; `none`
    // keeps only each position's last update.
    let mut layers: Vec<Vec<usize>> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (p, &t) in targets.iter().enumerate() {
        let k = seen.entry(t).or_insert(0usize);
        if r == "none" {
            *k = p;
            continue;
        }
        if layers.len() <= *k {
            layers.push(Vec::new());
        }
        layers[*k].push(p);
        *k += 1;
    }
    if layers.len() > MAX_LAYERS {
        return Err(format!(
            "reduction '{r}' with {} updates to one position: at most {MAX_LAYERS} (each is a \
             pass over the data)",
            layers.len()
        ));
    }
    if r == "none" {
        let mut last: Vec<usize> = seen.into_values().collect();
        last.sort_unstable();
        layers.push(last);
    }
    let mut out = data.clone();
    for layer in &layers {
        let (s, hit) = scatter(layer)?;
        out = (|| match r {
            "none" => out.binary(&hit, B::KeepWhereNot)?.add(&s),
            // Untouched positions are multiplied by exactly 1.
            "mul" => out.mul(&s.add(&hit.scalar(B::Sub, 1.0, true)?)?),
            // The candidate is the update where hit, the running value elsewhere.
            _ => {
                let cand = s.add(&out.binary(&hit, B::KeepWhereNot)?)?;
                out.binary(&cand, if r == "max" { B::Maximum } else { B::Minimum })
            }
        })()
        .map_err(err)?;
    }
    Ok(out)
}

/// ScatterElements (opsets 11, 13, 16, 18) and Scatter (opsets 9, 10): `data` with
/// `out[m with m[axis] = indices[m]] (reduction)= updates[m]`.
fn scatter_elements(env: &Env, node: &NodeProto) -> OpResult {
    let data = input(env, node, 0)?;
    let shape = data.shape().to_vec();
    if shape.is_empty() {
        return Err("data must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", 0), shape.len(), false)?;
    let r = scatter_reduction(node)?;
    let idx = const_indices(env, node, 1)?;
    let updates = input(env, node, 2)?;
    if updates.shape() != idx.dims.as_slice() {
        return Err(format!(
            "updates {:?} must have the shape of indices {:?}",
            updates.shape(),
            idx.dims
        ));
    }
    let targets = element_positions(&shape, idx, a)?;
    one(scatter_flat(env, &data, &updates, &targets, &r)?)
}

/// ScatterND (opsets 11, 13, 16, 18): indices (q…, k) address slices `data[i0..ik]`, which
/// updates (q… ++ data[k..]) replace or combine with.
fn scatter_nd(env: &Env, node: &NodeProto) -> OpResult {
    let data = input(env, node, 0)?;
    let shape = data.shape().to_vec();
    let r = scatter_reduction(node)?;
    let idx = const_indices(env, node, 1)?;
    let updates = input(env, node, 2)?;
    let Some((&k, q)) = idx.dims.split_last() else {
        return Err("indices must have rank >= 1".into());
    };
    if k == 0 || k > shape.len() {
        return Err(format!(
            "indices {:?} address {k} dims of data {shape:?} (1..={})",
            idx.dims,
            shape.len()
        ));
    }
    let want: Vec<usize> = q.iter().chain(&shape[k..]).copied().collect();
    if updates.shape() != want.as_slice() {
        return Err(format!(
            "updates {:?} must be {want:?} for indices {:?} and data {shape:?}",
            updates.shape(),
            idx.dims
        ));
    }
    let st = strides(&shape);
    let slice = dims_product(&shape[k..], &shape)?;
    let n = dims_product(updates.shape(), updates.shape())?;
    if n > MAX_FOLD {
        return Err(format!(
            "updates {:?} hold {n} elements: at most {MAX_FOLD} (their positions are listed at import)",
            updates.shape()
        ));
    }
    let v = idx.as_i64()?;
    let mut targets = Vec::with_capacity(v.len() / k * slice);
    for tuple in v.chunks(k) {
        let mut base = 0;
        for (d, &j) in tuple.iter().enumerate() {
            base += wrap(j, shape[d], "index")
                .map_err(|e| format!("{e} for dim {d} of data {shape:?}"))?
                * st[d];
        }
        targets.extend(base..base + slice);
    }
    one(scatter_flat(env, &data, &updates, &targets, &r)?)
}

/// Trilu's `k` (optional input 1, a scalar) and `upper` (default 1).
fn trilu_args(env: &Env, node: &NodeProto) -> Res<(i64, bool)> {
    let k = match opt_const_input(env, node, 1)? {
        Some(c) => match c.as_i64()?.as_slice() {
            [k] => *k,
            v => return Err(format!("k must be a scalar, got {} values", v.len())),
        },
        None => 0,
    };
    Ok((k, attr_int(node, "upper", 1) != 0))
}

/// Whether Trilu keeps element (i, j): `j − i >= k` (upper) or `j − i <= k` (lower).
fn trilu_keeps(i: usize, j: usize, k: i64, upper: bool) -> bool {
    let d = j as i64 - i as i64;
    if upper {
        d >= k
    } else {
        d <= k
    }
}

/// Trilu (opset 14): the upper (or lower) triangle of the last two dims from diagonal `k`,
/// zero elsewhere.
fn trilu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (k, upper) = trilu_args(env, node)?;
    let s = x.shape().to_vec();
    if s.len() < 2 {
        return Err(format!("input {s:?} needs rank >= 2"));
    }
    let (n, m) = (s[s.len() - 2], s[s.len() - 1]);
    if n.max(m) > 1 << 24 {
        return Err(format!(
            "input {s:?}: dims past 2^24 are not exact as f32 positions"
        ));
    }
    // The mask `j − i >= k` (or `<= k`) from a column of row numbers and a row of column
    // numbers (constants of n + m elements), so a large matrix needs no n×m constant.
    let rows: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let cols: Vec<f32> = (0..m).map(|j| j as f32).collect();
    let (rows, cols) = (
        f32_const(env, &[n, 1], &rows)?,
        f32_const(env, &[1, m], &cols)?,
    );
    let cmp = if upper { B::Ge } else { B::Le };
    let y = (|| {
        let mask = cols.sub(&rows)?.scalar(cmp, k as f32, false)?;
        x.binary(&mask, B::KeepWhere)
    })()
    .map_err(err)?;
    one(y)
}

fn fold_trilu(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = folded(c, 0)?;
    let (k, upper) = trilu_args(env, node)?;
    let s = &x.dims;
    if s.len() < 2 {
        return Err(format!("input {s:?} needs rank >= 2"));
    }
    let (n, m) = (s[s.len() - 2], s[s.len() - 1]);
    let keep = |e: usize| m > 0 && trilu_keeps((e / m) % n.max(1), e % m, k, upper);
    let data = match &x.data {
        ConstData::F32(v) => ConstData::F32(
            v.iter()
                .enumerate()
                .map(|(e, &x)| if keep(e) { x } else { 0.0 })
                .collect(),
        ),
        ConstData::I64(v) => ConstData::I64(
            v.iter()
                .enumerate()
                .map(|(e, &x)| if keep(e) { x } else { 0 })
                .collect(),
        ),
    };
    Ok(vec![Const {
        dims: x.dims.clone(),
        data,
    }
    .into()])
}

/// TopK's axis, k (input 1, known at import), largest and sorted.
fn topk_args(env: &Env, node: &NodeProto, dims: &[usize]) -> Res<(usize, usize, bool)> {
    if dims.is_empty() {
        return Err("input must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", -1), dims.len(), false)?;
    let k = match const_input(env, node, 1)?.as_i64()?.as_slice() {
        [k] => *k,
        v => return Err(format!("k must hold one value, got {}", v.len())),
    };
    if k < 0 || k as usize > dims[a] {
        return Err(format!(
            "k = {k} outside 0..={} (axis {a} of input {dims:?})",
            dims[a]
        ));
    }
    // `sorted=0` leaves the order unspecified: sorted is one valid order.
    Ok((a, k as usize, attr_int(node, "largest", 1) != 0))
}

/// TopK (opsets 1, 10, 11): the k largest (or smallest) values along `axis` in order, ties
/// to the lower index, and their indices. On a graph value: k rounds of extreme, first
/// index (as ArgMax), then that element excluded by replacing it with ∓inf.
fn topk(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let s = x.shape().to_vec();
    let (a, k, largest) = topk_args(env, node, &s)?;
    if k == 0 {
        return Err("k = 0 gives empty outputs, which graph values cannot hold".into());
    }
    if k > MAX_TOPK {
        return Err(format!(
            "k = {k} on a graph value: at most {MAX_TOPK} (one round per value)"
        ));
    }
    let n = s[a];
    if n > 1 << 24 {
        return Err(format!(
            "axis {a} of input {s:?} is too long for f32 indices"
        ));
    }
    let mut iota_dims = vec![1; s.len() - a];
    iota_dims[0] = n;
    let iota: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let (op, excluded) = if largest {
        (ReduceOp::Max, f32::NEG_INFINITY)
    } else {
        (ReduceOp::Min, f32::INFINITY)
    };
    let iota = f32_const(env, &iota_dims, &iota)?;
    let build = || -> crate::Result<(Var, Var)> {
        let mut rest = x.clone();
        let mut taken: Option<Var> = None;
        let (mut vals, mut idxs) = (Vec::new(), Vec::new());
        for _ in 0..k {
            let m = rest.reduce(op, a as isize, true)?;
            // The first position holding the extreme and not yet taken (an input of ∓inf
            // equals the fill of taken ones).
            let mut hit = rest.binary(&m, B::Eq)?;
            if let Some(t) = &taken {
                hit = hit.binary(t, B::KeepWhereNot)?;
            }
            let idx = iota
                .binary(&hit, B::KeepWhere)?
                .add(&hit.scalar(B::KeepWhereNot, n as f32, true)?)?
                .reduce(ReduceOp::Min, a as isize, true)?;
            let chosen = iota.binary(&idx, B::Eq)?;
            // The value from x itself, so the gradient flows to the chosen element.
            vals.push(
                x.binary(&chosen, B::KeepWhere)?
                    .sum_axis(a as isize, true)?,
            );
            idxs.push(idx);
            let fill = chosen.scalar(B::KeepWhere, excluded, true)?;
            rest = rest.binary(&chosen, B::KeepWhereNot)?.add(&fill)?;
            taken = Some(match taken {
                Some(t) => t.add(&chosen)?,
                None => chosen,
            });
        }
        let v: Vec<&Var> = vals.iter().collect();
        let i: Vec<&Var> = idxs.iter().collect();
        Ok((Var::concat(&v, a as isize)?, Var::concat(&i, a as isize)?))
    };
    let (v, i) = build().map_err(err)?;
    Ok(vec![v.into(), i.into()])
}

fn fold_topk(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = folded(c, 0)?;
    let (a, k, largest) = topk_args(env, node, &x.dims)?;
    let (l, inner) = (x.dims[a], dims_product(&x.dims[a + 1..], &x.dims)?);
    let outer = dims_product(&x.dims[..a], &x.dims)?;
    let mut dims = x.dims.clone();
    dims[a] = k;
    // Positions along the axis of each line, stably sorted (ties keep the lower index).
    let pick = |cmp: &dyn Fn(usize, usize) -> std::cmp::Ordering| -> Vec<(usize, usize)> {
        let mut out = vec![(0, 0); outer * k * inner];
        for o in 0..outer {
            for i in 0..inner {
                let at = |t: usize| (o * l + t) * inner + i;
                let mut order: Vec<usize> = (0..l).collect();
                order.sort_by(|&p, &q| {
                    let c = cmp(at(p), at(q));
                    if largest {
                        c.reverse()
                    } else {
                        c
                    }
                });
                for (r, &t) in order.iter().take(k).enumerate() {
                    out[(o * k + r) * inner + i] = (at(t), t);
                }
            }
        }
        out
    };
    let (vals, picked) = match &x.data {
        ConstData::I64(v) => {
            let p = pick(&|p, q| v[p].cmp(&v[q]));
            (ConstData::I64(p.iter().map(|&(e, _)| v[e]).collect()), p)
        }
        ConstData::F32(v) => {
            let p = pick(&|p, q| v[p].total_cmp(&v[q]));
            (ConstData::F32(p.iter().map(|&(e, _)| v[e]).collect()), p)
        }
    };
    let idx = picked.iter().map(|&(_, t)| t as i64).collect();
    Ok(vec![
        Const {
            dims: dims.clone(),
            data: vals,
        }
        .into(),
        Const::ints(dims, idx).into(),
    ])
}

/// OneHot's depth (input 1, known at import; ONNX casts it to an integer) and the output
/// dims and axis for indices of `dims`.
fn one_hot_dims(env: &Env, node: &NodeProto, dims: &[usize]) -> Res<(usize, Vec<usize>, usize)> {
    let depth = match &const_input(env, node, 1)?.data {
        ConstData::F32(v) if v.len() == 1 => v[0].trunc() as i64,
        ConstData::I64(v) if v.len() == 1 => v[0],
        _ => return Err("depth must be a scalar".into()),
    };
    if !(1..=1 << 24).contains(&depth) {
        return Err(format!("depth {depth} outside 1..=2^24"));
    }
    let a = axis(attr_int(node, "axis", -1), dims.len() + 1, false)?;
    let mut out = dims.to_vec();
    out.insert(a, depth as usize);
    Ok((depth as usize, out, a))
}

/// The class each constant index selects (`None`: outside -depth..depth, an all-off row),
/// indices cast to integers (truncated) as ONNX does.
fn one_hot_classes(idx: &Const, depth: usize) -> Vec<Option<usize>> {
    let ints: Vec<i64> = match &idx.data {
        ConstData::F32(v) => v.iter().map(|x| x.trunc() as i64).collect(),
        ConstData::I64(v) => v.clone(),
    };
    ints.iter().map(|&j| wrap(j, depth, "index").ok()).collect()
}

/// Whether output element `e` (of `out` dims, class axis `a`) is on.
fn one_hot_on(classes: &[Option<usize>], out: &[usize], a: usize, e: usize) -> bool {
    let mut m = unflatten(e, out);
    let class = m.remove(a);
    let (mut p, mut stride) = (0, 1);
    for d in (0..m.len()).rev() {
        p += m[d] * stride;
        stride *= out[if d < a { d } else { d + 1 }];
    }
    classes[p] == Some(class)
}

/// OneHot (opsets 9, 11): `values[1]` where the class along `axis` is the index (negative
/// counting from the end of 0..depth), `values[0]` elsewhere; an index outside
/// -depth..depth gives an all-off line, as the spec says.
fn one_hot(env: &Env, node: &NodeProto) -> OpResult {
    let values = input(env, node, 2)?;
    if values.shape().iter().product::<usize>() != 2 {
        return Err(format!("values {:?} must hold [off, on]", values.shape()));
    }
    let v = values.reshape(&[2]).map_err(err)?;
    let (off, on) =
        (|| Ok::<_, crate::Error>((v.slice(0, 0, 1)?, v.slice(0, 1, 2)?)))().map_err(err)?;
    // The class each index selects as f32 (−1: none), laid out with a 1 at the class axis,
    // compared with the class numbers 0..depth laid along it.
    let (classes, depth, out, a) = match value(env, node, 0)? {
        Value::Const(idx) => {
            let (depth, out, a) = one_hot_dims(env, node, &idx.dims)?;
            let c: Vec<f32> = one_hot_classes(idx, depth)
                .iter()
                .map(|c| c.map_or(-1.0, |c| c as f32))
                .collect();
            (f32_const(env, &idx.dims, &c)?, depth, out, a)
        }
        Value::Var(x) => {
            let (depth, out, a) = one_hot_dims(env, node, x.shape())?;
            let t = (|| {
                // Truncated toward zero, then a negative index counted from the end.
                let pos = x.scalar(B::Ge, 0.0, false)?;
                let t = x
                    .unary(crate::UnaryOp::Floor)?
                    .binary(&pos, B::KeepWhere)?
                    .add(
                        &x.unary(crate::UnaryOp::Ceil)?
                            .binary(&pos, B::KeepWhereNot)?,
                    )?;
                t.add(&t.scalar(B::Lt, 0.0, false)?.mul_scalar(depth as f32)?)
            })()
            .map_err(err)?;
            (t, depth, out, a)
        }
    };
    let mut lay = vec![1; out.len()];
    lay[a] = depth;
    let iota: Vec<f32> = (0..depth).map(|i| i as f32).collect();
    let iota = f32_const(env, &lay, &iota)?;
    let mut col = out.clone();
    col[a] = 1;
    let mask = (|| {
        classes
            .reshape(&col)?
            .binary(&iota, B::Eq)?
            .broadcast_to(&out)
    })()
    .map_err(err)?;
    let y = (|| {
        on.binary(&mask, B::KeepWhere)?
            .add(&off.binary(&mask, B::KeepWhereNot)?)
    })()
    .map_err(err)?;
    one(y)
}

fn fold_one_hot(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let idx = folded(c, 0)?;
    let values = folded(c, 2)?;
    if values.numel() != 2 {
        return Err(format!("values {:?} must hold [off, on]", values.dims));
    }
    let (depth, out, a) = one_hot_dims(env, node, &idx.dims)?;
    let classes = one_hot_classes(idx, depth);
    let total = dims_product(&out, &out)?;
    if total > MAX_FOLD {
        return Err(format!(
            "output {out:?} has {total} elements: folding at import is limited to {MAX_FOLD}"
        ));
    }
    let on = |e| one_hot_on(&classes, &out, a, e);
    let data = match &values.data {
        ConstData::F32(v) => ConstData::F32((0..total).map(|e| v[on(e) as usize]).collect()),
        ConstData::I64(v) => ConstData::I64((0..total).map(|e| v[on(e) as usize]).collect()),
    };
    Ok(vec![Const { dims: out, data }.into()])
}
