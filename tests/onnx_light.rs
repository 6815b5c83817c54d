//! The real-architecture `light_*` models of the onnx package's backend test data (Apache-2.0;
//! vendored in tests/fixtures/onnx/light by gen_light.py): AlexNet, DenseNet-121, Inception v1
//! and v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19 and ZFNet-512, imported whole.
//!
//! Each model runs twice: as shipped (every weight ConstantOfShape 0.02, so the expected
//! output is uniform), and with every ConstantOfShape weight replaced by pseudo-random values
//! against onnxruntime's output for the same values — a mistake that keeps the output uniform
//! would pass the first check alone. The hash is gen_light.py's, bit for bit.

mod common;

use common::onnx::fixture_in;
use common::{assert_close, gpu};
use prost::Message;
use wgrad::io::read_npy;
use wgrad::onnx::{proto, Model, TensorData, Weights};
use wgrad::{Device, Tensor};

/// gen_light.py's `hashed`: `f32(k) · 2⁻³²` for `k = (i·2654435761 + salt·40503 + 12345) mod 2³²`.
fn hashed(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let k = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt * 40_503 + 12_345)
                % (1 << 32);
            k as f32 * 2f32.powi(-32)
        })
        .collect()
}

/// gen_light.py's `weight`: (2u − 1)·√(3 / fan_in) for rank ≥ 2, u + 0.5 for vectors.
fn weight(dims: &[usize], salt: u64) -> Vec<f32> {
    let u = hashed(dims.iter().product(), salt);
    if dims.len() >= 2 {
        let fan_in = dims[1..].iter().product::<usize>() as f32;
        let s = (3.0f32 / fan_in).sqrt();
        u.into_iter().map(|u| (2.0 * u - 1.0) * s).collect()
    } else {
        u.into_iter().map(|u| u + 0.5).collect()
    }
}

/// The model with each ConstantOfShape weight replaced by a hashed FLOAT initializer.
fn randomized(model: &Model) -> Model {
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().expect("graph");
    let mut kept = Vec::new();
    for (idx, node) in graph.node.iter().enumerate() {
        if node.op_type() != "ConstantOfShape" {
            kept.push(node.clone());
            continue;
        }
        let shape = model
            .initializers
            .iter()
            .find(|i| i.name == node.input[0])
            .expect("shape initializer");
        let TensorData::I64(dims) = &shape.data else {
            panic!("shape {} is not INT64", shape.name)
        };
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let values = weight(&dims, idx as u64);
        graph.initializer.push(proto::TensorProto {
            name: Some(node.output[0].clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::tensor_proto::DataType::Float as i32),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
    }
    graph.node = kept;
    Model::from_bytes(&proto.encode_to_vec()).expect("re-encoded model")
}

/// Runs `model` on `x` on `dev` and compares its one output with `want`.
fn check(label: &str, model: &Model, x: &[f32], want: &Tensor, dev: &Device) {
    let imported = model
        .import(&[], Weights::Constants)
        .unwrap_or_else(|e| panic!("{label}: import: {e}"));
    let (_, out) = &imported.outputs[0];
    let exe = dev
        .compile(&imported.graph, &[out], None)
        .unwrap_or_else(|e| panic!("{label}: compile: {e}"));
    let feed = Tensor::from_slice(dev, x, &[1, 3, 224, 224]).expect("feed");
    let got = exe
        .run(&[(imported.inputs[0].as_str(), &feed)])
        .unwrap_or_else(|e| panic!("{label}: run: {e}"));
    assert_eq!(got[0].shape(), want.shape(), "{label}: output shape");
    assert_close(
        &format!("{label} on {}", dev.name()),
        &got[0].to_vec::<f32>().expect("read"),
        &want.to_vec::<f32>().expect("read"),
        1e-6,
        2e-3,
    );
}

fn run_model(name: &str, cpu_too: bool) {
    let model = Model::load(fixture_in("light", &format!("{name}.onnx"))).expect("load");
    let n = 3 * 224 * 224;
    // The onnx backend runner's input for these models: arange(n)/n, in f64 then rounded.
    let uniform_x: Vec<f32> = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
    let random_x: Vec<f32> = hashed(n, 0xDA7A)
        .into_iter()
        .map(|u| 2.0 * u - 1.0)
        .collect();
    let cpu = Device::cpu();
    let uniform_want = read_npy(
        fixture_in("light", &format!("{name}.uniform.out0.npy")),
        &cpu,
    )
    .expect("npy");
    let random_want = read_npy(
        fixture_in("light", &format!("{name}.random.out0.npy")),
        &cpu,
    )
    .expect("npy");
    let random = randomized(&model);
    let devices: Vec<Device> = gpu().into_iter().chain(cpu_too.then(Device::cpu)).collect();
    for dev in &devices {
        check(
            &format!("{name} (uniform)"),
            &model,
            &uniform_x,
            &uniform_want,
            dev,
        );
        check(
            &format!("{name} (random)"),
            &random,
            &random_x,
            &random_want,
            dev,
        );
    }
}

#[test]
fn squeezenet() {
    run_model("squeezenet", true);
}

#[test]
fn shufflenet() {
    run_model("shufflenet", true);
}

#[test]
fn resnet50() {
    run_model("resnet50", false);
}

#[test]
fn densenet121() {
    run_model("densenet121", false);
}

#[test]
fn inception_v1() {
    run_model("inception_v1", false);
}

#[test]
fn inception_v2() {
    run_model("inception_v2", false);
}

#[test]
fn bvlc_alexnet() {
    run_model("bvlc_alexnet", false);
}

#[test]
fn zfnet512() {
    run_model("zfnet512", false);
}

#[test]
fn vgg19() {
    run_model("vgg19", false);
}
