//! A small transformer block learns to reverse short sequences: one-hot tokens →
//! linear embedding + learned positions → pre-norm multi-head self-attention and
//! MLP with residuals → per-position logits, softmax cross-entropy, Adam — all on
//! the GPU through `wgrad::nn`. Every step draws a fresh batch, so the accuracy
//! printed is on sequences the model has not seen.
//!
//!   cargo run --release --example attention [-- --device gpu|cpu] [--steps N]

use anyhow::{bail, Context, Result};
use wgrad::nn::{Activation, LayerNorm, Linear, Module, MultiHeadAttention};
use wgrad::{Device, Graph, Init, Optimizer, Rng, Tensor, Var};

const VOCAB: usize = 8;
const LEN: usize = 6;
const D: usize = 32;
const HEADS: usize = 4;
const BATCH: usize = 64;

/// Logits (B·T, VOCAB) for one-hot input (B, T, VOCAB) and the mean cross-entropy
/// against labels (B·T).
fn transformer(g: &Graph, batch: usize) -> wgrad::Result<(Var, Var)> {
    let x = g.input("x", &[batch, LEN, VOCAB]);
    let labels = g.input_i32("y", &[batch * LEN]);
    let embed = Linear::new(g, "embed", VOCAB, D, 1);
    let pos = g.param(
        "pos",
        &[LEN, D],
        Init::Normal {
            mean: 0.0,
            std: 0.5,
            seed: 2,
        },
    );
    let (ln1, ln2) = (
        LayerNorm::new(g, "ln1", D, 1e-5),
        LayerNorm::new(g, "ln2", D, 1e-5),
    );
    let attn = MultiHeadAttention::new(g, "attn", D, HEADS, false, 3);
    let (up, down) = (
        Linear::new(g, "mlp.up", D, 4 * D, 7),
        Linear::new(g, "mlp.down", 4 * D, D, 8),
    );
    let head = Linear::new(g, "head", D, VOCAB, 9);
    let h = embed
        .forward(&x.reshape(&[batch * LEN, VOCAB])?)?
        .reshape(&[batch, LEN, D])?
        .add(&pos)?;
    let h = h.add(&attn.forward(&ln1.forward(&h)?)?)?; // x + attention(LN(x))
    let flat = h.reshape(&[batch * LEN, D])?;
    let mlp = down.forward(&Activation::Gelu.forward(&up.forward(&ln2.forward(&flat)?)?)?)?;
    let logits = head.forward(&flat.add(&mlp)?)?; // x + MLP(LN(x)), then the readout
    let loss = logits.cross_entropy(&labels)?.mean()?;
    Ok((logits, loss))
}

/// `batch` random sequences as one-hot (B, T, VOCAB) and their reversals as labels.
fn sample(rng: &mut Rng, batch: usize) -> (Vec<f32>, Vec<i32>) {
    let mut x = vec![0.0f32; batch * LEN * VOCAB];
    let mut y = vec![0i32; batch * LEN];
    for b in 0..batch {
        let seq: Vec<usize> = (0..LEN).map(|_| rng.below(VOCAB)).collect();
        for t in 0..LEN {
            x[(b * LEN + t) * VOCAB + seq[t]] = 1.0;
            y[b * LEN + t] = seq[LEN - 1 - t] as i32;
        }
    }
    (x, y)
}

fn main() -> Result<()> {
    // Before any thread or wgpu instance: no Vulkan-loader warning without XDG_RUNTIME_DIR,
    // and two lavapipe worker threads per core unless LP_NUM_THREADS says (see there).
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dev = match arg("--device").as_deref() {
        Some("cpu") => Device::cpu(),
        Some("gpu") | None => Device::gpu()?,
        Some(other) => bail!("--device must be gpu or cpu, not {other}"),
    };
    let steps: usize = arg("--steps")
        .map(|s| s.parse())
        .transpose()
        .context("--steps N")?
        .unwrap_or(300);
    println!(
        "device: {}\ntask: reverse sequences of {LEN} tokens from a vocabulary of {VOCAB}",
        dev.name()
    );
    let g = Graph::new();
    let (logits, loss) = transformer(&g, BATCH)?;
    let step = dev.compile(&g, &[&loss, &logits], Optimizer::adam(3e-3))?;
    let mut rng = Rng::new(1);
    for i in 1..=steps {
        let (x, y) = sample(&mut rng, BATCH);
        let (xt, yt) = (
            Tensor::from_slice(&dev, &x, &[BATCH, LEN, VOCAB])?,
            Tensor::from_slice(&dev, &y, &[BATCH * LEN])?,
        );
        let out = step.run(&[("x", &xt), ("y", &yt)])?;
        if i % 100 == 0 || i == 1 {
            let pred = out[1].argmax(-1, false)?.to_vec::<i32>()?;
            let correct = pred.iter().zip(&y).filter(|(p, l)| p == l).count();
            println!(
                "step {i:>4}  loss {:.4}  token accuracy {:.1}% (on that fresh batch)",
                out[0].item()?,
                100.0 * correct as f64 / y.len() as f64
            );
        }
    }
    Ok(())
}
