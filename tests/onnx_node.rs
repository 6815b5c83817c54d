//! ONNX conformance: the onnx package's node tests (Apache-2.0; written into
//! tests/fixtures/onnx/node by gen_node.py), every vendored case run in this one process on
//! the CPU reference and on the GPU, each output compared at the case's tolerances (rtol 1e-3,
//! atol 1e-7 unless node/<case>/tolerance.txt says otherwise) and exactly for integers and
//! booleans.
//!
//! tests/fixtures/onnx/node_expectations.txt lists every case as `pass` or `skip: <reason>`;
//! a passing case with DOUBLE values (inputs, outputs, initializers, constants or casts) is
//! `pass (f64 as f32)`: wgrad computes them in f32, and they pass at the suite's tolerances.
//! Integer and boolean feeds are bound at import as constants (the graph specialises on
//! them, as on symbolic dims), and so is a float feed the importer needs at import (Resize's
//! scales, Pad's constant value); other float feeds stay runtime inputs.
//!
//! The test fails when a case listed as `pass` fails on either device (a regression), and
//! prints the cases that now pass but are not listed. `WGRAD_NODE_WRITE=1` rewrites the file
//! from this run's results (a failing case keeps its reason: the first line of its error).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use prost::Message;
use wgrad::onnx::proto::{tensor_proto::DataType, TensorProto};
use wgrad::onnx::{Dim, Model, Weights};
use wgrad::{DType, Device, Tensor};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/node")
}

fn expectations_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/node_expectations.txt")
}

/// How an expected tensor's elements compare.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Float,
    Int,
    Bool,
}

/// A decoded .pb tensor: dims, elements widened to f64, and how they compare.
struct Expected {
    dims: Vec<usize>,
    data: Vec<f64>,
    kind: Kind,
    dtype: DataType,
}

fn le<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk")))
        .collect()
}

fn read_pb(path: &Path) -> Result<Expected, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| format!("decode: {e}"))?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let dtype = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let raw = t.raw_data.as_deref();
    let ints32 = |f: &dyn Fn(i32) -> f64| t.int32_data.iter().map(|&v| f(v)).collect::<Vec<_>>();
    let half = |bf: bool| -> Vec<f64> {
        let words: Vec<u16> = match raw {
            Some(r) => le(r, u16::from_le_bytes),
            None => t.int32_data.iter().map(|&w| w as u16).collect(),
        };
        words
            .into_iter()
            .map(|w| {
                if bf {
                    f32::from_bits((w as u32) << 16) as f64
                } else {
                    half::f16::from_bits(w).to_f64()
                }
            })
            .collect()
    };
    let (data, kind) = match dtype {
        DataType::Float => (
            match raw {
                Some(r) => le(r, f32::from_le_bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => t.float_data.iter().map(|&v| v as f64).collect(),
            },
            Kind::Float,
        ),
        DataType::Double => (
            match raw {
                Some(r) => le(r, f64::from_le_bytes),
                None => t.double_data.clone(),
            },
            Kind::Float,
        ),
        DataType::Float16 => (half(false), Kind::Float),
        DataType::Bfloat16 => (half(true), Kind::Float),
        DataType::Int64 => (
            match raw {
                Some(r) => le(r, i64::from_le_bytes)
                    .into_iter()
                    .map(|v| v as f64)
                    .collect(),
                None => t.int64_data.iter().map(|&v| v as f64).collect(),
            },
            Kind::Int,
        ),
        DataType::Uint64 => (
            match raw {
                Some(r) => le(r, u64::from_le_bytes)
                    .into_iter()
                    .map(|v| v as f64)
                    .collect(),
                None => t.uint64_data.iter().map(|&v| v as f64).collect(),
            },
            Kind::Int,
        ),
        DataType::Int32 => (
            match raw {
                Some(r) => le(r, i32::from_le_bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => ints32(&|v| v as f64),
            },
            Kind::Int,
        ),
        DataType::Uint32 => (
            match raw {
                Some(r) => le(r, u32::from_le_bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => t.uint64_data.iter().map(|&v| v as f64).collect(),
            },
            Kind::Int,
        ),
        DataType::Int16 => (
            match raw {
                Some(r) => le(r, i16::from_le_bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => ints32(&|v| v as f64),
            },
            Kind::Int,
        ),
        DataType::Uint16 => (
            match raw {
                Some(r) => le(r, u16::from_le_bytes)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                None => ints32(&|v| v as f64),
            },
            Kind::Int,
        ),
        DataType::Int8 => (
            match raw {
                Some(r) => r.iter().map(|&b| b as i8 as f64).collect(),
                None => ints32(&|v| v as f64),
            },
            Kind::Int,
        ),
        DataType::Uint8 => (
            match raw {
                Some(r) => r.iter().map(|&b| b as f64).collect(),
                None => ints32(&|v| v as f64),
            },
            Kind::Int,
        ),
        DataType::Bool => (
            match raw {
                Some(r) => r.iter().map(|&b| (b != 0) as u8 as f64).collect(),
                None => ints32(&|v| (v != 0) as u8 as f64),
            },
            Kind::Bool,
        ),
        other => return Err(format!("element type {} not read", other.as_str_name())),
    };
    if data.len() != dims.iter().product::<usize>() {
        return Err(format!(
            "{}: {} values for dims {dims:?}",
            path.display(),
            data.len()
        ));
    }
    Ok(Expected {
        dims,
        data,
        kind,
        dtype,
    })
}

fn is_float(dtype: &str) -> bool {
    matches!(dtype, "FLOAT" | "DOUBLE" | "FLOAT16" | "BFLOAT16")
}

/// A feed tensor for a graph input of ONNX type `dtype` on `dev`.
fn feed(dev: &Device, e: &Expected, dtype: &str) -> Result<Tensor, String> {
    let t = match dtype {
        d if is_float(d) => {
            let v: Vec<f32> = e.data.iter().map(|&x| x as f32).collect();
            Tensor::from_slice(dev, &v, &e.dims)
        }
        _ => {
            let v = e
                .data
                .iter()
                .map(|&x| {
                    if x.abs() <= i32::MAX as f64 {
                        Ok(x as i32)
                    } else {
                        Err(format!("feed value {x} does not fit i32"))
                    }
                })
                .collect::<Result<Vec<i32>, String>>()?;
            Tensor::from_slice(dev, &v, &e.dims)
        }
    };
    t.map_err(|e| e.to_string())
}

fn values(t: &Tensor) -> Result<Vec<f64>, String> {
    match t.dtype() {
        DType::I32 => t
            .to_vec::<i32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        DType::U32 => t
            .to_vec::<u32>()
            .map(|v| v.into_iter().map(f64::from).collect()),
        _ => t.to_vec_f64(),
    }
    .map_err(|e| e.to_string())
}

fn tolerances(dir: &Path) -> (f64, f64) {
    let (mut rtol, mut atol) = (1e-3, 1e-7);
    if let Ok(s) = fs::read_to_string(dir.join("tolerance.txt")) {
        for line in s.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<f64>().ok())) {
                (Some("rtol"), Some(v)) => rtol = v,
                (Some("atol"), Some(v)) => atol = v,
                _ => {}
            }
        }
    }
    (rtol, atol)
}

fn compare(label: &str, got: &[f64], want: &Expected, rtol: f64, atol: f64) -> Result<(), String> {
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        let ok = match want.kind {
            Kind::Int | Kind::Bool => g == w,
            Kind::Float => {
                (g.is_nan() && w.is_nan())
                    || g == w
                    || (g - w).abs() <= atol + rtol * w.abs()
                    // f64 references, f32 results: allow the f32 rounding of the reference.
                    || (want.dtype == DataType::Double && (g - w).abs() <= 1e-6 * w.abs())
            }
        };
        if !ok {
            return Err(format!("{label}[{i}]: got {g}, want {w}"));
        }
    }
    Ok(())
}

/// Runs one case on `dev`: every data set through the imported model.
fn run_case(dir: &Path, dev: &Device) -> Result<(), String> {
    let model = Model::load(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let (rtol, atol) = tolerances(dir);
    let mut sets: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    for set in sets {
        let inputs = (0..model.inputs.len())
            .map(|j| read_pb(&set.join(format!("input_{j}.pb"))))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = (0..model.outputs.len())
            .map(|j| read_pb(&set.join(format!("output_{j}.pb"))))
            .collect::<Result<Vec<_>, _>>()?;
        // Bind each symbolic dim from the feed that declares it.
        let mut dims: Vec<(String, usize)> = Vec::new();
        for (info, e) in model.inputs.iter().zip(&inputs) {
            for (d, &n) in info.dims.iter().flatten().zip(&e.dims) {
                if let Dim::Symbolic(s) = d {
                    dims.push((s.clone(), n));
                }
            }
        }
        let dims: Vec<(&str, usize)> = dims.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        // Integer and boolean feeds (shapes, axes, pads, repeats, masks) are bound at import
        // as constants: the graph is specialised on them, as it is on symbolic dims. Float
        // feeds stay runtime inputs.
        let mut proto = model.proto.clone();
        let graph = proto.graph.as_mut().ok_or("no graph")?;
        for (j, info) in model.inputs.iter().enumerate() {
            if !is_float(&info.dtype) {
                let bytes =
                    fs::read(set.join(format!("input_{j}.pb"))).map_err(|e| e.to_string())?;
                let mut t = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
                t.name = Some(info.name.clone());
                graph.initializer.push(t);
            }
        }
        // A float feed the importer needs at import (Resize's scales, Pad's value) is bound
        // the same way, named by the import error; other float feeds stay runtime inputs.
        let mut bound_floats: Vec<String> = Vec::new();
        let imported = loop {
            let bound = Model::from_bytes(&proto.encode_to_vec()).map_err(|e| e.to_string())?;
            let e = match bound.import(&dims, Weights::Constants) {
                Ok(i) => break i,
                Err(e) => e.to_string(),
            };
            let needed = e
                .split_once("input '")
                .and_then(|(_, rest)| rest.split_once("' must be known at import"))
                .map(|(name, _)| name.to_string());
            let j = needed.as_ref().and_then(|n| {
                model
                    .inputs
                    .iter()
                    .position(|i| &i.name == n && is_float(&i.dtype))
            });
            match (needed, j) {
                (Some(n), Some(j)) if !bound_floats.contains(&n) => {
                    let bytes =
                        fs::read(set.join(format!("input_{j}.pb"))).map_err(|e| e.to_string())?;
                    let mut t = TensorProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
                    t.name = Some(n.clone());
                    proto.graph.as_mut().ok_or("no graph")?.initializer.push(t);
                    bound_floats.push(n);
                }
                _ => return Err(e),
            }
        };
        let outs: Vec<_> = imported.outputs.iter().map(|(_, v)| v).collect();
        let exe = dev
            .compile(&imported.graph, &outs, None)
            .map_err(|e| e.to_string())?;
        let feeds = imported
            .inputs
            .iter()
            .map(|name| {
                let j = model
                    .inputs
                    .iter()
                    .position(|i| &i.name == name)
                    .ok_or_else(|| format!("input {name} not declared"))?;
                Ok((
                    name.as_str(),
                    feed(dev, &inputs[j], &model.inputs[j].dtype)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
        let got = exe.run(&feeds).map_err(|e| e.to_string())?;
        for (j, (g, want)) in got.iter().zip(&outputs).enumerate() {
            if g.shape() != want.dims.as_slice() {
                return Err(format!(
                    "output {j}: shape {:?}, want {:?}",
                    g.shape(),
                    want.dims
                ));
            }
            compare(&format!("output {j}"), &values(g)?, want, rtol, atol)?;
        }
    }
    Ok(())
}

/// Whether the case's model holds DOUBLE values anywhere (graph inputs and outputs,
/// initializers, `Constant` tensors, casts to DOUBLE), which wgrad computes in f32.
fn uses_f64(dir: &Path) -> bool {
    let double = DataType::Double as i32;
    let Some(g) = Model::load(dir.join("model.onnx"))
        .ok()
        .and_then(|m| m.proto.graph)
    else {
        return false;
    };
    let declared = g.input.iter().chain(&g.output).any(|v| {
        matches!(
            v.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(wgrad::onnx::proto::type_proto::Value::TensorType(t)) if t.elem_type == Some(double)
        )
    });
    let stored = g.initializer.iter().any(|t| t.data_type == Some(double));
    let in_nodes = g.node.iter().any(|n| {
        n.attribute.iter().any(|a| {
            (n.op_type() == "Cast" && a.name() == "to" && a.i == Some(double as i64))
                || a.t.as_ref().is_some_and(|t| t.data_type == Some(double))
        })
    });
    declared || stored || in_nodes
}

/// The expectation a passing case is listed with.
fn pass_label(dir: &Path) -> &'static str {
    if uses_f64(dir) {
        "pass (f64 as f32)"
    } else {
        "pass"
    }
}

/// The case's result on one device, a panic counted as a failure.
fn outcome(dir: &Path, dev: &Device) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| run_case(dir, dev))) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "PANIC: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

fn read_expectations() -> BTreeMap<String, String> {
    fs::read_to_string(expectations_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('\t')
                .map(|(c, s)| (c.to_string(), s.to_string()))
        })
        .collect()
}

/// Every op type in a case's model.
fn op_types(dir: &Path) -> Vec<String> {
    Model::load(dir.join("model.onnx"))
        .ok()
        .and_then(|m| m.proto.graph.clone())
        .map(|g| g.node.iter().map(|n| n.op_type().to_string()).collect())
        .unwrap_or_default()
}

/// The operator a case tests, for the scoreboard: the longest op type (of all the cases'
/// models) whose name, lower-cased, starts the case name without `test_` and underscores
/// (`test_reduce_sum_keepdims_expanded` → ReduceSum, even though its expanded model has none).
fn family(case: &str, all_ops: &std::collections::BTreeSet<String>) -> String {
    let key: String = case.trim_start_matches("test_").replace('_', "");
    all_ops
        .iter()
        .filter(|op| key.starts_with(&op.to_lowercase()))
        .max_by_key(|op| op.len())
        .cloned()
        .unwrap_or_else(|| "other".into())
}

#[test]
fn onnx_node_tests() {
    let mut cases: Vec<PathBuf> = fs::read_dir(node_dir())
        .expect("node fixtures (run gen_node.py)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let devices: Vec<Device> = std::iter::once(Device::cpu())
        .chain(common::gpu())
        .collect();
    let expected = read_expectations();
    let skipped_at_generation =
        fs::read_to_string(node_dir().join("SKIPPED.txt")).unwrap_or_default();
    // Each case's result: Ok(the label it passes with) or Err(the reason).
    let mut results: BTreeMap<String, Result<&str, String>> = BTreeMap::new();
    let mut by_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let all_ops: std::collections::BTreeSet<String> =
        cases.iter().flat_map(|d| op_types(d)).collect();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut r = Ok(pass_label(dir));
        for dev in &devices {
            if let Err(e) = outcome(dir, dev) {
                // The reason without the machine-specific model path.
                let line = e.lines().next().unwrap_or("");
                let line = line.rsplit_once("model.onnx: ").map_or(line, |(_, r)| r);
                let on = if dev.name().starts_with("cpu") {
                    "cpu"
                } else {
                    "gpu"
                };
                r = Err(format!("{on}: {line}"));
                break;
            }
        }
        let entry = by_op.entry(family(&name, &all_ops)).or_default();
        entry.1 += 1;
        if r.is_ok() {
            entry.0 += 1;
        }
        results.insert(name, r);
    }
    let passed = results.values().filter(|r| r.is_ok()).count();
    eprintln!(
        "onnx node tests: {passed} of {} vendored cases pass on {} ({} more not vendored)",
        results.len(),
        devices
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(" and "),
        skipped_at_generation.lines().count()
    );
    for (op, (p, n)) in &by_op {
        eprintln!("  {op}: {p}/{n}");
    }
    if std::env::var("WGRAD_NODE_WRITE").is_ok_and(|v| v == "1") {
        let mut out = String::from(
            "# Written by `WGRAD_NODE_WRITE=1 cargo test --release --test onnx_node`; see tests/onnx_node.rs.\n",
        );
        for (case, r) in &results {
            match r {
                Ok(label) => out.push_str(&format!("{case}\t{label}\n")),
                Err(e) => out.push_str(&format!("{case}\tskip: {}\n", e.replace('\t', " "))),
            }
        }
        for line in skipped_at_generation.lines() {
            if let Some((case, why)) = line.split_once('\t') {
                out.push_str(&format!("{case}\tskip: not vendored: {why}\n"));
            }
        }
        fs::write(expectations_path(), out).expect("write expectations");
    }
    let regressions: Vec<String> = results
        .iter()
        .filter(|(c, r)| r.is_err() && expected.get(*c).is_some_and(|s| s.starts_with("pass")))
        .map(|(c, r)| format!("  {c}: {}", r.as_ref().unwrap_err()))
        .collect();
    let newly: Vec<&String> = results
        .iter()
        .filter(|(c, r)| {
            r.as_ref()
                .is_ok_and(|label| expected.get(*c).is_none_or(|s| s != label))
        })
        .map(|(c, _)| c)
        .collect();
    if !newly.is_empty() {
        eprintln!(
            "{} cases pass but are not listed so (update node_expectations.txt): {}",
            newly.len(),
            newly
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    assert!(
        regressions.is_empty(),
        "{} cases listed as `pass` fail:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
}
