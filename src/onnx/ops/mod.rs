//! ONNX operators, one family per file, each op one small function that maps a node onto
//! ordinary [`Var`] ops and holds its opset differences:
//!
//! - `basic.rs`: products, element-wise arithmetic, softmax, simple layout ops;
//! - `conv.rs`: convolution and pooling;
//! - `norm.rs`: normalisation (batch, instance, layer, group, LRN);
//! - `shape.rs`: shape and layout ops, and folding of shape-computing subgraphs;
//! - `math.rs`: activations, unary maths, comparison and selection, reductions;
//! - `gather.rs`: Gather on runtime values (rows, as in embeddings);
//! - `attention.rs`: Attention and RotaryEmbedding, as compositions;
//! - `loss.rs`: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss;
//! - `index.rs`: GatherElements, Scatter*, Trilu, CumSum, TopK, OneHot;
//! - `dtype.rs`: element types (what each value is in the file) and Cast / CastLike;
//! - `int.rs`: integer-only operators (bit shifts, bitwise logic), folded on constants;
//! - `resize.rs`: Resize, one constant interpolation matrix (or gather) per axis;
//! - `quant.rs`: QuantizeLinear, DequantizeLinear and the integer / quantized products.
//! - `det.rs`: Det, an LU factorisation unrolled into graph ops;
//! - `vision.rs`: RoiAlign and DeformConv, bilinear sampling composed as products.
//!
//! Values are either graph [`Var`]s or host constants ([`Const`]): INT64 initializers,
//! `Constant` nodes, and anything computed only from constants. A node whose inputs are all
//! constants and whose op has a fold function (`FOLDS` of a family) is evaluated at import,
//! so `Shape → Gather → Concat → Reshape` never reaches the graph.

mod attention;
mod basic;
mod conv;
mod det;
mod dtype;
mod einsum;
mod fft;
mod gather;
mod generator;
mod grid;
mod index;
mod int;
mod loss;
mod math;
mod norm;
mod quant;
mod resize;
mod rnn;
mod scan;
mod select;
mod shape;
mod vision;

use std::cell::RefCell;
use std::collections::HashMap;

use super::proto::{attribute_proto::AttributeType, tensor_proto::DataType, NodeProto};
use crate::{Graph, Tensor, Var};

/// A value known at import time: dims and row-major data.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Const {
    /// Its dims (empty for a scalar).
    pub dims: Vec<usize>,
    /// Its elements.
    pub data: ConstData,
}

/// The elements of a [`Const`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ConstData {
    /// FLOAT (and FLOAT16/BFLOAT16 widened) values.
    F32(Vec<f32>),
    /// INT64 values (also BOOL as 0/1 and other integer types widened).
    I64(Vec<i64>),
}

impl Const {
    /// An INT64 constant.
    pub fn ints(dims: Vec<usize>, v: Vec<i64>) -> Const {
        Const {
            dims,
            data: ConstData::I64(v),
        }
    }

    /// A FLOAT constant.
    pub fn floats(dims: Vec<usize>, v: Vec<f32>) -> Const {
        Const {
            dims,
            data: ConstData::F32(v),
        }
    }

    /// Its elements as i64 (floats must be integral).
    pub fn as_i64(&self) -> std::result::Result<Vec<i64>, String> {
        match &self.data {
            ConstData::I64(v) => Ok(v.clone()),
            ConstData::F32(v) => v
                .iter()
                .map(|&x| {
                    if x.fract() == 0.0 && x.abs() < 9.0e15 {
                        Ok(x as i64)
                    } else {
                        Err(format!("expected integers, got {x}"))
                    }
                })
                .collect(),
        }
    }

    /// Its elements as f32.
    pub fn as_f32(&self) -> Vec<f32> {
        match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Its element count.
    #[allow(dead_code)] // for the family files
    pub fn numel(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }
}

/// What a node input or output is while the graph is built.
#[derive(Clone)]
pub(crate) enum Value {
    /// A value computed by the graph.
    Var(Var),
    /// A value known at import time.
    Const(Const),
}

impl From<Var> for Value {
    fn from(v: Var) -> Value {
        Value::Var(v)
    }
}

impl From<Const> for Value {
    fn from(c: Const) -> Value {
        Value::Const(c)
    }
}

/// What an op function may read while the graph is built.
pub(crate) struct Env {
    /// The graph under construction.
    pub graph: Graph,
    /// The default-domain opset of the model.
    pub opset: i64,
    /// Every value defined so far, by ONNX name.
    pub values: HashMap<String, Value>,
    /// Every value's ONNX element type, by name, as the file has it (graph values are f32
    /// whatever it says; integer folds and Cast need the declared width and signedness).
    pub dtypes: HashMap<String, DataType>,
    /// Graph constants already made from float [`Const`]s, so each is uploaded once.
    materialized: RefCell<HashMap<String, Var>>,
    /// A convolution's output with its bias added, by node id: the output before the bias,
    /// the bias (C) and its name, so a BatchNormalization after it folds the bias into its
    /// shift.
    pub conv_bias: RefCell<HashMap<crate::graph::NodeId, (Var, Var, String)>>,
}

impl Env {
    /// An empty environment for `graph` at `opset`.
    pub fn new(graph: Graph, opset: i64) -> Env {
        Env {
            graph,
            opset,
            values: HashMap::new(),
            dtypes: HashMap::new(),
            materialized: RefCell::new(HashMap::new()),
            conv_bias: RefCell::new(HashMap::new()),
        }
    }
}

pub(crate) type OpResult = std::result::Result<Vec<Value>, String>;
/// Builds a node's outputs from values in the environment.
pub(crate) type OpFn = fn(&Env, &NodeProto) -> OpResult;
/// Evaluates a node at import from its inputs, all constants (absent optional inputs are
/// `None`).
pub(crate) type FoldFn = fn(&Env, &NodeProto, &[Option<&Const>]) -> OpResult;

/// Every family's op table.
fn op_tables() -> [&'static [(&'static str, OpFn)]; 22] {
    [
        dtype::OPS,
        int::OPS,
        resize::OPS,
        basic::OPS,
        conv::OPS,
        norm::OPS,
        shape::OPS,
        math::OPS,
        gather::OPS,
        attention::OPS,
        loss::OPS,
        index::OPS,
        scan::OPS,
        einsum::OPS,
        generator::OPS,
        rnn::OPS,
        fft::OPS,
        select::OPS,
        grid::OPS,
        quant::OPS,
        det::OPS,
        vision::OPS,
    ]
}

/// Every family's fold table.
fn fold_tables() -> [&'static [(&'static str, FoldFn)]; 15] {
    [
        dtype::FOLDS,
        int::FOLDS,
        resize::FOLDS,
        basic::FOLDS,
        conv::FOLDS,
        norm::FOLDS,
        shape::FOLDS,
        math::FOLDS,
        gather::FOLDS,
        attention::FOLDS,
        loss::FOLDS,
        index::FOLDS,
        scan::FOLDS,
        generator::FOLDS,
        quant::FOLDS,
    ]
}

fn find_op(op: &str) -> Option<OpFn> {
    op_tables()
        .into_iter()
        .flatten()
        .find(|(t, _)| *t == op)
        .map(|(_, f)| *f)
}

fn find_fold(op: &str) -> Option<FoldFn> {
    fold_tables()
        .into_iter()
        .flatten()
        .find(|(t, _)| *t == op)
        .map(|(_, f)| *f)
}

pub(crate) use dtype::{cast_var, output_types};

/// The element type of input `i` as the file has it (`None` when absent or unknown).
pub(crate) fn dtype_of(env: &Env, node: &NodeProto, i: usize) -> Option<DataType> {
    node.input
        .get(i)
        .filter(|n| !n.is_empty())
        .and_then(|n| env.dtypes.get(n))
        .copied()
}

/// Whether `node` can be imported.
pub(crate) fn supported(node: &NodeProto) -> bool {
    matches!(node.domain(), "" | "ai.onnx")
        && (find_op(node.op_type()).is_some() || find_fold(node.op_type()).is_some())
}

/// Builds `node`'s outputs (in order): folded at import when every input is a constant
/// and the op can fold, otherwise as graph ops.
pub(crate) fn apply(env: &Env, node: &NodeProto) -> OpResult {
    let op = node.op_type();
    if let Some(fold) = find_fold(op) {
        let consts: Option<Vec<Option<&Const>>> = node
            .input
            .iter()
            .map(|name| match name.as_str() {
                "" => Some(None),
                n => match env.values.get(n) {
                    Some(Value::Const(c)) => Some(Some(c)),
                    _ => None,
                },
            })
            .collect();
        if let Some(consts) = consts {
            return fold(env, node, &consts);
        }
    }
    let f = find_op(op).ok_or_else(|| {
        // Name the input that is not a constant, so a caller can bind it.
        match node
            .input
            .iter()
            .find(|n| matches!(env.values.get(n.as_str()), Some(Value::Var(_))))
        {
            Some(n) => format!(
                "input '{n}' must be known at import: this operator is only supported on \
                 values known at import (constants)"
            ),
            None => {
                "this operator is only supported on values known at import (constants)".to_string()
            }
        }
    })?;
    f(env, node)
}

/// The value named by input `i` (absent or "" is an error).
pub(crate) fn value<'a>(
    env: &'a Env,
    node: &NodeProto,
    i: usize,
) -> std::result::Result<&'a Value, String> {
    let name = node
        .input
        .get(i)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("missing input {i}"))?;
    env.values
        .get(name)
        .ok_or_else(|| format!("input '{name}' is not defined before this node"))
}

/// Ops whose graph form only selects, moves or compares elements, so an integer constant
/// input (|x| <= 2^24) computes exactly in f32 and the output carries integers exactly.
const EXACT_ON_INTEGERS: &[&str] = &["Pad", "MaxPool", "ReduceMax", "ReduceMin", "Clip"];

/// Input `i` as a graph value; a float constant becomes a graph constant (once per name),
/// an integer one too for the ops in [`EXACT_ON_INTEGERS`].
pub(crate) fn input(env: &Env, node: &NodeProto, i: usize) -> std::result::Result<Var, String> {
    input_as(env, node, i, EXACT_ON_INTEGERS.contains(&node.op_type()))
}

/// Input `i` as a graph value, an integer constant too (refused past 2^24, where f32 stops
/// holding every integer): for ops that keep integer values exact themselves (`quant.rs`).
pub(crate) fn int_input(env: &Env, node: &NodeProto, i: usize) -> std::result::Result<Var, String> {
    input_as(env, node, i, true)
}

fn input_as(
    env: &Env,
    node: &NodeProto,
    i: usize,
    integers: bool,
) -> std::result::Result<Var, String> {
    match value(env, node, i)? {
        Value::Var(v) => Ok(v.clone()),
        Value::Const(c) => {
            let name = &node.input[i];
            let integer = matches!(c.data, ConstData::I64(_));
            if integer && !integers {
                return Err(format!(
                    "input '{name}' is an integer constant where a float value is needed"
                ));
            }
            if let Some(v) = env.materialized.borrow().get(name) {
                return Ok(v.clone());
            }
            if c.numel() == 0 {
                return Err(format!(
                    "input '{name}' is empty (dims {:?}): graph values hold at least one element",
                    c.dims
                ));
            }
            let ints;
            let data = match &c.data {
                ConstData::F32(data) => data,
                ConstData::I64(v) => {
                    if let Some(big) = v.iter().find(|x| x.unsigned_abs() > 1 << 24) {
                        return Err(format!(
                            "input '{name}': integer {big} is not exact as f32 (|x| > 2^24)"
                        ));
                    }
                    ints = v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
                    &ints
                }
            };
            let v = Tensor::from_slice(&crate::Device::cpu(), data, &c.dims)
                .and_then(|t| env.graph.constant(&t))
                .map_err(err)?;
            env.materialized
                .borrow_mut()
                .insert(name.clone(), v.clone());
            Ok(v)
        }
    }
}

/// An optional graph input (absent or named "").
pub(crate) fn opt_input(
    env: &Env,
    node: &NodeProto,
    i: usize,
) -> std::result::Result<Option<Var>, String> {
    match node.input.get(i) {
        Some(n) if !n.is_empty() => input(env, node, i).map(Some),
        _ => Ok(None),
    }
}

/// Input `i`, which must be known at import (a shape, axes, pads...).
pub(crate) fn const_input<'a>(
    env: &'a Env,
    node: &NodeProto,
    i: usize,
) -> std::result::Result<&'a Const, String> {
    match value(env, node, i)? {
        Value::Const(c) => Ok(c),
        Value::Var(_) => Err(format!(
            "input '{}' must be known at import (an initializer, a Constant, or computed from them)",
            node.input[i]
        )),
    }
}

/// An optional constant input (absent or named "").
#[allow(dead_code)] // for the family files
pub(crate) fn opt_const_input<'a>(
    env: &'a Env,
    node: &NodeProto,
    i: usize,
) -> std::result::Result<Option<&'a Const>, String> {
    match node.input.get(i) {
        Some(n) if !n.is_empty() => const_input(env, node, i).map(Some),
        _ => Ok(None),
    }
}

/// The dims of input `i`, graph value or constant.
#[allow(dead_code)] // for the family files
pub(crate) fn input_dims(
    env: &Env,
    node: &NodeProto,
    i: usize,
) -> std::result::Result<Vec<usize>, String> {
    Ok(match value(env, node, i)? {
        Value::Var(v) => v.shape().to_vec(),
        Value::Const(c) => c.dims.clone(),
    })
}

pub(crate) fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.i)
        .unwrap_or(default)
}

pub(crate) fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.f)
        .unwrap_or(default)
}

pub(crate) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name() == name && a.r#type() == AttributeType::Ints)
        .map(|a| a.ints.clone())
}

#[allow(dead_code)] // for the family files
pub(crate) fn attr_string(node: &NodeProto, name: &str) -> Option<String> {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

pub(crate) fn err(e: crate::Error) -> String {
    e.to_string()
}

/// A negative axis counts from the end; checked against `rank` (`inclusive` allows `rank`).
pub(crate) fn axis(a: i64, rank: usize, inclusive: bool) -> std::result::Result<usize, String> {
    let r = rank as i64;
    let n = if a < 0 { a + r } else { a };
    let hi = if inclusive { r } else { r - 1 };
    if n < 0 || n > hi {
        return Err(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(n as usize)
}

/// One graph output.
pub(crate) fn one(v: Var) -> OpResult {
    Ok(vec![Value::Var(v)])
}

/// The product of `dims`, some dims of an input of shape `shape`, checked: an input with
/// a zero dim holds no elements, so its other dims may multiply past any count.
pub(crate) fn dims_product(dims: &[usize], shape: &[usize]) -> std::result::Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= crate::shape::MAX_ELEMENTS)
        .ok_or_else(|| {
            format!("dims {dims:?} of input {shape:?} multiply past the addressable element count")
        })
}

/// The largest constant computed at import (elements): bigger ones are refused with an
/// error rather than exhausting host memory (a tiny model can ask for gigabytes).
pub(crate) const HOST_LIMIT: usize = 1 << 26;

/// The element count of a constant of `dims` computed at import, within [`HOST_LIMIT`],
/// checked before anything is allocated. Zero dims count as 1 in the bound, so every
/// partial product, stride and per-axis index list of the dims is bounded too (an empty
/// constant of dims [0, 2^40] is refused, not iterated).
pub(crate) fn host_numel(dims: &[usize]) -> std::result::Result<usize, String> {
    let bound = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d.max(1)));
    match bound {
        Some(b) if b <= HOST_LIMIT => Ok(dims.iter().product()),
        _ => Err(format!(
            "a constant of dims {dims:?} is over the {HOST_LIMIT} elements computed at import"
        )),
    }
}
