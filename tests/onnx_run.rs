//! `wgrad run` end to end (outputs against onnxruntime, gradients against NumPy
//! backpropagation, --bench, --summary, --dim), every kind of bad input as a one-line error
//! with exit code 1 and no output written, the quiet Vulkan loader, and ONNX external data
//! (tests/fixtures/onnx/gen_external.py, gen_run.py).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::assert_close;
use common::onnx::fixture_in;
use prost::Message;
use wgrad::io::{npy_array_bytes, read_npy_array, NpyArray, NpyDType, NpyData};
use wgrad::onnx::{proto::ModelProto, Model, Weights};

fn wgrad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args(args)
        .output()
        .expect("run wgrad")
}

fn fx(dir: &str, name: &str) -> String {
    fixture_in(dir, name).display().to_string()
}

/// A fresh, empty directory for one test; removed by `Drop`.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("wgrad_onnx_run_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn s(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The devices `wgrad run` is tried on: the CPU reference, and the GPU when there is one.
fn devices() -> Vec<&'static str> {
    let mut d = vec!["cpu"];
    if common::gpu().is_some() {
        d.push("gpu");
    }
    d
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "wgrad failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn f32s(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy_array(path).expect("read npy");
    assert_eq!(a.dtype, NpyDType::F32, "{}", path.display());
    (a.shape.clone(), a.to_f32().expect("f32"))
}

#[test]
fn run_mlp_matches_onnxruntime() {
    for dev in devices() {
        let dir = TempDir::new(&format!("mlp_{dev}"));
        let out = wgrad(&[
            "run",
            &fx("", "mlp.onnx"),
            &fx("", "mlp.in.x.npy"),
            "--out",
            &dir.s("o"),
            "--device",
            dev,
        ]);
        assert_ok(&out);
        let (shape, got) = f32s(&dir.path("o/out0.npy"));
        let (want_shape, want) = f32s(&fixture_in("", "mlp.out0.npy"));
        assert_eq!(shape, want_shape);
        assert_close(&format!("mlp on {dev}"), &got, &want, 1e-5, 1e-4);
    }
}

/// `a` as a Fortran-order .npy file (what `np.save(p, b.T)` writes for `b = a.T`).
fn fortran_npy(shape: &[usize], c_order: &[f32]) -> Vec<u8> {
    assert_eq!(shape.len(), 2);
    let (r, c) = (shape[0], shape[1]);
    let mut data = Vec::new();
    for j in 0..c {
        for i in 0..r {
            data.extend_from_slice(&c_order[i * c + j].to_le_bytes());
        }
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': True, 'shape': ({r}, {c}), }}");
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

#[test]
fn run_takes_fortran_order_float64_and_integer_feeds() {
    let dir = TempDir::new("feeds");
    let (shape, x) = f32s(&fixture_in("", "mlp.in.x.npy"));
    std::fs::write(dir.path("xf.npy"), fortran_npy(&shape, &x)).unwrap();
    // float64 holding the same f32 values exactly.
    let x64 = NpyArray::new(
        NpyDType::F64,
        &shape,
        NpyData::F64(x.iter().map(|&v| v as f64).collect()),
    )
    .unwrap();
    std::fs::write(dir.path("x64.npy"), npy_array_bytes(&x64).unwrap()).unwrap();
    let (_, want) = f32s(&fixture_in("", "mlp.out0.npy"));
    for feed in ["xf.npy", "x64.npy"] {
        let o = format!("o_{feed}");
        let out = wgrad(&[
            "run",
            &fx("", "mlp.onnx"),
            &dir.s(feed),
            "--out",
            &dir.s(&o),
            "--device",
            "cpu",
        ]);
        assert_ok(&out);
        let (_, got) = f32s(&dir.path(&format!("{o}/out0.npy")));
        assert_close(&format!("mlp fed {feed}"), &got, &want, 1e-5, 1e-4);
    }
    // int64 feeds convert to f32 when exact.
    let xi = NpyArray::new(NpyDType::I64, &[5, 4], NpyData::I64((0..20).collect())).unwrap();
    std::fs::write(dir.path("xi.npy"), npy_array_bytes(&xi).unwrap()).unwrap();
    let out = wgrad(&[
        "run",
        &fx("", "mlp.onnx"),
        &dir.s("xi.npy"),
        "--out",
        &dir.s("oi"),
        "--device",
        "cpu",
    ]);
    assert_ok(&out);
}

#[test]
fn run_writes_each_output_in_its_declared_dtype() {
    for dev in devices() {
        let dir = TempDir::new(&format!("outputs_{dev}"));
        let out = wgrad(&[
            "run",
            &fx("run", "outputs.onnx"),
            &fx("run", "outputs.in.x.npy"),
            "--out",
            &dir.s("o"),
            "--device",
            dev,
        ]);
        assert_ok(&out);
        let y = read_npy_array(dir.path("o/out0.npy")).unwrap();
        let want_y = read_npy_array(fixture_in("run", "outputs.out0.npy")).unwrap();
        assert_eq!((y.dtype, &y.shape), (want_y.dtype, &want_y.shape));
        assert_close(
            "relu",
            &y.to_f32().unwrap(),
            &want_y.to_f32().unwrap(),
            0.0,
            0.0,
        );
        // onnxruntime's int64 output, as int64.
        let k = read_npy_array(dir.path("o/out1.npy")).unwrap();
        let want_k = read_npy_array(fixture_in("run", "outputs.out1.npy")).unwrap();
        assert_eq!(want_k.dtype, NpyDType::I64);
        assert_eq!(
            k,
            NpyArray {
                origin: k.origin.clone(),
                ..want_k
            }
        );
    }
}

#[test]
fn run_upstream_gradient_matches_numpy_backprop() {
    for dev in devices() {
        let dir = TempDir::new(&format!("grad_{dev}"));
        let out = wgrad(&[
            "run",
            &fx("", "mlp.onnx"),
            &fx("", "mlp.in.x.npy"),
            "--upstream",
            &fx("run", "mlp.G.npy"),
            "--out",
            &dir.s("o"),
            "--device",
            dev,
        ]);
        assert_ok(&out);
        let (shape, got) = f32s(&dir.path("o/grad0.npy"));
        let (want_shape, want) = f32s(&fixture_in("run", "mlp.grad0.npy"));
        assert_eq!(shape, want_shape);
        assert_close(&format!("mlp dx on {dev}"), &got, &want, 1e-5, 1e-4);
        assert!(dir.path("o/out0.npy").exists());
    }
    // An upstream of the wrong shape names both shapes.
    let dir = TempDir::new("grad_bad");
    let out = wgrad(&[
        "run",
        &fx("", "mlp.onnx"),
        &fx("", "mlp.in.x.npy"),
        "--upstream",
        &fx("", "mlp.in.x.npy"),
        "--out",
        &dir.s("o"),
        "--device",
        "cpu",
    ]);
    assert_one_line_error(&out, &["upstream", "[5, 4]", "[5, 3]"]);
    assert!(!dir.path("o").exists());
}

#[test]
fn run_bench_prints_one_json_line() {
    let out = wgrad(&[
        "run",
        &fx("", "mlp.onnx"),
        &fx("", "mlp.in.x.npy"),
        "--bench",
        "3",
        "--device",
        "cpu",
    ]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let l = lines[0];
    assert!(
        l.starts_with("{\"model\":\"mlp\",\"batch\":5,\"ms\":"),
        "{l}"
    );
    let ms: f64 = l
        .trim_end_matches('}')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{l}: {e}"));
    assert!(ms > 0.0 && ms.is_finite(), "{l}");
}

#[test]
fn run_summary_lists_shapes_ops_params_and_unsupported() {
    let out = wgrad(&["run", &fx("", "mlp.onnx"), "--summary"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "x FLOAT [N, 4]",
        "probs FLOAT [N, 3]",
        "Gemm 2",
        "Relu 1",
        "Softmax 1",
        // 4·8 + 8 + 3·8 + 3
        "parameters: 67",
        "unsupported ops: none",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    let out = wgrad(&["run", &fx("", "unsupported.onnx"), "--summary"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "unsupported ops: 2",
        "Loop (node 'loop', opset 13)",
        "com.example::MyOp (node 'custom', opset 13)",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
}

#[test]
fn run_dims_bind_from_flags_and_conflicts_are_errors() {
    let dir = TempDir::new("dims");
    let args = |dim: &str, o: &str| {
        wgrad(&[
            "run",
            &fx("", "mlp.onnx"),
            &fx("", "mlp.in.x.npy"),
            "--dim",
            dim,
            "--out",
            &dir.s(o),
            "--device",
            "cpu",
        ])
    };
    assert_ok(&args("N=5", "a"));
    let out = args("N=3", "b");
    assert_one_line_error(&out, &["'x'", "[N, 4]", "[5, 4]", "N = 3", "--dim N=3"]);
    assert!(!dir.path("b").exists());
    assert_one_line_error(&args("N", "c"), &["NAME=SIZE"]);
}

/// Exit code 1, one `wgrad: ` line on stderr containing every needle, no panic.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {err:?}");
    assert!(lines[0].starts_with("wgrad: "), "{err}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{:?} does not mention {n:?}",
            lines[0]
        );
    }
}

#[test]
fn run_bad_inputs_are_one_line_errors_with_no_output() {
    let dir = TempDir::new("bad");
    let mlp = std::fs::read(fixture_in("", "mlp.onnx")).unwrap();
    std::fs::write(dir.path("truncated.onnx"), &mlp[..mlp.len() / 2]).unwrap();
    std::fs::write(
        dir.path("garbage.onnx"),
        b"\x08\x07not a model at all \xff\xff",
    )
    .unwrap();
    std::fs::write(dir.path("empty.onnx"), b"").unwrap();
    let x = std::fs::read(fixture_in("", "mlp.in.x.npy")).unwrap();
    std::fs::write(dir.path("short.npy"), &x[..x.len() - 3]).unwrap();
    let b = NpyArray::new(NpyDType::Bool, &[5, 4], NpyData::Bool(vec![true; 20])).unwrap();
    std::fs::write(dir.path("bool.npy"), npy_array_bytes(&b).unwrap()).unwrap();
    let f = NpyArray::new(NpyDType::F32, &[5, 4], NpyData::F32(vec![0.5; 20])).unwrap();
    std::fs::write(dir.path("labels.npy"), npy_array_bytes(&f).unwrap()).unwrap();
    let (m, xs) = (fx("", "mlp.onnx"), fx("", "mlp.in.x.npy"));
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        // Every unsupported node, named, before any device work (no feeds needed to see it).
        (
            vec![fx("", "unsupported.onnx"), xs.clone()],
            vec![
                "unsupported operators",
                "Loop (node 'loop'",
                "com.example::MyOp (node 'custom'",
            ],
        ),
        (
            vec![dir.s("truncated.onnx"), xs.clone()],
            vec!["truncated.onnx", "not an ONNX model"],
        ),
        (
            vec![dir.s("garbage.onnx"), xs.clone()],
            vec!["garbage.onnx", "not an ONNX model"],
        ),
        (vec![dir.s("empty.onnx"), xs.clone()], vec!["empty.onnx"]),
        (
            vec![dir.s("missing.onnx"), xs.clone()],
            vec!["missing.onnx"],
        ),
        (vec![m.clone()], vec!["1 input(s) (x)", "got 0"]),
        (
            vec![m.clone(), xs.clone(), xs.clone()],
            vec!["1 input(s) (x)", "got 2"],
        ),
        (
            vec![m.clone(), fx("", "layout.in.x.npy")],
            vec!["input 'x'", "[N, 4]", "[2, 3, 4]"],
        ),
        (
            vec![m.clone(), fx("", "mlp.out0.npy")],
            vec!["input 'x'", "[N, 4]", "[5, 3]"],
        ),
        (
            vec![m.clone(), dir.s("bool.npy")],
            vec!["input 'x'", "FLOAT", "bool", "[N, 4]", "[5, 4]"],
        ),
        (
            vec![m.clone(), dir.s("short.npy")],
            vec!["short.npy", "data bytes"],
        ),
        (vec![m.clone(), dir.s("nofile.npy")], vec!["nofile.npy"]),
        (
            vec![m.clone(), xs.clone(), "--device".into(), "tpu".into()],
            vec!["--device"],
        ),
    ];
    for (k, (args, needles)) in cases.iter().enumerate() {
        let o = dir.s(&format!("out{k}"));
        let mut all: Vec<&str> = vec!["run"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--out", &o]);
        let out = wgrad(&all);
        assert_one_line_error(&out, needles);
        assert!(!Path::new(&o).exists(), "case {k} ({args:?}) wrote {o}");
    }
    // A float feed for an integer input is refused by dtype; exercised when integer inputs
    // exist. A float feed for the float input is fine:
    let out = wgrad(&[
        "run",
        &m,
        &dir.s("labels.npy"),
        "--out",
        &dir.s("ok"),
        "--device",
        "cpu",
    ]);
    assert_ok(&out);
}

#[test]
fn wgrad_is_quiet_without_xdg_runtime_dir() {
    // The Vulkan loader's Wayland WSI prints this line when XDG_RUNTIME_DIR is unset;
    // `wgrad` points it at a private directory first (wgrad::quiet_loader_env).
    let out = Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args(["info", "--brief"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run wgrad");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "info: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args([
            "run",
            &fx("", "mlp.onnx"),
            &fx("", "mlp.in.x.npy"),
            "--bench",
            "1",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run wgrad");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "run: {err}");
}

// ----- external data -----

#[test]
fn external_data_matches_onnxruntime() {
    // FLOAT, FLOAT16 (cast to FLOAT) and INT64 (a Reshape target) initializers, all in
    // external/weights.bin.
    common::onnx::check_fixture(
        "external",
        "model",
        &[("N", 5)],
        Weights::Params,
        1e-5,
        1e-4,
    );
    common::onnx::check_fixture(
        "external",
        "model",
        &[("N", 5)],
        Weights::Constants,
        1e-5,
        1e-4,
    );
    let dir = TempDir::new("ext_cli");
    let out = wgrad(&[
        "run",
        &fx("external", "model.onnx"),
        &fx("external", "model.in.x.npy"),
        "--out",
        &dir.s("o"),
        "--device",
        "cpu",
    ]);
    assert_ok(&out);
    let (_, got) = f32s(&dir.path("o/out0.npy"));
    let (_, want) = f32s(&fixture_in("external", "model.out0.npy"));
    assert_close("external via wgrad run", &got, &want, 1e-5, 1e-4);
}

fn external_bytes() -> Vec<u8> {
    std::fs::read(fixture_in("external", "model.onnx")).unwrap()
}

/// The external model with `f` applied to the first initializer's external_data entries.
fn edited(f: impl Fn(&mut Vec<wgrad::onnx::proto::StringStringEntryProto>)) -> Vec<u8> {
    let mut m = ModelProto::decode(external_bytes().as_slice()).unwrap();
    f(&mut m.graph.as_mut().unwrap().initializer[0].external_data);
    m.encode_to_vec()
}

fn set(entries: &mut [wgrad::onnx::proto::StringStringEntryProto], key: &str, value: &str) {
    let e = entries.iter_mut().find(|e| e.key() == key).unwrap();
    e.value = Some(value.into());
}

fn err_of(r: wgrad::Result<Model>) -> String {
    let e = r.expect_err("must fail").to_string();
    assert!(!e.contains('\n'), "{e}");
    e
}

#[test]
fn external_data_needs_the_model_directory() {
    let bytes = external_bytes();
    let e = err_of(Model::from_bytes(&bytes));
    assert!(
        e.contains("weights.bin") && e.contains("from_bytes_with_dir"),
        "{e}"
    );
    let dir = fixture_in("external", "");
    let m = Model::from_bytes_with_dir(&bytes, &dir).expect("with dir");
    let loaded = Model::load(fixture_in("external", "model.onnx")).unwrap();
    assert_eq!(m.initializers, loaded.initializers);
}

#[test]
fn external_paths_outside_the_model_directory_are_refused() {
    let dir = fixture_in("external", "");
    for loc in ["../mlp.onnx", "/etc/passwd", "sub/../../mlp.onnx", ""] {
        let bytes = edited(|e| set(e, "location", loc));
        let msg = err_of(Model::from_bytes_with_dir(&bytes, &dir));
        assert!(msg.contains("inside the model's directory"), "{loc}: {msg}");
    }
    // A symlink inside the directory that leads out of it.
    #[cfg(unix)]
    {
        let tmp = TempDir::new("ext_link");
        std::fs::create_dir_all(tmp.path("model")).unwrap();
        std::fs::copy(
            fixture_in("external", "weights.bin"),
            tmp.path("outside.bin"),
        )
        .unwrap();
        std::os::unix::fs::symlink(tmp.path("outside.bin"), tmp.path("model/weights.bin")).unwrap();
        let msg = err_of(Model::from_bytes_with_dir(
            &external_bytes(),
            tmp.path("model"),
        ));
        assert!(msg.contains("outside the model's directory"), "{msg}");
    }
}

#[test]
fn external_short_file_and_lying_sizes_are_errors() {
    let tmp = TempDir::new("ext_short");
    let weights = std::fs::read(fixture_in("external", "weights.bin")).unwrap();
    std::fs::write(tmp.path("weights.bin"), &weights[..100]).unwrap();
    std::fs::write(tmp.path("model.onnx"), external_bytes()).unwrap();
    let msg = err_of(Model::load(tmp.path("model.onnx")));
    assert!(msg.contains("past its end"), "{msg}");
    // The CLI says so in one line too.
    let out = wgrad(&["run", &tmp.s("model.onnx"), "--summary"]);
    assert_one_line_error(&out, &["past its end"]);
    let dir = fixture_in("external", "");
    let cases: [(&str, &str, &str); 5] = [
        ("length", "999999999999999", "need 96"),
        ("length", "-1", "not a non-negative integer"),
        ("offset", "18446744073709551615", "past its end"),
        ("offset", "100", "past its end"),
        ("location", "missing.bin", "missing.bin"),
    ];
    for (key, value, needle) in cases {
        let bytes = edited(|e| set(e, key, value));
        let msg = err_of(Model::from_bytes_with_dir(&bytes, &dir));
        assert!(msg.contains(needle), "{key}={value}: {msg}");
    }
    let bytes = edited(|e| e.retain(|x| x.key() != "location"));
    let msg = err_of(Model::from_bytes_with_dir(&bytes, &dir));
    assert!(msg.contains("location"), "{msg}");
}

#[test]
fn run_feeds_integer_inputs_and_refuses_floats_for_them() {
    // gather/embedding.onnx: an INT64 `ids` input [B, 5] through Gather (onnxruntime's output).
    let dir = TempDir::new("ints");
    for dev in devices() {
        let o = format!("o_{dev}");
        let out = wgrad(&[
            "run",
            &fx("gather", "embedding.onnx"),
            &fx("gather", "embedding.in.ids.npy"),
            "--out",
            &dir.s(&o),
            "--device",
            dev,
        ]);
        assert_ok(&out);
        let (shape, got) = f32s(&dir.path(&format!("{o}/out0.npy")));
        let (want_shape, want) = f32s(&fixture_in("gather", "embedding.out0.npy"));
        assert_eq!(shape, want_shape);
        assert_close(&format!("embedding on {dev}"), &got, &want, 1e-5, 1e-4);
    }
    let f = NpyArray::new(NpyDType::F32, &[3, 5], NpyData::F32(vec![1.0; 15])).unwrap();
    std::fs::write(dir.path("ids_f32.npy"), npy_array_bytes(&f).unwrap()).unwrap();
    let out = wgrad(&[
        "run",
        &fx("gather", "embedding.onnx"),
        &dir.s("ids_f32.npy"),
        "--out",
        &dir.s("bad"),
    ]);
    assert_one_line_error(
        &out,
        &["input 'ids'", "INT64", "[B, 5]", "float32", "[3, 5]"],
    );
    assert!(!dir.path("bad").exists());
}
