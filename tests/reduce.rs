//! Reductions against the CPU reference: every op on every axis of 1-D to 4-D shapes,
//! keepdim both ways, multi-pass lengths, the accuracy of a million-term sum, argmax ties,
//! special values and error cases.

mod common;

use common::{assert_close, assert_tensor_close, best_time, gpu, pair, uniform, SIZES};
use wgrad::ops::reduce::ReduceOp;
use wgrad::{Device, Error, Tensor};

/// Shapes whose every axis is reduced: 1-D SIZES, then 2-D to 4-D with batch 1 and > 1.
fn shapes() -> Vec<Vec<usize>> {
    let mut v: Vec<Vec<usize>> = SIZES.iter().map(|&n| vec![n]).collect();
    for &n in &SIZES {
        v.push(vec![3, n]);
        v.push(vec![1, n]);
    }
    v.extend([
        vec![255, 5],
        vec![257, 2],
        vec![2, 17, 5],
        vec![1, 64, 3],
        vec![4, 3, 257],
        vec![2, 3, 4, 5],
        vec![1, 1, 1000, 1],
        vec![3, 1, 17, 2],
        // Past one pass's size (src/ops/reduce.rs ONE_PASS): the vec4 row and column kernels.
        vec![300, 8],
        vec![64, 1024],
    ]);
    v
}

/// `keepdim = false` removes the axis, `true` keeps it with length 1.
fn expected_shape(shape: &[usize], axis: usize, keepdim: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if keepdim {
        s[axis] = 1;
    } else {
        s.remove(axis);
    }
    s
}

#[test]
fn reductions_match_reference_on_every_axis() {
    let Some(dev) = gpu() else { return };
    for (k, shape) in shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = uniform(k as u64 + 10, n, -1.0, 1.0);
        let (g, c) = pair(&dev, &data, &shape);
        let rank = shape.len() as isize;
        for axis in 0..rank {
            for keepdim in [false, true] {
                // Alternate the positive and the negative spelling of the axis.
                let a = if keepdim { axis - rank } else { axis };
                for op in ReduceOp::ALL {
                    let label = format!("{} {shape:?} axis {a} keepdim {keepdim}", op.name());
                    let got = g.reduce(op, a, keepdim).unwrap();
                    let want = c.reduce(op, a, keepdim).unwrap();
                    assert_eq!(
                        got.shape(),
                        expected_shape(&shape, axis as usize, keepdim),
                        "{label}"
                    );
                    let tol = if matches!(op, ReduceOp::Max | ReduceOp::Min) {
                        0.0
                    } else {
                        1e-5
                    };
                    assert_tensor_close(&label, &got, &want, tol, tol);
                }
            }
        }
    }
}

#[test]
fn long_axes_take_several_passes() {
    let Some(dev) = gpu() else { return };
    // Few outputs and long axes: the axis is chunked and reduced in 2-3 passes, with
    // inner = 1 and inner > 1 (strided walks).
    let cases: [(&[usize], isize); 6] = [
        (&[100_003], 0),
        (&[3, 70_001], 1),
        (&[70_001, 3], 0),
        (&[2, 20_000, 3], 1),
        (&[5000, 7], 0),
        (&[4099], -1),
    ];
    for (k, (shape, axis)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = uniform(k as u64 + 500, n, -2.0, 3.0);
        let (g, c) = pair(&dev, &data, shape);
        for op in ReduceOp::ALL {
            let label = format!("{} {shape:?} axis {axis}", op.name());
            let tol = if matches!(op, ReduceOp::Max | ReduceOp::Min) {
                0.0
            } else {
                1e-5
            };
            assert_tensor_close(
                &label,
                &g.reduce(op, axis, false).unwrap(),
                &c.reduce(op, axis, false).unwrap(),
                tol,
                tol,
            );
        }
        let label = format!("argmax {shape:?} axis {axis}");
        let got = g.argmax(axis, false).unwrap().to_vec::<i32>().unwrap();
        let want = c.argmax(axis, false).unwrap().to_vec::<i32>().unwrap();
        assert_eq!(got, want, "{label}");
    }
}

/// Sequential f32 sum, the way a naive kernel would accumulate.
fn naive_f32_sum(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v;
    }
    s
}

/// The spacing of f32 values at `v`.
fn ulp(v: f32) -> f32 {
    let a = v.abs();
    f32::from_bits(a.to_bits() + 1) - a
}

#[test]
fn million_term_sum_stays_within_a_few_ulps() {
    let n = 1_000_000;
    let mut datasets = vec![("uniform [0, 1)", uniform(1, n, 0.0, 1.0))];
    // 1 + small positive noise: a sequential f32 sum drops most of the noise once the
    // running total is large.
    datasets.push((
        "1 + noise",
        uniform(2, n, 0.0, 0.01).iter().map(|v| 1.0 + v).collect(),
    ));
    for (name, data) in datasets {
        let exact: f64 = data.iter().map(|&v| v as f64).sum();
        // 4 ulps of the f32 nearest the exact sum: tighter than "a few ulps · log n", and
        // a naive sequential f32 sum misses it by far on both data sets.
        let tol = 4.0 * ulp(exact as f32);
        let naive_err = (naive_f32_sum(&data) as f64 - exact).abs() as f32;
        assert!(
            naive_err > tol,
            "{name}: naive f32 error {naive_err} within the tolerance {tol}"
        );
        let mut devices = vec![Device::cpu()];
        devices.extend(gpu());
        for dev in devices {
            let t = Tensor::from_slice(&dev, &data, &[n]).unwrap();
            let got = t.sum().unwrap();
            assert_eq!(got.shape(), &[] as &[usize]);
            let err = (got.item().unwrap() as f64 - exact).abs() as f32;
            eprintln!(
                "{name} on {}: error {err:e} (tolerance {tol:e}, naive f32 {naive_err:e})",
                dev.name()
            );
            assert!(
                err <= tol,
                "{name} on {}: sum error {err} > {tol}",
                dev.name()
            );
            let mean = t.mean().unwrap().item().unwrap() as f64;
            assert!(
                (mean - exact / n as f64).abs() <= (tol / n as f32) as f64,
                "{name}: mean {mean}"
            );
            // The same data as rows of a matrix, summed along each axis.
            let m = t.reshape(&[1000, 1000]).unwrap();
            let rows = m.sum_axis(1, false).unwrap().to_vec::<f32>().unwrap();
            let cols = m.sum_axis(0, true).unwrap().to_vec::<f32>().unwrap();
            for (i, (r, c)) in rows.iter().zip(&cols).enumerate() {
                let er: f64 = data[i * 1000..(i + 1) * 1000]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                let ec: f64 = (0..1000).map(|k| data[k * 1000 + i] as f64).sum();
                assert!(
                    (*r as f64 - er).abs() <= er.abs() * 4e-7,
                    "{name}: row {i}: {r} vs {er}"
                );
                assert!(
                    (*c as f64 - ec).abs() <= ec.abs() * 4e-7,
                    "{name}: column {i}: {c} vs {ec}"
                );
            }
        }
    }
}

#[test]
fn row_sums_are_compensated() {
    let Some(dev) = gpu() else { return };
    // 4096 rows of 512 terms near 1: within a ulp only with compensated sums.
    let (rows, cols) = (4096, 512);
    let data: Vec<f32> = uniform(4, rows * cols, 0.0, 0.01)
        .iter()
        .map(|v| 1.0 + v)
        .collect();
    let got = Tensor::from_slice(&dev, &data, &[rows, cols])
        .unwrap()
        .sum_axis(1, false)
        .unwrap();
    let got = got.to_vec::<f32>().unwrap();
    let (mut worst, mut worst_naive) = (0.0f64, 0.0f64);
    for (r, g) in got.iter().enumerate() {
        let row = &data[r * cols..(r + 1) * cols];
        let exact: f64 = row.iter().map(|&v| v as f64).sum();
        let ulp = ulp(exact as f32) as f64;
        worst = worst.max((*g as f64 - exact).abs() / ulp);
        worst_naive = worst_naive.max((naive_f32_sum(row) as f64 - exact).abs() / ulp);
    }
    eprintln!("row sums: worst error {worst:.2} ulp (naive f32 {worst_naive:.2} ulp)");
    assert!(worst <= 1.0, "row sums off by {worst} ulp");
    assert!(
        worst_naive > 1.0,
        "a naive sum would pass too ({worst_naive} ulp)"
    );
}

#[test]
fn whole_tensor_reductions_give_rank_zero() {
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu());
    for dev in devices {
        let mut data = uniform(9, 300_000, -5.0, 5.0);
        data[123_457] = 7.5;
        data[250_001] = 7.5; // a tie: argmax keeps the first
        data[77] = -9.0;
        let t = Tensor::from_slice(&dev, &data, &[300, 1000]).unwrap();
        let exact: f64 = data.iter().map(|&v| v as f64).sum();
        for (op, want) in [
            (ReduceOp::Sum, exact as f32),
            (ReduceOp::Mean, (exact / 300_000.0) as f32),
            (ReduceOp::Max, 7.5),
            (ReduceOp::Min, -9.0),
        ] {
            let got = t.reduce_all(op).unwrap();
            assert_eq!(got.shape(), &[] as &[usize], "{}", op.name());
            assert_close(op.name(), &[got.item().unwrap()], &[want], 1e-4, 1e-6);
        }
        assert_eq!(t.max().unwrap().item().unwrap(), 7.5);
        assert_eq!(t.min().unwrap().item().unwrap(), -9.0);
        let am = t.argmax_all().unwrap();
        assert_eq!(am.shape(), &[] as &[usize]);
        assert_eq!(am.to_vec::<i32>().unwrap(), vec![123_457], "{}", dev.name());
        // A rank-0 input reduces to itself.
        let s = Tensor::scalar(&dev, 2.5).unwrap();
        assert_eq!(s.sum().unwrap().to_vec::<f32>().unwrap(), vec![2.5]);
        assert_eq!(s.max().unwrap().shape(), &[] as &[usize]);
    }
}

#[test]
fn argmax_matches_reference_with_ties() {
    let Some(dev) = gpu() else { return };
    for (k, shape) in shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        // Values on a coarse grid so most lines have tied maxima.
        let data: Vec<f32> = uniform(k as u64 + 99, n, 0.0, 4.0)
            .iter()
            .map(|v| v.floor())
            .collect();
        let (g, c) = pair(&dev, &data, &shape);
        for axis in -(shape.len() as isize)..shape.len() as isize {
            for keepdim in [false, true] {
                let got = g.argmax(axis, keepdim).unwrap();
                let want = c.argmax(axis, keepdim).unwrap();
                assert_eq!(got.dtype(), wgrad::DType::I32);
                assert_eq!(got.shape(), want.shape());
                let label = format!("argmax {shape:?} axis {axis} keepdim {keepdim}");
                assert_eq!(
                    got.to_vec::<i32>().unwrap(),
                    want.to_vec::<i32>().unwrap(),
                    "{label}"
                );
            }
        }
    }
    // Hand-checked values on both devices: ties keep the first index.
    for d in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let t = Tensor::from_slice(&d, &[1.0f32, 3.0, 3.0, 0.0, 2.0, 2.0], &[2, 3]).unwrap();
        assert_eq!(
            t.argmax(1, false).unwrap().to_vec::<i32>().unwrap(),
            vec![1, 1]
        );
        assert_eq!(t.argmax(0, true).unwrap().shape(), &[1, 3]);
        assert_eq!(
            t.argmax(0, false).unwrap().to_vec::<i32>().unwrap(),
            vec![0, 0, 0]
        );
    }
}

/// A line of special values and NumPy's max, min, sum and argmax of it.
struct Special {
    x: [f32; 4],
    max: f32,
    min: f32,
    sum: f32,
    argmax: i32,
}

#[rustfmt::skip]
fn special_lines() -> Vec<Special> {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let line = |x, max, min, sum, argmax| Special { x, max, min, sum, argmax };
    vec![
        line([1.0, nan, 5.0, -2.0], nan, nan, nan, 1),     // a NaN among numbers
        line([nan, 1.0, 2.0, 9.0], nan, nan, nan, 0),      // a NaN first
        line([-inf, -inf, -inf, -inf], -inf, -inf, -inf, 0),
        line([inf, -inf, 3.0, 0.0], inf, -inf, nan, 0),    // inf + -inf = NaN
        line([1.0, 2.0, 3.0, nan], nan, nan, nan, 3),      // a NaN last
        line([3e38, 3e38, 0.0, 0.0], 3e38, 0.0, inf, 0),   // the sum overflows
        line([1.0, inf, 2.0, inf], inf, 1.0, inf, 1),      // tied infinities
    ]
}

#[test]
fn special_values_follow_numpy() {
    let lines = special_lines();
    let n = lines.len();
    let want_max: Vec<f32> = lines.iter().map(|l| l.max).collect();
    let want_min: Vec<f32> = lines.iter().map(|l| l.min).collect();
    let want_sum: Vec<f32> = lines.iter().map(|l| l.sum).collect();
    let want_argmax: Vec<i32> = lines.iter().map(|l| l.argmax).collect();
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        // Each line repeated `rep` times keeps its answers; lengths 4, 8, 256 and 1200 take
        // the scalar, vec4, and interleaved vec4 row kernels.
        for rep in [1, 2, 64, 300] {
            let len = 4 * rep;
            let rows: Vec<f32> = lines
                .iter()
                .flat_map(|l| (0..len).map(|k| l.x[k % 4]))
                .collect();
            // Columns: the n lines, then copies up to a multiple of 4 (the vec4 kernel).
            let width = n.next_multiple_of(4);
            let cols: Vec<f32> = (0..len * width)
                .map(|i| lines[(i % width) % n].x[(i / width) % 4])
                .collect();
            for (t, axis, label) in [
                (
                    Tensor::from_slice(&dev, &rows, &[n, len]).unwrap(),
                    1,
                    "rows",
                ),
                (
                    Tensor::from_slice(&dev, &cols, &[len, width]).unwrap(),
                    0,
                    "columns",
                ),
            ] {
                let label =
                    |op: &str| format!("{op} of special {label} of {len} on {}", dev.name());
                let get = |op: ReduceOp| {
                    t.reduce(op, axis, false).unwrap().to_vec::<f32>().unwrap()[..n].to_vec()
                };
                assert_close(&label("max"), &get(ReduceOp::Max), &want_max, 0.0, 0.0);
                assert_close(&label("min"), &get(ReduceOp::Min), &want_min, 0.0, 0.0);
                assert_close(&label("sum"), &get(ReduceOp::Sum), &want_sum, 0.0, 0.0);
                let am = t.argmax(axis, false).unwrap().to_vec::<i32>().unwrap();
                assert_eq!(am[..n], want_argmax, "{}", label("argmax"));
            }
        }
    }
    // A NaN deep inside a multi-pass reduction still reaches the result.
    if let Some(dev) = gpu() {
        let mut big = uniform(3, 200_000, -1.0, 1.0);
        big[150_000] = f32::NAN;
        big[190_000] = f32::NAN;
        let t = Tensor::from_slice(&dev, &big, &[200_000]).unwrap();
        assert!(t.max().unwrap().item().unwrap().is_nan());
        assert!(t.min().unwrap().item().unwrap().is_nan());
        assert!(t.sum().unwrap().item().unwrap().is_nan());
        assert_eq!(
            t.argmax_all().unwrap().to_vec::<i32>().unwrap(),
            vec![150_000]
        );
    }
}

#[test]
fn empty_axes_and_bad_input_are_typed_errors() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let t = Tensor::zeros(&dev, &[2, 3]).unwrap();
        for op in ReduceOp::ALL {
            let e = t.reduce(op, 2, false).unwrap_err();
            assert_eq!(
                e,
                Error::Axis {
                    op: op.name(),
                    axis: 2,
                    shape: vec![2, 3]
                },
                "{e}"
            );
            assert!(matches!(
                t.reduce(op, -3, true).unwrap_err(),
                Error::Axis { axis: -3, .. }
            ));
        }
        let e = t.argmax(5, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Axis {
                    op: "argmax",
                    axis: 5,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("[2, 3]"), "{e}");
        let labels = Tensor::from_slice(&dev, &[1i32, 2], &[2]).unwrap();
        assert!(matches!(
            labels.sum().unwrap_err(),
            Error::DType { op: "sum", .. }
        ));
        assert!(matches!(
            labels.max_axis(0, false).unwrap_err(),
            Error::DType { op: "max", .. }
        ));
        assert!(matches!(
            labels.argmax(0, false).unwrap_err(),
            Error::DType { op: "argmax", .. }
        ));

        // Empty axis: sum gives zeros; mean, max, min and argmax are errors.
        let e0 = Tensor::zeros(&dev, &[3, 0]).unwrap();
        let s = e0.sum_axis(1, false).unwrap();
        assert_eq!(s.shape(), &[3]);
        assert_eq!(s.to_vec::<f32>().unwrap(), vec![0.0; 3]);
        assert_eq!(e0.sum_axis(1, true).unwrap().shape(), &[3, 1]);
        assert_eq!(e0.sum().unwrap().item().unwrap(), 0.0);
        for op in [ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
            let e = e0.reduce(op, -1, false).unwrap_err();
            assert_eq!(
                e,
                Error::Empty {
                    op: op.name(),
                    shape: vec![3, 0]
                }
            );
            assert!(matches!(
                e0.reduce_all(op).unwrap_err(),
                Error::Empty { .. }
            ));
        }
        assert!(matches!(
            e0.argmax(1, false).unwrap_err(),
            Error::Empty { op: "argmax", .. }
        ));
        assert!(matches!(
            e0.argmax_all().unwrap_err(),
            Error::Empty { op: "argmax", .. }
        ));
        // Reducing the non-empty axis of an empty tensor gives an empty result.
        let m = e0.max_axis(0, false).unwrap();
        assert_eq!(m.shape(), &[0]);
        assert!(m.to_vec::<f32>().unwrap().is_empty());
    }
}

/// Throughput of sum and max along an axis (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_row_sum() {
    let Some(dev) = gpu() else { return };
    let cases = [
        (4096usize, 4096usize, -1isize),
        (4096, 4096, 0),
        (1, 16 << 20, -1),
        (64, 1 << 18, -1),
    ];
    for (rows, cols, axis) in cases {
        let data = uniform(1, rows * cols, -1.0, 1.0);
        let x = Tensor::from_slice(&dev, &data, &[rows, cols]).unwrap();
        let outs = if axis == 0 { cols } else { rows };
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            let s = best_time(&dev, || {
                x.reduce(op, axis, false).unwrap();
            });
            let gbs = ((rows * cols + outs) * 4) as f64 / s / 1e9;
            let name = op.name();
            println!(
                "{name} {rows}x{cols} axis {axis}: {:.3} ms, {gbs:.2} GB/s",
                s * 1e3
            );
        }
    }
}
