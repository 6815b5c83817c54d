//! Direct 2-D pooling: max and average over windows of an NCHW batch, and their gradients,
//! with no patch matrix (one invocation per output, or per input element for a gradient).
//!
//! Shape rule: x (N, C, H, W) under a kh×kw window with strides, dilations and padding
//! ([`Conv2d`]; its `groups` is ignored) gives (N, C, OH, OW); with `ceil_mode` the output
//! size rounds up, but a window may not start in the bottom/right padding. Every window
//! must hold an input element (else an error naming the op and shapes).
//! Semantics (those of the im2col composition in `nn::functional` that they replace, and of
//! ONNX/onnxruntime): max ignores padding; average divides by the taps inside the padded
//! input (`count_include_pad`) or inside the image, never counting the taps past the padding
//! that ceil_mode's last window reaches. Max's gradient goes to the window's taps equal to
//! its maximum, shared equally among ties (the reduction's rule).
//! CPU reference: loops in f64. GPU: `shaders/pool.wgsl` (one dispatch forward, one for an
//! average's gradient, two for max's: per-window share g/ties, then a gather per input).
//! Loop cap: an invocation loops up to kh·(kw + 1) times (a gradient: the windows covering
//! one position, ceil(span/stride) per axis, if more), so a window past
//! [`crate::gpu::LOOP_BUDGET`] is refused here; `Var`'s pooling takes the composition then.
//! Gradient: d pool2d = [`Op::Pool2dGrad`] (inputs x, y, g for max; g for average), whose
//! own gradient is not implemented.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::conv::Conv2d;
use crate::ops::texture_reads::{dispatch_reading_source, texture_module, Read};
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "pool",
    // exact_div.wgsl's division (see `division`).
    source: concat!(
        include_str!("../../shaders/pool.wgsl"),
        include_str!("../../shaders/exact_div.wgsl")
    ),
};

/// pool.wgsl with the forward entries reading x through a texture (src/ops/texture_reads.rs).
pub(crate) fn texture_kernel() -> Kernel {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Kernel {
        name: "pool.texture",
        source: SOURCE
            .get_or_init(|| texture_module(SHADER.source, &[Read::ScalarAndVec4("x_at", "x4_at")])),
    }
}

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// The maximum of the window's input elements (padding never counts).
    Max,
    /// The mean, dividing by the taps inside the padded input (`count_include_pad`) or by
    /// those inside the input only.
    Avg {
        /// Count padding taps in the divisor.
        count_include_pad: bool,
    },
}

/// A pooling: its window, kind and output rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2d {
    /// Kernel, strides, dilations and padding (groups ignored).
    pub window: Conv2d,
    /// Max or average.
    pub kind: PoolKind,
    /// Round the output size up (ONNX's and PyTorch's `ceil_mode`).
    pub ceil_mode: bool,
}

/// How many of the `k` taps `base + t·d` (t < k) lie in `[lo, hi)` (the shader's `axis_count`).
fn axis_count(base: usize, lo: usize, hi: usize, k: usize, d: usize) -> usize {
    if base >= hi {
        return 0;
    }
    let first = if base < lo {
        (lo - base).div_ceil(d)
    } else {
        0
    };
    let end = k.min((hi - 1 - base) / d + 1);
    end.saturating_sub(first)
}

/// One axis: output positions for length `len`, `k` taps, stride `s`, dilation `d`, padding
/// `p0`/`p1`, or None when a position overflows.
fn axis_outs(
    len: usize,
    k: usize,
    s: usize,
    d: usize,
    [p0, p1]: [usize; 2],
    ceil: bool,
) -> Option<usize> {
    let span = d.checked_mul(k - 1)?.checked_add(1)?;
    let room = len.checked_add(p0)?.checked_add(p1)?.checked_sub(span)?;
    let mut outs = if ceil { room.div_ceil(s) } else { room / s }.checked_add(1)?;
    // A window may not start in the end padding (only ceil_mode can try).
    if ceil && (outs - 1).checked_mul(s).is_none_or(|at| at >= len + p0) {
        outs -= 1;
    }
    (outs - 1).checked_mul(s)?.checked_add(span)?;
    Some(outs)
}

impl Pool2d {
    /// The name for errors.
    pub fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool2d",
            PoolKind::Avg { .. } => "avg_pool2d",
        }
    }

    /// Whether one invocation's walk stays within the loop cap: the forward walks the kh×kw
    /// taps, a gradient the windows covering one position (ceil(span/stride) per axis).
    pub fn fits_loop_budget(&self) -> bool {
        let g = &self.window;
        let [span_h, span_w] = g.span();
        let rows = g.kh.max(span_h.div_ceil(g.strides[0].max(1)));
        let cols = g.kw.max(span_w.div_ceil(g.strides[1].max(1)));
        rows.checked_mul(cols.saturating_add(1))
            .is_some_and(|n| n <= LOOP_BUDGET)
    }

    /// The output shape (N, C, OH, OW) for x, or the error naming the op: x not 4-D, empty,
    /// a window that does not fit or holds only padding, sizes past the kernels' 32 bits,
    /// or a window past the loop cap.
    pub fn output_shape(&self, x: &[usize]) -> Result<[usize; 4]> {
        let op = self.name();
        let g = &self.window;
        g.output_size(op, x)?;
        let [n, c, h, w] = x[..] else {
            unreachable!("output_size checks the rank")
        };
        if h == 0 || w == 0 {
            return Err(Error::Invalid {
                op,
                detail: format!("input {x:?} is empty: every window would hold only padding"),
            });
        }
        let [pt, pl, pb, pr] = g.pads;
        let rows = axis_outs(
            h,
            g.kh,
            g.strides[0],
            g.dilations[0],
            [pt, pb],
            self.ceil_mode,
        );
        let cols = axis_outs(
            w,
            g.kw,
            g.strides[1],
            g.dilations[1],
            [pl, pr],
            self.ceil_mode,
        );
        let (Some(oh), Some(ow)) = (rows, cols) else {
            return Err(Error::Shape {
                op,
                detail: format!("input {x:?} under {g:?} is larger than can be addressed"),
            });
        };
        let empty = |outs: usize, s: usize, p0: usize, len: usize, k: usize, d: usize| {
            (0..outs).find(|&o| axis_count(o * s, p0, p0 + len, k, d) == 0)
        };
        let empty_row = empty(oh, g.strides[0], pt, h, g.kh, g.dilations[0]);
        let empty_col = empty(ow, g.strides[1], pl, w, g.kw, g.dilations[1]);
        if let Some((axis, o)) = empty_row
            .map(|o| ("row", o))
            .or(empty_col.map(|o| ("column", o)))
        {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "{} leaves output {axis} {o} of the {}x{} window (dilations {:?}) with no input element (input {x:?})",
                    g.padding_text(), g.kh, g.kw, g.dilations
                ),
            });
        }
        let out = [n, c, oh, ow];
        let images = crate::shape::checked_numel(op, &[n, c])?;
        let padded = |len: usize, p0: usize, p1: usize| len + p0 + p1 <= i32::MAX as usize;
        // A stride along an axis with one window is never used (ceil_mode allows any).
        let strides = self.strides_used(oh, ow);
        let small = [images, h, w, oh, ow, g.kh, g.kw]
            .into_iter()
            .chain(strides)
            .chain(g.dilations)
            .chain(g.pads)
            .all(|v| v <= u32::MAX as usize);
        let numel_ok = crate::shape::checked_numel(op, x)? <= u32::MAX as usize
            && crate::shape::checked_numel(op, &out)? <= u32::MAX as usize;
        if !(small && numel_ok && padded(h, pt, pb) && padded(w, pl, pr)) {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "input {x:?} under {g:?} is past the GPU kernels' 32-bit positions"
                ),
            });
        }
        if !self.fits_loop_budget() {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "a {}x{} window on input {x:?} walks more than {LOOP_BUDGET} taps per invocation (pool through im2col instead)",
                    g.kh, g.kw
                ),
            });
        }
        Ok(out)
    }

    /// The same pooling without `ceil_mode`: the bottom/right padding set to what the kept
    /// windows reach on x (more for ceil_mode's last window, less when none reaches it), so
    /// it has the same windows. Exact for max, and for average unless the divisors differ
    /// (compare [`Pool2d::divisors`]).
    pub fn floor_form(&self, x: &[usize]) -> Result<Pool2d> {
        let [_, _, oh, ow] = self.output_shape(x)?;
        let g = &self.window;
        let [span_h, span_w] = g.span();
        let end = |outs: usize, s: usize, span: usize, len: usize, p0: usize| {
            ((outs - 1) * s + span).saturating_sub(len + p0)
        };
        let [pt, pl, _, _] = g.pads;
        let (eb, er) = (
            end(oh, g.strides[0], span_h, x[2], pt),
            end(ow, g.strides[1], span_w, x[3], pl),
        );
        let [sh, sw] = self.strides_used(oh, ow);
        Ok(Pool2d {
            window: g.pads(pt, pl, eb, er).strides(sh, sw),
            ceil_mode: false,
            ..*self
        })
    }

    /// The divisor of each average window (OH·OW, row-major) on x; max: all 1.
    pub fn divisors(&self, x: &[usize]) -> Result<Vec<f64>> {
        let [_, _, oh, ow] = self.output_shape(x)?;
        Ok((0..oh * ow)
            .map(|o| match self.kind {
                PoolKind::Max => 1.0,
                PoolKind::Avg { .. } => self.avg_count([x[2], x[3]], o / ow, o % ow),
            })
            .collect())
    }

    /// The strides, 1 along an axis with one window (where the stride is never used).
    fn strides_used(&self, oh: usize, ow: usize) -> [usize; 2] {
        let [sh, sw] = self.window.strides;
        [if oh == 1 { 1 } else { sh }, if ow == 1 { 1 } else { sw }]
    }

    /// The divisor of average window (oy, ox).
    fn avg_count(&self, [h, w]: [usize; 2], oy: usize, ox: usize) -> f64 {
        let g = &self.window;
        let [pt, pl, pb, pr] = g.pads;
        let include = matches!(
            self.kind,
            PoolKind::Avg {
                count_include_pad: true
            }
        );
        let (ry, rx) = if include {
            ((0, pt + h + pb), (0, pl + w + pr))
        } else {
            ((pt, pt + h), (pl, pl + w))
        };
        let rows = axis_count(oy * g.strides[0], ry.0, ry.1, g.kh, g.dilations[0]);
        let cols = axis_count(ox * g.strides[1], rx.0, rx.1, g.kw, g.dilations[1]);
        (rows * cols) as f64
    }

    /// Calls `f(out, pixel)` for every (output, input) pair a window reads, both indices
    /// flat within (I, OH, OW) and (I, H, W), window by window.
    fn for_each_tap(&self, x: &[usize], [oh, ow]: [usize; 2], mut f: impl FnMut(usize, usize)) {
        let g = &self.window;
        let (images, h, w) = (x[0] * x[1], x[2], x[3]);
        for i in 0..images {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = (i * oh + oy) * ow + ox;
                    for ki in 0..g.kh {
                        let Some(iy) = (oy * g.strides[0] + ki * g.dilations[0])
                            .checked_sub(g.pads[0])
                            .filter(|&v| v < h)
                        else {
                            continue;
                        };
                        for kj in 0..g.kw {
                            if let Some(ix) = (ox * g.strides[1] + kj * g.dilations[1])
                                .checked_sub(g.pads[1])
                                .filter(|&v| v < w)
                            {
                                f(o, (i * h + iy) * w + ix);
                            }
                        }
                    }
                }
            }
        }
    }

    /// CPU reference of the forward pass, in f64.
    fn forward_reference(&self, x: &[f64], s: &[usize], out: [usize; 4]) -> Vec<f64> {
        let size = [out[2], out[3]];
        match self.kind {
            PoolKind::Max => {
                let mut y = vec![f64::NEG_INFINITY; out.iter().product()];
                self.for_each_tap(s, size, |o, p| y[o] = y[o].max(x[p]));
                y
            }
            PoolKind::Avg { .. } => {
                let mut y = vec![0.0; out.iter().product()];
                self.for_each_tap(s, size, |o, p| y[o] += x[p]);
                for (o, v) in y.iter_mut().enumerate() {
                    *v /= self.avg_count([s[2], s[3]], (o / out[3]) % out[2], o % out[3]);
                }
                y
            }
        }
    }

    /// CPU reference of the gradient, in f64: max shares g among the taps equal to y.
    fn backward_reference(
        &self,
        x: &[f64],
        y: &[f64],
        g: &[f64],
        s: &[usize],
        out: [usize; 4],
    ) -> Vec<f64> {
        let size = [out[2], out[3]];
        let mut dx = vec![0.0; s.iter().product()];
        match self.kind {
            PoolKind::Max => {
                let mut ties = vec![0.0f64; y.len()];
                self.for_each_tap(s, size, |o, p| ties[o] += (x[p] == y[o]) as u8 as f64);
                self.for_each_tap(s, size, |o, p| {
                    if x[p] == y[o] {
                        dx[p] += g[o] / ties[o];
                    }
                });
            }
            PoolKind::Avg { .. } => {
                self.for_each_tap(s, size, |o, p| {
                    dx[p] += g[o] / self.avg_count([s[2], s[3]], (o / out[3]) % out[2], o % out[3]);
                });
            }
        }
        dx
    }

    /// The pipeline constants for the kernels' divisions (exact_div.wgsl): none where every
    /// dividend stays below 2^24 (element indices of x and y, padded positions: sizes,
    /// padding, strides and dilated windows each under 2^22), so the f32 division is exact;
    /// else EXACT (integer division).
    fn division(&self, x: &[usize], out: [usize; 4]) -> &'static [(&'static str, f64)] {
        let g = &self.window;
        let small = |v: usize| v < 1 << 22;
        let fast = x.iter().product::<usize>() < 1 << 24
            && out.iter().product::<usize>() < 1 << 24
            && [
                x[2],
                x[3],
                out[2],
                out[3],
                g.kh * g.dilations[0],
                g.kw * g.dilations[1],
            ]
            .into_iter()
            .chain(g.pads)
            .chain(g.strides)
            .all(small);
        super::exact_div_constants(fast)
    }

    /// Whether `pool_max_forward4_k3s2` takes this pooling of x (its windows 3 columns wide
    /// at column stride 2, dilation 1, left padding 1, over rows a multiple of 4 long).
    fn columns_k3s2(&self, x: &[usize], out: [usize; 4]) -> bool {
        let g = &self.window;
        let [_, sw] = self.strides_used(out[2], out[3]);
        (g.kw, sw, g.dilations[1], g.pads[1], x[3] % 4) == (3, 2, 1, 1, 0)
    }

    /// The kernels' params for x (sizes checked by [`Pool2d::output_shape`]).
    fn params(&self, x: &[usize], out: [usize; 4], total: usize) -> Vec<u32> {
        let g = &self.window;
        let include = matches!(
            self.kind,
            PoolKind::Avg {
                count_include_pad: true
            }
        );
        let [pt, pl, pb, pr] = g.pads;
        let [sh, sw] = self.strides_used(out[2], out[3]);
        [
            x[0] * x[1],
            x[2],
            x[3],
            out[2],
            out[3],
            g.kh,
            g.kw,
            sh,
            sw,
            g.dilations[0],
            g.dilations[1],
            pt,
            pl,
            pb,
            pr,
            total,
            include as usize,
        ]
        .map(|v| v as u32)
        .to_vec()
    }
}

impl Tensor {
    /// Pooling of an NCHW batch (see [`Pool2d`]): (N, C, H, W) → (N, C, OH, OW).
    pub fn pool2d(&self, pool: Pool2d) -> Result<Tensor> {
        let op = pool.name();
        self.expect_f32(op)?;
        let out = pool.output_shape(self.shape())?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let y = pool.forward_reference(&self.host_f64(), self.shape(), out);
                Ok(Tensor::cpu_from_f64(self.device(), &out, y))
            }
            DeviceInner::Gpu(ctx) => {
                let y = gpu_output(ctx, self.device(), op, &out, DType::F32)?;
                let n = y.numel();
                if n > 0 {
                    let (Some(xa), Some(ya)) = (self.gpu_arg(), y.gpu_arg()) else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    // Rows a multiple of 4 long: four outputs per invocation (see the shader).
                    let quads = out[3] % 4 == 0;
                    let entry = match (pool.kind, quads) {
                        (PoolKind::Max, false) => "pool_max_forward",
                        (PoolKind::Avg { .. }, false) => "pool_avg_forward",
                        (PoolKind::Max, true) if pool.columns_k3s2(self.shape(), out) => {
                            "pool_max_forward4_k3s2"
                        }
                        (PoolKind::Max, true) => "pool_max_forward4",
                        (PoolKind::Avg { .. }, true) => "pool_avg_forward4",
                    };
                    let invocations = if quads { n / 4 } else { n };
                    let params = pool.params(self.shape(), out, invocations);
                    let grid = grid_1d(ctx, invocations);
                    let division = pool.division(self.shape(), out);
                    // x through a texture where products read theirs through textures.
                    let kernels = (&SHADER, &texture_kernel());
                    let args = [xa, ya];
                    dispatch_reading_source(ctx, kernels, entry, division, &params, &args, grid)?;
                }
                Ok(y)
            }
        }
    }

    /// The gradient of [`Tensor::pool2d`] with respect to its input, from the upstream
    /// gradient `self` (N, C, OH, OW). Max needs the input `x` and the forward output `y`;
    /// average needs only the input's shape.
    pub fn pool2d_backward(
        &self,
        pool: Pool2d,
        x_shape: &[usize],
        xy: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let op = "pool2d_backward";
        self.expect_f32(op)?;
        let out = pool.output_shape(x_shape)?;
        let bad = self.shape() != out
            || match (pool.kind, xy) {
                (PoolKind::Max, Some((x, y))) => x.shape() != x_shape || y.shape() != out,
                (PoolKind::Avg { .. }, None) => false,
                _ => true,
            };
        if bad {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "{} of input {x_shape:?} needs upstream {out:?}{}, got {:?}{}",
                    pool.name(),
                    if pool.kind == PoolKind::Max {
                        " with x and y"
                    } else {
                        ""
                    },
                    self.shape(),
                    xy.map_or(String::new(), |(x, y)| format!(
                        ", x {:?}, y {:?}",
                        x.shape(),
                        y.shape()
                    )),
                ),
            });
        }
        match &self.device().inner {
            DeviceInner::Cpu => {
                let g = self.host_f64();
                let dx = match xy {
                    Some((x, y)) => {
                        pool.backward_reference(&x.host_f64(), &y.host_f64(), &g, x_shape, out)
                    }
                    None => pool.backward_reference(&[], &[], &g, x_shape, out),
                };
                Ok(Tensor::cpu_from_f64(self.device(), x_shape, dx))
            }
            DeviceInner::Gpu(ctx) => {
                let dx = gpu_output(ctx, self.device(), op, x_shape, DType::F32)?;
                let n = dx.numel();
                if n == 0 {
                    return Ok(dx);
                }
                let (Some(ga), Some(da)) = (self.gpu_arg(), dx.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                let params = pool.params(x_shape, out, n);
                let division = pool.division(x_shape, out);
                let Some((x, y)) = xy else {
                    ctx.dispatch(
                        &SHADER,
                        "pool_avg_backward",
                        division,
                        &params,
                        &[ga, da],
                        grid_1d(ctx, n),
                    )?;
                    return Ok(dx);
                };
                let (Some(xa), Some(ya)) = (x.gpu_arg(), y.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                // Each window's share of its gradient, g / ties, then the gather.
                let outs = self.numel();
                let share = gpu_output(ctx, self.device(), op, &out, DType::F32)?;
                let Some(sa) = share.gpu_arg() else {
                    unreachable!("GPU tensor")
                };
                let mut p = pool.params(x_shape, out, outs);
                ctx.dispatch(
                    &SHADER,
                    "pool_max_share",
                    division,
                    &p,
                    &[xa, ya, ga, sa],
                    grid_1d(ctx, outs),
                )?;
                p[15] = n as u32;
                ctx.dispatch(
                    &SHADER,
                    "pool_max_backward",
                    division,
                    &p,
                    &[xa, ya, sa, da],
                    grid_1d(ctx, n),
                )?;
                Ok(dx)
            }
        }
    }
}
