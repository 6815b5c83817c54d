//! ONNX fixture checks shared by the tests/onnx_*.rs files: a model written by a committed
//! generator script, its feeds as `NAME.in.INPUT.npy` and onnxruntime's outputs as
//! `NAME.outI.npy`, all under tests/fixtures/onnx/<dir>.

use std::path::PathBuf;

use wgrad::onnx::{Model, Weights};
use wgrad::{io::read_npy, Device};

use super::{assert_close, devices};

/// The path of fixture `name` in tests/fixtures/onnx/`dir` (`""` for the folder itself).
pub fn fixture_in(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(dir)
        .join(name)
}

/// Imports `dir/name.onnx` with `dims` bound, runs it on the GPU and the CPU reference on
/// its `.in.` feeds and compares every output with onnxruntime's within `atol + rtol·|ref|`.
pub fn check_fixture(
    dir: &str,
    name: &str,
    dims: &[(&str, usize)],
    weights: Weights,
    atol: f32,
    rtol: f32,
) {
    let model = Model::load(fixture_in(dir, &format!("{name}.onnx"))).expect("load");
    let imported = model
        .import(dims, weights)
        .unwrap_or_else(|e| panic!("{name}: import: {e}"));
    let outs: Vec<_> = imported.outputs.iter().map(|(_, v)| v).collect();
    for dev in devices() {
        let exe = dev
            .compile(&imported.graph, &outs, None)
            .unwrap_or_else(|e| panic!("{name}: compile: {e}"));
        let feeds: Vec<(String, wgrad::Tensor)> = imported
            .inputs
            .iter()
            .map(|i| {
                let path = fixture_in(dir, &format!("{name}.in.{i}.npy"));
                (i.clone(), read_npy(&path, &dev).expect("npy"))
            })
            .collect();
        let feeds: Vec<(&str, &wgrad::Tensor)> =
            feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let got = exe
            .run(&feeds)
            .unwrap_or_else(|e| panic!("{name}: run: {e}"));
        assert_eq!(got.len(), imported.outputs.len());
        for (i, (out, (oname, var))) in got.iter().zip(&imported.outputs).enumerate() {
            let want = read_npy(
                fixture_in(dir, &format!("{name}.out{i}.npy")),
                &Device::cpu(),
            )
            .expect("expected npy");
            assert_eq!(out.shape(), want.shape(), "{name} output {oname}: shape");
            assert_eq!(
                var.shape(),
                want.shape(),
                "{name} output {oname}: var shape"
            );
            assert_close(
                &format!("{name} {oname} on {} ({weights:?})", dev.name()),
                &out.to_vec::<f32>().expect("read"),
                &want.to_vec::<f32>().expect("read"),
                atol,
                rtol,
            );
        }
    }
}

/// A scalar loss reaching every output of an imported graph: `Σ_k sum(y_k · r_k)` with
/// fixed pseudo-random weights `r_k` in [0.5, 1.5) (seed `seed + k`), so a gradient check
/// sees each output, and no two outputs' contributions cancel.
pub fn weighted_output_loss(
    graph: &wgrad::Graph,
    outputs: &[(String, wgrad::Var)],
    seed: u64,
) -> wgrad::Var {
    let mut loss: Option<wgrad::Var> = None;
    for (k, (_, y)) in outputs.iter().enumerate() {
        let n: usize = y.shape().iter().product();
        let r = wgrad::Tensor::from_slice(
            &Device::cpu(),
            &super::uniform(seed + k as u64, n, 0.5, 1.5),
            y.shape(),
        )
        .unwrap();
        let term = y.mul(&graph.constant(&r).unwrap()).unwrap().sum().unwrap();
        loss = Some(match loss {
            Some(l) => l.add(&term).unwrap(),
            None => term,
        });
    }
    loss.expect("the graph has outputs")
}

/// The input node named `name` of an imported graph, as a value to differentiate by.
pub fn input_var(g: &wgrad::Graph, name: &str) -> wgrad::Var {
    let id = g
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, wgrad::Op::Input(i) if i == name))
        .unwrap_or_else(|| panic!("no input {name}"));
    g.var(id).expect("var")
}
