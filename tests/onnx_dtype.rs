//! ONNX element types: Cast and CastLike of graph values to integer and BOOL types
//! (truncation toward zero, wrapping to 8 and 16 bits) and to FLOAT16 / BFLOAT16 (rounded
//! to nearest even in exact f32 steps), float Mod by both rules with zero,
//! infinite and NaN operands, ReduceProd and Resize on graph values — models written by
//! tests/fixtures/onnx/gen_dtype.py, run on the CPU reference and the GPU against
//! onnxruntime's outputs (NumPy's for opset 28's float Mod); and the casts the importer
//! must refuse.

mod common;

use wgrad::onnx::proto::{tensor_proto::DataType, ModelProto};
use wgrad::onnx::{Model, Weights};

fn check(name: &str, atol: f32, rtol: f32) {
    for weights in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("dtype", name, &[], weights, atol, rtol);
    }
}

#[test]
fn casts_to_integer_and_bool_match_onnxruntime() {
    // Integer and BOOL outputs are compared exactly.
    check("casts", 0.0, 0.0);
}

#[test]
fn casts_to_half_types_round_as_onnxruntime() {
    // Ties to even, f16 subnormals and overflow, bf16 over f32's whole range: exact.
    check("half_casts", 0.0, 0.0);
}

#[test]
fn float_mod_matches_onnxruntime_and_numpy() {
    // x - ⌊x/y⌋·y in f32 against the exact remainder: a rounding of x/y's size.
    check("float_fmod", 1e-5, 1e-5);
    check("float_mod", 1e-5, 1e-5);
}

#[test]
fn reduce_prod_of_graph_values_matches_onnxruntime() {
    check("reduce_prod", 1e-6, 1e-5);
}

#[test]
fn resize_matches_onnxruntime() {
    // Only with constant weights: under `Weights::Params` the float scales initializer is
    // a trainable parameter, not known at import (an error naming it).
    common::onnx::check_fixture("dtype", "resizes", &[], Weights::Constants, 1e-5, 1e-4);
}

/// The casts model with its first Cast's target replaced by `to`.
fn import_cast_to(to: DataType) -> String {
    let path = common::onnx::fixture_in("dtype", "casts.onnx");
    let mut proto: ModelProto = Model::load(path).expect("load").proto;
    let graph = proto.graph.as_mut().expect("graph");
    let cast = graph
        .node
        .iter_mut()
        .find(|n| n.op_type() == "Cast")
        .unwrap();
    cast.attribute
        .iter_mut()
        .find(|a| a.name() == "to")
        .unwrap()
        .i = Some(to as i64);
    let bytes = prost::Message::encode_to_vec(&proto);
    match Model::from_bytes(&bytes).and_then(|m| m.import(&[], Weights::Constants)) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn casts_graph_values_cannot_do_are_refused_by_name() {
    let msg = import_cast_to(DataType::String);
    assert!(
        msg.contains("(Cast)") && msg.contains("Cast to STRING is not supported"),
        "{msg}"
    );
    let msg = import_cast_to(DataType::Complex64);
    assert!(msg.contains("Cast to COMPLEX64 is not supported"), "{msg}");
    // DOUBLE is computed in f32, the half types rounded: accepted.
    for t in [DataType::Double, DataType::Float16, DataType::Bfloat16] {
        assert_eq!(import_cast_to(t), "", "{t:?}");
    }
}

#[test]
fn float_mod_by_python_rule_needs_opset_28() {
    let path = common::onnx::fixture_in("dtype", "float_mod.onnx");
    let mut proto: ModelProto = Model::load(path).expect("load").proto;
    proto.opset_import[0].version = Some(27);
    let bytes = prost::Message::encode_to_vec(&proto);
    let msg = Model::from_bytes(&bytes)
        .and_then(|m| m.import(&[], Weights::Constants))
        .err()
        .expect("opset 27 float Mod with fmod = 0 must not import")
        .to_string();
    assert!(
        msg.contains("(Mod)") && msg.contains("fmod = 1 before opset 28"),
        "{msg}"
    );
}

#[test]
fn uint64_beyond_int64_is_refused_when_read() {
    // UINT64 is held in i64: u64::MAX cannot be, and is an error naming the tensor.
    let path = common::onnx::fixture_in("dtype", "casts.onnx");
    let mut proto: ModelProto = Model::load(path).expect("load").proto;
    proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .push(wgrad::onnx::proto::TensorProto {
            name: Some("big".into()),
            dims: vec![2],
            data_type: Some(DataType::Uint64 as i32),
            uint64_data: vec![7, u64::MAX],
            ..Default::default()
        });
    let msg = Model::from_bytes(&prost::Message::encode_to_vec(&proto))
        .expect_err("must not load")
        .to_string();
    assert!(
        msg.contains("tensor 'big'") && msg.contains("18446744073709551615 exceeds INT64"),
        "{msg}"
    );
}

#[test]
fn gradients_through_resize_and_reduce_prod_match_finite_differences() {
    // Resize (matmul plans and a gather) and ReduceProd (halving products) are compositions
    // of differentiable graph ops: d(weighted sum of every output)/dx against f64 finite
    // differences, on the CPU reference in f64.
    use common::{check_finite_differences, uniform, Feed};
    use wgrad::autodiff::grad;
    for (name, shape) in [
        ("resizes", [2usize, 3, 5, 6]),
        ("reduce_prod", [2, 3, 5, 7]),
    ] {
        let path = common::onnx::fixture_in("dtype", &format!("{name}.onnx"));
        let imported = Model::load(path)
            .expect("load")
            .import(&[], Weights::Constants)
            .expect("import");
        let g = imported.graph.clone();
        let id = g
            .nodes()
            .iter()
            .position(|n| matches!(&n.op, wgrad::Op::Input(s) if s == "x"))
            .expect("input x");
        let x = g.var(id).unwrap();
        let loss = common::onnx::weighted_output_loss(&g, &imported.outputs, 20);
        let grads = grad(&loss, &[&x]).unwrap();
        let n: usize = shape.iter().product();
        let xv = uniform(3, n, 0.5, 1.5);
        let feeds = [("x".to_string(), Feed::real(&xv, &shape))];
        check_finite_differences(name, &g, &loss, &grads, &feeds);
    }
}
