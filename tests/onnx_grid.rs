//! ONNX AffineGrid (tests/fixtures/onnx/gen_grid.py) against onnxruntime on odd and unequal
//! sizes, a single pixel, both corner modes, 2-D and 3-D; its gradient with respect to θ
//! against finite differences.

mod common;

use common::onnx::{check_fixture, check_input_gradients};
use wgrad::onnx::Weights;

const CASES: &[&str] = &[
    "affine2d",
    "affine2d_align",
    "affine2d_one_pixel",
    "affine3d_align",
    "affine3d",
];

#[test]
fn affine_grids_match_onnxruntime() {
    for name in CASES {
        check_fixture("grid", name, &[], Weights::Constants, 1e-6, 1e-5);
    }
}

#[test]
fn affine_grid_gradients_reach_theta() {
    for name in ["affine2d", "affine3d_align"] {
        check_input_gradients("grid", name);
    }
}
