//! f16 tensors: casts, element-wise ops and matmul on the GPU (SHADER_F16) against the CPU
//! reference (computed in f64, rounded once to f16 by the `half` crate).

mod common;

use common::{gpu, uniform};
use wgrad::{f16, BinaryOp, DType, Device, Error, Tensor, UnaryOp};

/// f16 tensors with the same values on the GPU and on the CPU reference.
fn pair16(dev: &Device, data: &[f32], shape: &[usize]) -> (Tensor, Tensor) {
    let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    (
        Tensor::from_slice(dev, &h, shape).unwrap(),
        Tensor::from_slice(&Device::cpu(), &h, shape).unwrap(),
    )
}

/// Element-wise `|got - want| <= atol + ulps` f16 ulps of `want` (NaN matches NaN,
/// infinities equal).
fn assert_ulps(label: &str, got: &Tensor, want: &Tensor, ulps: f32, atol: f32) {
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    let (g, w) = (got.to_vec::<f16>().unwrap(), want.to_vec::<f16>().unwrap());
    let bad: Vec<String> = g
        .iter()
        .zip(&w)
        .enumerate()
        .filter(|(_, (g, w))| {
            let (g, w) = (g.to_f32(), w.to_f32());
            if w.is_nan() {
                return !g.is_nan();
            }
            if w.is_infinite() {
                return g != w;
            }
            // One ulp at w's binade (subnormal spacing below 2^-14).
            let ulp = (w.abs().max(6.1035156e-5)).log2().floor().exp2() * 2f32.powi(-10);
            (g - w).abs() > atol + ulps * ulp
        })
        .take(8)
        .map(|(i, (g, w))| format!("  [{i}] got {g} want {w}"))
        .collect();
    assert!(bad.is_empty(), "{label}: mismatches\n{}", bad.join("\n"));
}

fn gpu16() -> Option<Device> {
    let dev = gpu()?;
    if dev.adapter().is_some_and(|a| a.shader_f16) {
        Some(dev)
    } else {
        eprintln!("skipping f16 GPU checks: adapter has no SHADER_F16");
        None
    }
}

#[test]
fn casts_round_to_nearest_even_with_ieee_overflow() {
    // Specials, the overflow boundary (65519.99 rounds down, 65520 up to inf), ties, subnormals.
    let specials = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65519.0,
        65520.0,
        -70000.0,
        1e9,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        6e-5,
        3e-7,
        1e-9,
    ];
    let cpu = Device::cpu();
    let want: Vec<f16> = specials.iter().map(|&v| f16::from_f32(v)).collect();
    let t = Tensor::from_slice(&cpu, &specials, &[specials.len()]).unwrap();
    let h = t.to_dtype(DType::F16).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    let got = h.to_vec::<f16>().unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "cpu [{i}] {g} vs {w}"
        );
    }
    assert_eq!(want[6], f16::INFINITY, "65520 must round to inf");
    assert_eq!(want[5].to_f32(), 65504.0);
    let Some(dev) = gpu16() else { return };
    for n in [1usize, 2, 3, 257, 1001] {
        let mut data = uniform(n as u64, n, -1000.0, 1000.0);
        for (d, s) in data.iter_mut().zip(specials.iter().cycle()) {
            if (*d as i64) % 3 == 0 {
                *d = *s;
            }
        }
        let on_gpu = Tensor::from_slice(&dev, &data, &[n])
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let g = on_gpu.to_vec::<f16>().unwrap();
        for (i, (g, v)) in g.iter().zip(&data).enumerate() {
            let w = f16::from_f32(*v);
            // Allowed: exact, or both NaN; subnormal results may flush on some adapters.
            let ok = g.to_bits() == w.to_bits()
                || (g.is_nan() && w.is_nan())
                || (w.to_f32().abs() < 6.1035156e-5 && g.to_f32().abs() < 6.1035156e-5);
            assert!(ok, "n={n} [{i}] f32 {v} -> GPU {g} vs reference {w}");
        }
        // And back: f16 -> f32 is exact.
        let back = on_gpu
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (b, g) in back.iter().zip(&g) {
            assert!(
                b.to_bits() == g.to_f32().to_bits() || b.is_nan(),
                "{b} vs {g}"
            );
        }
    }
}

#[test]
fn unary_ops_match_the_reference_within_one_ulp() {
    let Some(dev) = gpu16() else { return };
    for op in UnaryOp::ALL {
        let (lo, hi) = match op {
            UnaryOp::Log | UnaryOp::Sqrt => (0.01, 50.0),
            UnaryOp::Exp => (-8.0, 8.0),
            _ => (-6.0, 6.0),
        };
        for n in [1usize, 3, 257, 1000] {
            let data = uniform(7 + n as u64, n, lo, hi);
            let (g, c) = pair16(&dev, &data, &[n]);
            let label = format!("{} n={n}", op.name());
            // atol: the f32 kernels' own approximation error (GELU's erf: 1.5e-7 · |x|).
            assert_ulps(
                &label,
                &g.unary(op).unwrap(),
                &c.unary(op).unwrap(),
                1.0,
                1e-6,
            );
        }
    }
}

#[test]
fn arithmetic_is_exact_ieee_half_and_broadcasts() {
    let Some(dev) = gpu16() else { return };
    for (sa, sb) in [
        (&[5, 7][..], &[5, 7][..]),
        (&[1], &[3]),
        (&[4, 3], &[3]),
        (&[2, 1, 5], &[3, 1]),
        (&[257], &[257]),
    ] {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let (ga, ca) = pair16(&dev, &uniform(1, na, -100.0, 100.0), sa);
        let (gb, cb) = pair16(&dev, &uniform(2, nb, 0.5, 100.0), sb);
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let label = format!("{} {sa:?} {sb:?}", op.name());
            // + − × ÷ computed in f32 and rounded once are the correctly rounded f16 result.
            assert_ulps(
                &label,
                &ga.binary(&gb, op).unwrap(),
                &ca.binary(&cb, op).unwrap(),
                0.0,
                0.0,
            );
        }
        for op in [BinaryOp::Pow, BinaryOp::Maximum, BinaryOp::Lt] {
            let (ga, ca) = pair16(&dev, &uniform(3, na, 0.5, 2.0), sa);
            let label = format!("{} {sa:?} {sb:?}", op.name());
            let (gb2, cb2) = pair16(&dev, &uniform(4, nb, -3.0, 3.0), sb);
            assert_ulps(
                &label,
                &ga.binary(&gb2, op).unwrap(),
                &ca.binary(&cb2, op).unwrap(),
                1.0,
                0.0,
            );
        }
    }
    // Scalars on either side, and overflow to inf.
    let (g, c) = pair16(&dev, &uniform(5, 33, -100.0, 100.0), &[33]);
    for (op, s, lhs) in [
        (BinaryOp::Mul, 1000.0, false),
        (BinaryOp::Sub, 0.1, true),
        (BinaryOp::Div, 3.0, false),
    ] {
        let label = format!("scalar {} {s} lhs={lhs}", op.name());
        let (got, want) = (
            g.binary_scalar(op, s, lhs).unwrap(),
            c.binary_scalar(op, s, lhs).unwrap(),
        );
        assert_ulps(&label, &got, &want, 0.0, 0.0);
    }
    let big = g
        .binary_scalar(BinaryOp::Mul, 1e4, false)
        .unwrap()
        .to_vec::<f16>()
        .unwrap();
    assert!(
        big.iter().any(|v| v.is_infinite()),
        "values past 65504 must overflow to inf"
    );
}

#[test]
fn matmul_accumulates_in_f32_and_rounds_once() {
    let Some(dev) = gpu16() else { return };
    let cases: [(&[usize], &[usize], bool, bool); 7] = [
        (&[1, 1], &[1, 1], false, false),
        (&[3, 5], &[5, 7], false, false),
        (&[17, 33], &[33, 9], false, false),
        (&[33, 17], &[33, 9], true, false),
        (&[17, 33], &[9, 33], false, true),
        (&[2, 3, 4, 5], &[5, 3], false, false),
        (&[2, 1, 7, 64], &[3, 64, 5], false, false),
    ];
    for (sa, sb, ta, tb) in cases {
        let (ga, ca) = pair16(&dev, &uniform(11, sa.iter().product(), -1.0, 1.0), sa);
        let (gb, cb) = pair16(&dev, &uniform(12, sb.iter().product(), -1.0, 1.0), sb);
        let label = format!(
            "matmul {sa:?}{} {sb:?}{}",
            if ta { "^T" } else { "" },
            if tb { "^T" } else { "" }
        );
        let got = ga.matmul_t(&gb, ta, tb).unwrap();
        let want = ca.matmul_t(&cb, ta, tb).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        // f32 vs f64 accumulation may cross one f16 rounding boundary.
        assert_ulps(&label, &got, &want, 1.0, 0.0);
    }
}

#[test]
fn mixed_or_unsupported_dtypes_are_typed_errors() {
    let cpu = Device::cpu();
    let a = Tensor::from_slice(&cpu, &[f16::from_f32(1.0); 4], &[4]).unwrap();
    let b = Tensor::from_slice(&cpu, &[1.0f32; 4], &[4]).unwrap();
    let e = a.add(&b).unwrap_err();
    assert!(matches!(e, Error::DType { op: "add", .. }), "{e}");
    assert!(e.to_string().contains("f16"), "{e}");
    let e = a
        .reshape(&[2, 2])
        .unwrap()
        .matmul(&b.reshape(&[2, 2]).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::DType { op: "matmul", .. }), "{e}");
    let labels = Tensor::from_slice(&cpu, &[1i32, 2], &[2]).unwrap();
    let e = labels.to_dtype(DType::F16).unwrap_err();
    assert!(matches!(e, Error::DType { op: "to_dtype", .. }), "{e}");
    // Ops that stay f32 reject f16 with the op's name.
    let e = a.sum().unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
}
