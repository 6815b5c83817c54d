//! Batch normalisation in training mode as primitives: per-channel statistics of x (N, C, …)
//! over every axis but C, the normalisation with a learned scale γ and shift β, the
//! running-statistics update, and a fused backward.
//!
//! Shape rule ([`BatchNormPass::output_shape`]): x is (N, C, …) with M = N·H·W… ≥ 1 values per
//! channel; stats (3, C) = batch mean, biased variance, 1/√(var + eps); sums (2, C) = Σg,
//! Σg·x̂ (x̂ = (x − mean)·inv_std); γ, β and running statistics (C).
//! CPU reference: loops in f64. GPU: `shaders/batchnorm.wgsl` — forward two dispatches
//! (statistics, normalisation), backward two (sums, dx); each per-channel reduction is one
//! invocation per part of `part_len` values (no workgroup memory, no barriers: both are
//! dear on lavapipe), two-pass (mean, then Σ(x − mean)²), and a channel past one part takes
//! one more dispatch that merges the parts (Chan's formula), so no invocation loops past
//! [`crate::gpu::LOOP_BUDGET`]. When H·W is a multiple of 4 every entry loads vec4s.
//! Gradient (in `crate::autodiff`): y = apply(x, stats(x), γ, β) gives dx =
//! γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M), dγ = Σg·x̂, dβ = Σg from one sums pass.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{BufArg, GpuContext, Kernel, LOOP_BUDGET};
use crate::ops::gpu_output;
use crate::ops::texture_reads::{dispatch_reading_source, texture_module, Read};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "batchnorm",
    source: concat!(
        include_str!("../../shaders/batchnorm.wgsl"),
        include_str!("../../shaders/dropout_hash.wgsl")
    ),
};

/// batchnorm.wgsl with the vec4 entries reading binding 1 through a texture
/// (src/ops/texture_reads.rs).
pub(crate) fn texture_kernel() -> Kernel {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Kernel {
        name: "batchnorm.texture",
        source: SOURCE.get_or_init(|| texture_module(SHADER.source, &[Read::Vec4("a4_at")])),
    }
}

/// Dispatches `entry`: the vec4 entries (`…4`) read their first binding (x, or the upstream
/// gradient) through a texture where products read theirs through textures.
fn dispatch(
    ctx: &GpuContext,
    entry: &str,
    params: &[u32],
    args: &[BufArg<'_>],
    groups: u64,
) -> Result<()> {
    let grid = ctx.grid(groups);
    if entry.ends_with('4') {
        let kernels = (&SHADER, &texture_kernel());
        dispatch_reading_source(ctx, kernels, entry, &[], params, args, grid)
    } else {
        ctx.dispatch(&SHADER, entry, &[], params, args, grid)
    }
}

/// Invocations of a reduction workgroup (the shader's `@workgroup_size(8)`: one SIMD group
/// of lavapipe, so even a few channels spread over the cores).
const WG_REDUCE: usize = 8;

/// Invocations of the element-wise and per-channel workgroups (`@workgroup_size(64)`).
const WG: usize = 64;

/// Values of one channel a reduction invocation covers. It walks them twice (the
/// statistics' two passes), one loop step per vec4 (HW % 4 = 0) or value, plus one step per
/// image run (at most plen/HW + 2): with vec4s 2·(plen/4 + plen/4 + 2) steps at most, else
/// 2·(plen + plen + 2), so [`LOOP_BUDGET`] + 4 either way.
pub(crate) fn part_len(hw: usize) -> usize {
    if hw % 4 == 0 {
        LOOP_BUDGET
    } else {
        LOOP_BUDGET / 4
    }
}

const OP: &str = "batch_norm";

/// One batch-norm training primitive (each an [`crate::graph::Op::BatchNorm`] node).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormPass {
    /// x (N, C, …) → stats (3, C): mean, biased variance, 1/√(var + eps).
    Stats {
        /// Added to the variance before the square root.
        eps: f32,
    },
    /// (x, stats, γ (C), β (C)) → y = (x − mean)·γ·inv_std + β, x's shape; with `relu`,
    /// max(y, 0) (a ReLU after the normalisation, in the same dispatch).
    Apply {
        /// Apply a ReLU to the result.
        relu: bool,
    },
    /// (stats, running mean (C), running variance (C)) → (2, C): the running statistics
    /// updated from the batch's, `keep·running + take·batch` (row 0 mean, row 1 variance).
    Running {
        /// Factor of the old values (1 − momentum).
        keep: f32,
        /// Factor of the batch mean (momentum).
        take_mean: f32,
        /// Factor of the batch's biased variance (momentum·n/(n − 1) for PyTorch's rule).
        take_var: f32,
    },
    /// (g, x, stats) → sums (2, C): Σg, Σg·x̂ per channel; with `relu`, a fourth input z
    /// (the [`BatchNormPass::Apply`] output) and g counted only where z > 0.
    GradSums {
        /// The forward pass had a ReLU.
        relu: bool,
    },
    /// (g, x, stats, γ (C), sums) → dx, x's shape; with `relu`, a sixth input z as in
    /// [`BatchNormPass::GradSums`].
    GradX {
        /// The forward pass had a ReLU.
        relu: bool,
    },
}

impl BatchNormPass {
    /// How many inputs the pass takes.
    pub fn arity(&self) -> usize {
        match self {
            BatchNormPass::Stats { .. } => 1,
            BatchNormPass::Apply { .. } => 4,
            BatchNormPass::Running { .. } => 3,
            BatchNormPass::GradSums { relu } => 3 + *relu as usize,
            BatchNormPass::GradX { relu } => 5 + *relu as usize,
        }
    }

    /// A short name for errors and plans.
    pub fn name(&self) -> &'static str {
        match self {
            BatchNormPass::Stats { .. } => "batch_norm_stats",
            BatchNormPass::Apply { .. } => "batch_norm",
            BatchNormPass::Running { .. } => "batch_norm_running",
            BatchNormPass::GradSums { .. } | BatchNormPass::GradX { .. } => "batch_norm_backward",
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
            BatchNormPass::Apply { .. } => {
                let x = shapes[0];
                let (_, c, _) = dims(op, x)?;
                check(shapes[1], &[3, c], "statistics")?;
                check(shapes[2], &[c], "gamma")?;
                check(shapes[3], &[c], "beta")?;
                Ok(x.to_vec())
            }
            BatchNormPass::Running { .. } => {
                let c = shapes[0].get(1).copied().unwrap_or(0);
                if shapes[0] != [3, c] || shapes[1] != [c] || shapes[2] != [c] {
                    return Err(Error::Shape {
                        op,
                        detail: format!(
                            "statistics {:?} must be (3, C) with running mean and variance (C), got {:?} and {:?}",
                            shapes[0], shapes[1], shapes[2]
                        ),
                    });
                }
                Ok(vec![2, c])
            }
            BatchNormPass::GradSums { relu } => {
                let x = shapes[1];
                let (_, c, _) = dims(op, x)?;
                check(shapes[0], x, "upstream")?;
                check(shapes[2], &[3, c], "statistics")?;
                if *relu {
                    check(shapes[3], x, "forward output")?;
                }
                Ok(vec![2, c])
            }
            BatchNormPass::GradX { relu } => {
                let x = shapes[1];
                let (_, c, _) = dims(op, x)?;
                check(shapes[0], x, "upstream")?;
                check(shapes[2], &[3, c], "statistics")?;
                check(shapes[3], &[c], "gamma")?;
                check(shapes[4], &[2, c], "sums")?;
                if *relu {
                    check(shapes[5], x, "forward output")?;
                }
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

/// The uniform words: c, hw, m, total, parts, plen, eps, keep, take_mean, take_var, relu,
/// run, channels_first (0), 3 of padding and dropout's 4 (0); `extra` = (keep, take_mean,
/// take_var, relu).
fn params(x: &[usize], parts: usize, eps: f32, extra: (f32, f32, f32, bool)) -> Vec<u32> {
    let (n, c, hw) = (x[0], x[1], x[2..].iter().product::<usize>());
    let (keep, take_mean, take_var, relu) = extra;
    vec![
        c as u32,
        hw as u32,
        (n * hw) as u32,
        (n * c * hw) as u32,
        parts as u32,
        part_len(hw) as u32,
        eps.to_bits(),
        keep.to_bits(),
        take_mean.to_bits(),
        take_var.to_bits(),
        relu as u32,
        run(hw) as u32,
        0, // channels_first: set by grad_x's caller
        0,
        0,
        0,
        0, // dropout's seed (2 words), threshold and scale: set by apply_dropout's caller
        0,
        0,
        0,
    ]
}

/// Params words 16-19: a dropout's seed, threshold and scale, as `Tensor::dropout` sets
/// them (the scale computed once in f32).
fn set_dropout(params: &mut [u32], p: f32, seed: u64) {
    params[16..20].copy_from_slice(&[
        seed as u32,
        (seed >> 32) as u32,
        crate::ops::dropout::threshold(p),
        (1.0f32 / (1.0 - p)).to_bits(),
    ]);
}

/// Params word 13 (`grad_drop`) and the dropout's words, for a gradient entry whose
/// upstream came through `drop` = (p, seed, step).
fn set_grad_dropout(params: &mut [u32], drop: Option<Dropped<'_>>) {
    if let Some((p, seed, _)) = drop {
        params[13] = 1;
        set_dropout(params, p, seed);
    }
}

/// A dropout's (probability, seed, step) that a gradient came through.
pub(crate) type Dropped<'a> = (f32, u64, &'a Tensor);

/// Elements per invocation of the scalar element-wise entries (HW % 4 ≠ 0): one; and of
/// the vec4 entries, in vec4s: up to 4 of one channel (16 values: the per-channel factors
/// loaded and the channel found once for them).
fn run(hw: usize) -> usize {
    if hw % 16 == 0 {
        4
    } else if hw % 8 == 0 {
        2
    } else {
        1
    }
}

/// The element-wise entry for H·W (vec4 when HW % 4 = 0) and its workgroup count.
fn elementwise(
    entry: &'static str,
    entry4: &'static str,
    numel: usize,
    hw: usize,
) -> (&'static str, usize) {
    if hw % 4 == 0 {
        (entry4, (numel / (4 * run(hw))).div_ceil(WG))
    } else {
        (entry, numel.div_ceil(WG))
    }
}

const PLAIN: (f32, f32, f32, bool) = (0.0, 0.0, 0.0, false);

/// Dispatches `entry` reading `inputs` into a new tensor of `shape`, bound after the first
/// `out_at` inputs (the shader's binding order); `groups` workgroups.
fn launch(
    entry: &str,
    inputs: &[&Tensor],
    out_at: usize,
    shape: &[usize],
    params: &[u32],
    groups: usize,
) -> Result<Tensor> {
    let DeviceInner::Gpu(ctx) = &inputs[0].device().inner else {
        unreachable!("called on the GPU only")
    };
    let out = gpu_output(ctx, inputs[0].device(), OP, shape, DType::F32)?;
    let (before, after) = inputs.split_at(out_at);
    let bound: Vec<&Tensor> = before
        .iter()
        .copied()
        .chain([&out])
        .chain(after.iter().copied())
        .collect();
    let args = gpu_args(&bound)?;
    if groups > 0 {
        dispatch(ctx, entry, params, &args, groups as u64)?;
    }
    Ok(out)
}

/// The buffers of `tensors`, in binding order.
fn gpu_args<'t>(tensors: &[&'t Tensor]) -> Result<Vec<crate::gpu::BufArg<'t>>> {
    tensors
        .iter()
        .map(|t| {
            t.gpu_arg().ok_or_else(|| Error::Invalid {
                op: OP,
                detail: "operands must all be on the GPU".into(),
            })
        })
        .collect()
}

/// A per-channel reduction: `entries.0` (scalar, vec4) over (channel, part) invocations, its
/// output bound after the first `out_at` inputs, then `entries.1` (the merge) when a channel
/// spans more than one part.
fn reduce(
    entries: ((&str, &str), &str),
    inputs: &[&Tensor],
    out_at: usize,
    x: &[usize],
    rows: usize,
    eps: f32,
    (extra, drop): ((f32, f32, f32, bool), Option<Dropped<'_>>),
) -> Result<Tensor> {
    let (n, c, hw) = (x[0], x[1], x[2..].iter().product::<usize>());
    let parts = (n * hw).div_ceil(part_len(hw));
    let mut p = params(x, parts, eps, extra);
    set_grad_dropout(&mut p, drop);
    let entry = if hw % 4 == 0 {
        entries.0 .1
    } else {
        entries.0 .0
    };
    let groups = (c * parts).div_ceil(WG_REDUCE);
    if parts == 1 {
        return launch(entry, inputs, out_at, &[rows, c], &p, groups);
    }
    let partial = launch(entry, inputs, out_at, &[c, parts, 2], &p, groups)?;
    launch(entries.1, &[&partial], 1, &[rows, c], &p, c.div_ceil(WG))
}

/// The upstream gradient at element `o`, masked by a ReLU's output `z` when there is one.
fn masked(g: &[f64], z: Option<&[f64]>, o: usize) -> f64 {
    match z {
        Some(z) if z[o] <= 0.0 => 0.0,
        _ => g[o],
    }
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
        let out = self.bn_check(BatchNormPass::Stats { eps }, &[])?;
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
        let entries = (
            ("batch_norm_stats", "batch_norm_stats4"),
            "batch_norm_stats_merge",
        );
        reduce(entries, &[self], 1, self.shape(), 3, eps, (PLAIN, None))
    }

    /// `(x − mean)·γ·inv_std + β` per channel (then max(·, 0) with `relu`), x `self` with
    /// its `stats` (3, C) and γ, β (C).
    pub fn batch_norm_apply(
        &self,
        stats: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        relu: bool,
    ) -> Result<Tensor> {
        let out = self.bn_check(BatchNormPass::Apply { relu }, &[stats, gamma, beta])?;
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
                    let y = (x[o] - s[ch]) * g[ch] * s[2 * c + ch] + b[ch];
                    if relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                })
                .collect();
            return Ok(Tensor::cpu_from_f64(self.device(), &out, y));
        }
        let p = params(self.shape(), 1, 0.0, (0.0, 0.0, 0.0, relu));
        let inputs = [self, stats, gamma, beta];
        let (entry, groups) =
            elementwise("batch_norm_apply", "batch_norm_apply4", self.numel(), hw);
        launch(entry, &inputs, 4, &out, &p, groups)
    }

    /// On the CPU reference, the upstream `self` after the dropout `drop`, in x's shape (the
    /// plain pass then runs on it); `None` on a GPU or without a dropout.
    fn dropped_on_cpu(&self, x: &Tensor, drop: Option<Dropped<'_>>) -> Result<Option<Tensor>> {
        match (drop, &self.device().inner) {
            (Some((p, seed, step)), DeviceInner::Cpu) => {
                Ok(Some(self.dropout(p, seed, step)?.reshape(x.shape())?))
            }
            _ => Ok(None),
        }
    }

    /// The upstream a GPU gradient entry reads: `self`, viewed in x's shape when it comes
    /// before a dropout `drop` (whose step is checked as [`Tensor::dropout`] checks it).
    fn dropped_view(&self, x: &Tensor, drop: Option<Dropped<'_>>) -> Result<Tensor> {
        let Some((p, _, step)) = drop else {
            return Ok(self.clone());
        };
        step.expect_f32("dropout")?;
        self.expect_same_device("dropout", step)?;
        crate::ops::dropout::check_dropout(p, step.shape())?;
        self.reshape(x.shape())
    }

    /// [`Tensor::batch_norm_apply`] and [`Tensor::dropout`] of its result, `(y, dropped)`
    /// (`p`, `seed`, `step` as there): one pass over x on a GPU when H·W is a multiple of 4
    /// (`batch_norm_apply_dropout4`), where the dropout would read y back in a dispatch of
    /// its own; else the two.
    pub(crate) fn batch_norm_apply_dropout(
        &self,
        (stats, gamma, beta, relu): (&Tensor, &Tensor, &Tensor, bool),
        (p, seed, step): (f32, u64, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let out = self.bn_check(BatchNormPass::Apply { relu }, &[stats, gamma, beta])?;
        let (_, _, hw) = dims(OP, self.shape())?;
        let separate = || -> Result<(Tensor, Tensor)> {
            let y = self.batch_norm_apply(stats, gamma, beta, relu)?;
            let dropped = y.dropout(p, seed, step)?;
            Ok((y, dropped))
        };
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            return separate();
        };
        if hw % 4 != 0 {
            return separate();
        }
        step.expect_f32("dropout")?;
        self.expect_same_device("dropout", step)?;
        crate::ops::dropout::check_dropout(p, step.shape())?;
        let y = gpu_output(ctx, self.device(), OP, &out, DType::F32)?;
        let dropped = gpu_output(ctx, self.device(), "dropout", &out, DType::F32)?;
        let mut params = params(self.shape(), 1, 0.0, (0.0, 0.0, 0.0, relu));
        set_dropout(&mut params, p, seed);
        let args = gpu_args(&[self, stats, gamma, beta, &y, &dropped, step])?;
        let (entry, groups) = elementwise("", "batch_norm_apply_dropout4", self.numel(), hw);
        if groups > 0 {
            dispatch(ctx, entry, &params, &args, groups as u64)?;
        }
        Ok((y, dropped))
    }

    /// Running mean and variance (C each) updated from a batch's `stats` (3, C) `self`:
    /// (2, C) = `keep·running + (take_mean·mean, take_var·var)`.
    pub fn batch_norm_running(
        &self,
        mean: &Tensor,
        var: &Tensor,
        keep: f32,
        take_mean: f32,
        take_var: f32,
    ) -> Result<Tensor> {
        let pass = BatchNormPass::Running {
            keep,
            take_mean,
            take_var,
        };
        let out = self.bn_check(pass, &[mean, var])?;
        let c = out[1];
        if let DeviceInner::Cpu = self.device().inner {
            let (s, m, v) = (self.host_f64(), mean.host_f64(), var.host_f64());
            // the f32 factors, as the GPU applies them
            let (k, tm, tv) = (keep as f64, take_mean as f64, take_var as f64);
            let new = (0..c)
                .map(|ch| m[ch] * k + s[ch] * tm)
                .chain((0..c).map(|ch| v[ch] * k + s[c + ch] * tv))
                .collect();
            return Ok(Tensor::cpu_from_f64(self.device(), &out, new));
        }
        let p = params(&[1, c], 1, 0.0, (keep, take_mean, take_var, false));
        let groups = c.div_ceil(WG);
        launch(
            "batch_norm_running",
            &[self, mean, var],
            3,
            &out,
            &p,
            groups,
        )
    }

    /// [`Tensor::batch_norm_stats`] and [`Tensor::batch_norm_running`] on them: (stats,
    /// updated running statistics). One dispatch when every channel is one reduction part
    /// (`batch_norm_stats_running(4)`), where the update would be a dispatch of its own for
    /// 2·C values; else the two passes.
    pub(crate) fn batch_norm_stats_running(
        &self,
        eps: f32,
        (mean, var): (&Tensor, &Tensor),
        (keep, take_mean, take_var): (f32, f32, f32),
    ) -> Result<(Tensor, Tensor)> {
        let out = self.bn_check(BatchNormPass::Stats { eps }, &[])?;
        let (n, c, hw) = dims(OP, self.shape())?;
        let separate = || -> Result<(Tensor, Tensor)> {
            let stats = self.batch_norm_stats(eps)?;
            let running = stats.batch_norm_running(mean, var, keep, take_mean, take_var)?;
            Ok((stats, running))
        };
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            return separate();
        };
        if (n * hw).div_ceil(part_len(hw)) > 1 {
            return separate();
        }
        let pass = BatchNormPass::Running {
            keep,
            take_mean,
            take_var,
        };
        let running_shape = pass.output_shape(&[&out, mean.shape(), var.shape()])?;
        for t in [mean, var] {
            t.expect_f32(pass.name())?;
        }
        let stats = gpu_output(ctx, self.device(), OP, &out, DType::F32)?;
        let running = gpu_output(ctx, self.device(), OP, &running_shape, DType::F32)?;
        let p = params(self.shape(), 1, eps, (keep, take_mean, take_var, false));
        let entry = if hw % 4 == 0 {
            "batch_norm_stats_running4"
        } else {
            "batch_norm_stats_running"
        };
        let args = gpu_args(&[self, &stats, mean, &running, var])?;
        let groups = c.div_ceil(WG_REDUCE) as u64;
        dispatch(ctx, entry, &p, &args, groups)?;
        Ok((stats, running))
    }

    /// Σg and Σg·x̂ per channel (2, C), upstream `self` for x with its `stats`; `z`, the
    /// forward output of a normalisation with a ReLU, masks g where z ≤ 0.
    pub fn batch_norm_grad_sums(
        &self,
        x: &Tensor,
        stats: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.batch_norm_grad_sums_in(x, stats, z, None)
    }

    /// [`Tensor::batch_norm_grad_sums`] of the upstream `self` after a dropout `drop` (the
    /// backward of a dropout of the normalisation's output), applied as the kernel reads
    /// it: `self` is the gradient before the dropout, of x's element count.
    pub(crate) fn batch_norm_grad_sums_dropped(
        &self,
        x: &Tensor,
        stats: &Tensor,
        z: Option<&Tensor>,
        drop: Dropped<'_>,
    ) -> Result<Tensor> {
        self.batch_norm_grad_sums_in(x, stats, z, Some(drop))
    }

    fn batch_norm_grad_sums_in(
        &self,
        x: &Tensor,
        stats: &Tensor,
        z: Option<&Tensor>,
        drop: Option<Dropped<'_>>,
    ) -> Result<Tensor> {
        if let Some(g) = self.dropped_on_cpu(x, drop)? {
            return g.batch_norm_grad_sums(x, stats, z);
        }
        let g = self.dropped_view(x, drop)?;
        let pass = BatchNormPass::GradSums { relu: z.is_some() };
        let mut others = vec![x, stats];
        others.extend(z);
        g.bn_check(pass, &others)?;
        let (_, c, hw) = dims(OP, x.shape())?;
        if let DeviceInner::Cpu = self.device().inner {
            let (g, xv, s) = (g.host_f64(), x.host_f64(), stats.host_f64());
            let zv = z.map(|t| t.host_f64());
            let mut out = vec![0.0; 2 * c];
            for o in 0..g.len() {
                let ch = (o / hw) % c;
                let gv = masked(&g, zv.as_deref(), o);
                out[ch] += gv;
                out[c + ch] += gv * (xv[o] - s[ch]) * s[2 * c + ch];
            }
            return Ok(Tensor::cpu_from_f64(self.device(), &[2, c], out));
        }
        // Without a ReLU, x stands in z's binding (the shader reads z only when told to).
        // The step follows z (or x in its place without a dropout).
        let step = drop.map_or(x, |d| d.2);
        let inputs = [&g, x, stats, z.unwrap_or(x), step];
        let entries = (
            ("batch_norm_grad_sums", "batch_norm_grad_sums4"),
            "batch_norm_sums_merge",
        );
        let extra = (0.0, 0.0, 0.0, z.is_some());
        reduce(entries, &inputs, 3, x.shape(), 2, 0.0, (extra, drop))
    }

    /// dx = γ·inv_std·(g − Σg/M − x̂·Σg·x̂/M), upstream `self` for x with its `stats`, γ
    /// and the [`Tensor::batch_norm_grad_sums`]; `z` as there.
    pub fn batch_norm_grad_x(
        &self,
        x: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        sums: &Tensor,
        z: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.batch_norm_grad_x_in(x, stats, gamma, sums, z, (false, None))
    }

    /// [`Tensor::batch_norm_grad_x`] stored channels first, (C, N, H·W): with the permute
    /// (N, C, L) → (C, N, L) that a batch-folded convolution's gradient runs next done by
    /// the kernel's stores (src/epilogue.rs).
    pub(crate) fn batch_norm_grad_x_channels_first(
        &self,
        x: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        sums: &Tensor,
        z: Option<&Tensor>,
        drop: Option<Dropped<'_>>,
    ) -> Result<Tensor> {
        self.batch_norm_grad_x_in(x, stats, gamma, sums, z, (true, drop))
    }

    /// [`Tensor::batch_norm_grad_x`] of the upstream `self` after a dropout `drop`, as
    /// [`Tensor::batch_norm_grad_sums_dropped`] reads it.
    pub(crate) fn batch_norm_grad_x_dropped(
        &self,
        x: &Tensor,
        (stats, gamma, sums): (&Tensor, &Tensor, &Tensor),
        z: Option<&Tensor>,
        drop: Dropped<'_>,
    ) -> Result<Tensor> {
        self.batch_norm_grad_x_in(x, stats, gamma, sums, z, (false, Some(drop)))
    }

    fn batch_norm_grad_x_in(
        &self,
        x: &Tensor,
        stats: &Tensor,
        gamma: &Tensor,
        sums: &Tensor,
        z: Option<&Tensor>,
        (channels_first, drop): (bool, Option<Dropped<'_>>),
    ) -> Result<Tensor> {
        if let Some(g) = self.dropped_on_cpu(x, drop)? {
            return g.batch_norm_grad_x_in(x, stats, gamma, sums, z, (channels_first, None));
        }
        let g = self.dropped_view(x, drop)?;
        let pass = BatchNormPass::GradX { relu: z.is_some() };
        let mut others = vec![x, stats, gamma, sums];
        others.extend(z);
        let out = g.bn_check(pass, &others)?;
        let (n, c, hw) = dims(OP, x.shape())?;
        let out = if channels_first { vec![c, n, hw] } else { out };
        if let DeviceInner::Cpu = self.device().inner {
            let (g, xv, s, gm, su) = (
                self.host_f64(),
                x.host_f64(),
                stats.host_f64(),
                gamma.host_f64(),
                sums.host_f64(),
            );
            let zv = z.map(|t| t.host_f64());
            let m = (n * hw) as f64;
            let dx = (0..g.len())
                .map(|o| {
                    let ch = (o / hw) % c;
                    let inv = s[2 * c + ch];
                    let xh = (xv[o] - s[ch]) * inv;
                    let gv = masked(&g, zv.as_deref(), o);
                    gm[ch] * inv * (gv - su[ch] / m - xh * su[c + ch] / m)
                })
                .collect();
            let dx = Tensor::cpu_from_f64(self.device(), x.shape(), dx);
            return match channels_first {
                true => dx.reshape(&[n, c, hw])?.permute(&[1, 0, 2]),
                false => Ok(dx),
            };
        }
        let mut p = params(x.shape(), 1, 0.0, (0.0, 0.0, 0.0, z.is_some()));
        p[12] = channels_first as u32;
        set_grad_dropout(&mut p, drop);
        // Without a ReLU, x stands in z's binding, as for the sums; the step follows.
        let step = drop.map_or(x, |d| d.2);
        let inputs = [&g, x, stats, gamma, sums, z.unwrap_or(x), step];
        let (entry, groups) = elementwise("batch_norm_grad_x", "batch_norm_grad_x4", g.numel(), hw);
        launch(entry, &inputs, 5, &out, &p, groups)
    }

    /// Runs `pass` on its inputs (the executor's entry).
    pub(crate) fn batch_norm_pass(pass: BatchNormPass, x: &[&Tensor]) -> Result<Tensor> {
        use BatchNormPass as P;
        match (pass, x) {
            (P::Stats { eps }, [x]) => x.batch_norm_stats(eps),
            (P::Apply { relu }, [x, s, g, b]) => x.batch_norm_apply(s, g, b, relu),
            (
                P::Running {
                    keep,
                    take_mean,
                    take_var,
                },
                [s, m, v],
            ) => s.batch_norm_running(m, v, keep, take_mean, take_var),
            (P::GradSums { relu: false }, [g, x, s]) => g.batch_norm_grad_sums(x, s, None),
            (P::GradSums { relu: true }, [g, x, s, z]) => g.batch_norm_grad_sums(x, s, Some(z)),
            (P::GradX { relu: false }, [g, x, s, gm, su]) => {
                g.batch_norm_grad_x(x, s, gm, su, None)
            }
            (P::GradX { relu: true }, [g, x, s, gm, su, z]) => {
                g.batch_norm_grad_x(x, s, gm, su, Some(z))
            }
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
