//! Tensors: upload and readback, views, dtype and device checks, the buffer
//! pool, and the binding-size limit.

mod common;

use common::gpu;
use wgrad::{DType, Device, Error, Tensor};

#[test]
fn upload_and_readback_round_trip() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        for n in [1usize, 3, 255, 257, 100_003] {
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
            let t = Tensor::from_slice(&dev, &data, &[n]).unwrap();
            assert_eq!(
                t.to_vec::<f32>().unwrap(),
                data,
                "f32 n={n} on {}",
                dev.name()
            );
            let ints: Vec<i32> = (0..n as i32).map(|i| i - 3).collect();
            let t = Tensor::from_slice(&dev, &ints, &[n]).unwrap();
            assert_eq!(t.dtype(), DType::I32);
            assert_eq!(t.to_vec::<i32>().unwrap(), ints);
            assert!(matches!(
                t.to_vec::<f32>().unwrap_err(),
                Error::DType { .. }
            ));
        }
        let s = Tensor::scalar(&dev, 2.5).unwrap();
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.item().unwrap(), 2.5);
        assert!(Tensor::zeros(&dev, &[2]).unwrap().item().is_err());
    }
}

#[test]
fn async_readback_matches_blocking() {
    let Some(dev) = gpu() else { return };
    let t = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], &[3]).unwrap();
    let doubled = t.mul_scalar(2.0).unwrap();
    let v = pollster::block_on(doubled.to_vec_async::<f32>()).unwrap();
    assert_eq!(v, vec![2.0, 4.0, 6.0]);
}

#[test]
fn reshape_is_a_view_and_checks_sizes() {
    for dev in [Some(Device::cpu()), gpu()].into_iter().flatten() {
        let t = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let r = t.reshape(&[3, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        assert_eq!(r.strides(), vec![2, 1]);
        assert_eq!(r.to_vec::<f32>().unwrap(), t.to_vec::<f32>().unwrap());
        assert_eq!(t.reshape_infer(&[-1, 2]).unwrap().shape(), &[3, 2]);
        let e = t.reshape(&[4, 2]).unwrap_err();
        assert!(
            matches!(e, Error::Shape { op: "reshape", .. }) && e.to_string().contains("[2, 3]"),
            "{e}"
        );
        assert!(t.reshape_infer(&[-1, -1]).is_err());
        assert!(t.reshape_infer(&[-1, 4]).is_err());
        assert_eq!(t.reshape(&[1, 6, 1]).unwrap().squeeze().shape(), &[6]);
    }
}

#[test]
fn moving_between_devices_keeps_values() {
    let Some(dev) = gpu() else { return };
    let data = common::uniform(9, 1000, -3.0, 3.0);
    let c = Tensor::from_slice(&Device::cpu(), &data, &[10, 100]).unwrap();
    let g = c.to_device(&dev).unwrap();
    assert!(g.device().is_gpu());
    assert_eq!(
        g.to_device(&Device::cpu())
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        data
    );
}

#[test]
fn pool_reuses_buffers() {
    // A device of its own: other tests allocating on the shared one would skew the counts.
    if gpu().is_none() {
        return;
    }
    let dev = Device::gpu().unwrap();
    let x = Tensor::from_slice(&dev, &vec![1.0f32; 4096], &[4096]).unwrap();
    // Warm: the first result allocates, later ones of the same size reuse.
    drop(x.exp().unwrap());
    let before = dev.pool_stats();
    for _ in 0..20 {
        drop(x.exp().unwrap());
    }
    dev.synchronize().unwrap();
    let after = dev.pool_stats();
    assert!(
        after.reused >= before.reused + 20,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.created <= before.created + 1,
        "{before:?} -> {after:?}"
    );
}

/// A tensor past max_storage_buffer_binding_size is fine (ops that cannot split it
/// say so with `TooLarge`; see tests/big_tensors.rs); past max_buffer_size it is an
/// error naming that limit.
#[test]
fn tensor_over_the_binding_limit_is_allowed_and_over_max_buffer_size_is_an_error() {
    let Some(dev) = gpu() else { return };
    let summary = dev.adapter().unwrap();
    let (limit, max_buffer) = (summary.max_storage_binding, summary.max_buffer);
    if limit > 512 << 20 || max_buffer > 4 << 30 {
        eprintln!("limits {limit}/{max_buffer} too large to provoke here; skipping");
        return;
    }
    let n = (limit / 4 + 1024) as usize;
    let t = Tensor::full(&dev, 1.5, &[n]).unwrap();
    let v = t.to_vec::<f32>().unwrap();
    assert!(v.len() == n && v[0] == 1.5 && v[n - 1] == 1.5);
    drop((t, v));
    let n = (max_buffer / 4 + 1024) as usize;
    let e = Tensor::zeros(&dev, &[n]).unwrap_err();
    match &e {
        Error::TooLarge { op, limit: l, .. } => {
            assert_eq!(*op, "full");
            assert_eq!(*l, max_buffer);
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(e.to_string().contains("max_buffer_size"), "{e}");
}

#[test]
fn upload_into_a_recycled_buffer_is_not_overwritten_by_pending_work() {
    let Some(dev) = gpu() else { return };
    // The exp output's buffer is freed while its write is still unsubmitted; the
    // next upload of the same size reuses it and must keep its own data.
    let a = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    drop(a.exp().unwrap());
    let u = Tensor::from_slice(&dev, &[9.0f32; 4], &[2, 2]).unwrap();
    assert_eq!(u.to_vec::<f32>().unwrap(), vec![9.0; 4]);
}
