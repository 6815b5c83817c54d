//! ONNX RoiAlign, DeformConv and Det (tests/fixtures/onnx/gen_vision.py) against
//! onnxruntime on what the node cases leave out: rois on the image border and outside it,
//! batch 2 with rois from both images, max mode, adaptive sampling with rois known at
//! import; DeformConv with odd sizes, stride 2, groups 2, dilation, mask and bias, offsets
//! reaching past the image; Det of singular, ill-conditioned and pivoting matrices.
//! Gradients (RoiAlign to the features; DeformConv to the input, weights and offsets; Det
//! to its matrices) against finite differences on the f64 reference, and the GPU's.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in};
use prost::Message;
use wgrad::onnx::{Model, Weights};

#[test]
fn roi_align_matches_onnxruntime() {
    for name in [
        "roi_border",
        "roi_border_output_half_pixel",
        "roi_batch2",
        "roi_batch2_max",
        "roi_adaptive",
        "roi_adaptive_max",
    ] {
        check_fixture("vision", name, &[], Weights::Constants, 1e-5, 1e-4);
    }
}

#[test]
fn deform_conv_matches_onnxruntime() {
    for name in [
        "dc_odd_stride2_groups2",
        "dc_far_offsets",
        "dc_stride2_mask",
    ] {
        check_fixture("vision", name, &[], Weights::Constants, 1e-4, 1e-4);
    }
}

#[test]
fn det_matches_onnxruntime() {
    // Singular matrices come out 0 to within f32 rounding of entries up to 9.
    check_fixture(
        "vision",
        "det_singular",
        &[],
        Weights::Constants,
        1e-5,
        1e-5,
    );
    check_fixture("vision", "det_random6", &[], Weights::Constants, 1e-5, 1e-4);
    // Hilbert matrices (det 1.7e-7 and 3.8e-12, condition numbers 1.6e4 and 4.8e5): f32
    // elimination keeps the determinant to a relative 1e-3 (onnxruntime's own is 4e-4
    // off the f64 value for order 5).
    check_fixture("vision", "det_hilbert4", &[], Weights::Constants, 0.0, 1e-3);
    check_fixture("vision", "det_hilbert5", &[], Weights::Constants, 0.0, 3e-3);
}

#[test]
fn roi_align_gradient_reaches_the_features() {
    // The rois are an initializer: only X is an input, and sampling is linear in it.
    check_input_gradients("vision", "roi_grad");
}

#[test]
fn deform_conv_gradients_reach_input_weights_and_offsets() {
    // Offsets drawn in [-1.5, 1.5] put every sample off the integer positions where
    // bilinear weights have kinks (by more than the finite-difference step).
    check_input_gradients("vision", "dc_grad");
}

#[test]
fn det_gradient_is_det_times_inverse_transpose() {
    check_input_gradients("vision", "det_grad");
}

/// The import error of fixture `vision/name` after `edit` changes its model.
fn import_error(name: &str, edit: impl FnOnce(&mut wgrad::onnx::proto::ModelProto)) -> String {
    let mut p = Model::load(fixture_in("vision", &format!("{name}.onnx")))
        .expect("load")
        .proto;
    edit(&mut p);
    let m = Model::from_bytes(&p.encode_to_vec()).expect("decode");
    m.import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string()
}

fn set_int_attr(p: &mut wgrad::onnx::proto::ModelProto, name: &str, v: i64) {
    let node = &mut p.graph.as_mut().expect("graph").node[0];
    let a = node
        .attribute
        .iter_mut()
        .find(|a| a.name() == name)
        .expect("attribute");
    a.i = Some(v);
}

#[test]
fn adaptive_sampling_needs_rois_known_at_import() {
    // The grid size ⌈roi size / output size⌉ depends on the rois' values.
    let e = import_error("roi_batch2", |p| set_int_attr(p, "sampling_ratio", 0));
    for want in [
        "RoiAlign",
        "'rois' must be known at import",
        "sampling_ratio 0",
    ] {
        assert!(e.contains(want), "`{want}` missing from: {e}");
    }
}

#[test]
fn bad_vision_inputs_are_errors_naming_the_op() {
    let e = import_error("roi_batch2", |p| {
        for t in &mut p.graph.as_mut().expect("graph").initializer {
            if t.name() == "batch" {
                t.int64_data = vec![0, 1, 2, 0];
                t.raw_data = None;
            }
        }
    });
    assert!(
        e.contains("RoiAlign") && e.contains("batch_indices[2] = 2"),
        "{e}"
    );
    let e = import_error("dc_grad", |p| set_int_attr_or_add(p, "group", 3));
    assert!(e.contains("DeformConv") && e.contains("group"), "{e}");
    let e = import_error("dc_grad", |p| set_int_attr_or_add(p, "offset_group", 2));
    assert!(e.contains("DeformConv") && e.contains("offset"), "{e}");
}

fn set_int_attr_or_add(p: &mut wgrad::onnx::proto::ModelProto, name: &str, v: i64) {
    use wgrad::onnx::proto::{attribute_proto::AttributeType, AttributeProto};
    let node = &mut p.graph.as_mut().expect("graph").node[0];
    node.attribute.retain(|a| a.name() != name);
    node.attribute.push(AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    });
}
