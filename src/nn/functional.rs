//! Layer compositions recorded with [`Var`] ops — layer norm, batch norm (training
//! and evaluation), pooling, scaled dot-product and multi-head attention — whose
//! gradients come from the ops they are built of. [`crate::nn`]'s layers call them.

use crate::error::{Error, Result};
use crate::graph::{Op, Var};
use crate::ops::batchnorm::BatchNormPass;
use crate::ops::conv::Conv2d;
use crate::ops::elementwise::BinaryOp;
use crate::ops::pool::{Pool2d, PoolKind};
use crate::ops::reduce::ReduceOp;
use crate::shape::broadcast_shapes;
use crate::tensor::Tensor;

impl Var {
    /// Layer normalisation over the last axis: `(x - mean) / sqrt(var + eps)` with the
    /// biased variance, as PyTorch's `layer_norm` without its affine part (multiply and
    /// add a learned scale and shift after it). Differentiable through its composition.
    pub fn layer_norm(&self, eps: f32) -> Result<Var> {
        let centred = self.sub(&self.mean_axis(-1, true)?)?;
        let var = centred.square()?.mean_axis(-1, true)?;
        centred.div(&var.add_scalar(eps)?.sqrt()?)
    }

    /// Batch normalisation in training mode for (N, C, …): each channel normalised by
    /// the mean and biased variance over every other axis. Returns the normalised
    /// tensor, the batch mean and the batch variance (each (1, C, 1, …)) so a caller can
    /// keep running statistics for evaluation.
    pub fn batch_norm(&self, eps: f32) -> Result<(Var, Var, Var)> {
        let s = self.batch_stats(eps)?;
        let y = s.centred.mul(&s.inv_std)?;
        Ok((y, s.mean, s.var))
    }

    /// Batch normalisation in training mode for (N, C, …) on its own primitives
    /// ([`crate::ops::batchnorm`]): `γ·(x − mean)/√(var + eps) + β` per channel with the
    /// batch mean and biased variance over every other axis; γ and β hold C values (any
    /// shape, e.g. (C, 1, 1)). Returns y and the statistics (3, C): mean, biased variance
    /// and 1/√(var + eps), for [`Var::batch_norm_running`]. Differentiable in x, γ and β
    /// (two dispatches forward, two backward); not through the returned statistics.
    pub fn batch_norm_train(&self, gamma: &Var, beta: &Var, eps: f32) -> Result<(Var, Var)> {
        let stats = self
            .graph()
            .push(Op::BatchNorm(BatchNormPass::Stats { eps }), &[self])?;
        let c = stats.shape()[1];
        let per_channel = |v: &Var, what: &str| -> Result<Var> {
            match v.shape() {
                [k] if *k == c => Ok(v.clone()),
                s if s.iter().product::<usize>() == c
                    && s.iter().filter(|&&d| d != 1).count() <= 1 =>
                {
                    v.reshape(&[c])
                }
                s => Err(Error::Shape {
                    op: "batch_norm",
                    detail: format!(
                        "{what} {s:?} must hold {c} values for input {:?}",
                        self.shape()
                    ),
                }),
            }
        };
        let (gamma, beta) = (per_channel(gamma, "gamma")?, per_channel(beta, "beta")?);
        let y = self.graph().push(
            Op::BatchNorm(BatchNormPass::Apply { relu: false }),
            &[self, &stats, &gamma, &beta],
        )?;
        Ok((y, stats))
    }

    /// Running mean and variance (C each) updated from batch statistics `self` (3, C) of
    /// [`Var::batch_norm_train`] in one dispatch: `keep·running + take_mean·mean` and
    /// `keep·running_var + take_var·var` (biased batch variance). Returns the new values.
    pub fn batch_norm_running(
        &self,
        mean: &Var,
        var: &Var,
        keep: f32,
        take_mean: f32,
        take_var: f32,
    ) -> Result<(Var, Var)> {
        let pass = BatchNormPass::Running {
            keep,
            take_mean,
            take_var,
        };
        let both = self.graph().push(Op::BatchNorm(pass), &[self, mean, var])?;
        let c = both.shape()[1];
        // each row is one contiguous run: a buffer copy, no dispatch
        let row = |r: usize| both.slice(0, r, r + 1)?.reshape(&[c]);
        Ok((row(0)?, row(1)?))
    }

    /// Batch norm's pieces for (N, C, …): statistics per channel over every other axis.
    /// The normalised tensor is `centred · inv_std`, a multiplication (two tensor-sized
    /// ops in its gradient, where a division takes five) that a layer can fold its
    /// scale into while the factor is still per channel.
    pub(crate) fn batch_stats(&self, eps: f32) -> Result<BatchStats> {
        if self.shape().len() < 2 {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: format!("needs (N, C, …), got {:?}", self.shape()),
            });
        }
        let shape = self.shape().to_vec();
        let (n, c) = (shape[0], shape[1]);
        let mut stat_shape = vec![1; shape.len()];
        stat_shape[1] = c;
        // (N, C, rest) → mean over rest (contiguous rows), then over N (columns): two
        // reductions, each on a fast kernel, whatever the rank.
        let over_all_but_channels = |v: &Var| -> Result<Var> {
            v.reshape(&[n, c, v.shape()[2..].iter().product()])?
                .mean_axis(2, true)?
                .mean_axis(0, true)?
                .reshape(&stat_shape)
        };
        let mean = over_all_but_channels(self)?;
        let centred = self.sub(&mean)?;
        let var = over_all_but_channels(&centred.square()?)?;
        let inv_std = var
            .add_scalar(eps)?
            .sqrt()?
            .scalar(BinaryOp::Div, 1.0, true)?;
        Ok(BatchStats {
            centred,
            inv_std,
            mean,
            var,
        })
    }

    /// Max pooling of (N, C, H, W) over k×k windows (no padding). Pooling runs on direct
    /// kernels ([`crate::ops::pool`]); a window past the loop cap (over 16,384 taps) is im2col
    /// on each channel, then a reduction over each window.
    pub fn max_pool2d(&self, k: usize, stride: usize) -> Result<Var> {
        self.max_pool2d_window(Conv2d::new(k, k).stride(stride))
    }

    /// Average pooling of (N, C, H, W) over k×k windows (no padding).
    pub fn avg_pool2d(&self, k: usize, stride: usize) -> Result<Var> {
        self.avg_pool2d_window(Conv2d::new(k, k).stride(stride))
    }

    /// Max pooling over any window (kh×kw, per-axis strides and dilations, padding on each
    /// side). Padding counts as −∞, so it is never the maximum; every window must hold at
    /// least one real element.
    pub fn max_pool2d_window(&self, window: Conv2d) -> Result<Var> {
        self.max_pool2d_with(window, false)
    }

    /// Average pooling over any window. Padding counts as zeros that are part of the
    /// window — PyTorch's default `count_include_pad=True` — so a border window is
    /// divided by kh·kw, not by its number of real elements.
    pub fn avg_pool2d_window(&self, window: Conv2d) -> Result<Var> {
        self.avg_pool2d_with(window, false, true)
    }

    /// Max pooling with `ceil_mode` (ONNX's and PyTorch's): the output size rounds up, so a
    /// last window that starts inside the input or its top/left padding but runs past the
    /// bottom/right padding is kept (its taps past the end are ignored); a window that would
    /// start in the bottom/right padding is not.
    pub fn max_pool2d_with(&self, window: Conv2d, ceil_mode: bool) -> Result<Var> {
        self.pool2d("max_pool2d", window, ReduceOp::Max, ceil_mode, true)
    }

    /// Average pooling with `ceil_mode` (as in [`Var::max_pool2d_with`]) and
    /// `count_include_pad`: each window is divided by its taps inside the padded input (true)
    /// or inside the input only (false). Taps past the padding, which only `ceil_mode` makes,
    /// are never counted — onnxruntime's and PyTorch's rule.
    pub fn avg_pool2d_with(
        &self,
        window: Conv2d,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> Result<Var> {
        let op = "avg_pool2d";
        self.pool2d(op, window, ReduceOp::Mean, ceil_mode, count_include_pad)
    }

    fn pool2d(
        &self,
        op: &'static str,
        geom: Conv2d,
        reduce: ReduceOp,
        ceil_mode: bool,
        count_include_pad: bool,
    ) -> Result<Var> {
        let [n, c, h, w] = self.shape()[..] else {
            return Err(Error::Shape {
                op,
                detail: format!("input must be (N, C, H, W), got {:?}", self.shape()),
            });
        };
        let geom = geom.groups(1);
        check_pool_geometry(op, &geom, self.shape(), ceil_mode)?;
        let [pt, pl, pb, pr] = geom.pads;
        let rows = PoolAxis::new(
            h,
            geom.kh,
            geom.strides[0],
            geom.dilations[0],
            [pt, pb],
            ceil_mode,
        );
        let cols = PoolAxis::new(
            w,
            geom.kw,
            geom.strides[1],
            geom.dilations[1],
            [pl, pr],
            ceil_mode,
        );
        if let Some((axis, o)) = rows
            .empty_window()
            .map(|o| ("row", o))
            .or(cols.empty_window().map(|o| ("column", o)))
        {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "{} leaves output {axis} {o} of the {}x{} window (dilations {:?}) with no input element (input {:?})",
                    geom.padding_text(),
                    geom.kh,
                    geom.kw,
                    geom.dilations,
                    self.shape()
                ),
            });
        }
        // Direct kernels unless a window is too long for one invocation's loop (then the
        // composition below, whose im2col and reduction split any window).
        let direct = Pool2d {
            window: geom,
            kind: match reduce {
                ReduceOp::Max => PoolKind::Max,
                _ => PoolKind::Avg { count_include_pad },
            },
            ceil_mode,
        };
        if direct.fits_loop_budget() {
            return self.graph().push(Op::Pool2d(direct), &[self]);
        }
        // im2col's bottom/right padding is what the kept windows reach: more than given for
        // ceil_mode's extra taps, less when ceil_mode drops a window lying in the padding.
        let win = geom.pads(pt, pl, rows.end, cols.end);
        let (oh, ow) = win.output_size(op, self.shape())?;
        debug_assert_eq!((oh, ow), (rows.outs, cols.outs));
        let k = geom.kh * geom.kw;
        let cpu = crate::Device::cpu();
        // Channels as separate images: (N·C, 1, H, W) → (N·C, OH·OW, kh·kw) → reduce the window.
        let images = n.checked_mul(c).ok_or_else(|| Error::Shape {
            op,
            detail: format!("N·C overflows for input {:?}", self.shape()),
        })?;
        let patches = self.reshape(&[images, 1, h, w])?.im2col(win)?;
        let pooled = if reduce == ReduceOp::Max {
            let mut mask = vec![0.0f32; oh * ow * k];
            for (oy, ry) in rows.inside.chunks(geom.kh).enumerate() {
                for (ox, rx) in cols.inside.chunks(geom.kw).enumerate() {
                    let at = (oy * ow + ox) * k;
                    for (i, &iy) in ry.iter().enumerate() {
                        for (j, &ix) in rx.iter().enumerate() {
                            if !(iy && ix) {
                                mask[at + i * geom.kw + j] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
            }
            let patches = if mask.iter().any(|v| *v != 0.0) {
                // im2col pads with zeros; −∞ on those taps keeps them out of the max (and,
                // never equal to the max, out of its gradient).
                let mask = Tensor::from_slice(&cpu, &mask, &[oh * ow, k])?;
                patches.add(&self.graph().constant(&mask)?)?
            } else {
                patches
            };
            patches.reduce(ReduceOp::Max, -1, false)?
        } else {
            let (ch, cw) = if count_include_pad {
                (&rows.padded, &cols.padded)
            } else {
                (&rows.real, &cols.real)
            };
            let divisors: Vec<usize> = ch
                .iter()
                .flat_map(|a| cw.iter().map(move |b| a * b))
                .collect();
            if divisors.iter().all(|&d| d == k) {
                patches.reduce(ReduceOp::Mean, -1, false)?
            } else {
                // Border windows count fewer taps: a sum, then 1/count per output position.
                let inv: Vec<f32> = divisors.iter().map(|&d| 1.0 / d as f32).collect();
                let inv = Tensor::from_slice(&cpu, &inv, &[oh * ow])?;
                patches
                    .reduce(ReduceOp::Sum, -1, false)?
                    .mul(&self.graph().constant(&inv)?)?
            }
        };
        pooled.reshape(&[n, c, oh, ow])
    }

    /// Batch normalisation in evaluation mode for (N, C, …): `(x − running_mean) /
    /// sqrt(running_var + eps)` per channel, with statistics of shape (C).
    pub fn batch_norm_eval(&self, running_mean: &Var, running_var: &Var, eps: f32) -> Result<Var> {
        let c = self.shape().get(1).copied().unwrap_or(0);
        if self.shape().len() < 2 || running_mean.shape() != [c] || running_var.shape() != [c] {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: format!(
                    "input {:?} needs (N, C, …) with running statistics (C), got {:?} and {:?}",
                    self.shape(),
                    running_mean.shape(),
                    running_var.shape()
                ),
            });
        }
        let mut stat_shape = vec![1; self.shape().len()];
        stat_shape[1] = c;
        let mean = running_mean.reshape(&stat_shape)?;
        let std = running_var.add_scalar(eps)?.sqrt()?.reshape(&stat_shape)?;
        self.sub(&mean)?.div(&std)
    }

    /// Scaled dot-product attention `softmax(Q·Kᵀ/√d + mask)·V` for q (…, Tq, d),
    /// k (…, Tk, d), v (…, Tk, dv); with `causal`, query i sees keys 0..=i (needs Tq = Tk).
    pub fn attention(q: &Var, k: &Var, v: &Var, causal: bool) -> Result<Var> {
        let scores = Var::attention_scores(q, k)?;
        let scores = if causal {
            let (tq, tk) = (
                scores.shape()[scores.shape().len() - 2],
                scores.shape()[scores.shape().len() - 1],
            );
            if tq != tk {
                return Err(Error::Shape {
                    op: "attention",
                    detail: format!(
                        "a causal mask needs as many queries as keys, got {tq} and {tk}"
                    ),
                });
            }
            // -inf above the diagonal: exp gives exactly 0 there, and so does the gradient.
            let mask: Vec<f32> = (0..tq * tk)
                .map(|i| {
                    if i % tk > i / tk {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::from_slice(&crate::Device::cpu(), &mask, &[tq, tk])?;
            scores.add(&q.graph().constant(&mask)?)?
        } else {
            scores
        };
        scores.softmax(-1)?.matmul(v)
    }

    /// Attention with an additive mask (0 where a query may see a key, −∞ or a large
    /// negative number where not) that broadcasts to the scores (…, Tq, Tk).
    pub fn attention_masked(q: &Var, k: &Var, v: &Var, mask: &Var) -> Result<Var> {
        let scores = Var::attention_scores(q, k)?;
        if broadcast_shapes("attention", scores.shape(), mask.shape()).ok()
            != Some(scores.shape().to_vec())
        {
            return Err(Error::Shape {
                op: "attention",
                detail: format!(
                    "mask {:?} does not broadcast to the scores {:?} of q {:?} and k {:?}",
                    mask.shape(),
                    scores.shape(),
                    q.shape(),
                    k.shape()
                ),
            });
        }
        scores.add(mask)?.softmax(-1)?.matmul(v)
    }

    /// `Q·Kᵀ/√d`: (…, Tq, Tk).
    fn attention_scores(q: &Var, k: &Var) -> Result<Var> {
        let d = *q.shape().last().unwrap_or(&0);
        if q.shape().len() < 2 || d == 0 || k.shape().last() != Some(&d) || k.shape().len() < 2 {
            return Err(Error::Shape {
                op: "attention",
                detail: format!(
                    "q {:?} and k {:?} need rank >= 2 and the same last dim",
                    q.shape(),
                    k.shape()
                ),
            });
        }
        q.matmul_t(k, false, true)?
            .mul_scalar(1.0 / (d as f32).sqrt())
    }

    /// Multi-head self-attention of x (B, T, D) with `heads` heads: projections
    /// wq, wk, wv, wo of shape (D, D); heads split D into D/heads columns each.
    pub fn multi_head_attention(
        &self,
        wq: &Var,
        wk: &Var,
        wv: &Var,
        wo: &Var,
        heads: usize,
        causal: bool,
    ) -> Result<Var> {
        let [b, t, d] = self.shape()[..] else {
            return Err(Error::Shape {
                op: "multi_head_attention",
                detail: format!("x must be (B, T, D), got {:?}", self.shape()),
            });
        };
        if heads == 0 || d % heads != 0 {
            return Err(Error::Invalid {
                op: "multi_head_attention",
                detail: format!("{heads} heads do not divide D = {d}"),
            });
        }
        let dh = d / heads;
        // (B, T, D) · (D, D) → (B, T, H, dh) → (B, H, T, dh)
        let split = |w: &Var| -> Result<Var> {
            self.matmul(w)?
                .reshape(&[b, t, heads, dh])?
                .permute(&[0, 2, 1, 3])
        };
        let o = Var::attention(&split(wq)?, &split(wk)?, &split(wv)?, causal)?;
        o.permute(&[0, 2, 1, 3])?.reshape(&[b, t, d])?.matmul(wo)
    }
}

/// Batch norm's pieces (see [`Var::batch_stats`]); the statistics are (1, C, 1, …).
pub(crate) struct BatchStats {
    /// The input minus its channel's mean, (N, C, …).
    pub centred: Var,
    /// `1 / sqrt(var + eps)` per channel.
    pub inv_std: Var,
    /// The channel means.
    pub mean: Var,
    /// The biased channel variances.
    pub var: Var,
}

/// Most entries of a pooling table built at record time (per-axis tap tables, the
/// (OH·OW, KH·KW) max-pool mask): 2^28, a gigabyte of f32. Windows past it are refused
/// rather than allocated.
const POOL_TABLE_LIMIT: usize = 1 << 28;

/// Checks a pooling window on x (N, C, H, W) before any table is built: the window fits
/// (`output_size`), every tap position of every window (ceil_mode's last one included) is
/// addressable, and the tables stay within [`POOL_TABLE_LIMIT`]. Huge kernels, strides or
/// pads (from a file) are an error naming `op`, never an overflow or a huge allocation.
fn check_pool_geometry(op: &'static str, geom: &Conv2d, x: &[usize], ceil: bool) -> Result<()> {
    geom.output_size(op, x)?;
    if x[2] == 0 || x[3] == 0 {
        return Err(Error::Invalid {
            op,
            detail: format!("input {x:?} is empty: every window would hold only padding"),
        });
    }
    let [pt, pl, pb, pr] = geom.pads;
    // Per axis: (output positions, taps), or None if a tap position overflows. As in
    // `PoolAxis::new`, ceil_mode drops a last window that would start in the end padding.
    let axis = |len: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize| {
        let span = d.checked_mul(k - 1)?.checked_add(1)?;
        let room = len.checked_add(p0)?.checked_add(p1)?.checked_sub(span)?;
        let mut outs = if ceil { room.div_ceil(s) } else { room / s }.checked_add(1)?;
        if ceil && (outs - 1).checked_mul(s).is_none_or(|at| at >= len + p0) {
            outs -= 1; // len > 0, so the first window starts inside: outs stays >= 1
        }
        // The last window's last tap.
        (outs - 1).checked_mul(s)?.checked_add(span)?;
        Some((outs, outs.checked_mul(k)?))
    };
    let rows = axis(x[2], geom.kh, geom.strides[0], geom.dilations[0], pt, pb);
    let cols = axis(x[3], geom.kw, geom.strides[1], geom.dilations[1], pl, pr);
    let entries = rows.zip(cols).and_then(|((oh, th), (ow, tw))| {
        let mask = oh
            .checked_mul(ow)?
            .checked_mul(geom.kh)?
            .checked_mul(geom.kw)?;
        Some(mask.max(th).max(tw))
    });
    match entries {
        Some(n) if n <= POOL_TABLE_LIMIT => Ok(()),
        _ => Err(Error::Invalid {
            op,
            detail: format!(
                "a {}x{} window (strides {:?}, dilations {:?}, {}) on input {x:?} needs tables of {} entries, over the limit of {POOL_TABLE_LIMIT}",
                geom.kh,
                geom.kw,
                geom.strides,
                geom.dilations,
                geom.padding_text(),
                entries.map_or("an unaddressable number of".to_string(), |n| n.to_string()),
            ),
        }),
    }
}

/// One axis of a pooling window: how many windows fit and, for each, which taps read the
/// input and how many lie inside the padded input.
struct PoolAxis {
    /// Output positions.
    outs: usize,
    /// The end padding that gives exactly `outs` windows: the given padding plus what
    /// `ceil_mode`'s last window needs beyond it, or less when a window is dropped.
    end: usize,
    /// For each output position and tap (outs × k): whether it reads a real element.
    inside: Vec<bool>,
    /// For each output position: its taps reading real elements.
    real: Vec<usize>,
    /// For each output position: its taps inside the input or its padding.
    padded: Vec<usize>,
}

impl PoolAxis {
    /// An axis of length `len` with a window of `k` taps, stride `s`, dilation `d` and
    /// padding `[before, after]` (the caller has checked the window with [`check_pool_geometry`]).
    fn new(len: usize, k: usize, s: usize, d: usize, [p0, p1]: [usize; 2], ceil: bool) -> PoolAxis {
        let span = d * (k - 1) + 1;
        let room = len + p0 + p1 - span;
        let mut outs = if ceil { room.div_ceil(s) } else { room / s } + 1;
        // A window may not start in the end padding (with ceil_mode only can it try).
        if ceil && (outs - 1).checked_mul(s).is_none_or(|at| at >= len + p0) {
            outs -= 1;
        }
        let end = ((outs - 1) * s + span).saturating_sub(len + p0);
        let mut inside = Vec::with_capacity(outs * k);
        let (mut real, mut padded) = (Vec::with_capacity(outs), Vec::with_capacity(outs));
        for o in 0..outs {
            let (mut r, mut p) = (0, 0);
            for i in 0..k {
                // the tap's position in the padded input
                let at = o * s + i * d;
                let is_real = at >= p0 && at < p0 + len;
                inside.push(is_real);
                r += is_real as usize;
                p += (at < p0 + len + p1) as usize;
            }
            real.push(r);
            padded.push(p);
        }
        PoolAxis {
            outs,
            end,
            inside,
            real,
            padded,
        }
    }

    /// The first output position whose window holds only padding, if any.
    fn empty_window(&self) -> Option<usize> {
        self.real.iter().position(|&r| r == 0)
    }
}
