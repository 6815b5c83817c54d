//! A small convolutional network learns the 8x8 handwritten digits (the UCI
//! optical-digits set, 1,797 images; see examples/data/README.md), trained end
//! to end on the GPU: convolutions as im2col + matmul, ReLU, softmax
//! cross-entropy, Adam, built from `wgrad::nn` layers. Saves the parameters as
//! safetensors (by name) and `--eval` reloads them.
//!
//!   cargo run --release --example digits [-- --device gpu|cpu] [--epochs N]
//!                                           [--save MODEL.safetensors] [--eval MODEL.safetensors]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use wgrad::nn::{
    load_params, save_params, Activation, Conv2dLayer, Flatten, Linear, Module, Sequential,
};
use wgrad::{Conv2d, Device, Executor, Graph, Optimizer, Rng, Tensor, Var};

const DIGITS_CSV: &str = include_str!("data/digits.csv");
const TEST_SIZE: usize = 360;
const BATCH: usize = 64;

/// Images scaled to [0, 1] (N, 1, 8, 8) and labels.
fn load_digits() -> Result<(Vec<f32>, Vec<i32>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (i, line) in DIGITS_CSV.lines().enumerate() {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("digits.csv line {}", i + 1))?;
        if v.len() != 65 {
            bail!("digits.csv line {}: {} values, expected 65", i + 1, v.len());
        }
        xs.extend(v[..64].iter().map(|p| p / 16.0));
        ys.push(v[64] as i32);
    }
    Ok((xs, ys))
}

/// conv 3x3 (1→16, pad 1) → ReLU → conv 3x3 (16→32, stride 2, pad 1) → ReLU →
/// flatten (32·4·4) → linear → 10 logits, for a batch of `n`.
fn network(n: usize) -> wgrad::Result<(Graph, Sequential, Var, Var)> {
    let g = Graph::new();
    let model = Sequential::new(vec![
        Box::new(Conv2dLayer::new(
            &g,
            "conv1",
            1,
            16,
            Conv2d::new(3, 3).padding(1),
            1,
        )),
        Box::new(Activation::Relu),
        Box::new(Conv2dLayer::new(
            &g,
            "conv2",
            16,
            32,
            Conv2d::new(3, 3).stride(2).padding(1),
            2,
        )),
        Box::new(Activation::Relu),
        Box::new(Flatten),
        Box::new(Linear::new(&g, "fc", 32 * 4 * 4, 10, 3)),
    ]);
    let logits = model.forward(&g.input("x", &[n, 1, 8, 8]))?;
    let loss = logits.cross_entropy(&g.input_i32("y", &[n]))?.mean()?;
    Ok((g, model, logits, loss))
}

/// Accuracy on the given images of the parameters in the safetensors file `model`
/// or, without one, those of the compiled training step `from`.
fn accuracy(dev: &Device, from: Source, xs: &[f32], ys: &[i32]) -> Result<f64> {
    let n = ys.len();
    let (g, model, logits, _) = network(n)?;
    let exe = dev.compile(&g, &[&logits], None)?;
    let names = model.param_names();
    match from {
        Source::File(path) => load_params(&exe, &names, path)?,
        Source::Step(step) => {
            for name in &names {
                exe.set_param(name, &step.param(name)?)?;
            }
        }
    }
    let x = Tensor::from_slice(dev, xs, &[n, 1, 8, 8])?;
    let pred = exe.run(&[("x", &x)])?[0]
        .argmax(-1, false)?
        .to_vec::<i32>()?;
    Ok(pred.iter().zip(ys).filter(|(p, y)| p == y).count() as f64 / n as f64)
}

/// Where evaluation takes its parameters from.
enum Source<'a> {
    File(&'a str),
    Step(&'a Executor),
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dev = match arg(&args, "--device").as_deref() {
        Some("cpu") => Device::cpu(),
        Some("gpu") | None => Device::gpu()?,
        Some(other) => bail!("--device must be gpu or cpu, not {other}"),
    };
    let epochs: usize = arg(&args, "--epochs")
        .map(|s| s.parse())
        .transpose()
        .context("--epochs N")?
        .unwrap_or(30);
    println!("device: {}", dev.name());

    let (xs, ys) = load_digits()?;
    // A fixed split: one seeded shuffle, the last 360 images for testing.
    let mut order: Vec<usize> = (0..ys.len()).collect();
    let mut rng = Rng::new(2024);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (train, test) = order.split_at(order.len() - TEST_SIZE);
    let gather = |idx: &[usize]| -> (Vec<f32>, Vec<i32>) {
        (
            idx.iter()
                .flat_map(|&i| xs[i * 64..(i + 1) * 64].iter().copied())
                .collect(),
            idx.iter().map(|&i| ys[i]).collect(),
        )
    };
    let (test_x, test_y) = gather(test);
    println!(
        "digits: {} training images, {} test images",
        train.len(),
        test.len()
    );

    if let Some(model) = arg(&args, "--eval") {
        let acc = accuracy(&dev, Source::File(&model), &test_x, &test_y)?;
        println!("{model}: test accuracy {:.2}%", 100.0 * acc);
        return Ok(());
    }

    let (g, model, _, loss) = network(BATCH)?;
    let step = dev.compile(&g, &[&loss], Optimizer::adam(3e-3))?;
    let mut train_order = train.to_vec();
    let t0 = Instant::now();
    for epoch in 1..=epochs {
        let te = Instant::now();
        for i in (1..train_order.len()).rev() {
            train_order.swap(i, rng.below(i + 1));
        }
        let mut losses = Vec::new();
        for batch in train_order.chunks_exact(BATCH) {
            let (bx, by) = gather(batch);
            let x = Tensor::from_slice(&dev, &bx, &[BATCH, 1, 8, 8])?;
            let y = Tensor::from_slice(&dev, &by, &[BATCH])?;
            losses.push(step.run(&[("x", &x), ("y", &y)])?.remove(0));
        }
        // Read the losses back once per epoch: the steps before ran without waiting.
        let mean: f32 = losses
            .iter()
            .map(|l| l.item())
            .sum::<wgrad::Result<f32>>()?
            / losses.len() as f32;
        let epoch_s = te.elapsed().as_secs_f64();
        if epoch % 5 == 0 || epoch == 1 || epoch == epochs {
            let acc = accuracy(&dev, Source::Step(&step), &test_x, &test_y)?;
            println!(
                "epoch {epoch:>3}  loss {mean:.5}  test accuracy {:.2}%  ({epoch_s:.2} s/epoch)",
                100.0 * acc
            );
        }
    }
    let acc = accuracy(&dev, Source::Step(&step), &test_x, &test_y)?;
    println!(
        "final test accuracy {:.2}% after {epochs} epochs in {:.1} s",
        100.0 * acc,
        t0.elapsed().as_secs_f64()
    );
    let path = arg(&args, "--save").unwrap_or_else(|| "digits.safetensors".into());
    save_params(&step, &model.param_names(), &path)?;
    println!("saved {path}; `--eval {path}` reloads it");
    Ok(())
}
