//! Cross-entropy's mean and sum over rows: [`Tensor::cross_entropy_reduced`] (one dispatch of
//! one workgroup for small problems, else the per-row losses and a reduction), the training
//! step's loss and gradient together. The per-row op and its CPU reference are in
//! `crate::ops::loss`; the options, the kernel's params words and the count of rows a mean
//! divides by (`counted_rows`) in `crate::ops::loss_kernel`.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::STATUS_BYTES;
use crate::ops::gpu_output;
use crate::ops::loss::{
    arg, backward_from_lse, cross_entropy_shape, losses_reference, words, CrossEntropyOptions,
    Divide, MAX_CLASSES, SHADER, WG,
};
use crate::ops::loss_vocab;
use crate::ops::reduce::ReduceOp;
use crate::tensor::Tensor;
use crate::DType;

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

impl Tensor {
    /// The GPU context, rows and classes when logits `self`, `labels` and the upstream `g`
    /// are what `cross_entropy` and its gradient accept and the logits fit one binding:
    /// the one-workgroup kernels may take them if their walk is short enough.
    fn one_workgroup<'a>(
        &'a self,
        labels: &Tensor,
        g: &Tensor,
    ) -> Option<(&'a std::sync::Arc<crate::gpu::GpuContext>, usize, usize)> {
        let same = |t: &Tensor| t.device().same(self.device());
        match (
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
                    && crate::ops::chunk::fits(ctx, rows * classes) =>
            {
                Some((ctx, rows, classes))
            }
            _ => None,
        }
    }

    /// The one-workgroup loss and gradient kernel on logits `self` (rows, classes), and the
    /// gradient's column sums into `sums` when given: (total, dx).
    fn reduced_backward_in(
        &self,
        ctx: &std::sync::Arc<crate::gpu::GpuContext>,
        labels: &Tensor,
        g: &Tensor,
        (rows, classes): (usize, usize),
        (divide, opts): (Divide, CrossEntropyOptions),
        sums: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let op = "cross_entropy";
        let total = gpu_output(ctx, self.device(), op, &[], DType::F32)?;
        let dx = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
        let params = words((rows, classes), divide, opts, (0, 0));
        let status = ctx.status_buffer();
        let mut bufs = vec![
            arg(self),
            arg(labels),
            arg(&total),
            (&status, STATUS_BYTES),
            arg(&dx),
            arg(g),
        ];
        bufs.extend(sums.map(arg));
        let entry = match sums {
            Some(_) => "cross_entropy_reduced_backward_sums",
            None => "cross_entropy_reduced_backward",
        };
        ctx.dispatch(&SHADER, entry, &[], &params, &bufs, [1, 1, 1])?;
        Ok((total, dx))
    }

    /// [`Tensor::cross_entropy_reduced_backward`] of 2-D logits (rows, classes) and the
    /// gradient's column sums, Σ over rows (shape (classes), or (1, classes) with
    /// `keepdim`): the gradient of a bias added to the logits, in the same dispatch
    /// (`cross_entropy_reduced_backward_sums`) where the one-workgroup walk stays within
    /// its budget, else summed by a reduction.
    pub(crate) fn cross_entropy_reduced_backward_sums(
        &self,
        labels: &Tensor,
        divide: Divide,
        g: &Tensor,
        opts: CrossEntropyOptions,
        keepdim: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "cross_entropy";
        match self.one_workgroup(labels, g) {
            Some((ctx, rows, classes))
                if self.shape().len() == 2
                    && classes <= MAX_CLASSES
                    && reduced_steps(rows, classes, true)
                        + classes.div_ceil(WG as usize) * rows
                        <= REDUCED_WALK =>
            {
                let sums_shape = if keepdim {
                    vec![1, classes]
                } else {
                    vec![classes]
                };
                let sums = gpu_output(ctx, self.device(), op, &sums_shape, DType::F32)?;
                let (total, dx) = self.reduced_backward_in(
                    ctx,
                    labels,
                    g,
                    (rows, classes),
                    (divide, opts),
                    Some(&sums),
                )?;
                Ok((total, dx, sums))
            }
            _ => {
                let (total, dx) = self.cross_entropy_reduced_backward(labels, divide, g, opts)?;
                let sums = dx.reduce(ReduceOp::Sum, 0, keepdim)?;
                Ok((total, dx, sums))
            }
        }
    }

    /// The mean (`mean` true) or the sum over rows of [`Tensor::cross_entropy`], as a rank-0
    /// tensor (shape `[]`, as [`Tensor::mean`] and [`Tensor::sum`] give). The mean divides by
    /// the rows counted, as PyTorch's does: every row unless a label is -100 (see
    /// [`Tensor::cross_entropy_reduced_with`]). On a GPU, problems of at most about 2^19
    /// logits take one dispatch of one workgroup; larger ones take `cross_entropy` and then
    /// a reduction. The inputs are checked as `cross_entropy` checks them, with the same
    /// errors; the mean of no rows is [`Error::Empty`] (op `"mean"`), as `mean` of the empty
    /// per-row losses is, and their sum is 0.
    pub fn cross_entropy_reduced(&self, labels: &Tensor, mean: bool) -> Result<Tensor> {
        self.cross_entropy_reduced_with(labels, mean, CrossEntropyOptions::default())
    }

    /// [`Tensor::cross_entropy_reduced`] with `opts`: ignored rows add 0 to the sum, and the
    /// mean divides by the rows not ignored (all of them ignored: NaN, as PyTorch gives).
    pub fn cross_entropy_reduced_with(
        &self,
        labels: &Tensor,
        mean: bool,
        opts: CrossEntropyOptions,
    ) -> Result<Tensor> {
        let divide = if mean { Divide::Counted } else { Divide::One };
        self.cross_entropy_reduced_impl(labels, divide, opts)
    }

    pub(crate) fn cross_entropy_reduced_impl(
        &self,
        labels: &Tensor,
        divide: Divide,
        opts: CrossEntropyOptions,
    ) -> Result<Tensor> {
        let op = "cross_entropy";
        self.expect_f32(op)?;
        labels.expect_i32(op)?;
        self.expect_same_device(op, labels)?;
        let (rows, classes) = cross_entropy_shape(op, self.shape(), labels.shape())?;
        if rows == 0 && divide != Divide::One {
            return Err(Error::Empty {
                op: ReduceOp::Mean.name(),
                shape: labels.shape().to_vec(),
            });
        }
        match &self.device().inner {
            DeviceInner::Cpu => {
                let losses = losses_reference(self, labels, opts)?;
                // From +0.0, as the GPU's accumulators and `sum` start: an empty sum is
                // +0.0 (`Iterator::sum` starts from -0.0).
                let sum = losses.iter().fold(0.0, |a, b| a + b);
                let divisor = match divide {
                    Divide::One => 1,
                    Divide::Rows => rows,
                    Divide::Counted => {
                        let l = labels.to_vec::<i32>()?;
                        l.iter().filter(|&&v| !opts.ignores(v)).count()
                    }
                };
                Ok(Tensor::cpu_from_f64(
                    self.device(),
                    &[],
                    vec![sum / divisor as f64],
                ))
            }
            // One workgroup walks every row: only while each invocation's walk is short
            // (and the logits fit one binding).
            DeviceInner::Gpu(ctx)
                if classes <= MAX_CLASSES
                    && reduced_steps(rows, classes, false) <= REDUCED_WALK
                    && crate::ops::chunk::fits(ctx, rows * classes) =>
            {
                let out = gpu_output(ctx, self.device(), op, &[], DType::F32)?;
                let params = words((rows, classes), divide, opts, (0, 0));
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
            DeviceInner::Gpu(_) => {
                let losses = self.cross_entropy_with(labels, opts)?;
                loss_vocab::reduce_losses(&losses, labels, divide, opts)
            }
        }
    }

    /// [`Tensor::cross_entropy_reduced_impl`] and, in the same dispatch where it fits, the
    /// gradient [`Tensor::cross_entropy_backward_with`] for the upstream `g` (rows): a
    /// training step's loss and its gradient (the graph executor fuses the two when `g` is
    /// known before the loss, as a mean's or a sum's constant gradient is). Split rows share
    /// their (max, sum) passes; elsewhere, the two ops.
    pub(crate) fn cross_entropy_reduced_backward(
        &self,
        labels: &Tensor,
        divide: Divide,
        g: &Tensor,
        opts: CrossEntropyOptions,
    ) -> Result<(Tensor, Tensor)> {
        let op = "cross_entropy";
        match self.one_workgroup(labels, g) {
            Some((ctx, rows, classes))
                if classes <= MAX_CLASSES && reduced_steps(rows, classes, true) <= REDUCED_WALK =>
            {
                self.reduced_backward_in(ctx, labels, g, (rows, classes), (divide, opts), None)
            }
            Some((ctx, rows, classes)) if loss_vocab::split(rows, classes) => {
                let losses = gpu_output(ctx, self.device(), op, labels.shape(), DType::F32)?;
                let lse = gpu_output(ctx, self.device(), op, &[rows], DType::F32)?;
                loss_vocab::lse_and_loss(ctx, self, labels, opts, arg(&losses), arg(&lse))?;
                let dx = gpu_output(ctx, self.device(), op, self.shape(), DType::F32)?;
                backward_from_lse(ctx, self, labels, g, opts, arg(&lse), &dx)?;
                let total = loss_vocab::reduce_losses(&losses, labels, divide, opts)?;
                Ok((total, dx))
            }
            _ => Ok((
                self.cross_entropy_reduced_impl(labels, divide, opts)?,
                self.cross_entropy_backward_with(labels, g, opts)?,
            )),
        }
    }
}
