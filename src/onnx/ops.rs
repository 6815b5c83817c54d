//! One small function per ONNX operator, each mapping onto ordinary [`Var`] ops and holding
//! its opset differences. `apply` dispatches on the node's op type.

use std::collections::HashMap;

use super::proto::{attribute_proto::AttributeType, NodeProto};
use crate::{Graph, Var};

/// What an op function may read while the graph is built.
pub(crate) struct Env {
    /// The graph under construction.
    pub graph: Graph,
    /// The default-domain opset of the model.
    pub opset: i64,
    /// Float values by ONNX name.
    pub vars: HashMap<String, Var>,
    /// INT64 initializers and constants by name (shape operands).
    pub ints: HashMap<String, Vec<i64>>,
}

type OpResult = std::result::Result<Vec<Var>, String>;
type OpFn = fn(&Env, &NodeProto) -> OpResult;

/// The supported default-domain operators.
const OPS: &[(&str, OpFn)] = &[
    ("MatMul", matmul),
    ("Gemm", gemm),
    ("Add", |e, n| binary(e, n, Var::add)),
    ("Sub", |e, n| binary(e, n, Var::sub)),
    ("Mul", |e, n| binary(e, n, Var::mul)),
    ("Div", |e, n| binary(e, n, Var::div)),
    ("Relu", |e, n| unary(e, n, Var::relu)),
    ("Sigmoid", |e, n| unary(e, n, Var::sigmoid)),
    ("Tanh", |e, n| unary(e, n, Var::tanh)),
    ("Exp", |e, n| unary(e, n, Var::exp)),
    ("Log", |e, n| unary(e, n, Var::log)),
    ("Sqrt", |e, n| unary(e, n, Var::sqrt)),
    ("Neg", |e, n| unary(e, n, Var::neg)),
    ("Abs", |e, n| unary(e, n, Var::abs)),
    ("Softmax", |e, n| softmax(e, n, Var::softmax)),
    ("LogSoftmax", |e, n| softmax(e, n, Var::log_softmax)),
    ("Identity", identity),
    ("Cast", cast),
    ("Dropout", dropout),
    ("Flatten", flatten),
    ("Reshape", reshape),
    ("Transpose", transpose),
];

/// Whether `node` can be imported (`Constant` is handled by the importer itself).
pub(crate) fn supported(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
        && (node.op_type() == "Constant" || OPS.iter().any(|(t, _)| *t == node.op_type()))
}

/// Builds `node`'s outputs (in order) from values already in `env`.
pub(crate) fn apply(env: &Env, node: &NodeProto) -> OpResult {
    let f = OPS
        .iter()
        .find(|(t, _)| *t == node.op_type())
        .map(|(_, f)| f)
        .ok_or_else(|| "unsupported operator".to_string())?;
    f(env, node)
}

/// The float value of input `i`.
fn input(env: &Env, node: &NodeProto, i: usize) -> std::result::Result<Var, String> {
    let name = node
        .input
        .get(i)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("missing input {i}"))?;
    env.vars
        .get(name)
        .cloned()
        .ok_or_else(|| format!("input '{name}' is not a float value defined before this node"))
}

/// An optional float input (absent or named "").
fn opt_input(env: &Env, node: &NodeProto, i: usize) -> std::result::Result<Option<Var>, String> {
    match node.input.get(i) {
        Some(n) if !n.is_empty() => input(env, node, i).map(Some),
        _ => Ok(None),
    }
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.i)
        .unwrap_or(default)
}

fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.f)
        .unwrap_or(default)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name() == name && a.r#type() == AttributeType::Ints)
        .map(|a| a.ints.clone())
}

fn err(e: crate::Error) -> String {
    e.to_string()
}

/// A negative axis counts from the end; checked against `rank` (`inclusive` allows `rank`).
fn axis(a: i64, rank: usize, inclusive: bool) -> std::result::Result<usize, String> {
    let r = rank as i64;
    let n = if a < 0 { a + r } else { a };
    let hi = if inclusive { r } else { r - 1 };
    if n < 0 || n > hi {
        return Err(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(n as usize)
}

fn unary(env: &Env, node: &NodeProto, f: fn(&Var) -> crate::Result<Var>) -> OpResult {
    Ok(vec![f(&input(env, node, 0)?).map_err(err)?])
}

/// NumPy broadcasting, which wgrad's binary ops share with ONNX (opset >= 7).
fn binary(env: &Env, node: &NodeProto, f: fn(&Var, &Var) -> crate::Result<Var>) -> OpResult {
    Ok(vec![
        f(&input(env, node, 0)?, &input(env, node, 1)?).map_err(err)?
    ])
}

fn matmul(env: &Env, node: &NodeProto) -> OpResult {
    Ok(vec![input(env, node, 0)?
        .matmul(&input(env, node, 1)?)
        .map_err(err)?])
}

/// Gemm: `alpha·op(A)·op(B) + beta·C`, C broadcast to (M, N).
fn gemm(env: &Env, node: &NodeProto) -> OpResult {
    let (a, b) = (input(env, node, 0)?, input(env, node, 1)?);
    let ta = attr_int(node, "transA", 0) != 0;
    let tb = attr_int(node, "transB", 0) != 0;
    let (alpha, beta) = (
        attr_float(node, "alpha", 1.0),
        attr_float(node, "beta", 1.0),
    );
    let mut y = a.matmul_t(&b, ta, tb).map_err(err)?;
    if alpha != 1.0 {
        y = y.mul_scalar(alpha).map_err(err)?;
    }
    if let Some(c) = opt_input(env, node, 2)? {
        let c = if beta != 1.0 {
            c.mul_scalar(beta).map_err(err)?
        } else {
            c
        };
        y = y.add(&c).map_err(err)?;
    }
    Ok(vec![y])
}

/// Softmax / LogSoftmax. From opset 13 along `axis` (default -1); before, the input is
/// flattened to 2-D at `axis` (default 1) and normalised along the second dim.
fn softmax(env: &Env, node: &NodeProto, f: fn(&Var, isize) -> crate::Result<Var>) -> OpResult {
    let x = input(env, node, 0)?;
    if env.opset >= 13 {
        let a = axis(attr_int(node, "axis", -1), x.shape().len(), false)?;
        return Ok(vec![f(&x, a as isize).map_err(err)?]);
    }
    let shape = x.shape().to_vec();
    let a = axis(attr_int(node, "axis", 1), shape.len(), true)?;
    let flat = x.reshape(&flat2(&shape, a)).map_err(err)?;
    Ok(vec![f(&flat, 1)
        .and_then(|y| y.reshape(&shape))
        .map_err(err)?])
}

/// (prod(dims[..a]), prod(dims[a..])).
fn flat2(shape: &[usize], a: usize) -> [usize; 2] {
    [shape[..a].iter().product(), shape[a..].iter().product()]
}

fn identity(env: &Env, node: &NodeProto) -> OpResult {
    Ok(vec![input(env, node, 0)?])
}

/// Cast to FLOAT: every float value of an imported graph is already f32 (FLOAT16 and
/// BFLOAT16 initializers widen exactly on import), so it is the identity; other targets
/// would round or change the dtype, which the graph does not do, and are refused.
fn cast(env: &Env, node: &NodeProto) -> OpResult {
    let to = attr_int(node, "to", 0);
    if to != crate::onnx::proto::tensor_proto::DataType::Float as i64 {
        return Err(format!(
            "Cast to element type {to} is not supported (only FLOAT, 1)"
        ));
    }
    identity(env, node)
}

/// Dropout at inference is the identity; its mask output is not supported.
fn dropout(env: &Env, node: &NodeProto) -> OpResult {
    if node.output.get(1).is_some_and(|m| !m.is_empty()) {
        return Err("the mask output is not supported".into());
    }
    identity(env, node)
}

fn flatten(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let a = axis(attr_int(node, "axis", 1), x.shape().len(), true)?;
    Ok(vec![x.reshape(&flat2(x.shape(), a)).map_err(err)?])
}

/// Reshape: the target comes from an INT64 initializer or Constant; `0` copies the input's
/// dim (unless `allowzero`), `-1` is inferred.
fn reshape(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let name = node.input.get(1).cloned().unwrap_or_default();
    let target = env.ints.get(&name).ok_or_else(|| {
        format!("shape '{name}' must be an INT64 initializer or Constant (computed shapes are not supported yet)")
    })?;
    let allowzero = attr_int(node, "allowzero", 0) != 0;
    let mut shape = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            0 if !allowzero => shape.push(*x.shape().get(i).ok_or_else(|| {
                format!(
                    "shape {target:?}: dim {i} is 0 but the input has rank {}",
                    x.shape().len()
                )
            })?),
            d if d >= 0 => shape.push(d as usize),
            _ => return Err(format!("invalid shape {target:?}")),
        }
    }
    let numel: usize = x.shape().iter().product();
    if let Some(i) = infer {
        let known: usize = shape.iter().product();
        if known == 0 || numel % known != 0 {
            return Err(format!(
                "cannot infer -1 in {target:?} for input shape {:?}",
                x.shape()
            ));
        }
        shape[i] = numel / known;
    }
    Ok(vec![x.reshape(&shape).map_err(err)?])
}

/// Transpose: output dim k is input dim perm[k]; the default reverses the dims.
fn transpose(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let r = x.shape().len();
    let perm = match attr_ints(node, "perm") {
        Some(p) => p
            .iter()
            .map(|&a| axis(a, r, false))
            .collect::<std::result::Result<Vec<usize>, String>>()?,
        None => (0..r).rev().collect(),
    };
    Ok(vec![x.permute(&perm).map_err(err)?])
}
