//! One small function per ONNX operator, each mapping onto ordinary [`Var`] ops and holding
//! its opset differences. `apply` dispatches on the node's op type.

use super::{
    attr_float, attr_int, attr_ints, axis, const_input, err, input, one, opt_input, Const, Env,
    FoldFn, OpFn, OpResult, Value,
};
use crate::onnx::model::{initializer, TensorData};
use crate::onnx::proto::NodeProto;
use crate::Var;

/// The supported default-domain operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
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
    ("Dropout", dropout),
    ("Flatten", flatten),
    ("Reshape", reshape),
    ("Transpose", transpose),
];

fn unary(env: &Env, node: &NodeProto, f: fn(&Var) -> crate::Result<Var>) -> OpResult {
    one(f(&input(env, node, 0)?).map_err(err)?)
}

/// NumPy broadcasting, which wgrad's binary ops share with ONNX (opset >= 7).
fn binary(env: &Env, node: &NodeProto, f: fn(&Var, &Var) -> crate::Result<Var>) -> OpResult {
    one(f(&input(env, node, 0)?, &input(env, node, 1)?).map_err(err)?)
}

fn matmul(env: &Env, node: &NodeProto) -> OpResult {
    one(input(env, node, 0)?
        .matmul(&input(env, node, 1)?)
        .map_err(err)?)
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
    one(y)
}

/// Softmax / LogSoftmax. From opset 13 along `axis` (default -1); before, the input is
/// flattened to 2-D at `axis` (default 1) and normalised along the second dim.
fn softmax(env: &Env, node: &NodeProto, f: fn(&Var, isize) -> crate::Result<Var>) -> OpResult {
    let x = input(env, node, 0)?;
    if env.opset >= 13 {
        let a = axis(attr_int(node, "axis", -1), x.shape().len(), false)?;
        return one(f(&x, a as isize).map_err(err)?);
    }
    let shape = x.shape().to_vec();
    let a = axis(attr_int(node, "axis", 1), shape.len(), true)?;
    let flat = x.reshape(&flat2(&shape, a)?).map_err(err)?;
    one(f(&flat, 1).and_then(|y| y.reshape(&shape)).map_err(err)?)
}

/// (prod(dims[..a]), prod(dims[a..])); an error when a product overflows (a hostile file
/// may declare any dims).
fn flat2(shape: &[usize], a: usize) -> std::result::Result<[usize; 2], String> {
    Ok([numel(&shape[..a])?, numel(&shape[a..])?])
}

/// The product of `dims`, checked.
fn numel(dims: &[usize]) -> std::result::Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {dims:?} has too many elements"))
}

/// Identity passes any value through, a constant staying a constant.
fn identity(env: &Env, node: &NodeProto) -> OpResult {
    Ok(vec![super::value(env, node, 0)?.clone()])
}

/// Dropout (opsets 7–22). At inference it is the identity and its mask output is all ones.
/// In training mode (opset 12's `training_mode` input, known at import, true) it is
/// wgrad's seeded inverted dropout ([`Var::dropout`]) with probability `ratio` (input 1,
/// known at import, default 0.5), the node's `seed` attribute (default 0) and a step
/// counter of its own that advances every run, so each run draws a new mask; the mask
/// output is the same draw (dropout of ones). The masks are wgrad's generator's, not
/// NumPy's: only their distribution matches another runtime's.
fn dropout(env: &Env, node: &NodeProto) -> OpResult {
    let training = match super::opt_const_input(env, node, 2)? {
        Some(mode) => mode.as_i64()?.iter().any(|&m| m != 0),
        None if node.input.get(2).is_some_and(|n| !n.is_empty()) => {
            return Err("training_mode must be known at import".into())
        }
        None => false,
    };
    let wants_mask = node.output.get(1).is_some_and(|m| !m.is_empty());
    if !training {
        let mut outs = identity(env, node)?;
        if wants_mask {
            let dims = super::input_dims(env, node, 0)?;
            let n = super::host_numel(&dims)?;
            outs.push(Value::Const(Const::ints(dims, vec![1; n])));
        }
        return Ok(outs);
    }
    let p = match super::opt_const_input(env, node, 1)? {
        None => 0.5,
        Some(r) => match r.as_f32().as_slice() {
            [p] if (0.0..1.0).contains(p) => *p,
            v => return Err(format!("ratio {v:?} must be one value in [0, 1)")),
        },
    };
    let x = input(env, node, 0)?;
    let seed = attr_int(node, "seed", 0) as u64;
    let name = node.output.first().map_or("dropout", String::as_str);
    let g = x.graph();
    let (y, mask) = (|| {
        let step = g.step_counter(&format!("{name}.dropout_step"))?;
        let y = x.dropout(p, seed, &step)?;
        let mask = if wants_mask {
            let kept = g.full(1.0, x.shape()).dropout(p, seed, &step)?;
            Some(kept.scalar(crate::ops::elementwise::BinaryOp::Gt, 0.0, false)?)
        } else {
            None
        };
        Ok::<_, crate::Error>((y, mask))
    })()
    .map_err(err)?;
    Ok(std::iter::once(y).chain(mask).map(Value::Var).collect())
}

fn flatten(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let a = axis(attr_int(node, "axis", 1), x.shape().len(), true)?;
    one(x.reshape(&flat2(x.shape(), a)?).map_err(err)?)
}

/// Reshape: the target comes from an INT64 initializer or Constant; `0` copies the input's
/// dim (unless `allowzero`), `-1` is inferred.
fn reshape(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let target = &const_input(env, node, 1)?.as_i64()?;
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
    let total = numel(x.shape())?;
    if let Some(i) = infer {
        let known = numel(&shape)?;
        if known == 0 || total % known != 0 {
            return Err(format!(
                "cannot infer -1 in {target:?} for input shape {:?}",
                x.shape()
            ));
        }
        shape[i] = total / known;
    }
    // Checked here: the target comes from the file and its product may overflow.
    if numel(&shape)? != total {
        return Err(format!(
            "cannot reshape {:?} to {target:?} (resolved {shape:?})",
            x.shape()
        ));
    }
    one(x.reshape(&shape).map_err(err)?)
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
    one(x.permute(&perm).map_err(err)?)
}

/// Folds evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[("Constant", constant)];

/// `Constant`: its `value` tensor, or one of `value_float(s)` / `value_int(s)`.
fn constant(_: &Env, node: &NodeProto, _: &[Option<&Const>]) -> OpResult {
    let attr = node
        .attribute
        .first()
        .ok_or("a Constant needs one value attribute")?;
    let c = match attr.name() {
        "value" => {
            let t = attr.t.as_ref().ok_or("`value` holds no tensor")?;
            let init = initializer(t)?;
            match init.data {
                TensorData::F32(v) => Const::floats(init.dims, v),
                TensorData::I64(v) => Const::ints(init.dims, v),
            }
        }
        "value_float" => Const::floats(vec![], vec![attr.f()]),
        "value_floats" => Const::floats(vec![attr.floats.len()], attr.floats.clone()),
        "value_int" => Const::ints(vec![], vec![attr.i()]),
        "value_ints" => Const::ints(vec![attr.ints.len()], attr.ints.clone()),
        other => return Err(format!("Constant attribute `{other}` is not supported")),
    };
    Ok(vec![Value::Const(c)])
}
