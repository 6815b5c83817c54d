//! Op families. Each file holds one family side by side: the shape rule, the
//! CPU reference, the GPU dispatch (its WGSL lives in `shaders/<family>.wgsl`).

pub mod batchnorm;
pub(crate) mod chunk;
pub mod conv;
pub mod conv_gemm;
pub(crate) mod conv_geom;
pub mod conv_phase;
pub mod depthwise;
pub mod dropout;
pub mod elementwise;
pub mod gather;
pub mod half;
pub(crate) mod im2col_window;
pub mod layout;
pub mod loss;
pub(crate) mod loss_kernel;
pub(crate) mod loss_reduced;
pub(crate) mod loss_vocab;
pub mod matmul;
pub(crate) mod matmul_plan;
pub(crate) mod matmul_variant;
pub mod nhwc;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub(crate) mod texture_reads;
pub mod winograd;

use std::sync::Arc;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::Result;
use crate::gpu::{GpuContext, WG_1D};
use crate::tensor::{Storage, Tensor};

/// A fresh GPU tensor of `shape` for an op's output (contents undefined until written),
/// refused unless it fits one storage binding.
pub(crate) fn gpu_output(
    ctx: &Arc<GpuContext>,
    device: &Device,
    op: &'static str,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    output(ctx, device, op, shape, dtype, true)
}

/// [`gpu_output`] for the ops that handle tensors past the binding limit (see
/// [`chunk`]): only `max_buffer_size` applies, checked before anything is queued.
pub(crate) fn gpu_output_big(
    ctx: &Arc<GpuContext>,
    device: &Device,
    op: &'static str,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    output(ctx, device, op, shape, dtype, false)
}

fn output(
    ctx: &Arc<GpuContext>,
    device: &Device,
    op: &'static str,
    shape: &[usize],
    dtype: DType,
    one_binding: bool,
) -> Result<Tensor> {
    let bytes = (crate::shape::checked_numel(op, shape)? * dtype.size()) as u64;
    if one_binding {
        ctx.check_binding(op, shape, bytes)?;
    } else {
        ctx.check_buffer(op, shape, bytes)?;
    }
    let buf = ctx.try_alloc(op, bytes)?;
    Ok(Tensor::from_storage(
        device,
        shape,
        dtype,
        Storage::Gpu(Arc::new(buf)),
    ))
}

/// Pipeline constants for the kernels with exact_div.wgsl appended: none where every dividend
/// stays below 2^24 (`fast`, the f32 division is exact there), else `EXACT` (integer
/// division). Each op says when its dividends are that small.
pub(crate) fn exact_div_constants(fast: bool) -> &'static [(&'static str, f64)] {
    if fast {
        &[]
    } else {
        &[("EXACT", 1.0)]
    }
}

/// Workgroups for `n` invocations of a 1-D kernel, split to fit the adapter.
pub(crate) fn grid_1d(ctx: &GpuContext, n: usize) -> [u32; 3] {
    ctx.grid((n as u64).div_ceil(WG_1D as u64))
}

/// Packs up to [`crate::shape::MAX_RANK`] values into the two `vec4<u32>`s a
/// params struct reserves for one per-dimension array.
pub(crate) fn pack_dims(values: &[usize]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, v) in out.iter_mut().zip(values) {
        *o = *v as u32;
    }
    out
}
