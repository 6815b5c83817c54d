//! ONNX DFT and STFT on graph values (tests/fixtures/onnx/gen_fft.py) against NumPy's f64
//! `numpy.fft`, on what the node cases leave out: lengths padded and cut off by
//! dft_length, odd lengths, complex input, one-sided and inverse real transforms of odd
//! length, the opset-17 axis attribute, a complex STFT and a window shorter than the frame;
//! gradients through both against finite differences; bad attributes as import errors.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in};
use wgrad::onnx::{Model, Weights};

const CASES: &[&str] = &[
    "pad",
    "cut_complex",
    "onesided_odd",
    "inverse_complex",
    "irfft_odd",
    "irfft_even_default",
    "axis_attr_opset17",
    "stft_complex",
    "stft_short_window",
];

#[test]
fn dft_and_stft_match_numpy() {
    // Sums of up to 11 products of unit-normal values: f32 rounding of about 1e-6.
    for name in CASES {
        check_fixture("fft", name, &[], Weights::Constants, 1e-5, 1e-5);
    }
}

#[test]
fn gradients_flow_through_dft_and_stft() {
    // The STFT's window is a graph input, so it gets a gradient too.
    for name in ["cut_complex", "irfft_odd", "stft_short_window"] {
        check_input_gradients("fft", name);
    }
}

#[test]
fn the_complex_dim_is_not_a_dft_axis() {
    let mut m = Model::load(fixture_in("fft", "axis_attr_opset17.onnx")).expect("load");
    for a in &mut m.proto.graph.as_mut().expect("graph").node[0].attribute {
        if a.name() == "axis" {
            a.i = Some(3);
        }
    }
    let msg = m
        .import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string();
    assert!(msg.contains("DFT") && msg.contains("complex dim"), "{msg}");
}
