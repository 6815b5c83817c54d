//! The cross-entropy kernel's shared pieces: its shader, options, params words, grid and
//! bindings, and the count of rows a mean divides by. `crate::ops::loss` (the per-row op),
//! `crate::ops::loss_vocab` (long rows, logits past one binding) and
//! `crate::ops::loss_reduced` (the mean and sum over rows) all dispatch loss.wgsl through
//! them; here, below all three, so that no two of those files import each other.

use crate::error::Result;
use crate::gpu::{BufArg, GpuContext, Kernel};
use crate::ops::gpu_output;
use crate::ops::reduce::ReduceOp;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "loss",
    source: include_str!("../../shaders/loss.wgsl"),
};

/// Workgroup size of loss.wgsl.
pub(crate) const WG: u64 = 64;

/// PyTorch's default `ignore_index`.
pub const IGNORE_INDEX: i32 = -100;

/// Options of cross-entropy. `Default` ignores label -100, as PyTorch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrossEntropyOptions {
    /// Rows with this label have loss 0 and gradient 0 and are not counted by a mean over
    /// counted rows (checked before the range, so it may be any value, 0 included).
    /// `None`: every label must lie in `0..C`.
    pub ignore_index: Option<i32>,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        CrossEntropyOptions {
            ignore_index: Some(IGNORE_INDEX),
        }
    }
}

impl CrossEntropyOptions {
    pub(crate) fn ignores(&self, label: i32) -> bool {
        self.ignore_index == Some(label)
    }
}

/// What a reduced cross-entropy divides its sum by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Divide {
    /// The sum.
    One,
    /// All rows, ignored ones included: a graph's `cross_entropy(..).mean()`.
    Rows,
    /// The rows counted (not ignored), as PyTorch's mean; none counted gives NaN.
    Counted,
}

/// Most classes one invocation walks. `cross_entropy_forward` and `cross_entropy_lse` walk a
/// row in one invocation (`classes` loop steps; `cross_entropy_backward_rows`, 2·classes, only
/// takes rows of at most 64), and Mesa's lavapipe silently stops an invocation after 65535
/// loop iterations, so longer rows are split into parts (`crate::ops::loss_vocab`).
pub const MAX_CLASSES: usize = crate::gpu::LOOP_BUDGET;

/// The params words of loss.wgsl: rows, classes, the divisor of `cross_entropy_reduced`
/// (f32 bits; the other entries ignore it), the runtime 1.0 that keeps its Kahan
/// correction from being folded away, the ignore index and the flags (bit 0: ignore, bit 1:
/// divide by the rows counted), then the split rows' part length and parts per row.
/// Every dispatch passes all of them.
pub(crate) fn words(
    (rows, classes): (usize, usize),
    divide: Divide,
    opts: CrossEntropyOptions,
    (part_len, parts): (usize, usize),
) -> [u32; 8] {
    let divisor = if divide == Divide::Rows { rows } else { 1 } as f32;
    let flags = opts.ignore_index.is_some() as u32 | ((divide == Divide::Counted) as u32) << 1;
    [
        rows as u32,
        classes as u32,
        divisor.to_bits(),
        1f32.to_bits(),
        opts.ignore_index.unwrap_or(0) as u32,
        flags,
        part_len as u32,
        parts as u32,
    ]
}

pub(crate) fn groups(ctx: &GpuContext, n: usize) -> [u32; 3] {
    ctx.grid((n as u64).div_ceil(WG))
}

pub(crate) fn arg(t: &Tensor) -> BufArg<'_> {
    t.gpu_arg().expect("GPU device holds GPU tensors")
}

/// How many of `labels` (…, i32) a mean over counted rows counts (those not ignored), as a
/// rank-0 f32 tensor: the divisor of PyTorch's mean (`Var::cross_entropy_mean_with`).
pub(crate) fn counted_rows(labels: &Tensor, opts: CrossEntropyOptions) -> Result<Tensor> {
    labels.expect_i32("cross_entropy_count")?;
    let rows = labels.numel();
    let Some(ctx) = labels.device().gpu_ctx() else {
        let l = labels.to_vec::<i32>()?;
        let n = l.iter().filter(|&&v| !opts.ignores(v)).count();
        return Ok(Tensor::cpu_from_f64(labels.device(), &[], vec![n as f64]));
    };
    let w = gpu_output(
        ctx,
        labels.device(),
        "cross_entropy_count",
        &[rows],
        DType::F32,
    )?;
    if rows > 0 {
        let params = words((rows, 1), Divide::One, opts, (0, 0));
        let bufs = [arg(labels), arg(&w)];
        ctx.dispatch(
            &SHADER,
            "cross_entropy_counted",
            &[],
            &params,
            &bufs,
            groups(ctx, rows),
        )?;
    }
    w.reduce_all(ReduceOp::Sum)
}
