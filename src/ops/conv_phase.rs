//! A strided convolution's data gradient as one product over phases, with no col2im.
//!
//! The usual data gradient of an im2col convolution is a product of the upstream gradient
//! with the filters, (N·L, F)·(F, C·KH·KW), whose patch gradients col2im then sums back into
//! the image. Here the image is split by phase instead: input row ih = sh·a + rh (phase rh of
//! phase row a) is reached from output rows oh = a + t, for `th` consecutive shifts t, each
//! through one kernel row kh = rh + pt − sh·t. So with P, the upstream gradient's patches of
//! `th`×`tw` shifts around each phase position, and Wp, the filters rearranged by phase,
//!
//!   dx[n, c, sh·a + rh, sw·b + rw] = Σ_{f, ti, tj} P[(n, a, b), (f, ti, tj)] · Wp[(f, ti, tj), (rh, rw, c)]
//!
//! one product (N·ah·aw, F·th·tw)·(F·th·tw, sh·sw·C), each of its elements one pixel of dx,
//! which a scatter (a pure permutation, no sums) puts in place. Wp is zero where a phase has
//! fewer taps than `th`·`tw`, so the product does (sh·th·sw·tw)/(KH·KW) times the
//! multiply-adds of the patch-gradient product: 16/9 for a 3×3 window with stride 2, 1 for
//! any window with stride 1. It pays where the patch-gradient product is short and wide
//! (K = F) and col2im sums many taps: the digits CNN's 3×3 stride-2 convolution (F = 32,
//! C·KH·KW = 144), measured on lavapipe per dispatch, best of 8x20:
//! product 0.72-0.77 + col2im 0.61-0.65 ms against patches 0.22-0.26 + product 0.60-0.63 ms
//! (plus the two small kernels here). Autodiff takes it where [`PhaseGeom::pays`]: see
//! [`MAX_OVERHEAD`] for the measurements behind that choice.
//!
//! Shape rule: upstream gradient channels first, (F, N·OH·OW) — the batch-folded
//! convolution's layout (`graph/conv.rs`) — and the flattened filters (F, C·KH·KW) give
//! dx (N, C, H, W). Dilation 1 and one group only ([`PhaseGeom::new`] says when it applies).
//! CPU reference: the patch-gradient product and col2im, in f64 (the definition this
//! replaces). GPU: `shaders/conv_phase.wgsl`. Gradient: none (a backward pass; its second
//! derivative is not implemented).

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::conv::Conv2d;
use crate::ops::gpu_output;
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "conv_phase",
    // exact_div.wgsl's division (lavapipe divides integers one lane at a time).
    source: concat!(
        include_str!("../../shaders/conv_phase.wgsl"),
        include_str!("../../shaders/exact_div.wgsl")
    ),
};

/// Environment variable: `WGRAD_PHASED=0` keeps every data gradient on col2im (to measure).
pub const PHASED_ENV: &str = "WGRAD_PHASED";

/// Most multiply-adds the phase product may do per multiply-add of the patch-gradient
/// product (a 3×3 window with stride 2 does 16/9; a 1×1 window with stride 2 would do 4),
/// for an upstream gradient stored channels first and per image. Channels first is the
/// batch-folded convolution of few output positions, where the patch-gradient product is
/// short (K = F) and its stores cost more than the extra multiply-adds (digits, above).
/// Per image the layers are large and the products dominate; measured on lavapipe, data
/// gradient per layer at batch 8, best of 3x3 (product + col2im against the phase kernels):
/// 3×3 stride 1 on 64×56×56: 111.7 -> 75.0 ms; 128×28×28: 76.8 -> 61.0 ms; 256×14×14:
/// 70.3 -> 53.5 ms; but 3×3 stride 2 on 128×56×56: 95.4 -> 101.2 ms (16/9 the work).
const MAX_OVERHEAD: [f64; 2] = [2.0, 1.0];

/// One axis of the phase split: shifts per phase, the first shift's negation (the
/// patches' leading padding), the kernel index of phase 0 at shift index 0, and the phase
/// positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Axis {
    taps: usize,
    p0: usize,
    off: usize,
    count: usize,
}

/// The axis of input size `size`, window `k`, stride `s`, leading padding `p`: `None` when
/// a phase would start past its first output (padding of the whole window or more).
fn axis(size: usize, k: usize, s: usize, p: usize) -> Option<Axis> {
    // Shifts t with kh = r + p − s·t in [0, k) for some phase r in [0, s):
    // t from ceil((p − k + 1)/s) to floor((s − 1 + p)/s).
    let lowest = p as isize - k as isize + 1;
    if lowest > 0 {
        return None;
    }
    let p0 = (-lowest) as usize / s; // −ceil(lowest / s) for lowest <= 0
    let last = p.div_ceil(s); // floor((s − 1 + p)/s)
    Some(Axis {
        taps: last + p0 + 1,
        p0,
        off: p + s * p0,
        count: size.div_ceil(s),
    })
}

/// Where the phase product applies to a convolution of x (N, C, H, W) with F filters and
/// `geom`: its two axes, or `None`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PhaseGeom {
    rows: Axis,
    cols: Axis,
    /// Multiply-adds of the phase product per multiply-add of the patch-gradient product.
    overhead: f64,
}

impl PhaseGeom {
    /// The phase split, when the kernels take it: one group, dilation 1, padding inside the
    /// window, F·th·tw a multiple of 4 (the patches are stored as vec4s), loops within the
    /// budget and indices within 32 bits. `WGRAD_PHASED=0` turns it off.
    pub(crate) fn new(geom: &Conv2d, x: &[usize], filters: usize) -> Option<PhaseGeom> {
        if std::env::var(PHASED_ENV).is_ok_and(|v| v.trim() == "0") {
            return None;
        }
        let &[n, c, h, w] = x else { return None };
        if geom.groups != 1 || geom.dilations != [1, 1] || geom.kh == 0 || geom.kw == 0 {
            return None;
        }
        let rows = axis(h, geom.kh, geom.strides[0], geom.pads[0])?;
        let cols = axis(w, geom.kw, geom.strides[1], geom.pads[1])?;
        let k = filters * rows.taps * cols.taps;
        let macs = geom.strides[0] * rows.taps * geom.strides[1] * cols.taps;
        let phase = PhaseGeom {
            rows,
            cols,
            overhead: macs as f64 / (geom.kh * geom.kw) as f64,
        };
        let (oh, ow) = geom.output_size("conv2d", x).ok()?;
        let largest = [
            n * rows.count * cols.count * k,
            n * rows.count * cols.count * phase.width(c, geom),
            n * c * h * w,
            filters * n * oh * ow,
        ];
        (k % 4 == 0
            && k / 4 <= LOOP_BUDGET
            && w <= LOOP_BUDGET
            && c <= LOOP_BUDGET
            && largest.iter().all(|&e| e < u32::MAX as usize))
        .then_some(phase)
    }

    /// Whether the phase kernels beat the patch-gradient product and col2im, for an upstream
    /// gradient stored `channels_first` or per image (see [`MAX_OVERHEAD`]).
    pub(crate) fn pays(&self, channels_first: bool) -> bool {
        self.overhead <= MAX_OVERHEAD[usize::from(!channels_first)]
    }

    /// Columns of the product: (sh, sw, C).
    fn width(&self, c: usize, geom: &Conv2d) -> usize {
        geom.strides[0] * geom.strides[1] * c
    }

    /// conv_phase.wgsl's Params for dx `x`, `f` filters, outputs (oh, ow), `total` invocations.
    /// `strides`: elements between the upstream gradient's images and between its channels.
    fn params(
        &self,
        geom: &Conv2d,
        x: &[usize],
        (f, oh, ow): (usize, usize, usize),
        strides: [usize; 2],
        total: usize,
    ) -> [u32; 22] {
        let (r, c) = (self.rows, self.cols);
        let words = [
            [x[0], x[1], x[2], x[3], f, oh, ow, geom.kh, geom.kw],
            [
                geom.strides[0],
                geom.strides[1],
                r.taps,
                c.taps,
                r.p0,
                c.p0,
                r.off,
                c.off,
                r.count,
            ],
        ];
        let last = [c.count, total, strides[0], strides[1]];
        let mut out = [0u32; 22];
        for (o, v) in out.iter_mut().zip(words.iter().flatten().chain(&last)) {
            *o = *v as u32;
        }
        out
    }
}

impl Tensor {
    /// The data gradient (N, C, H, W) = `x_shape` of a convolution with flattened filters
    /// `weight` (F, C·KH·KW), from its upstream gradient `self`, stored channels first
    /// (F, N·OH·OW) or NCHW as (N, F, OH·OW): col2im of the patch gradients selfᵀ · weight
    /// (per image for NCHW), computed by phases (see the module doc). An error where
    /// [`PhaseGeom::new`] refuses the geometry.
    pub fn conv2d_grad_input_phased(
        &self,
        weight: &Tensor,
        geom: Conv2d,
        x_shape: &[usize],
    ) -> Result<Tensor> {
        let op = "conv2d_grad_input_phased";
        self.expect_f32(op)?;
        weight.expect_f32(op)?;
        let (oh, ow) = geom.output_size(op, x_shape)?;
        let [n, c, h, _] = x_shape[..] else {
            unreachable!("output_size checks the rank")
        };
        let f = weight.shape().first().copied().unwrap_or(0);
        let (ck, l) = (c * geom.kh * geom.kw, oh * ow);
        let channels_first = self.shape() == [f, n * l];
        if !(channels_first || self.shape() == [n, f, l]) || weight.shape() != [f, ck] {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "upstream gradient {:?} and filters {:?} for an input {x_shape:?} under \
                     {geom:?}: expected ({f}, {}) or ({n}, {f}, {l}), and ({f}, {ck})",
                    self.shape(),
                    weight.shape(),
                    n * l
                ),
            });
        }
        let ctx = match &self.device().inner {
            DeviceInner::Cpu => {
                // The definition: patch gradients, summed back by col2im.
                return self
                    .matmul_t(weight, true, false)?
                    .reshape(&[n, l, ck])?
                    .col2im(geom, x_shape);
            }
            DeviceInner::Gpu(ctx) => ctx,
        };
        let phase = PhaseGeom::new(&geom, x_shape, f).ok_or_else(|| Error::Invalid {
            op,
            detail: format!("input {x_shape:?} with {f} filters under {geom:?} has no phase split"),
        })?;
        let (taps, width) = (phase.rows.taps * phase.cols.taps, phase.width(c, &geom));
        let rows = n * phase.rows.count * phase.cols.count;
        if f == 0 {
            return Tensor::zeros(self.device(), x_shape);
        }
        let dx = gpu_output(ctx, self.device(), op, x_shape, DType::F32)?;
        if dx.numel() == 0 {
            return Ok(dx);
        }
        let run = |entry: &str, src: &Tensor, dst: &Tensor, total: usize| -> Result<()> {
            let (Some(s), Some(d)) = (src.gpu_arg(), dst.gpu_arg()) else {
                unreachable!("GPU device holds GPU tensors")
            };
            let strides = if channels_first {
                [l, n * l]
            } else {
                [f * l, l]
            };
            let params = phase.params(&geom, x_shape, (f, oh, ow), strides, total);
            let grid = ctx.grid(total.div_ceil(64) as u64);
            // div() in f32 holds for dividends below 2^24 (exact_div.wgsl).
            let exact = super::exact_div_constants(total < 1 << 24);
            ctx.dispatch(&SHADER, entry, exact, &params, &[s, d], grid)
        };
        let wp = gpu_output(ctx, self.device(), op, &[f * taps, width], DType::F32)?;
        run("conv_phase_weight", weight, &wp, f * taps)?;
        let patches = gpu_output(ctx, self.device(), op, &[rows, f * taps], DType::F32)?;
        run("conv_phase_patches4", self, &patches, rows)?;
        let product = patches.matmul(&wp)?;
        if width % 4 == 0 && width / 4 <= LOOP_BUDGET {
            run("conv_phase_scatter_rows4", &product, &dx, rows)?;
        } else {
            run("conv_phase_scatter", &product, &dx, n * c * h)?;
        }
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (phase, kernel index) pair with kh = r + p − s·t appears once among the shifts.
    #[test]
    fn each_tap_belongs_to_one_phase_and_shift() {
        for (k, s, p) in [
            (3, 2, 1),
            (3, 1, 1),
            (5, 2, 2),
            (7, 2, 3),
            (3, 3, 0),
            (4, 2, 1),
            (1, 2, 0),
            (2, 3, 1),
        ] {
            let a = axis(10, k, s, p).unwrap();
            let mut seen = vec![0; k];
            for r in 0..s {
                for ti in 0..a.taps {
                    let kh = (r + a.off) as isize - (s * ti) as isize;
                    if (0..k as isize).contains(&kh) {
                        seen[kh as usize] += 1;
                    }
                }
            }
            // each kernel index once per phase it reaches: once in all, per its phase
            assert!(
                seen.iter().all(|&v| v == 1),
                "k {k} s {s} p {p}: {seen:?} {a:?}"
            );
        }
        assert_eq!(axis(10, 3, 2, 3), None); // padding of the whole window
    }
}
