//! burn-wgpu's conv2d forward + backward, the workload of wgrad's `conv2d_fwd_bwd`:
//! x 32x3x32x32, 16 filters 3x3, padding 1; loss = sum(conv(x, w)); gradients of x and w;
//! the loss read back and the device synced each step. Median of 10 steps after warm-up.
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;

fn main() {
    let device = burn::tensor::wgpu::WgpuOptions::default()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan)
        .init()
        .expect("a Vulkan adapter")
        .autodiff();
    let x = Tensor::<4>::random([32, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), &device)
        .require_grad();
    let w = Tensor::<4>::random([16, 3, 3, 3], Distribution::Uniform(-1.0, 1.0), &device)
        .require_grad();
    let step = || {
        let y = conv2d(x.clone(), w.clone(), None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        let loss = y.sum();
        let grads = loss.backward();
        let gx = x.grad(&grads).unwrap();
        let gw = w.grad(&grads).unwrap();
        let l: f32 = loss.into_scalar();
        device.sync().unwrap();
        drop((gx, gw));
        l
    };
    eprintln!("device: {device:?}");
    let t0 = Instant::now();
    step();
    eprintln!("first step {:.1} s", t0.elapsed().as_secs_f64());
    for _ in 0..3 {
        step();
    }
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    for _ in 0..rounds {
        let mut ms: Vec<f64> = (0..10)
            .map(|_| {
                let t = Instant::now();
                step();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!("{{\"op\":\"burn_conv2d_fwd_bwd\",\"ms\":{:.3}}}", (ms[4] + ms[5]) / 2.0);
    }
}
