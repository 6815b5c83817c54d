//! Convolution as matrix multiplication: `im2col` turns an NCHW image batch into a
//! patch matrix, and a convolution is that matrix times the flattened filters.
//! `col2im` is its adjoint (the gradient of `im2col`), summing patches back.
//!
//! Shape rule: x (N, C, H, W) with a KH×KW kernel, row stride s, top and bottom padding
//! pt and pb, row dilation d gives OH = (H + pt + pb - d·(KH-1) - 1)/s + 1 (OW likewise with
//! the column stride, left and right padding and column dilation); patches are
//! (N, OH·OW, C·KH·KW). Bottom and right padding only decide how many windows fit.
//! CPU reference: plain loops. GPU: `shaders/conv.wgsl`.
//! Gradient: d im2col = col2im, d col2im = im2col (each is the other's transpose); where
//! im2col's gradient is a convolution's patch gradients, autodiff computes the same sum by
//! phases instead (`ops::conv_phase`), with no col2im.
//!
//! Grouped convolution (`groups` G > 1; depthwise when G = C) reuses the same patch
//! matrix: its columns are channel-major, so group g owns one contiguous block of
//! (C/G)·KH·KW columns, and one batched matmul (N, G, L, CgK)·(G, Fg, CgK)ᵀ does every
//! group at once. Its gradients come from the composition (permute, reshape, matmul).

use crate::device::{Device, DeviceInner};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::ops::im2col_window::im2col_window;
use crate::ops::matmul::GEMV_ROWS;
use crate::ops::texture_reads::{dispatch_reading_source, texture_module, Read};
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub use crate::ops::conv_geom::Conv2d;

pub(crate) const SHADER: Kernel = Kernel {
    name: "conv",
    // exact_div.wgsl's division helpers, shared with the implicit-GEMM forward.
    source: concat!(
        include_str!("../../shaders/conv.wgsl"),
        include_str!("../../shaders/exact_div.wgsl")
    ),
};

/// Invocations an im2col_rows4 dispatch is cut into at least, where its patch rows allow
/// (pieces of at least 16 vec4s): 64 workgroups, enough for lavapipe's threads to share.
const IM2COL_CALLS: usize = 4096;

/// conv.wgsl with im2col_rows4 reading x through a texture (src/ops/texture_reads.rs).
pub(crate) fn texture_kernel() -> Kernel {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Kernel {
        name: "conv.texture",
        source: SOURCE.get_or_init(|| texture_module(SHADER.source, &[Read::Scalar("src_at")])),
    }
}

/// Calls `f(col, pixel)` for every patch entry that reads an input pixel (entries in
/// the padding read nothing): `col` indexes the patch matrix (N, OH·OW, C·KH·KW),
/// `pixel` the image (N, C, H, W). Both references walk the same pairs.
fn for_each_tap(s: &[usize], g: &Conv2d, oh: usize, ow: usize, mut f: impl FnMut(usize, usize)) {
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let ck = c * g.kh * g.kw;
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = (b * oh * ow + oy * ow + ox) * ck;
                for ch in 0..c {
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let iy = (oy * g.strides[0] + ki * g.dilations[0]) as isize
                                - g.pads[0] as isize;
                            let ix = (ox * g.strides[1] + kj * g.dilations[1]) as isize
                                - g.pads[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let pixel = ((b * c + ch) * h + iy as usize) * w + ix as usize;
                                f(row + (ch * g.kh + ki) * g.kw + kj, pixel);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The blocks `[(ki0, ki1), (kj0, kj1)]` of a kh×kw window that successive `im2col_forward`
/// and `col2im_forward` dispatches walk. One invocation loops `(ki1 - ki0)·(1 + kj1 - kj0)`
/// times at most per output (a row step, then its columns), so a block keeps that within
/// `budget` ([`crate::gpu::LOOP_BUDGET`], divided by the outputs per invocation): a window
/// of up to about 127×127 is one dispatch, a larger one several (col2im's add up; Mesa's
/// lavapipe silently stops an invocation after 65535 iterations, leaving its output unset).
fn col2im_blocks(kh: usize, kw: usize, budget: usize) -> impl Iterator<Item = [(usize, usize); 2]> {
    use crate::ops::chunk::windows;
    let cols = kw.min(budget / 2);
    let rows = (budget / (cols + 1)).max(1);
    let to_range = |(start, len): (usize, usize)| (start, start + len);
    windows(kh, rows).flat_map(move |r| windows(kw, cols).map(move |c| [to_range(r), to_range(c)]))
}

/// The invocations of `col2im_phase4` for an image batch of shape `s` (N, C, H, W), if it
/// takes the window: dilation 1 on both axes, rows of whole vec4s, a column stride that
/// divides 4 (so every vec4 of a row has the same column phases), a row stride of at
/// most 4 (each phase of rows holds about H/sh rows: a far larger stride would launch
/// invocations for rows no phase has) and one invocation's pairs within the loop budget.
/// col2im_forward4 walks every kernel row and column a stride can reach (for 3×3 and
/// stride 2, 4 pairs per pixel, of which 2.25 exist). Lavapipe, best of 5×10 per
/// dispatch, alternated: digits conv2's data gradient (3×3, stride 2, (64, 16, 8, 8))
/// 0.71-1.15 -> 0.63-0.97 ms (3 of 4 rounds faster); the same at stride 1 1.17-2.18 ->
/// 1.03-1.72; (8, 64, 56, 56) at stride 1 35-38 -> 31-33 ms, at stride 2 level (17-19
/// against 16-21). The loads fell by 44% and the time by ~15%: the per-pair index work
/// costs about as much as the load.
fn phase_invocations(s: &[usize], g: &Conv2d) -> Option<usize> {
    let &[n, c, h, w] = s else { return None };
    let ([sh, sw], [dh, dw]) = (g.strides, g.dilations);
    let pairs = g.kh.div_ceil(sh.max(1)) * (1 + 4 * g.kw.div_ceil(sw.max(1)));
    let fits = dh == 1
        && dw == 1
        && w % 4 == 0
        && matches!(sw, 1 | 2 | 4)
        && (1..=4).contains(&sh)
        && pairs <= crate::gpu::LOOP_BUDGET;
    if !fits {
        return None;
    }
    let invocations = sh.checked_mul(n * c)?.checked_mul(h.div_ceil(sh))? * (w / 4);
    u32::try_from(invocations).ok().map(|_| invocations)
}

/// The kernels' pipeline constants for `params` ([`Conv2d::params`]): `EXACT` when some
/// dividend can reach 2^24 (the element count, or an axis's size, padding, stride and
/// dilation past 2^22 each), where the kernels' f32 division would not be exact.
fn division(params: &[u32; 15]) -> &'static [(&'static str, f64)] {
    let [_, _, h, w, _, _, sh, sw, pt, pl, dh, dw, oh, ow, total] = *params;
    let part = 1 << 22;
    let fast = total < 1 << 24
        && [h, w, sh, sw, pt, pl, dh, dw, oh, ow]
            .iter()
            .all(|&v| v < part);
    super::exact_div_constants(fast)
}

/// CPU reference of im2col: patches (N, OH·OW, C·KH·KW).
fn im2col_reference(x: &[f64], s: &[usize], g: &Conv2d, oh: usize, ow: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; s[0] * oh * ow * s[1] * g.kh * g.kw];
    for_each_tap(s, g, oh, ow, |col, pixel| out[col] = x[pixel]);
    out
}

/// CPU reference of col2im: scatters (adds) every patch value back to its pixel, in f64.
fn col2im_reference(cols: &[f64], s: &[usize], g: &Conv2d, oh: usize, ow: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; s.iter().product()];
    for_each_tap(s, g, oh, ow, |col, pixel| out[pixel] += cols[col]);
    out
}

impl Tensor {
    /// The patch matrix of an NCHW batch: (N, OH·OW, C·KH·KW).
    pub fn im2col(&self, geom: Conv2d) -> Result<Tensor> {
        self.im2col_rows(geom, None)
    }

    /// The patch matrix with rows of C·KH·KW rounded up to a multiple of 4, the values past
    /// C·KH·KW zero: (N, OH·OW, CK4), what the vec4 product kernels read without a padded
    /// copy of their own (ResNet-50's stem, 147 taps: a 7-10 ms copy per run on lavapipe).
    pub(crate) fn im2col_vec4_rows(&self, geom: Conv2d) -> Result<Tensor> {
        self.im2col_rows(geom, Some(4))
    }

    /// [`Tensor::im2col`] with its rows rounded up to a multiple of `align` (zero-filled).
    fn im2col_rows(&self, geom: Conv2d, align: Option<usize>) -> Result<Tensor> {
        let op = "im2col";
        self.expect_f32(op)?;
        let (oh, ow) = geom.output_size(op, self.shape())?;
        let s = self.shape().to_vec();
        let mut out_shape = geom.patches_shape(op, &s)?;
        let ck = out_shape[2];
        let ld = align.map_or(ck, |a| ck.div_ceil(a) * a);
        out_shape[2] = ld;
        crate::shape::checked_numel(op, &out_shape)?;
        match &self.device().inner {
            DeviceInner::Cpu => {
                let x = self.host_f64();
                let out = im2col_reference(&x, &s, &geom, oh, ow);
                let mut padded = vec![0.0; out_shape.iter().product()];
                for (row, taps) in padded.chunks_mut(ld).zip(out.chunks(ck.max(1))) {
                    row[..ck].copy_from_slice(taps);
                }
                let out = if ld == ck { out } else { padded };
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                // Checked against the patch matrix's element count (every index fits 32 bits),
                // then run with one invocation per (image, channel, position), each writing
                // its taps.
                let mut base = geom.params(op, &s, oh, ow, out_shape.iter().product())?;
                let total = s[0] * oh * ow * s[1];
                base[14] = total as u32;
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                if out.numel() > 0 {
                    let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    // Few channels, short kernel rows: a kernel of their own (see there).
                    let shape = (oh, ow);
                    if im2col_window(ctx, x, o, &s, &geom, shape, ld, division(&base))? {
                        return Ok(out);
                    }
                    let rows = out_shape[0] * out_shape[1];
                    // Patch rows per invocation of the vec4 kernel (see the shader): one
                    // where a row is whole vec4s (padded or not), else four (which always
                    // are).
                    let per_call = match ld % 4 {
                        0 if ld / 4 <= crate::gpu::LOOP_BUDGET => Some(1),
                        _ if rows % 4 == 0 && ck <= crate::gpu::LOOP_BUDGET => Some(4),
                        _ => None,
                    };
                    if let Some(per_call) = per_call {
                        // One row a call: rows cut into pieces where they are few (see the
                        // shader), for at least IM2COL_CALLS calls of at least 16 vec4s.
                        let n4 = ld / 4;
                        let pieces = match per_call {
                            1 => (IM2COL_CALLS / rows.max(1)).clamp(1, n4.div_ceil(16).max(1)),
                            _ => 1,
                        };
                        let piece = n4.div_ceil(pieces);
                        let pieces = n4.div_ceil(piece.max(1)).max(1);
                        let calls = rows / per_call * pieces;
                        let mut params = base.to_vec();
                        params[14] = calls as u32;
                        params.extend([0, geom.kh, 0, geom.kw, 0, ld, piece].map(|v| v as u32));
                        let mut constants = division(&base).to_vec();
                        constants.push(("PATCH_ROWS", per_call as f64));
                        // x through a texture where products read theirs through textures.
                        dispatch_reading_source(
                            ctx,
                            (&SHADER, &texture_kernel()),
                            "im2col_rows4",
                            &constants,
                            &params,
                            &[x, o],
                            ctx.grid(calls.div_ceil(64) as u64),
                        )?;
                        return Ok(out);
                    }
                    if ld != ck {
                        return Err(Error::Invalid {
                            op,
                            detail: format!(
                                "patch rows of {ck} values padded to {ld}: past one invocation's loop budget"
                            ),
                        });
                    }
                    let budget = crate::gpu::LOOP_BUDGET;
                    for [ki, kj] in col2im_blocks(geom.kh, geom.kw, budget) {
                        let mut params = base.to_vec();
                        params.extend([ki.0, ki.1, kj.0, kj.1, 0].map(|v| v as u32));
                        ctx.dispatch(
                            &SHADER,
                            "im2col_forward",
                            division(&base),
                            &params,
                            &[x, o],
                            grid_1d(ctx, total),
                        )?;
                    }
                }
                Ok(out)
            }
        }
    }

    /// Adds patches (N, OH·OW, C·KH·KW) back into an image batch of `image_shape`
    /// (N, C, H, W): the adjoint of [`Tensor::im2col`].
    pub fn col2im(&self, geom: Conv2d, image_shape: &[usize]) -> Result<Tensor> {
        let op = "col2im";
        self.expect_f32(op)?;
        let (oh, ow) = geom.output_size(op, image_shape)?;
        let s = image_shape.to_vec();
        let want = geom.patches_shape(op, &s)?;
        if self.shape() != want {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "patches {:?} do not fit image {image_shape:?} (expected {want:?})",
                    self.shape()
                ),
            });
        }
        match &self.device().inner {
            DeviceInner::Cpu => {
                let cols = self.host_f64();
                let out = col2im_reference(&cols, &s, &geom, oh, ow);
                Ok(Tensor::cpu_from_f64(self.device(), &s, out))
            }
            DeviceInner::Gpu(ctx) => {
                let base = geom.params(op, &s, oh, ow, s.iter().product())?;
                let out = gpu_output(ctx, self.device(), op, &s, DType::F32)?;
                let total = out.numel();
                if total > 0 {
                    let (Some(c), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    if let Some(invocations) = phase_invocations(&s, &geom) {
                        // By row phases: only the (tap, position) pairs that exist.
                        let mut params = base.to_vec();
                        params[14] = invocations as u32;
                        let mut divided = base;
                        divided[14] = base[14].max(invocations as u32);
                        params.extend([0, geom.kh, 0, geom.kw, 0].map(|v| v as u32));
                        let grid = ctx.grid(invocations.div_ceil(64) as u64);
                        let constants = division(&divided);
                        ctx.dispatch(&SHADER, "col2im_phase4", constants, &params, &[c, o], grid)?;
                        return Ok(out);
                    }
                    // Four outputs of a row per invocation when rows are whole vec4s (so a
                    // quarter of the loop budget per output), else one.
                    let (entry, budget, grid) = if s[3] % 4 == 0 {
                        let g = ctx.grid((total / 4).div_ceil(64) as u64);
                        ("col2im_forward4", crate::gpu::LOOP_BUDGET / 4, g)
                    } else {
                        (
                            "col2im_forward",
                            crate::gpu::LOOP_BUDGET,
                            grid_1d(ctx, total),
                        )
                    };
                    for (k, [ki, kj]) in col2im_blocks(geom.kh, geom.kw, budget).enumerate() {
                        let mut params = base.to_vec();
                        params.extend([ki.0, ki.1, kj.0, kj.1, (k > 0) as usize].map(|v| v as u32));
                        ctx.dispatch(&SHADER, entry, division(&base), &params, &[c, o], grid)?;
                    }
                }
                Ok(out)
            }
        }
    }

    /// 2-D convolution of x (N, C, H, W) with filters (F, C/groups, KH, KW), as
    /// W_flat · im2colᵀ (W · x for a 1×1 window, stride 1, no padding): gives (N, F, OH, OW).
    /// The window's `kh`/`kw` must match the filters.
    pub fn conv2d(&self, weight: &Tensor, geom: Conv2d) -> Result<Tensor> {
        let (n, f) = check_conv2d(self.shape(), weight.shape(), geom)?;
        let (oh, ow) = geom.output_size("conv2d", self.shape())?;
        let groups = geom.groups;
        if prefer_implicit(self.shape(), weight.shape(), &geom) {
            return self.conv2d_implicit(weight, geom);
        }
        if groups == 1 && geom.is_pointwise() {
            // (F, C) · (N, C, H·W) = (N, F, H·W): already NCHW, no patches, no copy.
            let c = self.shape()[1];
            return weight
                .reshape(&[f, c])?
                .matmul(&self.reshape(&[n, c, oh * ow])?)?
                .reshape(&[n, f, oh, ow]);
        }
        let ck = weight.numel() / f.max(1);
        if groups == 1 && pads_patch_rows(self.device(), f, ck)? {
            // Rows of whole vec4s on both sides (zeros past CK add nothing): no padded copy
            // of the patches inside the product.
            let w_flat = weight.reshape(&[f, ck])?.zero_pad_columns("conv2d")?;
            return w_flat
                .matmul_t(&self.im2col_vec4_rows(geom)?, false, true)?
                .reshape(&[n, f, oh, ow]);
        }
        let cols = self.im2col(geom.groups(1))?;
        if groups == 1 {
            let w_flat = weight.reshape(&[f, ck])?;
            // (F, CK) · (N, L, CK)ᵀ = (N, F, L): the product writes NCHW, no permute copy.
            return w_flat
                .matmul_t(&cols, false, true)?
                .reshape(&[n, f, oh, ow]);
        }
        let [l, cgk] = [oh * ow, weight.numel() / f.max(1)];
        // (G, Fg, CgK) · ((N, L, G, CgK) → (N, G, L, CgK))ᵀ = (N, G, Fg, L): already NCHW.
        let split = cols.reshape(&[n, l, groups, cgk])?.permute(&[0, 2, 1, 3])?;
        weight
            .reshape(&[groups, f / groups, cgk])?
            .matmul_t(&split, false, true)?
            .reshape(&[n, f, oh, ow])
    }
}

impl Tensor {
    /// The dense convolution `w_flat · im2col(x)ᵀ` of x (self, (N, C, H, W)) with filters
    /// flattened to (F, C·KH·KW), with a product epilogue: (N, F, OH·OW). What a compiled
    /// inference plan runs in place of an `im2col` node whose rows C·KH·KW are not a
    /// multiple of 4 and the product that alone reads it (`ProductOp::Patches`,
    /// src/epilogue.rs). Where the product would copy both operands into padded rows
    /// ([`pads_patch_rows`]), im2col writes padded rows and the small filter matrix is
    /// padded, as [`Tensor::conv2d`] does eagerly; otherwise im2col and the product run as
    /// the graph recorded them. ResNet-50's stem (12544 × 147 patches) on lavapipe, per
    /// dispatch, one alternated sitting: im2col + patch copy + product 7.96 + 2.98 + 8.49 ms
    /// recorded, 5.60 + 7.15 ms (and 0.13 ms for the filters) padded.
    pub(crate) fn conv2d_patches_epilogue(
        &self,
        w_flat: &Tensor,
        geom: Conv2d,
        epi: crate::ops::matmul::Epilogue<'_>,
    ) -> Result<Tensor> {
        let op = "conv2d";
        let (&[f, ck], Some(&c)) = (w_flat.shape(), self.shape().get(1)) else {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "filters flattened to (F, C·KH·KW) and x (N, C, H, W) expected, got {:?} and {:?}",
                    w_flat.shape(),
                    self.shape()
                ),
            });
        };
        let w = w_flat.reshape(&[f, c, geom.kh, geom.kw])?;
        check_conv2d(self.shape(), w.shape(), geom.groups(1))?;
        let auto = crate::MatmulVariant::Auto;
        if pads_patch_rows(self.device(), f, ck)? {
            let w_pad = w_flat.zero_pad_columns(op)?;
            let cols = self.im2col_vec4_rows(geom.groups(1))?;
            return w_pad.matmul_epilogue(&cols, (false, true), auto, epi);
        }
        w_flat.matmul_epilogue(&self.im2col(geom.groups(1))?, (false, true), auto, epi)
    }
}

/// `WGRAD_PATCHES=0` keeps compiled inference plans' im2col products as recorded, without
/// [`Tensor::conv2d_patches_epilogue`] (for measuring both).
pub const PATCHES_ENV: &str = "WGRAD_PATCHES";

/// Whether compiled inference plans take [`Tensor::conv2d_patches_epilogue`]
/// (`WGRAD_PATCHES` is not `0`).
pub(crate) fn patches_routes_on() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| std::env::var(PATCHES_ENV).is_ok_and(|v| v == "0"))
}

/// Whether [`Tensor::conv2d`]'s product (F, CK) · (N, L, CK)ᵀ on `device` would copy both
/// operands into rows padded to a multiple of 4: the subgroup kernels load aligned vec4s only,
/// and at most GEMV_ROWS filters take gemv (any alignment). The convolution then makes its
/// patch rows padded instead (im2col writes the zeros) and pads the small weight matrix.
/// ResNet-50's stem on lavapipe: the patch copy (12544 × 147 → 148) took 7-10 ms a run.
fn pads_patch_rows(device: &Device, f: usize, ck: usize) -> Result<bool> {
    use crate::MatmulVariant;
    if !matches!(device.inner, DeviceInner::Gpu(_)) || ck % 4 == 0 || f <= GEMV_ROWS {
        return Ok(false);
    }
    let variant = MatmulVariant::Auto.resolve(device)?;
    Ok(matches!(
        variant,
        MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures
    ) && ck.div_ceil(4) <= crate::gpu::LOOP_BUDGET)
}

/// Checks a transposed convolution: x (N, C, H, W), filters (C, F/groups, KH, KW) and an
/// output (OH, OW) that `geom` maps back to (H, W). Returns [N, C, H, W, F].
pub(crate) fn check_conv_transpose2d(
    x: &[usize],
    w: &[usize],
    geom: Conv2d,
    output: [usize; 2],
) -> Result<[usize; 5]> {
    let op = "conv_transpose2d";
    let (&[n, c, h, wd], &[wc, fg, kh, kw]) = (x, w) else {
        return Err(Error::Shape {
            op,
            detail: format!(
                "input must be (N, C, H, W) and filters (C, F/groups, KH, KW), got {x:?} and {w:?}"
            ),
        });
    };
    let g = geom.groups;
    if g == 0 || c % g != 0 || wc != c || (kh, kw) != (geom.kh, geom.kw) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "input {x:?} and filters {w:?} disagree (filters need (C, F/groups, {}, {}) with C = {c} divisible by groups {g})",
                geom.kh, geom.kw
            ),
        });
    }
    // With C = 0 (or N = 0) any groups, window and image size are allowed by the element
    // counts, so F = Fg·G, the patch width F·KH·KW and H·W are checked.
    let window = kh.checked_mul(kw);
    let f = fg.checked_mul(g);
    let fits = |f: usize| window.and_then(|k| f.max(1).checked_mul(k)).is_some();
    let Some(f) = f.filter(|&f| fits(f) && h.checked_mul(wd).is_some()) else {
        return Err(Error::Shape {
            op,
            detail: format!(
                "{fg} filters per group, {g} groups, a {kh}x{kw} window and a {h}x{wd} image overflow (input {x:?}, filters {w:?})"
            ),
        });
    };
    let back = geom.output_size(op, &[n, f, output[0], output[1]])?;
    if back != (h, wd) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "an output of {output:?} has {back:?} windows of {geom:?}, not the input's ({h}, {wd}) (input {x:?})"
            ),
        });
    }
    Ok([n, c, h, wd, f])
}

/// Checks x (N, C, H, W) against filters (F, C/groups, KH, KW) and the window; returns (N, F).
pub(crate) fn check_conv2d(x: &[usize], w: &[usize], geom: Conv2d) -> Result<(usize, usize)> {
    let op = "conv2d";
    let ([n, c, ..], [f, wc, kh, kw]) = (x, w) else {
        return Err(Error::Shape {
            op,
            detail: format!(
                "input must be (N, C, H, W) and filters (F, C, KH, KW), got {x:?} and {w:?}"
            ),
        });
    };
    let g = geom.groups;
    if g == 0 || c % g != 0 || f % g != 0 {
        return Err(Error::Shape {
            op,
            detail: format!(
                "groups {g} must divide the input channels {c} and the filters {f} (input {x:?}, filters {w:?})"
            ),
        });
    }
    if x.len() != 4 || c / g != *wc || (*kh, *kw) != (geom.kh, geom.kw) {
        return Err(Error::Shape {
            op,
            detail: format!(
                "input {x:?} and filters {w:?} disagree (channels {} vs {wc} with {g} group(s), window {}x{})",
                c / g,
                geom.kh,
                geom.kw
            ),
        });
    }
    geom.output_size(op, x)?;
    Ok((*n, *f))
}

/// Whether [`crate::graph::Var::conv2d`] takes the implicit kernel for x (N, C, H, W) and
/// filters (F, C/G, KH, KW) rather than im2col and a matmul.
/// `WGRAD_CONV=implicit` or `WGRAD_CONV=im2col` forces one path (for measuring both).
pub(crate) fn prefer_implicit(x: &[usize], w: &[usize], geom: &Conv2d) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| match std::env::var("WGRAD_CONV").as_deref() {
        Ok("implicit") => Some(true),
        Ok("im2col") => Some(false),
        _ => None,
    });
    if let Some(f) = *forced {
        return f;
    }
    // Measured on lavapipe (2 shared cores, load ~2, ms, `examples/conv_gemm.rs`):
    //   shape (x, filters)                     im2col+product   implicit
    //   32x3x32x32, 16 3x3 p1   fwd / fwd+bwd   35.3 / 62.5      7.6 / 43.0
    //   1x3x224x224, 64 7x7/2 (ResNet stem)     37.3             61.3
    //   1x64x56x56, 64 3x3                      42.3             54.6
    //   1x128x28x28 .. 1x512x7x7, 3x3           15-18            59-130
    //   8x64x112x112, 64 3x3 p1 fwd             refused (231 MB patches)  1482
    // So: the implicit kernel where the reduction C/G·KH·KW is short (the patch matrix is
    // then mostly overhead: few multiply-adds per patch value) and where the patch matrix
    // would pass 64 MiB (im2col cannot allocate it past the 128 MiB binding limit); the
    // subgroup matmul over im2col elsewhere (it runs ~4x more FLOP/s on long reductions).
    let [n, ..] = x else { return false };
    let k = w[1..].iter().product::<usize>();
    let Ok([_, l, ck]) = geom.groups(1).patches_shape("conv2d", x) else {
        return false;
    };
    let patch_bytes = n.saturating_mul(l).saturating_mul(ck).saturating_mul(4);
    // A dense 1×1 stride-1 convolution is a plain product with no patches: kept (ResNet's
    // 64-channel 1×1 layers would otherwise fall under the short-reduction rule).
    let pointwise = geom.groups == 1 && geom.is_pointwise();
    (k <= 64 && !pointwise) || patch_bytes > 64 << 20
}

#[cfg(test)]
mod tests {
    use super::{col2im_blocks, im2col_reference, Conv2d};
    use crate::gpu::LOOP_BUDGET;
    use crate::{Device, Tensor};

    /// Patch rows padded to whole vec4s hold the patch matrix's values, then zeros, on the
    /// GPU and on the CPU reference: taps 1..3 short of a vec4, a stride, dilation, padding.
    #[test]
    fn vec4_patch_rows_are_the_patches_then_zeros() {
        let cases = [
            ([1, 3, 11, 9], Conv2d::new(7, 7).stride(2).padding(3)),
            ([2, 1, 6, 7], Conv2d::new(3, 3).padding(1)),
            ([1, 5, 9, 6], Conv2d::new(3, 2).stride(2)),
            ([2, 3, 9, 11], Conv2d::new(3, 3).dilation(2).padding(1)),
            ([1, 3, 5, 6], Conv2d::new(1, 3).stride(2)),
            // x's rows whole vec4s: the generated window kernel (src/ops/im2col_window.rs),
            // the stem's window over two images, row dilation with a 5-tap row, 7 taps on
            // rows of 4 with padding past both sides.
            ([2, 3, 11, 12], Conv2d::new(7, 7).stride(2).padding(3)),
            (
                [1, 2, 7, 8],
                Conv2d::new(3, 5)
                    .dilations(2, 1)
                    .strides(1, 3)
                    .pads(2, 4, 1, 0),
            ),
            ([2, 2, 5, 4], Conv2d::new(1, 7).pads(0, 3, 0, 3)),
        ];
        let devices = [Some(Device::cpu()), Device::gpu().ok()];
        for (k, (xs, geom)) in cases.into_iter().enumerate() {
            let x = crate::Rng::new(k as u64).vec_uniform(xs.iter().product(), -1.0, 1.0);
            let (oh, ow) = geom.output_size("test", &xs).unwrap();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let patches = im2col_reference(&x64, &xs, &geom, oh, ow);
            let ck = xs[1] * geom.kh * geom.kw;
            let ld = ck.div_ceil(4) * 4;
            assert_ne!(ck, ld, "case {k} must need padding");
            let want: Vec<f32> = patches
                .chunks(ck)
                .flat_map(|row| {
                    let pad = std::iter::repeat_n(0.0, ld - ck);
                    row.iter().map(|&v| v as f32).chain(pad)
                })
                .collect();
            for dev in devices.iter().flatten() {
                let t = Tensor::from_slice(dev, &x, &xs).unwrap();
                let got = t.im2col_vec4_rows(geom).unwrap();
                assert_eq!(got.shape(), [xs[0], oh * ow, ld], "case {k}");
                // A copy of the input's values: exact.
                assert_eq!(
                    got.to_vec::<f32>().unwrap(),
                    want,
                    "case {k} on {}",
                    dev.name()
                );
            }
        }
    }

    /// The blocks tile the window exactly once, each within the loop budget.
    #[test]
    fn col2im_blocks_cover_the_window_within_the_budget() {
        for (kh, kw) in [
            (1, 1),
            (3, 3),
            (127, 127),
            (128, 128),
            (300, 2),
            (2, 40_000),
            (1, 9000),
        ] {
            let mut seen = vec![0u8; kh * kw];
            for [(r0, r1), (c0, c1)] in col2im_blocks(kh, kw, LOOP_BUDGET) {
                assert!(
                    (r1 - r0) * (1 + c1 - c0) <= LOOP_BUDGET,
                    "{kh}x{kw}: {r0}..{r1} {c0}..{c1}"
                );
                for r in r0..r1 {
                    for c in c0..c1 {
                        seen[r * kw + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{kh}x{kw}");
        }
        assert_eq!(col2im_blocks(127, 127, LOOP_BUDGET).count(), 1);
    }
}
