//! ONNX operators: see the family list in `super`. Gather on runtime values: the data a
//! graph value (an embedding table, activations), the indices an integer constant or an
//! integer graph input, through [`Var::gather`]. Gather on constant data and indices
//! (shape computations) folds elsewhere (`shape.rs`).

use super::{attr_int, axis, err, input, one, value, Env, FoldFn, OpFn, OpResult, Value};
use crate::onnx::proto::NodeProto;
use crate::{Device, Tensor};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("Gather", gather)];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

/// Gather (opsets 1, 11, 13): slices of `data` along `axis` (default 0) at `indices`,
/// output `data[..axis] ++ indices ++ data[axis+1..]`; negative indices count from the end
/// (opset 11+; earlier opsets leave them undefined, and the same rule is used). Constant
/// indices are checked against the axis here; those of a graph input when the graph runs.
fn gather(env: &Env, node: &NodeProto) -> OpResult {
    let data = input(env, node, 0)?;
    let shape = data.shape().to_vec();
    if shape.is_empty() {
        return Err("data must have rank >= 1".into());
    }
    let a = axis(attr_int(node, "axis", 0), shape.len(), false)?;
    let n = shape[a] as i64;
    let indices = match value(env, node, 1)? {
        Value::Var(v) => v.clone(),
        Value::Const(c) => {
            let v = c.as_i64()?;
            if let Some(bad) = v.iter().find(|&&j| j < -n || j >= n) {
                return Err(format!(
                    "index {bad} outside -{n}..{n} for axis {a} of data {shape:?}"
                ));
            }
            // In range of an axis that fits one tensor, so each fits i32; checked anyway.
            let ints = v
                .iter()
                .map(|&j| i32::try_from(j).map_err(|_| format!("index {j} does not fit i32")))
                .collect::<Result<Vec<i32>, String>>()?;
            let t = Tensor::from_slice(&Device::cpu(), &ints, &c.dims).map_err(err)?;
            env.graph.constant_i32(&t).map_err(err)?
        }
    };
    one(data.gather(&indices, a as isize).map_err(err)?)
}
