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

use super::shape::cast_const;
use super::{attr_int, dtype_of, host_numel, input_dims, Const, Env, FoldFn, OpFn, OpResult};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};

/// This family's operators on graph values: only the import-time form exists.
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
];

fn runtime_size(_: &Env, _: &NodeProto) -> OpResult {
    Err("size must be known at import (it sets the output's length)".into())
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
