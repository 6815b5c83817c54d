//! An executable compiled without an optimizer folds the small nodes computed from
//! parameters and states alone (an eval-mode batch norm's scale and shift) at compile time,
//! and `set_param` computes them again: results equal an unfolded reference (the same graph
//! with an optimizer of learning rate 0, which folds nothing from parameters) before and
//! after parameters are replaced, on the CPU reference and the GPU, with fewer dispatches.

mod common;

use common::{assert_close, devices, uniform};
use wgrad::{Device, Graph, Init, Sgd, Tensor, Var};

/// y = (x·w)·(γ / √(var + ε)) + (β - μ·γ / √(var + ε)), ReLU: a linear layer with an
/// eval-mode batch norm whose statistics are states. Returns (graph, y, the sum of y).
fn layer() -> (Graph, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", &[6, 3]);
    let w = g.param(
        "w",
        &[3, 5],
        Init::Uniform {
            lo: -1.0,
            hi: 1.0,
            seed: 4,
        },
    );
    let gamma = g.param(
        "gamma",
        &[5],
        Init::Uniform {
            lo: 0.5,
            hi: 1.5,
            seed: 5,
        },
    );
    let beta = g.param(
        "beta",
        &[5],
        Init::Uniform {
            lo: -0.5,
            hi: 0.5,
            seed: 6,
        },
    );
    let mean = g.state(
        "mean",
        &[5],
        Init::Uniform {
            lo: -0.2,
            hi: 0.2,
            seed: 7,
        },
    );
    let var = g.state(
        "var",
        &[5],
        Init::Uniform {
            lo: 0.5,
            hi: 2.0,
            seed: 8,
        },
    );
    let scale = gamma
        .div(&var.add_scalar(1e-5).unwrap().sqrt().unwrap())
        .unwrap();
    let shift = beta.sub(&mean.mul(&scale).unwrap()).unwrap();
    let y = x
        .matmul(&w)
        .unwrap()
        .mul(&scale)
        .unwrap()
        .add(&shift)
        .unwrap()
        .relu()
        .unwrap();
    let total = y.sum().unwrap();
    (g, y, total)
}

fn values(dev: &Device, n: usize, seed: u64, shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, &uniform(seed, n, -1.0, 1.0), shape).unwrap()
}

#[test]
fn parameter_folds_match_the_unfolded_graph_and_follow_set_param() {
    for dev in devices() {
        let (g, y, total) = layer();
        let folded = dev.compile(&g, &[&y], None).unwrap();
        // lr 0: the parameters never move, and nothing is folded from them.
        let reference = dev.compile(&g, &[&total, &y], Sgd::new(0.0)).unwrap();
        let x = values(&dev, 18, 1, &[6, 3]);
        let check = |label: &str| {
            let want = reference.run(&[("x", &x)]).unwrap()[1]
                .to_vec::<f32>()
                .unwrap();
            let got = folded.run(&[("x", &x)]).unwrap()[0]
                .to_vec::<f32>()
                .unwrap();
            assert!(
                want.iter().any(|v| *v > 0.0),
                "{label}: ReLU left something"
            );
            assert_close(
                &format!("{label} on {}", dev.name()),
                &got,
                &want,
                1e-6,
                1e-5,
            );
        };
        check("as compiled");
        // Replace a parameter and a state that only the folded nodes read, and the weight
        // the run reads directly; the folded executable must follow all three.
        for (name, shape, seed) in [
            ("gamma", &[5][..], 11),
            ("var", &[5], 12),
            ("w", &[3, 5], 13),
        ] {
            let n: usize = shape.iter().product();
            let mut v = uniform(seed, n, 0.5, 2.0);
            if name == "w" {
                v.iter_mut().for_each(|x| *x -= 1.2);
            }
            let t = Tensor::from_slice(&dev, &v, shape).unwrap();
            folded.set_param(name, &t).unwrap();
            reference.set_param(name, &t).unwrap();
            assert_eq!(
                folded.param(name).unwrap().to_vec::<f32>().unwrap(),
                v,
                "{name}"
            );
            check(&format!("after set_param({name})"));
        }
        // On the GPU the folded run is one product with its epilogue: fewer dispatches
        // than the run computing scale and shift.
        if dev.is_gpu() {
            let count = |exe: &wgrad::Executor| {
                let d0 = dev.dispatch_count();
                exe.run(&[("x", &x)]).unwrap();
                dev.dispatch_count() - d0
            };
            let (f, r) = (count(&folded), count(&reference));
            assert!(f < r, "folded {f} dispatches, unfolded {r}");
        }
    }
}
