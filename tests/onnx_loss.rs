//! ONNX losses and indexing operators beyond the node cases (tests/onnx_node.rs checks their
//! numbers against ONNX's own): labels fed at run time as an i32 graph input, checked
//! against the same node cases' expected outputs; the loss gradient w.r.t. the scores
//! through an imported model against finite differences; and the error paths (bad shapes,
//! bad indices, runtime values where constants are needed), each naming the operator.
//! Error models: tests/fixtures/onnx/gen_loss.py → tests/fixtures/onnx/loss/.

mod common;

use std::path::PathBuf;

use common::{assert_close, check_finite_differences, devices, Feed};
use prost::Message;
use wgrad::autodiff::grad;
use wgrad::onnx::proto::{tensor_proto::DataType, TensorProto};
use wgrad::onnx::{Model, Weights};
use wgrad::{Op, Tensor, Var};

fn node_case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/node")
        .join(name)
}

/// A node case's .pb tensor: dims and values (floats or integers, as f64).
fn read_pb(case: &str, file: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(node_case(case).join("test_data_set_0").join(file)).expect("pb");
    let t = TensorProto::decode(bytes.as_slice()).expect("decode");
    let dims = t.dims.iter().map(|&d| d as usize).collect();
    let raw = t.raw_data.clone().unwrap_or_default();
    let data = match DataType::try_from(t.data_type()).expect("type") {
        DataType::Float if raw.is_empty() => t.float_data.iter().map(|&v| v as f64).collect(),
        DataType::Float => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DataType::Int64 if raw.is_empty() => t.int64_data.iter().map(|&v| v as f64).collect(),
        DataType::Int64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{case}/{file}: type {other:?}"),
    };
    (dims, data)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Runs a node case with its labels (input 1) fed at run time as i32, every other input
/// fed as f32, on every device, against the case's expected outputs.
fn runtime_labels_match(case: &str) {
    let model = Model::load(node_case(case).join("model.onnx")).expect("load");
    let imported = model
        .import(&[], Weights::Constants)
        .unwrap_or_else(|e| panic!("{case}: import: {e}"));
    let outs: Vec<&Var> = imported.outputs.iter().map(|(_, v)| v).collect();
    for dev in devices() {
        let exe = dev.compile(&imported.graph, &outs, None).expect("compile");
        let feeds: Vec<(String, Tensor)> = imported
            .inputs
            .iter()
            .map(|name| {
                let j = model.inputs.iter().position(|i| &i.name == name).unwrap();
                let (dims, v) = read_pb(case, &format!("input_{j}.pb"));
                let t = if j == 1 {
                    let ints: Vec<i32> = v.iter().map(|&x| x as i32).collect();
                    Tensor::from_slice(&dev, &ints, &dims)
                } else {
                    Tensor::from_slice(&dev, &f32s(&v), &dims)
                };
                (name.clone(), t.expect("feed"))
            })
            .collect();
        let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let got = exe
            .run(&feeds)
            .unwrap_or_else(|e| panic!("{case}: run: {e}"));
        for (k, g) in got.iter().enumerate() {
            let (dims, want) = read_pb(case, &format!("output_{k}.pb"));
            assert_eq!(g.shape(), dims.as_slice(), "{case} output {k}: shape");
            assert_close(
                &format!("{case} output {k} on {dev:?}"),
                &g.to_vec::<f32>().unwrap(),
                &f32s(&want),
                1e-6,
                1e-4,
            );
        }
    }
}

#[test]
fn runtime_labels_match_onnx_node_cases() {
    for case in [
        // SoftmaxCrossEntropyLoss: the fused cross-entropy, with ignore_index, with weights.
        "test_sce_mean",
        "test_sce_none_log_prob",
        "test_sce_mean_no_weight_ii_4d",
        "test_sce_NCd1d2d3_none_no_weight_negative_ii",
        "test_sce_NCd1d2d3d4d5_mean_weight",
        "test_sce_sum",
        // NegativeLogLikelihoodLoss: one-hot rows gathered at the labels.
        "test_nllloss_NCd1d2_reduction_mean",
        "test_nllloss_NCd1d2_with_weight_reduction_sum",
        "test_nllloss_NCd1d2d3d4d5_none_no_weight",
    ] {
        runtime_labels_match(case);
    }
}

fn node_var(g: &wgrad::Graph, name: &str) -> Var {
    let id = g
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, Op::Input(s) if s == name))
        .expect("input node");
    g.var(id).expect("var")
}

/// d loss / d scores through an imported SoftmaxCrossEntropyLoss (mean, class weights,
/// ignore_index, N-D) against central differences on the f64 CPU reference, with the labels
/// bound at import (the gather path) and fed at run time (the fused cross-entropy), and the
/// GPU's gradient against the CPU's.
#[test]
fn loss_gradient_wrt_scores_matches_finite_differences() {
    for (case, runtime) in [
        ("test_sce_mean_weight_ii_3d", false),
        ("test_nllloss_NCd1d2_with_weight_reduction_mean", false),
        ("test_sce_mean_weight", true),
        ("test_sce_mean_no_weight_ii_3d", true),
    ] {
        let model = Model::load(node_case(case).join("model.onnx")).expect("load");
        let (ldims, labels) = read_pb(case, "input_1.pb");
        let labels: Vec<i32> = labels.iter().map(|&x| x as i32).collect();
        let mut proto = model.proto.clone();
        if !runtime {
            let graph = proto.graph.as_mut().unwrap();
            let bytes = std::fs::read(node_case(case).join("test_data_set_0/input_1.pb")).unwrap();
            let mut t = TensorProto::decode(bytes.as_slice()).unwrap();
            t.name = Some(model.inputs[1].name.clone());
            graph.initializer.push(t);
        }
        let bound = Model::from_bytes(&proto.encode_to_vec()).expect("model");
        let imported = bound.import(&[], Weights::Constants).expect("import");
        let g = &imported.graph;
        let loss = &imported.outputs[0].1;
        let scores = node_var(g, &model.inputs[0].name);
        let grads = grad(loss, &[&scores]).expect("grad");
        let (sdims, s) = read_pb(case, "input_0.pb");
        let mut feeds = vec![(model.inputs[0].name.clone(), Feed::Real(s.clone(), sdims))];
        if runtime {
            feeds.push((model.inputs[1].name.clone(), Feed::Labels(labels, ldims)));
        }
        if model.inputs.len() > 2 {
            let (wd, w) = read_pb(case, "input_2.pb");
            feeds.push((model.inputs[2].name.clone(), Feed::Fixed(w, wd)));
        }
        let d = check_finite_differences(case, g, loss, &grads, &feeds);
        // A mean's gradient is spread over every position: its total must not vanish.
        let total: f64 = d[0].iter().map(|v| v.abs()).sum();
        assert!(total > 1e-2, "{case}: vanishing ({total})");
        let mut per_device = Vec::new();
        for dev in devices() {
            let tensors: Vec<(String, Tensor)> = feeds
                .iter()
                .map(|(n, f)| {
                    let t = match f {
                        Feed::Real(v, s) | Feed::Fixed(v, s) => {
                            Tensor::from_slice(&dev, &f32s(v), s)
                        }
                        Feed::Labels(v, s) => Tensor::from_slice(&dev, v, s),
                    };
                    (n.clone(), t.unwrap())
                })
                .collect();
            let named: Vec<(&str, &Tensor)> =
                tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let exe = dev.compile(g, &[&grads[0]], None).expect("compile");
            per_device.push(exe.run(&named).expect("run")[0].to_vec::<f32>().unwrap());
        }
        if let [cpu, gpu] = &per_device[..] {
            assert_close(&format!("{case}: GPU vs CPU"), gpu, cpu, 1e-6, 1e-4);
        }
    }
}

/// Imports tests/fixtures/onnx/loss/`name`.onnx (no dims to bind) and returns its error.
fn import_error(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx/loss")
        .join(format!("{name}.onnx"));
    let model = Model::load(path).expect("load");
    match model.import(&[], Weights::Constants) {
        Ok(_) => panic!("{name}: import must fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_shapes_and_indices_are_errors_naming_the_op() {
    for (name, op, want) in [
        (
            "nll_bad_label",
            "NegativeLogLikelihoodLoss",
            "label 5 at position 1 outside 0..3",
        ),
        (
            "nll_bad_label_shape",
            "NegativeLogLikelihoodLoss",
            "labels [2, 3] must be the input [2, 3, 4]",
        ),
        (
            "sce_bad_weight",
            "SoftmaxCrossEntropyLoss",
            "weight [4] must be [C] = [3]",
        ),
        (
            "sce_bad_reduction",
            "SoftmaxCrossEntropyLoss",
            "reduction 'avg'",
        ),
        (
            "nll_runtime_ii",
            "NegativeLogLikelihoodLoss",
            "ignore_index -1 needs labels known at import",
        ),
        (
            "sce_runtime_weight_ii",
            "SoftmaxCrossEntropyLoss",
            "class weights with ignore_index -1",
        ),
        (
            "gather_elements_bad_index",
            "GatherElements",
            "index 3 outside -3..3 for axis 1 of data [2, 3]",
        ),
        (
            "gather_elements_runtime_index",
            "GatherElements",
            "must be known at import",
        ),
        (
            "gather_elements_bad_rank",
            "GatherElements",
            "indices [2] must have the rank of data [2, 3]",
        ),
        (
            "scatter_elements_bad_index",
            "ScatterElements",
            "index 2 outside -2..2 for axis 0 of data [2, 3]",
        ),
        (
            "scatter_elements_bad_updates",
            "ScatterElements",
            "updates [1, 2] must have the shape of indices [1, 3]",
        ),
        (
            "scatter_nd_bad_updates",
            "ScatterND",
            "updates [2, 2] must be [2, 3]",
        ),
        (
            "scatter_nd_bad_index",
            "ScatterND",
            "index 4 outside -4..4 for dim 0 of data [4, 3]",
        ),
        ("scatter_nd_bad_reduction", "ScatterND", "reduction 'avg'"),
        ("trilu_rank1", "Trilu", "input [4] needs rank >= 2"),
        (
            "cumsum_bad_axis",
            "CumSum",
            "axis 2 out of range for rank 2",
        ),
        ("cumsum_runtime_axis", "CumSum", "must be known at import"),
        ("topk_bad_k", "TopK", "k = 4 outside 0..=3"),
        (
            "rms_bad_scale",
            "RMSNormalization",
            "scale [4, 3] does not broadcast onto the normalised dims [3, 4]",
        ),
    ] {
        let msg = import_error(name);
        assert!(msg.contains(op) && msg.contains(want), "{name}: {msg}");
    }
}

/// The runtime-label NLL model of gen_loss.py imports (its numbers are checked on node
/// cases above), and a label outside 0..C fed at run time is an error when it runs, not a
/// silent 0.
#[test]
fn runtime_label_out_of_range_is_a_run_error() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/loss/nll_runtime.onnx");
    let imported = Model::load(path)
        .expect("load")
        .import(&[], Weights::Constants)
        .expect("import");
    let outs: Vec<&Var> = imported.outputs.iter().map(|(_, v)| v).collect();
    for dev in devices() {
        let exe = dev.compile(&imported.graph, &outs, None).expect("compile");
        let x = Tensor::from_slice(&dev, &[0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6], &[2, 3]).unwrap();
        let w = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], &[3]).unwrap();
        // −1 would wrap to class 2 in a gather: the labels are checked against 0..C.
        let t = Tensor::from_slice(&dev, &[1i32, -1], &[2]).unwrap();
        let r = exe
            .run(&[("x", &x), ("t", &t), ("w", &w)])
            .and_then(|o| o[0].to_vec::<f32>());
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("label -1 outside 0..3"), "{dev:?}: {msg}");
    }
}

/// CumSum, Trilu and TopK on float graph values (the node cases run them on integer
/// constants, folded at import, or on DOUBLE inputs), against onnxruntime
/// (tests/fixtures/onnx/gen_index.py): the scan on an axis of 37 in every mode and on 1000
/// elements, Trilu with infinities in the discarded triangle, TopK with ties and -inf.
#[test]
fn cumsum_trilu_topk_on_graph_values_match_onnxruntime() {
    common::onnx::check_fixture("index", "cumsum", &[], Weights::Constants, 1e-5, 1e-5);
    common::onnx::check_fixture("index", "cumsum_long", &[], Weights::Constants, 1e-4, 1e-5);
    common::onnx::check_fixture("index", "trilu", &[], Weights::Constants, 0.0, 0.0);
    common::onnx::check_fixture("index", "topk", &[], Weights::Constants, 0.0, 0.0);
}

/// OneHot with depth known at import: constant indices (negative, out of range) and float
/// indices fed at run time (negative, fractional, out of range), against onnxruntime.
#[test]
fn one_hot_matches_onnxruntime() {
    common::onnx::check_fixture("index", "onehot_const", &[], Weights::Constants, 0.0, 0.0);
    common::onnx::check_fixture("index", "onehot_runtime", &[], Weights::Constants, 0.0, 0.0);
}
