//! Seeded dropout: the GPU draws the same mask as the CPU reference, keeps about
//! 1 − p of the elements, draws a new mask each step, and its gradient (the same
//! mask) matches finite differences; bad probabilities are typed errors.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::nn::{Dropout, Module};
use wgrad::ops::dropout::keep;
use wgrad::{Device, Error, Graph, Tensor};

fn step(dev: &Device, s: f32) -> Tensor {
    Tensor::from_slice(dev, &[s], &[1]).unwrap()
}

#[test]
fn gpu_mask_equals_cpu_mask_and_keeps_one_minus_p() {
    // 100,003: the one-value-per-invocation kernel; 100,004 (a multiple of 4, not of 16:
    // the last vec4 invocation is partial) and 4,096: the vec4 kernel.
    for n in [100_003usize, 100_004, 4096] {
        mask_matches(n);
    }
}

fn mask_matches(n: usize) {
    let x = uniform(1, n, 0.5, 1.5); // never 0: a zero output means dropped
    let cpu = Device::cpu();
    for (p, seed, s) in [(0.3f32, 7u64, 0.0f32), (0.5, 1 << 40, 12.0), (0.9, 3, 1.0)] {
        let ct = Tensor::from_slice(&cpu, &x, &[n]).unwrap();
        let want: Vec<f32> = ct
            .dropout(p, seed, &step(&cpu, s))
            .unwrap()
            .to_vec()
            .unwrap();
        // The CPU reference agrees with the per-element rule and scales by 1/(1 − p).
        let scale = 1.0f32 / (1.0 - p);
        for i in [0usize, 1, 2, n / 2, n - 1] {
            let expect = if keep(seed, s as u32, i as u32, p) {
                x[i] * scale
            } else {
                0.0
            };
            assert_eq!(want[i], expect, "element {i} p={p}");
        }
        let kept = want.iter().filter(|&&v| v != 0.0).count() as f64;
        let (mean, sigma) = (
            n as f64 * (1.0 - p as f64),
            (n as f64 * p as f64 * (1.0 - p as f64)).sqrt(),
        );
        assert!(
            (kept - mean).abs() <= 4.0 * sigma,
            "p={p}: kept {kept} of {n}, expected {mean} ± {}",
            4.0 * sigma
        );
        if let Some(dev) = gpu() {
            let gt = Tensor::from_slice(&dev, &x, &[n]).unwrap();
            let got: Vec<f32> = gt
                .dropout(p, seed, &step(&dev, s))
                .unwrap()
                .to_vec()
                .unwrap();
            assert_close(
                &format!("dropout n={n} p={p} GPU vs CPU"),
                &got,
                &want,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn each_step_draws_a_new_mask() {
    // A graph's step counter advances every run; the masks of steps 0, 1, 2 differ
    // and equal the reference at those steps.
    let n = 4096usize;
    let x = uniform(2, n, 0.5, 1.5);
    let cpu = Device::cpu();
    let xc = Tensor::from_slice(&cpu, &x, &[n]).unwrap();
    let reference: Vec<Vec<f32>> = (0..3)
        .map(|s| {
            xc.dropout(0.5, 11, &step(&cpu, s as f32))
                .unwrap()
                .to_vec()
                .unwrap()
        })
        .collect();
    for k in 1..3 {
        let differ = (0..n)
            .filter(|&i| (reference[k][i] == 0.0) != (reference[0][i] == 0.0))
            .count();
        // Independent masks differ in about half the places.
        assert!(differ > n / 3, "step {k} vs 0: only {differ} of {n} differ");
    }
    for dev in [Some(cpu.clone()), gpu()].into_iter().flatten() {
        let g = Graph::new();
        let layer = Dropout::new(&g, "drop", 0.5, 11).unwrap();
        let y = layer.forward(&g.input("x", &[n])).unwrap();
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let xt = Tensor::from_slice(&dev, &x, &[n]).unwrap();
        for (s, want) in reference.iter().enumerate() {
            let got: Vec<f32> = exe.run(&[("x", &xt)]).unwrap()[0].to_vec().unwrap();
            assert_close(&format!("run {s} on {}", dev.name()), &got, want, 0.0, 0.0);
        }
        assert_eq!(
            exe.param("drop.step").unwrap().to_vec::<f32>().unwrap(),
            [3.0]
        );
        // Evaluation mode is the identity.
        let g2 = Graph::new();
        let eval = Dropout::new(&g2, "drop", 0.5, 11).unwrap();
        eval.set_training(false);
        let x2 = g2.input("x", &[n]);
        assert_eq!(eval.forward(&x2).unwrap().id(), x2.id());
    }
}

#[test]
fn dropout_gradient_is_the_same_mask() {
    let shape = [3usize, 17];
    let n: usize = shape.iter().product();
    let g = Graph::new();
    let x = g.input("x", &shape);
    let s = g.input("s", &[1]);
    let y = x.dropout(0.4, 5, &s).unwrap();
    let r = Tensor::from_slice(&Device::cpu(), &uniform(3, n, 0.5, 1.5), &shape).unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let gx = grad(&loss, &[&x]).unwrap().remove(0);
    let xv = uniform(4, n, -1.0, 1.0);
    let run = |dev: &Device, xv: &[f32], outs: &[&wgrad::Var]| -> Vec<Vec<f32>> {
        let exe = dev.compile(&g, outs, None).unwrap();
        let xt = Tensor::from_slice(dev, xv, &shape).unwrap();
        exe.run(&[("x", &xt), ("s", &step(dev, 3.0))])
            .unwrap()
            .iter()
            .map(|t| t.to_vec().unwrap())
            .collect()
    };
    let cpu = Device::cpu();
    let analytic = run(&cpu, &xv, &[&gx]).remove(0);
    let feeds = [
        ("x".to_string(), Feed::real(&xv, &shape)),
        ("s".to_string(), Feed::Fixed(vec![3.0], vec![1])),
    ];
    check_finite_differences("dropout", &g, &loss, std::slice::from_ref(&gx), &feeds);
    // Dropped elements get exactly zero gradient, kept ones r/(1 − p).
    let rv = r.to_vec::<f32>().unwrap();
    for i in 0..n {
        let want = if keep(5, 3, i as u32, 0.4) {
            rv[i] * (1.0 / (1.0 - 0.4f32))
        } else {
            0.0
        };
        assert_eq!(analytic[i], want, "gradient element {i}");
    }
    if let Some(dev) = gpu() {
        let on_gpu = run(&dev, &xv, &[&gx]).remove(0);
        assert_close("d dropout GPU vs CPU", &on_gpu, &analytic, 0.0, 0.0);
    }
}

#[test]
fn bad_probabilities_and_steps_are_typed_errors() {
    let g = Graph::new();
    let x = g.input("x", &[4]);
    let s = g.step_counter("s").unwrap();
    for p in [1.0f32, 1.5, -0.1, f32::NAN] {
        let e = x.dropout(p, 0, &s).unwrap_err();
        assert!(
            matches!(e, Error::Invalid { op: "dropout", .. }),
            "p={p}: {e}"
        );
        let e = Dropout::new(&g, "drop7", p, 0)
            .err()
            .expect("bad p is refused");
        assert!(
            matches!(&e, Error::Invalid { op: "dropout", detail } if detail.contains("drop7")),
            "{e}"
        );
    }
    assert!(matches!(
        x.dropout(0.5, 0, &g.input("s2", &[2])).unwrap_err(),
        Error::Shape { op: "dropout", .. }
    ));
    // p = 0 is the identity and records nothing.
    assert_eq!(x.dropout(0.0, 0, &s).unwrap().id(), x.id());
    let cpu = Device::cpu();
    let t = Tensor::zeros(&cpu, &[4]).unwrap();
    assert!(matches!(
        t.dropout(1.0, 0, &step(&cpu, 0.0)).unwrap_err(),
        Error::Invalid { op: "dropout", .. }
    ));
}

/// A dropout of a batch norm's normalisation (through a flatten, as in the digits CNN) runs
/// in the normalisation's own pass on a GPU when H·W is a multiple of 4
/// (`batch_norm_apply_dropout4`), else as the two kernels. The dropped values, the loss and
/// the gradients of x, γ and β over three steps (a new mask each) against the CPU
/// reference, with and without the ReLU, batch 1, odd channels.
#[test]
fn a_dropout_after_a_batch_norm_runs_in_its_pass() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let cases: [([usize; 4], bool); 4] = [
        ([64, 32, 4, 4], true), // the digits CNN's bn2, ReLU, flatten, dropout
        ([3, 5, 2, 4], false),
        ([1, 7, 4, 4], true),
        ([2, 3, 3, 3], true), // H·W = 9: two kernels
    ];
    for ([n, c, h, w], relu) in cases {
        let label = format!("{:?} relu={relu}", [n, c, h, w]);
        let g = Graph::new();
        let x = g.input("x", &[n, c, h, w]);
        let (gamma, beta) = (g.input("gamma", &[c]), g.input("beta", &[c]));
        let (mut y, _) = x.batch_norm_train(&gamma, &beta, 1e-5).unwrap();
        if relu {
            y = y.relu().unwrap();
        }
        let counter = g.step_counter("drop.step").unwrap();
        let dropped = y
            .reshape(&[n, c * h * w])
            .unwrap()
            .dropout(0.3, 11, &counter)
            .unwrap();
        let r = g.input("r", &[n, c * h * w]);
        let loss = dropped.mul(&r).unwrap().sum().unwrap();
        let grads = grad(&loss, &[&x, &gamma, &beta]).unwrap();
        let mut outs = vec![&dropped, &loss];
        outs.extend(grads.iter());
        let feeds: Vec<(&str, Vec<usize>, f32)> = vec![
            ("x", vec![n, c, h, w], 1.0),
            ("gamma", vec![c], 1.0),
            ("beta", vec![c], 0.5),
            ("r", vec![n, c * h * w], 1.0),
        ];
        let tensors: Vec<(Tensor, Tensor)> = feeds
            .iter()
            .enumerate()
            .map(|(k, (_, shape, span))| {
                let v = uniform(41 + k as u64, shape.iter().product(), -*span, *span);
                (
                    Tensor::from_slice(&dev, &v, shape).unwrap(),
                    Tensor::from_slice(&cpu, &v, shape).unwrap(),
                )
            })
            .collect();
        let gpu_exe = dev.compile(&g, &outs, None).unwrap();
        let cpu_exe = cpu.compile(&g, &outs, None).unwrap();
        for s in 0..3 {
            let named = |gpu_side: bool| -> Vec<(&str, &Tensor)> {
                feeds
                    .iter()
                    .zip(&tensors)
                    .map(|((name, _, _), (gt, ct))| (*name, if gpu_side { gt } else { ct }))
                    .collect()
            };
            let got = gpu_exe.run(&named(true)).unwrap();
            let want = cpu_exe.run(&named(false)).unwrap();
            for (k, (gv, wv)) in got.iter().zip(&want).enumerate() {
                let (gv, wv) = (gv.to_vec::<f32>().unwrap(), wv.to_vec::<f32>().unwrap());
                assert_close(
                    &format!("{label} step {s} output {k}"),
                    &gv,
                    &wv,
                    1e-4,
                    1e-4,
                );
            }
        }
        let entries = gpu_exe.dispatch_entries();
        // (Listed `….tex` where it reads x through a texture: lavapipe.)
        let fused = entries
            .iter()
            .any(|e| e.trim_end_matches(".tex") == "batch_norm_apply_dropout4");
        assert_eq!(fused, (h * w) % 4 == 0, "{label}: {entries:?}");
        // The backward pass's dropout (the same mask on the gradient) runs in the batch
        // norm's gradient kernels, which read the gradient before it (any H·W).
        let dropouts = entries
            .iter()
            .filter(|e| e.starts_with("dropout_forward"))
            .count();
        assert_eq!(dropouts, if fused { 0 } else { 1 }, "{label}: {entries:?}");
    }
}
