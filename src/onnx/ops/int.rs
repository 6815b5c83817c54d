//! Integer operators. Bit shifts and bitwise logic exist only for integer types, whose
//! values are constants at import (initializers, `Constant`s, and the integer feeds a caller
//! binds), so they fold here in i64, at the width and signedness the file declares for
//! their input ([`Env::dtypes`]): a left shift of a UINT8 wraps at 2^8, `BitwiseNot` of a
//! UINT16 is `65535 - x`. Integer `Pow` folds too (onnxruntime's: the float power truncated
//! to the base's type).
//!
//! `Mod` on graph values (floats) is composed here: `x - ⌊x/y⌋·y` (Python's, `fmod` = 0)
//! or `x - trunc(x/y)·y` (C's, `fmod` = 1), with the infinite divisor taken apart as NumPy
//! does. Integer `Mod` and `Div` fold in `shape/fold.rs`.

use super::dtype::is_integer;
use super::shape::broadcast;
use super::{
    attr_int, attr_string, dtype_of, err, find_op, input, one, Const, ConstData, Env, FoldFn, OpFn,
    OpResult, Value,
};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::Var;

/// This family's operators on graph values.
pub(super) const OPS: &[(&str, OpFn)] = &[("Mod", modulo)];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[
    ("BitShift", bit_shift),
    ("BitwiseAnd", |e, n, c| bitwise(e, n, c, |a, b| a & b)),
    ("BitwiseOr", |e, n, c| bitwise(e, n, c, |a, b| a | b)),
    ("BitwiseXor", |e, n, c| bitwise(e, n, c, |a, b| a ^ b)),
    ("BitwiseNot", bitwise_not),
    ("Pow", pow),
];

type Res<T> = std::result::Result<T, String>;

/// Constant input `i` as i64 (absent or float is an error).
fn ints<'a>(node: &NodeProto, c: &[Option<&'a Const>], i: usize) -> Res<(&'a Const, &'a [i64])> {
    let k = c
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("missing input {i}"))?;
    match &k.data {
        ConstData::I64(v) => Ok((k, v)),
        ConstData::F32(_) => Err(format!(
            "input '{}' is a float; {} takes integers",
            node.input[i],
            node.op_type()
        )),
    }
}

/// The element type of input `i`, which must be an integer type.
fn int_type(env: &Env, node: &NodeProto, i: usize) -> Res<DataType> {
    match dtype_of(env, node, i) {
        Some(t) if is_integer(t) && t != DataType::Bool => Ok(t),
        Some(t) => Err(format!(
            "input '{}' has element type {}; {} takes integers",
            node.input[i],
            t.as_str_name(),
            node.op_type()
        )),
        None => Err(format!(
            "the element type of '{}' is unknown",
            node.input[i]
        )),
    }
}

/// Width in bits and signedness.
fn width(t: DataType) -> (u32, bool) {
    match t {
        DataType::Int8 => (8, true),
        DataType::Uint8 => (8, false),
        DataType::Int16 => (16, true),
        DataType::Uint16 => (16, false),
        DataType::Int32 => (32, true),
        DataType::Uint32 => (32, false),
        DataType::Uint64 => (64, false),
        _ => (64, true),
    }
}

/// `v` (its low `bits` bits meaningful) as the value of the type: sign-extended or
/// zero-extended. A UINT64 above i64::MAX cannot be held (constants are i64) and is refused.
fn to_type(v: i64, t: DataType) -> Res<i64> {
    let (bits, signed) = width(t);
    if bits == 64 {
        if !signed && v < 0 {
            return Err(format!(
                "UINT64 result {} exceeds INT64, which constants are held in",
                v as u64
            ));
        }
        return Ok(v);
    }
    let shift = 64 - bits;
    Ok(if signed {
        (v << shift) >> shift
    } else {
        ((v as u64) << shift >> shift) as i64
    })
}

/// `f` over the broadcast pair of constants `a`, `b`.
fn zip_broadcast(
    a: (&Const, &[i64]),
    b: (&Const, &[i64]),
    mut f: impl FnMut(i64, i64) -> Res<i64>,
) -> Res<Const> {
    let out = broadcast(&a.0.dims, &b.0.dims)?;
    // Broadcasting two constants may multiply their sizes: bounded, as other folds are.
    let n = out
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 26)
        .ok_or_else(|| format!("a constant of dims {out:?} is too large to compute at import"))?;
    let index = |dims: &[usize], mut flat: usize| {
        // The input's element for output element `flat`: broadcast dims (size 1) repeat.
        let (mut at, mut stride) = (0, 1);
        for k in (0..out.len()).rev() {
            let o = flat % out[k];
            flat /= out[k];
            if let Some(j) = (k + dims.len()).checked_sub(out.len()) {
                if dims[j] != 1 {
                    at += o * stride;
                }
                stride *= dims[j];
            }
        }
        at
    };
    let v = (0..n)
        .map(|i| f(a.1[index(&a.0.dims, i)], b.1[index(&b.0.dims, i)]))
        .collect::<Res<Vec<i64>>>()?;
    Ok(Const::ints(out, v))
}

fn fold_one(c: Const) -> OpResult {
    Ok(vec![Value::Const(c)])
}

/// BitShift: `x << y` wrapped to the type's width, or `x >> y` (arithmetic for signed
/// types, as onnxruntime's). A shift by the width or more, or (signed) by a negative
/// amount, shifts every bit out: 0, or the sign for a right shift of a signed value.
fn bit_shift(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let t = int_type(env, node, 0)?;
    let (bits, signed) = width(t);
    let left = match attr_string(node, "direction").as_deref() {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        d => return Err(format!("direction {d:?} is neither \"LEFT\" nor \"RIGHT\"")),
    };
    let (x, y) = (ints(node, c, 0)?, ints(node, c, 1)?);
    fold_one(zip_broadcast(x, y, |a, s| {
        // UINT64 amounts above i64::MAX read back negative: out of range either way.
        let out_of_range = s < 0 || s >= bits as i64;
        let r = match (left, out_of_range) {
            (true, true) => 0,
            (false, true) if signed && a < 0 => -1,
            (false, true) => 0,
            (true, false) => ((a as u64) << s) as i64,
            // `a` is sign-extended when signed and non-negative otherwise (UINT64 held in
            // i64 is non-negative), so i64's arithmetic shift is right for both.
            (false, false) => a >> s,
        };
        to_type(r, t)
    })?)
}

/// BitwiseAnd / Or / Xor on two's complement i64, which agrees with every narrower type's
/// bits once the result is read back at its width.
fn bitwise(env: &Env, node: &NodeProto, c: &[Option<&Const>], f: fn(i64, i64) -> i64) -> OpResult {
    let t = int_type(env, node, 0)?;
    let (x, y) = (ints(node, c, 0)?, ints(node, c, 1)?);
    fold_one(zip_broadcast(x, y, |a, b| to_type(f(a, b), t))?)
}

fn bitwise_not(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let t = int_type(env, node, 0)?;
    let (x, v) = ints(node, c, 0)?;
    let v = v
        .iter()
        .map(|&a| to_type(!a, t))
        .collect::<Res<Vec<i64>>>()?;
    fold_one(Const::ints(x.dims.clone(), v))
}

/// Pow of an integer base: the power in f64 truncated to the base's type, as onnxruntime
/// computes it (the exponent may be an integer or a float). A float base is not folded
/// here: it goes to the graph op (see `math.rs`).
fn pow(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let base = c.first().copied().flatten().ok_or("missing input 0")?;
    let ConstData::I64(_) = &base.data else {
        let op = find_op("Pow").ok_or("Pow has no graph op")?;
        return op(env, node);
    };
    let t = dtype_of(env, node, 0).unwrap_or(DataType::Int64);
    let x = ints(node, c, 0)?;
    let e = c.get(1).copied().flatten().ok_or("missing input 1")?;
    // The exponent as i64 bits of an f64 when it is a float, so one broadcast serves both.
    let (bits, float) = match &e.data {
        ConstData::I64(v) => (v.clone(), false),
        ConstData::F32(v) => (
            v.iter().map(|&f| (f as f64).to_bits() as i64).collect(),
            true,
        ),
    };
    fold_one(zip_broadcast(x, (e, &bits), |a, b| {
        let p = if float {
            (a as f64).powf(f64::from_bits(b as u64))
        } else if b >= 0 {
            return match a.checked_pow(u32::try_from(b).unwrap_or(u32::MAX)) {
                Some(p) => to_type(p, t),
                None => Err(format!("Pow({a}, {b}) overflows INT64")),
            };
        } else {
            (a as f64).powi(b.max(i32::MIN as i64) as i32)
        };
        if !p.is_finite() || p.abs() >= 9.0e18 {
            return Err(format!("Pow({a}, {b}) = {p} does not fit an integer"));
        }
        to_type(p.trunc() as i64, t)
    })?)
}

/// Mod of graph values (floats): `x - ⌊x/y⌋·y` (`fmod` = 0, the divisor's sign, from
/// opset 28) or
/// `x - trunc(x/y)·y` (`fmod` = 1, the dividend's). Where `y` is infinite the quotient
/// rounds to 0 and `0·inf` is NaN, so that case is selected apart: `x` (for `fmod` = 0, `y`
/// when the signs differ), NaN for an infinite `x`.
fn modulo(env: &Env, node: &NodeProto) -> OpResult {
    let fmod = attr_int(node, "fmod", 0) != 0;
    if let Some(t) = dtype_of(env, node, 0).filter(|&t| is_integer(t)) {
        // f32 division may round a quotient just below an integer up to it.
        return Err(format!(
            "Mod of {} graph values is not supported (integer constants fold at import)",
            t.as_str_name()
        ));
    }
    if !fmod && env.opset < 28 {
        return Err("Mod of floats needs fmod = 1 before opset 28".into());
    }
    let x = input(env, node, 0)?;
    let y = input(env, node, 1)?;
    one(float_mod(&x, &y, fmod).map_err(err)?)
}

fn float_mod(x: &Var, y: &Var, fmod: bool) -> crate::Result<Var> {
    let q = x.div(y)?;
    let whole = if fmod {
        let neg = q.scalar(B::Lt, 0.0, false)?;
        neg.select(&q.unary(U::Ceil)?, &q.unary(U::Floor)?)?
    } else {
        q.unary(U::Floor)?
    };
    let r = x.sub(&whole.mul(y)?)?;
    // (x - x) is 0 for a finite x and NaN for an infinite one.
    let nan_if_inf = x.sub(x)?;
    let at_inf = if fmod {
        x.add(&nan_if_inf)?
    } else {
        let differ = x.mul(y)?.scalar(B::Lt, 0.0, false)?;
        differ.select(y, x)?.add(&nan_if_inf)?
    };
    // |y| > f32::MAX: infinite (NaN compares false and stays on the quotient path).
    let y_inf = y.abs()?.scalar(B::Gt, f32::MAX, false)?;
    y_inf.select(&at_inf, &r)
}
