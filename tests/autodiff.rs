//! Gradient rules: every op's gradient against central finite differences on
//! the CPU reference, and GPU gradients against CPU-reference gradients.
//!
//! Each case builds `loss = Σ f(x…)·R` with a fixed random R (so the upstream
//! gradient is not all ones), differentiates it with `grad`, and perturbs each
//! input element by ±h. The finite differences run on the double-precision
//! CPU reference (`Device::cpu_f64`, f64 between ops) with h = 1e-4 and a 1e-6
//! tolerance (see `common::check_finite_differences`).

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::{grad, vjp};
use wgrad::{BinaryOp, Device, Error, Graph, ReduceOp, Tensor, UnaryOp, Var};

type Build = dyn Fn(&[Var]) -> wgrad::Result<Var>;
/// (input name, values, shape) for each input.
type Feeds = Vec<(String, Vec<f32>, Vec<usize>)>;

struct Case {
    name: String,
    shapes: Vec<Vec<usize>>,
    lo: f32,
    hi: f32,
    build: Box<Build>,
}

fn case(
    name: &str,
    shapes: &[&[usize]],
    lo: f32,
    hi: f32,
    build: impl Fn(&[Var]) -> wgrad::Result<Var> + 'static,
) -> Case {
    Case {
        name: name.to_string(),
        shapes: shapes.iter().map(|s| s.to_vec()).collect(),
        lo,
        hi,
        build: Box::new(build),
    }
}

/// Graph of `Σ f(x)·R`, its gradient nodes, and the feeds.
fn setup(c: &Case, seed: u64) -> (Graph, Var, Vec<Var>, Feeds) {
    let g = Graph::new();
    let xs: Vec<Var> = (0..c.shapes.len())
        .map(|i| g.input(&format!("x{i}"), &c.shapes[i]))
        .collect();
    let y = (c.build)(&xs).unwrap_or_else(|e| panic!("{}: build: {e}", c.name));
    let n: usize = y.shape().iter().product();
    let r =
        Tensor::from_slice(&Device::cpu(), &uniform(seed + 99, n, 0.5, 1.5), y.shape()).unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let refs: Vec<&Var> = xs.iter().collect();
    let grads = grad(&loss, &refs).unwrap();
    let feeds = c
        .shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            (
                format!("x{i}"),
                uniform(seed + i as u64, n, c.lo, c.hi),
                s.clone(),
            )
        })
        .collect();
    (g, loss, grads, feeds)
}

fn run(dev: &Device, g: &Graph, outs: &[&Var], feeds: &Feeds) -> Vec<Vec<f32>> {
    let exe = dev.compile(g, outs, None).unwrap();
    let tensors: Vec<Tensor> = feeds
        .iter()
        .map(|(_, v, s)| Tensor::from_slice(dev, v, s).unwrap())
        .collect();
    let named: Vec<(&str, &Tensor)> = feeds
        .iter()
        .zip(&tensors)
        .map(|((n, ..), t)| (n.as_str(), t))
        .collect();
    exe.run(&named)
        .unwrap()
        .iter()
        .map(|t| t.to_vec::<f32>().unwrap())
        .collect()
}

fn check(c: &Case) {
    let (g, loss, grads, feeds) = setup(c, 7);
    let wide: Vec<(String, Feed)> = feeds
        .iter()
        .map(|(n, v, s)| (n.clone(), Feed::real(v, s)))
        .collect();
    check_finite_differences(&c.name, &g, &loss, &grads, &wide);
    let cpu = Device::cpu();
    let mut outs = vec![&loss];
    outs.extend(grads.iter());
    let analytic = run(&cpu, &g, &outs, &feeds);
    if let Some(dev) = gpu() {
        let on_gpu = run(&dev, &g, &outs, &feeds);
        for k in 0..feeds.len() {
            assert_close(
                &format!("{} d/dx{k} GPU vs CPU", c.name),
                &on_gpu[1 + k],
                &analytic[1 + k],
                1e-4,
                1e-4,
            );
        }
    }
}

#[test]
fn unary_gradients() {
    for op in UnaryOp::ALL {
        if op == UnaryOp::GeluGrad {
            continue;
        }
        let (lo, hi) = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Log1p => (0.5, 3.0),
            UnaryOp::Asin | UnaryOp::Acos | UnaryOp::Atanh => (-0.9, 0.9),
            UnaryOp::Acosh => (1.1, 3.0),
            // away from tan's poles, where finite differences lose their accuracy
            UnaryOp::Tan => (-1.2, 1.2),
            // keep clear of the kinks at 0
            UnaryOp::Abs | UnaryOp::Relu => (0.2, 2.0),
            _ => (-2.0, 2.0),
        };
        check(&case(op.name(), &[&[3, 5]], lo, hi, move |x| {
            x[0].unary(op)
        }));
        if matches!(op, UnaryOp::Abs | UnaryOp::Relu) {
            check(&case(op.name(), &[&[3, 5]], -2.0, -0.2, move |x| {
                x[0].unary(op)
            }));
        }
    }
}

#[test]
fn binary_gradients_with_broadcasting() {
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ] {
        let (lo, hi) = if matches!(op, BinaryOp::Pow | BinaryOp::Div) {
            (0.5, 2.0)
        } else {
            (-2.0, 2.0)
        };
        for (sa, sb) in [
            (&[4, 3][..], &[4, 3][..]),
            (&[4, 3], &[3]),
            (&[4, 1], &[1, 3]),
            (&[2, 4, 3], &[4, 1]),
        ] {
            check(&case(
                &format!("{} {sa:?} {sb:?}", op.name()),
                &[sa, sb],
                lo,
                hi,
                move |x| x[0].binary(&x[1], op),
            ));
        }
    }
}

#[test]
fn scalar_operand_gradients() {
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
    ] {
        for lhs in [false, true] {
            check(&case(
                &format!("{} scalar lhs={lhs}", op.name()),
                &[&[7]],
                0.5,
                2.0,
                move |x| x[0].scalar(op, 1.5, lhs),
            ));
        }
    }
}

#[test]
fn matmul_gradients() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a: &[usize] = if ta { &[3, 4] } else { &[4, 3] };
        let b: &[usize] = if tb { &[5, 3] } else { &[3, 5] };
        check(&case(
            &format!("matmul ta={ta} tb={tb}"),
            &[a, b],
            -1.0,
            1.0,
            move |x| x[0].matmul_t(&x[1], ta, tb),
        ));
    }
    check(&case(
        "matmul batched broadcast",
        &[&[2, 1, 3, 4], &[3, 4, 2]],
        -1.0,
        1.0,
        |x| x[0].matmul(&x[1]),
    ));
    check(&case("matmul vector", &[&[3, 4], &[4]], -1.0, 1.0, |x| {
        x[0].matmul(&x[1])
    }));
}

#[test]
fn reduction_and_softmax_gradients() {
    for op in ReduceOp::ALL {
        for keepdim in [false, true] {
            for axis in [0isize, 1, -1] {
                // Max and min are not differentiable where two elements tie: spread the
                // values 0.1 apart (a fixed shuffle) and keep the random part within
                // ±0.02 so a ±h step never changes which element is the extreme.
                check(&case(
                    &format!("{} axis {axis} keepdim {keepdim}", op.name()),
                    &[&[3, 4, 5]],
                    -0.02,
                    0.02,
                    move |x| {
                        let spread: Vec<f32> =
                            (0..60).map(|i| ((i * 37) % 60) as f32 * 0.1).collect();
                        let s = Tensor::from_slice(&Device::cpu(), &spread, &[3, 4, 5])?;
                        x[0].add(&x[0].graph().constant(&s)?)?
                            .reduce(op, axis, keepdim)
                    },
                ));
            }
        }
    }
    check(&case("sum all", &[&[3, 4]], -2.0, 2.0, |x| x[0].sum()));
    check(&case("mean all", &[&[3, 4]], -2.0, 2.0, |x| x[0].mean()));
    for axis in [0isize, 1] {
        check(&case(
            &format!("softmax {axis}"),
            &[&[3, 5]],
            -3.0,
            3.0,
            move |x| x[0].softmax(axis),
        ));
        check(&case(
            &format!("log_softmax {axis}"),
            &[&[3, 5]],
            -3.0,
            3.0,
            move |x| x[0].log_softmax(axis),
        ));
    }
}

#[test]
fn layout_gradients() {
    check(&case("transpose", &[&[3, 5]], -1.0, 1.0, |x| {
        x[0].transpose()
    }));
    check(&case("permute", &[&[2, 3, 4]], -1.0, 1.0, |x| {
        x[0].permute(&[2, 0, 1])
    }));
    check(&case("reshape", &[&[2, 6]], -1.0, 1.0, |x| {
        x[0].reshape(&[3, 4])
    }));
    check(&case("broadcast_to", &[&[3, 1]], -1.0, 1.0, |x| {
        x[0].broadcast_to(&[2, 3, 4])
    }));
    // The gradient sums runs of neighbouring stretched axes in one reduction each: runs
    // split by a kept axis (batch norm's statistics), a missing leading axis, kept and
    // stretched axes of length 1 between them, and odd lengths.
    for (from, to) in [
        (&[1, 3, 1, 1][..], &[2, 3, 4, 5][..]),
        (&[3, 1, 1], &[2, 3, 4, 5]),
        (&[2, 1, 1, 5], &[2, 1, 3, 5]),
        (&[1, 5, 1, 1, 1], &[3, 5, 2, 1, 3]),
        (&[1, 1], &[7, 1]),
    ] {
        check(&case(
            &format!("broadcast_to {from:?} -> {to:?}"),
            &[from],
            -1.0,
            1.0,
            move |x| x[0].broadcast_to(to),
        ));
    }
    check(&case("slice", &[&[4, 5]], -1.0, 1.0, |x| {
        x[0].slice(1, 1, 3)
    }));
    check(&case("concat", &[&[2, 3], &[2, 2]], -1.0, 1.0, |x| {
        Var::concat(&[&x[0], &x[1]], 1)
    }));
}

#[test]
fn a_node_used_twice_accumulates() {
    // f = x·x + x: df/dx = 2x + 1
    check(&case("reuse", &[&[6]], -2.0, 2.0, |x| {
        x[0].mul(&x[0])?.add(&x[0])
    }));
    // a bias broadcast over a batch: gradient sums over the batch
    check(&case("bias", &[&[5, 3], &[3]], -2.0, 2.0, |x| {
        x[0].add(&x[1])?.tanh()
    }));
}

#[test]
fn non_scalar_output_takes_an_upstream_gradient() {
    let g = Graph::new();
    let x = g.input("x", &[2, 3]);
    let y = x.square().unwrap(); // dy = 2x·u
    let u = g.input("u", &[2, 3]);
    let gx = vjp(&y, &u, &[&x]).unwrap();
    let xs = [1.0f32, -2.0, 3.0, 0.5, 0.0, -1.0];
    let us = [1.0f32, 1.0, 2.0, -1.0, 3.0, 0.5];
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let exe = dev.compile(&g, &[&gx[0]], None).unwrap();
        let xt = Tensor::from_slice(&dev, &xs, &[2, 3]).unwrap();
        let ut = Tensor::from_slice(&dev, &us, &[2, 3]).unwrap();
        let got = exe.run(&[("x", &xt), ("u", &ut)]).unwrap()[0]
            .to_vec::<f32>()
            .unwrap();
        let want: Vec<f32> = xs.iter().zip(&us).map(|(x, u)| 2.0 * x * u).collect();
        assert_close("vjp of square", &got, &want, 1e-6, 1e-6);
    }
    let e = grad(&y, &[&x]).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "grad", .. }), "{e}");
    let other = Graph::new().input("z", &[1]);
    assert!(matches!(
        grad(&y.sum().unwrap(), &[&other]).unwrap_err(),
        Error::Invalid { .. }
    ));
}

#[test]
fn the_f64_reference_keeps_f64_between_ops() {
    // (1 + 1e-12) - 1 survives in f64 and rounds to 0 in f32.
    let run = |dev: &Device| -> f64 {
        let x = Tensor::from_f64(dev, &[1.0 + 1e-12], &[1]).unwrap();
        let d = x.binary_scalar(BinaryOp::Sub, 1.0, false).unwrap();
        let d = d.binary_scalar(BinaryOp::Mul, 1e12, false).unwrap();
        d.sum().unwrap().to_vec_f64().unwrap()[0]
    };
    assert!((run(&Device::cpu_f64()) - 1.0).abs() < 1e-3);
    assert_eq!(run(&Device::cpu()), 0.0);
    assert!(Device::cpu_f64().is_f64_reference() && !Device::cpu().is_f64_reference());
    // Read as f32, the wide value is rounded once.
    let t = Tensor::from_f64(&Device::cpu_f64(), &[0.1], &[1]).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![0.1f32]);
}

#[test]
fn the_finite_difference_check_rejects_a_wrong_rule() {
    // d Σx² is 2x; offering x (a rule off by a factor 2) must fail the check.
    let g = Graph::new();
    let x = g.input("x", &[4]);
    let loss = x.square().unwrap().sum().unwrap();
    let feeds = [("x".to_string(), Feed::real(&[0.5, -1.0, 2.0, 0.25], &[4]))];
    check_finite_differences(
        "right rule",
        &g,
        &loss,
        &grad(&loss, &[&x]).unwrap(),
        &feeds,
    );
    let wrong = std::panic::catch_unwind(|| {
        check_finite_differences("wrong rule", &g, &loss, std::slice::from_ref(&x), &feeds);
    });
    assert!(wrong.is_err(), "a wrong gradient passed the check");
    // And a rule off by 1e-4 relative is still caught at f64's tolerance.
    let nearly = x.mul_scalar(2.0002).unwrap();
    let close = std::panic::catch_unwind(|| {
        check_finite_differences(
            "nearly right",
            &g,
            &loss,
            std::slice::from_ref(&nearly),
            &feeds,
        );
    });
    assert!(close.is_err(), "a gradient 1e-4 off passed the check");
}
