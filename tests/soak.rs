//! Long runs: thousands of SGD steps of a small MLP on the GPU must not grow the
//! buffer pool (count or bytes) after warm-up, nor the process's resident memory
//! beyond a bound. Prints the figures (pool and RSS at the warm-up sample and at
//! the end, ms per step).
//!
//! 10,000 steps take ~17-20 s on lavapipe (1.4 ms/step in release, 1.6 ms in a
//! debug build); `WGRAD_SOAK_STEPS` overrides the length. The run gets a device of its
//! own so other tests' buffers do not enter the pool figures.

mod common;

use std::time::Instant;

use common::{gpu, uniform};
use wgrad::{Device, Graph, Init, PoolStats, Sgd, Tensor};

/// Steps of the default soak run.
const DEFAULT_STEPS: usize = 10_000;
/// Step at which the warm-up sample is taken (pool and RSS).
const WARMUP: usize = 1_000;
/// Resident memory the process may gain between the warm-up sample and the end.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;

/// Resident set size in bytes from /proc/self/statm (`None` where there is no /proc).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

struct Sample {
    step: usize,
    pool: PoolStats,
    rss: Option<u64>,
}

impl Sample {
    fn take(dev: &Device, step: usize) -> Sample {
        dev.synchronize().expect("no GPU error during the soak");
        Sample {
            step,
            pool: dev.pool_stats(),
            rss: rss_bytes(),
        }
    }

    fn pooled(&self) -> (u64, u64) {
        (
            self.pool.live_buffers + self.pool.free_buffers,
            self.pool.live_bytes + self.pool.free_bytes,
        )
    }

    fn line(&self) -> String {
        let (n, bytes) = self.pooled();
        format!(
            "step {:>6}: pooled buffers {n} ({} live, {} free), pooled bytes {bytes}, \
             created {}, reused {}, RSS {}",
            self.step,
            self.pool.live_buffers,
            self.pool.free_buffers,
            self.pool.created,
            self.pool.reused,
            self.rss
                .map(|r| format!("{:.1} MiB", r as f64 / 1048576.0))
                .unwrap_or_else(|| "n/a".into())
        )
    }
}

/// Trains an 8-16-1 MLP (batch 32, MSE, SGD) for `steps` steps; checks the pool
/// and RSS stay flat after [`WARMUP`] steps and that the loss went down.
fn soak(steps: usize) {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().expect("a second device on the adapter");
    let g = Graph::new();
    let x = g.input("x", &[32, 8]);
    let y = g.input("y", &[32, 1]);
    let w1 = g.param("w1", &[8, 16], Init::XavierUniform { seed: 1 });
    let b1 = g.param("b1", &[16], Init::Zeros);
    let w2 = g.param("w2", &[16, 1], Init::XavierUniform { seed: 2 });
    let b2 = g.param("b2", &[1], Init::Zeros);
    let h = x.matmul(&w1).unwrap().add(&b1).unwrap().tanh().unwrap();
    let loss = h.matmul(&w2).unwrap().add(&b2).unwrap().mse(&y).unwrap();
    let step = dev.compile(&g, &[&loss], Sgd::new(0.05)).unwrap();

    // A fixed target function: y = sum of sin(x_j) / 4, over a few fixed batches.
    let batches: Vec<(Tensor, Tensor)> = (0..4)
        .map(|b| {
            let xs = uniform(10 + b, 32 * 8, -1.0, 1.0);
            let ys: Vec<f32> = xs
                .chunks(8)
                .map(|r| r.iter().map(|v| v.sin()).sum::<f32>() / 4.0)
                .collect();
            (
                Tensor::from_slice(&dev, &xs, &[32, 8]).unwrap(),
                Tensor::from_slice(&dev, &ys, &[32, 1]).unwrap(),
            )
        })
        .collect();

    let run = |i: usize| -> f32 {
        let (x, y) = &batches[i % batches.len()];
        let out = step.run(&[("x", x), ("y", y)]).expect("training step");
        // Read the loss back every 100 steps (as a training loop that logs would);
        // the steps in between stay on the device.
        if i % 100 == 0 {
            out[0].item().expect("loss")
        } else {
            f32::NAN
        }
    };
    let warmup = WARMUP.min(steps / 2);
    let t0 = Instant::now();
    let first = run(0);
    for i in 1..warmup {
        run(i);
    }
    let start = Sample::take(&dev, warmup);
    let t1 = Instant::now();
    let mut last = first;
    for i in warmup..steps {
        let l = run(i);
        if !l.is_nan() {
            last = l;
        }
    }
    let end = Sample::take(&dev, steps);
    let t_end = Instant::now();
    let ms_per_step = (t_end - t1).as_secs_f64() * 1e3 / (steps - warmup) as f64;
    eprintln!(
        "soak: {steps} SGD steps of an 8-16-1 MLP, batch 32, on {}",
        dev.name()
    );
    eprintln!("soak: {}", start.line());
    eprintln!("soak: {}", end.line());
    eprintln!(
        "soak: {ms_per_step:.3} ms/step after warm-up ({:.1} s in all); loss {first:.5} -> {last:.5}",
        (t_end - t0).as_secs_f64()
    );

    let ((n0, b0), (n1, b1)) = (start.pooled(), end.pooled());
    assert!(
        n1 <= n0,
        "pooled buffer count grew after warm-up: {n0} -> {n1}"
    );
    assert!(b1 <= b0, "pooled bytes grew after warm-up: {b0} -> {b1}");
    // Every buffer after warm-up came from the free lists: none were created.
    assert_eq!(
        end.pool.created, start.pool.created,
        "buffers were created after warm-up"
    );
    if let (Some(r0), Some(r1)) = (start.rss, end.rss) {
        assert!(
            r1 <= r0 + RSS_GROWTH_LIMIT,
            "RSS grew by {} MiB after warm-up ({} -> {} bytes)",
            (r1 - r0) >> 20,
            r0,
            r1
        );
    }
    assert!(
        last.is_finite() && last < first,
        "loss did not go down: {first} -> {last}"
    );
}

#[test]
fn soak_mlp_training_keeps_memory_flat() {
    let steps = std::env::var("WGRAD_SOAK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_STEPS);
    soak(steps);
}
