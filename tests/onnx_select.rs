//! ONNX ReverseSequence, Compress, CenterCropPad, Col2Im and SwiGLU on graph values
//! (tests/fixtures/onnx/gen_select.py) against onnxruntime (SwiGLU: the `onnx` reference
//! evaluator) on shapes the node cases leave out; gradients through each against finite
//! differences; bad sizes as import errors naming the node.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in, import_error_with_ints};
use prost::Message;
use wgrad::onnx::{Model, Weights};

const CASES: &[&str] = &[
    "reverse_inner",
    "reverse_time_major",
    "compress_middle",
    "compress_short",
    "crop_pad_odd",
    "col2im_all_attrs",
    "col2im_1d",
    "swiglu_alpha",
];

#[test]
fn selections_match_onnxruntime() {
    for name in CASES {
        check_fixture("select", name, &[], Weights::Constants, 1e-6, 1e-5);
    }
}

#[test]
fn gradients_flow_through_the_selections() {
    for name in CASES {
        check_input_gradients("select", name);
    }
}

#[test]
fn bad_sizes_are_import_errors_naming_the_op() {
    let cases = [
        ("reverse_inner", "lens", vec![5, 6, 0], "sequence length 6"),
        (
            "reverse_inner",
            "lens",
            vec![1, 2],
            "2 entries for a batch of 3",
        ),
        ("crop_pad_odd", "shape", vec![4, 0], "must be positive"),
        ("crop_pad_odd", "shape", vec![4], "1 entries for 2 axes"),
        ("col2im_all_attrs", "image", vec![9, 8], "blocks"),
        (
            "col2im_all_attrs",
            "block",
            vec![2, 2, 2],
            "both be 1-D, 2-D or 3-D",
        ),
    ];
    for (name, init, values, want) in cases {
        let msg = import_error_with_ints("select", name, init, &values);
        assert!(msg.contains(want), "{name}: {msg}");
    }
    // Bool conditions are stored as bytes, not int64: rebuild the condition by hand.
    let mut p = Model::load(fixture_in("select", "compress_middle.onnx"))
        .expect("load")
        .proto;
    for t in &mut p.graph.as_mut().expect("graph").initializer {
        if t.name() == "c" {
            t.raw_data = Some(vec![0; 5]);
        }
    }
    let m = Model::from_bytes(&p.encode_to_vec()).expect("decode");
    let msg = m
        .import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string();
    assert!(
        msg.contains("Compress") && msg.contains("selects nothing"),
        "{msg}"
    );
}
