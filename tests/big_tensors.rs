//! Tensors larger than one storage binding (max_storage_buffer_binding_size, 128 MiB
//! on lavapipe and many GPUs): element-wise ops, broadcasting, reductions, softmax
//! and matmul, against the CPU reference.
//!
//! Two kinds of test. The `windowed_*` tests lower the binding size a device plans
//! for to 4 KiB (`Device::limit_bindings_for_testing`), so the chunked paths run on
//! small awkward shapes — and since a binding past that limit is `Err(TooLarge)`,
//! they also prove no dispatch binds more than it. The `past_the_binding_limit_*`
//! tests run one real 220 MB operand (55 M f32) on the adapter's own limit and
//! compare with values computed on the host in f64 (every row for the cheap ops, a
//! strided sample of rows for softmax and matmul; matmul with the big operand as A and,
//! stored transposed, as B).

mod common;

use std::sync::OnceLock;

use common::{assert_close, assert_tensor_close, gpu, uniform};
use wgrad::{Device, Error, ReduceOp, Tensor};

/// Bytes per binding in the windowed tests: 1024 f32.
const SMALL_LIMIT: u64 = 4096;

/// A fresh GPU device (its limit is lowered, so it is not shared) and the CPU reference.
fn windowed() -> Option<(Device, Device)> {
    gpu()?;
    let dev = Device::gpu().ok()?;
    dev.limit_bindings_for_testing(SMALL_LIMIT);
    Some((dev, Device::cpu()))
}

fn both(g: &Device, c: &Device, data: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    (
        Tensor::from_slice(g, data, shape).unwrap(),
        Tensor::from_slice(c, data, shape).unwrap(),
    )
}

#[test]
fn windowed_elementwise_matches_reference() {
    let Some((g, c)) = windowed() else { return };
    for (i, shape) in [vec![1025], vec![3001], vec![37, 100], vec![7, 3, 257]]
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let x = uniform(10 + i as u64, n, -3.0, 3.0);
        let y = uniform(20 + i as u64, n, -3.0, 3.0);
        let ((xg, xc), (yg, yc)) = (both(&g, &c, &x, &shape), both(&g, &c, &y, &shape));
        let l = format!("{shape:?}");
        assert_tensor_close(&l, &xg.relu().unwrap(), &xc.relu().unwrap(), 0.0, 0.0);
        assert_tensor_close(&l, &xg.exp().unwrap(), &xc.exp().unwrap(), 1e-6, 1e-5);
        let (sg, sc) = (xg.sub_scalar(0.5).unwrap(), xc.sub_scalar(0.5).unwrap());
        assert_tensor_close(&l, &sg, &sc, 0.0, 0.0);
        assert_tensor_close(&l, &xg.add(&yg).unwrap(), &xc.add(&yc).unwrap(), 0.0, 0.0);
        assert_tensor_close(&l, &xg.mul(&yg).unwrap(), &xc.mul(&yc).unwrap(), 0.0, 0.0);
    }
}

#[test]
fn windowed_broadcasting_matches_reference() {
    let Some((g, c)) = windowed() else { return };
    // (a, b): small operand against a big one either side, both operands past the
    // binding with stretched dims (spans), a scalar-like operand, an outer product.
    let cases: [(&[usize], &[usize]); 6] = [
        (&[37, 100], &[100]),
        (&[3], &[1000, 3]),
        (&[37, 1, 50], &[1, 20, 50]),
        (&[5000], &[1]),
        (&[300, 1], &[1, 70]),
        (&[2, 1500, 1], &[2, 1, 3]),
    ];
    for (i, (sa, sb)) in cases.into_iter().enumerate() {
        let a = uniform(30 + i as u64, sa.iter().product(), -2.0, 2.0);
        let b = uniform(40 + i as u64, sb.iter().product(), -2.0, 2.0);
        let ((ag, ac), (bg, bc)) = (both(&g, &c, &a, sa), both(&g, &c, &b, sb));
        let l = format!("{sa:?} + {sb:?}");
        assert_tensor_close(&l, &ag.add(&bg).unwrap(), &ac.add(&bc).unwrap(), 0.0, 0.0);
        assert_tensor_close(&l, &bg.sub(&ag).unwrap(), &bc.sub(&ac).unwrap(), 0.0, 0.0);
    }
}

#[test]
fn windowed_reductions_match_reference() {
    let Some((g, c)) = windowed() else { return };
    // Whole slabs per box, lines longer than a binding, inner rows longer than one.
    for (i, shape) in [vec![7, 300, 5], vec![2, 3000], vec![2, 3, 1500], vec![5000]]
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let x = uniform(50 + i as u64, n, -1.0, 1.0);
        let (xg, xc) = both(&g, &c, &x, &shape);
        for op in ReduceOp::ALL {
            for axis in 0..shape.len() as isize {
                let l = format!("{} {shape:?} axis {axis}", op.name());
                let (rg, rc) = (
                    xg.reduce(op, axis, false).unwrap(),
                    xc.reduce(op, axis, false).unwrap(),
                );
                assert_tensor_close(&l, &rg, &rc, 1e-5, 1e-5);
            }
            let l = format!("{} {shape:?} whole", op.name());
            let (rg, rc) = (xg.reduce_all(op).unwrap(), xc.reduce_all(op).unwrap());
            assert_tensor_close(&l, &rg, &rc, 1e-5, 1e-5);
        }
    }
}

#[test]
fn windowed_softmax_matches_reference() {
    let Some((g, c)) = windowed() else { return };
    // Blocks of whole lines, then lines (slabs) past the binding: composed from split ops.
    let cases = [
        (vec![50, 300], 1),
        (vec![4, 30, 9], 1),
        (vec![3, 1000], -1),
        (vec![2, 3000], -1),
        (vec![3000], 0),
        (vec![4, 700, 3], 1),
    ];
    for (i, (shape, axis)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut x = uniform(60 + i as u64, n, -5.0, 5.0);
        if n >= 3000 {
            // The kernels' special values: +inf, NaN or -inf in a line (see softmax.rs).
            // [2, 3000]: row 0 holds +inf (all NaN), row 1 a -inf (a 0 there).
            x[5] = f32::INFINITY;
            x[n - 3] = f32::NEG_INFINITY;
            if shape.len() == 3 {
                x[n / 2] = f32::NAN;
            }
        }
        let (xg, xc) = both(&g, &c, &x, &shape);
        let l = format!("{shape:?} axis {axis}");
        let (yg, yc) = (xg.softmax(axis).unwrap(), xc.softmax(axis).unwrap());
        assert_tensor_close(&l, &yg, &yc, 1e-6, 1e-4);
        let (yg, yc) = (xg.log_softmax(axis).unwrap(), xc.log_softmax(axis).unwrap());
        assert_tensor_close(&l, &yg, &yc, 1e-5, 1e-5);
    }
}

#[test]
fn windowed_matmul_matches_reference() {
    let Some((g, c)) = windowed() else { return };
    // (A, B, transpose A, transpose B): tall A, batched A with a shared B, B stored (N, K),
    // 1-D B, small A, B whose product is past the binding; B past the binding (wide,
    // stored transposed, batched and broadcast), A stored transposed, both, a 1-D A.
    let cases: [(&[usize], &[usize], bool, bool); 11] = [
        (&[200, 30], &[30, 17], false, false),
        (&[3, 70, 20], &[20, 9], false, false),
        (&[257, 13], &[5, 13], false, true),
        (&[400, 7], &[7], false, false),
        (&[90, 3], &[3, 40], false, false),
        (&[5, 20], &[20, 300], false, false),
        (&[6, 20], &[301, 20], false, true),
        (&[2, 1, 9, 20], &[3, 20, 70], false, false),
        (&[3, 2000], &[3, 5], true, false),
        (&[21, 130], &[90, 21], true, true),
        (&[20], &[20, 333], false, false),
    ];
    for (i, (sa, sb, ta, tb)) in cases.into_iter().enumerate() {
        let a = uniform(70 + i as u64, sa.iter().product(), -1.0, 1.0);
        let b = uniform(80 + i as u64, sb.iter().product(), -1.0, 1.0);
        let ((ag, ac), (bg, bc)) = (both(&g, &c, &a, sa), both(&g, &c, &b, sb));
        let l = format!("{sa:?} x {sb:?} ta {ta} tb {tb}");
        let (pg, pc) = (
            ag.matmul_t(&bg, ta, tb).unwrap(),
            ac.matmul_t(&bc, ta, tb).unwrap(),
        );
        assert_tensor_close(&l, &pg, &pc, 1e-5, 1e-4);
    }
}

#[test]
fn windowed_cross_entropy_matches_reference() {
    let Some((g, c)) = windowed() else { return };
    for (i, (rows, classes)) in [(300, 7), (37, 100), (5, 1000)].into_iter().enumerate() {
        let x = uniform(90 + i as u64, rows * classes, -3.0, 3.0);
        let labels: Vec<i32> = (0..rows).map(|r| ((r * 5 + i) % classes) as i32).collect();
        let up = uniform(95 + i as u64, rows, 0.5, 1.5);
        let ((xg, xc), (ug, uc)) = (
            both(&g, &c, &x, &[rows, classes]),
            both(&g, &c, &up, &[rows]),
        );
        let lg = Tensor::from_slice(&g, &labels, &[rows]).unwrap();
        let lc = Tensor::from_slice(&c, &labels, &[rows]).unwrap();
        let l = format!("cross_entropy {rows}x{classes}");
        let (yg, yc) = (
            xg.cross_entropy(&lg).unwrap(),
            xc.cross_entropy(&lc).unwrap(),
        );
        assert_tensor_close(&l, &yg, &yc, 1e-5, 1e-5);
        let (dg, dc) = (
            xg.cross_entropy_backward(&lg, &ug).unwrap(),
            xc.cross_entropy_backward(&lc, &uc).unwrap(),
        );
        assert_tensor_close(&l, &dg, &dc, 1e-6, 1e-5);
    }
}

/// What the chunked ops do not split is a typed error naming the op, not a driver error.
#[test]
fn windowed_unsplit_cases_are_too_large_errors() {
    let Some((g, _)) = windowed() else { return };
    let big = Tensor::zeros(&g, &[2000]).unwrap();
    let small = Tensor::zeros(&g, &[4, 2000]).unwrap();
    let row = Tensor::zeros(&g, &[3, 2000]).unwrap();
    // (Layout ops past the binding are split since: tests/big_compiled.rs.)
    let cases: [(&str, wgrad::Result<Tensor>, &str); 2] = [
        (
            "one row of K past the binding",
            small.matmul_nt(&row),
            "matmul",
        ),
        ("argmax", big.argmax(0, false), "argmax"),
    ];
    for (what, r, op) in cases {
        match r {
            Err(Error::TooLarge { op: o, .. }) => assert_eq!(o, op, "{what}"),
            other => panic!("{what}: expected TooLarge({op}), got {other:?}"),
        }
    }
}

// ------------------------------------------------------------ one real 220 MB operand

/// Rows and columns of the big operand: 55 M f32, 220 MB (210 MiB).
const ROWS: usize = 55_000;
const COLS: usize = 1000;

/// The big operand on the shared GPU and its host data (made once per test binary).
fn big() -> Option<&'static (Tensor, Vec<f32>)> {
    static BIG: OnceLock<Option<(Tensor, Vec<f32>)>> = OnceLock::new();
    BIG.get_or_init(|| {
        let dev = gpu()?;
        let limit = dev.adapter()?.max_storage_binding;
        if (ROWS * COLS * 4) as u64 <= limit {
            eprintln!("binding limit {limit} holds the big operand; nothing to test");
            return None;
        }
        // Cheap deterministic values in [-2, 2) with every row different.
        let x: Vec<f32> = (0..ROWS * COLS)
            .map(|i| ((i.wrapping_mul(2654435761) >> 7) % 4096) as f32 / 1024.0 - 2.0)
            .collect();
        let t = Tensor::from_slice(&dev, &x, &[ROWS, COLS]).expect("upload 220 MB");
        Some((t, x))
    })
    .as_ref()
}

#[test]
fn past_the_binding_limit_relu_and_add() {
    let Some((x, host)) = big() else { return };
    let relu = x.relu().unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = host.iter().map(|v| v.max(0.0)).collect();
    assert_close("relu 55M", &relu, &want, 0.0, 0.0);
    drop((relu, want));
    // A small operand broadcast along the rows of the big one, then big + big.
    let bias = uniform(1, COLS, -1.0, 1.0);
    let b = Tensor::from_slice(x.device(), &bias, &[COLS]).unwrap();
    let sum = x.add(&b).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = host
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[i % COLS])
        .collect();
    assert_close("add bias 55M", &sum, &want, 0.0, 0.0);
    drop((sum, want));
    let twice = x.add(x).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = host.iter().map(|v| v + v).collect();
    assert_close("x + x 55M", &twice, &want, 0.0, 0.0);
    eprintln!(
        "big tensors: relu/add on {ROWS}x{COLS} f32 ({} MB)",
        ROWS * COLS * 4 / 1_000_000
    );
}

#[test]
fn past_the_binding_limit_sums() {
    let Some((x, host)) = big() else { return };
    let rows = x.sum_axis(-1, false).unwrap().to_vec::<f32>().unwrap();
    let want: Vec<f32> = host
        .chunks(COLS)
        .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
        .collect();
    assert_close("row sums 55M", &rows, &want, 1e-4, 1e-5);
    // Column sums: lines of 55 000 elements at a stride of 1000, in two boxes along r.
    let cols = x.sum_axis(0, false).unwrap().to_vec::<f32>().unwrap();
    let mut want = vec![0f64; COLS];
    for r in host.chunks(COLS) {
        want.iter_mut().zip(r).for_each(|(w, &v)| *w += v as f64);
    }
    let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
    assert_close("column sums 55M", &cols, &want, 1e-2, 1e-5);
    let total = x.sum().unwrap().item().unwrap();
    let exact: f64 = host.iter().map(|&v| v as f64).sum();
    assert!(
        (total as f64 - exact).abs() <= 1e-6 * host.iter().map(|&v| v.abs() as f64).sum::<f64>(),
        "sum of 55M: {total} vs {exact}"
    );
    let mean = x.mean().unwrap().item().unwrap();
    let want = (exact / host.len() as f64) as f32;
    assert!(
        (mean - want).abs() <= 1e-5 + 1e-4 * want.abs(),
        "mean {mean} vs {want}"
    );
    let max = x.max().unwrap().item().unwrap();
    assert_eq!(max, host.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
}

/// Rows compared with the host: every 997th and the last.
fn sample_rows() -> Vec<usize> {
    (0..ROWS).step_by(997).chain([ROWS - 1]).collect()
}

#[test]
fn past_the_binding_limit_softmax_rows() {
    let Some((x, host)) = big() else { return };
    let y = x.softmax(-1).unwrap().to_vec::<f32>().unwrap();
    for r in sample_rows() {
        let row = &host[r * COLS..(r + 1) * COLS];
        let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        let want: Vec<f32> = row
            .iter()
            .map(|&v| ((v as f64 - m).exp() / s) as f32)
            .collect();
        assert_close(
            &format!("softmax row {r}"),
            &y[r * COLS..(r + 1) * COLS],
            &want,
            1e-7,
            1e-4,
        );
    }
}

#[test]
fn past_the_binding_limit_matmul_tall_a() {
    let Some((x, host)) = big() else { return };
    const N: usize = 8;
    let w = uniform(2, COLS * N, -1.0, 1.0);
    let wt = Tensor::from_slice(x.device(), &w, &[COLS, N]).unwrap();
    let y = x.matmul(&wt).unwrap();
    assert_eq!(y.shape(), &[ROWS, N]);
    let y = y.to_vec::<f32>().unwrap();
    for r in sample_rows() {
        let row = &host[r * COLS..(r + 1) * COLS];
        let want: Vec<f32> = (0..N)
            .map(|j| {
                (0..COLS)
                    .map(|k| row[k] as f64 * w[k * N + j] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        assert_close(
            &format!("matmul row {r}"),
            &y[r * N..(r + 1) * N],
            &want,
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn past_the_binding_limit_matmul_wide_b() {
    // The big operand as B stored (N, K): W (4, K) · Bᵀ gives (4, 55,000), B past the
    // binding split into blocks of its rows (columns of op(B)).
    let Some((x, host)) = big() else { return };
    const M: usize = 4;
    let w = uniform(3, M * COLS, -1.0, 1.0);
    let wt = Tensor::from_slice(x.device(), &w, &[M, COLS]).unwrap();
    let y = wt.matmul_nt(x).unwrap();
    assert_eq!(y.shape(), &[M, ROWS]);
    let y = y.to_vec::<f32>().unwrap();
    for i in 0..M {
        let cols = sample_rows();
        let got: Vec<f32> = cols.iter().map(|&j| y[i * ROWS + j]).collect();
        let want: Vec<f32> = cols
            .iter()
            .map(|&j| {
                (0..COLS)
                    .map(|k| w[i * COLS + k] as f64 * host[j * COLS + k] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        assert_close(&format!("wide-B matmul row {i}"), &got, &want, 1e-3, 1e-4);
    }
}
