//! Gather along one axis with i32 indices (embedding lookups, row selection), and its
//! adjoint, scatter-add.
//!
//! Shape rule: `gather(data, indices, axis)` has shape
//! `data[..axis] ++ indices ++ data[axis+1..]`; `scatter_add(src, indices, axis, size)` takes
//! `src` of that shape and gives `src[..axis] ++ [size] ++ src[axis+rank(indices)..]`. An
//! index j in `-n..n` (n the axis length) selects j, or j + n when negative; others are
//! errors: on the CPU reference when the op runs, on the GPU in the recording thread's status
//! words (the gathered element is 0 and nothing is read out of bounds), so the next readback
//! or `synchronize` is the same error.
//! CPU reference: the loops below, in f64. GPU: `shaders/gather.wgsl`.
//! Gradient: d gather / d data is scatter-add of the upstream gradient, and d scatter_add /
//! d src is gather; indices get none. WGSL has no float atomics, so in scatter-add each
//! output row (a chunk of up to 64 of its inner elements) walks the indices in order and
//! adds the slices of the positions that select it: a fixed order, the same result every
//! run, at the cost of O(rows · ⌈inner/64⌉ · indices) index reads (an embedding of V rows
//! fed m ids reads V·m indices, not V·dim·m). Index lists longer than one invocation may
//! walk ([`scatter_plan`], within [`crate::gpu::LOOP_BUDGET`]) take several dispatches that
//! add up. Tensors past one storage binding are refused with `TooLarge`.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel, LOOP_BUDGET, STATUS_BYTES};
use crate::ops::{gpu_output, grid_1d};
use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "gather",
    source: include_str!("../../shaders/gather.wgsl"),
};

/// The output shape of gathering `indices` along `axis` of `data`. An axis of length 0
/// with indices to gather is an error here: no index can be valid.
pub(crate) fn gather_shape(data: &[usize], indices: &[usize], axis: usize) -> Result<Vec<usize>> {
    if axis >= data.len() {
        return Err(Error::Axis {
            op: "gather",
            axis: axis as isize,
            shape: data.to_vec(),
        });
    }
    if data[axis] == 0 && indices.iter().product::<usize>() > 0 {
        return Err(Error::Shape {
            op: "gather",
            detail: format!(
                "axis {axis} of data {data:?} is empty, so no index in {indices:?} can select from it"
            ),
        });
    }
    let mut s = data[..axis].to_vec();
    s.extend_from_slice(indices);
    s.extend_from_slice(&data[axis + 1..]);
    Ok(s)
}

/// The output shape of scatter-adding `src` along `axis` into an axis of length `size`:
/// `src` must be `out[..axis] ++ indices ++ out[axis+1..]`.
pub(crate) fn scatter_shape(
    src: &[usize],
    indices: &[usize],
    axis: usize,
    size: usize,
) -> Result<Vec<usize>> {
    let r = indices.len();
    if axis + r > src.len() || src[axis..axis + r] != *indices {
        return Err(Error::Shape {
            op: "scatter_add",
            detail: format!("values {src:?} do not hold indices {indices:?} at axis {axis}"),
        });
    }
    if size == 0 && indices.iter().product::<usize>() > 0 {
        return Err(Error::Shape {
            op: "scatter_add",
            detail: format!("no index in {indices:?} can select from an axis of length 0"),
        });
    }
    let mut s = src[..axis].to_vec();
    s.push(size);
    s.extend_from_slice(&src[axis + r..]);
    Ok(s)
}

/// Scatter-add's axis, negative counting from the end of the output (whose rank is
/// `rank(src) − rank(indices) + 1`).
pub(crate) fn scatter_axis(src: &[usize], indices: &[usize], axis: isize) -> Result<usize> {
    let bad = || Error::Shape {
        op: "scatter_add",
        detail: format!("values {src:?} cannot hold indices {indices:?} at axis {axis}"),
    };
    let rank = (src.len() + 1).checked_sub(indices.len()).ok_or_else(bad)?;
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(bad());
    }
    Ok(a as usize)
}

/// `(outer, inner)`: the products of the dims before and after the axis.
fn around(shape: &[usize], axis: usize, len: usize) -> (usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis + len..].iter().product(),
    )
}

/// Index `j` of an axis of length `n`, negative counted from the end; `None` outside `-n..n`.
pub fn wrap_index(j: i32, n: usize) -> Option<usize> {
    let q = if j < 0 { j as i64 + n as i64 } else { j as i64 };
    (0..n as i64).contains(&q).then_some(q as usize)
}

/// The indices of a CPU tensor, wrapped, or the error naming the first bad one.
fn host_indices(
    op: &'static str,
    indices: &Tensor,
    n: usize,
    data: &[usize],
) -> Result<Vec<usize>> {
    indices
        .to_vec::<i32>()?
        .iter()
        .map(|&j| {
            wrap_index(j, n).ok_or_else(|| Error::Invalid {
                op,
                detail: format!(
                    "index {j} outside -{n}..{n} for an axis of length {n} (shape {data:?})"
                ),
            })
        })
        .collect()
}

impl Tensor {
    /// See [`crate::Var::gather`]. On a GPU, a bad index gives 0 and the next readback is the error.
    pub fn gather(&self, indices: &Tensor, axis: isize) -> Result<Tensor> {
        let op = "gather";
        self.expect_f32(op)?;
        indices.expect_i32(op)?;
        self.expect_same_device(op, indices)?;
        let axis = normalize_axis(op, axis, self.shape())?;
        let out_shape = gather_shape(self.shape(), indices.shape(), axis)?;
        let n = self.shape()[axis];
        let m = indices.numel();
        let (outer, inner) = around(self.shape(), axis, 1);
        match &self.device().inner {
            DeviceInner::Cpu => {
                let idx = host_indices(op, indices, n, self.shape())?;
                let x = self.host_f64();
                let mut y = Vec::with_capacity(outer * m * inner);
                for o in 0..outer {
                    for &j in &idx {
                        let base = (o * n + j) * inner;
                        y.extend_from_slice(&x[base..base + inner]);
                    }
                }
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, y))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                let total = out.numel();
                if total > 0 {
                    let params = [total as u32, n as u32, inner as u32, m as u32, 0, 0, 0];
                    dispatch(ctx, "gather_forward", &params, self, indices, &out, total)?;
                }
                Ok(out)
            }
        }
    }

    /// See [`crate::Var::scatter_add`].
    pub fn scatter_add(&self, indices: &Tensor, axis: isize, size: usize) -> Result<Tensor> {
        let op = "scatter_add";
        self.expect_f32(op)?;
        indices.expect_i32(op)?;
        self.expect_same_device(op, indices)?;
        let axis = scatter_axis(self.shape(), indices.shape(), axis)?;
        let out_shape = scatter_shape(self.shape(), indices.shape(), axis, size)?;
        let m = indices.numel();
        let (outer, inner) = around(self.shape(), axis, indices.rank());
        match &self.device().inner {
            DeviceInner::Cpu => {
                let idx = host_indices(op, indices, size, &out_shape)?;
                let g = self.host_f64();
                let mut y = vec![0.0; outer * size * inner];
                for o in 0..outer {
                    for (p, &j) in idx.iter().enumerate() {
                        let (to, from) = ((o * size + j) * inner, (o * m + p) * inner);
                        for k in 0..inner {
                            y[to + k] += g[from + k];
                        }
                    }
                }
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, y))
            }
            DeviceInner::Gpu(_) if m == 0 => Tensor::zeros(self.device(), &out_shape),
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                if out.numel() > 0 {
                    let (kchunk, per) = scatter_plan(inner);
                    let total = outer * size * inner.div_ceil(kchunk);
                    for (w, (p0, len)) in crate::ops::chunk::windows(m, per).enumerate() {
                        let params = [
                            total as u32,
                            size as u32,
                            inner as u32,
                            m as u32,
                            p0 as u32,
                            (p0 + len) as u32,
                            (w > 0) as u32,
                            kchunk as u32,
                        ];
                        dispatch(ctx, "scatter_add", &params, self, indices, &out, total)?;
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Scatter-add's split: `(kchunk, per)`, the inner elements one invocation adds per match
/// and the positions one dispatch walks, so that the worst case (every position matching,
/// after zeroing the chunk) takes `kchunk + per·(1 + kchunk)` <= LOOP_BUDGET steps.
pub(crate) fn scatter_plan(inner: usize) -> (usize, usize) {
    let kchunk = inner.clamp(1, 64);
    (kchunk, (LOOP_BUDGET - kchunk) / (1 + kchunk))
}

fn arg(t: &Tensor) -> crate::gpu::BufArg<'_> {
    t.gpu_arg().expect("GPU device holds GPU tensors")
}

/// One dispatch of `entry` of gather.wgsl over `total` output elements.
fn dispatch(
    ctx: &GpuContext,
    entry: &str,
    params: &[u32],
    src: &Tensor,
    indices: &Tensor,
    out: &Tensor,
    total: usize,
) -> Result<()> {
    let status = ctx.status_buffer();
    // With output elements to write, neither the source nor the indices are empty (the
    // shape rules and the m = 0 case above see to it), so every binding has bytes.
    ctx.dispatch(
        &SHADER,
        entry,
        &[],
        params,
        &[arg(src), arg(indices), arg(out), (&status, STATUS_BYTES)],
        grid_1d(ctx, total),
    )
}
