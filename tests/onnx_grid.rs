//! ONNX AffineGrid and GridSample (tests/fixtures/onnx/gen_grid.py) against onnxruntime:
//! AffineGrid on odd and unequal sizes, a single pixel, both corner modes, 2-D and 3-D;
//! GridSample on the mode × padding × corner combinations the node cases leave out, with
//! grids reaching past the image. Gradients (to θ; to the image and the grid) against
//! finite differences.

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

const SAMPLES: &[&str] = &[
    "gs_cubic_border",
    "gs_cubic_reflection",
    "gs_cubic_reflection_unaligned",
    "gs_linear_reflection_aligned",
    "gs_nearest_reflection",
    "gs_nearest_border_aligned",
    "gs_linear_zeros",
    "gs3d_linear_reflection",
    "gs3d_nearest_border",
];

#[test]
fn grid_samples_match_onnxruntime() {
    for name in SAMPLES {
        check_fixture("grid", name, &[], Weights::Constants, 1e-5, 1e-4);
    }
}

#[test]
fn grid_sample_gradients_reach_the_image_and_the_grid() {
    // Linear and cubic weights are piecewise polynomials of the grid: finite differences
    // agree away from the kinks (random points hit none at this step).
    for name in ["gs_linear_zeros", "gs_cubic_border"] {
        check_input_gradients("grid", name);
    }
}
