//! File I/O: `.npy` and safetensors round trips on the CPU and the GPU,
//! hand-built headers of every format version, dtype conversions, every kind
//! of bad input (an `Err` naming the file, never a panic), atomic writes, and
//! seeded fuzzing of both readers.

mod common;

use std::path::{Path, PathBuf};

use common::{gpu, uniform};
use wgrad::io::{
    load_safetensors, load_safetensors_bytes, load_safetensors_bytes_with, npy_array_bytes,
    npy_bytes, read_npy, read_npy_array, read_npy_array_bytes, read_npy_bytes, safetensors_bytes,
    safetensors_bytes_with, save_safetensors, write_npy, HalfFormat, LoadOptions, NpyArray,
    NpyDType, NpyData, SaveOptions,
};
use wgrad::{DType, Device, Error, Rng, Tensor};

/// A fresh, empty directory for one test; removed by `Drop`.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wgrad_io_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// The names of the files in the directory, sorted.
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read temp dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Shapes of rank 0 to 4, including a zero-sized one.
const SHAPES: [&[usize]; 7] = [
    &[],
    &[1],
    &[17],
    &[3, 5],
    &[2, 3, 4],
    &[2, 1, 3, 257],
    &[0, 3],
];

fn devices() -> Vec<Device> {
    let mut d = vec![Device::cpu()];
    d.extend(gpu());
    d
}

/// The devices' names joined with the shape, for assertion labels.
fn label(dev: &Device, shape: &[usize]) -> String {
    format!("{} {shape:?}", dev.name())
}

/// Asserts `r` is an `Error::Invalid` whose message contains every needle.
fn assert_invalid<T: std::fmt::Debug>(r: wgrad::Result<T>, needles: &[&str]) {
    match r {
        Err(e @ Error::Invalid { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
            for n in needles {
                assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
            }
        }
        other => panic!("expected Error::Invalid mentioning {needles:?}, got {other:?}"),
    }
}

/// A `.npy` file (format `major`.0) with the given header dict text and data.
fn npy_with(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let prefix = if major == 1 { 10 } else { 12 };
    let mut header = dict.to_string();
    let total = (prefix + header.len() + 1).next_multiple_of(64);
    header.extend(std::iter::repeat_n(' ', total - prefix - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write test file");
}

// ----- .npy -----

#[test]
fn npy_round_trips_f32_and_i32_ranks_0_to_4_on_every_device() {
    let dir = TempDir::new("npy_round_trip");
    for dev in devices() {
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let f = uniform(k as u64, n, -1e3, 1e3);
            let i: Vec<i32> = (0..n as i32).map(|x| x * 7919 - 40_000).collect();
            let tf = Tensor::from_slice(&dev, &f, shape).unwrap();
            let ti = Tensor::from_slice(&dev, &i, shape).unwrap();

            let pf = dir.path(&format!("f{k}.npy"));
            let pi = dir.path(&format!("i{k}.npy"));
            write_npy(&pf, &tf).unwrap();
            write_npy(&pi, &ti).unwrap();
            let bf = read_npy(&pf, &dev).unwrap();
            let bi = read_npy(&pi, &dev).unwrap();
            let l = label(&dev, shape);
            assert_eq!(bf.shape(), shape, "{l}");
            assert_eq!(bf.dtype(), DType::F32, "{l}");
            assert_eq!(bf.device().is_gpu(), dev.is_gpu(), "{l}");
            assert_eq!(bf.to_vec::<f32>().unwrap(), f, "{l}");
            assert_eq!(bi.shape(), shape, "{l}");
            assert_eq!(bi.dtype(), DType::I32, "{l}");
            assert_eq!(bi.to_vec::<i32>().unwrap(), i, "{l}");

            // The in-memory path agrees with the file path.
            let mem = read_npy_bytes(&npy_bytes(&tf).unwrap(), &dev).unwrap();
            assert_eq!(mem.to_vec::<f32>().unwrap(), f, "{l} bytes");
        }
    }
    // Only the written files remain: no temporaries.
    assert_eq!(dir.listing().len(), 2 * SHAPES.len());
}

#[test]
fn npy_written_header_is_numpy_format_1_0() {
    let t = Tensor::from_slice(&Device::cpu(), &[1.5f32, -2.0, 3.25], &[3]).unwrap();
    let b = npy_bytes(&t).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "preamble padded to 64 bytes");
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.ends_with('\n'));
    assert_eq!(
        header.trim_end(),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
    );
    assert_eq!(&b[10 + hlen..], &le_f32(&[1.5, -2.0, 3.25])[..]);

    let s = Tensor::scalar(&Device::cpu(), 4.0).unwrap();
    let b = npy_bytes(&s).unwrap();
    let header = std::str::from_utf8(&b[10..b.len() - 4]).unwrap();
    assert!(header.contains("'shape': ()"), "{header}");
    let m = Tensor::from_slice(&Device::cpu(), &[1i32, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    let b = npy_bytes(&m).unwrap();
    let header = std::str::from_utf8(&b[10..b.len() - 24]).unwrap();
    assert!(header.contains("'descr': '<i4'") && header.contains("'shape': (2, 3)"));
}

#[test]
fn npy_large_rank_header_switches_to_format_2_0() {
    // 70,000 dimensions of size 1 need a header over 65,535 bytes.
    let shape = vec![1usize; 70_000];
    let t = Tensor::from_slice(&Device::cpu(), &[9.0f32], &shape).unwrap();
    let b = npy_bytes(&t).unwrap();
    assert_eq!(&b[6..8], &[2, 0]);
    let hlen = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    assert_eq!((12 + hlen) % 64, 0);
    let back = read_npy_bytes(&b, &Device::cpu()).unwrap();
    assert_eq!(back.shape(), &shape[..]);
    assert_eq!(back.to_vec::<f32>().unwrap(), vec![9.0]);
}

#[test]
fn npy_reads_hand_built_v1_v2_v3_headers() {
    let data = le_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for dev in devices() {
        for major in [1u8, 2, 3] {
            let b = npy_with(major, &dict("<f4", "(2, 3)"), &data);
            let t = read_npy_bytes(&b, &dev).unwrap();
            assert_eq!(t.shape(), &[2, 3], "v{major}");
            assert_eq!(
                t.to_vec::<f32>().unwrap(),
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            );
        }
        // Key order, quoting, spacing and a Python 2 `L` suffix vary between writers.
        let odd = "{\"shape\":(2L,3L),\"fortran_order\":False,\"descr\":\"<f4\"}";
        let t = read_npy_bytes(&npy_with(1, odd, &data), &dev).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        // Version 3.0 allows UTF-8 in the header (here, padding after a comment-free dict).
        let t = read_npy_bytes(&npy_with(3, &dict("<i4", "()"), &7i32.to_le_bytes()), &dev);
        assert_eq!(t.unwrap().to_vec::<i32>().unwrap(), vec![7]);
    }
}

#[test]
fn npy_f8_and_i8_are_converted() {
    let f: Vec<f64> = vec![0.1, -2.5, 1e300, 3.0];
    let fb: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
    let i: Vec<i64> = vec![0, -1, i32::MAX as i64, i32::MIN as i64];
    let ib: Vec<u8> = i.iter().flat_map(|x| x.to_le_bytes()).collect();
    for dev in devices() {
        let t = read_npy_bytes(&npy_with(1, &dict("<f8", "(2, 2)"), &fb), &dev).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            vec![0.1f32, -2.5, f32::INFINITY, 3.0]
        );
        let t = read_npy_bytes(&npy_with(1, &dict("<i8", "(4,)"), &ib), &dev).unwrap();
        assert_eq!(t.dtype(), DType::I32);
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![0, -1, i32::MAX, i32::MIN]);
    }
    // A value outside i32: an error naming the file, the value and its index.
    let dir = TempDir::new("npy_i8");
    let p = dir.path("labels.npy");
    let big: Vec<u8> = [1i64, 2, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    write(&p, &npy_with(1, &dict("<i8", "(3,)"), &big));
    assert_invalid(
        read_npy(&p, &Device::cpu()),
        &["labels.npy", "1099511627776", "index 2"],
    );
}

#[test]
fn npy_big_endian_is_converted() {
    let f: Vec<u8> = [1.5f32, -3.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let t = read_npy_bytes(&npy_with(1, &dict(">f4", "(2,)"), &f), &Device::cpu()).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5, -3.0]);
    let d: Vec<u8> = [2.25f64].iter().flat_map(|x| x.to_be_bytes()).collect();
    let t = read_npy_bytes(&npy_with(1, &dict(">f8", "(1,)"), &d), &Device::cpu()).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![2.25]);
    let i: Vec<u8> = [-5i32, 70000]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let t = read_npy_bytes(&npy_with(1, &dict(">i4", "(2,)"), &i), &Device::cpu()).unwrap();
    assert_eq!(t.to_vec::<i32>().unwrap(), vec![-5, 70000]);
    let l: Vec<u8> = [-7i64].iter().flat_map(|x| x.to_be_bytes()).collect();
    let t = read_npy_bytes(&npy_with(1, &dict(">i8", "(1,)"), &l), &Device::cpu()).unwrap();
    assert_eq!(t.to_vec::<i32>().unwrap(), vec![-7]);
}

#[test]
fn npy_bad_inputs_are_errors_naming_the_file() {
    let dir = TempDir::new("npy_bad");
    let good = npy_with(1, &dict("<f4", "(2, 3)"), &le_f32(&[1.0; 6]));
    let header_end = good.len() - 24;
    let fo = "{'descr': '<f4', 'fortran_order': 1, 'shape': (2, 3), }";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.npy", vec![], "empty"),
        (
            "magic.npy",
            b"PK\x03\x04 not numpy at all".to_vec(),
            "magic",
        ),
        ("short_magic.npy", b"\x93NUM".to_vec(), "magic"),
        ("no_version.npy", good[..7].to_vec(), "truncated"),
        ("no_len.npy", good[..9].to_vec(), "truncated"),
        ("half_header.npy", good[..40].to_vec(), "truncated header"),
        (
            "no_data.npy",
            good[..header_end].to_vec(),
            "needs 24 data bytes, file has 0",
        ),
        (
            "short_data.npy",
            good[..good.len() - 1].to_vec(),
            "file has 23",
        ),
        (
            "long_data.npy",
            [&good[..], &[0u8; 4]].concat(),
            "file has 28",
        ),
        (
            "lies_more.npy",
            npy_with(1, &dict("<f4", "(2, 4)"), &le_f32(&[1.0; 6])),
            "needs 32",
        ),
        (
            "lies_fewer.npy",
            npy_with(1, &dict("<f4", "(2, 2)"), &le_f32(&[1.0; 6])),
            "needs 16",
        ),
        (
            "fortran.npy",
            npy_with(1, fo, &le_f32(&[1.0; 6])),
            "fortran_order is an integer",
        ),
        (
            "complex.npy",
            npy_with(1, &dict("<c8", "(2,)"), &[0; 16]),
            "unsupported dtype",
        ),
        (
            "u2.npy",
            npy_with(1, &dict("<u2", "(2,)"), &[0; 4]),
            "unsupported dtype",
        ),
        (
            "unicode_descr.npy",
            npy_with(3, &dict("é", "(1,)"), &[0; 4]),
            "unsupported dtype",
        ),
        (
            "structured.npy",
            npy_with(
                1,
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                &[0; 4],
            ),
            "structured",
        ),
        (
            "garbage_header.npy",
            npy_with(1, "{'descr': <f4}", &[0; 4]),
            "header",
        ),
        ("not_dict.npy", npy_with(1, "(1, 2)", &[]), "not a dict"),
        (
            "missing_shape.npy",
            npy_with(1, "{'descr': '<f4', 'fortran_order': False}", &[]),
            "missing 'shape'",
        ),
        (
            "extra_key.npy",
            npy_with(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}",
                &[0; 4],
            ),
            "unexpected key",
        ),
        (
            "overflow.npy",
            npy_with(1, &dict("<f4", "(4294967296, 4294967296, 4294967296)"), &[]),
            "too many",
        ),
        (
            "huge_dim.npy",
            npy_with(1, &dict("<f4", "(99999999999999999999999999,)"), &[]),
            "too large",
        ),
        (
            "huge_shape.npy",
            npy_with(1, &dict("<f4", "(1000000, 1000000)"), &[0; 8]),
            "needs 4000000000000 data bytes",
        ),
        (
            "deep.npy",
            npy_with(1, &"(".repeat(10_000), &[]),
            "nested too deeply",
        ),
        (
            "version.npy",
            [b"\x93NUMPY\x07\x00".as_slice(), &[0; 60]].concat(),
            "version 7.0",
        ),
    ];
    for (file, bytes, what) in &cases {
        let p = dir.path(file);
        write(&p, bytes);
        assert_invalid(read_npy(&p, &Device::cpu()), &[file, what]);
        assert_invalid(
            read_npy_bytes(bytes, &Device::cpu()),
            &["<npy bytes>", what],
        );
    }
    // Every truncation of a valid file is an error.
    for cut in 0..good.len() {
        assert_invalid(
            read_npy_bytes(&good[..cut], &Device::cpu()),
            &["<npy bytes>"],
        );
    }
    // The header claims more bytes than the file holds (format 2.0's u32 length).
    let mut lie = npy_with(2, &dict("<f4", "()"), &[0; 4]);
    lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_invalid(read_npy_bytes(&lie, &Device::cpu()), &["truncated header"]);
    // A missing file.
    let missing = dir.path("does_not_exist.npy");
    assert_invalid(read_npy(&missing, &Device::cpu()), &["does_not_exist.npy"]);
    // The GPU path rejects the same way before touching the device.
    if let Some(dev) = gpu() {
        assert_invalid(
            read_npy(dir.path("fortran.npy"), &dev),
            &["fortran.npy", "fortran_order"],
        );
    }
}

/// tests/fixtures/npy/NAME.npy, written by NumPy (gen_npy.py).
fn npy_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/npy")
        .join(name)
}

#[test]
fn npy_every_dtype_and_fortran_order_match_numpy() {
    // Each file against its `.expect.npy` twin: NumPy's own conversion (float32 or int32)
    // in C order with the same semantic shape, compared bit for bit.
    let cases = [
        ("f4_fortran", NpyDType::F32),
        ("f4_fortran_2d", NpyDType::F32),
        ("f8", NpyDType::F64),
        ("f8_fortran", NpyDType::F64),
        ("f2", NpyDType::F16),
        ("f2_fortran", NpyDType::F16),
        ("i4_fortran", NpyDType::I32),
        ("i8", NpyDType::I64),
        ("i8_fortran", NpyDType::I64),
        ("b1", NpyDType::Bool),
        ("b1_fortran", NpyDType::Bool),
    ];
    for dev in devices() {
        for (name, dtype) in cases {
            let path = npy_fixture(&format!("{name}.npy"));
            let array = read_npy_array(&path).unwrap();
            assert_eq!(array.dtype, dtype, "{name}");
            let got = read_npy(&path, &dev).unwrap();
            let want =
                read_npy(npy_fixture(&format!("{name}.expect.npy")), &Device::cpu()).unwrap();
            assert_eq!(got.shape(), want.shape(), "{name} on {}", dev.name());
            assert_eq!(got.dtype(), want.dtype(), "{name} on {}", dev.name());
            if want.dtype() == DType::F32 {
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_vec::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                };
                assert_eq!(bits(&got), bits(&want), "{name} on {}", dev.name());
            } else {
                assert_eq!(
                    got.to_vec::<i32>().unwrap(),
                    want.to_vec::<i32>().unwrap(),
                    "{name} on {}",
                    dev.name()
                );
            }
        }
    }
    // The semantic shape of a transposed save is the transposed shape.
    let t = read_npy_array(npy_fixture("f4_fortran.npy")).unwrap();
    assert_eq!(t.shape, [5, 4, 3]);
    // int64 beyond i32: an error naming the file, the value and its index, never a wrap.
    assert_invalid(
        read_npy(npy_fixture("i8_big.npy"), &Device::cpu()),
        &["i8_big.npy", "1099511627776", "index 2"],
    );
    // Integers where floats are wanted: exact ones convert, others are refused.
    let i8 = read_npy_array(npy_fixture("i8.npy")).unwrap();
    assert_invalid(i8.to_f32(), &["i8.npy", "2147483647", "index 2"]);
    let b1 = read_npy_array(npy_fixture("b1.npy")).unwrap();
    let want = read_npy(npy_fixture("b1.expect.npy"), &Device::cpu()).unwrap();
    let want: Vec<f32> = want
        .to_vec::<i32>()
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_eq!(b1.to_f32().unwrap(), want);
    // Floats where integers are wanted are refused.
    let f8 = read_npy_array(npy_fixture("f8.npy")).unwrap();
    assert_invalid(f8.to_i32(), &["f8.npy", "float64"]);
}

#[test]
fn npy_array_writes_int64_bool_and_f16_that_read_back() {
    let cases = [
        NpyArray::new(
            NpyDType::I64,
            &[2, 2],
            NpyData::I64(vec![1 << 40, -3, 0, 7]),
        )
        .unwrap(),
        NpyArray::new(NpyDType::Bool, &[3], NpyData::Bool(vec![true, false, true])).unwrap(),
        NpyArray::new(NpyDType::F16, &[2], NpyData::F32(vec![0.5, -65504.0])).unwrap(),
        NpyArray::new(NpyDType::F64, &[], NpyData::F64(vec![0.1])).unwrap(),
    ];
    for a in cases {
        let back = read_npy_array_bytes(&npy_array_bytes(&a).unwrap()).unwrap();
        assert_eq!(
            (back.dtype, &back.shape, &back.data),
            (a.dtype, &a.shape, &a.data)
        );
    }
    // The data must match the declared type and fill the shape.
    assert!(NpyArray::new(NpyDType::I64, &[3], NpyData::I64(vec![1, 2])).is_err());
    assert!(NpyArray::new(NpyDType::Bool, &[1], NpyData::I64(vec![1])).is_err());
}

#[test]
fn npy_write_is_atomic_and_rejects_other_dtypes() {
    let dir = TempDir::new("npy_atomic");
    let t = Tensor::from_slice(&Device::cpu(), &[1.0f32, 2.0], &[2]).unwrap();
    // The target directory does not exist: an error naming the path, no file anywhere.
    let p = dir.path("missing_dir").join("out.npy");
    assert_invalid(write_npy(&p, &t), &["out.npy", "write failed"]);
    assert!(!p.exists());
    assert!(dir.listing().is_empty(), "left behind: {:?}", dir.listing());
    // The target is a directory: rename fails; the temp file is cleaned up.
    std::fs::create_dir(dir.path("taken.npy")).unwrap();
    assert_invalid(write_npy(dir.path("taken.npy"), &t), &["taken.npy"]);
    assert_eq!(dir.listing(), vec!["taken.npy".to_string()]);
    // Overwriting an existing file replaces it whole.
    let p = dir.path("w.npy");
    write(&p, b"old contents");
    write_npy(&p, &t).unwrap();
    assert_eq!(
        read_npy(&p, &Device::cpu())
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0, 2.0]
    );
    assert_eq!(
        dir.listing(),
        vec!["taken.npy".to_string(), "w.npy".to_string()]
    );
    // u32 tensors have no .npy mapping here.
    let u = Tensor::from_slice(&Device::cpu(), &[1u32], &[1]).unwrap();
    assert!(matches!(
        npy_bytes(&u),
        Err(Error::DType {
            op: "write_npy",
            ..
        })
    ));
    assert!(matches!(
        write_npy(dir.path("u.npy"), &u),
        Err(Error::DType { .. })
    ));
    assert!(!dir.path("u.npy").exists());
}

/// Seeded mutations of `good`: byte flips, random bytes, truncations,
/// insertions and a lying length field.
fn mutations(good: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let mut b = good.to_vec();
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                    1 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] = rng.next_u64() as u8;
                    }
                    2 => b.truncate(rng.below(b.len() + 1)),
                    3 => {
                        let i = rng.below(b.len() + 1);
                        let c = b"(),:'0123456789[]{}TrueFalse\"\\ \n"[rng.below(32)];
                        b.insert(i, c);
                    }
                    4 if b.len() >= 12 => {
                        let i = 8 + rng.below(4);
                        b[i] = [0u8, 1, 0x7f, 0xff][rng.below(4)];
                    }
                    _ => {
                        let end = b.len().min(128);
                        if end > 0 {
                            let i = rng.below(end);
                            b[i] = b"0123456789"[rng.below(10)];
                        }
                    }
                }
            }
            b
        })
        .collect()
}

#[test]
fn npy_fuzzed_inputs_never_panic() {
    let cpu = Device::cpu();
    let goods = [
        npy_bytes(&Tensor::from_slice(&cpu, &uniform(1, 12, -1.0, 1.0), &[3, 4]).unwrap()).unwrap(),
        npy_with(
            2,
            &dict("<i8", "(2, 1)"),
            &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        ),
        npy_with(3, &dict(">f8", "()"), &1.0f64.to_be_bytes()),
    ];
    let (mut ok, mut err) = (0, 0);
    for (k, good) in goods.iter().enumerate() {
        for m in mutations(good, 100 + k as u64, 1500) {
            match read_npy_bytes(&m, &cpu) {
                Ok(t) => {
                    ok += 1;
                    // Whatever was accepted is self-consistent.
                    assert_eq!(t.numel(), t.shape().iter().product::<usize>());
                }
                Err(Error::Invalid { detail, .. }) => {
                    err += 1;
                    assert!(detail.starts_with("<npy bytes>: "), "{detail}");
                }
                Err(e) => panic!("unexpected error kind: {e}"),
            }
        }
    }
    assert!(
        ok > 0 && err > 0,
        "fuzzing exercised only one outcome: {ok} ok, {err} err"
    );
}

// ----- safetensors -----

#[test]
fn safetensors_round_trips_on_every_device() {
    let dir = TempDir::new("st_round_trip");
    for dev in devices() {
        let mut owned = Vec::new();
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let f = Tensor::from_slice(&dev, &uniform(k as u64, n, -5.0, 5.0), shape).unwrap();
            let i: Vec<i32> = (0..n as i32).map(|x| 3 - x * 1001).collect();
            let i = Tensor::from_slice(&dev, &i, shape).unwrap();
            owned.push((format!("layer{k}.weight"), f));
            owned.push((format!("layer{k}.index"), i));
        }
        let named: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let p = dir.path("model.safetensors");
        save_safetensors(&p, &named).unwrap();
        let back = load_safetensors(&p, &dev).unwrap();
        assert_eq!(back.len(), owned.len());
        for (name, want) in &owned {
            let (_, got) = back.iter().find(|(n, _)| n == name).expect(name);
            let l = format!("{} {name}", label(&dev, want.shape()));
            assert_eq!(got.shape(), want.shape(), "{l}");
            assert_eq!(got.dtype(), want.dtype(), "{l}");
            assert_eq!(got.device().is_gpu(), dev.is_gpu(), "{l}");
            match want.dtype() {
                DType::F32 => {
                    assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap())
                }
                _ => assert_eq!(got.to_vec::<i32>().unwrap(), want.to_vec::<i32>().unwrap()),
            }
        }
        // In-memory bytes agree with the file, and no temp files are left.
        assert_eq!(
            safetensors_bytes(&named).unwrap(),
            std::fs::read(&p).unwrap()
        );
        assert_eq!(dir.listing(), vec!["model.safetensors".to_string()]);
    }
}

/// A safetensors file from a JSON header and the data after it.
fn st_with(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

#[test]
fn safetensors_f64_and_i64_are_converted() {
    let mut data: Vec<u8> = [0.5f64, -1e300]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    data.extend([7i64, -9].iter().flat_map(|x| x.to_le_bytes()));
    let h = r#"{"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"l":{"dtype":"I64","shape":[1,2],"data_offsets":[16,32]},"__metadata__":{"format":"pt"}}"#;
    for dev in devices() {
        let back = load_safetensors_bytes(&st_with(h, &data), &dev).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["d", "l"], "file order");
        assert_eq!(back[0].1.dtype(), DType::F32);
        assert_eq!(
            back[0].1.to_vec::<f32>().unwrap(),
            vec![0.5, f32::NEG_INFINITY]
        );
        assert_eq!(back[1].1.dtype(), DType::I32);
        assert_eq!(back[1].1.shape(), &[1, 2]);
        assert_eq!(back[1].1.to_vec::<i32>().unwrap(), vec![7, -9]);
    }
}

/// A header of 16 U8 tensors whose data offsets end at `u64::MAX`.
fn overflow_header() -> String {
    let big: u64 = 1 << 60;
    let mut parts: Vec<String> = (0..15u64)
        .map(|i| {
            let (s, e) = (i * big, (i + 1) * big);
            format!(r#""t{i:02}":{{"dtype":"U8","shape":[{big}],"data_offsets":[{s},{e}]}}"#)
        })
        .collect();
    let (s, e) = (15 * big, u64::MAX);
    parts.push(format!(
        r#""z":{{"dtype":"U8","shape":[{}],"data_offsets":[{s},{e}]}}"#,
        big - 1
    ));
    format!("{{{}}}", parts.join(","))
}

#[test]
fn safetensors_bad_inputs_are_errors_naming_the_file() {
    let dir = TempDir::new("st_bad");
    let t = Tensor::from_slice(&Device::cpu(), &[1.0f32, 2.0, 3.0], &[3]).unwrap();
    let good = safetensors_bytes(&[("w", &t)]).unwrap();
    let u8s = r#"{"h":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let i64_big = (1i64 << 40).to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "empty"),
        ("short.safetensors", good[..5].to_vec(), "truncated"),
        (
            "half_header.safetensors",
            good[..20].to_vec(),
            "header claims",
        ),
        (
            "no_data.safetensors",
            good[..good.len() - 12].to_vec(),
            "load_safetensors",
        ),
        (
            "long.safetensors",
            [&good[..], &[0u8; 4]].concat(),
            "load_safetensors",
        ),
        (
            "u8.safetensors",
            st_with(u8s, &[0; 4]),
            "unsupported dtype U8",
        ),
        // F16 and BF16 data whose length disagrees with the shape (3 values in 4 bytes).
        (
            "f16_lies.safetensors",
            st_with(
                r#"{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
            "tensor \"h\": F16 shape [3] needs 6 bytes, data_offsets span 4",
        ),
        (
            "bf16_lies.safetensors",
            st_with(
                r#"{"h":{"dtype":"BF16","shape":[1],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
            "tensor \"h\": BF16 shape [1] needs 2 bytes, data_offsets span 4",
        ),
        (
            "not_json.safetensors",
            st_with("{not json", &[]),
            "load_safetensors",
        ),
        (
            "lies.safetensors",
            st_with(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#,
                &[0; 12],
            ),
            "tensor \"w\": F32 shape [4] needs 16 bytes",
        ),
        // Offsets summing to u64::MAX overflow the crate's own size check
        // (a debug-build panic in safetensors 0.8 without wgrad's guard).
        (
            "overflow.safetensors",
            st_with(&overflow_header(), &[]),
            "larger than the file",
        ),
        (
            "i64_big.safetensors",
            st_with(
                r#"{"l":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
                &i64_big,
            ),
            "does not fit in i32",
        ),
    ];
    for (file, bytes, what) in &cases {
        let p = dir.path(file);
        write(&p, bytes);
        assert_invalid(load_safetensors(&p, &Device::cpu()), &[file, what]);
        assert_invalid(
            load_safetensors_bytes(bytes, &Device::cpu()),
            &["<safetensors bytes>"],
        );
    }
    for cut in 0..good.len() {
        assert_invalid(
            load_safetensors_bytes(&good[..cut], &Device::cpu()),
            &["<safetensors"],
        );
    }
    assert_invalid(
        load_safetensors(dir.path("nope.safetensors"), &Device::cpu()),
        &["nope"],
    );
    // The tensor is named too.
    assert_invalid(
        load_safetensors(dir.path("u8.safetensors"), &Device::cpu()),
        &["\"h\""],
    );
}

#[test]
fn safetensors_save_checks_names_and_is_atomic() {
    let dir = TempDir::new("st_save");
    let t = Tensor::from_slice(&Device::cpu(), &[1.0f32], &[1]).unwrap();
    let u = Tensor::from_slice(&Device::cpu(), &[1u32], &[1]).unwrap();
    let p = dir.path("m.safetensors");
    assert_invalid(
        save_safetensors(&p, &[("a", &t), ("a", &t)]),
        &["\"a\"", "twice"],
    );
    assert_invalid(save_safetensors(&p, &[("__metadata__", &t)]), &["reserved"]);
    assert_invalid(save_safetensors(&p, &[("", &t)]), &["empty"]);
    assert!(matches!(
        save_safetensors(&p, &[("u", &u)]),
        Err(Error::DType { .. })
    ));
    assert!(dir.listing().is_empty());
    let q = dir.path("missing_dir").join("m.safetensors");
    assert_invalid(
        save_safetensors(&q, &[("a", &t)]),
        &["m.safetensors", "write failed"],
    );
    assert!(dir.listing().is_empty());
    // An empty list is a valid (empty) file.
    save_safetensors(&p, &[]).unwrap();
    assert!(load_safetensors(&p, &Device::cpu()).unwrap().is_empty());
}

#[test]
fn safetensors_fuzzed_inputs_never_panic() {
    let cpu = Device::cpu();
    let a = Tensor::from_slice(&cpu, &uniform(2, 6, -1.0, 1.0), &[2, 3]).unwrap();
    let b = Tensor::from_slice(&cpu, &[1i32, 2], &[2]).unwrap();
    let goods = [
        safetensors_bytes(&[("a", &a), ("b", &b)]).unwrap(),
        st_with(
            r#"{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#,
            &2.0f64.to_le_bytes(),
        ),
        // F16 and BF16 seeds: wgrad's own half-size files, and a hand-built pair.
        safetensors_bytes_with(&[("a", &a), ("b", &b)], SaveOptions::half(HalfFormat::F16))
            .unwrap(),
        safetensors_bytes_with(&[("a", &a)], SaveOptions::half(HalfFormat::BF16)).unwrap(),
        st_with(
            r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"g":{"dtype":"BF16","shape":[1,1],"data_offsets":[4,6]}}"#,
            &[0x00, 0x3c, 0x01, 0xfc, 0x80, 0x3f],
        ),
    ];
    let (mut ok, mut err) = (0, 0);
    for (k, good) in goods.iter().enumerate() {
        for (j, m) in mutations(good, 200 + k as u64, 1500).iter().enumerate() {
            // Every other mutation keeps F16 as f16, so both load paths are fuzzed.
            let options = LoadOptions {
                keep_f16: j % 2 == 1,
            };
            match load_safetensors_bytes_with(m, &cpu, options) {
                Ok(ts) => {
                    ok += 1;
                    for (_, t) in ts {
                        assert_eq!(t.numel(), t.shape().iter().product::<usize>());
                    }
                }
                Err(Error::Invalid { detail, .. }) => {
                    err += 1;
                    assert!(detail.starts_with("<safetensors bytes>: "), "{detail}");
                }
                Err(e) => panic!("unexpected error kind: {e}"),
            }
        }
    }
    assert!(
        ok > 0 && err > 0,
        "fuzzing exercised only one outcome: {ok} ok, {err} err"
    );
}

// ----- ndarray -----

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_round_trips_on_every_device() {
    use ndarray::{ArrayD, IxDyn};
    for dev in devices() {
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(shape), uniform(k as u64, n, -1.0, 1.0)).unwrap();
            let t = Tensor::from_ndarray(&dev, &a).unwrap();
            assert_eq!(t.shape(), shape);
            assert_eq!(t.to_ndarray().unwrap(), a, "{}", label(&dev, shape));
        }
        // A transposed array (Fortran layout in memory) is taken in logical order.
        let a =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let at = a.t().to_owned();
        assert!(
            at.as_slice().is_none(),
            "the test needs a non-row-major array"
        );
        let t = Tensor::from_ndarray(&dev, &at).unwrap();
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(
            t.to_vec::<f32>().unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        assert_eq!(t.to_ndarray().unwrap(), at);
        // Only f32 tensors convert.
        let i = Tensor::from_slice(&dev, &[1i32], &[1]).unwrap();
        assert!(matches!(
            i.to_ndarray(),
            Err(Error::DType {
                op: "to_ndarray",
                ..
            })
        ));
    }
}
