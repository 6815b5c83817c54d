//! Gather with i32 indices and its adjoint scatter-add (src/ops/gather.rs): the GPU against
//! the CPU reference on awkward shapes (negative and repeated indices, a scalar index, axes
//! of 70,000 and index lists of 70,000, past one invocation's loop budget), gradients
//! against f64 finite differences, bad indices, bad shapes and tensors past one binding.

mod common;

use common::{assert_close, check_finite_differences, gpu, uniform, Feed};
use wgrad::autodiff::grad;
use wgrad::{Device, Error, Graph, Tensor};

/// Seeded indices in `-n..n` (every value valid, negatives counting from the end).
fn indices(seed: u64, count: usize, n: usize) -> Vec<i32> {
    uniform(seed, count, 0.0, 1.0)
        .iter()
        .map(|&u| ((u * 2.0 * n as f32) as i64 - n as i64).clamp(-(n as i64), n as i64 - 1) as i32)
        .collect()
}

/// `y = data.gather(idx, axis)` and `d sum(y·c) / d data`, on `dev`.
fn gather_and_grad(
    dev: &Device,
    data: &[f32],
    shape: &[usize],
    idx: &[i32],
    idx_shape: &[usize],
    axis: isize,
) -> (Vec<f32>, Vec<f32>) {
    let g = Graph::new();
    let x = g.input("x", shape);
    let i = g.input_i32("i", idx_shape);
    let y = x.gather(&i, axis).unwrap();
    let n: usize = y.shape().iter().product();
    let c = Tensor::from_slice(&Device::cpu(), &uniform(3, n, -1.0, 1.0), y.shape()).unwrap();
    let loss = y.mul(&g.constant(&c).unwrap()).unwrap().sum().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    let exe = dev.compile(&g, &[&y, &dx], None).unwrap();
    let xt = Tensor::from_slice(dev, data, shape).unwrap();
    let it = Tensor::from_slice(dev, idx, idx_shape).unwrap();
    let out = exe.run(&[("x", &xt), ("i", &it)]).unwrap();
    (out[0].to_vec().unwrap(), out[1].to_vec().unwrap())
}

#[test]
fn gpu_matches_cpu_on_awkward_shapes() {
    let Some(dev) = gpu() else { return };
    // (data shape, axis, index shape)
    let cases: &[(&[usize], isize, &[usize])] = &[
        (&[5, 3], 0, &[7]),
        (&[1], 0, &[1, 1]),
        (&[4, 3, 2], -1, &[]),
        (&[2, 5, 3], 1, &[2, 3]),
        (&[3, 17, 1], 1, &[1]),
        // a long gathered axis
        (&[2, 70_000], 1, &[3, 5]),
        (&[70_001, 2], 0, &[9]),
        // many indices: the gradient's scatter walks 70,000 positions in 5 dispatches
        (&[3, 2], 0, &[70_000]),
        (&[2, 3, 5], 1, &[250, 281]),
        // rows wider than one scatter chunk (64), several position windows
        (&[5, 130], 0, &[600]),
        (&[3, 64, 2], 2, &[1000]),
    ];
    for (k, &(shape, axis, ishape)) in cases.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let data = uniform(k as u64, numel, -2.0, 2.0);
        let a = axis.rem_euclid(shape.len() as isize) as usize;
        let idx = indices(100 + k as u64, ishape.iter().product(), shape[a]);
        let label = format!("gather {shape:?} axis {axis} indices {ishape:?}");
        let (y_cpu, dx_cpu) = gather_and_grad(&Device::cpu(), &data, shape, &idx, ishape, axis);
        let (y_gpu, dx_gpu) = gather_and_grad(&dev, &data, shape, &idx, ishape, axis);
        assert_eq!(y_gpu, y_cpu, "{label}: values (a copy, so exact)");
        // The GPU sums up to m gradient terms in f32 in order, the reference in f64: allow
        // rounding growing with m (at worst m·2⁻²⁴ times the terms' size, in practice like √m).
        let m = idx.len() as f32;
        let atol = 1e-5 + 1e-8 * m;
        assert_close(&format!("{label}: gradient"), &dx_gpu, &dx_cpu, atol, 1e-5);
    }
    // The scatter's worst case: every position selects the same row (each invocation of
    // that row adds at every position), 1000 positions of 200-wide rows.
    let data = uniform(50, 800, -2.0, 2.0);
    let idx = vec![-2; 1000];
    let (y_cpu, dx_cpu) = gather_and_grad(&Device::cpu(), &data, &[4, 200], &idx, &[1000], 0);
    let (y_gpu, dx_gpu) = gather_and_grad(&dev, &data, &[4, 200], &idx, &[1000], 0);
    assert_eq!(y_gpu, y_cpu, "one row 1000 times: values");
    assert_close("one row 1000 times: gradient", &dx_gpu, &dx_cpu, 2e-5, 1e-5);
    assert!(dx_cpu[..400]
        .iter()
        .chain(&dx_cpu[600..])
        .all(|&v| v == 0.0));
}

#[test]
fn cpu_reference_selects_the_right_elements() {
    // Expected values written out by hand from the definition, not from the code.
    let cpu = Device::cpu();
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect(); // (2, 3, 2)
    let x = Tensor::from_slice(&cpu, &data, &[2, 3, 2]).unwrap();
    let i = Tensor::from_slice(&cpu, &[2i32, -3, -1], &[3]).unwrap();
    let y = x.gather(&i, 1).unwrap();
    assert_eq!(y.shape(), [2, 3, 2]);
    assert_eq!(
        y.to_vec::<f32>().unwrap(),
        [4., 5., 0., 1., 4., 5., 10., 11., 6., 7., 10., 11.]
    );
    let s = y.scatter_add(&i, 1, 3).unwrap();
    // index 2 is picked twice (2 and -1), index 0 once, index 1 never
    assert_eq!(
        s.to_vec::<f32>().unwrap(),
        [0., 1., 0., 0., 8., 10., 6., 7., 0., 0., 20., 22.]
    );
    let scalar = Tensor::from_slice(&cpu, &[1i32], &[]).unwrap();
    let row = x.gather(&scalar, 0).unwrap();
    assert_eq!(row.shape(), [3, 2]);
    assert_eq!(row.to_vec::<f32>().unwrap(), [6., 7., 8., 9., 10., 11.]);
}

#[test]
fn gradients_match_finite_differences() {
    // A non-linear loss so the upstream gradient depends on the data: sum(c · y²).
    let shape = [4, 3, 2];
    let data = uniform(9, 24, -1.0, 1.0);
    let g = Graph::new();
    let x = g.input("x", &shape);
    let i = g.input_i32("i", &[2, 2]);
    let y = x.gather(&i, 1).unwrap();
    let c = Tensor::from_slice(&Device::cpu(), &uniform(4, 32, -1.0, 1.0), y.shape()).unwrap();
    let loss = y
        .square()
        .unwrap()
        .mul(&g.constant(&c).unwrap())
        .unwrap()
        .sum()
        .unwrap();
    let dx = grad(&loss, &[&x]).unwrap();
    let feeds = vec![
        ("x".to_string(), Feed::real(&data, &shape)),
        ("i".to_string(), Feed::Labels(vec![0, -1, 2, 0], vec![2, 2])),
    ];
    let a = check_finite_differences("gather", &g, &loss, &dx, &feeds);
    assert!(
        a[0].iter().any(|v| v.abs() > 1e-2),
        "gradient must not vanish"
    );

    // scatter_add (the gradient op itself), and through it gather again (second order).
    let g = Graph::new();
    let v = g.input("v", &[3, 5]);
    let i = g.input_i32("i", &[5]);
    let s = v.scatter_add(&i, 1, 4).unwrap();
    let c = Tensor::from_slice(&Device::cpu(), &uniform(6, 12, -1.0, 1.0), s.shape()).unwrap();
    let loss = s
        .square()
        .unwrap()
        .mul(&g.constant(&c).unwrap())
        .unwrap()
        .sum()
        .unwrap();
    let dv = grad(&loss, &[&v]).unwrap();
    let feeds = vec![
        (
            "v".to_string(),
            Feed::real(&uniform(7, 15, -1.0, 1.0), &[3, 5]),
        ),
        (
            "i".to_string(),
            Feed::Labels(vec![3, -4, 3, 1, -1], vec![5]),
        ),
    ];
    check_finite_differences("scatter_add", &g, &loss, &dv, &feeds);
}

#[test]
fn bad_indices_are_errors_and_the_gpu_reads_nothing_out_of_bounds() {
    let g = Graph::new();
    let x = g.input("x", &[3, 2]);
    let i = g.input_i32("i", &[2]);
    let y = x.gather(&i, 0).unwrap();
    let loss = y.sum().unwrap();
    let dx = grad(&loss, &[&x]).unwrap().remove(0);
    for dev in common::devices() {
        let exe = dev.compile(&g, &[&y, &dx], None).unwrap();
        let xt = Tensor::from_slice(&dev, &[1.0f32, 2., 3., 4., 5., 6.], &[3, 2]).unwrap();
        for bad in [3, -4, i32::MAX, i32::MIN] {
            let it = Tensor::from_slice(&dev, &[1, bad], &[2]).unwrap();
            // A GPU run reports at its first readback.
            let e = exe
                .run(&[("x", &xt), ("i", &it)])
                .and_then(|out| out[0].to_vec::<f32>())
                .err()
                .unwrap_or_else(|| panic!("index {bad} on {} must fail", dev.name()));
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("index {bad} outside -3..3")),
                "{}: {msg}",
                dev.name()
            );
        }
        // The error was reported once; good indices work again.
        let it = Tensor::from_slice(&dev, &[-1, 0], &[2]).unwrap();
        let out = exe.run(&[("x", &xt), ("i", &it)]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), [5., 6., 1., 2.]);
    }
    // On the GPU a bad index gathers 0 (no out-of-bounds read), reported at the readback.
    if let Some(dev) = gpu() {
        let xt = Tensor::from_slice(&dev, &[1.0f32, 2., 3., 4., 5., 6.], &[3, 2]).unwrap();
        let it = Tensor::from_slice(&dev, &[2, 1_000_000, -1], &[3]).unwrap();
        let y = xt.gather(&it, 0).unwrap();
        assert!(
            y.to_vec::<f32>().is_err(),
            "first readback reports the bad index"
        );
        assert_eq!(y.to_vec::<f32>().unwrap(), [5., 6., 0., 0., 5., 6.]);
    }
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let g = Graph::new();
    let x = g.input("x", &[3, 0]);
    let fi = g.input("f", &[2]);
    let i = g.input_i32("i", &[2]);
    assert!(matches!(x.gather(&fi, 0), Err(Error::DType { .. })));
    assert!(matches!(x.gather(&i, 2), Err(Error::Axis { .. })));
    // an empty axis leaves nothing to select
    let e = x.gather(&i, 1).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    // no indices from an empty axis is fine
    let none = g.input_i32("none", &[0]);
    assert_eq!(x.gather(&none, 1).unwrap().shape(), [3, 0]);
    let v = g.input("v", &[3, 4]);
    let e = v.scatter_add(&i, 1, 5).unwrap_err().to_string();
    assert!(e.contains("do not hold indices"), "{e}");
    assert!(v.scatter_add(&none, 1, 5).is_err());
    assert!(v.scatter_add(&i, 3, 5).is_err());
    let e = g
        .input("w", &[3, 2])
        .scatter_add(&i, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("axis of length 0"), "{e}");
    // tensors: f32 indices and a bad index on the CPU reference
    let cpu = Device::cpu();
    let t = Tensor::from_slice(&cpu, &[1.0f32, 2.0], &[2]).unwrap();
    let fidx = Tensor::from_slice(&cpu, &[0.0f32], &[1]).unwrap();
    assert!(matches!(t.gather(&fidx, 0), Err(Error::DType { .. })));
    let bad = Tensor::from_slice(&cpu, &[2i32], &[1]).unwrap();
    let e = t.gather(&bad, 0).unwrap_err().to_string();
    assert!(e.contains("index 2 outside -2..2"), "{e}");
}

#[test]
fn past_one_binding_is_a_too_large_error() {
    let Some(_) = gpu() else { return };
    let dev = Device::gpu().unwrap();
    dev.limit_bindings_for_testing(4096);
    let big = Tensor::zeros(&dev, &[2000, 1]).unwrap();
    let small = Tensor::zeros(&dev, &[1, 1000]).unwrap();
    let two = Tensor::zeros(&dev, &[2, 1]).unwrap();
    let few = Tensor::from_slice(&dev, &[0i32, 1], &[2]).unwrap();
    let many = Tensor::from_slice(&dev, &[0i32; 3], &[3]).unwrap();
    let cases = [
        ("data past the binding", big.gather(&few, 0)),
        ("output past the binding", small.gather(&many, 0)),
        (
            "scatter output past the binding",
            two.scatter_add(&few, 0, 3000),
        ),
    ];
    for (what, r) in cases {
        match r {
            Err(Error::TooLarge { .. }) => {}
            other => panic!("{what}: expected TooLarge, got {other:?}"),
        }
    }
}
