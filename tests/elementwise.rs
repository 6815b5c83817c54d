//! Element-wise kernels against the CPU reference: every unary and binary op,
//! broadcasting, scalar operands, special values, and error cases.

mod common;

use common::{
    assert_close, assert_tensor_close, check_finite_differences, gpu, pair, uniform, Feed, SIZES,
};
use wgrad::{BinaryOp, Device, Error, Graph, Tensor, UnaryOp};

/// Input range on which each unary op is defined and well conditioned.
fn domain(op: UnaryOp) -> (f32, f32) {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => (0.01, 50.0),
        UnaryOp::Log1p => (-0.99, 50.0),
        UnaryOp::Asin | UnaryOp::Acos | UnaryOp::Atanh => (-0.999, 0.999),
        UnaryOp::Acosh => (1.0, 50.0),
        UnaryOp::Exp => (-20.0, 20.0),
        _ => (-8.0, 8.0),
    }
}

#[test]
fn unary_ops_match_reference() {
    let Some(dev) = gpu() else { return };
    for (k, op) in UnaryOp::ALL.into_iter().enumerate() {
        for &n in &SIZES {
            for shape in [vec![n], vec![3, n]] {
                let numel: usize = shape.iter().product();
                let (lo, hi) = domain(op);
                let data = uniform(k as u64 * 1000 + n as u64, numel, lo, hi);
                let (g, c) = pair(&dev, &data, &shape);
                let label = format!("{} {shape:?}", op.name());
                assert_tensor_close(
                    &label,
                    &g.unary(op).unwrap(),
                    &c.unary(op).unwrap(),
                    1e-6,
                    2e-6,
                );
            }
        }
    }
}

#[test]
fn binary_ops_match_reference_with_broadcasting() {
    let Some(dev) = gpu() else { return };
    let shapes: [(&[usize], &[usize]); 8] = [
        (&[1], &[1]),
        (&[257], &[257]),
        (&[17, 255], &[17, 255]),
        (&[5, 3], &[3]),
        (&[5, 1], &[1, 4]),
        (&[2, 1, 3], &[4, 1]),
        (&[], &[3, 3]),
        (&[1000, 3], &[1000, 1]),
    ];
    for (k, op) in BinaryOp::ALL.into_iter().enumerate() {
        for (sa, sb) in shapes {
            let na: usize = sa.iter().product();
            let nb: usize = sb.iter().product();
            let (lo, hi) = if op == BinaryOp::Pow {
                (0.1, 3.0)
            } else {
                (-4.0, 4.0)
            };
            let mut a = uniform(k as u64 * 7 + 1, na, lo, hi);
            let b = uniform(k as u64 * 7 + 2, nb, lo, hi);
            if matches!(
                op,
                BinaryOp::Eq | BinaryOp::Le | BinaryOp::Ge | BinaryOp::Ne
            ) {
                // Make some elements equal so the comparison masks are not constant.
                for (i, v) in a.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                    *v = b[i % nb];
                }
            }
            let (ga, ca) = pair(&dev, &a, sa);
            let (gb, cb) = pair(&dev, &b, sb);
            let label = format!("{} {sa:?} {sb:?}", op.name());
            assert_tensor_close(
                &label,
                &ga.binary(&gb, op).unwrap(),
                &ca.binary(&cb, op).unwrap(),
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn scalar_operands_on_either_side() {
    let Some(dev) = gpu() else { return };
    let data = uniform(5, 300, 0.5, 4.0);
    let (g, c) = pair(&dev, &data, &[3, 100]);
    for op in BinaryOp::ALL {
        for lhs in [false, true] {
            let label = format!("{} scalar lhs={lhs}", op.name());
            let got = g.binary_scalar(op, 1.75, lhs).unwrap();
            let want = c.binary_scalar(op, 1.75, lhs).unwrap();
            assert_tensor_close(&label, &got, &want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn special_values_follow_ieee() {
    let Some(dev) = gpu() else { return };
    let x = [
        0.0f32,
        -0.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        -1e30,
        100.0,
        -100.0,
    ];
    let (g, c) = pair(&dev, &x, &[x.len()]);
    for op in UnaryOp::ALL {
        let got = g.unary(op).unwrap().to_vec::<f32>().unwrap();
        let want = c.unary(op).unwrap().to_vec::<f32>().unwrap();
        // Exact special values; finite results within f32 rounding of the reference.
        assert_close(&format!("{} special", op.name()), &got, &want, 1e-6, 1e-5);
    }
    let (ga, ca) = pair(&dev, &[f32::NAN, 1.0, -2.0, 0.0, -8.0], &[5]);
    let (gb, cb) = pair(&dev, &[1.0f32, f32::NAN, 3.0, -1.0, 1.0 / 3.0], &[5]);
    for op in [
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
        BinaryOp::Div,
    ] {
        let got = ga.binary(&gb, op).unwrap().to_vec::<f32>().unwrap();
        let want = ca.binary(&cb, op).unwrap().to_vec::<f32>().unwrap();
        assert_close(&format!("{} special", op.name()), &got, &want, 1e-6, 1e-5);
    }
}

#[test]
fn classic_walkthrough_values() {
    let Some(dev) = gpu() else { return };
    // b + Wx from the walkthrough: [17, 39] + [10, 100] -> [27, 139], ReLU keeps it.
    let wx = Tensor::from_slice(&dev, &[17.0f32, 39.0], &[2]).unwrap();
    let b = Tensor::from_slice(&dev, &[10.0f32, 100.0], &[2]).unwrap();
    let z = wx.add(&b).unwrap().relu().unwrap();
    assert_eq!(z.to_vec::<f32>().unwrap(), vec![27.0, 139.0]);
}

#[test]
fn large_grid_is_split_over_dimensions() {
    let Some(dev) = gpu() else { return };
    // 65535 * 256 + 1000 elements needs more than 65535 workgroups in x.
    let n = 65535 * 256 + 1000;
    let data: Vec<f32> = (0..n).map(|i| (i % 1013) as f32).collect();
    let t = Tensor::from_slice(&dev, &data, &[n]).unwrap();
    let got = t.add_scalar(1.0).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = data.iter().map(|v| v + 1.0).collect();
    assert_close("add_scalar over a split grid", &got, &want, 0.0, 0.0);
}

#[test]
fn bad_input_is_a_typed_error() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let a = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let b = Tensor::zeros(&dev, &[4]).unwrap();
        let e = a.add(&b).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "add", .. }), "{e}");
        assert!(
            e.to_string().contains("[2, 3]") && e.to_string().contains("[4]"),
            "{e}"
        );
        let labels = Tensor::from_slice(&dev, &[1i32, 2], &[2]).unwrap();
        assert!(matches!(
            labels.relu().unwrap_err(),
            Error::DType { op: "relu", .. }
        ));
        assert!(matches!(
            Tensor::from_slice(&dev, &[1.0f32; 5], &[2, 3]).unwrap_err(),
            Error::DataLength { .. }
        ));
    }
    if let Some(g) = gpu() {
        let a = Tensor::zeros(&g, &[2]).unwrap();
        let b = Tensor::zeros(&Device::cpu(), &[2]).unwrap();
        assert!(matches!(
            a.mul(&b).unwrap_err(),
            Error::DeviceMismatch { .. }
        ));
    }
}

#[test]
fn empty_tensors_pass_through() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let a = Tensor::zeros(&dev, &[0, 3]).unwrap();
        assert_eq!(a.exp().unwrap().shape(), &[0, 3]);
        assert_eq!(
            a.add(&Tensor::zeros(&dev, &[3]).unwrap()).unwrap().shape(),
            &[0, 3]
        );
        assert!(a.exp().unwrap().to_vec::<f32>().unwrap().is_empty());
    }
}

/// Broadcast shape pairs covering the merged fast path (rank <= 3 after folding dims:
/// row bias, per-channel bias, column bias, scalar-like operands, runs of 8/4/2/1 along
/// the innermost dim) and the generic path (patterns that stay rank > 3), ranks 1..6,
/// size-1 dims everywhere, 255/257 sizes.
const BROADCAST_PAIRS: [(&[usize], &[usize]); 22] = [
    (&[1024, 64], &[64]),                       // row bias, run 8
    (&[4, 16, 8, 8], &[1, 16, 1, 1]),           // per-channel bias -> (4, 16, 64)
    (&[3, 5, 7, 7], &[5, 1, 1]),                // per-channel, odd inner dim 49
    (&[33, 20], &[33, 1]),                      // column bias, run 4
    (&[257, 6], &[6]),                          // run 2
    (&[3, 255], &[255]),                        // odd inner, run 1
    (&[257], &[1]),                             // scalar-like
    (&[2, 3, 4], &[1]),                         // scalar-like on rank 3 -> rank 1
    (&[1], &[1, 1, 1, 1, 1, 1]),                // all size 1, rank 6
    (&[5, 1, 4], &[1, 3, 1]),                   // outer product-like
    (&[255, 1], &[1, 257]),                     // outer product, 255 x 257
    (&[2, 1, 3, 1, 2], &[1, 3, 1, 2, 1]),       // alternating: stays rank 5 (generic path)
    (&[2, 3, 1, 4, 5, 2], &[3, 1, 5, 1]),       // rank 6
    (&[1, 2, 1, 3, 1, 4], &[2, 1, 3, 1, 4, 1]), // rank 6, alternating 1s
    (&[6, 1, 1, 8], &[1, 7, 1, 8]),
    (&[2, 2, 2, 2], &[2, 1, 2, 1]), // generic rank 4 after merging
    (&[16, 1], &[16, 16]),
    (&[1, 1, 9], &[4, 3, 1]),
    (&[8, 8, 8], &[8, 1, 8]), // middle dim stretched
    (&[7, 9], &[7, 9]),       // same shape (same-shape entry, for completeness)
    (&[4, 1, 16], &[4, 16]),  // trailing alignment with a size-1 middle dim
    (&[], &[5, 4]),           // a 0-d operand
];

/// Bit-exact comparison: the broadcast kernels call the same `binary_op` as the
/// same-shape kernel, and + · max of two f32s computed in f64 round to exactly the f32
/// result, so the GPU must match the CPU reference bit for bit.
fn assert_bits_equal(label: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    let g = got.to_vec::<f32>().expect("read back GPU result");
    let w = want.to_vec::<f32>().expect("read CPU reference");
    assert_close(label, &g, &w, 0.0, 0.0);
    let first_diff = g
        .iter()
        .zip(&w)
        .position(|(x, y)| x.to_bits() != y.to_bits());
    assert_eq!(first_diff, None, "{label}: bits differ");
}

#[test]
fn broadcast_fast_paths_are_bit_exact_in_both_operand_orders() {
    let Some(dev) = gpu() else { return };
    for (k, (sa, sb)) in BROADCAST_PAIRS.into_iter().enumerate() {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let a = uniform(900 + k as u64, na, -4.0, 4.0);
        let b = uniform(950 + k as u64, nb, -4.0, 4.0);
        let (ga, ca) = pair(&dev, &a, sa);
        let (gb, cb) = pair(&dev, &b, sb);
        for op in [
            BinaryOp::Add,
            BinaryOp::Mul,
            BinaryOp::Maximum,
            BinaryOp::Sub,
        ] {
            // Both orders: the stretched operand on the left and on the right.
            let label = format!("{} {sa:?} {sb:?}", op.name());
            assert_bits_equal(
                &label,
                &ga.binary(&gb, op).unwrap(),
                &ca.binary(&cb, op).unwrap(),
            );
            let label = format!("{} {sb:?} {sa:?}", op.name());
            assert_bits_equal(
                &label,
                &gb.binary(&ga, op).unwrap(),
                &cb.binary(&ca, op).unwrap(),
            );
        }
    }
}

#[test]
fn broadcast_matches_the_same_shape_kernel_on_materialised_operands() {
    // An independent GPU route: broadcast_to (a strided copy) then the same-shape entry.
    let Some(dev) = gpu() else { return };
    for (k, (sa, sb)) in BROADCAST_PAIRS.into_iter().enumerate() {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let ga = Tensor::from_slice(&dev, &uniform(700 + k as u64, na, -4.0, 4.0), sa).unwrap();
        let gb = Tensor::from_slice(&dev, &uniform(750 + k as u64, nb, -4.0, 4.0), sb).unwrap();
        let out = ga.add(&gb).unwrap();
        let full = out.shape().to_vec();
        let want = ga
            .broadcast_to(&full)
            .unwrap()
            .add(&gb.broadcast_to(&full).unwrap())
            .unwrap();
        assert_bits_equal(&format!("add {sa:?} {sb:?}"), &out, &want);
    }
}

/// Erf, Log1p, Tanh: relative accuracy for tiny arguments (where `1 - erfc`, `ln(1 + x)`
/// or `(e^2x - 1)/(e^2x + 1)` would cancel; lavapipe's builtin tanh was 1e-3 off at 6e-5)
/// and across tanh's switch from series to exponential at 0.55, against the f64 reference; Floor, Ceil and Round (halves to even) exact
/// on halves and integers.
#[test]
fn erf_log1p_floor_ceil_small_arguments_and_exact_values() {
    let Some(dev) = gpu() else { return };
    let mut tiny: Vec<f32> = (0..40).map(|k| 10f32.powf(-9.0 + k as f32 * 0.2)).collect();
    tiny.extend((0..60).map(|k| 0.3 + k as f32 * 0.01));
    tiny.extend(tiny.clone().iter().map(|x| -x));
    let (g, c) = pair(&dev, &tiny, &[tiny.len()]);
    for op in [UnaryOp::Erf, UnaryOp::Log1p, UnaryOp::Tanh] {
        let label = format!("{} tiny arguments", op.name());
        assert_tensor_close(
            &label,
            &g.unary(op).unwrap(),
            &c.unary(op).unwrap(),
            0.0,
            1e-6,
        );
    }
    let mut steps: Vec<f32> = (-12..=12).map(|k| k as f32 * 0.5).collect();
    steps.extend([
        8388609.0,
        -8388609.5,
        16777216.0,
        0.49999997,
        -0.49999997,
        1e30,
    ]);
    let (g, c) = pair(&dev, &steps, &[steps.len()]);
    for op in [UnaryOp::Floor, UnaryOp::Ceil, UnaryOp::Round] {
        let (got, want) = (g.unary(op).unwrap(), c.unary(op).unwrap());
        assert_close(
            op.name(),
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            0.0,
            0.0,
        );
    }
}

/// What `keep_where` / `keep_where_not` / `Var::select` must give, from the definition.
fn pick(c: f32, a: f32, b: f32) -> f32 {
    if c != 0.0 || c.is_nan() {
        a
    } else {
        b
    }
}

/// keep_where / keep_where_not with masks of 0, 1, -0, 2 and NaN over values holding ±inf
/// and NaN, broadcast both ways and on awkward sizes: GPU bit-identical to the CPU
/// reference, and their sum (the graph's `select`) the definition's pick, exactly.
#[test]
fn keep_where_selects_exactly_past_inf_and_nan() {
    let Some(dev) = gpu() else { return };
    let specials = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 1.5];
    let masks = [0.0f32, 1.0, -0.0, 2.0, f32::NAN, 0.0, 1.0];
    for &n in &SIZES {
        for shape_c in [vec![n], vec![1], vec![3, n]] {
            let shape_a = vec![3, n];
            let na = 3 * n;
            let mut a = uniform(n as u64, na, -3.0, 3.0);
            for (i, v) in a.iter_mut().enumerate().filter(|(i, _)| i % 4 == 1) {
                *v = specials[i % specials.len()];
            }
            let b: Vec<f32> = a.iter().rev().copied().collect();
            let nc: usize = shape_c.iter().product();
            let c: Vec<f32> = (0..nc).map(|i| masks[i % masks.len()]).collect();
            let (ga, ca) = pair(&dev, &a, &shape_a);
            let (gb, _) = pair(&dev, &b, &shape_a);
            let (gc, cc) = pair(&dev, &c, &shape_c);
            for op in [BinaryOp::KeepWhere, BinaryOp::KeepWhereNot] {
                for (x, y, cx, cy) in [(&ga, &gc, &ca, &cc), (&gc, &ga, &cc, &ca)] {
                    let label = format!("{} {:?} {:?}", op.name(), x.shape(), y.shape());
                    let got = x.binary(y, op).unwrap().to_vec::<f32>().unwrap();
                    let want = cx.binary(cy, op).unwrap().to_vec::<f32>().unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{label}");
                }
            }
            let sel = ga
                .keep_where(&gc)
                .and_then(|k| k.add(&gb.keep_where_not(&gc)?))
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let want: Vec<f32> = (0..na)
                .map(|i| pick(c[if nc == 1 { 0 } else { i % nc }], a[i], b[i]))
                .collect();
            assert_close(&format!("select {shape_c:?}"), &sel, &want, 0.0, 0.0);
        }
    }
}

/// `select(c, a, b)` in a graph: exact on the GPU and the CPU reference with a -inf side
/// (an attention mask into softmax), and its gradients against finite differences: g to
/// the side taken, exactly 0 (never 0·inf = NaN) to the other, none to the mask.
#[test]
fn select_gradients_match_finite_differences_past_a_minus_inf_side() {
    let g = Graph::new();
    let (a, b) = (g.input("a", &[3, 5]), g.input("b", &[5]));
    let c = g.input("c", &[3, 5]);
    let ninf = g.full(f32::NEG_INFINITY, &[3, 5]);
    // masked scores: a where c, else -inf; plus select(c, a², b) broadcast
    let masked = c.select(&a, &ninf).unwrap().softmax(-1).unwrap();
    let mixed = c.select(&a.square().unwrap(), &b).unwrap();
    let r = Tensor::from_slice(&Device::cpu(), &uniform(3, 15, 0.5, 1.5), &[3, 5]).unwrap();
    let r = g.constant(&r).unwrap();
    let loss = masked
        .add(&mixed)
        .and_then(|y| y.mul(&r))
        .and_then(|y| y.sum())
        .unwrap();
    let grads = wgrad::autodiff::grad(&loss, &[&a, &b]).unwrap();
    let mask = [1., 0., 1., 1., 0., 0., 0., 1., 0., 0., 1., 1., 1., 1., 0.];
    let feeds = vec![
        (
            "a".to_string(),
            Feed::real(&uniform(1, 15, -2.0, 2.0), &[3, 5]),
        ),
        ("b".to_string(), Feed::real(&uniform(2, 5, -2.0, 2.0), &[5])),
        ("c".to_string(), Feed::Fixed(mask.to_vec(), vec![3, 5])),
    ];
    let d = check_finite_differences("select", &g, &loss, &grads, &feeds);
    for (i, &m) in mask.iter().enumerate() {
        if m == 0.0 {
            assert_eq!(d[0][i], 0.0, "d/da[{i}] where not selected");
        }
    }
    let Some(dev) = gpu() else { return };
    let outs = [&loss, &grads[0], &grads[1]];
    let tensors: Vec<(String, Tensor)> = feeds
        .iter()
        .map(|(n, f)| {
            let (Feed::Real(v, s) | Feed::Fixed(v, s)) = f else {
                unreachable!()
            };
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            (
                n.clone(),
                Tensor::from_slice(&Device::cpu(), &v, s).unwrap(),
            )
        })
        .collect();
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (on_gpu, _) = common::run_compiled(&dev, &g, &outs, &named);
    let (on_cpu, _) = common::run_compiled(&Device::cpu(), &g, &outs, &named);
    for k in 0..3 {
        assert_close(
            &format!("select output {k} GPU vs CPU"),
            &on_gpu[k],
            &on_cpu[k],
            1e-5,
            1e-5,
        );
    }
}

/// The trigonometric and hyperbolic kernels keep their relative accuracy where builtins
/// lose it (lavapipe's sin/cos are wrong for large arguments; sinh, asinh, atanh computed
/// from exp/log lose everything near 0): huge arguments (exact argument reduction up to
/// f32's largest), arguments next to multiples of π/2, tiny ones, the edges of each
/// domain, and infinities and NaN.
#[test]
fn trig_and_hyperbolic_accurate_at_huge_tiny_and_edge_arguments() {
    let Some(dev) = gpu() else { return };
    let huge = [
        1e3f32,
        -7.5e4,
        1e5,
        3.1415927e5,
        1e10,
        -1e20,
        2.5e30,
        3.4028235e38,
        -1.7e38,
        // f32 values next to multiples of π/2 (sin or cos of them is tiny)
        std::f32::consts::FRAC_PI_2,
        std::f32::consts::PI,
        3.0 * std::f32::consts::FRAC_PI_2,
        std::f32::consts::TAU,
        102_943.71,
        1_647_099.4,
        1e6 * std::f32::consts::FRAC_PI_2,
    ];
    let tiny = [1e-30f32, -3e-20, 1e-8, 6e-5, -3e-3, 0.1, 0.0, -0.0];
    let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    // sinh and cosh of large arguments are e^|x|/2, as accurate as the adapter's exp (whose
    // argument rounding gives it ~1e-6 relative error at |x| = 20 on lavapipe).
    let large = [20.0f32, -88.0, 89.4, 90.0];
    let cases: &[(UnaryOp, &[&[f32]], f32)] = &[
        (UnaryOp::Sin, &[&huge, &tiny, &special], 4e-7),
        (UnaryOp::Cos, &[&huge, &tiny, &special], 4e-7),
        (UnaryOp::Tan, &[&huge, &tiny, &special], 4e-7),
        (
            UnaryOp::Asin,
            &[
                &tiny,
                &[1.0, -1.0, 0.9999999, 0.5, -0.5000001, 1.0000001, 2.0],
            ],
            4e-7,
        ),
        (
            UnaryOp::Acos,
            &[&tiny, &[1.0, -1.0, 0.9999999, -0.9999999, 0.5, 1.0000001]],
            4e-7,
        ),
        (UnaryOp::Atan, &[&tiny, &huge, &special], 4e-7),
        (
            UnaryOp::Sinh,
            &[&tiny, &[0.49, 0.51, 3.0, -5.0], &special],
            4e-7,
        ),
        (
            UnaryOp::Cosh,
            &[&tiny, &[0.49, 0.51, 3.0, -5.0], &special],
            4e-7,
        ),
        (UnaryOp::Sinh, &[&large], 3e-6),
        (UnaryOp::Cosh, &[&large], 3e-6),
        (UnaryOp::Asinh, &[&tiny, &huge, &special], 4e-7),
        (
            UnaryOp::Acosh,
            &[&[1.0, 1.0000001, 1.5, 4095.0, 4097.0, 3e38, 0.5], &special],
            4e-7,
        ),
        (
            UnaryOp::Atanh,
            &[
                &tiny,
                &[0.9999999, -0.9999999, 1.0, -1.0, 0.5, 1.5],
                &special,
            ],
            4e-7,
        ),
    ];
    for &(op, groups, rtol) in cases {
        let data: Vec<f32> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        let (g, c) = pair(&dev, &data, &[data.len()]);
        // No absolute slack: a tiny result must be right relative to itself (4e-7 is
        // about 3 ulp).
        assert_tensor_close(
            &format!("{} at {data:?}", op.name()),
            &g.unary(op).unwrap(),
            &c.unary(op).unwrap(),
            0.0,
            rtol,
        );
    }
}
