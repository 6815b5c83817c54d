//! ONNX export: the inference part of a [`Graph`] — the ancestors of the outputs asked for —
//! written as an opset-17 model, with the current values of its parameters and state
//! (read by name, usually from the [`Executor`] that trained them) as initializers.
//!
//! Each primitive op maps onto one ONNX operator or a short composition of them (GELU as
//! `0.5·x·(1 + Erf(x/√2))`, comparisons as `Less`/`Equal`… then `Cast`); the convolution and
//! pooling compositions that [`Var::conv2d`] and the pooling layers record (im2col, matmul,
//! layout ops) are recognised and written as `Conv`, `MaxPool` and `AveragePool` (see
//! [`conv`]). Training-only ops (cross-entropy, `Assign`, `Col2Im`) are refused with the
//! node they were found at; dropout is the identity, as at inference.
//!
//! With [`ExportOptions::batch`] the first dim of every input is a symbolic batch dim: it is
//! tracked through the graph so reshapes keep it (`0` in their target) and outputs declare it,
//! and an op that would mix it with fixed sizes (a reshape across it, a slice of it) is refused.
//!
//! ```no_run
//! # fn main() -> wgrad::Result<()> {
//! use wgrad::onnx::{export_to_file, ExportOptions};
//! let g = wgrad::Graph::new();
//! let x = g.input("x", &[8, 4]);
//! let w = g.param("w", &[4, 3], wgrad::Init::XavierUniform { seed: 1 });
//! let probs = x.matmul(&w)?.softmax(-1)?;
//! let exe = wgrad::Device::cpu().compile(&g, &[&probs], None)?;
//! export_to_file("mlp.onnx", &g, &[&x], &[("probs", &probs)], &exe, &ExportOptions::batch("N"))?;
//! # Ok(()) }
//! ```

mod conv;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;

use super::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, NodeId, Op, Var};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::reduce::ReduceOp;
use crate::{DType, Executor};

use conv::Pattern;

/// The opset written: 17 (ONNX 1.12, 2022), read by every current runtime.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;

/// How a graph is exported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Name of a symbolic batch dim given to the first dim of every input (`None`: the
    /// graph's fixed sizes throughout).
    pub batch: Option<String>,
}

impl ExportOptions {
    /// Fixed sizes: the inputs and outputs have the dims the graph was built with.
    pub fn fixed() -> ExportOptions {
        ExportOptions::default()
    }

    /// The first dim of every input is the symbolic batch dim `name` (e.g. `"N"`).
    pub fn batch(name: &str) -> ExportOptions {
        ExportOptions {
            batch: Some(name.to_string()),
        }
    }
}

/// Where the exported initializers' values come from, by parameter (or state) name.
pub trait ParamValues {
    /// The row-major values of `name`, or `None` for its initialiser's values.
    fn param_values(&self, name: &str) -> Result<Option<Vec<f32>>>;
}

/// A trained model's current values: every parameter and state the export needs must be in
/// the executor (one compiled from a graph that uses it).
impl ParamValues for Executor {
    fn param_values(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(Some(self.param(name)?.to_vec::<f32>()?))
    }
}

/// Values from a function: `|_| None` exports every parameter's initial values.
impl<F: Fn(&str) -> Option<Vec<f32>>> ParamValues for F {
    fn param_values(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self(name))
    }
}

/// The ONNX model (opset 17) computing `outputs` (named in the file as given) from `inputs`
/// (input nodes of `graph`, in the file's order), with the parameters' and state's values
/// from `values`. Only the outputs' ancestors are written.
pub fn export(
    graph: &Graph,
    inputs: &[&Var],
    outputs: &[(&str, &Var)],
    values: &dyn ParamValues,
    options: &ExportOptions,
) -> Result<Vec<u8>> {
    Ok(build(graph, inputs, outputs, values, options)?.encode_to_vec())
}

/// [`export`] written to `path`.
pub fn export_to_file(
    path: impl AsRef<Path>,
    graph: &Graph,
    inputs: &[&Var],
    outputs: &[(&str, &Var)],
    values: &dyn ParamValues,
    options: &ExportOptions,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = export(graph, inputs, outputs, values, options)?;
    std::fs::write(path, bytes)
        .map_err(|e| refuse(format!("{}: cannot write: {e}", path.display())))
}

/// An `Error::Invalid` of the exporter.
fn refuse(detail: impl Into<String>) -> Error {
    Error::Invalid {
        op: "onnx export",
        detail: detail.into(),
    }
}

/// Why `op` has no inference form, for the ops that are refused.
fn training_only(op: &Op) -> Option<&'static str> {
    Some(match op {
        Op::Assign => "a state update is a training op",
        Op::CrossEntropy(_) | Op::CrossEntropyGrad(_) | Op::CrossEntropyCount(_) => {
            "softmax cross-entropy is a training loss; export the logits (or their softmax) \
             instead"
        }
        Op::Conv(pass, _) if *pass != crate::ops::conv_gemm::ConvPass::Forward => {
            "a convolution's gradient passes only appear in gradients"
        }
        Op::Col2Im(..) => {
            "col2im (a transposed convolution or im2col's gradient) has no export yet"
        }
        Op::Gather(..) => "gather takes integer indices, which exported graphs do not carry yet",
        Op::ScatterAdd { .. } => "scatter-add is the gradient of gather",
        Op::Pool2dGrad(..)
        | Op::DepthwiseGradX(..)
        | Op::DepthwiseGradW(..)
        | Op::ConvGradInputPhased(..) => {
            "a pooling or convolution gradient only appears in gradients"
        }
        Op::Unary(UnaryOp::GeluGrad) => "GELU's derivative only appears in gradients",
        Op::BatchNorm(_) => {
            "batch norm in training mode (batch statistics); export the model in evaluation mode"
        }
        _ => return None,
    })
}

/// The error for node `id` that has no ONNX form.
fn unexportable(id: NodeId, node: &Node, why: &str) -> Error {
    refuse(format!(
        "node #{id} ({}, shape {:?}) cannot be exported: {why}",
        node.op.name(),
        node.shape
    ))
}

fn build(
    graph: &Graph,
    inputs: &[&Var],
    outputs: &[(&str, &Var)],
    values: &dyn ParamValues,
    options: &ExportOptions,
) -> Result<ModelProto> {
    for v in inputs.iter().copied().chain(outputs.iter().map(|o| o.1)) {
        if !v.graph().same(graph) {
            return Err(refuse(format!("{v:?} belongs to another graph")));
        }
    }
    if outputs.is_empty() {
        return Err(refuse("no outputs to export"));
    }
    let nodes = graph.nodes();
    let patterns = conv::find_patterns(&nodes)?;
    let needed = ancestors(&nodes, &patterns, outputs);

    // Training ops are named before anything else is checked (an unlisted labels input
    // is only needed because of them).
    for (id, node) in nodes.iter().enumerate() {
        if let (true, Some(why)) = (needed[id], training_only(&node.op)) {
            return Err(unexportable(id, node, why));
        }
    }
    let mut e = Emitter::new(&nodes, options);
    // Names that the file's values must keep: inputs, parameters, outputs.
    for (name, _) in outputs {
        if !e.used.insert(name.to_string()) {
            return Err(refuse(format!("output name '{name}' is given twice")));
        }
    }
    for (id, node) in nodes.iter().enumerate() {
        if let Op::Input(n) | Op::Param(n, _) | Op::State(n, _) = &node.op {
            if needed[id] || inputs.iter().any(|v| v.id() == id) {
                if outputs.iter().any(|o| o.0 == n && o.1.id() != id) {
                    return Err(refuse(format!(
                        "output name '{n}' is also the name of node #{id} ({})",
                        node.op.name()
                    )));
                }
                e.used.insert(n.clone());
            }
        }
    }
    e.declare_inputs(inputs, &needed)?;
    // A computed output takes its name directly; an input or parameter as an output (or a
    // node given twice) goes through an Identity.
    let mut renamed = HashSet::new();
    for (name, v) in outputs {
        let leaf = matches!(
            nodes[v.id()].op,
            Op::Input(_) | Op::Param(..) | Op::State(..)
        );
        if !leaf && renamed.insert(v.id()) {
            e.names[v.id()] = Some(name.to_string());
        }
    }
    // Node ids are a topological order.
    for id in (0..nodes.len()).filter(|&id| needed[id]) {
        e.emit(id, patterns.get(&id), values)?;
    }
    let mut graph_outputs = Vec::new();
    for (name, v) in outputs {
        let have = e.name(v.id())?;
        if have != *name {
            e.node_to("Identity", &[&have], vec![], name);
        }
        graph_outputs.push(value_info(name, v.shape(), e.batched[v.id()], options));
    }
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("wgrad".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            name: Some("wgrad".into()),
            node: e.out_nodes,
            initializer: e.initializers,
            input: e.graph_inputs,
            output: graph_outputs,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The nodes the outputs depend on; a recognised pattern depends on its operands only, so
/// the im2col and matmul inside it are not written (unless something else reads them).
fn ancestors(
    nodes: &[Node],
    patterns: &HashMap<NodeId, Pattern>,
    outputs: &[(&str, &Var)],
) -> Vec<bool> {
    let mut needed = vec![false; nodes.len()];
    let mut stack: Vec<NodeId> = outputs.iter().map(|o| o.1.id()).collect();
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut needed[id], true) {
            continue;
        }
        match (patterns.get(&id), &nodes[id].op) {
            (Some(p), _) => stack.extend(p.operands()),
            // Inference dropout is the identity: its step counter is not read.
            (None, Op::Dropout { .. }) => stack.push(nodes[id].inputs[0]),
            (None, _) => stack.extend(&nodes[id].inputs),
        }
    }
    needed
}

/// Builds the graph proto node by node.
struct Emitter<'a> {
    nodes: &'a [Node],
    options: &'a ExportOptions,
    /// The ONNX value holding each written node's result.
    names: Vec<Option<String>>,
    /// Whether dim 0 of each node's result is the symbolic batch dim.
    batched: Vec<bool>,
    /// Every value name in use.
    used: HashSet<String>,
    out_nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    graph_inputs: Vec<ValueInfoProto>,
    /// The batch size the graph was built with (symbolic export only).
    batch_size: Option<usize>,
}

impl<'a> Emitter<'a> {
    fn new(nodes: &'a [Node], options: &'a ExportOptions) -> Emitter<'a> {
        Emitter {
            nodes,
            options,
            names: vec![None; nodes.len()],
            batched: vec![false; nodes.len()],
            used: HashSet::new(),
            out_nodes: Vec::new(),
            initializers: Vec::new(),
            graph_inputs: Vec::new(),
            batch_size: None,
        }
    }

    fn declare_inputs(&mut self, inputs: &[&Var], needed: &[bool]) -> Result<()> {
        let mut seen = HashSet::new();
        for v in inputs {
            let node = &self.nodes[v.id()];
            let Op::Input(name) = &node.op else {
                return Err(refuse(format!(
                    "{v:?} is not an input node but {}: only graph inputs can be fed",
                    node.op.name()
                )));
            };
            if !seen.insert(v.id()) {
                return Err(refuse(format!("input '{name}' is listed twice")));
            }
            if node.dtype != DType::F32 {
                return Err(refuse(format!(
                    "input '{name}' has dtype {} (only f32 inputs are exported; i32 labels feed \
                     training ops, which are not)",
                    node.dtype
                )));
            }
            if self.options.batch.is_some() {
                let Some(&n) = node.shape.first() else {
                    return Err(refuse(format!(
                        "input '{name}' is a scalar: it has no batch dim"
                    )));
                };
                match self.batch_size {
                    Some(b) if b != n => {
                        return Err(refuse(format!(
                            "input '{name}' has batch size {n}, another input {b}: a symbolic \
                             batch dim needs one size"
                        )))
                    }
                    _ => self.batch_size = Some(n),
                }
                self.batched[v.id()] = true;
            }
            self.names[v.id()] = Some(name.clone());
            self.graph_inputs.push(value_info(
                name,
                &node.shape,
                self.batched[v.id()],
                self.options,
            ));
        }
        for (id, node) in self.nodes.iter().enumerate() {
            if let Op::Input(name) = &node.op {
                if needed[id] && !seen.contains(&id) {
                    return Err(refuse(format!(
                        "input '{name}' (node #{id}) is needed by the outputs but not listed \
                         among the inputs"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The value name of an already written node.
    fn name(&self, id: NodeId) -> Result<String> {
        self.names[id]
            .clone()
            .ok_or_else(|| refuse(format!("internal: node #{id} used before it was written")))
    }

    /// A new value name starting with `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        let mut k = self.out_nodes.len() + self.initializers.len();
        loop {
            let name = format!("{hint}_{k}");
            if self.used.insert(name.clone()) {
                return name;
            }
            k += 1;
        }
    }

    /// Appends a node writing `out`.
    fn node_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, out: &str) {
        self.out_nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("{op}:{out}")),
            op_type: Some(op.to_string()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Appends a node writing a fresh value, and returns that value's name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_to(op, inputs, attrs, &out);
        out
    }

    /// A FLOAT `Constant` node (not an initializer: an importer keeps it a constant, where a
    /// float initializer may become a trainable parameter).
    fn constant(&mut self, dims: &[usize], values: &[f32]) -> String {
        let out = self.fresh("constant");
        self.constant_to(dims, values, &out);
        out
    }

    /// [`Emitter::constant`] writing `out`.
    fn constant_to(&mut self, dims: &[usize], values: &[f32], out: &str) {
        let t = tensor_f32(None, dims, values);
        self.node_to("Constant", &[], vec![attr_tensor("value", t)], out);
    }

    /// A scalar FLOAT constant.
    fn scalar(&mut self, v: f32) -> String {
        self.constant(&[], &[v])
    }

    /// A 1-D INT64 initializer (shapes, axes, slice bounds).
    fn ints(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers
            .push(tensor_i64(&name, &[values.len()], values));
        name
    }

    /// Writes node `id` (or the pattern ending at it) under its value name.
    fn emit(
        &mut self,
        id: NodeId,
        pattern: Option<&Pattern>,
        values: &dyn ParamValues,
    ) -> Result<()> {
        let nodes = self.nodes;
        let node = &nodes[id];
        if let Op::Input(_) = node.op {
            return Ok(()); // declared with the graph inputs
        }
        if let Op::Param(name, init) | Op::State(name, init) = &node.op {
            let v = match values.param_values(name)? {
                Some(v) => v,
                None => init.values(&node.shape),
            };
            let numel: usize = node.shape.iter().product();
            if v.len() != numel {
                return Err(refuse(format!(
                    "parameter '{name}' has shape {:?} ({numel} values) but {} values were given",
                    node.shape,
                    v.len()
                )));
            }
            self.initializers
                .push(tensor_f32(Some(name), &node.shape, &v));
            self.names[id] = Some(name.clone());
            return Ok(());
        }
        let out = match self.names[id].clone() {
            Some(n) => n,
            None => self.fresh(node.op.name()),
        };
        self.names[id] = Some(out.clone());
        if let Some(p) = pattern {
            let x = p.operands()[0];
            self.batched[id] = self.batched[x];
            return conv::emit_pattern(self, p, &out);
        }
        let ins: Vec<String> = node
            .inputs
            .iter()
            .take(if matches!(node.op, Op::Dropout { .. }) {
                1
            } else {
                usize::MAX
            })
            .map(|&i| self.name(i))
            .collect::<Result<_>>()?;
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        let in_shape = |k: usize| nodes[node.inputs[k]].shape.as_slice();
        let flags: Vec<bool> = node.inputs.iter().map(|&i| self.batched[i]).collect();
        let in_batched = |k: usize| flags[k];
        let s = &node.shape;
        let batched = match &node.op {
            Op::Input(_) | Op::Param(..) | Op::State(..) => unreachable!("handled above"),
            Op::Const(t) => {
                self.constant_to(s, &t.to_vec::<f32>()?, &out);
                false
            }
            Op::Full(v) => {
                self.constant_to(s, &vec![*v; s.iter().product()], &out);
                false
            }
            Op::Dropout { .. } => {
                self.node_to("Identity", &ins, vec![], &out);
                in_batched(0)
            }
            Op::Unary(u) => {
                self.unary(id, *u, ins[0], &out)?;
                in_batched(0)
            }
            Op::Binary(b) => {
                let batched = self.broadcast_batch(id, &[0, 1])?;
                self.binary(*b, ins[0], ins[1], &out);
                batched
            }
            Op::Scalar { op, value, lhs } => {
                let c = self.scalar(*value);
                let (a, b) = if *lhs {
                    (c.as_str(), ins[0])
                } else {
                    (ins[0], c.as_str())
                };
                self.binary(*op, a, b, &out);
                in_batched(0)
            }
            Op::MatMul { ta, tb } => self.matmul(id, *ta, *tb, &ins, &out)?,
            Op::Reduce { op, axis, keepdim } => {
                self.reduce(*op, Some(*axis), *keepdim, ins[0], &out);
                in_batched(0) && *axis != 0
            }
            Op::ReduceAll(op) => {
                self.reduce(*op, None, false, ins[0], &out);
                false
            }
            Op::Softmax(a) | Op::LogSoftmax(a) => {
                let op = if matches!(node.op, Op::Softmax(_)) {
                    "Softmax"
                } else {
                    "LogSoftmax"
                };
                self.node_to(op, &ins, vec![attr_int("axis", *a as i64)], &out);
                in_batched(0)
            }
            Op::Permute(axes) => {
                if in_batched(0) && axes[0] != 0 {
                    return Err(self.batch_error(id, "it moves the batch dim"));
                }
                let perm = axes.iter().map(|&a| a as i64).collect();
                self.node_to("Transpose", &ins, vec![attr_ints("perm", perm)], &out);
                in_batched(0)
            }
            Op::Reshape(target) => {
                let batched = in_batched(0);
                if batched && target.first() != in_shape(0).first() {
                    return Err(self.batch_error(id, "it reshapes across the batch dim"));
                }
                self.reshape(ins[0], target, batched, &out);
                batched
            }
            Op::BroadcastTo(target) => {
                let batched = in_batched(0);
                if batched && target.len() != in_shape(0).len() {
                    return Err(self.batch_error(id, "it adds dims in front of the batch dim"));
                }
                let mut dims: Vec<i64> = target.iter().map(|&d| d as i64).collect();
                if batched {
                    dims[0] = 1; // Expand keeps the input's dim where the shape says 1
                }
                let shape = self.ints("expand_shape", &dims);
                self.node_to("Expand", &[ins[0], &shape], vec![], &out);
                batched
            }
            Op::SumTo(target) => self.sum_to(ins[0], in_shape(0), target, in_batched(0), &out),
            Op::Slice { axis, start, end } => {
                if in_batched(0) && *axis == 0 {
                    if (*start, *end) != (0, in_shape(0)[0]) {
                        return Err(self.batch_error(id, "it slices the batch dim"));
                    }
                    self.node_to("Identity", &ins, vec![], &out);
                } else {
                    let starts = self.ints("slice_starts", &[*start as i64]);
                    let ends = self.ints("slice_ends", &[*end as i64]);
                    let axes = self.ints("slice_axes", &[*axis as i64]);
                    self.node_to("Slice", &[ins[0], &starts, &ends, &axes], vec![], &out);
                }
                in_batched(0)
            }
            Op::Concat(axis) => {
                let all: Vec<usize> = (0..node.inputs.len()).collect();
                let batched = all.iter().any(|&k| in_batched(k));
                if batched && (*axis == 0 || !all.iter().all(|&k| in_batched(k))) {
                    return Err(self.batch_error(
                        id,
                        "it joins batched values along the batch dim or with fixed-size ones",
                    ));
                }
                self.node_to("Concat", &ins, vec![attr_int("axis", *axis as i64)], &out);
                batched
            }
            Op::DepthwiseConv2d(geom) => {
                conv::emit_depthwise(self, geom, &ins, &out);
                in_batched(0)
            }
            Op::Pool2d(p) => {
                conv::emit_pool(self, p, (ins[0], node.inputs[0]), &out)?;
                in_batched(0)
            }
            Op::Im2Col(geom) => {
                conv::emit_im2col(self, geom, ins[0], in_shape(0), in_batched(0), &out)?;
                in_batched(0)
            }
            Op::Assign
            | Op::CrossEntropy(_)
            | Op::CrossEntropyGrad(_)
            | Op::CrossEntropyCount(_)
            | Op::Gather(..)
            | Op::ScatterAdd { .. }
            | Op::Pool2dGrad(..)
            | Op::DepthwiseGradX(..)
            | Op::DepthwiseGradW(..)
            | Op::Conv(..)
            | Op::BatchNorm(_)
            | Op::Col2Im(..)
            | Op::ConvGradInputPhased(..) => {
                let why = training_only(&node.op).unwrap_or("a training op");
                return Err(unexportable(id, node, why));
            }
        };
        self.batched[id] = batched;
        Ok(())
    }

    fn unary(&mut self, id: NodeId, u: UnaryOp, x: &str, out: &str) -> Result<()> {
        let direct = match u {
            UnaryOp::Neg => "Neg",
            UnaryOp::Abs => "Abs",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Relu => "Relu",
            UnaryOp::Sigmoid => "Sigmoid",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Erf => "Erf",
            UnaryOp::Floor => "Floor",
            UnaryOp::Ceil => "Ceil",
            UnaryOp::Round => "Round", // halves to even in both
            UnaryOp::Sin => "Sin",
            UnaryOp::Cos => "Cos",
            UnaryOp::Tan => "Tan",
            UnaryOp::Asin => "Asin",
            UnaryOp::Acos => "Acos",
            UnaryOp::Atan => "Atan",
            UnaryOp::Sinh => "Sinh",
            UnaryOp::Cosh => "Cosh",
            UnaryOp::Asinh => "Asinh",
            UnaryOp::Acosh => "Acosh",
            UnaryOp::Atanh => "Atanh",
            UnaryOp::Log1p => {
                let one = self.scalar(1.0);
                let plus = self.node("Add", &[x, &one], vec![]);
                self.node_to("Log", &[&plus], vec![], out);
                return Ok(());
            }
            UnaryOp::Square => {
                self.node_to("Mul", &[x, x], vec![], out);
                return Ok(());
            }
            UnaryOp::Gelu => {
                // Opset 17 has no Gelu (it came in 20): 0.5·x·(1 + erf(x/√2)).
                let root2 = self.scalar(std::f32::consts::SQRT_2);
                let scaled = self.node("Div", &[x, &root2], vec![]);
                let erf = self.node("Erf", &[&scaled], vec![]);
                let one = self.scalar(1.0);
                let plus = self.node("Add", &[&erf, &one], vec![]);
                let times = self.node("Mul", &[x, &plus], vec![]);
                let half = self.scalar(0.5);
                self.node_to("Mul", &[&times, &half], vec![], out);
                return Ok(());
            }
            UnaryOp::GeluGrad => {
                let why = training_only(&self.nodes[id].op).unwrap_or("a gradient op");
                return Err(unexportable(id, &self.nodes[id], why));
            }
        };
        self.node_to(direct, &[x], vec![], out);
        Ok(())
    }

    fn binary(&mut self, b: BinaryOp, x: &str, y: &str, out: &str) {
        if let BinaryOp::KeepWhere | BinaryOp::KeepWhereNot = b {
            // x where y != 0 (KeepWhereNot: where y == 0), else 0: a Where on y as BOOL.
            let cond = self.node("Cast", &[y], vec![attr_int("to", DataType::Bool as i64)]);
            let zero = self.scalar(0.0);
            let (a, c) = if b == BinaryOp::KeepWhere {
                (x, zero.as_str())
            } else {
                (zero.as_str(), x)
            };
            self.node_to("Where", &[&cond, a, c], vec![], out);
            return;
        }
        let (op, negate) = match b {
            BinaryOp::KeepWhere | BinaryOp::KeepWhereNot => unreachable!("handled above"),
            BinaryOp::Add => ("Add", false),
            BinaryOp::Sub => ("Sub", false),
            BinaryOp::Mul => ("Mul", false),
            BinaryOp::Div => ("Div", false),
            BinaryOp::Maximum => ("Max", false),
            BinaryOp::Minimum => ("Min", false),
            BinaryOp::Pow => ("Pow", false),
            BinaryOp::Eq => ("Equal", false),
            BinaryOp::Ne => ("Equal", true),
            BinaryOp::Lt => ("Less", false),
            BinaryOp::Le => ("LessOrEqual", false),
            BinaryOp::Gt => ("Greater", false),
            BinaryOp::Ge => ("GreaterOrEqual", false),
        };
        let compare = !matches!(
            b,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Maximum
                | BinaryOp::Minimum
                | BinaryOp::Pow
        );
        if !compare {
            self.node_to(op, &[x, y], vec![], out);
            return;
        }
        // Comparisons give BOOL in ONNX and 1.0 / 0.0 in wgrad.
        let mut v = self.node(op, &[x, y], vec![]);
        if negate {
            v = self.node("Not", &[&v], vec![]);
        }
        self.node_to(
            "Cast",
            &[&v],
            vec![attr_int("to", DataType::Float as i64)],
            out,
        );
    }

    /// `op(A)·op(B)`: Gemm for two matrices, else Transpose where asked and MatMul.
    fn matmul(&mut self, id: NodeId, ta: bool, tb: bool, ins: &[&str], out: &str) -> Result<bool> {
        let node = &self.nodes[id];
        let (ra, rb) = (
            self.nodes[node.inputs[0]].shape.len(),
            self.nodes[node.inputs[1]].shape.len(),
        );
        let (ba, bb) = (self.batched[node.inputs[0]], self.batched[node.inputs[1]]);
        // The batch dim stays dim 0 when it leads the operand of the highest rank and is
        // not contracted (rows of A, or a batch dim of either).
        let keeps = |batched: bool, r: usize, other_r: usize, rows_ok: bool| {
            !batched || (r >= other_r && (r >= 3 || rows_ok))
        };
        if !keeps(ba, ra, rb, !ta) || !keeps(bb, rb, ra, false) {
            return Err(self.batch_error(id, "the batch dim would be contracted or moved"));
        }
        if ba || bb {
            self.broadcast_batch(id, &[0, 1])?;
        }
        if ra == 2 && rb == 2 {
            let attrs = vec![attr_int("transA", ta as i64), attr_int("transB", tb as i64)];
            self.node_to("Gemm", ins, attrs, out);
        } else {
            let mut t = |name: &str, r: usize, on: bool| -> String {
                if !on {
                    return name.to_string();
                }
                let mut perm: Vec<i64> = (0..r as i64).collect();
                perm.swap(r - 2, r - 1);
                self.node("Transpose", &[name], vec![attr_ints("perm", perm)])
            };
            let a = t(ins[0], ra, ta);
            let b = t(ins[1], rb, tb);
            self.node_to("MatMul", &[&a, &b], vec![], out);
        }
        Ok(ba || bb)
    }

    /// Sum (axes as an input since opset 13) or mean, max, min (axes as an attribute until
    /// opset 18) along `axis`, or over everything.
    fn reduce(&mut self, op: ReduceOp, axis: Option<usize>, keepdim: bool, x: &str, out: &str) {
        let keep = attr_int("keepdims", keepdim as i64);
        let name = match op {
            ReduceOp::Sum => {
                let mut ins = vec![x.to_string()];
                if let Some(a) = axis {
                    ins.push(self.ints("axes", &[a as i64]));
                }
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                self.node_to("ReduceSum", &ins, vec![keep], out);
                return;
            }
            ReduceOp::Mean => "ReduceMean",
            ReduceOp::Max => "ReduceMax",
            ReduceOp::Min => "ReduceMin",
        };
        let mut attrs = vec![keep];
        if let Some(a) = axis {
            attrs.push(attr_ints("axes", vec![a as i64]));
        }
        self.node_to(name, &[x], attrs, out);
    }

    /// Reshape to `target`; with the batch dim kept, its entry is `0` (copy the input's).
    fn reshape(&mut self, x: &str, target: &[usize], batched: bool, out: &str) {
        let mut dims: Vec<i64> = target.iter().map(|&d| d as i64).collect();
        if batched {
            dims[0] = 0;
        }
        let shape = self.ints("shape", &dims);
        self.node_to("Reshape", &[x, &shape], vec![], out);
    }

    /// Sums the broadcast dims of `x` away (ReduceSum keeping dims), then reshapes to `target`.
    fn sum_to(
        &mut self,
        x: &str,
        xs: &[usize],
        target: &[usize],
        batched: bool,
        out: &str,
    ) -> bool {
        let lead = xs.len() - target.len();
        let axes: Vec<i64> = (0..xs.len())
            .filter(|&i| i < lead || (target[i - lead] == 1 && (xs[i] != 1 || (i == 0 && batched))))
            .map(|i| i as i64)
            .collect();
        let still = batched && !axes.contains(&0);
        if axes.is_empty() && xs == target {
            self.node_to("Identity", &[x], vec![], out);
            return still;
        }
        let summed = if axes.is_empty() {
            x.to_string()
        } else {
            let a = self.ints("axes", &axes);
            self.node("ReduceSum", &[x, &a], vec![attr_int("keepdims", 1)])
        };
        self.reshape(&summed, target, still, out);
        still
    }

    /// Checks that the batch dim of the operands `ks` of node `id` lines up with output
    /// dim 0 and meets no fixed size there; returns whether the result is batched.
    fn broadcast_batch(&self, id: NodeId, ks: &[usize]) -> Result<bool> {
        let node = &self.nodes[id];
        let rank = node.shape.len();
        let batched = ks.iter().any(|&k| self.batched[node.inputs[k]]);
        if !batched {
            return Ok(false);
        }
        for &k in ks {
            let s = &self.nodes[node.inputs[k]].shape;
            let lines_up = s.len() == rank;
            if self.batched[node.inputs[k]] && !lines_up {
                return Err(
                    self.batch_error(id, "an operand's batch dim is not the result's dim 0")
                );
            }
            let matmul_rows = matches!(node.op, Op::MatMul { .. }) && s.len() == 2;
            if !self.batched[node.inputs[k]] && lines_up && s[0] != 1 && !matmul_rows {
                return Err(self.batch_error(
                    id,
                    &format!("operand {k} of shape {s:?} has a fixed size along the batch dim"),
                ));
            }
        }
        Ok(true)
    }

    fn batch_error(&self, id: NodeId, why: &str) -> Error {
        let node = &self.nodes[id];
        let inputs: Vec<&Vec<usize>> = node.inputs.iter().map(|&i| &self.nodes[i].shape).collect();
        refuse(format!(
            "node #{id} ({}, inputs {inputs:?} → {:?}) cannot keep the symbolic batch dim '{}': \
             {why} (export with fixed sizes instead)",
            node.op.name(),
            node.shape,
            self.options.batch.as_deref().unwrap_or("")
        ))
    }
}

fn value_info(
    name: &str,
    dims: &[usize],
    batched: bool,
    options: &ExportOptions,
) -> ValueInfoProto {
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| proto::tensor_shape_proto::Dimension {
            value: Some(match (&options.batch, i == 0 && batched) {
                (Some(b), true) => dimension::Value::DimParam(b.clone()),
                _ => dimension::Value::DimValue(d as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(proto::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor_f32(name: Option<&str>, dims: &[usize], v: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        name: name.map(str::to_string),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, dims: &[usize], v: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int64 as i32),
        name: Some(name.to_string()),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v,
        ..Default::default()
    }
}

fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}
