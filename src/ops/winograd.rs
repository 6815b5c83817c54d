//! 3×3 stride-1 convolution by Winograd's minimal filtering: F(2×2, 3×3), 16 products of
//! (F, C)·(C, T) over the 2×2 output tiles T (2.25x fewer multiply-adds than the direct
//! (im2col) product), or F(4×4, 3×3), 36 products over the 4×4 tiles (4x fewer). Used for
//! inference only: a compiled graph's fusion plan (src/epilogue.rs) swaps it in for
//! `im2col` + product where nothing else reads the patch matrix (a training graph's weight
//! gradient reads it, so training keeps im2col).
//!
//! Shape rule: as [`Tensor::conv2d`] for x (N, C, H, W) and filters (F, C, 3, 3) with stride
//! 1, dilation 1, one group, any padding ([`geometry_fits`]). CPU reference: the same three
//! transforms and products in f64 from the transform matrices ([`winograd_reference`]); tests
//! check it and the GPU against the direct convolution. GPU: `shaders/winograd.wgsl` for the
//! transforms, the batched matmul (autotuned, split-K) for the products. No gradient: the
//! fused op exists only in compiled inference plans, after differentiation.
//!
//! When it pays, measured on lavapipe (2 cores), per dispatch, product alone, ResNet-50's
//! 3×3 layers at batch 1 (direct (F, 9C)·(9C, L) against 16 × (F, C)·(C, T4)):
//! 64 ch 56×56 6.3 → 4.4 ms, 128 ch 28×28 6.5 → 4.5 ms, 256 ch 14×14 7.4 → 3.8 ms, but
//! 512 ch 7×7 (T = 16 tiles: a quarter of a 64-column tile) 7.5 → 8.0-14.2 ms. Since the
//! subgroup kernels run a last column tile of 1 to 16 columns on 16-column edge tiles
//! (shaders/matmul.wgsl), 16 tiles cost 16 columns, not 64: 16 × (512, 512)·(512, 16) took
//! 2.7 ms against the direct (512, 4608)·(4608, 49)'s 4.3 ms (AMD EPYC host). So the plan
//! takes the tile whose products compute the fewest columns ([`choose_tile`], counted by
//! `matmul::subgroup_columns`), and takes it where those are at most 3/4 of the direct
//! product's ([`prefer_winograd`]): ResNet-50 at batch 1, F(4×4) at 56×56, 28×28 and 14×14,
//! F(2×2) at 7×7.

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::ops::conv::Conv2d;
use crate::ops::matmul::Epilogue;
use crate::ops::texture_reads::{self, texture_module, Read};
use crate::ops::{exact_div_constants, gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "winograd",
    source: concat!(
        include_str!("../../shaders/winograd.wgsl"),
        include_str!("../../shaders/exact_div.wgsl")
    ),
};

/// winograd.wgsl with winograd_input and winograd_output reading their source (x, M) through
/// a texture (src/ops/texture_reads.rs).
pub(crate) fn texture_kernel() -> Kernel {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Kernel {
        name: "winograd.texture",
        source: SOURCE.get_or_init(|| {
            texture_module(SHADER.source, &[Read::ScalarAndVec4("src_at", "src4_at")])
        }),
    }
}

/// Bytes of any one transformed operand past which the plan keeps im2col (under the default
/// 128 MiB binding limit, as `conv::prefer_implicit`'s patch rule).
const MAX_OPERAND_BYTES: usize = 64 << 20;

/// The epilogue steps the output transforms apply (winograd.wgsl's EPI_*: ReLU, scale,
/// shift, residual).
const OUTPUT_EPILOGUE: u32 = 8 | 64 | 128 | 256;

/// `WGRAD_WINOGRAD=0` keeps every convolution on im2col (for measuring both).
pub const WINOGRAD_ENV: &str = "WGRAD_WINOGRAD";

/// The sizes of one Winograd convolution.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    oh: usize,
    ow: usize,
    /// Tiles per output column and row.
    th: usize,
    tw: usize,
    /// C and T = N·TH·TW rounded up to 4: the rows of the products' operands.
    c4: usize,
    t4: usize,
    tile: WinogradTile,
}

impl Dims {
    fn tiles(&self) -> usize {
        self.n * self.th * self.tw
    }

    /// Tile t's image and its (ty, tx) in that image (as winograd.wgsl's `tile_at`).
    fn tile_at(&self, t: usize) -> (usize, usize, usize) {
        let per_image = self.th * self.tw;
        (t / per_image, t % per_image / self.tw, t % self.tw)
    }

    /// The largest plane of a transformed operand, in elements: U (P, F, C4), V (P, C4, T4)
    /// or M (P, F, T4), P being the tile's planes.
    fn plane_elems(&self) -> usize {
        (self.f * self.c4)
            .max(self.c4 * self.t4)
            .max(self.f * self.t4)
    }

    /// The largest transformed operand, in bytes.
    fn operand_bytes(&self) -> usize {
        self.tile.planes() * 4 * self.plane_elems()
    }

    /// The kernels' pipeline constants: their dividends (invocation indices, tiles) below
    /// 2^24 divide in f32 (exact_div.wgsl).
    fn div_constants(&self) -> &'static [(&'static str, f64)] {
        exact_div_constants(self.plane_elems() < 1 << 24)
    }
}

/// Which Winograd algorithm: the output tile each transformed tile gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinogradTile {
    /// F(2×2, 3×3): 4×4 transformed tiles, 16 products, 2.25x fewer multiply-adds than the
    /// direct convolution.
    F2x2,
    /// F(4×4, 3×3): 6×6 transformed tiles, 36 products over a quarter of the tiles, 4x fewer.
    /// Its transforms' larger constants cost some f32 accuracy (tests/winograd bounds it).
    F4x4,
}

impl WinogradTile {
    /// Output pixels per tile side (m of F(m×m, 3×3)).
    fn m(self) -> usize {
        match self {
            WinogradTile::F2x2 => 2,
            WinogradTile::F4x4 => 4,
        }
    }

    /// Transformed values per tile, (m + 2)²: the number of products.
    fn planes(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }

    /// The shader's filter, input and output entries.
    fn entries(self) -> [&'static str; 3] {
        match self {
            WinogradTile::F2x2 => ["winograd_filter", "winograd_input", "winograd_output"],
            WinogradTile::F4x4 => ["winograd4_filter", "winograd4_input", "winograd4_output"],
        }
    }

    /// Bᵀ (α×α), G (α×3) and Aᵀ (m×α), α = m + 2, as winograd.wgsl lists them.
    fn matrices(self) -> [Vec<Vec<f64>>; 3] {
        let rows = |r: &[&[f64]]| r.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
        match self {
            WinogradTile::F2x2 => [
                rows(&[
                    &[1., 0., -1., 0.],
                    &[0., 1., 1., 0.],
                    &[0., -1., 1., 0.],
                    &[0., 1., 0., -1.],
                ]),
                rows(&[
                    &[1., 0., 0.],
                    &[0.5, 0.5, 0.5],
                    &[0.5, -0.5, 0.5],
                    &[0., 0., 1.],
                ]),
                rows(&[&[1., 1., 1., 0.], &[0., 1., -1., -1.]]),
            ],
            WinogradTile::F4x4 => [
                rows(&[
                    &[4., 0., -5., 0., 1., 0.],
                    &[0., -4., -4., 1., 1., 0.],
                    &[0., 4., -4., -1., 1., 0.],
                    &[0., -2., -1., 2., 1., 0.],
                    &[0., 2., -1., -2., 1., 0.],
                    &[0., 4., 0., -5., 0., 1.],
                ]),
                rows(&[
                    &[0.25, 0., 0.],
                    &[-1. / 6., -1. / 6., -1. / 6.],
                    &[-1. / 6., 1. / 6., -1. / 6.],
                    &[1. / 24., 1. / 12., 1. / 6.],
                    &[1. / 24., -1. / 12., 1. / 6.],
                    &[0., 0., 1.],
                ]),
                rows(&[
                    &[1., 1., 1., 1., 1., 0.],
                    &[0., 1., -1., 2., -2., 0.],
                    &[0., 1., 1., 4., 4., 0.],
                    &[0., 1., -1., 8., -8., 1.],
                ]),
            ],
        }
    }
}

/// The columns the products of `tile` compute (planes × T4's columns,
/// `matmul::subgroup_columns`), per filter and channel: their multiply-adds, up to F·C.
fn product_columns(x: &[usize], w: &[usize], geom: &Conv2d, tile: WinogradTile) -> usize {
    dims("conv2d_winograd", x, w, geom, tile).map_or(usize::MAX, |d| {
        tile.planes() * crate::ops::matmul::subgroup_columns(d.f, d.t4)
    })
}

/// The tile whose products compute fewer columns ([`product_columns`]). ResNet-50 at batch 1:
/// F(4×4) at 56×56 (36 × 256 against 16 × 832: 64 filters take no edge tiles), 28×28
/// (36 × 64 against 16 × 256) and 14×14 (36 × 16 against 16 × 64), F(2×2) at 7×7 (16 × 16
/// against 36 × 16). `WGRAD_WINOGRAD=2` keeps F(2×2) everywhere.
fn choose_tile(x: &[usize], w: &[usize], geom: &Conv2d) -> WinogradTile {
    static ONLY_2X2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ONLY_2X2.get_or_init(|| std::env::var(WINOGRAD_ENV).is_ok_and(|v| v == "2")) {
        return WinogradTile::F2x2;
    }
    let cost = |tile| product_columns(x, w, geom, tile);
    if cost(WinogradTile::F4x4) < cost(WinogradTile::F2x2) {
        WinogradTile::F4x4
    } else {
        WinogradTile::F2x2
    }
}

/// Whether the geometry is one F(2×2, 3×3) and F(4×4, 3×3) compute: a 3×3 window, stride 1, dilation 1,
/// one group.
pub fn geometry_fits(geom: &Conv2d) -> bool {
    geom.kh == 3
        && geom.kw == 3
        && geom.strides == [1, 1]
        && geom.dilations == [1, 1]
        && geom.groups == 1
}

fn dims(
    op: &'static str,
    x: &[usize],
    w: &[usize],
    geom: &Conv2d,
    tile: WinogradTile,
) -> Result<Dims> {
    if !geometry_fits(geom) {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "Winograd convolution takes a 3x3 window with stride 1, dilation 1 and one group, got {geom:?} (x {x:?}, filters {w:?})"
            ),
        });
    }
    let (n, f) = crate::ops::conv::check_conv2d(x, w, *geom)?;
    let (oh, ow) = geom.output_size(op, x)?;
    let (th, tw) = (oh.div_ceil(tile.m()), ow.div_ceil(tile.m()));
    let d = Dims {
        n,
        c: x[1],
        h: x[2],
        w: x[3],
        f,
        oh,
        ow,
        th,
        tw,
        c4: x[1].next_multiple_of(4),
        t4: (n * th * tw).next_multiple_of(4),
        tile,
    };
    Ok(d)
}

/// Whether a compiled plan computes this convolution by Winograd: the geometry fits, the
/// products of the tile [`choose_tile`] takes compute at most 3/4 of the columns of the
/// direct product's 9 taps (the transforms are two dispatches against im2col's one; at
/// batch 1 8×8, 16 × 64 against 9 × 64, the direct product wins), every transformed operand
/// stays under 64 MiB, and `WGRAD_WINOGRAD` is not `0`.
pub(crate) fn prefer_winograd(x: &[usize], w: &[usize], geom: &Conv2d) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var(WINOGRAD_ENV).is_ok_and(|v| v == "0")) {
        return false;
    }
    let op = "conv2d_winograd";
    let tile = choose_tile(x, w, geom);
    let Ok(d) = dims(op, x, w, geom, tile) else {
        return false;
    };
    let direct = 9 * crate::ops::matmul::subgroup_columns(d.f, d.n * d.oh * d.ow);
    4 * product_columns(x, w, geom, tile) <= 3 * direct && d.operand_bytes() <= MAX_OPERAND_BYTES
}

/// L·X·Lᵀ for L (r×k) and X (k×k), row-major: (r×r).
fn sandwich(l: &[Vec<f64>], x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let lx: Vec<Vec<f64>> = l
        .iter()
        .map(|row| {
            (0..x[0].len())
                .map(|j| row.iter().zip(x).map(|(a, xr)| a * xr[j]).sum())
                .collect()
        })
        .collect();
    lx.iter()
        .map(|row| {
            l.iter()
                .map(|lr| row.iter().zip(lr).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

/// CPU reference in f64: the filter transform G g Gᵀ, the input transform Bᵀ d B, the
/// products per position ξ and the output transform Aᵀ M A, from the tile's matrices
/// (without the GPU's padding to C4 and T4). y (N, F, OH, OW).
fn winograd_reference(x: &[f64], w: &[f64], d: &Dims, pads: [usize; 4]) -> Vec<f64> {
    let [bt, g, at] = d.tile.matrices();
    let (m, alpha) = (d.tile.m(), d.tile.m() + 2);
    let (c, t) = (d.c, d.tiles());
    // u[f·C + c] = G g Gᵀ (α×α)
    let u: Vec<Vec<Vec<f64>>> = (0..d.f * c)
        .map(|fc| {
            let gm: Vec<Vec<f64>> = (0..3).map(|r| w[9 * fc + 3 * r..][..3].to_vec()).collect();
            sandwich(&g, &gm)
        })
        .collect();
    // v[c·T + t] = Bᵀ d B (α×α), d the tile's α×α input patch (zero outside the image)
    let v: Vec<Vec<Vec<f64>>> = (0..c * t)
        .map(|ct| {
            let (ch, tile) = (ct / t, ct % t);
            let (n, ty, tx) = d.tile_at(tile);
            let patch: Vec<Vec<f64>> = (0..alpha)
                .map(|r| {
                    (0..alpha)
                        .map(|k| {
                            let iy = (m * ty + r) as isize - pads[0] as isize;
                            let ix = (m * tx + k) as isize - pads[1] as isize;
                            if iy < 0 || ix < 0 || iy as usize >= d.h || ix as usize >= d.w {
                                0.0
                            } else {
                                x[((n * c + ch) * d.h + iy as usize) * d.w + ix as usize]
                            }
                        })
                        .collect()
                })
                .collect();
            sandwich(&bt, &patch)
        })
        .collect();
    let mut y = vec![0.0; d.n * d.f * d.oh * d.ow];
    for f in 0..d.f {
        for tile in 0..t {
            // M[ξ] = Σ_c U[ξ][f][c]·V[ξ][c][t], then Aᵀ M A.
            let mm: Vec<Vec<f64>> = (0..alpha)
                .map(|r| {
                    (0..alpha)
                        .map(|k| {
                            (0..c)
                                .map(|ch| u[f * c + ch][r][k] * v[ch * t + tile][r][k])
                                .sum()
                        })
                        .collect()
                })
                .collect();
            let out = sandwich(&at, &mm);
            let (n, ty, tx) = d.tile_at(tile);
            for (dy, row) in out.iter().enumerate() {
                for (dx, val) in row.iter().enumerate() {
                    let (oy, ox) = (m * ty + dy, m * tx + dx);
                    if oy < d.oh && ox < d.ow {
                        y[((n * d.f + f) * d.oh + oy) * d.ow + ox] = *val;
                    }
                }
            }
        }
    }
    y
}

/// The shader's params (its `Params` struct, 16 words) for `total` invocations.
fn params(d: &Dims, pads: [usize; 4], total: usize, flags: u32) -> [u32; 16] {
    let w = |v: usize| v as u32;
    [
        w(d.n),
        w(d.c),
        w(d.h),
        w(d.w),
        w(d.f),
        w(d.oh),
        w(d.ow),
        w(pads[0]),
        w(pads[1]),
        w(d.th),
        w(d.tw),
        w(d.c4),
        w(d.t4),
        w(total),
        flags,
        w(d.tiles()),
    ]
}

/// Dispatches `entry` over `total` invocations, binding `tensors` in order from binding 1
/// (each entry binds what it reads: the pipeline layouts come from the entries). With
/// `source_texture`, `tensors[0]` (winograd_input's x, winograd_output's M) is read through an
/// operand texture where products read theirs through textures (src/ops/texture_reads.rs).
/// On lavapipe, AVX2 host, ResNet-50 inference, sum of per-dispatch minima of 3 alternated
/// profile runs: winograd_input 23.0 -> 15.7 ms, winograd_output 22.9 -> 15.5 ms. Four tiles
/// per invocation (vec4 stores of V, vec4 loads of M), AVX-512 host, minima of 5 alternated
/// runs: winograd_input 11.0 -> 9.8 ms, winograd_output 9.9 -> 6.7 ms.
fn dispatch(
    ctx: &GpuContext,
    entry: &str,
    constants: &[(&str, f64)],
    params: &[u32],
    (tensors, source_texture): (&[&Tensor], bool),
    total: usize,
) -> Result<()> {
    let args: Vec<_> = tensors
        .iter()
        .map(|t| t.gpu_arg().expect("GPU device holds GPU tensors"))
        .collect();
    let grid = grid_1d(ctx, total);
    if !source_texture {
        return ctx.dispatch(&SHADER, entry, constants, params, &args, grid);
    }
    let kernels = (&SHADER, &texture_kernel());
    texture_reads::dispatch_reading_source(ctx, kernels, entry, constants, params, &args, grid)
}

impl Tensor {
    /// 2-D convolution of x (N, C, H, W) with 3×3 filters (F, C, 3, 3), stride 1, by
    /// Winograd minimal filtering, F(2×2, 3×3) or F(4×4, 3×3), whichever compiled plans take
    /// for these shapes: (N, F, OH, OW), the same result as [`Tensor::conv2d`] within f32
    /// rounding. Not differentiable (graphs record [`crate::Var::conv2d`]; compiled inference
    /// plans take this where it pays).
    pub fn conv2d_winograd(&self, weight: &Tensor, geom: Conv2d) -> Result<Tensor> {
        self.conv2d_winograd_epilogue(weight, None, geom, Epilogue::default())
    }

    /// [`Tensor::conv2d_winograd`] by the given algorithm.
    pub fn conv2d_winograd_with(
        &self,
        weight: &Tensor,
        geom: Conv2d,
        tile: WinogradTile,
    ) -> Result<Tensor> {
        self.winograd_run(weight, (None, tile), geom, Epilogue::default())
    }

    /// The transformed filters `U = G·g·Gᵀ` of `weight` (F, C, 3, 3) as
    /// [`Tensor::conv2d_winograd_epilogue`] computes them for images of shape `x`: (P, F, C4),
    /// P being the chosen tile's planes (16 or 36) and C4 C rounded up to 4 (zero channels).
    /// They depend on the weights alone, so a compiled inference plan computes them once (and
    /// again when `set_param` changes them).
    pub(crate) fn winograd_filters(&self, x: &[usize], geom: Conv2d) -> Result<Tensor> {
        self.winograd_filters_with(x, geom, choose_tile(x, self.shape(), &geom))
    }

    fn winograd_filters_with(
        &self,
        x: &[usize],
        geom: Conv2d,
        tile: WinogradTile,
    ) -> Result<Tensor> {
        let op = "conv2d_winograd";
        self.expect_f32(op)?;
        let d = dims(op, x, self.shape(), &geom, tile)?;
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            return Err(Error::Invalid {
                op,
                detail:
                    "transformed filters are a GPU plan's (the CPU reference convolves directly)"
                        .into(),
            });
        };
        let u = gpu_output(
            ctx,
            self.device(),
            op,
            &[tile.planes(), d.f, d.c4],
            DType::F32,
        )?;
        if u.numel() > 0 {
            let p = params(&d, geom.pads, d.f * d.c4, 0);
            dispatch(
                ctx,
                tile.entries()[0],
                d.div_constants(),
                &p,
                (&[self, &u], false),
                d.f * d.c4,
            )?;
        }
        Ok(u)
    }

    /// [`Tensor::conv2d_winograd`] with `relu?(y·scale[f] + shift[f] + residual)` applied as
    /// the output transform stores y. A column bias or a mask is an error. `filters`, when
    /// given, are `weight`'s transformed filters ([`Tensor::winograd_filters`]), used in place
    /// of transforming them again (the GPU's; the CPU reference convolves `weight`).
    pub(crate) fn conv2d_winograd_epilogue(
        &self,
        weight: &Tensor,
        filters: Option<&Tensor>,
        geom: Conv2d,
        epi: Epilogue<'_>,
    ) -> Result<Tensor> {
        let tile = choose_tile(self.shape(), weight.shape(), &geom);
        self.winograd_run(weight, (filters, tile), geom, epi)
    }

    /// [`Tensor::conv2d_winograd_epilogue`] by the given algorithm (`filters` must be its).
    fn winograd_run(
        &self,
        weight: &Tensor,
        (filters, tile): (Option<&Tensor>, WinogradTile),
        geom: Conv2d,
        epi: Epilogue<'_>,
    ) -> Result<Tensor> {
        let op = "conv2d_winograd";
        self.expect_f32(op)?;
        weight.expect_f32(op)?;
        self.expect_same_device(op, weight)?;
        let d = dims(op, self.shape(), weight.shape(), &geom, tile)?;
        if epi.bias.is_some() || epi.mask.is_some() || epi.group > 0 {
            return Err(Error::Invalid {
                op,
                detail: "a Winograd convolution's epilogue takes a per-channel scale and shift, a residual and a ReLU only".into(),
            });
        }
        let out_shape = [d.n, d.f, d.oh, d.ow];
        for (part, t, numel) in [
            ("scale", epi.scale, d.f),
            ("shift", epi.shift, d.f),
            ("residual", epi.residual, out_shape.iter().product()),
        ] {
            if let Some(t) = t {
                if t.numel() != numel || t.dtype() != DType::F32 {
                    return Err(Error::Shape {
                        op,
                        detail: format!(
                            "epilogue {part} of shape {:?} ({:?}) for output {out_shape:?}: it needs {numel} f32 values",
                            t.shape(),
                            t.dtype()
                        ),
                    });
                }
                self.expect_same_device(op, t)?;
            }
        }
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            // The CPU reference, then the epilogue's ops one by one.
            let y = winograd_reference(&self.host_f64(), &weight.host_f64(), &d, geom.pads);
            let y = Tensor::cpu_from_f64(self.device(), &out_shape, y);
            return epi.apply_rows(y, (d.f, d.oh * d.ow));
        };
        let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
        if out.numel() == 0 {
            return Ok(out);
        }
        let constants = d.div_constants();
        // The transforms read their source (x, M) through a texture where products do.
        let run = |entry: &str, tensors: &[&Tensor], total: usize, more: &[(&str, f64)]| {
            let p = params(&d, geom.pads, total, epi.flags());
            let constants: Vec<_> = constants.iter().chain(more).copied().collect();
            dispatch(ctx, entry, &constants, &p, (tensors, true), total)
        };
        let planes = tile.planes();
        let u = match filters {
            Some(u) if u.shape() == [planes, d.f, d.c4] && u.dtype() == DType::F32 => {
                self.expect_same_device(op, u)?;
                u.clone()
            }
            Some(u) => {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "transformed filters of shape {:?} ({:?}) for weight {:?}: they need [{planes}, {}, {}] f32",
                        u.shape(),
                        u.dtype(),
                        weight.shape(),
                        d.f,
                        d.c4
                    ),
                })
            }
            None => weight.winograd_filters_with(self.shape(), geom, tile)?,
        };
        let [_, input, output] = tile.entries();
        let v = gpu_output(ctx, self.device(), op, &[planes, d.c4, d.t4], DType::F32)?;
        // Four tiles per invocation (T4 is a multiple of 4); F(4×4) reads patch rows as
        // vec4s where x's rows are whole vec4s and the left padding is 1.
        let input = match tile {
            WinogradTile::F4x4 if d.w % 4 == 0 && geom.pads[1] == 1 => "winograd4_input_w4",
            _ => input,
        };
        run(input, &[self, &v], d.c4 * d.t4 / 4, &[])?;
        let m = u.matmul(&v)?;
        drop((u, v));
        // Parts not applied bind the source (read-only, never the destination).
        let bound = [
            &m,
            &out,
            epi.scale.unwrap_or(&m),
            epi.shift.unwrap_or(&m),
            epi.residual.unwrap_or(&m),
        ];
        // F(4×4) stores whole output rows as vec4s where they are (4 | OW).
        let output = match tile {
            WinogradTile::F4x4 if d.ow % 4 == 0 => "winograd4_output_v4",
            _ => output,
        };
        // Only the epilogue steps it applies are compiled (EPI: see the shader).
        let steps = [("EPI", (epi.flags() & OUTPUT_EPILOGUE) as f64)];
        run(output, &bound, d.f * d.t4 / 4, &steps)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_put_the_flags_and_tiles_in_their_words() {
        let d = dims(
            "t",
            &[2, 5, 7, 6],
            &[3, 5, 3, 3],
            &Conv2d::new(3, 3).padding(1),
            WinogradTile::F2x2,
        )
        .unwrap();
        let p = params(&d, [1, 1, 1, 1], 99, 8 | 64);
        assert_eq!(p[..4], [2, 5, 7, 6]);
        assert_eq!(p[9..13], [4, 3, 8, 24]); // th, tw, c4, t4
        assert_eq!((p[13], p[14], p[15]), (99, 72, 24));
    }

    #[test]
    fn only_3x3_stride_1_single_group_geometries_fit() {
        let g = Conv2d::new(3, 3).padding(1);
        assert!(geometry_fits(&g));
        assert!(!geometry_fits(&g.stride(2)));
        assert!(!geometry_fits(&g.dilation(2)));
        assert!(!geometry_fits(&g.groups(2)));
        assert!(!geometry_fits(&Conv2d::new(5, 5)));
        // 7x7 at batch 1: 16 F(2x2) tiles, 16 columns on edge tiles with 512 filters, not
        // with 64 (16 x 64 against the direct 9 x 64); 8x8 with 64 filters likewise.
        assert!(prefer_winograd(&[1, 512, 7, 7], &[512, 512, 3, 3], &g));
        assert!(!prefer_winograd(&[1, 64, 7, 7], &[64, 64, 3, 3], &g));
        assert!(!prefer_winograd(&[1, 64, 8, 8], &[64, 64, 3, 3], &g));
        assert!(prefer_winograd(&[1, 256, 14, 14], &[256, 256, 3, 3], &g));
    }

    #[test]
    fn f4x4_is_chosen_where_its_products_fill_fewer_tiles() {
        let g = Conv2d::new(3, 3).padding(1);
        let tile = |c: usize, hw: usize| choose_tile(&[1, c, hw, hw], &[c, c, 3, 3], &g);
        assert_eq!(tile(64, 56), WinogradTile::F4x4); // 36 x 256 against 16 x 832
        assert_eq!(tile(128, 28), WinogradTile::F4x4); // 36 x 64 against 16 x 256
        assert_eq!(tile(256, 14), WinogradTile::F4x4); // 36 x 16 against 16 x 64
        assert_eq!(tile(64, 14), WinogradTile::F2x2); // 36 x 64 against 16 x 64
        assert_eq!(tile(512, 7), WinogradTile::F2x2); // 36 x 16 against 16 x 16
    }

    #[test]
    fn transform_matrices_reproduce_the_direct_correlation() {
        // Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A of one tile against the 3×3 correlation of d with g.
        for tile in [WinogradTile::F2x2, WinogradTile::F4x4] {
            let (m, alpha) = (tile.m(), tile.m() + 2);
            let [bt, g, at] = tile.matrices();
            let d: Vec<Vec<f64>> = (0..alpha)
                .map(|r| {
                    (0..alpha)
                        .map(|k| ((7 * r + 3 * k) % 11) as f64 - 5.0)
                        .collect()
                })
                .collect();
            let w: Vec<Vec<f64>> = (0..3)
                .map(|r| (0..3).map(|k| ((5 * r + 2 * k) % 7) as f64 - 3.0).collect())
                .collect();
            let (u, v) = (sandwich(&g, &w), sandwich(&bt, &d));
            let prod: Vec<Vec<f64>> = (0..alpha)
                .map(|r| (0..alpha).map(|k| u[r][k] * v[r][k]).collect())
                .collect();
            let y = sandwich(&at, &prod);
            for (i, row) in y.iter().enumerate().take(m) {
                for (j, got) in row.iter().enumerate() {
                    let want: f64 = (0..3)
                        .flat_map(|a| (0..3).map(move |b| (a, b)))
                        .map(|(a, b)| d[i + a][j + b] * w[a][b])
                        .sum();
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{tile:?} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
