//! `Graph`: ops recorded as nodes, with shapes inferred and checked when the
//! graph is built, so running it can assume valid input.
//!
//! A [`Var`] is a handle to one node; its methods mirror [`Tensor`]'s ops and
//! return `Result<Var>` so shape errors surface at build time with `?`.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::init::Init;
use crate::ops::batchnorm::BatchNormPass;
use crate::ops::conv::Conv2d;
use crate::ops::conv_gemm::ConvPass;
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::loss::CrossEntropyOptions;
use crate::ops::pool::{Pool2d, PoolKind};
use crate::ops::reduce::ReduceOp;
use crate::shape::{broadcast_shapes, check_rank, normalize_axis};
use crate::tensor::Tensor;

// The graph side of op families whose `Var` methods choose a composition or check more
// than a shape (the primitives themselves are in ops/<family>.rs).
mod conv;
mod dropout;
mod gather;
pub mod work;

/// Index of a node in its graph.
pub type NodeId = usize;

/// What a node computes. Axes are resolved (non-negative) when recorded.
#[derive(Clone, Debug)]
pub enum Op {
    /// A value fed at every run, by name.
    Input(String),
    /// A trainable parameter, initialised once and kept on the device.
    Param(String, Init),
    /// Non-trainable state kept on the device across runs (running statistics, step
    /// counters), read and written by name like a parameter but never given a gradient.
    State(String, Init),
    /// `state ← value` (inputs: the [`Op::State`] node, the new value): every run of an
    /// executor computes the value with the step's other work and installs it after the
    /// step, so the update needs no extra submit and the step reads the old value.
    Assign,
    /// Inverted dropout (inputs: x, a step counter of shape (1)): each element is kept
    /// with probability 1 − p and scaled by 1/(1 − p), from a hash of (seed, step,
    /// index) that the CPU reference and the GPU compute identically.
    Dropout {
        /// Probability of zeroing an element, in [0, 1).
        p: f32,
        /// Seed of the mask stream.
        seed: u64,
    },
    /// A fixed value (kept on the CPU in the graph; uploaded when compiled).
    Const(Tensor),
    /// A tensor of one repeated value.
    Full(f32),
    /// An element-wise function of one input.
    Unary(UnaryOp),
    /// An element-wise function of two inputs, with broadcasting.
    Binary(BinaryOp),
    /// `x (op) value`, or `value (op) x` when `lhs`.
    Scalar {
        /// The binary op applied.
        op: BinaryOp,
        /// The scalar operand.
        value: f32,
        /// Whether the scalar is the left operand.
        lhs: bool,
    },
    /// `op(A)·op(B)` with the last two dims transposed where asked.
    MatMul {
        /// Transpose the last two dims of `A`.
        ta: bool,
        /// Transpose the last two dims of `B`.
        tb: bool,
    },
    /// A reduction along one axis.
    Reduce {
        /// The reduction.
        op: ReduceOp,
        /// The axis reduced.
        axis: usize,
        /// Keep the reduced axis with length 1.
        keepdim: bool,
    },
    /// A reduction over every element (rank-0 result).
    ReduceAll(ReduceOp),
    /// Softmax along the given axis.
    Softmax(usize),
    /// Log-softmax along the given axis.
    LogSoftmax(usize),
    /// Reorders dims: output dim `k` is input dim `axes[k]`.
    Permute(Vec<usize>),
    /// The same elements under a new shape.
    Reshape(Vec<usize>),
    /// Broadcasts to the given shape (NumPy rules).
    BroadcastTo(Vec<usize>),
    /// Sums a broadcast result back to a shape it was broadcast from (gradients).
    SumTo(Vec<usize>),
    /// Elements `start..end` along `axis`.
    Slice {
        /// The axis sliced.
        axis: usize,
        /// First index kept.
        start: usize,
        /// One past the last index kept.
        end: usize,
    },
    /// Concatenates the inputs along the given axis.
    Concat(usize),
    /// Per-sample softmax cross-entropy: (logits (…, C), labels (…) i32) → (…); rows whose
    /// label is the options' ignore index give 0.
    CrossEntropy(CrossEntropyOptions),
    /// Its gradient: (logits, labels, upstream (…)) → (…, C).
    CrossEntropyGrad(CrossEntropyOptions),
    /// The rows a cross-entropy mean counts: (labels (…) i32) → [] f32, the labels that are
    /// not the ignore index (no gradient).
    CrossEntropyCount(CrossEntropyOptions),
    /// Patch matrix of an NCHW batch: (N, C, H, W) → (N, OH·OW, C·KH·KW).
    Im2Col(Conv2d),
    /// Its adjoint: patches → an image batch of the given (N, C, H, W) shape.
    Col2Im(Conv2d, Vec<usize>),
    /// A convolution's data gradient by phases (`crate::ops::conv_phase`): (upstream
    /// gradient channels first (F, N·OH·OW) or (N, F, OH·OW), flattened filters
    /// (F, C·KH·KW)) → the input's (N, C, H, W) shape given. Autodiff makes it from
    /// im2col's gradient.
    ConvGradInputPhased(Conv2d, Vec<usize>),
    /// Direct pooling of an NCHW batch: (N, C, H, W) → (N, C, OH, OW) (`crate::ops::pool`).
    Pool2d(Pool2d),
    /// Its gradient, an image batch of the given (N, C, H, W) shape; inputs (x, y, upstream)
    /// for max pooling, (upstream) for average pooling.
    Pool2dGrad(Pool2d, Vec<usize>),
    /// Depthwise convolution (inputs x, filters), groups = channels (`crate::ops::depthwise`).
    DepthwiseConv2d(Conv2d),
    /// Its data gradient (inputs upstream, filters) → x of the given shape.
    DepthwiseGradX(Conv2d, Vec<usize>),
    /// Its filter gradient (inputs x, upstream) → filters of the given shape.
    DepthwiseGradW(Conv2d, Vec<usize>),
    /// A convolution product by implicit GEMM (no patch matrix): the forward (x, w) → y or
    /// one of its gradients (see `crate::ops::conv_gemm`).
    Conv(ConvPass, Conv2d),
    /// A batch-norm training primitive: statistics, normalisation, running update or a
    /// backward pass (see `crate::ops::batchnorm`).
    BatchNorm(BatchNormPass),
    /// Slices along the axis selected by i32 indices (inputs: data, indices):
    /// `data[..axis] ++ indices ++ data[axis+1..]` (see `crate::ops::gather`).
    Gather(usize),
    /// The adjoint of [`Op::Gather`] (inputs: values, indices i32): the values summed into
    /// an axis of length `size` at their indices.
    ScatterAdd {
        /// Where the indices' dims sit in the values (and `size` in the output).
        axis: usize,
        /// The output's length along `axis`.
        size: usize,
    },
}

impl Op {
    /// A short name for errors and plans.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Param(..) => "param",
            Op::State(..) => "state",
            Op::Assign => "assign",
            Op::Dropout { .. } => "dropout",
            Op::Const(_) => "const",
            Op::Full(_) => "full",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Scalar { op, .. } => op.name(),
            Op::MatMul { .. } => "matmul",
            Op::Reduce { op, .. } | Op::ReduceAll(op) => op.name(),
            Op::Softmax(_) => "softmax",
            Op::LogSoftmax(_) => "log_softmax",
            Op::Permute(_) => "permute",
            Op::Reshape(_) => "reshape",
            Op::BroadcastTo(_) => "broadcast_to",
            Op::SumTo(_) => "sum_to",
            Op::Slice { .. } => "slice",
            Op::Concat(_) => "concat",
            Op::CrossEntropy(_) => "cross_entropy",
            Op::CrossEntropyGrad(_) => "cross_entropy_backward",
            Op::CrossEntropyCount(_) => "cross_entropy_count",
            Op::Im2Col(_) => "im2col",
            Op::Col2Im(..) => "col2im",
            Op::ConvGradInputPhased(..) => "conv2d_grad_input_phased",
            Op::Pool2d(p) => p.name(),
            Op::Pool2dGrad(..) => "pool2d_backward",
            Op::DepthwiseConv2d(_) => "depthwise_conv2d",
            Op::DepthwiseGradX(..) | Op::DepthwiseGradW(..) => "depthwise_conv2d_backward",
            Op::Conv(pass, _) => pass.name(),
            Op::BatchNorm(p) => p.name(),
            Op::Gather(_) => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
        }
    }
}

/// One recorded op with its inputs and inferred output shape.
#[derive(Clone, Debug)]
pub struct Node {
    /// What the node computes.
    pub op: Op,
    /// The nodes it reads, in operand order.
    pub inputs: Vec<NodeId>,
    /// Its output shape.
    pub shape: Vec<usize>,
    /// f32 everywhere except i32 inputs (class labels).
    pub dtype: DType,
}

/// A computation graph. Cloning shares it; it is `Send + Sync`.
#[derive(Clone, Default)]
pub struct Graph {
    nodes: Arc<Mutex<Vec<Node>>>,
}

/// A handle to a node of a [`Graph`].
#[derive(Clone)]
pub struct Var {
    graph: Graph,
    id: NodeId,
    shape: Vec<usize>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var(#{}, {:?})", self.id, self.shape)
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of the nodes.
    pub fn nodes(&self) -> Vec<Node> {
        self.lock().clone()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `other` is the same graph.
    pub fn same(&self, other: &Graph) -> bool {
        Arc::ptr_eq(&self.nodes, &other.nodes)
    }

    /// A handle to an existing node.
    pub fn var(&self, id: NodeId) -> Result<Var> {
        let shape = self
            .lock()
            .get(id)
            .map(|n| n.shape.clone())
            .ok_or_else(|| Error::Invalid {
                op: "graph",
                detail: format!("node {id} is not in this graph"),
            })?;
        Ok(Var {
            graph: self.clone(),
            id,
            shape,
        })
    }

    fn push_raw(&self, op: Op, inputs: Vec<NodeId>, shape: Vec<usize>, dtype: DType) -> Var {
        let mut nodes = self.lock();
        nodes.push(Node {
            op,
            inputs,
            shape: shape.clone(),
            dtype,
        });
        Var {
            graph: self.clone(),
            id: nodes.len() - 1,
            shape,
        }
    }

    /// An input fed by name at every run.
    pub fn input(&self, name: &str, shape: &[usize]) -> Var {
        self.push_raw(
            Op::Input(name.to_string()),
            vec![],
            shape.to_vec(),
            DType::F32,
        )
    }

    /// An i32 input fed by name at every run (class labels).
    pub fn input_i32(&self, name: &str, shape: &[usize]) -> Var {
        self.push_raw(
            Op::Input(name.to_string()),
            vec![],
            shape.to_vec(),
            DType::I32,
        )
    }

    /// A trainable parameter with its initialiser.
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Var {
        self.push_raw(
            Op::Param(name.to_string(), init),
            vec![],
            shape.to_vec(),
            DType::F32,
        )
    }

    /// Non-trainable state of `shape` with its initial value, kept on the device across
    /// runs and read or replaced by name like a parameter ([`crate::Executor::param`],
    /// [`crate::Executor::set_param`]); change it inside a step with [`Graph::assign`].
    pub fn state(&self, name: &str, shape: &[usize], init: Init) -> Var {
        self.push_raw(
            Op::State(name.to_string(), init),
            vec![],
            shape.to_vec(),
            DType::F32,
        )
    }

    /// Records `state ← value`: every executor compiled from this graph computes
    /// `value` in each run (in the same submit) and installs it as the state's value
    /// once the run's other nodes have read the old one.
    pub fn assign(&self, state: &Var, value: &Var) -> Result<Var> {
        self.push(Op::Assign, &[state, value])
    }

    /// A step counter: state `name` of shape (1), starting at 0 and incremented by
    /// every run (exact up to 2^24 steps, as it is an f32). Seeds [`Var::dropout`].
    pub fn step_counter(&self, name: &str) -> Result<Var> {
        let step = self.state(name, &[1], Init::Zeros);
        self.assign(&step, &step.add_scalar(1.0)?)?;
        Ok(step)
    }

    /// A constant tensor (its values are copied to the CPU).
    pub fn constant(&self, value: &Tensor) -> Result<Var> {
        value.expect_f32("constant")?;
        let host = value.to_device(&crate::Device::cpu())?;
        Ok(self.push_raw(Op::Const(host), vec![], value.shape().to_vec(), DType::F32))
    }

    /// A constant i32 tensor (indices for [`Var::gather`]; its values are copied to the CPU).
    pub fn constant_i32(&self, value: &Tensor) -> Result<Var> {
        value.expect_i32("constant")?;
        let host = value.to_device(&crate::Device::cpu())?;
        Ok(self.push_raw(Op::Const(host), vec![], value.shape().to_vec(), DType::I32))
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(&self, value: f32, shape: &[usize]) -> Var {
        self.push_raw(Op::Full(value), vec![], shape.to_vec(), DType::F32)
    }

    /// Records `op` on `inputs`, inferring and checking the output shape.
    pub fn push(&self, op: Op, inputs: &[&Var]) -> Result<Var> {
        for v in inputs {
            if !v.graph.same(self) {
                return Err(Error::Invalid {
                    op: op.name(),
                    detail: "operands belong to different graphs".into(),
                });
            }
        }
        // Every op takes f32 operands except the labels of the cross-entropy pair and the
        // indices of gather and scatter-add.
        let dtypes: Vec<DType> = {
            let nodes = self.lock();
            if matches!(op, Op::Assign) && !matches!(nodes[inputs[0].id].op, Op::State(..)) {
                return Err(Error::Invalid {
                    op: "assign",
                    detail: format!("node #{} is not a state node", inputs[0].id),
                });
            }
            inputs.iter().map(|v| nodes[v.id].dtype).collect()
        };
        for (k, &got) in dtypes.iter().enumerate() {
            let labels = match op {
                Op::CrossEntropy(_) | Op::CrossEntropyGrad(_) => k == 1,
                Op::Gather(_) | Op::ScatterAdd { .. } => k == 1,
                Op::CrossEntropyCount(_) => k == 0,
                _ => false,
            };
            let want = if labels { DType::I32 } else { DType::F32 };
            if got != want {
                return Err(Error::DType {
                    op: op.name(),
                    got: got.to_string(),
                    expected: want.to_string(),
                });
            }
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|v| v.shape.as_slice()).collect();
        for s in &shapes {
            crate::shape::checked_numel(op.name(), s)?;
        }
        let shape = infer_shape(&op, &shapes)?;
        crate::shape::checked_numel(op.name(), &shape)?;
        Ok(self.push_raw(op, inputs.iter().map(|v| v.id).collect(), shape, DType::F32))
    }
}

/// The output shape of `op` on inputs of `shapes`, or the error a user should see.
pub fn infer_shape(op: &Op, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let name = op.name();
    let arity = match op {
        Op::Input(_) | Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_) => 0,
        Op::Binary(_) | Op::MatMul { .. } | Op::CrossEntropy(_) | Op::Assign => 2,
        Op::Dropout { .. } | Op::Gather(_) | Op::ScatterAdd { .. } => 2,
        Op::DepthwiseConv2d(_) | Op::DepthwiseGradX(..) | Op::DepthwiseGradW(..) => 2,
        Op::Conv(..) | Op::ConvGradInputPhased(..) => 2,
        Op::BatchNorm(p) => p.arity(),
        Op::CrossEntropyGrad(_) => 3,
        Op::Pool2dGrad(p, _) if p.kind == PoolKind::Max => 3,
        Op::Concat(_) => shapes.len().max(1),
        _ => 1,
    };
    if shapes.len() != arity {
        return Err(Error::Invalid {
            op: name,
            detail: format!("expects {arity} inputs, got {}", shapes.len()),
        });
    }
    let x = shapes.first().copied().unwrap_or(&[]);
    let mismatch = |detail: String| Error::Shape { op: name, detail };
    Ok(match op {
        Op::Input(_) | Op::Param(..) | Op::State(..) | Op::Const(_) | Op::Full(_) => {
            unreachable!("arity 0")
        }
        Op::Assign => {
            if shapes[1] != x {
                return Err(mismatch(format!(
                    "state {x:?} cannot take a value of shape {:?}",
                    shapes[1]
                )));
            }
            x.to_vec()
        }
        Op::Dropout { p, .. } => {
            crate::ops::dropout::check_dropout(*p, shapes[1])?;
            x.to_vec()
        }
        Op::Unary(_) | Op::Scalar { .. } | Op::Softmax(_) | Op::LogSoftmax(_) => x.to_vec(),
        Op::Binary(_) => broadcast_shapes(name, x, shapes[1])?,
        Op::MatMul { ta, tb } => {
            crate::ops::matmul_plan::MatmulPlan::new(x, shapes[1], *ta, *tb)?.out_shape
        }
        Op::Reduce { axis, keepdim, .. } => {
            if *axis >= x.len() {
                return Err(Error::Axis {
                    op: name,
                    axis: *axis as isize,
                    shape: x.to_vec(),
                });
            }
            let mut s = x.to_vec();
            if *keepdim {
                s[*axis] = 1;
            } else {
                s.remove(*axis);
            }
            s
        }
        Op::ReduceAll(_) | Op::CrossEntropyCount(_) => vec![],
        Op::Im2Col(geom) => geom.patches_shape(name, x)?.to_vec(),
        Op::Conv(pass, geom) => crate::ops::conv_gemm::pass_shape(*pass, geom, x, shapes[1])?,
        Op::Col2Im(geom, image) => {
            let want = geom.patches_shape(name, image)?;
            if x != want {
                return Err(mismatch(format!(
                    "patches {x:?} do not fit image {image:?} (expected {want:?})"
                )));
            }
            image.clone()
        }
        Op::ConvGradInputPhased(geom, image) => {
            let (oh, ow) = geom.output_size(name, image)?;
            let f = shapes[1].first().copied().unwrap_or(0);
            let ck = image[1] * geom.kh * geom.kw;
            let (n, l) = (image[0], oh * ow);
            if (x != [f, n * l] && x != [n, f, l]) || shapes[1] != [f, ck] {
                return Err(mismatch(format!(
                    "upstream gradient {x:?} and filters {:?} do not fit image {image:?} \
                     (expected ({f}, {}) or ({n}, {f}, {l}), and ({f}, {ck}))",
                    shapes[1],
                    n * l
                )));
            }
            image.clone()
        }
        Op::Pool2d(p) => p.output_shape(x)?.to_vec(),
        Op::DepthwiseConv2d(_) | Op::DepthwiseGradX(..) | Op::DepthwiseGradW(..) => {
            let (xs, ws, g) = match op {
                Op::DepthwiseConv2d(g) => (x, shapes[1], g),
                Op::DepthwiseGradX(g, xs) => (xs.as_slice(), shapes[1], g),
                Op::DepthwiseGradW(g, ws) => (x, ws.as_slice(), g),
                _ => unreachable!("matched above"),
            };
            let y = crate::ops::depthwise::output_shape(xs, ws, g)?;
            let upstream = match op {
                Op::DepthwiseGradX(..) => Some(x),
                Op::DepthwiseGradW(..) => Some(shapes[1]),
                _ => None,
            };
            if upstream.is_some_and(|u| u != y) {
                return Err(mismatch(format!("upstream {upstream:?} must be {y:?}")));
            }
            match op {
                Op::DepthwiseConv2d(_) => y.to_vec(),
                _ => {
                    if matches!(op, Op::DepthwiseGradX(..)) {
                        xs.to_vec()
                    } else {
                        ws.to_vec()
                    }
                }
            }
        }
        Op::Pool2dGrad(p, image) => {
            let want = p.output_shape(image)?;
            let (g, xy) = match shapes {
                [x, y, g] => (*g, Some((*x, *y))),
                _ => (x, None),
            };
            if g != want || xy.is_some_and(|(x, y)| x != image || y != want) {
                return Err(mismatch(format!(
                    "{shapes:?} do not fit image {image:?} (upstream {want:?})"
                )));
            }
            image.clone()
        }
        Op::CrossEntropy(_) => {
            crate::ops::loss::cross_entropy_shape(name, x, shapes[1])?;
            shapes[1].to_vec()
        }
        Op::CrossEntropyGrad(_) => {
            crate::ops::loss::cross_entropy_shape(name, x, shapes[1])?;
            if shapes[2] != shapes[1] {
                return Err(mismatch(format!(
                    "upstream {:?} must match labels {:?}",
                    shapes[2], shapes[1]
                )));
            }
            x.to_vec()
        }
        Op::Permute(axes) => {
            let mut seen = vec![false; x.len()];
            let ok = axes.len() == x.len()
                && axes
                    .iter()
                    .all(|&a| a < x.len() && !std::mem::replace(&mut seen[a], true));
            if !ok {
                return Err(Error::Invalid {
                    op: name,
                    detail: format!("axes {axes:?} are not a permutation for shape {x:?}"),
                });
            }
            axes.iter().map(|&a| x[a]).collect()
        }
        Op::Reshape(s) => {
            // The target's product is checked: an overflow must not wrap onto x's count.
            if crate::shape::checked_numel(name, s)? != x.iter().product::<usize>() {
                return Err(mismatch(format!("cannot view {x:?} as {s:?}")));
            }
            s.clone()
        }
        Op::BroadcastTo(s) => {
            if broadcast_shapes(name, x, s)? != *s {
                return Err(mismatch(format!("cannot broadcast {x:?} to {s:?}")));
            }
            s.clone()
        }
        Op::SumTo(s) => {
            if broadcast_shapes(name, s, x)? != x {
                return Err(mismatch(format!("{x:?} is not a broadcast of {s:?}")));
            }
            s.clone()
        }
        Op::Slice { axis, start, end } => {
            if *axis >= x.len() || start > end || *end > x[*axis] {
                return Err(Error::Invalid {
                    op: name,
                    detail: format!("range {start}..{end} on axis {axis} of shape {x:?}"),
                });
            }
            let mut s = x.to_vec();
            s[*axis] = end - start;
            s
        }
        Op::BatchNorm(p) => p.output_shape(shapes)?,
        Op::Gather(axis) => crate::ops::gather::gather_shape(x, shapes[1], *axis)?,
        Op::ScatterAdd { axis, size } => {
            crate::ops::gather::scatter_shape(x, shapes[1], *axis, *size)?
        }
        Op::Concat(axis) => {
            let mut s = x.to_vec();
            if *axis >= s.len() {
                return Err(Error::Axis {
                    op: name,
                    axis: *axis as isize,
                    shape: x.to_vec(),
                });
            }
            for other in &shapes[1..] {
                let fits =
                    other.len() == x.len() && (0..x.len()).all(|d| d == *axis || other[d] == x[d]);
                if !fits {
                    return Err(mismatch(format!(
                        "cannot concat {x:?} with {other:?} on axis {axis}"
                    )));
                }
                s[*axis] = s[*axis].checked_add(other[*axis]).ok_or_else(|| {
                    mismatch(format!(
                        "concatenated axis {axis} overflows: {x:?} with {other:?}"
                    ))
                })?;
            }
            s
        }
    })
    .and_then(|s| {
        check_rank(name, &s)?;
        Ok(s)
    })
}

impl Var {
    /// The node's id in its graph.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The inferred shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The graph this node belongs to.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn un(&self, op: Op) -> Result<Var> {
        self.graph.push(op, &[self])
    }

    fn bin(&self, other: &Var, op: BinaryOp) -> Result<Var> {
        self.graph.push(Op::Binary(op), &[self, other])
    }

    /// Applies a unary op to every element. A ReLU after a batch norm's normalisation is
    /// that normalisation with its ReLU (one dispatch, and the mask in its backward passes);
    /// the plain normalisation then runs only if something else reads it.
    pub fn unary(&self, op: UnaryOp) -> Result<Var> {
        if op == UnaryOp::Relu {
            let inputs = {
                let nodes = self.graph.lock();
                let node = &nodes[self.id];
                match node.op {
                    Op::BatchNorm(BatchNormPass::Apply { relu: false }) => {
                        Some(node.inputs.clone())
                    }
                    _ => None,
                }
            };
            if let Some(ids) = inputs {
                let vars: Vec<Var> = ids
                    .iter()
                    .map(|&i| self.graph.var(i))
                    .collect::<Result<_>>()?;
                let refs: Vec<&Var> = vars.iter().collect();
                let fused = Op::BatchNorm(BatchNormPass::Apply { relu: true });
                return self.graph.push(fused, &refs);
            }
        }
        self.un(Op::Unary(op))
    }
    /// `-x`, element-wise.
    pub fn neg(&self) -> Result<Var> {
        self.unary(UnaryOp::Neg)
    }
    /// `e^x`, element-wise.
    pub fn exp(&self) -> Result<Var> {
        self.unary(UnaryOp::Exp)
    }
    /// `ln x`, element-wise.
    pub fn log(&self) -> Result<Var> {
        self.unary(UnaryOp::Log)
    }
    /// `√x`, element-wise.
    pub fn sqrt(&self) -> Result<Var> {
        self.unary(UnaryOp::Sqrt)
    }
    /// `x²`, element-wise.
    pub fn square(&self) -> Result<Var> {
        self.unary(UnaryOp::Square)
    }
    /// `max(x, 0)`, element-wise.
    pub fn relu(&self) -> Result<Var> {
        self.unary(UnaryOp::Relu)
    }
    /// `1 / (1 + e^-x)`, element-wise.
    pub fn sigmoid(&self) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// `tanh x`, element-wise.
    pub fn tanh(&self) -> Result<Var> {
        self.unary(UnaryOp::Tanh)
    }
    /// GELU, exact erf form: `0.5·x·(1 + erf(x/√2))`, element-wise.
    pub fn gelu(&self) -> Result<Var> {
        self.unary(UnaryOp::Gelu)
    }
    /// `|x|`, element-wise.
    pub fn abs(&self) -> Result<Var> {
        self.unary(UnaryOp::Abs)
    }
    /// Applies a binary op with NumPy broadcasting.
    pub fn binary(&self, other: &Var, op: BinaryOp) -> Result<Var> {
        self.bin(other, op)
    }
    /// `self + other`, with broadcasting.
    pub fn add(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Add)
    }
    /// `self - other`, with broadcasting.
    pub fn sub(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Sub)
    }
    /// `self · other`, element-wise with broadcasting.
    pub fn mul(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Mul)
    }
    /// `self / other`, with broadcasting.
    pub fn div(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Div)
    }
    /// `max(self, other)`, element-wise with broadcasting.
    pub fn maximum(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Maximum)
    }
    /// `min(self, other)`, element-wise with broadcasting.
    pub fn minimum(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Minimum)
    }
    /// `self^other`, element-wise with broadcasting.
    pub fn pow(&self, other: &Var) -> Result<Var> {
        self.bin(other, BinaryOp::Pow)
    }
    /// `a` where `self != 0`, else `b` (all three broadcast together): a selection, so an
    /// inf or NaN on the side not taken stays out of the result and of its gradients,
    /// unlike `c·a + (1-c)·b`. Built as `keep_where(a, c) + keep_where_not(b, c)`, exact
    /// because one term is `+0` (a selected `-0` comes out `+0`).
    pub fn select(&self, a: &Var, b: &Var) -> Result<Var> {
        a.bin(self, BinaryOp::KeepWhere)?
            .add(&b.bin(self, BinaryOp::KeepWhereNot)?)
    }
    /// `self (op) value`, or `value (op) self` with `lhs`.
    pub fn scalar(&self, op: BinaryOp, value: f32, lhs: bool) -> Result<Var> {
        self.un(Op::Scalar { op, value, lhs })
    }
    /// `self + v`.
    pub fn add_scalar(&self, v: f32) -> Result<Var> {
        self.scalar(BinaryOp::Add, v, false)
    }
    /// `self · v`.
    pub fn mul_scalar(&self, v: f32) -> Result<Var> {
        self.scalar(BinaryOp::Mul, v, false)
    }
    /// Matrix product `self·other` (batched over leading dims; 1-D as NumPy).
    pub fn matmul(&self, other: &Var) -> Result<Var> {
        self.matmul_t(other, false, false)
    }
    /// `op(self)·op(other)`, transposing the last two dims where asked. 1-D
    /// operands follow NumPy (a row on the left, a column on the right); they are
    /// recorded as explicit reshapes so every MatMul node is at least 2-D.
    pub fn matmul_t(&self, other: &Var, ta: bool, tb: bool) -> Result<Var> {
        let (a1, b1) = (self.shape.len() == 1, other.shape.len() == 1);
        if !a1 && !b1 {
            return self.graph.push(Op::MatMul { ta, tb }, &[self, other]);
        }
        let out =
            crate::ops::matmul_plan::MatmulPlan::new(&self.shape, &other.shape, ta, tb)?.out_shape;
        let a = if a1 {
            self.reshape(&[1, self.shape[0]])?
        } else {
            self.clone()
        };
        let b = if b1 {
            other.reshape(&[other.shape[0], 1])?
        } else {
            other.clone()
        };
        let (ta, tb) = (ta && !a1, tb && !b1);
        self.graph
            .push(Op::MatMul { ta, tb }, &[&a, &b])?
            .reshape(&out)
    }
    /// Reduces along `axis` (negative counts from the end); `keepdim` keeps it with length 1.
    pub fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> Result<Var> {
        let axis = normalize_axis(op.name(), axis, &self.shape)?;
        self.un(Op::Reduce { op, axis, keepdim })
    }
    /// Sum along `axis`.
    pub fn sum_axis(&self, axis: isize, keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Sum, axis, keepdim)
    }
    /// Mean along `axis`.
    pub fn mean_axis(&self, axis: isize, keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Mean, axis, keepdim)
    }
    /// Maximum along `axis`.
    pub fn max_axis(&self, axis: isize, keepdim: bool) -> Result<Var> {
        self.reduce(ReduceOp::Max, axis, keepdim)
    }
    /// Sum over every element (rank-0 result).
    pub fn sum(&self) -> Result<Var> {
        self.un(Op::ReduceAll(ReduceOp::Sum))
    }
    /// Mean over every element (rank-0 result).
    pub fn mean(&self) -> Result<Var> {
        self.un(Op::ReduceAll(ReduceOp::Mean))
    }
    /// Softmax along `axis` (negative counts from the end).
    pub fn softmax(&self, axis: isize) -> Result<Var> {
        let a = normalize_axis("softmax", axis, &self.shape)?;
        self.un(Op::Softmax(a))
    }
    /// Log-softmax along `axis` (negative counts from the end).
    pub fn log_softmax(&self, axis: isize) -> Result<Var> {
        let a = normalize_axis("log_softmax", axis, &self.shape)?;
        self.un(Op::LogSoftmax(a))
    }
    /// Swaps the last two dims.
    pub fn transpose(&self) -> Result<Var> {
        let r = self.shape.len();
        if r < 2 {
            return Err(Error::Shape {
                op: "transpose",
                detail: format!("needs rank >= 2, got shape {:?}", self.shape),
            });
        }
        let mut axes: Vec<usize> = (0..r).collect();
        axes.swap(r - 2, r - 1);
        self.permute(&axes)
    }
    /// Reorders the dims: output dim `k` is input dim `axes[k]`.
    pub fn permute(&self, axes: &[usize]) -> Result<Var> {
        self.un(Op::Permute(axes.to_vec()))
    }
    /// The same elements under a new shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        self.un(Op::Reshape(shape.to_vec()))
    }
    /// Broadcasts to `shape` with NumPy rules.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        self.un(Op::BroadcastTo(shape.to_vec()))
    }
    /// Sums a broadcast value back down to `shape` (the adjoint of broadcasting).
    pub fn sum_to(&self, shape: &[usize]) -> Result<Var> {
        self.un(Op::SumTo(shape.to_vec()))
    }
    /// Elements `start..end` (end exclusive) along `axis`.
    pub fn slice(&self, axis: isize, start: usize, end: usize) -> Result<Var> {
        let a = normalize_axis("slice", axis, &self.shape)?;
        self.un(Op::Slice {
            axis: a,
            start,
            end,
        })
    }
    /// Per-sample softmax cross-entropy of logits `self` (…, C) against i32 class
    /// labels (…) (see [`Graph::input_i32`]); take `.mean()` for the usual loss. Rows
    /// labelled -100 give 0 (PyTorch's default `ignore_index`); `.mean()` still divides by
    /// every row (see [`Var::cross_entropy_with`]).
    pub fn cross_entropy(&self, labels: &Var) -> Result<Var> {
        self.cross_entropy_with(labels, CrossEntropyOptions::default())
    }

    /// [`Var::cross_entropy`] with `opts`: rows whose label is `opts.ignore_index` have loss 0
    /// and gradient 0. For PyTorch's mean over the rows counted, divide `.sum()` by their
    /// count (a graph's `.mean()` divides by all rows).
    pub fn cross_entropy_with(&self, labels: &Var, opts: CrossEntropyOptions) -> Result<Var> {
        self.graph.push(Op::CrossEntropy(opts), &[self, labels])
    }

    /// PyTorch's `cross_entropy(.., reduction="mean")`: the sum of the per-row losses over
    /// the rows not ignored (rank 0; every row ignored: NaN). Its gradient divides by that
    /// count too.
    pub fn cross_entropy_mean_with(&self, labels: &Var, opts: CrossEntropyOptions) -> Result<Var> {
        let count = self.graph.push(Op::CrossEntropyCount(opts), &[labels])?;
        self.cross_entropy_with(labels, opts)?.sum()?.div(&count)
    }

    /// Patch matrix of an NCHW batch (see [`Tensor::im2col`]).
    pub fn im2col(&self, geom: Conv2d) -> Result<Var> {
        self.un(Op::Im2Col(geom))
    }

    /// Mean squared error against `target` (broadcasting): `mean((self - target)²)`.
    pub fn mse(&self, target: &Var) -> Result<Var> {
        self.sub(target)?.square()?.mean()
    }

    /// Concatenates along `axis`.
    pub fn concat(vars: &[&Var], axis: isize) -> Result<Var> {
        let first = vars.first().ok_or_else(|| Error::Invalid {
            op: "concat",
            detail: "needs at least one input".into(),
        })?;
        let a = normalize_axis("concat", axis, &first.shape)?;
        first.graph.push(Op::Concat(a), vars)
    }
}
