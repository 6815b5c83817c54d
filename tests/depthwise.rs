//! Depthwise convolution (ops/depthwise.rs, shaders/depthwise.wgsl): values against naive
//! loops written here, gradients against finite differences, GPU against CPU on awkward
//! shapes, and bad input.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Conv2d, Device, Graph, Tensor, Var};

/// y[n, f, oy, ox] = Σ x[n, f/m, oy·s + ki·d − p, …]·w[f, 0, ki, kj], zero outside the image.
fn naive(x: &[f32], xs: &[usize], w: &[f32], ws: &[usize], g: &Conv2d) -> (Vec<f32>, [usize; 4]) {
    let (n, c, h, wd, f) = (xs[0], xs[1], xs[2] as i64, xs[3] as i64, ws[0]);
    let (oh, ow) = g.output_size("test", xs).unwrap();
    let mut y = vec![0.0f64; n * f * oh * ow];
    for b in 0..n {
        for fi in 0..f {
            let ch = fi / (f / c);
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0f64;
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let iy =
                                (oy * g.strides[0] + ki * g.dilations[0]) as i64 - g.pads[0] as i64;
                            let ix =
                                (ox * g.strides[1] + kj * g.dilations[1]) as i64 - g.pads[1] as i64;
                            if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                                let xv = x[((b * c + ch) * h as usize + iy as usize) * wd as usize
                                    + ix as usize];
                                s += xv as f64 * w[(fi * g.kh + ki) * g.kw + kj] as f64;
                            }
                        }
                    }
                    y[((b * f + fi) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    (y.iter().map(|&v| v as f32).collect(), [n, f, oh, ow])
}

fn graph_of(xs: &[usize], ws: &[usize], geom: Conv2d) -> (Graph, Var, Var, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", xs);
    let w = g.input("w", ws);
    let y = x.conv2d(&w, geom).unwrap();
    let n = y.shape().iter().product();
    let r = Tensor::from_slice(&Device::cpu(), &uniform(77, n, 0.5, 1.5), y.shape()).unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let gr = grad(&loss, &[&x, &w]).unwrap();
    (g, y, gr[0].clone(), gr[1].clone(), loss)
}

fn run(
    dev: &Device,
    xs: &[usize],
    ws: &[usize],
    geom: Conv2d,
    xv: &[f32],
    wv: &[f32],
) -> Vec<Vec<f32>> {
    let (g, y, dx, dw, _) = graph_of(xs, ws, geom);
    let exe = dev.compile(&g, &[&y, &dx, &dw], None).unwrap();
    let xt = Tensor::from_slice(dev, xv, xs).unwrap();
    let wt = Tensor::from_slice(dev, wv, ws).unwrap();
    let out = exe.run(&[("x", &xt), ("w", &wt)]).unwrap();
    out.iter().map(|t| t.to_vec::<f32>().unwrap()).collect()
}

#[test]
fn depthwise_convolution_on_awkward_shapes() {
    let w = Conv2d::new;
    let cases: Vec<(&str, [usize; 4], usize, Conv2d, bool)> = vec![
        (
            "3x3 s2 p1 batch 1 odd",
            [1, 3, 7, 9],
            1,
            w(3, 3).stride(2).padding(1),
            true,
        ),
        (
            "3x2 dilation 2 pads, m=2",
            [2, 5, 8, 7],
            2,
            w(3, 2).dilation(2).pads(1, 0, 2, 1),
            true,
        ),
        ("7x7 pad 3", [1, 4, 6, 6], 1, w(7, 7).padding(3), true),
        ("1x1 stride 2", [3, 6, 5, 5], 1, w(1, 1).stride(2), true),
        ("3x3 p1 m=3", [2, 2, 9, 10], 3, w(3, 3).padding(1), true),
        (
            "filter gradient over parts",
            [4, 3, 40, 40],
            1,
            w(3, 3).padding(1),
            false,
        ),
    ];
    for (label, xs, m, geom, fd) in cases {
        let geom = geom.groups(xs[1]);
        let ws = [xs[1] * m, 1, geom.kh, geom.kw];
        let xv = uniform(1, xs.iter().product(), -1.0, 1.0);
        let wv = uniform(2, ws.iter().product(), -1.0, 1.0);
        let (want, _) = naive(&xv, &xs, &wv, &ws, &geom);
        let cpu = run(&Device::cpu(), &xs, &ws, geom, &xv, &wv);
        assert_close(&format!("{label} value"), &cpu[0], &want, 1e-5, 1e-5);
        if fd {
            let (g, _, dx, dw, loss) = graph_of(&xs, &ws, geom);
            let feeds = [
                ("x".to_string(), Feed::real(&xv, &xs)),
                ("w".to_string(), Feed::real(&wv, &ws)),
            ];
            check_finite_differences(label, &g, &loss, &[dx, dw], &feeds);
        }
        if let Some(dev) = gpu() {
            let got = run(&dev, &xs, &ws, geom, &xv, &wv);
            for (k, what) in ["value", "dx", "dw"].iter().enumerate() {
                assert_close(
                    &format!("{label} {what} GPU vs CPU"),
                    &got[k],
                    &cpu[k],
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn bad_depthwise_input_is_a_clear_error() {
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[1, 4, 5, 5]).unwrap();
    // Not depthwise (one group): the direct kernel refuses, naming the op and shapes.
    let w = Tensor::zeros(&cpu, &[4, 4, 3, 3]).unwrap();
    let e = x.depthwise_conv2d(&w, Conv2d::new(3, 3)).unwrap_err();
    assert!(
        e.to_string().contains("depthwise_conv2d") && e.to_string().contains("[4, 4, 3, 3]"),
        "{e}"
    );
    // Filters that disagree with the window.
    let w = Tensor::zeros(&cpu, &[4, 1, 2, 2]).unwrap();
    assert!(x.depthwise_conv2d(&w, Conv2d::new(3, 3).groups(4)).is_err());
    // An upstream gradient of the wrong shape.
    let w = Tensor::zeros(&cpu, &[4, 1, 3, 3]).unwrap();
    let g = Tensor::zeros(&cpu, &[1, 4, 2, 2]).unwrap();
    let e = g
        .depthwise_backward_data(&w, Conv2d::new(3, 3).groups(4), &[1, 4, 5, 5])
        .unwrap_err();
    assert!(e.to_string().contains("upstream"), "{e}");
}
