//! The executor: whole training steps equal on GPU and CPU reference, one
//! submit per step, a memory plan below the unplanned sum, and feed errors.

mod common;

use common::{assert_close, gpu, two_layer, uniform};
use wgrad::{Device, Error, Graph, Init, Optimizer, Sgd, Tensor, Var};

/// x (5,2) → Linear(2,3) → ReLU → Linear(3,1), MSE against y (5,1).
fn mlp() -> (Graph, Var) {
    let g = Graph::new();
    let x = g.input("x", &[5, 2]);
    let y = g.input("y", &[5, 1]);
    let w1 = g.param(
        "w1",
        &[2, 3],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
            seed: 0,
        },
    );
    let b1 = g.param("b1", &[3], Init::Constant(0.1));
    let w2 = g.param(
        "w2",
        &[3, 1],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
            seed: 1,
        },
    );
    let b2 = g.param("b2", &[1], Init::Zeros);
    let pred = two_layer(&x, &w1, &b1, &w2, &b2);
    let loss = pred.mse(&y).unwrap();
    (g, loss)
}

fn feeds(dev: &Device) -> (Tensor, Tensor) {
    (
        Tensor::from_slice(dev, &uniform(1, 10, -1.0, 1.0), &[5, 2]).unwrap(),
        Tensor::from_slice(dev, &uniform(2, 5, -1.0, 1.0), &[5, 1]).unwrap(),
    )
}

#[test]
fn training_steps_match_the_cpu_reference() {
    let Some(dev) = gpu() else { return };
    for opt in [
        Sgd::new(0.05),
        Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-3,
        },
        Optimizer::adam(0.01),
        Optimizer::adamw(0.01, 0.1),
    ] {
        let mut losses = Vec::new();
        for d in [Device::cpu(), dev.clone()] {
            let (g, loss) = mlp();
            let exe = d.compile(&g, &[&loss], opt.clone()).unwrap();
            let (x, y) = feeds(&d);
            let l: Vec<f32> = (0..20)
                .map(|_| exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap())
                .collect();
            let w1 = exe.param("w1").unwrap().to_vec::<f32>().unwrap();
            losses.push((l, w1));
        }
        assert_close(
            &format!("{opt:?} losses"),
            &losses[1].0,
            &losses[0].0,
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("{opt:?} w1 after 20 steps"),
            &losses[1].1,
            &losses[0].1,
            1e-5,
            1e-4,
        );
        assert!(
            losses[0].0[19] < losses[0].0[0],
            "{opt:?} did not reduce the loss: {:?}",
            losses[0].0
        );
    }
}

#[test]
fn one_submit_per_step_and_a_real_memory_plan() {
    // A device of its own: the shared one counts other tests' submits too.
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let (g, loss) = mlp();
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.01)).unwrap();
    let (x, y) = feeds(&dev);
    exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
    let before = dev.submit_count();
    for _ in 0..5 {
        exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
    }
    assert_eq!(
        dev.submit_count() - before,
        5,
        "one queue submit per training step"
    );
    let plan = exe.plan();
    assert!(plan.peak_bytes < plan.unplanned_bytes, "{plan:?}");
}

#[test]
fn bad_feeds_are_typed_errors_and_nothing_runs() {
    // A GPU device of its own, so other tests' submits do not count here.
    let own_gpu = gpu().map(|_| Device::gpu().unwrap());
    for dev in [Some(Device::cpu()), own_gpu].into_iter().flatten() {
        let (g, loss) = mlp();
        let exe = dev.compile(&g, &[&loss], None).unwrap();
        let (x, y) = feeds(&dev);
        let submits = dev.submit_count();
        let e = exe.run(&[("x", &x)]).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { op: "run", detail } if detail.contains("\"y\"")),
            "{e}"
        );
        let wrong = Tensor::zeros(&dev, &[4, 2]).unwrap();
        let e = exe.run(&[("x", &wrong), ("y", &y)]).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { op: "run", detail } if detail.contains("[5, 2]") && detail.contains("[4, 2]")),
            "{e}"
        );
        assert!(matches!(
            exe.run(&[("x", &x), ("y", &y), ("z", &y)]).unwrap_err(),
            Error::Invalid { .. }
        ));
        assert_eq!(
            dev.submit_count(),
            submits,
            "nothing was submitted for a bad run"
        );
        assert!(matches!(
            exe.param("nope").unwrap_err(),
            Error::Invalid { .. }
        ));
    }
}

#[test]
fn graph_build_errors_name_the_op_and_shapes() {
    let g = Graph::new();
    let a = g.input("a", &[2, 3]);
    let b = g.input("b", &[4, 5]);
    let e = a.matmul(&b).unwrap_err();
    assert!(
        e.to_string().contains("matmul")
            && e.to_string().contains("[2, 3]")
            && e.to_string().contains("[4, 5]"),
        "{e}"
    );
    assert!(matches!(
        a.add(&b).unwrap_err(),
        Error::Shape { op: "add", .. }
    ));
    assert!(matches!(
        a.sum_axis(2, false).unwrap_err(),
        Error::Axis { .. }
    ));
    let other = Graph::new().input("c", &[2, 3]);
    assert!(a.add(&other).is_err());
}

#[test]
fn a_value_read_twice_is_freed_once_in_the_memory_plan() {
    // a = exp(x) (4 floats) is read twice by a + a, its last use: a is freed once there.
    // Counting it twice took the live bytes below zero a step later (an overflow, or a
    // wrapped, huge peak without overflow checks).
    let g = Graph::new();
    let x = g.input("x", &[4]);
    let a = x.exp().unwrap();
    let b = a.add(&a).unwrap().sum().unwrap();
    let c = b.exp().unwrap();
    let exe = Device::cpu().compile(&g, &[&c], None).unwrap();
    let plan = exe.plan();
    // Live bytes per step: a 16; a + a 32, then a is freed: 16; its sum b 20, then a + a
    // is freed: 4; exp(b) 8.
    assert_eq!(plan.unplanned_bytes, 16 + 16 + 4 + 4, "{plan:?}");
    assert_eq!(plan.peak_bytes, 32, "{plan:?}");
}
