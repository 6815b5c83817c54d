//! Element-wise ops: unary maps, binary ops with NumPy broadcasting, scalar
//! operands, and comparisons giving 0/1 masks.
//!
//! Shape rule: unary keeps the shape; binary gives the broadcast of both shapes.
//! CPU reference: each op evaluated in f64 and rounded to f32.
//! GPU: `shaders/elementwise.wgsl`, one pipeline per (entry, op) via an override constant.
//! Tensors past one storage binding run as several dispatches over aligned windows bound
//! at offsets (see `crate::ops::chunk`); a tensor that fits is one window, one dispatch.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{BufArg, BufAt, GpuContext, Kernel};
use crate::ops::chunk::{broadcast_span, elementwise_window, fits, window, windows};
use crate::ops::{gpu_output_big, grid_1d, pack_dims};
use crate::shape::{broadcast_shapes, broadcast_strides, check_rank, contiguous_strides};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "elementwise",
    source: include_str!("../../shaders/elementwise.wgsl"),
};

/// Element-wise functions of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// Natural logarithm, `ln x`.
    Log,
    /// `√x`.
    Sqrt,
    /// `x²`.
    Square,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// GELU with the exact erf form: `0.5·x·(1 + erf(x/√2))`.
    Gelu,
    /// The derivative of GELU, `Φ(x) + x·φ(x)` (used by its gradient rule).
    GeluGrad,
    /// The error function, `erf x = 2/√π ∫₀ˣ e^{-t²} dt`.
    Erf,
    /// `⌊x⌋`, the largest integer not above `x`.
    Floor,
    /// `⌈x⌉`, the smallest integer not below `x`.
    Ceil,
    /// `ln(1 + x)`, accurate for small `x` (softplus without cancellation).
    Log1p,
    /// The nearest integer, halves to even (ONNX Round, NumPy `round`).
    Round,
    /// `sin x` (exact argument reduction at every magnitude).
    Sin,
    /// `cos x`.
    Cos,
    /// `tan x`.
    Tan,
    /// `arcsin x`, NaN outside [-1, 1].
    Asin,
    /// `arccos x`, NaN outside [-1, 1].
    Acos,
    /// `arctan x`.
    Atan,
    /// `sinh x`.
    Sinh,
    /// `cosh x`.
    Cosh,
    /// `arsinh x`.
    Asinh,
    /// `arcosh x`, NaN below 1.
    Acosh,
    /// `artanh x`, ±inf at ±1, NaN outside [-1, 1].
    Atanh,
}

/// Element-wise functions of two arguments (comparisons give 1.0 or 0.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)`.
    Maximum,
    /// `min(a, b)`.
    Minimum,
    /// `a^b`.
    Pow,
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a` where `b != 0` (NaN counts as non-zero), else `+0`: a selection mask that, unlike
    /// `a·b`, leaves no `±inf·0 = NaN` behind. `Where(c, a, b)` is
    /// `KeepWhere(a, c) + KeepWhereNot(b, c)`, exact because one term is `+0`.
    KeepWhere,
    /// `a` where `b == 0`, else `+0`: the complement of [`BinaryOp::KeepWhere`].
    KeepWhereNot,
}

impl UnaryOp {
    /// Every unary op, for tests and `wgrad check`.
    pub const ALL: [UnaryOp; 27] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Relu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Gelu,
        UnaryOp::GeluGrad,
        UnaryOp::Erf,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Log1p,
        UnaryOp::Round,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Tan,
        UnaryOp::Asin,
        UnaryOp::Acos,
        UnaryOp::Atan,
        UnaryOp::Sinh,
        UnaryOp::Cosh,
        UnaryOp::Asinh,
        UnaryOp::Acosh,
        UnaryOp::Atanh,
    ];

    /// The op's name (as in the WGSL switch comments).
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Relu => "relu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluGrad => "gelu_grad",
            UnaryOp::Erf => "erf",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Round => "round",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Tan => "tan",
            UnaryOp::Asin => "asin",
            UnaryOp::Acos => "acos",
            UnaryOp::Atan => "atan",
            UnaryOp::Sinh => "sinh",
            UnaryOp::Cosh => "cosh",
            UnaryOp::Asinh => "asinh",
            UnaryOp::Acosh => "acosh",
            UnaryOp::Atanh => "atanh",
        }
    }

    /// The value of `OP` in elementwise.wgsl.
    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    /// CPU reference, in f64.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            UnaryOp::GeluGrad => {
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)) + x * pdf
            }
            UnaryOp::Erf => libm::erf(x),
            UnaryOp::Floor => x.floor(),
            UnaryOp::Ceil => x.ceil(),
            UnaryOp::Log1p => x.ln_1p(),
            UnaryOp::Round => x.round_ties_even(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Tan => x.tan(),
            UnaryOp::Asin => x.asin(),
            UnaryOp::Acos => x.acos(),
            UnaryOp::Atan => x.atan(),
            UnaryOp::Sinh => x.sinh(),
            UnaryOp::Cosh => x.cosh(),
            UnaryOp::Asinh => x.asinh(),
            UnaryOp::Acosh => x.acosh(),
            UnaryOp::Atanh => x.atanh(),
        }
    }
}

impl BinaryOp {
    /// Every binary op, for tests and `wgrad check`.
    pub const ALL: [BinaryOp; 15] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::KeepWhere,
        BinaryOp::KeepWhereNot,
    ];

    /// The op's name.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Pow => "pow",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::KeepWhere => "keep_where",
            BinaryOp::KeepWhereNot => "keep_where_not",
        }
    }

    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    /// CPU reference, in f64 (NaN propagates through maximum/minimum like NumPy).
    pub fn eval(self, x: f64, y: f64) -> f64 {
        let b = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
            BinaryOp::Maximum => {
                if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.max(y)
                }
            }
            BinaryOp::Minimum => {
                if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else {
                    x.min(y)
                }
            }
            BinaryOp::Pow => x.powf(y),
            BinaryOp::Eq => b(x == y),
            BinaryOp::Ne => b(x != y),
            BinaryOp::Lt => b(x < y),
            BinaryOp::Le => b(x <= y),
            BinaryOp::Gt => b(x > y),
            BinaryOp::Ge => b(x >= y),
            // `y != 0.0` is true for NaN (IEEE), as in the kernel
            BinaryOp::KeepWhere => {
                if y != 0.0 {
                    x
                } else {
                    0.0
                }
            }
            BinaryOp::KeepWhereNot => {
                if y == 0.0 {
                    x
                } else {
                    0.0
                }
            }
        }
    }
}

/// CPU reference of `a (op) b` over the broadcast shape `out_shape`, with each
/// operand's strides in that shape (0 where it is stretched), in f64.
pub(crate) fn binary_reference(
    op: BinaryOp,
    a: &[f64],
    b: &[f64],
    out_shape: &[usize],
    (sa, sb): (&[usize], &[usize]),
) -> Vec<f64> {
    let ostr = contiguous_strides(out_shape);
    let n: usize = out_shape.iter().product();
    (0..n)
        .map(|i| {
            let (mut ia, mut ib) = (0, 0);
            for d in 0..out_shape.len() {
                let c = (i / ostr[d]) % out_shape[d];
                ia += c * sa[d];
                ib += c * sb[d];
            }
            op.eval(a[ia], b[ib])
        })
        .collect()
}

impl Tensor {
    /// Applies a unary op to every element.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        if self.dtype() == DType::F16 {
            return self.unary_f16(op);
        }
        let name = op.name();
        self.expect_f32(name)?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let out = x.iter().map(|&v| op.eval(v)).collect();
                Ok(Tensor::cpu_from_f64(self.device(), self.shape(), out))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output_big(ctx, self.device(), name, self.shape(), DType::F32)?;
                let n = self.numel();
                if n == 0 {
                    return Ok(out);
                }
                let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                for (s, len) in windows(n, elementwise_window(ctx)) {
                    ctx.dispatch_at(
                        &SHADER,
                        "unary_forward",
                        &[("OP", op.code() as f64)],
                        &[len as u32],
                        &[window(x, s, len), window(o, s, len)],
                        grid_1d(ctx, len),
                    )?;
                }
                Ok(out)
            }
        }
    }

    /// Applies a binary op with NumPy broadcasting.
    pub fn binary(&self, other: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if self.dtype() == DType::F16 || other.dtype() == DType::F16 {
            return self.binary_f16(other, op);
        }
        let name = op.name();
        self.expect_f32(name)?;
        other.expect_f32(name)?;
        self.expect_same_device(name, other)?;
        let out_shape = broadcast_shapes(name, self.shape(), other.shape())?;
        check_rank(name, &out_shape)?;
        let sa = broadcast_strides(self.shape(), &out_shape);
        let sb = broadcast_strides(other.shape(), &out_shape);
        let n: usize = out_shape.iter().product();
        match &self.device().inner {
            DeviceInner::Cpu => {
                let (a, b) = (self.host_f64(), other.host_f64());
                let out = binary_reference(op, &a, &b, &out_shape, (&sa, &sb));
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output_big(ctx, self.device(), name, &out_shape, DType::F32)?;
                if n == 0 {
                    return Ok(out);
                }
                let (Some(a), Some(b), Some(o)) = (self.gpu_arg(), other.gpu_arg(), out.gpu_arg())
                else {
                    unreachable!("GPU device holds GPU tensors")
                };
                let same =
                    self.shape() == out_shape.as_slice() && other.shape() == out_shape.as_slice();
                let constants = [("OP", op.code() as f64)];
                if same {
                    for (s, len) in windows(n, elementwise_window(ctx)) {
                        let bufs = [window(a, s, len), window(b, s, len), window(o, s, len)];
                        let params = [len as u32, 0, 0, 0];
                        let groups = grid_1d(ctx, len);
                        ctx.dispatch_at(
                            &SHADER,
                            "binary_forward",
                            &constants,
                            &params,
                            &bufs,
                            groups,
                        )?;
                    }
                    return Ok(out);
                }
                let operands = [(a, &sa[..]), (b, &sb[..])];
                let plan = broadcast_windows(ctx, name, &out_shape, operands)?;
                // The merged shape maps every output element to the same a and b
                // elements, so windows and spans are unchanged.
                let (dims, ma, mb) = merge_dims(&out_shape, &sa, &sb);
                let fast = dims.len() <= 3;
                let (dims, ma, mb) = if fast {
                    pad_rank3(&dims, &ma, &mb)
                } else {
                    (dims, ma, mb)
                };
                let run = if fast {
                    run_length(dims[2], plan.iter().map(|w| w.0))
                } else {
                    1
                };
                for (s, len, [wa, wb]) in plan {
                    let mut params = vec![len as u32, dims.len() as u32, 0, 0];
                    params.extend(pack_dims(&dims));
                    params.extend(pack_dims(&ma));
                    params.extend(pack_dims(&mb));
                    // offsets: first output index of the window, first index bound of a and b
                    params.extend([s as u32, (wa.1 / 4) as u32, (wb.1 / 4) as u32, 0]);
                    let bufs = [wa, wb, window(o, s, len)];
                    if fast {
                        ctx.dispatch_at(
                            &SHADER,
                            "binary_broadcast3_forward",
                            &[("OP", op.code() as f64), ("RUN", run as f64)],
                            &params,
                            &bufs,
                            grid_1d(ctx, len.div_ceil(run)),
                        )?;
                    } else {
                        ctx.dispatch_at(
                            &SHADER,
                            "binary_broadcast_forward",
                            &constants,
                            &params,
                            &bufs,
                            grid_1d(ctx, len),
                        )?;
                    }
                }
                Ok(out)
            }
        }
    }

    /// `self (op) s` for a scalar `s`; with `scalar_lhs`, `s (op) self`.
    pub fn binary_scalar(&self, op: BinaryOp, s: f32, scalar_lhs: bool) -> Result<Tensor> {
        if self.dtype() == DType::F16 {
            return self.binary_scalar_f16(op, s, scalar_lhs);
        }
        let name = op.name();
        self.expect_f32(name)?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let s = s as f64;
                let out = x
                    .iter()
                    .map(|&v| {
                        let (p, q) = if scalar_lhs { (s, v) } else { (v, s) };
                        op.eval(p, q)
                    })
                    .collect();
                Ok(Tensor::cpu_from_f64(self.device(), self.shape(), out))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output_big(ctx, self.device(), name, self.shape(), DType::F32)?;
                let n = self.numel();
                if n == 0 {
                    return Ok(out);
                }
                let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                for (at, len) in windows(n, elementwise_window(ctx)) {
                    let params = [len as u32, 0, s.to_bits(), scalar_lhs as u32];
                    ctx.dispatch_at(
                        &SHADER,
                        "scalar_forward",
                        &[("OP", op.code() as f64)],
                        &params,
                        &[window(x, at, len), window(o, at, len)],
                        grid_1d(ctx, len),
                    )?;
                }
                Ok(out)
            }
        }
    }
}

/// The broadcast of `dims` with operand strides `sa`, `sb` (0 = stretched) on the fewest
/// dims: size-1 dims dropped, and each dim folded into the one before it when both
/// operands step through the pair as one dim (outer stride = inner stride × inner size;
/// two 0 strides qualify). Element `i` of the result reads the same a and b elements
/// as element `i` of the original. An all-1 shape gives `[1]`.
pub(crate) fn merge_dims(
    dims: &[usize],
    sa: &[usize],
    sb: &[usize],
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut md, mut ma, mut mb): (Vec<usize>, Vec<usize>, Vec<usize>) = (vec![], vec![], vec![]);
    for d in (0..dims.len()).filter(|&d| dims[d] != 1) {
        match (md.last_mut(), ma.last_mut(), mb.last_mut()) {
            (Some(pd), Some(pa), Some(pb)) if *pa == sa[d] * dims[d] && *pb == sb[d] * dims[d] => {
                *pd *= dims[d];
                *pa = sa[d];
                *pb = sb[d];
            }
            _ => {
                md.push(dims[d]);
                ma.push(sa[d]);
                mb.push(sb[d]);
            }
        }
    }
    if md.is_empty() {
        return (vec![1], vec![0], vec![0]);
    }
    (md, ma, mb)
}

/// A shape of rank <= 3 padded with leading size-1 dims (stride 0) to rank 3.
pub(crate) fn pad_rank3(
    dims: &[usize],
    sa: &[usize],
    sb: &[usize],
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let pad = |v: &[usize], fill: usize| {
        let mut out = vec![fill; 3 - v.len()];
        out.extend_from_slice(v);
        out
    };
    (pad(dims, 1), pad(sa, 0), pad(sb, 0))
}

/// Output elements per invocation of `binary_broadcast3_forward`: the largest of 8, 4,
/// 2, 1 dividing the innermost dim (so a run stays in one row; the output size, a
/// multiple of it, then ends on a run boundary) and every window start. On lavapipe,
/// (4096, 1024) + (1024) takes 50 ms with runs of 1, 26 with 4, 19.5 with 8, 17.5 with
/// 16: 8 takes most of the gain while keeping 8x more invocations than 16 for GPUs
/// that need many threads in flight.
fn run_length(inner: usize, starts: impl Iterator<Item = usize> + Clone) -> usize {
    [8, 4, 2]
        .into_iter()
        .find(|&r| inner % r == 0 && starts.clone().all(|s| s % r == 0))
        .unwrap_or(1)
}

/// One dispatch of a broadcast binary op: its first output element, its length, and
/// the window of each operand — the whole operand when it fits one binding, else the
/// aligned span the output window reads. Windows start at `elementwise_window`-sized
/// steps, halved until every operand span fits (`Err(TooLarge)` if none does).
type BroadcastWindow<'a> = (usize, usize, [BufAt<'a>; 2]);

fn broadcast_windows<'a>(
    ctx: &GpuContext,
    op: &'static str,
    out_shape: &[usize],
    operands: [(BufArg<'a>, &[usize]); 2],
) -> Result<Vec<BroadcastWindow<'a>>> {
    let n: usize = out_shape.iter().product();
    let align = crate::ops::chunk::align_elems(ctx);
    let mut per = elementwise_window(ctx);
    'sizes: loop {
        let mut plan = Vec::new();
        for (s, len) in windows(n, per) {
            let mut w = [(operands[0].0 .0, 0, 0); 2];
            for (slot, ((buf, bytes), strides)) in w.iter_mut().zip(operands) {
                let numel = bytes as usize / 4;
                *slot = if numel == n {
                    window((buf, bytes), s, len) // same shape as the output
                } else if fits(ctx, numel) {
                    (buf, 0, bytes)
                } else {
                    let (lo, hi) = broadcast_span(out_shape, strides, s, s + len);
                    let lo = lo / align * align;
                    if !fits(ctx, hi + 1 - lo) {
                        if per <= align {
                            return Err(Error::TooLarge {
                                op,
                                shape: out_shape.to_vec(),
                                bytes: ((hi + 1 - lo) * 4) as u64,
                                limit: ctx.binding_limit(),
                                limit_name: "max_storage_buffer_binding_size (broadcast span)",
                            });
                        }
                        per = (per / 2 / align * align).max(align);
                        continue 'sizes;
                    }
                    window((buf, bytes), lo, hi + 1 - lo)
                };
            }
            plan.push((s, len, w));
        }
        return Ok(plan);
    }
}

macro_rules! unary_methods {
    ($($fn_name:ident => $op:ident, $doc:literal;)*) => {
        impl Tensor {
            $(
                #[doc = $doc]
                pub fn $fn_name(&self) -> Result<Tensor> {
                    self.unary(UnaryOp::$op)
                }
            )*
        }
    };
}

unary_methods! {
    neg => Neg, "`-x`";
    abs => Abs, "`|x|`";
    exp => Exp, "`e^x`";
    log => Log, "natural logarithm";
    sqrt => Sqrt, "square root";
    square => Square, "`x²`";
    relu => Relu, "`max(x, 0)`";
    sigmoid => Sigmoid, "`1 / (1 + e^-x)`";
    tanh => Tanh, "hyperbolic tangent";
    gelu => Gelu, "GELU, exact erf form";
    erf => Erf, "error function";
    floor => Floor, "`⌊x⌋`";
    ceil => Ceil, "`⌈x⌉`";
    log1p => Log1p, "`ln(1 + x)`, accurate for small `x`";
    round => Round, "nearest integer, halves to even";
}

macro_rules! binary_methods {
    ($($fn_name:ident, $scalar_fn:ident => $op:ident, $doc:literal;)*) => {
        impl Tensor {
            $(
                #[doc = $doc]
                #[doc = " (NumPy broadcasting)."]
                pub fn $fn_name(&self, other: &Tensor) -> Result<Tensor> {
                    self.binary(other, BinaryOp::$op)
                }

                #[doc = $doc]
                #[doc = " with a scalar right operand."]
                pub fn $scalar_fn(&self, s: f32) -> Result<Tensor> {
                    self.binary_scalar(BinaryOp::$op, s, false)
                }
            )*
        }
    };
}

binary_methods! {
    add, add_scalar => Add, "`a + b`";
    sub, sub_scalar => Sub, "`a - b`";
    mul, mul_scalar => Mul, "`a * b`";
    div, div_scalar => Div, "`a / b`";
    maximum, maximum_scalar => Maximum, "element-wise maximum";
    minimum, minimum_scalar => Minimum, "element-wise minimum";
    pow, pow_scalar => Pow, "`a ^ b`";
    eq, eq_scalar => Eq, "1.0 where `a == b`, else 0.0";
    ne, ne_scalar => Ne, "1.0 where `a != b`, else 0.0";
    lt, lt_scalar => Lt, "1.0 where `a < b`, else 0.0";
    le, le_scalar => Le, "1.0 where `a <= b`, else 0.0";
    gt, gt_scalar => Gt, "1.0 where `a > b`, else 0.0";
    ge, ge_scalar => Ge, "1.0 where `a >= b`, else 0.0";
    keep_where, keep_where_scalar => KeepWhere, "`a` where `b != 0`, else +0";
    keep_where_not, keep_where_not_scalar => KeepWhereNot, "`a` where `b == 0`, else +0";
}

#[cfg(test)]
mod tests {
    use super::merge_dims;
    use crate::shape::broadcast_strides;

    fn merged(a: &[usize], b: &[usize], out: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        merge_dims(out, &broadcast_strides(a, out), &broadcast_strides(b, out))
    }

    #[test]
    fn common_broadcasts_fold_to_few_dims() {
        // Per-channel bias: (N, C, H, W) + (1, C, 1, 1) -> (N, C, H·W).
        let m = merged(&[64, 16, 8, 8], &[1, 16, 1, 1], &[64, 16, 8, 8]);
        assert_eq!(m, (vec![64, 16, 64], vec![1024, 64, 1], vec![0, 1, 0]));
        // Row bias and a scalar-like operand.
        let m = merged(&[1024, 64], &[64], &[1024, 64]);
        assert_eq!(m, (vec![1024, 64], vec![64, 1], vec![0, 1]));
        let m = merged(&[2, 3, 4], &[1], &[2, 3, 4]);
        assert_eq!(m, (vec![24], vec![1], vec![0]));
        // All size 1, and a pattern that cannot fold.
        assert_eq!(merged(&[1, 1], &[1], &[1, 1]), (vec![1], vec![0], vec![0]));
        let m = merged(&[2, 1, 3], &[1, 4, 1], &[2, 4, 3]);
        assert_eq!(m, (vec![2, 4, 3], vec![3, 0, 1], vec![0, 1, 0]));
    }
}
