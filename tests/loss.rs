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
