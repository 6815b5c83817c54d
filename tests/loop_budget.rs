//! Kernels whose loops grow with the input, each run past the 65,535 loop iterations after
//! which Mesa 22.3's lavapipe silently stops an invocation (leaving its output unwritten):
//! planned kernels must still match the CPU reference, refused sizes must be a clear error
//! naming the op. Every per-invocation loop stays within `gpu::LOOP_BUDGET` (16,384).

mod common;

use common::{assert_close, assert_tensor_close, gpu, pair, uniform};
use wgrad::autodiff::grad;
use wgrad::{linalg, roofline, Conv2d, Device, Error, Graph, Tensor};

/// The message of an `Error::Invalid`, checked to name `op`.
fn invalid(e: Error, op: &str) -> String {
    match e {
        Error::Invalid { op: got, detail } => {
            assert_eq!(got, op, "{detail}");
            detail
        }
        other => panic!("{op}: expected Error::Invalid, got {other:?}"),
    }
}

/// col2im with windows whose loops would pass the cap in one invocation per pixel: a
/// 300x300 window (kh·(1 + kw) = 90,300 steps, nested) and a 1x70,000 one (70,000 steps of
/// one loop). The window is split over dispatches that add up.
#[test]
fn col2im_with_a_window_past_the_cap() {
    let Some(dev) = gpu() else { return };
    let cases = [
        ([1, 2, 300, 300], Conv2d::new(300, 300).padding(1)),
        ([1, 1, 2, 70_000], Conv2d::new(1, 70_000).padding(1)),
        // per-axis strides and dilations, a different padding on each side: 200·(1 + 100)
        // steps, also split
        (
            [1, 1, 205, 210],
            Conv2d::new(200, 100)
                .strides(3, 2)
                .pads(1, 0, 2, 3)
                .dilations(1, 2),
        ),
    ];
    for (k, (image, geom)) in cases.into_iter().enumerate() {
        let (oh, ow) = geom.output_size("col2im", &image).unwrap();
        let shape = [1, oh * ow, image[1] * geom.kh * geom.kw];
        let cols = uniform(1 + k as u64, shape.iter().product(), -1.0, 1.0);
        let (g, c) = pair(&dev, &cols, &shape);
        let got = g.col2im(geom, &image).unwrap().to_vec::<f32>().unwrap();
        let want = c.col2im(geom, &image).unwrap().to_vec::<f32>().unwrap();
        assert_close(&format!("col2im {geom:?}"), &got, &want, 1e-5, 1e-5);
    }
}

/// Pooling over a 256x256 window: a 65,536-long reduction per output (planned in passes),
/// and its gradient through col2im with a 256x256 window (65,792 steps unplanned).
#[test]
fn pooling_with_a_window_past_the_cap() {
    let Some(dev) = gpu() else { return };
    let shape = [1, 2, 257, 256];
    let xs = uniform(2, 2 * 257 * 256, -1.0, 1.0);
    let g = Graph::new();
    let x = g.input("x", &shape);
    let win = Conv2d::new(256, 256);
    let avg = x.avg_pool2d_window(win).unwrap();
    let max = x.max_pool2d_window(win).unwrap();
    let loss = avg.add(&max).unwrap().sum().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let run = |d: &Device| -> Vec<Vec<f32>> {
        let exe = d.compile(&g, &[&avg, &max, &dx], None).unwrap();
        let xt = Tensor::from_slice(d, &xs, &shape).unwrap();
        let out = exe.run(&[("x", &xt)]).unwrap();
        out.iter().map(|t| t.to_vec::<f32>().unwrap()).collect()
    };
    let (got, want) = (run(&dev), run(&Device::cpu()));
    for (k, name) in ["avg_pool2d", "max_pool2d", "d pool / dx"]
        .iter()
        .enumerate()
    {
        assert_close(name, &got[k], &want[k], 1e-5, 1e-4);
    }
}

/// Reductions and softmax of one 2^20-long row (one invocation would walk it all), with an
/// infinity so that the sums take their second, plain walk.
#[test]
fn reductions_and_softmax_of_a_long_row() {
    let Some(dev) = gpu() else { return };
    let n = 1 << 20;
    let mut xs = uniform(3, n, -4.0, 4.0);
    let (g, c) = pair(&dev, &xs, &[1, n]);
    for op in [wgrad::ReduceOp::Sum, wgrad::ReduceOp::Max] {
        let got = g.reduce(op, -1, false).unwrap().to_vec::<f32>().unwrap();
        let want = c.reduce(op, -1, false).unwrap().to_vec::<f32>().unwrap();
        assert_close(&format!("{op:?} of 2^20"), &got, &want, 1e-2, 1e-5);
    }
    let got = g.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    let want = c.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    assert_close("softmax of 2^20", &got, &want, 1e-10, 1e-4);
    // Odd length (scalar kernels), and an infinity: Kahan's correction is NaN, plain sum again.
    xs.truncate(n - 1);
    xs[12_345] = f32::INFINITY;
    let (g, c) = pair(&dev, &xs, &[n - 1]);
    let got = g.sum().unwrap().to_vec::<f32>().unwrap();
    let want = c.sum().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(got, want, "sum with an infinity");
    let got = g.softmax(0).unwrap().to_vec::<f32>().unwrap();
    let want = c.softmax(0).unwrap().to_vec::<f32>().unwrap();
    assert_close("softmax with an infinity", &got, &want, 0.0, 0.0);
}

/// Cross-entropy: rows of more classes than one invocation may walk are split into parts
/// (an error naming the limit before issue 20; tests/loss_vocab.rs has the vocabularies);
/// the one-workgroup mean falls back to per-row losses and a reduction past its walk
/// (320 rows of 16,384 classes would be 5 · 16,385 = 81,925 steps in one invocation).
#[test]
fn cross_entropy_past_the_cap() {
    let Some(dev) = gpu() else { return };
    let xs = uniform(3, 2 * 70_000, -3.0, 3.0);
    let (gx, cx) = pair(&dev, &xs, &[2, 70_000]);
    let gl = Tensor::from_slice(&dev, &[0i32, 69_999], &[2]).unwrap();
    let cl = Tensor::from_slice(&Device::cpu(), &[0i32, 69_999], &[2]).unwrap();
    assert_tensor_close(
        "cross_entropy 70000 classes",
        &gx.cross_entropy(&gl).unwrap(),
        &cx.cross_entropy(&cl).unwrap(),
        1e-4,
        1e-5,
    );
    let got = gx.cross_entropy_reduced(&gl, true).unwrap().item().unwrap();
    let want = cx.cross_entropy_reduced(&cl, true).unwrap().item().unwrap();
    assert_close(
        "cross_entropy mean 70000 classes",
        &[got],
        &[want],
        1e-4,
        1e-5,
    );

    let (rows, classes) = (320, 16_384);
    let xs = uniform(4, rows * classes, -3.0, 3.0);
    let ls: Vec<i32> = (0..rows).map(|i| ((i * 7919) % classes) as i32).collect();
    let (gx, cx) = pair(&dev, &xs, &[rows, classes]);
    let gl = Tensor::from_slice(&dev, &ls, &[rows]).unwrap();
    let cl = Tensor::from_slice(&Device::cpu(), &ls, &[rows]).unwrap();
    let got = gx.cross_entropy_reduced(&gl, true).unwrap().item().unwrap();
    let want = cx.cross_entropy_reduced(&cl, true).unwrap().item().unwrap();
    assert_close("cross_entropy mean", &[got], &[want], 1e-5, 1e-5);
}

/// The training-step form (loss and gradient in one dispatch when small): 1,280 rows of
/// 4,096 classes would be 20 · (3 · 4,096 + 2) steps fused, so it takes the two ops.
#[test]
fn cross_entropy_loss_and_gradient_past_the_cap() {
    let Some(dev) = gpu() else { return };
    let (rows, classes) = (1280, 4096);
    let g = Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let loss = x.cross_entropy(&y).unwrap().mean().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let xs = uniform(5, rows * classes, -3.0, 3.0);
    let ls: Vec<i32> = (0..rows).map(|i| ((i * 31) % classes) as i32).collect();
    let run = |d: &Device| -> Vec<Vec<f32>> {
        let exe = d.compile(&g, &[&loss, &dx], None).unwrap();
        let xt = Tensor::from_slice(d, &xs, &[rows, classes]).unwrap();
        let yt = Tensor::from_slice(d, &ls, &[rows]).unwrap();
        let out = exe.run(&[("x", &xt), ("y", &yt)]).unwrap();
        out.iter().map(|t| t.to_vec::<f32>().unwrap()).collect()
    };
    let (got, want) = (run(&dev), run(&Device::cpu()));
    assert_close("cross_entropy mean", &got[0], &want[0], 1e-5, 1e-5);
    assert_close("d cross_entropy", &got[1], &want[1], 1e-9, 1e-4);
}

/// QR of a 16,384-row matrix: one invocation forming a reflector used to loop 4 · 16,384 - 1
/// = 65,535 times; a reflector is now formed by a workgroup. Past 16,384 rows the blocked
/// path runs it (its products split their K loop), checked against the reference; past
/// 16,384 columns (the finiteness check walks a row per invocation): an error.
#[test]
fn qr_with_rows_at_the_limit() {
    let Some(dev) = gpu() else { return };
    // The device path (lavapipe's default for these shapes is the host QR).
    let device_qr = linalg::QrOptions {
        host_max: Some(0),
        ..Default::default()
    };
    let (m, n) = (16_384, 3);
    let a = uniform(6, m * n, -1.0, 1.0);
    let (ga, ca) = pair(&dev, &a, &[m, n]);
    let (gq, gr) = linalg::qr_with_options(&ga, &device_qr).unwrap();
    let (cq, cr) = linalg::qr(&ca).unwrap();
    // Householder QR is unique up to the signs of R's rows (and Q's columns): the same
    // algorithm on both sides picks the same signs.
    let got = gr.to_vec::<f32>().unwrap();
    let want = cr.to_vec::<f32>().unwrap();
    assert_close("qr R", &got, &want, 1e-3, 1e-3);
    let got = gq.to_vec::<f32>().unwrap();
    let want = cq.to_vec::<f32>().unwrap();
    assert_close("qr Q", &got, &want, 1e-4, 1e-3);

    let (m, n) = (70_000, 2);
    let a = uniform(7, m * n, -1.0, 1.0);
    let (ga, ca) = pair(&dev, &a, &[m, n]);
    let (gq, gr) = linalg::qr_with_options(&ga, &device_qr).unwrap();
    let (cq, cr) = linalg::qr(&ca).unwrap();
    let (got, want) = (gr.to_vec::<f32>().unwrap(), cr.to_vec::<f32>().unwrap());
    assert_close("qr R past 16,384 rows", &got, &want, 1e-3, 1e-3);
    let (got, want) = (gq.to_vec::<f32>().unwrap(), cq.to_vec::<f32>().unwrap());
    assert_close("qr Q past 16,384 rows", &got, &want, 1e-4, 1e-3);

    let wide = Tensor::zeros(&dev, &[2, 70_000]).unwrap();
    let detail = invalid(linalg::qr(&wide).unwrap_err(), "qr");
    assert!(detail.contains("16384"), "{detail}");
}

/// The GPU SVD has no loop over a column in one invocation (its products split their sums,
/// the rest runs on the host), so the rows are not capped: 262,148 rows, past what a walk of
/// a whole column could take even at 4 rows a step, against the CPU reference, with U's
/// columns orthonormal.
#[test]
fn svd_takes_rows_past_the_loop_budget() {
    let Some(dev) = gpu() else { return };
    let (m, n) = (262_148, 3);
    let a = uniform(7, m * n, -1.0, 1.0);
    let (ga, ca) = pair(&dev, &a, &[m, n]);
    let (gu, gs, _) = linalg::svd(&ga).unwrap();
    let (_, cs, _) = linalg::svd(&ca).unwrap();
    let got = gs.to_vec::<f32>().unwrap();
    let want = cs.to_vec::<f32>().unwrap();
    assert_close("svd singular values", &got, &want, 1e-3, 1e-4);
    let utu = gu.matmul_tn(&gu).unwrap().to_vec::<f32>().unwrap();
    let eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    assert_close("svd UᵀU", &utu, &eye, 1e-4, 0.0);
}

/// The roofline probe refuses more steps per chain than the budget, by name.
#[test]
fn fma_peak_refuses_steps_past_the_budget() {
    let Some(dev) = gpu() else { return };
    let seeds = Tensor::from_slice(&dev, &[0.5f32; 64], &[64]).unwrap();
    let detail = invalid(roofline::fma_peak(&seeds, 70_000).unwrap_err(), "fma_peak");
    assert!(detail.contains("16384"), "{detail}");
    assert_eq!(roofline::MAX_FMA_STEPS, 16_384);
}

/// A strided copy with its run length pinned (`WGRAD_COPY_RUN`) past the cap: runs in a
/// child process so the variable touches no other test.
#[test]
fn pinned_copy_run_stays_within_budget() {
    if gpu().is_none() || std::env::var("WGRAD_COPY_RUN").is_ok() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args(["child_long_copy_run", "--exact", "--test-threads=1"])
        .env("WGRAD_COPY_RUN", "100000")
        .output()
        .expect("run the child test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the child test did not run:\n{text}"
    );
}

/// Runs (for real) only inside `pinned_copy_run_stays_within_budget`'s child.
#[test]
fn child_long_copy_run() {
    let (Some(dev), Ok(_)) = (gpu(), std::env::var("WGRAD_COPY_RUN")) else {
        return;
    };
    // Rows of 100,001 elements starting one in: a strided copy, not a buffer copy.
    let xs = uniform(8, 3 * 100_003, -1.0, 1.0);
    let (g, c) = pair(&dev, &xs, &[3, 100_003]);
    let got = g.narrow(1, 1, 100_001).unwrap().to_vec::<f32>().unwrap();
    let want = c.narrow(1, 1, 100_001).unwrap().to_vec::<f32>().unwrap();
    assert_close("narrow with pinned runs", &got, &want, 0.0, 0.0);
}
