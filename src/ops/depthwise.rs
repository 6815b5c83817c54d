//! Depthwise 2-D convolution: groups = input channels C, filters (F, 1, KH, KW) with F = C·m
//! (m filters per channel; filter f reads channel f / m), computed directly with no patch
//! matrix. `Var::conv2d` takes it for such geometries.
//!
//! Shape rule: as `Var::conv2d` (x (N, C, H, W) → (N, F, OH, OW), `Conv2d::output_size`).
//! CPU reference: loops in f64. GPU: `shaders/depthwise.wgsl` — forward and data gradient one
//! invocation per element; filter gradient per (filter tap, part of the N·OH·OW positions),
//! the parts then summed by a reduction. Loops per invocation stay within
//! [`crate::gpu::LOOP_BUDGET`]: a window or channel multiplier past it is refused (the
//! grouped composition takes it then).
//! Gradients: dx = [`Op::DepthwiseGradX`] (inputs g, w), dw = [`Op::DepthwiseGradW`]
//! (inputs x, g); their own gradients are not implemented.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::conv::Conv2d;
use crate::ops::reduce::ReduceOp;
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "depthwise",
    source: include_str!("../../shaders/depthwise.wgsl"),
};

/// Positions of N·OH·OW one filter-gradient invocation sums.
const PART: usize = 4096;

/// The sizes of a depthwise convolution: x (N, C, H, W), F filters, (OH, OW).
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    oh: usize,
    ow: usize,
}

/// Whether x (N, C, H, W) with filters `w` under `geom` is a depthwise convolution the direct
/// kernels take: groups = C > 1, one channel per filter, loops within the cap, sizes in 32 bits.
pub fn is_depthwise(x: &[usize], w: &[usize], geom: &Conv2d) -> bool {
    dims(x, w, geom).is_ok()
}

/// The output shape (N, F, OH, OW), or the error naming the op and shapes.
pub fn output_shape(x: &[usize], w: &[usize], geom: &Conv2d) -> Result<[usize; 4]> {
    let d = dims(x, w, geom)?;
    Ok([d.n, d.f, d.oh, d.ow])
}

fn dims(x: &[usize], wshape: &[usize], g: &Conv2d) -> Result<Dims> {
    let op = "depthwise_conv2d";
    let (n, f) = crate::ops::conv::check_conv2d(x, wshape, *g)?;
    let (oh, ow) = g.output_size(op, x)?;
    let (c, h, w) = (x[1], x[2], x[3]);
    let m = f / c.max(1);
    let [span_h, span_w] = g.span();
    let rows = span_h.div_ceil(g.strides[0]);
    let cols = span_w.div_ceil(g.strides[1]);
    // Saturating: an empty input (a zero dim) may hold huge other dims and windows, which
    // must come out as "too big" here, not overflow.
    let prod = |v: &[usize]| v.iter().fold(1usize, |a, &b| a.saturating_mul(b));
    let loops_ok = prod(&[g.kh, g.kw.saturating_add(1)]) <= LOOP_BUDGET
        && prod(&[m, rows, cols.saturating_add(1)]) <= LOOP_BUDGET;
    let big = [
        prod(&[n, c, h, w]),
        prod(&[n, f, oh, ow]),
        h.saturating_add(g.pads[0]).saturating_add(g.pads[2]),
        w.saturating_add(g.pads[1]).saturating_add(g.pads[3]),
    ];
    if g.groups != c
        || c < 2
        || wshape[1] != 1
        || !loops_ok
        || big.iter().any(|&v| v > i32::MAX as usize)
    {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "input {x:?} with filters {wshape:?} under {g:?} is not a depthwise convolution the direct kernels take (groups = channels > 1, loops within {LOOP_BUDGET}, 31-bit sizes)"
            ),
        });
    }
    Ok(Dims {
        n,
        c,
        h,
        w,
        f,
        oh,
        ow,
    })
}

impl Dims {
    /// Calls `f(y index, x index, w index)` for every tap that reads the image.
    fn for_each_tap(&self, g: &Conv2d, mut f: impl FnMut(usize, usize, usize)) {
        let m = self.f / self.c;
        let k = g.kh * g.kw;
        for b in 0..self.n {
            for fi in 0..self.f {
                let ch = fi / m;
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let o = ((b * self.f + fi) * self.oh + oy) * self.ow + ox;
                        for ki in 0..g.kh {
                            let Some(iy) = (oy * g.strides[0] + ki * g.dilations[0])
                                .checked_sub(g.pads[0])
                                .filter(|&v| v < self.h)
                            else {
                                continue;
                            };
                            for kj in 0..g.kw {
                                if let Some(ix) = (ox * g.strides[1] + kj * g.dilations[1])
                                    .checked_sub(g.pads[1])
                                    .filter(|&v| v < self.w)
                                {
                                    let xi = ((b * self.c + ch) * self.h + iy) * self.w + ix;
                                    f(o, xi, fi * k + ki * g.kw + kj);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn params(&self, g: &Conv2d, total: usize, plen: usize, parts: usize) -> Vec<u32> {
        [
            self.n,
            self.c,
            self.h,
            self.w,
            self.f,
            self.f / self.c,
            self.oh,
            self.ow,
            g.kh,
            g.kw,
            g.strides[0],
            g.strides[1],
            g.dilations[0],
            g.dilations[1],
            g.pads[0],
            g.pads[1],
            total,
            plen,
            parts,
        ]
        .map(|v| v as u32)
        .to_vec()
    }
}

/// Dispatches `entry` over `total` invocations reading `a` and `b` into a new tensor of `shape`.
fn run(
    entry: &str,
    a: &Tensor,
    b: &Tensor,
    shape: &[usize],
    params: &[u32],
    total: usize,
) -> Result<Tensor> {
    let DeviceInner::Gpu(ctx) = &a.device().inner else {
        unreachable!("called on the GPU only")
    };
    let out = gpu_output(ctx, a.device(), "depthwise_conv2d", shape, DType::F32)?;
    if total > 0 {
        let (Some(aa), Some(ba), Some(oa)) = (a.gpu_arg(), b.gpu_arg(), out.gpu_arg()) else {
            unreachable!("GPU device holds GPU tensors")
        };
        ctx.dispatch(
            &SHADER,
            entry,
            &[],
            params,
            &[aa, ba, oa],
            grid_1d(ctx, total),
        )?;
    }
    Ok(out)
}

impl Tensor {
    /// Depthwise convolution of x `self` (N, C, H, W) with filters (C·m, 1, KH, KW), groups C.
    pub fn depthwise_conv2d(&self, weight: &Tensor, geom: Conv2d) -> Result<Tensor> {
        self.expect_f32("depthwise_conv2d")?;
        weight.expect_f32("depthwise_conv2d")?;
        let d = dims(self.shape(), weight.shape(), &geom)?;
        let shape = [d.n, d.f, d.oh, d.ow];
        if let DeviceInner::Cpu = self.device().inner {
            let (x, w) = (self.host_f64(), weight.host_f64());
            let mut y = vec![0.0; shape.iter().product()];
            d.for_each_tap(&geom, |o, xi, wi| y[o] += x[xi] * w[wi]);
            return Ok(Tensor::cpu_from_f64(self.device(), &shape, y));
        }
        let total = shape.iter().product();
        run(
            "depthwise_forward",
            self,
            weight,
            &shape,
            &d.params(&geom, total, 0, 0),
            total,
        )
    }

    /// The data gradient of [`Tensor::depthwise_conv2d`]: upstream `self` (N, F, OH, OW) and the
    /// filters give dx of `x_shape`.
    pub fn depthwise_backward_data(
        &self,
        weight: &Tensor,
        geom: Conv2d,
        x_shape: &[usize],
    ) -> Result<Tensor> {
        let d = dims(x_shape, weight.shape(), &geom)?;
        check_upstream(self, &d)?;
        if let DeviceInner::Cpu = self.device().inner {
            let (g, w) = (self.host_f64(), weight.host_f64());
            let mut dx = vec![0.0; x_shape.iter().product()];
            d.for_each_tap(&geom, |o, xi, wi| dx[xi] += g[o] * w[wi]);
            return Ok(Tensor::cpu_from_f64(self.device(), x_shape, dx));
        }
        let total = x_shape.iter().product();
        run(
            "depthwise_backward_data",
            self,
            weight,
            x_shape,
            &d.params(&geom, total, 0, 0),
            total,
        )
    }

    /// The filter gradient of [`Tensor::depthwise_conv2d`]: input x `self` and upstream `g`
    /// (N, F, OH, OW) give dw of `w_shape` (F, 1, KH, KW).
    pub fn depthwise_backward_filter(
        &self,
        g: &Tensor,
        geom: Conv2d,
        w_shape: &[usize],
    ) -> Result<Tensor> {
        let d = dims(self.shape(), w_shape, &geom)?;
        check_upstream(g, &d)?;
        if let DeviceInner::Cpu = self.device().inner {
            let (x, gv) = (self.host_f64(), g.host_f64());
            let mut dw = vec![0.0; w_shape.iter().product()];
            d.for_each_tap(&geom, |o, xi, wi| dw[wi] += gv[o] * x[xi]);
            return Ok(Tensor::cpu_from_f64(self.device(), w_shape, dw));
        }
        // Parts of at most PART positions each, summed by a row reduction.
        let taps = w_shape.iter().product::<usize>();
        let parts = (d.n * d.oh * d.ow).div_ceil(PART).max(1);
        let total = taps * parts;
        let partial = run(
            "depthwise_backward_filter",
            self,
            g,
            &[taps, parts],
            &d.params(&geom, total, PART, parts),
            total,
        )?;
        partial.reduce(ReduceOp::Sum, 1, false)?.reshape(w_shape)
    }
}

fn check_upstream(g: &Tensor, d: &Dims) -> Result<()> {
    g.expect_f32("depthwise_conv2d_backward")?;
    if g.shape() != [d.n, d.f, d.oh, d.ow] {
        return Err(Error::Shape {
            op: "depthwise_conv2d_backward",
            detail: format!(
                "upstream {:?} must be {:?}",
                g.shape(),
                [d.n, d.f, d.oh, d.ow]
            ),
        });
    }
    Ok(())
}
