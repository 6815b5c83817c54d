//! ONNX nodes in training mode (tests/fixtures/onnx/gen_training.py): BatchNormalization
//! with training_mode=1 against the `onnx` reference evaluator, with gradients through the
//! batch statistics against finite differences; Dropout with training_mode=true, whose
//! mask is random, by the draw's properties and by the GPU drawing the CPU reference's mask.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in};
use wgrad::onnx::{Model, Weights};

#[test]
fn training_mode_batch_norm_matches_the_reference_evaluator() {
    // Y and the two running statistics; (N, H, W) = (3, 2, 7): 42 values per channel.
    check_fixture("training", "batchnorm", &[], Weights::Constants, 1e-5, 1e-5);
    // Through the batch mean and variance to x, and to scale, B and the running inputs.
    check_input_gradients("training", "batchnorm");
}

/// The (y, mask) of `runs` successive runs of the training-mode Dropout fixture on `dev`.
fn dropout_run(dev: &wgrad::Device, x: &[f32], runs: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    let imported = Model::load(fixture_in("training", "dropout.onnx"))
        .expect("load")
        .import(&[], Weights::Constants)
        .expect("import");
    let outs: Vec<&wgrad::Var> = imported.outputs.iter().map(|(_, v)| v).collect();
    let exe = dev.compile(&imported.graph, &outs, None).expect("compile");
    let xt = wgrad::Tensor::from_slice(dev, x, &[64, 256]).expect("x");
    (0..runs)
        .map(|_| {
            let r = exe.run(&[("x", &xt)]).expect("run");
            (
                r[0].to_vec::<f32>().expect("y"),
                r[1].to_vec::<f32>().expect("mask"),
            )
        })
        .collect()
}

#[test]
fn training_mode_dropout_draws_a_fresh_inverted_mask_each_run() {
    let x = wgrad::io::read_npy(
        fixture_in("training", "dropout.in.x.npy"),
        &wgrad::Device::cpu(),
    )
    .expect("x")
    .to_vec::<f32>()
    .expect("x");
    let (p, n) = (0.3f32, x.len() as f64);
    let cpu = dropout_run(&wgrad::Device::cpu(), &x, 2);
    for (run, (y, mask)) in cpu.iter().enumerate() {
        // Every element is dropped (0, mask false) or kept and scaled by 1/(1 − p).
        for i in 0..x.len() {
            let kept = mask[i] != 0.0;
            let want = if kept { x[i] / (1.0 - p) } else { 0.0 };
            assert!(
                (y[i] - want).abs() <= 1e-6 * want.abs(),
                "run {run} [{i}]: {} vs {want}",
                y[i]
            );
        }
        // 16,384 draws: the kept fraction is 0.7 within 5.5 standard deviations (0.0036).
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / n;
        assert!((kept - 0.7).abs() < 0.02, "run {run}: kept {kept}");
    }
    let same = cpu[0]
        .1
        .iter()
        .zip(&cpu[1].1)
        .filter(|(a, b)| a == b)
        .count() as f64
        / n;
    // Independent masks agree on 0.7² + 0.3² = 58% of elements; the same mask on all.
    assert!(
        (same - 0.58).abs() < 0.03,
        "the second run's mask agrees on {same}"
    );
    if let Some(dev) = common::gpu() {
        let gpu = dropout_run(&dev, &x, 2);
        for (run, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_eq!(g.1, c.1, "run {run}: the GPU's mask is the CPU reference's");
            common::assert_close(&format!("run {run} y"), &g.0, &c.0, 0.0, 1e-6);
        }
    }
}
