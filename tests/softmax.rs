//! Softmax and log-softmax against the CPU reference: every axis of 1-D to 4-D shapes,
//! the split variant for few long lines, stability on large inputs, special values and
//! error cases.

mod common;

use common::{assert_close, assert_tensor_close, best_time, gpu, pair, uniform, SIZES};
use wgrad::{Device, Error, Tensor};

/// Both functions under test, with their names and tolerances (atol, rtol).
type Op = fn(&Tensor, isize) -> wgrad::Result<Tensor>;
const OPS: [(&str, Op, f32, f32); 2] = [
    ("softmax", Tensor::softmax, 1e-6, 2e-5),
    ("log_softmax", Tensor::log_softmax, 2e-5, 1e-5),
];

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
    ]);
    v
}

#[test]
fn softmax_matches_reference_on_every_axis() {
    let Some(dev) = gpu() else { return };
    for (k, shape) in shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = uniform(k as u64 + 1, n, -6.0, 6.0);
        let (g, c) = pair(&dev, &data, &shape);
        let rank = shape.len() as isize;
        for axis in -rank..rank {
            for (name, op, atol, rtol) in OPS {
                let label = format!("{name} {shape:?} axis {axis}");
                let got = op(&g, axis).unwrap();
                assert_eq!(got.shape(), shape.as_slice(), "{label}");
                assert_tensor_close(&label, &got, &op(&c, axis).unwrap(), atol, rtol);
            }
        }
    }
}

#[test]
fn few_or_long_lines_use_the_split_variant() {
    let Some(dev) = gpu() else { return };
    // Fewer than 1024 lines of at least 4096, or lines too long for one invocation each
    // (lavapipe's loop limit): part statistics, merged, then the outputs part by part.
    let cases: [(&[usize], isize); 7] = [
        (&[1024, 9001], -1),
        (&[9000, 1024], 0),
        (&[1, 50_000], -1),
        (&[3, 8191], 1),
        (&[100_003], 0),
        (&[5000, 3], 0),
        (&[2, 4096, 5], 1),
    ];
    for (k, (shape, axis)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = uniform(k as u64 + 40, n, -20.0, 20.0);
        let (g, c) = pair(&dev, &data, shape);
        for (name, op, atol, rtol) in OPS {
            let label = format!("{name} {shape:?} axis {axis}");
            assert_tensor_close(
                &label,
                &op(&g, axis).unwrap(),
                &op(&c, axis).unwrap(),
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn rows_sum_to_one_and_large_inputs_stay_finite() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        // ±1e4 would overflow exp without subtracting the row maximum.
        let x = [1e4f32, 1e4 - 1.0, -1e4, 0.0, -1e4, -1e4 + 2.0, -1e4, -1e4];
        let t = Tensor::from_slice(&dev, &x, &[2, 4]).unwrap();
        let y = t.softmax(-1).unwrap().to_vec::<f32>().unwrap();
        let e = (-1.0f64).exp();
        let (a, b) = ((1.0 / (1.0 + e)) as f32, (e / (1.0 + e)) as f32);
        let e2 = 2.0f64.exp();
        let (p, q) = ((1.0 / (3.0 + e2)) as f32, (e2 / (3.0 + e2)) as f32);
        let want = [a, b, 0.0, 0.0, p, q, p, p];
        assert_close(
            &format!("softmax ±1e4 on {}", dev.name()),
            &y,
            &want,
            1e-6,
            1e-5,
        );
        let ly = t.log_softmax(1).unwrap().to_vec::<f32>().unwrap();
        assert!(ly.iter().all(|v| v.is_finite()), "{ly:?}");
        assert_close("log_softmax ±1e4", &ly[..2], &[a.ln(), b.ln()], 1e-5, 1e-5);
        assert_close(
            "log_softmax ±1e4",
            &ly[2..3],
            &[-2e4 - (1.0 + e).ln() as f32],
            0.0,
            1e-6,
        );
        // Rows of random data sum to 1.
        let data = uniform(8, 64 * 300, -30.0, 30.0);
        let s = Tensor::from_slice(&dev, &data, &[64, 300])
            .unwrap()
            .softmax(-1)
            .unwrap();
        let s = s.sum_axis(-1, false).unwrap().to_vec::<f32>().unwrap();
        assert_close("softmax row sums", &s, &[1.0; 64], 1e-5, 0.0);
    }
}

#[test]
fn special_values_follow_pytorch() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    let l2 = -(2.0f32.ln());
    // Lines with their softmax and log-softmax: -inf entries, all -inf, a NaN, a single
    // finite value among -inf.
    #[rustfmt::skip]
    let lines = [
        ([-inf, 0.0, -inf, 0.0], [0.0, 0.5, 0.0, 0.5], [-inf, l2, -inf, l2]),
        ([-inf; 4], [nan; 4], [nan; 4]),
        ([1.0, nan, 2.0, 3.0], [nan; 4], [nan; 4]),
        ([-inf, -inf, 7.0, -inf], [0.0, 0.0, 1.0, 0.0], [-inf, -inf, 0.0, -inf]),
    ];
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        // 4 or 5 lines (the fifth a copy of the first) of 4 or 5 elements (a -inf appended,
        // which changes nothing but adds a 0 / -inf output), as rows and as columns: every
        // kernel, scalar and vec4, sees them.
        for (count, pad) in [(4, 0), (4, 1), (5, 0), (5, 1)] {
            let len = 4 + pad;
            // (input, softmax, log-softmax) of element k of line l.
            let at = |l: usize, k: usize| -> [f32; 3] {
                let (x, soft, log) = lines[if l == 4 { 0 } else { l }];
                if k < 4 {
                    [x[k], soft[k], log[k]]
                } else if soft[0].is_nan() {
                    [-inf, nan, nan]
                } else {
                    [-inf, 0.0, -inf]
                }
            };
            let rows: Vec<[f32; 3]> = (0..count * len).map(|i| at(i / len, i % len)).collect();
            let cols: Vec<[f32; 3]> = (0..count * len).map(|i| at(i % count, i / count)).collect();
            for (data, shape, axis) in [(rows, [count, len], 1), (cols, [len, count], 0)] {
                let part = |q: usize| data.iter().map(|v| v[q]).collect::<Vec<f32>>();
                let t = Tensor::from_slice(&dev, &part(0), &shape).unwrap();
                let label = format!("{shape:?} axis {axis} on {}", dev.name());
                let soft = t.softmax(axis).unwrap().to_vec::<f32>().unwrap();
                assert_close(
                    &format!("softmax special {label}"),
                    &soft,
                    &part(1),
                    1e-7,
                    1e-6,
                );
                let log = t.log_softmax(axis).unwrap().to_vec::<f32>().unwrap();
                assert_close(
                    &format!("log_softmax special {label}"),
                    &log,
                    &part(2),
                    1e-7,
                    1e-6,
                );
            }
        }
    }
    // Long lines through the split variant (vec4 and scalar rows): -inf parts, an all -inf
    // line, a NaN line.
    if let Some(dev) = gpu() {
        for r in [20_000, 20_001] {
            let mut data = uniform(5, 3 * r, -3.0, 3.0);
            data[..10_000].fill(-inf); // line 0: its first parts are all -inf
            data[r..2 * r].fill(-inf); // line 1: all -inf
            data[2 * r + 12_345] = nan; // line 2: one NaN
            let (g, c) = pair(&dev, &data, &[3, r]);
            for (name, op, atol, rtol) in OPS {
                let label = format!("{name} split special, lines of {r}");
                assert_tensor_close(
                    &label,
                    &op(&g, -1).unwrap(),
                    &op(&c, -1).unwrap(),
                    atol,
                    rtol,
                );
            }
        }
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let t = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let e = t.softmax(2).unwrap_err();
        assert_eq!(
            e,
            Error::Axis {
                op: "softmax",
                axis: 2,
                shape: vec![2, 3]
            }
        );
        assert!(e.to_string().contains("[2, 3]"), "{e}");
        let e = t.log_softmax(-3).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Axis {
                    op: "log_softmax",
                    axis: -3,
                    ..
                }
            ),
            "{e}"
        );
        let s = Tensor::scalar(&dev, 1.0).unwrap();
        assert!(matches!(
            s.softmax(0).unwrap_err(),
            Error::Axis { op: "softmax", .. }
        ));
        let labels = Tensor::from_slice(&dev, &[1i32, 2], &[2]).unwrap();
        assert!(matches!(
            labels.softmax(0).unwrap_err(),
            Error::DType { op: "softmax", .. }
        ));
        assert!(matches!(
            labels.log_softmax(0).unwrap_err(),
            Error::DType {
                op: "log_softmax",
                ..
            }
        ));
        // Tensors without elements pass through with their shape.
        for shape in [[0usize, 4], [3, 0]] {
            let z = Tensor::zeros(&dev, &shape).unwrap();
            assert_eq!(z.softmax(-1).unwrap().shape(), &shape);
            assert_eq!(z.log_softmax(0).unwrap().shape(), &shape);
        }
    }
}

/// Throughput of softmax (run with `--release -- --ignored --nocapture`): bytes read and
/// written over time.
#[test]
#[ignore]
fn bench_softmax() {
    let Some(dev) = gpu() else { return };
    // Many rows, fewer longer rows, few very long rows (split), and columns.
    let cases = [
        (4096usize, 1024usize, -1isize),
        (1024, 4096, -1),
        (256, 8192, -1),
        (16, 1 << 18, -1),
        (1024, 4096, 0),
    ];
    for op in ["softmax", "log_softmax"] {
        for (rows, cols, axis) in cases {
            let x = Tensor::from_slice(&dev, &uniform(1, rows * cols, -5.0, 5.0), &[rows, cols])
                .unwrap();
            let s = best_time(&dev, || {
                if op == "softmax" {
                    x.softmax(axis)
                } else {
                    x.log_softmax(axis)
                }
                .unwrap();
            });
            let gbs = (2 * rows * cols * 4) as f64 / s / 1e9;
            println!(
                "{op} {rows}x{cols} axis {axis}: {:.3} ms, {gbs:.2} GB/s",
                s * 1e3
            );
        }
    }
}
