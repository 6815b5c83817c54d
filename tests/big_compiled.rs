//! Compiled graphs whose tensors are larger than one storage binding
//! (max_storage_buffer_binding_size: 128 MiB on lavapipe and many GPUs): forward, backward,
//! every optimizer and state updates, against the CPU reference running the same steps.
//!
//! The `windowed_*` tests lower the binding size the device plans for
//! (`Device::limit_bindings_for_testing`), so every big-tensor path runs on small shapes, and
//! a dispatch that binds more than the limit is an error. `past_the_binding_limit_*` runs a
//! real 256 MiB weight.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::{Device, Graph, Init, Optimizer, Sgd, Tensor, Var};

/// Bytes per binding in the windowed tests: 4096 f32.
const SMALL_LIMIT: u64 = 16 << 10;

fn windowed() -> Option<Device> {
    gpu()?;
    let dev = Device::gpu().ok()?;
    dev.limit_bindings_for_testing(SMALL_LIMIT);
    Some(dev)
}

/// x (b, d) · W1 (d, h) + b1 → ReLU → · W2 (h, c) + b2 → mean cross-entropy.
fn model(b: usize, d: usize, h: usize, c: usize) -> (Graph, Var, Vec<Var>) {
    let g = Graph::new();
    let x = g.input("x", &[b, d]);
    let y = g.input_i32("y", &[b]);
    let w1 = g.param(
        "w1",
        &[d, h],
        Init::Uniform {
            lo: -0.1,
            hi: 0.1,
            seed: 1,
        },
    );
    let b1 = g.param(
        "b1",
        &[h],
        Init::Uniform {
            lo: -0.1,
            hi: 0.1,
            seed: 2,
        },
    );
    let w2 = g.param(
        "w2",
        &[h, c],
        Init::Uniform {
            lo: -0.1,
            hi: 0.1,
            seed: 3,
        },
    );
    let b2 = g.param("b2", &[c], Init::Zeros);
    let hidden = x.matmul(&w1).unwrap().add(&b1).unwrap().relu().unwrap();
    let logits = hidden.matmul(&w2).unwrap().add(&b2).unwrap();
    let loss = logits.cross_entropy(&y).unwrap().mean().unwrap();
    (g, loss, vec![w1, b1, w2, b2])
}

/// Losses of `steps` training steps and the parameters after them, on `dev`.
fn train(
    dev: &Device,
    (b, d, h, c): (usize, usize, usize, usize),
    opt: Option<Optimizer>,
    steps: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (g, loss, _) = model(b, d, h, c);
    let exe = dev.compile(&g, &[&loss], opt).expect("compile");
    let x = Tensor::from_slice(dev, &uniform(9, b * d, -1.0, 1.0), &[b, d]).unwrap();
    let labels: Vec<i32> = (0..b).map(|i| (i * 7 % c) as i32).collect();
    let y = Tensor::from_slice(dev, &labels, &[b]).unwrap();
    let losses = (0..steps)
        .map(|_| {
            exe.run(&[("x", &x), ("y", &y)]).expect("run")[0]
                .item()
                .unwrap()
        })
        .collect();
    let params = ["w1", "b1", "w2", "b2"]
        .iter()
        .map(|n| exe.param(n).unwrap().to_vec::<f32>().unwrap())
        .collect();
    (losses, params)
}

fn optimizers() -> Vec<(&'static str, Option<Optimizer>)> {
    vec![
        ("sgd", Some(Sgd::new(0.5))),
        (
            "sgd momentum + decay",
            Some(Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
            }),
        ),
        ("adam", Some(Optimizer::adam(0.01))),
        ("adamw", Some(Optimizer::adamw(0.01, 0.1))),
    ]
}

#[test]
fn windowed_training_steps_match_reference() {
    let Some(dev) = windowed() else { return };
    let cpu = Device::cpu();
    // W1 is 96 x 64 = 24 KiB: past the 16 KiB binding.
    let dims = (8, 96, 64, 10);
    for (name, opt) in optimizers() {
        let (want_l, want_p) = train(&cpu, dims, opt.clone(), 3);
        let (got_l, got_p) = train(&dev, dims, opt, 3);
        assert_close(&format!("{name}: losses"), &got_l, &want_l, 1e-5, 1e-4);
        for (i, p) in ["w1", "b1", "w2", "b2"].iter().enumerate() {
            assert_close(&format!("{name}: {p}"), &got_p[i], &want_p[i], 1e-5, 1e-4);
        }
    }
}

/// The outputs of `outs` compiled on `dev` with `feeds`, and whether the plan was recorded
/// (not run op by op).
fn run(dev: &Device, g: &Graph, outs: &[&Var], feeds: &[(&str, &Tensor)]) -> (Vec<Vec<f32>>, bool) {
    let (values, exe) = common::run_compiled(dev, g, outs, feeds);
    (values, exe.is_recorded())
}

fn feed(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_slice(&Device::cpu(), &uniform(seed, n, -1.0, 1.0), shape).unwrap()
}

#[test]
fn windowed_gradients_without_an_optimizer() {
    let Some(dev) = windowed() else { return };
    let cpu = Device::cpu();
    // loss and both weight gradients (W1 24 KiB, past the 16 KiB binding).
    let (g, loss, w) = model(8, 96, 64, 10);
    let grads = wgrad::autodiff::grad(&loss, &[&w[0], &w[2], &w[1]]).unwrap();
    let labels: Vec<i32> = (0..8).map(|i| i % 10).collect();
    let y = Tensor::from_slice(&cpu, &labels, &[8]).unwrap();
    let x = feed(9, &[8, 96]);
    let feeds = [("x", &x), ("y", &y)];
    let outs = [&loss, &grads[0], &grads[1], &grads[2]];
    let (want, _) = run(&cpu, &g, &outs, &feeds);
    let (got, recorded) = run(&dev, &g, &outs, &feeds);
    assert!(recorded, "the plan should be recorded");
    for (i, name) in ["loss", "dW1", "dW2", "db1"].iter().enumerate() {
        assert_close(name, &got[i], &want[i], 1e-5, 1e-4);
    }
}

#[test]
fn windowed_element_wise_chains_layout_ops_and_broadcast_gradients() {
    // Every tensor below is 6,000 elements or more: past the 4,096 of one binding.
    let Some(dev) = windowed() else { return };
    let cpu = Device::cpu();
    let g = Graph::new();
    let x = g.input("x", &[60, 100]);
    let b = g.input("b", &[100]);
    let s = g.input("s", &[60, 1]);
    // A chain of element-wise ops (fused when it fits a binding), a broadcast bias and
    // scale, a transpose, a reshape, a slice and a concat.
    let h = x
        .add(&b)
        .unwrap()
        .mul(&s)
        .unwrap()
        .tanh()
        .unwrap()
        .square()
        .unwrap();
    let t = h.transpose().unwrap().reshape(&[100, 6, 10]).unwrap();
    let parts = Var::concat(
        &[&t.slice(0, 0, 50).unwrap(), &t.slice(0, 50, 100).unwrap()],
        2,
    )
    .unwrap(); // (50, 6, 20)
    let loss = parts.mul(&parts).unwrap().sum().unwrap();
    let grads = wgrad::autodiff::grad(&loss, &[&x, &b, &s]).unwrap();
    let feeds = [
        ("x", &feed(1, &[60, 100])),
        ("b", &feed(2, &[100])),
        ("s", &feed(3, &[60, 1])),
    ];
    let outs = [&parts, &grads[0], &grads[1], &grads[2]];
    let (want, _) = run(&cpu, &g, &outs, &feeds);
    let (got, recorded) = run(&dev, &g, &outs, &feeds);
    assert!(recorded, "the plan should be recorded");
    for (i, name) in ["concat", "dx", "db (sum over rows)", "ds"]
        .iter()
        .enumerate()
    {
        assert_close(name, &got[i], &want[i], 1e-5, 1e-4);
    }
}

/// `‖got - want‖ / ‖want‖ <= tol`.
fn assert_relative(label: &str, got: &[f32], want: &[f32], tol: f64) {
    let sq = |v: f64| v * v;
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| sq(g as f64 - w as f64))
        .sum();
    let norm: f64 = want.iter().map(|&w| sq(w as f64)).sum();
    let rel = (err / norm.max(f64::MIN_POSITIVE)).sqrt();
    assert!(rel <= tol, "{label}: relative error {rel:e} > {tol:e}");
}

#[test]
fn past_the_binding_limit_sgd_and_adam_steps() {
    // W1 is 8192 x 4100 f32, past lavapipe's 128 MiB binding. Three steps of each
    // optimizer on the GPU against the CPU reference (f64 between ops).
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let dims = (8, 8192, 4100, 10); // W1: 134.3 MB, just past 128 MiB
    for (name, opt) in [("sgd", Sgd::new(0.5)), ("adam", Optimizer::adam(1e-3))] {
        let (want_l, want_p) = train(&cpu, dims, Some(opt.clone()), 3);
        let (got_l, got_p) = train(&dev, dims, Some(opt), 3);
        assert_close(&format!("{name}: losses"), &got_l, &want_l, 1e-5, 1e-4);
        for (i, p) in ["w1", "b1", "w2", "b2"].iter().enumerate() {
            // Adam moves an element whose gradient is ~0 by ±lr per step whatever its
            // rounding, so weights are compared as a whole (relative Frobenius error), and
            // element-wise within the 2·lr·steps such a sign can change.
            assert_relative(&format!("{name}: {p}"), &got_p[i], &want_p[i], 1e-4);
            assert_close(&format!("{name}: {p}"), &got_p[i], &want_p[i], 6e-3, 0.0);
        }
    }
}

#[test]
fn past_the_binding_limit_inference_with_a_vgg_sized_weight() {
    // VGG-19's first fully connected layer: 25088 x 4096 f32, 411 MB.
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let (d, h) = (25_088, 4096);
    let g = Graph::new();
    let x = g.input("x", &[2, d]);
    let w = g.param(
        "w",
        &[d, h],
        Init::Uniform {
            lo: -0.01,
            hi: 0.01,
            seed: 5,
        },
    );
    let b = g.param(
        "b",
        &[h],
        Init::Uniform {
            lo: -0.1,
            hi: 0.1,
            seed: 6,
        },
    );
    let out = x.matmul(&w).unwrap().add(&b).unwrap().relu().unwrap();
    let xs = feed(7, &[2, d]);
    let (want, _) = run(&cpu, &g, &[&out], &[("x", &xs)]);
    let (got, recorded) = run(&dev, &g, &[&out], &[("x", &xs)]);
    assert!(recorded, "the plan should be recorded");
    assert_close("relu(x·W + b), W 411 MB", &got[0], &want[0], 1e-5, 1e-4);
}

#[test]
fn windowed_layout_copies_match_reference() {
    // Eager layout ops on tensors past the 4,096-element binding, each against the CPU:
    // the copy is cut into parts whose reads and writes fit one binding.
    let Some(dev) = windowed() else { return };
    let both = |seed, shape: &[usize]| {
        let t = feed(seed, shape);
        (t.to_device(&dev).unwrap(), t)
    };
    let check = |label: &str, got: Tensor, want: Tensor| {
        assert_eq!(got.shape(), want.shape(), "{label}");
        let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
        assert_close(label, &g, &w, 0.0, 0.0);
    };
    let (x, xc) = both(1, &[97, 131]);
    check("transpose", x.transpose().unwrap(), xc.transpose().unwrap());
    let (y, yc) = both(2, &[7, 33, 29]);
    for axes in [[2, 0, 1], [1, 2, 0], [0, 2, 1]] {
        let label = format!("permute {axes:?}");
        check(
            &label,
            y.permute(&axes).unwrap(),
            yc.permute(&axes).unwrap(),
        );
    }
    check(
        "slice",
        x.slice(1, 5, 120).unwrap(),
        xc.slice(1, 5, 120).unwrap(),
    );
    let parts = |t: &Tensor| Tensor::concat(&[t, &t.slice(0, 3, 50).unwrap(), t], 0).unwrap();
    check("concat", parts(&x), parts(&xc));
    let (b, bc) = both(3, &[1, 131]);
    let shape = [3, 97, 131];
    check(
        "broadcast_to",
        b.broadcast_to(&shape).unwrap(),
        bc.broadcast_to(&shape).unwrap(),
    );
}
