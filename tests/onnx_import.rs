//! ONNX import: models written by tests/fixtures/onnx/generate.py with the `onnx` helper
//! API, run on the GPU and the CPU reference and compared with onnxruntime's outputs
//! (stored as .npy); gradients through an imported MLP; bad files.

mod common;

use std::path::PathBuf;

use common::{assert_close, devices};
use wgrad::onnx::{Dim, Model, Weights};
use wgrad::{io::read_npy, Sgd};

fn fixture(name: &str) -> PathBuf {
    common::onnx::fixture_in("", name)
}

/// `name.onnx` in the top fixture folder against onnxruntime, to 1e-5 + 1e-4·|ref|.
fn check_against_onnxruntime(name: &str, dims: &[(&str, usize)], weights: Weights) {
    common::onnx::check_fixture("", name, dims, weights, 1e-5, 1e-4);
}

#[test]
fn mlp_matches_onnxruntime() {
    check_against_onnxruntime("mlp", &[("N", 5)], Weights::Params);
    check_against_onnxruntime("mlp", &[("N", 5)], Weights::Constants);
}

#[test]
fn layout_and_elementwise_ops_match_onnxruntime() {
    check_against_onnxruntime("layout", &[], Weights::Params);
}

#[test]
fn opset11_softmax_flattens_at_axis() {
    check_against_onnxruntime("softmax11", &[], Weights::Constants);
}

#[test]
fn half_precision_initializers_widen_exactly() {
    // FLOAT16 in raw_data and in int32_data, BFLOAT16 (one value near its largest), each
    // cast to FLOAT as exporters write it: onnxruntime's outputs to 1e-4.
    check_against_onnxruntime("half_weights", &[], Weights::Params);
    let model = Model::load(fixture("half_weights.onnx")).unwrap();
    let bf = model.initializers.iter().find(|i| i.name == "bbf").unwrap();
    // -3.0e38 rounds to the bfloat16 0xff62 = -3.0001e38 (bits << 16 as f32).
    match &bf.data {
        wgrad::onnx::TensorData::F32(v) => assert_eq!(v[1].to_bits(), 0xff62_0000, "{v:?}"),
        other => panic!("expected f32 values, got {other:?}"),
    }
}

#[test]
fn model_metadata() {
    let model = Model::load(fixture("mlp.onnx")).expect("load");
    assert_eq!(model.opset, 13);
    assert_eq!(model.inputs.len(), 1);
    assert_eq!(model.inputs[0].name, "x");
    assert_eq!(model.inputs[0].dtype, "FLOAT");
    assert_eq!(
        model.inputs[0].dims,
        Some(vec![Dim::Symbolic("N".into()), Dim::Fixed(4)])
    );
    assert_eq!(model.outputs[0].name, "probs");
    let names: Vec<_> = model.initializers.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    let imported = model.import(&[("N", 2)], Weights::Params).expect("import");
    assert_eq!(imported.params, names);
    assert_eq!(imported.inputs, ["x"]);
    assert_eq!(imported.outputs[0].1.shape(), &[2, 3]);
    let consts = model
        .import(&[("N", 2)], Weights::Constants)
        .expect("import");
    assert!(consts.params.is_empty());
}

#[test]
fn unbound_symbolic_dim_is_an_error_naming_it() {
    let model = Model::load(fixture("mlp.onnx")).expect("load");
    let e = model.import(&[], Weights::Params).err().expect("must fail");
    let msg = e.to_string();
    assert!(msg.contains("'N'") && msg.contains("mlp.onnx"), "{msg}");
}

/// Imported weights are ordinary parameters: one SGD step changes them, identically on the
/// GPU and the CPU reference.
#[test]
fn gradients_flow_through_imported_mlp() {
    let model = Model::load(fixture("mlp.onnx")).expect("load");
    let imported = model.import(&[("N", 5)], Weights::Params).expect("import");
    let probs = &imported.outputs[0].1;
    let loss = probs.square().and_then(|s| s.mean()).expect("loss");
    let mut after = Vec::new();
    for dev in devices() {
        let exe = dev
            .compile(&imported.graph, &[&loss], Sgd::new(1.0))
            .expect("compile");
        let x = read_npy(fixture("mlp.in.x.npy"), &dev).expect("npy");
        let before: Vec<Vec<f32>> = imported
            .params
            .iter()
            .map(|p| exe.param(p).and_then(|t| t.to_vec::<f32>()).expect("param"))
            .collect();
        exe.run(&[("x", &x)]).expect("step");
        let now: Vec<Vec<f32>> = imported
            .params
            .iter()
            .map(|p| exe.param(p).and_then(|t| t.to_vec::<f32>()).expect("param"))
            .collect();
        for ((name, b), n) in imported.params.iter().zip(&before).zip(&now) {
            assert!(
                b != n,
                "{name} did not change after one SGD step on {}",
                dev.name()
            );
        }
        after.push(now);
    }
    if let [gpu_params, cpu_params] = &after[..] {
        for ((name, g), c) in imported.params.iter().zip(gpu_params).zip(cpu_params) {
            assert_close(
                &format!("{name} after one step, GPU vs CPU"),
                g,
                c,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn empty_garbage_and_truncated_bytes_are_errors() {
    assert!(Model::from_bytes(&[]).is_err());
    assert!(Model::from_bytes(b"this is not an onnx model at all").is_err());
    assert!(Model::from_bytes(&[0xff; 64]).is_err());
    let bytes = std::fs::read(fixture("mlp.onnx")).expect("read");
    assert!(Model::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    // Every prefix decodes to an error or a model; neither decoding nor importing panics.
    for n in 0..bytes.len() {
        if let Ok(m) = Model::from_bytes(&bytes[..n]) {
            let _ = m.import(&[("N", 1)], Weights::Params);
        }
    }
    let e = Model::load(fixture("missing.onnx")).expect_err("missing file");
    assert!(e.to_string().contains("missing.onnx"), "{e}");
}

#[test]
fn unsupported_ops_are_listed_together() {
    let model = Model::load(fixture("unsupported.onnx")).expect("load");
    let msg = model
        .import(&[], Weights::Params)
        .err()
        .expect("must fail")
        .to_string();
    for part in [
        "Loop (node 'loop', opset 13)",
        "com.example::MyOp (node 'custom', opset 13)",
    ] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
    assert!(!msg.contains("'ok'"), "Relu is supported: {msg}");
}
