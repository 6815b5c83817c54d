//! ONNX normalisation operators (BatchNormalization, InstanceNormalization,
//! LayerNormalization, GroupNormalization, LRN) against onnxruntime: models and expected
//! outputs written by tests/fixtures/onnx/gen_norm.py into tests/fixtures/onnx/norm/ (see
//! its README for each case). Gradients through imported models against finite differences
//! on the f64 CPU reference; refused attributes and shapes give errors naming them.

mod common;

use common::{assert_close, check_finite_differences, gpu, Feed};
use wgrad::onnx::{Model, Weights};
use wgrad::{autodiff::grad, io::read_npy, Device, Tensor};

/// `norm/NAME` on the GPU and CPU against its expected outputs, weights imported both as
/// parameters and as constants.
fn check(name: &str) {
    for w in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("norm", name, &[], w, 2e-5, 2e-4);
    }
}

#[test]
fn batch_normalization_opsets_7_9_14_15() {
    for name in ["bn7_2d", "bn9_4d", "bn14_3d", "bn15_5d"] {
        check(name);
    }
}

#[test]
fn instance_normalization() {
    for name in ["in_3d", "in_4d", "in_spatial1"] {
        check(name);
    }
}

#[test]
fn layer_normalization_axes_broadcast_and_statistics() {
    // ln_axis1 and ln_axis0 also return Mean and InvStdDev; inputs sit at 100 ± 0.5, where
    // a one-pass variance would lose most of its digits.
    for name in ["ln_last", "ln_axis1", "ln_bcast", "ln_axis0"] {
        check(name);
    }
}

#[test]
fn group_normalization_opset18_per_group_and_21_per_channel() {
    for name in ["gn18", "gn18_one", "gn21", "gn21_inst"] {
        check(name);
    }
}

#[test]
fn lrn_odd_even_wide_and_single() {
    for name in ["lrn5", "lrn_even", "lrn_wide", "lrn1"] {
        check(name);
    }
}

#[test]
fn refused_attributes_and_shapes_are_clear_errors() {
    let cases = [
        ("bad_bn_stats", "only output Y"),
        ("bad_bn_shape", "scale has shape [3], expected [4]"),
        ("bad_gn_groups", "num_groups 4"),
        ("bad_ln_stash", "stash_type 11"),
        ("bad_ln_scale", "Scale [4] does not broadcast"),
        ("bad_lrn_size", "size must be given"),
    ];
    for (name, want) in cases {
        let path = common::onnx::fixture_in("norm", &format!("{name}.onnx"));
        let model = Model::load(path).expect("load");
        let e = model
            .import(&[], Weights::Params)
            .err()
            .unwrap_or_else(|| panic!("{name}: import must fail"));
        let msg = e.to_string();
        assert!(msg.contains(want), "{name}: {msg}");
    }
}

/// d/dx of `sum(y · c)` for the imported model `name` (c a fixed seeded tensor, so every
/// output element weighs differently) against central finite differences in f64, and the
/// gradients of the loss with respect to every parameter, GPU against the f64 CPU.
fn gradients_through(name: &str) {
    let model =
        Model::load(common::onnx::fixture_in("norm", &format!("{name}.onnx"))).expect("load");
    let imported = model.import(&[], Weights::Params).expect("import");
    let g = &imported.graph;
    let y = &imported.outputs[0].1;
    let n: usize = y.shape().iter().product();
    let c =
        Tensor::from_slice(&Device::cpu(), &common::uniform(7, n, -1.0, 1.0), y.shape()).unwrap();
    let loss = y.mul(&g.constant(&c).unwrap()).unwrap().sum().unwrap();
    assert_eq!(imported.inputs, ["x"]);
    let x_var = node(g, |op| matches!(op, wgrad::Op::Input(q) if q == "x"));
    let x = read_npy(
        common::onnx::fixture_in("norm", &format!("{name}.in.x.npy")),
        &Device::cpu(),
    )
    .unwrap();
    let xs = x.to_vec::<f32>().unwrap();
    let feeds = vec![("x".to_string(), Feed::real(&xs, x.shape()))];
    let dx = grad(&loss, &[&x_var]).unwrap();
    let analytic = check_finite_differences(name, g, &loss, &dx, &feeds);
    assert!(
        analytic[0].iter().any(|v| v.abs() > 1e-3),
        "{name}: gradient is (near) zero, the check proves nothing"
    );
    let params: Vec<_> = imported
        .params
        .iter()
        .map(|p| node(g, |op| matches!(op, wgrad::Op::Param(q, _) if q == p)))
        .collect();
    let mut wrt = vec![&x_var];
    wrt.extend(params.iter());
    let grads = grad(&loss, &wrt).unwrap();
    let outs: Vec<_> = grads.iter().collect();
    let wide = common::run_graph(&Device::cpu_f64(), g, &outs, &feeds);
    if let Some(dev) = gpu() {
        let on_gpu = common::run_graph(&dev, g, &outs, &feeds);
        for (k, (gg, cc)) in on_gpu.iter().zip(&wide).enumerate() {
            let gg: Vec<f32> = gg.iter().map(|&v| v as f32).collect();
            let cc: Vec<f32> = cc.iter().map(|&v| v as f32).collect();
            assert_close(
                &format!("{name} gradient {k}, GPU vs f64 CPU"),
                &gg,
                &cc,
                1e-4,
                1e-3,
            );
        }
    }
}

/// The graph's first node whose op satisfies `is`.
fn node(g: &wgrad::Graph, is: impl Fn(&wgrad::Op) -> bool) -> wgrad::Var {
    let id = g.nodes().iter().position(|nd| is(&nd.op)).expect("node");
    g.var(id).unwrap()
}

#[test]
fn gradients_through_imported_layer_and_batch_normalization() {
    gradients_through("ln_last");
    gradients_through("ln_bcast");
    gradients_through("bn9_4d");
    gradients_through("gn18");
}
