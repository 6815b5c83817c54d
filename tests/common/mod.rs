//! Shared test helpers: the GPU device under test, seeded data, and the
//! `|got - ref| <= atol + rtol·|ref|` comparison that prints the first mismatches.
#![allow(dead_code)]

pub mod onnx;

use std::sync::OnceLock;

use wgrad::{Device, Graph, Rng, Tensor, Var};

thread_local! {
    static KEPT: std::cell::RefCell<Vec<Tensor>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps a kernel's result alive until the test's thread ends. A dropped result's buffer
/// goes back to the device's pool and can become the next kernel's output, and then the
/// elements that kernel never wrote (a loop stopped at lavapipe's cap, a missing block)
/// still hold this right answer and compare equal. Tests that run several kernels on the
/// same inputs keep every result.
pub fn keep_alive(t: Tensor) {
    KEPT.with(|k| k.borrow_mut().push(t));
}

/// Sizes every family is tested on: 1, odd, around the tile/workgroup, large.
pub const SIZES: [usize; 7] = [1, 3, 17, 64, 255, 257, 1000];

/// The GPU device for this test binary, shared by its tests. Without an
/// adapter the test is skipped — except with `CI=true`, where it fails.
/// `WGPU_BACKEND` picks the backend (`Device::gpu` honours it), so one test file covers
/// every backend unchanged: `scripts/test.sh` runs the kernel files on Vulkan, then again
/// with `WGPU_BACKEND=gl` (llvmpipe through naga's GLSL writer, no subgroups or f16).
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

/// A named feed of a gradient check: real values (held in f64 so a finite
/// difference step is not rounded away) or i32 labels.
#[derive(Clone)]
pub enum Feed {
    Real(Vec<f64>, Vec<usize>),
    /// Real values held fixed (not differentiated: a step counter, a mask).
    Fixed(Vec<f64>, Vec<usize>),
    Labels(Vec<i32>, Vec<usize>),
}

impl Feed {
    /// Real values from f32 data (exact in f64).
    pub fn real(values: &[f32], shape: &[usize]) -> Feed {
        Feed::Real(values.iter().map(|&v| v as f64).collect(), shape.to_vec())
    }
}

/// Compiles `outs` of `g` on `dev` (no optimizer), runs it once with `feeds` (tensors on
/// any device, moved to `dev`) and returns the outputs as f32 and the executor.
pub fn run_compiled(
    dev: &Device,
    g: &Graph,
    outs: &[&Var],
    feeds: &[(&str, &Tensor)],
) -> (Vec<Vec<f32>>, wgrad::Executor) {
    let exe = dev.compile(g, outs, None).expect("compile");
    let moved: Vec<Tensor> = feeds.iter().map(|f| f.1.to_device(dev).unwrap()).collect();
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|f| f.0).zip(&moved).collect();
    let got = exe.run(&named).expect("run");
    let values = got.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
    (values, exe)
}

/// Compiles `outs` of `g` on `dev`, runs it once with `feeds` and returns the
/// outputs in f64 (exact on [`Device::cpu_f64`], widened f32 elsewhere).
pub fn run_graph(
    dev: &Device,
    g: &Graph,
    outs: &[&Var],
    feeds: &[(String, Feed)],
) -> Vec<Vec<f64>> {
    let exe = dev.compile(g, outs, None).expect("compile");
    let tensors: Vec<Tensor> = feeds
        .iter()
        .map(|(_, f)| match f {
            Feed::Real(v, s) | Feed::Fixed(v, s) => Tensor::from_f64(dev, v, s).expect("feed"),
            Feed::Labels(v, s) => Tensor::from_slice(dev, v, s).expect("feed"),
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = feeds
        .iter()
        .map(|(n, _)| n.as_str())
        .zip(&tensors)
        .collect();
    exe.run(&named)
        .expect("run")
        .iter()
        .map(|t| t.to_vec_f64().expect("read back"))
        .collect()
}

/// Checks the gradients `grads[k]` of the scalar `loss` with respect to the
/// real feeds (in order) against central finite differences, everything
/// evaluated in f64 on the double-precision CPU reference: step h = 1e-4,
/// so truncation (~h²·f‴/6) and rounding (~1e-16/h) errors stay near 1e-9
/// and `|analytic - numeric| <= 1e-6 + 1e-6·|numeric|` separates a right rule
/// from a wrong one by orders of magnitude. Returns the f64 analytic gradients.
pub fn check_finite_differences(
    label: &str,
    g: &Graph,
    loss: &Var,
    grads: &[Var],
    feeds: &[(String, Feed)],
) -> Vec<Vec<f64>> {
    let wide = Device::cpu_f64();
    let outs: Vec<&Var> = grads.iter().collect();
    let analytic = run_graph(&wide, g, &outs, feeds);
    let h = 1e-4;
    let mut k = 0;
    for (i, (name, feed)) in feeds.iter().enumerate() {
        let Feed::Real(base, shape) = feed else {
            continue;
        };
        let numeric: Vec<f64> = (0..base.len())
            .map(|e| {
                let mut f = feeds.to_vec();
                let mut at = |x: f64| {
                    let mut v = base.clone();
                    v[e] = x;
                    f[i].1 = Feed::Real(v, shape.clone());
                    run_graph(&wide, g, &[loss], &f)[0][0]
                };
                (at(base[e] + h) - at(base[e] - h)) / (2.0 * h)
            })
            .collect();
        assert_close_f64(
            &format!("{label}: d/d{name} vs finite differences (f64)"),
            &analytic[k],
            &numeric,
            1e-6,
            1e-6,
        );
        k += 1;
    }
    analytic
}

/// `|got - want| <= atol + rtol·|want|` element-wise in f64, printing the first mismatches.
pub fn assert_close_f64(label: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| (*g - *w).abs().is_nan() || (*g - *w).abs() > atol + rtol * w.abs())
        .take(8)
        .map(|(i, (g, w))| format!("  [{i}] got {g} want {w} (diff {:e})", (g - w).abs()))
        .collect();
    assert!(bad.is_empty(), "{label}: mismatches\n{}", bad.join("\n"));
}

/// The CPU reference, then the GPU under test when there is one.
pub fn devices() -> Vec<Device> {
    std::iter::once(Device::cpu()).chain(gpu()).collect()
}

/// A tensor's f32 values, widened to f64 for the linear-algebra checks.
pub fn read_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect()
}

/// The Frobenius (Euclidean) norm.
pub fn fro(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `relu(x·w1 + b1)·w2 + b2`: the two-layer network the training-step tests use.
pub fn two_layer(x: &Var, w1: &Var, b1: &Var, w2: &Var, b2: &Var) -> Var {
    x.matmul(w1)
        .unwrap()
        .add(b1)
        .unwrap()
        .relu()
        .unwrap()
        .matmul(w2)
        .unwrap()
        .add(b2)
        .unwrap()
}

/// conv(x, w) → ·a[channel] → +c[channel] (→ + residual r) → ReLU, compiled for inference
/// on `dev` from seeded uniform feeds (x, w, c and r in [-1, 1), a in [0.5, 1)): its output
/// and the plan's dispatch entries. The block a folded batch norm leaves after a convolution
/// (tests/winograd, tests/conv_patches).
pub fn conv_block(
    dev: &Device,
    xs: [usize; 4],
    ws: [usize; 4],
    geom: wgrad::Conv2d,
    residual: bool,
) -> (Vec<f32>, Vec<String>) {
    let f = ws[0];
    let (oh, ow) = geom.output_size("test", &xs).unwrap();
    let ys = [xs[0], f, oh, ow];
    let g = Graph::new();
    let x = g.input("x", &xs);
    let w = g.input("w", &ws);
    let a = g.input("a", &[1, f, 1, 1]);
    let c = g.input("c", &[1, f, 1, 1]);
    let r = g.input("r", &ys);
    let mut y = x
        .conv2d(&w, geom)
        .unwrap()
        .mul(&a)
        .unwrap()
        .add(&c)
        .unwrap();
    if residual {
        y = y.add(&r).unwrap();
    }
    let y = y.relu().unwrap();
    let cpu = Device::cpu();
    let t = |seed: u64, s: &[usize], lo: f32| {
        Tensor::from_slice(&cpu, &uniform(seed, s.iter().product(), lo, 1.0), s).unwrap()
    };
    let feeds = [
        ("x", t(1, &xs, -1.0)),
        ("w", t(2, &ws, -1.0)),
        ("a", t(3, &[1, f, 1, 1], 0.5)),
        ("c", t(4, &[1, f, 1, 1], -1.0)),
        ("r", t(5, &ys, -1.0)),
    ];
    let named: Vec<(&str, &Tensor)> = feeds
        .iter()
        .filter(|(n, _)| residual || *n != "r")
        .map(|(n, t)| (*n, t))
        .collect();
    let (mut got, exe) = run_compiled(dev, &g, &[&y], &named);
    (got.remove(0), exe.dispatch_entries())
}
