//! Where ResNet-50 inference time goes: every distinct convolution of ResNet-50 (batch 1,
//! 224×224) compiled alone, op kind by op kind (im2col, the product, the layout copy after it,
//! the batch-norm arithmetic and ReLU), each timed and multiplied by how often the network
//! uses that shape. Also times the candidate forms of the product that need no im2col or no
//! copy, to size the wins before building them.
//!
//!   cargo run --release --example conv_profile [-- REPS [MODEL.onnx]]
//!
//! Prints one line per shape and op kind, then totals per kind (ms per inference); then the
//! other ops (pooling, residual adds) and, given a model, its whole run and dispatch count.
//!
//! Measured on lavapipe (Mesa 22.3, 2 shared cores), ms per inference. "Before" is this
//! program at the start of the conv-speed branch (load ~6); "after" at its end (load ~3),
//! where the old product form and permute were also timed in the same sitting.
//!
//! | op kind                                  | before | after          |
//! | ---------------------------------------- | ------ | -------------- |
//! | im2col, 3×3 / 7×7 / strided layers       | 296    | 109            |
//! | im2col, 1×1 stride-1 layers              | 167    | none (W·x)     |
//! | products (same kernel; old form / new)   | 604    | 467 / 452      |
//! | permute after the product                | 39     | 48 old / none  |
//! | batch-norm + ReLU (one fused chain each) | 107    | 81             |
//! | max pool 3×3/2 (im2col + reduce)         | 91 *   | 25             |
//! | residual add + ReLU (16 of them)         | 61 *   | 30             |
//! | whole model (148 dispatches after)       | ~2200 †| 752            |
//!
//! (* from a later sitting with the old im2col, load ~6; † `wgrad run --bench`.)

use std::collections::BTreeMap;
use std::time::Instant;

use wgrad::{Conv2d, Device, Graph, Rng, Tensor, Var};

/// (count, input (C, H, W), filters (F, KH), stride, padding).
type Layer = (usize, [usize; 3], [usize; 2], usize, usize);

/// ResNet-50's convolutions.
const LAYERS: &[Layer] = &[
    (1, [3, 224, 224], [64, 7], 2, 3),
    (1, [64, 56, 56], [64, 1], 1, 0),
    (3, [64, 56, 56], [64, 3], 1, 1),
    (4, [64, 56, 56], [256, 1], 1, 0),
    (2, [256, 56, 56], [64, 1], 1, 0),
    (1, [256, 56, 56], [128, 1], 1, 0),
    (1, [128, 56, 56], [128, 3], 2, 1),
    (4, [128, 28, 28], [512, 1], 1, 0),
    (1, [256, 56, 56], [512, 1], 2, 0),
    (3, [512, 28, 28], [128, 1], 1, 0),
    (3, [128, 28, 28], [128, 3], 1, 1),
    (1, [512, 28, 28], [256, 1], 1, 0),
    (1, [256, 28, 28], [256, 3], 2, 1),
    (6, [256, 14, 14], [1024, 1], 1, 0),
    (1, [512, 28, 28], [1024, 1], 2, 0),
    (5, [1024, 14, 14], [256, 1], 1, 0),
    (5, [256, 14, 14], [256, 3], 1, 1),
    (1, [1024, 14, 14], [512, 1], 1, 0),
    (1, [512, 14, 14], [512, 3], 2, 1),
    (3, [512, 7, 7], [2048, 1], 1, 0),
    (1, [1024, 14, 14], [2048, 1], 2, 0),
    (2, [2048, 7, 7], [512, 1], 1, 0),
    (2, [512, 7, 7], [512, 3], 1, 1),
];

fn random(dev: &Device, shape: &[usize], seed: u64) -> anyhow::Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_slice(
        dev,
        &Rng::new(seed).vec_uniform(n, -1.0, 1.0),
        shape,
    )?)
}

/// Mean ms of one compiled run of `build` over fresh inputs of `shapes`.
fn time(
    dev: &Device,
    reps: usize,
    shapes: &[Vec<usize>],
    build: impl Fn(&[Var]) -> wgrad::Result<Var>,
) -> anyhow::Result<f64> {
    let g = Graph::new();
    let names: Vec<String> = (0..shapes.len()).map(|i| format!("x{i}")).collect();
    let xs: Vec<Var> = shapes
        .iter()
        .zip(&names)
        .map(|(s, n)| g.input(n, s))
        .collect();
    let y = build(&xs)?;
    let exe = dev.compile(&g, &[&y], None)?;
    let feeds: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| random(dev, s, i as u64 + 1))
        .collect::<anyhow::Result<_>>()?;
    let named: Vec<(&str, &Tensor)> = names.iter().map(|n| n.as_str()).zip(&feeds).collect();
    exe.run(&named)?;
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        exe.run(&named)?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let dev = Device::gpu()?;
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for &(count, [c, h, w], [f, k], s, p) in LAYERS {
        let geom = Conv2d::new(k, k).stride(s).padding(p);
        let (oh, ow) = geom.output_size("profile", &[1, c, h, w])?;
        let (l, ck) = (oh * ow, c * k * k);
        let x = vec![1, c, h, w];
        let wt = vec![f, c, k, k];
        let mut row = Vec::new();
        let mut add = |kind: &'static str, ms: f64| {
            *totals.entry(kind).or_default() += ms * count as f64;
            row.push(format!("{kind} {ms:.2}"));
        };
        add(
            "im2col",
            time(&dev, reps, std::slice::from_ref(&x), |v| v[0].im2col(geom))?,
        );
        add(
            "matmul (N,L,CK)(F,CK)T",
            time(&dev, reps, &[vec![1, l, ck], vec![f, ck]], |v| {
                v[0].matmul_t(&v[1], false, true)
            })?,
        );
        add(
            "permute (N,L,F)->(N,F,L)",
            time(&dev, reps, &[vec![1, l, f]], |v| v[0].permute(&[0, 2, 1]))?,
        );
        add(
            "conv2d whole",
            time(&dev, reps, &[x.clone(), wt.clone()], |v| {
                v[0].conv2d(&v[1], geom)
            })?,
        );
        let ch = vec![1, f, 1, 1];
        add(
            "bn+relu",
            time(
                &dev,
                reps,
                &[vec![1, f, oh, ow], ch.clone(), ch.clone(), ch.clone()],
                |v| v[0].sub(&v[1])?.mul(&v[2])?.add(&v[3])?.relu(),
            )?,
        );
        add(
            "cand: W(F,CK)*cols^T -> NCHW",
            time(&dev, reps, &[vec![1, l, ck], vec![f, ck]], |v| {
                v[1].matmul_t(&v[0], false, true)
            })?,
        );
        add(
            "cand: W(F,CK)*(N,CK,L)",
            time(&dev, reps, &[vec![1, ck, l], vec![f, ck]], |v| {
                v[1].matmul(&v[0])
            })?,
        );
        println!("{count}x x{x:?} w{wt:?} s{s} p{p}: {}", row.join(", "));
    }
    // A run's fixed cost (encode, submit, wait), which every figure above includes once.
    let fixed = time(&dev, reps, &[vec![1, 4]], |v| v[0].relu())?;
    println!("fixed cost of one compiled run (relu of 4 values): {fixed:.2} ms");
    println!("totals (ms per inference, x count):");
    for (k, v) in &totals {
        println!("  {k:32} {v:8.1}");
    }
    let pool = time(&dev, reps, &[vec![1, 64, 112, 112]], |v| {
        v[0].max_pool2d_window(Conv2d::new(3, 3).stride(2).padding(1))
    })?;
    println!("maxpool 3x3 s2 p1 on (1, 64, 112, 112): {pool:.2} ms");
    let mut adds = 0.0;
    for (count, c, hw) in [(3, 256, 56), (4, 512, 28), (6, 1024, 14), (3, 2048, 7)] {
        let s = vec![1, c, hw, hw];
        let ms = time(&dev, reps, &[s.clone(), s], |v| v[0].add(&v[1])?.relu())?;
        adds += ms * count as f64;
    }
    println!("residual add+relu, 16 of them: {adds:.1} ms");
    if let Some(path) = std::env::args().nth(2) {
        let model = wgrad::onnx::Model::load(&path)?;
        let imported = model.import(&[], wgrad::onnx::Weights::Constants)?;
        let outs: Vec<&Var> = imported.outputs.iter().map(|(_, v)| v).collect();
        let exe = dev.compile(&imported.graph, &outs, None)?;
        let x = random(&dev, &[1, 3, 224, 224], 9)?;
        let name = &model.inputs[0].name;
        exe.run(&[(name, &x)])?;
        dev.synchronize()?;
        let (d0, t0) = (dev.dispatch_count(), Instant::now());
        for _ in 0..reps {
            exe.run(&[(name, &x)])?;
        }
        dev.synchronize()?;
        println!(
            "whole model: {:.1} ms, {} dispatches per run",
            t0.elapsed().as_secs_f64() * 1e3 / reps as f64,
            (dev.dispatch_count() - d0) / reps as u64
        );
    }
    Ok(())
}
