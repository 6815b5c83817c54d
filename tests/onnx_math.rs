//! ONNX math family (activations, unary maths, arithmetic, comparison and selection,
//! reductions): models written by tests/fixtures/onnx/gen_math.py, run on the GPU and the
//! CPU reference and compared with onnxruntime's outputs; gradients through an imported
//! model against finite differences; bad attributes are errors naming the node.

mod common;

use common::onnx::{check_fixture, fixture_in};
use common::{assert_close, check_finite_differences, devices, Feed};
use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::{io::read_npy, Device, Op, Var};

fn check(name: &str, atol: f32, rtol: f32) {
    check_fixture("math", name, &[], Weights::Params, atol, rtol);
}

#[test]
fn activations_match_onnxruntime() {
    // LeakyRelu, PRelu, Elu, Selu, Celu, HardSigmoid, HardSwish, Softplus, Softsign, Erf,
    // Floor, Ceil, Reciprocal on [-60, 60] (e^60 would overflow f32 where unselected).
    check("activations", 1e-5, 1e-5);
}

#[test]
fn round_sign_isnan_isinf_on_special_values_and_mish_shrink_thresholded_relu() {
    // Exact for the maps onto integers and masks; Mish within f32 rounding.
    check("unary_more", 1e-6, 1e-5);
}

#[test]
fn erf_is_accurate_from_tiny_to_saturated_arguments() {
    // Relative accuracy near 0 (1e-8) as well as absolute accuracy at the tails.
    check("erf", 1e-12, 2e-6);
}

#[test]
fn gelu_exact_and_tanh_match_onnxruntime() {
    check("gelu20", 1e-6, 1e-5);
}

#[test]
fn clip_bounds_as_attributes_and_as_optional_inputs() {
    check("clip10", 0.0, 0.0);
    check("clip11", 0.0, 0.0);
    check("clip13", 0.0, 0.0);
    check("clip13_input", 0.0, 0.0);
}

#[test]
fn pow_and_variadic_max_min_sum_mean_broadcast() {
    check("arith", 1e-6, 1e-5);
}

#[test]
fn comparisons_logic_and_where_with_inf_and_nan_branches() {
    // Exact: the 0/1 masks and every selected value, -inf and NaN included, while the
    // branch not taken holds ±inf and NaN.
    check("compare_where", 0.0, 0.0);
}

#[test]
fn reductions_over_attribute_and_input_axes() {
    check("reduce11", 1e-6, 1e-5);
    check("reduce13", 1e-6, 1e-5);
    check("reduce18", 1e-6, 1e-5);
}

#[test]
fn log_sum_exp_is_shifted_by_a_finite_max() {
    // A row of -inf gives -inf, one holding +inf gives +inf, one holding NaN gives NaN.
    check("logsumexp18", 1e-5, 1e-5);
    check("logsumexp13", 1e-5, 1e-5);
}

#[test]
fn argmax_argmin_with_ties_first_and_last() {
    check("argmax", 0.0, 0.0);
}

#[test]
fn hardmax_one_hot_of_the_first_maximum() {
    check("hardmax13", 0.0, 0.0);
    check("hardmax11", 0.0, 0.0);
}

fn node_var(g: &wgrad::Graph, f: impl Fn(&Op) -> bool) -> Var {
    let id = g.nodes().iter().position(|n| f(&n.op)).expect("node");
    g.var(id).expect("var")
}

/// Through MatMul, LeakyRelu, Softplus, Erf, Clip, Where (a -inf branch) into Softmax,
/// Max and ReduceMean: d/dx against central differences on the f64 CPU reference, and
/// d/dx, d/dw on the GPU against the CPU reference.
#[test]
fn gradients_through_an_imported_model_match_finite_differences() {
    check("grad_model", 1e-6, 1e-5);
    let model = Model::load(fixture_in("math", "grad_model.onnx")).expect("load");
    let imported = model.import(&[], Weights::Params).expect("import");
    let g = &imported.graph;
    let y = &imported.outputs[0].1;
    let loss = y.square().and_then(|s| s.sum()).expect("loss");
    let x = node_var(g, |op| matches!(op, Op::Input(n) if n == "x"));
    let w = node_var(g, |op| matches!(op, Op::Param(n, _) if n == "w"));
    let grads = grad(&loss, &[&x, &w]).expect("grad");
    let xs = read_npy(fixture_in("math", "grad_model.in.x.npy"), &Device::cpu())
        .and_then(|t| t.to_vec::<f32>())
        .expect("x");
    let feeds = vec![("x".to_string(), Feed::real(&xs, x.shape()))];
    let dx = check_finite_differences("grad_model", g, &loss, &grads[..1], &feeds);
    assert!(
        dx[0].iter().any(|&v| v.abs() > 1e-3),
        "the gradient must not vanish: {:?}",
        dx[0]
    );
    let mut per_device = Vec::new();
    for dev in devices() {
        let xt = wgrad::Tensor::from_slice(&dev, &xs, x.shape()).expect("x");
        let exe = dev
            .compile(g, &[&grads[0], &grads[1]], None)
            .expect("compile");
        let out = exe.run(&[("x", &xt)]).expect("run");
        let v: Vec<Vec<f32>> = out.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
        assert!(v.iter().flatten().all(|a| a.is_finite()), "{v:?}");
        per_device.push(v);
    }
    if let [cpu, gpu] = &per_device[..] {
        for k in 0..2 {
            assert_close(
                &format!("grad_model d{k} GPU vs CPU"),
                &gpu[k],
                &cpu[k],
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn bad_attributes_are_errors_naming_the_node() {
    for (name, want) in [
        ("bad_gelu", "approximate"),
        ("bad_reduce_axes", "axis -3 out of range"),
        ("bad_argmax_axis", "out of range"),
    ] {
        let model = Model::load(fixture_in("math", &format!("{name}.onnx"))).expect("load");
        let msg = model
            .import(&[], Weights::Params)
            .err()
            .unwrap_or_else(|| panic!("{name} must fail"))
            .to_string();
        assert!(msg.contains(want) && msg.contains(name), "{name}: {msg}");
    }
}

#[test]
fn integer_base_to_a_float_exponent_truncates_as_onnxruntime() {
    // 3^15 and 2^23 (exact in f32, just under 2^24), 9^0.5 and 27^(1/3) (an f32 power a
    // hair under the integer must not truncate one below it), negative and zero bases,
    // powers under 1 truncating to 0; for INT32 and INT64 bases.
    check_fixture("math", "pow_int32_float", &[], Weights::Constants, 0.0, 0.0);
    check_fixture("math", "pow_int64_float", &[], Weights::Constants, 0.0, 0.0);
}
