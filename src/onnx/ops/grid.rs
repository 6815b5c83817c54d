//! ONNX sampling grids: AffineGrid (opset 20) and GridSample (opsets 16, 20, 22).
//!
//! AffineGrid maps each output position's normalised coordinates `[x, y, (z,) 1]` through
//! the batch's affine matrices θ `(N, 2, 3)` (or `(N, 3, 4)` in 3-D): one product of a
//! constant `(positions, 3|4)` grid with θᵀ, so the gradient reaches θ (a spatial
//! transformer trains through it). Coordinates span [−1, 1]: pixel centres
//! `−1 + (2i + 1)/n`, or with `align_corners` the corner pixels' centres `−1 + 2i/(n − 1)`
//! A single pixel sits at 0 in both modes. With `align_corners` that is undefined (2/(n − 1))
//! and runtimes disagree: onnxruntime 1.32 puts it at +1, ONNX's Python reference at −1,
//! PyTorch's `affine_grid` at 0, the centre, which wgrad follows.

use super::{attr_int, attr_string, const_input, err, input, one, Env, OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("AffineGrid", affine_grid), ("GridSample", grid_sample)];

type GResult<T> = crate::Result<T>;

/// The normalised coordinate of pixel `i` of `n`.
fn coordinate(i: usize, n: usize, align_corners: bool) -> f64 {
    if align_corners {
        if n == 1 {
            0.0
        } else {
            -1.0 + 2.0 * i as f64 / (n - 1) as f64
        }
    } else {
        -1.0 + (2 * i + 1) as f64 / n as f64
    }
}

/// AffineGrid: `size` (known at import) is `(N, C, H, W)` or `(N, C, D, H, W)`; the output
/// is `(N, H, W, 2)` or `(N, D, H, W, 3)`.
fn affine_grid(env: &Env, node: &NodeProto) -> OpResult {
    let theta = input(env, node, 0)?;
    let size = const_input(env, node, 1)?.as_i64()?;
    let spatial: Vec<usize> = match size.as_slice() {
        [_, _, rest @ ..] if (2..=3).contains(&rest.len()) => rest
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("size {size:?} must be positive"))?,
        _ => {
            return Err(format!(
                "size {size:?} must be (N, C, H, W) or (N, C, D, H, W)"
            ))
        }
    };
    let k = spatial.len();
    let n = usize::try_from(size[0]).map_err(|_| format!("size {size:?}: negative N"))?;
    if theta.shape() != [n, k, k + 1] {
        return Err(format!(
            "theta {:?} must be {:?} for size {size:?}",
            theta.shape(),
            [n, k, k + 1]
        ));
    }
    let positions = super::host_numel(&spatial)?;
    super::host_numel(&[positions, k + 1])?;
    let align = attr_int(node, "align_corners", 0) != 0;
    // Rows [x, y, (z,) 1] in row-major order of the spatial dims (the last is x).
    let mut base = Vec::with_capacity(positions * (k + 1));
    for p in 0..positions {
        let mut rest = p;
        let mut idx = vec![0; k];
        for d in (0..k).rev() {
            idx[d] = rest % spatial[d];
            rest /= spatial[d];
        }
        for d in (0..k).rev() {
            base.push(coordinate(idx[d], spatial[d], align) as f32);
        }
        base.push(1.0);
    }
    let base = Tensor::from_slice(&Device::cpu(), &base, &[1, positions, k + 1]).map_err(err)?;
    let mut out = vec![n];
    out.extend(&spatial);
    out.push(k);
    let y = (|| {
        let base = theta.graph().constant(&base)?;
        // (1, P, k+1)·(N, k, k+1)ᵀ = (N, P, k).
        base.matmul_t(&theta, false, true)?.reshape(&out)
    })()
    .map_err(err)?;
    one(y)
}

/// How GridSample weighs the pixels around a sampling point.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Linear,
    Nearest,
    Cubic,
}

/// What GridSample reads outside the image.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// GridSample: `x (N, C, D?, H, W)` sampled at `grid (N, out…, k)`, whose last dim holds
/// normalised `[x, y, (z)]` in [−1, 1] (`x` along the last axis). Output `(N, C, out…)`.
///
/// Each spatial axis gets a weight matrix `(N, P, S)` over its pixels, P output points:
/// linear `max(0, 1 − |c − i|)`, nearest `[round(c) = i]` (halves to even), cubic
/// Keys' kernel (A = −0.75) on the four taps around c. Padding follows PyTorch (whose
/// `grid_sample` ONNX's reference mirrors): border clamps, reflection reflects then
/// clamps — the coordinate for linear and nearest, each tap's position for cubic — and
/// zeros leaves out what falls outside (its weights meet no pixel). The sample is then the
/// image contracted with every axis' weights: a batched product for the last axis and a
/// weighted sum for each other. That is O(C·∏S·P) work where a gather is O(C·P·taps): a
/// composition of differentiable graph ops (the gradient reaches both the image and the
/// grid) that suits the small images of spatial transformers, not megapixel resampling.
fn grid_sample(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let grid = input(env, node, 1)?;
    let xs = x.shape().to_vec();
    let k = xs.len().saturating_sub(2);
    if !(2..=3).contains(&k) {
        return Err(format!(
            "input {xs:?} must be (N, C, H, W) or (N, C, D, H, W)"
        ));
    }
    let gs = grid.shape().to_vec();
    if gs.len() != k + 2 || gs[0] != xs[0] || gs[k + 1] != k {
        return Err(format!(
            "grid {gs:?} must be (N, out…, {k}) with N = {} for input {xs:?}",
            xs[0]
        ));
    }
    let mode = match attr_string(node, "mode").as_deref() {
        None | Some("linear") | Some("bilinear") => Mode::Linear,
        Some("nearest") => Mode::Nearest,
        Some("cubic") | Some("bicubic") if k == 2 => Mode::Cubic,
        Some("cubic") | Some("bicubic") => {
            return Err("cubic mode needs a 2-D input (ONNX defines it for 4-D only)".into())
        }
        Some(m) => return Err(format!("unknown mode '{m}'")),
    };
    let padding = match attr_string(node, "padding_mode").as_deref() {
        None | Some("zeros") => Padding::Zeros,
        Some("border") => Padding::Border,
        Some("reflection") => Padding::Reflection,
        Some(m) => return Err(format!("unknown padding_mode '{m}'")),
    };
    let align = attr_int(node, "align_corners", 0) != 0;
    let (n, c) = (xs[0], xs[1]);
    let spatial = &xs[2..];
    let p = super::host_numel(&gs[1..k + 1])?;
    // The weights and the contraction's intermediates hold N·P·S and N·C·∏S·P values.
    super::host_numel(&[n, c, super::host_numel(spatial)?, p])?;
    let y = (|| {
        let g = grid.reshape(&[n, p, k])?;
        let weights: Vec<Var> = (0..k)
            .map(|a| {
                // Axis a is the (k − 1 − a)-th grid component (x is the last axis).
                let comp = k - 1 - a;
                let coord = g.slice(2, comp, comp + 1)?;
                axis_weights(&coord, spatial[a], mode, padding, align)
            })
            .collect::<GResult<_>>()?;
        // The last axis by a batched product, the others by weighted sums.
        let lead: usize = c * spatial[..k - 1].iter().product::<usize>();
        let mut t =
            x.reshape(&[n, lead, spatial[k - 1]])?
                .matmul_t(&weights[k - 1], false, true)?;
        for a in (0..k - 1).rev() {
            let before: usize = c * spatial[..a].iter().product::<usize>();
            let w = weights[a]
                .permute(&[0, 2, 1])?
                .reshape(&[n, 1, spatial[a], p])?;
            t = t
                .reshape(&[n, before, spatial[a], p])?
                .mul(&w)?
                .sum_axis(2, false)?;
        }
        let mut out = vec![n, c];
        out.extend(&gs[1..k + 1]);
        t.reshape(&out)
    })()
    .map_err(err)?;
    one(y)
}

/// The `(N, P, size)` weights of one axis' pixels for the normalised coordinates
/// `coord (N, P, 1)`.
fn axis_weights(
    coord: &Var,
    size: usize,
    mode: Mode,
    padding: Padding,
    align: bool,
) -> GResult<Var> {
    let s = size as f32;
    // Pixel coordinates: align_corners maps ±1 to the corner pixels' centres, otherwise
    // to the image's edges.
    let pix = if align {
        coord.add_scalar(1.0)?.mul_scalar(0.5 * (s - 1.0))?
    } else {
        coord
            .add_scalar(1.0)?
            .mul_scalar(s)?
            .add_scalar(-1.0)?
            .mul_scalar(0.5)?
    };
    let idx: Vec<f32> = (0..size).map(|i| i as f32).collect();
    let idx = coord
        .graph()
        .constant(&Tensor::from_slice(&Device::cpu(), &idx, &[1, 1, size])?)?;
    match mode {
        Mode::Linear => {
            let c = pad(&pix, size, padding, align)?;
            c.sub(&idx)?.abs()?.scalar(B::Sub, 1.0, true)?.relu()
        }
        Mode::Nearest => {
            let c = pad(&pix, size, padding, align)?.unary(U::Round)?;
            c.binary(&idx, B::Eq)
        }
        Mode::Cubic => {
            let f = pix.unary(U::Floor)?;
            let t = pix.sub(&f)?;
            let mut w: Option<Var> = None;
            for o in -1i32..=2 {
                let tap = pad(&f.add_scalar(o as f32)?, size, padding, align)?;
                let weight = keys(&t.add_scalar(-(o as f32))?.abs()?)?;
                let term = tap.binary(&idx, B::Eq)?.mul(&weight)?;
                w = Some(match w {
                    None => term,
                    Some(acc) => acc.add(&term)?,
                });
            }
            Ok(w.expect("four taps"))
        }
    }
}

/// Keys' cubic convolution kernel at distance `d ≥ 0` with A = −0.75 (PyTorch's):
/// `(A+2)d³ − (A+3)d² + 1` within 1, `A d³ − 5A d² + 8A d − 4A` within 2, else 0.
fn keys(d: &Var) -> GResult<Var> {
    const A: f32 = -0.75;
    let d2 = d.square()?;
    let d3 = d2.mul(d)?;
    let near = d3
        .mul_scalar(A + 2.0)?
        .sub(&d2.mul_scalar(A + 3.0)?)?
        .add_scalar(1.0)?;
    let far = d3
        .mul_scalar(A)?
        .sub(&d2.mul_scalar(5.0 * A)?)?
        .add(&d.mul_scalar(8.0 * A)?)?
        .add_scalar(-4.0 * A)?;
    let in1 = d.scalar(B::Le, 1.0, false)?;
    let in2 = d.scalar(B::Lt, 2.0, false)?;
    in1.select(&near, &in2.select(&far, &d.mul_scalar(0.0)?)?)
}

/// A pixel coordinate under the padding mode: unchanged for zeros, clamped to
/// [0, size − 1] for border, reflected about the image's edges (its corner pixels' centres
/// with `align`) then clamped for reflection (PyTorch's `compute_coordinates`).
fn pad(c: &Var, size: usize, padding: Padding, align: bool) -> GResult<Var> {
    let hi = size as f32 - 1.0;
    let clamp = |v: &Var| {
        v.scalar(B::Maximum, 0.0, false)?
            .scalar(B::Minimum, hi, false)
    };
    match padding {
        Padding::Zeros => Ok(c.clone()),
        Padding::Border => clamp(c),
        Padding::Reflection => {
            let (lo2, hi2) = if align {
                (0.0, 2.0 * hi)
            } else {
                (-1.0, 2.0 * size as f32 - 1.0)
            };
            if lo2 == hi2 {
                return c.mul_scalar(0.0);
            }
            let (min, span) = (lo2 / 2.0, (hi2 - lo2) / 2.0);
            let v = c.add_scalar(-min)?.abs()?;
            let flips = v.mul_scalar(1.0 / span)?.unary(U::Floor)?;
            let extra = v.sub(&flips.mul_scalar(span)?)?;
            // flips even: extra + min; odd: span − extra + min.
            let half = flips.mul_scalar(0.5)?;
            let even = half.unary(U::Floor)?.binary(&half, B::Eq)?;
            let r = even.select(
                &extra.add_scalar(min)?,
                &extra.scalar(B::Sub, span + min, true)?,
            )?;
            clamp(&r)
        }
    }
}
