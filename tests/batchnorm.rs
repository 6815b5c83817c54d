//! Batch-norm training primitives (ops/batchnorm.rs, shaders/batchnorm.wgsl): values against
//! a naive f64 loop written here and against the existing composition `Var::batch_norm`,
//! gradients against finite differences and against the composition's gradients, GPU
//! against the CPU reference on awkward shapes (batch 1, odd C, HW = 1, constant channels, a
//! channel past one invocation's loop), the running update, and bad input.

mod common;

use common::{assert_close, assert_close_f64, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Device, Error, Graph, Init, Tensor, Var};

const EPS: f32 = 1e-5;

/// y = γ·(x − mean)/√(var + eps) + β per channel of x (N, C, …), biased variance, in f64.
fn naive(x: &[f32], shape: &[usize], gamma: &[f32], beta: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (n, c) = (shape[0], shape[1]);
    let hw: usize = shape[2..].iter().product();
    let mut y = vec![0.0; x.len()];
    let mut stats = vec![0.0; 3 * c];
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|b| (0..hw).map(move |i| (b * c + ch) * hw + i))
            .collect();
        let m = idx.len() as f64;
        let mean = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / m;
        let var = idx
            .iter()
            .map(|&i| (x[i] as f64 - mean).powi(2))
            .sum::<f64>()
            / m;
        let s = 1.0 / (var + EPS as f64).sqrt();
        for &i in &idx {
            y[i] = gamma[ch] as f64 * (x[i] as f64 - mean) * s + beta[ch] as f64;
        }
        stats[ch] = mean;
        stats[c + ch] = var;
        stats[2 * c + ch] = s;
    }
    (y, stats)
}

/// The primitive's graph: y (then a ReLU with `relu`), stats and the gradients of Σ y·r for
/// x, γ, β.
fn primitive_with(shape: &[usize], r: &[f32], relu: bool) -> (Graph, [Var; 6]) {
    let g = Graph::new();
    let c = shape[1];
    let x = g.input("x", shape);
    let gamma = g.input("gamma", &[c, 1, 1]);
    let beta = g.input("beta", &[c]);
    let (y, stats) = x.batch_norm_train(&gamma, &beta, EPS).unwrap();
    let y = if relu { y.relu().unwrap() } else { y };
    let rt = Tensor::from_slice(&Device::cpu(), r, shape).unwrap();
    let loss = y.mul(&g.constant(&rt).unwrap()).unwrap().sum().unwrap();
    let gr = grad(&loss, &[&x, &gamma, &beta]).unwrap();
    let [dx, dg, db] = [gr[0].clone(), gr[1].clone(), gr[2].clone()];
    (g, [y, stats, dx, dg, db, loss])
}

/// The same through the existing composition (`Var::batch_norm`, ops written elsewhere).
fn composition(shape: &[usize], r: &[f32], relu: bool) -> (Graph, [Var; 4]) {
    let g = Graph::new();
    let c = shape[1];
    let x = g.input("x", shape);
    let gamma = g.input("gamma", &[c, 1, 1]);
    let beta = g.input("beta", &[c]);
    let mut bshape = vec![1; shape.len()];
    bshape[1] = c;
    let (xh, _, _) = x.batch_norm(EPS).unwrap();
    let y = if shape.len() >= 3 {
        let gm = gamma.reshape(&bshape).unwrap();
        xh.mul(&gm)
            .unwrap()
            .add(&beta.reshape(&bshape).unwrap())
            .unwrap()
    } else {
        let gm = gamma.reshape(&[c]).unwrap();
        xh.mul(&gm).unwrap().add(&beta).unwrap()
    };
    // the composition's ReLU is the plain element-wise op (its input is no normalisation)
    let y = if relu { y.relu().unwrap() } else { y };
    let rt = Tensor::from_slice(&Device::cpu(), r, shape).unwrap();
    let loss = y.mul(&g.constant(&rt).unwrap()).unwrap().sum().unwrap();
    let gr = grad(&loss, &[&x, &gamma, &beta]).unwrap();
    (g, [y, gr[0].clone(), gr[1].clone(), gr[2].clone()])
}

fn feeds(x: &[f32], shape: &[usize], gamma: &[f32], beta: &[f32]) -> Vec<(String, Feed)> {
    let c = shape[1];
    vec![
        ("x".to_string(), Feed::real(x, shape)),
        ("gamma".to_string(), Feed::real(gamma, &[c, 1, 1])),
        ("beta".to_string(), Feed::real(beta, &[c])),
    ]
}

fn run(dev: &Device, g: &Graph, outs: &[&Var], f: &[(String, Feed)]) -> Vec<Vec<f32>> {
    common::run_graph(dev, g, outs, f)
        .into_iter()
        .map(|v| v.iter().map(|&e| e as f32).collect())
        .collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&e| e as f32).collect()
}

/// Checks one shape: CPU against the naive loop and the composition, GPU against the CPU.
fn check_shape(label: &str, shape: &[usize], x: &[f32], tol: f32) {
    check_shape_with(label, shape, x, tol, false);
    check_shape_with(&format!("{label} + relu"), shape, x, tol, true);
}

fn check_shape_with(label: &str, shape: &[usize], x: &[f32], tol: f32, relu: bool) {
    let c = shape[1];
    let n: usize = shape.iter().product();
    let gamma = uniform(2, c, 0.5, 1.5);
    let beta = uniform(3, c, -1.0, 1.0);
    let r = uniform(4, n, -1.0, 1.0);
    let f = feeds(x, shape, &gamma, &beta);
    let (g, [y, stats, dx, dg, db, _]) = primitive_with(shape, &r, relu);
    let outs = [&y, &stats, &dx, &dg, &db];
    let cpu = run(&Device::cpu(), &g, &outs, &f);
    let (mut want_y, want_stats) = naive(x, shape, &gamma, &beta);
    if relu {
        want_y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    assert_close(
        &format!("{label} y vs naive"),
        &cpu[0],
        &to_f32(&want_y),
        1e-5,
        1e-5,
    );
    assert_close(
        &format!("{label} stats vs naive"),
        &cpu[1],
        &to_f32(&want_stats),
        1e-5,
        1e-5,
    );
    let (gc, [yc, dxc, dgc, dbc]) = composition(shape, &r, relu);
    let comp = run(&Device::cpu_f64(), &gc, &[&yc, &dxc, &dgc, &dbc], &f);
    for (k, what) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
        let got = &cpu[if k == 0 { 0 } else { k + 1 }];
        assert_close(
            &format!("{label} {what} vs composition"),
            got,
            &comp[k],
            1e-4,
            1e-4,
        );
    }
    if let Some(dev) = gpu() {
        let got = run(&dev, &g, &outs, &f);
        for (k, what) in ["y", "stats", "dx", "dgamma", "dbeta"].iter().enumerate() {
            assert_close(
                &format!("{label} {what} GPU vs CPU"),
                &got[k],
                &cpu[k],
                tol,
                tol,
            );
        }
    }
}

#[test]
fn batch_norm_matches_references_on_awkward_shapes() {
    let cases: [(&str, Vec<usize>); 9] = [
        ("batch 1", vec![1, 5, 3, 3]),
        ("odd C", vec![3, 7, 5, 5]),
        ("C not a multiple of 4, W 1", vec![2, 6, 3, 1]),
        ("H·W = 1", vec![9, 3, 1, 1]),
        ("(N, C) 1-D", vec![17, 5]),
        ("H·W not a power of two", vec![4, 3, 5, 7]),
        ("digits layer", vec![64, 16, 8, 8]),
        // Two parts per channel, each spanning several images: the scalar kernels (H·W
        // odd; parts of LOOP_BUDGET/4 values) and the vec4 ones (parts of LOOP_BUDGET).
        ("H·W odd, parts across images", vec![3, 2, 45, 47]),
        ("H·W 64, parts across images", vec![300, 2, 8, 8]),
    ];
    for (label, shape) in cases {
        let x = uniform(1, shape.iter().product(), -2.0, 3.0);
        check_shape(label, &shape, &x, 1e-4);
    }
}

#[test]
fn constant_channels_have_zero_variance() {
    let shape = [4, 3, 2, 5];
    // channel 1 constant (σ² = 0): y = β there, and finite gradients
    let mut x = uniform(5, 120, -1.0, 1.0);
    for b in 0..4 {
        for i in 0..10 {
            x[(b * 3 + 1) * 10 + i] = 0.7;
        }
    }
    check_shape("constant channel", &shape, &x, 1e-3);
}

#[test]
fn gradients_match_finite_differences() {
    for shape in [vec![2, 3, 2, 3], vec![5, 4], vec![1, 2, 3, 1]] {
        let c = shape[1];
        let n: usize = shape.iter().product();
        let x = uniform(7, n, -1.0, 1.0);
        let (gamma, beta) = (uniform(8, c, 0.5, 1.5), uniform(9, c, -1.0, 1.0));
        let r = uniform(10, n, -1.0, 1.0);
        for relu in [false, true] {
            let (g, [_, _, dx, dg, db, loss]) = primitive_with(&shape, &r, relu);
            check_finite_differences(
                &format!("batch_norm {shape:?} relu {relu}"),
                &g,
                &loss,
                &[dx, dg, db],
                &feeds(&x, &shape, &gamma, &beta),
            );
        }
    }
}

/// A channel of 2·512·520 = 532,480 values is past one reduction workgroup's part
/// (64 invocations × LOOP_BUDGET/2 steps = 524,288), so the statistics and the gradient sums
/// split into parts and merge them. Around 1000 with spread ~1.3, E[x²] − E[x]² in f32 would
/// lose the variance to cancellation; two passes keep it. With the fused ReLU (around 0,
/// where f32 and f64 rarely disagree about the sign of y), dx is compared where |y| > 1e-4.
#[test]
fn a_channel_past_the_loop_cap_splits() {
    let Some(dev) = gpu() else { return };
    for (offset, relu) in [(1000.0f32, false), (0.0, true)] {
        let label = format!("past cap, offset {offset}, relu {relu}");
        let shape = [2, 3, 512, 520];
        let n: usize = shape.iter().product();
        // a ramp of 3 along each channel's values: the parts' means differ by ~1.5, so a
        // merge that dropped Chan's cross term would be off by ~3% of the variance
        let (hw, m) = (512 * 520, 2 * 512 * 520);
        let x: Vec<f32> = uniform(11, n, -1.0, 1.0)
            .iter()
            .enumerate()
            .map(|(o, v)| {
                let at = o / (3 * hw) * hw + o % hw;
                v + offset + 3.0 * at as f32 / m as f32
            })
            .collect();
        let c = shape[1];
        let gamma = uniform(2, c, 0.5, 1.5);
        let beta = uniform(3, c, -1.0, 1.0);
        let r = uniform(4, n, -1.0, 1.0);
        let f = feeds(&x, &shape, &gamma, &beta);
        let (g, [y, stats, dx, dg, db, _]) = primitive_with(&shape, &r, relu);
        let outs = [&y, &stats, &dx, &dg, &db];
        let got = common::run_graph(&dev, &g, &outs, &f);
        let (pre, want_stats) = naive(&x, &shape, &gamma, &beta);
        let want_y: Vec<f64> = pre
            .iter()
            .map(|&v| if relu { v.max(0.0) } else { v })
            .collect();
        assert_close_f64(&format!("{label}: stats"), &got[1], &want_stats, 1e-4, 1e-4);
        // x − mean loses ~6e-5 of each value in f32 at 1000: y to 2e-3 (x̂ spread ~1.7)
        assert_close_f64(&format!("{label}: y"), &got[0], &want_y, 2e-3, 1e-3);
        let cpu = common::run_graph(&Device::cpu_f64(), &g, &outs[2..], &f);
        let clear: Vec<usize> = (0..n).filter(|&i| pre[i].abs() > 1e-4).collect();
        let pick = |v: &[f64]| clear.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        assert_close_f64(
            &format!("{label}: dx"),
            &pick(&got[2]),
            &pick(&cpu[0]),
            1e-3,
            1e-3,
        );
        // sums over 532,480 values: an absolute error relative to the count
        let atol = 1e-5 * (n / c) as f64;
        assert_close_f64(&format!("{label}: dgamma"), &got[3], &cpu[1], atol, 1e-4);
        assert_close_f64(&format!("{label}: dbeta"), &got[4], &cpu[2], atol, 1e-4);
    }
}

/// running ← (1 − m)·running + m·batch (mean), and m·n/(n − 1) for the unbiased variance:
/// the layer's update against numbers computed here.
#[test]
fn running_statistics_follow_the_momentum_rule() {
    let shape = [3, 2, 2, 2];
    let x = uniform(12, 24, -1.0, 2.0);
    let (_, stats) = naive(&x, &shape, &[1.0; 2], &[0.0; 2]);
    for dev in common::devices() {
        let g = Graph::new();
        let xv = g.input("x", &shape);
        let rm = g.state("rm", &[2], Init::Zeros);
        let rv = g.state("rv", &[2], Init::Ones);
        let gamma = g.param("gamma", &[2], Init::Ones);
        let beta = g.param("beta", &[2], Init::Zeros);
        let (_, s) = xv.batch_norm_train(&gamma, &beta, EPS).unwrap();
        let m = 0.1f32;
        let (nm, nv) = s
            .batch_norm_running(&rm, &rv, 1.0 - m, m, m * 12.0 / 11.0)
            .unwrap();
        let xt = Tensor::from_slice(&dev, &x, &shape).unwrap();
        let (got, _) = common::run_compiled(&dev, &g, &[&nm, &nv], &[("x", &xt)]);
        let want_m: Vec<f32> = (0..2).map(|c| (0.1 * stats[c]) as f32).collect();
        let want_v: Vec<f32> = (0..2)
            .map(|c| (0.9 + 0.1 * stats[2 + c] * 12.0 / 11.0) as f32)
            .collect();
        assert_close("running mean", &got[0], &want_m, 1e-6, 1e-5);
        assert_close("running var", &got[1], &want_v, 1e-6, 1e-5);
    }
}

#[test]
fn bad_input_names_the_op_and_shapes() {
    let g = Graph::new();
    let x = g.input("x", &[2, 3, 4]);
    let named = |e: Error, want: &str| {
        let text = e.to_string();
        assert!(
            text.contains("batch_norm") && text.contains(want),
            "{text} should name batch_norm and {want}"
        );
    };
    let ones = |k: usize| g.param(&format!("p{k}"), &[k], Init::Ones);
    named(
        x.batch_norm_train(&ones(4), &ones(3), EPS).unwrap_err(),
        "[4]",
    );
    named(
        g.input("v", &[5])
            .batch_norm_train(&ones(5), &ones(5), EPS)
            .unwrap_err(),
        "[5]",
    );
    named(
        g.input("e", &[0, 3])
            .batch_norm_train(&ones(3), &ones(3), EPS)
            .unwrap_err(),
        "[0, 3]",
    );
    named(
        x.batch_norm_train(&ones(3), &ones(3), f32::NAN)
            .unwrap_err(),
        "eps",
    );
    let (_, s) = x.batch_norm_train(&ones(3), &ones(3), EPS).unwrap();
    named(
        s.batch_norm_running(&ones(4), &ones(3), 0.9, 0.1, 0.1)
            .unwrap_err(),
        "[4]",
    );
    // statistics of another tensor: the gradient refuses rather than answering wrongly
    let other = g.input("o", &[2, 3, 4]);
    let (_, so) = other.batch_norm_train(&ones(3), &ones(3), EPS).unwrap();
    let y = g
        .push(
            wgrad::Op::BatchNorm(wgrad::ops::batchnorm::BatchNormPass::Apply { relu: false }),
            &[&x, &so, &ones(3), &ones(3)],
        )
        .unwrap();
    let e = grad(&y.sum().unwrap(), &[&x]).unwrap_err();
    assert!(e.to_string().contains("batch_norm"), "{e}");
    // the tensor API checks too
    let cpu = Device::cpu();
    let xt = Tensor::from_slice(&cpu, &[0.0f32; 24], &[2, 3, 4]).unwrap();
    let bad = Tensor::from_slice(&cpu, &[0.0f32; 6], &[2, 3]).unwrap();
    let c3 = Tensor::from_slice(&cpu, &[0.0f32; 3], &[3]).unwrap();
    named(
        xt.batch_norm_apply(&bad, &c3, &c3, false).unwrap_err(),
        "[2, 3]",
    );
}

/// A ReLU after the normalisation joins it: one node, and the step of a conv → BN → ReLU
/// layer runs the normalisation once.
#[test]
fn relu_after_the_normalisation_is_fused() {
    let g = Graph::new();
    let x = g.input("x", &[4, 3, 2, 2]);
    let ones = g.param("gamma", &[3], Init::Ones);
    let zeros = g.param("beta", &[3], Init::Zeros);
    let (y, _) = x.batch_norm_train(&ones, &zeros, EPS).unwrap();
    let z = y.relu().unwrap();
    let node = &g.nodes()[z.id()];
    assert!(
        matches!(
            node.op,
            wgrad::Op::BatchNorm(wgrad::ops::batchnorm::BatchNormPass::Apply { relu: true })
        ),
        "{:?}",
        node.op
    );
    let Some(dev) = gpu() else { return };
    let exe = dev.compile(&g, &[&z], None).unwrap();
    let xt = Tensor::from_slice(&dev, &uniform(1, 48, -1.0, 1.0), &[4, 3, 2, 2]).unwrap();
    exe.run(&[("x", &xt)]).unwrap();
    let d0 = dev.dispatch_count();
    exe.run(&[("x", &xt)]).unwrap();
    assert_eq!(
        dev.dispatch_count() - d0,
        2,
        "statistics and normalisation with ReLU"
    );
}

/// nn's BatchNorm2d in evaluation mode is `x·a + c` per channel: after a bias-free product
/// (a 1×1 convolution) the product's epilogue takes it with the ReLU, so the layer is the two
/// C-sized factors and one product dispatch; its values match the CPU reference.
#[test]
fn evaluation_form_fuses_into_a_product_epilogue() {
    use wgrad::nn::{BatchNorm2d, Module};
    let build = || {
        let g = Graph::new();
        let x = g.input("x", &[2, 8, 4, 4]);
        let normal = Init::Normal {
            mean: 0.0,
            std: 1.0,
            seed: 1,
        };
        let w = g.param("w", &[6, 8, 1, 1], normal);
        let bn = BatchNorm2d::new(&g, "bn", 6, EPS);
        bn.set_training(false);
        let conv = x.conv2d(&w, wgrad::Conv2d::new(1, 1)).unwrap();
        let y = bn.forward(&conv).unwrap().relu().unwrap();
        (g, y)
    };
    let xv = uniform(3, 2 * 8 * 16, -1.0, 1.0);
    let stats = |exe: &wgrad::Executor, dev: &Device| {
        let t = |v: &[f32]| Tensor::from_slice(dev, v, &[6]).unwrap();
        exe.set_param("bn.running_mean", &t(&uniform(4, 6, -0.5, 0.5)))
            .unwrap();
        exe.set_param("bn.running_var", &t(&uniform(5, 6, 0.5, 2.0)))
            .unwrap();
    };
    let (g, y) = build();
    let cpu = Device::cpu();
    let exe = cpu.compile(&g, &[&y], None).unwrap();
    stats(&exe, &cpu);
    let xt = Tensor::from_slice(&cpu, &xv, &[2, 8, 4, 4]).unwrap();
    let want = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
    let Some(dev) = gpu() else { return };
    let (g, y) = build();
    let exe = dev.compile(&g, &[&y], None).unwrap();
    stats(&exe, &dev);
    let xt = Tensor::from_slice(&dev, &xv, &[2, 8, 4, 4]).unwrap();
    let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
    assert_close("eval bn after 1x1 conv", &got, &want, 1e-4, 1e-4);
    // a and c come from parameters and states alone: folded at compile time (no
    // optimizer), so the run is the product with its epilogue.
    let entries = exe.dispatch_entries();
    assert_eq!(entries.len(), 1, "the product alone: {entries:?}");
    assert!(entries[0].starts_with("matmul"), "{entries:?}");
}
