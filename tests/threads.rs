//! Threads: `Device`, `Tensor`, `Graph`, `Var` and `Executor` are `Send + Sync`
//! (checked at compile time), and several threads sharing one GPU device get
//! the same results as the CPU reference — each compiling and running its own
//! graph, and together running one shared compiled graph.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::{assert_close, gpu, uniform};
use wgrad::{Device, Error, Executor, Graph, Init, MatmulVariant, Tensor, Var};

/// Fails to compile unless `T` can be sent to and shared between threads.
fn assert_send_sync<T: Send + Sync + 'static>() {}

#[test]
fn public_handles_are_send_and_sync() {
    assert_send_sync::<Device>();
    assert_send_sync::<Tensor>();
    assert_send_sync::<Graph>();
    assert_send_sync::<Var>();
    assert_send_sync::<Executor>();
    assert_send_sync::<Error>();
    assert_send_sync::<wgrad::Optimizer>();
    assert_send_sync::<wgrad::PoolStats>();
}

/// Thread `k`'s graph: `softmax(relu(x·w + b) · v)` summed over the last axis,
/// with shapes and operands that differ per thread so a mix-up would show.
fn thread_graph(k: usize) -> (Graph, Var, [usize; 3]) {
    let (m, kk, n) = (3 + k, 5 + 2 * k, 4 + k);
    let g = Graph::new();
    let x = g.input("x", &[m, kk]);
    let w = g.param(
        "w",
        &[kk, n],
        Init::Uniform {
            lo: -1.0,
            hi: 1.0,
            seed: k as u64,
        },
    );
    let b = g.param("b", &[n], Init::Constant(0.1 * k as f32));
    let h = x.matmul(&w).unwrap().add(&b).unwrap().relu().unwrap();
    let s = h.mul_scalar(0.5).unwrap().softmax(-1).unwrap();
    let out = s.mul(&h).unwrap().sum_axis(-1, false).unwrap();
    (g, out, [m, kk, n])
}

fn run_thread_graph(dev: &Device, k: usize, reps: usize) -> Vec<Vec<f32>> {
    let (g, out, [m, kk, _]) = thread_graph(k);
    let exe = dev.compile(&g, &[&out], None).expect("compile");
    (0..reps)
        .map(|r| {
            let xs = uniform(100 * k as u64 + r as u64, m * kk, -2.0, 2.0);
            let x = Tensor::from_slice(dev, &xs, &[m, kk]).expect("feed");
            exe.run(&[("x", &x)]).expect("run")[0]
                .to_vec::<f32>()
                .expect("read back")
        })
        .collect()
}

#[test]
fn threads_compile_and_run_their_own_graphs_on_one_device() {
    let Some(dev) = gpu() else { return };
    const THREADS: usize = 6;
    const REPS: usize = 20;
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|k| {
            let (dev, start) = (dev.clone(), start.clone());
            thread::spawn(move || {
                start.wait(); // all threads record into the one device at once
                run_thread_graph(&dev, k, REPS)
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        let got = h.join().expect("thread did not panic");
        let want = run_thread_graph(&Device::cpu(), k, REPS);
        for (r, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("thread {k} rep {r}"), g, w, 1e-4, 1e-4);
        }
    }
    dev.synchronize()
        .expect("no GPU error from the concurrent runs");
}

/// Training graph shared by every thread: one linear layer, MSE.
fn linear_mse() -> (Graph, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", &[8, 6]);
    let y = g.input("y", &[8, 2]);
    let w = g.param(
        "w",
        &[6, 2],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 9,
        },
    );
    let pred = x.matmul(&w).unwrap();
    let loss = pred.mse(&y).unwrap();
    (g, pred, loss)
}

#[test]
fn one_shared_executor_runs_from_many_threads() {
    let Some(dev) = gpu() else { return };
    const THREADS: usize = 4;
    const REPS: usize = 25;
    // Inference: no parameter updates, so every run's result is fixed by its feed alone.
    let (g, pred, _) = linear_mse();
    let exe = Arc::new(dev.compile(&g, &[&pred], None).unwrap());
    let cpu = Device::cpu().compile(&g, &[&pred], None).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|k| {
            let (dev, exe) = (dev.clone(), exe.clone());
            thread::spawn(move || {
                (0..REPS)
                    .map(|r| {
                        let seed = 1000 * k as u64 + r as u64;
                        let x = Tensor::from_slice(&dev, &uniform(seed, 48, -1.0, 1.0), &[8, 6])
                            .unwrap();
                        (
                            seed,
                            exe.run(&[("x", &x)]).unwrap()[0].to_vec::<f32>().unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (seed, got) in h.join().expect("thread did not panic") {
            let x =
                Tensor::from_slice(&Device::cpu(), &uniform(seed, 48, -1.0, 1.0), &[8, 6]).unwrap();
            let want = cpu.run(&[("x", &x)]).unwrap()[0].to_vec::<f32>().unwrap();
            assert_close(
                &format!("shared executor, feed {seed}"),
                &got,
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn concurrent_training_steps_on_a_shared_executor_are_serialised() {
    let Some(dev) = gpu() else { return };
    // Every step feeds the same batch, so the parameters after N steps do not depend on
    // which thread ran which step: the result must equal N sequential CPU steps.
    const THREADS: usize = 4;
    const STEPS: usize = 10;
    let (g, _, loss) = linear_mse();
    let exe = Arc::new(dev.compile(&g, &[&loss], wgrad::Sgd::new(0.1)).unwrap());
    let (xs, ys) = (uniform(1, 48, -1.0, 1.0), uniform(2, 16, -1.0, 1.0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (dev, exe, xs, ys) = (dev.clone(), exe.clone(), xs.clone(), ys.clone());
            thread::spawn(move || {
                let x = Tensor::from_slice(&dev, &xs, &[8, 6]).unwrap();
                let y = Tensor::from_slice(&dev, &ys, &[8, 2]).unwrap();
                for _ in 0..STEPS {
                    exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread did not panic");
    }
    let cpu = Device::cpu();
    let reference = cpu.compile(&g, &[&loss], wgrad::Sgd::new(0.1)).unwrap();
    let x = Tensor::from_slice(&cpu, &xs, &[8, 6]).unwrap();
    let y = Tensor::from_slice(&cpu, &ys, &[8, 2]).unwrap();
    for _ in 0..THREADS * STEPS {
        reference.run(&[("x", &x), ("y", &y)]).unwrap();
    }
    let got = exe.param("w").unwrap().to_vec::<f32>().unwrap();
    let want = reference.param("w").unwrap().to_vec::<f32>().unwrap();
    assert_close("w after 40 steps from 4 threads", &got, &want, 1e-4, 1e-4);
}

#[test]
fn eager_ops_from_many_threads_on_one_device() {
    let Some(dev) = gpu() else { return };
    let handles: Vec<_> = (0..4usize)
        .map(|k| {
            let dev = dev.clone();
            thread::spawn(move || {
                let n = 257 + 100 * k;
                let data = uniform(k as u64, n, -3.0, 3.0);
                let a = Tensor::from_slice(&dev, &data, &[n]).unwrap();
                let mut sums = Vec::new();
                for _ in 0..30 {
                    let t = a.tanh().unwrap().add(&a).unwrap().softmax(0).unwrap();
                    sums.push(t.mul(&a).unwrap().sum().unwrap().item().unwrap());
                }
                (data, sums)
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        let (data, sums) = h.join().expect("thread did not panic");
        let a = Tensor::from_slice(&Device::cpu(), &data, &[data.len()]).unwrap();
        let t = a.tanh().unwrap().add(&a).unwrap().softmax(0).unwrap();
        let want = t.mul(&a).unwrap().sum().unwrap().item().unwrap();
        assert_close(
            &format!("thread {k}"),
            &sums,
            &vec![want; sums.len()],
            1e-4,
            1e-4,
        );
    }
}

/// Products on the texture-read kernel from several threads at once: the threads share the
/// context's two operand textures, so each product's copies into them and its dispatch must
/// be recorded together (a copy from another thread landing in between would multiply that
/// thread's operands instead). Distinct shapes per thread, checked against the CPU reference.
#[test]
fn texture_products_from_many_threads_on_one_device() {
    let Some(dev) = gpu() else { return };
    let variant = MatmulVariant::SubgroupTextures;
    if variant.resolve(&dev).is_err() {
        return; // no 8-wide subgroups on this adapter
    }
    let handles: Vec<_> = (0..4usize)
        .map(|t| {
            let dev = dev.clone();
            thread::spawn(move || {
                let (m, k, n) = (40 + 8 * t, 36 + 4 * t, 68 + 12 * t);
                let a = uniform(10 + t as u64, m * k, -1.0, 1.0);
                let b = uniform(20 + t as u64, k * n, -1.0, 1.0);
                let (ga, gb) = (
                    Tensor::from_slice(&dev, &a, &[m, k]).unwrap(),
                    Tensor::from_slice(&dev, &b, &[k, n]).unwrap(),
                );
                let got: Vec<Vec<f32>> = (0..20)
                    .map(|_| {
                        ga.matmul_with_variant(&gb, false, false, variant)
                            .unwrap()
                            .to_vec::<f32>()
                            .unwrap()
                    })
                    .collect();
                (a, b, (m, k, n), got)
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let (a, b, (m, k, n), got) = h.join().expect("thread did not panic");
        let cpu = Device::cpu();
        let want = Tensor::from_slice(&cpu, &a, &[m, k])
            .unwrap()
            .matmul(&Tensor::from_slice(&cpu, &b, &[k, n]).unwrap())
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (i, g) in got.iter().enumerate() {
            assert_close(&format!("thread {t} product {i}"), g, &want, 1e-4, 1e-4);
        }
    }
}
