//! Element types. Graph values are f32 whatever the file declares (integers and booleans
//! carried exactly up to 2^24, DOUBLE computed in f32), and constants are f32 or i64; what
//! the file declares is still tracked per value ([`Env::dtypes`], filled by
//! [`output_types`] as nodes are imported), because `CastLike` takes its target from it and
//! integer folds need the width and signedness (`BitwiseNot` of a UINT8, a left shift that
//! wraps at 2^16).
//!
//! Cast and CastLike are here: on constants they fold ([`cast_const`]); on graph values a
//! cast to a float type is the identity, to an integer type truncates toward zero (and wraps
//! to 8 and 16 bits as C casts do), to BOOL is `x != 0`.

use super::shape::cast_const;
use super::{
    attr_int, dtype_of, err, input, one, value, Const, Env, FoldFn, OpFn, OpResult, Value,
};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::Var;

/// This family's operators on graph values.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("Cast", |e, n| cast(e, n, cast_target(n)?)),
    ("CastLike", cast_like),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[
    ("Cast", |_, n, c| fold(c, cast_target(n)?)),
    ("CastLike", |e, n, c| fold(c, like_target(e, n)?)),
];

/// Cast's `to` attribute.
fn cast_target(node: &NodeProto) -> Result<DataType, String> {
    let to = attr_int(node, "to", 0);
    i32::try_from(to)
        .ok()
        .and_then(|t| DataType::try_from(t).ok())
        .filter(|&t| t != DataType::Undefined)
        .ok_or_else(|| format!("`to` = {to} is not an element type"))
}

/// CastLike's target: the element type of its second input.
fn like_target(env: &Env, node: &NodeProto) -> Result<DataType, String> {
    dtype_of(env, node, 1).ok_or_else(|| {
        format!(
            "the element type of 'like' ('{}') is unknown",
            node.input.get(1).map_or("", |s| s.as_str())
        )
    })
}

fn fold(c: &[Option<&Const>], to: DataType) -> OpResult {
    let x = c.first().copied().flatten().ok_or("missing input 0")?;
    one_const(cast_const(x, to)?)
}

fn one_const(c: Const) -> OpResult {
    Ok(vec![c.into()])
}

/// The inclusive value range of an integer (or BOOL) type; `None` for float types.
pub(crate) fn int_range(t: DataType) -> Option<(i64, i64)> {
    Some(match t {
        DataType::Bool => (0, 1),
        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
        DataType::Uint8 => (0, u8::MAX as i64),
        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
        DataType::Uint16 => (0, u16::MAX as i64),
        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
        DataType::Uint32 => (0, u32::MAX as i64),
        DataType::Int64 => (i64::MIN, i64::MAX),
        DataType::Uint64 => (0, i64::MAX),
        _ => return None,
    })
}

/// Whether `t` is an integer type or BOOL (compared exactly, folded in i64).
pub(crate) fn is_integer(t: DataType) -> bool {
    int_range(t).is_some()
}

/// The width in bits and signedness of the 8- and 16-bit integer types, whose values a
/// graph value can hold all of (so a cast to them wraps there, as C casts do).
fn narrow(t: DataType) -> Option<(u32, bool)> {
    match t {
        DataType::Int8 => Some((8, true)),
        DataType::Uint8 => Some((8, false)),
        DataType::Int16 => Some((16, true)),
        DataType::Uint16 => Some((16, false)),
        _ => None,
    }
}

/// `y` (integers, |y| < 2^24) wrapped to `bits` bits: `y - 2^bits·⌊(y + off) / 2^bits⌋`
/// with `off` = 2^(bits-1) for signed types; every step is exact in f32.
fn wrap(y: &Var, bits: u32, signed: bool) -> crate::Result<Var> {
    let m = (1u32 << bits) as f32;
    let off = if signed { m / 2.0 } else { 0.0 };
    let k = y
        .add_scalar(off)?
        .mul_scalar(1.0 / m)?
        .unary(U::Floor)?
        .mul_scalar(m)?;
    y.sub(&k)
}

/// A half-precision format as rounding needs it.
struct Half {
    /// Stored mantissa bits (the spacing in [2^e, 2^(e+1)) is 2^(e - mantissa)).
    mantissa: i32,
    /// The smallest normal exponent (below it the spacing stays 2^(min_exp - mantissa)).
    min_exp: i32,
    /// The largest finite value; anything rounding above it is ±inf.
    max: f32,
}

const F16: Half = Half {
    mantissa: 10,
    min_exp: -14,
    max: 65504.0,
};

/// BFLOAT16 has f32's exponent range, so overflow happens in f32 itself.
const BF16: Half = Half {
    mantissa: 7,
    min_exp: -126,
    max: f32::MAX,
};

/// `x` rounded to the nearest `h` value, ties to even, in exact f32 operations: the binade
/// 2^e of |x| found by a binary search of comparisons (each step doubling the candidate
/// power of two), then `round(x · 2^(mantissa-e)) · 2^(e-mantissa)`, where products by
/// powers of two are exact and `Round` is ties-to-even. For BFLOAT16, values below 2^-60
/// are scaled by 2^64 first, so no power of two used leaves f32's normal range. NaN stays NaN, ±inf
/// stays ±inf, finite values past the format's largest become ±inf.
fn round_to_half(x: &Var, h: Half) -> crate::Result<Var> {
    let g = x.graph();
    let p2 = |e: i32| 2f32.powi(e);
    // v · 2^e for |e| up to 128, in factors f32 holds (2^128 itself is inf).
    let scale = |v: &Var, e: i32| -> crate::Result<Var> {
        if e.abs() > 64 {
            v.mul_scalar(p2(e / 2))?.mul_scalar(p2(e - e / 2))
        } else {
            v.mul_scalar(p2(e))
        }
    };
    let ax = x.abs()?;
    // Only a format with binades below 2^-62 (BFLOAT16) needs the scaling.
    let small = ax.scalar(B::Lt, if h.min_exp < -62 { p2(-60) } else { 0.0 }, false)?;
    let xs = small.select(&x.mul_scalar(p2(64))?, x)?;
    let axs = xs.abs()?;
    // After scaling, every normal |x| is at least 2^-62, so the search starts there (or at
    // the format's smallest normal binade, if higher).
    let start = h.min_exp.max(-62);
    // The binade's power of two, and the spacing there and its inverse, kept apart so
    // none leaves f32's normal range for a finite x.
    let mut lo = g.full(p2(start), x.shape());
    let mut ulp = g.full(p2(start - h.mantissa), x.shape());
    let mut inv = g.full(p2(h.mantissa - start), x.shape());
    let mut step = 128;
    while step >= 1 {
        // A candidate past f32's range is inf, which no finite |x| reaches.
        let cand = scale(&lo, step)?;
        let up = axs.binary(&cand, B::Ge)?;
        ulp = up.select(&scale(&ulp, step)?, &ulp)?;
        inv = up.select(&scale(&inv, -step)?, &inv)?;
        lo = up.select(&cand, &lo)?;
        step /= 2;
    }
    let mut y = xs.mul(&inv)?.unary(U::Round)?.mul(&ulp)?;
    y = small.select(&y.mul_scalar(p2(-64))?, &y)?;
    // Past the largest finite value (or x infinite): ±inf, as x·inf.
    let inf = g.constant(&crate::Tensor::from_slice(
        &crate::Device::cpu(),
        &[f32::INFINITY],
        &[1],
    )?)?;
    let over = y.abs()?.scalar(B::Gt, h.max, false)?;
    let over = over.maximum(&ax.scalar(B::Gt, f32::MAX, false)?)?;
    over.select(&x.mul(&inf)?, &y)
}

/// A graph value of element type `from` (unknown: float) cast to `to`.
pub(crate) fn cast_var(x: &Var, from: Option<DataType>, to: DataType) -> Result<Var, String> {
    let from_range = from.and_then(int_range);
    let y = match to {
        // f32 carries every float type's computation (DOUBLE in f32, half types widened).
        DataType::Float | DataType::Double => x.clone(),
        // Values already half, or small integers, are exact in both; others are rounded
        // to the half type's precision (and range) with exact f32 ops.
        DataType::Float16 | DataType::Bfloat16 => {
            let exact = from == Some(to)
                || from_range.is_some_and(|(lo, hi)| lo >= i8::MIN as i64 && hi <= u8::MAX as i64);
            if exact {
                x.clone()
            } else if to == DataType::Float16 {
                round_to_half(x, F16).map_err(err)?
            } else {
                round_to_half(x, BF16).map_err(err)?
            }
        }
        DataType::Bool => x.scalar(B::Ne, 0.0, false).map_err(err)?,
        t if is_integer(t) => {
            // Floats truncate toward zero: ⌈x⌉ below zero, ⌊x⌋ from it.
            let y = match from_range {
                Some(_) => x.clone(),
                None => {
                    let neg = x.scalar(B::Lt, 0.0, false).map_err(err)?;
                    let (c, f) = (x.unary(U::Ceil), x.unary(U::Floor));
                    neg.select(&c.map_err(err)?, &f.map_err(err)?)
                        .map_err(err)?
                }
            };
            let (lo, hi) = int_range(t).expect("integer type");
            let fits = from_range.is_some_and(|(a, b)| a >= lo && b <= hi);
            match narrow(t) {
                Some((bits, signed)) if !fits => wrap(&y, bits, signed).map_err(err)?,
                _ => y,
            }
        }
        other => return Err(format!("Cast to {} is not supported", other.as_str_name())),
    };
    Ok(y)
}

/// CastLike: a constant input 0 folds even when `like` is a graph value (only its type is
/// read), so `CastLike(-inf, x)` stays a constant a Pad value or a mask can use.
fn cast_like(env: &Env, node: &NodeProto) -> OpResult {
    let to = like_target(env, node)?;
    match value(env, node, 0)? {
        Value::Const(c) => one_const(cast_const(c, to)?),
        Value::Var(_) => cast(env, node, to),
    }
}

/// Cast / CastLike on a graph value.
fn cast(env: &Env, node: &NodeProto, to: DataType) -> OpResult {
    let x = input(env, node, 0)?;
    one(cast_var(&x, dtype_of(env, node, 0), to)?)
}

/// The element type of each of `node`'s outputs, from its inputs' and attributes (the
/// ONNX type constraints of the ops the importer knows; otherwise input 0's type, or
/// FLOAT when it has none). Used for CastLike and the integer folds, never to convert.
pub(crate) fn output_types(env: &Env, node: &NodeProto) -> Vec<DataType> {
    use DataType as D;
    let n = node.output.len();
    let same = dtype_of(env, node, 0).unwrap_or(D::Float);
    let all = |t: D| vec![t; n];
    let attr_type = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.i)
            .and_then(|t| i32::try_from(t).ok())
            .and_then(|t| D::try_from(t).ok())
    };
    let tensor_type = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name() == name)
            .and_then(|a| a.t.as_ref())
            .and_then(|t| D::try_from(t.data_type()).ok())
    };
    match node.op_type() {
        "Cast" => all(cast_target(node).unwrap_or(D::Float)),
        "CastLike" => all(dtype_of(env, node, 1).unwrap_or(D::Float)),
        "Constant" => all(match node.attribute.first().map(|a| a.name()) {
            Some("value") => tensor_type("value").unwrap_or(D::Float),
            Some("value_int") | Some("value_ints") => D::Int64,
            _ => D::Float,
        }),
        "ConstantOfShape" => all(tensor_type("value").unwrap_or(D::Float)),
        "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" | "NonMaxSuppression" => all(D::Int64),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor"
        | "Not" | "IsNaN" | "IsInf" => all(D::Bool),
        "Where" => all(dtype_of(env, node, 1).unwrap_or(D::Float)),
        "EyeLike" | "RandomUniformLike" | "RandomNormalLike" | "Bernoulli" => {
            all(attr_type("dtype").unwrap_or(same))
        }
        "RandomUniform" | "RandomNormal" => all(attr_type("dtype").unwrap_or(D::Float)),
        "HannWindow" | "HammingWindow" | "BlackmanWindow" | "MelWeightMatrix" => {
            all(attr_type("output_datatype").unwrap_or(D::Float))
        }
        "TopK" | "MaxPool" => {
            let mut t = all(same);
            if n > 1 {
                t[1] = D::Int64;
            }
            t
        }
        "Dropout" => {
            let mut t = all(same);
            if n > 1 {
                t[1] = D::Bool;
            }
            t
        }
        "Unique" => {
            let mut t = all(D::Int64);
            t[0] = same;
            t
        }
        "DequantizeLinear" => all(attr_type("output_dtype")
            .filter(|&t| t != D::Undefined)
            .or(dtype_of(env, node, 1))
            .unwrap_or(D::Float)),
        "QuantizeLinear" => all(dtype_of(env, node, 2)
            .or(attr_type("output_dtype").filter(|&t| t != D::Undefined))
            .unwrap_or(D::Uint8)),
        "DynamicQuantizeLinear" => vec![D::Uint8, D::Float, D::Uint8][..n.min(3)].to_vec(),
        "MatMulInteger" | "ConvInteger" => all(D::Int32),
        "QLinearMatMul" | "QLinearConv" => all(dtype_of(env, node, 7).unwrap_or(same)),
        _ => all(same),
    }
}
