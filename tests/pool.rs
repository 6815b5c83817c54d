//! Direct pooling kernels (ops/pool.rs, shaders/pool.wgsl): values against a naive
//! reference written here (windows slid over an explicitly padded array), gradients against
//! finite differences, GPU against CPU on awkward shapes, max's tie rule, the loop cap, and
//! bad input.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::graph::Op;
use wgrad::ops::pool::{Pool2d, PoolKind};
use wgrad::{Conv2d, Device, Error, Graph, Tensor, Var};

/// Where a padded position lies: in the image, in the given padding, or past it (only
/// ceil_mode's last window reaches there).
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Real(f64),
    Pad,
    Beyond,
}

/// PyTorch's rule for one axis: floor or ceil of (len + p0 + p1 - span)/s, plus one, minus the
/// last window when ceil_mode would start it in the end padding.
fn outs(len: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize, ceil: bool) -> usize {
    let span = d * (k - 1) + 1;
    let room = len + p0 + p1 - span;
    let mut o = if ceil { room.div_ceil(s) } else { room / s } + 1;
    if ceil && (o - 1) * s >= len + p0 {
        o -= 1;
    }
    o
}

/// The naive pooling of x (N, C, H, W): each image padded into a grid of cells, each window
/// read cell by cell. Returns (y, the taps of each output as flat input indices).
fn reference(x: &[f32], s: &[usize], p: &Pool2d) -> (Vec<f64>, Vec<Vec<usize>>) {
    let g = &p.window;
    let [pt, pl, pb, pr] = g.pads;
    let (h, w) = (s[2], s[3]);
    let oh = outs(h, g.kh, g.strides[0], g.dilations[0], pt, pb, p.ceil_mode);
    let ow = outs(w, g.kw, g.strides[1], g.dilations[1], pl, pr, p.ceil_mode);
    let gh = ((oh - 1) * g.strides[0] + g.dilations[0] * (g.kh - 1) + 1).max(pt + h + pb);
    let gw = ((ow - 1) * g.strides[1] + g.dilations[1] * (g.kw - 1) + 1).max(pl + w + pr);
    let (mut y, mut taps) = (Vec::new(), Vec::new());
    for img in 0..s[0] * s[1] {
        let cell = |r: usize, c: usize| -> (Cell, usize) {
            if r >= pt + h + pb || c >= pl + w + pr {
                (Cell::Beyond, 0)
            } else if r < pt || c < pl || r >= pt + h || c >= pl + w {
                (Cell::Pad, 0)
            } else {
                let at = (img * h + r - pt) * w + c - pl;
                (Cell::Real(x[at] as f64), at)
            }
        };
        assert!(gh >= pt + h && gw >= pl + w);
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut real, mut pads, mut idx) = (Vec::new(), 0usize, Vec::new());
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let r = oy * g.strides[0] + ki * g.dilations[0];
                        let c = ox * g.strides[1] + kj * g.dilations[1];
                        match cell(r, c) {
                            (Cell::Real(v), at) => {
                                real.push(v);
                                idx.push(at);
                            }
                            (Cell::Pad, _) => pads += 1,
                            (Cell::Beyond, _) => {}
                        }
                    }
                }
                assert!(!real.is_empty(), "a window of only padding");
                y.push(match p.kind {
                    PoolKind::Max => real.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    PoolKind::Avg { count_include_pad } => {
                        let count = real.len() + if count_include_pad { pads } else { 0 };
                        real.iter().sum::<f64>() / count as f64
                    }
                });
                taps.push(idx);
            }
        }
    }
    (y, taps)
}

fn pooled(x: &Var, p: &Pool2d) -> wgrad::Result<Var> {
    match p.kind {
        PoolKind::Max => x.max_pool2d_with(p.window, p.ceil_mode),
        PoolKind::Avg { count_include_pad } => {
            x.avg_pool2d_with(p.window, p.ceil_mode, count_include_pad)
        }
    }
}

/// (graph, y, d loss/dx, loss = Σ y·R) for pooling an input of `shape`.
fn graph_of(shape: &[usize], p: &Pool2d) -> (Graph, Var, Var, Var) {
    let g = Graph::new();
    let x = g.input("x", shape);
    let y = pooled(&x, p).unwrap();
    let n = y.shape().iter().product();
    let r = Tensor::from_slice(&Device::cpu(), &uniform(77, n, 0.5, 1.5), y.shape()).unwrap();
    let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
    let gx = grad(&loss, &[&x]).unwrap().remove(0);
    (g, y, gx, loss)
}

fn run(dev: &Device, shape: &[usize], xv: &[f32], p: &Pool2d) -> (Vec<f32>, Vec<f32>) {
    let (g, y, gx, _) = graph_of(shape, p);
    let exe = dev.compile(&g, &[&y, &gx], None).unwrap();
    let xt = Tensor::from_slice(dev, xv, shape).unwrap();
    let out = exe.run(&[("x", &xt)]).unwrap();
    (out[0].to_vec().unwrap(), out[1].to_vec().unwrap())
}

/// The gradient of Σ y·R by the tie rule, from the reference's taps: each window's share
/// R/ties to its taps equal to the maximum (max), R/count to every real tap (average).
fn reference_grad(x: &[f32], s: &[usize], p: &Pool2d) -> Vec<f32> {
    let (y, taps) = reference(x, s, p);
    let r = uniform(77, y.len(), 0.5, 1.5);
    let mut dx = vec![0.0f64; x.len()];
    for (o, idx) in taps.iter().enumerate() {
        match p.kind {
            PoolKind::Max => {
                let ties: Vec<usize> = idx
                    .iter()
                    .copied()
                    .filter(|&i| x[i] as f64 == y[o])
                    .collect();
                for i in &ties {
                    dx[*i] += r[o] as f64 / ties.len() as f64;
                }
            }
            PoolKind::Avg { .. } => {
                // y = Σ real / count, so each real tap gets r / count = r·y / Σ real... use
                // the count directly: reconstruct it from the mean of the taps.
                let sum: f64 = idx.iter().map(|&i| x[i] as f64).sum();
                let count = sum / y[o];
                for i in idx {
                    dx[*i] += r[o] as f64 / count;
                }
            }
        }
    }
    dx.iter().map(|&v| v as f32).collect()
}

fn pool(kind: PoolKind, window: Conv2d, ceil_mode: bool) -> Pool2d {
    Pool2d {
        window,
        kind,
        ceil_mode,
    }
}

const MAX: PoolKind = PoolKind::Max;
const AVG_IN: PoolKind = PoolKind::Avg {
    count_include_pad: true,
};
const AVG_EX: PoolKind = PoolKind::Avg {
    count_include_pad: false,
};

/// Value against the reference, gradient against finite differences, GPU against CPU.
fn check(label: &str, shape: &[usize], p: Pool2d) {
    let n: usize = shape.iter().product();
    let xv = uniform(5, n, 0.5, 4.0); // positive, so the average's count is recoverable
    let (want, _) = reference(&xv, shape, &p);
    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let cpu = Device::cpu();
    let (value, gradient) = run(&cpu, shape, &xv, &p);
    assert_close(&format!("{label} value"), &value, &want, 1e-5, 1e-5);
    let gwant = reference_grad(&xv, shape, &p);
    assert_close(
        &format!("{label} gradient vs rule"),
        &gradient,
        &gwant,
        1e-5,
        1e-5,
    );
    let (g, _, dx, loss) = graph_of(shape, &p);
    check_finite_differences(
        label,
        &g,
        &loss,
        &[dx],
        &[("x".into(), Feed::real(&xv, shape))],
    );
    if let Some(dev) = gpu() {
        let (gv, gg) = run(&dev, shape, &xv, &p);
        assert_close(
            &format!("{label} value GPU vs CPU"),
            &gv,
            &value,
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{label} gradient GPU vs CPU"),
            &gg,
            &gradient,
            1e-5,
            1e-4,
        );
    }
}

#[test]
fn pooling_on_awkward_shapes() {
    let w = Conv2d::new;
    let cases: Vec<(&str, Vec<usize>, Pool2d)> = vec![
        (
            "resnet-like 3x3 s2 p1 max",
            vec![1, 3, 7, 9],
            pool(MAX, w(3, 3).stride(2).padding(1), false),
        ),
        (
            "stride (2,1) dilation 2 pads ceil max",
            vec![2, 5, 8, 7],
            pool(
                MAX,
                w(2, 3).strides(2, 1).dilation(2).pads(1, 0, 0, 1),
                true,
            ),
        ),
        (
            "7x7 pad 3 avg include",
            vec![1, 1, 6, 6],
            pool(AVG_IN, w(7, 7).padding(3), false),
        ),
        (
            "7x7 pad 3 avg exclude",
            vec![2, 3, 7, 8],
            pool(AVG_EX, w(7, 7).padding(3).stride(2), false),
        ),
        (
            "1x1 s2 avg",
            vec![3, 2, 5, 5],
            pool(AVG_IN, w(1, 1).stride(2), false),
        ),
        ("1x1 max", vec![1, 7, 3, 4], pool(MAX, w(1, 1), false)),
        (
            "3x3 s2 p1 ceil avg exclude",
            vec![2, 3, 9, 10],
            pool(AVG_EX, w(3, 3).stride(2).padding(1), true),
        ),
        (
            "3x2 s(3,2) p1 ceil avg include",
            vec![1, 7, 11, 5],
            pool(AVG_IN, w(3, 2).strides(3, 2).padding(1), true),
        ),
        (
            "2x2 dilation 2 ceil max",
            vec![2, 4, 5, 6],
            pool(MAX, w(2, 2).dilation(2).stride(2), true),
        ),
        (
            "dilation 2 avg include pads",
            vec![1, 5, 9, 7],
            pool(AVG_IN, w(3, 3).dilation(2).pads(2, 1, 0, 2), false),
        ),
        // Output rows a multiple of 4 long run four outputs per invocation
        // (pool_*_forward4; "1x1 max" and "7x7 pad 3 avg exclude" above do too).
        (
            "resnet-like 3x3 s2 p1 max, rows of 8",
            vec![2, 3, 11, 16],
            pool(MAX, w(3, 3).stride(2).padding(1), false),
        ),
        // pool_max_forward4_k3s2 (3 columns at column stride 2, left padding 1, input rows
        // a multiple of 4): above with rows of 16; here two rows a window at row stride 1,
        // the bottom and right padded, and output rows of 12.
        (
            "3-column s2 p1 windows of 2 rows at stride 1, max",
            vec![1, 2, 5, 16],
            pool(MAX, w(2, 3).strides(1, 2).pads(0, 1, 1, 1), false),
        ),
        (
            "resnet-like 3x3 s2 p1 max, output rows of 12",
            vec![2, 1, 6, 24],
            pool(MAX, w(3, 3).stride(2).padding(1), false),
        ),
        (
            "3x3 s2 p1 ceil avg include, rows of 8",
            vec![1, 2, 6, 15],
            pool(AVG_IN, w(3, 3).stride(2).padding(1), true),
        ),
        // A row dilation, stride and bottom padding of 2^22: past the f32 division's bound
        // (src/ops/pool.rs `division`), so the kernels divide exactly; each window's first
        // row is on the image, its second in the padding (and the gradient walks two
        // windows per position, within the loop budget).
        (
            "dilation, stride and pads past 2^22, exact division",
            vec![2, 2, 3, 4],
            pool(
                AVG_IN,
                w(2, 3)
                    .dilations(1 << 22, 1)
                    .strides(1 << 22, 1)
                    .pads(0, 1, 1 << 22, 1),
                false,
            ),
        ),
        (
            "dilation, stride and pads past 2^22, exact division, max",
            vec![1, 2, 3, 4],
            pool(
                MAX,
                w(2, 2)
                    .dilations(1 << 22, 1)
                    .strides(1 << 22, 1)
                    .pads(0, 1, 1 << 22, 0),
                false,
            ),
        ),
        (
            "four columns side by side: column stride 3, dilation 2, uneven pads, max",
            vec![2, 3, 6, 13],
            pool(
                MAX,
                w(2, 3).strides(1, 3).dilations(1, 2).pads(0, 2, 1, 1),
                false,
            ),
        ),
        (
            "ceil drops a window in the end padding",
            vec![1, 2, 5, 5],
            pool(MAX, w(2, 2).stride(2).padding(1), true),
        ),
    ];
    for (label, shape, p) in cases {
        check(label, &shape, p);
    }
}

/// Max's gradient with many ties (small integers): shared equally among the tied taps.
#[test]
fn max_pool_ties_share_the_gradient() {
    let shape = [2, 3, 9, 9];
    let n: usize = shape.iter().product();
    let xv: Vec<f32> = uniform(9, n, 0.0, 3.0).iter().map(|v| v.floor()).collect();
    for p in [
        pool(MAX, Conv2d::new(3, 3).padding(1), false),
        pool(MAX, Conv2d::new(3, 3).stride(2), true),
    ] {
        let want = reference_grad(&xv, &shape, &p);
        let (_, cpu_grad) = run(&Device::cpu(), &shape, &xv, &p);
        assert_close("ties: CPU vs rule", &cpu_grad, &want, 1e-6, 1e-6);
        if let Some(dev) = gpu() {
            let (_, g) = run(&dev, &shape, &xv, &p);
            assert_close("ties: GPU vs rule", &g, &want, 1e-6, 1e-5);
        }
    }
}

/// A window just within the loop cap runs on the direct kernels; one past it is refused by
/// them and pooled through the composition instead; both agree with the reference.
#[test]
fn windows_at_and_past_the_loop_cap() {
    let budget = 16_384;
    for kw in [budget - 1, budget + 40] {
        let shape = [1, 2, 1, kw + 3];
        let n: usize = shape.iter().product();
        let xv = uniform(3, n, 0.5, 4.0);
        for kind in [MAX, AVG_IN] {
            let p = pool(
                kind,
                Conv2d::new(1, kw).strides(1, 2).pads(0, 1, 0, 0),
                true,
            );
            let direct = Tensor::from_slice(&Device::cpu(), &xv, &shape)
                .unwrap()
                .pool2d(p);
            assert_eq!(direct.is_ok(), kw < budget, "{kw}: {direct:?}");
            let (want, _) = reference(&xv, &shape, &p);
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let gwant = reference_grad(&xv, &shape, &p);
            for dev in std::iter::once(Device::cpu()).chain(gpu()) {
                let (v, g) = run(&dev, &shape, &xv, &p);
                let label = format!("1x{kw} {kind:?} on {}", dev.name());
                assert_close(&format!("{label} value"), &v, &want, 1e-5, 1e-5);
                assert_close(&format!("{label} gradient"), &g, &gwant, 1e-5, 1e-4);
            }
        }
    }
}

#[test]
fn bad_pooling_input_is_a_clear_error() {
    let cpu = Device::cpu();
    let x3 = Tensor::zeros(&cpu, &[2, 3, 4]).unwrap();
    let p = pool(MAX, Conv2d::new(2, 2), false);
    let e = x3.pool2d(p).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Shape {
                op: "max_pool2d",
                ..
            }
        ),
        "{e}"
    );
    // A window lying wholly in the padding.
    let x = Tensor::zeros(&cpu, &[1, 1, 2, 2]).unwrap();
    let e = x
        .pool2d(pool(AVG_IN, Conv2d::new(2, 2).padding(2), false))
        .unwrap_err();
    assert!(e.to_string().contains("no input element"), "{e}");
    // A window past the loop cap, named with its shapes.
    let long = Tensor::zeros(&cpu, &[1, 1, 1, 20_000]).unwrap();
    let e = long
        .pool2d(pool(MAX, Conv2d::new(1, 20_000), false))
        .unwrap_err();
    assert!(
        e.to_string().contains("1x20000") && e.to_string().contains("[1, 1, 1, 20000]"),
        "{e}"
    );
    // A gradient whose upstream does not fit.
    let g = Tensor::zeros(&cpu, &[1, 1, 2, 2]).unwrap();
    let e = g
        .pool2d_backward(pool(AVG_IN, Conv2d::new(2, 2), false), &[1, 1, 2, 2], None)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = g.pool2d_backward(p, &[1, 1, 3, 3], None).unwrap_err();
    assert!(e.to_string().contains("x and y"), "{e}");
    // The graph op checks its operands when recorded.
    let graph = Graph::new();
    let xv = graph.input("x", &[1, 1, 3, 3]);
    let gv = graph.input("g", &[1, 1, 3, 3]);
    let e = graph
        .push(Op::Pool2dGrad(p, vec![1, 1, 3, 3]), &[&xv, &xv, &gv])
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = graph
        .push(Op::Pool2dGrad(p, vec![1, 1, 3, 3]), &[&gv])
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}
