//! ONNX generators whose output is a constant known at import.
//!
//! EyeLike: ones on diagonal `k` of a 2-D tensor shaped like the input (only its shape is
//! read, so a graph value works too), in `dtype` or the input's element type.
//!
//! Window generators (opset 17): HannWindow, HammingWindow, BlackmanWindow, the
//! generalised cosine windows `w[n] = a0 − a1·cos(2πn/N) + a2·cos(4πn/N)` with N the size
//! (periodic, the default) or size − 1 (symmetric). The output's length is the value of
//! `size`, so it must be known at import: each window folds to a constant, computed in f64
//! and cast to `output_datatype` (FLOAT by default).
//!
//! MelWeightMatrix (opset 17): the `(dft_length/2 + 1, num_mel_bins)` matrix of triangular
//! filters on the mel scale, folded at import in f64 as ONNX's reference computes it (bin
//! edges floored to spectrogram bins, so a filter may be a single 1).

use super::shape::cast_const;
use super::{attr_int, dtype_of, host_numel, input_dims, Const, Env, FoldFn, OpFn, OpResult};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};

/// This family's operators on graph values: only the import-time form exists (an op with a
/// fold and no entry here, MelWeightMatrix, is refused naming its first graph input).
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("EyeLike", eye_like),
    ("HannWindow", runtime_size),
    ("HammingWindow", runtime_size),
    ("BlackmanWindow", runtime_size),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[
    ("HannWindow", |_, n, c| window(n, c, [0.5, 0.5, 0.0])),
    // a0 = 25/46, as ONNX (and PyTorch) define it, not the textbook 0.54.
    ("HammingWindow", |_, n, c| {
        window(n, c, [25.0 / 46.0, 21.0 / 46.0, 0.0])
    }),
    ("BlackmanWindow", |_, n, c| window(n, c, [0.42, 0.5, 0.08])),
    ("MelWeightMatrix", mel_weight_matrix),
];

fn runtime_size(_: &Env, _: &NodeProto) -> OpResult {
    Err("size must be known at import (it sets the output's length)".into())
}

/// Constant input `i`'s single value as f64.
fn scalar_f64(c: &[Option<&Const>], i: usize, name: &str) -> Result<f64, String> {
    let k = c
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("missing input {i} ({name})"))?;
    match &k.data {
        super::ConstData::F32(v) if v.len() == 1 => Ok(v[0] as f64),
        super::ConstData::I64(v) if v.len() == 1 => Ok(v[0] as f64),
        _ => Err(format!("{name} must be a scalar, got dims {:?}", k.dims)),
    }
}

/// MelWeightMatrix: see the module comment.
fn mel_weight_matrix(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let int = |i: usize, name: &str| -> Result<i64, String> {
        let v = scalar_f64(c, i, name)?;
        if v.fract() != 0.0 {
            return Err(format!("{name} = {v} must be an integer"));
        }
        Ok(v as i64)
    };
    let mels = int(0, "num_mel_bins")?;
    let dft = int(1, "dft_length")?;
    let rate = int(2, "sample_rate")?;
    let lo = scalar_f64(c, 3, "lower_edge_hertz")?;
    let hi = scalar_f64(c, 4, "upper_edge_hertz")?;
    if mels <= 0 || dft <= 0 || rate <= 0 {
        return Err(format!(
            "num_mel_bins {mels}, dft_length {dft} and sample_rate {rate} must be positive"
        ));
    }
    if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
        return Err(format!(
            "the edges {lo} Hz and {hi} Hz must be finite with 0 <= lower <= upper"
        ));
    }
    let bins = (dft / 2 + 1) as usize;
    let m = mels as usize;
    host_numel(&[bins, m])?;
    // Mel scale 2595·log10(1 + f/700); num_mel_bins + 2 edges, evenly spaced in mel with
    // the step (high − low)/(num_mel_bins + 2), as the reference has it.
    let mel = |f: f64| 2595.0 * (f / 700.0).ln_1p() / std::f64::consts::LN_10;
    let (lo_mel, hi_mel) = (mel(lo), mel(hi));
    let step = (hi_mel - lo_mel) / (m + 2) as f64;
    let edges: Vec<i64> = (0..m + 2)
        .map(|i| {
            let f =
                700.0 * ((i as f64 * step + lo_mel) / 2595.0 * std::f64::consts::LN_10).exp_m1();
            (((dft + 1) as f64 * f) / rate as f64).floor() as i64
        })
        .collect();
    let mut out = vec![0f32; bins * m];
    let mut set = |j: i64, i: usize, v: f64| -> Result<(), String> {
        let row = usize::try_from(j)
            .ok()
            .filter(|&r| r < bins)
            .ok_or_else(|| {
                format!("filter {i} reaches spectrogram bin {j}, past the {bins} bins of dft_length {dft}")
            })?;
        out[row * m + i] = v as f32;
        Ok(())
    };
    for i in 0..m {
        let (l, cen, h) = (edges[i], edges[i + 1], edges[i + 2]);
        if cen == l {
            set(cen, i, 1.0)?;
        } else {
            for j in l..=cen {
                set(j, i, (j - l) as f64 / (cen - l) as f64)?;
            }
        }
        for j in cen..h {
            set(j, i, (h - j) as f64 / (h - cen) as f64)?;
        }
    }
    let to = attr_int(node, "output_datatype", DataType::Float as i64);
    let dt = i32::try_from(to)
        .ok()
        .and_then(|t| DataType::try_from(t).ok())
        .filter(|&t| t != DataType::Undefined)
        .ok_or_else(|| format!("output_datatype {to} is not an element type"))?;
    Ok(vec![
        cast_const(&Const::floats(vec![bins, m], out), dt)?.into()
    ])
}

/// The window of the given cosine coefficients `[a0, a1, a2]`.
fn window(node: &NodeProto, c: &[Option<&Const>], [a0, a1, a2]: [f64; 3]) -> OpResult {
    let size = match c.first().copied().flatten().map(|s| s.as_i64()) {
        Some(Ok(v)) if v.len() == 1 => v[0],
        Some(Ok(v)) => return Err(format!("size must be a scalar, got {} values", v.len())),
        Some(Err(e)) => return Err(e),
        None => return Err("missing input 0 (size)".into()),
    };
    let n = usize::try_from(size).map_err(|_| format!("size {size} is negative"))?;
    host_numel(&[n])?;
    let periodic = attr_int(node, "periodic", 1) != 0;
    let to = attr_int(node, "output_datatype", DataType::Float as i64);
    let dt = i32::try_from(to)
        .ok()
        .and_then(|t| DataType::try_from(t).ok())
        .filter(|&t| t != DataType::Undefined)
        .ok_or_else(|| format!("output_datatype {to} is not an element type"))?;
    // N: the period; a symmetric window of one point is the single value at n = 0.
    let period = if periodic { n } else { n.saturating_sub(1) }.max(1) as f64;
    let tau = std::f64::consts::TAU;
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let t = tau * i as f64 / period;
            (a0 - a1 * t.cos() + a2 * (2.0 * t).cos()) as f32
        })
        .collect();
    Ok(vec![cast_const(&Const::floats(vec![n], values), dt)?.into()])
}

/// EyeLike (opsets 9, 22): see the module comment.
fn eye_like(env: &Env, node: &NodeProto) -> OpResult {
    let dims = input_dims(env, node, 0)?;
    let &[rows, cols] = dims.as_slice() else {
        return Err(format!("input {dims:?} must be 2-D"));
    };
    host_numel(&dims)?;
    let k = attr_int(node, "k", 0);
    let dt = match node.attribute.iter().find(|a| a.name() == "dtype") {
        Some(_) => {
            let t = attr_int(node, "dtype", 0);
            i32::try_from(t)
                .ok()
                .and_then(|t| DataType::try_from(t).ok())
                .filter(|&t| t != DataType::Undefined)
                .ok_or_else(|| format!("dtype {t} is not an element type"))?
        }
        None => dtype_of(env, node, 0).unwrap_or(DataType::Float),
    };
    let values: Vec<f32> = (0..rows * cols)
        .map(|e| {
            let (i, j) = ((e / cols) as i64, (e % cols) as i64);
            if j - i == k {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(vec![cast_const(&Const::floats(dims, values), dt)?.into()])
}
