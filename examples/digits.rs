//! A small convolutional network learns the 8x8 handwritten digits (the UCI
//! optical-digits set, 1,797 images; see examples/data/README.md), trained end
//! to end on the GPU: convolutions as im2col + matmul, batch norm, ReLU, dropout,
//! softmax cross-entropy, Adam, built from `wgrad::nn` layers. Test accuracy is
//! measured in evaluation mode (batch norm's running statistics, no dropout). Saves
//! the parameters and running statistics as safetensors (by name) and `--eval`
//! reloads them; the run itself checks that the reloaded model scores the same.
//!
//! A progress bar shows the loss and test accuracy per epoch, and the curves are
//! drawn to a PNG (by default next to the saved model: digits.png).
//!
//! `--export-onnx FILE` also writes the trained network as ONNX (opset 17): evaluation mode
//! (batch norm with its running statistics, no dropout), input `x` (N, 1, 8, 8) with a
//! symbolic batch dim N, output `logits` (N, 10). `--export-npy PREFIX` writes the test images
//! and wgrad's logits for them as PREFIX.in.x.npy and PREFIX.out0.npy, the layout
//! tests/fixtures/onnx/check_export.py compares onnxruntime against.
//!
//!   cargo run --release --example digits [-- --device gpu|cpu] [--epochs N]
//!       [--save MODEL.safetensors] [--plot CURVES.png] [--eval MODEL.safetensors]
//!       [--export-onnx MODEL.onnx] [--export-npy PREFIX]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use wgrad::nn::models::digits_cnn;
use wgrad::nn::{load_params, save_params, Module, Sequential};
use wgrad::onnx::{export_to_file, ExportOptions};
use wgrad::{Device, Executor, Graph, Optimizer, Rng, Tensor, Var};

#[path = "shared/digits_data.rs"]
mod digits_data;
const TEST_SIZE: usize = 360;
const BATCH: usize = 64;

/// Images scaled to [0, 1] (N, 1, 8, 8) and labels.
fn load_digits() -> Result<(Vec<f32>, Vec<i32>)> {
    let (xs, ys) = digits_data::load()?;
    Ok((xs.iter().map(|p| p / 16.0).collect(), ys))
}

/// The digits CNN ([`wgrad::nn::models::digits_cnn`]) for a batch of `n`, in training
/// or evaluation mode, with its input, logits and softmax cross-entropy loss.
fn network(n: usize, training: bool) -> wgrad::Result<(Graph, Sequential, [Var; 3])> {
    let g = Graph::new();
    let model = digits_cnn(&g, training)?;
    let x = g.input("x", &[n, 1, 8, 8]);
    let logits = model.forward(&x)?;
    let loss = logits.cross_entropy(&g.input_i32("y", &[n]))?.mean()?;
    Ok((g, model, [x, logits, loss]))
}

/// The network in evaluation mode on the test images, compiled once; it takes its
/// parameters and running statistics from a safetensors file or a training step.
struct Evaluator {
    exe: Executor,
    names: Vec<String>,
    x: Tensor,
    labels: Vec<i32>,
}

impl Evaluator {
    fn new(dev: &Device, xs: &[f32], ys: &[i32]) -> Result<Evaluator> {
        let n = ys.len();
        let (g, model, [_, logits, _]) = network(n, false)?;
        Ok(Evaluator {
            exe: dev.compile(&g, &[&logits], None)?,
            names: model.saved_names(),
            x: Tensor::from_slice(dev, xs, &[n, 1, 8, 8])?,
            labels: ys.to_vec(),
        })
    }

    /// The logits of the test images (for the model last loaded).
    fn logits(&self) -> Result<Tensor> {
        Ok(self.exe.run(&[("x", &self.x)])?.remove(0))
    }

    /// Test accuracy of the model in `from`.
    fn accuracy(&self, from: Source) -> Result<f64> {
        match from {
            Source::File(path) => load_params(&self.exe, &self.names, path)?,
            Source::Step(step) => {
                for name in &self.names {
                    self.exe.set_param(name, &step.param(name)?)?;
                }
            }
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

/// Where evaluation takes its parameters from.
enum Source<'a> {
    File(&'a str),
    Step(&'a Executor),
}

const PLOT_SIZE: (u32, u32) = (960, 400);

/// Draws the mean training loss and the test accuracy per epoch side by side as a PNG.
fn plot(path: &Path, losses: &[f32], accuracies: &[f64]) -> Result<()> {
    use plotters::prelude::*;
    // Text through ab_glyph from an embedded font: no system font libraries needed.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("DejaVu Sans did not load"))?;
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);
    let epochs = losses.len().max(2) as u32;
    let top = losses.iter().copied().fold(0.0f32, f32::max) * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss (mean per epoch)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1u32..epochs, 0f32..top.max(1e-3))?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    chart.draw_series(LineSeries::new(
        losses.iter().enumerate().map(|(i, &l)| (i as u32 + 1, l)),
        &BLUE,
    ))?;
    let low = accuracies
        .iter()
        .copied()
        .fold(100.0f64, |a, b| a.min(100.0 * b));
    let mut chart = ChartBuilder::on(&right)
        .caption("test accuracy (%)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(1u32..epochs, (low - 1.0).floor()..100.0)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    chart.draw_series(LineSeries::new(
        accuracies
            .iter()
            .enumerate()
            .map(|(i, &a)| (i as u32 + 1, 100.0 * a)),
        &RED,
    ))?;
    root.present()?;
    Ok(())
}

/// Checks that `path` is a PNG of `PLOT_SIZE` with more in it than a blank page.
fn check_png(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 24 || bytes[..8] != *b"\x89PNG\r\n\x1a\n" || bytes[12..16] != *b"IHDR" {
        bail!("{} is not a PNG", path.display());
    }
    let dim =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if (dim(16), dim(20)) != PLOT_SIZE {
        bail!(
            "{} is {}x{}, expected {PLOT_SIZE:?}",
            path.display(),
            dim(16),
            dim(20)
        );
    }
    // A white page compresses to a few hundred bytes; two charts with text do not.
    if bytes.len() < 8 * 1024 {
        bail!(
            "{} has only {} bytes: nothing drawn?",
            path.display(),
            bytes.len()
        );
    }
    Ok(())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<()> {
    // Before any thread or wgpu instance: no Vulkan-loader warning without XDG_RUNTIME_DIR,
    // and two lavapipe worker threads per core unless LP_NUM_THREADS says (see there).
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
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

    let eval = Evaluator::new(&dev, &test_x, &test_y)?;
    if let Some(model) = arg(&args, "--eval") {
        let acc = eval.accuracy(Source::File(&model))?;
        println!("{model}: test accuracy {:.2}%", 100.0 * acc);
        return Ok(());
    }

    let (g, model, [_, _, loss]) = network(BATCH, true)?;
    let step = dev.compile(&g, &[&loss], Optimizer::adam(3e-3))?;
    let mut train_order = train.to_vec();
    // Drawn on stderr when it is a terminal; hidden otherwise, and plain lines say the same.
    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {pos}/{len} [{bar:30}] {msg} ({elapsed})")?
            .progress_chars("=> "),
    );
    let (mut curve_loss, mut curve_acc) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    for epoch in 1..=epochs {
        let (te, d0) = (Instant::now(), dev.dispatch_count());
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
        let dispatches = if dev.is_gpu() {
            let per_step = (dev.dispatch_count() - d0) as f64 / losses.len() as f64;
            format!(", {per_step:.0} GPU dispatches/step")
        } else {
            String::new()
        };
        let acc = eval.accuracy(Source::Step(&step))?;
        curve_loss.push(mean);
        curve_acc.push(acc);
        bar.set_message(format!("loss {mean:.4}  test accuracy {:.2}%", 100.0 * acc));
        bar.inc(1);
        if bar.is_hidden() && (epoch % 5 == 0 || epoch == 1 || epoch == epochs) {
            println!(
                "epoch {epoch:>3}  loss {mean:.5}  test accuracy {:.2}%  \
                 ({epoch_s:.2} s/epoch{dispatches})",
                100.0 * acc
            );
        }
    }
    bar.finish();
    let acc = eval.accuracy(Source::Step(&step))?;
    println!(
        "final test accuracy {:.2}% after {epochs} epochs in {:.1} s",
        100.0 * acc,
        t0.elapsed().as_secs_f64()
    );
    let path = arg(&args, "--save").unwrap_or_else(|| "digits.safetensors".into());
    save_params(&step, &model.saved_names(), &path)?;
    let reloaded = eval.accuracy(Source::File(&path))?;
    if reloaded != acc {
        bail!("{path} reloaded scores {reloaded}, the trained model {acc}");
    }
    println!(
        "saved {path}; `--eval {path}` reloads it (test accuracy {:.2}%)",
        100.0 * reloaded
    );
    let png = arg(&args, "--plot")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&path).with_extension("png"));
    plot(&png, &curve_loss, &curve_acc)?;
    check_png(&png)?;
    println!("plotted the loss and accuracy curves in {}", png.display());
    if let Some(onnx) = arg(&args, "--export-onnx") {
        // The evaluation graph, its parameters and running statistics read by name from
        // the training step; the batch dim is symbolic, so the size built here is a sample.
        let (g, _, [x, logits, _]) = network(TEST_SIZE, false)?;
        export_to_file(
            &onnx,
            &g,
            &[&x],
            &[("logits", &logits)],
            &step,
            &ExportOptions::batch("N"),
        )?;
        println!("exported the evaluation-mode network to {onnx} (ONNX opset 17, batch N)");
    }
    if let Some(prefix) = arg(&args, "--export-npy") {
        eval.accuracy(Source::Step(&step))?;
        wgrad::io::write_npy(format!("{prefix}.in.x.npy"), &eval.x)?;
        wgrad::io::write_npy(format!("{prefix}.out0.npy"), &eval.logits()?)?;
        println!("wrote the test images and their logits to {prefix}.in.x.npy, {prefix}.out0.npy");
    }
    Ok(())
}
