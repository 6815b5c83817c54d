//! Batch normalisation in training mode as primitives: per-channel statistics of x (N, C, …)
//! over every axis but C, the normalisation with a learned scale γ and shift β, the
//! running-statistics update, and a fused backward.
//!
//! Shape rule ([`BatchNormPass::output_shape`]): x is (N, C, …) with M = N·H·W… ≥ 1 values per
//! channel; stats (3, C) = batch mean, biased variance, 1/√(var + eps); sums (2, C) = Σg,
//! Σg·x̂ (x̂ = (x − mean)·inv_std); γ, β and running statistics (C).
//! CPU reference: loops in f64. GPU: `shaders/batchnorm.wgsl` — forward two dispatches
//! (statistics, normalisation), backward two (sums, dx); each per-channel reduction is one
//! workgroup per part of [`PART`] values, two-pass (mean, then Σ(x − mean)²), and a channel
//! past one part takes one more dispatch that merges the parts (Chan's formula), so no
//! invocation loops past [`crate::gpu::LOOP_BUDGET`].
//! Gradient (in `crate::autodiff`): y = apply(x, stats(x), γ, β) gives dx =
//! γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M), dγ = Σg·x̂, dβ = Σg from one sums pass.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::gpu_output;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "batchnorm",
    source: include_str!("../../shaders/batchnorm.wgsl"),
};

/// Invocations of a reduction workgroup (the shader's `@workgroup_size(64)`).
const WG: usize = 64;

/// Values of one channel a reduction workgroup covers: each invocation walks PART/64 of
/// them twice (the statistics' two passes), so within the loop budget.
pub const PART: usize = WG * (LOOP_BUDGET / 2);

const OP: &str = "batch_norm";

/// One batch-norm training primitive (each an [`crate::graph::Op::BatchNorm`] node).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormPass {
    /// x (N, C, …) → stats (3, C): mean, biased variance, 1/√(var + eps).
    Stats {
        /// Added to the variance before the square root.
        eps: f32,
    },
    /// (x, stats, γ (C), β (C)) → y = (x − mean)·γ·inv_std + β, x's shape.
    Apply,
    /// (running (C), stats) → `keep·running + take·stats[row]` (C): the running mean
    /// (row 0) or variance (row 1) update.
    Running {
        /// The stats row read: 0 mean, 1 biased variance.
        row: usize,
        /// Factor of the old value (1 − momentum).
        keep: f32,
        /// Factor of the batch value (momentum, times n/(n − 1) for an unbiased variance).
        take: f32,
    },
    /// (g, x, stats) → sums (2, C): Σg, Σg·x̂ per channel.
    GradSums,
    /// (g, x, stats, γ (C), sums) → dx, x's shape.
    GradX,
}

impl BatchNormPass {
    /// How many inputs the pass takes.
    pub fn arity(&self) -> usize {
        match self {
            BatchNormPass::Stats { .. } => 1,
            BatchNormPass::Apply => 4,
            BatchNormPass::Running { .. } => 2,
            BatchNormPass::GradSums => 3,
            BatchNormPass::GradX => 5,
        }
    }

    /// A short name for errors and plans.
    pub fn name(&self) -> &'static str {
        match self {
            BatchNormPass::Stats { .. } => "batch_norm_stats",
            BatchNormPass::Apply => "batch_norm",
            BatchNormPass::Running { .. } => "batch_norm_running",
            BatchNormPass::GradSums | BatchNormPass::GradX => "batch_norm_backward",
        }
    }

    /// The output shape for inputs of `shapes` (as many as [`BatchNormPass::arity`]), or
    /// the error naming the op and the shapes.
    pub fn output_shape(&self, shapes: &[&[usize]]) -> Result<Vec<usize>> {
        let op = self.name();
        if shapes.len() != self.arity() {
            return Err(Error::Invalid {
                op,
                detail: format!("expects {} inputs, got {}", self.arity(), shapes.len()),
            });
        }
        let bad = |what: &str, got: &[usize], want: &[usize]| Error::Shape {
            op,
            detail: format!("{what} {got:?} must be {want:?} for input {:?}", shapes[0]),
        };
        let check = |got: &[usize], want: &[usize], what: &str| -> Result<()> {
            if got != want {
                return Err(bad(what, got, want));
            }
            Ok(())
        };
        match self {
            BatchNormPass::Stats { eps } => {
                let (_, c, _) = dims(op, shapes[0])?;
                if !(*eps >= 0.0 && eps.is_finite()) {
                    return Err(Error::Invalid {
                        op,
                        detail: format!("eps must be finite and >= 0, got {eps}"),
                    });
                }
                Ok(vec![3, c])
            }
            BatchNormPass::Apply => {
                let x = shapes[0];
                let (_, c, _) = dims(op, x)?;
                check(shapes[1], &[3, c], "statistics")?;
                check(shapes[2], &[c], "gamma")?;
                check(shapes[3], &[c], "beta")?;
                Ok(x.to_vec())
            }
            BatchNormPass::Running { row, .. } => {
                let c = shapes[0].first().copied().unwrap_or(0);
                if shapes[0].len() != 1 || *row > 1 {
                    return Err(Error::Shape {
                        op,
                        detail: format!(
                            "running statistics {:?} must be (C) and the row 0 or 1, got row {row}",
                            shapes[0]
                        ),
                    });
                }
                check(shapes[1], &[3, c], "statistics")?;
                Ok(vec![c])
            }
            BatchNormPass::GradSums => {
                let x = shapes[1];
                let (_, c, _) = dims(op, x)?;
                check(shapes[0], x, "upstream")?;
                check(shapes[2], &[3, c], "statistics")?;
                Ok(vec![2, c])
            }
            BatchNormPass::GradX => {
                let x = shapes[1];
                let (_, c, _) = dims(op, x)?;
                check(shapes[0], x, "upstream")?;
                check(shapes[2], &[3, c], "statistics")?;
                check(shapes[3], &[c], "gamma")?;
                check(shapes[4], &[2, c], "sums")?;
                Ok(x.to_vec())
            }
        }
    }
}

/// x (N, C, …) as (N, C, HW): at least one value per channel, 31-bit sizes.
fn dims(op: &'static str, x: &[usize]) -> Result<(usize, usize, usize)> {
    if x.len() < 2 {
        return Err(Error::Shape {
            op,
            detail: format!("input must be (N, C, …), got {x:?}"),
        });
    }
    let (n, c, hw) = (x[0], x[1], x[2..].iter().product::<usize>());
    let numel = n.checked_mul(c).and_then(|v| v.checked_mul(hw));
    if n * hw == 0 || c == 0 || numel.is_none_or(|v| v > i32::MAX as usize) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "input {x:?} needs channels and at least one value per channel, under 2^31 elements"
            ),
        });
    }
    Ok((n, c, hw))
}

/// The uniform words: c, hw, m, total, parts, plen, eps, keep, take, row (padded to 12).
fn params(x: &[usize], parts: usize, eps: f32, running: (f32, f32, usize)) -> Vec<u32> {
    let (n, c, hw) = (x[0], x[1], x[2..].iter().product::<usize>());
    let (keep, take, row) = running;
    vec![
        c as u32,
        hw as u32,
        (n * hw) as u32,
        (n * c * hw) as u32,
        parts as u32,
        PART as u32,
        eps.to_bits(),
        keep.to_bits(),
        take.to_bits(),
        row as u32,
        0,
        0,
    ]
}

/// Dispatches `entry` reading `inputs` into a new tensor of `shape`; `groups` workgroups.
fn launch(
    entry: &str,
    inputs: &[&Tensor],
    shape: &[usize],
    params: &[u32],
    groups: usize,
) -> Result<Tensor> {
    let DeviceInner::Gpu(ctx) = &inputs[0].device().inner else {
        unreachable!("called on the GPU only")
    };
    let out = gpu_output(ctx, inputs[0].device(), OP, shape, DType::F32)?;
    let mut args = Vec::with_capacity(inputs.len() + 1);
    for t in inputs.iter().chain(std::iter::once(&&out)) {
        args.push(t.gpu_arg().ok_or_else(|| Error::Invalid {
            op: OP,
            detail: "operands must all be on the GPU".into(),
        })?);
    }
    if groups > 0 {
        ctx.dispatch(&SHADER, entry, &[], params, &args, ctx.grid(groups as u64))?;
    }
    Ok(out)
}

/// A per-channel reduction: `entry` over (channel, part) workgroups, then `merge` when a
/// channel spans more than one part.
fn reduce(
    entry: &str,
    merge: &str,
    inputs: &[&Tensor],
    x: &[usize],
    rows: usize,
    eps: f32,
) -> Result<Tensor> {
    let (n, c, hw) = (x[0], x[1], x[2..].iter().product::<usize>());
    let parts = (n * hw).div_ceil(PART);
    if parts == 1 {
        return launch(
            entry,
            inputs,
            &[rows, c],
            &params(x, 1, eps, (0., 0., 0)),
            c,
        );
    }
    let p = params(x, parts, eps, (0., 0., 0));
    let partial = launch(entry, inputs, &[c, parts, 2], &p, c * parts)?;
    launch(merge, &[&partial], &[rows, c], &p, c.div_ceil(WG))
}

impl Tensor {
    fn bn_check(&self, pass: BatchNormPass, others: &[&Tensor]) -> Result<Vec<usize>> {
        let mut shapes = vec![self.shape()];
        shapes.extend(others.iter().map(|t| t.shape()));
        for t in std::iter::once(self).chain(others.iter().copied()) {
            t.expect_f32(pass.name())?;
        }
        pass.output_shape(&shapes)
    }

    /// Batch statistics of x `self` (N, C, …) per channel: (3, C) = mean, biased
    /// variance, 1/√(var + eps).
    pub fn batch_norm_stats(&self, eps: f32) -> Result<Tensor> {
        let pass = BatchNormPass::Stats { eps };
        let out = self.bn_check(pass, &[])?;
        if let DeviceInner::Cpu = self.device().inner {
            let (_, c, hw) = dims(OP, self.shape())?;
            let x = self.host_f64();
            let mut s = vec![0.0; 3 * c];
            for ch in 0..c {
                let vals = || channel(&x, c, hw, ch);
                let m = vals().count() as f64;
                let mean = vals().sum::<f64>() / m;
                let var = vals().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
                s[ch] = mean;
                s[c + ch] = var;
                s[2 * c + ch] = 1.0 / (var + eps as f64).sqrt();
            }
            return Ok(Tensor::cpu_from_f64(self.device(), &out, s));
        }
        reduce(
            "batch_norm_stats",
            "batch_norm_stats_merge",
            &[self],
            self.shape(),
            3,
            eps,
        )
    }

    /// `(x − mean)·γ·inv_std + β` per channel, x `self` with its `stats` (3, C) and γ, β (C).
    pub fn batch_norm_apply(
        &self,
        stats: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
    ) -> Result<Tensor> {
        let out = self.bn_check(BatchNormPass::Apply, &[stats, gamma, beta])?;
        let (_, c, hw) = dims(OP, self.shape())?;
        if let DeviceInner::Cpu = self.device().inner {
            let (x, s, g, b) = (
                self.host_f64(),
                stats.host_f64(),
                gamma.host_f64(),
                beta.host_f64(),
            );
            let y = (0..x.len())
                .map(|o| {
                    let ch = (o / hw) % c;
                    (x[o] - s[ch]) * g[ch] * s[2 * c + ch] + b[ch]
                })
                .collect();
            return Ok(Tensor::cpu_from_f64(self.device(), &out, y));
        }
        let total = self.numel();
        let p = params(self.shape(), 1, 0.0, (0., 0., 0));
        launch(
            "batch_norm_apply",
            &[self, stats, gamma, beta],
            &out,
            &p,
            total.div_ceil(256),
        )
    }

    /// `keep·running + take·stats[row]`: running statistics `self` (C) updated from a
    /// batch's `stats` (3, C).
    pub fn batch_norm_running(
        &self,
        stats: &Tensor,
        row: usize,
        keep: f32,
        take: f32,
    ) -> Result<Tensor> {
        let out = self.bn_check(BatchNormPass::Running { row, keep, take }, &[stats])?;
        let c = out[0];
        if let DeviceInner::Cpu = self.device().inner {
            let (r, s) = (self.host_f64(), stats.host_f64());
            // f32 factors, as the GPU applies them
            let v = (0..c)
                .map(|ch| r[ch] * keep as f64 + s[row * c + ch] * take as f64)
                .collect();
            return Ok(Tensor::cpu_from_f64(self.device(), &out, v));
        }
        let p = params(&[1, c], 1, 0.0, (keep, take, row));
        launch(
            "batch_norm_running",
            &[self, stats],
            &out,
            &p,
            c.div_ceil(256),
        )
    }

    /// Σg and Σg·x̂ per channel (2, C), upstream `self` for x with its `stats`.
    pub fn batch_norm_grad_sums(&self, x: &Tensor, stats: &Tensor) -> Result<Tensor> {
        self.bn_check(BatchNormPass::GradSums, &[x, stats])?;
        let (_, c, hw) = dims(OP, x.shape())?;
        if let DeviceInner::Cpu = self.device().inner {
            let (g, xv, s) = (self.host_f64(), x.host_f64(), stats.host_f64());
            let mut out = vec![0.0; 2 * c];
            for o in 0..g.len() {
                let ch = (o / hw) % c;
                out[ch] += g[o];
                out[c + ch] += g[o] * (xv[o] - s[ch]) * s[2 * c + ch];
            }
            return Ok(Tensor::cpu_from_f64(self.device(), &[2, c], out));
        }
        reduce(
            "batch_norm_grad_sums",
            "batch_norm_sums_merge",
            &[self, x, stats],
            x.shape(),
            2,
            0.0,
        )
    }

    /// dx = γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M), upstream `self` for x with its `stats`, γ
    /// and the [`Tensor::batch_norm_grad_sums`].
    pub fn batch_norm_grad_x(
        &self,
        x: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        sums: &Tensor,
    ) -> Result<Tensor> {
        let out = self.bn_check(BatchNormPass::GradX, &[x, stats, gamma, sums])?;
        let (n, c, hw) = dims(OP, x.shape())?;
        if let DeviceInner::Cpu = self.device().inner {
            let (g, xv, s, gm, su) = (
                self.host_f64(),
                x.host_f64(),
                stats.host_f64(),
                gamma.host_f64(),
                sums.host_f64(),
            );
            let m = (n * hw) as f64;
            let dx = (0..g.len())
                .map(|o| {
                    let ch = (o / hw) % c;
                    let inv = s[2 * c + ch];
                    let xh = (xv[o] - s[ch]) * inv;
                    gm[ch] * inv * (g[o] - su[ch] / m - xh * su[c + ch] / m)
                })
                .collect();
            return Ok(Tensor::cpu_from_f64(self.device(), &out, dx));
        }
        let p = params(x.shape(), 1, 0.0, (0., 0., 0));
        launch(
            "batch_norm_grad_x",
            &[self, x, stats, gamma, sums],
            &out,
            &p,
            self.numel().div_ceil(256),
        )
    }

    /// Runs `pass` on its inputs (the executor's entry).
    pub(crate) fn batch_norm_pass(pass: BatchNormPass, x: &[&Tensor]) -> Result<Tensor> {
        match (pass, x) {
            (BatchNormPass::Stats { eps }, [x]) => x.batch_norm_stats(eps),
            (BatchNormPass::Apply, [x, s, g, b]) => x.batch_norm_apply(s, g, b),
            (BatchNormPass::Running { row, keep, take }, [r, s]) => {
                r.batch_norm_running(s, row, keep, take)
            }
            (BatchNormPass::GradSums, [g, x, s]) => g.batch_norm_grad_sums(x, s),
            (BatchNormPass::GradX, [g, x, s, gm, su]) => g.batch_norm_grad_x(x, s, gm, su),
            _ => Err(Error::Invalid {
                op: pass.name(),
                detail: format!("expects {} inputs, got {}", pass.arity(), x.len()),
            }),
        }
    }
}

/// The values of channel `ch` of x (N, C, HW) in f64.
fn channel(x: &[f64], c: usize, hw: usize, ch: usize) -> impl Iterator<Item = f64> + '_ {
    let n = x.len() / (c * hw);
    (0..n).flat_map(move |b| x[(b * c + ch) * hw..(b * c + ch + 1) * hw].iter().copied())
}
