//! Fine-tuning an imported ONNX model: the digits CNN after 2 epochs, as the digits example
//! exported it (`--epochs 2 --export-onnx examples/data/digits_cnn_2ep.onnx`: evaluation
//! mode, batch norm as its running-statistics arithmetic, symbolic batch N), is imported with
//! its initializers as trainable parameters, given a softmax cross-entropy loss on its
//! logits, and trained further with Adam on the digits training split (the digits example's
//! split: one seeded shuffle, the last 360 images for testing) until it reaches the target
//! test accuracy (98% by default; the run fails if it does not). Every FLOAT initializer
//! becomes a parameter, batch norm's running statistics included: Adam adjusts them too.
//!
//!   cargo run --release --example onnx_finetune [-- --device gpu|cpu] [--epochs N]
//!       [--model FILE.onnx] [--lr RATE] [--target ACCURACY]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wgrad::onnx::{Dim, Imported, Model, Weights};
use wgrad::{Device, Executor, Optimizer, Rng, Tensor, Var};

#[path = "shared/digits_data.rs"]
mod digits_data;
const TEST_SIZE: usize = 360;
const BATCH: usize = 64;
const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/digits_cnn_2ep.onnx"
);

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parsed<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    arg(args, name)
        .map(|s| s.parse::<T>())
        .transpose()
        .with_context(|| format!("{name} takes a number"))
        .map(|v| v.unwrap_or(default))
}

/// The model's `logits` output (its only one, as the digits example writes it).
fn logits(imported: &Imported) -> Result<Var> {
    imported
        .outputs
        .iter()
        .find(|(n, _)| n == "logits")
        .or(imported.outputs.first())
        .map(|(_, v)| v.clone())
        .context("the model has no outputs")
}

/// The imported model at the test batch size, taking its parameters from the training step.
struct Evaluator {
    exe: Executor,
    params: Vec<String>,
    x: Tensor,
    labels: Vec<i32>,
}

impl Evaluator {
    fn accuracy(&self, step: &Executor) -> Result<f64> {
        for name in &self.params {
            self.exe.set_param(name, &step.param(name)?)?;
        }
        let pred = self.exe.run(&[("x", &self.x)])?[0]
            .argmax(-1, false)?
            .to_vec::<i32>()?;
        let right = pred
            .iter()
            .zip(&self.labels)
            .filter(|(p, y)| p == y)
            .count();
        Ok(right as f64 / self.labels.len() as f64)
    }
}

fn main() -> Result<()> {
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
    let args: Vec<String> = std::env::args().collect();
    let dev = match arg(&args, "--device").as_deref() {
        Some("cpu") => Device::cpu(),
        Some("gpu") | None => Device::gpu()?,
        Some(other) => bail!("--device must be gpu or cpu, not {other}"),
    };
    let epochs: usize = parsed(&args, "--epochs", 15)?;
    let lr: f32 = parsed(&args, "--lr", 1e-3)?;
    let target: f64 = parsed(&args, "--target", 0.98)?;
    let path = arg(&args, "--model").unwrap_or_else(|| MODEL.to_string());
    println!("device: {}", dev.name());

    // The digits example's data and split.
    let (xs, ys) = digits_data::load()?;
    let xs: Vec<f32> = xs.iter().map(|p| p / 16.0).collect();
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

    let model = Model::load(&path)?;
    let dims = |d: &Dim| match d {
        Dim::Fixed(n) => n.to_string(),
        Dim::Symbolic(s) => s.clone(),
        Dim::Unknown => "?".into(),
    };
    let inputs: Vec<String> = model
        .inputs
        .iter()
        .map(|i| {
            let d: Vec<String> = i.dims.iter().flatten().map(dims).collect();
            format!("{} ({})", i.name, d.join(", "))
        })
        .collect();
    println!(
        "{path}: opset {}, {} initializers, inputs {}",
        model.opset,
        model.initializers.len(),
        inputs.join(", ")
    );
    // Two imports of one file: a training graph at the batch size, an evaluation graph at
    // the test set's size; parameters are matched by name.
    let train_model = model.import(&[("N", BATCH)], Weights::Params)?;
    let g = &train_model.graph;
    let loss = logits(&train_model)?
        .cross_entropy(&g.input_i32("y", &[BATCH]))?
        .mean()?;
    let step = dev.compile(g, &[&loss], Optimizer::adam(lr))?;
    let test_model = model.import(&[("N", TEST_SIZE)], Weights::Params)?;
    let eval = Evaluator {
        exe: dev.compile(&test_model.graph, &[&logits(&test_model)?], None)?,
        params: train_model.params.clone(),
        x: Tensor::from_slice(&dev, &test_x, &[TEST_SIZE, 1, 8, 8])?,
        labels: test_y,
    };
    println!(
        "imported {} parameters; {} training images, {} test images",
        train_model.params.len(),
        train.len(),
        test.len()
    );
    let before = eval.accuracy(&step)?;
    println!("test accuracy as imported: {:.2}%", 100.0 * before);

    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {msg} ({elapsed})")?
            .progress_chars("=> "),
    );
    let mut train_order = train.to_vec();
    let t0 = Instant::now();
    let mut acc = before;
    for epoch in 1..=epochs {
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
        let mean: f32 = losses
            .iter()
            .map(|l| l.item())
            .sum::<wgrad::Result<f32>>()?
            / losses.len() as f32;
        acc = eval.accuracy(&step)?;
        bar.set_message(format!("loss {mean:.4}  test accuracy {:.2}%", 100.0 * acc));
        bar.inc(1);
        if bar.is_hidden() {
            println!(
                "epoch {epoch:>3}  loss {mean:.5}  test accuracy {:.2}%",
                100.0 * acc
            );
        }
    }
    bar.finish();
    println!(
        "fine-tuned test accuracy {:.2}% (from {:.2}%) after {epochs} epochs in {:.1} s",
        100.0 * acc,
        100.0 * before,
        t0.elapsed().as_secs_f64()
    );
    if acc < target {
        bail!(
            "test accuracy {:.2}% is below the target {:.2}%",
            100.0 * acc,
            100.0 * target
        );
    }
    Ok(())
}
