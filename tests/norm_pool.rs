//! Layer norm, batch norm and pooling (graph compositions): values against a
//! direct computation, gradients against finite differences, GPU against CPU.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Conv2d, Device, Error, Graph, Tensor, Var};

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

/// Direct pooling of (N, C, H, W) in f64: padding is −∞ for max and a zero counted in
/// the window for average (count_include_pad = True).
fn direct_pool(x: &[f32], [n, c, h, w]: [usize; 4], g: Conv2d, max: bool) -> Vec<f32> {
    let ([sh, sw], [pt, pl, pb, pr], [dh, dw]) = (g.strides, g.pads, g.dilations);
    let oh = (h + pt + pb - dh * (g.kh - 1) - 1) / sh + 1;
    let ow = (w + pl + pr - dw * (g.kw - 1) - 1) / sw + 1;
    let mut out = Vec::new();
    for img in 0..n * c {
        for y in 0..oh {
            for z in 0..ow {
                let mut vals = Vec::new();
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let iy = (y * sh + i * dh) as isize - pt as isize;
                        let ix = (z * sw + j * dw) as isize - pl as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            vals.push(x[img * h * w + iy as usize * w + ix as usize] as f64);
                        }
                    }
                }
                out.push(if max {
                    vals.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32
                } else {
                    (vals.iter().sum::<f64>() / (g.kh * g.kw) as f64) as f32
                });
            }
        }
    }
    out
}

#[test]
fn padded_pooling_matches_direct_pooling() {
    // stride 2, non-square images and windows, batch 1 and > 1, odd channels
    let cases = [
        ([1usize, 1, 5, 5], Conv2d::new(3, 3).stride(2).padding(1)),
        ([2, 3, 4, 7], Conv2d::new(2, 2).stride(2).padding(1)),
        ([1, 3, 6, 5], Conv2d::new(3, 2).padding(1)),
        (
            [2, 1, 7, 4],
            Conv2d::new(3, 3).stride(2).padding(1).dilation(2),
        ),
        // per-axis strides and dilations, four different pads
        (
            [1, 2, 5, 7],
            Conv2d::new(2, 3).strides(2, 1).pads(1, 0, 0, 2),
        ),
        (
            [2, 1, 6, 5],
            Conv2d::new(3, 2)
                .strides(1, 2)
                .pads(0, 1, 2, 1)
                .dilations(2, 1),
        ),
    ];
    for (k, (shape, geom)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        // Distinct values 0.1 apart (shuffled) plus noise, some negative so that a zero
        // padding would win a max: no ties inside a ±h step.
        let noise = uniform(k as u64 + 3, n, -0.02, 0.02);
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 89) % n) as f32 * 0.1 - 2.0 + noise[i])
            .collect();
        let mx = direct_pool(&x, shape, geom, true);
        let avg = direct_pool(&x, shape, geom, false);
        check(
            &format!("max_pool2d {shape:?} {geom:?}"),
            &shape,
            &x,
            &mx,
            &move |v| v.max_pool2d_window(geom),
        );
        check(
            &format!("avg_pool2d {shape:?} {geom:?}"),
            &shape,
            &x,
            &avg,
            &move |v| v.avg_pool2d_window(geom),
        );
    }
}

/// Pooling with ceil_mode and count_include_pad in f64, written from onnxruntime's loops:
/// a window starts at o·s - p (o counted with ceil, dropping a window that would start in
/// the end padding), is clipped to [-p_start, len + p_end) for its count when padding
/// counts, and to [0, len) for its elements.
fn direct_pool_ceil(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    g: Conv2d,
    max: bool,
    include_pad: bool,
) -> (Vec<f32>, [usize; 2]) {
    let outs = |len: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize| {
        let room = len + p0 + p1 - (d * (k - 1) + 1);
        let o = room.div_ceil(s) + 1;
        if (o - 1) * s >= len + p0 {
            o - 1
        } else {
            o
        }
    };
    let [pt, pl, pb, pr] = g.pads;
    let oh = outs(h, g.kh, g.strides[0], g.dilations[0], pt, pb);
    let ow = outs(w, g.kw, g.strides[1], g.dilations[1], pl, pr);
    let mut out = Vec::new();
    for img in 0..n * c {
        for y in 0..oh {
            for z in 0..ow {
                let (mut vals, mut count) = (Vec::new(), 0usize);
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let iy = (y * g.strides[0] + i * g.dilations[0]) as isize - pt as isize;
                        let ix = (z * g.strides[1] + j * g.dilations[1]) as isize - pl as isize;
                        let in_pad = iy < (h + pb) as isize && ix < (w + pr) as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            vals.push(x[img * h * w + iy as usize * w + ix as usize] as f64);
                            count += 1;
                        } else if include_pad && in_pad {
                            count += 1;
                        }
                    }
                }
                out.push(if max {
                    vals.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32
                } else {
                    (vals.iter().sum::<f64>() / count as f64) as f32
                });
            }
        }
    }
    (out, [oh, ow])
}

#[test]
fn ceil_mode_and_count_include_pad_pooling_match_direct_pooling() {
    let cases = [
        // a last window past the end padding, kept (ceil) and one starting in it, dropped
        (
            [1usize, 2, 5, 6],
            Conv2d::new(2, 3).strides(2, 2).pads(1, 1, 1, 1),
        ),
        (
            [2, 1, 6, 7],
            Conv2d::new(3, 2).strides(2, 3).pads(0, 1, 1, 0),
        ),
        (
            [1, 1, 7, 5],
            Conv2d::new(2, 2)
                .strides(2, 2)
                .pads(1, 0, 1, 1)
                .dilations(2, 1),
        ),
    ];
    for (k, (shape, geom)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let noise = uniform(k as u64 + 11, n, -0.02, 0.02);
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % n) as f32 * 0.1 - 1.5 + noise[i])
            .collect();
        let (mx, [oh, ow]) = direct_pool_ceil(&x, shape, geom, true, false);
        let g = Graph::new();
        let y = g.input("x", &shape).max_pool2d_with(geom, true).unwrap();
        assert_eq!(y.shape(), &[shape[0], shape[1], oh, ow], "{geom:?}");
        check(
            &format!("max_pool2d ceil {shape:?} {geom:?}"),
            &shape,
            &x,
            &mx,
            &move |v| v.max_pool2d_with(geom, true),
        );
        for include in [false, true] {
            for ceil in [false, true] {
                let want = if ceil {
                    direct_pool_ceil(&x, shape, geom, false, include).0
                } else if include {
                    direct_pool(&x, shape, geom, false)
                } else {
                    continue;
                };
                check(
                    &format!("avg_pool2d ceil {ceil} include {include} {shape:?} {geom:?}"),
                    &shape,
                    &x,
                    &want,
                    &move |v| v.avg_pool2d_with(geom, ceil, include),
                );
            }
        }
    }
}

#[test]
fn bad_pooling_windows_are_typed_errors() {
    let g = Graph::new();
    let x = g.input("x", &[1, 2, 3, 3]);
    // kernel larger than the padded input
    let e = x
        .max_pool2d_window(Conv2d::new(6, 6).padding(1))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "max_pool2d", detail } if detail.contains("larger than the padded input") && detail.contains("[1, 2, 3, 3]")),
        "{e}"
    );
    assert!(x.max_pool2d_window(Conv2d::new(5, 5).padding(2)).is_ok());
    // padding more than half the window: a window could hold nothing but padding
    let e = x
        .avg_pool2d_window(Conv2d::new(2, 2).padding(2))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { op: "avg_pool2d", detail } if detail.contains("padding 2")),
        "{e}"
    );
    let e = x
        .max_pool2d_window(Conv2d::new(3, 3).stride(0))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "max_pool2d",
                ..
            }
        ),
        "{e}"
    );
}

/// Layer norm over the last axis, in f64.
fn direct_layer_norm(x: &[f32], n: usize) -> Vec<f32> {
    x.chunks(n)
        .flat_map(|r| {
            let m = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
            r.iter()
                .map(move |&v| ((v as f64 - m) / (var + 1e-5).sqrt()) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn norms_on_awkward_shapes() {
    // Layer norm: one row of 33, a 3-D batch with an odd last axis.
    for shape in [vec![1usize, 33], vec![2, 3, 5]] {
        let n: usize = shape.iter().product();
        let x = uniform(30 + n as u64, n, -2.0, 2.0);
        let want = direct_layer_norm(&x, *shape.last().unwrap());
        check(&format!("layer_norm {shape:?}"), &shape, &x, &want, &|v| {
            v.layer_norm(1e-5)
        });
    }
    // Batch norm: batch 1 with odd channels on a non-square image.
    let shape = [1usize, 5, 3, 2];
    let x = uniform(31, 30, -2.0, 2.0);
    let mut want = vec![0.0f32; 30];
    for ch in 0..5 {
        let r = &x[ch * 6..ch * 6 + 6];
        let normed = direct_layer_norm(r, 6);
        want[ch * 6..ch * 6 + 6].copy_from_slice(&normed);
    }
    check("batch_norm [1, 5, 3, 2]", &shape, &x, &want, &|v| {
        Ok(v.batch_norm(1e-5)?.0)
    });
}

/// Batch norm of (N, C, …) computed directly in f64: per channel over N and the rest.
fn direct_batch_norm(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (n, c) = (shape[0], shape[1]);
    let rest: usize = shape[2..].iter().product();
    let mut want = vec![0.0f32; x.len()];
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|b| (0..rest).map(move |k| (b * c + ch) * rest + k))
            .collect();
        let m = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / idx.len() as f64;
        let var = idx.iter().map(|&i| (x[i] as f64 - m).powi(2)).sum::<f64>() / idx.len() as f64;
        for &i in &idx {
            want[i] = ((x[i] as f64 - m) / (var + 1e-5).sqrt()) as f32;
        }
    }
    want
}

#[test]
fn batch_norm_of_any_rank_normalises_each_channel() {
    // (N, C), (N, C, L) and a rank-5 input with odd sizes: the statistics are taken
    // over N and every axis after C, whatever the rank.
    for shape in [vec![5usize, 3], vec![2, 3, 7], vec![3, 2, 1, 3, 5]] {
        let n: usize = shape.iter().product();
        let x = uniform(40 + n as u64, n, -2.0, 2.0);
        let want = direct_batch_norm(&x, &shape);
        check(&format!("batch_norm {shape:?}"), &shape, &x, &want, &|v| {
            Ok(v.batch_norm(1e-5)?.0)
        });
        let g = Graph::new();
        let (_, mean, var) = g.input("x", &shape).batch_norm(1e-5).unwrap();
        let mut stat = vec![1; shape.len()];
        stat[1] = shape[1];
        assert_eq!((mean.shape(), var.shape()), (&stat[..], &stat[..]));
    }
}

/// ceil_mode drops a last window that would start in the end padding; with end padding as
/// wide as the window (pads 1, 1, 1, 3 for a 2x3 window on 6 columns) im2col still made the
/// dropped column's patches, so the result had 8 columns, the last one zeros, where the
/// window count said 7 (a debug assertion in debug builds). Values: onnxruntime's MaxPool
/// with the end padding the 7 kept windows reach (pads 1, 1, 1, 2; onnxruntime refuses a
/// pad as wide as the window), from tests/fixtures/onnx/gen_pool_dropped_window.py.
#[test]
fn ceil_mode_drops_a_window_lying_in_the_end_padding() {
    let shape = [1, 2, 5, 6];
    let x: Vec<f32> = (0..60).map(|i| (i * 7 % 11 - 5) as f32).collect();
    let want: [f32; 84] = [
        2., 2., 5., 5., 5., 1., -3., 4., 4., 5., 5., 5., 1., -3., 4., 5., 5., 5., 4., 4., 4., 2.,
        5., 5., 5., 4., 4., 4., 5., 5., 5., 4., 4., 4., 2., 5., 5., 5., 4., 4., 4., 0., 3., 3., 3.,
        2., 2., 2., -2., 5., 5., 4., 4., 4., 2., -2., 5., 5., 4., 4., 5., 5., 5., 3., 4., 4., 4.,
        5., 5., 5., 1., 4., 4., 5., 5., 5., 3., -1., 2., 2., 5., 5., 5., 1.,
    ];
    let window = Conv2d::new(2, 3).pads(1, 1, 1, 3);
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let g = Graph::new();
        let y = g.input("x", &shape).max_pool2d_with(window, true).unwrap();
        assert_eq!(y.shape(), [1, 2, 6, 7]);
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let xt = Tensor::from_slice(&dev, &x, &shape).unwrap();
        let got: Vec<f32> = exe.run(&[("x", &xt)]).unwrap()[0].to_vec().unwrap();
        assert_eq!(got, want, "{dev:?}");
    }
}
