//! Batch norm's running statistics and evaluation mode: the state updated in each
//! run against the momentum recurrence computed on the host, evaluation output
//! against (x − running_mean)/sqrt(running_var + eps)·γ + β, GPU against CPU, and
//! the statistics saved and loaded with the model.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::nn::{load_params, save_params, BatchNorm2d, Module};
use wgrad::{Device, Error, Graph, Tensor};

/// Per-channel (mean, biased variance) of an (N, C, H, W) batch, in f64.
fn channel_stats(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|b| (0..h * w).map(move |k| ((b * c + ch) * h * w + k, ())))
                .map(|(i, _)| x[i] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / vals.len() as f64;
            (m, v)
        })
        .collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn running_statistics_follow_the_momentum_recurrence() {
    // Odd channels, non-square images, batch 1 and > 1: on a GPU, the statistics and the
    // update in one dispatch (H·W a multiple of 4 or not); and channels of more values
    // than one reduction part takes (2·200·200), where the update runs after the merge.
    for shape in [[3usize, 5, 3, 4], [1, 3, 2, 3], [2, 3, 200, 200]] {
        let [n, c, h, w] = shape;
        let count = (n * h * w) as f64;
        for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
            let g = Graph::new();
            let bn = BatchNorm2d::new(&g, "bn", c, 1e-5).with_momentum(0.2);
            let y = bn.forward(&g.input("x", &shape)).unwrap();
            let exe = dev.compile(&g, &[&y], None).unwrap();

            let (mut rm, mut rv) = (vec![0.0f64; c], vec![1.0f64; c]);
            for step in 0..4u64 {
                // A different batch each step, shifted so the statistics move.
                let x = uniform(step + 1, shape.iter().product(), -1.0, 3.0);
                let xt = Tensor::from_slice(&dev, &x, &shape).unwrap();
                exe.run(&[("x", &xt)]).unwrap();
                let entries = exe.dispatch_entries();
                if dev.is_gpu() {
                    // One reduction part covers 16,384 values (a multiple of 4 per image).
                    let one_part = n * h * w <= 16_384;
                    let fused = entries
                        .iter()
                        .any(|e| e.starts_with("batch_norm_stats_running"));
                    assert_eq!(fused, one_part, "{shape:?}: {entries:?}");
                    let update = entries.iter().any(|e| e == "batch_norm_running");
                    assert_eq!(update, !one_part, "{shape:?}: {entries:?}");
                }
                for (ch, (m, v)) in channel_stats(&x, shape).into_iter().enumerate() {
                    rm[ch] = 0.8 * rm[ch] + 0.2 * m;
                    rv[ch] = 0.8 * rv[ch] + 0.2 * v * count / (count - 1.0);
                }
                let label = format!("{shape:?} step {step} on {}", dev.name());
                let got_m = exe.param("bn.running_mean").unwrap().to_vec().unwrap();
                let got_v = exe.param("bn.running_var").unwrap().to_vec().unwrap();
                assert_close(
                    &format!("running_mean {label}"),
                    &got_m,
                    &to_f32(&rm),
                    1e-5,
                    1e-4,
                );
                assert_close(
                    &format!("running_var {label}"),
                    &got_v,
                    &to_f32(&rv),
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn evaluation_mode_normalises_with_the_running_statistics() {
    let shape = [2usize, 3, 5, 4];
    let [n, c, h, w] = shape;
    let x = uniform(9, shape.iter().product(), -2.0, 2.0);
    let rm = uniform(10, c, -0.5, 0.5);
    let rv = uniform(11, c, 0.5, 2.0);
    let gamma = uniform(12, c, 0.5, 1.5);
    let beta = uniform(13, c, -0.5, 0.5);
    let eps = 1e-5f64;
    let mut want = vec![0.0f32; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for k in 0..h * w {
                let i = (b * c + ch) * h * w + k;
                let z = (x[i] as f64 - rm[ch] as f64) / (rv[ch] as f64 + eps).sqrt();
                want[i] = (z * gamma[ch] as f64 + beta[ch] as f64) as f32;
            }
        }
    }
    let mut outputs = Vec::new();
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let g = Graph::new();
        let bn = BatchNorm2d::new(&g, "bn", c, eps as f32);
        bn.set_training(false);
        let y = bn.forward(&g.input("x", &shape)).unwrap();
        // Evaluation records no state update.
        assert!(!g.nodes().iter().any(|n| matches!(n.op, wgrad::Op::Assign)));
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let set = |name: &str, v: &[f32], s: &[usize]| {
            exe.set_param(name, &Tensor::from_slice(&dev, v, s).unwrap())
                .unwrap()
        };
        set("bn.running_mean", &rm, &[c]);
        set("bn.running_var", &rv, &[c]);
        set("bn.gamma", &gamma, &[c, 1, 1]);
        set("bn.beta", &beta, &[c, 1, 1]);
        let xt = Tensor::from_slice(&dev, &x, &shape).unwrap();
        let got: Vec<f32> = exe.run(&[("x", &xt)]).unwrap()[0].to_vec().unwrap();
        assert_close(
            &format!("eval batch norm on {}", dev.name()),
            &got,
            &want,
            1e-5,
            1e-4,
        );
        // The statistics are not changed by evaluation runs.
        exe.run(&[("x", &xt)]).unwrap();
        let after: Vec<f32> = exe.param("bn.running_mean").unwrap().to_vec().unwrap();
        assert_close("running_mean after eval", &after, &rm, 0.0, 0.0);
        outputs.push(got);
    }
    if outputs.len() == 2 {
        assert_close(
            "eval batch norm GPU vs CPU",
            &outputs[1],
            &outputs[0],
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn running_statistics_are_saved_and_loaded_by_name() {
    let shape = [4usize, 2, 3, 3];
    let path = std::env::temp_dir().join(format!("wgrad-bn-{}.safetensors", std::process::id()));
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let g = Graph::new();
        let bn = BatchNorm2d::new(&g, "bn", 2, 1e-5);
        assert_eq!(bn.param_names(), ["bn.gamma", "bn.beta"]);
        assert_eq!(bn.state_names(), ["bn.running_mean", "bn.running_var"]);
        let y = bn.forward(&g.input("x", &shape)).unwrap();
        let loss = y.square().unwrap().mean().unwrap();
        let step = dev
            .compile(&g, &[&loss], wgrad::Optimizer::adam(0.05))
            .unwrap();
        for s in 0..3 {
            let x = uniform(20 + s, shape.iter().product(), 0.0, 4.0);
            step.run(&[("x", &Tensor::from_slice(&dev, &x, &shape).unwrap())])
                .unwrap();
        }
        save_params(&step, &bn.saved_names(), &path).unwrap();
        let g2 = Graph::new();
        let bn2 = BatchNorm2d::new(&g2, "bn", 2, 1e-5);
        bn2.set_training(false);
        let y2 = bn2.forward(&g2.input("x", &shape)).unwrap();
        let eval = dev.compile(&g2, &[&y2], None).unwrap();
        load_params(&eval, &bn2.saved_names(), &path).unwrap();
        for name in bn.saved_names() {
            let a: Vec<f32> = step.param(&name).unwrap().to_vec().unwrap();
            let b: Vec<f32> = eval.param(&name).unwrap().to_vec().unwrap();
            assert_close(
                &format!("{name} reloaded on {}", dev.name()),
                &b,
                &a,
                0.0,
                0.0,
            );
        }
        let rm: Vec<f32> = eval.param("bn.running_mean").unwrap().to_vec().unwrap();
        assert!(rm.iter().all(|&m| m > 0.1), "running mean moved: {rm:?}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_batch_norm_input_names_the_layer() {
    let g = Graph::new();
    let bn = BatchNorm2d::new(&g, "bn1", 3, 1e-5);
    let e = bn.forward(&g.input("one", &[1, 3, 1, 1])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "batch_norm", detail } if detail.contains("bn1") && detail.contains("[1, 3, 1, 1]")),
        "{e}"
    );
    let e = bn.forward(&g.input("four", &[2, 4, 3, 3])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "batch_norm", detail } if detail.contains("bn1") && detail.contains("[2, 4, 3, 3]")),
        "{e}"
    );
    bn.set_training(false);
    assert!(matches!(
        bn.forward(&g.input("five", &[2, 5, 3, 3])).unwrap_err(),
        Error::Shape {
            op: "batch_norm",
            ..
        }
    ));
    let x = g.input("x", &[2, 3, 2, 2]);
    let s = g.state("s", &[3], wgrad::Init::Zeros);
    assert!(matches!(
        g.assign(&s, &x).unwrap_err(),
        Error::Shape { op: "assign", .. }
    ));
    assert!(matches!(
        g.assign(&x, &x).unwrap_err(),
        Error::Invalid { op: "assign", .. }
    ));
}

#[test]
fn a_training_step_with_state_updates_is_still_one_submit() {
    // A device of its own: the shared one counts other tests' submits too.
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let g = Graph::new();
    let model = wgrad::nn::Sequential::new(vec![
        Box::new(wgrad::nn::Conv2dLayer::new(
            &g,
            "c",
            1,
            4,
            wgrad::Conv2d::new(3, 3).padding(1),
            1,
        )),
        Box::new(BatchNorm2d::new(&g, "bn", 4, 1e-5)),
        Box::new(wgrad::nn::Activation::Relu),
        Box::new(wgrad::nn::Flatten),
        Box::new(wgrad::nn::Dropout::new(&g, "drop", 0.3, 2).unwrap()),
        Box::new(wgrad::nn::Linear::new(&g, "fc", 4 * 5 * 5, 3, 3)),
    ]);
    let n = 6;
    let logits = model.forward(&g.input("x", &[n, 1, 5, 5])).unwrap();
    let loss = logits
        .cross_entropy(&g.input_i32("y", &[n]))
        .unwrap()
        .mean()
        .unwrap();
    let step = dev
        .compile(&g, &[&loss], wgrad::Optimizer::adam(1e-2))
        .unwrap();
    let x = Tensor::from_slice(&dev, &uniform(3, n * 25, 0.0, 1.0), &[n, 1, 5, 5]).unwrap();
    let y = Tensor::from_slice(&dev, &[0i32, 1, 2, 0, 1, 2], &[n]).unwrap();
    step.run(&[("x", &x), ("y", &y)]).unwrap()[0]
        .item()
        .unwrap();
    let before = dev.submit_count();
    for _ in 0..4 {
        step.run(&[("x", &x), ("y", &y)]).unwrap()[0]
            .item()
            .unwrap();
    }
    assert_eq!(
        dev.submit_count() - before,
        4,
        "running statistics and the dropout step update in the step's own submit"
    );
    let steps: Vec<f32> = step.param("drop.step").unwrap().to_vec().unwrap();
    assert_eq!(steps, [5.0]);
    // Same batch every step: the running mean approaches the batch mean as 1 − 0.9^5.
    let rm: Vec<f32> = step.param("bn.running_mean").unwrap().to_vec().unwrap();
    assert!(rm.iter().any(|&m| m != 0.0), "{rm:?}");
}
