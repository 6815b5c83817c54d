//! Shared test helpers: the GPU device under test, seeded data, and the
//! `|got - ref| <= atol + rtol·|ref|` comparison that prints the first mismatches.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgrad::{Device, Rng, Tensor};

/// Sizes every family is tested on: 1, odd, around the tile/workgroup, large.
pub const SIZES: [usize; 7] = [1, 3, 17, 64, 255, 257, 1000];

/// The GPU device for this test binary, shared by its tests. Without an
/// adapter the test is skipped — except with `CI=true`, where it fails.
pub fn gpu() -> Option<Device> {
    static DEV: OnceLock<Option<Device>> = OnceLock::new();
    DEV.get_or_init(|| match Device::gpu() {
        Ok(d) => {
            eprintln!("wgrad tests: GPU adapter: {}", d.name());
            Some(d)
        }
        Err(e) => {
            if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
                panic!("CI=true and no GPU adapter: {e}");
            }
            eprintln!("wgrad tests: skipping GPU checks: {e}");
            None
        }
    })
    .clone()
}

/// Seeded values uniform in [lo, hi).
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    Rng::new(seed).vec_uniform(n, lo, hi)
}

/// The same data as a tensor on the GPU and on the CPU reference.
pub fn pair(gpu: &Device, data: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    (
        Tensor::from_slice(gpu, data, shape).expect("upload"),
        Tensor::from_slice(&Device::cpu(), data, shape).expect("cpu tensor"),
    )
}

/// Asserts `|got - want| <= atol + rtol·|want|` element-wise (NaN matches NaN,
/// infinities must be equal), printing the first mismatches with their indices.
pub fn assert_close(label: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{label}: length {} vs reference {}",
        got.len(),
        want.len()
    );
    let mut bad = Vec::new();
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            let err = (g - w).abs();
            worst = worst.max(err);
            err <= atol + rtol * w.abs()
        };
        if !ok {
            bad.push(i);
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| {
                format!(
                    "  [{i}] got {} want {} (diff {:e})",
                    got[i],
                    want[i],
                    (got[i] - want[i]).abs()
                )
            })
            .collect();
        panic!(
            "{label}: {} of {} elements out of tolerance (atol {atol:e}, rtol {rtol:e}); first:\n{}",
            bad.len(),
            got.len(),
            first.join("\n")
        );
    }
}

/// Compares a GPU tensor with its CPU-reference twin (shape and values).
pub fn assert_tensor_close(label: &str, got: &Tensor, want: &Tensor, atol: f32, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    let g = got.to_vec::<f32>().expect("read back GPU result");
    let w = want.to_vec::<f32>().expect("read CPU reference");
    assert_close(label, &g, &w, atol, rtol);
}

/// Seconds per call of `f`: the best of several rounds, since other work on a shared
/// machine only ever slows a round down.
pub fn best_time(dev: &Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    dev.synchronize().unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..30 {
        let iters = 3;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        dev.synchronize().unwrap();
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    best
}
