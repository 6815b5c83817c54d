//! Reductions along one axis (sum, mean, max, min, argmax) and over the whole tensor.
//!
//! Shape rule: the axis is removed, or kept with length 1 under `keepdim`; whole-tensor
//! reductions give a rank-0 tensor. An empty axis gives zeros for sum and
//! `Error::Empty` for mean, max, min and argmax. Max, min and argmax propagate NaN like
//! NumPy (argmax points at the first NaN); argmax keeps the first index on ties.
//! CPU reference: plain loops accumulating in f64.
//! GPU: `shaders/reduce.wgsl`. The input is viewed as (outer, r, inner); each pass reduces
//! parts of every line to partials, one output per invocation and no barriers, until r is 1.
//! Sums are Kahan-compensated inside a partial and summed as a tree across passes, so a
//! million-term sum stays within a few ulps of the exact one (in practice it is the
//! correctly rounded sum). Rows and columns that split into vec4s use vec4 kernels.
//! Measured on lavapipe (2 cores): sum of 4096x4096 along either axis ~9-10 GB/s.
//! A tensor past one storage binding is reduced in boxes of at most one binding, gathered
//! by copies; the per-box partials are stacked and reduced again (`reduce_big`).

use std::sync::Arc;

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::pool::GpuBuffer;
use crate::gpu::{GpuContext, Kernel};
use crate::ops::{gpu_output, grid_1d};
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "reduce",
    source: include_str!("../../shaders/reduce.wgsl"),
};

/// Reductions along an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Arithmetic mean of the elements.
    Mean,
    /// Largest element.
    Max,
    /// Smallest element.
    Min,
}

impl ReduceOp {
    /// Every reduction, for tests and `wgrad check`.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    /// The op's name (used in errors).
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
        }
    }

    /// The value of `OP` in reduce.wgsl (a mean is a sum divided on its last pass).
    fn code(self) -> u32 {
        match self {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// Invocations a pass aims for before it splits lines into more partials: enough to fill
/// a GPU; on lavapipe a few thousand long walks are cheapest.
pub(crate) const TARGET_OUTPUTS: usize = 4096;

/// Partials interleaved over one block of a contiguous line. On GPUs 8 neighbouring
/// invocations then read 8 neighbouring vec4s (coalesced). On CPU adapters such as lavapipe
/// every lane's loads are gathered one by one anyway, and long runs per lane measured
/// faster: row sums of 4096x4096 at 11.5 GB/s with 1-2 lanes, 7 GB/s with 8. Two keeps the
/// interleaved walk exercised by the tests that run there.
pub(crate) fn lanes_for(ctx: &GpuContext) -> usize {
    if ctx.info.device_type == wgpu::DeviceType::Cpu {
        2
    } else {
        8
    }
}

/// Contiguous lines at least this long are read interleaved.
const INTERLEAVE_MIN: usize = 256;

/// Fewest elements one interleaved lane reads in a pass.
const MIN_PER_LANE: usize = 32;

/// Shortest contiguous chunk: every pass shrinks the axis at least this much.
const MIN_CHUNK: usize = 64;

/// Most elements (vec4s) one invocation walks in a pass. Mesa 22.3's lavapipe ends any
/// invocation after 65535 loop iterations in total (gallivm's loop limiter), silently
/// leaving results unwritten. A kernel may walk its elements twice (a sum again plainly
/// when Kahan's correction is NaN; softmax's statistics, then its outputs), so a walk is
/// half the loop budget.
pub(crate) const MAX_WALK: usize = crate::gpu::LOOP_BUDGET / 2;

/// Longest strided walk when inner > 1: each step lands on another memory page, and a
/// few hundred pages stay in the TLB while the neighbouring columns reuse them.
const COL_BLOCK: usize = 256;

/// Reductions of at most this many elements (vec4 units) with lines of at most
/// [`COL_BLOCK`] take one pass, an invocation per line: a second pass would cost a
/// dispatch (~0.1 ms on lavapipe) to save less than that. The bias gradients of a small
/// MLP (sums over a batch of 256) are such reductions.
const ONE_PASS: usize = 1 << 15;

/// Whether `lines` lines of `r` elements (or vec4 units) reduce in one pass.
fn one_pass(lines: usize, r: usize) -> bool {
    lines * r <= ONE_PASS && r <= COL_BLOCK
}

/// How one pass cuts each line of `r` elements: into blocks of `block` elements, each
/// read by `lanes` interleaved partials; `parts` partials per line in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pass {
    pub lanes: usize,
    pub block: usize,
    pub parts: usize,
}

/// The pass for `lines` lines of `r` elements, contiguous or strided (inner > 1), aiming
/// for at least `target` partials in all; contiguous lines interleave `lanes` (a power of
/// two) partials per block.
pub(crate) fn plan_pass(
    lines: usize,
    r: usize,
    strided: bool,
    target: usize,
    lanes: usize,
) -> Pass {
    if one_pass(lines, r) {
        return Pass {
            lanes: 1,
            block: r.max(1),
            parts: 1,
        };
    }
    if !strided && r >= INTERLEAVE_MIN {
        let wanted = target.div_ceil(lines * lanes);
        let most = r / (lanes * MIN_PER_LANE);
        let least = r.div_ceil(lanes * MAX_WALK);
        let block = r
            .div_ceil(wanted.min(most).max(least))
            .next_multiple_of(lanes);
        return Pass {
            lanes,
            block,
            parts: r.div_ceil(block) * lanes,
        };
    }
    let mut block = if lines >= target || r <= MIN_CHUNK || !strided {
        r.max(1)
    } else {
        r.div_ceil(target.div_ceil(lines)).max(MIN_CHUNK)
    };
    if strided {
        block = block.min(COL_BLOCK);
    }
    Pass {
        lanes: 1,
        block,
        parts: r.div_ceil(block).max(1),
    }
}

/// One pass of a sum/mean/max/min over (outer, r, inner): the entry point, the partials
/// per line, the invocations and the params words. Rows and columns that split into
/// vec4s take the vec4 kernels, which read four times the data per (gathered) load,
/// unless the reduction is small enough for one pass (see [`ONE_PASS`]): those all take
/// `reduce_forward`, so a training step's small bias-gradient sums share one pipeline (on
/// lavapipe each pipeline costs 30-60 ms of LLVM time at its first dispatch, more than
/// the vec4 loads save on 2^15 elements).
fn reduce_pass(
    outer: usize,
    r: usize,
    inner: usize,
    lanes: usize,
) -> (&'static str, usize, usize, [u32; 10]) {
    let (entry, r_units, inner_units) = if one_pass(outer * inner, r) {
        ("reduce_forward", r, inner)
    } else if inner == 1 && r % 4 == 0 && r >= 8 {
        ("reduce_rows_vec4", r / 4, 1)
    } else if inner % 4 == 0 {
        ("reduce_cols_vec4", r, inner / 4)
    } else {
        ("reduce_forward", r, inner)
    };
    let lines = outer * inner_units;
    let p = plan_pass(lines, r_units, inner > 1, TARGET_OUTPUTS, lanes);
    let n = lines * p.parts;
    let params = pass_words(outer, r_units, inner_units, p, n);
    (entry, p.parts, n, params)
}

const DIVISOR_WORD: usize = 8;

/// The params words of reduce.wgsl (the divisor, at `DIVISOR_WORD`, starts at 1).
fn pass_words(outer: usize, r: usize, inner: usize, p: Pass, n: usize) -> [u32; 10] {
    [
        outer as u32,
        r as u32,
        inner as u32,
        p.lanes as u32,
        p.lanes.trailing_zeros(),
        p.block as u32,
        p.parts as u32,
        n as u32,
        1.0f32.to_bits(), // divisor: 1 except on a mean's last pass
        1.0f32.to_bits(), // one
    ]
}

/// (outer, r, inner) of `shape` around `axis`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// The output shape of a reduction of `shape` along `axis`.
fn reduced_shape(shape: &[usize], axis: usize, keepdim: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if keepdim {
        s[axis] = 1;
    } else {
        s.remove(axis);
    }
    s
}

/// CPU reference of one reduction over (outer, r, inner), in f64.
fn reduce_reference(x: &[f64], (outer, r, inner): (usize, usize, usize), op: ReduceOp) -> Vec<f64> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let line = (0..r).map(|k| x[(o * r + k) * inner + j]);
            // Sums start from +0.0, as the GPU's accumulators do: an empty sum is +0.0
            // (`Iterator::sum` starts from -0.0 and would give -0.0).
            let v = match op {
                ReduceOp::Sum => line.fold(0.0, |a, b| a + b),
                ReduceOp::Mean => line.fold(0.0, |a, b| a + b) / r as f64,
                ReduceOp::Max | ReduceOp::Min => {
                    let mut acc = if op == ReduceOp::Max {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    };
                    for v in line {
                        if v.is_nan() {
                            acc = f64::NAN;
                            break;
                        }
                        acc = if op == ReduceOp::Max {
                            acc.max(v)
                        } else {
                            acc.min(v)
                        };
                    }
                    acc
                }
            };
            out.push(v);
        }
    }
    out
}

/// CPU reference of argmax over (outer, r, inner): first NaN, else first maximum.
fn argmax_reference(x: &[f64], (outer, r, inner): (usize, usize, usize)) -> Vec<i32> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for j in 0..inner {
            let at = |k: usize| x[(o * r + k) * inner + j];
            let mut best = 0;
            for k in 0..r {
                if at(k).is_nan() {
                    best = k;
                    break;
                }
                if at(k) > at(best) {
                    best = k;
                }
            }
            out.push(best as i32);
        }
    }
    out
}

/// Records the passes of one reduction on the GPU, writing the final pass into `out`.
fn reduce_gpu(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    (outer, r_total, inner): (usize, usize, usize),
    op: ReduceOp,
    out: &Tensor,
) -> Result<()> {
    let (Some(first), Some(dst)) = (x.gpu_arg(), out.gpu_arg()) else {
        unreachable!("GPU device holds GPU tensors")
    };
    let constants = [("OP", op.code() as f64)];
    let mut r = r_total;
    // Partials of earlier passes (outer, r, inner); the first pass reads the input itself.
    // They go back to the pool when dropped, work still pending: every later use of a
    // pooled buffer (a dispatch or an upload) is recorded after these passes.
    let mut temps: Vec<GpuBuffer> = Vec::new();
    // A mean is a sum whose last pass divides by the axis length.
    let last_divisor = if op == ReduceOp::Mean {
        r_total as f32
    } else {
        1.0
    };
    loop {
        let (entry, parts, n, mut params) = reduce_pass(outer, r, inner, lanes_for(ctx));
        let src = temps
            .last()
            .map(|b| (b.raw(), (outer * r * inner * 4) as u64))
            .unwrap_or(first);
        let groups = grid_1d(ctx, n);
        if parts == 1 {
            params[DIVISOR_WORD] = last_divisor.to_bits();
            ctx.dispatch(&SHADER, entry, &constants, &params, &[src, dst], groups)?;
            return Ok(());
        }
        let bytes = (outer * parts * inner * 4) as u64;
        let next = ctx.alloc(bytes);
        ctx.dispatch(
            &SHADER,
            entry,
            &constants,
            &params,
            &[src, (next.raw(), bytes)],
            groups,
        )?;
        temps.push(next);
        r = parts;
    }
}

/// Records the passes of argmax on the GPU, writing the final indices into `out` (i32).
/// A reduction of `x`, viewed as (outer, r, inner), that is too large for one binding.
/// Boxes of (outer, r, inner) of at most one binding — whole inner rows when one fits,
/// then as many rows, then as many slabs as fit — are gathered by copies and reduced
/// over r to (boxed outer, boxed inner) partials. The partials of the boxes along r
/// are stacked (boxes along r, outer·inner) and reduced over their first axis; a mean
/// sums throughout and divides once by r at the end (as the one-binding kernels do).
fn reduce_big(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    (outer, r, inner): (usize, usize, usize),
    op: ReduceOp,
    out_shape: &[usize],
) -> Result<Tensor> {
    use crate::ops::chunk::{binding_elems, gather_box, scatter_block, windows};
    let out = crate::ops::gpu_output_big(ctx, x.device(), op.name(), out_shape, DType::F32)?;
    let l = binding_elems(ctx);
    // At least two rows per box whenever r allows, so each level of stacked partials
    // (boxes along r, inner block) is at most half as long as r: the recursion ends.
    let jb = inner.min(l / r.clamp(1, 2)).max(1);
    let kb = r.min(l / jb).max(1);
    let ob = outer.min(l / (kb * jb)).max(1);
    let part_op = if op == ReduceOp::Mean {
        ReduceOp::Sum
    } else {
        op
    };
    for o in windows(outer, ob) {
        for j in windows(inner, jb) {
            let mut partials = Vec::new();
            for k in windows(r, kb) {
                let boxed = gather_box(ctx, x, (outer, r, inner), (o, k, j))?;
                partials.push(boxed.reduce(part_op, 1, false)?.reshape(&[o.1 * j.1])?);
            }
            let m = o.1 * j.1;
            let mut block = if partials.len() == 1 {
                partials.swap_remove(0)
            } else {
                let shape = [partials.len(), m];
                let stacked =
                    crate::ops::gpu_output_big(ctx, x.device(), op.name(), &shape, DType::F32)?;
                for (i, p) in partials.iter().enumerate() {
                    scatter_block(ctx, p, &stacked, (1, m), m, (i, 0))?;
                }
                stacked.reduce(part_op, 0, false)?
            };
            if op == ReduceOp::Mean {
                block = block.div_scalar(r as f32)?;
            }
            scatter_block(ctx, &block, &out, (o.1, j.1), inner, (o.0, j.0))?;
        }
    }
    Ok(out)
}

fn argmax_gpu(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    dims: (usize, usize, usize),
    out: &Tensor,
) -> Result<()> {
    let (outer, mut r, inner) = dims;
    let (Some(first), Some(dst)) = (x.gpu_arg(), out.gpu_arg()) else {
        unreachable!("GPU device holds GPU tensors")
    };
    // (values, indices) of earlier passes, each (outer, r, inner).
    let mut temps: Vec<GpuBuffer> = Vec::new();
    loop {
        let p = plan_pass(outer * inner, r, inner > 1, TARGET_OUTPUTS, lanes_for(ctx));
        let n = outer * p.parts * inner;
        let params = pass_words(outer, r, inner, p, n);
        let bytes = (n * 4) as u64;
        let vals = ctx.alloc(bytes);
        let idx = if p.parts == 1 {
            None
        } else {
            Some(ctx.alloc(bytes))
        };
        let idx_arg = idx.as_ref().map(|b| (b.raw(), bytes)).unwrap_or(dst);
        let groups = grid_1d(ctx, n);
        if temps.is_empty() {
            let bufs = [first, (vals.raw(), bytes), idx_arg];
            ctx.dispatch(&SHADER, "argmax_forward", &[], &params, &bufs, groups)?;
        } else {
            let in_bytes = (outer * r * inner * 4) as u64;
            let (pv, pi) = (&temps[temps.len() - 2], &temps[temps.len() - 1]);
            let bufs = [
                (pv.raw(), in_bytes),
                (pi.raw(), in_bytes),
                (vals.raw(), bytes),
                idx_arg,
            ];
            ctx.dispatch(&SHADER, "argmax_partials", &[], &params, &bufs, groups)?;
        }
        temps.push(vals);
        match idx {
            None => return Ok(()),
            Some(idx) => temps.push(idx),
        }
        r = p.parts;
    }
}

impl Tensor {
    /// Reduces along `axis` (negative counts from the end); `keepdim` keeps it with length 1.
    pub fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> Result<Tensor> {
        let name = op.name();
        self.expect_f32(name)?;
        let axis = normalize_axis(name, axis, self.shape())?;
        let dims = split_at_axis(self.shape(), axis);
        if dims.1 == 0 && op != ReduceOp::Sum {
            return Err(Error::Empty {
                op: name,
                shape: self.shape().to_vec(),
            });
        }
        let out_shape = reduced_shape(self.shape(), axis, keepdim);
        crate::shape::checked_numel(name, &out_shape)?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let out = reduce_reference(&x, dims, op);
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                if !crate::ops::chunk::fits(ctx, self.numel()) {
                    return reduce_big(ctx, self, dims, op, &out_shape);
                }
                let out = gpu_output(ctx, self.device(), name, &out_shape, DType::F32)?;
                if out.numel() > 0 {
                    reduce_gpu(ctx, self, dims, op, &out)?;
                }
                Ok(out)
            }
        }
    }

    /// Index of the largest value along `axis` as an i32 tensor (first index on ties;
    /// the first NaN if there is one). An empty axis is [`Error::Empty`].
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.expect_f32("argmax")?;
        let axis = normalize_axis("argmax", axis, self.shape())?;
        let dims = split_at_axis(self.shape(), axis);
        if dims.1 == 0 {
            return Err(Error::Empty {
                op: "argmax",
                shape: self.shape().to_vec(),
            });
        }
        let out_shape = reduced_shape(self.shape(), axis, keepdim);
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let out = argmax_reference(&x, dims);
                Ok(Tensor::cpu_i32(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                if !crate::ops::chunk::fits(ctx, self.numel()) {
                    // Not split (yet): say so by name rather than from the kernel's binding.
                    return Err(Error::TooLarge {
                        op: "argmax",
                        shape: self.shape().to_vec(),
                        bytes: self.nbytes(),
                        limit: ctx.binding_limit(),
                        limit_name: "max_storage_buffer_binding_size",
                    });
                }
                let out = gpu_output(ctx, self.device(), "argmax", &out_shape, DType::I32)?;
                if out.numel() > 0 {
                    argmax_gpu(ctx, self, dims, &out)?;
                }
                Ok(out)
            }
        }
    }

    /// Index of the largest value of the flattened tensor, as a rank-0 i32 tensor.
    pub fn argmax_all(&self) -> Result<Tensor> {
        self.expect_f32("argmax")?;
        if self.numel() == 0 {
            return Err(Error::Empty {
                op: "argmax",
                shape: self.shape().to_vec(),
            });
        }
        self.reshape(&[self.numel()])?.argmax(0, false)
    }

    /// Reduces every element to a rank-0 tensor.
    pub fn reduce_all(&self, op: ReduceOp) -> Result<Tensor> {
        self.expect_f32(op.name())?;
        if self.numel() == 0 && op != ReduceOp::Sum {
            return Err(Error::Empty {
                op: op.name(),
                shape: self.shape().to_vec(),
            });
        }
        self.reshape(&[self.numel()])?.reduce(op, 0, false)
    }

    /// Sum along `axis`.
    pub fn sum_axis(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, axis, keepdim)
    }

    /// Mean along `axis`.
    pub fn mean_axis(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Mean, axis, keepdim)
    }

    /// Maximum along `axis` (NaN if the line holds a NaN).
    pub fn max_axis(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, axis, keepdim)
    }

    /// Minimum along `axis` (NaN if the line holds a NaN).
    pub fn min_axis(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Min, axis, keepdim)
    }

    /// Sum of all elements (rank 0; 0 for an empty tensor).
    pub fn sum(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Sum)
    }

    /// Mean of all elements (rank 0).
    pub fn mean(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Mean)
    }

    /// Largest element (rank 0).
    pub fn max(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Max)
    }

    /// Smallest element (rank 0).
    pub fn min(&self) -> Result<Tensor> {
        self.reduce_all(ReduceOp::Min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The elements part `c` of a line reads under `p`, as `walk` in reduce.wgsl computes them.
    fn part_elements(p: Pass, r: usize, c: usize) -> Vec<usize> {
        let first = (c >> p.lanes.trailing_zeros()) * p.block;
        let end = (first + p.block).min(r);
        (first + (c & (p.lanes - 1))..end)
            .step_by(p.lanes)
            .collect()
    }

    #[test]
    fn passes_cover_every_element_once_in_bounded_walks() {
        for lanes in [1, 2, 8] {
            for strided in [false, true] {
                for lines in [1, 3, 600, 5000] {
                    for r in [0, 1, 7, 64, 255, 256, 1000, 4099, 100_003, 3_000_000] {
                        let p = plan_pass(lines, r, strided, TARGET_OUTPUTS, lanes);
                        let mut seen = vec![0u8; r];
                        for c in 0..p.parts {
                            let ks = part_elements(p, r, c);
                            assert!(ks.len() <= MAX_WALK, "{p:?} r {r}: walk of {}", ks.len());
                            for k in ks {
                                seen[k] += 1;
                            }
                        }
                        assert!(seen.iter().all(|&s| s == 1), "{p:?} lines {lines} r {r}");
                        assert!(p.parts < r.max(2), "{p:?} does not shrink r {r}");
                    }
                }
            }
        }
    }
}
