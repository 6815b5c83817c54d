//! ONNX activations, unary maths, variadic arithmetic, comparison and selection, and
//! reductions, each composed from ordinary differentiable [`Var`] ops.
//!
//! Booleans (comparison outputs, `Where`'s condition, `Not`/`And`/`Or`, `IsNaN`/`IsInf`) are carried as
//! f32 0.0/1.0; integer outputs (`ArgMax`/`ArgMin` indices) as exact f32 values, which
//! holds up to 2^24 (longer axes are an import error).
//!
//! Piecewise functions (LeakyRelu, PRelu, Elu, Selu, Celu, Where) select with
//! [`Var::select`] rather than mixing with `c·a + (1-c)·b`: the branch not taken may be
//! ±inf or NaN (attention masks hold -inf) and `inf·0` would poison the result. Branches
//! that could overflow where they are not taken (`exp(x)` for large x) are evaluated on
//! `min(x, 0)`, so their gradients, masked to 0 there, never meet an inf either.

use super::{
    attr_float, attr_int, attr_ints, attr_string, axis, err, input, one, opt_const_input, value,
    ConstData, Env, FoldFn, OpFn, OpResult, Value,
};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::ops::reduce::ReduceOp;
use crate::{Op, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    // activations and unary maths
    ("LeakyRelu", leaky_relu),
    ("PRelu", prelu),
    ("Elu", elu),
    ("Selu", selu),
    ("Celu", celu),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", hard_swish),
    ("Softplus", softplus),
    ("Softsign", softsign),
    ("Mish", mish),
    ("Swish", swish),
    ("SwiGLU", swiglu),
    ("ThresholdedRelu", thresholded_relu),
    ("Shrink", shrink),
    ("Gelu", gelu),
    ("Erf", |e, n| unary(e, n, U::Erf)),
    ("Floor", |e, n| unary(e, n, U::Floor)),
    ("Ceil", |e, n| unary(e, n, U::Ceil)),
    ("Round", |e, n| unary(e, n, U::Round)),
    ("Sin", |e, n| unary(e, n, U::Sin)),
    ("Cos", |e, n| unary(e, n, U::Cos)),
    ("Tan", |e, n| unary(e, n, U::Tan)),
    ("Asin", |e, n| unary(e, n, U::Asin)),
    ("Acos", |e, n| unary(e, n, U::Acos)),
    ("Atan", |e, n| unary(e, n, U::Atan)),
    ("Sinh", |e, n| unary(e, n, U::Sinh)),
    ("Cosh", |e, n| unary(e, n, U::Cosh)),
    ("Asinh", |e, n| unary(e, n, U::Asinh)),
    ("Acosh", |e, n| unary(e, n, U::Acosh)),
    ("Atanh", |e, n| unary(e, n, U::Atanh)),
    ("Sign", sign),
    ("IsNaN", is_nan),
    ("IsInf", is_inf),
    ("Reciprocal", reciprocal),
    ("Clip", clip),
    // arithmetic
    ("Pow", pow),
    ("Max", |e, n| variadic(e, n, B::Maximum, false)),
    ("Min", |e, n| variadic(e, n, B::Minimum, false)),
    ("Sum", |e, n| variadic(e, n, B::Add, false)),
    ("Mean", |e, n| variadic(e, n, B::Add, true)),
    // comparison, logic and selection
    ("Equal", |e, n| compare(e, n, B::Eq)),
    ("Less", |e, n| compare(e, n, B::Lt)),
    ("Greater", |e, n| compare(e, n, B::Gt)),
    ("LessOrEqual", |e, n| compare(e, n, B::Le)),
    ("GreaterOrEqual", |e, n| compare(e, n, B::Ge)),
    ("Not", not),
    ("And", |e, n| compare(e, n, B::Minimum)), // on 0/1 values
    ("Or", |e, n| compare(e, n, B::Maximum)),
    ("Xor", |e, n| compare(e, n, B::Ne)),
    ("Where", where_),
    // reductions: (op, opset from which `axes` is an input rather than an attribute)
    ("ReduceSum", |e, n| {
        reduce(e, n, Reduce::Plain(ReduceOp::Sum), 13)
    }),
    ("ReduceMean", |e, n| {
        reduce(e, n, Reduce::Plain(ReduceOp::Mean), 18)
    }),
    ("ReduceMax", |e, n| {
        reduce(e, n, Reduce::Plain(ReduceOp::Max), 18)
    }),
    ("ReduceMin", |e, n| {
        reduce(e, n, Reduce::Plain(ReduceOp::Min), 18)
    }),
    ("ReduceSumSquare", |e, n| {
        reduce(e, n, Reduce::SumSquare, 18)
    }),
    ("ReduceProd", |e, n| reduce(e, n, Reduce::Prod, 18)),
    ("ReduceL1", |e, n| reduce(e, n, Reduce::L1, 18)),
    ("ReduceL2", |e, n| reduce(e, n, Reduce::L2, 18)),
    ("ReduceLogSum", |e, n| reduce(e, n, Reduce::LogSum, 18)),
    ("ReduceLogSumExp", |e, n| {
        reduce(e, n, Reduce::LogSumExp, 18)
    }),
    ("ArgMax", |e, n| arg_extreme(e, n, ReduceOp::Max)),
    ("ArgMin", |e, n| arg_extreme(e, n, ReduceOp::Min)),
    ("Hardmax", hardmax),
];

/// This family's folds (none: folding constant arithmetic belongs to `shape.rs`).
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

/// Input `i` as a graph value, an integer constant converted to f32 (exactly, or an
/// error): comparisons, `Where`'s BOOL condition and `Pow`'s exponent may be integers.
fn num_input(env: &Env, node: &NodeProto, i: usize) -> Result<Var, String> {
    match value(env, node, i)? {
        Value::Const(c) if matches!(c.data, ConstData::I64(_)) => {
            let v = c.as_i64()?;
            if let Some(x) = v.iter().find(|x| x.unsigned_abs() > 1 << 24) {
                return Err(format!(
                    "input '{}': integer {x} is not exact as f32 (|x| > 2^24)",
                    node.input[i]
                ));
            }
            let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            let t = Tensor::from_slice(&crate::Device::cpu(), &data, &c.dims).map_err(err)?;
            env.graph.constant(&t).map_err(err)
        }
        _ => input(env, node, i),
    }
}

/// Input `i`'s single value when it is a one-element constant whose rank does not exceed
/// `rank` (so treating it as a scalar leaves the broadcast shape unchanged).
fn scalar_const(env: &Env, node: &NodeProto, i: usize, rank: usize) -> Option<f32> {
    match node.input.get(i).and_then(|n| env.values.get(n)) {
        Some(Value::Const(c)) if c.numel() == 1 && c.dims.len() <= rank => {
            c.as_f32().first().copied()
        }
        _ => None,
    }
}

fn unary(env: &Env, node: &NodeProto, op: U) -> OpResult {
    one(input(env, node, 0)?.unary(op).map_err(err)?)
}

/// `neg(x)` where `x < 0`, else `x`.
fn negative_branch(x: &Var, neg: &Var) -> crate::Result<Var> {
    x.scalar(B::Lt, 0.0, false)?.select(neg, x)
}

/// `scale·(e^{min(x,0)/k} - 1)`: the negative side of Elu/Selu/Celu, finite everywhere.
fn exp_branch(x: &Var, k: f32, scale: f32) -> crate::Result<Var> {
    let m = x.scalar(B::Minimum, 0.0, false)?;
    let m = if k != 1.0 {
        m.scalar(B::Div, k, false)?
    } else {
        m
    };
    m.exp()?.add_scalar(-1.0)?.mul_scalar(scale)
}

/// LeakyRelu: `x < 0 ? alpha·x : x` (alpha defaults to 0.01).
fn leaky_relu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let alpha = attr_float(node, "alpha", 0.01);
    one(negative_branch(&x, &x.mul_scalar(alpha).map_err(err)?).map_err(err)?)
}

/// PRelu: `x < 0 ? slope·x : x`, the slope broadcast to x's shape (unidirectionally).
fn prelu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let slope = num_input(env, node, 1)?;
    let sx = x.mul(&slope).map_err(err)?;
    if sx.shape() != x.shape() {
        return Err(format!(
            "slope {:?} does not broadcast to the input's shape {:?}",
            slope.shape(),
            x.shape()
        ));
    }
    one(negative_branch(&x, &sx).map_err(err)?)
}

/// Elu: `x < 0 ? alpha·(e^x - 1) : x`.
fn elu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let alpha = attr_float(node, "alpha", 1.0);
    let neg = exp_branch(&x, 1.0, alpha).map_err(err)?;
    one(negative_branch(&x, &neg).map_err(err)?)
}

/// Selu: `gamma·(x <= 0 ? alpha·(e^x - 1) : x)` (the two sides meet at 0).
fn selu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let alpha = attr_float(node, "alpha", 1.673_263_2);
    let gamma = attr_float(node, "gamma", 1.050_701);
    let neg = exp_branch(&x, 1.0, alpha).map_err(err)?;
    one(negative_branch(&x, &neg)
        .and_then(|y| y.mul_scalar(gamma))
        .map_err(err)?)
}

/// Celu: `max(0, x) + min(0, alpha·(e^{x/alpha} - 1))`.
fn celu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let alpha = attr_float(node, "alpha", 1.0);
    if alpha == 0.0 {
        return Err("Celu with alpha = 0 is undefined".into());
    }
    let neg = exp_branch(&x, alpha, alpha).map_err(err)?;
    one(negative_branch(&x, &neg).map_err(err)?)
}

/// `clamp(alpha·x + beta, 0, 1)`.
fn hard_sigmoid_of(x: &Var, alpha: f32, beta: f32) -> crate::Result<Var> {
    x.mul_scalar(alpha)?
        .add_scalar(beta)?
        .scalar(B::Maximum, 0.0, false)?
        .scalar(B::Minimum, 1.0, false)
}

fn hard_sigmoid(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (alpha, beta) = (
        attr_float(node, "alpha", 0.2),
        attr_float(node, "beta", 0.5),
    );
    one(hard_sigmoid_of(&x, alpha, beta).map_err(err)?)
}

/// HardSwish: `x·clamp(x/6 + 1/2, 0, 1)`.
fn hard_swish(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    one(hard_sigmoid_of(&x, 1.0 / 6.0, 0.5)
        .and_then(|h| x.mul(&h))
        .map_err(err)?)
}

/// Softplus `ln(1 + e^x)` as `relu(x) + log1p(e^{-|x|})`: no overflow for large x, and
/// no cancellation for very negative x.
fn softplus_of(x: &Var) -> crate::Result<Var> {
    let tail = x.abs()?.neg()?.exp()?.unary(U::Log1p)?;
    x.relu()?.add(&tail)
}

fn softplus(env: &Env, node: &NodeProto) -> OpResult {
    one(softplus_of(&input(env, node, 0)?).map_err(err)?)
}

/// Mish: `x·tanh(softplus(x))`, with `tanh(ln(1 + e)) = n/(n + 2)`, `n = e·(e + 2)`,
/// `e = e^x`: no cancellation for very negative x (where a GPU's tanh of a tiny argument
/// can be off by 1e-3 relative), and `e^{min(x, 20)}`, as beyond 20 the ratio is 1 in f32.
fn mish(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let y = x
        .scalar(B::Minimum, 20.0, false)
        .and_then(|m| m.exp())
        .and_then(|e| e.mul(&e.add_scalar(2.0)?))
        .and_then(|n| n.div(&n.add_scalar(2.0)?))
        .and_then(|t| x.mul(&t))
        .map_err(err)?;
    one(y)
}

/// Swish (opset 24): `x · sigmoid(alpha · x)`, alpha defaulting to 1 (SiLU).
fn swish(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    one(swish_of(&x, attr_float(node, "alpha", 1.0)).map_err(err)?)
}

/// `x · sigmoid(alpha · x)`.
fn swish_of(x: &Var, alpha: f32) -> crate::Result<Var> {
    x.mul(&x.mul_scalar(alpha)?.sigmoid()?)
}

/// SwiGLU (opset 28): `Swish_alpha(a)·b` with `Swish_alpha(a) = a·σ(alpha·a)`; a and b
/// must have the same shape (ONNX applies no broadcasting here).
fn swiglu(env: &Env, node: &NodeProto) -> OpResult {
    let (a, b) = (input(env, node, 0)?, input(env, node, 1)?);
    if a.shape() != b.shape() {
        return Err(format!(
            "inputs {:?} and {:?} must have the same shape (no broadcasting)",
            a.shape(),
            b.shape()
        ));
    }
    let alpha = attr_float(node, "alpha", 1.0);
    one(swish_of(&a, alpha).and_then(|s| s.mul(&b)).map_err(err)?)
}

/// ThresholdedRelu: `x > alpha ? x : 0` (alpha defaults to 1).
fn thresholded_relu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let alpha = attr_float(node, "alpha", 1.0);
    one(x
        .scalar(B::Gt, alpha, false)
        .and_then(|m| x.binary(&m, B::KeepWhere))
        .map_err(err)?)
}

/// Shrink: `x < -lambd ? x + bias : x > lambd ? x - bias : 0`.
fn shrink(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (bias, lambd) = (
        attr_float(node, "bias", 0.0),
        attr_float(node, "lambd", 0.5),
    );
    let y = x
        .scalar(B::Lt, -lambd, false)
        .and_then(|lo| x.add_scalar(bias)?.binary(&lo, B::KeepWhere))
        .and_then(|l| {
            let hi = x.scalar(B::Gt, lambd, false)?;
            l.add(&x.add_scalar(-bias)?.binary(&hi, B::KeepWhere)?)
        })
        .map_err(err)?;
    one(y)
}

/// 1.0 where `x` is NaN (`x != x` is true only there).
fn nan_mask(x: &Var) -> crate::Result<Var> {
    x.binary(x, B::Ne)
}

/// Sign: -1, 0 or 1 (0 for ±0), NaN for NaN.
fn sign(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let y = x
        .scalar(B::Gt, 0.0, false)
        .and_then(|p| p.sub(&x.scalar(B::Lt, 0.0, false)?))
        .and_then(|s| nan_mask(&x)?.select(&x, &s))
        .map_err(err)?;
    one(y)
}

fn is_nan(env: &Env, node: &NodeProto) -> OpResult {
    one(nan_mask(&input(env, node, 0)?).map_err(err)?)
}

/// IsInf: 1.0 at +inf (unless `detect_positive = 0`) and at -inf (unless
/// `detect_negative = 0`).
fn is_inf(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let pos = attr_int(node, "detect_positive", 1) != 0;
    let neg = attr_int(node, "detect_negative", 1) != 0;
    let y = match (pos, neg) {
        (true, true) => x.abs().and_then(|a| a.scalar(B::Eq, f32::INFINITY, false)),
        (true, false) => x.scalar(B::Eq, f32::INFINITY, false),
        (false, true) => x.scalar(B::Eq, f32::NEG_INFINITY, false),
        (false, false) => x.scalar(B::KeepWhere, 0.0, false), // all +0
    };
    one(y.map_err(err)?)
}

/// Softsign: `x / (1 + |x|)`.
fn softsign(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    one(x
        .abs()
        .and_then(|a| x.div(&a.add_scalar(1.0)?))
        .map_err(err)?)
}

/// Gelu (opset 20): the exact erf form, or with `approximate="tanh"`
/// `x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    match attr_string(node, "approximate").as_deref() {
        None | Some("none") => one(x.gelu().map_err(err)?),
        Some("tanh") => {
            let k = (2.0 / std::f64::consts::PI).sqrt() as f32;
            let y = x
                .square()
                .and_then(|x2| x.mul(&x2.mul_scalar(0.044_715)?.add_scalar(1.0)?))
                .and_then(|inner| inner.mul_scalar(k)?.tanh())
                .and_then(|t| x.mul(&t.add_scalar(1.0)?)?.mul_scalar(0.5))
                .map_err(err)?;
            one(y)
        }
        Some(other) => Err(format!(
            "approximate = \"{other}\" is not supported (\"none\" or \"tanh\")"
        )),
    }
}

fn reciprocal(env: &Env, node: &NodeProto) -> OpResult {
    one(input(env, node, 0)?
        .scalar(B::Div, 1.0, true)
        .map_err(err)?)
}

/// One bound of Clip: absent, a constant (scalar op) or a graph value (broadcast op).
enum Bound {
    None,
    Scalar(f32),
    Var(Var),
}

/// Clip: `min(max(x, lo), hi)` (so `lo > hi` gives `hi`, as the spec says). Before opset
/// 11 the bounds are attributes `min`/`max`; from 11 optional scalar inputs 1 and 2.
fn clip(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let rank = x.shape().len();
    let bound = |i: usize, attr: &str| -> Result<Bound, String> {
        if env.opset < 11 {
            let has = node.attribute.iter().any(|a| a.name() == attr);
            return Ok(if has {
                Bound::Scalar(attr_float(node, attr, 0.0))
            } else {
                Bound::None
            });
        }
        match node.input.get(i) {
            Some(n) if !n.is_empty() => {
                if let Some(s) = scalar_const(env, node, i, rank) {
                    return Ok(Bound::Scalar(s));
                }
                let v = num_input(env, node, i)?;
                // a scalar (or one element of a rank that leaves x's shape unchanged)
                // (checked: a declared input's dims may multiply past usize)
                let one = v.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d)) == Some(1);
                if !one || v.shape().len() > rank {
                    return Err(format!(
                        "Clip bound '{n}' must be a scalar, got shape {:?}",
                        v.shape()
                    ));
                }
                Ok(Bound::Var(v))
            }
            _ => Ok(Bound::None),
        }
    };
    let apply = |y: Var, b: Bound, op: B| -> crate::Result<Var> {
        match b {
            Bound::None => Ok(y),
            Bound::Scalar(s) => y.scalar(op, s, false),
            Bound::Var(v) => y.binary(&v, op),
        }
    };
    let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
    let y = apply(x, lo, B::Maximum)
        .and_then(|y| apply(y, hi, B::Minimum))
        .map_err(err)?;
    one(y)
}

/// Pow with broadcasting; a constant scalar exponent (often an INT64 2) is a scalar op.
/// An integer base with a graph (float) exponent is [`int_pow`]'s.
fn pow(env: &Env, node: &NodeProto) -> OpResult {
    if let Some(t) = super::dtype_of(env, node, 0).filter(|&t| super::dtype::is_integer(t)) {
        return int_pow(env, node, t);
    }
    let x = input(env, node, 0)?;
    if let Some(e) = scalar_const(env, node, 1, x.shape().len()) {
        return one(x.scalar(B::Pow, e, false).map_err(err)?);
    }
    one(x.pow(&num_input(env, node, 1)?).map_err(err)?)
}

/// Pow of an integer base (a constant at import, converted exactly to f32, or an error past
/// 2^24) to a float graph exponent, the result in the base's type, as onnxruntime computes
/// it: the power (in f64 there) truncated toward zero.
///
/// The f32 power is not exact (on the GPU it is `exp2(y·log2 x)`, 3^15 off by 6), so a
/// whole exponent `y >= 0` is done by squaring instead: `x^y = Π x^(2^k)` over the set bits
/// of `y`, exact while the result fits f32's integers (2^24). Past 31 only `|x| <= 1` keeps
/// a result that small, and for those `y`'s parity is all that counts, so the bits are
/// taken of `30 + y mod 2` there. A negative whole exponent gives `±1`, `0` or `inf`, which
/// the float power has exactly. A fractional one uses the float power, taken as the nearest
/// integer where it lies within 2^-20 (relative) of one (9^0.5 may come out 2.9999998): a
/// true power closer than that below an integer, which an integer base and an f32 exponent
/// hardly ever give, comes out one more than onnxruntime's. Results past 2^24 are not
/// exact in f32.
fn int_pow(env: &Env, node: &NodeProto, t: crate::onnx::proto::tensor_proto::DataType) -> OpResult {
    let x = num_input(env, node, 0)?;
    let y = num_input(env, node, 1)?;
    let r = (|| {
        let p = x.pow(&y)?;
        let near = p.unary(U::Round)?;
        let close = p
            .sub(&near)?
            .abs()?
            .binary(&near.abs()?.mul_scalar(1.0 / (1 << 20) as f32)?, B::Le)?;
        let float = close.select(&near, &p)?;
        // The exponent's bits, from y or, past 31, from 30 + y mod 2.
        let floor_div = |v: &Var, d: f32| v.mul_scalar(1.0 / d)?.unary(U::Floor);
        let parity = y.sub(&floor_div(&y, 2.0)?.mul_scalar(2.0)?)?;
        let big = y.scalar(B::Gt, 31.0, false)?;
        let e = big.select(&parity.add_scalar(30.0)?, &y)?;
        let mut acc: Option<Var> = None;
        let mut sq = x.clone();
        for k in 0..5 {
            let bit = floor_div(&e, (1u32 << k) as f32)?
                .sub(&floor_div(&e, (2u32 << k) as f32)?.mul_scalar(2.0)?)?;
            // x^(2^k) where the bit is set, else 1 (selected: sq may be inf by now).
            let f = bit.select(&sq, &x.graph().full(1.0, &[1]))?;
            acc = Some(match acc {
                None => f,
                Some(a) => a.mul(&f)?,
            });
            sq = sq.mul(&sq)?;
        }
        let exact = acc.expect("five bits");
        let whole = y
            .unary(U::Floor)?
            .binary(&y, B::Eq)?
            .mul(&y.scalar(B::Ge, 0.0, false)?)?;
        whole.select(&exact, &float)
    })()
    .map_err(err)?;
    one(super::cast_var(
        &r,
        Some(crate::onnx::proto::tensor_proto::DataType::Float),
        t,
    )?)
}

/// Max / Min / Sum / Mean of one or more inputs, broadcast together (opset >= 8; the
/// same-shape opset 6 forms are a special case).
fn variadic(env: &Env, node: &NodeProto, op: B, mean: bool) -> OpResult {
    let n = node.input.len();
    if n == 0 {
        return Err("needs at least one input".into());
    }
    let mut acc = num_input(env, node, 0)?;
    for i in 1..n {
        acc = acc.binary(&num_input(env, node, i)?, op).map_err(err)?;
    }
    if mean && n > 1 {
        acc = acc.scalar(B::Div, n as f32, false).map_err(err)?;
    }
    one(acc)
}

/// A comparison or logic op on two broadcast inputs, giving 1.0 / 0.0.
fn compare(env: &Env, node: &NodeProto, op: B) -> OpResult {
    let (a, b) = (num_input(env, node, 0)?, num_input(env, node, 1)?);
    one(a.binary(&b, op).map_err(err)?)
}

fn not(env: &Env, node: &NodeProto) -> OpResult {
    one(num_input(env, node, 0)?
        .scalar(B::Eq, 0.0, false)
        .map_err(err)?)
}

/// Where(cond, x, y): `x` where cond is true, else `y`, all three broadcast together;
/// exact even where the branch not taken is ±inf or NaN (see [`Var::select`]).
fn where_(env: &Env, node: &NodeProto) -> OpResult {
    let c = num_input(env, node, 0)?;
    let (x, y) = (num_input(env, node, 1)?, num_input(env, node, 2)?);
    one(c.select(&x, &y).map_err(err)?)
}

/// What a Reduce* op applies before and after summing (or its own reduction).
#[derive(Clone, Copy)]
enum Reduce {
    Plain(ReduceOp),
    SumSquare,
    L1,
    L2,
    LogSum,
    LogSumExp,
    Prod,
}

/// Reduce*: over `axes` (an attribute before opset `input_from`, then input 1), all axes
/// when absent or empty unless `noop_with_empty_axes`; negative axes count from the end;
/// `keepdims` (default 1) keeps them with length 1; an axis named twice counts once.
fn reduce(env: &Env, node: &NodeProto, kind: Reduce, input_from: i64) -> OpResult {
    let x = input(env, node, 0)?;
    let rank = x.shape().len();
    let keep = attr_int(node, "keepdims", 1) != 0;
    let given = if env.opset >= input_from {
        if node.attribute.iter().any(|a| a.name() == "axes") {
            return Err(format!(
                "from opset {input_from} axes are an input, not an attribute"
            ));
        }
        opt_const_input(env, node, 1)?
            .map(|c| c.as_i64())
            .transpose()?
    } else {
        attr_ints(node, "axes")
    }
    .unwrap_or_default();
    if given.is_empty() && attr_int(node, "noop_with_empty_axes", 0) != 0 {
        return Ok(vec![Value::Var(x)]);
    }
    let mut axes: Vec<usize> = given
        .iter()
        .map(|&a| axis(a, rank, false))
        .collect::<Result<_, _>>()?;
    // an axis named twice (e.g. 1 and -1 of a matrix) is reduced once, as onnxruntime does
    axes.sort_unstable();
    axes.dedup();
    if axes.is_empty() {
        axes = (0..rank).collect();
    }
    if let Some(y) = empty_reduction(&x, kind, &axes, keep) {
        return one(y.map_err(err)?);
    }
    let (op, pre) = match kind {
        Reduce::Plain(op) => (op, None),
        Reduce::SumSquare | Reduce::L2 => (ReduceOp::Sum, Some(U::Square)),
        Reduce::L1 => (ReduceOp::Sum, Some(U::Abs)),
        Reduce::LogSum => (ReduceOp::Sum, None),
        Reduce::LogSumExp => return one(log_sum_exp(&x, &axes, keep).map_err(err)?),
        Reduce::Prod => return one(prod_axes(&x, &axes, keep).map_err(err)?),
    };
    let y = pre
        .map_or(Ok(x.clone()), |u| x.unary(u))
        .and_then(|v| reduce_axes(&v, op, &axes, keep))
        .and_then(|y| match kind {
            Reduce::L2 => y.sqrt(),
            Reduce::LogSum => y.log(),
            _ => Ok(y),
        })
        .map_err(err)?;
    one(y)
}

/// A reduction over an empty axis is its identity everywhere (NumPy's and onnxruntime's
/// rule): 0 for the sums, 1 for the product, −inf for max and the log-sums, +inf for min,
/// NaN for the mean (0/0). `None` when every reduced axis has elements.
fn empty_reduction(
    x: &Var,
    kind: Reduce,
    axes: &[usize],
    keep: bool,
) -> Option<crate::Result<Var>> {
    let shape = x.shape();
    if axes.iter().all(|&a| shape[a] > 0) {
        return None;
    }
    let value = match kind {
        Reduce::Plain(ReduceOp::Max) | Reduce::LogSum | Reduce::LogSumExp => f32::NEG_INFINITY,
        Reduce::Plain(ReduceOp::Min) => f32::INFINITY,
        Reduce::Plain(ReduceOp::Mean) => f32::NAN,
        Reduce::Prod => 1.0,
        _ => 0.0,
    };
    let out: Vec<usize> = (0..shape.len())
        .filter_map(|d| match (axes.contains(&d), keep) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(shape[d]),
        })
        .collect();
    Some(Ok(x.graph().full(value, &out)))
}

/// `op` over the sorted, distinct `axes` of `x`: one reduction over everything when every
/// axis goes, else one per axis (kept with length 1, so the later axes keep their
/// numbers), then the reduced axes dropped unless `keep`.
fn reduce_axes(x: &Var, op: ReduceOp, axes: &[usize], keep: bool) -> crate::Result<Var> {
    let shape = x.shape().to_vec();
    let mut out: Vec<usize> = shape.clone();
    for &a in axes {
        out[a] = 1;
    }
    let dropped: Vec<usize> = (0..shape.len())
        .filter(|d| !axes.contains(d))
        .map(|d| shape[d])
        .collect();
    let y = if axes.len() == shape.len() {
        x.graph().push(Op::ReduceAll(op), &[x])?
    } else {
        let mut y = x.clone();
        for &a in axes {
            y = y.reduce(op, a as isize, true)?;
        }
        y
    };
    y.reshape(if keep { &out } else { &dropped })
}

/// The product over the sorted, distinct `axes` (no product reduction among the graph
/// ops): per axis, halves multiplied pairwise (an odd last slice carried along) until one
/// slice is left, so log2(n) element-wise products; an empty axis gives 1.
fn prod_axes(x: &Var, axes: &[usize], keep: bool) -> crate::Result<Var> {
    let shape = x.shape().to_vec();
    let mut y = x.clone();
    for &a in axes {
        let mut n = shape[a];
        if n == 0 {
            let mut one_shape = y.shape().to_vec();
            one_shape[a] = 1;
            y = x.graph().full(1.0, &one_shape);
            continue;
        }
        while n > 1 {
            let h = n / 2;
            let a_ = a as isize;
            let mut p = y.slice(a_, 0, h)?.mul(&y.slice(a_, h, 2 * h)?)?;
            if n % 2 == 1 {
                p = Var::concat(&[&p, &y.slice(a_, 2 * h, n)?], a_)?;
            }
            y = p;
            n = h + n % 2;
        }
    }
    let out: Vec<usize> = (0..shape.len())
        .filter(|d| keep || !axes.contains(d))
        .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
        .collect();
    y.reshape(&out)
}

/// ArgMax / ArgMin along `axis` (default 0): the first index holding the extreme (the last
/// with `select_last_index`), as exact f32 values; an axis longer than 2^24 is refused.
fn arg_extreme(env: &Env, node: &NodeProto, op: ReduceOp) -> OpResult {
    let x = input(env, node, 0)?;
    let a = axis(attr_int(node, "axis", 0), x.shape().len(), false)?;
    let keep = attr_int(node, "keepdims", 1) != 0;
    let last = attr_int(node, "select_last_index", 0) != 0;
    let (idx, _) = arg_index(&x, a, op, last)?;
    one(if keep {
        idx
    } else {
        let mut dims = x.shape().to_vec();
        dims.remove(a);
        idx.reshape(&dims).map_err(err)?
    })
}

/// The index along axis `a` of `x`'s first extreme (`op` Max or Min; the last with
/// `last`), kept with length 1, and the indices 0..n laid along `a` (for one-hots).
/// `min over the axis of (hit ? index : n)` (or `max of (hit ? index : -1)`), where a NaN,
/// which the extreme then is, counts as a hit (NumPy's rule). No gradient flows.
fn arg_index(x: &Var, a: usize, op: ReduceOp, last: bool) -> Result<(Var, Var), String> {
    let shape = x.shape();
    let n = shape[a];
    if n > 1 << 24 {
        return Err(format!(
            "axis {a} has {n} elements: indices past 2^24 are not exact as f32 (shape {shape:?})"
        ));
    }
    if n == 0 {
        return Err(format!("axis {a} is empty (shape {shape:?})"));
    }
    let mut iota_dims = vec![1; shape.len() - a];
    iota_dims[0] = n;
    let iota: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let build = || -> crate::Result<(Var, Var)> {
        let iota = Tensor::from_slice(&crate::Device::cpu(), &iota, &iota_dims)?;
        let iota = x.graph().constant(&iota)?;
        let m = x.reduce(op, a as isize, true)?;
        let hit = x.binary(&m, B::Eq)?.maximum(&nan_mask(x)?)?;
        let (miss, pick) = if last {
            (-1.0, ReduceOp::Max)
        } else {
            (n as f32, ReduceOp::Min)
        };
        let idx = iota
            .binary(&hit, B::KeepWhere)?
            .add(&hit.scalar(B::KeepWhereNot, miss, true)?)?
            .reduce(pick, a as isize, true)?;
        Ok((idx, iota))
    };
    build().map_err(err)
}

/// Hardmax: 1.0 at the first maximum along `axis`, 0.0 elsewhere. From opset 13 along
/// `axis` (default -1); before, over the input flattened to 2-D at `axis` (default 1).
fn hardmax(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let shape = x.shape().to_vec();
    let (flat, a) = if env.opset >= 13 {
        (x, axis(attr_int(node, "axis", -1), shape.len(), false)?)
    } else {
        let a = axis(attr_int(node, "axis", 1), shape.len(), true)?;
        let rows = super::dims_product(&shape[..a], &shape)?;
        let dims = [rows, super::dims_product(&shape[a..], &shape)?];
        (x.reshape(&dims).map_err(err)?, 1)
    };
    let (idx, iota) = arg_index(&flat, a, ReduceOp::Max, false)?;
    one(iota
        .binary(&idx, B::Eq)
        .and_then(|h| h.reshape(&shape))
        .map_err(err)?)
}

/// `ln Σ e^x` over `axes` as `m + ln Σ e^{x - m}`, `m` the maximum where it is finite and 0
/// elsewhere (so a line of -inf gives -inf and one holding +inf gives +inf, not NaN).
fn log_sum_exp(x: &Var, axes: &[usize], keep: bool) -> crate::Result<Var> {
    let m = reduce_axes(x, ReduceOp::Max, axes, true)?;
    // not `m - m == 0`: GPU compilers may fold `m - m` to 0 (lavapipe's does)
    let bad = m
        .abs()?
        .scalar(B::Eq, f32::INFINITY, false)?
        .maximum(&nan_mask(&m)?)?;
    let m = m.binary(&bad, B::KeepWhereNot)?;
    let s = reduce_axes(&x.sub(&m)?.exp()?, ReduceOp::Sum, axes, true)?;
    let y = s.log()?.add(&m)?;
    if keep {
        Ok(y)
    } else {
        let dims: Vec<usize> = (0..x.shape().len())
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape()[d])
            .collect();
        y.reshape(&dims)
    }
}
