//! Implicit-GEMM convolution: the product reads its patch operand through the
//! convolution's index map, so the patch matrix of [`Tensor::im2col`] never exists.
//!
//! Three passes share one geometry ([`Conv2d`], with groups) and one sum of products:
//! every term w[f, c, ki, kj] · x[n, g·Cg + c, oy·sh - pt + ki·dh, ox·sw - pl + kj·dw]
//! feeds y[n, f, oy, ox]. The forward sums it into y; the data gradient sums
//! w · gy into gx (a transposed convolution, as a gather); the weight gradient sums
//! gy · x into gw over the N·OH·OW positions.
//! CPU reference: one f64 walk over those terms ([`for_each_term`]). GPU:
//! `shaders/conv_gemm.wgsl`. Gradients (each pass is linear in both inputs, so the three
//! close under differentiation): d forward = (grad_input, grad_weight);
//! d grad_input(gy, w) = (forward(u, w), grad_weight(u, gy));
//! d grad_weight(x, gy) = (grad_input(gy, u), forward(x, u)).

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::chunk::windows;
use crate::ops::conv::Conv2d;
use crate::ops::gpu_output;
use crate::ops::matmul::Epilogue;
use crate::ops::reduce::ReduceOp;
use crate::ops::texture_reads::{dispatch_reading_sources, texture_module, Read};
use crate::tensor::Tensor;

pub(crate) const SHADER: Kernel = Kernel {
    name: "conv_gemm",
    source: include_str!("../../shaders/conv_gemm.wgsl"),
};

/// The forward's kernel (its filters bound as vec4s, so a module of its own).
pub(crate) const FORWARD: Kernel = Kernel {
    name: "conv_gemm_fwd",
    source: concat!(
        include_str!("../../shaders/conv_gemm_fwd.wgsl"),
        include_str!("../../shaders/exact_div.wgsl")
    ),
};

/// [`SHADER`] and [`FORWARD`] reading their operands through textures
/// (src/ops/texture_reads.rs): conv_gemm's a and b, the forward's x and packed filters.
fn texture_kernel(kernel: &Kernel) -> Kernel {
    static GEMM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static FWD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if kernel.name == FORWARD.name {
        Kernel {
            name: "conv_gemm_fwd.texture",
            source: FWD.get_or_init(|| {
                texture_module(FORWARD.source, &[Read::Scalar("a_at"), Read::Vec4("wp_at")])
            }),
        }
    } else {
        Kernel {
            name: "conv_gemm.texture",
            source: GEMM.get_or_init(|| {
                texture_module(SHADER.source, &[Read::Scalar("a_at"), Read::Scalar("b_at")])
            }),
        }
    }
}

/// [`texture_kernel`]'s sources, for tests/shaders.rs.
pub(crate) fn texture_sources() -> [&'static str; 2] {
    [
        texture_kernel(&SHADER).source,
        texture_kernel(&FORWARD).source,
    ]
}

/// Filters per forward invocation (the packed filters' padding unit).
const FILTER_BLOCK: usize = 16;

/// Which product of a convolution a node computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// (x (N, C, H, W), w (F, C/G, KH, KW)) → y (N, F, OH, OW).
    Forward,
    /// (gy (N, F, OH, OW), w) → gx (N, C, H, W) for the input size [H, W].
    GradInput([usize; 2]),
    /// (x, gy) → gw (F, C/G, KH, KW).
    GradWeight,
}

impl ConvPass {
    /// The name of the pass in errors and plans.
    pub fn name(&self) -> &'static str {
        match self {
            ConvPass::Forward => "conv2d",
            ConvPass::GradInput(_) => "conv2d_grad_input",
            ConvPass::GradWeight => "conv2d_grad_weight",
        }
    }
}

/// The three shapes (x, w, y) of a pass from its two input shapes, checked; `op` names
/// the pass in errors.
fn operand_shapes(
    pass: ConvPass,
    geom: &Conv2d,
    s0: &[usize],
    s1: &[usize],
) -> Result<[Vec<usize>; 3]> {
    let op = pass.name();
    let four = |s: &[usize], what: &str| -> Result<()> {
        if s.len() == 4 {
            Ok(())
        } else {
            Err(Error::Shape {
                op,
                detail: format!("{what} must have rank 4, got {s:?} (inputs {s0:?} and {s1:?})"),
            })
        }
    };
    four(s0, "the first input")?;
    four(s1, "the second input")?;
    let g = geom.groups;
    let (x, w) = match pass {
        ConvPass::Forward => (s0.to_vec(), s1.to_vec()),
        ConvPass::GradInput([h, wd]) => (vec![s0[0], s1[1] * g, h, wd], s1.to_vec()),
        ConvPass::GradWeight => {
            let cg = s0[1].checked_div(g).unwrap_or(0);
            (s0.to_vec(), vec![s1[1], cg, geom.kh, geom.kw])
        }
    };
    let (n, f) = crate::ops::conv::check_conv2d(&x, &w, *geom).map_err(|e| match e {
        Error::Shape { detail, .. } => Error::Shape { op, detail },
        other => other,
    })?;
    let (oh, ow) = geom.output_size(op, &x)?;
    let y = vec![n, f, oh, ow];
    let got_y = match pass {
        ConvPass::Forward => &y,
        ConvPass::GradInput(_) => &s0.to_vec(),
        ConvPass::GradWeight => &s1.to_vec(),
    };
    if *got_y != y {
        return Err(Error::Shape {
            op,
            detail: format!(
                "the output gradient {got_y:?} does not match the convolution's output {y:?} (input {x:?}, filters {w:?}, {geom:?})"
            ),
        });
    }
    Ok([x, w, y])
}

/// The output shape of a pass on inputs of shapes `s0`, `s1`.
pub(crate) fn pass_shape(
    pass: ConvPass,
    geom: &Conv2d,
    s0: &[usize],
    s1: &[usize],
) -> Result<Vec<usize>> {
    let [x, w, y] = operand_shapes(pass, geom, s0, s1)?;
    Ok(match pass {
        ConvPass::Forward => y,
        ConvPass::GradInput(_) => x,
        ConvPass::GradWeight => w,
    })
}

/// Calls `f(xi, wi, yi)` for every product term w[wi]·x[xi] that feeds y[yi] (terms in
/// the padding read nothing). The reference of all three passes walks these.
fn for_each_term(x: &[usize], w: &[usize], geom: &Conv2d, mut f: impl FnMut(usize, usize, usize)) {
    let [n, c, h, wd] = [x[0], x[1], x[2], x[3]];
    let [fs, cg, kh, kw] = [w[0], w[1], w[2], w[3]];
    let (oh, ow) = geom.output_size("conv2d", x).unwrap_or((0, 0));
    let fg = fs / geom.groups.max(1);
    for b in 0..n {
        for fi in 0..fs {
            let g = fi / fg.max(1);
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((b * fs + fi) * oh + oy) * ow + ox;
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        for ki in 0..kh {
                            let iy = (oy * geom.strides[0] + ki * geom.dilations[0]) as isize
                                - geom.pads[0] as isize;
                            if iy < 0 || iy as usize >= h {
                                continue;
                            }
                            for kj in 0..kw {
                                let ix = (ox * geom.strides[1] + kj * geom.dilations[1]) as isize
                                    - geom.pads[1] as isize;
                                if ix >= 0 && (ix as usize) < wd {
                                    let xi = ((b * c + ch) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((fi * cg + ci) * kh + ki) * kw + kj;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The kernel's params: shape, window, groups, the reduction range and the invocations.
#[allow(clippy::too_many_arguments)]
fn params(
    op: &'static str,
    geom: &Conv2d,
    x: &[usize],
    f: usize,
    oh: usize,
    ow: usize,
    k: (usize, usize),
    chunk: usize,
    accumulate: bool,
    total: usize,
    fgp: usize,
) -> Result<Vec<u32>> {
    // The im2col params carry the 32-bit and padded-size checks; reuse them.
    geom.params(op, x, oh, ow, 0)?;
    let g = geom.groups;
    let v = [
        x[0],
        x[1],
        x[2],
        x[3],
        f,
        geom.kh,
        geom.kw,
        g,
        geom.strides[0],
        geom.strides[1],
        geom.pads[0],
        geom.pads[1],
        geom.dilations[0],
        geom.dilations[1],
        oh,
        ow,
        x[1] / g,
        f / g,
        k.0,
        k.1,
        chunk,
        accumulate as usize,
        total,
        fgp,
        0, // epi: the forward's epilogue bits, set by `run`
        0,
        0,
        0,
    ];
    if v.iter().any(|&d| d > u32::MAX as usize) {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "input {x:?} with {f} filters under {geom:?} is past the kernel's 32-bit indices"
            ),
        });
    }
    Ok(v.iter().map(|&d| d as u32).collect())
}

/// Invocations per block of 4×4 outputs: `a` and `b` rounded up to 4, times `rest`.
fn blocks(a: usize, b: usize, rest: usize) -> usize {
    a.div_ceil(4) * b.div_ceil(4) * rest
}

/// Half-open ranges of `0..n` of at most the loop budget each; one empty range when n = 0
/// (so an empty reduction still writes its zeros).
fn budget_ranges(n: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return vec![(0, 0)];
    }
    windows(n, LOOP_BUDGET)
        .map(|(s, len)| (s, s + len))
        .collect()
}

/// Positions per chunk of the weight gradient: at most the loop budget, and small enough
/// that the chunks give the adapter's cores some `target` invocations to share.
fn grad_weight_chunk(positions: usize, per_chunk: usize) -> usize {
    const TARGET: usize = 2048;
    let chunks = TARGET.div_ceil(per_chunk.max(1)).max(1);
    // At least 128 positions: digits conv1 (12 invocations per chunk, 4,096 positions) took
    // 0.41-0.54 ms per step in chunks of 256 (3 workgroups on 2 cores), 0.34-0.36 ms in
    // chunks of 128 (6), and 0.53-0.66 ms in chunks of 64.
    positions.div_ceil(chunks).clamp(128, LOOP_BUDGET)
}

impl Tensor {
    /// 2-D convolution of x (N, C, H, W) with filters (F, C/groups, KH, KW) by implicit
    /// GEMM (no patch matrix): (N, F, OH, OW). Same result as [`Tensor::conv2d`].
    pub fn conv2d_implicit(&self, weight: &Tensor, geom: Conv2d) -> Result<Tensor> {
        self.conv2d_pass(weight, ConvPass::Forward, geom)
    }

    /// [`Tensor::conv2d_implicit`] with an epilogue applied as the kernel stores y:
    /// `relu?(y·scale[f] + shift[f])` per output channel f (a convolution's bias, a folded
    /// batch norm, a ReLU; src/epilogue.rs fuses them in compiled graphs). The column bias,
    /// residual and mask parts are not taken by the convolution kernels: an error.
    pub(crate) fn conv2d_implicit_epilogue(
        &self,
        weight: &Tensor,
        geom: Conv2d,
        epi: Epilogue<'_>,
    ) -> Result<Tensor> {
        let op = "conv2d";
        if epi.bias.is_some() || epi.residual.is_some() || epi.mask.is_some() {
            return Err(Error::Invalid {
                op,
                detail:
                    "a convolution's epilogue takes a per-channel scale and shift and a ReLU only"
                        .into(),
            });
        }
        let f = weight.shape().first().copied().unwrap_or(0);
        for (part, t) in [("scale", epi.scale), ("shift", epi.shift)] {
            if let Some(t) = t {
                if t.numel() != f || t.dtype() != crate::DType::F32 {
                    return Err(Error::Shape {
                        op,
                        detail: format!(
                            "epilogue {part} of shape {:?} ({:?}) for {f} filters (weights {:?}): it needs {f} f32 values",
                            t.shape(),
                            t.dtype(),
                            weight.shape()
                        ),
                    });
                }
                self.expect_same_device(op, t)?;
            }
        }
        match &self.device().inner {
            DeviceInner::Gpu(_) if epi.flags() != 0 => {
                self.conv2d_pass_with(weight, ConvPass::Forward, geom, epi)
            }
            _ => {
                // The same ops one by one (the CPU reference, or no epilogue at all).
                let y = self.conv2d_pass(weight, ConvPass::Forward, geom)?;
                let positions = y.shape()[2..].iter().product();
                epi.apply_rows(y, (f, positions))
            }
        }
    }

    /// One pass of a convolution (see [`ConvPass`]) on `self` and `other`.
    pub fn conv2d_pass(&self, other: &Tensor, pass: ConvPass, geom: Conv2d) -> Result<Tensor> {
        self.conv2d_pass_with(other, pass, geom, Epilogue::default())
    }

    fn conv2d_pass_with(
        &self,
        other: &Tensor,
        pass: ConvPass,
        geom: Conv2d,
        epi: Epilogue<'_>,
    ) -> Result<Tensor> {
        let op = pass.name();
        self.expect_f32(op)?;
        other.expect_f32(op)?;
        let [xs, ws, ys] = operand_shapes(pass, &geom, self.shape(), other.shape())?;
        let out_shape = pass_shape(pass, &geom, self.shape(), other.shape())?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let (a, b) = (self.host_f64(), other.host_f64());
                let mut out = vec![0.0f64; out_shape.iter().product()];
                match pass {
                    ConvPass::Forward => {
                        for_each_term(&xs, &ws, &geom, |xi, wi, yi| out[yi] += b[wi] * a[xi])
                    }
                    ConvPass::GradInput(_) => {
                        for_each_term(&xs, &ws, &geom, |xi, wi, yi| out[xi] += b[wi] * a[yi])
                    }
                    ConvPass::GradWeight => {
                        for_each_term(&xs, &ws, &geom, |xi, wi, yi| out[wi] += b[yi] * a[xi])
                    }
                }
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                let (Some(a), Some(b)) = (self.gpu_arg(), other.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                let g = geom.groups;
                let (f, cg, fg) = (ws[0], ws[1], ws[0] / g);
                let (oh, ow) = (ys[2], ys[3]);
                let khw = geom.kh * geom.kw;
                let fgp = fg.div_ceil(FILTER_BLOCK) * FILTER_BLOCK;
                // `epi`: the forward's epilogue bits (EPI_* of matmul.wgsl), 0 elsewhere.
                let run = |kernel: &Kernel,
                           entry: &str,
                           bufs: &[crate::gpu::BufArg<'_>],
                           k,
                           chunk,
                           acc,
                           total,
                           epi: u32| {
                    let mut p = params(op, &geom, &xs, f, oh, ow, k, chunk, acc, total, fgp)?;
                    p[24] = epi;
                    // The forward divides in f32, exact for dividends (invocations, output
                    // positions) below 2^24; past that its pipeline constant EXACT.
                    let exact =
                        kernel.name == FORWARD.name && (total >= 1 << 24 || oh * ow >= 1 << 24);
                    let consts = super::exact_div_constants(!exact);
                    // The operands through textures where products read theirs so (all but
                    // the weight packing, which runs once per plan).
                    let sources = match entry {
                        "conv_forward" | "conv_forward4" | "conv_grad_input"
                        | "conv_grad_input_s1" | "conv_grad_weight" | "conv_grad_weight8" => 2,
                        _ => 0,
                    };
                    let grid = ctx.grid((total as u64).div_ceil(64));
                    if sources == 0 {
                        return ctx.dispatch(kernel, entry, consts, &p, bufs, grid);
                    }
                    let kernels = (kernel, &texture_kernel(kernel));
                    dispatch_reading_sources(ctx, kernels, sources, entry, consts, &p, bufs, grid)
                };
                match pass {
                    ConvPass::Forward | ConvPass::GradInput(_) => {
                        let out =
                            gpu_output(ctx, self.device(), op, &out_shape, crate::DType::F32)?;
                        if out.numel() == 0 {
                            return Ok(out);
                        }
                        let o = out.gpu_arg().expect("GPU output");
                        // The reduction split so that no invocation loops past the budget;
                        // later parts add to the first.
                        if pass == ConvPass::Forward {
                            let packed = [g, cg * khw, fgp];
                            let wp =
                                gpu_output(ctx, self.device(), op, &packed, crate::DType::F32)?;
                            let wpa = wp.gpu_arg().expect("GPU output");
                            let n_packed = wp.numel();
                            run(
                                &SHADER,
                                "conv_weight_pack",
                                &[b, b, wpa],
                                (0, 0),
                                0,
                                false,
                                n_packed,
                                0,
                            )?;
                            let total = (fgp / FILTER_BLOCK) * (oh * ow).div_ceil(4) * xs[0] * g;
                            // vec4 stores when each filter's plane is whole vec4s.
                            let entry = if (oh * ow) % 4 == 0 {
                                "conv_forward4"
                            } else {
                                "conv_forward"
                            };
                            // The epilogue on the last part of the reduction (the earlier
                            // ones store partial sums); an absent operand binds wp.
                            let scale = epi.scale.and_then(|t| t.gpu_arg()).unwrap_or(wpa);
                            let shift = epi.shift.and_then(|t| t.gpu_arg()).unwrap_or(wpa);
                            let ranges = budget_ranges(cg * khw);
                            let last = ranges.len().saturating_sub(1);
                            for (i, k) in ranges.into_iter().enumerate() {
                                let bits = if i == last { epi.flags() } else { 0 };
                                let bufs = [a, wpa, o, scale, shift];
                                run(&FORWARD, entry, &bufs, k, 0, i > 0, total, bits)?;
                            }
                        } else {
                            // Stride 1, dilation 1: 8 pixels of a row per invocation (the
                            // row checked once per filter row, each tap loaded once for 8).
                            let unit = geom.strides == [1, 1] && geom.dilations == [1, 1];
                            let (entry, total) = match unit {
                                true => {
                                    let rows = xs[2] * xs[3].div_ceil(8);
                                    ("conv_grad_input_s1", cg.div_ceil(4) * rows * xs[0] * g)
                                }
                                false => ("conv_grad_input", blocks(cg, xs[2] * xs[3], xs[0] * g)),
                            };
                            for (i, k) in budget_ranges(fg * khw).into_iter().enumerate() {
                                let bufs = [a, b, o];
                                run(&SHADER, entry, &bufs, k, 0, i > 0, total, 0)?;
                            }
                        }
                        Ok(out)
                    }
                    ConvPass::GradWeight => {
                        let positions = xs[0] * oh * ow;
                        // 8 filters per invocation where they divide Fg (each x load, with
                        // its padding checks, then serves 8).
                        let (entry, per_chunk) = match fg % 8 {
                            0 => ("conv_grad_weight8", fg / 8 * (cg * khw).div_ceil(4) * g),
                            _ => ("conv_grad_weight", blocks(fg, cg * khw, g)),
                        };
                        let chunk = grad_weight_chunk(positions, per_chunk);
                        let s = positions.div_ceil(chunk).max(1);
                        let part_shape = [s, f, cg * khw];
                        let part =
                            gpu_output(ctx, self.device(), op, &part_shape, crate::DType::F32)?;
                        if part.numel() == 0 {
                            return part.reshape(&out_shape);
                        }
                        let o = part.gpu_arg().expect("GPU output");
                        run(
                            &SHADER,
                            entry,
                            &[a, b, o],
                            (0, 0),
                            chunk,
                            false,
                            per_chunk * s,
                            0,
                        )?;
                        if s == 1 {
                            part.reshape(&out_shape)
                        } else {
                            part.reduce(ReduceOp::Sum, 0, false)?.reshape(&out_shape)
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_ranges_cover_within_the_budget() {
        for n in [0, 1, 16_383, 16_384, 16_385, 100_000] {
            let r = budget_ranges(n);
            assert_eq!(r.first().unwrap().0, 0);
            assert_eq!(r.last().unwrap().1, n);
            assert!(r.windows(2).all(|p| p[0].1 == p[1].0));
            assert!(r.iter().all(|(a, b)| b - a <= LOOP_BUDGET));
        }
    }

    /// Both forward entries apply every per-channel epilogue part as the CPU reference's
    /// separate element-wise ops compute them: positions not a multiple of 4 (conv_forward)
    /// and a multiple (conv_forward4), filters past one block of 16 and not a multiple of
    /// 4, groups, stride 2 with odd sizes, and a reduction past the loop budget (split into
    /// parts: the epilogue only on the last). Bad operands are errors naming the op.
    #[test]
    fn the_implicit_forward_applies_the_epilogue() {
        let Ok(dev) = crate::Device::gpu() else {
            return;
        };
        let cpu = crate::Device::cpu();
        let t = |seed: u64, shape: &[usize]| {
            let n = shape.iter().product();
            let v = crate::Rng::new(seed).vec_uniform(n, -1.0, 1.0);
            (
                Tensor::from_slice(&dev, &v, shape).unwrap(),
                Tensor::from_slice(&cpu, &v, shape).unwrap(),
            )
        };
        let cases: [([usize; 4], usize, Conv2d); 4] = [
            ([2, 3, 5, 7], 5, Conv2d::new(3, 3).padding(1)), // 35 positions
            ([1, 4, 6, 6], 18, Conv2d::new(3, 3).padding(1)), // 36 positions, 2 blocks
            (
                [3, 6, 9, 7],
                4,
                Conv2d::new(3, 3).stride(2).padding(1).groups(2),
            ),
            ([1, 1900, 3, 3], 3, Conv2d::new(3, 3).padding(1)), // K = 17,100 > budget
        ];
        for (i, (xs, f, geom)) in cases.into_iter().enumerate() {
            let seed = 10 * i as u64;
            let (x, x_cpu) = t(seed, &xs);
            let (w, w_cpu) = t(seed + 1, &[f, xs[1] / geom.groups, geom.kh, geom.kw]);
            let (scale, scale_cpu) = t(seed + 2, &[f]);
            let (shift, shift_cpu) = t(seed + 3, &[f, 1, 1]);
            for parts in 0..3 {
                // 0: scale, shift, relu (a folded batch norm and its ReLU); 1: shift (a
                // bias); 2: scale, relu.
                fn make<'t>(parts: usize, s: &'t Tensor, sh: &'t Tensor) -> Epilogue<'t> {
                    Epilogue {
                        scale: (parts != 1).then_some(s),
                        shift: (parts != 2).then_some(sh),
                        relu: parts != 1,
                        ..Epilogue::default()
                    }
                }
                let label = format!("{xs:?} f={f} {geom:?} parts {parts}");
                let want = x_cpu
                    .conv2d_implicit_epilogue(&w_cpu, geom, make(parts, &scale_cpu, &shift_cpu))
                    .unwrap();
                // The reference composes the ops one by one: check it against them.
                let mut plain = x_cpu.conv2d_implicit(&w_cpu, geom).unwrap();
                let per_channel = [1, f, 1, 1];
                if parts != 1 {
                    plain = plain
                        .mul(&scale_cpu.reshape(&per_channel).unwrap())
                        .unwrap();
                }
                if parts != 2 {
                    plain = plain
                        .add(&shift_cpu.reshape(&per_channel).unwrap())
                        .unwrap();
                }
                if parts != 1 {
                    plain = plain.relu().unwrap();
                }
                let want = want.to_vec::<f32>().unwrap();
                assert_eq!(want, plain.to_vec::<f32>().unwrap(), "{label}");
                let got = x
                    .conv2d_implicit_epilogue(&w, geom, make(parts, &scale, &shift))
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap();
                for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-4 * (1.0 + r.abs()) * if i == 3 { 10.0 } else { 1.0 };
                    assert!((g - r).abs() <= tol, "{label}: element {k}: {g} vs {r}");
                }
            }
        }
        // A column bias is not a convolution epilogue; a scale of the wrong length is a
        // shape error naming the op.
        let (x, _) = t(1, &[1, 2, 4, 4]);
        let (w, _) = t(2, &[3, 2, 3, 3]);
        let (bad, _) = t(3, &[4]);
        let refuse = |epi: Epilogue<'_>| {
            let e = x.conv2d_implicit_epilogue(&w, Conv2d::new(3, 3), epi);
            e.unwrap_err().to_string()
        };
        let e = refuse(Epilogue {
            bias: Some(&bad),
            ..Epilogue::default()
        });
        assert!(e.contains("conv2d"), "{e}");
        let e = refuse(Epilogue {
            scale: Some(&bad),
            ..Epilogue::default()
        });
        assert!(e.contains("[4]"), "{e}");
    }

    #[test]
    fn grad_weight_chunks_stay_within_the_budget() {
        for (positions, per) in [(1, 1), (32_768, 28), (100_352, 2304), (1 << 24, 1)] {
            let c = grad_weight_chunk(positions, per);
            assert!((1..=LOOP_BUDGET).contains(&c), "{positions} {per}: {c}");
        }
    }
}
