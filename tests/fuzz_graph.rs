//! Fuzzing with proptest: random small graphs of random ops on random shapes
//! (rank 0–3, dims 0–5; many combinations invalid), built as a [`Graph`] and
//! applied eagerly to tensors.
//!
//! Required of every case: no panic anywhere (building, autodiff, compiling,
//! running); the CPU reference and the GPU agree on which steps fail (the same
//! error variant) and on every value that succeeds (NaN where both NaN).
//! `PROPTEST_CASES` changes the number of cases (256 by default) and
//! `PROPTEST_RNG_SEED` the (otherwise fixed) seed.
//!
//! Graph ops covered (`Op` in src/graph.rs): Input (f32 and i32), every Unary and
//! Binary op, Scalar, MatMul (all transposes), Reduce and ReduceAll (all four
//! reductions), Softmax, LogSoftmax, Permute (and transpose), Reshape, BroadcastTo,
//! SumTo, Slice, Concat, CrossEntropy (valid labels, labels outside 0..C, labels of
//! the wrong shape), Im2Col; through autodiff (`grad`) their gradient ops, among them
//! CrossEntropyGrad and Col2Im. Not generated: Param, Const and Full (leaves with no
//! failure modes of their own) and the layers composed from the ops above (conv2d,
//! layer/batch norm, pooling, attention, mse).
//! Cross-entropy with a label outside 0..C is `Err(Invalid)` on the CPU reference at
//! once; the GPU kernel reports it in the device's status words and the next readback
//! is the same `Err(Invalid)`. The fuzzer requires exactly that.

mod common;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::{assert_close, gpu};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use wgrad::{
    autodiff, BinaryOp, Conv2d, Device, Error, Graph, ReduceOp, Rng, Tensor, UnaryOp, Var,
};

/// A shape argument, made concrete against the operand's shape when applied.
#[derive(Clone, Debug)]
enum ShapeArg {
    /// All elements in one dimension.
    Flatten,
    /// The dims in reverse order (same element count).
    Reverse,
    /// A leading 1 (or, for broadcasting, a new leading dim of 2).
    Lead,
    /// Given dims, usually invalid.
    Literal(Vec<usize>),
}

/// One op; `usize` fields pick operands among the values so far (modulo their count).
#[derive(Clone, Debug)]
enum Step {
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Scalar(BinaryOp, f32, bool, usize),
    MatMul(usize, usize, bool, bool),
    Reduce(ReduceOp, isize, bool, usize),
    ReduceAll(ReduceOp, usize),
    Softmax(isize, usize),
    LogSoftmax(isize, usize),
    Transpose(usize),
    Permute(Vec<usize>, usize),
    Reshape(ShapeArg, usize),
    BroadcastTo(ShapeArg, usize),
    Slice(isize, usize, usize, usize),
    Concat(Vec<usize>, isize),
    SumTo(ShapeArg, usize),
    CrossEntropy(Labels, u64, usize),
    /// Im2Col of the operand with leading 1s added up to rank 4: (kh, kw, stride,
    /// padding, dilation).
    Im2Col([usize; 5], usize),
}

/// The labels of a cross-entropy step, drawn from the step's seed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Labels {
    /// In 0..C, the logits' shape without its last dim.
    Valid,
    /// One label is C or -1 (outside 0..C).
    OutOfRange,
    /// One label too many.
    WrongShape,
}

impl Labels {
    /// Label values and shape for logits of shape `x` (`None` for rank-0 logits).
    fn make(self, x: &[usize], seed: u64) -> Option<(Vec<i32>, Vec<usize>)> {
        let (&classes, batch) = x.split_last()?;
        let mut shape = batch.to_vec();
        if self == Labels::WrongShape {
            shape.push(1);
        }
        let n: usize = shape.iter().product();
        let mut v: Vec<i32> = (0..n)
            .map(|i| ((seed as usize + 7 * i) % classes.max(1)) as i32)
            .collect();
        if self == Labels::OutOfRange && n > 0 {
            v[seed as usize % n] = if seed % 2 == 0 { classes as i32 } else { -1 };
        }
        Some((v, shape))
    }
}

/// A whole case: input shapes, the steps, and how the input data is made.
#[derive(Clone, Debug)]
struct Case {
    inputs: Vec<Vec<usize>>,
    steps: Vec<Step>,
    seed: u64,
    /// Put a NaN or ±inf into the inputs' data.
    specials: bool,
    /// Also take the gradient of the last value's sum with respect to the inputs.
    grad: bool,
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 2 => Just(1usize), 7 => 2usize..=5]
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(dim(), 0..=3)
}

/// Input shapes related to a base shape (equal, with 1s, transposed, a suffix) or
/// unrelated, so that binary ops and matmuls are sometimes valid.
fn inputs() -> impl Strategy<Value = Vec<Vec<usize>>> {
    shape().prop_flat_map(|base| {
        let b = base.clone();
        let variant = prop_oneof![
            3 => Just(b.clone()),
            2 => prop::collection::vec(any::<bool>(), b.len()).prop_map({
                let b = b.clone();
                move |ones| b.iter().zip(ones).map(|(&d, o)| if o { 1 } else { d }).collect()
            }),
            2 => Just({
                let mut t = b.clone();
                let r = t.len();
                if r >= 2 {
                    t.swap(r - 1, r - 2);
                }
                t
            }),
            1 => (0..=b.len()).prop_map({
                let b = b.clone();
                move |k| b[k..].to_vec()
            }),
            2 => shape(),
        ];
        prop::collection::vec(variant, 0..=2).prop_map(move |mut rest| {
            rest.insert(0, base.clone());
            rest
        })
    })
}

fn shape_arg() -> impl Strategy<Value = ShapeArg> {
    prop_oneof![
        Just(ShapeArg::Flatten),
        Just(ShapeArg::Reverse),
        Just(ShapeArg::Lead),
        shape().prop_map(ShapeArg::Literal),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let ix = || 0usize..8;
    let axis = || -4isize..4;
    prop_oneof![
        3 => (prop::sample::select(UnaryOp::ALL.to_vec()), ix()).prop_map(|(o, x)| Step::Unary(o, x)),
        3 => (prop::sample::select(BinaryOp::ALL.to_vec()), ix(), ix())
            .prop_map(|(o, a, b)| Step::Binary(o, a, b)),
        1 => (prop::sample::select(BinaryOp::ALL.to_vec()), -3.0f32..3.0, any::<bool>(), ix())
            .prop_map(|(o, v, l, x)| Step::Scalar(o, v, l, x)),
        2 => (ix(), ix(), any::<bool>(), any::<bool>()).prop_map(|(a, b, ta, tb)| Step::MatMul(a, b, ta, tb)),
        2 => (prop::sample::select(ReduceOp::ALL.to_vec()), axis(), any::<bool>(), ix())
            .prop_map(|(o, a, k, x)| Step::Reduce(o, a, k, x)),
        1 => (prop::sample::select(ReduceOp::ALL.to_vec()), ix()).prop_map(|(o, x)| Step::ReduceAll(o, x)),
        1 => (axis(), ix()).prop_map(|(a, x)| Step::Softmax(a, x)),
        1 => (axis(), ix()).prop_map(|(a, x)| Step::LogSoftmax(a, x)),
        1 => ix().prop_map(Step::Transpose),
        1 => (prop::collection::vec(0usize..4, 0..=4), ix()).prop_map(|(p, x)| Step::Permute(p, x)),
        1 => (shape_arg(), ix()).prop_map(|(s, x)| Step::Reshape(s, x)),
        1 => (shape_arg(), ix()).prop_map(|(s, x)| Step::BroadcastTo(s, x)),
        1 => (axis(), 0usize..6, 0usize..6, ix()).prop_map(|(a, s, e, x)| Step::Slice(a, s, e, x)),
        1 => (prop::collection::vec(ix(), 0..=3), axis()).prop_map(|(v, a)| Step::Concat(v, a)),
        1 => (shape_arg(), ix()).prop_map(|(s, x)| Step::SumTo(s, x)),
        2 => (
            prop_oneof![6 => Just(Labels::Valid), 3 => Just(Labels::OutOfRange), 1 => Just(Labels::WrongShape)],
            any::<u64>(),
            ix(),
        )
            .prop_map(|(l, seed, x)| Step::CrossEntropy(l, seed, x)),
        1 => ([1usize..=3, 1usize..=3, 1usize..=2, 0usize..=1, 1usize..=2], ix())
            .prop_map(|(g, x)| Step::Im2Col(g, x)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        inputs(),
        prop::collection::vec(step(), 1..=5),
        any::<u64>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(inputs, steps, seed, specials, grad)| Case {
            inputs,
            steps,
            seed,
            specials,
            grad,
        })
}

impl ShapeArg {
    fn resolve(&self, x: &[usize], broadcast: bool) -> Vec<usize> {
        match self {
            ShapeArg::Flatten => vec![x.iter().product()],
            ShapeArg::Reverse => x.iter().rev().copied().collect(),
            ShapeArg::Lead => std::iter::once(if broadcast { 2 } else { 1 })
                .chain(x.iter().copied())
                .collect(),
            ShapeArg::Literal(s) => s.clone(),
        }
    }
}

/// The operations a step needs, for graph vars and eager tensors alike.
trait Value: Clone {
    fn dims(&self) -> Vec<usize>;
    fn unary(&self, op: UnaryOp) -> wgrad::Result<Self>;
    fn binary(&self, other: &Self, op: BinaryOp) -> wgrad::Result<Self>;
    fn scalar(&self, op: BinaryOp, v: f32, lhs: bool) -> wgrad::Result<Self>;
    fn matmul_t(&self, other: &Self, ta: bool, tb: bool) -> wgrad::Result<Self>;
    fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> wgrad::Result<Self>;
    fn reduce_all(&self, op: ReduceOp) -> wgrad::Result<Self>;
    fn softmax(&self, axis: isize, log: bool) -> wgrad::Result<Self>;
    fn transpose(&self) -> wgrad::Result<Self>;
    fn permute(&self, axes: &[usize]) -> wgrad::Result<Self>;
    fn reshape(&self, s: &[usize]) -> wgrad::Result<Self>;
    fn broadcast_to(&self, s: &[usize]) -> wgrad::Result<Self>;
    fn slice(&self, axis: isize, start: usize, end: usize) -> wgrad::Result<Self>;
    fn concat(xs: &[&Self], axis: isize) -> wgrad::Result<Self>;
    fn sum_to(&self, s: &[usize]) -> wgrad::Result<Self>;
    fn cross_entropy(&self, labels: &[i32], shape: &[usize]) -> wgrad::Result<Self>;
    fn im2col(&self, geom: Conv2d) -> wgrad::Result<Self>;
}

macro_rules! value_impl {
    ($t:ty, $scalar:ident, $reduce_all:expr, $concat:path, $sum_to:expr, $labels:expr) => {
        impl Value for $t {
            fn dims(&self) -> Vec<usize> {
                self.shape().to_vec()
            }
            fn unary(&self, op: UnaryOp) -> wgrad::Result<Self> {
                <$t>::unary(self, op)
            }
            fn binary(&self, other: &Self, op: BinaryOp) -> wgrad::Result<Self> {
                <$t>::binary(self, other, op)
            }
            fn scalar(&self, op: BinaryOp, v: f32, lhs: bool) -> wgrad::Result<Self> {
                <$t>::$scalar(self, op, v, lhs)
            }
            fn matmul_t(&self, other: &Self, ta: bool, tb: bool) -> wgrad::Result<Self> {
                <$t>::matmul_t(self, other, ta, tb)
            }
            fn reduce(&self, op: ReduceOp, axis: isize, keepdim: bool) -> wgrad::Result<Self> {
                <$t>::reduce(self, op, axis, keepdim)
            }
            fn reduce_all(&self, op: ReduceOp) -> wgrad::Result<Self> {
                $reduce_all(self, op)
            }
            fn softmax(&self, axis: isize, log: bool) -> wgrad::Result<Self> {
                if log {
                    <$t>::log_softmax(self, axis)
                } else {
                    <$t>::softmax(self, axis)
                }
            }
            fn transpose(&self) -> wgrad::Result<Self> {
                <$t>::transpose(self)
            }
            fn permute(&self, axes: &[usize]) -> wgrad::Result<Self> {
                <$t>::permute(self, axes)
            }
            fn reshape(&self, s: &[usize]) -> wgrad::Result<Self> {
                <$t>::reshape(self, s)
            }
            fn broadcast_to(&self, s: &[usize]) -> wgrad::Result<Self> {
                <$t>::broadcast_to(self, s)
            }
            fn slice(&self, axis: isize, start: usize, end: usize) -> wgrad::Result<Self> {
                <$t>::slice(self, axis, start, end)
            }
            fn concat(xs: &[&Self], axis: isize) -> wgrad::Result<Self> {
                $concat(xs, axis)
            }
            fn sum_to(&self, s: &[usize]) -> wgrad::Result<Self> {
                $sum_to(self, s)
            }
            fn cross_entropy(&self, labels: &[i32], shape: &[usize]) -> wgrad::Result<Self> {
                <$t>::cross_entropy(self, &$labels(self, labels, shape)?)
            }
            fn im2col(&self, geom: Conv2d) -> wgrad::Result<Self> {
                <$t>::im2col(self, geom)
            }
        }
    };
}

fn var_reduce_all(v: &Var, op: ReduceOp) -> wgrad::Result<Var> {
    match op {
        ReduceOp::Sum => v.sum(),
        ReduceOp::Mean => v.mean(),
        // The graph has no max/min over everything: reduce the flattened var.
        ReduceOp::Max | ReduceOp::Min => v
            .reshape(&[v.shape().iter().product()])?
            .reduce(op, 0, false),
    }
}

fn tensor_reduce_all(t: &Tensor, op: ReduceOp) -> wgrad::Result<Tensor> {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => t.reduce_all(op),
        ReduceOp::Max | ReduceOp::Min => t.reshape(&[t.numel()])?.reduce(op, 0, false),
    }
}

/// An i32 label input of a graph: (name, values, shape).
type LabelFeed = (String, Vec<i32>, Vec<usize>);

thread_local! {
    /// The label inputs the current graph build made.
    static LABEL_FEEDS: RefCell<Vec<LabelFeed>> = const { RefCell::new(Vec::new()) };
}

/// A graph input for labels, remembered for feeding at run time.
fn var_labels(x: &Var, labels: &[i32], shape: &[usize]) -> wgrad::Result<Var> {
    LABEL_FEEDS.with(|f| {
        let mut f = f.borrow_mut();
        let name = format!("labels{}", f.len());
        f.push((name.clone(), labels.to_vec(), shape.to_vec()));
        Ok(x.graph().input_i32(&name, shape))
    })
}

fn tensor_labels(x: &Tensor, labels: &[i32], shape: &[usize]) -> wgrad::Result<Tensor> {
    Tensor::from_slice(x.device(), labels, shape)
}

/// Eager sum_to (the graph's gradient op), from public ops: sum the leading dims
/// away, then keep-dim sums where the target has 1. Errors follow the shape rule
/// only loosely; CPU and GPU take the same path.
fn tensor_sum_to(t: &Tensor, shape: &[usize]) -> wgrad::Result<Tensor> {
    let x = t.shape().to_vec();
    if shape.len() > x.len() {
        return Err(Error::Shape {
            op: "sum_to",
            detail: format!("{x:?} to {shape:?}"),
        });
    }
    let lead = x.len() - shape.len();
    let mut r = t.clone();
    for _ in 0..lead {
        r = r.sum_axis(0, false)?;
    }
    for (d, &s) in shape.iter().enumerate() {
        if s == 1 && x[lead + d] != 1 {
            r = r.sum_axis(d as isize, true)?;
        } else if s != x[lead + d] {
            return Err(Error::Shape {
                op: "sum_to",
                detail: format!("{x:?} to {shape:?}"),
            });
        }
    }
    Ok(r)
}

value_impl!(
    Var,
    scalar,
    var_reduce_all,
    Var::concat,
    Var::sum_to,
    var_labels
);
value_impl!(
    Tensor,
    binary_scalar,
    tensor_reduce_all,
    Tensor::concat,
    tensor_sum_to,
    tensor_labels
);

/// Applies one step to `vals` (one slot per input and per earlier step; `None`
/// where that step failed). Returns the new slot.
fn apply<V: Value>(step: &Step, vals: &[Option<V>]) -> Option<wgrad::Result<V>> {
    let pick = |i: usize| vals[i % vals.len()].as_ref();
    Some(match step {
        Step::Unary(op, x) => pick(*x)?.unary(*op),
        Step::Binary(op, a, b) => pick(*a)?.binary(pick(*b)?, *op),
        Step::Scalar(op, v, lhs, x) => pick(*x)?.scalar(*op, *v, *lhs),
        Step::MatMul(a, b, ta, tb) => pick(*a)?.matmul_t(pick(*b)?, *ta, *tb),
        Step::Reduce(op, axis, keep, x) => pick(*x)?.reduce(*op, *axis, *keep),
        Step::ReduceAll(op, x) => pick(*x)?.reduce_all(*op),
        Step::Softmax(axis, x) => pick(*x)?.softmax(*axis, false),
        Step::LogSoftmax(axis, x) => pick(*x)?.softmax(*axis, true),
        Step::Transpose(x) => pick(*x)?.transpose(),
        Step::Permute(axes, x) => pick(*x)?.permute(axes),
        Step::Reshape(s, x) => {
            let x = pick(*x)?;
            x.reshape(&s.resolve(&x.dims(), false))
        }
        Step::BroadcastTo(s, x) => {
            let x = pick(*x)?;
            x.broadcast_to(&s.resolve(&x.dims(), true))
        }
        Step::Slice(axis, start, end, x) => pick(*x)?.slice(*axis, *start, *end),
        Step::Concat(xs, axis) => {
            let xs: Vec<&V> = xs.iter().map(|&i| pick(i)).collect::<Option<_>>()?;
            V::concat(&xs, *axis)
        }
        Step::SumTo(s, x) => {
            let x = pick(*x)?;
            // Lead gives a shape x broadcasts *to*; sum back from it instead.
            x.sum_to(&s.resolve(&x.dims(), false))
        }
        Step::CrossEntropy(kind, seed, x) => {
            let x = pick(*x)?;
            match kind.make(&x.dims(), *seed) {
                Some((labels, shape)) => x.cross_entropy(&labels, &shape),
                // Rank-0 logits: labels of shape [] and the shape rule's error.
                None => x.cross_entropy(&[0], &[]),
            }
        }
        Step::Im2Col([kh, kw, stride, padding, dilation], x) => {
            let x = pick(*x)?;
            let mut dims = x.dims();
            while dims.len() < 4 {
                dims.insert(0, 1);
            }
            let geom = Conv2d::new(*kh, *kw)
                .stride(*stride)
                .padding(*padding)
                .dilation(*dilation);
            x.reshape(&dims).and_then(|x| x.im2col(geom))
        }
    })
}

/// Whether a step is a cross-entropy whose labels fall outside 0..C for its
/// operand: the CPU reference fails at once, the GPU at the readback (see the file docs).
fn bad_labels<V: Value>(step: &Step, vals: &[Option<V>]) -> bool {
    let Step::CrossEntropy(Labels::OutOfRange, seed, x) = step else {
        return false;
    };
    let Some(x) = &vals[x % vals.len()] else {
        return false;
    };
    let dims = x.dims();
    let Some((labels, _)) = Labels::OutOfRange.make(&dims, *seed) else {
        return false;
    };
    let classes = *dims.last().unwrap_or(&0) as i32;
    classes > 0 && labels.iter().any(|&l| l < 0 || l >= classes)
}

/// Seeded input data in [-2, 2), with a NaN or infinity sprinkled in when asked.
fn input_data(case: &Case, k: usize, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(case.seed.wrapping_add(k as u64));
    let mut v = rng.vec_uniform(n, -2.0, 2.0);
    if case.specials && n > 0 {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let i = (case.seed as usize / 7) % n;
        v[i] = specials[(case.seed as usize / 3 + k) % 3];
    }
    v
}

/// Errors compare by variant and op (messages may name devices).
fn kind(e: &Error) -> String {
    let s = format!("{e:?}");
    let variant = s.split([' ', '(', '{']).next().unwrap_or("").to_string();
    let op = match e {
        Error::Shape { op, .. }
        | Error::Axis { op, .. }
        | Error::Empty { op, .. }
        | Error::DType { op, .. }
        | Error::Invalid { op, .. }
        | Error::TooLarge { op, .. }
        | Error::DataLength { op, .. } => op,
        _ => "",
    };
    format!("{variant}({op})")
}

/// Counters printed as the cases go: eager steps that ran / failed on both
/// devices, graphs that ran / failed, and cases in all.
static STATS: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];
const STEP_OK: usize = 0;
const STEP_ERR: usize = 1;
const GRAPH_OK: usize = 2;
const GRAPH_ERR: usize = 3;
const CASES: usize = 4;
/// Cross-entropy steps that ran on both, that had labels outside 0..C, and
/// im2col steps that ran on both (so the new ops are seen to be reached).
const CE_OK: usize = 5;
const CE_BAD_LABELS: usize = 6;
const IM2COL_OK: usize = 7;

fn count(i: usize) {
    STATS[i].fetch_add(1, Relaxed);
}

const ATOL: f32 = 1e-3;
const RTOL: f32 = 1e-3;

/// Eager: every step on the CPU reference and on the GPU; same failures, close values.
/// Returns false where the values of later graph outputs cannot be compared.
fn run_eager(case: &Case, dev: &Device) -> bool {
    let mut comparable = true;
    let cpu = Device::cpu();
    let mut on_cpu: Vec<Option<Tensor>> = Vec::new();
    let mut on_gpu: Vec<Option<Tensor>> = Vec::new();
    for (k, s) in case.inputs.iter().enumerate() {
        let data = input_data(case, k, s.iter().product());
        on_cpu.push(Some(Tensor::from_slice(&cpu, &data, s).unwrap()));
        on_gpu.push(Some(Tensor::from_slice(dev, &data, s).unwrap()));
    }
    for (i, step) in case.steps.iter().enumerate() {
        let bad_labels = bad_labels(step, &on_cpu);
        let c = apply(step, &on_cpu);
        let g = apply(step, &on_gpu);
        let (c, g) = match (c, g) {
            (None, None) => (None, None),
            (Some(Err(ce)), Some(Ok(g))) if bad_labels => {
                // Invalid(cross_entropy) on the reference at once; on the GPU the
                // kernel reports it and the readback returns the same error.
                assert_eq!(kind(&ce), "Invalid(cross_entropy)", "step {i}: {ce}");
                let ge = g.to_vec::<f32>().unwrap_err();
                assert_eq!(
                    kind(&ge),
                    "Invalid(cross_entropy)",
                    "step {i} {step:?}: {ge}"
                );
                count(STEP_ERR);
                count(CE_BAD_LABELS);
                comparable = false;
                (None, None)
            }
            (Some(Ok(c)), Some(Ok(g))) => {
                assert_eq!(c.shape(), g.shape(), "step {i} {step:?}: shapes");
                let (cv, gv) = (c.to_vec::<f32>().unwrap(), g.to_vec::<f32>().unwrap());
                assert_close(&format!("eager step {i} {step:?}"), &gv, &cv, ATOL, RTOL);
                count(STEP_OK);
                match step {
                    Step::CrossEntropy(..) => count(CE_OK),
                    Step::Im2Col(..) => count(IM2COL_OK),
                    _ => {}
                }
                (Some(c), Some(g))
            }
            (Some(Err(ce)), Some(Err(ge))) => {
                assert_eq!(kind(&ce), kind(&ge), "step {i} {step:?}: {ce} vs {ge}");
                count(STEP_ERR);
                (None, None)
            }
            (c, g) => panic!("step {i} {step:?}: CPU {c:?} but GPU {g:?}"),
        };
        on_cpu.push(c);
        on_gpu.push(g);
    }
    comparable
}

/// The graph: built once (errors allowed), compiled and run on both devices;
/// values compared when `compare`.
fn run_graph(case: &Case, dev: &Device, compare: bool) {
    let g = Graph::new();
    let mut vals: Vec<Option<Var>> = Vec::new();
    let names: Vec<String> = (0..case.inputs.len()).map(|k| format!("x{k}")).collect();
    for (name, s) in names.iter().zip(&case.inputs) {
        vals.push(Some(g.input(name, s)));
    }
    LABEL_FEEDS.with(|f| f.borrow_mut().clear());
    for step in &case.steps {
        let v = apply(step, &vals).and_then(|r| r.ok());
        vals.push(v);
    }
    let labels = LABEL_FEEDS.with(|f| f.borrow_mut().split_off(0));
    let mut outputs: Vec<Var> = vals[case.inputs.len()..]
        .iter()
        .flatten()
        .cloned()
        .collect();
    if case.grad {
        if let Some(last) = outputs.last().cloned() {
            let inputs: Vec<&Var> = vals[..case.inputs.len()].iter().flatten().collect();
            // Errors are fine (say, an op without a gradient); panics are not.
            if let Ok(grads) = last.sum().and_then(|l| autodiff::grad(&l, &inputs)) {
                outputs.extend(grads);
            }
        }
    }
    if outputs.is_empty() {
        return;
    }
    let refs: Vec<&Var> = outputs.iter().collect();
    let results: Vec<wgrad::Result<Vec<Vec<f32>>>> = [Device::cpu(), dev.clone()]
        .iter()
        .map(|d| {
            let exe = d.compile(&g, &refs, None)?;
            let mut feeds: Vec<Tensor> = case
                .inputs
                .iter()
                .enumerate()
                .map(|(k, s)| Tensor::from_slice(d, &input_data(case, k, s.iter().product()), s))
                .collect::<wgrad::Result<_>>()?;
            for (_, l, s) in &labels {
                feeds.push(Tensor::from_slice(d, l, s)?);
            }
            let all_names = names.iter().chain(labels.iter().map(|(n, _, _)| n));
            let named: Vec<(&str, &Tensor)> = all_names.map(|n| n.as_str()).zip(&feeds).collect();
            exe.run(&named)?.iter().map(|t| t.to_vec::<f32>()).collect()
        })
        .collect();
    match (&results[0], &results[1]) {
        (Ok(_), Ok(_)) if !compare => count(GRAPH_OK),
        // Labels outside 0..C: the reference fails at once, the GPU at the readback.
        (Err(ce), Err(ge)) if !compare && kind(ce) == "Invalid(cross_entropy)" => {
            assert_eq!(kind(ge), "Invalid(cross_entropy)", "{ge}");
            count(GRAPH_ERR)
        }
        (Ok(c), Ok(gv)) => {
            count(GRAPH_OK);
            for (k, (cv, gv)) in c.iter().zip(gv).enumerate() {
                assert_close(
                    &format!("graph output {k} ({:?})", outputs[k]),
                    gv,
                    cv,
                    ATOL,
                    RTOL,
                );
            }
        }
        (Err(ce), Err(ge)) => {
            assert_eq!(kind(ce), kind(ge), "graph run: {ce} vs {ge}");
            count(GRAPH_ERR);
        }
        (c, gv) => panic!(
            "graph run: CPU {:?} but GPU {:?}",
            c.as_ref().map(|_| "Ok"),
            gv.as_ref().map(|_| "Ok")
        ),
    }
}

fn check(case: &Case, dev: &Device) -> Result<(), TestCaseError> {
    let outcome =
        catch_unwind(AssertUnwindSafe(|| {
            let compare = run_eager(case, dev);
            run_graph(case, dev, compare);
            count(CASES);
            let n: Vec<usize> = STATS.iter().map(|a| a.load(Relaxed)).collect();
            if n[CASES] % 32 == 0 {
                eprintln!(
                "fuzz: {} cases: eager steps {} ran, {} failed on both; graphs {} ran, {} failed \
                 on both; cross_entropy {} ran, {} with bad labels; im2col {} ran",
                n[CASES], n[STEP_OK], n[STEP_ERR], n[GRAPH_OK], n[GRAPH_ERR], n[CE_OK],
                n[CE_BAD_LABELS], n[IM2COL_OK]
            );
            }
        }));
    match outcome {
        Ok(()) => Ok(()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panic: {msg}")))
        }
    }
}

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        // A fixed seed keeps CI reproducible; PROPTEST_RNG_SEED explores others.
        rng_seed: match std::env::var("PROPTEST_RNG_SEED") {
            Ok(_) => Config::default().rng_seed,
            Err(_) => RngSeed::Fixed(0x3a7d_51c0),
        },
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_graphs_never_panic_and_match_the_reference(case in case()) {
        let Some(dev) = gpu() else { return Ok(()) };
        check(&case, &dev)?;
    }
}

/// Graph building alone (no device): never a panic, on many more cases.
#[test]
fn building_random_graphs_never_panics() {
    let mut runner = proptest::test_runner::TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            let built = catch_unwind(AssertUnwindSafe(|| {
                let g = Graph::new();
                let mut vals: Vec<Option<Var>> =
                    case.inputs.iter().map(|s| Some(g.input("x", s))).collect();
                for step in &case.steps {
                    let v = apply(step, &vals).and_then(|r| r.ok());
                    vals.push(v);
                }
                if let Some(Some(last)) = vals.last() {
                    let wrt: Vec<&Var> = vals[..case.inputs.len()].iter().flatten().collect();
                    let _ = last.sum().and_then(|l| autodiff::grad(&l, &wrt));
                }
            }));
            prop_assert!(built.is_ok(), "panic while building {case:?}");
            Ok(())
        })
        .unwrap();
}
