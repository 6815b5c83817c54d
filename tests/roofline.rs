//! Roofline probes (shaders/roofline.wgsl): the kernels `wgrad bench` times for
//! the memory and compute roofs do the work they claim, checked against the CPU
//! reference on awkward sizes; the FMA reference against its closed form.

mod common;

use common::{assert_close, gpu, pair, uniform};
use wgrad::roofline::{copy_vec4, fma_peak, fma_peak_reference, FMA_CHAINS, MAX_FMA_STEPS};
use wgrad::{Device, Error, Tensor};

#[test]
fn copy_vec4_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    // vec4 counts: 1, odd, around the 256-invocation workgroup, large.
    for vecs in [1usize, 3, 255, 256, 257, 70_001] {
        let data = uniform(vecs as u64, vecs * 4, -3.0, 3.0);
        let (g, c) = pair(&dev, &data, &[vecs, 4]);
        let got = copy_vec4(&g).unwrap().to_vec::<f32>().unwrap();
        let want = copy_vec4(&c).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(want, data, "the reference copy is the identity");
        assert_close(&format!("copy_vec4 {vecs}"), &got, &want, 0.0, 0.0);
    }
}

#[test]
fn fma_reference_follows_the_closed_form() {
    // x_k = 1 + (x_0 - 1)·0.999^k for chain k of FMA_CHAINS (seeded s + k/FMA_CHAINS),
    // summed over the chains.
    for (s, iters) in [(0.3f32, 0u32), (-2.0, 1), (1.7, 500), (0.0, 4000)] {
        let got = fma_peak_reference([s; 4], iters);
        let want: f64 = (0..FMA_CHAINS)
            .map(|j| {
                let x0 = s as f64 + j as f64 / FMA_CHAINS as f64;
                1.0 + (x0 - 1.0) * 0.999f64.powi(iters as i32)
            })
            .sum();
        for g in got {
            assert!(
                (g as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                "s={s} iters={iters}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn fma_peak_matches_the_reference() {
    let Some(dev) = gpu() else { return };
    for (vecs, iters) in [(1usize, 1u32), (3, 7), (255, 64), (257, 300), (4097, 1000)] {
        let data = uniform(7 + vecs as u64, vecs * 4, -2.0, 2.0);
        let (g, c) = pair(&dev, &data, &[vecs * 4]);
        let got = fma_peak(&g, iters).unwrap().to_vec::<f32>().unwrap();
        let want = fma_peak(&c, iters).unwrap().to_vec::<f32>().unwrap();
        // The GPU may fuse or round each step differently from f32::mul_add.
        assert_close(&format!("fma_peak {vecs}x{iters}"), &got, &want, 1e-4, 1e-4);
    }
}

#[test]
fn bad_probe_input_is_a_typed_error() {
    let cpu = Device::cpu();
    let odd = Tensor::zeros(&cpu, &[5]).unwrap();
    for dev in [Some(cpu.clone()), gpu()].into_iter().flatten() {
        let x = odd.to_device(&dev).unwrap();
        assert!(matches!(
            copy_vec4(&x),
            Err(Error::Shape {
                op: "copy_vec4",
                ..
            })
        ));
        assert!(matches!(
            fma_peak(&x, 1),
            Err(Error::Shape { op: "fma_peak", .. })
        ));
        let ok = Tensor::zeros(&dev, &[8]).unwrap();
        assert!(matches!(
            fma_peak(&ok, MAX_FMA_STEPS + 1),
            Err(Error::Invalid { op: "fma_peak", .. })
        ));
    }
}
