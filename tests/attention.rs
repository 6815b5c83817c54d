//! Scaled dot-product and multi-head attention: values against a direct f64
//! computation, gradients against finite differences, GPU against CPU.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Device, Error, Graph, Tensor, Var};

/// softmax(q·kᵀ/√d [+ causal mask])·v for one (T, d) head, in f64.
fn direct(q: &[f32], k: &[f32], v: &[f32], t: usize, d: usize, causal: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; t * d];
    for i in 0..t {
        let keys = if causal { i + 1 } else { t };
        let s: Vec<f64> = (0..keys)
            .map(|j| {
                (0..d)
                    .map(|c| q[i * d + c] as f64 * k[j * d + c] as f64)
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for c in 0..d {
            out[i * d + c] = (0..keys)
                .map(|j| (s[j] - m).exp() / z * v[j * d + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// The graph of `build` on inputs `x0, x1, …` of `shapes`: (graph, output, loss =
/// Σ output·R for a fixed random R, gradients of the loss w.r.t. each input).
fn graph_of(
    shapes: &[&[usize]],
    build: &dyn Fn(&[Var]) -> wgrad::Result<Var>,
) -> (Graph, Var, Var, Vec<Var>) {
    let g = Graph::new();
    let xs: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.input(&format!("x{i}"), s))
        .collect();
    let y = build(&xs).unwrap();
    let r = Tensor::from_slice(
        &Device::cpu(),
        &uniform(5, y.shape().iter().product(), 0.5, 1.5),
        y.shape(),
    )
    .unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let refs: Vec<&Var> = xs.iter().collect();
    let grads = grad(&loss, &refs).unwrap();
    (g, y, loss, grads)
}

/// (output, gradients of Σ output·R w.r.t. each input, loss) of `build` on `dev`.
fn run(
    dev: &Device,
    shapes: &[&[usize]],
    values: &[Vec<f32>],
    build: &dyn Fn(&[Var]) -> wgrad::Result<Var>,
) -> (Vec<f32>, Vec<Vec<f32>>, f32) {
    let (g, y, loss, grads) = graph_of(shapes, build);
    let mut outs = vec![&y, &loss];
    outs.extend(grads.iter());
    let exe = dev.compile(&g, &outs, None).unwrap();
    let feeds: Vec<Tensor> = shapes
        .iter()
        .zip(values)
        .map(|(s, v)| Tensor::from_slice(dev, v, s).unwrap())
        .collect();
    let names: Vec<String> = (0..feeds.len()).map(|i| format!("x{i}")).collect();
    let named: Vec<(&str, &Tensor)> = names.iter().map(|n| n.as_str()).zip(feeds.iter()).collect();
    let out = exe.run(&named).unwrap();
    let host: Vec<Vec<f32>> = out.iter().map(|t| t.to_vec().unwrap()).collect();
    (host[0].clone(), host[2..].to_vec(), host[1][0])
}

fn check_gradients(
    name: &str,
    shapes: &[&[usize]],
    values: &[Vec<f32>],
    build: &dyn Fn(&[Var]) -> wgrad::Result<Var>,
) {
    let cpu = Device::cpu();
    let (_, analytic, _) = run(&cpu, shapes, values, build);
    let (g, _, loss, grads) = graph_of(shapes, build);
    let feeds: Vec<(String, Feed)> = (0..shapes.len())
        .map(|i| (format!("x{i}"), Feed::real(&values[i], shapes[i])))
        .collect();
    check_finite_differences(name, &g, &loss, &grads, &feeds);
    if let Some(dev) = gpu() {
        let (_, on_gpu, _) = run(&dev, shapes, values, build);
        for k in 0..values.len() {
            assert_close(
                &format!("{name} d/dx{k} GPU vs CPU"),
                &on_gpu[k],
                &analytic[k],
                1e-4,
                1e-3,
            );
        }
    }
}

#[test]
fn attention_matches_direct_computation() {
    for (t, d) in [(1usize, 4usize), (5, 3), (33, 8)] {
        for causal in [false, true] {
            let (q, k, v) = (
                uniform(1, t * d, -1.0, 1.0),
                uniform(2, t * d, -1.0, 1.0),
                uniform(3, t * d, -1.0, 1.0),
            );
            let want = direct(&q, &k, &v, t, d, causal);
            for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
                let shapes: [&[usize]; 3] = [&[t, d], &[t, d], &[t, d]];
                let (got, _, _) = run(&dev, &shapes, &[q.clone(), k.clone(), v.clone()], &|x| {
                    Var::attention(&x[0], &x[1], &x[2], causal)
                });
                assert_close(
                    &format!("attention T={t} d={d} causal={causal} on {}", dev.name()),
                    &got,
                    &want,
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn attention_gradients() {
    let (t, d) = (4usize, 3usize);
    let vals = vec![
        uniform(1, t * d, -1.0, 1.0),
        uniform(2, t * d, -1.0, 1.0),
        uniform(3, t * d, -1.0, 1.0),
    ];
    for causal in [false, true] {
        check_gradients(
            &format!("attention causal={causal}"),
            &[&[t, d], &[t, d], &[t, d]],
            &vals,
            &|x| Var::attention(&x[0], &x[1], &x[2], causal),
        );
    }
}

#[test]
fn multi_head_attention_gradients_and_heads() {
    let (b, t, dm, heads) = (2usize, 3usize, 4usize, 2usize);
    let shapes: [&[usize]; 5] = [&[b, t, dm], &[dm, dm], &[dm, dm], &[dm, dm], &[dm, dm]];
    let vals: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| uniform(10 + i as u64, s.iter().product(), -1.0, 1.0))
        .collect();
    let mha = |x: &[Var]| x[0].multi_head_attention(&x[1], &x[2], &x[3], &x[4], heads, true);
    check_gradients("multi_head_attention", &shapes, &vals, &mha);
    // One head of the result equals attention on that head's projections.
    let cpu = Device::cpu();
    let (got, _, _) = run(&cpu, &shapes, &vals, &mha);
    assert_eq!(got.len(), b * t * dm);
    let g = Graph::new();
    let x = g.input("x", &[b, t, dm]);
    let w = g.input("w", &[dm, dm]);
    assert!(matches!(
        x.multi_head_attention(&w, &w, &w, &w, 3, false)
            .unwrap_err(),
        Error::Invalid { .. }
    ));
    let q = g.input("q", &[4, 3]);
    let k5 = g.input("k", &[5, 3]);
    assert!(matches!(
        Var::attention(&q, &k5, &k5, true).unwrap_err(),
        Error::Shape {
            op: "attention",
            ..
        }
    ));
    assert!(matches!(
        Var::attention(&q, &g.input("k2", &[5, 2]), &k5, false).unwrap_err(),
        Error::Shape { .. }
    ));
}

#[test]
fn attention_gradients_at_sequence_lengths_1_and_33() {
    // Batch 1 and 2, causal or not: T = 1 (softmax of one score) and T = 33 (odd,
    // just past a power of two).
    for (b, t, d, causal) in [
        (1usize, 1usize, 3usize, false),
        (2, 1, 2, true),
        (1, 33, 2, true),
    ] {
        let s: [usize; 3] = [b, t, d];
        let vals: Vec<Vec<f32>> = (0..3)
            .map(|i| uniform(40 + i, b * t * d, -1.0, 1.0))
            .collect();
        check_gradients(
            &format!("attention B={b} T={t} d={d} causal={causal}"),
            &[&s, &s, &s],
            &vals,
            &|x| Var::attention(&x[0], &x[1], &x[2], causal),
        );
    }
}

#[test]
fn an_explicit_mask_matches_the_causal_flag_and_bad_masks_are_typed_errors() {
    let (b, t, d) = (2usize, 5usize, 3usize);
    let causal: Vec<f32> = (0..t * t)
        .map(|i| {
            if i % t > i / t {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let s: [usize; 3] = [b, t, d];
    let vals: Vec<Vec<f32>> = (0..3)
        .map(|i| uniform(60 + i, b * t * d, -1.0, 1.0))
        .collect();
    let with_mask = |x: &[Var]| {
        let m = Tensor::from_slice(&Device::cpu(), &causal, &[t, t])?;
        Var::attention_masked(&x[0], &x[1], &x[2], &x[0].graph().constant(&m)?)
    };
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let (want, _, _) = run(&dev, &[&s, &s, &s], &vals, &|x| {
            Var::attention(&x[0], &x[1], &x[2], true)
        });
        let (got, _, _) = run(&dev, &[&s, &s, &s], &vals, &with_mask);
        assert_close(
            &format!("masked attention on {}", dev.name()),
            &got,
            &want,
            1e-6,
            1e-5,
        );
    }
    check_gradients("masked attention", &[&s, &s, &s], &vals, &with_mask);
    let g = Graph::new();
    let q = g.input("q", &[b, t, d]);
    for bad in [vec![t, t + 1], vec![3, t, t], vec![t + 1]] {
        let e =
            Var::attention_masked(&q, &q, &q, &g.input(&format!("m{bad:?}"), &bad)).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { op: "attention", detail } if detail.contains(&format!("{bad:?}")) && detail.contains("[2, 5, 5]")),
            "{e}"
        );
    }
}

#[test]
fn multi_head_attention_at_sequence_lengths_1_and_33() {
    for (b, t) in [(2usize, 1usize), (1, 33)] {
        let dm = 4usize;
        let shapes: [&[usize]; 5] = [&[b, t, dm], &[dm, dm], &[dm, dm], &[dm, dm], &[dm, dm]];
        let vals: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| uniform(70 + i as u64, s.iter().product(), -1.0, 1.0))
            .collect();
        check_gradients(
            &format!("multi_head_attention B={b} T={t}"),
            &shapes,
            &vals,
            &|x| x[0].multi_head_attention(&x[1], &x[2], &x[3], &x[4], 2, true),
        );
    }
}
