//! Fused softmax cross-entropy: GPU against the CPU reference (forward and
//! backward), its gradient against finite differences, stability and errors.

mod common;

use common::{assert_close, assert_tensor_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Device, Error, Graph, Rng, Tensor};

fn labels(seed: u64, n: usize, classes: usize) -> Vec<i32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(classes) as i32).collect()
}

#[test]
fn forward_and_backward_match_reference() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (rows, classes) in [
        (1, 1),
        (1, 10),
        (3, 17),
        (256, 10),
        (257, 255),
        (1000, 3),
        (7, 64), // the last width of the row-per-invocation backward
        (7, 65), // the first of the lse pass + element-per-invocation backward
        (5, 4000),
    ] {
        let x = uniform(rows as u64, rows * classes, -6.0, 6.0);
        let l = labels(rows as u64 + 1, rows, classes);
        let up = uniform(rows as u64 + 2, rows, 0.5, 1.5);
        let (gx, cx) = (
            Tensor::from_slice(&dev, &x, &[rows, classes]).unwrap(),
            Tensor::from_slice(&cpu, &x, &[rows, classes]).unwrap(),
        );
        let (gl, cl) = (
            Tensor::from_slice(&dev, &l, &[rows]).unwrap(),
            Tensor::from_slice(&cpu, &l, &[rows]).unwrap(),
        );
        let (gu, cu) = (
            Tensor::from_slice(&dev, &up, &[rows]).unwrap(),
            Tensor::from_slice(&cpu, &up, &[rows]).unwrap(),
        );
        let label = format!("cross_entropy ({rows}, {classes})");
        assert_tensor_close(
            &label,
            &gx.cross_entropy(&gl).unwrap(),
            &cx.cross_entropy(&cl).unwrap(),
            1e-5,
            1e-5,
        );
        let back = format!("{label} backward");
        assert_tensor_close(
            &back,
            &gx.cross_entropy_backward(&gl, &gu).unwrap(),
            &cx.cross_entropy_backward(&cl, &cu).unwrap(),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn large_logits_stay_finite() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let x = Tensor::from_slice(&dev, &[1e4f32, -1e4, 0.0, 0.0, 1e4, 1e4], &[2, 3]).unwrap();
        let l = Tensor::from_slice(&dev, &[1i32, 0], &[2]).unwrap();
        let got = x.cross_entropy(&l).unwrap().to_vec::<f32>().unwrap();
        // row 0: lse = 1e4, loss = 1e4 - (-1e4) = 2e4; row 1: lse = ln 2 + 1e4 over {0, 1e4, 1e4}... label 0 -> 1e4 + ln 2
        assert_close(
            "cross_entropy of ±1e4",
            &got,
            &[2e4, 1e4 + std::f32::consts::LN_2],
            0.0,
            1e-6,
        );
    }
}

#[test]
fn gradient_matches_finite_differences_and_gpu() {
    let (rows, classes) = (4, 5);
    let g = Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let loss = x.cross_entropy(&y).unwrap().mean().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let xs = uniform(3, rows * classes, -2.0, 2.0);
    let ls = labels(4, rows, classes);
    let eval = |dev: &Device, xv: &[f32], outs: &[&wgrad::Var]| -> Vec<Vec<f32>> {
        let exe = dev.compile(&g, outs, None).unwrap();
        let xt = Tensor::from_slice(dev, xv, &[rows, classes]).unwrap();
        let yt = Tensor::from_slice(dev, &ls, &[rows]).unwrap();
        exe.run(&[("x", &xt), ("y", &yt)])
            .unwrap()
            .iter()
            .map(|t| t.to_vec::<f32>().unwrap())
            .collect()
    };
    let feeds = [
        ("x".to_string(), Feed::real(&xs, &[rows, classes])),
        ("y".to_string(), Feed::Labels(ls.clone(), vec![rows])),
    ];
    check_finite_differences(
        "cross_entropy",
        &g,
        &loss,
        std::slice::from_ref(&dx),
        &feeds,
    );
    let analytic = eval(&Device::cpu(), &xs, &[&dx]).remove(0);
    if let Some(dev) = gpu() {
        assert_close(
            "d cross_entropy GPU vs CPU",
            &eval(&dev, &xs, &[&dx])[0],
            &analytic,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[2, 3]).unwrap();
    let bad = Tensor::from_slice(&cpu, &[0i32, 3], &[2]).unwrap();
    let e = x.cross_entropy(&bad).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { op: "cross_entropy", detail } if detail.contains("label 3")),
        "{e}"
    );
    let wrong_shape = Tensor::from_slice(&cpu, &[0i32, 1, 2], &[3]).unwrap();
    assert!(matches!(
        x.cross_entropy(&wrong_shape).unwrap_err(),
        Error::Shape {
            op: "cross_entropy",
            ..
        }
    ));
    let float_labels = Tensor::zeros(&cpu, &[2]).unwrap();
    assert!(matches!(
        x.cross_entropy(&float_labels).unwrap_err(),
        Error::DType { .. }
    ));
    // In a graph: f32 labels are refused when the graph is built.
    let g = Graph::new();
    let logits = g.input("x", &[2, 3]);
    assert!(matches!(
        logits.cross_entropy(&g.input("y", &[2])).unwrap_err(),
        Error::DType { .. }
    ));
    if let Some(dev) = gpu() {
        // The GPU kernel reports an out-of-range label in the device's status words: the
        // next readback is the same typed error, and the device works on afterwards.
        let x = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let bad = Tensor::from_slice(&dev, &[0i32, 3], &[2]).unwrap();
        let e = x.cross_entropy(&bad).unwrap().to_vec::<f32>().unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { op: "cross_entropy", detail } if detail.contains("label 3 outside 0..3")),
            "{e}"
        );
        let good = Tensor::from_slice(&dev, &[0i32, 2], &[2]).unwrap();
        let v = x.cross_entropy(&good).unwrap().to_vec::<f32>().unwrap();
        assert!(v.iter().all(|l| (l - 3f32.ln()).abs() < 1e-6), "{v:?}");
        // Negative labels, through the gradient's pass (in a graph), and synchronize.
        let neg = Tensor::from_slice(&dev, &[-1i32, 1], &[2]).unwrap();
        let ones = Tensor::full(&dev, 1.0, &[2]).unwrap();
        let _dx = x.cross_entropy_backward(&neg, &ones).unwrap();
        let e = dev.synchronize().unwrap_err();
        assert!(e.to_string().contains("label -1 outside 0..3"), "{e}");
        dev.synchronize().unwrap();
        // The same through the backward for wide rows (its lse pass reports it).
        let wide = Tensor::zeros(&dev, &[2, 100]).unwrap();
        let bad = Tensor::from_slice(&dev, &[100i32, 1], &[2]).unwrap();
        let _dx = wide.cross_entropy_backward(&bad, &ones).unwrap();
        let e = dev.synchronize().unwrap_err();
        assert!(e.to_string().contains("label 100 outside 0..100"), "{e}");
        dev.synchronize().unwrap();
    }
}

#[test]
fn a_bad_label_is_reported_to_the_thread_that_recorded_it() {
    let Some(dev) = gpu() else { return };
    let bad = std::thread::spawn({
        let dev = dev.clone();
        move || {
            let x = Tensor::zeros(&dev, &[2, 3]).unwrap();
            let labels = Tensor::from_slice(&dev, &[0i32, 7], &[2]).unwrap();
            let loss = x.cross_entropy(&labels).unwrap();
            // Let another thread read back meanwhile: it must not get this error.
            std::thread::sleep(std::time::Duration::from_millis(200));
            loss.to_vec::<f32>().unwrap_err()
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    for _ in 0..5 {
        let y = Tensor::full(&dev, 2.0, &[4]).unwrap().sum().unwrap();
        assert_eq!(y.item().unwrap(), 8.0);
    }
    let e = bad.join().unwrap();
    assert!(e.to_string().contains("label 7 outside 0..3"), "{e}");
}

/// The mean and the sum over rows of `cross_entropy` as one op: GPU (one workgroup, or
/// past its walk limit `cross_entropy` + `mean`/`sum`) against the f64 CPU reference, on
/// row counts around the workgroup of 64 and rows wide and narrow.
#[test]
fn reduced_matches_reference() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (rows, classes) in [
        (1, 1),
        (1, 10),
        (3, 17),
        (63, 5),
        (64, 5),
        (65, 5),
        (256, 10),
        (1000, 3),
        (129, 64),
        (5, 4000),
        // Past the one-workgroup walk: wide rows, and many narrow ones.
        (129, 4000),
        (70_000, 8),
    ] {
        let x = uniform(rows as u64 + 7, rows * classes, -6.0, 6.0);
        let l = labels(rows as u64 + 8, rows, classes);
        let (gx, cx) = (
            Tensor::from_slice(&dev, &x, &[rows, classes]).unwrap(),
            Tensor::from_slice(&cpu, &x, &[rows, classes]).unwrap(),
        );
        let (gl, cl) = (
            Tensor::from_slice(&dev, &l, &[rows]).unwrap(),
            Tensor::from_slice(&cpu, &l, &[rows]).unwrap(),
        );
        // The reference itself against the per-row reference reduced in f64.
        let per_row: Vec<f64> = cx
            .cross_entropy(&cl)
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let sum: f64 = per_row.iter().sum();
        for mean in [true, false] {
            let label = format!("cross_entropy_reduced ({rows}, {classes}) mean {mean}");
            let want = cx.cross_entropy_reduced(&cl, mean).unwrap();
            let plain = if mean {
                cx.cross_entropy(&cl).unwrap().mean().unwrap()
            } else {
                cx.cross_entropy(&cl).unwrap().sum().unwrap()
            };
            assert_eq!(
                want.shape(),
                plain.shape(),
                "{label}: shape of mean()/sum()"
            );
            assert_eq!(want.shape(), &[] as &[usize], "{label}: rank 0");
            let expect = if mean { sum / rows as f64 } else { sum };
            assert_close(
                &format!("{label} CPU"),
                &want.to_vec::<f32>().unwrap(),
                &[expect as f32],
                1e-6,
                1e-6,
            );
            assert_tensor_close(
                &label,
                &gx.cross_entropy_reduced(&gl, mean).unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// Batched logits (B, T, C) against labels (B, T) reduce over all B·T rows.
#[test]
fn reduced_over_a_batch_of_sequences() {
    let cpu = Device::cpu();
    let (b, t, c) = (3, 5, 7);
    let x = uniform(11, b * t * c, -3.0, 3.0);
    let l = labels(12, b * t, c);
    for dev in [Some(cpu.clone()), gpu()].into_iter().flatten() {
        let xt = Tensor::from_slice(&dev, &x, &[b, t, c]).unwrap();
        let lt = Tensor::from_slice(&dev, &l, &[b, t]).unwrap();
        let want = xt.cross_entropy(&lt).unwrap().mean().unwrap();
        let got = xt.cross_entropy_reduced(&lt, true).unwrap();
        assert_eq!(got.shape(), want.shape());
        assert_close(
            &format!("(B, T, C) mean on {}", dev.name()),
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            1e-6,
            1e-6,
        );
    }
}

/// Small problems take one dispatch on a GPU, problems past the walk limit take
/// `cross_entropy` and a reduction. Counted on a device of this test's own, since the
/// shared one counts the other tests' dispatches too.
#[test]
fn reduced_is_one_dispatch_when_small() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let count = |rows: usize, classes: usize| {
        let x = Tensor::zeros(&dev, &[rows, classes]).unwrap();
        let l = Tensor::from_slice(&dev, &vec![0i32; rows], &[rows]).unwrap();
        dev.synchronize().unwrap();
        let d0 = dev.dispatch_count();
        let loss = x.cross_entropy_reduced(&l, true).unwrap();
        let d = dev.dispatch_count() - d0;
        let v = loss.item().unwrap();
        let want = (classes as f32).ln();
        assert!(
            (v - want).abs() <= 1e-5 * want.max(1.0),
            "{rows}x{classes}: {v} vs {want}"
        );
        d
    };
    assert_eq!(count(256, 10), 1);
    assert_eq!(count(4096, 10), 1);
    // ceil(16128 / 64) · (64 + 1) = 16380 steps: the largest walk still fused (the
    // budget is 16384); one more row makes 253 · 65 = 16445.
    assert_eq!(count(16128, 64), 1);
    assert!(count(16129, 64) >= 2, "past the walk limit: two ops");
}

/// Non-finite logits: a row holding +inf or NaN is NaN, so the mean and sum are NaN; a
/// label logit of -inf makes that row's loss +inf, and so the sum; a -inf logit off the
/// label adds nothing. No rows sum to +0.
#[test]
fn reduced_propagates_non_finite_and_empty() {
    let cpu = Device::cpu();
    let inf = f32::INFINITY;
    // Row 1 of each is (2, 3, 4) with label 1: loss ln(e^-1 + 1 + e) = 1.4076059644443804.
    let row1 = 1.4076059644443804f64;
    // Row 0 (-inf, 0, 1) with label 1: ln(1 + e) = 1.3132616875182228.
    let row0 = 1.3132616875182228f64;
    let cases: [(&[f32], [i32; 2], f64); 4] = [
        (&[0.0, inf, 1.0, 2.0, 3.0, 4.0], [0, 1], f64::NAN),
        (&[0.0, f32::NAN, 1.0, 2.0, 3.0, 4.0], [0, 1], f64::NAN),
        (&[-inf, 0.0, 1.0, 2.0, 3.0, 4.0], [0, 1], f64::INFINITY),
        (&[-inf, 0.0, 1.0, 2.0, 3.0, 4.0], [1, 1], row0 + row1),
    ];
    for dev in [Some(cpu.clone()), gpu()].into_iter().flatten() {
        for (k, (x, l, sum)) in cases.iter().enumerate() {
            let xt = Tensor::from_slice(&dev, x, &[2, 3]).unwrap();
            let lt = Tensor::from_slice(&dev, l, &[2]).unwrap();
            for mean in [true, false] {
                let got = xt.cross_entropy_reduced(&lt, mean).unwrap();
                let want = if mean { sum / 2.0 } else { *sum } as f32;
                assert_close(
                    &format!("case {k} mean {mean} on {}", dev.name()),
                    &got.to_vec::<f32>().unwrap(),
                    &[want],
                    1e-6,
                    1e-6,
                );
            }
        }
        let x = Tensor::zeros(&dev, &[0, 3]).unwrap();
        let l = Tensor::from_slice(&dev, &[] as &[i32], &[0]).unwrap();
        let sum = x.cross_entropy_reduced(&l, false).unwrap();
        assert_eq!(
            sum.shape(),
            x.cross_entropy(&l).unwrap().sum().unwrap().shape()
        );
        let v = sum.item().unwrap();
        assert!(
            v == 0.0 && v.is_sign_positive(),
            "empty sum on {}: {v}",
            dev.name()
        );
        // The mean of no rows is the error `mean` of the empty per-row losses gives.
        let want = x.cross_entropy(&l).unwrap().mean().unwrap_err();
        let got = x.cross_entropy_reduced(&l, true).unwrap_err();
        assert!(
            matches!(&got, Error::Empty { op: "mean", shape } if shape == &[0]),
            "{got}"
        );
        assert_eq!(got.to_string(), want.to_string());
    }
}

/// The same typed errors as `cross_entropy`: at once on the CPU, at the next readback on
/// the GPU for a bad label (a NaN result meanwhile), and the device works on afterwards.
#[test]
fn reduced_bad_input_is_a_typed_error() {
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[2, 3]).unwrap();
    let bad = Tensor::from_slice(&cpu, &[0i32, 3], &[2]).unwrap();
    for mean in [true, false] {
        let e = x.cross_entropy_reduced(&bad, mean).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { op: "cross_entropy", detail } if detail.contains("label 3 outside 0..3")),
            "{e}"
        );
    }
    let wrong_shape = Tensor::from_slice(&cpu, &[0i32, 1, 2], &[3]).unwrap();
    assert!(matches!(
        x.cross_entropy_reduced(&wrong_shape, true).unwrap_err(),
        Error::Shape {
            op: "cross_entropy",
            ..
        }
    ));
    let float_labels = Tensor::zeros(&cpu, &[2]).unwrap();
    assert!(matches!(
        x.cross_entropy_reduced(&float_labels, true).unwrap_err(),
        Error::DType { .. }
    ));
    // Rows longer than one invocation's walk were refused before issue 20; now they are
    // split (tests/loss_vocab.rs): uniform logits give ln C.
    let wide = Tensor::zeros(&cpu, &[1, 16385]).unwrap();
    let one = Tensor::from_slice(&cpu, &[0i32], &[1]).unwrap();
    let v = wide
        .cross_entropy_reduced(&one, true)
        .unwrap()
        .item()
        .unwrap();
    assert!((v - 16385f32.ln()).abs() < 1e-5, "{v}");
    let Some(dev) = gpu() else { return };
    let on_gpu = Tensor::from_slice(&dev, &[0i32, 1], &[2]).unwrap();
    assert!(
        x.cross_entropy_reduced(&on_gpu, true).is_err(),
        "devices differ"
    );
    let x = Tensor::zeros(&dev, &[2, 3]).unwrap();
    for (labels, msg) in [
        ([0i32, 3], "label 3 outside 0..3"),
        ([-1, 1], "label -1 outside 0..3"),
    ] {
        let bad = Tensor::from_slice(&dev, &labels, &[2]).unwrap();
        let e = x
            .cross_entropy_reduced(&bad, true)
            .unwrap()
            .to_vec::<f32>()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { op: "cross_entropy", detail } if detail.contains(msg)),
            "{e}"
        );
        // The same error as the per-row op gives.
        let per_row = x.cross_entropy(&bad).unwrap().to_vec::<f32>().unwrap_err();
        assert_eq!(e.to_string(), per_row.to_string());
    }
    // The loss of a bad row is NaN: the status is cleared by that readback, so a sum read
    // after a synchronize shows it.
    let bad = Tensor::from_slice(&dev, &[0i32, 9], &[2]).unwrap();
    let loss = x.cross_entropy_reduced(&bad, false).unwrap();
    assert!(dev
        .synchronize()
        .unwrap_err()
        .to_string()
        .contains("label 9 outside 0..3"));
    assert!(loss.item().unwrap().is_nan());
    let good = Tensor::from_slice(&dev, &[0i32, 2], &[2]).unwrap();
    let v = x
        .cross_entropy_reduced(&good, true)
        .unwrap()
        .item()
        .unwrap();
    assert!((v - 3f32.ln()).abs() < 1e-6, "{v}");
    // Past the walk limit (cross_entropy + mean) the bad label is reported the same way.
    let (rows, classes) = (9000, 64);
    let wide = Tensor::zeros(&dev, &[rows, classes]).unwrap();
    let mut l = vec![0i32; rows];
    l[rows - 1] = 64;
    let bad = Tensor::from_slice(&dev, &l, &[rows]).unwrap();
    let e = wide
        .cross_entropy_reduced(&bad, true)
        .unwrap()
        .to_vec::<f32>()
        .unwrap_err();
    assert!(e.to_string().contains("label 64 outside 0..64"), "{e}");
}
