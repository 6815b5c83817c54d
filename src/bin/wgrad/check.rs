//! `wgrad check`: every kernel and every gradient rule on this machine's
//! adapter against the CPU reference, as a pass/fail table (or JSON lines).
//! Exit code 1 on any failure: the user's proof that their driver computes correctly.

use wgrad::autodiff::grad;
use wgrad::{BinaryOp, DType, Device, Graph, MatmulVariant, ReduceOp, Rng, Tensor, UnaryOp, Var};

/// One comparison of a GPU result with the reference.
struct Row {
    op: String,
    shapes: String,
    max_abs: f64,
    max_rel: f64,
    pass: bool,
    error: Option<String>,
}

/// Compares `got` with `want`: every element within `atol + rtol·|want|`
/// (NaN matches NaN, infinities must be equal).
fn compare(
    op: String,
    shapes: String,
    got: wgrad::Result<Vec<f32>>,
    want: wgrad::Result<Vec<f32>>,
    atol: f64,
    rtol: f64,
) -> Row {
    let (got, want) = match (got, want) {
        (Ok(g), Ok(w)) => (g, w),
        (Err(e), _) | (_, Err(e)) => {
            return Row {
                op,
                shapes,
                max_abs: f64::NAN,
                max_rel: f64::NAN,
                pass: false,
                error: Some(e.to_string()),
            }
        }
    };
    if got.len() != want.len() {
        let error = Some(format!(
            "{} values, reference has {}",
            got.len(),
            want.len()
        ));
        return Row {
            op,
            shapes,
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            pass: false,
            error,
        };
    }
    let (mut max_abs, mut max_rel, mut pass) = (0.0f64, 0.0f64, true);
    for (&g, &w) in got.iter().zip(&want) {
        let (g, w) = (g as f64, w as f64);
        if w.is_nan() || w.is_infinite() {
            pass &= if w.is_nan() { g.is_nan() } else { g == w };
            continue;
        }
        let err = (g - w).abs();
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / w.abs().max(1e-30));
        pass &= err <= atol + rtol * w.abs();
    }
    Row {
        op,
        shapes,
        max_abs,
        max_rel,
        pass,
        error: None,
    }
}

fn read(t: wgrad::Result<Tensor>) -> wgrad::Result<Vec<f32>> {
    let t = t?;
    match t.dtype() {
        DType::I32 => Ok(t.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect()),
        _ => t.to_vec::<f32>(),
    }
}

/// Runs `f` on GPU copies and CPU copies of the same seeded inputs.
fn kernel(
    rows: &mut Vec<Row>,
    gpu: &Device,
    op: &str,
    shapes: &[&[usize]],
    range: (f32, f32),
    tol: (f64, f64),
    f: impl Fn(&[Tensor]) -> wgrad::Result<Tensor>,
) {
    let mut rng = Rng::new(rows.len() as u64 + 1);
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| rng.vec_uniform(s.iter().product(), range.0, range.1))
        .collect();
    let make = |dev: &Device| -> wgrad::Result<Vec<Tensor>> {
        shapes
            .iter()
            .zip(&data)
            .map(|(s, d)| Tensor::from_slice(dev, d, s))
            .collect()
    };
    let got = make(gpu).and_then(|x| read(f(&x)));
    let want = make(&Device::cpu()).and_then(|x| read(f(&x)));
    rows.push(compare(
        op.to_string(),
        format!("{shapes:?}"),
        got,
        want,
        tol.0,
        tol.1,
    ));
}

/// Gradients of `Σ build(x…)·R` with respect to every input, on GPU and CPU.
fn gradient(
    rows: &mut Vec<Row>,
    gpu: &Device,
    op: &str,
    shapes: &[&[usize]],
    range: (f32, f32),
    build: impl Fn(&[Var]) -> wgrad::Result<Var>,
) {
    let run = |dev: &Device| -> wgrad::Result<Vec<f32>> {
        let g = Graph::new();
        let xs: Vec<Var> = (0..shapes.len())
            .map(|i| g.input(&format!("x{i}"), shapes[i]))
            .collect();
        let y = build(&xs)?;
        let n: usize = y.shape().iter().product();
        let r = Tensor::from_slice(
            &Device::cpu(),
            &Rng::new(99).vec_uniform(n, 0.5, 1.5),
            y.shape(),
        )?;
        let loss = y.mul(&g.constant(&r)?)?.sum()?;
        let refs: Vec<&Var> = xs.iter().collect();
        let grads = grad(&loss, &refs)?;
        let outs: Vec<&Var> = grads.iter().collect();
        let exe = dev.compile(&g, &outs, None)?;
        let mut rng = Rng::new(5);
        let feeds: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                Tensor::from_slice(
                    dev,
                    &rng.vec_uniform(s.iter().product(), range.0, range.1),
                    s,
                )
            })
            .collect::<wgrad::Result<_>>()?;
        let named: Vec<(String, &Tensor)> = feeds
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("x{i}"), t))
            .collect();
        let named: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let mut all = Vec::new();
        for t in exe.run(&named)? {
            all.extend(t.to_vec::<f32>()?);
        }
        Ok(all)
    };
    rows.push(compare(
        format!("grad {op}"),
        format!("{shapes:?}"),
        run(gpu),
        run(&Device::cpu()),
        1e-4,
        1e-4,
    ));
}

/// The direct pooling kernels (max and average, padding, ceil_mode, dilation, 1×1 and 7×7
/// windows), forward and gradients.
fn pooling(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::ops::pool::{Pool2d, PoolKind};
    use wgrad::Conv2d;
    let w = Conv2d::new;
    let cases = [
        (
            "3x3 s2 p1",
            [1, 3, 7, 9],
            w(3, 3).stride(2).padding(1),
            false,
        ),
        (
            "2x3 s(2,1) d2 ceil",
            [2, 5, 8, 7],
            w(2, 3).strides(2, 1).dilation(2).pads(1, 0, 0, 1),
            true,
        ),
        ("7x7 p3", [1, 2, 6, 6], w(7, 7).padding(3), false),
        ("1x1 s2", [3, 2, 5, 5], w(1, 1).stride(2), false),
        (
            "3x3 s2 p1 ceil",
            [2, 3, 9, 10],
            w(3, 3).stride(2).padding(1),
            true,
        ),
        // Output rows of 8: four outputs per invocation (pool_*_forward4).
        (
            "3x3 s2 p1 rows of 8",
            [2, 3, 11, 16],
            w(3, 3).stride(2).padding(1),
            false,
        ),
    ];
    for (label, shape, window, ceil_mode) in cases {
        for kind in [
            PoolKind::Max,
            PoolKind::Avg {
                count_include_pad: true,
            },
            PoolKind::Avg {
                count_include_pad: false,
            },
        ] {
            let p = Pool2d {
                window,
                kind,
                ceil_mode,
            };
            let name = format!(
                "{} {label}{}",
                p.name(),
                match kind {
                    PoolKind::Avg {
                        count_include_pad: false,
                    } => " exclude pad",
                    _ => "",
                }
            );
            kernel(r, gpu, &name, &[&shape], (-2.0, 2.0), (1e-6, 1e-5), |x| {
                x[0].pool2d(p)
            });
            gradient(r, gpu, &name, &[&shape], (-2.0, 2.0), |x| match kind {
                PoolKind::Max => x[0].max_pool2d_with(window, ceil_mode),
                PoolKind::Avg { count_include_pad } => {
                    x[0].avg_pool2d_with(window, ceil_mode, count_include_pad)
                }
            });
        }
    }
}

/// The depthwise convolution kernels (groups = channels; multipliers 1 and 2; stride,
/// dilation, padding, 1×1 and 7×7), forward and both gradients.
fn depthwise(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::Conv2d;
    let w = Conv2d::new;
    let cases = [
        ("3x3 s2 p1", [1, 3, 7, 9], 1, w(3, 3).stride(2).padding(1)),
        (
            "3x2 d2 pads m2",
            [2, 5, 8, 7],
            2,
            w(3, 2).dilation(2).pads(1, 0, 2, 1),
        ),
        ("7x7 p3", [1, 4, 6, 6], 1, w(7, 7).padding(3)),
        ("1x1 s2", [3, 6, 5, 5], 1, w(1, 1).stride(2)),
    ];
    for (label, xs, m, geom) in cases {
        let geom = geom.groups(xs[1]);
        let ws = [xs[1] * m, 1, geom.kh, geom.kw];
        let name = format!("depthwise_conv2d {label}");
        kernel(r, gpu, &name, &[&xs, &ws], (-1.0, 1.0), (1e-5, 1e-4), |x| {
            x[0].depthwise_conv2d(&x[1], geom)
        });
        gradient(r, gpu, &name, &[&xs, &ws], (-1.0, 1.0), |x| {
            x[0].conv2d(&x[1], geom)
        });
    }
}

/// The batch-norm training primitives: statistics and normalisation forward, the fused
/// backward (dx, dγ, dβ), on odd channel counts, H·W = 1 and (N, C).
fn batch_norm(r: &mut Vec<Row>, gpu: &Device) {
    for xs in [vec![3usize, 5, 7, 3], vec![4, 6, 1, 1], vec![13, 7]] {
        let c = xs[1];
        let name = format!("batch_norm {xs:?}");
        kernel(
            r,
            gpu,
            &name,
            &[&xs, &[c], &[c]],
            (-1.0, 2.0),
            (1e-4, 1e-4),
            |x| {
                let stats = x[0].batch_norm_stats(1e-5)?;
                x[0].batch_norm_apply(&stats, &x[1], &x[2], false)
            },
        );
        gradient(r, gpu, &name, &[&xs, &[c], &[c]], (-1.0, 2.0), |x| {
            Ok(x[0].batch_norm_train(&x[1], &x[2], 1e-5)?.0)
        });
        let relu = format!("{name} + relu");
        gradient(r, gpu, &relu, &[&xs, &[c], &[c]], (-1.0, 2.0), |x| {
            x[0].batch_norm_train(&x[1], &x[2], 1e-5)?.0.relu()
        });
    }
}

/// The implicit-GEMM convolution passes (forward, data and filter gradients) on awkward
/// geometries: stride 2 on odd sizes, dilation, uneven pads, groups, 7×7, and stride 1 with
/// 16 filters (the 8-pixel and 8-filter kernels).
fn implicit_conv(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::ops::conv_gemm::ConvPass;
    use wgrad::Conv2d;
    let w = Conv2d::new;
    let cases = [
        ("3x3 s2 p1", [1, 3, 9, 7], 5, w(3, 3).stride(2).padding(1)),
        (
            "3x2 d2 pads",
            [2, 5, 8, 7],
            6,
            w(3, 2).dilation(2).pads(1, 0, 2, 1),
        ),
        ("3x3 g2", [2, 4, 6, 6], 6, w(3, 3).padding(1).groups(2)),
        ("7x7 s2 p3", [1, 3, 11, 11], 4, w(7, 7).stride(2).padding(3)),
        // Stride 1 (the data gradient's 8-pixel rows) 13 wide; 16 filters (the filter
        // gradient's 8-filter blocks)
        ("3x3 p1 f16", [2, 5, 6, 13], 16, w(3, 3).padding(1)),
    ];
    for (label, xs, f, geom) in cases {
        let ws = [f, xs[1] / geom.groups, geom.kh, geom.kw];
        let (oh, ow) = geom.output_size("check", &xs).expect("geometry");
        let ys = [xs[0], f, oh, ow];
        let image = [xs[2], xs[3]];
        let tol = (1e-5, 1e-4);
        let name = format!("conv2d_implicit {label}");
        kernel(r, gpu, &name, &[&xs, &ws], (-1.0, 1.0), tol, |x| {
            x[0].conv2d_implicit(&x[1], geom)
        });
        let name = format!("conv2d_grad_input {label}");
        kernel(r, gpu, &name, &[&ys, &ws], (-1.0, 1.0), tol, |x| {
            x[0].conv2d_pass(&x[1], ConvPass::GradInput(image), geom)
        });
        let name = format!("conv2d_grad_weight {label}");
        kernel(r, gpu, &name, &[&xs, &ys], (-1.0, 1.0), tol, |x| {
            x[0].conv2d_pass(&x[1], ConvPass::GradWeight, geom)
        });
    }
}

/// Winograd F(2x2, 3x3) and F(4x4, 3x3) (`ops::winograd`): odd channels, edge tiles cut by
/// odd output sizes, no padding, asymmetric pads, a tile count not a multiple of 4, and (the
/// F(4x4) output's vec4 rows) an output 8 wide.
fn winograd_conv(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::{Conv2d, WinogradTile};
    let g = Conv2d::new(3, 3);
    let cases = [
        ("p1", [1, 3, 7, 5], 5, g.padding(1)),
        ("p0", [2, 5, 9, 6], 7, g),
        ("pads", [3, 7, 11, 10], 9, g.pads(1, 0, 2, 1)),
        ("w8", [1, 6, 9, 8], 4, g.padding(1)),
        // 130 filters over 16 (4) tiles: the products' edge kernels (subgroup adapters).
        ("f130", [1, 4, 7, 7], 130, g.padding(1)),
    ];
    for tile in [WinogradTile::F2x2, WinogradTile::F4x4] {
        // F(4x4)'s transforms scale values by up to 8 (Aᵀ) and 5 (Bᵀ): ~10x F(2x2)'s error.
        let tol = match tile {
            WinogradTile::F2x2 => (1e-5, 1e-4),
            WinogradTile::F4x4 => (1e-4, 1e-4),
        };
        for (label, xs, f, geom) in cases {
            let ws = [f, xs[1], 3, 3];
            let name = format!("conv2d_winograd {tile:?} {label}");
            kernel(r, gpu, &name, &[&xs, &ws], (-1.0, 1.0), tol, |x| {
                x[0].conv2d_winograd_with(&x[1], geom, tile)
            });
        }
    }
}

/// Convolution as a product of patches (im2col): patch rows walked tap by tap
/// (`im2col_rows4`), and for few channels over rows of whole vec4s the generated window
/// kernel (`ops::im2col_window`: the stem's 3x7x7 at stride 2, a stride of 3 that puts a
/// window at every column offset, 8-tap rows). Patches are copies: exact.
fn im2col_conv(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::Conv2d;
    let w = Conv2d::new;
    let cases = [
        ("3x3 s2 p1", [2, 5, 7, 9], 4, w(3, 3).stride(2).padding(1)),
        (
            "7x7 s2 p3 w16",
            [2, 3, 13, 16],
            8,
            w(7, 7).stride(2).padding(3),
        ),
        (
            "4x4 s(1,3) w12",
            [1, 1, 10, 12],
            5,
            w(4, 4).strides(1, 3).pads(1, 2, 0, 1),
        ),
        ("2x8 w8", [2, 2, 5, 8], 6, w(2, 8).pads(0, 4, 1, 3)),
        // By groups of 8 channels over rows of 14 (not whole vec4s), and 1x1 at stride 2.
        (
            "3x3 s2 p1 c16 w14",
            [2, 16, 9, 14],
            4,
            w(3, 3).stride(2).padding(1),
        ),
        ("1x1 s2 c64", [1, 64, 6, 8], 8, w(1, 1).stride(2)),
    ];
    for (label, xs, f, geom) in cases {
        let name = format!("im2col {label}");
        kernel(r, gpu, &name, &[&xs], (-1.0, 1.0), (0.0, 0.0), |x| {
            x[0].im2col(geom)
        });
        let ws = [f, xs[1], geom.kh, geom.kw];
        let name = format!("conv2d {label}");
        kernel(r, gpu, &name, &[&xs, &ws], (-1.0, 1.0), (1e-5, 1e-4), |x| {
            x[0].conv2d(&x[1], geom)
        });
    }
}

/// A convolution's data gradient by phases (`ops::conv_phase`): strides 2 and 3, odd sizes,
/// uneven pads, rows of whole vec4s and not.
fn phased_conv(r: &mut Vec<Row>, gpu: &Device) {
    use wgrad::Conv2d;
    let w = Conv2d::new;
    let cases = [
        ("3x3 s2 p1", [2, 3, 7, 9], 4, w(3, 3).stride(2).padding(1)),
        (
            "3x3 s2 p1 w8",
            [3, 5, 8, 8],
            8,
            w(3, 3).stride(2).padding(1),
        ),
        ("5x5 s2 p2", [1, 7, 11, 10], 4, w(5, 5).stride(2).padding(2)),
        (
            "3x3 s3 pads",
            [2, 3, 10, 9],
            4,
            w(3, 3).stride(3).pads(1, 0, 0, 1),
        ),
    ];
    for (label, xs, f, geom) in cases {
        let (oh, ow) = geom.output_size("check", &xs).expect("geometry");
        let gy = [f, xs[0] * oh * ow];
        let ws = [f, xs[1] * geom.kh * geom.kw];
        let name = format!("conv2d_grad_input_phased {label}");
        kernel(r, gpu, &name, &[&gy, &ws], (-1.0, 1.0), (1e-5, 1e-4), |x| {
            x[0].conv2d_grad_input_phased(&x[1], geom, &xs)
        });
    }
}

fn all_rows(gpu: &Device) -> Vec<Row> {
    let mut rows = Vec::new();
    let r = &mut rows;
    for op in UnaryOp::ALL {
        let range = unary_range(op);
        for s in [&[1usize][..], &[257], &[33, 1000]] {
            kernel(r, gpu, op.name(), &[s], range, (1e-6, 2e-6), |x| {
                x[0].unary(op)
            });
        }
    }
    for op in BinaryOp::ALL {
        let range = if op == BinaryOp::Pow {
            (0.1, 3.0)
        } else {
            (-4.0, 4.0)
        };
        for (a, b) in [
            (&[257usize][..], &[257usize][..]),
            (&[17, 255], &[255]),
            (&[5, 1, 3], &[4, 1]),
        ] {
            kernel(r, gpu, op.name(), &[a, b], range, (1e-5, 1e-5), |x| {
                x[0].binary(&x[1], op)
            });
        }
        kernel(
            r,
            gpu,
            &format!("{} scalar", op.name()),
            &[&[300]],
            range,
            (1e-5, 1e-5),
            |x| x[0].binary_scalar(op, 1.5, false),
        );
    }
    for v in MatmulVariant::KERNELS {
        if v.resolve(gpu).is_err() {
            continue; // not available on this adapter
        }
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (m, k, n) in [
                (1usize, 1usize, 1usize),
                (3, 17, 5),
                (64, 1000, 65),
                (70, 36, 132), // rows of C a multiple of 4: vec4 stores (subgroup)
                (255, 257, 3), // the subgroup edge kernels (last 1-16 columns, 128x16 tiles)
                (130, 36, 80), // the same with vec4 stores, wide tiles beside
            ] {
                let a = if ta { [k, m] } else { [m, k] };
                let b = if tb { [n, k] } else { [k, n] };
                let tol = (8e-6 * (k as f64).sqrt(), 1e-4);
                kernel(
                    r,
                    gpu,
                    &format!("matmul {} ta={ta} tb={tb}", v.name()),
                    &[&a, &b],
                    (-1.0, 1.0),
                    tol,
                    |x| x[0].matmul_with_variant(&x[1], ta, tb, v),
                );
            }
        }
    }
    // K past lavapipe's per-invocation loop cap: split into chunks whose partial products a
    // second pass sums (a silent wrong answer before the split).
    for v in MatmulVariant::KERNELS {
        if v.resolve(gpu).is_err() {
            continue;
        }
        kernel(
            r,
            gpu,
            &format!("matmul {} long K", v.name()),
            &[&[4, 300_000], &[4, 300_000]],
            (-1.0, 1.0),
            (2e-2, 1e-4),
            |x| x[0].matmul_with_variant(&x[1], false, true, v),
        );
        // Products of at most 4 rows take matmul_forward_gemv: this one keeps the variant's
        // own kernel past the cap.
        kernel(
            r,
            gpu,
            &format!("matmul {} long K, 64 rows", v.name()),
            &[&[64, 70_000], &[8, 70_000]],
            (-1.0, 1.0),
            (1e-2, 1e-4),
            |x| x[0].matmul_with_variant(&x[1], false, true, v),
        );
    }
    kernel(
        r,
        gpu,
        "matmul batched",
        &[&[2, 1, 17, 9], &[3, 9, 5]],
        (-1.0, 1.0),
        (1e-5, 1e-4),
        |x| x[0].matmul(&x[1]),
    );
    for op in ReduceOp::ALL {
        for axis in [0isize, 1, -1] {
            kernel(
                r,
                gpu,
                &format!("{} axis {axis}", op.name()),
                &[&[17, 255, 9]],
                (-2.0, 2.0),
                (1e-5, 1e-5),
                |x| x[0].reduce(op, axis, false),
            );
        }
        kernel(
            r,
            gpu,
            &format!("{} all", op.name()),
            &[&[1000, 257]],
            (0.0, 1.0),
            (1e-5, 1e-5),
            |x| x[0].reduce_all(op),
        );
    }
    kernel(
        r,
        gpu,
        "argmax axis -1",
        &[&[255, 257]],
        (-2.0, 2.0),
        (0.0, 0.0),
        |x| x[0].argmax(-1, false),
    );
    for axis in [0isize, -1] {
        kernel(
            r,
            gpu,
            &format!("softmax axis {axis}"),
            &[&[64, 1000]],
            (-20.0, 20.0),
            (1e-6, 1e-5),
            |x| x[0].softmax(axis),
        );
        kernel(
            r,
            gpu,
            &format!("log_softmax axis {axis}"),
            &[&[64, 1000]],
            (-20.0, 20.0),
            (1e-5, 1e-5),
            |x| x[0].log_softmax(axis),
        );
    }
    kernel(
        r,
        gpu,
        "transpose",
        &[&[255, 257]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| x[0].transpose(),
    );
    kernel(
        r,
        gpu,
        "permute",
        &[&[3, 17, 5, 9]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| x[0].permute(&[2, 0, 3, 1]),
    );
    kernel(
        r,
        gpu,
        "broadcast_to",
        &[&[17, 1]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| x[0].broadcast_to(&[3, 17, 33]),
    );
    kernel(
        r,
        gpu,
        "slice",
        &[&[17, 33]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| x[0].slice(1, 3, 30),
    );
    kernel(
        r,
        gpu,
        "concat",
        &[&[17, 3], &[17, 5]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| Tensor::concat(&[&x[0], &x[1]], 1),
    );
    kernel(
        r,
        gpu,
        "cross_entropy",
        &[&[257, 10]],
        (-5.0, 5.0),
        (1e-5, 1e-5),
        |x| {
            let labels: Vec<i32> = (0..257i32).map(|i| i * 7 % 10).collect();
            x[0].cross_entropy(&Tensor::from_slice(x[0].device(), &labels, &[257])?)
        },
    );
    // The training step's fused forms: the per-row loss and its mean in one kernel, and
    // the gradient (one row per invocation up to 64 classes, lse pass + elements past that).
    let labels_of = |dev: &Device, rows: usize, classes: usize| {
        let labels: Vec<i32> = (0..rows).map(|i| (i * 7 % classes) as i32).collect();
        Tensor::from_slice(dev, &labels, &[rows])
    };
    kernel(
        r,
        gpu,
        "cross_entropy mean (one kernel)",
        &[&[257, 10]],
        (-5.0, 5.0),
        (1e-5, 1e-5),
        |x| x[0].cross_entropy_reduced(&labels_of(x[0].device(), 257, 10)?, true),
    );
    for classes in [10usize, 100] {
        kernel(
            r,
            gpu,
            &format!("cross_entropy_backward {classes} classes"),
            &[&[65, classes], &[65]],
            (-5.0, 5.0),
            (1e-5, 1e-5),
            |x| x[0].cross_entropy_backward(&labels_of(x[0].device(), 65, classes)?, &x[1]),
        );
    }
    // A language model's vocabulary: rows past one invocation's loop budget, split into
    // parts merged per row; loss, gradient and the mean (a row labelled -100 is ignored).
    let vocab = 50_257usize;
    let vocab_labels = |dev: &Device| {
        let labels: Vec<i32> = (0..8)
            .map(|i| {
                if i == 5 {
                    -100
                } else {
                    (i * 7919 % vocab) as i32
                }
            })
            .collect();
        Tensor::from_slice(dev, &labels, &[8])
    };
    kernel(
        r,
        gpu,
        "cross_entropy 50257 classes",
        &[&[8, vocab]],
        (-8.0, 8.0),
        (1e-4, 1e-5),
        |x| x[0].cross_entropy(&vocab_labels(x[0].device())?),
    );
    kernel(
        r,
        gpu,
        "cross_entropy_backward 50257 classes",
        &[&[8, vocab], &[8]],
        (-8.0, 8.0),
        (1e-7, 1e-4),
        |x| x[0].cross_entropy_backward(&vocab_labels(x[0].device())?, &x[1]),
    );
    kernel(
        r,
        gpu,
        "cross_entropy mean 50257 classes",
        &[&[8, vocab]],
        (-8.0, 8.0),
        (1e-4, 1e-5),
        |x| x[0].cross_entropy_reduced(&vocab_labels(x[0].device())?, true),
    );
    // Dropout: the same PCG mask on both sides, so the kept values agree exactly.
    kernel(
        r,
        gpu,
        "dropout p=0.3",
        &[&[33, 257]],
        (-1.0, 1.0),
        (0.0, 0.0),
        |x| {
            let step = Tensor::from_slice(x[0].device(), &[7.0f32], &[1])?;
            x[0].dropout(0.3, 11, &step)
        },
    );
    // f16 storage (adapters with SHADER_F16): one f16 ulp is ~1e-3 relative.
    if gpu.adapter().is_some_and(|a| a.shader_f16) {
        let half = |t: &Tensor| t.to_dtype(DType::F16);
        let f16_tol = (1e-4, 2e-3);
        kernel(
            r,
            gpu,
            "f16 cast",
            &[&[1001]],
            (-100.0, 100.0),
            f16_tol,
            |x| half(&x[0])?.to_dtype(DType::F32),
        );
        kernel(
            r,
            gpu,
            "f16 add broadcast",
            &[&[17, 33], &[33]],
            (-4.0, 4.0),
            f16_tol,
            |x| half(&x[0])?.add(&half(&x[1])?)?.to_dtype(DType::F32),
        );
        kernel(r, gpu, "f16 tanh", &[&[257]], (-4.0, 4.0), f16_tol, |x| {
            half(&x[0])?.tanh()?.to_dtype(DType::F32)
        });
        kernel(
            r,
            gpu,
            "f16 matmul",
            &[&[33, 65], &[65, 17]],
            (-1.0, 1.0),
            (1e-3, 2e-3),
            |x| half(&x[0])?.matmul(&half(&x[1])?)?.to_dtype(DType::F32),
        );
        kernel(
            r,
            gpu,
            "f16 matmul long K",
            &[&[3, 100_000], &[100_000, 4]],
            (-1.0, 1.0),
            (0.1, 2e-3),
            |x| half(&x[0])?.matmul(&half(&x[1])?)?.to_dtype(DType::F32),
        );
    }
    // Decompositions: what is unique is compared — R of the QR (same sign convention on
    // both), eigenvalues, singular values (vectors are defined only up to sign).
    let lin = (1e-4, 1e-4);
    kernel(r, gpu, "qr", &[&[37, 19]], (-1.0, 1.0), lin, |x| {
        Ok(wgrad::linalg::qr(&x[0])?.1)
    });
    kernel(r, gpu, "eig", &[&[33, 33]], (-1.0, 1.0), lin, |x| {
        let e = wgrad::linalg::eig(&x[0])?;
        Tensor::concat(&[&e.re, &e.im], 0)
    });
    kernel(r, gpu, "eigh", &[&[33, 33]], (-1.0, 1.0), lin, |x| {
        let sym = x[0].add(&x[0].transpose()?)?;
        Ok(wgrad::linalg::eigh(&sym)?.0)
    });
    kernel(r, gpu, "svd", &[&[37, 19]], (-1.0, 1.0), lin, |x| {
        Ok(wgrad::linalg::svd(&x[0])?.1)
    });
    for op in UnaryOp::ALL.into_iter().filter(|&u| u != UnaryOp::GeluGrad) {
        let range = match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Log1p => (0.5, 3.0),
            UnaryOp::Asin | UnaryOp::Acos | UnaryOp::Atanh => (-0.9, 0.9),
            UnaryOp::Acosh => (1.1, 3.0),
            // away from tan's poles, where finite differences lose their accuracy
            UnaryOp::Tan => (-1.2, 1.2),
            _ => (-2.0, 2.0),
        };
        gradient(r, gpu, op.name(), &[&[3, 5]], range, |x| x[0].unary(op));
    }
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ] {
        gradient(r, gpu, op.name(), &[&[4, 3], &[3]], (0.5, 2.0), |x| {
            x[0].binary(&x[1], op)
        });
    }
    gradient(r, gpu, "matmul", &[&[4, 3], &[3, 5]], (-1.0, 1.0), |x| {
        x[0].matmul(&x[1])
    });
    // Two ReLU layers: on a GPU the products store their bias + ReLU, and the first
    // layer's gradient its ReLU mask (matmul epilogues).
    gradient(
        r,
        gpu,
        "two relu layers (fused epilogues)",
        &[&[33, 17], &[17, 10], &[10], &[10, 9], &[9]],
        (-1.0, 1.0),
        |x| {
            let h = x[0].matmul(&x[1])?.add(&x[2])?.relu()?;
            h.matmul(&x[3])?.add(&x[4])?.relu()
        },
    );
    for op in ReduceOp::ALL {
        gradient(r, gpu, op.name(), &[&[3, 4, 5]], (-2.0, 2.0), |x| {
            x[0].reduce(op, 1, false)
        });
    }
    gradient(r, gpu, "softmax", &[&[3, 5]], (-3.0, 3.0), |x| {
        x[0].softmax(-1)
    });
    pooling(r, gpu);
    depthwise(r, gpu);
    implicit_conv(r, gpu);
    winograd_conv(r, gpu);
    im2col_conv(r, gpu);
    phased_conv(r, gpu);
    batch_norm(r, gpu);
    gradient(r, gpu, "log_softmax", &[&[3, 5]], (-3.0, 3.0), |x| {
        x[0].log_softmax(-1)
    });
    gradient(r, gpu, "permute", &[&[2, 3, 4]], (-1.0, 1.0), |x| {
        x[0].permute(&[2, 0, 1])
    });
    gradient(r, gpu, "broadcast_to", &[&[3, 1]], (-1.0, 1.0), |x| {
        x[0].broadcast_to(&[2, 3, 4])
    });
    gradient(
        r,
        gpu,
        "slice+concat",
        &[&[4, 5], &[4, 2]],
        (-1.0, 1.0),
        |x| Var::concat(&[&x[0].slice(1, 1, 3)?, &x[1]], 1),
    );
    rows
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let gpu = Device::gpu()?;
    let adapter = gpu.name();
    if !json {
        println!("adapter: {adapter}\n");
        println!(
            "{:<40} {:<28} {:>11} {:>11}  result",
            "op", "shapes", "max abs", "max rel"
        );
    }
    let rows = all_rows(&gpu);
    let failed = rows.iter().filter(|r| !r.pass).count();
    for r in &rows {
        if json {
            let num = |v: f64| {
                if v.is_finite() {
                    format!("{v:e}")
                } else {
                    "null".into()
                }
            };
            println!(
                "{{\"op\":\"{}\",\"shapes\":\"{}\",\"max_abs\":{},\"max_rel\":{},\"pass\":{},\"error\":{}}}",
                r.op,
                r.shapes,
                num(r.max_abs),
                num(r.max_rel),
                r.pass,
                r.error.as_ref().map_or("null".into(), |e| format!("{e:?}"))
            );
        } else {
            let verdict = if r.pass {
                "pass".to_string()
            } else {
                format!("FAIL {}", r.error.clone().unwrap_or_default())
            };
            println!(
                "{:<40} {:<28} {:>11.3e} {:>11.3e}  {verdict}",
                r.op, r.shapes, r.max_abs, r.max_rel
            );
        }
    }
    if !json {
        println!(
            "\n{} checks, {} passed, {} failed on {adapter}",
            rows.len(),
            rows.len() - failed,
            failed
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Inputs on which a unary op is real-valued and well conditioned.
fn unary_range(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Log1p => (0.01, 10.0),
        UnaryOp::Asin | UnaryOp::Acos | UnaryOp::Atanh => (-0.999, 0.999),
        UnaryOp::Acosh => (1.0, 10.0),
        _ => (-6.0, 6.0),
    }
}
