//! ONNX Einsum and CumProd on graph values (tests/fixtures/onnx/gen_einsum.py): Einsum
//! against onnxruntime on equations the node cases leave out (three terms, implicit
//! output, diagonals, broadcast ellipses, unused labels), CumProd against NumPy with zeros
//! and negatives in every mode, gradients through both against finite differences, and bad
//! equations as import errors naming the node.

mod common;

use common::onnx::{check_fixture, fixture_in, input_var, weighted_output_loss};
use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::{Tensor, Var};

const EQUATIONS: &[&str] = &[
    "chain3",
    "implicit_matmul",
    "implicit_sorted",
    "outer",
    "trace",
    "diag",
    "diag3",
    "ellipsis_bcast",
    "ellipsis_implicit",
    "bilinear",
    "sum_unused",
    "attention_scores",
    "permute3",
];

#[test]
fn einsum_equations_match_onnxruntime() {
    for name in EQUATIONS {
        check_fixture("einsum", name, &[], Weights::Constants, 1e-5, 1e-5);
    }
}

#[test]
fn cumprod_with_zeros_and_negatives_matches_numpy() {
    // Exclusive × reverse on an axis of 37 (the scan's last step is partial); products of
    // up to 37 factors in [0.5, 1.5) agree with NumPy's f64 within f32 rounding.
    check_fixture("einsum", "cumprod", &[], Weights::Constants, 1e-6, 1e-5);
}

/// Gradients of a weighted sum of the model's outputs with respect to every input, against
/// central finite differences on the f64 reference, and the GPU's against those.
fn check_gradients(name: &str) {
    let imported = Model::load(fixture_in("einsum", &format!("{name}.onnx")))
        .expect("load")
        .import(&[], Weights::Params)
        .expect("import");
    let g = imported.graph.clone();
    let xs: Vec<Var> = imported.inputs.iter().map(|i| input_var(&g, i)).collect();
    let loss = weighted_output_loss(&g, &imported.outputs, 3);
    let grads = grad(&loss, &xs.iter().collect::<Vec<_>>()).expect("grad");
    let values: Vec<Vec<f32>> = xs
        .iter()
        .enumerate()
        .map(|(k, x)| uniform(40 + k as u64, x.shape().iter().product(), -1.5, 1.5))
        .collect();
    let feeds: Vec<(String, Feed)> = imported
        .inputs
        .iter()
        .zip(&xs)
        .zip(&values)
        .map(|((n, x), v)| (n.clone(), Feed::real(v, x.shape())))
        .collect();
    let analytic = check_finite_differences(name, &g, &loss, &grads, &feeds);
    for (k, a) in analytic.iter().enumerate() {
        assert!(a.iter().any(|&d| d.abs() > 1e-3), "{name}: d{k} vanishes");
    }
    if let Some(dev) = gpu() {
        let exe = dev
            .compile(&g, &grads.iter().collect::<Vec<_>>(), None)
            .expect("compile");
        let tensors: Vec<Tensor> = xs
            .iter()
            .zip(&values)
            .map(|(x, v)| Tensor::from_slice(&dev, v, x.shape()).expect("feed"))
            .collect();
        let feeds: Vec<(&str, &Tensor)> = imported
            .inputs
            .iter()
            .map(String::as_str)
            .zip(&tensors)
            .collect();
        let got = exe.run(&feeds).expect("run");
        for (k, (t, a)) in got.iter().zip(&analytic).enumerate() {
            let want: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            assert_close(
                &format!("{name} d{k}, GPU vs f64 CPU"),
                &t.to_vec::<f32>().expect("read"),
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn gradients_flow_through_einsum_and_cumprod() {
    // A product of three terms, a diagonal, a broadcast ellipsis, and the scan of products.
    for name in ["bilinear", "diag3", "ellipsis_bcast", "cumprod"] {
        check_gradients(name);
    }
}

#[test]
fn bad_equations_are_import_errors_naming_the_node() {
    let cases = [
        ("bad_output_label", "output label"),
        ("bad_repeated_output", "appears twice"),
        ("bad_term_count", "1 input terms for 2 inputs"),
        ("bad_rank", "rank 3 but its term names 2 dims"),
        ("bad_sizes", "sizes 3 and 4"),
        ("bad_char", "not a letter"),
    ];
    for (name, want) in cases {
        let msg = Model::load(fixture_in("einsum", &format!("{name}.onnx")))
            .expect("load")
            .import(&[], Weights::Params)
            .err()
            .unwrap_or_else(|| panic!("{name} must not import"))
            .to_string();
        assert!(
            msg.contains(name) && msg.contains("Einsum") && msg.contains(want),
            "{name}: {msg}"
        );
    }
}
