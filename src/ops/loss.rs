//! Fused softmax cross-entropy with integer class labels.
//!
//! Shape rule: logits (…, C) and labels (…) of i32 give per-sample losses (…);
//! the backward takes the upstream gradient (…) and gives (…, C).
//! CPU reference: f64 log-sum-exp per row; a label outside 0..C is an error.
//! A row whose label is the ignore index ([`CrossEntropyOptions`], PyTorch's `ignore_index`,
//! -100 by default) has loss 0 and gradient 0, and a mean over counted rows skips it.
//! GPU: `shaders/loss.wgsl`; such a label gives NaN there and is reported in the recording thread's
//! status words, so the next readback (or `synchronize`) is the same error.
//! Gradient: d loss_i / d x_ic = softmax(x_i)_c - [c = label_i].
//! Rows longer than one invocation may walk (a language model's vocabulary), or few long
//! rows, are split into parts, and logits past one storage binding run in blocks of whole
//! rows: both in `crate::ops::loss_vocab`. The kernel's shader, options, params words and
//! bindings, which all the cross-entropy files share, are in `crate::ops::loss_kernel`.
//! `cross_entropy_reduced` (the mean or sum over rows, in one dispatch of one workgroup for
//! small problems) is in `crate::ops::loss_reduced`.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{BufArg, GpuContext, STATUS_BYTES};
use crate::ops::gpu_output;
use crate::ops::loss_vocab;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) use crate::ops::loss_kernel::{arg, counted_rows, groups, words, Divide, SHADER, WG};
pub use crate::ops::loss_kernel::{CrossEntropyOptions, IGNORE_INDEX, MAX_CLASSES};

/// Rows of at most this many classes take the one-dispatch backward
/// (`cross_entropy_backward_rows`, a row per invocation); longer rows take the lse pass
/// and an invocation per element, which keeps wide rows (a vocabulary) parallel.
const ROW_PER_INVOCATION: usize = 64;

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
    // Any number of classes: rows too long for one invocation are split, and a row past
    // one storage binding is refused when it runs on such a GPU (`loss_vocab::blocks`).
    if classes == 0 {
        return Err(Error::Invalid {
            op,
            detail: format!("0 classes in logits {logits:?}; supported: at least 1"),
        });
    }
    Ok((batch.iter().product(), classes))
}

/// The labels on the host, checked: every one not ignored lies in 0..classes.
fn host_labels(
    op: &'static str,
    labels: &Tensor,
    classes: usize,
    opts: CrossEntropyOptions,
) -> Result<Vec<i32>> {
    let l = labels.to_vec::<i32>()?;
    if let Some(bad) = l
        .iter()
        .find(|&&v| !opts.ignores(v) && (v < 0 || v as usize >= classes))
    {
        return Err(Error::Invalid {
            op,
            detail: format!("label {bad} outside 0..{classes}"),
        });
    }
    Ok(l)
}

/// f64 log-sum-exp of each row.
pub(super) fn lse_reference(x: &[f64], rows: usize, classes: usize) -> Vec<f64> {
    (0..rows)
        .map(|i| {
            let row = &x[i * classes..(i + 1) * classes];
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// f64 loss of each row: lse - x[label], 0 for an ignored row (CPU reference).
pub(super) fn losses_reference(
    x: &Tensor,
    labels: &Tensor,
    opts: CrossEntropyOptions,
) -> Result<Vec<f64>> {
    let (rows, classes) = cross_entropy_shape("cross_entropy", x.shape(), labels.shape())?;
    let x = x.host_f64();
    let l = host_labels("cross_entropy", labels, classes, opts)?;
    let lse = lse_reference(&x, rows, classes);
    Ok((0..rows)
        .map(|i| match opts.ignores(l[i]) {
            true => 0.0,
            false => lse[i] - x[i * classes + l[i] as usize],
        })
        .collect())
}

impl Tensor {
    /// Per-sample cross-entropy of logits `self` (…, C) against class indices `labels` (…, i32),
    /// with the default options (label -100 ignored: loss 0).
    pub fn cross_entropy(&self, labels: &Tensor) -> Result<Tensor> {
        self.cross_entropy_with(labels, CrossEntropyOptions::default())
    }

    /// Per-sample cross-entropy with `opts`; an ignored row's loss is 0.
    pub fn cross_entropy_with(&self, labels: &Tensor, opts: CrossEntropyOptions) -> Result<Tensor> {
        let op = "cross_entropy";
        self.expect_f32(op)?;
        labels.expect_i32(op)?;
        self.expect_same_device(op, labels)?;
        let (rows, classes) = cross_entropy_shape(op, self.shape(), labels.shape())?;
        let out_shape = labels.shape().to_vec();
        match &self.device().inner {
            DeviceInner::Cpu => {
                let out = losses_reference(self, labels, opts)?;
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) if !crate::ops::chunk::fits(ctx, rows * classes) => {
                loss_vocab::blocks(ctx, self, labels, None, opts, &out_shape)
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                if rows > 0 && loss_vocab::split(rows, classes) {
                    let lse = ctx.alloc((rows * 4) as u64);
                    let lse = (lse.raw(), (rows * 4) as u64);
                    loss_vocab::lse_and_loss(ctx, self, labels, opts, arg(&out), lse)?;
                } else if rows > 0 {
                    let params = words((rows, classes), Divide::One, opts, (0, 0));
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

    /// The gradient of [`Tensor::cross_entropy`] with respect to the logits `self`,
    /// for the upstream gradient `g` (…): `(softmax(x) - onehot(label))·g` (default options:
    /// rows labelled -100 get 0).
    pub fn cross_entropy_backward(&self, labels: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.cross_entropy_backward_with(labels, g, CrossEntropyOptions::default())
    }

    /// [`Tensor::cross_entropy_backward`] with `opts`: an ignored row's gradient is 0.
    pub fn cross_entropy_backward_with(
        &self,
        labels: &Tensor,
        g: &Tensor,
        opts: CrossEntropyOptions,
    ) -> Result<Tensor> {
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
                let l = host_labels(op, labels, classes, opts)?;
                let lse = lse_reference(&x, rows, classes);
                let out = (0..rows * classes)
                    .map(|e| {
                        let (i, c) = (e / classes, e % classes);
                        if opts.ignores(l[i]) {
                            return 0.0;
                        }
                        let onehot = if l[i] as usize == c { 1.0 } else { 0.0 };
                        ((x[e] - lse[i]).exp() - onehot) * gv[i]
                    })
                    .collect();
                Ok(Tensor::cpu_from_f64(self.device(), self.shape(), out))
            }
            DeviceInner::Gpu(ctx) if !crate::ops::chunk::fits(ctx, rows * classes) => {
                loss_vocab::blocks(ctx, self, labels, Some(g), opts, self.shape())
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
                let params = words((rows, classes), Divide::One, opts, (0, 0));
                if rows > 0 && classes <= ROW_PER_INVOCATION {
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
                    if loss_vocab::split(rows, classes) {
                        // The losses are not asked for: a pooled scratch buffer.
                        let losses = ctx.alloc((rows * 4) as u64);
                        let losses = (losses.raw(), (rows * 4) as u64);
                        loss_vocab::lse_and_loss(ctx, self, labels, opts, losses, arg(&lse))?;
                    } else {
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
                    }
                    backward_from_lse(ctx, self, labels, g, opts, arg(&lse), &out)?;
                }
                Ok(out)
            }
        }
    }
}

/// dx = (exp(x - lse) - onehot)·g, 0 on ignored rows: for split rows one invocation per
/// part (`part_len` loop steps), else one per element (no loop).
pub(super) fn backward_from_lse(
    ctx: &GpuContext,
    x: &Tensor,
    labels: &Tensor,
    g: &Tensor,
    opts: CrossEntropyOptions,
    lse: BufArg<'_>,
    dx: &Tensor,
) -> Result<()> {
    let (rows, classes) = (labels.numel(), x.shape().last().copied().unwrap_or(1));
    let bufs = [arg(x), arg(labels), lse, arg(g), arg(dx)];
    let (entry, parts, n) = if loss_vocab::split(rows, classes) {
        let p = loss_vocab::plan_parts(rows, classes);
        ("cross_entropy_backward_parts", p, rows * p.1)
    } else {
        ("cross_entropy_backward", (0, 0), rows * classes)
    };
    let params = words((rows, classes), Divide::One, opts, parts);
    ctx.dispatch(&SHADER, entry, &[], &params, &bufs, groups(ctx, n))
}
