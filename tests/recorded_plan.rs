//! The recorded GPU plan (src/plan.rs): a compiled graph's dispatches, slot
//! buffers and bind groups are made once at compile time; runs replay them.
//! Checks what a user can observe: dispatches per run as planned, slots reused,
//! `param` snapshots that later runs do not change, `set_param` taking effect,
//! and results equal to the CPU reference after several steps.

mod common;

use common::{assert_close, gpu, two_layer, uniform};
use wgrad::{Device, Graph, Init, MatmulVariant, Sgd, Tensor, Var};

/// The benchmark's MLP 64-128-10 (ReLU), cross-entropy, at batch `batch`.
fn mlp(batch: usize) -> (Graph, Var) {
    let g = Graph::new();
    let x = g.input("x", &[batch, 64]);
    let y = g.input_i32("y", &[batch]);
    let w1 = g.param("w1", &[64, 128], Init::KaimingNormal { seed: 1 });
    let b1 = g.param("b1", &[128], Init::Constant(0.01));
    let w2 = g.param("w2", &[128, 10], Init::XavierUniform { seed: 2 });
    let b2 = g.param("b2", &[10], Init::Zeros);
    let logits = two_layer(&x, &w1, &b1, &w2, &b2);
    let loss = logits.cross_entropy(&y).unwrap().mean().unwrap();
    (g, loss)
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

#[test]
fn recorded_steps_match_the_cpu_reference() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap(); // its own dispatch counter
    let cpu = Device::cpu();
    for batch in [1usize, 255] {
        let (g, loss) = mlp(batch);
        let exe = dev.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
        let reference = cpu.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
        assert!(exe.is_recorded(), "the MLP step records on a GPU");
        let entries = exe.dispatch_entries();
        // Bias + ReLU and ReLU's gradient are matmul epilogues: no element-wise kernel.
        assert!(
            entries.iter().all(|e| e.starts_with("matmul_forward")
                || e.starts_with("cross_entropy")
                || e.starts_with("reduce")
                || e == "sgd_fused"),
            "{entries:?}"
        );
        assert!(entries.iter().any(|e| e == "sgd_fused"), "{entries:?}");
        let plan = exe.plan();
        assert_eq!(plan.dispatches, entries.len());
        // Two products with bias (+ ReLU), the loss with its mean and gradient, two bias
        // gradients, three gradient products (one masked by ReLU's), one SGD update.
        assert!(entries.len() <= 9, "{entries:?}");
        for step in 0..4u64 {
            // Feeds from the host on even steps, from the GPU on odd ones.
            let (x, y) = feeds(&cpu, batch, step);
            let (xg, yg) = if step % 2 == 1 {
                (x.to_device(&dev).unwrap(), y.to_device(&dev).unwrap())
            } else {
                (x.clone(), y.clone())
            };
            let d0 = dev.dispatch_count();
            let got = exe.run(&[("x", &xg), ("y", &yg)]).unwrap()[0]
                .item()
                .unwrap();
            assert_eq!(dev.dispatch_count() - d0, plan.dispatches as u64);
            let want = reference.run(&[("x", &x), ("y", &y)]).unwrap()[0]
                .item()
                .unwrap();
            assert_close(
                &format!("loss b{batch} step {step}"),
                &[got],
                &[want],
                1e-4,
                1e-4,
            );
        }
        for name in ["w1", "b1", "w2", "b2"] {
            let got = exe.param(name).unwrap().to_vec::<f32>().unwrap();
            let want = reference.param(name).unwrap().to_vec::<f32>().unwrap();
            assert_close(&format!("{name} b{batch}"), &got, &want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn params_are_snapshots_and_set_param_takes_effect() {
    let Some(dev) = gpu() else { return };
    let (g, loss) = mlp(8);
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.5)).unwrap();
    let (x, y) = feeds(&dev, 8, 3);
    let before = exe.param("b2").unwrap();
    let kept = before.to_vec::<f32>().unwrap();
    exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
    assert_eq!(
        before.to_vec::<f32>().unwrap(),
        kept,
        "a run changed a snapshot"
    );
    assert_ne!(
        exe.param("b2").unwrap().to_vec::<f32>().unwrap(),
        kept,
        "b2 trained"
    );
    let fixed: Vec<f32> = (0..10).map(|i| i as f32).collect();
    exe.set_param("b2", &Tensor::from_slice(&dev, &fixed, &[10]).unwrap())
        .unwrap();
    assert_eq!(exe.param("b2").unwrap().to_vec::<f32>().unwrap(), fixed);
}

#[test]
fn slots_are_reused_across_the_plan() {
    let Some(dev) = gpu() else { return };
    let (g, loss) = mlp(256);
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
    let plan = exe.plan();
    assert!(plan.slot_bytes > 0, "{plan:?}");
    assert!(plan.slot_bytes < plan.unplanned_bytes, "{plan:?}");
}

/// The digits CNN in training mode: batch norm's running statistics (state updates) and
/// dropout (a mask drawn from a step state) record too; every step's loss, and at the end
/// the running statistics and the weights, match the CPU reference.
#[test]
fn batch_norm_and_dropout_steps_record_and_match_the_reference() {
    use wgrad::nn::Module;
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let g = Graph::new();
    let model = wgrad::nn::models::digits_cnn(&g, true).unwrap();
    let logits = model.forward(&g.input("x", &[16, 1, 8, 8])).unwrap();
    let y = g.input_i32("y", &[16]);
    let loss = logits.cross_entropy(&y).unwrap().mean().unwrap();
    // SGD, not Adam: Adam turns the rounding noise of gradients that are zero in exact
    // arithmetic (a conv bias before batch norm) into steps of ±lr, different per device.
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
    let reference = cpu.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
    assert!(exe.is_recorded(), "state updates and dropout record");
    for step in 0..4u64 {
        let x = uniform(step, 16 * 64, 0.0, 1.0);
        let x = Tensor::from_slice(&cpu, &x, &[16, 1, 8, 8]).unwrap();
        let labels: Vec<i32> = (0..16)
            .map(|i| ((i * 3 + step as usize) % 10) as i32)
            .collect();
        let y = Tensor::from_slice(&cpu, &labels, &[16]).unwrap();
        let got = exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
        let want = reference.run(&[("x", &x), ("y", &y)]).unwrap()[0]
            .item()
            .unwrap();
        assert_close(&format!("loss step {step}"), &[got], &[want], 1e-4, 1e-4);
    }
    for name in [
        "bn1.running_mean",
        "bn2.running_var",
        "conv1.weight",
        "conv1.bias", // added in conv1's store (the conv epilogue)
        "conv2.weight",
        "conv2.bias", // added in the batch-folded product's store
        "fc.bias",
    ] {
        let got = exe.param(name).unwrap().to_vec::<f32>().unwrap();
        let want = reference.param(name).unwrap().to_vec::<f32>().unwrap();
        assert_close(name, &got, &want, 1e-4, 1e-3);
    }
}

/// `profile_dispatches` lists every dispatch of a run, in the order `dispatch_entries`
/// gives, each with a finite, non-negative time; on the CPU reference (nothing recorded)
/// it is empty. A run afterwards still works (the profile only replays recorded commands).
#[test]
fn profile_lists_every_dispatch_with_its_time() {
    let (g, loss) = mlp(32);
    let cpu = Device::cpu().compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
    assert!(cpu.profile_dispatches(3).unwrap().is_empty());
    let Some(dev) = gpu() else { return };
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
    let (x, y) = feeds(&dev, 32, 4);
    exe.run(&[("x", &x), ("y", &y)]).unwrap();
    let prof = exe.profile_dispatches(3).unwrap();
    let names: Vec<String> = prof.iter().map(|p| p.0.clone()).collect();
    assert_eq!(names, exe.dispatch_entries());
    assert!(!prof.is_empty());
    assert!(
        prof.iter().all(|p| p.1.is_finite() && p.1 >= 0.0),
        "{prof:?}"
    );
    let loss = exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
    assert!(loss.is_finite());
}

/// A recorded plan whose products read their operands through textures keeps working after
/// the context's operand textures are replaced by larger ones (an eager product past their
/// size, on the texture-read kernel, which a software adapter takes by default): the plan
/// copies into the textures it recorded. Checked against the CPU reference before and after.
#[test]
fn recorded_texture_products_survive_the_textures_growing() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let g = Graph::new();
    // 3.1M multiply-adds: past the 2^21 up to which a software adapter takes the small
    // register-blocked kernel untuned.
    let x = g.input("x", &[128, 256]);
    let w = g.param("w", &[256, 96], Init::XavierUniform { seed: 3 });
    let y = x.matmul(&w).unwrap().relu().unwrap();
    // The textured form, which the faster of the two forms might not be.
    let exe = wgrad::executor::with_texture_reads(true, || dev.compile(&g, &[&y], None)).unwrap();
    let reference = cpu.compile(&g, &[&y], None).unwrap();
    let data = uniform(5, 128 * 256, -1.0, 1.0);
    let run = |e: &wgrad::Executor, d: &Device| {
        let xt = Tensor::from_slice(d, &data, &[128, 256]).unwrap();
        e.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap()
    };
    // The default kernel on a software adapter with 8-wide subgroups. Autotune keeps it: the
    // product's first run compiles its pipeline, past the tuner's 40 ms.
    if MatmulVariant::Auto.resolve(&dev).unwrap() == MatmulVariant::SubgroupTextures {
        let entries = exe.dispatch_entries();
        assert!(entries.iter().any(|e| e.ends_with(".tex")), "{entries:?}");
    }
    let want = run(&reference, &cpu);
    assert_close("before", &run(&exe, &dev), &want, 1e-4, 1e-4);
    // 4 MiB operands: 256 texture rows, past the plan's (8 rows).
    let big = Tensor::from_slice(&dev, &uniform(6, 1024 * 1024, -1.0, 1.0), &[1024, 1024]).unwrap();
    let bb = big.matmul(&big).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(bb.len(), 1024 * 1024);
    assert_close("after", &run(&exe, &dev), &want, 1e-4, 1e-4);
}
