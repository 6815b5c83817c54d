//! Compiled inference plans' padded patches (`ProductOp::Patches`, src/epilogue.rs;
//! `Tensor::conv2d_patches_epilogue`, src/ops/conv.rs) against the f64 CPU reference (the
//! graph's im2col and product, run node by node): patch rows not a multiple of 4 (a
//! 3-channel 7×7 stem, a 5×5 window, an 11-channel strided 3×3 with uneven pads) are written
//! padded by im2col, so the product copies no operand into padded rows but the small
//! filters. (Reductions C·KH·KW of at most 64 take the implicit-GEMM kernel instead, with no
//! patches at all, so every case here reduces over more.)
//!
//! Each convolution carries the epilogue a folded batch norm leaves (a per-channel scale and
//! shift), a residual where asked, and a ReLU.

mod common;

use common::{assert_close, gpu, run_compiled, uniform};
use wgrad::{Conv2d, Device, Graph, MatmulVariant, Tensor};

/// conv → ·a[channel] → +c[channel] (→ + residual) → ReLU, compiled for inference: its
/// output and the plan's dispatch entries.
fn block(
    dev: &Device,
    xs: [usize; 4],
    ws: [usize; 4],
    geom: Conv2d,
    residual: bool,
) -> (Vec<f32>, Vec<String>) {
    let f = ws[0];
    let (oh, ow) = geom.output_size("test", &xs).unwrap();
    let ys = [xs[0], f, oh, ow];
    let g = Graph::new();
    let x = g.input("x", &xs);
    let w = g.input("w", &ws);
    let a = g.input("a", &[1, f, 1, 1]);
    let c = g.input("c", &[1, f, 1, 1]);
    let r = g.input("r", &ys);
    let mut y = x
        .conv2d(&w, geom)
        .unwrap()
        .mul(&a)
        .unwrap()
        .add(&c)
        .unwrap();
    if residual {
        y = y.add(&r).unwrap();
    }
    let y = y.relu().unwrap();
    let cpu = Device::cpu();
    let t = |seed: u64, s: &[usize], lo: f32| {
        Tensor::from_slice(&cpu, &uniform(seed, s.iter().product(), lo, 1.0), s).unwrap()
    };
    let feeds = [
        ("x", t(1, &xs, -1.0)),
        ("w", t(2, &ws, -1.0)),
        ("a", t(3, &[1, f, 1, 1], 0.5)),
        ("c", t(4, &[1, f, 1, 1], -1.0)),
        ("r", t(5, &ys, -1.0)),
    ];
    let named: Vec<(&str, &Tensor)> = feeds
        .iter()
        .filter(|(n, _)| residual || *n != "r")
        .map(|(n, t)| (*n, t))
        .collect();
    let (mut got, exe) = run_compiled(dev, &g, &[&y], &named);
    (got.remove(0), exe.dispatch_entries())
}

fn count(entries: &[String], entry: &str) -> usize {
    entries
        .iter()
        .filter(|e| e.trim_end_matches(".tex") == entry)
        .count()
}

#[test]
fn patch_rows_not_a_multiple_of_4_are_written_padded() {
    let Some(dev) = gpu() else { return };
    let pads = matches!(
        MatmulVariant::Auto.resolve(&dev).unwrap(),
        MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures
    );
    let stem = Conv2d::new(7, 7).stride(2).padding(3);
    let strided = Conv2d::new(3, 3).stride(2).pads(1, 0, 0, 1);
    for (xs, f, geom, residual) in [
        ([1, 3, 20, 18], 16, stem, false), // a stem: 147 per row
        ([2, 3, 9, 11], 9, Conv2d::new(5, 5).padding(2), true), // 75 per row
        ([1, 11, 8, 9], 12, strided, true), // 99 per row
    ] {
        let ws = [f, xs[1], geom.kh, geom.kw];
        let label = format!("{xs:?} {f} {geom:?} residual {residual}");
        let (want, _) = block(&Device::cpu(), xs, ws, geom, residual);
        let (got, entries) = block(&dev, xs, ws, geom, residual);
        let ck = (xs[1] * geom.kh * geom.kw) as f32;
        assert_close(&label, &got, &want, 1e-5 * ck, 1e-4);
        if pads {
            // The filters' (F, CK) → (F, CK4) copy only: the patches come padded.
            assert_eq!(
                count(&entries, "matmul_pad_rows"),
                1,
                "{label}: {entries:?}"
            );
            assert_eq!(count(&entries, "im2col_rows4"), 1, "{label}: {entries:?}");
        }
    }
}
