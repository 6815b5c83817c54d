//! ONNX RoiAlign (opsets 10, 16, 22) and DeformConv (opsets 19, 22): bilinear sampling at
//! data-dependent positions, composed as GridSample is (`grid.rs`): per-axis weight
//! matrices over the pixels, built from the coordinates with graph ops, contracted with the
//! image by products. Every step is a differentiable graph op, so gradients reach the
//! features, the weights, the offsets and masks, and the roi coordinates (bilinear
//! interpolation is not differentiable at integer sampling positions, where the one-sided
//! derivatives differ; there the gradient is one of them).
//!
//! The work is O(pixels · samples) per channel where a gather would be O(samples · 4): a
//! composition that suits the small feature maps of detection heads and the test models,
//! not megapixel images, so its intermediates are capped at [`MAX_INTERMEDIATE`] elements
//! (a clear import error past it).

use super::{
    attr_float, attr_int, attr_ints, attr_string, err, input, one, opt_input, value, ConstData,
    Env, OpFn, OpResult, Value,
};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::{BinaryOp as B, UnaryOp as U};
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("RoiAlign", roi_align), ("DeformConv", deform_conv)];

/// The most elements one intermediate of these compositions may hold (1 GiB of f32).
pub(crate) const MAX_INTERMEDIATE: usize = 1 << 28;

type GResult<T> = crate::Result<T>;

/// The element count of an intermediate of `dims`, within [`MAX_INTERMEDIATE`].
fn bounded(what: &str, dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_INTERMEDIATE)
        .ok_or_else(|| {
            format!(
                "{what} of dims {dims:?} would hold over {MAX_INTERMEDIATE} elements \
                 (this composition is O(pixels · samples))"
            )
        })
}

/// A graph constant of `dims` from host values.
fn constant(g: &crate::Graph, data: &[f32], dims: &[usize]) -> GResult<Var> {
    g.constant(&Tensor::from_slice(&Device::cpu(), data, dims)?)
}

/// The two bilinear weight matrices `(…, P, size)` of the pixels below and above each
/// coordinate in `c (…, P, 1)` (already clamped into the image as the op requires):
/// `(1 − t)` at `⌊c⌋` and `t` at `⌊c⌋ + 1`, `t = c − ⌊c⌋`; an index past the image has no
/// column, so its weight is dropped.
fn corners(c: &Var, size: usize) -> GResult<(Var, Var)> {
    let idx: Vec<f32> = (0..size).map(|i| i as f32).collect();
    let mut dims = vec![1; c.shape().len()];
    *dims.last_mut().expect("rank >= 1") = size;
    let idx = constant(c.graph(), &idx, &dims)?;
    let lo = c.unary(U::Floor)?;
    let t = c.sub(&lo)?;
    let at_lo = idx.binary(&lo, B::Eq)?;
    let at_hi = idx.binary(&lo.add_scalar(1.0)?, B::Eq)?;
    let w_lo = at_lo.mul(&t.scalar(B::Sub, 1.0, true)?)?;
    let w_hi = at_hi.mul(&t)?;
    Ok((w_lo, w_hi))
}

/// RoiAlign: `X (N, C, H, W)`, `rois (R, 4)` as `[x1, y1, x2, y2]`, `batch_indices (R)`;
/// output `(R, C, output_height, output_width)`.
///
/// Each output bin averages (`mode` avg) or takes the largest of (`mode` max) a grid of
/// `sampling_ratio²` bilinear samples; with `sampling_ratio` 0 the grid is
/// `⌈roi size / output size⌉` per roi and axis, which depends on the rois' values, so they
/// must then be known at import. Sampling follows ONNX's reference (onnxruntime's
/// kernel): a sample more than one pixel outside the map is 0, one within is clamped to
/// the edge pixels; in max mode each sample's value is the largest of its four weighted
/// corners (`w·x`, not the interpolated value), the reference's definition.
///
/// Per axis the sample positions depend on the roi only, so the samples of a roi are
/// `Wy · X[b] · Wxᵀ`: the image is first selected by a one-hot over N (a product, so the
/// gradient reaches it), then contracted along W and along H. In avg mode the grid's
/// average is separable too, so each axis' weights are averaged over its samples first.
fn roi_align(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let xs = x.shape().to_vec();
    let &[n, c, h, w] = xs.as_slice() else {
        return Err(format!("X {xs:?} must be (N, C, H, W)"));
    };
    let rois_dims = super::input_dims(env, node, 1)?;
    let &[r, 4] = rois_dims.as_slice() else {
        return Err(format!("rois {rois_dims:?} must be (num_rois, 4)"));
    };
    let bdims = super::input_dims(env, node, 2)?;
    if bdims != [r] {
        return Err(format!(
            "batch_indices {bdims:?} must be ({r}) for rois {rois_dims:?}"
        ));
    }
    let half_pixel = match attr_string(node, "coordinate_transformation_mode").as_deref() {
        // Opset 10 has no attribute and samples as output_half_pixel does.
        None => env.opset >= 16,
        Some("half_pixel") => true,
        Some("output_half_pixel") => false,
        Some(m) => return Err(format!("unknown coordinate_transformation_mode '{m}'")),
    };
    let max_mode = match attr_string(node, "mode").as_deref() {
        None | Some("avg") => false,
        Some("max") => true,
        Some(m) => return Err(format!("unknown mode '{m}'")),
    };
    let dim = |name: &str| -> Result<usize, String> {
        let v = attr_int(node, name, 1);
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{name} {v} must be positive"))
    };
    let (oh, ow) = (dim("output_height")?, dim("output_width")?);
    let ratio = attr_int(node, "sampling_ratio", 0);
    let scale = attr_float(node, "spatial_scale", 1.0);
    if ratio < 0 {
        return Err(format!("sampling_ratio {ratio} must be >= 0"));
    }
    if n == 0 || c == 0 || h == 0 || w == 0 || r == 0 {
        return Err(format!("X {xs:?} and rois {rois_dims:?} must not be empty"));
    }
    let offset = if half_pixel { 0.5 } else { 0.0 };
    // The sampling grid per roi and axis: fixed, or from the rois' values (as the
    // reference computes them, in f32).
    let (gy, gx): (Vec<usize>, Vec<usize>) = if ratio > 0 {
        let s = usize::try_from(ratio).map_err(|_| format!("sampling_ratio {ratio}"))?;
        (vec![s], vec![s])
    } else {
        let rv = match value(env, node, 1)? {
            Value::Const(k) => k.as_f32(),
            Value::Var(_) => {
                return Err(format!(
                    "input '{}' must be known at import: sampling_ratio 0 takes the sampling \
                     grid from the rois' sizes",
                    node.input[1]
                ))
            }
        };
        let grid = |len: f32, out: usize| -> Result<usize, String> {
            let g = (len / out as f32).ceil();
            if !g.is_finite() {
                return Err(format!("a roi of size {len} gives no sampling grid"));
            }
            // A roi of size <= 0 (half_pixel allows it) has no samples: its bins are 0.
            Ok(g.clamp(0.0, 1e9) as usize)
        };
        let mut gy = Vec::with_capacity(r);
        let mut gx = Vec::with_capacity(r);
        for b in rv.chunks(4) {
            let (x1, y1) = (b[0] * scale - offset, b[1] * scale - offset);
            let (x2, y2) = (b[2] * scale - offset, b[3] * scale - offset);
            let (mut rw, mut rh) = (x2 - x1, y2 - y1);
            if !half_pixel {
                rw = rw.max(1.0);
                rh = rh.max(1.0);
            }
            gy.push(grid(rh, oh)?);
            gx.push(grid(rw, ow)?);
        }
        (gy, gx)
    };
    let (my, mx) = (
        gy.iter().copied().max().unwrap_or(1).max(1),
        gx.iter().copied().max().unwrap_or(1).max(1),
    );
    let (py, px) = (
        oh.checked_mul(my).ok_or("sampling grid overflows")?,
        ow.checked_mul(mx).ok_or("sampling grid overflows")?,
    );
    bounded("the selected images", &[r, c, h, w])?;
    bounded("the column samples", &[r, c, h, px])?;
    bounded("the samples", &[r, c, py, px])?;
    bounded("the row weights", &[r, py, h])?;
    bounded("the column weights", &[r, px, w])?;
    bounded("the batch one-hot", &[r, n])?;
    // The batch selection: a constant one-hot when the indices are known (integer feeds
    // are), else compared on the graph.
    let select = match value(env, node, 2)? {
        Value::Const(k) => {
            let idx = match &k.data {
                ConstData::I64(v) => v.clone(),
                ConstData::F32(_) => k.as_i64()?,
            };
            let mut oh_data = vec![0f32; r * n];
            for (i, &b) in idx.iter().enumerate() {
                let b = usize::try_from(b)
                    .ok()
                    .filter(|&b| b < n)
                    .ok_or_else(|| format!("batch_indices[{i}] = {b} is outside [0, {n})"))?;
                oh_data[i * n + b] = 1.0;
            }
            Some(oh_data)
        }
        Value::Var(_) => None,
    };
    let rois = input(env, node, 1)?;
    let batch = match select {
        Some(_) => None,
        None => Some(input(env, node, 2)?),
    };
    let y = (|| {
        let g = x.graph();
        let onehot = match select {
            Some(d) => constant(g, &d, &[r, n])?,
            None => {
                let iota: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let iota = constant(g, &iota, &[1, n])?;
                let b = batch.expect("graph batch_indices").reshape(&[r, 1])?;
                iota.binary(&b, B::Eq)?
            }
        };
        let xsel = onehot
            .matmul(&x.reshape(&[n, c * h * w])?)?
            .reshape(&[r, c * h, w])?;
        // Per axis: start (R, 1, 1), bin size (R, 1, 1).
        let col = |i: usize| -> GResult<Var> {
            rois.slice(1, i, i + 1)?
                .mul_scalar(scale)?
                .add_scalar(-offset)?
                .reshape(&[r, 1, 1])
        };
        let axis = |lo: usize, hi: usize, out: usize, grid: &[usize], gmax: usize, size: usize| {
            let start = col(lo)?;
            let mut len = col(hi)?.sub(&start)?;
            if !half_pixel {
                len = len.scalar(B::Maximum, 1.0, false)?;
            }
            let bin = len.mul_scalar(1.0 / out as f32)?;
            // Sample (p, i) sits at start + (p + (i + 1/2)/g)·bin; samples i >= g of a
            // roi with a smaller grid are masked out (`keep` 0), else `keep` is 1/g.
            let rows = grid.len();
            let mut coef = Vec::with_capacity(rows * out * gmax);
            let mut keep = Vec::with_capacity(rows * out * gmax);
            for &gr in grid {
                for p in 0..out {
                    for i in 0..gmax {
                        let gf = gr.max(1) as f32;
                        coef.push(p as f32 + (i as f32 + 0.5) / gf);
                        keep.push(if i < gr { 1.0 / gf } else { 0.0 });
                    }
                }
            }
            let coef = constant(g, &coef, &[rows, out * gmax, 1])?;
            let keep = constant(g, &keep, &[rows, out * gmax, 1])?;
            let pos = start.add(&coef.mul(&bin)?)?; // (R, out·gmax, 1)
            let inside =
                pos.scalar(B::Ge, -1.0, false)?
                    .mul(&pos.scalar(B::Le, size as f32, false)?)?;
            let clamped =
                pos.scalar(B::Maximum, 0.0, false)?
                    .scalar(B::Minimum, size as f32 - 1.0, false)?;
            let (lo_w, hi_w) = corners(&clamped, size)?;
            GResult::Ok((lo_w.mul(&inside)?, hi_w.mul(&inside)?, keep))
        };
        let (ylo, yhi, ykeep) = axis(1, 3, oh, &gy, my, h)?;
        let (xlo, xhi, xkeep) = axis(0, 2, ow, &gx, mx, w)?;
        // Wy (R, Py, H) · X[b] (R, C, H, W) · Wx (R, Px, W)ᵀ = (R, C, Py, Px).
        let contract = |wy: &Var, wx: &Var| -> GResult<Var> {
            let (py, px) = (wy.shape()[1], wx.shape()[1]);
            let t = xsel.matmul_t(wx, false, true)?.reshape(&[r, c, h, px])?;
            wy.reshape(&[r, 1, py, h])?.matmul(&t)
        };
        if !max_mode {
            // The average over the grid is the product of the per-axis averages.
            let avg = |a: &Var, b: &Var, keep: &Var, out: usize, gmax: usize, size: usize| {
                a.add(b)?
                    .mul(keep)?
                    .reshape(&[r, out, gmax, size])?
                    .sum_axis(2, false)
            };
            let wy = avg(&ylo, &yhi, &ykeep, oh, my, h)?;
            let wx = avg(&xlo, &xhi, &xkeep, ow, mx, w)?;
            return contract(&wy, &wx);
        }
        // Max: the largest weighted corner per sample, then the largest sample per bin;
        // samples outside a roi's grid are left out (-inf), and a roi with no samples is 0.
        let mut best: Option<Var> = None;
        for wy in [&ylo, &yhi] {
            for wx in [&xlo, &xhi] {
                let v = contract(wy, wx)?;
                best = Some(match best {
                    None => v,
                    Some(b) => b.maximum(&v)?,
                });
            }
        }
        let best = best.expect("four corners");
        // Samples past a roi's grid (`keep` 0) are left out.
        let rows_y = ykeep.shape()[0];
        let rows_x = xkeep.shape()[0];
        let vy = ykeep
            .scalar(B::Gt, 0.0, false)?
            .reshape(&[rows_y, 1, py, 1])?;
        let vx = xkeep
            .scalar(B::Gt, 0.0, false)?
            .reshape(&[rows_x, 1, 1, px])?;
        let valid = vy.mul(&vx)?;
        let ninf = g.full(f32::NEG_INFINITY, &[1, 1, 1, 1]);
        let masked = valid.select(&best, &ninf)?;
        let pooled = masked
            .reshape(&[r, c, oh, my, ow, mx])?
            .max_axis(5, false)?
            .max_axis(3, false)?;
        // Bins of a roi without samples (grid 0) are -inf here and 0 in the reference.
        let any = pooled.scalar(B::Gt, f32::NEG_INFINITY, false)?;
        any.select(&pooled, &g.full(0.0, &[1, 1, 1, 1]))
    })()
    .map_err(err)?;
    one(y)
}

/// DeformConv (2-D): `X (N, C, H, W)`, `W (oc, C/group, kh, kw)`, `offset (N,
/// offset_group·kh·kw·2, oh, ow)` as `(y, x)` pairs per kernel tap, optional `B (oc)` and
/// `mask (N, offset_group·kh·kw, oh, ow)`; output `(N, oc, oh, ow)`.
///
/// Tap `(i, j)` of output `(p, q)` samples channel group `g`'s image at
/// `(p·sh − pad_top + i·dh + Δy, q·sw − pad_left + j·dw + Δx)`, bilinearly with zeros
/// outside (GridSample's zeros padding, as the reference does). Both coordinates vary per
/// tap and output, so each sample is `Σ_h Σ_w Wy[h]·X[h, w]·Wx[w]`: a product along W for
/// all samples at once, then a weighted sum along H. The sampled columns `(N, C, taps,
/// positions)`, times the mask, meet the weights in one batched product per group.
fn deform_conv(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let wt = input(env, node, 1)?;
    let off = input(env, node, 2)?;
    let bias = opt_input(env, node, 3)?;
    let mask = opt_input(env, node, 4)?;
    let (xs, ws, os) = (
        x.shape().to_vec(),
        wt.shape().to_vec(),
        off.shape().to_vec(),
    );
    let shapes = format!("X {xs:?}, W {ws:?}, offset {os:?}");
    let &[n, c, h, w] = xs.as_slice() else {
        return Err(format!(
            "{shapes}: only 2-D DeformConv (X (N, C, H, W)) is supported"
        ));
    };
    let &[oc, cg, kh, kw] = ws.as_slice() else {
        return Err(format!("{shapes}: W must be (oc, C/group, kh, kw)"));
    };
    let pos = |name: &str, v: i64| -> Result<usize, String> {
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{shapes}: {name} {v} must be positive"))
    };
    let group = pos("group", attr_int(node, "group", 1))?;
    let og = pos("offset_group", attr_int(node, "offset_group", 1))?;
    if let Some(k) = attr_ints(node, "kernel_shape") {
        if k != [kh as i64, kw as i64] {
            return Err(format!("{shapes}: kernel_shape {k:?} does not match W"));
        }
    }
    let pair = |name: &str, default: i64, len: usize| -> Result<Vec<i64>, String> {
        let v = attr_ints(node, name).unwrap_or_else(|| vec![default; len]);
        if v.len() != len || v.iter().any(|d| !(0..=1 << 24).contains(d)) {
            return Err(format!(
                "{shapes}: {name} {v:?} must be {len} values in [0, 2^24]"
            ));
        }
        Ok(v)
    };
    let strides = pair("strides", 1, 2)?;
    let dil = pair("dilations", 1, 2)?;
    let pads = pair("pads", 0, 4)?;
    if strides.contains(&0) || dil.contains(&0) {
        return Err(format!("{shapes}: strides and dilations must be positive"));
    }
    if n == 0 || c == 0 || h == 0 || w == 0 || oc == 0 || kh == 0 || kw == 0 {
        return Err(format!("{shapes}: empty dims are not supported"));
    }
    if c != cg * group || oc % group != 0 {
        return Err(format!(
            "{shapes}: C must be W's dim 1 times group {group}, and oc a multiple of it"
        ));
    }
    if c % og != 0 {
        return Err(format!(
            "{shapes}: C must be a multiple of offset_group {og}"
        ));
    }
    let out_dim = |size: usize, k: usize, a: usize| -> Option<usize> {
        let span = (k as i64 - 1) * dil[a] + 1;
        let total = size as i64 + pads[a] + pads[a + 2] - span;
        (total >= 0).then(|| (total / strides[a] + 1) as usize)
    };
    let (oh, ow) = match (out_dim(h, kh, 0), out_dim(w, kw, 1)) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(format!(
                "{shapes}: the kernel is larger than the padded input"
            ))
        }
    };
    let k = kh * kw;
    if os != [n, og * k * 2, oh, ow] {
        return Err(format!(
            "{shapes}: offset must be {:?} (N, offset_group·kh·kw·2, oh, ow)",
            [n, og * k * 2, oh, ow]
        ));
    }
    if let Some(m) = &mask {
        if m.shape() != [n, og * k, oh, ow] {
            return Err(format!(
                "{shapes}: mask {:?} must be {:?}",
                m.shape(),
                [n, og * k, oh, ow]
            ));
        }
    }
    if let Some(b) = &bias {
        if b.shape() != [oc] {
            return Err(format!("{shapes}: B {:?} must be [{oc}]", b.shape()));
        }
    }
    let p = oh * ow;
    let q = bounded("the taps", &[k, p])?;
    let cpo = c / og;
    bounded("the column samples", &[n, c, h, q])?;
    bounded("the row weights", &[n, og, q, h])?;
    bounded("the column weights", &[n, og, q, w])?;
    let y = (|| {
        let g = x.graph();
        // Base positions (1, 1, K·P, 1) per axis: tap then output position.
        let mut by = Vec::with_capacity(q);
        let mut bx = Vec::with_capacity(q);
        for i in 0..kh {
            for j in 0..kw {
                for pi in 0..oh {
                    for qj in 0..ow {
                        let y0 = pi as i64 * strides[0] - pads[0] + i as i64 * dil[0];
                        let x0 = qj as i64 * strides[1] - pads[1] + j as i64 * dil[1];
                        by.push(y0 as f32);
                        bx.push(x0 as f32);
                    }
                }
            }
        }
        let by = constant(g, &by, &[1, 1, q, 1])?;
        let bx = constant(g, &bx, &[1, 1, q, 1])?;
        let o = off.reshape(&[n, og, k, 2, p])?;
        let oy = o.slice(3, 0, 1)?.reshape(&[n, og, q, 1])?;
        let ox = o.slice(3, 1, 2)?.reshape(&[n, og, q, 1])?;
        let weights = |base: &Var, d: &Var, size: usize| -> GResult<Var> {
            // Zeros outside: no clamping, so a pixel past the edge has no column.
            let (lo, hi) = corners(&base.add(d)?, size)?;
            lo.add(&hi)
        };
        let wy = weights(&by, &oy, h)?; // (N, G, Q, H)
        let wx = weights(&bx, &ox, w)?; // (N, G, Q, W)
                                        // Along W: (N, G, Cg·H, W)·(N, G, Q, W)ᵀ = (N, G, Cg·H, Q); then along H.
        let t = x
            .reshape(&[n, og, cpo * h, w])?
            .matmul_t(&wx, false, true)?
            .reshape(&[n, og, cpo, h, q])?;
        let wy = wy.permute(&[0, 1, 3, 2])?.reshape(&[n, og, 1, h, q])?;
        let mut cols = t.mul(&wy)?.sum_axis(3, false)?; // (N, G, Cg, Q)
        if let Some(m) = &mask {
            cols = cols.mul(&m.reshape(&[n, og, 1, q])?)?;
        }
        // Columns (N, group, C/group·K, P) against weights (group, oc/group, C/group·K).
        let cols = cols.reshape(&[n, group, cg * k, p])?;
        let wm = wt.reshape(&[group, oc / group, cg * k])?;
        let mut y = wm.matmul(&cols)?.reshape(&[n, oc, oh, ow])?;
        if let Some(b) = &bias {
            y = y.add(&b.reshape(&[1, oc, 1, 1])?)?;
        }
        Ok(y)
    })()
    .map_err(err)?;
    one(y)
}
