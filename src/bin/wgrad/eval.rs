//! `wgrad eval OP INPUT.npy... --out DIR`: one op on .npy inputs, results as
//! .npy files, so anyone can check wgrad against NumPy. With `--upstream G.npy`
//! the vector-Jacobian product is computed through the autodiff graph too.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wgrad::autodiff::vjp;
use wgrad::io::{read_npy, write_npy};
use wgrad::{BinaryOp, DType, Device, Graph, ReduceOp, Tensor, UnaryOp, Var};

/// The ops `eval` knows, for the error message.
const OPS: &[&str] = &[
    "matmul",
    "add",
    "sub",
    "mul",
    "div",
    "maximum",
    "minimum",
    "pow",
    "relu",
    "exp",
    "log",
    "sqrt",
    "tanh",
    "sigmoid",
    "gelu",
    "neg",
    "abs",
    "square",
    "softmax",
    "log_softmax",
    "sum",
    "mean",
    "max",
    "min",
    "transpose",
    "permute",
    "cross_entropy",
    "svd",
    "eigh",
    "eig",
    "qr",
    "rank",
];

/// Decompositions: several named outputs, no gradient.
const DECOMPOSITIONS: &[&str] = &["svd", "eigh", "eig", "qr", "rank"];

/// What the command line asked for.
pub struct EvalArgs {
    pub op: String,
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub axis: Option<isize>,
    pub axes: Option<String>,
    pub upstream: Option<PathBuf>,
    pub device: String,
}

fn arity(op: &str) -> usize {
    match op {
        "matmul" | "add" | "sub" | "mul" | "div" | "maximum" | "minimum" | "pow"
        | "cross_entropy" => 2,
        _ => 1,
    }
}

/// Records `op` on the input nodes.
fn build(a: &EvalArgs, x: &[Var]) -> wgrad::Result<Var> {
    let unary = |u: UnaryOp| x[0].unary(u);
    let binary = |b: BinaryOp| x[0].binary(&x[1], b);
    let reduce = |r: ReduceOp| match a.axis {
        Some(axis) => x[0].reduce(r, axis, false),
        None => x[0].graph().push(wgrad::Op::ReduceAll(r), &[&x[0]]),
    };
    match a.op.as_str() {
        "matmul" => x[0].matmul(&x[1]),
        "add" => binary(BinaryOp::Add),
        "sub" => binary(BinaryOp::Sub),
        "mul" => binary(BinaryOp::Mul),
        "div" => binary(BinaryOp::Div),
        "maximum" => binary(BinaryOp::Maximum),
        "minimum" => binary(BinaryOp::Minimum),
        "pow" => binary(BinaryOp::Pow),
        "relu" => unary(UnaryOp::Relu),
        "exp" => unary(UnaryOp::Exp),
        "log" => unary(UnaryOp::Log),
        "sqrt" => unary(UnaryOp::Sqrt),
        "tanh" => unary(UnaryOp::Tanh),
        "sigmoid" => unary(UnaryOp::Sigmoid),
        "gelu" => unary(UnaryOp::Gelu),
        "neg" => unary(UnaryOp::Neg),
        "abs" => unary(UnaryOp::Abs),
        "square" => unary(UnaryOp::Square),
        "softmax" => x[0].softmax(a.axis.unwrap_or(-1)),
        "log_softmax" => x[0].log_softmax(a.axis.unwrap_or(-1)),
        "sum" => reduce(ReduceOp::Sum),
        "mean" => reduce(ReduceOp::Mean),
        "max" => reduce(ReduceOp::Max),
        "min" => reduce(ReduceOp::Min),
        "transpose" => {
            if x[0].shape().len() != 2 {
                return Err(wgrad::Error::Shape {
                    op: "transpose",
                    detail: format!(
                        "eval's transpose takes a 2-D array, got shape {:?} (use permute)",
                        x[0].shape()
                    ),
                });
            }
            x[0].transpose()
        }
        "permute" => {
            let spec = a.axes.as_deref().unwrap_or("");
            let axes: std::result::Result<Vec<usize>, _> =
                spec.split(',').map(|s| s.trim().parse::<usize>()).collect();
            match axes {
                Ok(axes) if !spec.is_empty() => x[0].permute(&axes),
                _ => Err(wgrad::Error::Invalid {
                    op: "permute",
                    detail: format!("--axes must list the axes as a,b,c (got {spec:?})"),
                }),
            }
        }
        "cross_entropy" => x[0].cross_entropy(&x[1]),
        other => Err(wgrad::Error::Invalid {
            op: "eval",
            detail: format!("unknown op {other:?} (known: {})", OPS.join(", ")),
        }),
    }
}

/// svd → u, s (descending), vt; eigh → values (ascending), vectors (columns); eig → re, im
/// (real parts ascending), vectors (columns, zero for complex eigenvalues); qr → q, r
/// (reduced); rank → out.
fn decompose(a: &EvalArgs, x: &Tensor) -> Result<()> {
    if a.upstream.is_some() {
        bail!(
            "eval {}: --upstream is not supported for decompositions",
            a.op
        );
    }
    let context = || format!("eval {} on {:?}", a.op, x.shape());
    let named: Vec<(&str, Tensor)> = match a.op.as_str() {
        "svd" => {
            let (u, s, vt) = wgrad::linalg::svd(x).with_context(context)?;
            vec![("u.npy", u), ("s.npy", s), ("vt.npy", vt)]
        }
        "eigh" => {
            let (values, vectors) = wgrad::linalg::eigh(x).with_context(context)?;
            vec![("values.npy", values), ("vectors.npy", vectors)]
        }
        "eig" => {
            let e = wgrad::linalg::eig(x).with_context(context)?;
            vec![
                ("re.npy", e.re),
                ("im.npy", e.im),
                ("vectors.npy", e.vectors),
            ]
        }
        "qr" => {
            let (q, r) = wgrad::linalg::qr(x).with_context(context)?;
            vec![("q.npy", q), ("r.npy", r)]
        }
        _ => {
            let r = wgrad::linalg::rank(x, None).with_context(context)?;
            vec![("out.npy", Tensor::scalar(&Device::cpu(), r as f32)?)]
        }
    };
    // Read everything back before writing anything: an error leaves no outputs.
    let host: Vec<(&str, Tensor)> = named
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::cpu())?)))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("eval: cannot create {}", a.out.display()))?;
    for (name, t) in &host {
        write_npy(a.out.join(name), t)?;
    }
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    if !OPS.contains(&a.op.as_str()) {
        bail!("eval: unknown op {:?} (known: {})", a.op, OPS.join(", "));
    }
    if a.inputs.len() != arity(&a.op) {
        bail!(
            "eval {}: takes {} input file(s), got {}",
            a.op,
            arity(&a.op),
            a.inputs.len()
        );
    }
    let dev = match a.device.as_str() {
        "gpu" => Device::gpu()?,
        "cpu" => Device::cpu(),
        other => bail!("eval: --device must be gpu or cpu, not {other:?}"),
    };
    let inputs: Vec<Tensor> = a
        .inputs
        .iter()
        .map(|p| Ok(read_npy(p, &dev)?))
        .collect::<Result<_>>()?;
    if DECOMPOSITIONS.contains(&a.op.as_str()) {
        return decompose(&a, &inputs[0]);
    }
    let g = Graph::new();
    let vars: Vec<Var> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| match t.dtype() {
            DType::I32 => g.input_i32(&format!("x{i}"), t.shape()),
            _ => g.input(&format!("x{i}"), t.shape()),
        })
        .collect();
    let out = build(&a, &vars).with_context(|| {
        let shapes: Vec<String> = inputs.iter().map(|t| format!("{:?}", t.shape())).collect();
        format!("eval {} on {}", a.op, shapes.join(" and "))
    })?;
    let mut outputs = vec![out.clone()];
    let mut feeds: Vec<(String, Tensor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("x{i}"), t.clone()))
        .collect();
    let mut grad_inputs = Vec::new();
    if let Some(path) = &a.upstream {
        let u = read_npy(path, &dev)?;
        if u.shape() != out.shape() {
            bail!(
                "eval {}: upstream {} has shape {:?}, the output has {:?}",
                a.op,
                path.display(),
                u.shape(),
                out.shape()
            );
        }
        let uv = g.input("upstream", out.shape());
        // Gradients for the f32 inputs (labels have none).
        grad_inputs = (0..vars.len())
            .filter(|&i| inputs[i].dtype() == DType::F32)
            .collect();
        let wrt: Vec<&Var> = grad_inputs.iter().map(|&i| &vars[i]).collect();
        outputs.extend(vjp(&out, &uv, &wrt)?);
        feeds.push(("upstream".into(), u));
    }
    let refs: Vec<&Var> = outputs.iter().collect();
    let exe = dev.compile(&g, &refs, None)?;
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let results = exe.run(&named)?;
    // Read everything back before writing anything: an error leaves no outputs.
    let host: Vec<Tensor> = results
        .iter()
        .map(|t| t.to_device(&Device::cpu()))
        .collect::<wgrad::Result<_>>()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("eval: cannot create {}", a.out.display()))?;
    write_npy(a.out.join("out.npy"), &host[0])?;
    for (k, &i) in grad_inputs.iter().enumerate() {
        write_npy(a.out.join(format!("grad{i}.npy")), &host[1 + k])?;
    }
    Ok(())
}
