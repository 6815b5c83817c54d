//! The recorded plan of a graph compiled for a GPU: every buffer assigned once,
//! every dispatch's params uniform and bind group created once, at compile time.
//!
//! Compiling runs the graph's ops once under a capture (`gpu::capture`): each
//! intermediate gets a slot buffer from the plan's private pool when its node
//! runs and gives it back after its last use, so later nodes reuse it (liveness
//! intervals → slots, best fit); the dispatches are kept, not encoded. Inputs get
//! fixed buffers the feeds are written into; parameters and optimizer state keep
//! fixed buffers that the recorded update writes in place (generated kernels, a few
//! parameters per dispatch: src/fusion.rs), or, unfused, copies its results back
//! into. A run then writes the feeds, encodes the kept commands and copies the
//! outputs into fresh tensors — all into the pending encoder, submitted once at
//! read back.

use std::collections::HashMap;
use std::sync::Arc;

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::capture::{self, Command};
use crate::gpu::pool::Pool;
use crate::gpu::GpuContext;
use crate::graph::{Node, NodeId, Op};
use crate::optim::{params_words, state_needs, update, update_windows, Optimizer, SlotState};
use crate::tensor::Tensor;

/// A graph's commands recorded for one GPU context.
pub(crate) struct RecordedPlan {
    /// (input name, its fixed buffer as a tensor).
    inputs: Vec<(String, Tensor)>,
    /// Forward and backward dispatches.
    commands: Vec<Command>,
    /// The outputs' values in their slots (copied out every run).
    outputs: Vec<Tensor>,
    /// Optimizer updates: in place, or per parameter with the copies back into the
    /// fixed parameter and moment buffers.
    update: Vec<Command>,
    /// (index into `update`, elements) of dispatches whose params change per step:
    /// Adam's, per parameter or fused (elements of the group), whose params are
    /// `params_words(elements, optimizer, step)` either way.
    per_step: Vec<(usize, usize)>,
    /// State updates: copies of the assigned values into the states' fixed buffers,
    /// after the outputs are copied out (an output may be a state's old value).
    assigns: Vec<Command>,
    /// The copies filling the plan's pinned textures (`capture::pin`), one per buffer:
    /// encoded at compile time and again when `set_param` writes their buffer.
    pins: Vec<Command>,
    /// Bytes of those textures.
    pub(crate) pinned_bytes: u64,
    /// Bytes of the slot buffers the plan allocated for intermediates.
    pub(crate) slot_bytes: u64,
    /// Dispatches per run.
    pub(crate) dispatches: usize,
    /// How its operands are read, and what timing chose it.
    pub(crate) reads: crate::plan_reads::Reads,
}

/// What one recording of a plan shares with the other: the graph, and the fixed input and
/// optimizer-moment buffers made once for both.
struct Form<'a> {
    g: &'a Graphed<'a>,
    inputs: &'a [(String, Tensor)],
    fixed_inputs: &'a HashMap<NodeId, Tensor>,
    moments: &'a HashMap<NodeId, (Option<Tensor>, Option<Tensor>)>,
}

/// Runs one node: the values it makes (a fused chain's root also makes the
/// chain values used elsewhere).
pub(crate) type EvalNode<'a> = &'a dyn Fn(NodeId, &[&Tensor]) -> Result<Vec<(NodeId, Tensor)>>;

/// What the executor hands over to be recorded.
pub(crate) struct Graphed<'a> {
    pub(crate) nodes: &'a [Node],
    /// The nodes each node reads (a fused chain's root reads the chain's inputs).
    pub(crate) inputs: &'a [Vec<NodeId>],
    pub(crate) order: &'a [NodeId],
    pub(crate) last_use: &'a [usize],
    pub(crate) outputs: &'a [NodeId],
    pub(crate) trained: &'a [(NodeId, NodeId)],
    /// (state, assign node): the assigned value replaces the state's after every run.
    pub(crate) assigns: &'a [(NodeId, NodeId)],
    pub(crate) optimizer: Option<&'a Optimizer>,
    /// Values of parameter, constant and fill nodes (fixed buffers).
    pub(crate) leaves: &'a HashMap<NodeId, Tensor>,
    /// Buffers that change only through `set_param` (an inference plan's weights): read
    /// through textures, they are read through textures of the plan's own (`capture::pin`).
    pub(crate) pinnable: &'a [wgpu::Buffer],
    /// Runs one node (the executor's `eval`, or a fused chain).
    pub(crate) eval: EvalNode<'a>,
    /// `WGRAD_PLAN=verbose`: say which form of the plan was kept (`crate::plan_reads`).
    pub(crate) verbose: bool,
}

/// A tensor on a fixed buffer of the shared pool, owned by the plan for its life.
fn fixed(ctx: &Arc<GpuContext>, device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
    crate::ops::gpu_output_big(ctx, device, "compile", shape, dtype)
}

impl RecordedPlan {
    /// Records `g` on `ctx`; `state` receives the optimizer's fixed moment buffers. A plan
    /// that reads operands through textures is recorded a second time reading storage
    /// buffers, and the faster of the two is kept where the host can time both
    /// (`crate::plan_reads`).
    pub(crate) fn record(
        ctx: &Arc<GpuContext>,
        device: &Device,
        g: &Graphed<'_>,
        state: &mut HashMap<NodeId, SlotState>,
    ) -> Result<RecordedPlan> {
        let mut inputs = Vec::new();
        let mut fixed_inputs = HashMap::new();
        for &i in g.order {
            if let Op::Input(name) = &g.nodes[i].op {
                let t = fixed(ctx, device, &g.nodes[i].shape, g.nodes[i].dtype)?;
                fixed_inputs.insert(i, t.clone());
                inputs.push((name.clone(), t));
            }
        }
        let mut moments = HashMap::new();
        if let Some(opt) = g.optimizer {
            let (needs_m, needs_v) = state_needs(opt);
            for &(p, _) in g.trained {
                let shape = &g.nodes[p].shape;
                let zeros = |need: bool| -> Result<Option<Tensor>> {
                    need.then(|| Tensor::zeros(device, shape)).transpose()
                };
                moments.insert(p, (zeros(needs_m)?, zeros(needs_v)?));
            }
        }
        let form = Form {
            g,
            inputs: &inputs,
            fixed_inputs: &fixed_inputs,
            moments: &moments,
        };
        let plan = crate::plan_reads::record_faster(ctx, g.nodes, g.verbose, |slots| {
            Self::record_form(ctx, &form, slots)
        })?;
        for (p, (m, v)) in moments {
            state.insert(p, SlotState::with(m, v));
        }
        Ok(plan)
    }

    /// Records one form of the plan on `slots` (a new pool when `None`), with its pinned
    /// textures filled: the slot pool is returned for a second form to share.
    fn record_form(
        ctx: &Arc<GpuContext>,
        form: &Form<'_>,
        slots: Option<Arc<Pool>>,
    ) -> Result<(RecordedPlan, Arc<Pool>)> {
        let g = form.g;
        capture::begin(ctx, slots.unwrap_or_else(|| Arc::new(Pool::slots())));
        capture::pin(ctx, g.pinnable.iter().cloned());
        let recorded = Self::record_ops(ctx, g, form.fixed_inputs, form.moments);
        let (outputs, split, assign_at, per_step) = match recorded {
            Ok(r) => r,
            Err(e) => {
                capture::abort();
                return Err(e);
            }
        };
        let captured = capture::end(ctx)?;
        let mut commands = captured.commands;
        let assigns = commands.split_off(assign_at);
        let update = commands.split_off(split);
        let stats = captured.slots.stats();
        let dispatches = commands
            .iter()
            .chain(&update)
            .chain(&assigns)
            .filter(|c| matches!(c, Command::Dispatch(_)))
            .count();
        let pinned_bytes = captured.pins.iter().map(|c| c.texture_bytes()).sum();
        let pins: Vec<Command> = captured
            .pins
            .into_iter()
            .map(Command::TextureCopy)
            .collect();
        ctx.replay("compile", &[], &[&pins])?;
        let plan = RecordedPlan {
            inputs: form.inputs.to_vec(),
            commands,
            outputs,
            update,
            per_step,
            assigns,
            pins,
            pinned_bytes,
            slot_bytes: stats.live_bytes + stats.free_bytes,
            dispatches,
            reads: crate::plan_reads::Reads::default(),
        };
        Ok((plan, captured.slots))
    }

    /// Runs the ops under the capture: (outputs, where the update section starts,
    /// where the state updates start, per-step dispatches relative to the update).
    #[allow(clippy::type_complexity)]
    fn record_ops(
        ctx: &GpuContext,
        g: &Graphed<'_>,
        inputs: &HashMap<NodeId, Tensor>,
        moments: &HashMap<NodeId, (Option<Tensor>, Option<Tensor>)>,
    ) -> Result<(Vec<Tensor>, usize, usize, Vec<(usize, usize)>)> {
        let (outputs, split, per_step, values) = Self::record_steps(ctx, g, inputs, moments)?;
        let assign_at = capture::position(ctx);
        for &(s, a) in g.assigns {
            let (Some(new), Some(state)) = (&values[a], g.leaves.get(&s)) else {
                unreachable!("assignments are kept to the end; states are leaves")
            };
            copy_into(ctx, new, state);
        }
        Ok((outputs, split, assign_at, per_step))
    }

    /// [`Self::record_ops`] up to the state updates, which are left to it along with the
    /// values of the nodes kept to the end.
    #[allow(clippy::type_complexity)]
    fn record_steps(
        ctx: &GpuContext,
        g: &Graphed<'_>,
        inputs: &HashMap<NodeId, Tensor>,
        moments: &HashMap<NodeId, (Option<Tensor>, Option<Tensor>)>,
    ) -> Result<(Vec<Tensor>, usize, Vec<(usize, usize)>, Vec<Option<Tensor>>)> {
        // Leaves first: a fused op may read one created after it (a gradient's seed).
        let mut values: Vec<Option<Tensor>> = vec![None; g.nodes.len()];
        for (&i, v) in g.leaves {
            values[i] = Some(v.clone());
        }
        for (step, &i) in g.order.iter().enumerate() {
            let n = &g.nodes[i];
            if g.leaves.contains_key(&i) {
                // set above
            } else if let Op::Input(_) = &n.op {
                values[i] = Some(inputs[&i].clone());
            } else {
                let args: Vec<&Tensor> = g.inputs[i]
                    .iter()
                    .map(|&j| values[j].as_ref().expect("inputs run before their users"))
                    .collect();
                for (j, v) in (g.eval)(i, &args)? {
                    values[j] = Some(v);
                }
            }
            for &j in &g.inputs[i] {
                if g.last_use[j] == step {
                    values[j] = None; // its slot goes to later nodes
                }
            }
        }
        let outputs: Vec<Tensor> = g
            .outputs
            .iter()
            .map(|&o| values[o].clone().expect("outputs are kept"))
            .collect();
        let split = capture::position(ctx);
        let mut per_step = Vec::new();
        let fused = Self::record_fused_update(ctx, g, &values, moments, split, &mut per_step)?;
        if let Some(opt) = g.optimizer {
            let adam = matches!(opt, Optimizer::Adam { .. });
            for (k, &(p, gid)) in g.trained.iter().enumerate() {
                if fused.get(k) == Some(&true) {
                    continue;
                }
                let grad = values[gid].clone().expect("gradients are kept");
                let cur = &g.leaves[&p];
                let (m, v) = &moments[&p];
                let mut slot = SlotState::with(m.clone(), v.clone());
                let at = capture::position(ctx);
                let new = update(opt, cur, &grad, &mut slot, 1)?;
                // One dispatch per window, each rewritten with its own length per step.
                if adam && capture::position(ctx) > at {
                    for (w, (_, len)) in update_windows(ctx, cur.numel()).into_iter().enumerate() {
                        per_step.push((at - split + w, len));
                    }
                }
                copy_into(ctx, &new, cur);
                let (m_new, v_new) = slot.parts();
                if let (Some(from), Some(to)) = (m_new, m) {
                    copy_into(ctx, from, to);
                }
                if let (Some(from), Some(to)) = (v_new, v) {
                    copy_into(ctx, from, to);
                }
            }
        }
        Ok((outputs, split, per_step, values))
    }

    /// Records the optimizer's update of every parameter in place, in their fixed
    /// buffers, by generated kernels a few parameters per dispatch (src/fusion.rs), with
    /// no copies back: plain SGD, SGD with momentum and Adam. Returns which of the trained
    /// parameters it updated: none where the update is not fused (no optimizer,
    /// `WGRAD_FUSION=0`, or a gradient sharing a parameter's buffer), and never one past a
    /// storage binding (a generated kernel binds each whole: those take the per-parameter
    /// path, which updates in windows); Adam's dispatches join `per_step`.
    fn record_fused_update(
        ctx: &GpuContext,
        g: &Graphed<'_>,
        values: &[Option<Tensor>],
        moments: &HashMap<NodeId, (Option<Tensor>, Option<Tensor>)>,
        split: usize,
        per_step: &mut Vec<(usize, usize)>,
    ) -> Result<Vec<bool>> {
        let none = vec![false; g.trained.len()];
        let Some(opt) = g.optimizer.filter(|_| fuse_updates()) else {
            return Ok(none);
        };
        let grads: Vec<&Tensor> = g
            .trained
            .iter()
            .map(|&(_, gid)| values[gid].as_ref().expect("gradients are kept"))
            .collect();
        let params: Vec<&Tensor> = g.trained.iter().map(|(p, _)| &g.leaves[p]).collect();
        // A gradient sharing a parameter's buffer (a view of it) cannot be bound beside
        // it read-write: those graphs take the per-parameter path.
        let buf = |t: &Tensor| t.gpu_arg().map(|(b, _)| b.clone());
        let param_bufs: Vec<_> = params.iter().map(|p| buf(p)).collect();
        if grads.iter().any(|gr| param_bufs.contains(&buf(gr))) {
            return Ok(none);
        }
        let fused: Vec<bool> = params
            .iter()
            .map(|p| crate::ops::chunk::fits(ctx, p.numel()))
            .collect();
        let params: Vec<&Tensor> = params
            .into_iter()
            .zip(&fused)
            .filter(|x| *x.1)
            .map(|x| x.0)
            .collect();
        let grads: Vec<&Tensor> = grads
            .into_iter()
            .zip(&fused)
            .filter(|x| *x.1)
            .map(|x| x.0)
            .collect();
        let trained: Vec<&(NodeId, NodeId)> = g
            .trained
            .iter()
            .zip(&fused)
            .filter(|x| *x.1)
            .map(|x| x.0)
            .collect();
        match (opt, state_needs(opt)) {
            // Plain SGD needs no state: a few parameters per dispatch, updated in place.
            (
                &Optimizer::Sgd {
                    lr, weight_decay, ..
                },
                (false, false),
            ) => {
                let pairs: Vec<(&Tensor, &Tensor)> =
                    params.iter().copied().zip(grads.iter().copied()).collect();
                crate::fusion::sgd_update_all(&pairs, lr, weight_decay)?;
            }
            // Momentum SGD and Adam update their moments in place too, in the fixed
            // buffers `record` made (and handed to the executor's optimizer state).
            (_, (true, _)) => {
                let mut slots = Vec::with_capacity(params.len());
                for (k, &&(p, _)) in trained.iter().enumerate() {
                    let (Some(m), v) = &moments[&p] else {
                        unreachable!("record makes the moments the optimizer needs")
                    };
                    slots.push(crate::fusion::InPlace {
                        p: params[k],
                        g: grads[k],
                        m,
                        v: v.as_ref(),
                    });
                }
                let adam = matches!(opt, Optimizer::Adam { .. });
                let buffers = crate::fusion::stateful_buffers(adam);
                for group in slots.chunks(crate::fusion::params_per_dispatch(ctx, buffers)) {
                    let at = capture::position(ctx);
                    // Recorded at step 1; Adam's bias corrections are rewritten per run.
                    if let Some(n) = crate::fusion::stateful_update(opt, group, 1)? {
                        if adam {
                            per_step.push((at - split, n));
                        }
                    }
                }
            }
            _ => return Ok(none),
        }
        Ok(fused)
    }

    /// Entry points of the recorded dispatches, in run order (for tests and listings).
    pub(crate) fn entries(&self) -> Vec<String> {
        self.commands
            .iter()
            .chain(&self.assigns)
            .chain(&self.update)
            .filter_map(|c| match c {
                Command::Dispatch(r) => Some(r.entry.clone()),
                Command::Copy { .. } | Command::TextureCopy(_) => None,
            })
            .collect()
    }

    /// Fills the pinned texture of `buffer` again (after `set_param` wrote new values into
    /// it), in order with the commands encoded before; nothing if the plan pinned none.
    pub(crate) fn refill_pin(&self, ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<()> {
        let pin = self
            .pins
            .iter()
            .find(|c| matches!(c, Command::TextureCopy(t) if t.src() == buffer));
        match pin {
            Some(pin) => ctx.replay("set_param", &[], &[std::slice::from_ref(pin)]),
            None => Ok(()),
        }
    }

    /// Wall milliseconds per recorded dispatch, in run order: each dispatch (with the texture
    /// copies that fill its operands) replayed alone `reps` times back to back, then waited
    /// for, less the cost of an empty wait. Kernels run on whatever the buffers hold (the last run's data), and
    /// every replay writes its outputs again: parameters and optimizer state included.
    pub(crate) fn profile(&self, ctx: &Arc<GpuContext>, reps: usize) -> Result<Vec<(String, f64)>> {
        let reps = reps.max(1);
        let wait = |ctx: &Arc<GpuContext>| -> Result<f64> {
            let t0 = std::time::Instant::now();
            ctx.synchronize("profile")?;
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        };
        ctx.synchronize("profile")?;
        let idle = (0..5).map(|_| wait(ctx)).collect::<Result<Vec<f64>>>()?;
        let idle = idle.into_iter().fold(f64::INFINITY, f64::min);
        let mut out = Vec::new();
        let lists = [&self.commands, &self.assigns, &self.update];
        for (list, i) in lists.iter().flat_map(|l| (0..l.len()).map(move |i| (l, i))) {
            let Command::Dispatch(r) = &list[i] else {
                continue;
            };
            // With the texture copies that fill its operands (kept right before it).
            let first = list[..i]
                .iter()
                .rposition(|c| !matches!(c, Command::TextureCopy(_)))
                .map_or(0, |p| p + 1);
            let one = &list[first..=i];
            let sections: Vec<&[Command]> = vec![one; reps];
            let t0 = std::time::Instant::now();
            ctx.replay("profile", &[], &sections)?;
            ctx.synchronize("profile")?;
            let ms = (t0.elapsed().as_secs_f64() * 1e3 - idle).max(0.0) / reps as f64;
            out.push((r.entry.clone(), ms));
        }
        Ok(out)
    }

    /// One run: feeds written into the fixed inputs, the recorded commands
    /// encoded, the outputs copied into fresh tensors; `step` counts from 1.
    pub(crate) fn run(
        &self,
        ctx: &Arc<GpuContext>,
        device: &Device,
        feeds: &HashMap<&str, &Tensor>,
        optimizer: Option<&Optimizer>,
        step: u64,
    ) -> Result<Vec<Tensor>> {
        let mut host: Vec<(&wgpu::Buffer, Vec<u8>)> = Vec::new();
        let mut copies_in = Vec::new();
        for (name, fixed) in &self.inputs {
            let feed = feeds[name.as_str()];
            let dst = fixed.gpu_arg().expect("fixed inputs are GPU tensors").0;
            match feed.gpu_arg() {
                Some((src, bytes)) if feed.device().same(device) => {
                    copies_in.extend(whole_copy(src, dst, bytes));
                }
                _ => host.push((dst, host_bytes(feed)?)),
            }
        }
        if let Some(opt) = optimizer {
            for &(at, n) in &self.per_step {
                if let Command::Dispatch(r) = &self.update[at] {
                    let words = params_words(n, opt, step);
                    host.push((&r.uniform, bytemuck::cast_slice(&words).to_vec()));
                }
            }
        }
        let mut results = Vec::with_capacity(self.outputs.len());
        let mut copies_out = Vec::new();
        for o in &self.outputs {
            let t = crate::ops::gpu_output_big(ctx, device, "run", o.shape(), o.dtype())?;
            if let (Some((src, bytes)), Some((dst, _))) = (o.gpu_arg(), t.gpu_arg()) {
                copies_out.extend(whole_copy(src, dst, bytes));
            }
            results.push(t);
        }
        let writes: Vec<(&wgpu::Buffer, &[u8])> =
            host.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        let update: &[Command] = if optimizer.is_some() {
            &self.update
        } else {
            &[]
        };
        ctx.replay(
            "run",
            &writes,
            &[
                &copies_in,
                &self.commands,
                &copies_out,
                &self.assigns,
                update,
            ],
        )?;
        Ok(results)
    }
}

impl crate::plan_reads::PlanForm for RecordedPlan {
    /// Whether any dispatch of a run reads an operand through a texture (copied or pinned).
    fn reads_textures(&self) -> bool {
        self.pinned_bytes > 0
            || self
                .commands
                .iter()
                .chain(&self.update)
                .chain(&self.assigns)
                .any(|c| matches!(c, Command::TextureCopy(_)))
    }

    /// Encodes the forward and backward commands alone: no feeds, no outputs copied out, no
    /// optimizer update and no state assignment. They write the plan's slots only, so
    /// replaying them changes nothing a run reads (`crate::plan_reads` times these).
    fn replay_forward_backward(&self, ctx: &GpuContext) -> Result<()> {
        ctx.replay("compile", &[], &[&self.commands])
    }

    fn zero_inputs(&self, ctx: &GpuContext) -> Result<()> {
        let zeros: Vec<(&wgpu::Buffer, Vec<u8>)> = self
            .inputs
            .iter()
            .filter_map(|(_, t)| t.gpu_arg())
            .map(|(buf, bytes)| (buf, vec![0u8; bytes as usize]))
            .collect();
        let writes: Vec<(&wgpu::Buffer, &[u8])> =
            zeros.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        ctx.replay("compile", &writes, &[])
    }

    fn reads_mut(&mut self) -> &mut crate::plan_reads::Reads {
        &mut self.reads
    }
}

/// Whether updates may be fused (`WGRAD_FUSION=0` keeps one kernel per parameter).
fn fuse_updates() -> bool {
    !std::env::var(crate::fusion::FUSION_ENV).is_ok_and(|v| v.trim() == "0")
}

/// The command copying a tensor's `bytes` from `src` to `dst` (none when empty).
fn whole_copy(src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) -> Option<Command> {
    (bytes > 0).then(|| Command::Copy {
        src: src.clone(),
        src_off: 0,
        dst: dst.clone(),
        dst_off: 0,
        bytes: bytes.div_ceil(4) * 4,
    })
}

/// Records a copy of `from`'s data over `to`'s (same size).
fn copy_into(ctx: &GpuContext, from: &Tensor, to: &Tensor) {
    if let (Some((src, bytes)), Some((dst, _))) = (from.gpu_arg(), to.gpu_arg()) {
        if bytes > 0 && src != dst {
            ctx.copy(src, 0, dst, 0, bytes.div_ceil(4) * 4);
        }
    }
}

/// The bytes of a tensor's data, read from wherever it lives.
fn host_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F32 => bytemuck::cast_slice(&t.to_vec::<f32>()?).to_vec(),
        DType::I32 => bytemuck::cast_slice(&t.to_vec::<i32>()?).to_vec(),
        DType::U32 => bytemuck::cast_slice(&t.to_vec::<u32>()?).to_vec(),
        DType::F16 => {
            return Err(Error::DType {
                op: "run",
                got: "f16".into(),
                expected: "f32, i32 or u32 feeds".into(),
            })
        }
    })
}
