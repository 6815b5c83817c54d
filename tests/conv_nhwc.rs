//! `Tensor::im2col_nhwc` (channels-last patches, for the layout measurement) against the
//! NCHW im2col's reference with its columns reordered, on the CPU and the GPU.

mod common;

use common::devices;
use wgrad::{Conv2d, Device, Tensor};

/// NCHW im2col's columns (c, ki, kj) reordered to NHWC's (ki, kj, c): the existing
/// im2col reference is the reference here.
fn nchw_patches_as_nhwc(cols: &[f32], [n, l, ck]: [usize; 3], c: usize, kk: usize) -> Vec<f32> {
    let mut out = vec![0.0; cols.len()];
    for r in 0..n * l {
        for ch in 0..c {
            for t in 0..kk {
                out[r * ck + t * c + ch] = cols[r * ck + ch * kk + t];
            }
        }
    }
    out
}

#[test]
fn nhwc_patches_match_nchw_im2col_on_cpu_and_gpu() {
    let cases = [
        ([1, 3, 7, 5], Conv2d::new(3, 3).padding(1)),
        ([2, 4, 9, 8], Conv2d::new(3, 3).stride(2).padding(1)),
        ([2, 5, 6, 7], Conv2d::new(3, 2).dilation(2).pads(2, 1, 0, 1)),
        ([1, 8, 5, 5], Conv2d::new(1, 1).stride(2)),
        ([1, 3, 11, 11], Conv2d::new(7, 7).stride(2).padding(3)),
    ];
    let cpu = Device::cpu();
    for (shape, geom) in cases {
        let numel: usize = shape.iter().product();
        let data: Vec<f32> = (0..numel).map(|i| ((i * 37 % 101) as f32) - 50.0).collect();
        let x = Tensor::from_slice(&cpu, &data, &shape).unwrap();
        let cols = x.im2col(geom).unwrap();
        let dims: [usize; 3] = cols.shape().try_into().unwrap();
        let want = nchw_patches_as_nhwc(
            &cols.to_vec::<f32>().unwrap(),
            dims,
            shape[1],
            geom.kh * geom.kw,
        );
        for dev in &devices() {
            let xd = Tensor::from_slice(dev, &data, &shape)
                .unwrap()
                .permute(&[0, 2, 3, 1])
                .unwrap();
            let got = xd.im2col_nhwc(geom).unwrap();
            assert_eq!(got.shape(), &dims[..], "{shape:?} {geom:?}");
            assert_eq!(
                got.to_vec::<f32>().unwrap(),
                want,
                "{shape:?} {geom:?} on {dev:?}"
            );
        }
    }
    let bad = Tensor::zeros(&cpu, &[2, 3, 4]).unwrap();
    let err = bad.im2col_nhwc(Conv2d::new(1, 1)).unwrap_err().to_string();
    assert!(
        err.contains("im2col_nhwc") && err.contains("[2, 3, 4]"),
        "{err}"
    );
}

/// A tap's channel run longer than the kernel's loop budget is refused, naming the op and
/// the shape, never cut short (lavapipe would stop the copy silently).
#[test]
fn nhwc_channel_run_past_the_loop_budget_is_an_error() {
    let Some(gpu) = common::gpu() else { return };
    let x = Tensor::zeros(&gpu, &[1, 1, 1, 16_385]).unwrap();
    let err = x.im2col_nhwc(Conv2d::new(1, 1)).unwrap_err().to_string();
    assert!(
        err.contains("im2col_nhwc") && err.contains("16385"),
        "{err}"
    );
}
