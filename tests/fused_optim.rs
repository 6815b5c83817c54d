//! The fused in-place optimizer updates of a recorded plan (src/fusion.rs,
//! `adam_source` / `momentum_source`, recorded by src/plan.rs): Adam, Adam with L2
//! decay, AdamW and SGD with momentum update as many parameters per dispatch as the
//! adapter's storage buffers per stage allow, in their fixed buffers, with Adam's
//! bias corrections rewritten every step. Every step's
//! loss and the final parameters are checked against the CPU reference, which runs
//! optim.rs's f64 update one parameter at a time.

mod common;

use common::{assert_close, gpu, two_layer, uniform};
use wgrad::{Device, Executor, Graph, Init, Optimizer, Tensor, Var};

/// An MLP 64-32-10 (bias, ReLU), cross-entropy mean at batch `batch`: four
/// parameters, then `extra` bias-free 10-10 layers (one parameter each).
fn mlp(batch: usize, extra: usize) -> (Graph, Var, Vec<String>) {
    let g = Graph::new();
    let x = g.input("x", &[batch, 64]);
    let y = g.input_i32("y", &[batch]);
    let w1 = g.param("w1", &[64, 32], Init::KaimingNormal { seed: 1 });
    let b1 = g.param("b1", &[32], Init::Constant(0.01));
    let w2 = g.param("w2", &[32, 10], Init::XavierUniform { seed: 2 });
    let b2 = g.param("b2", &[10], Init::Constant(-0.02));
    let mut logits = two_layer(&x, &w1, &b1, &w2, &b2);
    let mut names: Vec<String> = ["w1", "b1", "w2", "b2"].map(String::from).to_vec();
    for k in 0..extra {
        let name = format!("w{}", k + 3);
        let w = g.param(&name, &[10, 10], Init::XavierUniform { seed: 3 + k as u64 });
        logits = logits.matmul(&w).unwrap();
        names.push(name);
    }
    let loss = logits.cross_entropy(&y).unwrap().mean().unwrap();
    (g, loss, names)
}

fn feeds(dev: &Device, batch: usize, seed: u64) -> (Tensor, Tensor) {
    let labels: Vec<i32> = (0..batch)
        .map(|i| ((i * 7 + seed as usize) % 10) as i32)
        .collect();
    (
        Tensor::from_slice(dev, &uniform(seed, batch * 64, -1.0, 1.0), &[batch, 64]).unwrap(),
        Tensor::from_slice(dev, &labels, &[batch]).unwrap(),
    )
}

/// Runs `steps` steps of `exe` (GPU) and `reference` (CPU) on the same feeds, checking
/// every loss, then every parameter.
fn train_and_compare(
    label: &str,
    dev: &Device,
    exe: &Executor,
    reference: &Executor,
    names: &[String],
    batch: usize,
    steps: u64,
) {
    let cpu = Device::cpu();
    let dispatches = exe.plan().dispatches as u64;
    for step in 0..steps {
        let (x, y) = feeds(&cpu, batch, step);
        let d0 = dev.dispatch_count();
        let got = exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
        assert_eq!(dev.dispatch_count() - d0, dispatches, "{label}: dispatches");
        let want = reference.run(&[("x", &x), ("y", &y)]).unwrap()[0]
            .item()
            .unwrap();
        assert_close(
            &format!("{label} loss step {step}"),
            &[got],
            &[want],
            1e-4,
            1e-4,
        );
    }
    assert_params_match(label, exe, reference, names, 1e-4);
}

/// Every parameter of `names` in `exe` against `reference`, within `tol` (absolute and
/// relative).
fn assert_params_match(
    label: &str,
    exe: &Executor,
    reference: &Executor,
    names: &[String],
    tol: f32,
) {
    for name in names {
        let got = exe.param(name).unwrap().to_vec::<f32>().unwrap();
        let want = reference.param(name).unwrap().to_vec::<f32>().unwrap();
        assert_close(&format!("{label} {name}"), &got, &want, tol, tol);
    }
}

/// The update entries of a recorded step: `fused` once per group of as many parameters
/// as `buffers` storage buffers each fit in the adapter's per-stage limit (at most 16
/// per group), no per-parameter optimizer kernel.
fn assert_fused_entries(
    label: &str,
    dev: &Device,
    exe: &Executor,
    (fused, buffers): (&str, usize),
    params: usize,
) {
    assert!(exe.is_recorded(), "{label}: the step records on a GPU");
    let stage = dev.adapter().unwrap().max_storage_buffers_per_stage as usize;
    let per_dispatch = (stage / buffers).clamp(1, 16);
    let entries = exe.dispatch_entries();
    assert_eq!(exe.plan().dispatches, entries.len());
    assert_eq!(
        entries.iter().filter(|e| *e == fused).count(),
        params.div_ceil(per_dispatch),
        "{label}: {per_dispatch} per dispatch: {entries:?}"
    );
    for unfused in [
        "adam_update",
        "sgd_momentum_update",
        "sgd_update",
        "sgd_fused",
    ] {
        assert!(
            !entries.iter().any(|e| e == unfused),
            "{label}: {unfused} in {entries:?}"
        );
    }
}

fn adams() -> Vec<(&'static str, Optimizer)> {
    vec![
        ("adam", Optimizer::adam(0.01)),
        (
            "adam+l2",
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
                weight_decay: 0.05,
                decoupled: false,
            },
        ),
        ("adamw", Optimizer::adamw(0.01, 0.1)),
    ]
}

/// Adam's step size depends on the step through the bias corrections 1 - β^t: a plan
/// that kept step 1's would take steps ~1.3x too long from step 2 on, far outside
/// the tolerance. No parameter's gradient is zero in exact arithmetic here (random
/// inputs, all labels seen), so Adam's normalisation (a step of ~lr·sign(g) for any
/// |g| ≫ ε) has no rounding noise to amplify into different steps per device.
#[test]
fn fused_adam_matches_the_cpu_reference() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap(); // its own dispatch counter
    let cpu = Device::cpu();
    // 13 parameters: more than one dispatch takes on every adapter (8 on lavapipe).
    for (extra, batch) in [(0, 17usize), (1, 1), (0, 255), (9, 5)] {
        let (g, loss, names) = mlp(batch, extra);
        for (label, opt) in adams() {
            let label = format!("{label} b{batch} {} params", names.len());
            let exe = dev.compile(&g, &[&loss], opt.clone()).unwrap();
            let reference = cpu.compile(&g, &[&loss], opt).unwrap();
            let fused = ("adam_fused", 4);
            assert_fused_entries(&label, &dev, &exe, fused, names.len());
            train_and_compare(&label, &dev, &exe, &reference, &names, batch, 5);
        }
    }
}

#[test]
fn fused_momentum_sgd_matches_the_cpu_reference() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let cpu = Device::cpu();
    let opt = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-3,
    };
    // 15 parameters: more than one dispatch takes (10 on lavapipe).
    for (extra, batch) in [(1, 17usize), (0, 1), (11, 3)] {
        let (g, loss, names) = mlp(batch, extra);
        let label = format!("momentum b{batch} {} params", names.len());
        let exe = dev.compile(&g, &[&loss], opt.clone()).unwrap();
        let reference = cpu.compile(&g, &[&loss], opt.clone()).unwrap();
        let fused = ("momentum_fused", 3);
        assert_fused_entries(&label, &dev, &exe, fused, names.len());
        train_and_compare(&label, &dev, &exe, &reference, &names, batch, 5);
    }
}

/// Plain SGD with L2 decay (`sgd_fused`: a chunk of 16 elements of one parameter per
/// invocation, as vec4s where its length is a multiple of 4) over parameters of every
/// length class: under one chunk, one, several with a partial last one, vec4s or single
/// elements. loss = Σ_k Σ x_k·p_k², so each gradient depends on the parameter.
#[test]
fn fused_plain_sgd_matches_the_cpu_reference() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let cpu = Device::cpu();
    let sizes = [1usize, 3, 4, 16, 17, 20, 36, 1000, 4099, 8192, 5, 64];
    let g = Graph::new();
    let mut terms = vec![];
    let mut names = vec![];
    for (k, &n) in sizes.iter().enumerate() {
        let name = format!("p{k}");
        let p = g.param(&name, &[n], Init::Constant(0.5 + 0.1 * k as f32));
        let x = g.input(&format!("x{k}"), &[n]);
        terms.push(x.mul(&p).unwrap().mul(&p).unwrap().sum().unwrap());
        names.push(name);
    }
    let loss = terms
        .iter()
        .skip(1)
        .fold(terms[0].clone(), |acc, t| acc.add(t).unwrap());
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.01,
    };
    let exe = dev.compile(&g, &[&loss], opt.clone()).unwrap();
    let reference = cpu.compile(&g, &[&loss], opt).unwrap();
    let entries = exe.dispatch_entries();
    assert!(entries.iter().any(|e| e == "sgd_fused"), "{entries:?}");
    assert!(!entries.iter().any(|e| e == "sgd_update"), "{entries:?}");
    let xs: Vec<(String, Tensor)> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let t = Tensor::from_slice(&cpu, &uniform(40 + k as u64, n, -1.0, 1.0), &[n]);
            (format!("x{k}"), t.unwrap())
        })
        .collect();
    let feeds: Vec<(&str, &Tensor)> = xs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for step in 0..4 {
        let got = exe.run(&feeds).unwrap()[0].item().unwrap();
        let want = reference.run(&feeds).unwrap()[0].item().unwrap();
        assert_close(
            &format!("plain sgd loss step {step}"),
            &[got],
            &[want],
            1e-4,
            1e-4,
        );
    }
    assert_params_match("plain sgd", &exe, &reference, &names, 1e-5);
}

/// `param` hands out snapshots of the buffers updated in place, and `set_param`
/// writes into them: the next step starts from the value set (checked against a CPU
/// reference given the same value) with the moments accumulated so far.
#[test]
fn adam_params_are_snapshots_and_set_param_takes_effect() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let (g, loss, names) = mlp(8, 0);
    let exe = dev.compile(&g, &[&loss], Optimizer::adam(0.02)).unwrap();
    let reference = cpu.compile(&g, &[&loss], Optimizer::adam(0.02)).unwrap();
    let (x, y) = feeds(&cpu, 8, 3);
    exe.run(&[("x", &x), ("y", &y)]).unwrap();
    reference.run(&[("x", &x), ("y", &y)]).unwrap();
    let snapshot = exe.param("b2").unwrap();
    let kept = snapshot.to_vec::<f32>().unwrap();
    exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
    reference.run(&[("x", &x), ("y", &y)]).unwrap();
    assert_eq!(
        snapshot.to_vec::<f32>().unwrap(),
        kept,
        "a run changed a snapshot"
    );
    assert_ne!(
        exe.param("b2").unwrap().to_vec::<f32>().unwrap(),
        kept,
        "b2 trained"
    );
    let set: Vec<f32> = (0..10).map(|i| 0.1 * i as f32 - 0.3).collect();
    exe.set_param("b2", &Tensor::from_slice(&dev, &set, &[10]).unwrap())
        .unwrap();
    reference
        .set_param("b2", &Tensor::from_slice(&cpu, &set, &[10]).unwrap())
        .unwrap();
    assert_eq!(exe.param("b2").unwrap().to_vec::<f32>().unwrap(), set);
    for step in 0..2 {
        let got = exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
        let want = reference.run(&[("x", &x), ("y", &y)]).unwrap()[0]
            .item()
            .unwrap();
        assert_close(
            &format!("loss after set_param, step {step}"),
            &[got],
            &[want],
            1e-4,
            1e-4,
        );
    }
    assert_params_match("after set_param", &exe, &reference, &names, 1e-4);
}
