//! ONNX export: graphs written by `wgrad::onnx::export`, read back by wgrad's own importer
//! and run on the CPU reference and the GPU, against the native graph's outputs on the same
//! device. Ops the importer does not read yet are gated with `#[ignore = "needs …"]`; every
//! case is also checked by hand with onnxruntime:
//!
//!   cargo test --release --test onnx_export -- --ignored write_cases_for_onnxruntime
//!   /tmp/venv-onnx/bin/python tests/fixtures/onnx/check_export.py target/onnx-export
//!
//! Also: the export's structure (Conv / MaxPool / AveragePool recognised, only the outputs'
//! ancestors written, clear errors), and gradients through an imported (exported) MLP:
//! central differences on the f64 CPU reference, GPU against CPU.

mod common;

use common::{assert_close, check_finite_differences, devices, uniform, Feed};
use wgrad::nn::{models::digits_cnn, Module};
use wgrad::onnx::{export, ExportOptions, Model, Weights};
use wgrad::{BinaryOp, Conv2d, Device, Graph, Init, Optimizer, Tensor, UnaryOp, Var};

/// A graph to export: its inputs, named outputs, and seeded feeds for a batch of `n`.
struct Case {
    graph: Graph,
    inputs: Vec<Var>,
    outputs: Vec<(String, Var)>,
    feeds: Vec<(String, Vec<f32>, Vec<usize>)>,
}

impl Case {
    fn new(graph: &Graph) -> Case {
        Case {
            graph: graph.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            feeds: Vec::new(),
        }
    }

    /// An input `name` of `shape` fed values uniform in [lo, hi).
    fn input(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> Var {
        let v = self.graph.input(name, shape);
        let n = shape.iter().product();
        let seed = 7 + self.feeds.len() as u64;
        self.feeds
            .push((name.into(), uniform(seed, n, lo, hi), shape.to_vec()));
        self.inputs.push(v.clone());
        v
    }

    fn output(&mut self, name: &str, v: wgrad::Result<Var>) {
        self.outputs.push((name.into(), v.expect(name)));
    }

    fn tensors(&self, dev: &Device) -> Vec<(String, Tensor)> {
        self.feeds
            .iter()
            .map(|(n, v, s)| (n.clone(), Tensor::from_slice(dev, v, s).unwrap()))
            .collect()
    }

    /// The native graph's outputs on `dev` (parameters at their initial values).
    fn native(&self, dev: &Device) -> Vec<Vec<f32>> {
        let outs: Vec<&Var> = self.outputs.iter().map(|o| &o.1).collect();
        let exe = dev.compile(&self.graph, &outs, None).expect("compile");
        run(&exe, &self.tensors(dev))
    }

    /// The ONNX bytes, parameters read back from an executor compiled on the CPU.
    fn export(&self, options: &ExportOptions) -> Vec<u8> {
        let outs: Vec<&Var> = self.outputs.iter().map(|o| &o.1).collect();
        let exe = Device::cpu()
            .compile(&self.graph, &outs, None)
            .expect("compile");
        let inputs: Vec<&Var> = self.inputs.iter().collect();
        let named: Vec<(&str, &Var)> = self.outputs.iter().map(|(n, v)| (n.as_str(), v)).collect();
        export(&self.graph, &inputs, &named, &exe, options).expect("export")
    }
}

fn run(exe: &wgrad::Executor, feeds: &[(String, Tensor)]) -> Vec<Vec<f32>> {
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    exe.run(&named)
        .expect("run")
        .iter()
        .map(|t| t.to_vec::<f32>().unwrap())
        .collect()
}

/// A case at a batch size.
type Build = fn(usize) -> Case;

/// Exports `build(n_export)` (with a symbolic batch "N" when `batch`), imports it with N
/// bound to `n_run`, and compares it with the native `build(n_run)` on every device.
fn round_trip(label: &str, build: Build, batch: bool) {
    let (n_export, n_run) = if batch { (3, 5) } else { (4, 4) };
    let options = if batch {
        ExportOptions::batch("N")
    } else {
        ExportOptions::fixed()
    };
    let bytes = build(n_export).export(&options);
    let model = Model::from_bytes(&bytes).expect("decode");
    assert_eq!(model.opset, 17);
    let reference = build(n_run);
    for weights in [Weights::Params, Weights::Constants] {
        let imported = model
            .import(&[("N", n_run)], weights)
            .unwrap_or_else(|e| panic!("{label}: import: {e}"));
        let names: Vec<&str> = imported.outputs.iter().map(|o| o.0.as_str()).collect();
        let want_names: Vec<&str> = reference.outputs.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(names, want_names, "{label}: output names");
        let outs: Vec<&Var> = imported.outputs.iter().map(|o| &o.1).collect();
        for dev in devices() {
            let want = reference.native(&dev);
            let exe = dev.compile(&imported.graph, &outs, None).expect("compile");
            let got = run(&exe, &reference.tensors(&dev));
            for ((name, _), (g, w)) in reference.outputs.iter().zip(got.iter().zip(&want)) {
                assert_close(
                    &format!("{label} {name} on {} ({weights:?})", dev.name()),
                    g,
                    w,
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

/// The op types of an exported model, in order.
fn op_types(bytes: &[u8]) -> Vec<String> {
    let model = Model::from_bytes(bytes).expect("decode");
    model
        .proto
        .graph
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}

// ---------------------------------------------------------------- cases

/// x (n, 4) → linear 4→8 → ReLU → linear 8→3 → softmax.
fn mlp(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 4], -1.0, 1.0);
    let w1 = g.param("fc1.weight", &[4, 8], Init::XavierUniform { seed: 1 });
    let b1 = g.param(
        "fc1.bias",
        &[8],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 2,
        },
    );
    let w2 = g.param("fc2.weight", &[8, 3], Init::XavierUniform { seed: 3 });
    let b2 = g.param(
        "fc2.bias",
        &[3],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 4,
        },
    );
    let h = x.matmul(&w1).unwrap().add(&b1).unwrap().relu().unwrap();
    c.output("probs", h.matmul(&w2).and_then(|y| y.add(&b2)?.softmax(-1)));
    c
}

/// Element-wise ops the importer reads today: unary, binary, scalar (both sides),
/// constants, square.
fn elementwise(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 6], -2.0, 2.0);
    let k =
        Tensor::from_slice(&Device::cpu(), &[0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5], &[6]).unwrap();
    let k = g.constant(&k).unwrap();
    let full = g.full(0.25, &[1, 6]);
    let pos = x.neg().and_then(|v| v.abs()?.add_scalar(0.5)).unwrap();
    c.output("log", pos.log());
    c.output("exp_sqrt", x.exp().and_then(|v| v.sqrt()));
    c.output("sig_tanh", x.sigmoid().and_then(|s| s.mul(&x.tanh()?)));
    c.output(
        "relu_sq",
        x.relu()
            .and_then(|r| r.square()?.sub(&k)?.div(&pos)?.mul(&full)),
    );
    c.output(
        "scalars",
        pos.scalar(BinaryOp::Div, 1.0, true).and_then(|v| {
            v.scalar(BinaryOp::Sub, 2.0, true)?
                .mul_scalar(3.0)?
                .add_scalar(-1.0)
        }),
    );
    c
}

/// Layout, products and softmax: permute, reshape, batched matmul with and without
/// transposes, 2-D matmul (Gemm) with transposes, softmax and log-softmax on inner axes.
fn layout(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 2, 3, 4], -1.0, 1.0);
    let w = g.param("w", &[8, 5], Init::XavierUniform { seed: 5 });
    let wt = g.param("wt", &[5, 24], Init::XavierUniform { seed: 6 });
    let p = x
        .permute(&[0, 2, 1, 3])
        .and_then(|v| v.reshape(&[n, 3, 8]))
        .unwrap();
    c.output("softmax1", p.softmax(1));
    c.output("logsoftmax", p.log_softmax(-1));
    c.output("batched", p.matmul(&w));
    c.output("batched_t", p.matmul_t(&p, true, false));
    c.output("batched_tt", p.matmul_t(&p, false, true));
    let flat = x.reshape(&[n, 24]).unwrap();
    c.output("gemm_tb", flat.matmul_t(&wt, false, true));
    c
}

/// 2-D products with `A` transposed (a batch cannot be contracted, so fixed sizes).
fn gemm_transposes(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 3], -1.0, 1.0);
    let y = c.input("y", &[n, 5], -1.0, 1.0);
    c.output("xt_y", x.matmul_t(&y, true, false));
    c.output("xt_yt", x.matmul_t(&y.transpose().unwrap(), true, true));
    c
}

/// GELU, max/min/pow, comparisons, reductions (needs the math import: Erf, Max, Min, Pow,
/// Equal/Less/…, Not, Reduce*).
fn math(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 3, 5], -2.0, 2.0);
    let y = c.input("y", &[n, 3, 5], -2.0, 2.0);
    c.output("gelu", x.gelu());
    c.output("max", x.maximum(&y));
    c.output("min", x.minimum(&y));
    c.output("pow", x.abs().and_then(|a| a.add_scalar(0.5)?.pow(&y)));
    for (name, op) in [
        ("eq", BinaryOp::Eq),
        ("ne", BinaryOp::Ne),
        ("lt", BinaryOp::Lt),
        ("le", BinaryOp::Le),
        ("gt", BinaryOp::Gt),
        ("ge", BinaryOp::Ge),
    ] {
        // Both sides are 0 where x and y are negative, so equal values occur.
        c.output(name, x.relu().and_then(|a| a.binary(&y.relu()?, op)));
    }
    c.output("max_scalar", x.scalar(BinaryOp::Maximum, 0.3, false));
    for (name, op) in [
        ("erf", UnaryOp::Erf),
        ("floor", UnaryOp::Floor),
        ("ceil", UnaryOp::Ceil),
    ] {
        c.output(name, x.mul_scalar(1.7).and_then(|v| v.unary(op)));
    }
    c.output("log1p", x.abs().and_then(|a| a.unary(UnaryOp::Log1p)));
    c.output("sum1", x.sum_axis(1, false));
    c.output("mean2", x.mean_axis(2, true));
    c.output("max1", x.max_axis(1, false));
    c.output("min2", x.reduce(wgrad::ReduceOp::Min, 2, false));
    c.output("sum_all", x.sum());
    c.output("mean_all", x.mean());
    c
}

/// `x` kept where `y` is non-zero (or zero), else 0: Cast to BOOL and Where.
fn keep_where(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 4], -2.0, 2.0);
    let y = c.input("y", &[n, 4], -2.0, 2.0);
    let mask = y.relu().unwrap();
    c.output("keep_where", x.binary(&mask, BinaryOp::KeepWhere));
    c.output("keep_where_not", x.binary(&mask, BinaryOp::KeepWhereNot));
    c
}

/// Broadcast, sum-to, slice, concat (needs the shape import: Expand, Slice, Concat; and
/// ReduceSum from the math import).
fn shape_ops(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 1, 4], -1.0, 1.0);
    let y = c.input("y", &[n, 3, 4], -1.0, 1.0);
    let b = g.param(
        "b",
        &[3, 1],
        Init::Uniform {
            lo: -1.0,
            hi: 1.0,
            seed: 9,
        },
    );
    c.output("expand", x.broadcast_to(&[n, 3, 4]));
    // (A parameter broadcast to the batch size itself would fix the batch: refused.)
    c.output(
        "expand_param",
        b.broadcast_to(&[1, 3, 4]).and_then(|v| v.add(&y)),
    );
    c.output("sum_to", y.sum_to(&[3, 1]));
    c.output("sum_to_keep", y.sum_to(&[n, 1, 4]));
    c.output("slice", y.slice(1, 1, 3));
    c.output("slice_last", y.slice(-1, 0, 1));
    c.output("concat", Var::concat(&[&x, &y, &x], 1));
    c
}

/// Convolutions (dense, grouped, strided, padded, dilated) and pooling (needs the conv
/// import: Conv, MaxPool, AveragePool).
fn conv(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 4, 9, 7], -1.0, 1.0);
    let w = g.param("w", &[6, 4, 3, 3], Init::KaimingNormal { seed: 11 });
    let wg = g.param("wg", &[6, 2, 3, 2], Init::KaimingNormal { seed: 12 });
    c.output("conv", x.conv2d(&w, Conv2d::new(3, 3).padding(1)));
    c.output(
        "conv_s2_d2",
        x.conv2d(&w, Conv2d::new(3, 3).stride(2).dilation(2).padding(2)),
    );
    c.output(
        "conv_grouped",
        x.conv2d(&wg, Conv2d::new(3, 2).groups(2).stride(2)),
    );
    // 1×1, stride 1: recorded as a plain product (no im2col), still exported as one Conv.
    let w1 = g.param("w1", &[5, 4, 1, 1], Init::KaimingNormal { seed: 14 });
    c.output("conv_1x1", x.conv2d(&w1, Conv2d::new(1, 1)));
    c.output("max_pool", x.max_pool2d(2, 2));
    c.output(
        "max_pool_pad",
        x.max_pool2d_window(Conv2d::new(3, 3).stride(2).padding(1)),
    );
    c.output(
        "max_pool_dil",
        x.max_pool2d_window(Conv2d::new(2, 2).dilation(2)),
    );
    c.output(
        "avg_pool",
        x.avg_pool2d_window(Conv2d::new(3, 2).stride(2).padding(1)),
    );
    c.output(
        "avg_pool_dil",
        x.avg_pool2d_window(Conv2d::new(2, 2).dilation(2)),
    );
    c.output("im2col", x.im2col(Conv2d::new(2, 3).stride(2).padding(1)));
    c
}

/// Asymmetric padding, per-axis strides and dilations; pooling in ceil mode and average
/// pooling that counts only real taps (needs the conv import: Conv, MaxPool; the pools that
/// no ONNX pool expresses exactly are written as one-hot taps and reductions).
fn pool_variants(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let x = c.input("x", &[n, 3, 8, 7], -1.0, 1.0);
    let w = g.param("w", &[4, 3, 2, 3], Init::KaimingNormal { seed: 13 });
    let asym = Conv2d::new(2, 3)
        .pads(1, 0, 2, 1)
        .strides(2, 1)
        .dilations(1, 2);
    c.output("conv_asym", x.conv2d(&w, asym));
    c.output(
        "max_asym",
        x.max_pool2d_window(Conv2d::new(2, 3).pads(1, 0, 0, 1).strides(1, 2)),
    );
    c.output(
        "max_ceil",
        x.max_pool2d_with(Conv2d::new(3, 3).stride(2), true),
    );
    c.output(
        "avg_ceil",
        x.avg_pool2d_with(Conv2d::new(3, 2).stride(2), true, true),
    );
    c.output(
        "avg_real_taps",
        x.avg_pool2d_with(Conv2d::new(3, 3).padding(1), false, false),
    );
    c.output(
        "avg_pad_dil",
        x.avg_pool2d_with(Conv2d::new(2, 2).padding(1).dilation(2), false, true),
    );
    c
}

/// The digits CNN in evaluation mode (batch norm with its running statistics, no dropout);
/// parameters from `digits_trained`.
fn digits(n: usize) -> Case {
    let g = Graph::new();
    let mut c = Case::new(&g);
    let model = digits_cnn(&g, false).unwrap();
    let x = c.input("x", &[n, 1, 8, 8], 0.0, 1.0);
    c.output("logits", model.forward(&x));
    c
}

/// A few Adam steps of the digits CNN in training mode on random data, so the batch norm
/// statistics and weights are not their initial values; returns the executor holding them.
fn digits_trained() -> (wgrad::Executor, Vec<String>) {
    let g = Graph::new();
    let model = digits_cnn(&g, true).unwrap();
    let n = 16;
    let logits = model.forward(&g.input("x", &[n, 1, 8, 8])).unwrap();
    let loss = logits
        .cross_entropy(&g.input_i32("y", &[n]))
        .and_then(|l| l.mean())
        .unwrap();
    let dev = Device::cpu();
    let step = dev.compile(&g, &[&loss], Optimizer::adam(1e-2)).unwrap();
    for s in 0..3 {
        let x =
            Tensor::from_slice(&dev, &uniform(100 + s, n * 64, 0.0, 1.0), &[n, 1, 8, 8]).unwrap();
        let y: Vec<i32> = (0..n as i32).map(|i| (i * 7 + s as i32) % 10).collect();
        let y = Tensor::from_slice(&dev, &y, &[n]).unwrap();
        step.run(&[("x", &x), ("y", &y)]).unwrap();
    }
    (step, model.saved_names())
}

/// Exports the trained digits CNN (symbolic batch) and checks it against the native eval
/// graph with the same values, batch `n_run`, on every device.
fn digits_round_trip(n_export: usize, n_run: usize) {
    let (step, names) = digits_trained();
    let case = digits(n_export);
    let inputs: Vec<&Var> = case.inputs.iter().collect();
    let bytes = export(
        &case.graph,
        &inputs,
        &[("logits", &case.outputs[0].1)],
        &step,
        &ExportOptions::batch("N"),
    )
    .expect("export");
    let ops = op_types(&bytes);
    assert_eq!(ops.iter().filter(|o| *o == "Conv").count(), 2, "{ops:?}");
    let model = Model::from_bytes(&bytes).unwrap();
    let imported = model
        .import(&[("N", n_run)], Weights::Params)
        .expect("import");
    let reference = digits(n_run);
    for dev in devices() {
        let exe = dev
            .compile(&reference.graph, &[&reference.outputs[0].1], None)
            .unwrap();
        for name in &names {
            exe.set_param(name, &step.param(name).unwrap()).unwrap();
        }
        let want = run(&exe, &reference.tensors(&dev));
        let got_exe = dev
            .compile(&imported.graph, &[&imported.outputs[0].1], None)
            .unwrap();
        let got = run(&got_exe, &reference.tensors(&dev));
        assert_close(
            &format!("digits logits on {}", dev.name()),
            &got[0],
            &want[0],
            1e-4,
            1e-4,
        );
    }
}

// ---------------------------------------------------------------- round trips

#[test]
fn mlp_with_softmax_round_trips() {
    round_trip("mlp fixed", mlp, false);
    round_trip("mlp batch N", mlp, true);
}

#[test]
fn elementwise_ops_round_trip() {
    round_trip("elementwise", elementwise, true);
}

#[test]
fn layout_and_products_round_trip() {
    round_trip("layout", layout, true);
    round_trip("gemm transposes", gemm_transposes, false);
}

#[test]
fn math_ops_round_trip() {
    round_trip("math", math, true);
}

#[test]
fn shape_ops_round_trip() {
    round_trip("shape", shape_ops, true);
}

#[test]
fn conv_and_pool_round_trip() {
    round_trip("conv", conv, true);
}

#[test]
fn keep_where_round_trips() {
    round_trip("keep_where", keep_where, true);
}

#[test]
fn pool_variants_round_trip() {
    round_trip("pool variants", pool_variants, true);
}

#[test]
fn digits_cnn_round_trips_in_eval_mode() {
    digits_round_trip(4, 7);
}

/// Dropout is the identity at inference: the export of `relu(dropout(x))` computes `relu(x)`.
#[test]
fn dropout_is_exported_as_identity() {
    let g = Graph::new();
    let x = g.input("x", &[3, 5]);
    let step = g.step_counter("drop.step").unwrap();
    let dropped = x.dropout(0.5, 3, &step).and_then(|d| d.relu()).unwrap();
    let bytes = export(
        &g,
        &[&x],
        &[("y", &dropped)],
        &|_: &str| None,
        &ExportOptions::fixed(),
    )
    .expect("export");
    assert!(op_types(&bytes).contains(&"Identity".to_string()));
    let model = Model::from_bytes(&bytes).unwrap();
    assert!(
        model.initializers.is_empty(),
        "the step counter is not needed"
    );
    let imported = model.import(&[], Weights::Params).unwrap();
    let data = uniform(3, 15, -1.0, 1.0);
    let dev = Device::cpu();
    let exe = dev
        .compile(&imported.graph, &[&imported.outputs[0].1], None)
        .unwrap();
    let xt = Tensor::from_slice(&dev, &data, &[3, 5]).unwrap();
    let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
    let want: Vec<f32> = data.iter().map(|v| v.max(0.0)).collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- structure

#[test]
fn conv_and_pool_compositions_become_single_operators() {
    let bytes = conv(2).export(&ExportOptions::batch("N"));
    let ops = op_types(&bytes);
    let count = |op: &str| ops.iter().filter(|o| *o == op).count();
    // Four convolutions, plus the one-hot convolutions of the bare im2col and of the
    // dilated average pool (AveragePool has no dilations at opset 17: taps + ReduceMean).
    assert_eq!(count("Conv"), 6, "{ops:?}");
    assert_eq!(count("MaxPool"), 3, "{ops:?}");
    assert_eq!(count("AveragePool"), 1, "{ops:?}");
    assert_eq!(count("ReduceMean"), 1, "{ops:?}");
    assert_eq!(count("MatMul") + count("Gemm"), 0, "{ops:?}");
    let model = Model::from_bytes(&bytes).unwrap();
    let graph = model.proto.graph.unwrap();
    let grouped = graph
        .node
        .iter()
        .find(|n| n.output[0] == "conv_grouped")
        .expect("grouped conv node");
    let group = grouped
        .attribute
        .iter()
        .find(|a| a.name() == "group")
        .unwrap();
    assert_eq!(group.i(), 2);
}

#[test]
fn only_the_outputs_ancestors_are_written() {
    let g = Graph::new();
    let x = g.input("x", &[4, 3]);
    let labels = g.input_i32("labels", &[4]);
    let w = g.param("w", &[3, 2], Init::XavierUniform { seed: 1 });
    let unused = g.param("unused", &[7], Init::Zeros);
    let logits = x.matmul(&w).unwrap();
    let loss = logits
        .cross_entropy(&labels)
        .and_then(|l| l.mean())
        .unwrap();
    let _other = unused.square().unwrap();
    let bytes = export(
        &g,
        &[&x],
        &[("logits", &logits)],
        &|_: &str| None,
        &ExportOptions::fixed(),
    )
    .expect("export");
    let model = Model::from_bytes(&bytes).unwrap();
    let names: Vec<&str> = model.initializers.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["w"]);
    assert_eq!(op_types(&bytes), ["Gemm"]);
    // The loss itself is a training op: a clear error naming it.
    let e = export(
        &g,
        &[&x],
        &[("loss", &loss)],
        &|_: &str| None,
        &ExportOptions::fixed(),
    )
    .expect_err("cross-entropy must be refused")
    .to_string();
    assert!(e.contains("cross_entropy"), "{e}");
}

#[test]
fn bad_exports_are_clear_errors() {
    let g = Graph::new();
    let x = g.input("x", &[4, 6]);
    let y = g.input("y", &[4, 6]);
    let sum = x.add(&y).unwrap();
    let none = |_: &str| None;
    let fixed = ExportOptions::fixed();
    let msg = |r: wgrad::Result<Vec<u8>>| r.expect_err("must fail").to_string();
    let e = msg(export(&g, &[&x], &[("s", &sum)], &none, &fixed));
    assert!(e.contains("'y'") && e.contains("not listed"), "{e}");
    let e = msg(export(&g, &[&x, &sum], &[("s", &sum)], &none, &fixed));
    assert!(e.contains("not an input"), "{e}");
    // A symbolic batch cannot be reshaped away or sliced.
    let across = x.reshape(&[2, 12]).unwrap();
    let e = msg(export(
        &g,
        &[&x],
        &[("r", &across)],
        &none,
        &ExportOptions::batch("N"),
    ));
    assert!(e.contains("reshape") && e.contains("batch"), "{e}");
    let part = x.slice(0, 1, 3).unwrap();
    let e = msg(export(
        &g,
        &[&x],
        &[("p", &part)],
        &none,
        &ExportOptions::batch("N"),
    ));
    assert!(e.contains("slice"), "{e}");
    // ... but with fixed sizes they export.
    assert!(export(&g, &[&x], &[("r", &across), ("p", &part)], &none, &fixed).is_ok());
    // Parameter values of the wrong size.
    let w = g.param("w", &[6, 2], Init::Zeros);
    let out = x.matmul(&w).unwrap();
    let short = |_: &str| Some(vec![0.0f32; 5]);
    let e = msg(export(&g, &[&x], &[("o", &out)], &short, &fixed));
    assert!(e.contains("'w'") && e.contains("12"), "{e}");
    // Duplicate output names.
    let e = msg(export(
        &g,
        &[&x],
        &[("o", &out), ("o", &sum)],
        &none,
        &fixed,
    ));
    assert!(e.contains("twice"), "{e}");
}

/// An input or parameter asked for as an output, or one node under two names, goes
/// through Identity and reads back the same.
#[test]
fn outputs_that_are_inputs_or_repeated() {
    let g = Graph::new();
    let x = g.input("x", &[2, 3]);
    let w = g.param(
        "w",
        &[2, 3],
        Init::Uniform {
            lo: -1.0,
            hi: 1.0,
            seed: 4,
        },
    );
    let s = x.add(&w).unwrap();
    let outs = [("x_out", &x), ("w_out", &w), ("s", &s), ("s_again", &s)];
    let bytes = export(&g, &[&x], &outs, &|_: &str| None, &ExportOptions::fixed()).unwrap();
    let imported = Model::from_bytes(&bytes)
        .unwrap()
        .import(&[], Weights::Constants)
        .unwrap();
    let vars: Vec<&Var> = imported.outputs.iter().map(|o| &o.1).collect();
    let dev = Device::cpu();
    let exe = dev.compile(&imported.graph, &vars, None).unwrap();
    let data = uniform(5, 6, -1.0, 1.0);
    let got = run(
        &exe,
        &[(
            "x".into(),
            Tensor::from_slice(&dev, &data, &[2, 3]).unwrap(),
        )],
    );
    let wv = Init::Uniform {
        lo: -1.0,
        hi: 1.0,
        seed: 4,
    }
    .values(&[2, 3]);
    let sum: Vec<f32> = data.iter().zip(&wv).map(|(a, b)| a + b).collect();
    assert_eq!(got, [data, wv, sum.clone(), sum]);
}

// ---------------------------------------------------------------- gradients (issue item 7)

/// An exported tanh MLP, imported with trainable parameters: the loss's gradients with
/// respect to the input (central differences through `check_finite_differences`) and to
/// every imported parameter (central differences by hand), on the f64 CPU reference.
#[test]
fn gradients_through_an_imported_graph_match_finite_differences() {
    let (imported, loss) = imported_tanh_mlp();
    let x = imported.graph.var(input_id(&imported)).unwrap();
    let params: Vec<Var> = param_vars(&imported);
    let mut wrt: Vec<&Var> = vec![&x];
    wrt.extend(params.iter());
    let grads = wgrad::autodiff::grad(&loss, &wrt).expect("grad");
    let xdata = uniform(21, 3 * 4, -1.0, 1.0);
    let feeds = vec![("x".to_string(), Feed::real(&xdata, &[3, 4]))];
    check_finite_differences(
        "imported mlp: d/dx",
        &imported.graph,
        &loss,
        &grads[..1],
        &feeds,
    );

    // Parameters: perturb each element with set_param on the f64 device.
    let wide = Device::cpu_f64();
    let mut outs: Vec<&Var> = vec![&loss];
    outs.extend(grads[1..].iter());
    let exe = wide.compile(&imported.graph, &outs, None).unwrap();
    let xt = Tensor::from_f64(
        &wide,
        &xdata.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &[3, 4],
    )
    .unwrap();
    let all = exe.run(&[("x", &xt)]).unwrap();
    let h = 1e-4;
    for (k, name) in imported.params.iter().enumerate() {
        let base = exe.param(name).unwrap();
        let (shape, values) = (base.shape().to_vec(), base.to_vec_f64().unwrap());
        let analytic = all[k + 1].to_vec_f64().unwrap();
        let numeric: Vec<f64> = (0..values.len())
            .map(|e| {
                let at = |v: f64| {
                    let mut p = values.clone();
                    p[e] = v;
                    exe.set_param(name, &Tensor::from_f64(&wide, &p, &shape).unwrap())
                        .unwrap();
                    exe.run(&[("x", &xt)]).unwrap()[0].to_vec_f64().unwrap()[0]
                };
                let d = (at(values[e] + h) - at(values[e] - h)) / (2.0 * h);
                at(values[e]);
                d
            })
            .collect();
        common::assert_close_f64(
            &format!("imported mlp: d/d{name} vs finite differences (f64)"),
            &analytic,
            &numeric,
            1e-6,
            1e-6,
        );
    }
}

/// The same gradients on the GPU and the CPU reference.
#[test]
fn gradients_through_an_imported_graph_gpu_matches_cpu() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let (imported, loss) = imported_tanh_mlp();
    let params = param_vars(&imported);
    let wrt: Vec<&Var> = params.iter().collect();
    let grads = wgrad::autodiff::grad(&loss, &wrt).expect("grad");
    let mut outs: Vec<&Var> = vec![&loss];
    outs.extend(grads.iter());
    let xdata = uniform(22, 3 * 4, -1.0, 1.0);
    let results: Vec<Vec<Vec<f32>>> = [Device::cpu(), gpu]
        .iter()
        .map(|dev| {
            let exe = dev.compile(&imported.graph, &outs, None).unwrap();
            run(
                &exe,
                &[(
                    "x".into(),
                    Tensor::from_slice(dev, &xdata, &[3, 4]).unwrap(),
                )],
            )
        })
        .collect();
    for (i, (c, g)) in results[0].iter().zip(&results[1]).enumerate() {
        assert_close(&format!("output {i}: GPU vs CPU"), g, c, 1e-5, 1e-4);
    }
}

/// `mean(softmax(tanh(x·w1 + b1)·w2 + b2)²)` exported with a batch dim, imported at batch 3.
fn imported_tanh_mlp() -> (wgrad::onnx::Imported, Var) {
    let g = Graph::new();
    let x = g.input("x", &[2, 4]);
    let w1 = g.param("w1", &[4, 5], Init::XavierUniform { seed: 31 });
    let b1 = g.param(
        "b1",
        &[5],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 32,
        },
    );
    let w2 = g.param("w2", &[5, 3], Init::XavierUniform { seed: 33 });
    let b2 = g.param(
        "b2",
        &[3],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 34,
        },
    );
    let y = x
        .matmul(&w1)
        .and_then(|h| h.add(&b1)?.tanh()?.matmul(&w2)?.add(&b2)?.softmax(-1))
        .unwrap();
    let bytes = export(
        &g,
        &[&x],
        &[("y", &y)],
        &|_: &str| None,
        &ExportOptions::batch("N"),
    )
    .unwrap();
    let imported = Model::from_bytes(&bytes)
        .unwrap()
        .import(&[("N", 3)], Weights::Params)
        .unwrap();
    assert_eq!(imported.params, ["w1", "b1", "w2", "b2"]);
    let loss = imported.outputs[0]
        .1
        .square()
        .and_then(|s| s.mean())
        .unwrap();
    (imported, loss)
}

fn input_id(imported: &wgrad::onnx::Imported) -> usize {
    imported
        .graph
        .nodes()
        .iter()
        .position(|n| matches!(&n.op, wgrad::Op::Input(name) if name == "x"))
        .unwrap()
}

fn param_vars(imported: &wgrad::onnx::Imported) -> Vec<Var> {
    let nodes = imported.graph.nodes();
    imported
        .params
        .iter()
        .map(|p| {
            let id = nodes
                .iter()
                .position(|n| matches!(&n.op, wgrad::Op::Param(name, _) if name == p))
                .unwrap();
            imported.graph.var(id).unwrap()
        })
        .collect()
}

// ---------------------------------------------------------------- onnxruntime (by hand)

/// Writes every case as `NAME.onnx` (symbolic batch, exported at batch 3 where it has one)
/// with feeds `NAME.in.INPUT.npy` and the native CPU outputs `NAME.outI.npy` at batch 5, for
/// tests/fixtures/onnx/check_export.py; the directory is `WGRAD_EXPORT_DIR` or
/// target/onnx-export.
#[test]
#[ignore = "writes files for the onnxruntime check, run by hand"]
fn write_cases_for_onnxruntime() {
    let dir = std::env::var("WGRAD_EXPORT_DIR")
        .unwrap_or_else(|_| format!("{}/target/onnx-export", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, Build, bool); 10] = [
        ("keep_where", keep_where, true),
        ("pool_variants", pool_variants, true),
        ("mlp", mlp, true),
        ("elementwise", elementwise, true),
        ("layout", layout, true),
        ("gemm_transposes", gemm_transposes, false),
        ("math", math, true),
        ("shape_ops", shape_ops, true),
        ("conv", conv, true),
        ("digits_init", digits, true),
    ];
    let cpu = Device::cpu();
    let write = |name: &str, bytes: &[u8], case: &Case, outs: &[Vec<f32>]| {
        std::fs::write(format!("{dir}/{name}.onnx"), bytes).unwrap();
        for (n, t) in case.tensors(&cpu) {
            wgrad::io::write_npy(format!("{dir}/{name}.in.{n}.npy"), &t).unwrap();
        }
        for (i, (o, (_, v))) in outs.iter().zip(&case.outputs).enumerate() {
            let t = Tensor::from_slice(&cpu, o, v.shape()).unwrap();
            wgrad::io::write_npy(format!("{dir}/{name}.out{i}.npy"), &t).unwrap();
        }
    };
    for (name, build, batch) in cases {
        let (options, n_export, n_run) = if batch {
            (ExportOptions::batch("N"), 3, 5)
        } else {
            (ExportOptions::fixed(), 4, 4)
        };
        let bytes = build(n_export).export(&options);
        let reference = build(n_run);
        write(name, &bytes, &reference, &reference.native(&cpu));
        // The same graph with fixed sizes.
        let fixed = build(n_run);
        write(
            &format!("{name}_fixed"),
            &fixed.export(&ExportOptions::fixed()),
            &fixed,
            &fixed.native(&cpu),
        );
    }
    // The trained digits CNN, values read from the training executor.
    let (step, names) = digits_trained();
    let case = digits(3);
    let bytes = export(
        &case.graph,
        &[&case.inputs[0]],
        &[("logits", &case.outputs[0].1)],
        &step,
        &ExportOptions::batch("N"),
    )
    .unwrap();
    let reference = digits(9);
    let exe = cpu
        .compile(&reference.graph, &[&reference.outputs[0].1], None)
        .unwrap();
    for n in &names {
        exe.set_param(n, &step.param(n).unwrap()).unwrap();
    }
    let outs = run(&exe, &reference.tensors(&cpu));
    write("digits_trained", &bytes, &reference, &outs);
    eprintln!("wrote the cases to {dir}");
}
