//! The classic from-scratch network, trained by backpropagation on the GPU:
//! 5 samples, 2 inputs, a hidden layer of 3 with ReLU, 1 output, MSE loss,
//! plain SGD (lr 0.01) for 1000 epochs — with the CPU reference's loss beside it.
//!
//!   cargo run --release --example mlp [-- --device gpu|cpu] [--seed N] [--init DIR]
//!
//! `--init DIR` loads the data and the starting parameters from x.npy, y.npy,
//! w1.npy, b1.npy, w2.npy and b2.npy (float32; shapes 5x2, 5x1, 2x3, 3, 3x1, 1), so
//! the run can be replayed exactly against NumPy: `examples/mlp_numpy.py DIR` writes
//! such a directory and prints NumPy's loss lines in the same form.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

use wgrad::io::read_npy;
use wgrad::{DType, Device, Graph, Init, Rng, Sgd, Tensor, Var};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The network and its loss; parameters drawn from `seed`.
fn network(seed: u64) -> (Graph, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", &[5, 2]);
    let y = g.input("y", &[5, 1]);
    let w1 = g.param(
        "w1",
        &[2, 3],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
            seed,
        },
    );
    let b1 = g.param("b1", &[3], Init::Zeros);
    let w2 = g.param(
        "w2",
        &[3, 1],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
            seed: seed + 1,
        },
    );
    let b2 = g.param("b2", &[1], Init::Zeros);
    let build = || -> wgrad::Result<(Var, Var)> {
        let pred = x.matmul(&w1)?.add(&b1)?.relu()?.matmul(&w2)?.add(&b2)?;
        let loss = pred.mse(&y)?;
        Ok((pred, loss))
    };
    let (pred, loss) = build().expect("the network's shapes are consistent");
    (g, pred, loss)
}

/// `v` with 8 significant digits (NumPy's repr of a float32 loss has up to 8).
fn sig(v: f32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (7 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

fn main() -> Result<()> {
    // Before any thread or wgpu instance: no Vulkan-loader warning without XDG_RUNTIME_DIR,
    // and two lavapipe worker threads per core unless LP_NUM_THREADS says (see there).
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = arg(&args, "--seed")
        .map(|s| s.parse())
        .transpose()
        .context("--seed N")?
        .unwrap_or(0);
    let dev = match arg(&args, "--device").as_deref() {
        Some("cpu") => Device::cpu(),
        Some("gpu") | None => Device::gpu()?,
        Some(other) => bail!("--device must be gpu or cpu, not {other}"),
    };
    let reference = Device::cpu();
    println!("device: {}", dev.name());

    let init = arg(&args, "--init").map(PathBuf::from);
    let load = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let dir = init.as_ref().expect("only called with --init");
        let t = read_npy(dir.join(name), &reference)?;
        if t.shape() != shape || t.dtype() != DType::F32 {
            bail!(
                "{}: expected float32 of shape {shape:?}, got {} {:?}",
                dir.join(name).display(),
                t.dtype(),
                t.shape()
            );
        }
        Ok(t)
    };
    // Data: 5 samples of 2 features, targets from a fixed linear rule (or --init's).
    let (xs, ys): (Vec<f32>, Vec<f32>) = if init.is_some() {
        (
            load("x.npy", &[5, 2])?.to_vec()?,
            load("y.npy", &[5, 1])?.to_vec()?,
        )
    } else {
        let xs = Rng::new(seed + 100).vec_uniform(10, -1.0, 1.0);
        let ys = (0..5)
            .map(|i| 0.7 * xs[2 * i] - 0.4 * xs[2 * i + 1] + 0.2)
            .collect();
        (xs, ys)
    };
    let start: Vec<(&str, Tensor)> = if init.is_some() {
        let shapes: [(&str, &[usize]); 4] =
            [("w1", &[2, 3]), ("b1", &[3]), ("w2", &[3, 1]), ("b2", &[1])];
        shapes
            .iter()
            .map(|(n, s)| Ok((*n, load(&format!("{n}.npy"), s)?)))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };

    let mut runs = Vec::new();
    for d in [&dev, &reference] {
        let (g, pred, loss) = network(seed);
        let step = d.compile(&g, &[&loss, &pred], Sgd::new(0.01))?;
        for (name, value) in &start {
            step.set_param(name, value)?;
        }
        let x = Tensor::from_slice(d, &xs, &[5, 2])?;
        let y = Tensor::from_slice(d, &ys, &[5, 1])?;
        runs.push((step, x, y));
    }
    let mut last = Vec::new();
    for epoch in 0..1000 {
        let mut losses = Vec::new();
        for (step, x, y) in &runs {
            let out = step.run(&[("x", x), ("y", y)])?;
            losses.push((out[0].item()?, out[1].to_vec::<f32>()?));
        }
        let (l, lr) = (losses[0].0, losses[1].0);
        if (l - lr).abs() > 1e-4 {
            bail!("epoch {epoch}: loss {l} differs from the CPU reference's {lr}");
        }
        if epoch % 200 == 0 || epoch == 999 {
            println!(
                "Epoch {epoch}, Loss = {}   (cpu reference {})",
                sig(l),
                sig(lr)
            );
        }
        last = losses;
    }
    println!("\nfinal predictions vs targets:");
    for i in 0..5 {
        println!(
            "  x = [{:+.4}, {:+.4}]  pred {:+.6} (cpu {:+.6})  target {:+.6}",
            xs[2 * i],
            xs[2 * i + 1],
            last[0].1[i],
            last[1].1[i],
            ys[i]
        );
    }
    Ok(())
}
