//! Convolution epilogues (src/epilogue.rs): on a GPU, a convolution's product applies
//! `relu?(C·a[channel] + c[channel] + residual)` as it stores its output — a batch norm
//! folded to one per-channel `x·a + c`, a convolution's bias, a residual connection, a ReLU —
//! so the whole block is one product dispatch. Checked against the CPU reference (which
//! runs every node by itself) on awkward shapes, and against onnxruntime for imported
//! conv → BatchNormalization (→ Add) (→ Relu) blocks (tests/fixtures/onnx/gen_conv_bn.py),
//! with the weights as constants and as trainable parameters.

mod common;

use common::{assert_close, gpu, run_compiled, uniform};
use wgrad::onnx::{Model, Weights};
use wgrad::{Conv2d, Device, Graph, Tensor, Var};

/// The element-wise kernels a run dispatches (none when every op went into an epilogue).
fn elementwise(entries: &[String]) -> Vec<&String> {
    entries
        .iter()
        .filter(|e| {
            e.starts_with("fused")
                || e.starts_with("unary")
                || e.starts_with("scalar")
                || e.starts_with("binary")
        })
        .collect()
}

fn products(entries: &[String]) -> usize {
    entries
        .iter()
        .filter(|e| e.starts_with("matmul_forward"))
        .count()
}

/// One conv layer's epilogue parts.
#[derive(Clone, Copy, Debug)]
struct Parts {
    /// `[F, 1, 1]` (wgrad::nn's shape) rather than `[1, F, 1, 1]` (the ONNX importer's).
    rank3: bool,
    scale: bool,
    shift: bool,
    residual: bool,
    relu: bool,
}

/// x (N, C, H, W) ⊛ w (F, C, k, k) then the parts; returns the output and its feeds.
fn block(
    g: &Graph,
    x: [usize; 4],
    f: usize,
    geom: Conv2d,
    parts: Parts,
) -> (Var, Vec<(String, Tensor)>) {
    let cpu = Device::cpu();
    let [n, c, _, _] = x;
    let w_shape = [f, c / geom.groups, geom.kh, geom.kw];
    let mut feeds = Vec::new();
    let mut feed = |name: &str, shape: &[usize], lo: f32, hi: f32| -> Var {
        let seed = feeds.len() as u64 * 7 + 3;
        let numel = shape.iter().product();
        let t = Tensor::from_slice(&cpu, &uniform(seed, numel, lo, hi), shape).unwrap();
        feeds.push((name.to_string(), t));
        g.input(name, shape)
    };
    let xv = feed("x", &x, -1.0, 1.0);
    let wv = feed("w", &w_shape, -0.5, 0.5);
    let mut y = xv.conv2d(&wv, geom).unwrap();
    let ch: Vec<usize> = if parts.rank3 {
        vec![f, 1, 1]
    } else {
        vec![1, f, 1, 1]
    };
    if parts.scale {
        y = y.mul(&feed("a", &ch, 0.5, 1.5)).unwrap();
    }
    if parts.shift {
        y = y.add(&feed("c", &ch, -1.0, 1.0)).unwrap();
    }
    if parts.residual {
        let shape = y.shape().to_vec();
        y = y.add(&feed("r", &shape, -1.0, 1.0)).unwrap();
    }
    if parts.relu {
        y = y.relu().unwrap();
    }
    assert_eq!(y.shape()[0], n);
    (y, feeds)
}

fn run(dev: &Device, g: &Graph, y: &Var, feeds: &[(String, Tensor)]) -> (Vec<f32>, Vec<String>) {
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let (mut got, exe) = run_compiled(dev, g, &[y], &named);
    (got.remove(0), exe.dispatch_entries())
}

#[test]
fn conv_batch_norm_residual_relu_is_one_product() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    // (x, filters, window): batch 1 and 2, odd channel counts, channels not a multiple of 4,
    // 1×1 (a plain W·x product), 3×3 stride 2 on odd sizes, 3×3 stride 1 padded, 7×7 stride 2.
    let layers: [([usize; 4], usize, Conv2d); 5] = [
        ([1, 5, 9, 7], 7, Conv2d::new(1, 1)),
        ([2, 3, 7, 7], 13, Conv2d::new(1, 1)),
        ([1, 6, 11, 9], 9, Conv2d::new(3, 3).stride(2).padding(1)),
        ([2, 4, 6, 6], 5, Conv2d::new(3, 3).padding(1)),
        ([1, 3, 15, 15], 6, Conv2d::new(7, 7).stride(2).padding(3)),
    ];
    let t = true;
    let all_parts = [
        Parts {
            rank3: false,
            scale: t,
            shift: t,
            residual: false,
            relu: t,
        },
        Parts {
            rank3: t,
            scale: t,
            shift: t,
            residual: false,
            relu: false,
        },
        Parts {
            rank3: false,
            scale: t,
            shift: t,
            residual: t,
            relu: t,
        },
        Parts {
            rank3: t,
            scale: false,
            shift: t,
            residual: false,
            relu: t,
        },
        Parts {
            rank3: false,
            scale: t,
            shift: false,
            residual: t,
            relu: false,
        },
        Parts {
            rank3: false,
            scale: false,
            shift: false,
            residual: t,
            relu: t,
        },
    ];
    for (x, f, geom) in layers {
        for parts in all_parts {
            let g = Graph::new();
            let (y, feeds) = block(&g, x, f, geom, parts);
            let label = format!("x {x:?}, {f} filters {}x{}, {parts:?}", geom.kh, geom.kw);
            let (got, entries) = run(&dev, &g, &y, &feeds);
            assert_fused(&label, &entries, 1);
            let (want, _) = run(&cpu, &g, &y, &feeds);
            assert_close(&label, &got, &want, 1e-4, 1e-4);
        }
    }
}

/// Values used twice or asked for stay computed, grouped convolutions (whose per-row
/// operands do not follow the product's rows) stay unfused, and the results stay right.
#[test]
fn shared_values_and_grouped_convolutions_are_not_folded() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let parts = Parts {
        rank3: false,
        scale: true,
        shift: true,
        residual: false,
        relu: true,
    };
    // The batch-normed value is also an output: the ReLU runs after the product alone.
    let g = Graph::new();
    let (y, feeds) = block(&g, [1, 5, 9, 7], 7, Conv2d::new(1, 1), parts);
    let pre = g.var(g.nodes()[y.id()].inputs[0]).unwrap(); // the shift's add, ReLU's input
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let (got, exe) = run_compiled(&dev, &g, &[&y, &pre], &named);
    let (want, _) = run_compiled(&cpu, &g, &[&y, &pre], &named);
    let entries = exe.dispatch_entries();
    assert_eq!(products(&entries), 1, "{entries:?}");
    assert_eq!(elementwise(&entries).len(), 1, "{entries:?}");
    for k in 0..2 {
        assert_close(&format!("output {k}"), &got[k], &want[k], 1e-4, 1e-4);
    }
    // Grouped through im2col (C/G·KH·KW = 72, past the implicit kernel's short
    // reductions): (G, F/G, ·) products, one per group; the per-channel ops run after them.
    let g = Graph::new();
    let geom = Conv2d::new(3, 3).padding(1).groups(2);
    let (y, feeds) = block(&g, [2, 16, 8, 8], 4, geom, parts);
    let (got, entries) = run(&dev, &g, &y, &feeds);
    assert!(products(&entries) > 0, "{entries:?}");
    assert!(!elementwise(&entries).is_empty(), "{entries:?}");
    let (want, _) = run(&cpu, &g, &y, &feeds);
    assert_close("groups 2 (im2col)", &got, &want, 1e-4, 1e-4);
    // Grouped through the implicit-GEMM kernel (C/G·KH·KW = 27): its output channels are
    // the global filter index, so the per-channel ops join its store.
    let g = Graph::new();
    let (y, feeds) = block(&g, [2, 6, 5, 5], 4, geom, parts);
    let (got, entries) = run(&dev, &g, &y, &feeds);
    assert!(elementwise(&entries).is_empty(), "{entries:?}");
    let (want, _) = run(&cpu, &g, &y, &feeds);
    assert_close("groups 2 (implicit)", &got, &want, 1e-4, 1e-4);
}

/// A training step through conv → bn → relu: the forward values have other users (the
/// gradients), so only what may fuse does, and the gradients match the CPU reference.
#[test]
fn training_through_a_fused_block_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let parts = Parts {
        rank3: true,
        scale: true,
        shift: true,
        residual: true,
        relu: true,
    };
    let g = Graph::new();
    let (y, feeds) = block(
        &g,
        [2, 3, 7, 7],
        5,
        Conv2d::new(3, 3).stride(2).padding(1),
        parts,
    );
    let loss = y.square().unwrap().mean().unwrap();
    let inputs: Vec<Var> = ["x", "w", "a", "c", "r"]
        .iter()
        .map(|name| g.var(input_id(&g, name)).unwrap())
        .collect();
    let refs: Vec<&Var> = inputs.iter().collect();
    let grads = wgrad::autodiff::grad(&loss, &refs).unwrap();
    let mut outs: Vec<&Var> = vec![&loss];
    outs.extend(grads.iter());
    let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let (got, _) = run_compiled(&dev, &g, &outs, &named);
    let (want, _) = run_compiled(&cpu, &g, &outs, &named);
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("output {k}"), a, b, 1e-4, 1e-3);
    }
}

/// The node id of input `name` of `g`.
fn input_id(g: &Graph, name: &str) -> usize {
    g.nodes()
        .iter()
        .position(|n| matches!(&n.op, wgrad::Op::Input(s) if s == name))
        .expect("input")
}

/// Imported conv → BatchNormalization (→ Add) (→ Relu) blocks match onnxruntime, with the
/// weights as constants (the statistics folded at import in f64) and as parameters (folded
/// by graph ops, still trainable), and each conv block is one product on the GPU.
#[test]
fn imported_conv_batch_norm_blocks_match_onnxruntime() {
    // (fixture, products per run: one per conv)
    let cases = [
        ("pw_bn_relu", 1),
        ("pw_bias_bn", 1),
        ("k3s2_bias_bn_relu", 1),
        ("k3s1_bn", 1),
        ("res_identity", 2),
        ("res_project", 3),
    ];
    for (name, convs) in cases {
        for weights in [Weights::Constants, Weights::Params] {
            common::onnx::check_fixture("conv_bn", name, &[], weights, 2e-5, 2e-4);
        }
        let Some(dev) = gpu() else { continue };
        let path = common::onnx::fixture_in("conv_bn", &format!("{name}.onnx"));
        let model = Model::load(path).expect("load");
        let imported = model.import(&[], Weights::Constants).expect("import");
        let outs: Vec<&Var> = imported.outputs.iter().map(|(_, v)| v).collect();
        let exe = dev.compile(&imported.graph, &outs, None).expect("compile");
        let x = wgrad::io::read_npy(
            common::onnx::fixture_in("conv_bn", &format!("{name}.in.x.npy")),
            &dev,
        )
        .unwrap();
        exe.run(&[("x", &x)]).expect("run");
        let entries = exe.dispatch_entries();
        assert_fused(name, &entries, convs);
    }
}

/// `convs` convolutions ran with their BN/residual/ReLU fused: a product applying the
/// epilogue, or (small reductions, where ops::conv_gemm picks implicit GEMM, whose store
/// does not take the epilogue yet) an implicit-GEMM forward followed by at most one fused
/// element-wise kernel.
fn assert_fused(label: &str, entries: &[String], convs: usize) {
    let implicit = entries
        .iter()
        // (Listed `….tex` where the kernel reads its operands through textures: lavapipe.)
        .filter(|e| matches!(e.trim_end_matches(".tex"), "conv_forward" | "conv_forward4"))
        .count();
    assert_eq!(products(entries) + implicit, convs, "{label}: {entries:?}");
    assert!(
        elementwise(entries).len() <= implicit,
        "{label}: {entries:?}"
    );
}

/// A batch-folded convolution (few output positions: one product (F, CK)·(N·L, CK)ᵀ over
/// the batch, then a permute to (N, F, L)) has its bias and its permute done by the
/// product's stores when L is a multiple of 4: no copy runs after it. With L = 9 the
/// permute stays a copy. Forward values and a training step's gradients against the CPU
/// reference.
#[test]
fn a_folded_convolution_stores_its_own_permute() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    // (x, filters, window, L % 4 == 0): the digits CNN's conv2 (L = 16), 2×2 outputs with
    // odd channel counts, 3×3 outputs (L = 9).
    let layers: [([usize; 4], usize, Conv2d, bool); 3] = [
        (
            [8, 16, 8, 8],
            32,
            Conv2d::new(3, 3).stride(2).padding(1),
            true,
        ),
        (
            [3, 13, 4, 4],
            7,
            Conv2d::new(3, 3).stride(2).padding(1),
            true,
        ),
        (
            [2, 17, 6, 6],
            6,
            Conv2d::new(3, 3).stride(2).padding(1),
            false,
        ),
    ];
    for (x_shape, f, geom, fused) in layers {
        let label = format!("{x_shape:?} f={f} {geom:?}");
        let w_shape = [f, x_shape[1], geom.kh, geom.kw];
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let feeds: Vec<(String, Tensor)> = [("x", &x_shape[..]), ("w", &w_shape), ("b", &[f])]
            .iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let v = uniform(11 + k as u64, numel(shape), -1.0, 1.0);
                (
                    name.to_string(),
                    Tensor::from_slice(&cpu, &v, shape).unwrap(),
                )
            })
            .collect();
        let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let g = Graph::new();
        let x = g.input("x", &x_shape);
        let (w, b) = (g.input("w", &w_shape), g.input("b", &[f]));
        let y = x.conv2d_bias(&w, &b, geom).unwrap();
        let (got, exe) = run_compiled(&dev, &g, &[&y], &named);
        let (want, _) = run_compiled(&cpu, &g, &[&y], &named);
        assert_close(&label, &got[0], &want[0], 1e-4, 1e-4);
        let entries = exe.dispatch_entries();
        let copies = entries
            .iter()
            .filter(|e| e.starts_with("strided_copy") || e.starts_with("transpose"))
            .count();
        assert_eq!(products(&entries), 1, "{label}: {entries:?}");
        assert_eq!(copies, usize::from(!fused), "{label}: {entries:?}");
        assert!(elementwise(&entries).is_empty(), "{label}: {entries:?}");
        // Gradients of Σ y·r through the fused forward, against the CPU reference.
        let r_shape = y.shape().to_vec();
        let r =
            Tensor::from_slice(&cpu, &uniform(5, numel(&r_shape), -1.0, 1.0), &r_shape).unwrap();
        let loss = y.mul(&g.input("r", &r_shape)).unwrap().sum().unwrap();
        let grads = wgrad::autodiff::grad(&loss, &[&x, &w, &b]).unwrap();
        let outs: Vec<&Var> = grads.iter().collect();
        let mut named = named.clone();
        named.push(("r", &r));
        let (got, _) = run_compiled(&dev, &g, &outs, &named);
        let (want, _) = run_compiled(&cpu, &g, &outs, &named);
        for (k, (gv, wv)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("{label} gradient {k}"), gv, wv, 1e-4, 1e-4);
        }
    }
}

/// A batch norm after a batch-folded convolution: its input gradient (N, C, L) is what
/// the convolution's products read as (C, N, L), and the gradient's kernel stores it in
/// that order (no copy after it). Every element-wise entry of the kernel (H·W a multiple
/// of 16, 8, 4, or odd), with and without the ReLU, batch 1, odd channel counts; the
/// gradients of p, γ and β against the CPU reference.
#[test]
fn a_batch_norm_gradient_is_stored_channels_first_for_a_folded_convolution() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let cases: [([usize; 4], bool); 5] = [
        ([64, 32, 4, 4], true), // the digits CNN's conv2 and bn2
        ([3, 5, 2, 4], false),
        ([1, 7, 2, 2], true),
        ([2, 3, 3, 3], true),
        ([4, 6, 4, 4], false),
    ];
    for ([n, c, h, w], relu) in cases {
        let label = format!("{:?} relu={relu}", [n, c, h, w]);
        let l = h * w;
        let g = Graph::new();
        let p = g.input("p", &[c, n, l]);
        let (gamma, beta) = (g.input("gamma", &[c]), g.input("beta", &[c]));
        let x = p
            .permute(&[1, 0, 2])
            .unwrap()
            .reshape(&[n, c, h, w])
            .unwrap();
        let (mut y, _) = x.batch_norm_train(&gamma, &beta, 1e-5).unwrap();
        if relu {
            y = y.relu().unwrap();
        }
        let r = g.input("r", &[n, c, h, w]);
        let loss = y.mul(&r).unwrap().sum().unwrap();
        let grads = wgrad::autodiff::grad(&loss, &[&p, &gamma, &beta]).unwrap();
        let outs: Vec<&Var> = grads.iter().collect();
        let shapes: [(&str, Vec<usize>, f32); 4] = [
            ("p", vec![c, n, l], 1.0),
            ("gamma", vec![c], 1.0),
            ("beta", vec![c], 0.5),
            ("r", vec![n, c, h, w], 1.0),
        ];
        let feeds: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(k, (name, shape, span))| {
                let numel = shape.iter().product();
                let v = uniform(31 + k as u64, numel, -*span, *span);
                (
                    name.to_string(),
                    Tensor::from_slice(&cpu, &v, shape).unwrap(),
                )
            })
            .collect();
        let named: Vec<(&str, &Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let (got, exe) = run_compiled(&dev, &g, &outs, &named);
        let (want, _) = run_compiled(&cpu, &g, &outs, &named);
        for (k, (gv, wv)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("{label} gradient {k}"), gv, wv, 1e-4, 1e-4);
        }
        // The forward permute is a copy (none for one image: a reshape); the gradient's is
        // not.
        let entries = exe.dispatch_entries();
        let copies = entries
            .iter()
            .filter(|e| e.starts_with("strided_copy") || e.starts_with("transpose"))
            .count();
        assert_eq!(copies, usize::from(n > 1), "{label}: {entries:?}");
    }
}
