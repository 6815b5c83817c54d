//! f16 tensors: casts between f32 and f16, element-wise ops and matmul on f16 storage.
//!
//! Shape rules are the f32 ops' (broadcasting, NumPy matmul). Arithmetic: each value is
//! widened to f32, computed, and rounded once to f16 — for + − × ÷ that is exactly IEEE half
//! arithmetic (f32's 24 significand bits ≥ 2·11 + 2, so the double rounding is harmless);
//! matmul accumulates in f32 and rounds the result once, as tensor cores do.
//! CPU reference: values widened to f64, computed, rounded to f16 (the `half` crate, round to
//! nearest even). Tests allow one f16 ulp (the GPU's transcendental functions and its
//! f32 accumulation may land on the other side of a rounding boundary).
//! GPU: `shaders/elementwise_f16.wgsl` (appended to elementwise.wgsl, so both share the op
//! functions) and `shaders/matmul_f16.wgsl`; both need `wgpu::Features::SHADER_F16`
//! (lavapipe and most real GPUs have it); without it an f16 op is an [`Error::DType`].
//! The graph, autodiff and reductions stay f32: cast at the edges.

use std::sync::{Arc, OnceLock};

use half::f16;

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::ops::elementwise::{binary_reference, merge_dims, BinaryOp, UnaryOp};
use crate::ops::matmul_plan::{matmul_forward, MatmulPlan};
use crate::ops::{gpu_output, grid_1d, pack_dims};
use crate::shape::{broadcast_shapes, broadcast_strides, check_rank};
use crate::tensor::Tensor;
use crate::DType;

/// The f16 element-wise entry points, as a file (validated as part of the composed module).
pub(crate) const ELEMENTWISE_F16_PART: &str = include_str!("../../shaders/elementwise_f16.wgsl");

/// The f16 matmul module.
pub(crate) const MATMUL_F16: Kernel = Kernel {
    name: "matmul_f16",
    source: include_str!("../../shaders/matmul_f16.wgsl"),
};

/// `enable f16;` + elementwise.wgsl + elementwise_f16.wgsl, built once.
pub(crate) fn elementwise_f16_source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        format!(
            "enable f16;\n{}\n{}",
            crate::ops::elementwise::SHADER.source,
            ELEMENTWISE_F16_PART
        )
    })
}

fn elementwise_f16() -> Kernel {
    Kernel {
        name: "elementwise_f16",
        source: elementwise_f16_source(),
    }
}

/// Largest K the f16 matmul kernel runs: 2·K loop steps per invocation, within
/// [`crate::gpu::LOOP_BUDGET`] x 2 (lavapipe stops an invocation after 65,535). A longer K
/// runs as an f32 product of the widened operands, split into K chunks like every f32
/// product: the same arithmetic (a product of two halves is exact in f32, sums in f32, one
/// rounding to f16).
const MAX_K: usize = crate::gpu::LOOP_BUDGET;

/// The GPU context, if it can run f16 kernels.
fn f16_ctx<'a>(t: &'a Tensor, op: &'static str) -> Result<Option<&'a Arc<GpuContext>>> {
    match &t.device().inner {
        DeviceInner::Cpu => Ok(None),
        DeviceInner::Gpu(ctx) if ctx.summary.shader_f16 => Ok(Some(ctx)),
        DeviceInner::Gpu(_) => Err(Error::DType {
            op,
            got: "f16".into(),
            expected: "f32 (this adapter has no SHADER_F16)".into(),
        }),
    }
}

/// Workgroups for kernels where each invocation owns a pair of elements.
fn pairs_grid(ctx: &GpuContext, n: usize) -> [u32; 3] {
    grid_1d(ctx, n.div_ceil(2))
}

/// The f16 values of a CPU tensor, widened to f64.
fn host_f16(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_vec::<f16>()?.iter().map(|v| v.to_f64()).collect())
}

/// A CPU f16 tensor from values computed in f64 (rounded once).
fn cpu_f16(t: &Tensor, shape: &[usize], values: Vec<f64>) -> Result<Tensor> {
    let h: Vec<f16> = values.into_iter().map(f16::from_f64).collect();
    Tensor::from_slice(t.device(), &h, shape)
}

fn expect_f16(t: &Tensor, op: &'static str) -> Result<()> {
    if t.dtype() != DType::F16 {
        return Err(Error::DType {
            op,
            got: t.dtype().to_string(),
            expected: "f16 (both operands)".into(),
        });
    }
    Ok(())
}

impl Tensor {
    /// The same values as `dtype`: f32 ↔ f16 (f32 → f16 rounds to nearest even, overflow to
    /// ±inf); the same dtype is a cheap clone. Other pairs are an [`Error::DType`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let op = "to_dtype";
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let (entry, out_dtype) = match (self.dtype(), dtype) {
            (DType::F32, DType::F16) => ("cast_f32_to_f16", DType::F16),
            (DType::F16, DType::F32) => ("cast_f16_to_f32", DType::F32),
            (from, to) => {
                return Err(Error::DType {
                    op,
                    got: format!("{from} -> {to}"),
                    expected: "f32 -> f16 or f16 -> f32".into(),
                })
            }
        };
        let n = self.numel();
        let Some(ctx) = f16_ctx(self, op)? else {
            return match dtype {
                DType::F16 => {
                    let h: Vec<f16> = self.to_vec_f64()?.into_iter().map(f16::from_f64).collect();
                    Tensor::from_slice(self.device(), &h, self.shape())
                }
                _ => Tensor::from_f64(self.device(), &host_f16(self)?, self.shape()),
            };
        };
        let out = gpu_output(ctx, self.device(), op, self.shape(), out_dtype)?;
        if n == 0 {
            return Ok(out);
        }
        let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
            unreachable!("GPU device holds GPU tensors")
        };
        let (x, o) = ((x.0, x.1.div_ceil(4) * 4), (o.0, o.1.div_ceil(4) * 4));
        let grid = if out_dtype == DType::F16 {
            pairs_grid(ctx, n)
        } else {
            grid_1d(ctx, n)
        };
        ctx.dispatch(&elementwise_f16(), entry, &[], &[n as u32], &[x, o], grid)?;
        Ok(out)
    }
}

// Element-wise ops on f16 tensors: elementwise.rs's `Tensor::unary`, `binary` and
// `binary_scalar` send f16 operands here (as methods, so that elementwise.rs does not import
// this file, which imports its op enums and reference).
impl Tensor {
    /// `op(x)` on an f16 tensor ([`Tensor::unary`] sends f16 tensors here).
    pub(crate) fn unary_f16(&self, op: UnaryOp) -> Result<Tensor> {
        let x = self;
        let name = op.name();
        let Some(ctx) = f16_ctx(x, name)? else {
            let v = host_f16(x)?.into_iter().map(|v| op.eval(v)).collect();
            return cpu_f16(x, x.shape(), v);
        };
        let params = [x.numel() as u32];
        pairs_op(
            ctx,
            name,
            x.shape(),
            ("unary_f16", &[("OP", op.code() as f64)], 2),
            &params,
            &[x],
        )
    }

    /// `x (op) s`, or `s (op) x` with `scalar_lhs`, on an f16 tensor (`s` is f32;
    /// [`Tensor::binary_scalar`] sends f16 tensors here).
    pub(crate) fn binary_scalar_f16(
        &self,
        op: BinaryOp,
        s: f32,
        scalar_lhs: bool,
    ) -> Result<Tensor> {
        let x = self;
        let name = op.name();
        let Some(ctx) = f16_ctx(x, name)? else {
            let s = s as f64;
            let v = host_f16(x)?
                .into_iter()
                .map(|v| {
                    if scalar_lhs {
                        op.eval(s, v)
                    } else {
                        op.eval(v, s)
                    }
                })
                .collect();
            return cpu_f16(x, x.shape(), v);
        };
        let params = [x.numel() as u32, 0, s.to_bits(), scalar_lhs as u32];
        pairs_op(
            ctx,
            name,
            x.shape(),
            ("scalar_f16", &[("OP", op.code() as f64)], 2),
            &params,
            &[x],
        )
    }

    /// `a (op) b` with NumPy broadcasting on f16 tensors ([`Tensor::binary`] sends them here).
    pub(crate) fn binary_f16(&self, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
        let a = self;
        let name = op.name();
        expect_f16(a, name)?;
        expect_f16(b, name)?;
        a.expect_same_device(name, b)?;
        let out_shape = broadcast_shapes(name, a.shape(), b.shape())?;
        check_rank(name, &out_shape)?;
        let (sa, sb) = (
            broadcast_strides(a.shape(), &out_shape),
            broadcast_strides(b.shape(), &out_shape),
        );
        let n: usize = out_shape.iter().product();
        let Some(ctx) = f16_ctx(a, name)? else {
            let (av, bv) = (host_f16(a)?, host_f16(b)?);
            let v = binary_reference(op, &av, &bv, &out_shape, (&sa, &sb));
            return cpu_f16(a, &out_shape, v);
        };
        // Fewest dims first (the same merge as the f32 op): rank <= 3 runs the stepping entry.
        let (dims, ma, mb) = merge_dims(&out_shape, &sa, &sb);
        let fast = dims.len() <= 3;
        let (dims, ma, mb) = if fast {
            crate::ops::elementwise::pad_rank3(&dims, &ma, &mb)
        } else {
            (dims, ma, mb)
        };
        let mut params = vec![n as u32, dims.len() as u32, 0, 0];
        params.extend(pack_dims(&dims));
        params.extend(pack_dims(&ma));
        params.extend(pack_dims(&mb));
        let op_code = ("OP", op.code() as f64);
        if !fast {
            let job = ("binary_f16", &[op_code][..], 2);
            return pairs_op(ctx, name, &out_shape, job, &params, &[a, b]);
        }
        let (run, cross_rows) = run_length(dims[2]);
        let constants = [
            op_code,
            ("RUN", run as f64),
            ("CROSS_ROWS", cross_rows as u8 as f64),
        ];
        pairs_op(
            ctx,
            name,
            &out_shape,
            ("binary_broadcast3_f16", &constants, run),
            &params,
            &[a, b],
        )
    }
}

/// Output elements per invocation of `binary_broadcast3_f16` (even: whole pairs) and
/// whether a run may cross rows: the largest of 8, 4, 2 dividing the innermost dim `inner`
/// (runs stay in their row, as in the f32 entry, where 8 takes most of the gain of
/// stepping on lavapipe); an odd row runs 8 with a carry into the next row, which costs
/// ~1.8x the straight loop on lavapipe but still ~10x less than per-element indexing.
fn run_length(inner: usize) -> (usize, bool) {
    match [8, 4, 2].into_iter().find(|&r| inner % r == 0) {
        Some(r) => (r, false),
        None => (8, true),
    }
}

/// Runs an element-wise f16 entry (`entry`, with its override `constants`) over `inputs`
/// into a new f16 tensor of `shape`, `per_invocation` (even) elements per invocation.
fn pairs_op(
    ctx: &Arc<GpuContext>,
    name: &'static str,
    shape: &[usize],
    (entry, constants, per_invocation): (&str, &[(&str, f64)], usize),
    params: &[u32],
    inputs: &[&Tensor],
) -> Result<Tensor> {
    let out = gpu_output(ctx, inputs[0].device(), name, shape, DType::F16)?;
    if out.numel() > 0 {
        let mut bufs: Vec<_> = inputs.iter().map(|t| padded(t)).collect();
        bufs.push(padded(&out));
        let grid = grid_1d(ctx, out.numel().div_ceil(per_invocation));
        ctx.dispatch(&elementwise_f16(), entry, constants, params, &bufs, grid)?;
    }
    Ok(out)
}

/// `op(A)·op(B)` on f16 tensors: f32 accumulation, the result rounded once to f16.
pub(crate) fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let op = "matmul";
    expect_f16(a, op)?;
    expect_f16(b, op)?;
    a.expect_same_device(op, b)?;
    let plan = MatmulPlan::new(a.shape(), b.shape(), ta, tb)?;
    let Some(ctx) = f16_ctx(a, op)? else {
        let v = matmul_forward(&host_f16(a)?, &host_f16(b)?, &plan);
        return cpu_f16(a, &plan.out_shape, v);
    };
    if plan.k > MAX_K {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        return wide(a)?.matmul_t(&wide(b)?, ta, tb)?.to_dtype(DType::F16);
    }
    if plan.k == 0 {
        return Tensor::zeros(a.device(), &plan.out_shape)?.to_dtype(DType::F16);
    }
    let out = gpu_output(ctx, a.device(), op, &plan.out_shape, DType::F16)?;
    let total = out.numel();
    if total == 0 {
        return Ok(out);
    }
    let mut params = vec![
        plan.m as u32,
        plan.n as u32,
        plan.k as u32,
        total as u32,
        plan.ta as u32,
        plan.tb as u32,
        plan.batch_dims.len() as u32,
        0,
    ];
    params.extend(pack_dims(&plan.batch_dims));
    params.extend(pack_dims(&plan.a_strides));
    params.extend(pack_dims(&plan.b_strides));
    let bufs = [padded(a), padded(b), padded(&out)];
    ctx.dispatch(
        &MATMUL_F16,
        "matmul_f16",
        &[],
        &params,
        &bufs,
        pairs_grid(ctx, total),
    )?;
    Ok(out)
}

/// A GPU tensor's buffer bound over its bytes rounded up to whole 32-bit words (f16 tensors
/// of odd length; pooled buffers always have that room).
fn padded(t: &Tensor) -> (&wgpu::Buffer, u64) {
    let Some((buf, bytes)) = t.gpu_arg() else {
        unreachable!("GPU device holds GPU tensors")
    };
    (buf, bytes.div_ceil(4) * 4)
}
