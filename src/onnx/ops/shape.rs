//! Shape and layout operators on graph values (Concat, Split, Slice, Squeeze, Unsqueeze,
//! Expand, Tile, Pad, Shape, Size), each composed of differentiable graph ops (reshape,
//! broadcast_to, slice, concat, full) so gradients come for free; and, in `fold.rs`, their
//! evaluation at import when every input is a host constant, which turns the shape-computing
//! subgraphs exporters write (`Shape → Gather → Unsqueeze → Concat → Reshape`) into plain
//! constants. Dims are static at import, so `Shape` of a graph value is a constant too.

mod fold;

use super::{
    attr_float, attr_int, attr_ints, attr_string, axis, const_input, err, input, input_dims, one,
    opt_const_input, value, Const, ConstData, Env, OpFn, OpResult, Value,
};
use crate::onnx::proto::NodeProto;
use crate::Var;

pub(super) use fold::{cast_const, FOLDS};

/// This family's operators on graph values (constant inputs go through [`FOLDS`]).
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("Shape", shape_of),
    ("Size", size_of),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Expand", expand),
    ("Tile", tile),
    ("Pad", pad),
    ("ConstantOfShape", constant_of_shape),
];

/// The most slices one op may concatenate to reorder an axis (negative steps, reflection):
/// each is a graph node, so a long reversal is refused rather than silently slow.
const MAX_PIECES: usize = 256;

type Res<T> = std::result::Result<T, String>;

/// `Shape`: the dims of a graph value or a constant, an INT64 constant; from opset 15
/// `start`/`end` pick a range of axes (negative from the end, clamped to [0, rank]).
fn shape_of(env: &Env, node: &NodeProto) -> OpResult {
    let dims = input_dims(env, node, 0)?;
    let r = dims.len() as i64;
    let clamp = |a: i64| (if a < 0 { a + r } else { a }).clamp(0, r) as usize;
    let start = clamp(attr_int(node, "start", 0));
    let end = clamp(attr_int(node, "end", r)).max(start);
    let v: Vec<i64> = dims[start..end].iter().map(|&d| d as i64).collect();
    Ok(vec![Const::ints(vec![v.len()], v).into()])
}

/// `Size`: the element count, an INT64 scalar.
fn size_of(env: &Env, node: &NodeProto) -> OpResult {
    let dims = input_dims(env, node, 0)?;
    let n = super::dims_product(&dims, &dims)?;
    Ok(vec![Const::ints(vec![], vec![n as i64]).into()])
}

/// A value under new dims of the same element count: a reshape of a graph value (none when
/// the dims are unchanged), a relabelled constant.
fn with_dims(v: &Value, dims: &[usize]) -> Res<Value> {
    match v {
        Value::Var(x) if x.shape() == dims => Ok(Value::Var(x.clone())),
        Value::Var(x) => Ok(Value::Var(x.reshape(dims).map_err(err)?)),
        Value::Const(c) => {
            let n = |d: &[usize]| d.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n(&c.dims).is_none() || n(&c.dims) != n(dims) {
                return Err(format!("cannot view {:?} as {dims:?}", c.dims));
            }
            Ok(Value::Const(Const {
                dims: dims.to_vec(),
                data: c.data.clone(),
            }))
        }
    }
}

/// The `axes` of Squeeze/Unsqueeze (and the reductions): an attribute before opset `since`,
/// an optional constant input 1 from it.
fn axes_arg(env: &Env, node: &NodeProto, since: i64) -> Res<Option<Vec<i64>>> {
    if env.opset >= since {
        opt_const_input(env, node, 1)?
            .map(Const::as_i64)
            .transpose()
    } else {
        Ok(attr_ints(node, "axes"))
    }
}

/// `Squeeze`: drops the listed axes (each of size 1), or every axis of size 1.
fn squeeze(env: &Env, node: &NodeProto) -> OpResult {
    let dims = input_dims(env, node, 0)?;
    let out: Vec<usize> = match axes_arg(env, node, 13)? {
        None => dims.iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let mut drop = vec![false; dims.len()];
            for a in axes {
                let k = axis(a, dims.len(), false)?;
                if dims[k] != 1 {
                    return Err(format!(
                        "cannot squeeze axis {a} of size {} (shape {dims:?})",
                        dims[k]
                    ));
                }
                drop[k] = true;
            }
            dims.iter()
                .zip(&drop)
                .filter(|(_, &d)| !d)
                .map(|(&n, _)| n)
                .collect()
        }
    };
    Ok(vec![with_dims(value(env, node, 0)?, &out)?])
}

/// `Unsqueeze`: inserts size-1 axes at the listed positions of the output.
fn unsqueeze(env: &Env, node: &NodeProto) -> OpResult {
    let dims = input_dims(env, node, 0)?;
    let axes = axes_arg(env, node, 13)?.ok_or("Unsqueeze needs `axes`")?;
    let r = dims.len() + axes.len();
    let mut ones = vec![false; r];
    for a in axes {
        let k = axis(a, r, false)?;
        if std::mem::replace(&mut ones[k], true) {
            return Err(format!("axis {a} is listed twice"));
        }
    }
    let mut rest = dims.iter().copied();
    let out: Vec<usize> = ones
        .iter()
        .map(|&o| if o { 1 } else { rest.next().unwrap_or(1) })
        .collect();
    Ok(vec![with_dims(value(env, node, 0)?, &out)?])
}

/// `Concat` of graph values (float constants among them become graph constants; empty
/// constants, which some exporters concatenate, are skipped).
fn concat(env: &Env, node: &NodeProto) -> OpResult {
    let mut vars = Vec::new();
    for i in 0..node.input.len() {
        if let Value::Const(c) = value(env, node, i)? {
            if c.numel() == 0 {
                continue;
            }
        }
        vars.push(input(env, node, i)?);
    }
    let first = vars.first().ok_or("Concat needs a non-empty input")?;
    let a = concat_axis(node, first.shape().len())?;
    if vars.len() == 1 {
        return one(vars[0].clone());
    }
    let refs: Vec<&Var> = vars.iter().collect();
    one(Var::concat(&refs, a as isize).map_err(err)?)
}

/// Concat's required `axis` for inputs of rank `r`.
fn concat_axis(node: &NodeProto, r: usize) -> Res<usize> {
    match attr_int(node, "axis", i64::MIN) {
        i64::MIN => Err("`axis` is required".into()),
        a => axis(a, r, false),
    }
}

/// The sizes of `Split`'s outputs along an axis of size `d`: the `split` attribute before
/// opset 13 or input from it, `num_outputs` from opset 18 (the last part smaller when `d`
/// does not divide), else equal parts, one per output.
fn split_sizes(env: &Env, node: &NodeProto, d: usize) -> Res<Vec<usize>> {
    let n = node.output.len();
    let given = if env.opset >= 13 {
        opt_const_input(env, node, 1)?
            .map(Const::as_i64)
            .transpose()?
    } else {
        attr_ints(node, "split")
    };
    let sizes: Vec<usize> = match given {
        Some(s) => {
            if s.len() != n || s.iter().any(|&k| k < 0) {
                return Err(format!("split {s:?} does not give {n} sizes >= 0"));
            }
            s.iter().map(|&k| k as usize).collect()
        }
        None => {
            let parts = match attr_int(node, "num_outputs", 0) {
                0 => n,
                k if k as usize == n => n,
                k => return Err(format!("num_outputs {k} but the node has {n} outputs")),
            };
            let chunk = d.div_ceil(parts.max(1));
            if parts == 0 || chunk * (parts - 1) > d {
                return Err(format!("cannot split {d} into {parts} parts"));
            }
            let mut s = vec![chunk; parts];
            s[parts - 1] = d - chunk * (parts - 1);
            if attr_int(node, "num_outputs", 0) == 0 && s[parts - 1] != chunk {
                return Err(format!("{d} does not split into {parts} equal parts"));
            }
            s
        }
    };
    if sizes.iter().sum::<usize>() != d {
        return Err(format!("split sizes {sizes:?} do not add up to {d}"));
    }
    Ok(sizes)
}

/// An empty result of `dims` (some dim 0): a constant, as it holds no values; Concat skips
/// it and Shape reads its dims, while an op needing it as a graph value reports it.
fn empty(dims: Vec<usize>) -> Value {
    Value::Const(Const::floats(dims, Vec::new()))
}

/// `Split` of a graph value: one slice per output.
fn split(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let a = axis(attr_int(node, "axis", 0), x.shape().len(), false)?;
    let sizes = split_sizes(env, node, x.shape()[a])?;
    let mut start = 0;
    let mut outs = Vec::new();
    for n in sizes {
        if n == 0 {
            let mut dims = x.shape().to_vec();
            dims[a] = 0;
            outs.push(empty(dims));
            continue;
        }
        outs.push(Value::Var(
            x.slice(a as isize, start, start + n).map_err(err)?,
        ));
        start += n;
    }
    Ok(outs)
}

/// One axis of a `Slice`: the first index, the element count and the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Span {
    pub start: i64,
    pub count: usize,
    pub step: i64,
}

impl Span {
    /// The input indices it selects, in output order.
    pub fn indices(&self) -> Vec<usize> {
        (0..self.count as i64)
            .map(|k| (self.start + k * self.step) as usize)
            .collect()
    }
}

/// `Slice`'s effective span on every axis of `dims`, as the spec computes it: negative
/// starts/ends count from the end, then are clamped to [0, d] for positive steps and to
/// [0, d-1] / [-1, d-1] for negative ones. Before opset 10 starts/ends/axes are attributes.
fn slice_plan(env: &Env, node: &NodeProto, dims: &[usize]) -> Res<Vec<Span>> {
    let r = dims.len();
    let (starts, ends, axes, steps) = if env.opset < 10 {
        let need = |n: &str| attr_ints(node, n).ok_or(format!("`{n}` is required"));
        (
            need("starts")?,
            need("ends")?,
            attr_ints(node, "axes"),
            None,
        )
    } else {
        let ints = |i| -> Res<Option<Vec<i64>>> {
            opt_const_input(env, node, i)?
                .map(Const::as_i64)
                .transpose()
        };
        (
            const_input(env, node, 1)?.as_i64()?,
            const_input(env, node, 2)?.as_i64()?,
            ints(3)?,
            ints(4)?,
        )
    };
    let n = starts.len();
    if ends.len() != n
        || axes.as_ref().is_some_and(|a| a.len() != n)
        || steps.as_ref().is_some_and(|s| s.len() != n)
    {
        return Err(format!(
            "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
        ));
    }
    let mut plan: Vec<Span> = dims
        .iter()
        .map(|&d| Span {
            start: 0,
            count: d,
            step: 1,
        })
        .collect();
    let mut seen = vec![false; r];
    for i in 0..n {
        let a = match &axes {
            Some(ax) => axis(ax[i], r, false)?,
            None if i < r => i,
            None => return Err(format!("{n} starts for rank {r}")),
        };
        if std::mem::replace(&mut seen[a], true) {
            return Err(format!("axis {a} is sliced twice"));
        }
        let step = steps.as_ref().map_or(1, |s| s[i]) as i128;
        if step == 0 {
            return Err("a step of 0".into());
        }
        let d = dims[a] as i128;
        let fix = |v: i64| {
            let v = v as i128;
            if v < 0 {
                v + d
            } else {
                v
            }
        };
        let (s, e) = (fix(starts[i]), fix(ends[i]));
        let (s, count) = if step > 0 {
            let (s, e) = (s.clamp(0, d), e.clamp(0, d));
            (s, if e > s { (e - s - 1) / step + 1 } else { 0 })
        } else {
            let (s, e) = (s.max(0).min(d - 1), e.max(-1).min(d - 1));
            (s, if s > e { (s - e - 1) / -step + 1 } else { 0 })
        };
        plan[a] = Span {
            start: s.max(0) as i64,
            count: count as usize,
            // A step beyond the axis picks one element: any such step is the same slice.
            step: step.clamp(-d.max(1), d.max(1)) as i64,
        };
    }
    Ok(plan)
}

/// `Slice` of a graph value: step 1 is a slice, a positive step a slice viewed as
/// (count, step) keeping the first column, a negative step single-element slices concatenated.
fn slice(env: &Env, node: &NodeProto) -> OpResult {
    let mut x = input(env, node, 0)?;
    let dims = x.shape().to_vec();
    let plan = slice_plan(env, node, &dims)?;
    if plan.iter().any(|s| s.count == 0) {
        return Ok(vec![empty(plan.iter().map(|s| s.count).collect())]);
    }
    for (a, span) in plan.into_iter().enumerate() {
        if span.step == 1 && span.count == dims[a] {
            continue;
        }
        x = strided(&x, a, span)?;
    }
    one(x)
}

/// The elements `span` selects along axis `a` of `x`.
fn strided(x: &Var, a: usize, span: Span) -> Res<Var> {
    let (s, n, step) = (span.start as usize, span.count, span.step);
    if step == 1 || n == 1 {
        return x.slice(a as isize, s, s + n).map_err(err);
    }
    if step < 0 {
        if n > MAX_PIECES {
            return Err(format!(
                "step {step} on axis {a} (shape {:?}): reversing {n} elements takes one slice \
                 each, more than the {MAX_PIECES} supported",
                x.shape()
            ));
        }
        return pick(x, a, &span.indices());
    }
    let step = step as usize;
    let d = x.shape()[a];
    if s + step * n > d {
        // The last element has fewer than `step` after it: take it on its own.
        let head = strided(
            x,
            a,
            Span {
                count: n - 1,
                ..span
            },
        )?;
        let last = s + step * (n - 1);
        let tail = x.slice(a as isize, last, last + 1).map_err(err)?;
        return Var::concat(&[&head, &tail], a as isize).map_err(err);
    }
    let mut grid = x.shape().to_vec();
    grid.splice(a..=a, [n, step]);
    let mut out = x.shape().to_vec();
    out[a] = n;
    x.slice(a as isize, s, s + step * n)
        .and_then(|y| y.reshape(&grid))
        .and_then(|y| y.slice(a as isize + 1, 0, 1))
        .and_then(|y| y.reshape(&out))
        .map_err(err)
}

/// The elements at `indices` along axis `a`, as slices of ascending runs concatenated.
fn pick(x: &Var, a: usize, indices: &[usize]) -> Res<Var> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &i in indices {
        match runs.last_mut() {
            Some((s, n)) if *s + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
    }
    if runs.len() > MAX_PIECES {
        return Err(format!(
            "reordering {} elements of axis {a} (shape {:?}) takes more than {MAX_PIECES} slices",
            indices.len(),
            x.shape()
        ));
    }
    let parts = runs
        .iter()
        .map(|&(s, n)| x.slice(a as isize, s, s + n))
        .collect::<crate::Result<Vec<Var>>>()
        .map_err(err)?;
    match &parts[..] {
        [] => Err("an empty selection".into()),
        [p] => Ok(p.clone()),
        _ => Var::concat(&parts.iter().collect::<Vec<_>>(), a as isize).map_err(err),
    }
}

/// NumPy broadcasting of two shapes (Expand broadcasts both ways).
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> Res<Vec<usize>> {
    let r = a.len().max(b.len());
    let at = |s: &[usize], k: usize| {
        if k + s.len() < r {
            1
        } else {
            s[k + s.len() - r]
        }
    };
    (0..r)
        .map(|k| match (at(a, k), at(b, k)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        })
        .collect()
}

/// A constant shape input (non-negative INT64s).
fn dims_input(env: &Env, node: &NodeProto, i: usize) -> Res<Vec<usize>> {
    let v = const_input(env, node, i)?.as_i64()?;
    if v.iter().any(|&d| d < 0) {
        return Err(format!("shape {v:?} has a negative dim"));
    }
    Ok(v.iter().map(|&d| d as usize).collect())
}

/// `Expand`: broadcast to broadcast(input dims, shape).
fn expand(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let out = broadcast(x.shape(), &dims_input(env, node, 1)?)?;
    if out.contains(&0) {
        return Ok(vec![empty(out)]);
    }
    if out == x.shape() {
        return one(x);
    }
    one(x.broadcast_to(&out).map_err(err)?)
}

/// `Tile`'s `repeats`, one per axis of `dims`.
fn repeats(env: &Env, node: &NodeProto, dims: &[usize]) -> Res<Vec<usize>> {
    let r = dims_input(env, node, 1)?;
    if r.len() != dims.len() {
        return Err(format!("repeats {r:?} for shape {dims:?}"));
    }
    Ok(r)
}

/// `Tile`: each repeated axis `d` viewed as (1, d), broadcast to (r, d), merged to r·d.
fn tile(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let dims = x.shape().to_vec();
    let reps = repeats(env, node, &dims)?;
    let out: Vec<usize> = dims
        .iter()
        .zip(&reps)
        .map(|(d, r)| d.checked_mul(*r))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("repeats {reps:?} of shape {dims:?} overflow"))?;
    if reps.contains(&0) {
        return Ok(vec![empty(out)]);
    }
    if reps.iter().all(|&r| r == 1) {
        return one(x);
    }
    let (mut grid, mut wide) = (Vec::new(), Vec::new());
    for (&d, &r) in dims.iter().zip(&reps) {
        if r > 1 {
            grid.push(1);
            wide.push(r);
        }
        grid.push(d);
        wide.push(d);
    }
    one(x
        .reshape(&grid)
        .and_then(|y| y.broadcast_to(&wide))
        .and_then(|y| y.reshape(&out))
        .map_err(err)?)
}

/// `Pad`: per padded axis, the input between its two pads, concatenated. Pads and the
/// constant are attributes before opset 11 and inputs from it; `axes` from opset 18; negative
/// pads crop (constant mode only).
fn pad(env: &Env, node: &NodeProto) -> OpResult {
    let mut x = input(env, node, 0)?;
    let r = x.shape().len();
    let mode = attr_string(node, "mode").unwrap_or_else(|| "constant".into());
    if !matches!(mode.as_str(), "constant" | "reflect" | "edge" | "wrap") {
        return Err(format!("mode `{mode}` is not supported"));
    }
    let (pads, fill, axes) = if env.opset < 11 {
        let p = attr_ints(node, "pads").ok_or("`pads` is required")?;
        (p, attr_float(node, "value", 0.0), None)
    } else {
        let fill = match opt_const_input(env, node, 2)? {
            Some(c) if c.numel() == 1 => c.as_f32()[0],
            Some(c) => return Err(format!("constant_value has dims {:?}", c.dims)),
            None => 0.0,
        };
        let axes = match opt_const_input(env, node, 3)? {
            Some(c) => Some(c.as_i64()?),
            None => None,
        };
        (const_input(env, node, 1)?.as_i64()?, fill, axes)
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| axis(a, r, false)).collect::<Res<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!(
            "pads {pads:?} for {} axes of shape {:?}",
            axes.len(),
            x.shape()
        ));
    }
    for (k, &a) in axes.iter().enumerate() {
        x = pad_axis(&x, a, pads[k], pads[k + axes.len()], &mode, fill)?;
    }
    one(x)
}

/// Pads (or crops) axis `a` of `x` by `before`/`after` elements.
fn pad_axis(x: &Var, a: usize, before: i64, after: i64, mode: &str, fill: f32) -> Res<Var> {
    let shape = x.shape().to_vec();
    let d = shape[a];
    if before < 0 || after < 0 {
        if mode != "constant" {
            return Err(format!("negative pads with mode `{mode}`"));
        }
        let cut = |p: i64| if p < 0 { p.unsigned_abs() as usize } else { 0 };
        let (cut0, cut1) = (cut(before), cut(after));
        if cut0.saturating_add(cut1) >= d {
            return Err(format!(
                "pads {before}, {after} leave nothing of axis {a} (shape {shape:?})"
            ));
        }
        let cropped = x.slice(a as isize, cut0, d - cut1).map_err(err)?;
        return pad_axis(&cropped, a, before.max(0), after.max(0), mode, fill);
    }
    let (b, e) = (before as usize, after as usize);
    if b == 0 && e == 0 {
        return Ok(x.clone());
    }
    if d == 0 && mode != "constant" {
        return Err(format!(
            "mode `{mode}` has nothing to repeat on the empty axis {a} of shape {shape:?}"
        ));
    }
    let limit = match mode {
        "reflect" => d - 1,
        "wrap" => d,
        _ => usize::MAX,
    };
    if b > limit || e > limit {
        return Err(format!(
            "pads {b}, {e} exceed {limit} for mode `{mode}` on axis {a} of shape {shape:?}"
        ));
    }
    let side = |n: usize, at_start: bool| -> Res<Var> {
        let mut s = shape.clone();
        s[a] = n;
        match mode {
            "constant" => Ok(x.graph().full(fill, &s)),
            "edge" => {
                let i = if at_start { 0 } else { d - 1 };
                x.slice(a as isize, i, i + 1)
                    .and_then(|y| y.broadcast_to(&s))
                    .map_err(err)
            }
            "reflect" => {
                let idx: Vec<usize> = if at_start {
                    (1..=n).rev().collect()
                } else {
                    (d - 1 - n..d - 1).rev().collect()
                };
                pick(x, a, &idx)
            }
            _ if at_start => x.slice(a as isize, d - n, d).map_err(err),
            _ => x.slice(a as isize, 0, n).map_err(err),
        }
    };
    let mut parts = Vec::new();
    if b > 0 {
        parts.push(side(b, true)?);
    }
    parts.push(x.clone());
    if e > 0 {
        parts.push(side(e, false)?);
    }
    Var::concat(&parts.iter().collect::<Vec<_>>(), a as isize).map_err(err)
}

/// `ConstantOfShape` needs its shape at import; with it, the fold runs instead.
fn constant_of_shape(env: &Env, node: &NodeProto) -> OpResult {
    const_input(env, node, 0)?;
    Err("ConstantOfShape needs a shape known at import".into())
}

/// Whether two constants hold the same kind of elements (ops must not mix INT64 and f32).
fn same_kind(a: &ConstData, b: &ConstData) -> bool {
    matches!(
        (a, b),
        (ConstData::F32(_), ConstData::F32(_)) | (ConstData::I64(_), ConstData::I64(_))
    )
}
