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

use common::{assert_close, conv_block, gpu};
use wgrad::{Conv2d, Device, MatmulVariant};

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
        let (want, _) = conv_block(&Device::cpu(), xs, ws, geom, residual);
        let (got, entries) = conv_block(&dev, xs, ws, geom, residual);
        let ck = (xs[1] * geom.kh * geom.kw) as f32;
        assert_close(&label, &got, &want, 1e-5 * ck, 1e-4);
        if pads {
            // The filters' (F, CK) → (F, CK4) copy only: the patches come padded.
            assert_eq!(
                count(&entries, "matmul_pad_rows"),
                1,
                "{label}: {entries:?}"
            );
            // One im2col writes them: tap by tap, or by kernel rows (src/ops/im2col_window.rs:
            // the stem's 3 channels over rows of whole vec4s).
            let im2col = count(&entries, "im2col_rows4") + count(&entries, "im2col_window");
            assert_eq!(im2col, 1, "{label}: {entries:?}");
        }
    }
}
