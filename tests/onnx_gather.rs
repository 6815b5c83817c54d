//! ONNX Gather on runtime values against onnxruntime: an embedding lookup with INT64 ids
//! fed as a graph input, INT32 ids, constant indices (initializer and scalar Constant) on
//! a computed value; models and expected outputs written by tests/fixtures/onnx/gen_gather.py
//! into tests/fixtures/onnx/gather/. Training through the embedding: GPU against the CPU
//! reference, and rows no id selects keep their values.

mod common;

use common::{assert_close, devices};
use wgrad::onnx::{Model, Weights};
use wgrad::{io::read_npy, Sgd};

fn check(name: &str, dims: &[(&str, usize)]) {
    for w in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("gather", name, dims, w, 1e-5, 1e-4);
    }
}

#[test]
fn embedding_lookup_with_int64_ids_matches_onnxruntime() {
    check("embedding", &[("B", 3)]);
}

#[test]
fn int32_ids_along_axis_1_match_onnxruntime() {
    check("int32_axis1", &[]);
}

#[test]
fn constant_indices_on_a_computed_value_match_onnxruntime() {
    check("const_indices", &[]);
}

#[test]
fn constant_index_out_of_range_is_an_import_error() {
    let model =
        Model::load(common::onnx::fixture_in("gather", "bad_const_index.onnx")).expect("load");
    let e = model.import(&[], Weights::Params).err().expect("must fail");
    let msg = e.to_string();
    assert!(msg.contains("index 5 outside -5..5"), "{msg}");
}

#[test]
fn int64_ids_become_an_i32_input() {
    let model = Model::load(common::onnx::fixture_in("gather", "embedding.onnx")).expect("load");
    assert_eq!(model.inputs[0].dtype, "INT64");
    let imported = model.import(&[("B", 3)], Weights::Params).expect("import");
    let id = imported
        .graph
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, wgrad::Op::Input(s) if s == "ids"))
        .expect("ids input");
    assert_eq!(imported.graph.nodes()[id].dtype, wgrad::DType::I32);
    assert_eq!(imported.graph.nodes()[id].shape, [3, 5]);
}

/// Three SGD steps on `mean(y²)` through the imported embedding: every parameter moves the
/// same on the GPU as on the CPU reference, and the table rows no id selects (3 and 7)
/// keep their values (their gradient is exactly 0), while the others move.
#[test]
fn training_through_the_embedding() {
    let model = Model::load(common::onnx::fixture_in("gather", "embedding.onnx")).expect("load");
    let imported = model.import(&[("B", 3)], Weights::Params).expect("import");
    let y = &imported.outputs[0].1;
    let loss = y.square().and_then(|s| s.mean()).expect("loss");
    let mut after = Vec::new();
    for dev in devices() {
        let exe = dev
            .compile(&imported.graph, &[&loss], Sgd::new(0.5))
            .expect("compile");
        let ids = read_npy(
            common::onnx::fixture_in("gather", "embedding.in.ids.npy"),
            &dev,
        )
        .expect("npy");
        let before = exe.param("table").unwrap().to_vec::<f32>().unwrap();
        // Three steps: the later ones replay the recorded plan.
        for _ in 0..3 {
            exe.run(&[("ids", &ids)]).expect("step");
        }
        let now: Vec<Vec<f32>> = imported
            .params
            .iter()
            .map(|p| exe.param(p).and_then(|t| t.to_vec::<f32>()).expect("param"))
            .collect();
        let table = &now[imported.params.iter().position(|p| p == "table").unwrap()];
        for row in 0..11 {
            let (b, n) = (&before[row * 6..row * 6 + 6], &table[row * 6..row * 6 + 6]);
            if row == 3 || row == 7 {
                assert_eq!(b, n, "unused row {row} moved on {}", dev.name());
            } else {
                assert_ne!(b, n, "row {row} did not move on {}", dev.name());
            }
        }
        after.push(now);
    }
    if let [gpu_params, cpu_params] = &after[..] {
        for ((name, g), c) in imported.params.iter().zip(gpu_params).zip(cpu_params) {
            assert_close(
                &format!("{name} after three steps, GPU vs CPU"),
                g,
                c,
                1e-5,
                1e-4,
            );
        }
    }
}
