//! `conv_layout` (GPU only, `--filter conv_layout`): the measurement behind wgrad's one
//! internal convolution layout (issue 15). For ResNet-50's convolution shapes it times, in
//! one process and alternating, the NCHW convolution wgrad runs today (`Tensor::conv2d`:
//! im2col or a plain product for 1×1, then one product that writes NCHW) against a
//! channels-last one (`Tensor::im2col_nhwc`, then one product (N·L, KH·KW·C)·(F, KH·KW·C)ᵀ
//! that writes NHWC for any batch), and each layout's patch extraction alone.

use std::time::Instant;

use wgrad::{Conv2d, Device, Rng, Tensor};

use super::Figure;

/// (channels, height = width, filters, kernel, stride, padding): the stem, and a 3×3 and
/// the 1×1 convolutions of each ResNet-50 stage.
const LAYERS: [(usize, usize, usize, usize, usize, usize); 8] = [
    (3, 224, 64, 7, 2, 3),
    (64, 56, 64, 3, 1, 1),
    (64, 56, 256, 1, 1, 0),
    (256, 56, 64, 1, 1, 0),
    (128, 28, 128, 3, 1, 1),
    (256, 14, 256, 3, 1, 1),
    (1024, 14, 256, 1, 1, 0),
    (512, 7, 512, 3, 1, 1),
];

/// Best of `reps` runs of `f` (each waited for), after one warm-up run, in ms.
fn best_ms(dev: &Device, reps: usize, f: &dyn Fn() -> wgrad::Result<Tensor>) -> wgrad::Result<f64> {
    drop(f()?);
    dev.synchronize()?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t0 = Instant::now();
        drop(f()?);
        dev.synchronize()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// One figure per (layer, batch 1 and 8): NCHW conv ms, with the NHWC conv and both
/// patch extractions beside it.
pub(super) fn conv_layout(dev: &Device, adapter: String) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut rng = Rng::new(21);
    for (c, hw, f, k, stride, pad) in LAYERS {
        for n in [1usize, 8] {
            let geom = Conv2d::new(k, k).stride(stride).padding(pad);
            let x_nchw = Tensor::from_slice(
                dev,
                &rng.vec_uniform(n * c * hw * hw, -1.0, 1.0),
                &[n, c, hw, hw],
            )?;
            let x_nhwc = x_nchw.permute(&[0, 2, 3, 1])?;
            let w = rng.vec_uniform(f * c * k * k, -0.1, 0.1);
            let w_nchw = Tensor::from_slice(dev, &w, &[f, c, k, k])?;
            // The same filters tap-major: (F, KH, KW, C).
            let w_nhwc = w_nchw.permute(&[0, 2, 3, 1])?.reshape(&[f, k * k * c])?;
            let (oh, ow) = geom.output_size("conv_layout", &[n, c, hw, hw])?;
            let l = oh * ow;
            let pointwise = geom.is_pointwise();
            let nchw = || x_nchw.conv2d(&w_nchw, geom);
            let nhwc = || -> wgrad::Result<Tensor> {
                let rows = if pointwise {
                    x_nhwc.reshape(&[n * l, c])?
                } else {
                    x_nhwc.im2col_nhwc(geom)?.reshape(&[n * l, k * k * c])?
                };
                rows.matmul_t(&w_nhwc, false, true)
            };
            let nchw_cols = || x_nchw.im2col(geom);
            let nhwc_cols = || x_nhwc.im2col_nhwc(geom);
            // Alternate the two layouts, twice, keeping each one's best.
            let (mut a, mut b) = (f64::MAX, f64::MAX);
            for _ in 0..2 {
                a = a.min(best_ms(dev, 3, &nchw)?);
                b = b.min(best_ms(dev, 3, &nhwc)?);
            }
            let (ca, cb) = if pointwise {
                (0.0, 0.0)
            } else {
                (best_ms(dev, 3, &nchw_cols)?, best_ms(dev, 3, &nhwc_cols)?)
            };
            let gflop = 2.0 * (n * l * f * c * k * k) as f64 / 1e9;
            figures.push(Figure {
                op: "conv_layout",
                shape: vec![n, c, hw, hw, f, k, stride],
                device: "gpu",
                adapter: adapter.clone(),
                ms: a,
                rate: ("gflops", gflop / a * 1e3),
                extra: vec![
                    ("nhwc_ms", b),
                    ("nhwc_gflops", gflop / b * 1e3),
                    ("nhwc_over_nchw", b / a),
                    ("nchw_im2col_ms", ca),
                    ("nhwc_im2col_ms", cb),
                ],
                roof: None,
            });
        }
    }
    Ok(figures)
}
