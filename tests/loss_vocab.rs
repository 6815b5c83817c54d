//! Cross-entropy over language-model vocabularies: rows longer than one invocation's loop
//! budget (split into parts), logits past one storage binding, and the ignore index. Every
//! number is checked against the CPU reference (f64), loss and gradient.

mod common;

use std::time::Instant;

use common::{assert_close, assert_tensor_close, check_finite_differences, gpu, Feed};
use wgrad::autodiff::grad;
use wgrad::{CrossEntropyOptions, Device, Error, Graph, Rng, Tensor};

/// Seeded labels in 0..classes, with row 0 at class 0 and the last row at C - 1.
fn labels(seed: u64, rows: usize, classes: usize) -> Vec<i32> {
    let mut r = Rng::new(seed);
    let mut l: Vec<i32> = (0..rows).map(|_| r.below(classes) as i32).collect();
    l[0] = 0;
    l[rows - 1] = classes as i32 - 1;
    l
}

fn logits(seed: u64, rows: usize, classes: usize) -> Vec<f32> {
    Rng::new(seed).vec_uniform(rows * classes, -8.0, 8.0)
}

/// Per-row loss, its gradient for a non-uniform upstream, and the counted mean and the
/// sum, GPU against the CPU reference.
fn check(
    dev: &Device,
    name: &str,
    x: &[f32],
    l: &[i32],
    (rows, classes): (usize, usize),
    opts: CrossEntropyOptions,
    reduced: bool,
) {
    let cpu = Device::cpu();
    let up = Rng::new(rows as u64).vec_uniform(rows, 0.5, 1.5);
    let t = |d: &Device| {
        (
            Tensor::from_slice(d, x, &[rows, classes]).unwrap(),
            Tensor::from_slice(d, l, &[rows]).unwrap(),
            Tensor::from_slice(d, &up, &[rows]).unwrap(),
        )
    };
    let ((gx, gl, gu), (cx, cl, cu)) = (t(dev), t(&cpu));
    let start = Instant::now();
    let want = cx.cross_entropy_with(&cl, opts).unwrap();
    let want_dx = cx.cross_entropy_backward_with(&cl, &cu, opts).unwrap();
    let cpu_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let got = gx.cross_entropy_with(&gl, opts).unwrap();
    let got_dx = gx.cross_entropy_backward_with(&gl, &gu, opts).unwrap();
    dev.synchronize().unwrap();
    let gpu_s = start.elapsed().as_secs_f64();
    eprintln!("{name}: GPU {gpu_s:.2} s, CPU reference {cpu_s:.2} s");
    assert_tensor_close(&format!("{name} loss"), &got, &want, 1e-4, 1e-5);
    assert_tensor_close(&format!("{name} gradient"), &got_dx, &want_dx, 1e-7, 1e-4);
    if reduced {
        for mean in [true, false] {
            assert_tensor_close(
                &format!("{name} reduced mean={mean}"),
                &gx.cross_entropy_reduced_with(&gl, mean, opts).unwrap(),
                &cx.cross_entropy_reduced_with(&cl, mean, opts).unwrap(),
                1e-4,
                1e-5,
            );
        }
    }
}

/// C = 16,385 (one past the walk of one invocation), GPT-2's 50,257 and Llama 3's 128,256,
/// batch 1 and 64; labels at 0 and C - 1; the mean and sum too.
#[test]
fn vocabularies_match_reference() {
    let Some(dev) = gpu() else { return };
    for classes in [16_385, 50_257, 128_256] {
        for rows in [1, 64] {
            let x = logits(classes as u64 + rows as u64, rows, classes);
            let l = labels(classes as u64, rows, classes);
            let name = format!("({rows}, {classes})");
            check(
                &dev,
                &name,
                &x,
                &l,
                (rows, classes),
                Default::default(),
                true,
            );
        }
    }
}

/// Logits of ±1e4 and -inf, in rows split into parts: a row of ±1e4 stays finite; a row
/// with every other logit -inf is the softmax of the rest; a label logit of -inf gives a
/// loss of +inf (and gradient -g there); an all -inf row is NaN; a -inf logit at the very
/// start or end of a part adds nothing.
#[test]
fn extreme_logits_in_long_rows_match_reference() {
    let Some(dev) = gpu() else { return };
    let (rows, classes) = (6, 50_257);
    let mut x = logits(5, rows, classes);
    let mut l = labels(6, rows, classes);
    let at = |i: usize, c: usize| i * classes + c;
    for c in 0..classes {
        x[at(0, c)] = if c % 3 == 0 { 1e4 } else { -1e4 };
        if c % 2 == 0 {
            x[at(1, c)] = f32::NEG_INFINITY;
        }
        x[at(4, c)] = f32::NEG_INFINITY;
    }
    l[0] = 1; // a -1e4 logit under a 1e4 maximum: loss 2e4 + ln(count of maxima)
    l[1] = 1;
    x[at(2, 0)] = f32::NEG_INFINITY;
    x[at(2, classes - 1)] = f32::NEG_INFINITY;
    x[at(3, 777)] = f32::NEG_INFINITY;
    l[3] = 777;
    check(
        &dev,
        "extremes",
        &x,
        &l,
        (rows, classes),
        Default::default(),
        false,
    );
    let loss = Tensor::from_slice(&dev, &x, &[rows, classes])
        .unwrap()
        .cross_entropy(&Tensor::from_slice(&dev, &l, &[rows]).unwrap())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert!(loss[0] > 2e4 && loss[0].is_finite(), "{loss:?}");
    assert_eq!(loss[3], f32::INFINITY, "{loss:?}");
    assert!(loss[4].is_nan(), "{loss:?}");
}

/// Ignored rows (label -100 by default, or any chosen index) give loss 0 and gradient 0,
/// and the mean divides by the rows counted; all rows ignored: losses 0, sum 0, mean NaN.
#[test]
fn ignored_rows_match_reference() {
    let Some(dev) = gpu() else { return };
    let (rows, classes) = (64, 50_257);
    let x = logits(9, rows, classes);
    let mut l = labels(10, rows, classes);
    for i in [1, 5, 6, 40, 62] {
        l[i] = -100;
    }
    check(
        &dev,
        "ignored -100",
        &x,
        &l,
        (rows, classes),
        Default::default(),
        true,
    );
    // Another index (0 included, a valid class otherwise): row 0 is ignored.
    let zero = CrossEntropyOptions {
        ignore_index: Some(0),
    };
    let l0 = labels(11, rows, classes);
    check(&dev, "ignore_index 0", &x, &l0, (rows, classes), zero, true);
    // Short rows too: the one-dispatch paths (per row, and the one-workgroup mean).
    let (r2, c2) = (300, 40);
    let mut ls = labels(12, r2, c2);
    ls[7] = -100;
    ls[100] = -100;
    let xs = logits(13, r2, c2);
    check(
        &dev,
        "ignored short rows",
        &xs,
        &ls,
        (r2, c2),
        Default::default(),
        true,
    );
    // Every row ignored.
    let all = vec![-100; rows];
    check(
        &dev,
        "all ignored",
        &x,
        &all,
        (rows, classes),
        Default::default(),
        true,
    );
    let xg = Tensor::from_slice(&dev, &x, &[rows, classes]).unwrap();
    let lg = Tensor::from_slice(&dev, &all, &[rows]).unwrap();
    let mean = xg.cross_entropy_reduced(&lg, true).unwrap().item().unwrap();
    assert!(mean.is_nan(), "mean of no counted rows: {mean}");
    let sum = xg
        .cross_entropy_reduced(&lg, false)
        .unwrap()
        .item()
        .unwrap();
    assert_eq!(sum, 0.0);
    let small = Tensor::from_slice(&dev, &vec![-100; r2], &[r2]).unwrap();
    let xs = Tensor::from_slice(&dev, &xs, &[r2, c2]).unwrap();
    let mean = xs
        .cross_entropy_reduced(&small, true)
        .unwrap()
        .item()
        .unwrap();
    assert!(
        mean.is_nan(),
        "one-workgroup mean of no counted rows: {mean}"
    );
}

/// A label outside 0..C is still an error: at once on the reference, at the next readback
/// on the GPU (split rows included); without an ignore index, -100 is such a label.
#[test]
fn bad_labels_in_long_rows_are_reported() {
    let cpu = Device::cpu();
    let (rows, classes) = (3, 50_257);
    let x = logits(14, rows, classes);
    let none = CrossEntropyOptions { ignore_index: None };
    for dev in std::iter::once(cpu.clone()).chain(gpu()) {
        let xt = Tensor::from_slice(&dev, &x, &[rows, classes]).unwrap();
        for (l, opts, msg) in [
            (
                [0, 50_257, 1],
                Default::default(),
                "label 50257 outside 0..50257",
            ),
            ([0, -100, 1], none, "label -100 outside 0..50257"),
            ([-1, 0, 1], Default::default(), "label -1 outside 0..50257"),
        ] {
            let lt = Tensor::from_slice(&dev, &l, &[rows]).unwrap();
            let up = Tensor::from_slice(&dev, &[1.0f32; 3], &[rows]).unwrap();
            for which in 0..3 {
                let e = match which {
                    0 => xt
                        .cross_entropy_with(&lt, opts)
                        .and_then(|t| t.to_vec::<f32>()),
                    1 => xt
                        .cross_entropy_backward_with(&lt, &up, opts)
                        .and_then(|t| t.to_vec::<f32>()),
                    _ => xt
                        .cross_entropy_reduced_with(&lt, true, opts)
                        .and_then(|t| t.to_vec::<f32>()),
                }
                .unwrap_err();
                assert!(
                    matches!(&e, Error::Invalid { op: "cross_entropy" | "cross_entropy_backward", detail } if detail.contains(msg)),
                    "{} {which}: {e}",
                    dev.name()
                );
            }
        }
        // The device works on afterwards.
        let ok = Tensor::from_slice(&dev, &[0, 1, 2], &[rows]).unwrap();
        assert!(xt.cross_entropy(&ok).unwrap().to_vec::<f32>().is_ok());
    }
}

/// Batch 512 at C = 128,256: 263 MB of logits, past one 128 MiB storage binding (blocks of
/// whole rows, each split into parts). Timed, since two cores run it.
#[test]
fn logits_past_one_binding_match_reference() {
    let Some(dev) = gpu() else { return };
    let (rows, classes) = (512, 128_256);
    let start = Instant::now();
    let x = logits(15, rows, classes);
    let mut l = labels(16, rows, classes);
    l[3] = -100;
    l[300] = -100;
    eprintln!("data: {:.2} s", start.elapsed().as_secs_f64());
    check(
        &dev,
        "(512, 128256)",
        &x,
        &l,
        (rows, classes),
        Default::default(),
        true,
    );
}

/// A graph's loss and gradient at (64, 50,257): the executor fuses the mean into the loss
/// kernel and shares the split passes with the gradient; the graph's `.mean()` divides by
/// all rows, ignored ones included, on both devices.
#[test]
fn graph_mean_and_gradient_at_vocabulary_size() {
    let (rows, classes) = (64, 50_257);
    let g = Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let loss = x.cross_entropy(&y).unwrap().mean().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let xs = logits(17, rows, classes);
    let mut ls = labels(18, rows, classes);
    ls[9] = -100;
    let eval = |dev: &Device| -> Vec<Vec<f32>> {
        let exe = dev.compile(&g, &[&loss, &dx], None).unwrap();
        let xt = Tensor::from_slice(dev, &xs, &[rows, classes]).unwrap();
        let yt = Tensor::from_slice(dev, &ls, &[rows]).unwrap();
        exe.run(&[("x", &xt), ("y", &yt)])
            .unwrap()
            .iter()
            .map(|t| t.to_vec::<f32>().unwrap())
            .collect()
    };
    let want = eval(&Device::cpu());
    // The reference's own mean: the sum of the rows not ignored over all 64 rows.
    let cpu = Device::cpu();
    let per_row = Tensor::from_slice(&cpu, &xs, &[rows, classes])
        .unwrap()
        .cross_entropy(&Tensor::from_slice(&cpu, &ls, &[rows]).unwrap())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(per_row[9], 0.0);
    let sum: f64 = per_row.iter().map(|&v| v as f64).sum();
    assert_close(
        "graph mean",
        &want[0],
        &[(sum / rows as f64) as f32],
        1e-5,
        1e-5,
    );
    if let Some(dev) = gpu() {
        let got = eval(&dev);
        assert_close("graph mean GPU", &got[0], &want[0], 1e-4, 1e-5);
        assert_close("graph gradient GPU", &got[1], &want[1], 1e-8, 1e-4);
        // One compiled plan replayed on new logits (its scratch buffers are the plan's).
        let exe = dev.compile(&g, &[&loss, &dx], None).unwrap();
        let cexe = Device::cpu().compile(&g, &[&loss, &dx], None).unwrap();
        for seed in [30, 31] {
            let xs = logits(seed, rows, classes);
            let run = |d: &Device, e: &wgrad::Executor| -> Vec<Vec<f32>> {
                let xt = Tensor::from_slice(d, &xs, &[rows, classes]).unwrap();
                let yt = Tensor::from_slice(d, &ls, &[rows]).unwrap();
                e.run(&[("x", &xt), ("y", &yt)])
                    .unwrap()
                    .iter()
                    .map(|t| t.to_vec::<f32>().unwrap())
                    .collect()
            };
            let (got, want) = (run(&dev, &exe), run(&Device::cpu(), &cexe));
            assert_close("replayed mean", &got[0], &want[0], 1e-4, 1e-5);
            assert_close("replayed gradient", &got[1], &want[1], 1e-8, 1e-4);
        }
    }
}

/// The gradient rule with ignored rows against central finite differences (f64).
#[test]
fn ignored_rows_gradient_matches_finite_differences() {
    let (rows, classes) = (5, 4);
    let g = Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let opts = CrossEntropyOptions {
        ignore_index: Some(2),
    };
    let loss = x.cross_entropy_with(&y, opts).unwrap().sum().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let xs = Rng::new(19).vec_uniform(rows * classes, -2.0, 2.0);
    let feeds = [
        ("x".to_string(), Feed::real(&xs, &[rows, classes])),
        (
            "y".to_string(),
            Feed::Labels(vec![0, 2, 3, 2, 1], vec![rows]),
        ),
    ];
    let analytic = check_finite_differences("ignored rows", &g, &loss, &[dx], &feeds);
    // Ignored rows 1 and 3: exactly 0.
    for i in [1, 3] {
        assert!(analytic[0][i * classes..(i + 1) * classes]
            .iter()
            .all(|&v| v == 0.0));
    }
}

/// PyTorch's mean in a graph (`cross_entropy_mean_with`): the sum over the rows not ignored
/// divided by their count, and its gradient, at (64, 50,257) on both devices, with the
/// count checked by hand; the rule also against central finite differences (f64).
#[test]
fn graph_pytorch_mean_divides_by_rows_counted() {
    let (rows, classes) = (64, 50_257);
    let g = Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let loss = x.cross_entropy_mean_with(&y, Default::default()).unwrap();
    assert_eq!(loss.shape(), &[] as &[usize]);
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let xs = logits(20, rows, classes);
    let mut ls = labels(21, rows, classes);
    for i in [2, 3, 30] {
        ls[i] = -100;
    }
    let eval = |dev: &Device, ls: &[i32]| -> Vec<Vec<f32>> {
        let exe = dev.compile(&g, &[&loss, &dx], None).unwrap();
        let xt = Tensor::from_slice(dev, &xs, &[rows, classes]).unwrap();
        let yt = Tensor::from_slice(dev, ls, &[rows]).unwrap();
        exe.run(&[("x", &xt), ("y", &yt)])
            .unwrap()
            .iter()
            .map(|t| t.to_vec::<f32>().unwrap())
            .collect()
    };
    let cpu = Device::cpu();
    let want = eval(&cpu, &ls);
    let per_row = Tensor::from_slice(&cpu, &xs, &[rows, classes])
        .unwrap()
        .cross_entropy(&Tensor::from_slice(&cpu, &ls, &[rows]).unwrap())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let sum: f64 = per_row.iter().map(|&v| v as f64).sum();
    assert_close(
        "mean over 61 rows",
        &want[0],
        &[(sum / 61.0) as f32],
        1e-5,
        1e-5,
    );
    // The gradient is the per-row one over 61.
    let up = Tensor::from_slice(&cpu, &vec![1.0f32 / 61.0; rows], &[rows]).unwrap();
    let per_row_dx = Tensor::from_slice(&cpu, &xs, &[rows, classes])
        .unwrap()
        .cross_entropy_backward(&Tensor::from_slice(&cpu, &ls, &[rows]).unwrap(), &up)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_close("gradient over 61 rows", &want[1], &per_row_dx, 1e-9, 1e-5);
    if let Some(dev) = gpu() {
        let got = eval(&dev, &ls);
        assert_close("PyTorch mean GPU", &got[0], &want[0], 1e-4, 1e-5);
        assert_close("PyTorch mean gradient GPU", &got[1], &want[1], 1e-9, 1e-4);
        let none = eval(&dev, &[-100; 64]);
        assert!(none[0][0].is_nan(), "no rows counted: {:?}", none[0]);
    }
    assert!(eval(&cpu, &[-100; 64])[0][0].is_nan());

    let (r, c) = (5, 4);
    let g = Graph::new();
    let x = g.input("x", &[r, c]);
    let y = g.input_i32("y", &[r]);
    let loss = x.cross_entropy_mean_with(&y, Default::default()).unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let feeds = [
        (
            "x".to_string(),
            Feed::real(&Rng::new(22).vec_uniform(r * c, -2.0, 2.0), &[r, c]),
        ),
        (
            "y".to_string(),
            Feed::Labels(vec![0, -100, 3, 2, -100], vec![r]),
        ),
    ];
    check_finite_differences("PyTorch mean", &g, &loss, &[dx], &feeds);
}

/// Blocks of whole split rows, cheaply: on a device whose bindings are lowered to 64 KiB
/// (16,384 floats), (10, 5000) logits run as blocks of 3 rows, each split into parts, with
/// an ignored row; a single row past the binding is a TooLarge error naming the op, never a
/// wrong number.
#[test]
fn blocks_of_split_rows_and_a_row_past_one_binding() {
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    dev.limit_bindings_for_testing(64 * 1024);
    let (rows, classes) = (10, 5000);
    let x = logits(23, rows, classes);
    let mut l = labels(24, rows, classes);
    l[4] = -100;
    check(
        &dev,
        "blocks (10, 5000)",
        &x,
        &l,
        (rows, classes),
        Default::default(),
        true,
    );
    let wide = Tensor::zeros(&dev, &[1, 16_385]).unwrap();
    let l = Tensor::from_slice(&dev, &[0i32], &[1]).unwrap();
    let up = Tensor::from_slice(&dev, &[1.0f32], &[1]).unwrap();
    for e in [
        wide.cross_entropy(&l).unwrap_err(),
        wide.cross_entropy_backward(&l, &up).unwrap_err(),
    ] {
        assert!(
            matches!(
                &e,
                Error::TooLarge {
                    op: "cross_entropy" | "cross_entropy_backward",
                    ..
                }
            ),
            "{e}"
        );
    }
}
