//! Convolution as matmul: im2col / col2im against the CPU reference on awkward
//! shapes, conv2d against a direct convolution, gradients, and errors.

mod common;

use common::{
    assert_close, assert_tensor_close, check_finite_differences, gpu, pair, uniform, Feed,
};
use wgrad::autodiff::grad;
use wgrad::nn::{Conv2dLayer, Module};
use wgrad::{Conv2d, Device, Error, Graph, Tensor};

/// (input shape, window) cases: batch 1, odd channels, padding, stride 2,
/// dilation, non-square images, a 1x1 kernel.
fn cases() -> Vec<([usize; 4], Conv2d)> {
    vec![
        ([1, 1, 5, 5], Conv2d::new(3, 3)),
        ([2, 3, 7, 5], Conv2d::new(3, 3).padding(1)),
        ([1, 5, 9, 6], Conv2d::new(3, 2).stride(2)),
        ([3, 2, 8, 8], Conv2d::new(3, 3).stride(2).padding(2)),
        ([2, 3, 9, 11], Conv2d::new(3, 3).dilation(2).padding(1)),
        ([2, 4, 6, 6], Conv2d::new(1, 1)),
        // 1×1 as a plain product (no im2col): odd channels, H·W not a multiple of 4
        ([1, 5, 3, 5], Conv2d::new(1, 1)),
        ([3, 7, 1, 1], Conv2d::new(1, 1)),
        // 1×1 with a stride or padding goes through im2col
        ([2, 3, 7, 5], Conv2d::new(1, 1).stride(2)),
        ([1, 3, 3, 2], Conv2d::new(1, 1).padding(1)),
        ([1, 3, 33, 17], Conv2d::new(5, 5).stride(3).padding(2)),
        // per-axis strides and dilations, four different pads
        (
            [2, 3, 7, 6],
            Conv2d::new(3, 2)
                .strides(2, 1)
                .pads(1, 0, 2, 1)
                .dilations(1, 2),
        ),
        // a 1-D convolution as (N, C, 1, L): no padding along H
        (
            [1, 2, 1, 11],
            Conv2d::new(1, 3).strides(1, 2).pads(0, 1, 0, 2),
        ),
        (
            [1, 3, 9, 5],
            Conv2d::new(2, 3)
                .strides(3, 2)
                .pads(0, 2, 1, 0)
                .dilations(2, 1),
        ),
        (
            [2, 1, 5, 8],
            Conv2d::new(3, 3).pads(2, 0, 0, 1).dilations(2, 3),
        ),
    ]
}

/// Direct convolution in f64: out[n, f, y, x] = Σ w[f, c, i, j] · x[n, c, y·sh - pt + i·dh, x·sw - pl + j·dw],
/// the sum over the channels c of filter f's group (all of them when groups = 1).
fn direct_conv(x: &[f32], xs: [usize; 4], w: &[f32], f: usize, g: Conv2d) -> Vec<f32> {
    let [n, c, h, wd] = xs;
    let (cg, fg) = (c / g.groups, f / g.groups);
    let ([sh, sw], [pt, pl, pb, pr], [dh, dw]) = (g.strides, g.pads, g.dilations);
    let oh = (h + pt + pb - dh * (g.kh - 1) - 1) / sh + 1;
    let ow = (wd + pl + pr - dw * (g.kw - 1) - 1) / sw + 1;
    let mut out = Vec::with_capacity(n * f * oh * ow);
    for b in 0..n {
        for k in 0..f {
            for y in 0..oh {
                for z in 0..ow {
                    let mut s = 0.0f64;
                    let first = (k / fg) * cg;
                    for ch in first..first + cg {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (y * sh + i * dh) as isize - pt as isize;
                                let ix = (z * sw + j * dw) as isize - pl as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    let xv = x[((b * c + ch) * h + iy as usize) * wd + ix as usize]
                                        as f64;
                                    let wi = ((k * cg + ch - first) * g.kh + i) * g.kw + j;
                                    s += xv * w[wi] as f64;
                                }
                            }
                        }
                    }
                    out.push(s as f32);
                }
            }
        }
    }
    out
}

#[test]
fn im2col_and_col2im_match_reference() {
    let Some(dev) = gpu() else { return };
    let mut all = cases();
    // A window past the loop budget: im2col and col2im split it over dispatches.
    all.push(([1, 2, 131, 132], Conv2d::new(130, 129).pads(0, 1, 0, 0)));
    // C·KH·KW a multiple of 4: im2col writes whole patch rows as vec4s (batch 1, odd
    // channels, stride 2 with odd sizes, dilation 2, per-axis geometry), and col2im four
    // outputs per invocation where W % 4 = 0.
    all.push(([2, 4, 7, 5], Conv2d::new(3, 3).stride(2).padding(1)));
    all.push(([1, 5, 5, 4], Conv2d::new(2, 2).stride(2)));
    all.push(([3, 4, 9, 8], Conv2d::new(3, 3).dilation(2).padding(2)));
    all.push((
        [2, 8, 5, 6],
        Conv2d::new(2, 2).strides(2, 1).pads(1, 0, 0, 1),
    ));
    all.push(([64, 16, 8, 8], Conv2d::new(3, 3).stride(2).padding(1)));
    // Few patch rows of many vec4s: each row cut into pieces, one per invocation (ResNet's
    // 3x3 layers at 7x7: 9 pieces of 16 vec4s here; two images, two uneven pieces).
    all.push(([1, 64, 7, 7], Conv2d::new(3, 3).padding(1)));
    all.push(([2, 12, 5, 5], Conv2d::new(3, 3).padding(1)));
    // col2im by row phases (dilation 1, W % 4 = 0, a column stride of 1, 2 or 4): odd
    // heights (uneven phases), stride 1, column stride 4 with row stride 3, windows
    // smaller than the stride (phases no kernel row reaches), padding past the stride.
    all.push(([2, 3, 7, 8], Conv2d::new(3, 3).stride(2).padding(1)));
    all.push(([1, 5, 6, 8], Conv2d::new(3, 3).padding(1)));
    all.push((
        [1, 2, 11, 16],
        Conv2d::new(5, 5).strides(3, 4).pads(2, 1, 1, 3),
    ));
    all.push(([3, 4, 6, 8], Conv2d::new(1, 1).stride(2)));
    all.push(([1, 3, 9, 12], Conv2d::new(3, 5).stride(2).pads(3, 5, 0, 1)));
    // C·KH·KW not a multiple of 4, patch rows a multiple of 4: four rows per invocation
    // (ResNet's stem, 3x7x7 at stride 2; 9 positions per image, so quads cross images);
    // 9 rows in all: the per-channel kernel.
    all.push(([2, 3, 15, 13], Conv2d::new(7, 7).stride(2).padding(3)));
    all.push(([4, 3, 7, 7], Conv2d::new(3, 3).stride(2)));
    // Rows of x whole vec4s, few channels, kernel rows of at most 8 taps: the generated
    // window kernel (src/ops/im2col_window.rs): every column offset in a vec4 (stride 3),
    // windows past both sides, row dilation, 8 taps (three vec4s a row), a 1x1 stride.
    all.push(([2, 4, 7, 8], Conv2d::new(3, 3).stride(2).padding(1)));
    all.push((
        [1, 1, 10, 12],
        Conv2d::new(4, 4).strides(1, 3).pads(1, 2, 0, 1),
    ));
    all.push(([2, 2, 5, 8], Conv2d::new(2, 8).pads(0, 4, 1, 3)));
    all.push((
        [1, 4, 9, 4],
        Conv2d::new(3, 3).dilations(2, 1).pads(2, 1, 2, 1),
    ));
    // ... by groups of channels, looped in one invocation (rows of whole vec4s or not: each
    // kernel row then finds its own column offset), and 1x1 at stride 2 by groups of 32.
    all.push(([16, 16, 16, 16], Conv2d::new(3, 3).padding(1)));
    all.push(([8, 24, 22, 22], Conv2d::new(3, 3).padding(1)));
    all.push(([2, 64, 10, 12], Conv2d::new(1, 1).stride(2)));
    all.push(([1, 3, 7, 7], Conv2d::new(3, 3).stride(2)));
    // Patch rows past the loop budget in vec4s (4·129·128 values): the per-channel kernel.
    all.push(([1, 4, 130, 129], Conv2d::new(129, 128)));
    // Padding and stride of 2^22 rows: past the kernels' f32 division (dividends under
    // 2^24), so they divide exactly; three windows, one of them on the image.
    let far = 1 << 22;
    all.push((
        [1, 2, 3, 4],
        Conv2d::new(3, 3).strides(far, 1).pads(far, 1, far, 1),
    ));
    for (k, (xs, geom)) in all.into_iter().enumerate() {
        let n: usize = xs.iter().product();
        let (gx, cx) = pair(&dev, &uniform(k as u64, n, -1.0, 1.0), &xs);
        let label = format!("im2col {xs:?} {geom:?}");
        let cols = cx.im2col(geom).unwrap();
        assert_tensor_close(&label, &gx.im2col(geom).unwrap(), &cols, 0.0, 0.0);
        let (gc, cc) = pair(
            &dev,
            &uniform(k as u64 + 50, cols.numel(), -1.0, 1.0),
            cols.shape(),
        );
        let label = format!("col2im {xs:?} {geom:?}");
        assert_tensor_close(
            &label,
            &gc.col2im(geom, &xs).unwrap(),
            &cc.col2im(geom, &xs).unwrap(),
            1e-6,
            1e-6,
        );
    }
}

#[test]
fn col2im_is_the_adjoint_of_im2col() {
    // <im2col(x), y> = <x, col2im(y)> for every x, y: the property the gradient rule relies on.
    let cpu = Device::cpu();
    for (k, (xs, geom)) in cases().into_iter().enumerate() {
        let x = uniform(k as u64, xs.iter().product(), -1.0, 1.0);
        let xt = Tensor::from_slice(&cpu, &x, &xs).unwrap();
        let cols = xt.im2col(geom).unwrap();
        let y = uniform(k as u64 + 9, cols.numel(), -1.0, 1.0);
        let yt = Tensor::from_slice(&cpu, &y, cols.shape()).unwrap();
        let lhs: f64 = cols
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip(&y)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let back = yt.col2im(geom, &xs).unwrap().to_vec::<f32>().unwrap();
        let rhs: f64 = back
            .iter()
            .zip(&x)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        assert!(
            (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
            "{xs:?} {geom:?}: {lhs} vs {rhs}"
        );
    }
}

#[test]
fn conv2d_matches_a_direct_convolution() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        for (k, (xs, geom)) in cases().into_iter().enumerate() {
            let f = 1 + k % 4;
            let x = uniform(k as u64, xs.iter().product(), -1.0, 1.0);
            let w = uniform(k as u64 + 7, f * xs[1] * geom.kh * geom.kw, -1.0, 1.0);
            let xt = Tensor::from_slice(&dev, &x, &xs).unwrap();
            let wt = Tensor::from_slice(&dev, &w, &[f, xs[1], geom.kh, geom.kw]).unwrap();
            let got = xt.conv2d(&wt, geom).unwrap();
            let want = direct_conv(&x, xs, &w, f, geom);
            let label = format!("conv2d {xs:?} f={f} {geom:?} on {}", dev.name());
            assert_close(&label, &got.to_vec::<f32>().unwrap(), &want, 1e-5, 1e-5);
        }
    }
}

/// Past GEMV_ROWS (4) filters with C·KH·KW not a multiple of 4, the subgroup kernels' product
/// reads patch rows that im2col padded to whole vec4s and weights padded to match (see
/// `pads_patch_rows` in src/ops/conv.rs): the same values as the direct convolution.
#[test]
fn conv2d_with_more_filters_than_gemv_rows_matches_a_direct_convolution() {
    let Some(dev) = gpu() else { return };
    let mut cases = cases();
    // ResNet-50's stem window (3×7×7 = 147 taps), stride 2, padding 3, odd sizes.
    cases.push(([1, 3, 23, 21], Conv2d::new(7, 7).stride(2).padding(3)));
    // ... and with x's rows whole vec4s: im2col's generated window kernel (two images).
    cases.push(([2, 3, 19, 20], Conv2d::new(7, 7).stride(2).padding(3)));
    for (k, (xs, geom)) in cases.into_iter().enumerate() {
        let f = 5 + k % 7;
        let x = uniform(k as u64 + 50, xs.iter().product(), -1.0, 1.0);
        let w = uniform(k as u64 + 57, f * xs[1] * geom.kh * geom.kw, -1.0, 1.0);
        let xt = Tensor::from_slice(&dev, &x, &xs).unwrap();
        let wt = Tensor::from_slice(&dev, &w, &[f, xs[1], geom.kh, geom.kw]).unwrap();
        let got = xt.conv2d(&wt, geom).unwrap();
        let want = direct_conv(&x, xs, &w, f, geom);
        let label = format!("conv2d {xs:?} f={f} {geom:?} on {}", dev.name());
        assert_close(&label, &got.to_vec::<f32>().unwrap(), &want, 1e-5, 1e-5);
    }
}

#[test]
fn bad_geometry_is_a_typed_error() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let x = Tensor::zeros(&dev, &[1, 3, 4, 4]).unwrap();
        let e = x.im2col(Conv2d::new(5, 5)).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { op: "im2col", detail } if detail.contains("larger than the padded input")),
            "{e}"
        );
        assert!(
            x.im2col(Conv2d::new(5, 5).padding(1)).is_ok(),
            "padding makes room"
        );
        let w = Tensor::zeros(&dev, &[2, 4, 3, 3]).unwrap();
        let e = x.conv2d(&w, Conv2d::new(3, 3)).unwrap_err();
        assert!(
            matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("channels 3 vs 4")),
            "{e}"
        );
        assert!(matches!(
            x.im2col(Conv2d::new(3, 3).stride(0)).unwrap_err(),
            Error::Invalid { .. }
        ));
        assert!(matches!(
            Tensor::zeros(&dev, &[3, 4, 4])
                .unwrap()
                .im2col(Conv2d::new(1, 1))
                .unwrap_err(),
            Error::Shape { .. }
        ));
        let cols = Tensor::zeros(&dev, &[1, 4, 27]).unwrap();
        assert!(matches!(
            cols.col2im(Conv2d::new(3, 3), &[1, 3, 5, 5]).unwrap_err(),
            Error::Shape { op: "col2im", .. }
        ));
    }
    let g = Graph::new();
    let x = g.input("x", &[1, 3, 4, 4]);
    assert!(x
        .conv2d(&g.input("w", &[2, 3, 5, 5]), Conv2d::new(5, 5))
        .is_err());
}

/// Grouped and depthwise cases: (input shape, filters, window with groups).
fn grouped_cases() -> Vec<([usize; 4], usize, Conv2d)> {
    vec![
        ([1, 4, 5, 5], 6, Conv2d::new(3, 3).groups(2)),
        ([2, 3, 7, 5], 3, Conv2d::new(3, 3).padding(1).groups(3)), // depthwise, odd channels
        ([2, 6, 9, 6], 9, Conv2d::new(3, 2).stride(2).groups(3)),
        (
            [1, 4, 8, 8],
            8,
            Conv2d::new(3, 3).stride(2).padding(1).groups(4),
        ), // depthwise x2
        ([3, 2, 6, 7], 4, Conv2d::new(1, 1).groups(2)),
        (
            [1, 4, 6, 9],
            4,
            Conv2d::new(2, 3).strides(1, 2).pads(0, 1, 1, 2).groups(4),
        ),
    ]
}

#[test]
fn grouped_conv2d_matches_a_direct_convolution() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        for (k, (xs, f, geom)) in grouped_cases().into_iter().enumerate() {
            let x = uniform(k as u64 + 30, xs.iter().product(), -1.0, 1.0);
            let ws = [f, xs[1] / geom.groups, geom.kh, geom.kw];
            let w = uniform(k as u64 + 40, ws.iter().product(), -1.0, 1.0);
            let want = direct_conv(&x, xs, &w, f, geom);
            let label = format!("grouped conv2d {xs:?} f={f} {geom:?} on {}", dev.name());
            let xt = Tensor::from_slice(&dev, &x, &xs).unwrap();
            let wt = Tensor::from_slice(&dev, &w, &ws).unwrap();
            let got = xt.conv2d(&wt, geom).unwrap();
            assert_close(&label, &got.to_vec::<f32>().unwrap(), &want, 1e-5, 1e-5);
            // The graph op computes the same.
            let g = Graph::new();
            let y = g.input("x", &xs).conv2d(&g.input("w", &ws), geom).unwrap();
            let exe = dev.compile(&g, &[&y], None).unwrap();
            let out = exe.run(&[("x", &xt), ("w", &wt)]).unwrap();
            assert_close(
                &format!("{label} (graph)"),
                &out[0].to_vec::<f32>().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// Gradients of conv2d (plain, stride 2 with padding, grouped, depthwise) against
/// f64 finite differences, and GPU against CPU.
#[test]
fn conv2d_gradients_match_finite_differences_and_gpu() {
    for (xs, f, geom) in [
        (
            [2usize, 2, 5, 4],
            3usize,
            Conv2d::new(3, 2).stride(2).padding(1),
        ),
        (
            [2, 4, 5, 4],
            6,
            Conv2d::new(3, 2).stride(2).padding(1).groups(2),
        ),
        ([1, 3, 4, 5], 3, Conv2d::new(3, 3).padding(1).groups(3)),
        (
            [2, 2, 5, 6],
            3,
            Conv2d::new(3, 2)
                .strides(2, 1)
                .pads(1, 0, 2, 1)
                .dilations(1, 2),
        ),
        (
            [1, 4, 4, 7],
            4,
            Conv2d::new(2, 3).strides(1, 2).pads(0, 1, 1, 2).groups(2),
        ),
        // 1×1 as a plain product: batch 1 and 3, odd channels, H·W of 15 and 1
        ([1, 5, 3, 5], 7, Conv2d::new(1, 1)),
        ([3, 3, 1, 1], 2, Conv2d::new(1, 1)),
        ([2, 3, 5, 3], 5, Conv2d::new(1, 1).stride(2)),
    ] {
        let ws = [f, xs[1] / geom.groups, geom.kh, geom.kw];
        let g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.input("w", &ws);
        let y = x.conv2d(&w, geom).unwrap();
        let r = Tensor::from_slice(
            &Device::cpu(),
            &uniform(3, y.shape().iter().product(), 0.5, 1.5),
            y.shape(),
        )
        .unwrap();
        let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
        let grads = grad(&loss, &[&x, &w]).unwrap();
        let xv = uniform(1, xs.iter().product(), -1.0, 1.0);
        let wv = uniform(2, ws.iter().product(), -1.0, 1.0);
        let run = |dev: &Device, xv: &[f32], wv: &[f32], outs: &[&wgrad::Var]| -> Vec<Vec<f32>> {
            let exe = dev.compile(&g, outs, None).unwrap();
            let (xt, wt) = (
                Tensor::from_slice(dev, xv, &xs).unwrap(),
                Tensor::from_slice(dev, wv, &ws).unwrap(),
            );
            exe.run(&[("x", &xt), ("w", &wt)])
                .unwrap()
                .iter()
                .map(|t| t.to_vec::<f32>().unwrap())
                .collect()
        };
        let cpu = Device::cpu();
        let analytic = run(&cpu, &xv, &wv, &[&grads[0], &grads[1]]);
        let feeds = [
            ("x".to_string(), Feed::real(&xv, &xs)),
            ("w".to_string(), Feed::real(&wv, &ws)),
        ];
        check_finite_differences(
            &format!("grouped conv2d {xs:?} {geom:?}"),
            &g,
            &loss,
            &grads,
            &feeds,
        );
        if let Some(dev) = gpu() {
            let on_gpu = run(&dev, &xv, &wv, &[&grads[0], &grads[1]]);
            for k in 0..2 {
                assert_close(
                    &format!("d grouped conv2d {xs:?} / d input {k} GPU vs CPU"),
                    &on_gpu[k],
                    &analytic[k],
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn bad_groups_and_channels_are_typed_errors_naming_the_layer() {
    let cpu = Device::cpu();
    let x = Tensor::zeros(&cpu, &[1, 4, 5, 5]).unwrap();
    // groups not dividing the input channels, or the filters
    let e = x
        .conv2d(
            &Tensor::zeros(&cpu, &[6, 1, 3, 3]).unwrap(),
            Conv2d::new(3, 3).groups(3),
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("groups 3") && detail.contains("[1, 4, 5, 5]")),
        "{e}"
    );
    let e = x
        .conv2d(
            &Tensor::zeros(&cpu, &[5, 2, 3, 3]).unwrap(),
            Conv2d::new(3, 3).groups(2),
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("filters 5")),
        "{e}"
    );
    // filters with the wrong per-group channel count
    let e = x
        .conv2d(
            &Tensor::zeros(&cpu, &[4, 4, 3, 3]).unwrap(),
            Conv2d::new(3, 3).groups(2),
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("channels 2 vs 4")),
        "{e}"
    );
    assert!(x
        .conv2d(
            &Tensor::zeros(&cpu, &[4, 1, 3, 3]).unwrap(),
            Conv2d::new(3, 3).groups(0)
        )
        .is_err());
    // The layer names itself and the shapes.
    let g = Graph::new();
    let layer = Conv2dLayer::new(&g, "conv7", 4, 6, Conv2d::new(3, 3).groups(4), 1);
    let e = layer.forward(&g.input("x", &[2, 4, 6, 6])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("conv7") && detail.contains("groups 4")),
        "{e}"
    );
    let layer = Conv2dLayer::new(&g, "conv8", 3, 6, Conv2d::new(3, 3), 1);
    let e = layer.forward(&g.input("x3", &[2, 5, 6, 6])).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv2d", detail } if detail.contains("conv8") && detail.contains("[2, 5, 6, 6]")),
        "{e}"
    );
    // A depthwise layer records the expected output.
    let dw = Conv2dLayer::new(&g, "dw", 4, 4, Conv2d::new(3, 3).padding(1).groups(4), 2);
    assert_eq!(
        dw.forward(&g.input("x4", &[2, 4, 6, 6])).unwrap().shape(),
        &[2, 4, 6, 6]
    );
    assert_eq!(dw.param_names(), ["dw.weight", "dw.bias"]);
}

/// Direct transposed convolution in f64: every input pixel x[n, c, iy, ix] adds
/// x · w[c, j, ki, kj] to y[n, g·Fg + j, iy·sh - pt + ki·dh, ix·sw - pl + kj·dw] (where that
/// lies inside the output), g the group of channel c.
fn direct_conv_transpose(
    x: &[f32],
    [n, c, h, wd]: [usize; 4],
    w: &[f32],
    fg: usize,
    g: Conv2d,
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let f = fg * g.groups;
    let cg = c / g.groups;
    let mut y = vec![0.0f64; n * f * oh * ow];
    for b in 0..n {
        for ch in 0..c {
            for iy in 0..h {
                for ix in 0..wd {
                    let xv = x[((b * c + ch) * h + iy) * wd + ix] as f64;
                    for j in 0..fg {
                        let out_c = (ch / cg) * fg + j;
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let oy = (iy * g.strides[0] + ki * g.dilations[0]) as isize
                                    - g.pads[0] as isize;
                                let ox = (ix * g.strides[1] + kj * g.dilations[1]) as isize
                                    - g.pads[1] as isize;
                                if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                    let wv = w[((ch * fg + j) * g.kh + ki) * g.kw + kj] as f64;
                                    y[((b * f + out_c) * oh + oy as usize) * ow + ox as usize] +=
                                        xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

/// Transposed convolutions (input shape, filters per group, window, output size): plain,
/// strided with asymmetric pads and output padding, grouped, depthwise, 1-D as (N, C, 1, L).
fn transpose_cases() -> Vec<([usize; 4], usize, Conv2d, [usize; 2])> {
    vec![
        ([1, 2, 3, 4], 3, Conv2d::new(3, 3), [5, 6]),
        // stride 2 with one row of output padding (pads chosen so the windows come out)
        (
            [2, 3, 4, 3],
            2,
            Conv2d::new(3, 2).strides(2, 3).pads(1, 0, 0, 1),
            [8, 8],
        ),
        (
            [1, 4, 3, 5],
            1,
            Conv2d::new(2, 3)
                .strides(2, 1)
                .pads(0, 1, 1, 2)
                .dilations(2, 1)
                .groups(2),
            [6, 4],
        ),
        (
            [2, 3, 4, 4],
            1,
            Conv2d::new(3, 3).stride(2).padding(1).groups(3),
            [7, 7],
        ),
        (
            [1, 2, 1, 6],
            2,
            Conv2d::new(1, 3).strides(1, 2).pads(0, 1, 0, 0),
            [1, 12],
        ),
    ]
}

#[test]
fn conv_transpose2d_matches_a_direct_transposed_convolution() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        for (k, (xs, fg, geom, out)) in transpose_cases().into_iter().enumerate() {
            let ws = [xs[1], fg, geom.kh, geom.kw];
            let x = uniform(k as u64 + 60, xs.iter().product(), -1.0, 1.0);
            let w = uniform(k as u64 + 70, ws.iter().product(), -1.0, 1.0);
            let want = direct_conv_transpose(&x, xs, &w, fg, geom, out);
            let g = Graph::new();
            let y = g
                .input("x", &xs)
                .conv_transpose2d(&g.input("w", &ws), geom, out)
                .unwrap();
            assert_eq!(y.shape(), &[xs[0], fg * geom.groups, out[0], out[1]]);
            let exe = dev.compile(&g, &[&y], None).unwrap();
            let xt = Tensor::from_slice(&dev, &x, &xs).unwrap();
            let wt = Tensor::from_slice(&dev, &w, &ws).unwrap();
            let got = exe.run(&[("x", &xt), ("w", &wt)]).unwrap();
            assert_close(
                &format!("conv_transpose2d {xs:?} {geom:?} {out:?} on {}", dev.name()),
                &got[0].to_vec::<f32>().unwrap(),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn conv_transpose2d_gradients_match_finite_differences() {
    for (xs, fg, geom, out) in transpose_cases().into_iter().skip(1).take(2) {
        let ws = [xs[1], fg, geom.kh, geom.kw];
        let g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.input("w", &ws);
        let y = x.conv_transpose2d(&w, geom, out).unwrap();
        let r = Tensor::from_slice(
            &Device::cpu(),
            &uniform(5, y.shape().iter().product(), 0.5, 1.5),
            y.shape(),
        )
        .unwrap();
        let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
        let grads = grad(&loss, &[&x, &w]).unwrap();
        let feeds = [
            (
                "x".to_string(),
                Feed::real(&uniform(6, xs.iter().product(), -1.0, 1.0), &xs),
            ),
            (
                "w".to_string(),
                Feed::real(&uniform(7, ws.iter().product(), -1.0, 1.0), &ws),
            ),
        ];
        check_finite_differences(
            &format!("conv_transpose2d {xs:?} {geom:?}"),
            &g,
            &loss,
            &grads,
            &feeds,
        );
    }
}

#[test]
fn conv_transpose2d_bad_shapes_are_typed_errors() {
    let g = Graph::new();
    let x = g.input("x", &[1, 4, 3, 3]);
    // filters' first dim must be the input channels
    let e = x
        .conv_transpose2d(&g.input("w", &[3, 2, 3, 3]), Conv2d::new(3, 3), [5, 5])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv_transpose2d", detail } if detail.contains("[3, 2, 3, 3]")),
        "{e}"
    );
    // an output whose windows do not come back to the input size
    let e = x
        .conv_transpose2d(&g.input("w2", &[4, 2, 3, 3]), Conv2d::new(3, 3), [6, 5])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv_transpose2d", detail } if detail.contains("(4, 3)")),
        "{e}"
    );
    // groups that do not divide the channels
    assert!(x
        .conv_transpose2d(
            &g.input("w3", &[4, 1, 3, 3]),
            Conv2d::new(3, 3).groups(3),
            [5, 5]
        )
        .is_err());
    // a 3-D input
    assert!(g
        .input("x3", &[4, 3, 3])
        .conv_transpose2d(&g.input("w4", &[4, 2, 3, 3]), Conv2d::new(3, 3), [5, 5])
        .is_err());
}

/// A 1×1 convolution over 90,000 positions: its weight gradient is a product reduced over
/// K = H·W, past lavapipe's per-invocation loop cap; GPU against the CPU reference.
#[test]
fn pointwise_conv2d_gradients_past_the_loop_cap() {
    let Some(dev) = gpu() else { return };
    let (xs, ws) = ([1usize, 3, 300, 300], [5usize, 3, 1, 1]);
    let g = Graph::new();
    let x = g.input("x", &xs);
    let w = g.input("w", &ws);
    let y = x.conv2d(&w, Conv2d::new(1, 1)).unwrap();
    let r = g
        .constant(
            &Tensor::from_slice(
                &Device::cpu(),
                &uniform(3, y.shape().iter().product(), 0.5, 1.5),
                y.shape(),
            )
            .unwrap(),
        )
        .unwrap();
    let loss = y.mul(&r).unwrap().sum().unwrap();
    let grads = grad(&loss, &[&x, &w]).unwrap();
    let xv = uniform(1, xs.iter().product(), -1.0, 1.0);
    let wv = uniform(2, ws.iter().product(), -1.0, 1.0);
    let run = |dev: &Device| -> Vec<Vec<f32>> {
        let exe = dev.compile(&g, &[&y, &grads[0], &grads[1]], None).unwrap();
        let (xt, wt) = (
            Tensor::from_slice(dev, &xv, &xs).unwrap(),
            Tensor::from_slice(dev, &wv, &ws).unwrap(),
        );
        exe.run(&[("x", &xt), ("w", &wt)])
            .unwrap()
            .iter()
            .map(|t| t.to_vec::<f32>().unwrap())
            .collect()
    };
    let (want, got) = (run(&Device::cpu()), run(&dev));
    for (k, name) in ["y", "dx", "dw"].iter().enumerate() {
        assert_close(
            &format!("1x1 conv2d {xs:?} {name} GPU vs CPU"),
            &got[k],
            &want[k],
            1e-4,
            1e-4,
        );
    }
}

/// Huge windows, pads and strides (from a file or a caller) are typed errors naming the op:
/// never an overflow panic, a wrapped size or a huge allocation.
#[test]
fn huge_geometry_is_a_typed_error_not_an_overflow() {
    let x4 = [1, 1, 4, 4];
    let big = usize::MAX / 2;
    // The window's span dilation·(k − 1) + 1 and the padded size H + top + bottom overflowed.
    for (what, geom) in [
        ("dilation", Conv2d::new(3, 3).dilation(usize::MAX)),
        ("kernel", Conv2d::new(usize::MAX, 1)),
        ("pads", Conv2d::new(1, 1).pads(usize::MAX, 0, usize::MAX, 0)),
    ] {
        let r = std::panic::catch_unwind(|| geom.output_size("conv2d", &x4));
        assert!(
            matches!(&r, Ok(Err(Error::Shape { op: "conv2d", .. }))),
            "{what}: {r:?}"
        );
    }
    // Positions OH·OW past usize (2^41 each way): im2col's patch shape wrapped.
    let pad = 1usize << 40;
    let geom = Conv2d::new(1, 1).padding(pad);
    assert!(
        geom.output_size("im2col", &x4).is_ok(),
        "the positions alone fit"
    );
    let x = Tensor::zeros(&Device::cpu(), &x4).unwrap();
    let e = x.im2col(geom).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "im2col", detail } if detail.contains("more elements than can be addressed")),
        "{e}"
    );
    let g = Graph::new();
    let e = g.input("x", &x4).im2col(geom).unwrap_err();
    assert!(matches!(&e, Error::Shape { op: "im2col", .. }), "{e}");
    let e = g
        .input("cols", &[1, 16, 1])
        .col2im(Conv2d::new(1, 1).padding(big), &x4)
        .unwrap_err();
    assert!(matches!(&e, Error::Shape { op: "col2im", .. }), "{e}");
    // Pooling: 2^40 padding makes 2^41 windows a side, whose tap tables were allocated
    // (terabytes) before anything was checked.
    let xv = g.input("p", &x4);
    let e = xv
        .max_pool2d_window(Conv2d::new(2, 2).padding(pad))
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { op: "max_pool2d", detail } if detail.contains("over the limit")),
        "{e}"
    );
    let e = xv
        .avg_pool2d_with(Conv2d::new(2, 2).stride(big).padding(big), true, false)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Shape {
                op: "avg_pool2d",
                ..
            }
        ),
        "{e}"
    );
    // ceil_mode with a stride past the input: one window (the second would start in the
    // padding), not an overflow.
    let y = xv
        .max_pool2d_with(Conv2d::new(2, 2).stride(usize::MAX), true)
        .unwrap();
    assert_eq!(y.shape(), [1, 1, 1, 1]);
    // An empty image: every window is padding (the ceil_mode count went below zero).
    let e = g
        .input("e", &[1, 1, 0, 4])
        .max_pool2d_with(Conv2d::new(1, 1).pads(0, 0, 1, 0), true)
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Invalid {
                op: "max_pool2d",
                ..
            }
        ),
        "{e}"
    );
}

/// A transposed convolution of an empty input (C = 0) allows any groups and filters by
/// element count: F = Fg·G overflowed (and, wrapped, gave a small F).
#[test]
fn conv_transpose2d_filter_count_overflow_is_a_typed_error() {
    let g = Graph::new();
    let x = g.input("x", &[1, 0, 1, 1]);
    let w = g.input("w", &[0, 1 << 40, 1, 1]);
    let e = x
        .conv_transpose2d(&w, Conv2d::new(1, 1).groups(1 << 30), [1, 1])
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { op: "conv_transpose2d", detail } if detail.contains("overflow")),
        "{e}"
    );
}

/// The GPU kernels hold the window in u32 and padded positions in i32: a padding of 2^32
/// with a stride of 2^33 (one window, all padding: zeros on the CPU) wrapped to no padding
/// and stride 0 there and read real pixels. It is an error naming the op on the GPU.
#[test]
fn gpu_geometry_past_32_bits_is_an_error_not_a_wrap() {
    let geom = Conv2d::new(1, 1).pads(1 << 32, 0, 0, 0).strides(1 << 33, 1);
    let cpu = Tensor::from_slice(&Device::cpu(), &[1.0f32; 16], &[1, 1, 4, 4]).unwrap();
    let want = cpu.im2col(geom).unwrap();
    assert_eq!(want.shape(), [1, 4, 1]);
    assert_eq!(want.to_vec::<f32>().unwrap(), [0.0; 4]);
    let Some(dev) = gpu() else { return };
    let x = Tensor::from_slice(&dev, &[1.0f32; 16], &[1, 1, 4, 4]).unwrap();
    let e = x.im2col(geom).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { op: "im2col", detail } if detail.contains("32-bit")),
        "{e}"
    );
    let cols = Tensor::zeros(&dev, &[1, 4, 1]).unwrap();
    let e = cols.col2im(geom, &[1, 1, 4, 4]).unwrap_err();
    assert!(matches!(&e, Error::Invalid { op: "col2im", .. }), "{e}");
}

/// Few output positions per image and more than 64 patch columns: the graph's convolution
/// folds the batch into one product, (N·L, CK)·(F, CK)ᵀ, then permutes to NCHW (see
/// `folds` in src/ops/conv.rs), and `conv2d_bias` adds the bias to the product's columns.
/// Forward against a direct convolution, gradients (input, filters, bias) against finite
/// differences in f64, and the GPU against the CPU reference; the layer as the digits CNN
/// uses it (3×3, stride 2, batch 64) included.
#[test]
fn folded_batch_conv2d_and_bias_match_direct_and_finite_differences() {
    for (xs, f, geom, fd) in [
        (
            [3usize, 8, 5, 4],
            5usize,
            Conv2d::new(3, 3).padding(1),
            true,
        ),
        (
            [2, 9, 6, 7],
            3,
            Conv2d::new(3, 3).stride(2).pads(1, 0, 0, 2),
            true,
        ),
        ([2, 11, 5, 5], 4, Conv2d::new(3, 2).dilations(2, 1), true),
        (
            [64, 16, 8, 8],
            32,
            Conv2d::new(3, 3).stride(2).padding(1),
            false,
        ),
    ] {
        let ws = [f, xs[1], geom.kh, geom.kw];
        let g = Graph::new();
        let x = g.input("x", &xs);
        let w = g.input("w", &ws);
        let b = g.input("b", &[f, 1, 1]);
        let plain = x.conv2d(&w, geom).unwrap();
        let y = x.conv2d_bias(&w, &b, geom).unwrap();
        assert_eq!(plain.shape(), y.shape());
        let r = Tensor::from_slice(
            &Device::cpu(),
            &uniform(3, y.shape().iter().product(), 0.5, 1.5),
            y.shape(),
        )
        .unwrap();
        let loss = y.mul(&g.constant(&r).unwrap()).unwrap().sum().unwrap();
        let grads = grad(&loss, &[&x, &w, &b]).unwrap();
        let xv = uniform(1, xs.iter().product(), -1.0, 1.0);
        let wv = uniform(2, ws.iter().product(), -1.0, 1.0);
        let bv = uniform(4, f, -1.0, 1.0);
        let outs = [&plain, &y, &grads[0], &grads[1], &grads[2]];
        let run = |dev: &Device| -> Vec<Vec<f32>> {
            let exe = dev.compile(&g, &outs, None).unwrap();
            let t = |v: &[f32], s: &[usize]| Tensor::from_slice(dev, v, s).unwrap();
            exe.run(&[
                ("x", &t(&xv, &xs)),
                ("w", &t(&wv, &ws)),
                ("b", &t(&bv, &[f, 1, 1])),
            ])
            .unwrap()
            .iter()
            .map(|t| t.to_vec::<f32>().unwrap())
            .collect()
        };
        let label = format!("folded conv2d {xs:?} f={f} {geom:?}");
        let direct = direct_conv(&xv, xs, &wv, f, geom);
        let per = direct.len() / (xs[0] * f);
        let with_bias: Vec<f32> = direct
            .iter()
            .enumerate()
            .map(|(i, v)| v + bv[(i / per) % f])
            .collect();
        let cpu = run(&Device::cpu());
        assert_close(&label, &cpu[0], &direct, 1e-5, 1e-5);
        assert_close(&format!("{label} + bias"), &cpu[1], &with_bias, 1e-5, 1e-5);
        if fd {
            check_finite_differences(
                &label,
                &g,
                &loss,
                &grads,
                &[
                    ("x".to_string(), Feed::real(&xv, &xs)),
                    ("w".to_string(), Feed::real(&wv, &ws)),
                    ("b".to_string(), Feed::real(&bv, &[f, 1, 1])),
                ],
            );
        }
        if let Some(dev) = gpu() {
            let on_gpu = run(&dev);
            for (k, (got, want)) in on_gpu.iter().zip(&cpu).enumerate() {
                assert_close(
                    &format!("{label} output {k}: GPU vs CPU"),
                    got,
                    want,
                    1e-4,
                    1e-4,
                );
            }
        }
    }
    // A bias of the wrong size is an error naming the op and the shapes.
    let g = Graph::new();
    let x = g.input("x", &[2, 8, 4, 4]);
    let w = g.input("w", &[5, 8, 3, 3]);
    let b = g.input("b", &[4]);
    let e = x.conv2d_bias(&w, &b, Conv2d::new(3, 3)).unwrap_err();
    let detail = format!("{e}");
    assert!(
        detail.contains("conv2d") && detail.contains("[4]"),
        "{detail}"
    );
}
