//! Fused softmax cross-entropy with integer class labels.
//!
//! Shape rule: logits (…, C) and labels (…) of i32 give per-sample losses (…);
//! the backward takes the upstream gradient (…) and gives (…, C).
//! CPU reference: f64 log-sum-exp per row; a label outside 0..C is an error.
//! GPU: `shaders/loss.wgsl`; such a label gives NaN there and is reported in the recording thread's
//! status words, so the next readback (or `synchronize`) is the same error.
//! Gradient: d loss_i / d x_ic = softmax(x_i)_c - [c = label_i].
//! Logits past one storage binding run in blocks of whole rows gathered by copies
//! (`cross_entropy_blocks`, see `crate::ops::chunk`).
//! `cross_entropy_reduced` is the mean (or sum) over rows of `cross_entropy` in one
//! dispatch of one workgroup for small problems (a training step's loss), else those two ops.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{BufArg, GpuContext, Kernel, STATUS_BYTES};
use crate::ops::gpu_output;
use crate::ops::reduce::ReduceOp;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "loss",
    source: include_str!("../../shaders/loss.wgsl"),
};

/// Workgroup size of loss.wgsl.
const WG: u64 = 64;

/// Rows of at most this many classes take the one-dispatch backward
/// (`cross_entropy_backward_rows`, a row per invocation); longer rows take the lse pass
/// and an invocation per element, which keeps wide rows (a vocabulary) parallel.
const ROW_PER_INVOCATION: usize = 64;

/// Most classes in a row. `cross_entropy_forward` and `cross_entropy_lse` walk a row in one
/// invocation (`classes` loop steps; `cross_entropy_backward_rows`, 2·classes, only takes rows
/// of at most 64), and Mesa's lavapipe silently stops an invocation after 65535 loop
/// iterations, so longer rows are refused with an error naming the op, the shape and this limit.
pub const MAX_CLASSES: usize = crate::gpu::LOOP_BUDGET;

/// Most loop steps one invocation of `cross_entropy_reduced` (or `_backward`) may take in all
/// ([`reduced_steps`]); larger problems take `cross_entropy` (and its gradient) and a
/// reduction, which also spread the rows over many workgroups.
const REDUCED_WALK: usize = crate::gpu::LOOP_BUDGET;

/// Loop steps of one invocation of the one-workgroup kernels: each of its ceil(rows / 64)
/// rows costs one step of the row loop and `classes` of `row_lse`; with the gradient
/// (`cross_entropy_reduced_backward`) another row step, `row_lse` again and the `classes`
/// stores of `grad_row`. (The 6-step tree over the partials is unrolled.)
fn reduced_steps(rows: usize, classes: usize, gradient: bool) -> usize {
    let per_row = if gradient {
        3 * classes + 2
    } else {
        classes + 1
    };
    rows.div_ceil(WG as usize) * per_row
}

/// The params words of loss.wgsl: rows, classes, the divisor of `cross_entropy_reduced`
/// (f32 bits; the other entries ignore it) and the runtime 1.0 that keeps its Kahan
/// correction from being folded away. Every dispatch passes all of them.
fn words(rows: usize, classes: usize, divisor: f32) -> [u32; 4] {
    [
        rows as u32,
        classes as u32,
        divisor.to_bits(),
        1f32.to_bits(),
    ]
}

/// Checks logits (…, C) against labels (…) and returns (rows, classes).
pub(crate) fn cross_entropy_shape(
    op: &'static str,
    logits: &[usize],
    labels: &[usize],
) -> Result<(usize, usize)> {
    let Some((&classes, batch)) = logits.split_last() else {
        return Err(Error::Shape {
            op,
            detail: format!("logits need rank >= 1, got {logits:?}"),
        });
    };
    if batch != labels {
        return Err(Error::Shape {
            op,
            detail: format!(
                "labels {labels:?} must have the logits' shape {logits:?} without its last dim"
            ),
        });
    }
    if classes == 0 || classes > MAX_CLASSES {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "{classes} classes in logits {logits:?}; supported 1..={MAX_CLASSES} \
                 (one invocation walks a row, within the GPU loop budget)"
            ),
        });
    }
    Ok((batch.iter().product(), classes))
}

fn host_labels(op: &'static str, labels: &Tensor, classes: usize) -> Result<Vec<i32>> {
    let l = labels.to_vec::<i32>()?;
    if let Some(bad) = l.iter().find(|&&v| v < 0 || v as usize >= classes) {
        return Err(Error::Invalid {
            op,
            detail: format!("label {bad} outside 0..{classes}"),
        });
    }
    Ok(l)
}

/// f64 log-sum-exp of each row.
fn lse_reference(x: &[f64], rows: usize, classes: usize) -> Vec<f64> {
    (0..rows)
        .map(|i| {
            let row = &x[i * classes..(i + 1) * classes];
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

fn groups(ctx: &GpuContext, n: usize) -> [u32; 3] {
    ctx.grid((n as u64).div_ceil(WG))
}

fn arg(t: &Tensor) -> BufArg<'_> {
    t.gpu_arg().expect("GPU device holds GPU tensors")
}

impl Tensor {
    /// Per-sample cross-entropy of logits `self` (…, C) against class indices `labels` (…, i32).
    pub fn cross_entropy(&self, labels: &Tensor) -> Result<Tensor> {
        let op = "cross_entropy";
        self.expect_f32(op)?;
        labels.expect_i32(op)?;
        self.expect_same_device(op, labels)?;
        let (rows, classes) = cross_entropy_shape(op, self.shape(), labels.shape())?;
        let out_shape = labels.shape().to_vec();
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let l = host_labels(op, labels, classes)?;
                let lse = lse_reference(&x, rows, classes);
                let out = (0..rows)
                    .map(|i| lse[i] - x[i * classes + l[i] as usize])
                    .collect();
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) if !crate::ops::chunk::fits(ctx, rows * classes) => {
                cross_entropy_blocks(ctx, self, labels, None, (rows, classes), &out_shape)
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                if rows > 0 {
                    let params = words(rows, classes, 1.0);
                    let status = ctx.status_buffer();
                    let bufs = [arg(self), arg(labels), arg(&out), (&status, STATUS_BYTES)];
                    ctx.dispatch(
                        &SHADER,
                        "cross_entropy_forward",
                        &[],
                        &params,
                        &bufs,
                        groups(ctx, rows),
                    )?;
                }
                Ok(out)
            }
        }
    }

    /// The mean (`mean` true) or the sum over rows of [`Tensor::cross_entropy`], as a rank-0
    /// tensor (shape `[]`, as [`Tensor::mean`] and [`Tensor::sum`] give). On a GPU, problems
    /// of at most about 2^19 logits take one dispatch of one workgroup; larger ones take
    /// `cross_entropy` and then `mean`/`sum`. The inputs are checked as `cross_entropy`
    /// checks them, with the same errors; the mean of no rows is [`Error::Empty`] (op
    /// `"mean"`), as `mean` of the empty per-row losses is, and their sum is 0.
    pub fn cross_entropy_reduced(&self, labels: &Tensor, mean: bool) -> Result<Tensor> {
        let op = "cross_entropy";
        self.expect_f32(op)?;
        labels.expect_i32(op)?;
        self.expect_same_device(op, labels)?;
        let (rows, classes) = cross_entropy_shape(op, self.shape(), labels.shape())?;
        let reduce = if mean { ReduceOp::Mean } else { ReduceOp::Sum };
        if rows == 0 && mean {
            return Err(Error::Empty {
                op: reduce.name(),
                shape: labels.shape().to_vec(),
            });
        }
        let divisor = if mean { rows } else { 1 };
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let l = host_labels(op, labels, classes)?;
                let lse = lse_reference(&x, rows, classes);
                // From +0.0, as the GPU's accumulators and `sum` start: an empty sum is
                // +0.0 (`Iterator::sum` starts from -0.0).
                let sum = (0..rows)
                    .map(|i| lse[i] - x[i * classes + l[i] as usize])
                    .fold(0.0, |a, b| a + b);
                Ok(Tensor::cpu_from_f64(
                    self.device(),
                    &[],
                    vec![sum / divisor as f64],
                ))
            }
            // One workgroup walks every row: only while each invocation's walk is short
            // (and the logits fit one binding; classes <= MAX_CLASSES is checked above).
            DeviceInner::Gpu(ctx)
                if reduced_steps(rows, classes, false) <= REDUCED_WALK
                    && crate::ops::chunk::fits(ctx, rows * classes) =>
            {
                let out = gpu_output(ctx, self.device(), op, &[], DType::F32)?;
                let params = words(rows, classes, divisor as f32);
                let status = ctx.status_buffer();
                let bufs = [arg(self), arg(labels), arg(&out), (&status, STATUS_BYTES)];
                ctx.dispatch(
                    &SHADER,
                    "cross_entropy_reduced",
                    &[],
                    &params,
                    &bufs,
                    [1, 1, 1],
                )?;
                Ok(out)
            }
            DeviceInner::Gpu(_) => self.cross_entropy(labels)?.reduce_all(reduce),
        }
    }

    /// [`Tensor::cross_entropy_reduced`] and, in the same dispatch where it fits, the
    /// gradient [`Tensor::cross_entropy_backward`] for the upstream `g` (rows): a training
    /// step's loss and its gradient (the graph executor fuses the two when `g` is known
    /// before the loss, as a mean's or a sum's constant gradient is). Elsewhere, the two ops.
    pub(crate) fn cross_entropy_reduced_backward(
        &self,
        labels: &Tensor,
        mean: bool,
        g: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // One workgroup walks every row twice (its gradient, then its loss): only while
        // that walk is short, the logits fit one binding and the inputs are what
        // `cross_entropy` and its gradient accept; otherwise the two ops check and run.
        let same = |t: &Tensor| t.device().same(self.device());
        let fused = match (
            self.device().gpu_ctx(),
            cross_entropy_shape("cross_entropy", self.shape(), labels.shape()),
        ) {
            (Some(ctx), Ok((rows, classes)))
                if (self.dtype(), labels.dtype(), g.dtype())
                    == (DType::F32, DType::I32, DType::F32)
                    && same(labels)
                    && same(g)
                    && g.shape() == labels.shape()
                    && rows > 0
                    && reduced_steps(rows, classes, true) <= REDUCED_WALK
                    && crate::ops::chunk::fits(ctx, rows * classes) =>
            {
                Some((ctx, rows, classes))
            }
            _ => None,
        };
        let Some((ctx, rows, classes)) = fused else {
            return Ok((
                self.cross_entropy_reduced(labels, mean)?,
                self.cross_entropy_backward(labels, g)?,
            ));
        };
        let op = "cross_entropy";
        let total = gpu_output(ctx, self.device(), op, &[], DType::F32)?;
        let dx = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
        let divisor = if mean { rows } else { 1 };
        let params = words(rows, classes, divisor as f32);
        let status = ctx.status_buffer();
        let bufs = [
            arg(self),
            arg(labels),
            arg(&total),
            (&status, STATUS_BYTES),
            arg(&dx),
            arg(g),
        ];
        ctx.dispatch(
            &SHADER,
            "cross_entropy_reduced_backward",
            &[],
            &params,
            &bufs,
            [1, 1, 1],
        )?;
        Ok((total, dx))
    }

    /// The gradient of [`Tensor::cross_entropy`] with respect to the logits `self`,
    /// for the upstream gradient `g` (…): `(softmax(x) - onehot(label))·g`.
    pub fn cross_entropy_backward(&self, labels: &Tensor, g: &Tensor) -> Result<Tensor> {
        let op = "cross_entropy_backward";
        self.expect_f32(op)?;
        labels.expect_i32(op)?;
        g.expect_f32(op)?;
        self.expect_same_device(op, labels)?;
        self.expect_same_device(op, g)?;
        let (rows, classes) = cross_entropy_shape(op, self.shape(), labels.shape())?;
        if g.shape() != labels.shape() {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "upstream {:?} must match labels {:?}",
                    g.shape(),
                    labels.shape()
                ),
            });
        }
        match &self.device().inner {
            DeviceInner::Cpu => {
                let (x, gv) = (self.host_f64(), g.host_f64());
                let l = host_labels(op, labels, classes)?;
                let lse = lse_reference(&x, rows, classes);
                let out = (0..rows * classes)
                    .map(|e| {
                        let (i, c) = (e / classes, e % classes);
                        let onehot = if l[i] as usize == c { 1.0 } else { 0.0 };
                        ((x[e] - lse[i]).exp() - onehot) * gv[i]
                    })
                    .collect();
                Ok(Tensor::cpu_from_f64(self.device(), self.shape(), out))
            }
            DeviceInner::Gpu(ctx) if !crate::ops::chunk::fits(ctx, rows * classes) => {
                cross_entropy_blocks(ctx, self, labels, Some(g), (rows, classes), self.shape())
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
                if rows > 0 && classes <= ROW_PER_INVOCATION {
                    let params = words(rows, classes, 1.0);
                    let status = ctx.status_buffer();
                    let bufs = [
                        arg(self),
                        arg(labels),
                        arg(g),
                        (&status, STATUS_BYTES),
                        arg(&out),
                    ];
                    ctx.dispatch(
                        &SHADER,
                        "cross_entropy_backward_rows",
                        &[],
                        &params,
                        &bufs,
                        groups(ctx, rows),
                    )?;
                } else if rows > 0 {
                    let lse = gpu_output(ctx, self.device(), op, &[rows], DType::F32)?;
                    let params = words(rows, classes, 1.0);
                    let status = ctx.status_buffer();
                    let bufs = [arg(self), arg(labels), arg(&lse), (&status, STATUS_BYTES)];
                    ctx.dispatch(
                        &SHADER,
                        "cross_entropy_lse",
                        &[],
                        &params,
                        &bufs,
                        groups(ctx, rows),
                    )?;
                    let bufs = [arg(self), arg(labels), arg(&lse), arg(g), arg(&out)];
                    ctx.dispatch(
                        &SHADER,
                        "cross_entropy_backward",
                        &[],
                        &params,
                        &bufs,
                        groups(ctx, rows * classes),
                    )?;
                }
                Ok(out)
            }
        }
    }
}

/// Cross-entropy on logits past one storage binding: the forward, or with the upstream
/// gradient `g` the backward, on blocks of whole rows of the logits, labels and `g`
/// gathered by copies, each result copied into one output. A row is at most
/// [`MAX_CLASSES`] long, so a block always holds at least one.
fn cross_entropy_blocks(
    ctx: &std::sync::Arc<GpuContext>,
    x: &Tensor,
    labels: &Tensor,
    g: Option<&Tensor>,
    (rows, classes): (usize, usize),
    out_shape: &[usize],
) -> Result<Tensor> {
    use crate::ops::chunk::{binding_elems, gather_box, scatter_block, windows};
    let (op, out_cols) = match g {
        None => ("cross_entropy", 1),
        Some(_) => ("cross_entropy_backward", classes),
    };
    let out = crate::ops::gpu_output_big(ctx, x.device(), op, out_shape, DType::F32)?;
    let rows_of = |t: &Tensor, r: (usize, usize), cols: usize| -> Result<Tensor> {
        gather_box(ctx, t, (rows, 1, cols), (r, (0, 1), (0, cols)))?.reshape(&[r.1, cols])
    };
    for r in windows(rows, (binding_elems(ctx) / classes).max(1)) {
        let xb = rows_of(x, r, classes)?;
        let lb = rows_of(labels, r, 1)?.reshape(&[r.1])?;
        let y = match g {
            None => xb.cross_entropy(&lb)?,
            Some(g) => xb.cross_entropy_backward(&lb, &rows_of(g, r, 1)?.reshape(&[r.1])?)?,
        };
        scatter_block(ctx, &y, &out, (r.1, out_cols), out_cols, (r.0, 0))?;
    }
    Ok(out)
}
