//! Layer norm, batch norm and pooling (graph compositions): values against a
//! direct computation, gradients against finite differences, GPU against CPU.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Device, Error, Graph, Tensor, Var};

/// The graph of `build` on input `x` of `shape`: (graph, value, d loss/dx, loss = Σ value·R).
fn graph_of(shape: &[usize], build: &dyn Fn(&Var) -> wgrad::Result<Var>) -> (Graph, Var, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", shape);
    let y = build(&x).unwrap();
    let r = Tensor::from_slice(
        &Device::cpu(),
        &uniform(77, y.shape().iter().product(), 0.5, 1.5),
        y.shape(),
    )
    .unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let gx = grad(&loss, &[&x]).unwrap().remove(0);
    (g, y, gx, loss)
}

/// Runs `build` on input `x` of `shape`: (value, gradient of Σ value·R) on `dev`.
fn eval(
    dev: &Device,
    shape: &[usize],
    xv: &[f32],
    build: &dyn Fn(&Var) -> wgrad::Result<Var>,
) -> (Vec<f32>, Vec<f32>, f32) {
    let (g, y, gx, loss) = graph_of(shape, build);
    let exe = dev.compile(&g, &[&y, &gx, &loss], None).unwrap();
    let xt = Tensor::from_slice(dev, xv, shape).unwrap();
    let out = exe.run(&[("x", &xt)]).unwrap();
    (
        out[0].to_vec().unwrap(),
        out[1].to_vec().unwrap(),
        out[2].item().unwrap(),
    )
}

/// Checks the value against `want`, the gradient against central differences
/// (CPU reference) and the GPU against the CPU.
fn check(
    name: &str,
    shape: &[usize],
    xv: &[f32],
    want: &[f32],
    build: &dyn Fn(&Var) -> wgrad::Result<Var>,
) {
    let cpu = Device::cpu();
    let (value, gradient, _) = eval(&cpu, shape, xv, build);
    assert_close(&format!("{name} value"), &value, want, 1e-5, 1e-4);
    let (g, _, dx, loss) = graph_of(shape, build);
    let feeds = [("x".to_string(), Feed::real(xv, shape))];
    let wide = check_finite_differences(name, &g, &loss, &[dx], &feeds);
    let rounded: Vec<f32> = wide[0].iter().map(|&v| v as f32).collect();
    assert_close(
        &format!("{name} gradient f32 vs f64 reference"),
        &gradient,
        &rounded,
        1e-5,
        1e-4,
    );
    if let Some(dev) = gpu() {
        let (gv, gg, _) = eval(&dev, shape, xv, build);
        assert_close(&format!("{name} value GPU vs CPU"), &gv, &value, 1e-5, 1e-4);
        assert_close(
            &format!("{name} gradient GPU vs CPU"),
            &gg,
            &gradient,
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn layer_norm_normalises_the_last_axis() {
    let (rows, n) = (3usize, 7usize);
    let x = uniform(1, rows * n, -2.0, 2.0);
    let want: Vec<f32> = x
        .chunks(n)
        .flat_map(|r| {
            let m = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
            r.iter()
                .map(move |&v| ((v as f64 - m) / (var + 1e-5).sqrt()) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    check("layer_norm", &[rows, n], &x, &want, &|v| v.layer_norm(1e-5));
}

#[test]
fn batch_norm_normalises_each_channel() {
    let shape = [4usize, 3, 2, 2];
    let x = uniform(2, shape.iter().product(), -2.0, 2.0);
    let (n, c, hw) = (4, 3, 4);
    let mut want = vec![0.0f32; x.len()];
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|b| (0..hw).map(move |k| (b * c + ch) * hw + k))
            .collect();
        let m = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / idx.len() as f64;
        let var = idx.iter().map(|&i| (x[i] as f64 - m).powi(2)).sum::<f64>() / idx.len() as f64;
        for &i in &idx {
            want[i] = ((x[i] as f64 - m) / (var + 1e-5).sqrt()) as f32;
        }
    }
    check("batch_norm", &shape, &x, &want, &|v| {
        Ok(v.batch_norm(1e-5)?.0)
    });
    let g = Graph::new();
    let (_, mean, var) = g.input("x", &shape).batch_norm(1e-5).unwrap();
    assert_eq!(
        (mean.shape(), var.shape()),
        (&[1, 3, 1, 1][..], &[1, 3, 1, 1][..])
    );
}

#[test]
fn pooling_takes_the_max_or_mean_of_each_window() {
    let shape = [2usize, 3, 4, 6];
    // Distinct values 0.1 apart (shuffled) plus small noise: no ties inside a ±h step.
    let noise = uniform(3, 144, -0.02, 0.02);
    let x: Vec<f32> = (0..144)
        .map(|i| ((i * 89) % 144) as f32 * 0.1 + noise[i])
        .collect();
    for (k, s) in [(2usize, 2usize), (3, 1)] {
        let (oh, ow) = ((4 - k) / s + 1, (6 - k) / s + 1);
        let (mut mx, mut avg) = (Vec::new(), Vec::new());
        for img in 0..6 {
            for y in 0..oh {
                for z in 0..ow {
                    let w: Vec<f32> = (0..k)
                        .flat_map(|i| (0..k).map(move |j| (i, j)))
                        .map(|(i, j)| x[img * 24 + (y * s + i) * 6 + z * s + j])
                        .collect();
                    mx.push(w.iter().copied().fold(f32::NEG_INFINITY, f32::max));
                    avg.push((w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64) as f32);
                }
            }
        }
        check(
            &format!("max_pool2d k={k} s={s}"),
            &shape,
            &x,
            &mx,
            &move |v| v.max_pool2d(k, s),
        );
        check(
            &format!("avg_pool2d k={k} s={s}"),
            &shape,
            &x,
            &avg,
            &move |v| v.avg_pool2d(k, s),
        );
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let g = Graph::new();
    assert!(matches!(
        g.input("a", &[4]).batch_norm(1e-5).unwrap_err(),
        Error::Shape {
            op: "batch_norm",
            ..
        }
    ));
    assert!(matches!(
        g.input("b", &[2, 3, 4]).max_pool2d(2, 2).unwrap_err(),
        Error::Shape {
            op: "max_pool2d",
            ..
        }
    ));
    let e = g.input("c", &[1, 1, 2, 2]).avg_pool2d(3, 1).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "avg_pool2d", detail } if detail.contains("larger than the padded input")),
        "{e}"
    );
}
