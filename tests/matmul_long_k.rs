//! Products with a long inner dimension K. Lavapipe silently ends an invocation after 65,535
//! loop iterations, and every product kernel walks K inside one invocation, so a long K runs
//! split into chunks (src/ops/matmul.rs, `k_chunk_limit`). Before the split, 4×K · K×4 lost
//! outputs at K = 60,000 (tiled) and 280,000 (register-blocked, subgroup) with exit code 0.
//! Every result here is compared with the CPU reference (f64 accumulation).

mod common;

use common::{assert_close, gpu, keep_alive, uniform};
use wgrad::ops::matmul::with_k_chunk;
use wgrad::{autodiff, Conv2d, DType, Device, Graph, MatmulVariant, Tensor, Var};

/// The kernels this adapter runs.
fn kernels(dev: &Device) -> Vec<MatmulVariant> {
    MatmulVariant::KERNELS
        .into_iter()
        .filter(|v| v.resolve(dev).is_ok())
        .collect()
}

/// (transpose A, transpose B): every stored layout.
const LAYOUTS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

fn stored(rows: usize, cols: usize, transposed: bool) -> Vec<usize> {
    if transposed {
        vec![cols, rows]
    } else {
        vec![rows, cols]
    }
}

/// `op(A)·op(B)` of seeded operands (M, K) and (K, N), stored as the transposes say, on
/// `variant` against the CPU reference. Sums of K products of values in [-1, 1) reach ~sqrt(K)/3;
/// f32 rounding over a chunk of K stays far below the tolerance, a lost chunk far above it.
fn check_product(
    dev: &Device,
    variant: MatmulVariant,
    (m, k, n): (usize, usize, usize),
    layouts: &[(bool, bool)],
) {
    let cpu = Device::cpu();
    for &(ta, tb) in layouts {
        let (sa, sb) = (stored(m, k, ta), stored(k, n, tb));
        let a = uniform(k as u64 + 1, m * k, -1.0, 1.0);
        let b = uniform(k as u64 + 2, k * n, -1.0, 1.0);
        let want = Tensor::from_slice(&cpu, &a, &sa)
            .unwrap()
            .matmul_t(&Tensor::from_slice(&cpu, &b, &sb).unwrap(), ta, tb)
            .unwrap();
        let got = Tensor::from_slice(dev, &a, &sa)
            .unwrap()
            .matmul_with_variant(&Tensor::from_slice(dev, &b, &sb).unwrap(), ta, tb, variant)
            .unwrap();
        let label = format!("{} {sa:?} ta={ta} x {sb:?} tb={tb}", variant.name());
        assert_eq!(got.shape(), want.shape(), "{label}");
        assert_close(
            &label,
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            2e-2,
            1e-4,
        );
        // The next kernel runs the same product: it must not get this answer as its output.
        keep_alive(got);
    }
}

#[test]
fn every_kernel_multiplies_past_the_loop_cap() {
    let Some(dev) = gpu() else { return };
    for variant in kernels(&dev) {
        check_product(&dev, variant, (4, 300_000, 4), &LAYOUTS);
        // Without and with transposes (the tiled kernel takes ~4 s a product here on lavapipe,
        // where its workgroup barriers are expensive).
        check_product(
            &dev,
            variant,
            (4, 1_000_000, 4),
            &[(false, false), (true, true)],
        );
        // Several tiles and a ragged K: chunks of every tile, the last chunk short.
        check_product(
            &dev,
            variant,
            (67, 140_001, 5),
            &[(false, true), (true, false)],
        );
    }
}

#[test]
fn forced_chunks_match_the_reference_on_awkward_shapes() {
    // The split path on short products (chunks of 16 .. 64 along K): every kernel, every
    // layout, K not a multiple of the chunk, rows not a multiple of 4 (padded copies).
    let Some(dev) = gpu() else { return };
    for variant in kernels(&dev) {
        for chunk in [16, 64] {
            with_k_chunk(chunk, || {
                // (130, 200, 65): the last column on the edge kernels, chunk by chunk.
                let shapes = [(1, 100, 1), (17, 257, 3), (64, 200, 65), (3, 1000, 130)];
                for shape in shapes.into_iter().chain([(130, 200, 65)]) {
                    check_product(&dev, variant, shape, &LAYOUTS);
                }
            });
        }
    }
}

#[test]
fn forced_chunks_in_batched_broadcast_products() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    // (2, 1, M, K) x (3, K, N) -> (2, 3, M, N): A broadcast over B's batch and back.
    let (m, k, n) = (5, 300, 6);
    let a = uniform(7, 2 * m * k, -1.0, 1.0);
    let b = uniform(8, 3 * k * n, -1.0, 1.0);
    let want = Tensor::from_slice(&cpu, &a, &[2, 1, m, k])
        .unwrap()
        .matmul(&Tensor::from_slice(&cpu, &b, &[3, k, n]).unwrap())
        .unwrap();
    for variant in kernels(&dev) {
        let got = with_k_chunk(32, || {
            Tensor::from_slice(&dev, &a, &[2, 1, m, k])
                .unwrap()
                .matmul_with_variant(
                    &Tensor::from_slice(&dev, &b, &[3, k, n]).unwrap(),
                    false,
                    false,
                    variant,
                )
                .unwrap()
        });
        assert_eq!(got.shape(), &[2, 3, m, n]);
        assert_close(
            &format!("batched {}", variant.name()),
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn chunks_past_one_partials_buffer_run_in_groups() {
    // With bindings limited to 128 KiB, a 128x128 product's partials fit two chunks at a
    // time: 13 chunks run as 7 groups, each adding the running total of the ones before.
    let Ok(dev) = Device::gpu() else {
        assert!(
            gpu().is_none(),
            "the shared GPU device exists, a second must too"
        );
        return;
    };
    dev.limit_bindings_for_testing(128 << 10);
    for variant in kernels(&dev) {
        with_k_chunk(16, || {
            check_product(&dev, variant, (128, 200, 128), &LAYOUTS)
        });
    }
}

/// The outputs of `outs` compiled on `dev`, with `feeds` given on the CPU.
fn run(dev: &Device, g: &Graph, outs: &[&Var], feeds: &[(&str, &Tensor)]) -> Vec<Vec<f32>> {
    common::run_compiled(dev, g, outs, feeds).0
}

#[test]
fn fused_bias_and_relu_on_a_long_product() {
    // relu(x·w + b): the graph executor fuses the bias and ReLU into the product; split, the
    // chunk sum applies them.
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let (m, k, n) = (4, 300_000, 4);
    let g = Graph::new();
    let out = g
        .input("x", &[m, k])
        .matmul(&g.input("w", &[k, n]))
        .unwrap()
        .add(&g.input("b", &[n]))
        .unwrap()
        .relu()
        .unwrap();
    let x = Tensor::from_slice(&cpu, &uniform(1, m * k, -1.0, 1.0), &[m, k]).unwrap();
    let w = Tensor::from_slice(&cpu, &uniform(2, k * n, -1.0, 1.0), &[k, n]).unwrap();
    let b = Tensor::from_slice(&cpu, &[50.0, -50.0, 0.5, -0.5], &[n]).unwrap();
    let feeds = [("x", &x), ("w", &w), ("b", &b)];
    let want = run(&cpu, &g, &[&out], &feeds);
    let got = run(&dev, &g, &[&out], &feeds);
    assert!(want[0].contains(&0.0) && want[0].iter().any(|&v| v > 0.0));
    assert_close("relu(x·w + b), K = 300,000", &got[0], &want[0], 2e-2, 1e-4);
    let exe = dev.compile(&g, &[&out], None).unwrap();
    assert!(
        exe.dispatch_entries()
            .iter()
            .any(|e| e == "matmul_sum_splits"),
        "{:?}",
        exe.dispatch_entries()
    );
}

#[test]
fn gradients_reducing_over_300000_rows() {
    // loss1 = sum(relu(x·w1)·w2 ∘ c) with x (300000, 3): dW1 = xᵀ·dpre and dW2 = hᵀ·c reduce
    // over the 300,000 rows. loss2 = sum(relu(x2·v1)·v2 ∘ c2) with v2 (4, 300000): the hidden
    // gradient c2·v2ᵀ reduces over 300,000 columns, with ReLU's gradient mask as its epilogue.
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let long = 300_000;
    let g = Graph::new();
    let input = |name: &str, shape: &[usize]| g.input(name, shape);
    let (x, w1, w2, c) = (
        input("x", &[long, 3]),
        input("w1", &[3, 4]),
        input("w2", &[4, 5]),
        input("c", &[long, 5]),
    );
    let loss1 = x.matmul(&w1).unwrap().relu().unwrap();
    let loss1 = loss1.matmul(&w2).unwrap().mul(&c).unwrap().sum().unwrap();
    let (x2, v1, v2, c2) = (
        input("x2", &[4, 3]),
        input("v1", &[3, 4]),
        input("v2", &[4, long]),
        input("c2", &[4, long]),
    );
    let loss2 = x2.matmul(&v1).unwrap().relu().unwrap();
    let loss2 = loss2.matmul(&v2).unwrap().mul(&c2).unwrap().sum().unwrap();
    let loss = loss1.add(&loss2).unwrap();
    let grads = autodiff::grad(&loss, &[&w1, &w2, &v1]).unwrap();
    let t = |seed, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_slice(&cpu, &uniform(seed, n, -1.0, 1.0), shape).unwrap()
    };
    let feeds = [
        ("x", &t(1, &[long, 3])),
        ("w1", &t(2, &[3, 4])),
        ("w2", &t(3, &[4, 5])),
        ("c", &t(4, &[long, 5])),
        ("x2", &t(5, &[4, 3])),
        ("v1", &t(6, &[3, 4])),
        ("v2", &t(7, &[4, long])),
        ("c2", &t(8, &[4, long])),
    ];
    let outs: Vec<&Var> = grads.iter().collect();
    let want = run(&cpu, &g, &outs, &feeds);
    let got = run(&dev, &g, &outs, &feeds);
    for (i, name) in ["dW1", "dW2", "dV1"].iter().enumerate() {
        assert_close(name, &got[i], &want[i], 5e-2, 1e-4);
    }
}

#[test]
fn conv2d_weight_gradient_over_100352_positions() {
    // x (8, 2, 112, 112), 4 filters 3x3, padding 1: the weight gradient is a product reduced
    // over N·OH·OW = 100,352 positions.
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let xs = [8, 2, 112, 112];
    let ws = [4, 2, 3, 3];
    let g = Graph::new();
    let x = g.input("x", &xs);
    let w = g.input("w", &ws);
    let geom = Conv2d::new(3, 3).padding(1);
    let y = x.conv2d(&w, geom).unwrap();
    let up = g.input("up", &[8, 4, 112, 112]);
    let gw = autodiff::vjp(&y, &up, &[&w]).unwrap();
    let t = |seed, shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_slice(&cpu, &uniform(seed, n, -1.0, 1.0), shape).unwrap()
    };
    let feeds = [
        ("x", &t(1, &xs)),
        ("w", &t(2, &ws)),
        ("up", &t(3, &[8, 4, 112, 112])),
    ];
    let want = run(&cpu, &g, &[&gw[0]], &feeds);
    let got = run(&dev, &g, &[&gw[0]], &feeds);
    assert_close(
        "conv2d dW, N·OH·OW = 100,352",
        &got[0],
        &want[0],
        2e-2,
        1e-4,
    );
}

#[test]
fn f16_products_past_the_f16_kernel() {
    // K past the f16 kernel's own loop budget runs as an f32 product of the widened halves.
    let Some(dev) = gpu() else { return };
    let Ok(probe) = Tensor::from_slice(&dev, &[1.0f32], &[1])
        .unwrap()
        .to_dtype(DType::F16)
    else {
        return; // no SHADER_F16 on this adapter
    };
    drop(probe);
    let cpu = Device::cpu();
    let (m, k, n) = (3, 300_000, 4);
    let a = uniform(11, m * k, -1.0, 1.0);
    let b = uniform(12, k * n, -1.0, 1.0);
    let half = |d: &Device, v: &[f32], s: &[usize]| {
        Tensor::from_slice(d, v, s)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap()
    };
    let want = half(&cpu, &a, &[m, k])
        .matmul(&half(&cpu, &b, &[k, n]))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let got = half(&dev, &a, &[m, k])
        .matmul(&half(&dev, &b, &[k, n]))
        .unwrap();
    assert_eq!(got.dtype(), DType::F16);
    let got = got.to_dtype(DType::F32).unwrap();
    // Both round one f32-accurate sum to f16 (relative 2^-11), here ~ sqrt(K)/3 ≈ 180.
    assert_close(
        "f16 (3, 300000) x (300000, 4)",
        &got.to_vec::<f32>().unwrap(),
        &want.to_vec::<f32>().unwrap(),
        0.25,
        1e-3,
    );
}
