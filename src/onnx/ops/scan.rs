//! ONNX running scans along one axis: CumSum and CumProd.
//!
//! Both are a Hillis–Steele scan of shifted slices, `y ← y ∘ shift(y, 2^s)` for ⌈log2 L⌉
//! steps (∘ is `+` or `·`, the shift filling in the identity, 0 or 1), so an axis of any
//! length costs O(L log L) element-wise ops, no constant and no new primitive, and the
//! gradient is autodiff's through adds and products. A triangular-matrix product would
//! allocate L² floats, and would turn one ±inf in the input into NaN everywhere after it
//! (inf·0) where the sum is ±inf; a product as exp(cumsum(log x)) would lose signs and
//! zeros.
//!
//! Integer data is f32 on the graph, exact while every running value stays within 2^24;
//! both also fold on constants (the node cases' integer inputs), exactly in i64.

use super::{
    attr_int, axis, const_input, dims_product, err, input, one, Const, ConstData, Env, FoldFn,
    OpFn, OpResult,
};
use crate::onnx::proto::NodeProto;
use crate::Var;

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("CumSum", cumsum), ("CumProd", cumprod)];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[("CumSum", fold_cumsum), ("CumProd", fold_cumprod)];

type Res<T> = std::result::Result<T, String>;

/// The scan's combining op.
#[derive(Clone, Copy)]
enum Combine {
    Sum,
    Product,
}

impl Combine {
    /// The value the shift fills in, and an exclusive scan starts from.
    fn identity(self) -> f32 {
        match self {
            Combine::Sum => 0.0,
            Combine::Product => 1.0,
        }
    }

    fn apply(self, a: &Var, b: &Var) -> crate::Result<Var> {
        match self {
            Combine::Sum => a.add(b),
            Combine::Product => a.mul(b),
        }
    }
}

/// The scan's axis (input 1, a scalar known at import), `exclusive` and `reverse`.
fn scan_args(env: &Env, node: &NodeProto, rank: usize) -> Res<(usize, bool, bool)> {
    let a = match const_input(env, node, 1)?.as_i64()?.as_slice() {
        [a] => axis(*a, rank, false)?,
        v => return Err(format!("axis must be a scalar, got {} values", v.len())),
    };
    Ok((
        a,
        attr_int(node, "exclusive", 0) != 0,
        attr_int(node, "reverse", 0) != 0,
    ))
}

/// `y` moved `s` places along `a` towards the end (towards the start when `reverse`),
/// `fill` filling in: the scan's step.
fn shift(y: &Var, a: usize, s: usize, reverse: bool, fill: f32) -> crate::Result<Var> {
    let l = y.shape()[a];
    let mut fshape = y.shape().to_vec();
    fshape[a] = s;
    let filler = y.graph().full(fill, &fshape);
    if reverse {
        Var::concat(&[&y.slice(a as isize, s, l)?, &filler], a as isize)
    } else {
        Var::concat(&[&filler, &y.slice(a as isize, 0, l - s)?], a as isize)
    }
}

/// The running scan of a graph value (see the module comment).
fn scan(env: &Env, node: &NodeProto, op: Combine) -> OpResult {
    let x = input(env, node, 0)?;
    if x.shape().is_empty() {
        return Err("input must have rank >= 1".into());
    }
    let (a, exclusive, reverse) = scan_args(env, node, x.shape().len())?;
    let l = x.shape()[a];
    let fill = op.identity();
    let y = (|| {
        let mut y = if exclusive && l > 0 {
            shift(&x, a, 1, reverse, fill)?
        } else {
            x.clone()
        };
        let mut s = 1;
        while s < l {
            y = op.apply(&y, &shift(&y, a, s, reverse, fill)?)?;
            s *= 2;
        }
        Ok::<_, crate::Error>(y)
    })()
    .map_err(err)?;
    one(y)
}

/// CumSum (opsets 11, 14): running sums along `axis`, `exclusive` leaving out the element
/// itself, `reverse` running from the end.
fn cumsum(env: &Env, node: &NodeProto) -> OpResult {
    scan(env, node, Combine::Sum)
}

/// CumProd (opset 26): running products, with CumSum's attributes.
fn cumprod(env: &Env, node: &NodeProto) -> OpResult {
    scan(env, node, Combine::Product)
}

/// The scan of a constant, sequentially along each line (f32 data in f32, as ONNX's
/// reference does; i64 data checked for overflow, which is an error, never a wrap).
fn fold_scan(env: &Env, node: &NodeProto, c: &[Option<&Const>], op: Combine) -> OpResult {
    let x = c
        .first()
        .copied()
        .flatten()
        .ok_or_else(|| "missing input 0".to_string())?;
    if x.dims.is_empty() {
        return Err("input must have rank >= 1".into());
    }
    let (a, exclusive, reverse) = scan_args(env, node, x.dims.len())?;
    let (l, inner) = (x.dims[a], dims_product(&x.dims[a + 1..], &x.dims)?);
    let outer = dims_product(&x.dims[..a], &x.dims)?;
    // The flat positions of line (o, i) of the input's (outer, l, inner) view, in scan order.
    let line = move |o: usize, i: usize| {
        (0..l).map(move |t| {
            let t = if reverse { l - 1 - t } else { t };
            (o * l + t) * inner + i
        })
    };
    fn run<T: Copy>(
        v: &[T],
        start: T,
        lines: impl Iterator<Item = Vec<usize>>,
        exclusive: bool,
        f: impl Fn(T, T) -> Res<T>,
    ) -> Res<Vec<T>> {
        let mut out = v.to_vec();
        for line in lines {
            let mut acc = start;
            for e in line {
                if exclusive {
                    out[e] = acc;
                    acc = f(acc, v[e])?;
                } else {
                    acc = f(acc, v[e])?;
                    out[e] = acc;
                }
            }
        }
        Ok(out)
    }
    let lines = || (0..outer).flat_map(move |o| (0..inner).map(move |i| line(o, i).collect()));
    let overflow = || "integer result overflows int64".to_string();
    let data = match (&x.data, op) {
        (ConstData::F32(v), Combine::Sum) => {
            ConstData::F32(run(v, 0.0, lines(), exclusive, |a, b| Ok(a + b))?)
        }
        (ConstData::F32(v), Combine::Product) => {
            ConstData::F32(run(v, 1.0, lines(), exclusive, |a, b| Ok(a * b))?)
        }
        (ConstData::I64(v), Combine::Sum) => {
            ConstData::I64(run(v, 0, lines(), exclusive, |a, b| {
                a.checked_add(b).ok_or_else(overflow)
            })?)
        }
        (ConstData::I64(v), Combine::Product) => {
            ConstData::I64(run(v, 1, lines(), exclusive, |a, b| {
                a.checked_mul(b).ok_or_else(overflow)
            })?)
        }
    };
    Ok(vec![Const {
        dims: x.dims.clone(),
        data,
    }
    .into()])
}

fn fold_cumsum(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    fold_scan(env, node, c, Combine::Sum)
}

fn fold_cumprod(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    fold_scan(env, node, c, Combine::Product)
}
