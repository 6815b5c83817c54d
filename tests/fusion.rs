//! Fusion of element-wise chains (src/fusion.rs): a compiled GPU graph runs each
//! chain as one generated kernel; its results match the CPU reference, which
//! runs every node of the chain by itself, on awkward shapes; every generated
//! kernel validates with naga.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::{BinaryOp, Device, Graph, Tensor, UnaryOp, Var};

fn validate(source: &str) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("parse: {}\n{source}", e.emit_to_string(source)));
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("validate: {e:?}\n{source}"));
}

/// Runs `out` of `g` compiled on `dev` with `feeds`; returns (values, fused nodes).
fn run(
    dev: &Device,
    g: &Graph,
    out: &Var,
    feeds: &[(&str, &[f32], &[usize])],
) -> (Vec<f32>, usize) {
    let exe = dev.compile(g, &[out], None).expect("compile");
    for s in exe.generated_sources() {
        validate(&s);
    }
    let tensors: Vec<Tensor> = feeds
        .iter()
        .map(|(_, d, s)| Tensor::from_slice(dev, d, s).unwrap())
        .collect();
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|f| f.0).zip(&tensors).collect();
    let got = exe.run(&named).expect("run")[0].to_vec::<f32>().unwrap();
    (got, exe.fused_nodes())
}

/// GPU (fused) against the CPU reference (node by node) for `build(x, b)`, with
/// `x` of `shape` and `b` a bias over its last dim.
fn check(label: &str, shape: &[usize], build: impl Fn(&Var, &Var) -> wgrad::Result<Var>) {
    let Some(dev) = gpu() else { return };
    let n: usize = shape.iter().product();
    let last = *shape.last().unwrap();
    let xs = uniform(n as u64, n, -2.0, 2.0);
    let bs = uniform(last as u64 + 1, last, -1.0, 1.0);
    let g = Graph::new();
    let x = g.input("x", shape);
    let b = g.input("b", &[last]);
    let out = build(&x, &b).unwrap();
    let feeds: [(&str, &[f32], &[usize]); 2] = [("x", &xs, shape), ("b", &bs, &[last])];
    let (got, fused) = run(&dev, &g, &out, &feeds);
    let (want, cpu_fused) = run(&Device::cpu(), &g, &out, &feeds);
    assert_eq!(cpu_fused, 0, "the CPU reference runs every node");
    assert!(fused > 0, "{label} {shape:?}: no chain was fused");
    assert_close(&format!("{label} {shape:?}"), &got, &want, 1e-5, 1e-5);
}

const SHAPES: [&[usize]; 5] = [&[1], &[255], &[257], &[3, 257], &[64, 128]];

#[test]
fn bias_and_activation_chains_match_the_reference() {
    for shape in SHAPES {
        check("relu(x + b)", shape, |x, b| x.add(b)?.relu());
        check("sigmoid((x + b)·0.5) - x", shape, |x, b| {
            x.add(b)?.mul_scalar(0.5)?.sigmoid()?.sub(x)
        });
    }
}

#[test]
fn every_unary_op_fuses() {
    for op in UnaryOp::ALL {
        for shape in [&[1usize][..], &[3, 257]] {
            check(op.name(), shape, |x, b| {
                x.mul_scalar(0.7)?.add(b)?.unary(op)
            });
        }
    }
}

#[test]
fn every_binary_op_and_scalar_side_fuses() {
    for op in BinaryOp::ALL {
        for shape in [&[1usize][..], &[3, 257]] {
            check(op.name(), shape, |x, b| {
                // |1.5 (op) x| (op) b, b broadcast over the rows, then negated.
                x.scalar(op, 1.5, true)?.abs()?.binary(b, op)?.neg()
            });
        }
    }
}

#[test]
fn a_matmul_bias_relu_layer_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    for (m, k, n) in [(1usize, 3usize, 5usize), (255, 17, 10), (257, 64, 128)] {
        let g = Graph::new();
        let x = g.input("x", &[m, k]);
        let w = g.input("w", &[k, n]);
        let b = g.input("b", &[n]);
        let out = x.matmul(&w).unwrap().add(&b).unwrap().relu().unwrap();
        let (xs, ws, bs) = (
            uniform(1, m * k, -1.0, 1.0),
            uniform(2, k * n, -1.0, 1.0),
            uniform(3, n, -1.0, 1.0),
        );
        let feeds: [(&str, &[f32], &[usize]); 3] =
            [("x", &xs, &[m, k]), ("w", &ws, &[k, n]), ("b", &bs, &[n])];
        let (got, fused) = run(&dev, &g, &out, &feeds);
        let (want, _) = run(&Device::cpu(), &g, &out, &feeds);
        assert_eq!(fused, 2, "the product stores with its bias add and ReLU");
        assert_close(&format!("layer {m}x{k}x{n}"), &got, &want, 1e-4, 1e-4);
    }
}

#[test]
fn values_used_elsewhere_are_written_beside_the_root() {
    let Some(dev) = gpu() else { return };
    let g = Graph::new();
    let x = g.input("x", &[4, 3]);
    // h is asked for and read twice by the chain: computed in it and written out.
    let h = x.relu().unwrap();
    let out = h.mul(&h).unwrap().exp().unwrap();
    // r is read by a reduction that runs before the chain after it: computed by itself.
    let r = x.abs().unwrap();
    let total = r.sum().unwrap();
    let tail = r.exp().unwrap().neg().unwrap();
    let exe = dev.compile(&g, &[&out, &h, &total, &tail], None).unwrap();
    assert_eq!(exe.fused_nodes(), 3, "relu → mul → exp and exp → neg fuse");
    let xs = uniform(9, 12, -1.0, 1.0);
    let xt = Tensor::from_slice(&dev, &xs, &[4, 3]).unwrap();
    let outs = exe.run(&[("x", &xt)]).unwrap();
    let want_h: Vec<f32> = xs.iter().map(|v| v.max(0.0)).collect();
    let want: Vec<f32> = want_h.iter().map(|v| (v * v).exp()).collect();
    let want_tail: Vec<f32> = xs.iter().map(|v| -v.abs().exp()).collect();
    let want_total: f32 = xs.iter().map(|v| v.abs()).sum();
    assert_close("h", &outs[1].to_vec::<f32>().unwrap(), &want_h, 0.0, 0.0);
    assert_close("out", &outs[0].to_vec::<f32>().unwrap(), &want, 1e-6, 1e-6);
    assert_close(
        "total",
        &[outs[2].item().unwrap()],
        &[want_total],
        1e-5,
        1e-5,
    );
    assert_close(
        "tail",
        &outs[3].to_vec::<f32>().unwrap(),
        &want_tail,
        1e-6,
        1e-6,
    );
}
