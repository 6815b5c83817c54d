//! Implicit-GEMM convolution against im2col + product, shape by shape: the figures that
//! decide `ops::conv_gemm::prefer_implicit`. Run it twice, once per path:
//!
//!   WGRAD_CONV=implicit cargo run --release --example conv_gemm [-- REPS]
//!   WGRAD_CONV=im2col   cargo run --release --example conv_gemm [-- REPS]
//!
//! Prints ms for the forward and for forward + backward (d x and d w) of each shape.

use std::time::Instant;

use wgrad::autodiff::grad;
use wgrad::{Conv2d, Device, Graph, Rng, Tensor};

/// (name, x (N, C, H, W), filters F, window, stride, padding, backward too).
type Shape = (&'static str, [usize; 4], usize, usize, usize, usize, bool);

const SHAPES: &[Shape] = &[
    (
        "bench 32x3x32x32 f16 3x3 p1",
        [32, 3, 32, 32],
        16,
        3,
        1,
        1,
        true,
    ),
    ("resnet 7x7/2 3@224", [1, 3, 224, 224], 64, 7, 2, 3, false),
    ("resnet 3x3 64@56", [1, 64, 56, 56], 64, 3, 1, 1, false),
    ("resnet 3x3/2 128@56", [1, 128, 56, 56], 128, 3, 2, 1, false),
    ("resnet 3x3 128@28", [1, 128, 28, 28], 128, 3, 1, 1, false),
    ("resnet 3x3/2 256@28", [1, 256, 28, 28], 256, 3, 2, 1, false),
    ("resnet 3x3 256@14", [1, 256, 14, 14], 256, 3, 1, 1, false),
    ("resnet 3x3/2 512@14", [1, 512, 14, 14], 512, 3, 2, 1, false),
    ("resnet 3x3 512@7", [1, 512, 7, 7], 512, 3, 1, 1, false),
    (
        "8x64x112x112 f64 3x3 p1",
        [8, 64, 112, 112],
        64,
        3,
        1,
        1,
        true,
    ),
];

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let dev = Device::gpu()?;
    let mode = std::env::var("WGRAD_CONV").unwrap_or_else(|_| "auto".into());
    for &(name, xs, f, k, s, p, backward) in SHAPES {
        let geom = Conv2d::new(k, k).stride(s).padding(p);
        let ws = [f, xs[1], k, k];
        let mut row = Vec::new();
        for with_grad in [false, true] {
            if with_grad && !backward {
                continue;
            }
            let g = Graph::new();
            let x = g.input("x", &xs);
            let w = g.input("w", &ws);
            let y = x.conv2d(&w, geom)?;
            let loss = y.sum()?;
            let gr = grad(&loss, &[&x, &w])?;
            let outs = if with_grad {
                vec![&gr[0], &gr[1]]
            } else {
                vec![&y]
            };
            let res = dev.compile(&g, &outs, None).and_then(|exe| {
                let rnd = |sh: &[usize], seed| {
                    let n = sh.iter().product();
                    Tensor::from_slice(&dev, &Rng::new(seed).vec_uniform(n, -1.0, 1.0), sh)
                };
                let (xt, wt) = (rnd(&xs, 1)?, rnd(&ws, 2)?);
                exe.run(&[("x", &xt), ("w", &wt)])?;
                dev.synchronize()?;
                let (d0, t0) = (dev.dispatch_count(), Instant::now());
                for _ in 0..reps {
                    exe.run(&[("x", &xt), ("w", &wt)])?;
                }
                dev.synchronize()?;
                let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
                Ok((ms, (dev.dispatch_count() - d0) / reps as u64))
            });
            let label = if with_grad { "fwd+bwd" } else { "fwd" };
            row.push(match res {
                Ok((ms, d)) => format!("{label} {ms:.1} ms ({d} dispatches)"),
                Err(e) => format!("{label} error: {e}"),
            });
        }
        println!("[{mode}] {name}: {}", row.join(", "));
    }
    Ok(())
}
