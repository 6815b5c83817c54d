//! A convolution's data gradient by phases (`ops::conv_phase`): the GPU kernels against the
//! CPU reference (col2im of the patch gradients, in f64) on awkward shapes, the graph's
//! gradient taking it where it applies and col2im where it does not, and refusals.

mod common;

use common::{assert_close, assert_tensor_close, gpu, pair, uniform};
use wgrad::autodiff::grad;
use wgrad::{Conv2d, Device, Error, Graph, Tensor};

/// (input (N, C, H, W), filters F, window): strides 1, 2 and 3, odd sizes, batch 1, odd
/// channel counts, asymmetric padding, unequal kernel sides, rows of whole vec4s and not.
fn cases() -> Vec<([usize; 4], usize, Conv2d)> {
    vec![
        // the digits CNN's second convolution
        ([64, 16, 8, 8], 32, Conv2d::new(3, 3).stride(2).padding(1)),
        ([1, 3, 7, 9], 4, Conv2d::new(3, 3).stride(2).padding(1)),
        (
            [2, 5, 6, 7],
            3,
            Conv2d::new(3, 3).stride(2).pads(1, 0, 0, 2),
        ),
        ([2, 3, 9, 8], 8, Conv2d::new(3, 3).padding(1)),
        ([1, 7, 11, 10], 4, Conv2d::new(5, 5).stride(2).padding(2)),
        (
            [2, 2, 8, 12],
            4,
            Conv2d::new(4, 4).stride(2).pads(0, 2, 1, 0),
        ),
        ([3, 5, 10, 9], 4, Conv2d::new(3, 3).stride(3)),
        // three shifts per phase, two taps each: 9/4 the multiply-adds (the graph would keep
        // col2im; the kernels take it)
        ([2, 2, 8, 12], 4, Conv2d::new(4, 4).stride(2).padding(1)),
        (
            [2, 3, 9, 8],
            2,
            Conv2d::new(2, 3).strides(2, 1).pads(1, 1, 0, 1),
        ),
        ([1, 1, 5, 4], 12, Conv2d::new(3, 3).stride(2)),
    ]
}

/// The upstream gradient, channels first (F, N·OH·OW), and the flattened filters.
fn operands(x: [usize; 4], f: usize, geom: Conv2d, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<usize>) {
    let (oh, ow) = geom.output_size("test", &x).unwrap();
    let gy = uniform(seed, f * x[0] * oh * ow, -1.0, 1.0);
    let w = uniform(seed + 1, f * x[1] * geom.kh * geom.kw, -1.0, 1.0);
    (gy, w, vec![f, x[0] * oh * ow])
}

#[test]
fn phased_data_gradient_matches_col2im_of_the_patch_gradients() {
    let Some(dev) = gpu() else { return };
    for (i, (x, f, geom)) in cases().into_iter().enumerate() {
        let (gy, w, gy_shape) = operands(x, f, geom, 10 + i as u64);
        let w_shape = [f, x[1] * geom.kh * geom.kw];
        let (g_gpu, g_cpu) = pair(&dev, &gy, &gy_shape);
        let (w_gpu, w_cpu) = pair(&dev, &w, &w_shape);
        let got = g_gpu.conv2d_grad_input_phased(&w_gpu, geom, &x).unwrap();
        let want = g_cpu.conv2d_grad_input_phased(&w_cpu, geom, &x).unwrap();
        let label = format!("case {i}: {x:?} {f} {geom:?}");
        assert_tensor_close(&label, &got, &want, 1e-4, 1e-4);
        // The same gradient stored per image, (N, F, L): the channels-first data permuted.
        let l = gy_shape[1] / x[0];
        let mut per_image = vec![0.0f32; gy.len()];
        for (k, v) in gy.iter().enumerate() {
            let (ch, rest) = (k / (x[0] * l), k % (x[0] * l));
            let (img, pos) = (rest / l, rest % l);
            per_image[(img * f + ch) * l + pos] = *v;
        }
        let (p_gpu, p_cpu) = pair(&dev, &per_image, &[x[0], f, l]);
        let got = p_gpu.conv2d_grad_input_phased(&w_gpu, geom, &x).unwrap();
        assert_tensor_close(&format!("{label} per image"), &got, &want, 1e-4, 1e-4);
        let from_cpu = p_cpu.conv2d_grad_input_phased(&w_cpu, geom, &x).unwrap();
        assert_tensor_close(
            &format!("{label} per image, CPU"),
            &from_cpu,
            &want,
            1e-6,
            1e-6,
        );
    }
}

/// The CPU reference is the definition: col2im(gyᵀ · W), checked here against the
/// scatter of each patch gradient written out by hand for one small case.
#[test]
fn the_reference_sums_every_tap_into_its_pixel() {
    let cpu = Device::cpu();
    let (x, f, geom) = (
        [1usize, 1, 3, 3],
        1usize,
        Conv2d::new(3, 3).stride(2).padding(1),
    );
    // 2×2 outputs; output (oy, ox) reads input (2oy − 1 + kh, 2ox − 1 + kw).
    let gy: Vec<f32> = vec![1.0, 10.0, 100.0, 1000.0];
    let w: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(&cpu, v, s).unwrap();
    let got = t(&gy, &[1, 4])
        .conv2d_grad_input_phased(&t(&w, &[1, 9]), geom, &x)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut want = [0.0f32; 9];
    for oy in 0..2 {
        for ox in 0..2 {
            for kh in 0..3 {
                for kw in 0..3 {
                    let (iy, ix) = (2 * oy + kh, 2 * ox + kw);
                    if (1..4).contains(&iy) && (1..4).contains(&ix) {
                        want[(iy - 1) * 3 + ix - 1] += gy[oy * 2 + ox] * w[kh * 3 + kw];
                    }
                }
            }
        }
    }
    assert_close("3x3 stride 2", &got, &want, 0.0, 0.0);
    let _ = f;
}

/// A convolution's input gradient takes the phase kernels (no col2im), batch-folded or per
/// image, and still matches the CPU reference; a geometry outside the phase split keeps
/// col2im.
#[test]
fn the_folded_convolution_takes_the_phase_kernels_where_they_apply() {
    let Some(dev) = gpu() else { return };
    for (x, f, geom, phased) in [
        (
            [64usize, 16, 8, 8],
            32usize,
            Conv2d::new(3, 3).stride(2).padding(1),
            true,
        ),
        // C·KH·KW past 64: the im2col product, not the implicit kernel
        (
            [4, 8, 7, 7],
            4,
            Conv2d::new(3, 3).stride(2).padding(1),
            true,
        ),
        // dilation 2: no phase split
        (
            [4, 8, 9, 9],
            4,
            Conv2d::new(3, 3).dilation(2).stride(2),
            false,
        ),
        // 100 output positions per image: one product per image, gy (N, F, L); at stride 2
        // the phase product's 16/9 the multiply-adds cost more than col2im saves there
        ([2, 8, 10, 10], 4, Conv2d::new(3, 3).padding(1), true),
        (
            [2, 8, 17, 18],
            8,
            Conv2d::new(3, 3).stride(2).padding(1),
            false,
        ),
        // a 1×1 window with stride 2: the phase product would do 4x the multiply-adds
        ([4, 80, 8, 8], 8, Conv2d::new(1, 1).stride(2), false),
    ] {
        let g = Graph::new();
        let xv = g.input("x", &x);
        let wv = g.input("w", &[f, x[1], geom.kh, geom.kw]);
        let y = xv.conv2d(&wv, geom).unwrap();
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
        let grads = grad(&loss, &[&xv, &wv]).unwrap();
        let xd = uniform(1, x.iter().product(), -1.0, 1.0);
        let wd = uniform(2, f * x[1] * geom.kh * geom.kw, -1.0, 1.0);
        let run = |dev: &Device| {
            let exe = dev.compile(&g, &[&grads[0], &grads[1]], None).unwrap();
            let xt = Tensor::from_slice(dev, &xd, &x).unwrap();
            let wt = Tensor::from_slice(dev, &wd, wv.shape()).unwrap();
            let out = exe.run(&[("x", &xt), ("w", &wt)]).unwrap();
            let values: Vec<Vec<f32>> = out.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
            (exe.dispatch_entries(), values)
        };
        let (entries, got) = run(&dev);
        let (_, want) = run(&Device::cpu());
        let label = format!("{x:?} {f} {geom:?}");
        assert_close(&format!("{label} dx"), &got[0], &want[0], 1e-4, 1e-4);
        assert_close(&format!("{label} dw"), &got[1], &want[1], 1e-3, 1e-4);
        let has = |e: &str| entries.iter().any(|k| k.starts_with(e));
        assert_eq!(has("conv_phase_scatter"), phased, "{label}: {entries:?}");
        assert_eq!(
            has("col2im"),
            !phased && has("im2col"),
            "{label}: {entries:?}"
        );
    }
}

#[test]
fn refusals_name_the_op_and_shapes() {
    let Some(dev) = gpu() else { return };
    let t = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
    // shapes that do not fit the input
    let geom = Conv2d::new(3, 3).stride(2).padding(1);
    let e = t(&[4, 10])
        .conv2d_grad_input_phased(&t(&[4, 27]), geom, &[1, 3, 8, 8])
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Shape {
                op: "conv2d_grad_input_phased",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("[4, 10]"), "{e}");
    // rows past the loop budget: no phase split on the GPU (the graph keeps col2im there)
    let (w, geom) = (
        65_540usize,
        Conv2d::new(1, 3).strides(1, 2).pads(0, 1, 0, 1),
    );
    let (oh, ow) = geom.output_size("test", &[1, 1, 1, w]).unwrap();
    let e = t(&[4, oh * ow])
        .conv2d_grad_input_phased(&t(&[4, 3]), geom, &[1, 1, 1, w])
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Invalid {
                op: "conv2d_grad_input_phased",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("65540"), "{e}");
}
