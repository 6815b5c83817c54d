//! ONNX shape and layout operators: models written by tests/fixtures/onnx/gen_shape.py,
//! run on the GPU and the CPU reference against onnxruntime's outputs; shape-computing
//! subgraphs folding at import to no graph node; gradients through Pad/Slice/Tile/Concat/Split
//! against f64 finite differences; models the importer must refuse.

mod common;

use common::onnx::{input_var, weighted_output_loss};
use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::{Device, Graph, Tensor};

/// `name` in tests/fixtures/onnx/shape against onnxruntime. Every op here moves or copies
/// values (or folds integers), so the match is exact.
fn check(name: &str, dims: &[(&str, usize)]) {
    for weights in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("shape", name, dims, weights, 0.0, 0.0);
    }
}

fn load(name: &str) -> Model {
    Model::load(common::onnx::fixture_in("shape", &format!("{name}.onnx"))).expect("load")
}

/// The op names of an imported graph's nodes, in order.
fn op_names(g: &Graph) -> Vec<&'static str> {
    g.nodes().iter().map(|n| n.op.name()).collect()
}

#[test]
fn pytorch_view_pattern_imports_as_one_reshape() {
    // Shape → Gather → Unsqueeze → Concat(-1) → Reshape, at opset 13 and (attribute axes,
    // Mul of two gathered dims, Cast) at opset 11: only the input and the reshape remain.
    for (name, n) in [("reshape_pattern", 2), ("reshape_pattern11", 3)] {
        check(name, &[("N", n)]);
        for batch in [1, 5] {
            let imported = load(name)
                .import(&[("N", batch)], Weights::Params)
                .expect("import");
            assert_eq!(op_names(&imported.graph), ["input", "reshape"], "{name}");
            assert_eq!(imported.outputs[0].1.shape(), &[batch, 12]);
        }
    }
}

#[test]
fn slices_match_onnxruntime() {
    // Steps 2 and 3 (fitting the axis and not), -1 and -2, clamped and INT_MAX/INT_MIN
    // bounds, negative axes, axes omitted, a step past the axis; opset 9 attributes.
    check("slices", &[]);
    check("slice9", &[]);
}

#[test]
fn pads_match_onnxruntime() {
    // constant (with a value), reflect, edge, wrap, axes input, negative pads; opset 10
    // attributes.
    check("pads", &[]);
    check("pad10", &[]);
}

#[test]
fn split_and_concat_match_onnxruntime() {
    check("split_concat", &[]);
    check("split18", &[]);
    check("split11", &[]);
}

#[test]
fn expand_tile_squeeze_match_onnxruntime() {
    check("expand_tile", &[]);
}

#[test]
fn shape_arithmetic_folds_match_onnxruntime() {
    check("folds", &[]);
}

#[test]
fn more_folds_across_opsets_match_onnxruntime() {
    // Opset 18 (axes inputs of the reductions, num_outputs, half-precision and narrow
    // integer casts, float Equal/Where/Div with NaN and -0, empty constants in Concat) and
    // opset 11 (axes and split attributes).
    check("folds18", &[]);
    check("folds11", &[]);
    // Comparisons and logic (graph ops of math.rs on runtime values) fold on constants, so
    // a shape computed through them stays known; only the input and the reshape remain,
    // with one constant per folded output.
    check("folds_logic", &[]);
    let imported = load("folds_logic")
        .import(&[], Weights::Params)
        .expect("import");
    let ops = op_names(&imported.graph);
    assert_eq!(ops.iter().filter(|&&o| o == "const").count(), 16, "{ops:?}");
    assert_eq!(ops.len(), 18, "{ops:?}");
}

#[test]
fn ops_on_large_float_constants_are_graph_ops() {
    // Matches onnxruntime both as parameters and as constants; as constants, the transpose
    // and the scaling of the 130x130 weight run on the device, not as host folds.
    common::onnx::check_fixture("shape", "big_weight", &[], Weights::Params, 1e-5, 1e-5);
    common::onnx::check_fixture("shape", "big_weight", &[], Weights::Constants, 1e-5, 1e-5);
    let imported = load("big_weight")
        .import(&[], Weights::Constants)
        .expect("import");
    let ops = op_names(&imported.graph);
    assert!(ops.contains(&"permute") && ops.contains(&"mul"), "{ops:?}");
    assert_eq!(ops.iter().filter(|&&o| o == "const").count(), 2, "{ops:?}");
}

#[test]
fn empty_results_are_skipped_by_concat() {
    // A zero-size Split part, a Slice past the end and Tile by 0 of a graph value hold no
    // elements: Concat drops them, Shape reads their dims.
    check("empties", &[]);
    // Used where a graph value is needed, or as a graph output, they are refused by name.
    let msg = import_error("empty_relu");
    assert!(
        msg.contains("'relu_empty'") && msg.contains("'e1' is empty (dims [2, 0])"),
        "{msg}"
    );
    // As a graph output, an empty value is an empty constant tensor.
    let imported = load("empty_output")
        .import(&[], Weights::Params)
        .expect("import");
    let y = &imported.outputs[0].1;
    assert_eq!(y.shape(), &[2, 0]);
    for dev in common::devices() {
        let exe = dev.compile(&imported.graph, &[y], None).expect("compile");
        let x = Tensor::from_slice(&dev, &[1.0f32; 6], &[2, 3]).unwrap();
        let got = exe.run(&[("x", &x)]).expect("run");
        assert_eq!(got[0].shape(), &[2, 0], "{}", dev.name());
        assert!(got[0].to_vec::<f32>().unwrap().is_empty());
    }
}

#[test]
fn large_float_constant_of_shape_is_a_fill_node() {
    check("fill", &[]);
    let imported = load("fill").import(&[], Weights::Params).expect("import");
    assert_eq!(op_names(&imported.graph), ["input", "full", "add"]);
}

#[test]
fn folded_subgraphs_leave_no_graph_nodes() {
    // Every shape computation of `folds` is a constant at import: what remains is the
    // input, the two reshapes and the expand of x, the slice/squeeze/add of its last output,
    // and one graph constant per output known at import (graph outputs stay outputs).
    let imported = load("folds").import(&[], Weights::Params).expect("import");
    let ops = op_names(&imported.graph);
    let count = |name: &str| ops.iter().filter(|&&o| o == name).count();
    assert_eq!(count("input"), 1, "{ops:?}");
    assert_eq!(count("reshape"), 3, "{ops:?}");
    assert_eq!(count("broadcast_to"), 1, "{ops:?}");
    assert_eq!(count("slice"), 1, "{ops:?}");
    assert_eq!(count("add"), 1, "{ops:?}");
    // 14 outputs known at import, and the zeros added to the slice.
    assert_eq!(count("const"), 15, "{ops:?}");
    assert_eq!(ops.len(), 22, "{ops:?}");
    // The folded outputs kept onnxruntime's shapes, scalars included.
    let shapes: Vec<&[usize]> = imported.outputs.iter().map(|(_, v)| v.shape()).collect();
    assert_eq!(shapes[9], &[] as &[usize]);
    assert_eq!(shapes[6], &[3, 2, 3, 4]);
}

#[test]
fn gradients_flow_through_pad_slice_tile_concat_split() {
    // Reflect and constant Pad, Slice steps -2 and 2, Tile, Concat, Split: all compositions
    // of reshape/slice/concat/broadcast/full, so their gradients are those ops' rules.
    check("grads", &[]);
    let imported = load("grads").import(&[], Weights::Params).expect("import");
    let g = imported.graph.clone();
    let x = input_var(&g, "x");
    let loss = weighted_output_loss(&g, &imported.outputs, 10);
    let grads = grad(&loss, &[&x]).unwrap();
    let xv = uniform(1, 12, -1.0, 1.0);
    let feeds = [("x".to_string(), Feed::real(&xv, &[4, 3]))];
    let analytic =
        check_finite_differences("imported Pad/Slice/Tile/Concat", &g, &loss, &grads, &feeds);
    // Every element of x reaches the loss, so no gradient entry is zero.
    assert!(analytic[0].iter().all(|&d| d != 0.0), "{:?}", analytic[0]);
    if let Some(dev) = gpu() {
        let exe = dev.compile(&g, &[&grads[0]], None).unwrap();
        let xt = Tensor::from_slice(&dev, &xv, &[4, 3]).unwrap();
        let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
        let want: Vec<f32> = analytic[0].iter().map(|&v| v as f32).collect();
        assert_close("d loss / d x, GPU vs f64 CPU", &got, &want, 1e-5, 1e-5);
    }
}

fn import_error(name: &str) -> String {
    load(name)
        .import(&[], Weights::Params)
        .err()
        .unwrap_or_else(|| panic!("{name} must not import"))
        .to_string()
}

#[test]
fn refused_models_name_the_node_and_the_reason() {
    // An INT64 shape (a constant) added to a float value.
    let msg = import_error("int_as_float");
    assert!(
        msg.contains("add_int") && msg.contains("integer constant where a float"),
        "{msg}"
    );
    // An integer output f32 cannot carry exactly (|v| > 2^24) is refused, not rounded.
    let msg = big_int_output_error();
    assert!(
        msg.contains("graph output 'big' is an integer value") && msg.contains("16777217"),
        "{msg}"
    );
    // Shape arithmetic dividing by zero.
    let msg = import_error("div_zero");
    assert!(
        msg.contains("'div0' (Div)") && msg.contains("division of 1 by zero"),
        "{msg}"
    );
    // A reflection needs an element past the edge for every padded one.
    let msg = import_error("reflect_too_far");
    assert!(
        msg.contains("'pad' (Pad)") && msg.contains("mode `reflect`") && msg.contains("[2, 3]"),
        "{msg}"
    );
    // Reversing 300 elements would take 300 slices.
    let msg = import_error("long_reverse");
    assert!(
        msg.contains("'rev' (Slice)") && msg.contains("step -1") && msg.contains("[300]"),
        "{msg}"
    );
}

/// A model whose one output is the INT64 constant 2^24 + 1, built with the proto types.
fn big_int_output_error() -> String {
    use prost::Message;
    use wgrad::onnx::proto::{
        attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto,
        NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    let node = NodeProto {
        op_type: Some("Constant".into()),
        output: vec!["big".into()],
        attribute: vec![AttributeProto {
            name: Some("value_ints".into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: vec![(1 << 24) + 1],
            ..Default::default()
        }],
        ..Default::default()
    };
    let out = ValueInfoProto {
        name: Some("big".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(7),
                shape: Some(TensorShapeProto::default()),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            node: vec![node],
            output: vec![out],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_bytes(&model.encode_to_vec())
        .expect("decode")
        .import(&[], Weights::Constants)
        .err()
        .expect("must not import")
        .to_string()
}

#[test]
fn small_integer_output_is_carried_exactly() {
    // Shape of x (3, 2), folded at import: an INT64 output within 2^24 is an exact f32.
    let imported = load("int_output")
        .import(&[], Weights::Params)
        .expect("import");
    let exe = Device::cpu()
        .compile(&imported.graph, &[&imported.outputs[0].1], None)
        .expect("compile");
    let x = Tensor::from_slice(&Device::cpu(), &[0f32; 6], &[3, 2]).unwrap();
    let got = exe.run(&[("x", &x)]).expect("run")[0]
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(got, [3.0, 2.0]);
}
