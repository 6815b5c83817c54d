//! Building a [`Graph`] from a decoded [`Model`]: feeds become inputs with their symbolic
//! dims bound, initializers become parameters or constants, and each node goes through its
//! op function in [`super::ops`].

use std::sync::Arc;

use super::invalid;
use super::model::{Dim, Model, TensorData};
use super::ops::{self, Const, ConstData, Env, Value};
use super::proto::tensor_proto::DataType;
use crate::{Graph, Init, Result, Tensor, Var};

/// What the file's FLOAT initializers become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// Trainable parameters named as in the file (fine-tuning, reading them back by name).
    Params,
    /// Constants folded into the graph (inference only).
    Constants,
}

/// A model imported into a [`Graph`].
#[derive(Clone)]
pub struct Imported {
    /// The graph holding every node of the model.
    pub graph: Graph,
    /// The feeds' names, in the file's order (pass them to `Executor::run`).
    pub inputs: Vec<String>,
    /// The graph outputs by name, in the file's order.
    pub outputs: Vec<(String, Var)>,
    /// The parameters' names (empty with [`Weights::Constants`]).
    pub params: Vec<String>,
}

impl Model {
    /// Builds a [`Graph`] from the model. `dims` binds symbolic input dims by name
    /// (`&[("N", 4)]`); every op is checked first, and unsupported ones are reported together.
    pub fn import(&self, dims: &[(&str, usize)], weights: Weights) -> Result<Imported> {
        let origin = &self.origin;
        let graph_proto = self.graph()?;
        let unsupported = self.unsupported_nodes();
        if !unsupported.is_empty() {
            return Err(invalid(format!(
                "{origin}: unsupported operators: {}",
                unsupported.join(", ")
            )));
        }
        let g = Graph::new();
        let mut env = Env::new(g.clone(), self.opset);
        let mut inputs = Vec::new();
        for v in &self.inputs {
            // Integer inputs (token ids for Gather) are fed as i32 tensors; an INT64 feed's
            // values must fit (io::read_npy narrows `<i8` with that check).
            // DOUBLE and the half types are fed (and computed) as f32.
            let integer = matches!(v.dtype.as_str(), "INT64" | "INT32");
            let float = matches!(
                v.dtype.as_str(),
                "FLOAT" | "DOUBLE" | "FLOAT16" | "BFLOAT16"
            );
            if !float && !integer {
                return Err(invalid(format!(
                    "{origin}: input '{}' has element type {} (only FLOAT, DOUBLE, FLOAT16, \
                     BFLOAT16 (computed in f32), INT64 and INT32 inputs are supported)",
                    v.name, v.dtype
                )));
            }
            let declared = v.dims.as_ref().ok_or_else(|| {
                invalid(format!(
                    "{origin}: input '{}' has no declared shape",
                    v.name
                ))
            })?;
            let shape = declared
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => Ok(*n),
                    Dim::Symbolic(s) => dims
                        .iter()
                        .find(|(k, _)| k == s)
                        .map(|&(_, n)| n)
                        .ok_or_else(|| {
                            invalid(format!(
                                "{origin}: input '{}' dim {i} is symbolic '{s}': bind it, e.g. &[(\"{s}\", 1)]",
                                v.name
                            ))
                        }),
                    Dim::Unknown => Err(invalid(format!(
                        "{origin}: input '{}' dim {i} has neither a size nor a name",
                        v.name
                    ))),
                })
                .collect::<Result<Vec<usize>>>()?;
            // A declared shape whose element count overflows can never be fed, and every
            // op's size arithmetic downstream would have to guard against it: refuse it here.
            // (An empty one with huge other dims holds nothing and stays allowed.)
            let overflows = !shape.contains(&0)
                && shape
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .is_none();
            if overflows {
                return Err(invalid(format!(
                    "{origin}: input '{}' of shape {shape:?} has more elements than this \
                     machine can address",
                    v.name
                )));
            }
            let var = match integer {
                true => g.input_i32(&v.name, &shape),
                false => g.input(&v.name, &shape),
            };
            env.values.insert(v.name.clone(), var.into());
            if let Some(t) = DataType::from_str_name(&v.dtype) {
                env.dtypes.insert(v.name.clone(), t);
            }
            inputs.push(v.name.clone());
        }
        for t in &graph_proto.initializer {
            if let Ok(dt) = DataType::try_from(t.data_type()) {
                env.dtypes.insert(t.name().to_string(), dt);
            }
        }
        let mut params = Vec::new();
        for init in &self.initializers {
            match &init.data {
                TensorData::I64(v) => {
                    env.values.insert(
                        init.name.clone(),
                        Const::ints(init.dims.clone(), v.clone()).into(),
                    );
                }
                // A constant float initializer stays on the host until a node needs it,
                // so shape computations on it fold and unused ones cost nothing.
                TensorData::F32(v) if weights == Weights::Constants => {
                    env.values.insert(
                        init.name.clone(),
                        Const::floats(init.dims.clone(), v.clone()).into(),
                    );
                }
                TensorData::F32(v) => {
                    params.push(init.name.clone());
                    let var = g.param(&init.name, &init.dims, Init::Data(Arc::from(v.as_slice())));
                    env.values.insert(init.name.clone(), var.into());
                }
            }
        }
        for node in &graph_proto.node {
            let outs = ops::apply(&env, node).map_err(|e| {
                invalid(format!(
                    "{origin}: node '{}' ({}): {e}",
                    node.name(),
                    node.op_type()
                ))
            })?;
            let types = ops::output_types(&env, node);
            for ((name, value), t) in node.output.iter().zip(outs).zip(types) {
                if !name.is_empty() {
                    env.values.insert(name.clone(), value);
                    env.dtypes.insert(name.clone(), t);
                }
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let var = match env.values.get(&o.name) {
                    Some(Value::Var(v)) => v.clone(),
                    // An output known at import is still a graph output: a constant.
                    Some(Value::Const(c)) => {
                        // Graph values are f32: an integer output (a shape, a mask) is carried
                        // exactly where f32 holds it (every value up to 2^24, as ArgMax's
                        // indices; beyond, the ones f32 represents, such as -2^31) and refused
                        // where f32 would round it silently.
                        let v = match &c.data {
                            ConstData::F32(v) => v.clone(),
                            ConstData::I64(v) => {
                                if let Some(big) = v.iter().find(|&&x| (x as f32) as i64 != x) {
                                    return Err(invalid(format!(
                                        "{origin}: graph output '{}' is an integer value (dims {:?}) holding {big}, which f32 graph values cannot carry exactly (only every integer up to 2^24 and some beyond)",
                                        o.name, c.dims
                                    )));
                                }
                                v.iter().map(|&x| x as f32).collect()
                            }
                        };
                        let v = &v;
                        let t = Tensor::from_slice(&crate::Device::cpu(), v, &c.dims)?;
                        g.constant(&t)?
                    }
                    None => {
                        return Err(invalid(format!(
                            "{origin}: graph output '{}' is not produced by any node",
                            o.name
                        )))
                    }
                };
                // An output declared FLOAT16 or BFLOAT16 holds values of that type: the f32
                // result is rounded to it (a no-op on values already half).
                let var = match DataType::from_str_name(&o.dtype) {
                    Some(t @ (DataType::Float16 | DataType::Bfloat16)) => {
                        let from = env.dtypes.get(&o.name).copied();
                        ops::cast_var(&var, from.filter(|&f| f != t), t)
                            .map_err(|e| invalid(format!("{origin}: graph output '{}': {e}", o.name)))?
                    }
                    _ => var,
                };
                Ok((o.name.clone(), var))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Imported {
            graph: g,
            inputs,
            outputs,
            params,
        })
    }
}
