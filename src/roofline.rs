//! Roofline probes: the adapter's own ceilings, measured by `wgrad bench` in the
//! same run as the ops so each op can be reported as a fraction of its roof.
//!
//! - [`copy_vec4`]: a plain vec4 copy — the memory roof (bytes read + written per second).
//! - [`fma_peak`]: independent FMA chains in registers — the compute roof (FLOP/s).
//!
//! Kernels in `shaders/roofline.wgsl`; each has a CPU reference so `wgrad check`
//! style tests can prove the GPU ran the work that is being timed.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "roofline",
    source: include_str!("../shaders/roofline.wgsl"),
};

/// Independent vec4 accumulators per invocation of `fma_peak`.
pub const FMA_CHAINS: usize = 16;

/// FLOPs one invocation of `fma_peak` does per step: 16 vec4 FMAs of 2 FLOPs per lane.
pub const FMA_FLOPS_PER_STEP: f64 = FMA_CHAINS as f64 * 4.0 * 2.0;

/// Most steps per chain: one invocation loops `iters` times, and lavapipe silently stops
/// an invocation after 65535 loop iterations, so `iters` stays within the loop budget.
pub const MAX_FMA_STEPS: u32 = crate::gpu::LOOP_BUDGET as u32;

fn check_vec4(op: &'static str, x: &Tensor) -> Result<usize> {
    x.expect_f32(op)?;
    if x.numel() % 4 != 0 {
        return Err(Error::Shape {
            op,
            detail: format!(
                "needs a multiple of 4 elements (whole vec4s), got shape {:?}",
                x.shape()
            ),
        });
    }
    Ok(x.numel() / 4)
}

/// A copy of `x` (f32, a multiple of 4 elements) made by the vec4 copy kernel.
pub fn copy_vec4(x: &Tensor) -> Result<Tensor> {
    let op = "copy_vec4";
    let n = check_vec4(op, x)?;
    match &x.device().inner {
        DeviceInner::Cpu => Ok(Tensor::cpu_from_f64(
            x.device(),
            x.shape(),
            x.host_f64().into_owned(),
        )),
        DeviceInner::Gpu(ctx) => {
            let out = gpu_output(ctx, x.device(), op, x.shape(), DType::F32)?;
            if n == 0 {
                return Ok(out);
            }
            let (Some(a), Some(o)) = (x.gpu_arg(), out.gpu_arg()) else {
                unreachable!("GPU device holds GPU tensors")
            };
            ctx.dispatch(&SHADER, op, &[], &[n as u32, 0], &[a, o], grid_1d(ctx, n))?;
            Ok(out)
        }
    }
}

/// CPU reference of one `fma_peak` invocation: the 16 chains seeded from `s`
/// (one vec4), `iters` steps of `x·0.999 + 0.001` each, summed in the kernel's order.
pub fn fma_peak_reference(s: [f32; 4], iters: u32) -> [f32; 4] {
    let (m, c) = (0.999f32, 0.001f32);
    let mut out = [0.0f32; 4];
    for (lane, o) in out.iter_mut().enumerate() {
        let mut a: [f32; FMA_CHAINS] =
            std::array::from_fn(|j| s[lane] + j as f32 / FMA_CHAINS as f32);
        for _ in 0..iters {
            for x in a.iter_mut() {
                *x = x.mul_add(m, c);
            }
        }
        *o = pairwise(&a);
    }
    out
}

/// The kernel's summation order: halves added recursively.
fn pairwise(a: &[f32]) -> f32 {
    match a.len() {
        1 => a[0],
        n => pairwise(&a[..n / 2]) + pairwise(&a[n / 2..]),
    }
}

/// Runs the FMA probe: one invocation per vec4 of `seeds` (f32, a multiple of 4
/// elements), `iters` steps (at most [`MAX_FMA_STEPS`]); returns the chain sums,
/// shaped like `seeds`. Work done: `seeds.numel() / 4 · iters ·` [`FMA_FLOPS_PER_STEP`].
pub fn fma_peak(seeds: &Tensor, iters: u32) -> Result<Tensor> {
    let op = "fma_peak";
    let n = check_vec4(op, seeds)?;
    if iters > MAX_FMA_STEPS {
        return Err(Error::Invalid {
            op,
            detail: format!("{iters} steps per chain; at most {MAX_FMA_STEPS}"),
        });
    }
    match &seeds.device().inner {
        DeviceInner::Cpu => {
            // The kernel's own f32 arithmetic (the reference models its rounding).
            let x: Vec<f32> = seeds.host_f64().iter().map(|&v| v as f32).collect();
            let out = x
                .chunks_exact(4)
                .flat_map(|s| fma_peak_reference([s[0], s[1], s[2], s[3]], iters))
                .map(f64::from)
                .collect();
            Ok(Tensor::cpu_from_f64(seeds.device(), seeds.shape(), out))
        }
        DeviceInner::Gpu(ctx) => {
            let out = gpu_output(ctx, seeds.device(), op, seeds.shape(), DType::F32)?;
            if n == 0 {
                return Ok(out);
            }
            let (Some(a), Some(o)) = (seeds.gpu_arg(), out.gpu_arg()) else {
                unreachable!("GPU device holds GPU tensors")
            };
            let params = [n as u32, iters];
            ctx.dispatch(&SHADER, op, &[], &params, &[a, o], grid_1d(ctx, n))?;
            Ok(out)
        }
    }
}
