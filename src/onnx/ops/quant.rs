//! Quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and the integer
//! products MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv, as compositions of
//! ordinary graph ops.
//!
//! Integer tensors are graph values holding integers in f32, as everywhere in the importer:
//! every INT8, UINT8, INT16 and UINT16 value is exact, and an integer constant past 2^24 is
//! refused when it becomes a graph value. The float 8-, 6-, 4- and 2-bit types are refused
//! with an error naming the type.
//!
//! - QuantizeLinear: `saturate(round(x / scale) + zero_point)`, `Round` being ties to even
//!   (exact on every f32) and saturation clamping to the output type's range; NaN gives the
//!   type's lowest value (NumPy's reference and onnxruntime's x86 kernels both do). With a
//!   half-precision scale (or `precision`), x and scale are rounded to it and so is the
//!   quotient, as the spec's division in that type.
//!   `x / scale` is the graph's division: correctly rounded on the CPU reference and on
//!   lavapipe; Vulkan allows other adapters 2.5 ulp, which can move a result by one step
//!   only where `x / scale` lies within that of a half.
//! - DequantizeLinear: `(x - zero_point) · scale`, rounded to FLOAT16 / BFLOAT16 when that is
//!   the output type.
//! - Scale and zero point apply per tensor (one element), per axis (1-D along `axis`), or
//!   blocked (`block_size`: x's dims except ⌈x[axis]/block_size⌉ along `axis`, each
//!   element repeated `block_size` times, the last block cut short).
//!
//! Integer products: `(a - a_zp)·(b - b_zp)` and the convolution of `(x - x_zp)` with
//! `(w - w_zp)` sum in f32, which is exact only while every partial sum stays within 2^24.
//! A bound on the partial sums is taken at import, from the values of operands known there
//! (weights) and from the element type's range otherwise; an op whose bound passes 2^24 is
//! an import error, never a rounded int32 result. QLinearMatMul and QLinearConv then scale
//! the exact accumulator in f32 (`acc · (s_a·s_b / s_y)`, the multiplier rounded to half
//! precision when the scales are half, as the spec computes it), round and saturate.
//!
//! Gradients: rounding is piecewise constant, so QuantizeLinear's output has zero
//! derivative with respect to x and scale (the true derivative almost everywhere; not a
//! straight-through estimator, which ONNX does not define), and the clamp's with respect to
//! a zero point given as a graph value (1 inside the range, 0 where it saturates). The
//! quantized products round too, so their outputs pass no gradient; MatMulInteger and
//! ConvInteger are exact integer results, linear in their (integer-valued) graph inputs.
//! DequantizeLinear is linear: gradients flow to x, scale and zero point.

use super::conv::conv_of;
use super::dtype::{cast_var, int_range};
use super::{attr_int, axis, dtype_of, err, input, int_input, one, value, Env, OpFn, OpResult};
use super::{Const, FoldFn, Value};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::ops::reduce::ReduceOp;
use crate::Var;

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("QuantizeLinear", quantize),
    ("DequantizeLinear", dequantize),
    ("DynamicQuantizeLinear", dynamic_quantize),
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("QLinearMatMul", qlinear_matmul),
    ("QLinearConv", qlinear_conv),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[("DequantizeLinear", dequantize_fold)];

type Res<T> = std::result::Result<T, String>;

/// 2^24: f32 holds every integer up to it.
const EXACT: f64 = 16_777_216.0;

use DataType as D;

/// The types QuantizeLinear produces and DequantizeLinear reads here.
const QUANT: &[D] = &[D::Int8, D::Uint8, D::Int16, D::Uint16];
/// The operand types of the integer products.
const BYTES: &[D] = &[D::Int8, D::Uint8];

fn m<T>(r: crate::Result<T>) -> Res<T> {
    r.map_err(err)
}

fn names(ts: &[D]) -> String {
    ts.iter()
        .map(|t| t.as_str_name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn present(node: &NodeProto, i: usize) -> bool {
    node.input.get(i).is_some_and(|n| !n.is_empty())
}

/// A type attribute (`output_dtype`, `precision`); 0 or absent is `None`.
fn attr_type(node: &NodeProto, name: &str) -> Res<Option<D>> {
    match attr_int(node, name, 0) {
        0 => Ok(None),
        t => i32::try_from(t)
            .ok()
            .and_then(|t| D::try_from(t).ok())
            .map(Some)
            .ok_or_else(|| format!("`{name}` = {t} is not an element type")),
    }
}

fn is_half(t: D) -> bool {
    matches!(t, D::Float16 | D::Bfloat16)
}

/// The float element type of input `i` (a scale), FLOAT when the file does not say.
fn float_type(env: &Env, node: &NodeProto, i: usize, what: &str) -> Res<D> {
    match dtype_of(env, node, i).unwrap_or(D::Float) {
        t @ (D::Float | D::Double | D::Float16 | D::Bfloat16) => Ok(t),
        t => Err(format!(
            "{what} '{}' has element type {}; only float scales are supported",
            node.input[i],
            t.as_str_name()
        )),
    }
}

/// An integer input: its graph value, its values when known at import, its element type.
struct IntIn {
    var: Var,
    host: Option<Vec<i64>>,
    ty: D,
}

impl IntIn {
    /// The smallest and largest value it can hold: its values' when known, else its type's.
    fn span(&self) -> (f64, f64) {
        match &self.host {
            Some(h) if !h.is_empty() => (
                *h.iter().min().expect("non-empty") as f64,
                *h.iter().max().expect("non-empty") as f64,
            ),
            _ => {
                let (lo, hi) = int_range(self.ty).unwrap_or((i32::MIN as i64, i32::MAX as i64));
                (lo as f64, hi as f64)
            }
        }
    }
}

/// Integer input `i` (`what` names it in errors), of one of the types `allowed`.
fn int_in(env: &Env, node: &NodeProto, i: usize, what: &str, allowed: &[D]) -> Res<IntIn> {
    let name = node.input.get(i).map_or("", |s| s.as_str());
    let ty = dtype_of(env, node, i)
        .ok_or_else(|| format!("the element type of {what} '{name}' is unknown"))?;
    if !allowed.contains(&ty) {
        return Err(format!(
            "{what} '{name}' has element type {}; {} takes {} here",
            ty.as_str_name(),
            node.op_type(),
            names(allowed)
        ));
    }
    let host = match value(env, node, i)? {
        Value::Const(c) => Some(c.as_i64().map_err(|e| format!("{what} '{name}': {e}"))?),
        Value::Var(_) => None,
    };
    Ok(IntIn {
        var: int_input(env, node, i)?,
        host,
        ty,
    })
}

/// An optional integer input of type `ty` (a zero point, which has its operand's type).
fn opt_zp(env: &Env, node: &NodeProto, i: usize, what: &str, ty: D) -> Res<Option<IntIn>> {
    if !present(node, i) {
        return Ok(None);
    }
    int_in(env, node, i, what, &[ty]).map(Some)
}

/// The largest |v - zp| over v's and zp's spans.
fn max_dev(v: (f64, f64), zp: Option<&IntIn>) -> f64 {
    let z = zp.map_or((0.0, 0.0), IntIn::span);
    (v.1 - z.0).abs().max((z.1 - v.0).abs())
}

/// `r` (integers in f32) clamped to `[lo, hi]`; NaN gives `lo`.
fn saturate(r: &Var, lo: i64, hi: i64) -> Res<Var> {
    let (lo, hi) = (lo as f32, hi as f32);
    // `r >= lo` is false for NaN, which therefore takes `lo` too.
    let in_range = m(r.scalar(B::Ge, lo, false))?;
    let capped = m(r.scalar(B::Minimum, hi, false))?;
    m(in_range.select(&capped, &r.graph().full(lo, r.shape())))
}

/// How a scale (and its zero point) applies to x.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Tensor,
    Axis(usize),
    Blocked { axis: usize, block: usize },
}

/// The layout of a scale of dims `s` for x of dims `x` under `axis` and `block_size`.
fn layout(node: &NodeProto, x: &[usize], s: &[usize]) -> Res<Layout> {
    let block = attr_int(node, "block_size", 0);
    if block < 0 {
        return Err(format!("block_size {block} must be positive"));
    }
    if s.iter().product::<usize>() == 1 {
        return Ok(Layout::Tensor);
    }
    let a = attr_int(node, "axis", 1);
    let ax = axis(a, x.len(), false).map_err(|e| format!("{e} (x {x:?}, scale {s:?})"))?;
    if block == 0 {
        if s.len() == 1 && s[0] == x[ax] {
            return Ok(Layout::Axis(ax));
        }
        return Err(format!(
            "scale {s:?} fits x {x:?} neither per tensor (1 element) nor per axis {a} ({} \
             elements)",
            x[ax]
        ));
    }
    let b = block as usize;
    let fits = s.len() == x.len()
        && (0..x.len()).all(|i| s[i] == if i == ax { x[i].div_ceil(b) } else { x[i] });
    if !fits {
        return Err(format!(
            "scale {s:?} does not block x {x:?} by block_size {b} along axis {a} (it needs x's \
             dims with ⌈{}/{b}⌉ = {} there)",
            x[ax],
            x[ax].div_ceil(b)
        ));
    }
    Ok(Layout::Blocked { axis: ax, block: b })
}

/// A scale or zero point `v` in `layout`, made broadcastable to x of dims `x`.
fn expand(v: &Var, x: &[usize], layout: Layout) -> Res<Var> {
    match layout {
        Layout::Tensor => m(v.reshape(&vec![1; x.len()])),
        Layout::Axis(a) => {
            let mut d = vec![1; x.len()];
            d[a] = x[a];
            m(v.reshape(&d))
        }
        Layout::Blocked { axis: a, block } => {
            // (…, S, …) → (…, S, 1, …) → (…, S, block, …) → (…, S·block, …), cut to x[a].
            let s = v.shape().to_vec();
            let mut d = s.clone();
            d.insert(a + 1, 1);
            let r = m(v.reshape(&d))?;
            d[a + 1] = block;
            let r = m(r.broadcast_to(&d))?;
            let mut merged = s;
            merged[a] *= block;
            let r = m(r.reshape(&merged))?;
            if merged[a] == x[a] {
                Ok(r)
            } else {
                m(r.slice(a as isize, 0, x[a]))
            }
        }
    }
}

/// A zero point's dims must be its scale's.
fn check_zp(z: &[usize], scale: &[usize], what: &str) -> Res<()> {
    let one = |d: &[usize]| d.iter().product::<usize>() == 1 && d.len() <= 1;
    if z == scale || (one(z) && one(scale)) {
        Ok(())
    } else {
        Err(format!("{what} {z:?} does not match the scale {scale:?}"))
    }
}

/// QuantizeLinear: `saturate(round(x / scale) + zero_point)` to the output type (the zero
/// point's, else `output_dtype`, else UINT8).
fn quantize(env: &Env, node: &NodeProto) -> OpResult {
    let x = match dtype_of(env, node, 0) {
        Some(D::Int32) => int_input(env, node, 0)?,
        _ => input(env, node, 0)?,
    };
    let s_type = float_type(env, node, 1, "y_scale")?;
    let s = input(env, node, 1)?;
    let zp_type = present(node, 2).then(|| dtype_of(env, node, 2)).flatten();
    let out_type = attr_type(node, "output_dtype")?;
    let ty = match (zp_type, out_type) {
        (Some(z), Some(o)) if z != o => {
            return Err(format!(
                "output_dtype {} differs from the zero point's type {}",
                o.as_str_name(),
                z.as_str_name()
            ))
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => D::Uint8,
    };
    if !QUANT.contains(&ty) {
        return Err(format!(
            "output type {} is not supported (QuantizeLinear produces {} here; float 8-, 6- \
             and 4-bit and 2- and 4-bit integer types are not)",
            ty.as_str_name(),
            names(QUANT)
        ));
    }
    let (lo, hi) = int_range(ty).expect("quantized types are integers");
    let layout = layout(node, x.shape(), s.shape())?;
    let precision = attr_type(node, "precision")?.unwrap_or(s_type);
    let mut ss = expand(&s, x.shape(), layout)?;
    let mut xs = x;
    if is_half(precision) {
        xs = cast_var(&xs, dtype_of(env, node, 0), precision)?;
        ss = cast_var(&ss, Some(s_type), precision)?;
    } else if !matches!(precision, D::Float | D::Double) {
        return Err(format!(
            "precision {} is not a float type",
            precision.as_str_name()
        ));
    }
    let mut q = m(xs.div(&ss))?;
    if is_half(precision) {
        // The quotient of two half values rounded to half: f32's quotient is correctly
        // rounded and has more than twice the bits, so rounding it again is exact.
        q = cast_var(&q, None, precision)?;
    }
    let r = m(q.unary(U::Round))?;
    let r = match opt_zp(env, node, 2, "y_zero_point", ty)? {
        Some(zp) => {
            check_zp(zp.var.shape(), s.shape(), "y_zero_point")?;
            m(r.add(&expand(&zp.var, r.shape(), layout)?))?
        }
        // -0 (from rounding -0.3) becomes +0.
        None => m(r.add_scalar(0.0))?,
    };
    one(saturate(&r, lo, hi)?)
}

/// DequantizeLinear: `(x - zero_point) · scale`, in the output type (`output_dtype`, else
/// the scale's).
fn dequantize(env: &Env, node: &NodeProto) -> OpResult {
    let (x_ty, out) = dequantize_types(env, node)?;
    let x = int_in(env, node, 0, "x", &[x_ty])?;
    let s = input(env, node, 1)?;
    let layout = layout(node, x.var.shape(), s.shape())?;
    let mut d = x.var.clone();
    if let Some(zp) = opt_zp(env, node, 2, "x_zero_point", x.ty)? {
        check_zp(zp.var.shape(), s.shape(), "x_zero_point")?;
        check_int32_zp(x_ty, zp.host.as_deref())?;
        d = m(d.sub(&expand(&zp.var, d.shape(), layout)?))?;
    }
    let y = m(d.mul(&expand(&s, d.shape(), layout)?))?;
    one(if is_half(out) {
        cast_var(&y, None, out)?
    } else {
        y
    })
}

/// DequantizeLinear's x type (checked, with its zero point's) and output type.
fn dequantize_types(env: &Env, node: &NodeProto) -> Res<(D, D)> {
    let types = [QUANT, &[D::Int32]].concat();
    let x_ty = dtype_of(env, node, 0).unwrap_or(D::Undefined);
    if !types.contains(&x_ty) {
        return Err(format!(
            "x '{}' has element type {}; DequantizeLinear takes {} here",
            node.input[0],
            x_ty.as_str_name(),
            names(&types)
        ));
    }
    if present(node, 2) && dtype_of(env, node, 2) != Some(x_ty) {
        return Err(format!(
            "x_zero_point has element type {}, x {}",
            dtype_of(env, node, 2).unwrap_or(D::Undefined).as_str_name(),
            x_ty.as_str_name()
        ));
    }
    let s_type = float_type(env, node, 1, "x_scale")?;
    let out = attr_type(node, "output_dtype")?.unwrap_or(s_type);
    if !matches!(out, D::Float | D::Double | D::Float16 | D::Bfloat16) {
        return Err(format!(
            "output_dtype {} is not a float type",
            out.as_str_name()
        ));
    }
    Ok((x_ty, out))
}

/// An INT32 x has no zero point (the spec's 0): `x - zp` could pass 2^24.
fn check_int32_zp(x_ty: D, zp: Option<&[i64]>) -> Res<()> {
    if x_ty == D::Int32 && zp.is_none_or(|h| h.iter().any(|&v| v != 0)) {
        return Err("an INT32 x takes no zero point (or one of 0)".into());
    }
    Ok(())
}

/// DequantizeLinear of constants (weights stored quantized) folds to a float constant, so
/// later folds and Conv's bias folding see it: `((x - zp) as f32) · scale`, which is the
/// graph's computation (and the reference's: an INT32 x past 2^24 rounds to f32 first, as
/// the spec's cast does). A half output type goes to the graph, which rounds to it.
fn dequantize_fold(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let (x_ty, out) = dequantize_types(env, node)?;
    if is_half(out) {
        return dequantize(env, node);
    }
    let arg = |i: usize| c.get(i).copied().flatten();
    let x = arg(0).ok_or("missing input 0")?;
    let s = arg(1).ok_or("missing input 1")?;
    let layout = layout(node, &x.dims, &s.dims)?;
    super::host_numel(&x.dims)?;
    let xv = x.as_i64().map_err(|e| format!("x: {e}"))?;
    let sv = s.as_f32();
    let zv = match arg(2) {
        Some(z) => {
            check_zp(&z.dims, &s.dims, "x_zero_point")?;
            let v = z.as_i64().map_err(|e| format!("x_zero_point: {e}"))?;
            check_int32_zp(x_ty, Some(&v))?;
            v
        }
        None => vec![0; sv.len()],
    };
    let at = param_index(&x.dims, &s.dims, layout);
    let y = (0..xv.len())
        .map(|i| (xv[i] - zv[at(i)]) as f32 * sv[at(i)])
        .collect();
    Ok(vec![Const::floats(x.dims.clone(), y).into()])
}

/// The index into a scale of dims `s` (in `layout`) of x's element `flat` (x of dims `x`).
fn param_index(x: &[usize], s: &[usize], layout: Layout) -> impl Fn(usize) -> usize {
    let (x, s) = (x.to_vec(), s.to_vec());
    move |flat| match layout {
        Layout::Tensor => 0,
        Layout::Axis(a) => flat / x[a + 1..].iter().product::<usize>() % x[a],
        Layout::Blocked { axis: a, block } => {
            // x's coordinates, the blocked one divided by the block, flattened in s's dims.
            let (mut rest, mut at, mut stride) = (flat, 0, 1);
            for k in (0..x.len()).rev() {
                let coord = rest % x[k];
                rest /= x[k];
                at += if k == a { coord / block } else { coord } * stride;
                stride *= s[k];
            }
            at
        }
    }
}

/// DynamicQuantizeLinear: UINT8 with the range of x (widened to hold 0) mapped onto 0..255:
/// `scale = (max - min) / 255` (1 when x is all zeros, as onnxruntime), `zero_point =
/// round(clamp(-min / scale, 0, 255))`, `y = saturate(round(x / scale) + zero_point)`.
fn dynamic_quantize(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let n = x.shape().iter().product::<usize>();
    let flat = m(x.reshape(&[n]))?;
    let hi = m(m(flat.reduce(ReduceOp::Max, 0, false))?.scalar(B::Maximum, 0.0, false))?;
    let lo = m(m(flat.reduce(ReduceOp::Min, 0, false))?.scalar(B::Minimum, 0.0, false))?;
    let range = m(hi.sub(&lo))?;
    let empty = m(range.scalar(B::Eq, 0.0, false))?;
    let g = x.graph();
    let scale = m(empty.select(&g.full(1.0, &[]), &m(range.scalar(B::Div, 255.0, false))?))?;
    // 0 - min/scale, in [0, 255] (min <= 0), rounded.
    let zp = m(lo.div(&scale))?;
    let zp = m(zp.scalar(B::Sub, 0.0, true))?;
    let zp = m(zp.scalar(B::Maximum, 0.0, false))?;
    let zp = m(m(zp.scalar(B::Minimum, 255.0, false))?.unary(U::Round))?;
    let r = m(m(x.div(&scale))?.unary(U::Round))?;
    let y = saturate(&m(r.add(&zp))?, 0, 255)?;
    Ok(vec![y.into(), scale.into(), zp.into()])
}

/// `v - zp` (the zero point already broadcastable), checked to keep v's shape.
fn centre(v: &IntIn, zp: Option<Var>, what: &str) -> Res<Var> {
    let Some(z) = zp else {
        return Ok(v.var.clone());
    };
    let d = m(v.var.sub(&z))?;
    if d.shape() != v.var.shape() {
        return Err(format!(
            "{what}'s zero point {:?} does not broadcast to it {:?}",
            z.shape(),
            v.var.shape()
        ));
    }
    Ok(d)
}

/// A's zero point for a product A (…, M, K): per tensor, per row ([M]), or (…, M, 1).
fn row_zp(zp: &IntIn, a: &[usize]) -> Res<Var> {
    let z = zp.var.shape();
    let r = a.len();
    if z.iter().product::<usize>() == 1 {
        return m(zp.var.reshape(&vec![1; r]));
    }
    if r >= 2 && z == [a[r - 2]] {
        return m(zp.var.reshape(&[a[r - 2], 1]));
    }
    if z.len() == r && z[r - 1] == 1 {
        return Ok(zp.var.clone());
    }
    Err(format!(
        "a_zero_point {z:?} fits A {a:?} neither per tensor nor per row ([M] or [..., M, 1])"
    ))
}

/// B's zero point for a product B (…, K, N): per tensor, per column ([N]), or (…, 1, N).
fn col_zp(zp: &IntIn, b: &[usize]) -> Res<Var> {
    let z = zp.var.shape();
    let r = b.len();
    if z.iter().product::<usize>() == 1 {
        return m(zp.var.reshape(&vec![1; r]));
    }
    if z == [b[r - 1]] || (r >= 2 && z.len() == r && z[r - 2] == 1) {
        return Ok(zp.var.clone());
    }
    Err(format!(
        "b_zero_point {z:?} fits B {b:?} neither per tensor nor per column ([N] or [..., 1, N])"
    ))
}

/// The largest `Σ |b_i - zp|` over the `groups` groups of b's elements (B's columns, or
/// a convolution's filters; element `i` is in group `group_of(i)`), from b's values when
/// known, else `(elements per group) · max|b - zp|`.
fn max_group_sum(
    b: &IntIn,
    zp: Option<&IntIn>,
    groups: usize,
    group_of: impl Fn(usize) -> usize,
) -> f64 {
    let z = zp.map_or((0.0, 0.0), IntIn::span);
    match &b.host {
        Some(h) => {
            let mut sums = vec![0.0f64; groups];
            for (i, &v) in h.iter().enumerate() {
                let v = v as f64;
                sums[group_of(i)] += (v - z.0).abs().max((z.1 - v).abs());
            }
            sums.into_iter().fold(0.0, f64::max)
        }
        None => {
            let per = b.var.shape().iter().product::<usize>() / groups.max(1);
            per as f64 * max_dev(b.span(), zp)
        }
    }
}

/// Refuses an integer product whose partial sums may pass 2^24 (f32 would round them).
fn check_exact(op_dims: &str, bound: f64) -> Res<()> {
    if bound > EXACT {
        return Err(format!(
            "{op_dims}: the integer sums can reach {bound}, past 2^24, where f32 graph values \
             stop holding every integer (int32 accumulators that large are not supported)"
        ));
    }
    Ok(())
}

/// `(A - a_zp)·(B - b_zp)` exactly (refused when it might not be): inputs 0, 1 with zero
/// points at `za`, `zb`.
fn integer_matmul(
    env: &Env,
    node: &NodeProto,
    (ia, za): (usize, usize),
    (ib, zb): (usize, usize),
) -> Res<Var> {
    let a = int_in(env, node, ia, "A", BYTES)?;
    let b = int_in(env, node, ib, "B", BYTES)?;
    let az = opt_zp(env, node, za, "a_zero_point", a.ty)?;
    let bz = opt_zp(env, node, zb, "b_zero_point", b.ty)?;
    let (ad, bd) = (a.var.shape().to_vec(), b.var.shape().to_vec());
    let a2 = centre(&a, az.as_ref().map(|z| row_zp(z, &ad)).transpose()?, "A")?;
    let b2 = centre(&b, bz.as_ref().map(|z| col_zp(z, &bd)).transpose()?, "B")?;
    // Columns of B: (…, K, N) (a 1-D B is one column of K).
    let (k, n) = match bd.len() {
        0 => return Err("B is a scalar".into()),
        1 => (bd[0], 1),
        r => (bd[r - 2], bd[r - 1]),
    };
    let batches = bd.iter().product::<usize>() / (k * n).max(1);
    let col = |i: usize| i / (k * n) * n + i % n;
    let bound = max_dev(a.span(), az.as_ref()) * max_group_sum(&b, bz.as_ref(), batches * n, col);
    check_exact(&format!("A {ad:?} · B {bd:?}"), bound)?;
    m(a2.matmul(&b2))
}

/// MatMulInteger: the exact INT32 product of the centred operands.
fn matmul_integer(env: &Env, node: &NodeProto) -> OpResult {
    one(integer_matmul(env, node, (0, 2), (1, 3))?)
}

/// `scale` (one element, or `[n]` when `n` is given) reshaped to broadcast over dims of
/// rank `rank` along `at`.
fn product_scale(v: &Var, what: &str, rank: usize, along: Option<(usize, usize)>) -> Res<Var> {
    let s = v.shape();
    if s.iter().product::<usize>() == 1 {
        return m(v.reshape(&vec![1; rank]));
    }
    match along {
        Some((at, n)) if s == [n] => {
            let mut d = vec![1; rank];
            d[at] = n;
            m(v.reshape(&d))
        }
        _ => Err(format!(
            "{what} {s:?} must hold one element{}",
            along.map_or(String::new(), |(_, n)| format!(" or {n}"))
        )),
    }
}

/// `acc · (s1·s2 / s3)` rounded, plus the zero point at `zp_at`, saturated to its type (or
/// `default` without one): the requantization of QLinearMatMul and QLinearConv. The
/// multiplier is computed in the scales' type (`half`: rounded after each operation).
fn requantize(
    env: &Env,
    node: &NodeProto,
    acc: &Var,
    scales: [Var; 3],
    half: D,
    zp_at: usize,
    default: D,
) -> Res<Var> {
    let round = |v: Var| -> Res<Var> {
        if is_half(half) {
            cast_var(&v, None, half)
        } else {
            Ok(v)
        }
    };
    let [s1, s2, s3] = scales;
    let mult = round(m(round(m(s1.mul(&s2))?)?.div(&s3))?)?;
    let mut d = m(acc.mul(&mult))?;
    let ty = match present(node, zp_at) {
        true => {
            let zp = int_in(env, node, zp_at, "y_zero_point", BYTES)?;
            if zp.var.shape().iter().product::<usize>() != 1 {
                return Err(format!(
                    "y_zero_point {:?} must hold one element",
                    zp.var.shape()
                ));
            }
            d = m(d.add(&m(zp.var.reshape(&vec![1; acc.shape().len()]))?))?;
            zp.ty
        }
        false => default,
    };
    let (lo, hi) = int_range(ty).expect("integer type");
    let r = m(m(d.unary(U::Round))?.add_scalar(0.0))?;
    saturate(&r, lo, hi)
}

/// QLinearMatMul: `saturate(round((a - a_zp)·(b - b_zp) · a_scale·b_scale / y_scale) +
/// y_zp)`; a's scale per tensor or per row, b's per tensor or per column.
fn qlinear_matmul(env: &Env, node: &NodeProto) -> OpResult {
    let acc = integer_matmul(env, node, (0, 2), (3, 5))?;
    let r = acc.shape().len();
    let (ad, bd) = (input_shape(env, node, 0)?, input_shape(env, node, 3)?);
    let rows = (ad.len() >= 2).then(|| (r - 2, ad[ad.len() - 2]));
    let cols = (bd.len() >= 2).then(|| (r - 1, bd[bd.len() - 1]));
    let half = float_type(env, node, 1, "a_scale")?;
    let scales = [
        product_scale(&input(env, node, 1)?, "a_scale", r, rows)?,
        product_scale(&input(env, node, 4)?, "b_scale", r, cols)?,
        product_scale(&input(env, node, 6)?, "y_scale", r, None)?,
    ];
    let default = dtype_of(env, node, 0).unwrap_or(D::Uint8);
    one(requantize(env, node, &acc, scales, half, 7, default)?)
}

fn input_shape(env: &Env, node: &NodeProto, i: usize) -> Res<Vec<usize>> {
    super::input_dims(env, node, i)
}

/// The convolution of `(x - x_zp)` with `(w - w_zp)` plus an optional INT32 bias (input
/// `bias_at`), exactly (refused when it might not be).
fn integer_conv(
    env: &Env,
    node: &NodeProto,
    (ix, zx): (usize, usize),
    (iw, zw): (usize, usize),
    bias_at: Option<usize>,
) -> Res<Var> {
    let x = int_in(env, node, ix, "x", BYTES)?;
    let w = int_in(env, node, iw, "w", BYTES)?;
    let xz = opt_zp(env, node, zx, "x_zero_point", x.ty)?;
    let wz = opt_zp(env, node, zw, "w_zero_point", w.ty)?;
    let (xd, wd) = (x.var.shape().to_vec(), w.var.shape().to_vec());
    let mo = *wd.first().ok_or("w is a scalar")?;
    let x_zp = match &xz {
        Some(z) if z.var.shape().iter().product::<usize>() == 1 => {
            Some(m(z.var.reshape(&vec![1; xd.len()]))?)
        }
        Some(z) => {
            return Err(format!(
                "x_zero_point {:?} must hold one element",
                z.var.shape()
            ))
        }
        None => None,
    };
    let w_zp = wz
        .as_ref()
        .map(|z| product_scale(&z.var, "w_zero_point", wd.len(), Some((0, mo))))
        .transpose()?;
    let x2 = centre(&x, x_zp, "x")?;
    let w2 = centre(&w, w_zp, "w")?;
    let per = wd.iter().product::<usize>() / mo.max(1);
    let filter = |i: usize| i / per.max(1);
    let mut bound = max_dev(x.span(), xz.as_ref()) * max_group_sum(&w, wz.as_ref(), mo, filter);
    let mut y = conv_of(node, &x2, &w2)?;
    if let Some(bi) = bias_at.filter(|&i| present(node, i)) {
        let b = int_in(env, node, bi, "B", &[D::Int32])?;
        if b.var.shape() != [mo] {
            return Err(format!(
                "bias B {:?} must be ({mo}) for filters {wd:?}",
                b.var.shape()
            ));
        }
        // The bias's values bound the sums with it; a graph value's are not known.
        if b.host.is_none() {
            return Err(format!(
                "bias '{}' must be known at import (its values bound the integer sums)",
                node.input[bi]
            ));
        }
        let (lo, hi) = b.span();
        bound += lo.abs().max(hi.abs());
        let mut d = vec![1; y.shape().len()];
        d[1] = mo;
        y = m(y.add(&m(b.var.reshape(&d))?))?;
    }
    check_exact(&format!("x {xd:?} ⊛ w {wd:?}"), bound)?;
    Ok(y)
}

/// ConvInteger: the exact INT32 convolution of the centred operands.
fn conv_integer(env: &Env, node: &NodeProto) -> OpResult {
    one(integer_conv(env, node, (0, 2), (1, 3), None)?)
}

/// QLinearConv: the integer convolution plus bias, requantized; w's scale per tensor or
/// per output channel.
fn qlinear_conv(env: &Env, node: &NodeProto) -> OpResult {
    let acc = integer_conv(env, node, (0, 2), (3, 5), Some(8))?;
    let r = acc.shape().len();
    let mo = acc.shape()[1];
    let half = float_type(env, node, 1, "x_scale")?;
    let scales = [
        product_scale(&input(env, node, 1)?, "x_scale", r, None)?,
        product_scale(&input(env, node, 4)?, "w_scale", r, Some((1, mo)))?,
        product_scale(&input(env, node, 6)?, "y_scale", r, None)?,
    ];
    let default = dtype_of(env, node, 0).unwrap_or(D::Uint8);
    one(requantize(env, node, &acc, scales, half, 7, default)?)
}
