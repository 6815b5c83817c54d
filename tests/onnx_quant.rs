//! ONNX quantization (tests/fixtures/onnx/gen_quant.py) against onnxruntime on cases the
//! node tests leave out: exact .5 ties of both signs, saturation at both ends (±inf, 1e30,
//! 2^23 + 1), per axis with a negative axis, blocked with a short last block, a
//! QLinearMatMul with broadcast batch dims and a grouped ConvInteger on values quantized by
//! the graph, DynamicQuantizeLinear of all zeros, DequantizeLinear of constants (folded). Gradients: DequantizeLinear's flow to its
//! scale (finite differences), QuantizeLinear's are zero. Bad input is an import error
//! naming the op and the shapes or type.

mod common;

use common::onnx::{check_fixture, check_input_gradients, fixture_in, input_var};
use common::{devices, uniform};
use prost::Message;
use wgrad::autodiff::grad;
use wgrad::onnx::proto::AttributeProto;
use wgrad::onnx::{Model, Weights};
use wgrad::Tensor;

/// Integer outputs: exact.
const EXACT: &[&str] = &[
    "ties_int8",
    "ties_uint8",
    "scale_tenth",
    "axis_negative",
    "blocked_short",
    "qlinear_matmul_batch",
    "conv_integer_groups",
    "dynamic_zeros",
];

#[test]
fn quantized_values_match_onnxruntime_exactly() {
    // Float initializers (the scales) as constants, and as parameters (graph values).
    for name in EXACT {
        for weights in [Weights::Constants, Weights::Params] {
            check_fixture("quant", name, &[], weights, 0.0, 0.0);
        }
    }
}

#[test]
fn float_outputs_match_onnxruntime() {
    // One f32 rounding of (q - zp)·scale, and of DynamicQuantizeLinear's scale.
    check_fixture(
        "quant",
        "dequant_blocked",
        &[],
        Weights::Constants,
        0.0,
        1e-7,
    );
    check_fixture("quant", "dynamic_mixed", &[], Weights::Constants, 0.0, 1e-7);
}

/// DequantizeLinear of constants folds at import (the output is a graph constant) and
/// matches onnxruntime: per axis, blocked with a short last block, INT32 past 2^24 (cast to
/// f32 first, as the spec and onnxruntime do).
#[test]
fn dequantize_of_constants_folds() {
    for name in [
        "dequant_const_axis",
        "dequant_const_blocked",
        "dequant_const_int32",
    ] {
        check_fixture("quant", name, &[], Weights::Constants, 0.0, 0.0);
        let imported = Model::load(fixture_in("quant", &format!("{name}.onnx")))
            .expect("load")
            .import(&[], Weights::Constants)
            .expect("import");
        let y = &imported.outputs[0].1;
        let op = &imported.graph.nodes()[y.id()].op;
        assert!(matches!(op, wgrad::Op::Const(_)), "{name}: {op:?}");
    }
}

#[test]
fn dequantize_passes_gradients_to_its_scale() {
    check_input_gradients("quant", "dequant_blocked");
}

/// Rounding is piecewise constant: the derivative of QuantizeLinear's output with respect
/// to x is 0 (not a straight-through 1/scale), on both devices.
#[test]
fn quantize_has_zero_gradient() {
    let imported = Model::load(fixture_in("quant", "scale_tenth.onnx"))
        .expect("load")
        .import(&[], Weights::Params)
        .expect("import");
    let g = imported.graph.clone();
    let x = input_var(&g, "x");
    let loss = imported.outputs[0].1.sum().expect("sum");
    let dx = grad(&loss, &[&x]).expect("grad");
    let values = uniform(5, 40, -9.0, 9.0);
    for dev in devices() {
        let exe = dev.compile(&g, &[&dx[0]], None).expect("compile");
        let t = Tensor::from_slice(&dev, &values, &[40]).expect("feed");
        let got = exe.run(&[("x", &t)]).expect("run")[0]
            .to_vec::<f32>()
            .expect("read");
        assert!(got.iter().all(|&d| d == 0.0), "{}: {got:?}", dev.name());
    }
}

/// The import error of fixture `name` after `edit` changes its proto.
fn import_error(name: &str, edit: impl FnOnce(&mut wgrad::onnx::proto::GraphProto)) -> String {
    let mut p = Model::load(fixture_in("quant", &format!("{name}.onnx")))
        .expect("load")
        .proto;
    edit(p.graph.as_mut().expect("graph"));
    Model::from_bytes(&p.encode_to_vec())
        .expect("decode")
        .import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string()
}

#[test]
fn bad_input_is_an_import_error_naming_op_and_shapes() {
    // A per-axis scale of 2 for an axis of 3.
    let msg = import_error("axis_negative", |g| {
        for t in &mut g.initializer {
            if t.name() == "s" {
                t.dims = vec![2];
                t.raw_data = Some([0.1f32, 0.2].iter().flat_map(|v| v.to_le_bytes()).collect());
            }
        }
    });
    assert!(
        msg.contains("QuantizeLinear") && msg.contains("[2]") && msg.contains("[2, 3, 4]"),
        "{msg}"
    );
    // A float 8 output type.
    let msg = import_error("ties_uint8", |g| {
        g.node[0].attribute.push(AttributeProto {
            name: Some("output_dtype".into()),
            i: Some(17),
            r#type: Some(2),
            ..Default::default()
        });
    });
    assert!(
        msg.contains("QuantizeLinear") && msg.contains("FLOAT8E4M3FN"),
        "{msg}"
    );
    // A blocked scale whose blocked dim does not match ⌈7/3⌉.
    let msg = import_error("blocked_short", |g| {
        for n in &mut g.node {
            for a in &mut n.attribute {
                if a.name() == "block_size" {
                    a.i = Some(2);
                }
            }
        }
    });
    assert!(
        msg.contains("QuantizeLinear") && msg.contains("[3, 3]") && msg.contains("[3, 7]"),
        "{msg}"
    );
}

/// Integer sums that may pass 2^24 are refused at import, not rounded.
#[test]
fn integer_sums_past_2_24_are_refused() {
    let msg = Model::load(fixture_in("quant", "matmul_integer_wide.onnx"))
        .expect("load")
        .import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string();
    assert!(
        msg.contains("MatMulInteger") && msg.contains("[2, 300]") && msg.contains("2^24"),
        "{msg}"
    );
    // The bound reads the weights' values: weights of 1 (sums up to 255·300) are accepted,
    // which the UINT8 range alone (255·255·300) would refuse.
    let mut p = Model::load(fixture_in("quant", "matmul_integer_wide.onnx"))
        .expect("load")
        .proto;
    for t in &mut p.graph.as_mut().expect("graph").initializer {
        if t.name() == "w" {
            t.raw_data = Some(vec![1; 600]);
        }
    }
    let m = Model::from_bytes(&p.encode_to_vec()).expect("decode");
    if let Err(e) = m.import(&[], Weights::Constants) {
        panic!("{e}");
    }
}
