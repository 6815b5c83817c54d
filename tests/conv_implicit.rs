//! Implicit-GEMM convolution (`Tensor::conv2d_implicit`, `Tensor::conv2d_pass`) on lavapipe
//! against a direct f64 convolution written here, on awkward shapes (batch 1, odd channels,
//! stride 2 with odd sizes, dilation 2, groups 2 and depthwise, 1×1 and 7×7, reductions
//! past the loop cap); the two gradient passes through the adjoint identities
//! <conv(x, w), gy> = <x, grad_input(gy, w)> = <w, grad_weight(x, gy)>, element by element
//! against the direct loops.

mod common;

use common::{assert_close, gpu, uniform};
use wgrad::ops::conv_gemm::ConvPass;
use wgrad::{Conv2d, Tensor};

/// Output size of one axis.
fn out_len(n: usize, k: usize, s: usize, p0: usize, p1: usize, d: usize) -> usize {
    (n + p0 + p1 - d * (k - 1) - 1) / s + 1
}

/// Calls f(x index, w index, y index) for every term of the convolution (direct loops).
fn terms(xs: [usize; 4], f: usize, g: Conv2d, mut t: impl FnMut(usize, usize, usize)) {
    let [n, c, h, wd] = xs;
    let (cg, fg) = (c / g.groups, f / g.groups);
    let oh = out_len(h, g.kh, g.strides[0], g.pads[0], g.pads[2], g.dilations[0]);
    let ow = out_len(wd, g.kw, g.strides[1], g.pads[1], g.pads[3], g.dilations[1]);
    for b in 0..n {
        for k in 0..f {
            for y in 0..oh {
                for z in 0..ow {
                    for ci in 0..cg {
                        let ch = (k / fg) * cg + ci;
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (y * g.strides[0] + i * g.dilations[0]) as isize
                                    - g.pads[0] as isize;
                                let ix = (z * g.strides[1] + j * g.dilations[1]) as isize
                                    - g.pads[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    t(
                                        ((b * c + ch) * h + iy as usize) * wd + ix as usize,
                                        ((k * cg + ci) * g.kh + i) * g.kw + j,
                                        ((b * f + k) * oh + y) * ow + z,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// (input, filters, window) cases.
fn cases() -> Vec<([usize; 4], usize, Conv2d)> {
    vec![
        ([1, 1, 5, 5], 1, Conv2d::new(3, 3)),
        ([2, 3, 7, 5], 5, Conv2d::new(3, 3).padding(1)),
        ([1, 5, 9, 7], 17, Conv2d::new(3, 3).stride(2).padding(1)),
        ([3, 6, 11, 9], 6, Conv2d::new(3, 3).dilation(2).padding(2)),
        ([2, 4, 7, 7], 6, Conv2d::new(3, 3).padding(1).groups(2)),
        ([2, 7, 6, 5], 7, Conv2d::new(3, 3).padding(1).groups(7)),
        ([1, 3, 5, 6], 33, Conv2d::new(1, 1)),
        ([1, 3, 5, 6], 4, Conv2d::new(1, 1).stride(2).padding(1)),
        ([1, 3, 23, 21], 8, Conv2d::new(7, 7).stride(2).padding(3)),
        (
            [2, 3, 9, 8],
            5,
            Conv2d::new(3, 2)
                .strides(2, 1)
                .pads(1, 0, 2, 1)
                .dilations(1, 2),
        ),
        // Stride 1, dilation 1 (conv_grad_input_s1's 8-pixel row segments): a row of 13 (one
        // whole segment and a part), a 3x5 window, uneven padding, 5 channels (a part block)
        ([2, 5, 6, 13], 3, Conv2d::new(3, 5).pads(2, 1, 0, 3)),
        // Fg = 8 per group (conv_grad_weight8), two images, two groups
        ([2, 6, 9, 10], 16, Conv2d::new(3, 3).padding(1).groups(2)),
        // K = C·KH·KW = 18,000 past the loop budget (16,384): the forward splits it
        ([1, 2000, 3, 4], 3, Conv2d::new(3, 3).padding(1)),
        // Fg·KH·KW = 18,000 past the budget: the data gradient splits it
        ([1, 2, 4, 3], 2000, Conv2d::new(3, 3).padding(1)),
        // N·OH·OW = 2·150·80 = 24,000 positions past the budget: the weight gradient chunks
        ([2, 2, 150, 80], 3, Conv2d::new(3, 3).padding(1)),
    ]
}

#[test]
fn implicit_conv_and_gradients_match_direct_loops() {
    let Some(dev) = gpu() else { return };
    for (case, (xs, f, geom)) in cases().into_iter().enumerate() {
        let seed = case as u64 * 3;
        let ws = [f, xs[1] / geom.groups, geom.kh, geom.kw];
        let x = uniform(seed, xs.iter().product(), -1.0, 1.0);
        let w = uniform(seed + 1, ws.iter().product(), -1.0, 1.0);
        let xt = Tensor::from_slice(&dev, &x, &xs).unwrap();
        let wt = Tensor::from_slice(&dev, &w, &ws).unwrap();
        let y = xt.conv2d_implicit(&wt, geom).unwrap();
        let ys = y.shape().to_vec();
        let gy = uniform(seed + 2, ys.iter().product(), -1.0, 1.0);
        let gyt = Tensor::from_slice(&dev, &gy, &ys).unwrap();
        let gx = gyt
            .conv2d_pass(&wt, ConvPass::GradInput([xs[2], xs[3]]), geom)
            .unwrap();
        let gw = xt.conv2d_pass(&gyt, ConvPass::GradWeight, geom).unwrap();
        let (mut ry, mut rgx, mut rgw) = (
            vec![0.0f64; gy.len()],
            vec![0.0f64; x.len()],
            vec![0.0f64; w.len()],
        );
        terms(xs, f, geom, |xi, wi, yi| {
            ry[yi] += w[wi] as f64 * x[xi] as f64;
            rgx[xi] += w[wi] as f64 * gy[yi] as f64;
            rgw[wi] += gy[yi] as f64 * x[xi] as f64;
        });
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        let label = format!("case {case}: x {xs:?} f {f} {geom:?}");
        assert_eq!(gx.shape(), &xs[..], "{label}");
        assert_eq!(gw.shape(), &ws[..], "{label}");
        let tol = 1e-4 * (1.0 + (ws[1] * geom.kh * geom.kw) as f32).sqrt();
        assert_close(
            &format!("{label} y"),
            &y.to_vec::<f32>().unwrap(),
            &f32s(ry),
            tol,
            1e-4,
        );
        assert_close(
            &format!("{label} gx"),
            &gx.to_vec::<f32>().unwrap(),
            &f32s(rgx),
            tol * 8.0,
            1e-4,
        );
        assert_close(
            &format!("{label} gw"),
            &gw.to_vec::<f32>().unwrap(),
            &f32s(rgw),
            tol * 8.0,
            1e-3,
        );
    }
}

/// Mismatched shapes are errors naming the pass, not panics.
#[test]
fn bad_pass_shapes_are_typed_errors() {
    let dev = wgrad::Device::cpu();
    let t = |s: &[usize]| Tensor::from_slice(&dev, &vec![0.0; s.iter().product()], s).unwrap();
    let geom = Conv2d::new(3, 3);
    let err = t(&[1, 2, 4, 4])
        .conv2d_pass(&t(&[3, 2, 3, 3]), ConvPass::GradWeight, geom)
        .unwrap_err();
    assert!(format!("{err}").contains("conv2d_grad_weight"), "{err}");
    let err = t(&[1, 3, 2, 2])
        .conv2d_pass(&t(&[3, 2, 3, 3]), ConvPass::GradInput([5, 5]), geom)
        .unwrap_err();
    assert!(format!("{err}").contains("conv2d_grad_input"), "{err}");
}
