//! The executor: compiles a graph for a device once — which nodes to run, in
//! what order, when each intermediate can be freed, the parameters' values —
//! and runs it many times with new feeds.
//!
//! A run records every dispatch into the device's pending command encoder and
//! submits nothing until an output is read back: one queue submit per step.
//! Intermediates are dropped right after their last use, so their pooled
//! buffers are reused by later nodes (the liveness-based memory plan).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::autodiff;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, NodeId, Op, Var};
use crate::optim::{update, Optimizer, SlotState};
use crate::tensor::Tensor;

/// The memory plan of a compiled graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Nodes run per step (forward, backward and leaves).
    pub nodes: usize,
    /// Bytes of every intermediate if none were freed.
    pub unplanned_bytes: u64,
    /// Most bytes of intermediates alive at once under the plan.
    pub peak_bytes: u64,
}

struct State {
    /// Values of parameter, constant and fill nodes (kept across runs).
    leaves: HashMap<NodeId, Tensor>,
    slots: HashMap<NodeId, SlotState>,
    step: u64,
}

/// A graph compiled for one device.
pub struct Executor {
    device: Device,
    nodes: Vec<Node>,
    order: Vec<NodeId>,
    last_use: Vec<usize>,
    outputs: Vec<NodeId>,
    /// (param node, its gradient node) when training.
    trained: Vec<(NodeId, NodeId)>,
    /// (state node, assign node): values installed after each run.
    assigns: Vec<(NodeId, NodeId)>,
    optimizer: Option<Optimizer>,
    plan: MemoryPlan,
    state: Mutex<State>,
}

impl Device {
    /// Compiles `outputs` of `graph` for this device. With an optimizer, the
    /// gradient of `outputs[0]` (a scalar loss) with respect to every
    /// parameter is added to the graph and each run updates the parameters.
    pub fn compile(
        &self,
        graph: &Graph,
        outputs: &[&Var],
        optimizer: impl Into<Option<Optimizer>>,
    ) -> Result<Executor> {
        Executor::new(self, graph, outputs, optimizer.into())
    }
}

impl Executor {
    fn new(
        device: &Device,
        graph: &Graph,
        outputs: &[&Var],
        optimizer: Option<Optimizer>,
    ) -> Result<Executor> {
        if outputs.is_empty() {
            return Err(Error::Invalid {
                op: "compile",
                detail: "no outputs asked for".into(),
            });
        }
        if let Some(v) = outputs.iter().find(|v| !v.graph().same(graph)) {
            return Err(Error::Invalid {
                op: "compile",
                detail: format!("output #{} is not in this graph", v.id()),
            });
        }
        let mut trained = Vec::new();
        if optimizer.is_some() {
            let params: Vec<Var> = graph
                .nodes()
                .iter()
                .enumerate()
                .filter(|(_, n)| matches!(n.op, Op::Param(..)))
                .map(|(i, _)| graph.var(i))
                .collect::<Result<_>>()?;
            let refs: Vec<&Var> = params.iter().collect();
            let grads = autodiff::grad(outputs[0], &refs)?;
            trained = params
                .iter()
                .zip(&grads)
                .map(|(p, g)| (p.id(), g.id()))
                .collect();
        }
        let nodes = graph.nodes();
        let mut wanted: Vec<NodeId> = outputs.iter().map(|v| v.id()).collect();
        wanted.extend(trained.iter().map(|&(_, g)| g));
        // State updates (running statistics, step counters) run with every step,
        // whatever the outputs, as a layer's forward pass in training mode does.
        let assigns: Vec<(NodeId, NodeId)> = (0..nodes.len())
            .filter(|&i| matches!(nodes[i].op, Op::Assign))
            .map(|i| (nodes[i].inputs[0], i))
            .collect();
        wanted.extend(assigns.iter().map(|&(_, a)| a));
        // Nodes the wanted ones depend on, in id order (ids are topological).
        let mut live = vec![false; nodes.len()];
        for &w in &wanted {
            live[w] = true;
        }
        for i in (0..nodes.len()).rev() {
            if live[i] {
                for &j in &nodes[i].inputs {
                    live[j] = true;
                }
            }
        }
        let order: Vec<NodeId> = (0..nodes.len()).filter(|&i| live[i]).collect();
        let mut last_use = vec![usize::MAX; nodes.len()];
        for (step, &i) in order.iter().enumerate() {
            for &j in &nodes[i].inputs {
                last_use[j] = step;
            }
        }
        for &w in &wanted {
            last_use[w] = usize::MAX; // kept until the end of the run
        }
        let plan = plan_memory(&nodes, &order, &last_use);
        let mut leaves = HashMap::new();
        for &i in &order {
            let n = &nodes[i];
            let value = match &n.op {
                Op::Param(_, init) | Op::State(_, init) => Some(Tensor::from_slice(
                    device,
                    &init.values(&n.shape),
                    &n.shape,
                )?),
                Op::Const(t) => Some(t.to_device(device)?),
                Op::Full(v) => Some(Tensor::full(device, *v, &n.shape)?),
                _ => None,
            };
            if let Some(v) = value {
                leaves.insert(i, v);
            }
        }
        Ok(Executor {
            device: device.clone(),
            nodes,
            order,
            last_use,
            outputs: outputs.iter().map(|v| v.id()).collect(),
            trained,
            assigns,
            optimizer,
            plan,
            state: Mutex::new(State {
                leaves,
                slots: HashMap::new(),
                step: 0,
            }),
        })
    }

    /// The device this graph runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The memory plan: nodes per step, unplanned and planned peak bytes.
    pub fn plan(&self) -> MemoryPlan {
        self.plan
    }

    /// The current value of parameter (or state) `name`.
    pub fn param(&self, name: &str) -> Result<Tensor> {
        let id = self.param_id(name)?;
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.leaves.get(&id).cloned().ok_or_else(|| Error::Invalid {
            op: "param",
            detail: format!("parameter {name:?} is not used by the compiled outputs"),
        })
    }

    /// Replaces parameter (or state) `name` (same shape) with `value`.
    pub fn set_param(&self, name: &str, value: &Tensor) -> Result<()> {
        let id = self.param_id(name)?;
        if value.shape() != self.nodes[id].shape.as_slice() {
            return Err(Error::Shape {
                op: "set_param",
                detail: format!(
                    "{name:?} has shape {:?}, got {:?}",
                    self.nodes[id].shape,
                    value.shape()
                ),
            });
        }
        let v = value.to_device(&self.device)?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leaves
            .insert(id, v);
        Ok(())
    }

    fn param_id(&self, name: &str) -> Result<NodeId> {
        self.nodes
            .iter()
            .position(|n| matches!(&n.op, Op::Param(p, _) | Op::State(p, _) if p == name))
            .ok_or_else(|| Error::Invalid {
                op: "param",
                detail: format!("no parameter named {name:?}"),
            })
    }

    /// Runs one step with `feeds` (by input name) and returns the outputs, on
    /// the device; only the ones read back are copied to the host. With an
    /// optimizer, the parameters are updated in the same submission.
    pub fn run(&self, feeds: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        let feeds = self.check_feeds(feeds)?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for (step, &i) in self.order.iter().enumerate() {
            let n = &self.nodes[i];
            let v = match &n.op {
                Op::Input(name) => feeds[name.as_str()].clone(),
                Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_) => st.leaves[&i].clone(),
                op => {
                    let args: Vec<&Tensor> = n
                        .inputs
                        .iter()
                        .map(|&j| {
                            values[j]
                                .as_ref()
                                .expect("inputs are computed before their users")
                        })
                        .collect();
                    eval(op, &args, &n.shape)?
                }
            };
            values[i] = Some(v);
            for &j in &n.inputs {
                if self.last_use[j] == step {
                    values[j] = None; // its buffer returns to the pool for later nodes
                }
            }
        }
        for &(s, a) in &self.assigns {
            let v = values[a]
                .clone()
                .expect("assignments are outputs of the run");
            st.leaves.insert(s, v);
        }
        if let Some(opt) = &self.optimizer {
            st.step += 1;
            let step = st.step;
            for &(p, g) in &self.trained {
                let grad = values[g].clone().expect("gradients are outputs of the run");
                let cur = st.leaves[&p].clone();
                let slot = st.slots.entry(p).or_default();
                let new = update(opt, &cur, &grad, slot, step)?;
                st.leaves.insert(p, new);
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|&o| values[o].clone().expect("outputs are kept"))
            .collect())
    }

    /// Gradients computed by the last compile, by parameter name (for tests).
    pub fn gradient_nodes(&self) -> Vec<(String, NodeId)> {
        self.trained
            .iter()
            .map(|&(p, g)| match &self.nodes[p].op {
                Op::Param(name, _) => (name.clone(), g),
                _ => unreachable!("trained nodes are parameters"),
            })
            .collect()
    }

    fn check_feeds<'a>(&self, feeds: &[(&'a str, &Tensor)]) -> Result<HashMap<&'a str, Tensor>> {
        let mut map = HashMap::new();
        for (name, t) in feeds {
            let Some(i) = self
                .nodes
                .iter()
                .position(|n| matches!(&n.op, Op::Input(n) if n == name))
            else {
                return Err(Error::Invalid {
                    op: "run",
                    detail: format!("feed {name:?} is not an input of the graph"),
                });
            };
            if t.dtype() != self.nodes[i].dtype {
                return Err(Error::DType {
                    op: "run",
                    got: format!("{} for input {name:?}", t.dtype()),
                    expected: self.nodes[i].dtype.to_string(),
                });
            }
            if t.shape() != self.nodes[i].shape.as_slice() {
                return Err(Error::Shape {
                    op: "run",
                    detail: format!(
                        "input {name:?} expects shape {:?}, fed {:?}",
                        self.nodes[i].shape,
                        t.shape()
                    ),
                });
            }
            // An input of the graph that these outputs do not depend on (say, x in the
            // gradient of a linear function) is checked but not uploaded.
            if self.order.contains(&i) {
                map.insert(*name, t.to_device(&self.device)?);
            }
        }
        for &i in &self.order {
            if let Op::Input(name) = &self.nodes[i].op {
                if !map.contains_key(name.as_str()) {
                    return Err(Error::Invalid {
                        op: "run",
                        detail: format!("missing feed for input {name:?}"),
                    });
                }
            }
        }
        Ok(map)
    }
}

/// Simulates the run: bytes alive at each step with and without freeing.
fn plan_memory(nodes: &[Node], order: &[NodeId], last_use: &[usize]) -> MemoryPlan {
    let bytes =
        |i: NodeId| (nodes[i].shape.iter().product::<usize>() * nodes[i].dtype.size()) as u64;
    let is_intermediate = |i: NodeId| {
        !matches!(
            nodes[i].op,
            Op::Input(_) | Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_)
        )
    };
    let (mut live, mut peak, mut total) = (0u64, 0u64, 0u64);
    for (step, &i) in order.iter().enumerate() {
        if is_intermediate(i) {
            live += bytes(i);
            total += bytes(i);
        }
        peak = peak.max(live);
        for &j in &nodes[i].inputs {
            if last_use[j] == step && is_intermediate(j) {
                live -= bytes(j);
            }
        }
    }
    MemoryPlan {
        nodes: order.len(),
        unplanned_bytes: total,
        peak_bytes: peak,
    }
}

/// Runs one non-leaf op on its input values.
fn eval(op: &Op, x: &[&Tensor], shape: &[usize]) -> Result<Tensor> {
    match op {
        Op::Unary(u) => x[0].unary(*u),
        Op::Binary(b) => x[0].binary(x[1], *b),
        Op::Scalar { op, value, lhs } => x[0].binary_scalar(*op, *value, *lhs),
        Op::MatMul { ta, tb } => x[0].matmul_t(x[1], *ta, *tb),
        Op::Reduce { op, axis, keepdim } => x[0].reduce(*op, *axis as isize, *keepdim),
        Op::ReduceAll(op) => x[0].reduce_all(*op),
        Op::Softmax(a) => x[0].softmax(*a as isize),
        Op::LogSoftmax(a) => x[0].log_softmax(*a as isize),
        Op::Permute(axes) => x[0].permute(axes),
        Op::Reshape(s) => x[0].reshape(s),
        Op::BroadcastTo(s) => x[0].broadcast_to(s),
        Op::SumTo(s) => sum_to(x[0], s),
        Op::Slice { axis, start, end } => x[0].slice(*axis as isize, *start, *end),
        Op::Concat(axis) => Tensor::concat(x, *axis as isize),
        Op::CrossEntropy => x[0].cross_entropy(x[1]),
        Op::CrossEntropyGrad => x[0].cross_entropy_backward(x[1], x[2]),
        Op::Im2Col(geom) => x[0].im2col(*geom),
        Op::Col2Im(geom, image) => x[0].col2im(*geom, image),
        Op::Assign => Ok(x[1].clone()),
        Op::Dropout { p, seed } => x[0].dropout(*p, *seed, x[1]),
        Op::Input(_) | Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_) => {
            Err(Error::Invalid {
                op: op.name(),
                detail: format!("leaf of shape {shape:?} has no computation"),
            })
        }
    }
}

/// Sums `t` over the dimensions that broadcasting added or stretched to get back `shape`.
pub(crate) fn sum_to(t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let mut cur = t.clone();
    while cur.rank() > shape.len() {
        cur = cur.reduce(crate::ops::reduce::ReduceOp::Sum, 0, false)?;
    }
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 && cur.shape()[d] != 1 {
            cur = cur.reduce(crate::ops::reduce::ReduceOp::Sum, d as isize, true)?;
        }
    }
    Ok(cur)
}
