//! Winograd F(2×2, 3×3) and F(4×4, 3×3) convolution (`Tensor::conv2d_winograd_with`,
//! src/ops/winograd.rs), each, against
//! the direct convolution's f64 CPU reference (`Tensor::conv2d` on the CPU device: im2col and
//! a product, no transforms), on awkward shapes: batch 1, odd and non-multiple-of-4 channel
//! counts, odd output sizes (tiles cut by the edge), tile counts not a multiple of 4, every
//! padding from 0 to 2 and asymmetric pads. Also its epilogue, and compiled inference plans:
//! a 3×3 convolution with a folded batch norm and a ReLU runs as the three transforms and one
//! product, with no im2col; an inference plan transforms a parameter's filters once and again
//! after `set_param`, never running on stale ones; a training graph keeps im2col (its weight
//! gradient reads the patches).

mod common;

use common::{assert_close, conv_block, gpu, uniform};
use wgrad::autodiff::grad;
use wgrad::{Conv2d, Device, Graph, Init, Tensor, WinogradTile};

/// (x (N, C, H, W), filters F, window) cases.
fn cases() -> Vec<([usize; 4], usize, Conv2d)> {
    let g = Conv2d::new(3, 3);
    vec![
        ([1, 1, 3, 3], 1, g),                    // one output, one tile cut to 1x1
        ([1, 3, 5, 7], 5, g.padding(1)),         // odd output 5x7
        ([2, 5, 9, 6], 7, g),                    // no padding, 7x4 outputs
        ([1, 6, 8, 8], 4, g.padding(2)),         // output 10x10
        ([3, 7, 11, 10], 9, g.pads(1, 0, 2, 1)), // asymmetric pads
        ([1, 17, 13, 15], 33, g.padding(1)),     // 13x15: 56 tiles
        ([2, 64, 14, 14], 64, g.padding(1)),     // ResNet-like, T = 98
        ([1, 130, 9, 9], 3, g.padding(1)),       // C past 128, F = 3
        ([1, 20, 7, 7], 130, g.padding(1)),      // T4 = 16 (4): products' edge kernels
        // Rows a multiple of 4 at left padding 1: F(4x4) reads patch rows as vec4s (the
        // first and last vec4 of a row cut by the image's edges, rows outside on top).
        ([2, 5, 8, 12], 6, g.padding(1)),
        ([1, 3, 9, 16], 4, g.pads(0, 1, 2, 1)),
    ]
}

fn direct(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], geom: Conv2d) -> Vec<f32> {
    let cpu = Device::cpu();
    let xt = Tensor::from_slice(&cpu, x, &xs).unwrap();
    let wt = Tensor::from_slice(&cpu, w, &ws).unwrap();
    xt.conv2d(&wt, geom).unwrap().to_vec::<f32>().unwrap()
}

const TILES: [WinogradTile; 2] = [WinogradTile::F2x2, WinogradTile::F4x4];

#[test]
fn cpu_reference_matches_the_direct_convolution() {
    let cpu = Device::cpu();
    for tile in TILES {
        for (i, (xs, f, geom)) in cases().into_iter().enumerate() {
            let ws = [f, xs[1], 3, 3];
            let x = uniform(10 + i as u64, xs.iter().product(), -1.0, 1.0);
            let w = uniform(50 + i as u64, ws.iter().product(), -1.0, 1.0);
            let got = Tensor::from_slice(&cpu, &x, &xs)
                .unwrap()
                .conv2d_winograd_with(&Tensor::from_slice(&cpu, &w, &ws).unwrap(), geom, tile)
                .unwrap();
            assert_close(
                &format!("cpu winograd {tile:?} {xs:?} {f} {geom:?}"),
                &got.to_vec::<f32>().unwrap(),
                &direct(&x, xs, &w, ws, geom),
                1e-6,
                1e-6,
            );
        }
    }
}

/// The absolute tolerance of a GPU Winograd convolution over C channels of values in
/// [-1, 1): sums of 9C products, f32 rounding amplified by the transforms' constants (±½ for
/// F(2×2); up to 5 in Bᵀ and 8 in Aᵀ for F(4×4), whose error is known to be about 10x
/// larger).
fn gpu_tolerance(tile: WinogradTile, c: usize) -> f32 {
    let per_channel = match tile {
        WinogradTile::F2x2 => 2e-6,
        WinogradTile::F4x4 => 2e-5,
    };
    per_channel * 9.0 * c as f32
}

#[test]
fn gpu_matches_the_direct_convolution() {
    let Some(dev) = gpu() else { return };
    for tile in TILES {
        for (i, (xs, f, geom)) in cases().into_iter().enumerate() {
            let ws = [f, xs[1], 3, 3];
            let x = uniform(10 + i as u64, xs.iter().product(), -1.0, 1.0);
            let w = uniform(50 + i as u64, ws.iter().product(), -1.0, 1.0);
            let got = Tensor::from_slice(&dev, &x, &xs)
                .unwrap()
                .conv2d_winograd_with(&Tensor::from_slice(&dev, &w, &ws).unwrap(), geom, tile)
                .unwrap();
            assert_eq!(got.shape(), geom_out(xs, f, geom), "{xs:?} {geom:?}");
            assert_close(
                &format!("gpu winograd {tile:?} {xs:?} {f} {geom:?}"),
                &got.to_vec::<f32>().unwrap(),
                &direct(&x, xs, &w, ws, geom),
                gpu_tolerance(tile, xs[1]),
                1e-4,
            );
        }
    }
}

fn geom_out(xs: [usize; 4], f: usize, g: Conv2d) -> Vec<usize> {
    let (oh, ow) = g.output_size("test", &xs).unwrap();
    vec![xs[0], f, oh, ow]
}

#[test]
fn other_geometries_and_bad_shapes_are_errors_naming_the_op() {
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[1, 4, 8, 8]).unwrap();
    let w = Tensor::zeros(&cpu, &[2, 4, 3, 3]).unwrap();
    for g in [
        Conv2d::new(3, 3).stride(2),
        Conv2d::new(3, 3).dilation(2),
        Conv2d::new(5, 5),
        Conv2d::new(3, 3).groups(2),
    ] {
        let e = x.conv2d_winograd(&w, g).unwrap_err().to_string();
        assert!(e.contains("conv2d_winograd"), "{e}");
    }
    let e = x
        .conv2d_winograd(
            &Tensor::zeros(&cpu, &[2, 3, 3, 3]).unwrap(),
            Conv2d::new(3, 3),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[1, 4, 8, 8]") && e.contains("[2, 3, 3, 3]"),
        "{e}"
    );
}

/// conv3x3 (padding 1) → ·a[channel] → +c[channel] (→ + residual) → ReLU, compiled for
/// inference (`common::conv_block`).
fn block(dev: &Device, xs: [usize; 4], f: usize, residual: bool) -> (Vec<f32>, Vec<String>) {
    let geom = Conv2d::new(3, 3).padding(1);
    conv_block(dev, xs, [f, xs[1], 3, 3], geom, residual)
}

#[test]
fn compiled_inference_runs_winograd_with_the_epilogue() {
    let Some(dev) = gpu() else { return };
    let [f2, f4] = [
        ["winograd_filter", "winograd_input", "winograd_output"],
        ["winograd4_filter", "winograd4_input", "winograd4_output"],
    ];
    for (xs, f, residual, want_entries) in [
        ([1, 12, 15, 13], 10, false, f2),
        ([2, 8, 9, 9], 6, true, f2),
        // 24x24: 36 F(4x4) tiles (36 x 64 product columns against 16 x 192), rows of
        // whole vec4s (the _v4 output); 30x30: 64 tiles, rows cut by the edge.
        ([1, 8, 24, 24], 6, true, f4),
        ([1, 8, 30, 30], 5, true, f4),
        // 7x7 with 128 filters: 16 F(2x2) tiles, whose products take the edge kernels' 16
        // columns (16 x 16 against the direct 9 x 64).
        ([1, 8, 7, 7], 128, true, f2),
    ] {
        let (want, _) = block(&Device::cpu(), xs, f, residual);
        let (got, entries) = block(&dev, xs, f, residual);
        let label = format!("{xs:?} {f} residual {residual}");
        let tol = gpu_tolerance(WinogradTile::F4x4, xs[1]);
        assert_close(&label, &got, &want, tol, 1e-4);
        // A transform that reads its source through a texture is listed as `entry.tex`: where
        // products read textures (lavapipe) and the plan kept its textured form (the faster
        // of the two, `Executor::read_timing`), then every transform but the filter's reads
        // its source through one; storage reads elsewhere.
        let textures = entries.iter().any(|e| e.ends_with(".tex"));
        for e in want_entries {
            let e = match e {
                "winograd4_output" if xs[3] % 4 == 0 => "winograd4_output_v4",
                // Rows of whole vec4s at left padding 1: patch rows read as vec4s.
                "winograd4_input" if xs[3] % 4 == 0 => "winograd4_input_w4",
                e => e,
            };
            let textured = textures && !e.ends_with("filter");
            let listed = if textured {
                format!("{e}.tex")
            } else {
                e.to_string()
            };
            assert_eq!(
                entries.iter().filter(|x| **x == listed).count(),
                1,
                "{label}: {entries:?}"
            );
        }
        assert!(
            !entries.iter().any(|e| e.contains("im2col")),
            "{label}: {entries:?}"
        );
        // The epilogue is in the output transform: nothing element-wise runs.
        assert!(
            !entries.iter().any(|e| e.starts_with("binary")
                || e.starts_with("unary")
                || e.starts_with("fused")),
            "{label}: {entries:?}"
        );
    }
}

/// An inference plan holds a parameter's transformed filters (no `winograd_filter` per run)
/// and transforms them again when `set_param` replaces the weights: each run after a
/// `set_param` must match the direct convolution with the new weights, recorded or not.
#[test]
fn compiled_inference_transforms_filters_again_after_set_param() {
    let Some(dev) = gpu() else { return };
    // 14x13: 49 F(2x2) tiles; 24x24: 36 F(4x4) tiles (its products fill fewer columns).
    // 81 > 64 patch columns, so not the implicit kernel.
    for (xs, input, filter) in [
        ([1, 9, 14, 13], "winograd_input", "winograd_filter"),
        // (Rows of 24: whole vec4s, so the input transform reads patch rows as vec4s.)
        ([1, 9, 24, 24], "winograd4_input_w4", "winograd4_filter"),
    ] {
        let ws = [5, 9, 3, 3];
        let geom = Conv2d::new(3, 3).padding(1);
        let g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.param("w", &ws, Init::Zeros);
        let y = x.conv2d(&w, geom).unwrap();
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let entries = exe.dispatch_entries();
        if exe.is_recorded() {
            assert!(
                entries.iter().any(|e| e.trim_end_matches(".tex") == input),
                "{entries:?}"
            );
            assert!(!entries.iter().any(|e| e == filter), "{entries:?}");
        }
        let xv = uniform(1, xs.iter().product(), -1.0, 1.0);
        let xt = Tensor::from_slice(&dev, &xv, &xs).unwrap();
        let zeros = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
        assert!(zeros.iter().all(|&v| v == 0.0), "zero weights");
        for seed in [2, 3] {
            let wv = uniform(seed, ws.iter().product(), -1.0, 1.0);
            exe.set_param("w", &Tensor::from_slice(&dev, &wv, &ws).unwrap())
                .unwrap();
            for run in 0..2 {
                let got = exe.run(&[("x", &xt)]).unwrap()[0].to_vec::<f32>().unwrap();
                let label = format!("{xs:?} weights {seed}, run {run}");
                let want = direct(&xv, xs, &wv, ws, geom);
                assert_close(
                    &label,
                    &got,
                    &want,
                    gpu_tolerance(WinogradTile::F4x4, 9),
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn compiled_training_keeps_im2col() {
    let Some(dev) = gpu() else { return };
    let g = Graph::new();
    let x = g.input("x", &[1, 8, 12, 12]);
    let w = g.param("w", &[4, 8, 3, 3], Init::Zeros);
    let loss = x
        .conv2d(&w, Conv2d::new(3, 3).padding(1))
        .unwrap()
        .relu()
        .unwrap()
        .sum()
        .unwrap();
    let gw = grad(&loss, &[&w]).unwrap().remove(0);
    let exe = dev.compile(&g, &[&loss, &gw], None).unwrap();
    let xt = Tensor::from_slice(&dev, &uniform(7, 8 * 144, -1.0, 1.0), &[1, 8, 12, 12]).unwrap();
    exe.set_param(
        "w",
        &Tensor::from_slice(&dev, &uniform(8, 288, -1.0, 1.0), &[4, 8, 3, 3]).unwrap(),
    )
    .unwrap();
    exe.run(&[("x", &xt)]).unwrap();
    let entries = exe.dispatch_entries();
    assert!(
        !entries.iter().any(|e| e.starts_with("winograd")),
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e.contains("im2col")), "{entries:?}");
}
