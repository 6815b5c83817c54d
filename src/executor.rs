//! The executor: compiles a graph for a device once — which nodes to run, in
//! what order, when each intermediate can be freed, the parameters' values —
//! and runs it many times with new feeds.
//!
//! A run records every dispatch into the device's pending command encoder and
//! submits nothing until an output is read back: one queue submit per step.
//!
//! On a GPU the graph is recorded once at compile time ([`crate::plan`]): each
//! intermediate gets a fixed slot buffer (liveness intervals → slots), and every
//! dispatch's params uniform and bind group are made then, so a run only writes
//! the feeds and encodes the recorded dispatches. `WGRAD_PLAN=eager` (or a graph
//! the recording cannot replay) runs op by op instead: intermediates are dropped
//! right after their last use, so their pooled buffers are reused by later nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::autodiff;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fusion::{self, Fused};
use crate::graph::{Graph, Node, NodeId, Op, Var};
use crate::optim::{update, Optimizer, SlotState};
use crate::plan::{Graphed, RecordedPlan};
use crate::tensor::Tensor;

/// Environment variable: `eager` runs compiled graphs op by op (no recorded plan).
pub const PLAN_ENV: &str = "WGRAD_PLAN";

pub use crate::fusion::FUSION_ENV;

/// Environment variable: `0` keeps an inference plan's weights out of textures of their own
/// (copied before each dispatch that reads them instead; for measuring both).
pub const PIN_ENV: &str = "WGRAD_PIN";

/// The memory plan of a compiled graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Nodes run per step (forward, backward and leaves).
    pub nodes: usize,
    /// Bytes of every intermediate if none were freed.
    pub unplanned_bytes: u64,
    /// Most bytes of intermediates alive at once under the plan.
    pub peak_bytes: u64,
    /// Bytes of the slot buffers a recorded GPU plan allocated for intermediates
    /// and kernel temporaries (best-fit reuse; 0 when the graph runs op by op).
    pub slot_bytes: u64,
    /// Bytes of the textures a recorded GPU inference plan holds its weights in, where the
    /// adapter reads products' operands through textures (0 elsewhere): see `capture::pin`.
    pub pinned_texture_bytes: u64,
    /// Kernel dispatches per run of a recorded GPU plan (0 when not recorded).
    pub dispatches: usize,
    /// Whether a recorded GPU plan reads some operand through a texture: the form kept
    /// where both were timed at compile ([`Executor::read_timing`]).
    pub reads_textures: bool,
}

pub use crate::plan_reads::ReadTiming;

/// Runs `f` (a compile, typically) with texture reads forced on or off on this thread, as
/// `WGRAD_TEXTURES=1` or `0` does for the whole process: a plan compiled inside keeps the
/// form asked for, untimed ([`Executor::read_timing`] is `None`), and with `false` no op
/// run inside reads an operand through a texture. For measuring the two forms and for
/// tests of one of them; by default a plan is recorded both ways and keeps the faster.
pub fn with_texture_reads<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::gpu::texture::with_texture_reads(on, f)
}

/// Most elements of a node folded at compile time from parameters (an inference
/// executable's batch-norm scale and shift): larger ones (a reshaped or transposed weight)
/// keep running, so that no weight is held twice.
const PARAM_FOLD_ELEMS: usize = 1 << 16;

/// A Winograd convolution's transformed filters, held by an inference plan
/// (`Tensor::winograd_filters`): they depend on the weights alone, so they are computed
/// at compile time, and again when `set_param` changes the leaf they come from, instead
/// of on every run (ResNet-50: 11 dispatches, about 9 ms of each run on lavapipe).
struct HeldFilters {
    /// The leaf whose value the filters are (through reshapes).
    leaf: NodeId,
    /// Its image operand's shape (the transform pads channels for it).
    x: Vec<usize>,
    geom: crate::ops::conv::Conv2d,
    /// (P, F, C4), P = 16 or 36 planes (the tile `Tensor::winograd_filters` takes for x):
    /// what the run's Winograd product reads.
    u: Tensor,
}

struct State {
    /// Values of parameter, constant and fill nodes (kept across runs).
    leaves: HashMap<NodeId, Tensor>,
    /// Transformed Winograd filters, by the fused product that reads them.
    filters: HashMap<NodeId, HeldFilters>,
    /// Values only the refolds read (see `Executor::refolds`).
    held: HashMap<NodeId, Tensor>,
    slots: HashMap<NodeId, SlotState>,
    step: u64,
}

/// A graph compiled for one device.
pub struct Executor {
    device: Device,
    nodes: Vec<Node>,
    /// The nodes each node reads: its graph inputs, or a fused chain's inputs.
    inputs: Vec<Vec<NodeId>>,
    /// Generated kernels of fused element-wise chains, by root node.
    fused: HashMap<NodeId, Fused>,
    order: Vec<NodeId>,
    last_use: Vec<usize>,
    outputs: Vec<NodeId>,
    /// (param node, its gradient node) when training.
    trained: Vec<(NodeId, NodeId)>,
    /// (state node, assign node): values installed after each run.
    assigns: Vec<(NodeId, NodeId)>,
    optimizer: Option<Optimizer>,
    plan: MemoryPlan,
    /// The commands recorded for a GPU, when the graph could be recorded.
    recorded: Option<RecordedPlan>,
    /// Nodes folded at compile time from parameters or states (no optimizer), in
    /// dependency order: `set_param` computes them again.
    refolds: Vec<NodeId>,
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
        let mut inputs: Vec<Vec<NodeId>> = nodes.iter().map(|n| n.inputs.clone()).collect();
        let mut order = live_order(&inputs, &wanted);
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
        // Constant folding: a node computed from constants only (the loss's seed
        // gradient, say) is computed once here and kept as a leaf. Without an optimizer,
        // parameters and states not assigned by the graph change only through `set_param`,
        // so small nodes computed from them (an eval-mode batch norm's per-channel scale
        // and shift: 106 of ResNet-50's 189 dispatches per run) fold too, and `set_param`
        // computes those again (`refolds`).
        let assigned: HashSet<NodeId> = assigns.iter().map(|&(s, _)| s).collect();
        let frozen = |j: NodeId| {
            optimizer.is_none()
                && matches!(nodes[j].op, Op::Param(..) | Op::State(..))
                && !assigned.contains(&j)
        };
        let mut from_params = vec![false; nodes.len()];
        let mut refolds = Vec::new();
        for &i in &order {
            let n = &nodes[i];
            let source = |j: NodeId| from_params[j] || frozen(j);
            let reads_params = n.inputs.iter().any(|&j| source(j));
            let foldable = !leaves.contains_key(&i)
                && !matches!(n.op, Op::Input(_) | Op::Param(..) | Op::State(..))
                && replayable(&n.op) // a pure function of its inputs
                && !n.inputs.is_empty()
                && (!reads_params || n.shape.iter().product::<usize>() <= PARAM_FOLD_ELEMS)
                && n.inputs.iter().all(|&j| {
                    leaves.contains_key(&j)
                        && (!matches!(nodes[j].op, Op::Param(..) | Op::State(..)) || frozen(j))
                });
            if foldable {
                let args: Vec<&Tensor> = n.inputs.iter().map(|j| &leaves[j]).collect();
                // One that fails here runs (and reports its error) at run time.
                if let Ok(v) = eval(&n.op, &args, &n.shape) {
                    leaves.insert(i, v);
                    inputs[i].clear();
                    if reads_params {
                        from_params[i] = true;
                        refolds.push(i);
                    }
                }
            }
        }
        order = live_order(&inputs, &wanted);
        let mut in_order = vec![false; nodes.len()];
        for &i in &order {
            in_order[i] = true;
        }
        // Values the refolds read but the run does not (a parameter read only by folds, a
        // fold feeding another) are held for `set_param`.
        let mut read_by_refolds = vec![false; nodes.len()];
        for &r in &refolds {
            for &j in &nodes[r].inputs {
                read_by_refolds[j] = true;
            }
        }
        let mut held = HashMap::new();
        leaves.retain(|&i, v| {
            if !in_order[i] && read_by_refolds[i] {
                held.insert(i, v.clone());
            }
            in_order[i]
        });
        // Element-wise chains fuse on a GPU; the CPU reference runs every node.
        let mut fused = HashMap::new();
        if device.is_gpu() && !std::env::var(FUSION_ENV).is_ok_and(|v| v.trim() == "0") {
            let (mut keep, mut leaf) = (vec![false; nodes.len()], vec![false; nodes.len()]);
            for &w in &wanted {
                keep[w] = true;
            }
            for &l in leaves.keys() {
                leaf[l] = true; // values, not computations
            }
            // A generated kernel binds every operand whole: chains over tensors past one
            // storage binding stay op by op, where each op works in windows.
            let max_elems = device
                .gpu_ctx()
                .map_or(usize::MAX, |c| crate::ops::chunk::binding_elems(c));
            let (roots, absorbed) = fusion::plan(&nodes, &order, &keep, &leaf, max_elems);
            order.retain(|&i| !absorbed[i]);
            for (&r, f) in &roots {
                inputs[r] = f.inputs.clone();
            }
            fused = roots;
        }
        let filters = if optimizer.is_none() {
            held_filters(&nodes, &fused, &leaves, &assigned)
        } else {
            HashMap::new() // the weights change every run
        };
        let mut last_use = vec![usize::MAX; nodes.len()];
        for (step, &i) in order.iter().enumerate() {
            for &j in &inputs[i] {
                last_use[j] = step;
            }
        }
        for &w in &wanted {
            last_use[w] = usize::MAX; // kept until the end of the run
        }
        let mut plan = plan_memory(&nodes, &inputs, &fused, &leaves, &order, &last_use);
        let outputs: Vec<NodeId> = outputs.iter().map(|v| v.id()).collect();
        let mut slots = HashMap::new();
        let eager = std::env::var(PLAN_ENV).is_ok_and(|v| v.trim() == "eager");
        let verbose = std::env::var(PLAN_ENV).is_ok_and(|v| v.trim() == "verbose");
        // Only ops whose dispatches depend on shapes alone can be replayed; any other
        // keeps the graph op by op. State updates replay as copies into the states' fixed
        // buffers, and dropout's mask follows its step state, so both record.
        let replayable = order.iter().all(|&i| {
            replayable(&nodes[i].op)
                || matches!(nodes[i].op, Op::State(..) | Op::Assign | Op::Dropout { .. })
        });
        // An inference plan's weights (and the Winograd filters transformed from them)
        // change only through `set_param`: read through textures, they get textures of their
        // own, filled at compile time and by `set_param` (`capture::pin`), not on every run.
        let unpinned = std::env::var(PIN_ENV).is_ok_and(|v| v.trim() == "0");
        let pinnable: Vec<wgpu::Buffer> = match optimizer {
            Some(_) => Vec::new(),
            None if unpinned => Vec::new(),
            None => leaves
                .iter()
                .filter(|(i, _)| !assigned.contains(i))
                .map(|(_, t)| t)
                .chain(filters.values().map(|h| &h.u))
                .filter_map(|t| t.gpu_arg().map(|(buf, _)| buf.clone()))
                .collect(),
        };
        let recorded = match device.gpu_ctx() {
            Some(ctx) if !eager && replayable => {
                let eval = |i: NodeId, args: &[&Tensor]| match fused.get(&i) {
                    Some(f) => fusion::run(f, i, args, filters.get(&i).map(|h| &h.u)),
                    None => Ok(vec![(i, eval(&nodes[i].op, args, &nodes[i].shape)?)]),
                };
                let g = Graphed {
                    nodes: &nodes,
                    inputs: &inputs,
                    order: &order,
                    last_use: &last_use,
                    outputs: &outputs,
                    trained: &trained,
                    assigns: &assigns,
                    optimizer: optimizer.as_ref(),
                    leaves: &leaves,
                    pinnable: &pinnable,
                    eval: &eval,
                    verbose,
                };
                // A graph that cannot be recorded (or fails to) runs op by op, where
                // any error surfaces at run time as it always did.
                match RecordedPlan::record(ctx, device, &g, &mut slots) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        if verbose {
                            eprintln!("wgrad: graph runs op by op: {e}");
                        }
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(r) = &recorded {
            plan.slot_bytes = r.slot_bytes;
            plan.pinned_texture_bytes = r.pinned_bytes;
            plan.dispatches = r.dispatches;
            plan.reads_textures = r.reads.textures;
        }
        Ok(Executor {
            device: device.clone(),
            nodes,
            inputs,
            fused,
            order,
            last_use,
            outputs,
            trained,
            assigns,
            optimizer,
            plan,
            recorded,
            refolds,
            state: Mutex::new(State {
                leaves,
                filters,
                held,
                slots,
                step: 0,
            }),
        })
    }

    /// Whether runs replay commands recorded at compile time (GPU), rather than
    /// running op by op.
    pub fn is_recorded(&self) -> bool {
        self.recorded.is_some()
    }

    /// The WGSL generated for fused element-wise chains (for validation and tests).
    pub fn generated_sources(&self) -> Vec<String> {
        let mut roots: Vec<&NodeId> = self.fused.keys().collect();
        roots.sort();
        roots
            .iter()
            .filter(|r| self.fused[r].kind == fusion::FusedKind::Chain)
            .map(|r| self.fused[r].source.clone())
            .collect()
    }

    /// Nodes folded into fused chains (not counting the chains' roots).
    pub fn fused_nodes(&self) -> usize {
        self.fused.values().map(|f| f.members - 1).sum()
    }

    /// The entry points a run dispatches, in order (empty unless recorded).
    pub fn dispatch_entries(&self) -> Vec<String> {
        self.recorded
            .as_ref()
            .map(RecordedPlan::entries)
            .unwrap_or_default()
    }

    /// Where a recorded GPU plan was recorded both reading operands through textures and
    /// from storage buffers, the two timed at compile (the faster was kept: see
    /// [`MemoryPlan::reads_textures`]); `None` where one form only was recorded or timed.
    pub fn read_timing(&self) -> Option<ReadTiming> {
        self.recorded.as_ref().and_then(|r| r.reads.timing)
    }

    /// A profile of a recorded GPU plan: each kernel dispatch of a run, in order, with its
    /// wall milliseconds, measured by replaying it alone `reps` times (empty unless
    /// recorded). Meant for a throwaway executable: the replays write every output again,
    /// so parameters and optimizer state end up changed by `reps` extra updates. Run a step
    /// first, so the buffers hold real data.
    pub fn profile_dispatches(&self, reps: usize) -> Result<Vec<(String, f64)>> {
        match (&self.recorded, self.device.gpu_ctx()) {
            (Some(plan), Some(ctx)) => {
                let _st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                plan.profile(ctx, reps)
            }
            _ => Ok(Vec::new()),
        }
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
        let t = st
            .leaves
            .get(&id)
            .or(st.held.get(&id))
            .cloned()
            .ok_or_else(|| Error::Invalid {
                op: "param",
                detail: format!("parameter {name:?} is not used by the compiled outputs"),
            })?;
        match (&self.recorded, self.device.gpu_ctx()) {
            // The recorded plan updates its fixed buffer in place: hand out a copy.
            (Some(_), Some(ctx)) => {
                let copy =
                    crate::ops::gpu_output_big(ctx, &self.device, "param", t.shape(), t.dtype())?;
                copy_tensor(ctx, &t, &copy);
                Ok(copy)
            }
            _ => Ok(t),
        }
    }

    /// Replaces parameter (or state) `name` (same shape) with `value`. An f16 value is widened
    /// to the parameter's f32 (exact); any other dtype mismatch is an [`Error::DType`].
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
        let want = self.nodes[id].dtype;
        let v = match value.dtype() {
            d if d == want => value.to_device(&self.device)?,
            // An f16 value (e.g. from a half-precision checkpoint) widens exactly, on its own
            // device (the CPU reference computes f16 everywhere), to the f32 the graph runs in.
            DType::F16 if want == DType::F32 => {
                value.to_dtype(DType::F32)?.to_device(&self.device)?
            }
            got => {
                return Err(Error::DType {
                    op: "set_param",
                    got: format!("{got} for {name:?}"),
                    expected: want.to_string(),
                })
            }
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.held.contains_key(&id) {
            st.held.insert(id, v.clone());
        }
        self.install(&mut st, id, v)?;
        // Nodes folded from it at compile time, computed again in dependency order.
        let mut changed: HashSet<NodeId> = HashSet::from([id]);
        for &r in &self.refolds {
            let n = &self.nodes[r];
            if !n.inputs.iter().any(|j| changed.contains(j)) {
                continue;
            }
            let args: Vec<Tensor> = n
                .inputs
                .iter()
                .map(|j| st.leaves.get(j).or(st.held.get(j)).cloned())
                .collect::<Option<_>>()
                .ok_or_else(|| Error::Invalid {
                    op: "set_param",
                    detail: format!("a value folded from {name:?} lost its inputs"),
                })?;
            let refs: Vec<&Tensor> = args.iter().collect();
            let value = eval(&n.op, &refs, &n.shape)?;
            if st.held.contains_key(&r) {
                st.held.insert(r, value.clone());
            }
            self.install(&mut st, r, value)?;
            changed.insert(r);
        }
        Ok(())
    }

    /// Makes `value` the leaf value of node `id` where the run reads it: written into the
    /// fixed buffer that recorded bind groups hold, in order, or put in place of the old.
    /// Transformed filters held from it are computed again.
    fn install(&self, st: &mut State, id: NodeId, value: Tensor) -> Result<()> {
        // A recorded plan binds fixed buffers (and textures pinned from them): write into
        // those, then fill their textures again.
        let write_fixed =
            |ctx: &crate::gpu::GpuContext, plan: &RecordedPlan, value: &Tensor, fixed: &Tensor| {
                copy_tensor(ctx, value, fixed);
                match fixed.gpu_arg() {
                    Some((buf, _)) => plan.refill_pin(ctx, buf),
                    None => Ok(()),
                }
            };
        match (&self.recorded, self.device.gpu_ctx(), st.leaves.get(&id)) {
            (Some(plan), Some(ctx), Some(fixed)) => write_fixed(ctx, plan, &value, fixed)?,
            (_, _, Some(_)) => {
                st.leaves.insert(id, value.clone());
            }
            _ => {} // not read by the run (held only)
        }
        for h in st.filters.values_mut().filter(|h| h.leaf == id) {
            let u = transform_filters(&value, &h.x, h.geom)?;
            match (&self.recorded, self.device.gpu_ctx()) {
                (Some(plan), Some(ctx)) => write_fixed(ctx, plan, &u, &h.u)?,
                _ => h.u = u,
            }
        }
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
        if let (Some(plan), Some(ctx)) = (&self.recorded, self.device.gpu_ctx()) {
            let step = st.step + 1;
            let out = plan.run(ctx, &self.device, &feeds, self.optimizer.as_ref(), step)?;
            if self.optimizer.is_some() {
                st.step = step;
            }
            return Ok(out);
        }
        let feeds: HashMap<&str, Tensor> = feeds
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(&self.device)?)))
            .collect::<Result<_>>()?;
        // Leaves first: a fused op may read one created after it (a gradient's seed).
        let mut values: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        for (&i, v) in &st.leaves {
            values[i] = Some(v.clone());
        }
        for (step, &i) in self.order.iter().enumerate() {
            let n = &self.nodes[i];
            if st.leaves.contains_key(&i) {
                // set above
            } else if let Op::Input(name) = &n.op {
                values[i] = Some(feeds[name.as_str()].clone());
            } else {
                let args: Vec<&Tensor> = self.inputs[i]
                    .iter()
                    .map(|&j| {
                        values[j]
                            .as_ref()
                            .expect("inputs are computed before their users")
                    })
                    .collect();
                let made = match self.fused.get(&i) {
                    Some(f) => fusion::run(f, i, &args, st.filters.get(&i).map(|h| &h.u))?,
                    None => vec![(i, eval(&n.op, &args, &n.shape)?)],
                };
                for (j, v) in made {
                    values[j] = Some(v);
                }
            }
            for &j in &self.inputs[i] {
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

    /// Checks every feed (name, dtype, shape) and that none is missing; returns
    /// the ones the compiled outputs depend on.
    fn check_feeds<'a, 't>(
        &self,
        feeds: &[(&'a str, &'t Tensor)],
    ) -> Result<HashMap<&'a str, &'t Tensor>> {
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
                map.insert(*name, *t);
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

/// The Winograd products of an inference plan whose filters are a leaf's value (through
/// reshapes) that only `set_param` changes, with their transformed filters. One that
/// fails to transform here transforms on every run, as before, and reports any error there.
fn held_filters(
    nodes: &[Node],
    fused: &HashMap<NodeId, Fused>,
    leaves: &HashMap<NodeId, Tensor>,
    assigned: &HashSet<NodeId>,
) -> HashMap<NodeId, HeldFilters> {
    use crate::fused::{FusedKind, ProductOp};
    let mut held = HashMap::new();
    for (&root, f) in fused {
        let FusedKind::Product {
            op: ProductOp::Winograd(geom),
            ..
        } = f.kind
        else {
            continue;
        };
        let (mut leaf, x) = (f.inputs[0], nodes[f.inputs[1]].shape.clone());
        while !leaves.contains_key(&leaf) && matches!(nodes[leaf].op, Op::Reshape(_)) {
            leaf = nodes[leaf].inputs[0];
        }
        let Some(w) = leaves.get(&leaf).filter(|_| !assigned.contains(&leaf)) else {
            continue;
        };
        if let Ok(u) = transform_filters(w, &x, geom) {
            held.insert(root, HeldFilters { leaf, x, geom, u });
        }
    }
    held
}

/// The transformed Winograd filters of `w`, a leaf holding (F, C, 3, 3) filters in any
/// shape (the product reads them as (F, 9C)), for images of shape `x`.
fn transform_filters(w: &Tensor, x: &[usize], geom: crate::ops::conv::Conv2d) -> Result<Tensor> {
    w.reshape(&[w.shape()[0], x[1], 3, 3])?
        .winograd_filters(x, geom)
}

/// Whether an op's recorded dispatches (params uniforms, bind groups) stay right
/// for every later run: true for the ops whose kernels depend only on shapes and
/// values in their input buffers. New ops run op by op until listed here.
fn replayable(op: &Op) -> bool {
    matches!(
        op,
        Op::Input(_)
            | Op::Param(..)
            | Op::Const(_)
            | Op::Full(_)
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Scalar { .. }
            | Op::MatMul { .. }
            | Op::Reduce { .. }
            | Op::ReduceAll(_)
            | Op::Softmax(_)
            | Op::LogSoftmax(_)
            | Op::Permute(_)
            | Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::SumTo(_)
            | Op::Slice { .. }
            | Op::Concat(_)
            | Op::CrossEntropy(_)
            | Op::CrossEntropyGrad(_)
            | Op::CrossEntropyCount(_)
            | Op::Im2Col(_)
            | Op::Col2Im(..)
            | Op::ConvGradInputPhased(..)
            | Op::Pool2d(_)
            | Op::Pool2dGrad(..)
            | Op::DepthwiseConv2d(_)
            | Op::DepthwiseGradX(..)
            | Op::DepthwiseGradW(..)
            | Op::Conv(..)
            | Op::BatchNorm(_)
            | Op::Gather(_)
            | Op::ScatterAdd { .. }
    )
}

/// The nodes `wanted` depends on through `inputs`, in id order (ids are topological).
fn live_order(inputs: &[Vec<NodeId>], wanted: &[NodeId]) -> Vec<NodeId> {
    let mut live = vec![false; inputs.len()];
    for &w in wanted {
        live[w] = true;
    }
    for i in (0..inputs.len()).rev() {
        if live[i] {
            for &j in &inputs[i] {
                live[j] = true;
            }
        }
    }
    (0..inputs.len()).filter(|&i| live[i]).collect()
}

/// Simulates the run: bytes alive at each step with and without freeing.
fn plan_memory(
    nodes: &[Node],
    inputs: &[Vec<NodeId>],
    fused: &HashMap<NodeId, Fused>,
    leaves: &HashMap<NodeId, Tensor>,
    order: &[NodeId],
    last_use: &[usize],
) -> MemoryPlan {
    let bytes =
        |i: NodeId| (nodes[i].shape.iter().product::<usize>() * nodes[i].dtype.size()) as u64;
    let is_intermediate =
        |i: NodeId| !leaves.contains_key(&i) && !matches!(nodes[i].op, Op::Input(_));
    let (mut live, mut peak, mut total) = (0u64, 0u64, 0u64);
    for (step, &i) in order.iter().enumerate() {
        // A fused chain's root also writes the chain values used elsewhere.
        let extra = fused.get(&i).map_or(&[][..], |f| f.outputs.as_slice());
        for &m in std::iter::once(&i).chain(extra) {
            if is_intermediate(m) {
                live += bytes(m);
                total += bytes(m);
            }
        }
        peak = peak.max(live);
        // A node may read one value twice (x + x): it is freed once.
        for (k, &j) in inputs[i].iter().enumerate() {
            if last_use[j] == step && is_intermediate(j) && !inputs[i][..k].contains(&j) {
                live -= bytes(j);
            }
        }
    }
    MemoryPlan {
        nodes: order.len(),
        unplanned_bytes: total,
        peak_bytes: peak,
        slot_bytes: 0,
        pinned_texture_bytes: 0,
        reads_textures: false,
        dispatches: 0,
    }
}

/// Copies `from`'s data over `to`'s (same size), in order with recorded work.
fn copy_tensor(ctx: &crate::gpu::GpuContext, from: &Tensor, to: &Tensor) {
    if let (Some((src, bytes)), Some((dst, _))) = (from.gpu_arg(), to.gpu_arg()) {
        if bytes > 0 {
            ctx.copy(src, 0, dst, 0, bytes.div_ceil(4) * 4);
        }
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
        Op::CrossEntropy(o) => x[0].cross_entropy_with(x[1], *o),
        Op::CrossEntropyGrad(o) => x[0].cross_entropy_backward_with(x[1], x[2], *o),
        Op::CrossEntropyCount(o) => crate::ops::loss::counted_rows(x[0], *o),
        Op::Im2Col(geom) => x[0].im2col(*geom),
        Op::Col2Im(geom, image) => x[0].col2im(*geom, image),
        Op::ConvGradInputPhased(geom, image) => x[0].conv2d_grad_input_phased(x[1], *geom, image),
        Op::Pool2d(p) => x[0].pool2d(*p),
        Op::Pool2dGrad(p, image) => match x {
            [x, y, g] => g.pool2d_backward(*p, image, Some((x, y))),
            _ => x[0].pool2d_backward(*p, image, None),
        },
        Op::DepthwiseConv2d(geom) => x[0].depthwise_conv2d(x[1], *geom),
        Op::DepthwiseGradX(geom, s) => x[0].depthwise_backward_data(x[1], *geom, s),
        Op::DepthwiseGradW(geom, s) => x[0].depthwise_backward_filter(x[1], *geom, s),
        Op::Conv(pass, geom) => x[0].conv2d_pass(x[1], *pass, *geom),
        Op::BatchNorm(p) => Tensor::batch_norm_pass(*p, x),
        Op::Gather(axis) => x[0].gather(x[1], *axis as isize),
        Op::ScatterAdd { axis, size } => x[0].scatter_add(x[1], *axis as isize, *size),
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
