//! MaxPool's Indices output and MaxUnpool, as compositions of comparisons, reductions and
//! products (no scatter kernel takes runtime indices). Indices are integers carried as
//! exact f32 values, so every index must stay below 2^24 (else an import error).
//!
//! Indices: the flat position in the whole input, `(n·C + c)·D·H·W` plus `(d·H + h)·W + w`
//! (storage_order 0) or `d + h·D + w·D·H` (1: every axis reversed, as onnxruntime's 3-D pool
//! writes it; `h + w·H` in 2-D). Of a window's taps equal to its maximum the
//! first in scan order wins (onnxruntime's strict `>` scan and the reference's argmax): the
//! patches of x (for 3-D, depth windows and then the plane windows of each depth tap) are
//! compared with the pooled maximum, each matching tap scored by the plane size minus its
//! row-major position (positive, largest for the first), and the best score picks one tap.
//! A window whose maximum is NaN has no match and gets an unspecified index.
//!
//! MaxUnpool: `out[I[i]] = X[i]` in each (n, c) plane, the last of duplicate indices winning
//! (as onnxruntime's and the reference's loops), as a one-hot product
//! `X (NC, 1, L) · onehot (NC, L, P)`; the one-hot is L·P per plane, so its size is capped.
//! The output is `output_shape` when given, else `(in - 1)·stride - pads + kernel` per axis,
//! and indices are flat positions in that output: onnxruntime's rule (its PR #2193), the
//! one under which MaxPool's Indices of an odd-sized input unpool into an `output_shape` of
//! that input's size. The ONNX reference (and its node test
//! `test_maxunpool_export_with_output_shape`) instead reads them in the inferred shape and
//! pads the result; that scatters such indices to the wrong places, and a review in ONNX
//! (PR #8413) calls the reference inconsistent, so it is not followed. Constant indices are
//! checked at import; runtime ones (a MaxPool's Indices) outside their plane select
//! nothing, so those outputs stay 0.

use super::Window;
use crate::onnx::ops::{
    attr_ints, err, input, opt_const_input, value, ConstData, Env, OpResult, Value, HOST_LIMIT,
};
use crate::onnx::proto::NodeProto;
use crate::ops::reduce::ReduceOp;
use crate::{BinaryOp, Conv2d, Device, Graph, Tensor, Var};

type Res<T> = std::result::Result<T, String>;

/// Largest one-hot MaxUnpool builds (elements): 256 MiB of f32.
const ONE_HOT_LIMIT: usize = 1 << 26;

/// Integers past this are not exact in f32.
const EXACT: usize = 1 << 24;

fn constant(g: &Graph, dims: &[usize], v: &[f32]) -> Res<Var> {
    let t = Tensor::from_slice(&Device::cpu(), v, dims).map_err(err)?;
    g.constant(&t).map_err(err)
}

/// The Indices of a MaxPool of x (N, C, …) whose output is y, for a 1-D, 2-D or 3-D `window`.
pub(super) fn max_pool_indices(
    x: &Var,
    y: &Var,
    rank: usize,
    window: &Window,
    col_major: bool,
) -> Res<Var> {
    // Every dim bounded (not only their product, which a zero dim makes 0).
    let total = x
        .shape()
        .iter()
        .try_fold(1usize, |a, &d| a.max(1).checked_mul(d.max(1)));
    if total.is_none_or(|t| t > EXACT) {
        return Err(format!(
            "input {:?} has more than 2^24 elements: its Indices would not be exact as f32",
            x.shape()
        ));
    }
    // Three spatial axes, a 1-D or 2-D pool led by axes of size 1 with a 1-tap window.
    let lead = |v: &[usize], fill: usize| -> [usize; 3] {
        let mut a = [fill; 3];
        a[3 - rank..].copy_from_slice(v);
        a
    };
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let size = lead(&x.shape()[2..], 1);
    let outs = lead(&y.shape()[2..], 1);
    let kernel = lead(&window.kernel, 1);
    let strides = lead(&window.strides, 1);
    let dilations = lead(&window.dilations, 1);
    let begins = lead(&window.begins, 0);
    let (l, k) = (
        outs.iter().fold(1usize, |a, &o| a.saturating_mul(o)),
        kernel.iter().fold(1usize, |a, &t| a.saturating_mul(t)),
    );
    if l.checked_mul(k).is_none_or(|t| t > HOST_LIMIT) {
        return Err(format!(
            "{outs:?} windows of {kernel:?} taps on input {:?}: more than {HOST_LIMIT} index entries",
            x.shape()
        ));
    }
    // The output size already says how ceil_mode rounded. The same windows without it: end
    // padding set to what the kept windows reach, so im2col makes exactly those windows.
    let reach: Vec<usize> = (0..3)
        .map(|i| {
            let span = dilations[i] * (kernel[i] - 1) + 1;
            ((outs[i] - 1) * strides[i] + span).saturating_sub(size[i] + begins[i])
        })
        .collect();
    let plane = Conv2d::new(kernel[1], kernel[2])
        .strides(strides[1], strides[2])
        .dilations(dilations[1], dilations[2])
        .pads(begins[1], begins[2], reach[1], reach[2]);
    let depth = Conv2d::new(kernel[0], 1)
        .strides(strides[0], 1)
        .dilations(dilations[0], 1)
        .pads(begins[0], 0, reach[0], 0);
    // Per (window, tap), taps row-major over the window: the tap's score (0 for padding)
    // and its index within the plane.
    let [s0, s1, s2] = size;
    let plane_size = s0 * s1 * s2;
    let (mut score, mut index) = (vec![0f32; l * k], vec![0f32; l * k]);
    let at_axis = |i: usize, o: usize, t: usize| {
        (o * strides[i] + t * dilations[i])
            .checked_sub(begins[i])
            .filter(|&p| p < size[i])
    };
    for o in 0..l {
        let o3 = [
            o / (outs[1] * outs[2]),
            (o / outs[2]) % outs[1],
            o % outs[2],
        ];
        for t in 0..k {
            let t3 = [
                t / (kernel[1] * kernel[2]),
                (t / kernel[2]) % kernel[1],
                t % kernel[2],
            ];
            let (Some(p0), Some(p1), Some(p2)) = (
                at_axis(0, o3[0], t3[0]),
                at_axis(1, o3[1], t3[1]),
                at_axis(2, o3[2], t3[2]),
            ) else {
                continue;
            };
            let row_major = (p0 * s1 + p1) * s2 + p2;
            score[o * k + t] = (plane_size - row_major) as f32;
            index[o * k + t] = if col_major {
                p0 + p1 * s0 + p2 * s0 * s1
            } else {
                row_major
            } as f32;
        }
    }
    let graph = x.graph();
    let planes = n * c;
    let offsets: Vec<f32> = (0..planes).map(|p| (p * plane_size) as f32).collect();
    let score = constant(graph, &[l, k], &score)?;
    let index = constant(graph, &[l, k], &index)?;
    let offsets = constant(graph, &[planes, 1], &offsets)?;
    (|| {
        let patches = if rank == 3 {
            // Depth windows first: (NC, 1, D, H·W) → (NC, OD·H·W, KD); then each depth
            // tap's (H, W) frame through the plane windows.
            let [od, kd] = [outs[0], kernel[0]];
            let frames = x
                .reshape(&[planes, 1, s0, s1 * s2])?
                .im2col(depth)?
                .reshape(&[planes, od, s1, s2, kd])?
                .permute(&[0, 4, 1, 2, 3])?
                .reshape(&[planes * kd * od, 1, s1, s2])?;
            frames
                .im2col(plane)?
                .reshape(&[planes, kd, od, l / od, k / kd])?
                .permute(&[0, 2, 3, 1, 4])?
                .reshape(&[planes, l, k])?
        } else {
            x.reshape(&[planes, 1, s1, s2])?.im2col(plane)?
        };
        let top = y.reshape(&[planes, l, 1])?;
        let scored = patches.binary(&top, BinaryOp::Eq)?.mul(&score)?;
        let best = scored.reduce(ReduceOp::Max, 2, true)?;
        let pick = scored.binary(&best, BinaryOp::Eq)?;
        pick.mul(&index)?
            .sum_axis(2, false)?
            .add(&offsets)?
            .reshape(y.shape())
    })()
    .map_err(err)
}

/// MaxUnpool (opsets 9, 11, 22): X (N, C, …), I (its indices), optional output_shape.
pub(super) fn max_unpool(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(format!(
            "input X {s:?} must be (N, C, …) with a spatial dim"
        ));
    }
    let rank = s.len() - 2;
    let kernel = match attr_ints(node, "kernel_shape") {
        Some(k) if k.len() == rank && k.iter().all(|&v| (1..=u32::MAX as i64).contains(&v)) => {
            k.iter().map(|&v| v as usize).collect::<Vec<_>>()
        }
        Some(k) => return Err(format!("kernel_shape {k:?} must hold {rank} positive dims")),
        None => return Err("kernel_shape is required".into()),
    };
    let strides = super::per_axis(node, "strides", rank, 1, 1)?;
    let (begins, ends) = super::explicit_pads(node, rank)?;
    // The spec's output: (in - 1)·stride - pads + kernel per axis.
    let mut inferred = s[..2].to_vec();
    for i in 0..rank {
        let o = (s[i + 2].max(1) - 1)
            .checked_mul(strides[i])
            .and_then(|v| v.checked_add(kernel[i]))
            .and_then(|v| v.checked_sub(begins[i] + ends[i]))
            .filter(|&v| v > 0);
        inferred.push(o.ok_or_else(|| {
            format!(
                "input X {s:?} with kernel {kernel:?}, strides {strides:?} and pads {begins:?}/{ends:?} has no output on spatial axis {i}"
            )
        })?);
    }
    let out: Vec<usize> = match opt_const_input(env, node, 2)? {
        None => inferred,
        Some(c) => {
            let v = c.as_i64()?;
            let ok = v.len() == s.len()
                && v[..2]
                    .iter()
                    .zip(&s)
                    .all(|(&a, &b)| a >= 0 && a as usize == b)
                && v[2..].iter().all(|&a| a > 0);
            if !ok {
                return Err(format!(
                    "output_shape {v:?} must be (N, C, …) of input X {s:?} with positive spatial dims"
                ));
            }
            v.iter().map(|&d| d as usize).collect()
        }
    };
    // Zero dims count as 1: every partial product is bounded too.
    let size = |d: &[usize]| d.iter().try_fold(1usize, |a, &v| a.checked_mul(v.max(1)));
    if size(&s).is_none_or(|t| t > EXACT) {
        return Err(format!(
            "input X {s:?} has more than 2^24 elements: its indices would not be exact as f32"
        ));
    }
    let planes = s[0] * s[1];
    let lin: usize = s[2..].iter().product();
    let p = size(&out[2..]).filter(|_| size(&out).is_some_and(|t| t <= EXACT));
    let Some(p) = p else {
        return Err(format!(
            "the output {out:?} has more than 2^24 elements: its indices would not be exact as f32"
        ));
    };
    let one_hot = size(&[planes, lin, p]).filter(|&t| t <= ONE_HOT_LIMIT);
    if one_hot.is_none() {
        return Err(format!(
            "input X {s:?} unpooled to {out:?} needs a {planes}x{lin}x{p} one-hot: more than {ONE_HOT_LIMIT} elements"
        ));
    }
    let graph = &env.graph;
    let indices = match value(env, node, 1)? {
        Value::Var(v) => v.clone(),
        Value::Const(c) => {
            let v = match &c.data {
                ConstData::I64(v) => v.clone(),
                ConstData::F32(_) => c.as_i64()?,
            };
            // Each index must lie in its own (n, c) plane of the inferred output.
            if let Some((i, &j)) = v
                .iter()
                .enumerate()
                .find(|&(i, &j)| lin == 0 || j < 0 || j as usize / p != i / lin)
            {
                return Err(format!(
                    "index {j} (element {i}) is outside its plane of the output {out:?}"
                ));
            }
            let f: Vec<f32> = v.iter().map(|&j| j as f32).collect();
            constant(graph, &c.dims, &f)?
        }
    };
    if indices.shape() != s.as_slice() {
        return Err(format!(
            "indices I {:?} must have the shape of X {s:?}",
            indices.shape()
        ));
    }
    let offsets: Vec<f32> = (0..planes).map(|q| (q * p) as f32).collect();
    let positions: Vec<f32> = (0..p).map(|q| q as f32).collect();
    let order: Vec<f32> = (1..=lin).map(|q| q as f32).collect();
    let offsets = constant(graph, &[planes, 1, 1], &offsets)?;
    let positions = constant(graph, &[1, 1, p], &positions)?;
    let order = constant(graph, &[1, lin, 1], &order)?;
    let y = (|| {
        let local = indices.reshape(&[planes, lin, 1])?.sub(&offsets)?;
        let hit = local.binary(&positions, BinaryOp::Eq)?;
        // The last update to each position: the hit with the largest order.
        let ranked = hit.mul(&order)?;
        let last = ranked.reduce(ReduceOp::Max, 1, true)?;
        let keep = hit.mul(&ranked.binary(&last, BinaryOp::Eq)?)?;
        x.reshape(&[planes, 1, lin])?.matmul(&keep)?.reshape(&out)
    })()
    .map_err(err)?;
    Ok(vec![y.into()])
}
