//! Weights held in textures by an inference plan (`capture::pin`, src/gpu/texture.rs).
//!
//! Where an adapter reads products' operands through textures (lavapipe), a recorded plan
//! without an optimizer reads its parameters through textures of its own, filled at compile
//! time and again by `set_param`, instead of copying them before every dispatch. What a user
//! can observe: every run after a `set_param` computes with the new values (a texture left
//! stale would not), and a training plan, whose weights change every step, pins nothing.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::executor::with_texture_reads;
use wgrad::{Conv2d, Graph, Init, Sgd, Tensor};

/// relu(x·w + b) in f64: x (m, k), w (k, n), b (n).
fn dense_relu(x: &[f32], w: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[p * n + j] as f64)
                .sum();
            y[i * n + j] = (dot + b[j] as f64).max(0.0) as f32;
        }
    }
    y
}

/// Direct 2-D convolution in f64, one group, no dilation: x (1, C, H, W), w (F, C, KH, KW).
fn conv(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    ws: [usize; 4],
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let ([_, c, h, wd], [f, _, kh, kw]) = (xs, ws);
    let (oh, ow) = (
        (h + 2 * pad - kh) / stride + 1,
        (wd + 2 * pad - kw) / stride + 1,
    );
    let mut y = vec![0.0f32; f * oh * ow];
    for o in 0..f {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = 0.0f64;
                for ch in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (iy, ix) = (
                                (oy * stride + ky) as isize - pad as isize,
                                (ox * stride + kx) as isize - pad as isize,
                            );
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                continue;
                            }
                            let xv = x[(ch * h + iy as usize) * wd + ix as usize] as f64;
                            s += xv * w[((o * c + ch) * kh + ky) * kw + kx] as f64;
                        }
                    }
                }
                y[(o * oh + oy) * ow + ox] = s as f32;
            }
        }
    }
    y
}

/// Whether the plan read any operand through a texture (then its weights are pinned).
fn reads_textures(entries: &[String]) -> bool {
    entries.iter().any(|e| e.ends_with(".tex"))
}

#[test]
fn an_inference_plan_computes_with_the_weights_set_param_gave() {
    let Some(dev) = gpu() else { return };
    // 3.8 M multiply-adds: past the register-blocked variant's range, on the subgroup kernels.
    let (m, k, n) = (64, 300, 200);
    let g = Graph::new();
    let x = g.input("x", &[m, k]);
    let w = g.param("w", &[k, n], Init::Zeros);
    let b = g.param("b", &[n], Init::Zeros);
    let y = x.matmul(&w).unwrap().add(&b).unwrap().relu().unwrap();
    // The textured form (pinned weights), which the faster form might not be.
    let exe = with_texture_reads(true, || dev.compile(&g, &[&y], None)).unwrap();
    let xv = uniform(1, m * k, -1.0, 1.0);
    let xt = Tensor::from_slice(&dev, &xv, &[m, k]).unwrap();
    let zeros = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
    assert!(zeros.iter().all(|&v| v == 0.0), "zero weights");
    let bv = uniform(2, n, -1.0, 1.0);
    exe.set_param("b", &Tensor::from_slice(&dev, &bv, &[n]).unwrap())
        .unwrap();
    for seed in [3, 4] {
        let wv = uniform(seed, k * n, -1.0, 1.0);
        exe.set_param("w", &Tensor::from_slice(&dev, &wv, &[k, n]).unwrap())
            .unwrap();
        let want = dense_relu(&xv, &wv, &bv, (m, k, n));
        for run in 0..2 {
            let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
            assert_close(
                &format!("weights {seed}, run {run}"),
                &got,
                &want,
                1e-4,
                1e-4,
            );
        }
    }
    let entries = exe.dispatch_entries();
    if exe.is_recorded() && reads_textures(&entries) {
        let pinned = exe.plan().pinned_texture_bytes;
        assert!(
            pinned >= (k * n * 4) as u64,
            "{pinned} bytes pinned: {entries:?}"
        );
    }
}

/// A convolution's filters are the product's other operand (A, where the weights of a
/// dense layer are B): pinned too, and refilled by `set_param` through the reshape.
#[test]
fn an_inference_convolution_follows_set_param() {
    let Some(dev) = gpu() else { return };
    // Stride 2 (im2col + product, not Winograd): (48, 72)·(72, 64).
    let (xs, ws) = ([1, 8, 15, 15], [48, 8, 3, 3]);
    let g = Graph::new();
    let x = g.input("x", &xs);
    let w = g.param("w", &ws, Init::Zeros);
    let y = x
        .conv2d(&w, Conv2d::new(3, 3).padding(1).stride(2))
        .unwrap();
    // The textured form (pinned weights), which the faster form might not be.
    let exe = with_texture_reads(true, || dev.compile(&g, &[&y], None)).unwrap();
    let xv = uniform(5, xs.iter().product(), -1.0, 1.0);
    let xt = Tensor::from_slice(&dev, &xv, &xs).unwrap();
    for seed in [6, 7] {
        let wv = uniform(seed, ws.iter().product(), -1.0, 1.0);
        exe.set_param("w", &Tensor::from_slice(&dev, &wv, &ws).unwrap())
            .unwrap();
        let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
        let want = conv(&xv, xs, &wv, ws, 2, 1);
        assert_close(&format!("filters {seed}"), &got, &want, 1e-4, 1e-4);
    }
}

#[test]
fn a_training_plan_pins_nothing() {
    let Some(dev) = gpu() else { return };
    let g = Graph::new();
    let x = g.input("x", &[64, 300]);
    let w = g.param("w", &[300, 200], Init::KaimingNormal { seed: 1 });
    let loss = x.matmul(&w).unwrap().relu().unwrap().sum().unwrap();
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.01)).unwrap();
    let xt = Tensor::from_slice(&dev, &uniform(8, 64 * 300, -1.0, 1.0), &[64, 300]).unwrap();
    exe.run(&[("x", &xt)]).unwrap();
    assert_eq!(
        exe.plan().pinned_texture_bytes,
        0,
        "the weights change every step"
    );
}
