//! ONNX convolution and pooling import: models written by tests/fixtures/onnx/gen_conv.py,
//! run on the GPU and the CPU reference and compared with onnxruntime's outputs; gradients
//! through an imported CNN (finite differences in f64, one SGD step GPU vs CPU); the
//! attribute values the importer refuses.

mod common;

use common::{assert_close, check_finite_differences, devices, Feed};
use wgrad::autodiff::grad;
use wgrad::onnx::{Model, Weights};
use wgrad::{io::read_npy, Device, Op, Sgd};

/// `conv/name.onnx` against onnxruntime with the weights as parameters and as constants.
fn check(name: &str) {
    for weights in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("conv", name, &[], weights, 1e-5, 1e-4);
    }
}

#[test]
fn conv2d_matches_onnxruntime() {
    // bias, pads, kernel_shape given (opset 11); per-axis strides and dilations with four
    // different pads; grouped; depthwise ×2 with SAME_UPPER; SAME_LOWER; VALID; 1x1.
    for name in [
        "conv2d_basic",
        "conv2d_asym",
        "conv2d_group",
        "conv2d_depthwise_same_upper",
        "conv2d_same_lower",
        "conv2d_valid",
        "conv2d_1x1",
    ] {
        check(name);
    }
}

#[test]
fn conv1d_matches_onnxruntime() {
    check("conv1d");
    check("conv1d_same_group");
}

#[test]
fn conv_transpose_matches_onnxruntime() {
    // plain with bias; strides, asymmetric pads, output_padding; grouped with dilation;
    // output_shape (inside and past the full output); SAME_UPPER / SAME_LOWER (odd total padding, and with dilations); depthwise
    // upsampling; 1-D.
    for name in [
        "convt2d_basic",
        "convt2d_stride_pads",
        "convt2d_group_dilation",
        "convt2d_output_shape",
        "convt2d_output_shape_extra",
        "convt2d_same_upper",
        "convt2d_same_lower",
        "convt2d_same_dilated",
        "convt2d_depthwise",
        "convt1d",
    ] {
        check(name);
    }
}

#[test]
fn max_pool_matches_onnxruntime() {
    // pads; dilations with four different pads; ceil_mode (a window dropped along H, one
    // running past the padding along W); SAME_UPPER and SAME_LOWER; 1-D with ceil_mode.
    for name in [
        "maxpool2d_basic",
        "maxpool2d_asym",
        "maxpool2d_ceil",
        "maxpool2d_same",
        "maxpool1d",
    ] {
        check(name);
    }
}

#[test]
fn average_pool_matches_onnxruntime() {
    // count_include_pad 0 and 1 with pads, ceil_mode (and ceil_mode without pads),
    // dilations with four different pads, SAME_UPPER / SAME_LOWER, VALID, 1-D.
    for name in [
        "avgpool2d_pads",
        "avgpool2d_ceil",
        "avgpool2d_asym",
        "avgpool2d_same",
        "avgpool2d_valid",
        "avgpool1d",
    ] {
        check(name);
    }
}

#[test]
fn global_pools_match_onnxruntime() {
    check("global_pools");
}

#[test]
fn convnet_matches_onnxruntime() {
    for weights in [Weights::Params, Weights::Constants] {
        common::onnx::check_fixture("conv", "convnet", &[("N", 3)], weights, 1e-5, 1e-4);
    }
}

fn convnet() -> Model {
    Model::load(common::onnx::fixture_in("conv", "convnet.onnx")).expect("load")
}

/// d loss / d x through Conv, MaxPool (padded), grouped Conv (asymmetric), AveragePool
/// (ceil_mode), ConvTranspose and GlobalAveragePool against f64 finite differences.
#[test]
fn convnet_input_gradient_matches_finite_differences() {
    let imported = convnet()
        .import(&[("N", 2)], Weights::Constants)
        .expect("import");
    let g = &imported.graph;
    let x_id = g
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, Op::Input(name) if name == "x"))
        .expect("input x");
    let x = g.var(x_id).unwrap();
    let logits = &imported.outputs[0].1;
    let loss = logits.square().and_then(|s| s.sum()).expect("loss");
    let dx = grad(&loss, &[&x]).expect("grad");
    // Inputs away from ReLU kinks and max ties: the fixture's x (first two samples).
    let xs = read_npy(
        common::onnx::fixture_in("conv", "convnet.in.x.npy"),
        &Device::cpu(),
    )
    .unwrap()
    .to_vec::<f32>()
    .unwrap();
    let shape = [2, 2, 7, 9];
    let xv = &xs[..shape.iter().product()];
    check_finite_differences(
        "imported convnet d/dx",
        g,
        &loss,
        &dx,
        &[("x".to_string(), Feed::real(xv, &shape))],
    );
}

/// Imported filters are parameters: one SGD step through every conv and pooling op changes
/// each of them, identically on the GPU and the CPU reference.
#[test]
fn convnet_parameters_train_alike_on_gpu_and_cpu() {
    let imported = convnet()
        .import(&[("N", 3)], Weights::Params)
        .expect("import");
    let loss = imported.outputs[0]
        .1
        .square()
        .and_then(|s| s.mean())
        .expect("loss");
    let mut after = Vec::new();
    for dev in devices() {
        let exe = dev
            .compile(&imported.graph, &[&loss], Sgd::new(0.5))
            .expect("compile");
        let x = read_npy(common::onnx::fixture_in("conv", "convnet.in.x.npy"), &dev).expect("npy");
        let read = |exe: &wgrad::Executor| -> Vec<Vec<f32>> {
            imported
                .params
                .iter()
                .map(|p| exe.param(p).and_then(|t| t.to_vec::<f32>()).expect("param"))
                .collect()
        };
        let before = read(&exe);
        exe.run(&[("x", &x)]).expect("step");
        let now = read(&exe);
        for ((name, b), n) in imported.params.iter().zip(&before).zip(&now) {
            assert!(b != n, "{name} did not change on {}", dev.name());
        }
        after.push(now);
    }
    if let [on_cpu, on_gpu] = &after[..] {
        for ((name, g), c) in imported.params.iter().zip(on_gpu).zip(on_cpu) {
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

/// The import error of `conv/name.onnx`, which must mention every part.
fn refused(name: &str, parts: &[&str]) {
    let model = Model::load(common::onnx::fixture_in("conv", &format!("{name}.onnx"))).unwrap();
    let msg = model
        .import(&[], Weights::Params)
        .err()
        .unwrap_or_else(|| panic!("{name}: import must fail"))
        .to_string();
    for p in parts {
        assert!(msg.contains(p), "{name}: '{p}' missing from: {msg}");
    }
}

#[test]
fn unsupported_attributes_are_clear_errors() {
    refused(
        "conv3d_bad_channels",
        &["Conv", "[1, 2, 3, 3, 3]", "[1, 1, 2, 2, 2]", "group 1"],
    );
    refused(
        "maxpool_indices",
        &["MaxPool", "Indices", "2^24", "[1, 1, 4097, 4097]"],
    );
    refused("maxpool_storage_order", &["MaxPool", "storage_order 2"]);
    refused("conv_same_dilated", &["SAME_UPPER", "dilations [2, 2]"]);
    refused("avgpool_valid_ceil", &["AveragePool", "VALID", "ceil_mode"]);
    refused(
        "convt_output_shape_too_large",
        &[
            "ConvTranspose",
            "[9, 9]",
            "[1, 1, 3, 3]",
            "below the strides",
        ],
    );
    refused(
        "convt_same_negative_pad",
        &["ConvTranspose", "SAME_UPPER", "6 outputs", "[1, 1, 3, 3]"],
    );
    refused(
        "conv_bad_channels",
        &["Conv", "[1, 3, 5, 5]", "[2, 2, 3, 3]"],
    );
    refused(
        "maxpool_padding_only_window",
        &["MaxPool", "no input element", "[1, 1, 4, 4]"],
    );
}
