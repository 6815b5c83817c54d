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
            UnaryOp::Log1p => (-0.99, 50.0),
            UnaryOp::Asin | UnaryOp::Acos | UnaryOp::Atanh => (-0.999, 0.999),
            UnaryOp::Acosh => (1.0, 50.0),
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

/// Shape pairs for the broadcast fast path (run in both operand orders): merged ranks 1-3
/// with even rows (runs of 8, 4, 2) and odd rows (runs carried across rows, odd sizes), 0-d
/// and size-1 operands, and shapes whose merged rank is above 3 (the generic entry).
const BROADCASTS: [(&[usize], &[usize]); 18] = [
    (&[], &[1]),                             // scalars: one element
    (&[], &[5]),                             // a 0-d operand, odd size
    (&[7], &[1]),                            // odd row
    (&[33, 16], &[16]),                      // row bias, runs of 8
    (&[6, 5], &[5]),                         // odd rows, even size
    (&[3, 1], &[1, 4]),                      // outer product, runs of 4
    (&[2, 3, 4], &[1]),                      // merges to rank 1
    (&[5, 7], &[5, 7]),                      // same shape, odd size
    (&[2, 1, 3], &[4, 1]),                   // rank 3, nothing folds, odd rows
    (&[4, 1, 6], &[1, 2, 6]),                // rank 3, runs of 2
    (&[1, 1, 1, 1], &[3, 1, 1]),             // size-1 dims only
    (&[2, 255], &[2, 1]),                    // odd rows of 255
    (&[16, 16, 8, 8], &[1, 16, 1, 1]),       // per-channel bias -> (16, 16, 64)
    (&[9, 40, 7, 7], &[40, 1, 1]),           // odd rows of 49, 9 workgroups
    (&[2, 1, 3, 1], &[1, 4, 1, 5]),          // merged rank 4: generic entry
    (&[2, 1, 3, 1, 5], &[1, 4, 1, 6, 1]),    // merged rank 5
    (&[2, 3, 1, 4, 1, 3], &[3, 5, 1, 2, 1]), // ranks 6 and 5
    (&[257], &[1, 257]),
];

/// Seeded f16 data in [-4, 4) with zeros, ±inf and NaN mixed in (every op's edge cases).
fn edgy_f16(seed: u64, n: usize) -> Vec<f16> {
    let specials = [0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    uniform(seed, n, -4.0, 4.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = if i % 7 == 3 { specials[(i / 7) % 6] } else { v };
            f16::from_f32(v)
        })
        .collect()
}

/// Bit-for-bit equality (any NaN matches any NaN).
fn assert_bits(label: &str, got: &[f16], want: &[f16]) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()))
        .take(8)
        .map(|(i, (g, w))| {
            format!(
                "  [{i}] got {g} ({:#06x}) want {w} ({:#06x})",
                g.to_bits(),
                w.to_bits()
            )
        })
        .collect();
    assert!(bad.is_empty(), "{label}: mismatches\n{}", bad.join("\n"));
}

/// `data` of `shape` repeated `copies` times: the values of a tensor of shape
/// `lead ++ shape` that is `data` at every index of `lead`.
fn tiled(data: &[f16], copies: usize) -> Vec<f16> {
    data.iter()
        .copied()
        .cycle()
        .take(data.len() * copies)
        .collect()
}

#[test]
fn broadcast_fast_path_is_bit_identical_to_the_generic_entry() {
    let Some(dev) = gpu16() else { return };
    let cpu = Device::cpu();
    for (i, &(s1, s2)) in BROADCASTS.iter().enumerate() {
        for (sa, sb) in [(s1, s2), (s2, s1)] {
            let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
            let (da, db) = (edgy_f16(100 + i as u64, na), edgy_f16(200 + i as u64, nb));
            let ga = Tensor::from_slice(&dev, &da, sa).unwrap();
            let gb = Tensor::from_slice(&dev, &db, sb).unwrap();
            // The generic entry, reached by leading dims that never fold: a varies along
            // the even ones and b along the odd ones, so a (2, 1, 2, 1) ++ sa operand
            // against a (1, 2, 1, 2) ++ sb one merges to rank >= 4 (fewer lead dims for
            // ranks 5 and 6, whose pairs here merge to rank >= 5 on their own).
            let out_rank = sa.len().max(sb.len());
            let lead = 4.min(8 - out_rank);
            let (mut la, mut lb) = (vec![], vec![]);
            for d in 0..lead {
                la.push(if d % 2 == 0 { 2 } else { 1 });
                lb.push(if d % 2 == 0 { 1 } else { 2 });
            }
            let copies_a: usize = la.iter().product();
            let copies_b: usize = lb.iter().product();
            // (sa and sb padded to the output's rank so the lead dims line up)
            let pad = |s: &[usize]| vec![1; out_rank - s.len()].into_iter().chain(s.to_vec());
            let shape_a: Vec<usize> = la.iter().copied().chain(pad(sa)).collect();
            let shape_b: Vec<usize> = lb.iter().copied().chain(pad(sb)).collect();
            let wide_a = Tensor::from_slice(&dev, &tiled(&da, copies_a), &shape_a).unwrap();
            let wide_b = Tensor::from_slice(&dev, &tiled(&db, copies_b), &shape_b).unwrap();
            let (ca, cb) = (
                Tensor::from_slice(&cpu, &da, sa).unwrap(),
                Tensor::from_slice(&cpu, &db, sb).unwrap(),
            );
            for op in BinaryOp::ALL {
                let label = format!("{} {sa:?} {sb:?}", op.name());
                let got = ga.binary(&gb, op).unwrap();
                assert_eq!(got.dtype(), DType::F16, "{label}");
                let g = got.to_vec::<f16>().unwrap();
                // Every (2, 2, ..) slice of the generic result is the broadcast result.
                let wide = wide_a.binary(&wide_b, op).unwrap().to_vec::<f16>().unwrap();
                assert_eq!(wide.len(), g.len() << lead, "{label}: generic size");
                for (k, slice) in wide.chunks(g.len().max(1)).enumerate() {
                    assert_bits(&format!("{label} vs generic slice {k}"), &g, slice);
                }
                // And the CPU reference (f64, rounded once): + − × ÷, the comparisons,
                // maximum and minimum are exact; pow within one ulp.
                let ulps = if op == BinaryOp::Pow { 1.0 } else { 0.0 };
                assert_ulps(&label, &got, &ca.binary(&cb, op).unwrap(), ulps, 0.0);
            }
        }
    }
}
