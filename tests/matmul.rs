//! Matrix products against the CPU reference: every GPU kernel, every transpose
//! combination, edge sizes around the 64-wide tile and the 4-wide k step,
//! broadcast batches, 1-D operands, the walkthrough values, and error cases.

mod common;

use common::{assert_close, assert_tensor_close, gpu, keep_alive, pair, uniform};
use wgrad::ops::matmul::MatmulVariant;
use wgrad::{Device, Error, Tensor};

/// `|got - ref| <= atol + rtol·|ref|` for a sum of `k` products of values in [-1, 1):
/// f32 rounding grows like sqrt(k) for these random signs.
fn tol(k: usize) -> (f32, f32) {
    (2e-6 * (k as f32).sqrt().max(1.0) * 4.0, 1e-4)
}

/// Stored shape of an operand that is `rows x cols` after `op`, batch dims first.
fn stored(batch: &[usize], rows: usize, cols: usize, transposed: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    if transposed {
        s.extend([cols, rows]);
    } else {
        s.extend([rows, cols]);
    }
    s
}

/// The variants the GPU under test can run (Subgroup needs 8-wide subgroups).
fn runnable(dev: &Device) -> Vec<MatmulVariant> {
    MatmulVariant::KERNELS
        .into_iter()
        .filter(|v| v.resolve(dev).is_ok())
        .collect()
}

/// Compares every runnable kernel with the reference for one product.
fn check_product(
    dev: &Device,
    seed: u64,
    a_batch: &[usize],
    b_batch: &[usize],
    (m, k, n): (usize, usize, usize),
    ta: bool,
    tb: bool,
) {
    let sa = stored(a_batch, m, k, ta);
    let sb = stored(b_batch, k, n, tb);
    let a = uniform(seed, sa.iter().product(), -1.0, 1.0);
    let b = uniform(seed + 1, sb.iter().product(), -1.0, 1.0);
    let (ga, ca) = pair(dev, &a, &sa);
    let (gb, cb) = pair(dev, &b, &sb);
    let want = ca.matmul_t(&cb, ta, tb).unwrap();
    let (atol, rtol) = tol(k);
    for v in runnable(dev) {
        let label = format!("{} {sa:?} ta={ta} x {sb:?} tb={tb}", v.name());
        let got = ga.matmul_with_variant(&gb, ta, tb, v).unwrap();
        assert_tensor_close(&label, &got, &want, atol, rtol);
        keep_alive(got); // see there: no later kernel gets this answer as its output
    }
}

#[test]
fn every_kernel_and_transpose_matches_reference() {
    let Some(dev) = gpu() else { return };
    assert!(!runnable(&dev).is_empty());
    // (M, K, N): 1, odd, around the 64 tile and the 8 block, K % 4 = 0..3, tiny operands
    // that fit no whole vec4 binding (2x3), and large ones.
    let shapes = [
        (1, 1, 1),
        (2, 3, 2),
        (3, 17, 5),
        (4, 4, 4),
        (33, 10, 65),
        (64, 64, 64),
        (63, 65, 66),
        (255, 257, 3),
        (1000, 3, 257),
        (7, 1000, 9),
        // At most 16 columns on the small kernel (its invocations then run along M):
        // a classifier's weight gradient, and the 16-column edge. Below 4 tiles of 64
        // rows its tiles are 32 rows high (70 and 130 rows cross them; 255 does not).
        (70, 37, 10),
        (130, 64, 16),
        (45, 9, 17),
        // ... and its K up to 1024 there (src/ops/matmul_variant.rs small_takes): the
        // digits CNN's classifier, the last K it takes, and the first it does not.
        (64, 512, 10),
        (33, 1024, 16),
        (9, 1025, 12),
        // Past the small kernel's 2^21 multiply-adds (src/ops/matmul.rs SMALL_PRODUCT): the
        // register-blocked 8x8 kernel, its rows padded.
        (129, 130, 131),
        // The subgroup kernels' edge column (1 to 16 columns past a multiple of 64, at least
        // four 32-row tiles: matmul.wgsl's edge kernels, 128-row tiles): one column past, with
        // a K tail and rows that end inside a 128-row tile; 16 past, rows a multiple of 4.
        (130, 37, 65),
        (260, 66, 80),
        // gemv (M <= 4) where every read is a whole vec4 (ALIGNED: rows of whole vec4s) and
        // where A stored (K, M) has rows of 1 or 4: a classifier head at batch 1, and 4 rows.
        (1, 256, 100),
        (4, 96, 132),
    ];
    for (i, &shape) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check_product(&dev, 10 * i as u64, &[], &[], shape, ta, tb);
        }
    }
}

#[test]
fn large_products_match_reference() {
    let Some(dev) = gpu() else { return };
    for (ta, tb) in [(false, false), (true, true)] {
        check_product(&dev, 77, &[], &[], (257, 1000, 255), ta, tb);
    }
}

#[test]
fn batched_products_broadcast_leading_dims() {
    let Some(dev) = gpu() else { return };
    // (A's batch dims, B's batch dims, (M, K, N))
    type Case = (&'static [usize], &'static [usize], (usize, usize, usize));
    let cases: [Case; 8] = [
        (&[3], &[], (17, 9, 12)),   // (B, M, K) x (K, N): folded into one product
        (&[], &[4], (5, 8, 70)),    // (M, K) x (B, K, N)
        (&[5], &[5], (65, 4, 3)),   // paired batches
        (&[2, 1], &[3], (6, 7, 9)), // (2, 1, M, K) x (3, K, N) -> (2, 3, M, N)
        (&[1], &[4], (3, 5, 2)),    // a batch of 1 stretched
        (&[2, 1, 3], &[1, 2, 1], (9, 13, 11)),
        (&[4], &[1], (64, 64, 64)), // B's batch of 1: folded
        // Two narrow products (N <= 16) of 40 rows: the small kernel's 32-row tiles.
        (&[2], &[2], (40, 9, 7)),
    ];
    for (i, (ab, bb, mkn)) in cases.into_iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check_product(&dev, 100 + i as u64, ab, bb, mkn, ta, tb);
        }
    }
    let a = Tensor::zeros(&dev, &[2, 1, 6, 7]).unwrap();
    let b = Tensor::zeros(&dev, &[3, 7, 9]).unwrap();
    assert_eq!(a.matmul(&b).unwrap().shape(), &[2, 3, 6, 9]);
}

#[test]
fn one_dimensional_operands_follow_numpy() {
    let Some(dev) = gpu() else { return };
    let cases: [(&[usize], &[usize], &[usize]); 7] = [
        (&[5], &[5], &[]),
        (&[1000], &[1000], &[]),
        (&[4, 5], &[5], &[4]),
        (&[5], &[5, 3], &[3]),
        (&[2, 4, 5], &[5], &[2, 4]),
        (&[5], &[2, 5, 3], &[2, 3]),
        (&[257], &[257, 255], &[255]),
    ];
    for (i, (sa, sb, so)) in cases.into_iter().enumerate() {
        let a = uniform(200 + i as u64, sa.iter().product(), -1.0, 1.0);
        let b = uniform(300 + i as u64, sb.iter().product(), -1.0, 1.0);
        let (ga, ca) = pair(&dev, &a, sa);
        let (gb, cb) = pair(&dev, &b, sb);
        let want = ca.matmul(&cb).unwrap();
        assert_eq!(want.shape(), so, "{sa:?} x {sb:?}");
        let (atol, rtol) = tol(sa[sa.len() - 1]);
        for v in runnable(&dev) {
            let got = ga.matmul_with_variant(&gb, false, false, v).unwrap();
            assert_tensor_close(
                &format!("{} {sa:?} x {sb:?}", v.name()),
                &got,
                &want,
                atol,
                rtol,
            );
            if sa.len() == 1 && sb.len() == 1 {
                // The transpose flags mean nothing to a vector.
                let got = ga.matmul_with_variant(&gb, true, true, v).unwrap();
                let label = format!("{} {sa:?}^T x {sb:?}^T", v.name());
                assert_tensor_close(&label, &got, &want, atol, rtol);
            }
        }
    }
    // 1-D . 1-D is the dot product, a rank-0 tensor.
    let x = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], &[3]).unwrap();
    let y = Tensor::from_slice(&dev, &[4.0f32, -5.0, 6.0], &[3]).unwrap();
    let d = x.matmul(&y).unwrap();
    assert_eq!(d.shape(), &[] as &[usize]);
    assert_eq!(d.item().unwrap(), 12.0);
}

#[test]
fn values_past_a_matrix_never_leak() {
    let Some(dev) = gpu() else { return };
    // Edge tiles and the K tail read past their matrix; the second matrix of each batch is all
    // NaN, so any such read that reached a written output of the first would show. At most 4
    // rows take gemv, whose misaligned vec4s read into the next row (or matrix).
    // (129, 5, 70) runs its last 6 columns on the edge kernels, 128-row tiles past M.
    let shapes = [
        (5, 3, 7),
        (9, 17, 6),
        (65, 5, 66),
        (3, 17, 6),
        (1, 9, 70),
        (129, 5, 70),
    ];
    for (i, (m, k, n)) in shapes.into_iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let sa = stored(&[2], m, k, ta);
            let sb = stored(&[2], k, n, tb);
            let mut a = uniform(400 + i as u64, m * k, -1.0, 1.0);
            let mut b = uniform(500 + i as u64, k * n, -1.0, 1.0);
            a.resize(2 * m * k, f32::NAN);
            b.resize(2 * k * n, f32::NAN);
            let (ga, ca) = pair(&dev, &a, &sa);
            let (gb, cb) = pair(&dev, &b, &sb);
            let want = ca.matmul_t(&cb, ta, tb).unwrap();
            let first = want.to_vec::<f32>().unwrap();
            assert!(first[..m * n].iter().all(|v| v.is_finite()));
            let (atol, rtol) = tol(k);
            for v in runnable(&dev) {
                let label = format!(
                    "{} {sa:?} ta={ta} x {sb:?} tb={tb} NaN neighbours",
                    v.name()
                );
                let got = ga.matmul_with_variant(&gb, ta, tb, v).unwrap();
                assert_tensor_close(&label, &got, &want, atol, rtol);
                keep_alive(got);
            }
        }
    }
}

#[test]
fn walkthrough_values() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let w = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let x = Tensor::from_slice(&dev, &[5.0f32, 6.0], &[2]).unwrap();
        let xs = Tensor::from_slice(&dev, &[5.0f32, 6.0, 2.0, 3.0, 4.0, 1.0], &[3, 2]).unwrap();
        let variants = if dev.is_gpu() {
            runnable(&dev)
        } else {
            vec![MatmulVariant::Auto]
        };
        for v in variants {
            let wx = w.matmul_with_variant(&x, false, false, v).unwrap();
            assert_eq!(
                wx.to_vec::<f32>().unwrap(),
                vec![17.0, 39.0],
                "{}",
                v.name()
            );
            // A batch of rows times Wᵀ, no transpose copy: [[17, 39], [8, 18], [6, 16]].
            let y = xs.matmul_with_variant(&w, false, true, v).unwrap();
            assert_eq!(y.shape(), &[3, 2]);
            let want = vec![17.0, 39.0, 8.0, 18.0, 6.0, 16.0];
            assert_eq!(y.to_vec::<f32>().unwrap(), want, "{}", v.name());
        }
        assert_eq!(
            xs.matmul_nt(&w).unwrap().to_vec::<f32>().unwrap()[..2],
            [17.0, 39.0]
        );
        // Xᵀ·X through matmul_tn: [[45, 40], [40, 46]].
        let g = xs.matmul_tn(&xs).unwrap();
        assert_eq!(g.to_vec::<f32>().unwrap(), vec![45.0, 40.0, 40.0, 46.0]);
    }
}

#[test]
fn transposed_operands_equal_explicit_transposes() {
    let Some(dev) = gpu() else { return };
    let (m, k, n) = (19, 23, 29);
    let a = uniform(1, m * k, -1.0, 1.0); // stored (K, M)
    let b = uniform(2, k * n, -1.0, 1.0); // stored (N, K)
    let t = |x: &[f32], r: usize, c: usize| -> Vec<f32> {
        (0..r * c).map(|i| x[(i % r) * c + i / r]).collect()
    };
    for d in [Device::cpu(), dev] {
        let at = Tensor::from_slice(&d, &a, &[k, m]).unwrap();
        let bt = Tensor::from_slice(&d, &b, &[n, k]).unwrap();
        let a_copy = Tensor::from_slice(&d, &t(&a, k, m), &[m, k]).unwrap();
        let b_copy = Tensor::from_slice(&d, &t(&b, n, k), &[k, n]).unwrap();
        let want = a_copy.matmul(&b_copy).unwrap().to_vec::<f32>().unwrap();
        let got = at
            .matmul_t(&bt, true, true)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert_close(&format!("AᵀBᵀ on {}", d.name()), &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn reference_is_exact_on_integers() {
    // Small integers multiply and add exactly in f32: the reference must agree with a
    // hand-written triple loop bit for bit, batched and broadcast.
    let cpu = Device::cpu();
    let (bs, m, k, n) = (3, 4, 5, 6);
    let a: Vec<f32> = (0..bs * m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
    let ta = Tensor::from_slice(&cpu, &a, &[bs, m, k]).unwrap();
    let tb = Tensor::from_slice(&cpu, &b, &[k, n]).unwrap();
    let got = ta.matmul(&tb).unwrap();
    assert_eq!(got.shape(), &[bs, m, n]);
    let mut want = vec![0.0f32; bs * m * n];
    for p in 0..bs {
        for i in 0..m {
            for j in 0..n {
                want[(p * m + i) * n + j] =
                    (0..k).map(|l| a[(p * m + i) * k + l] * b[l * n + j]).sum();
            }
        }
    }
    assert_eq!(got.to_vec::<f32>().unwrap(), want);
}

#[test]
fn empty_and_zero_k_products() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        // K = 0: NumPy gives zeros of shape (M, N).
        let a = Tensor::zeros(&dev, &[3, 0]).unwrap();
        let b = Tensor::zeros(&dev, &[0, 4]).unwrap();
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[3, 4]);
        assert_eq!(c.to_vec::<f32>().unwrap(), vec![0.0; 12]);
        let e = Tensor::zeros(&dev, &[0]).unwrap();
        assert_eq!(e.matmul(&e).unwrap().to_vec::<f32>().unwrap(), vec![0.0]);
        // M = 0 or an empty batch: empty results.
        let a = Tensor::zeros(&dev, &[0, 5]).unwrap();
        let b = Tensor::zeros(&dev, &[5, 4]).unwrap();
        assert_eq!(a.matmul(&b).unwrap().shape(), &[0, 4]);
        let a = Tensor::zeros(&dev, &[0, 2, 5]).unwrap();
        assert_eq!(a.matmul(&b).unwrap().shape(), &[0, 2, 4]);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let shape_err = |e: Error, parts: &[&str]| {
            assert!(matches!(e, Error::Shape { op: "matmul", .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.starts_with("matmul"), "{msg}");
            for p in parts {
                assert!(msg.contains(p), "{msg} should name {p}");
            }
        };
        shape_err(
            z(&[2, 3]).matmul(&z(&[4, 5])).unwrap_err(),
            &["[2, 3]", "[4, 5]"],
        );
        shape_err(z(&[3]).matmul(&z(&[4])).unwrap_err(), &["[3]", "[4]"]);
        shape_err(z(&[2, 3]).matmul(&z(&[2])).unwrap_err(), &["[2, 3]", "[2]"]);
        shape_err(
            z(&[2, 3, 4]).matmul(&z(&[5, 4, 6])).unwrap_err(),
            &["[2, 3, 4]", "[5, 4, 6]"],
        );
        // Fine untransposed, wrong once A is read as (3, 2).
        assert!(z(&[2, 3]).matmul(&z(&[3, 2])).is_ok());
        shape_err(
            z(&[2, 3]).matmul_tn(&z(&[3, 2])).unwrap_err(),
            &["[2, 3]^T", "[3, 2]"],
        );
        let s = Tensor::scalar(&dev, 2.0).unwrap();
        shape_err(s.matmul(&z(&[1])).unwrap_err(), &["[]", "[1]"]);
        let ints = Tensor::from_slice(&dev, &[1i32, 2, 3, 4], &[2, 2]).unwrap();
        let e = ints.matmul(&z(&[2, 2])).unwrap_err();
        assert!(matches!(e, Error::DType { op: "matmul", .. }), "{e}");
    }
    if let Some(g) = gpu() {
        let a = Tensor::zeros(&g, &[2, 2]).unwrap();
        let b = Tensor::zeros(&Device::cpu(), &[2, 2]).unwrap();
        assert!(matches!(
            a.matmul(&b).unwrap_err(),
            Error::DeviceMismatch { op: "matmul", .. }
        ));
    }
}

#[test]
fn auto_picks_a_kernel_for_the_adapter() {
    let Some(dev) = gpu() else { return };
    let v = MatmulVariant::Auto.resolve(&dev).unwrap();
    assert_ne!(v, MatmulVariant::Auto);
    let software = dev
        .adapter()
        .map(|a| a.device_type == "Cpu")
        .unwrap_or(false);
    if std::env::var("WGRAD_MATMUL").is_err() {
        if software {
            assert_ne!(
                v,
                MatmulVariant::Tiled,
                "software adapters avoid the tiled kernel"
            );
        } else {
            assert_eq!(v, MatmulVariant::Tiled);
        }
    }
    assert_eq!(
        MatmulVariant::Tiled.resolve(&dev).unwrap(),
        MatmulVariant::Tiled
    );
    assert_eq!(
        MatmulVariant::Auto.resolve(&Device::cpu()).unwrap(),
        MatmulVariant::Auto
    );
}

#[test]
fn grid_splits_when_workgroups_exceed_one_dimension() {
    let Some(dev) = gpu() else { return };
    // 70000 batched 1x2 · 2x1 products: one workgroup each, over 65535 in x.
    let bs = 70_000;
    let a: Vec<f32> = (0..bs * 2).map(|i| (i % 13) as f32).collect();
    let b: Vec<f32> = (0..bs * 2).map(|i| (i % 7) as f32 - 3.0).collect();
    let (ga, ca) = pair(&dev, &a, &[bs, 1, 2]);
    let (gb, cb) = pair(&dev, &b, &[bs, 2, 1]);
    let want = ca.matmul(&cb).unwrap();
    // Every kernel finds its job with the same WGSL function; on a software adapter the tiled
    // kernel's 256-invocation workgroups with barriers would take seconds here, so it is left out.
    let software = dev
        .adapter()
        .map(|a| a.device_type == "Cpu")
        .unwrap_or(false);
    for v in runnable(&dev) {
        if software && v == MatmulVariant::Tiled {
            continue;
        }
        let got = ga.matmul_with_variant(&gb, false, false, v).unwrap();
        assert_tensor_close(&format!("{} split grid", v.name()), &got, &want, 0.0, 0.0);
    }
}

/// GFLOP/s of each kernel on square products (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_matmul_gflops() {
    let Some(dev) = gpu() else { return };
    for v in runnable(&dev) {
        for n in [256, 512, 1024, 2048] {
            let a = Tensor::from_slice(&dev, &uniform(1, n * n, -1.0, 1.0), &[n, n]).unwrap();
            let b = Tensor::from_slice(&dev, &uniform(2, n * n, -1.0, 1.0), &[n, n]).unwrap();
            a.matmul_with_variant(&b, false, false, v).unwrap();
            dev.synchronize().unwrap();
            let reps = (2e9 / (2.0 * (n * n * n) as f64)).clamp(1.0, 20.0) as usize;
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = std::time::Instant::now();
                let c = a.matmul_with_variant(&b, false, false, v).unwrap();
                dev.synchronize().unwrap();
                best = best.min(t.elapsed().as_secs_f64());
                drop(c);
            }
            let gflops = 2.0 * (n * n * n) as f64 / best / 1e9;
            println!(
                "matmul {:>8} {n:>4}^3: {:8.2} ms  {gflops:6.2} GFLOP/s",
                v.name(),
                best * 1e3
            );
        }
    }
}
