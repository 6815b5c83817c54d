//! Cross-entropy over long rows (a language model's vocabulary) and over logits past one
//! storage binding; the rest of the op is in `crate::ops::loss`.
//!
//! Split rows: a row longer than one invocation may walk ([`MAX_CLASSES`], within lavapipe's
//! loop cap), or one of few long rows, is cut into parts of at most `part_len` classes.
//! `cross_entropy_partials` gives each part's (max, sum of e^(x - max)), one invocation per
//! part; `cross_entropy_merge` merges a row's parts into its log-sum-exp and loss, one
//! invocation per row; the gradient is then `cross_entropy_backward`, one invocation per
//! element: softmax minus one-hot from the merged log-sum-exp. Loop steps per invocation:
//! `part_len` and `parts`, both at most `LOOP_BUDGET` ([`plan_parts`]).
//! Blocks: logits past one binding run in blocks of whole rows gathered by copies (see
//! `crate::ops::chunk`); a single row past one binding is `Err(TooLarge)`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{BufArg, GpuContext, LOOP_BUDGET, STATUS_BYTES};
use crate::ops::loss_kernel::{
    arg, counted_rows, groups, words, CrossEntropyOptions, Divide, MAX_CLASSES, SHADER,
};
use crate::ops::reduce::{ReduceOp, TARGET_OUTPUTS};
use crate::tensor::Tensor;
use crate::DType;

/// Below this many rows, rows of at least [`SPLIT_MIN_LEN`] classes are split too, so that
/// more invocations run than rows (as softmax splits few long lines).
const SPLIT_BELOW_ROWS: usize = 1024;
const SPLIT_MIN_LEN: usize = 4096;

/// Fewest classes in a part: a shorter part costs more in its merge than it saves.
const MIN_PART: usize = 512;

/// Whether rows of `classes` take the split path.
pub(crate) fn split(rows: usize, classes: usize) -> bool {
    classes > MAX_CLASSES || (rows < SPLIT_BELOW_ROWS && classes >= SPLIT_MIN_LEN)
}

/// (part_len, parts) for `rows` rows of `classes`: about [`TARGET_OUTPUTS`] parts in all,
/// each at least [`MIN_PART`] classes, with `part_len` (the partials' walk) and `parts` (the
/// merge's walk) both at most `LOOP_BUDGET`, which holds for rows up to LOOP_BUDGET² classes
/// (2^28, past any storage binding a GPU offers).
pub(crate) fn plan_parts(rows: usize, classes: usize) -> (usize, usize) {
    let wanted = TARGET_OUTPUTS.div_ceil(rows.max(1)).max(1);
    let part_len = classes
        .div_ceil(wanted)
        .max(MIN_PART)
        .max(classes.div_ceil(LOOP_BUDGET))
        .min(LOOP_BUDGET)
        .min(classes)
        .max(1);
    (part_len, classes.div_ceil(part_len))
}

/// Records the split-row passes: `loss` (rows) gets each row's loss and `lse` (rows) its
/// log-sum-exp (0 for an ignored row, NaN for a bad label, which is reported in the status
/// words). The logits fit one binding.
pub(crate) fn lse_and_loss(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    labels: &Tensor,
    opts: CrossEntropyOptions,
    loss: BufArg<'_>,
    lse: BufArg<'_>,
) -> Result<()> {
    let (rows, classes) = (labels.numel(), *x.shape().last().expect("rank >= 1"));
    let (part_len, parts) = plan_parts(rows, classes);
    debug_assert!(part_len <= LOOP_BUDGET && parts <= LOOP_BUDGET);
    if parts > LOOP_BUDGET {
        return Err(Error::Invalid {
            op: "cross_entropy",
            detail: format!("{classes} classes: more than {LOOP_BUDGET}² per row"),
        });
    }
    let params = words((rows, classes), Divide::One, opts, (part_len, parts));
    let part_bytes = (rows * parts * 8) as u64;
    let stats = ctx.alloc(part_bytes);
    let sa = (stats.raw(), part_bytes);
    ctx.dispatch(
        &SHADER,
        "cross_entropy_partials",
        &[],
        &params,
        &[arg(x), sa],
        groups(ctx, rows * parts),
    )?;
    let status = ctx.status_buffer();
    ctx.dispatch(
        &SHADER,
        "cross_entropy_merge",
        &[],
        &params,
        &[arg(x), arg(labels), loss, (&status, STATUS_BYTES), lse, sa],
        groups(ctx, rows),
    )
}

/// The sum of the per-row `losses`, or their mean over all rows or over the rows counted
/// (`Divide::Counted`: the sum over the rows not ignored, NaN when none is).
pub(crate) fn reduce_losses(
    losses: &Tensor,
    labels: &Tensor,
    divide: Divide,
    opts: CrossEntropyOptions,
) -> Result<Tensor> {
    match divide {
        Divide::One => losses.reduce_all(ReduceOp::Sum),
        Divide::Rows => losses.reduce_all(ReduceOp::Mean),
        Divide::Counted if opts.ignore_index.is_none() => losses.reduce_all(ReduceOp::Mean),
        Divide::Counted => {
            let count = counted_rows(labels, opts)?;
            losses.reduce_all(ReduceOp::Sum)?.div(&count)
        }
    }
}

/// Cross-entropy on logits past one storage binding: the forward, or with the upstream
/// gradient `g` the backward, on blocks of whole rows of the logits, labels and `g`
/// gathered by copies, each result copied into one output.
pub(crate) fn blocks(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    labels: &Tensor,
    g: Option<&Tensor>,
    opts: CrossEntropyOptions,
    out_shape: &[usize],
) -> Result<Tensor> {
    use crate::ops::chunk::{binding_elems, gather_box, scatter_block, windows};
    let (rows, classes) = (labels.numel(), *x.shape().last().expect("rank >= 1"));
    let (op, out_cols) = match g {
        None => ("cross_entropy", 1),
        Some(_) => ("cross_entropy_backward", classes),
    };
    if classes > binding_elems(ctx) {
        return Err(Error::TooLarge {
            op,
            shape: x.shape().to_vec(),
            bytes: (classes * 4) as u64,
            limit: ctx.binding_limit(),
            limit_name: "max_storage_buffer_binding_size (one row of logits)",
        });
    }
    let out = crate::ops::gpu_output_big(ctx, x.device(), op, out_shape, DType::F32)?;
    let rows_of = |t: &Tensor, r: (usize, usize), cols: usize| -> Result<Tensor> {
        gather_box(ctx, t, (rows, 1, cols), (r, (0, 1), (0, cols)))?.reshape(&[r.1, cols])
    };
    for r in windows(rows, binding_elems(ctx) / classes) {
        let xb = rows_of(x, r, classes)?;
        let lb = rows_of(labels, r, 1)?.reshape(&[r.1])?;
        let y = match g {
            None => xb.cross_entropy_with(&lb, opts)?,
            Some(g) => {
                let gb = rows_of(g, r, 1)?.reshape(&[r.1])?;
                xb.cross_entropy_backward_with(&lb, &gb, opts)?
            }
        };
        scatter_block(ctx, &y, &out, (r.1, out_cols), out_cols, (r.0, 0))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_rows_within_the_loop_budget() {
        for rows in [1, 2, 7, 64, 512, 1023, 1024, 100_000] {
            for classes in [
                1,
                511,
                4096,
                16_384,
                16_385,
                50_257,
                128_256,
                1 << 22,
                33_554_432,
                LOOP_BUDGET * LOOP_BUDGET,
            ] {
                let (len, parts) = plan_parts(rows, classes);
                assert!((1..=LOOP_BUDGET).contains(&len), "{rows}x{classes}: {len}");
                assert!(parts <= LOOP_BUDGET, "{rows}x{classes}: {parts} parts");
                assert!(len * parts >= classes && len * (parts - 1) < classes);
            }
        }
        assert_eq!(plan_parts(64, 50_257), (786, 64));
    }
}
