//! ONNX Resize (opset 11+) as a composition: interpolation is separable, so each resized
//! axis is one constant matrix (output × input positions, computed at import from the
//! scales or sizes, which must be constants) applied along that axis with a matmul, or,
//! when every output position takes exactly one input element (nearest, or an integer
//! upscale), a gather, which is exact for any value (a matmul would turn `0·inf` into NaN).
//!
//! The weights follow the ONNX reference implementation (`onnx/reference/ops/op_resize.py`,
//! its per-axis `_interpolate_1d_along_axis`): every coordinate transformation mode,
//! nearest (all four rounding modes), linear and cubic (with `cubic_coeff_a` and
//! `exclude_outside`), antialiasing, `axes`, `keep_aspect_ratio_policy`, and
//! `tf_crop_and_resize`'s `roi` with `extrapolation_value` (a select after the axis).
//! Upsample (its opset 7 and 9 predecessor) shares the per-axis plans.

use super::{
    attr_float, attr_int, attr_ints, attr_string, axis, dims_product, err, input, one, value, Env,
    FoldFn, OpFn, OpResult, Value,
};
use crate::onnx::proto::NodeProto;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("Resize", resize), ("Upsample", upsample)];

/// No folds: Resize of a constant is built as graph ops on it.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

type Res<T> = std::result::Result<T, String>;

/// The interpolation kernel of `mode` (and antialias).
#[derive(Clone, Copy)]
enum Kernel {
    Nearest(Rounding),
    Linear { antialias: bool },
    Cubic { a: f64, antialias: bool },
}

/// Nearest mode's choice between the two neighbours.
#[derive(Clone, Copy)]
enum Rounding {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

impl Kernel {
    /// The weights of the neighbours of a source coordinate whose fractional part is
    /// `ratio` (in (0, 1], 1 for an integer coordinate), for an axis scaled by `scale`.
    fn coeffs(self, ratio: f64, scale: f64) -> Vec<f64> {
        match self {
            Kernel::Nearest(r) => {
                let up = if ratio.fract() == 0.0 {
                    true
                } else {
                    match r {
                        Rounding::PreferFloor => ratio > 0.5,
                        Rounding::PreferCeil => ratio >= 0.5,
                        Rounding::Floor => false,
                        Rounding::Ceil => true,
                    }
                };
                vec![(!up) as u8 as f64, up as u8 as f64]
            }
            Kernel::Linear { antialias: false } => vec![1.0 - ratio, ratio],
            Kernel::Linear { antialias: true } => {
                let s = scale.min(1.0);
                let start = (-1.0 / s).floor() as i64 + 1;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect();
                normalized(c)
            }
            Kernel::Cubic {
                a,
                antialias: false,
            } => {
                let (r1, q) = (ratio + 1.0, 1.0 - ratio);
                let q1 = q + 1.0;
                vec![
                    ((a * r1 - 5.0 * a) * r1 + 8.0 * a) * r1 - 4.0 * a,
                    ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                    ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                    ((a * q1 - 5.0 * a) * q1 + 8.0 * a) * q1 - 4.0 * a,
                ]
            }
            Kernel::Cubic { a, antialias: true } => {
                let s = scale.min(1.0);
                let f = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let start = (-2.0 / s).floor() as i64 + 1;
                let end = 2 - start;
                normalized((start..end).map(|i| f(s * (i as f64 - ratio))).collect())
            }
        }
    }
}

fn normalized(c: Vec<f64>) -> Vec<f64> {
    let sum: f64 = c.iter().sum();
    c.into_iter().map(|v| v / sum).collect()
}

/// How output position `y` maps to a source coordinate.
#[derive(Clone, Copy, PartialEq)]
enum Transform {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// One axis's resize: the (out × in) weights, row-major, and for `tf_crop_and_resize` the
/// output positions whose source lies outside the input (they take the extrapolation value).
struct AxisPlan {
    weights: Vec<f64>,
    outside: Vec<bool>,
}

#[allow(clippy::too_many_arguments)]
fn plan_axis(
    n_in: usize,
    n_out: usize,
    scale: f64,
    kernel: Kernel,
    transform: Transform,
    roi: (f64, f64),
    exclude_outside: bool,
) -> AxisPlan {
    let in_w = n_in as f64;
    let out_w = scale * in_w;
    let mut weights = vec![0.0; n_out * n_in];
    let mut outside = vec![false; n_out];
    for (row, out_flag) in outside.iter_mut().enumerate() {
        let y = row as f64;
        let x = match transform {
            Transform::AlignCorners if out_w == 1.0 => 0.0,
            Transform::AlignCorners => y * (in_w - 1.0) / (out_w - 1.0),
            Transform::Asymmetric => y / scale,
            Transform::TfCropAndResize => {
                let base = if out_w == 1.0 {
                    (roi.1 - roi.0) * (in_w - 1.0) / 2.0
                } else {
                    y * (roi.1 - roi.0) * (in_w - 1.0) / (out_w - 1.0)
                };
                base + roi.0 * (in_w - 1.0)
            }
            Transform::PytorchHalfPixel if out_w == 1.0 => -0.5,
            Transform::PytorchHalfPixel | Transform::HalfPixel => (y + 0.5) / scale - 0.5,
            Transform::HalfPixelSymmetric => {
                let adjustment = n_out as f64 / out_w;
                let offset = in_w / 2.0 * (1.0 - adjustment);
                offset + (y + 0.5) / scale - 0.5
            }
        };
        if transform == Transform::TfCropAndResize && (x < 0.0 || x > in_w - 1.0) {
            *out_flag = true;
        }
        let ratio = if x == x.floor() { 1.0 } else { x - x.floor() };
        let mut c = kernel.coeffs(ratio, scale);
        let n = c.len() as i64;
        // The n neighbours nearest x (ties to the smaller index), in edge-padded coordinates.
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor();
        let frac = xp - p;
        let offset = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = p as i64 + offset - pad;
        let idx: Vec<i64> = (0..n).map(|k| start + k).collect();
        if exclude_outside {
            for (w, &i) in c.iter_mut().zip(&idx) {
                if i < 0 || i >= n_in as i64 {
                    *w = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            c.iter_mut().for_each(|w| *w /= sum);
        }
        for (w, &i) in c.iter().zip(&idx) {
            // Edge padding is clamping.
            let i = i.clamp(0, n_in as i64 - 1) as usize;
            weights[row * n_in + i] += w;
        }
    }
    AxisPlan { weights, outside }
}

/// An optional constant input (absent, named "", or empty) as f64s.
fn opt_floats(env: &Env, node: &NodeProto, i: usize) -> Res<Option<Vec<f64>>> {
    match node.input.get(i).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(name) => match value(env, node, i)? {
            Value::Const(c) if c.numel() == 0 => Ok(None),
            Value::Const(c) => Ok(Some(c.as_f32().iter().map(|&v| v as f64).collect())),
            Value::Var(_) => Err(format!(
                "input '{name}' must be known at import (an initializer, a Constant, or computed from them)"
            )),
        },
    }
}

fn resize(env: &Env, node: &NodeProto) -> OpResult {
    if env.opset < 11 {
        return Err(format!(
            "Resize of opset {} (scales as input 1) is not supported (opset 11 and later are)",
            env.opset
        ));
    }
    let x = input(env, node, 0)?;
    let shape = x.shape().to_vec();
    let r = shape.len();
    let mode = attr_string(node, "mode").unwrap_or_else(|| "nearest".into());
    let antialias = attr_int(node, "antialias", 0) != 0;
    let kernel = match mode.as_str() {
        "nearest" if antialias => return Err("antialias is not defined for mode nearest".into()),
        "nearest" => Kernel::Nearest(
            match attr_string(node, "nearest_mode")
                .as_deref()
                .unwrap_or("round_prefer_floor")
            {
                "round_prefer_floor" => Rounding::PreferFloor,
                "round_prefer_ceil" => Rounding::PreferCeil,
                "floor" => Rounding::Floor,
                "ceil" => Rounding::Ceil,
                m => return Err(format!("nearest_mode '{m}' is not one of the four defined")),
            },
        ),
        "linear" => Kernel::Linear { antialias },
        "cubic" => Kernel::Cubic {
            a: attr_float(node, "cubic_coeff_a", -0.75) as f64,
            antialias,
        },
        m => return Err(format!("mode '{m}' is not nearest, linear or cubic")),
    };
    let transform = match attr_string(node, "coordinate_transformation_mode")
        .as_deref()
        .unwrap_or("half_pixel")
    {
        "half_pixel" => Transform::HalfPixel,
        "half_pixel_symmetric" => Transform::HalfPixelSymmetric,
        "pytorch_half_pixel" => Transform::PytorchHalfPixel,
        "align_corners" => Transform::AlignCorners,
        "asymmetric" => Transform::Asymmetric,
        "tf_crop_and_resize" => Transform::TfCropAndResize,
        m => {
            return Err(format!(
                "coordinate_transformation_mode '{m}' is not supported"
            ))
        }
    };
    let axes: Vec<usize> = match attr_ints(node, "axes") {
        Some(a) => a
            .iter()
            .map(|&a| axis(a, r, false))
            .collect::<Res<Vec<usize>>>()?,
        None => (0..r).collect(),
    };
    let k = axes.len();
    let scales = opt_floats(env, node, 2)?;
    let sizes = opt_floats(env, node, 3)?;
    // Per-axis scale and output size over all r axes.
    let mut scale = vec![1.0f64; r];
    let mut out: Vec<usize> = shape.clone();
    match (&scales, &sizes) {
        (Some(_), Some(_)) => return Err("give scales or sizes, not both".into()),
        (None, None) => return Err("needs scales or sizes".into()),
        (Some(s), None) => {
            if s.len() != k {
                return Err(format!("{} scales for {k} axes", s.len()));
            }
            for (&a, &v) in axes.iter().zip(s) {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!("scale {v} for axis {a} is not positive"));
                }
                scale[a] = v;
                out[a] = (v * shape[a] as f64) as usize;
            }
        }
        (None, Some(s)) => {
            if s.len() != k {
                return Err(format!("{} sizes for {k} axes", s.len()));
            }
            for (&a, &v) in axes.iter().zip(s) {
                if v < 0.0 || v.fract() != 0.0 {
                    return Err(format!("size {v} for axis {a} is not a size"));
                }
                out[a] = v as usize;
                scale[a] = v / shape[a] as f64;
            }
            let policy = attr_string(node, "keep_aspect_ratio_policy");
            let pick = match policy.as_deref().unwrap_or("stretch") {
                "stretch" => None,
                "not_larger" => Some(f64::min as fn(f64, f64) -> f64),
                "not_smaller" => Some(f64::max as fn(f64, f64) -> f64),
                p => return Err(format!("keep_aspect_ratio_policy '{p}' is not supported")),
            };
            if let Some(pick) = pick {
                let s = axes.iter().map(|&a| scale[a]).reduce(pick).unwrap_or(1.0);
                for &a in &axes {
                    scale[a] = s;
                    out[a] = (s * shape[a] as f64 + 0.5) as usize;
                }
            }
        }
    }
    // roi: starts then ends, one per listed axis (only tf_crop_and_resize reads it).
    let mut roi = vec![(0.0, 1.0); r];
    if transform == Transform::TfCropAndResize {
        let v = opt_floats(env, node, 1)?.ok_or("tf_crop_and_resize needs roi")?;
        if v.len() != 2 * k {
            return Err(format!("roi has {} values for {k} axes", v.len()));
        }
        for (i, &a) in axes.iter().enumerate() {
            roi[a] = (v[i], v[k + i]);
        }
    }
    if out.contains(&0) {
        return Err(format!("output shape {out:?} is empty"));
    }
    // Each axis's plan is a dense (out × in) matrix on the host.
    if let Some(&a) = axes
        .iter()
        .find(|&&a| out[a].saturating_mul(shape[a]) > 1 << 26)
    {
        return Err(format!(
            "axis {a} from {} to {} positions: the interpolation matrix is too large",
            shape[a], out[a]
        ));
    }
    let opts = Options {
        kernel,
        transform,
        extrapolation: attr_float(node, "extrapolation_value", 0.0),
        exclude_outside: attr_int(node, "exclude_outside", 0) != 0,
    };
    one(resize_axes(env, x, &axes, &scale, &out, &roi, opts)?)
}

/// The per-op settings [`resize_axes`] needs.
#[derive(Clone, Copy)]
struct Options {
    kernel: Kernel,
    transform: Transform,
    extrapolation: f32,
    exclude_outside: bool,
}

/// `x` resized along each of `axes` to `out[a]` positions at `scale[a]` (with `roi[a]`).
fn resize_axes(
    env: &Env,
    x: Var,
    axes: &[usize],
    scale: &[f64],
    out: &[usize],
    roi: &[(f64, f64)],
    o: Options,
) -> Res<Var> {
    let shape = x.shape().to_vec();
    let mut y = x;
    for &a in axes {
        let identity = (scale[a] - 1.0).abs() <= 1e-9
            && out[a] == shape[a]
            && roi[a].0.abs() <= 1e-9
            && (roi[a].1 - 1.0).abs() <= 1e-9;
        if identity {
            continue;
        }
        let plan = plan_axis(
            shape[a],
            out[a],
            scale[a],
            o.kernel,
            o.transform,
            roi[a],
            o.exclude_outside,
        );
        y = apply_axis(env, &y, a, shape[a], out[a], &plan, o.extrapolation).map_err(err)?;
    }
    Ok(y)
}

/// Upsample (opsets 7 and 9, deprecated for Resize): `scales` an attribute (7) or a constant
/// input (9), each >= 1; nearest takes the element at ⌊y / scale⌋ (the reference's
/// `np.repeat` for integer scales), linear interpolates at `y / scale` (asymmetric).
fn upsample(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let shape = x.shape().to_vec();
    let r = shape.len();
    let scales: Vec<f64> = if env.opset >= 9 {
        opt_floats(env, node, 1)?.ok_or("needs scales")?
    } else {
        node.attribute
            .iter()
            .find(|a| a.name() == "scales")
            .map(|a| a.floats.iter().map(|&v| v as f64).collect())
            .ok_or("needs the scales attribute")?
    };
    if scales.len() != r || scales.iter().any(|&v| !(v >= 1.0 && v.is_finite())) {
        return Err(format!(
            "scales {scales:?} for input {shape:?}: one per axis, each >= 1"
        ));
    }
    let kernel = match attr_string(node, "mode").as_deref().unwrap_or("nearest") {
        "nearest" => Kernel::Nearest(Rounding::Floor),
        "linear" | "bilinear" => Kernel::Linear { antialias: false },
        m => return Err(format!("mode '{m}' is not nearest or linear")),
    };
    let out: Vec<usize> = shape
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s) as usize)
        .collect();
    let opts = Options {
        kernel,
        transform: Transform::Asymmetric,
        extrapolation: 0.0,
        exclude_outside: false,
    };
    let axes: Vec<usize> = (0..r).collect();
    if let Some(a) = (0..r).find(|&a| out[a].saturating_mul(shape[a]) > 1 << 26) {
        return Err(format!(
            "axis {a} from {} to {} positions: the interpolation matrix is too large",
            shape[a], out[a]
        ));
    }
    one(resize_axes(
        env,
        x,
        &axes,
        &scales,
        &out,
        &vec![(0.0, 1.0); r],
        opts,
    )?)
}

/// `y` resized along axis `a` from `n_in` to `n_out` positions by `plan`.
fn apply_axis(
    env: &Env,
    y: &Var,
    a: usize,
    n_in: usize,
    n_out: usize,
    plan: &AxisPlan,
    extrapolation: f32,
) -> crate::Result<Var> {
    let cpu = Device::cpu();
    let rows: Vec<&[f64]> = plan.weights.chunks(n_in).collect();
    // One weight of exactly 1 per row: a gather (exact whatever the values).
    let picks: Option<Vec<i32>> = rows
        .iter()
        .map(|w| {
            let nz: Vec<usize> = (0..n_in).filter(|&i| w[i] != 0.0).collect();
            (nz.len() == 1 && w[nz[0]] == 1.0).then(|| nz[0] as i32)
        })
        .collect();
    let mut z = match picks {
        Some(idx) => {
            let t = Tensor::from_slice(&cpu, &idx, &[n_out])?;
            y.gather(&env.graph.constant_i32(&t)?, a as isize)?
        }
        None => {
            // Move `a` last, flatten the rest, multiply by the (in × out) transpose.
            let r = y.shape().len();
            let mut perm: Vec<usize> = (0..r).filter(|&d| d != a).collect();
            perm.push(a);
            let moved = y.permute(&perm)?;
            let lead: Vec<usize> = moved.shape()[..r - 1].to_vec();
            let m = dims_product(&lead, y.shape()).map_err(|detail| crate::Error::Invalid {
                op: "Resize",
                detail,
            })?;
            let mut wt = vec![0f32; n_in * n_out];
            for (o, w) in rows.iter().enumerate() {
                for (i, &v) in w.iter().enumerate() {
                    wt[i * n_out + o] = v as f32;
                }
            }
            let w = env
                .graph
                .constant(&Tensor::from_slice(&cpu, &wt, &[n_in, n_out])?)?;
            let flat = moved.reshape(&[m, n_in])?.matmul(&w)?;
            let mut dims = lead;
            dims.push(n_out);
            let mut inverse = vec![0; r];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            flat.reshape(&dims)?.permute(&inverse)?
        }
    };
    if plan.outside.iter().any(|&o| o) {
        let r = z.shape().len();
        let mut dims = vec![1; r];
        dims[a] = n_out;
        let keep: Vec<f32> = plan.outside.iter().map(|&o| (!o) as u8 as f32).collect();
        let keep = env
            .graph
            .constant(&Tensor::from_slice(&cpu, &keep, &dims)?)?;
        let fill = env
            .graph
            .constant(&Tensor::from_slice(&cpu, &[extrapolation], &[1])?)?;
        z = keep.select(&z, &fill)?;
    }
    Ok(z)
}
