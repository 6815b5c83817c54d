//! Seeded inverted dropout: `y = x · keep / (1 − p)` where `keep` is a hash of
//! (seed, step, element index) — a counter-based generator, so the mask needs no
//! state on the device, the GPU and the CPU reference draw the identical mask, and
//! the backward pass recomputes it instead of storing it.
//!
//! Shape rule: y has x's shape; the step is a (1) tensor holding a small integer.
//! CPU reference: [`keep`] per element. GPU: `shaders/dropout.wgsl` (`dropout_forward`).
//! Gradient: the same mask and scale applied to the upstream gradient (dropout of g
//! with the same seed and step).

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::ops::gpu_output;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "dropout",
    source: concat!(
        include_str!("../../shaders/dropout.wgsl"),
        include_str!("../../shaders/dropout_hash.wgsl")
    ),
};

/// The PCG hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020): a
/// bijection on u32 with good avalanche; `dropout.wgsl` has the same lines.
pub fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The 32-bit draw of element `index` at `step` of the stream `seed`.
pub fn draw(seed: u64, step: u32, index: u32) -> u32 {
    let key = pcg_hash(seed as u32 ^ pcg_hash((seed >> 32) as u32 ^ pcg_hash(step)));
    pcg_hash(pcg_hash(index) ^ key)
}

/// Draws at or above this value keep their element: round(p·2³²), so P(keep) = 1 − p
/// to within 2⁻³².
pub fn threshold(p: f32) -> u32 {
    (p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// Whether dropout with probability `p` keeps element `index` at `step` (the CPU reference).
pub fn keep(seed: u64, step: u32, index: u32, p: f32) -> bool {
    draw(seed, step, index) >= threshold(p)
}

/// Checks the probability and the step's shape.
pub(crate) fn check_dropout(p: f32, step: &[usize]) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Invalid {
            op: "dropout",
            detail: format!("probability must be in [0, 1), got {p}"),
        });
    }
    if step != [1] {
        return Err(Error::Shape {
            op: "dropout",
            detail: format!("the step counter must have shape [1], got {step:?}"),
        });
    }
    Ok(())
}

impl Tensor {
    /// Inverted dropout of `self` with probability `p` at `step` (a (1) tensor holding
    /// a non-negative integer, such as [`crate::Graph::step_counter`] keeps): see
    /// [`crate::Var::dropout`].
    pub fn dropout(&self, p: f32, seed: u64, step: &Tensor) -> Result<Tensor> {
        let op = "dropout";
        self.expect_f32(op)?;
        step.expect_f32(op)?;
        self.expect_same_device(op, step)?;
        check_dropout(p, step.shape())?;
        // Computed once in f32 on the host and used by both sides: the kept values agree bit for bit.
        let scale = 1.0f32 / (1.0 - p);
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let s = step.host_f64().first().copied().unwrap_or(0.0) as u32;
                // f32·f32 is exact in f64: rounding once gives the kernel's f32 product.
                let scale = scale as f64;
                let t = threshold(p);
                let y = x
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        if draw(seed, s, i as u32) >= t {
                            v * scale
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Ok(Tensor::cpu_from_f64(self.device(), self.shape(), y))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
                let total = out.numel();
                if total > 0 {
                    let (Some(x), Some(s), Some(o)) =
                        (self.gpu_arg(), step.gpu_arg(), out.gpu_arg())
                    else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    let params = [
                        total as u32,
                        seed as u32,
                        (seed >> 32) as u32,
                        threshold(p),
                        scale.to_bits(),
                    ];
                    // 16 values per invocation as 4 vec4s when they tile the tensor, else one
                    // each (see the shader); workgroups of 64.
                    let (entry, invocations) = if total % 4 == 0 {
                        ("dropout_forward4", total.div_ceil(16))
                    } else {
                        ("dropout_forward", total)
                    };
                    ctx.dispatch(
                        &SHADER,
                        entry,
                        &[],
                        &params,
                        &[x, s, o],
                        ctx.grid(invocations.div_ceil(64) as u64),
                    )?;
                }
                Ok(out)
            }
        }
    }
}
