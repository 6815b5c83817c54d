//! F16 and BF16 safetensors: loading (widened to f32, or kept as f16), saving f32 as F16/BF16
//! (round to nearest even, ±inf beyond the largest finite value), and the model-parameter path.
//!
//! Expected values never come from wgrad: the fixtures in tests/fixtures/safetensors were
//! written by the Python `safetensors` package with numpy's and ml_dtypes' casts (see
//! generate.py there), and the rest are bit patterns written out by hand.

mod common;

use std::path::PathBuf;

use common::devices;
use safetensors::SafeTensors;
use wgrad::io::{
    load_safetensors, load_safetensors_bytes, load_safetensors_bytes_with, load_safetensors_with,
    safetensors_bytes_with, save_safetensors_with, HalfFormat, LoadOptions, SaveOptions,
};
use wgrad::nn::{load_params, save_params_with, Linear, Module};
use wgrad::{f16, DType, Device, Error, Graph, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/safetensors")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read fixture")
}

/// The raw little-endian 16-bit values of tensor `name` in a safetensors file, read with the
/// `safetensors` crate directly (not through wgrad).
fn raw16(file: &[u8], name: &str) -> Vec<u16> {
    let st = SafeTensors::deserialize(file).expect("valid safetensors");
    let data = st.tensor(name).expect("tensor present").data().to_vec();
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Tensor `name` of a loaded file.
fn get<'a>(loaded: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &loaded.iter().find(|(n, _)| n == name).expect(name).1
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// The f16 patterns in f16_special.safetensors (generate.py's F16_BITS) and their f32 bits,
/// worked out by hand: ±0, ±smallest subnormal (2^-24), largest subnormal, smallest normal,
/// 1, -2.5, 0.333251953125, ±65504, ±inf, ±quiet NaN, a NaN with payload.
const F16_TO_F32: [(u16, u32); 16] = [
    (0x0000, 0x0000_0000),
    (0x8000, 0x8000_0000),
    (0x0001, 0x3380_0000),
    (0x8001, 0xb380_0000),
    (0x03ff, 0x387f_c000),
    (0x0400, 0x3880_0000),
    (0x3c00, 0x3f80_0000),
    (0xc100, 0xc020_0000),
    (0x3555, 0x3eaa_a000),
    (0x7bff, 0x477f_e000),
    (0xfbff, 0xc77f_e000),
    (0x7c00, 0x7f80_0000),
    (0xfc00, 0xff80_0000),
    (0x7e00, 0x7fc0_0000),
    (0xfe00, 0xffc0_0000),
    (0x7e01, 0x7fc0_2000),
];

/// generate.py's BF16_BITS: a bf16 value is the top half of its f32, so its f32 bits are
/// `bits << 16`.
const BF16_BITS: [u16; 15] = [
    0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x3f80, 0xc020, 0x3eab, 0x7f7f, 0xff7f, 0x7f80,
    0xff80, 0x7fc0, 0xffc0,
];

#[test]
fn f16_and_bf16_files_from_python_widen_to_the_exact_f32() {
    let (f16_file, bf16_file) = (
        fixture_bytes("f16_special.safetensors"),
        fixture_bytes("bf16_special.safetensors"),
    );
    // The fixtures hold the patterns the tests below expect.
    let hand16: Vec<u16> = F16_TO_F32.iter().map(|p| p.0).collect();
    assert_eq!(raw16(&f16_file, "x"), hand16);
    assert_eq!(raw16(&bf16_file, "x"), BF16_BITS);
    for dev in devices() {
        let l = dev.name();
        let got = load_safetensors(fixture("f16_special.safetensors"), &dev).unwrap();
        let x = get(&got, "x");
        assert_eq!((x.dtype(), x.shape()), (DType::F32, &[16][..]), "{l}");
        let hand: Vec<u32> = F16_TO_F32.iter().map(|p| p.1).collect();
        assert_eq!(
            f32_bits(x),
            hand,
            "{l}: f16 -> f32 against hand-written bits"
        );
        assert_eq!(
            f32_bits(x),
            f32_bits(get(&got, "x_f32")),
            "{l}: against numpy"
        );

        let got = load_safetensors(fixture("bf16_special.safetensors"), &dev).unwrap();
        let x = get(&got, "x");
        assert_eq!((x.dtype(), x.shape()), (DType::F32, &[15][..]), "{l}");
        let hand: Vec<u32> = BF16_BITS.iter().map(|&b| u32::from(b) << 16).collect();
        assert_eq!(
            f32_bits(x),
            hand,
            "{l}: bf16 -> f32 against hand-written bits"
        );
        assert_eq!(
            f32_bits(x),
            f32_bits(get(&got, "x_f32")),
            "{l}: against ml_dtypes"
        );
    }
}

#[test]
fn keep_f16_loads_the_files_bits_as_an_f16_tensor() {
    let keep = LoadOptions { keep_f16: true };
    for dev in devices() {
        assert!(
            dev.supports_f16(),
            "lavapipe and the CPU reference have f16"
        );
        let got = load_safetensors_with(fixture("f16_special.safetensors"), &dev, keep).unwrap();
        let x = get(&got, "x");
        assert_eq!(x.dtype(), DType::F16, "{}", dev.name());
        let bits: Vec<u16> = x
            .to_vec::<f16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let hand: Vec<u16> = F16_TO_F32.iter().map(|p| p.0).collect();
        assert_eq!(bits, hand, "{}", dev.name());
        // F32 stays F32, BF16 still widens (wgrad has no bf16 tensors).
        assert_eq!(get(&got, "x_f32").dtype(), DType::F32);
        let b = load_safetensors_with(fixture("bf16_special.safetensors"), &dev, keep).unwrap();
        assert_eq!(get(&b, "x").dtype(), DType::F32);
        // An f16 tensor is saved as its own bits: the file's bytes come back unchanged.
        let again = safetensors_bytes_with(&[("x", x)], SaveOptions::default()).unwrap();
        assert_eq!(raw16(&again, "x"), hand, "{}", dev.name());
    }
}

/// A safetensors file holding one 1-D tensor of 16-bit values, built by hand.
fn st16(dtype: &str, bits: &[u16]) -> Vec<u8> {
    let n = bits.len();
    let header = format!(
        r#"{{"x":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        2 * n
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
    out
}

#[test]
fn every_f16_and_bf16_pattern_survives_widening_and_narrowing_bit_exact() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    // (format, exponent mask, quiet bit): a signalling NaN comes back quiet, every other
    // pattern (±0, subnormals, normals, ±inf, quiet NaNs) comes back as it went in.
    let cases = [
        (HalfFormat::F16, 0x7c00u16, 0x0200u16),
        (HalfFormat::BF16, 0x7f80, 0x0040),
    ];
    for dev in devices() {
        for (format, exp, quiet) in cases {
            let file = st16(format.name(), &all);
            let loaded = load_safetensors_bytes(&file, &dev).unwrap();
            let x = get(&loaded, "x");
            assert_eq!(x.dtype(), DType::F32);
            let back = safetensors_bytes_with(&[("x", x)], SaveOptions::half(format)).unwrap();
            let got = raw16(&back, "x");
            let mut bad = Vec::new();
            for (&b, &g) in all.iter().zip(&got) {
                let nan = b & exp == exp && b & !(exp | 0x8000) != 0;
                let want = if nan { b | quiet } else { b };
                if g != want {
                    bad.push(format!("{b:#06x} -> {g:#06x} (want {want:#06x})"));
                }
            }
            assert!(bad.is_empty(), "{} {format}: {bad:?}", dev.name());
        }
    }
}

#[test]
fn wgrad_writes_the_same_f16_and_bf16_files_as_python() {
    let dir = std::env::temp_dir().join(format!("wgrad_st_half_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for dev in devices() {
        let src = load_safetensors(fixture("f32_source.safetensors"), &dev).unwrap();
        let named: Vec<(&str, &Tensor)> = src.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (format, expected) in [
            (HalfFormat::F16, "f32_as_f16.safetensors"),
            (HalfFormat::BF16, "f32_as_bf16.safetensors"),
        ] {
            let want = fixture_bytes(expected);
            let path = dir.join(expected);
            save_safetensors_with(&path, &named, SaveOptions::half(format)).unwrap();
            let got = std::fs::read(&path).unwrap();
            for name in ["x", "m"] {
                let (g, w) = (raw16(&got, name), raw16(&want, name));
                let diff: Vec<String> = g
                    .iter()
                    .zip(&w)
                    .enumerate()
                    .filter(|(_, (g, w))| g != w)
                    .take(8)
                    .map(|(i, (g, w))| format!("[{i}] {g:#06x} vs python {w:#06x}"))
                    .collect();
                assert!(diff.is_empty(), "{} {format} {name}: {diff:?}", dev.name());
            }
            // Header and all: byte for byte the file the Python package wrote.
            assert_eq!(got, want, "{} {format}: whole file", dev.name());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn values_beyond_the_largest_finite_are_stored_as_infinity() {
    // (value, F16 bits, BF16 bits), by hand: f16's largest finite is 65504 (0x7bff) and the
    // tie 65520 rounds to even, which is inf; bf16's is 0x7f7f (3.3895314e38) and its tie
    // 3.3961776e38 (f32 0x7f7f8000) rounds to inf too.
    let cases: [(f32, u16, u16); 9] = [
        (65504.0, 0x7bff, 0x4780),
        (65519.996, 0x7bff, 0x4780),
        (65520.0, 0x7c00, 0x4780),
        (-1e5, 0xfc00, 0xc7c3),
        (3.389_531_4e38, 0x7c00, 0x7f7f),
        (f32::from_bits(0x7f7f_8000), 0x7c00, 0x7f80),
        (f32::MAX, 0x7c00, 0x7f80),
        (-f32::MAX, 0xfc00, 0xff80),
        (f32::NEG_INFINITY, 0xfc00, 0xff80),
    ];
    let values: Vec<f32> = cases.iter().map(|c| c.0).collect();
    for dev in devices() {
        let t = Tensor::from_slice(&dev, &values, &[values.len()]).unwrap();
        for (format, pick) in [(HalfFormat::F16, 1), (HalfFormat::BF16, 2)] {
            let file = safetensors_bytes_with(&[("x", &t)], SaveOptions::half(format)).unwrap();
            let want: Vec<u16> = cases
                .iter()
                .map(|c| if pick == 1 { c.1 } else { c.2 })
                .collect();
            assert_eq!(raw16(&file, "x"), want, "{} {format}", dev.name());
        }
    }
}

#[test]
fn an_f16_tensor_saved_as_bf16_rounds_once() {
    // f16 0x3c01 = 1 + 2^-10 lies between bf16 1.0 (0x3f80) and 1 + 2^-7 (0x3f81), nearer 1.0;
    // 0x3c0c = 1 + 12·2^-10 = 1 + 1.5·2^-7, a tie between 0x3f81 and 0x3f82: even is 0x3f82.
    let cpu = Device::cpu();
    let h: Vec<f16> = [0x3c01u16, 0x3c0c, 0xfbff]
        .iter()
        .map(|&b| f16::from_bits(b))
        .collect();
    let t = Tensor::from_slice(&cpu, &h, &[3]).unwrap();
    let file = safetensors_bytes_with(&[("x", &t)], SaveOptions::half(HalfFormat::BF16)).unwrap();
    // -65504 = -(2 - 2^-10)·2^15 rounds up in magnitude to -2^16 (0xc780).
    assert_eq!(raw16(&file, "x"), [0x3f80, 0x3f82, 0xc780]);
}

#[test]
fn model_parameters_save_as_bf16_and_load_back_as_f32() {
    let path = std::env::temp_dir().join(format!("wgrad_st_half_nn_{}.st", std::process::id()));
    for dev in devices() {
        let build = || {
            let g = Graph::new();
            let x = g.input("x", &[2, 5]);
            let lin = Linear::new(&g, "lin", 5, 3, 7);
            let y = lin.forward(&x).unwrap();
            (g, lin, y)
        };
        let (g, lin, y) = build();
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let names = lin.param_names();
        for format in [HalfFormat::BF16, HalfFormat::F16] {
            save_params_with(&exe, &names, &path, SaveOptions::half(format)).unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            let (g2, lin2, y2) = build();
            let fresh = dev.compile(&g2, &[&y2], None).unwrap();
            load_params(&fresh, &lin2.param_names(), &path).unwrap();
            for name in &names {
                let a = exe.param(name).unwrap().to_vec::<f32>().unwrap();
                let b = fresh.param(name).unwrap().to_vec::<f32>().unwrap();
                assert_eq!(fresh.param(name).unwrap().dtype(), DType::F32);
                for (a, b) in a.iter().zip(&b) {
                    // Within half a unit in the last place of the 16-bit format, and (bf16)
                    // exactly an f32 whose low 16 bits are zero.
                    let frac_bits = if format == HalfFormat::BF16 { 8 } else { 11 };
                    let half_ulp = a.abs() * 2f32.powi(-frac_bits);
                    assert!((a - b).abs() <= half_ulp, "{name}: {a} -> {b} ({format})");
                    if format == HalfFormat::BF16 {
                        assert_eq!(b.to_bits() & 0xffff, 0, "{name}: {b}");
                    }
                }
            }
            assert!(size < 200, "{format}: 18 values take {size} bytes");
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn set_param_widens_f16_and_refuses_other_dtypes() {
    for dev in devices() {
        let g = Graph::new();
        let x = g.input("x", &[1, 2]);
        let lin = Linear::new(&g, "lin", 2, 2, 1);
        let y = lin.forward(&x).unwrap();
        let exe = dev.compile(&g, &[&y], None).unwrap();
        let name = "lin.weight";
        assert!(lin.param_names().iter().any(|n| n == name));
        let h: Vec<f16> = [0x3c00u16, 0xc100, 0x0001, 0x7bff]
            .iter()
            .map(|&b| f16::from_bits(b))
            .collect();
        let w = Tensor::from_slice(&Device::cpu(), &h, &[2, 2]).unwrap();
        exe.set_param(name, &w).unwrap();
        let got = exe.param(name).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert_eq!(
            f32_bits(&got),
            [0x3f80_0000, 0xc020_0000, 0x3380_0000, 0x477f_e000]
        );
        let i = Tensor::from_slice(&Device::cpu(), &[1i32, 2, 3, 4], &[2, 2]).unwrap();
        let e = exe.set_param(name, &i).unwrap_err();
        assert!(
            matches!(&e, Error::DType { op: "set_param", got, .. } if got.contains(name)),
            "{e}"
        );
    }
}

#[test]
fn half_data_of_the_wrong_length_is_an_error_naming_file_and_tensor() {
    let dir = std::env::temp_dir().join(format!("wgrad_st_half_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (file, header, data bytes): the header's dtype and shape disagree with the data length.
    let cases = [
        (
            "f16_short.safetensors",
            r#"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
            4,
        ),
        (
            "f16_long.safetensors",
            r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,6]}}"#,
            6,
        ),
        (
            "f16_odd.safetensors",
            r#"{"w":{"dtype":"F16","shape":[1],"data_offsets":[0,3]}}"#,
            3,
        ),
        (
            "bf16_odd.safetensors",
            r#"{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,3]}}"#,
            3,
        ),
        (
            "bf16_2d.safetensors",
            r#"{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,6]}}"#,
            6,
        ),
    ];
    for (file, header, n) in cases {
        let mut h = header.as_bytes().to_vec();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend(std::iter::repeat_n(0x3cu8, n));
        let path = dir.join(file);
        std::fs::write(&path, &bytes).unwrap();
        for keep_f16 in [false, true] {
            let r = load_safetensors_with(&path, &Device::cpu(), LoadOptions { keep_f16 });
            match r {
                Err(
                    e @ Error::Invalid {
                        op: "load_safetensors",
                        ..
                    },
                ) => {
                    let msg = e.to_string();
                    assert!(msg.contains(file) && msg.contains("tensor \"w\""), "{msg}");
                }
                other => panic!("{file}: expected Error::Invalid, got {other:?}"),
            }
            let r = load_safetensors_bytes_with(&bytes, &Device::cpu(), LoadOptions { keep_f16 });
            assert!(matches!(r, Err(Error::Invalid { .. })), "{file}: {r:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
