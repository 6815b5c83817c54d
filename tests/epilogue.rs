//! Epilogue fusion (src/epilogue.rs): on a GPU a product with its bias add (and ReLU),
//! or with ReLU's gradient mask, is one matmul dispatch, and a cross-entropy with its
//! mean or sum is one loss dispatch. The epilogue runs the same f32 ops as the unfused
//! kernels, so a fused product equals the unfused GPU ops bit for bit; everything is
//! also checked against the CPU reference, which runs every node by itself.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::{BinaryOp, Device, Graph, Tensor, Var};

/// Compiles `out` of `g` on `dev`, runs it on `feeds`; returns the values and the
/// entry points one run dispatches (empty on the CPU reference).
fn run(dev: &Device, g: &Graph, out: &Var, feeds: &[(&str, &Tensor)]) -> (Vec<f32>, Vec<String>) {
    let exe = dev.compile(g, &[out], None).expect("compile");
    let moved: Vec<Tensor> = feeds
        .iter()
        .map(|(_, t)| t.to_device(dev).unwrap())
        .collect();
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|f| f.0).zip(&moved).collect();
    let got = exe.run(&named).expect("run")[0].to_vec::<f32>().unwrap();
    (got, exe.dispatch_entries())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn stored(rows: usize, cols: usize, transposed: bool) -> Vec<usize> {
    if transposed {
        vec![cols, rows]
    } else {
        vec![rows, cols]
    }
}

#[test]
fn bias_and_relu_are_stored_by_the_product() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    // (M, K, N): 1, odd, ragged rows (small kernel), aligned (register-blocked), past a tile.
    for (i, &(m, k, n)) in [
        (1usize, 1usize, 1usize),
        (1, 3, 5),
        (255, 17, 10),
        (64, 64, 64),
        (257, 64, 128),
        (3, 1000, 7),
        // The last 16 columns on the subgroup kernels' edge entry (a second dispatch).
        (200, 300, 80),
    ]
    .iter()
    .enumerate()
    {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for relu in [false, true] {
                let (sa, sb) = (stored(m, k, ta), stored(k, n, tb));
                let seed = 100 * i as u64;
                let x = Tensor::from_slice(&cpu, &uniform(seed, m * k, -1.0, 1.0), &sa).unwrap();
                let w =
                    Tensor::from_slice(&cpu, &uniform(seed + 1, k * n, -1.0, 1.0), &sb).unwrap();
                let b = Tensor::from_slice(&cpu, &uniform(seed + 2, n, -1.0, 1.0), &[n]).unwrap();
                let g = Graph::new();
                let pre = g
                    .input("x", &sa)
                    .matmul_t(&g.input("w", &sb), ta, tb)
                    .unwrap()
                    .add(&g.input("b", &[n]))
                    .unwrap();
                let out = if relu { pre.relu().unwrap() } else { pre };
                let feeds = [("x", &x), ("w", &w), ("b", &b)];
                let label = format!("{sa:?} ta={ta} x {sb:?} tb={tb} + b, relu={relu}");
                let (got, entries) = run(&dev, &g, &out, &feeds);
                // One product (rows the vec4 kernels cannot load may be padded first; a last
                // column tile of 1 to 16 columns is a dispatch of its own on the subgroup
                // kernels), each dispatch storing the epilogue: no add or relu kernel.
                let kernels: Vec<_> = entries.iter().filter(|e| *e != "matmul_pad_rows").collect();
                let edge = kernels.iter().filter(|e| e.contains("_edge")).count();
                let wide = kernels.len() - edge;
                assert!(
                    wide <= 1 && edge <= 1 && wide + edge >= 1,
                    "{label}: {entries:?}"
                );
                assert!(
                    kernels.iter().all(|e| e.starts_with("matmul_forward")),
                    "{label}: {entries:?}"
                );
                // The unfused GPU ops: the same product, then add (and relu) kernels.
                let (xg, wg, bg) = (
                    x.to_device(&dev).unwrap(),
                    w.to_device(&dev).unwrap(),
                    b.to_device(&dev).unwrap(),
                );
                let mut unfused = xg.matmul_t(&wg, ta, tb).unwrap().add(&bg).unwrap();
                if relu {
                    unfused = unfused.relu().unwrap();
                }
                assert_eq!(
                    bits(&got),
                    bits(&unfused.to_vec::<f32>().unwrap()),
                    "{label}"
                );
                let (want, _) = run(&cpu, &g, &out, &feeds);
                assert_close(&label, &got, &want, 1e-4, 1e-4);
            }
        }
    }
}

#[test]
fn a_batched_product_takes_a_row_bias() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for bias_shape in [vec![12usize], vec![1, 12], vec![1, 1, 12]] {
        let x = Tensor::from_slice(&cpu, &uniform(1, 3 * 17 * 9, -1.0, 1.0), &[3, 17, 9]).unwrap();
        let w = Tensor::from_slice(&cpu, &uniform(2, 9 * 12, -1.0, 1.0), &[9, 12]).unwrap();
        let b = Tensor::from_slice(&cpu, &uniform(3, 12, -1.0, 1.0), &bias_shape).unwrap();
        let g = Graph::new();
        let out = g
            .input("x", &[3, 17, 9])
            .matmul(&g.input("w", &[9, 12]))
            .unwrap()
            .add(&g.input("b", &bias_shape))
            .unwrap()
            .relu()
            .unwrap();
        let feeds = [("x", &x), ("w", &w), ("b", &b)];
        let (got, entries) = run(&dev, &g, &out, &feeds);
        assert_eq!(entries.len(), 1, "bias {bias_shape:?}: {entries:?}");
        let (want, _) = run(&cpu, &g, &out, &feeds);
        assert_close(
            &format!("batched, bias {bias_shape:?}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn relu_gradient_mask_is_stored_by_the_product() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (i, &(m, k, n)) in [(1usize, 1usize, 1usize), (255, 10, 128), (33, 65, 66)]
        .iter()
        .enumerate()
    {
        let d =
            Tensor::from_slice(&cpu, &uniform(10 + i as u64, m * k, -1.0, 1.0), &[m, k]).unwrap();
        let w =
            Tensor::from_slice(&cpu, &uniform(20 + i as u64, n * k, -1.0, 1.0), &[n, k]).unwrap();
        // The layer's output: zeros (masked), -0.0, negatives and positives.
        let mut ys = uniform(30 + i as u64, m * n, -1.0, 1.0);
        for (j, v) in ys.iter_mut().enumerate() {
            match j % 5 {
                0 => *v = 0.0,
                1 => *v = -0.0,
                _ => {}
            }
        }
        let y = Tensor::from_slice(&cpu, &ys, &[m, n]).unwrap();
        let g = Graph::new();
        let mask = g
            .input("y", &[m, n])
            .scalar(BinaryOp::Gt, 0.0, false)
            .unwrap();
        let out = g
            .input("d", &[m, k])
            .matmul_t(&g.input("w", &[n, k]), false, true)
            .unwrap()
            .mul(&mask)
            .unwrap();
        let feeds = [("d", &d), ("w", &w), ("y", &y)];
        let (got, entries) = run(&dev, &g, &out, &feeds);
        assert_eq!(entries.len(), 1, "{entries:?}");
        let (dg, wg, yg) = (
            d.to_device(&dev).unwrap(),
            w.to_device(&dev).unwrap(),
            y.to_device(&dev).unwrap(),
        );
        let unfused = dg
            .matmul_t(&wg, false, true)
            .unwrap()
            .mul(&yg.binary_scalar(BinaryOp::Gt, 0.0, false).unwrap())
            .unwrap();
        assert_eq!(
            bits(&got),
            bits(&unfused.to_vec::<f32>().unwrap()),
            "{m}x{k}x{n}"
        );
        let (want, _) = run(&cpu, &g, &out, &feeds);
        assert_close(&format!("mask {m}x{k}x{n}"), &got, &want, 1e-4, 1e-4);
        assert!(
            got.iter().zip(&ys).all(|(v, y)| *y > 0.0 || *v == 0.0),
            "masked to 0"
        );
    }
}

#[test]
fn values_asked_for_or_used_twice_are_not_folded() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let x = Tensor::from_slice(&cpu, &uniform(1, 6 * 5, -1.0, 1.0), &[6, 5]).unwrap();
    let w = Tensor::from_slice(&cpu, &uniform(2, 5 * 4, -1.0, 1.0), &[5, 4]).unwrap();
    let b = Tensor::from_slice(&cpu, &uniform(3, 6, -1.0, 1.0), &[6, 1]).unwrap();
    let feeds = [("x", &x), ("w", &w), ("b", &b)];
    let g = Graph::new();
    let xw = g
        .input("x", &[6, 5])
        .matmul(&g.input("w", &[5, 4]))
        .unwrap();
    // A bias along columns (6, 1) is one value per row of the product: the per-row shift
    // of a convolution's epilogue, so also stored by the product.
    let col = xw.add(&g.input("b", &[6, 1])).unwrap();
    let (got, entries) = run(&dev, &g, &col, &feeds);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (want, _) = run(&cpu, &g, &col, &feeds);
    assert_close("column bias", &got, &want, 1e-5, 1e-5);
    // The product asked for beside the layer: it is stored, and the layer reads it.
    let bb = Tensor::from_slice(&cpu, &uniform(4, 4, -1.0, 1.0), &[4]).unwrap();
    let feeds2 = [("x", &x), ("w", &w), ("bb", &bb)];
    let g2 = Graph::new();
    let xw2 = g2
        .input("x", &[6, 5])
        .matmul(&g2.input("w", &[5, 4]))
        .unwrap();
    let layer = xw2.add(&g2.input("bb", &[4])).unwrap().relu().unwrap();
    let exe = dev.compile(&g2, &[&layer, &xw2], None).unwrap();
    assert_eq!(
        exe.dispatch_entries().len(),
        2,
        "{:?}",
        exe.dispatch_entries()
    );
    let moved: Vec<Tensor> = feeds2
        .iter()
        .map(|(_, t)| t.to_device(&dev).unwrap())
        .collect();
    let named: Vec<(&str, &Tensor)> = feeds2.iter().map(|f| f.0).zip(&moved).collect();
    let outs = exe.run(&named).unwrap();
    let want = cpu
        .compile(&g2, &[&layer, &xw2], None)
        .unwrap()
        .run(&feeds2)
        .unwrap();
    for (o, name) in [(0usize, "layer"), (1, "product")] {
        assert_close(
            name,
            &outs[o].to_vec::<f32>().unwrap(),
            &want[o].to_vec::<f32>().unwrap(),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn a_cross_entropy_mean_is_one_dispatch() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (rows, classes) in [(1usize, 1usize), (256, 10), (65, 3)] {
        let x = Tensor::from_slice(
            &cpu,
            &uniform(rows as u64, rows * classes, -4.0, 4.0),
            &[rows, classes],
        )
        .unwrap();
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 7) % classes) as i32).collect();
        let y = Tensor::from_slice(&cpu, &labels, &[rows]).unwrap();
        for mean in [true, false] {
            let g = Graph::new();
            let losses = g
                .input("x", &[rows, classes])
                .cross_entropy(&g.input_i32("y", &[rows]))
                .unwrap();
            let loss = if mean {
                losses.mean().unwrap()
            } else {
                losses.sum().unwrap()
            };
            let feeds = [("x", &x), ("y", &y)];
            let (got, entries) = run(&dev, &g, &loss, &feeds);
            assert_eq!(
                entries,
                ["cross_entropy_reduced"],
                "{rows}x{classes} mean={mean}"
            );
            let (want, _) = run(&cpu, &g, &loss, &feeds);
            assert_close(
                &format!("ce {rows}x{classes} mean={mean}"),
                &got,
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// `cross_entropy(x, y).mean()` (or `.sum()`) and its gradient with respect to the logits:
/// one dispatch when the gradient's upstream is the mean's (sum's) constant; a loss that
/// feeds on (its square) keeps the separate gradient kernel. Values against the reference.
#[test]
fn a_loss_and_its_gradient_are_one_dispatch() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (rows, classes, squared) in [
        (1usize, 1usize, false),
        (256, 10, false),
        (65, 3, false),
        (64, 64, false),
        (129, 100, false),
        (300, 1000, false), // 5 · 3002 = 15,010 steps: still fused
        (300, 1100, false), // 5 · 3302 = 16,510: past the fused walk, the loss kernel, then the gradient's
        (33, 7, true),
    ] {
        let x = uniform(rows as u64, rows * classes, -4.0, 4.0);
        let x = Tensor::from_slice(&cpu, &x, &[rows, classes]).unwrap();
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 7) % classes) as i32).collect();
        let y = Tensor::from_slice(&cpu, &labels, &[rows]).unwrap();
        for mean in [true, false] {
            let g = Graph::new();
            let logits = g.input("x", &[rows, classes]);
            let losses = logits.cross_entropy(&g.input_i32("y", &[rows])).unwrap();
            let mut loss = if mean { losses.mean() } else { losses.sum() }.unwrap();
            if squared {
                loss = loss.square().unwrap();
            }
            let dx = &wgrad::autodiff::grad(&loss, &[&logits]).unwrap()[0];
            let label = format!("{rows}x{classes} mean={mean} squared={squared}");
            let outs = |dev: &Device| -> (Vec<Vec<f32>>, Vec<String>) {
                let exe = dev.compile(&g, &[&loss, dx], None).unwrap();
                let (xd, yd) = (x.to_device(dev).unwrap(), y.to_device(dev).unwrap());
                let got = exe.run(&[("x", &xd), ("y", &yd)]).unwrap();
                let got = got.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
                (got, exe.dispatch_entries())
            };
            let (got, entries) = outs(&dev);
            let fused = entries
                .iter()
                .any(|e| e == "cross_entropy_reduced_backward");
            assert_eq!(
                fused,
                // The fused kernel's walk limit (src/ops/loss.rs, `reduced_steps`): per 64
                // rows, a row step, the row's logsumexp twice and its gradient's stores.
                !squared && rows.div_ceil(64) * (3 * classes + 2) <= 16384,
                "{label}: {entries:?}"
            );
            if fused {
                assert_eq!(entries.len(), 1, "{label}: {entries:?}");
            }
            let (want, _) = outs(&cpu);
            assert_close(&format!("loss {label}"), &got[0], &want[0], 1e-5, 1e-5);
            assert_close(&format!("dx {label}"), &got[1], &want[1], 1e-5, 1e-5);
        }
    }
}

/// The gradient of a bias added to the logits (the gradient's sum over rows) comes out of
/// the loss's gradient kernel, `cross_entropy_reduced_backward_sums`, with no reduction of
/// its own, while the walk fits (then a reduction sums it). Values against the reference:
/// a bias of (classes) and of (1, classes), several classes per invocation (100), and a
/// walk past the budget.
#[test]
fn a_bias_gradient_comes_from_the_loss_gradient_kernel() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    for (rows, classes, keep_row) in [
        (256usize, 10usize, false),
        (65, 3, true),
        (64, 64, false),
        (129, 100, true),
        (300, 1000, false), // 15,010 steps + 16 · 300 for the sums: past the walk
    ] {
        let x = uniform(rows as u64 + 7, rows * classes, -4.0, 4.0);
        let x = Tensor::from_slice(&cpu, &x, &[rows, classes]).unwrap();
        let bias_shape = if keep_row {
            vec![1, classes]
        } else {
            vec![classes]
        };
        let b = uniform(classes as u64, classes, -1.0, 1.0);
        let b = Tensor::from_slice(&cpu, &b, &bias_shape).unwrap();
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 5) % classes) as i32).collect();
        let y = Tensor::from_slice(&cpu, &labels, &[rows]).unwrap();
        let g = Graph::new();
        let xv = g.input("x", &[rows, classes]);
        let bv = g.input("b", &bias_shape);
        let loss = xv
            .add(&bv)
            .unwrap()
            .cross_entropy(&g.input_i32("y", &[rows]))
            .unwrap()
            .mean()
            .unwrap();
        let grads = wgrad::autodiff::grad(&loss, &[&xv, &bv]).unwrap();
        let label = format!("{rows}x{classes} bias {bias_shape:?}");
        let outs = |dev: &Device| -> (Vec<Vec<f32>>, Vec<String>) {
            let exe = dev
                .compile(&g, &[&loss, &grads[0], &grads[1]], None)
                .unwrap();
            let feeds = [x.to_device(dev).unwrap(), b.to_device(dev).unwrap()];
            let yd = y.to_device(dev).unwrap();
            let got = exe
                .run(&[("x", &feeds[0]), ("b", &feeds[1]), ("y", &yd)])
                .unwrap();
            let got = got.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
            (got, exe.dispatch_entries())
        };
        let (got, entries) = outs(&dev);
        let walk = rows.div_ceil(64) * (3 * classes + 2) + classes.div_ceil(64) * rows;
        let summed = entries
            .iter()
            .any(|e| e == "cross_entropy_reduced_backward_sums");
        assert_eq!(summed, walk <= 16384, "{label}: {entries:?}");
        let reductions = entries.iter().filter(|e| e.starts_with("reduce")).count();
        assert_eq!(reductions == 0, summed, "{label}: {entries:?}");
        let (want, _) = outs(&cpu);
        assert_close(&format!("loss {label}"), &got[0], &want[0], 1e-5, 1e-5);
        assert_close(&format!("dx {label}"), &got[1], &want[1], 1e-5, 1e-5);
        assert_close(&format!("db {label}"), &got[2], &want[2], 1e-5, 1e-5);
    }
}

#[test]
fn a_bad_label_through_the_fused_loss_and_gradient_is_an_error() {
    let Some(dev) = gpu() else { return };
    let g = Graph::new();
    let logits = g.input("x", &[2, 3]);
    let loss = logits
        .cross_entropy(&g.input_i32("y", &[2]))
        .unwrap()
        .mean()
        .unwrap();
    let dx = &wgrad::autodiff::grad(&loss, &[&logits]).unwrap()[0];
    let exe = dev.compile(&g, &[&loss, dx], None).unwrap();
    assert!(exe
        .dispatch_entries()
        .iter()
        .any(|e| e == "cross_entropy_reduced_backward"));
    let x = Tensor::zeros(&dev, &[2, 3]).unwrap();
    let bad = Tensor::from_slice(&dev, &[0i32, 3], &[2]).unwrap();
    let e = exe.run(&[("x", &x), ("y", &bad)]).unwrap()[0]
        .to_vec::<f32>()
        .unwrap_err();
    assert!(e.to_string().contains("label 3 outside 0..3"), "{e}");
    let good = Tensor::from_slice(&dev, &[0i32, 2], &[2]).unwrap();
    let out = exe.run(&[("x", &x), ("y", &good)]).unwrap();
    assert!((out[0].item().unwrap() - 3f32.ln()).abs() < 1e-6);
}
