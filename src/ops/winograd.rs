//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3): 16 products of
//! (F, C)·(C, T) over the 2×2 output tiles T, 2.25x fewer multiply-adds than the direct
//! (im2col) product. Used for inference only: a compiled graph's fusion plan
//! (src/epilogue.rs) swaps it in for `im2col` + product where nothing else reads the patch
//! matrix (a training graph's weight gradient reads it, so training keeps im2col).
//!
//! Shape rule: as [`Tensor::conv2d`] for x (N, C, H, W) and filters (F, C, 3, 3) with stride
//! 1, dilation 1, one group, any padding ([`geometry_fits`]). CPU reference: the same three
//! transforms and 16 products in f64 ([`winograd_reference`]); tests check it and the GPU
//! against the direct convolution. GPU: `shaders/winograd.wgsl` for the transforms, the
//! batched matmul (autotuned, split-K) for the products. No gradient: the fused op exists only
//! in compiled inference plans, after differentiation.
//!
//! When it pays, measured on lavapipe (2 cores), per dispatch, product alone, ResNet-50's
//! 3×3 layers at batch 1 (direct (F, 9C)·(9C, L) against 16 × (F, C)·(C, T4)):
//! 64 ch 56×56 6.3 → 4.4 ms, 128 ch 28×28 6.5 → 4.5 ms, 256 ch 14×14 7.4 → 3.8 ms, but
//! 512 ch 7×7 (T = 16 tiles: a quarter of a 64-column tile) 7.5 → 8.0-14.2 ms. So it is taken
//! from [`MIN_TILES`] tiles up.

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

/// Output tiles (N·TH·TW) from which the fusion plan takes Winograd: at 16 (ResNet-50's
/// 7×7 stage) the products fill a quarter of each 64-column tile and lose to the direct one.
pub(crate) const MIN_TILES: usize = 32;

/// Bytes of any one transformed operand past which the plan keeps im2col (under the default
/// 128 MiB binding limit, as `conv_gemm::prefer_implicit`'s patch rule).
const MAX_OPERAND_BYTES: usize = 64 << 20;

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

    /// The largest plane of a transformed operand, in elements: U (16, F, C4), V (16, C4, T4)
    /// or M (16, F, T4).
    fn plane_elems(&self) -> usize {
        (self.f * self.c4)
            .max(self.c4 * self.t4)
            .max(self.f * self.t4)
    }

    /// The largest transformed operand, in bytes.
    fn operand_bytes(&self) -> usize {
        16 * 4 * self.plane_elems()
    }

    /// The kernels' pipeline constants: their dividends (invocation indices, tiles) below
    /// 2^24 divide in f32 (exact_div.wgsl).
    fn div_constants(&self) -> &'static [(&'static str, f64)] {
        exact_div_constants(self.plane_elems() < 1 << 24)
    }
}

/// Whether the geometry is one F(2×2, 3×3) computes: a 3×3 window, stride 1, dilation 1,
/// one group.
pub fn geometry_fits(geom: &Conv2d) -> bool {
    geom.kh == 3
        && geom.kw == 3
        && geom.strides == [1, 1]
        && geom.dilations == [1, 1]
        && geom.groups == 1
}

fn dims(op: &'static str, x: &[usize], w: &[usize], geom: &Conv2d) -> Result<Dims> {
    if !geometry_fits(geom) {
        return Err(Error::Invalid {
            op,
            detail: format!(
                "Winograd F(2x2, 3x3) takes a 3x3 window with stride 1, dilation 1 and one group, got {geom:?} (x {x:?}, filters {w:?})"
            ),
        });
    }
    let (n, f) = crate::ops::conv::check_conv2d(x, w, *geom)?;
    let (oh, ow) = geom.output_size(op, x)?;
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
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
    };
    Ok(d)
}

/// Whether a compiled plan computes this convolution by Winograd: the geometry fits, there
/// are at least [`MIN_TILES`] output tiles, every transformed operand stays under 64 MiB,
/// and `WGRAD_WINOGRAD` is not `0`.
pub(crate) fn prefer_winograd(x: &[usize], w: &[usize], geom: &Conv2d) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var(WINOGRAD_ENV).is_ok_and(|v| v == "0")) {
        return false;
    }
    let Ok(d) = dims("conv2d_winograd", x, w, geom) else {
        return false;
    };
    d.tiles() >= MIN_TILES && d.operand_bytes() <= MAX_OPERAND_BYTES
}

/// Gᵀ-side transform of one 3-vector: v·Gᵀ.
fn times_gt(v: [f64; 3]) -> [f64; 4] {
    [
        v[0],
        0.5 * (v[0] + v[1] + v[2]),
        0.5 * (v[0] - v[1] + v[2]),
        v[2],
    ]
}

/// v·B for a 4-vector.
fn times_b(v: [f64; 4]) -> [f64; 4] {
    [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]
}

/// v·A for a 4-vector.
fn times_a(v: [f64; 4]) -> [f64; 2] {
    [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]
}

fn add<const K: usize>(a: [f64; K], b: [f64; K], s: f64) -> [f64; K] {
    std::array::from_fn(|i| a[i] + s * b[i])
}

/// CPU reference in f64: the filter and input transforms, the 16 products and the output
/// transform, as the GPU runs them (without the padding to C4 and T4). y (N, F, OH, OW).
fn winograd_reference(x: &[f64], w: &[f64], d: &Dims, pads: [usize; 4]) -> Vec<f64> {
    let (c, t) = (d.c, d.tiles());
    // U[ξ][f][c] = (G g Gᵀ)[ξ]
    let mut u = vec![0.0; 16 * d.f * c];
    for f in 0..d.f {
        for ch in 0..c {
            let o = (f * c + ch) * 9;
            let g: [[f64; 3]; 3] =
                std::array::from_fn(|r| std::array::from_fn(|k| w[o + 3 * r + k]));
            let rows = [
                g[0],
                add(add(g[0], g[1], 1.0), g[2], 1.0).map(|v| 0.5 * v),
                add(add(g[0], g[1], -1.0), g[2], 1.0).map(|v| 0.5 * v),
                g[2],
            ];
            for (r, row) in rows.iter().enumerate() {
                for (k, v) in times_gt(*row).into_iter().enumerate() {
                    u[((4 * r + k) * d.f + f) * c + ch] = v;
                }
            }
        }
    }
    // V[ξ][c][t] = (Bᵀ d B)[ξ]
    let mut v = vec![0.0; 16 * c * t];
    for ch in 0..c {
        for tile in 0..t {
            let (n, ty, tx) = d.tile_at(tile);
            let at = |r: usize, k: usize| -> f64 {
                let (iy, ix) = (
                    (2 * ty + r) as isize - pads[0] as isize,
                    (2 * tx + k) as isize - pads[1] as isize,
                );
                if iy < 0 || ix < 0 || iy as usize >= d.h || ix as usize >= d.w {
                    0.0
                } else {
                    x[((n * c + ch) * d.h + iy as usize) * d.w + ix as usize]
                }
            };
            let p: [[f64; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|k| at(r, k)));
            let rows = [
                add(p[0], p[2], -1.0),
                add(p[1], p[2], 1.0),
                add(p[2], p[1], -1.0),
                add(p[1], p[3], -1.0),
            ];
            for (r, row) in rows.iter().enumerate() {
                for (k, val) in times_b(*row).into_iter().enumerate() {
                    v[((4 * r + k) * c + ch) * t + tile] = val;
                }
            }
        }
    }
    // M[ξ] = U[ξ]·V[ξ], then y = Aᵀ M A per tile.
    let mut y = vec![0.0; d.n * d.f * d.oh * d.ow];
    for f in 0..d.f {
        for tile in 0..t {
            let m: [[f64; 4]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|k| {
                    let xi = 4 * r + k;
                    (0..c)
                        .map(|ch| u[(xi * d.f + f) * c + ch] * v[(xi * c + ch) * t + tile])
                        .sum()
                })
            });
            let top = times_a(add(add(m[0], m[1], 1.0), m[2], 1.0));
            let bottom = times_a(add(add(m[1], m[2], -1.0), m[3], -1.0));
            let (n, ty, tx) = d.tile_at(tile);
            for (dy, row) in [top, bottom].iter().enumerate() {
                for (dx, val) in row.iter().enumerate() {
                    let (oy, ox) = (2 * ty + dy, 2 * tx + dx);
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
    /// Winograd F(2×2, 3×3): (N, F, OH, OW), the same result as [`Tensor::conv2d`] within
    /// f32 rounding. Not differentiable (graphs record [`crate::Var::conv2d`]; compiled
    /// inference plans take this where it pays).
    pub fn conv2d_winograd(&self, weight: &Tensor, geom: Conv2d) -> Result<Tensor> {
        self.conv2d_winograd_epilogue(weight, None, geom, Epilogue::default())
    }

    /// The transformed filters `U = G·g·Gᵀ` of `weight` (F, C, 3, 3) as
    /// [`Tensor::conv2d_winograd_epilogue`] computes them for images of shape `x`: (16, F, C4),
    /// C4 being C rounded up to 4 (zero channels). They depend on the weights alone, so a
    /// compiled inference plan computes them once (and again when `set_param` changes them).
    pub(crate) fn winograd_filters(&self, x: &[usize], geom: Conv2d) -> Result<Tensor> {
        let op = "conv2d_winograd";
        self.expect_f32(op)?;
        let d = dims(op, x, self.shape(), &geom)?;
        let DeviceInner::Gpu(ctx) = &self.device().inner else {
            return Err(Error::Invalid {
                op,
                detail:
                    "transformed filters are a GPU plan's (the CPU reference convolves directly)"
                        .into(),
            });
        };
        let u = gpu_output(ctx, self.device(), op, &[16, d.f, d.c4], DType::F32)?;
        if u.numel() > 0 {
            let p = params(&d, geom.pads, d.f * d.c4, 0);
            dispatch(
                ctx,
                "winograd_filter",
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
        let op = "conv2d_winograd";
        self.expect_f32(op)?;
        weight.expect_f32(op)?;
        self.expect_same_device(op, weight)?;
        let d = dims(op, self.shape(), weight.shape(), &geom)?;
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
        let run = |entry: &str, tensors: &[&Tensor], total: usize| {
            let p = params(&d, geom.pads, total, epi.flags());
            dispatch(ctx, entry, constants, &p, (tensors, true), total)
        };
        let u = match filters {
            Some(u) if u.shape() == [16, d.f, d.c4] && u.dtype() == DType::F32 => {
                self.expect_same_device(op, u)?;
                u.clone()
            }
            Some(u) => {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "transformed filters of shape {:?} ({:?}) for weight {:?}: they need [16, {}, {}] f32",
                        u.shape(),
                        u.dtype(),
                        weight.shape(),
                        d.f,
                        d.c4
                    ),
                })
            }
            None => weight.winograd_filters(self.shape(), geom)?,
        };
        let v = gpu_output(ctx, self.device(), op, &[16, d.c4, d.t4], DType::F32)?;
        // Four tiles per invocation (T4 is a multiple of 4).
        run("winograd_input", &[self, &v], d.c4 * d.t4 / 4)?;
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
        run("winograd_output", &bound, d.f * d.t4 / 4)?;
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
        // 7x7 at batch 1: 16 tiles, under MIN_TILES; 14x14: 49 tiles.
        assert!(!prefer_winograd(&[1, 512, 7, 7], &[512, 512, 3, 3], &g));
        assert!(prefer_winograd(&[1, 256, 14, 14], &[256, 256, 3, 3], &g));
    }
}
