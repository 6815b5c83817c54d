//! ONNX Einsum and CumProd on graph values (tests/fixtures/onnx/gen_einsum.py): Einsum
//! against onnxruntime on equations the node cases leave out (three terms, implicit
//! output, diagonals, broadcast ellipses, unused labels), CumProd against NumPy with zeros
//! and negatives in every mode, gradients through both against finite differences, and bad
//! equations as import errors naming the node.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in};
use wgrad::onnx::{Model, Weights};

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

#[test]
fn gradients_flow_through_einsum_and_cumprod() {
    // A product of three terms, a diagonal, a broadcast ellipsis, and the scan of products.
    for name in ["bilinear", "diag3", "ellipsis_bcast", "cumprod"] {
        check_input_gradients("einsum", name);
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
