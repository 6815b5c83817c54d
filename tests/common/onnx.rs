//! ONNX fixture checks shared by the tests/onnx_*.rs files: a model written by a committed
//! generator script, its feeds as `NAME.in.INPUT.npy` and onnxruntime's outputs as
//! `NAME.outI.npy`, all under tests/fixtures/onnx/<dir>.

use std::path::PathBuf;

use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::{io::read_npy, Device, Tensor, Var};

use super::{assert_close, check_finite_differences, devices, gpu, uniform, Feed};

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
/// Gradients of a weighted sum of fixture `dir/name`'s outputs with respect to every input, against
/// central finite differences on the f64 reference, and the GPU's against those.
pub fn check_input_gradients(dir: &str, name: &str) {
    let imported = Model::load(fixture_in(dir, &format!("{name}.onnx")))
        .expect("load")
        .import(&[], Weights::Params)
        .expect("import");
    let g = imported.graph.clone();
    let xs: Vec<Var> = imported.inputs.iter().map(|i| input_var(&g, i)).collect();
    let loss = weighted_output_loss(&g, &imported.outputs, 3);
    let grads = grad(&loss, &xs.iter().collect::<Vec<_>>()).expect("grad");
    let values: Vec<Vec<f32>> = xs
        .iter()
        .enumerate()
        .map(|(k, x)| uniform(40 + k as u64, x.shape().iter().product(), -1.5, 1.5))
        .collect();
    let feeds: Vec<(String, Feed)> = imported
        .inputs
        .iter()
        .zip(&xs)
        .zip(&values)
        .map(|((n, x), v)| (n.clone(), Feed::real(v, x.shape())))
        .collect();
    let analytic = check_finite_differences(name, &g, &loss, &grads, &feeds);
    for (k, a) in analytic.iter().enumerate() {
        assert!(a.iter().any(|&d| d.abs() > 1e-3), "{name}: d{k} vanishes");
    }
    let names: Vec<&str> = imported.inputs.iter().map(String::as_str).collect();
    assert_gpu_gradients(name, &g, &grads, &names, &xs, &values, &analytic);
}

/// The gradients `grads` of graph `g` compiled for the GPU (when one is present) and run on
/// the inputs `xs` (fed by `names`) at `values`, against the f64 reference's `analytic`.
pub fn assert_gpu_gradients(
    label: &str,
    g: &wgrad::Graph,
    grads: &[Var],
    names: &[&str],
    xs: &[Var],
    values: &[Vec<f32>],
    analytic: &[Vec<f64>],
) {
    let Some(dev) = gpu() else { return };
    let exe = dev
        .compile(g, &grads.iter().collect::<Vec<_>>(), None)
        .expect("compile");
    let tensors: Vec<Tensor> = xs
        .iter()
        .zip(values)
        .map(|(x, v)| Tensor::from_slice(&dev, v, x.shape()).expect("feed"))
        .collect();
    let feeds: Vec<(&str, &Tensor)> = names.iter().copied().zip(&tensors).collect();
    let got = exe.run(&feeds).expect("run");
    for (k, (t, a)) in got.iter().zip(analytic).enumerate() {
        let want: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        assert_close(
            &format!("{label} d{}, GPU vs f64 CPU", names[k]),
            &t.to_vec::<f32>().expect("read"),
            &want,
            1e-5,
            1e-4,
        );
    }
}

/// The import error of fixture `dir/name` with its integer initializer `init` replaced by
/// `values` (1-D).
pub fn import_error_with_ints(dir: &str, name: &str, init: &str, values: &[i64]) -> String {
    use prost::Message;
    let mut p = Model::load(fixture_in(dir, &format!("{name}.onnx")))
        .expect("load")
        .proto;
    for t in &mut p.graph.as_mut().expect("graph").initializer {
        if t.name() == init {
            t.dims = vec![values.len() as i64];
            t.int64_data.clear();
            t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        }
    }
    let m = Model::from_bytes(&p.encode_to_vec()).expect("decode");
    m.import(&[], Weights::Constants)
        .err()
        .expect("an error")
        .to_string()
}
