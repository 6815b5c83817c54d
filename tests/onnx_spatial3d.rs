//! 3-D convolution, transposed convolution, pooling and Col2Im, MaxPool's Indices output and
//! MaxUnpool in the ONNX importer: models written by tests/fixtures/onnx/gen_spatial3d.py,
//! run on the GPU and the CPU reference and compared with onnxruntime's outputs (odd sizes,
//! stride 2, asymmetric pads, ceil_mode, channel counts not multiples of 4, batch 2);
//! gradients of the 3-D pools, Conv and ConvTranspose against finite differences in f64
//! and the GPU's against those.

mod common;

use common::onnx::{check_fixture, check_input_gradients};
use wgrad::onnx::Weights;

/// `spatial3d/name.onnx` against onnxruntime with the weights as parameters and as
/// constants.
fn check(name: &str) {
    for weights in [Weights::Params, Weights::Constants] {
        check_fixture("spatial3d", name, &[], weights, 1e-5, 1e-4);
    }
}

#[test]
fn conv3d_matches_onnxruntime() {
    // batch 2, strides and dilations per axis, six different pads, bias; 3 groups with
    // SAME_UPPER and stride 2; x and W both inputs.
    for name in ["conv3d_basic", "conv3d_group_same", "conv3d_grad"] {
        check(name);
    }
}

#[test]
fn conv_transpose3d_matches_onnxruntime() {
    // strides, asymmetric pads, output_padding and bias; groups with dilation;
    // output_shape; x and W both inputs.
    for name in [
        "convt3d_basic",
        "convt3d_group_dilation",
        "convt3d_output_shape",
        "convt3d_grad",
    ] {
        check(name);
    }
}

#[test]
fn pool3d_matches_onnxruntime() {
    // MaxPool with per-axis windows and pads, and with ceil_mode and dilation; AveragePool
    // with ceil_mode and count_include_pad 0 / 1, and SAME_LOWER; LpPool p = 3 and 2.
    for name in [
        "maxpool3d",
        "maxpool3d_ceil_dilated",
        "avgpool3d_ceil_include0",
        "avgpool3d_ceil_include1",
        "avgpool3d_same_lower",
        "lppool3d",
        "maxpool3d_grad",
        "avgpool3d_grad",
        "lppool3d_grad",
    ] {
        check(name);
    }
}

#[test]
fn col2im3d_matches_the_onnx_reference() {
    // Expected output from the onnx ReferenceEvaluator (onnxruntime 1.23 differs on a
    // dilated last axis; see gen_spatial3d.py).
    check("col2im3d");
}

#[test]
fn max_pool_indices_match_onnxruntime() {
    // Row- and column-major indices with pads and ceil_mode; ties (the first in the
    // window wins); 1-D; 3-D (with dilation, both orders, ties).
    for name in [
        "maxpool2d_indices_order0",
        "maxpool2d_indices_order1",
        "maxpool2d_indices_ties",
        "maxpool1d_indices",
        "maxpool3d_indices_order0",
        "maxpool3d_indices_order1",
        "maxpool3d_indices_ties",
    ] {
        check_fixture("spatial3d", name, &[], Weights::Constants, 0.0, 0.0);
    }
}

#[test]
fn max_unpool_of_max_pool_indices_matches_onnxruntime() {
    // Runtime indices from a MaxPool: stride 2; an output_shape (the odd-sized input's);
    // overlapping windows (duplicate indices of one element).
    for name in [
        "maxunpool2d",
        "maxunpool2d_output_shape",
        "maxunpool3d",
        "maxunpool1d_overlap",
    ] {
        check_fixture("spatial3d", name, &[], Weights::Constants, 0.0, 0.0);
    }
}

#[test]
fn spatial3d_gradients_match_finite_differences() {
    for name in [
        "maxpool3d_grad",
        "avgpool3d_grad",
        "lppool3d_grad",
        "conv3d_grad",
        "convt3d_grad",
        "maxunpool1d_overlap",
    ] {
        check_input_gradients("spatial3d", name);
    }
}
