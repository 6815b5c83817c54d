//! `wgrad run MODEL.onnx IN.npy... --out DIR`: an ONNX model on .npy feeds, its outputs as
//! DIR/out0.npy, DIR/out1.npy, ... (with `--upstream G.npy` also DIR/gradI.npy for each
//! float input, through the graph's autodiff); `--bench N` times it, `--summary` describes
//! the model without running it.
//!
//! Everything that can be checked on the host is checked before a device is created: the
//! file decodes, every op is supported, the feeds' count, dtypes and shapes match the
//! model. Results are read back before anything is written, so an error leaves no output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wgrad::autodiff::vjp;
use wgrad::io::{read_npy_array, write_npy_array, NpyArray, NpyDType, NpyData};
use wgrad::onnx::{Dim, Model, ValueInfo, Weights};
use wgrad::{DType, Device, Op, Tensor, Var};

/// What the command line asked for.
pub struct RunArgs {
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    pub device: String,
    pub upstream: Option<PathBuf>,
    pub bench: Option<usize>,
    pub dims: Vec<String>,
    pub summary: bool,
}

pub fn run(a: RunArgs) -> Result<()> {
    let model = Model::load(&a.model)?;
    if a.summary {
        print!("{}", summary(&model));
        return Ok(());
    }
    if a.out.is_none() && a.bench.is_none() {
        bail!("run: --out DIR is needed (or --bench N, or --summary)");
    }
    if a.bench == Some(0) {
        bail!("run: --bench needs at least 1 run");
    }
    let origin = a.model.display();
    // Every unsupported node, named, before anything else is looked at.
    let unsupported = model.unsupported_nodes();
    if !unsupported.is_empty() {
        bail!(
            "run: {origin}: unsupported operators: {}",
            unsupported.join(", ")
        );
    }
    if a.inputs.len() != model.inputs.len() {
        let names: Vec<&str> = model.inputs.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "run: {origin} has {} input(s) ({}), got {} .npy file(s)",
            model.inputs.len(),
            names.join(", "),
            a.inputs.len()
        );
    }
    let feeds: Vec<NpyArray> = a
        .inputs
        .iter()
        .map(|p| Ok(read_npy_array(p)?))
        .collect::<Result<_>>()?;
    let dims = bind_dims(&model, &feeds, &a.dims)?;
    let dim_refs: Vec<(&str, usize)> = dims.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    // Inference: float initializers are constants, so shape subgraphs fold at import.
    let imported = model.import(&dim_refs, Weights::Constants)?;

    // The feeds converted to what each graph input holds (f32, or i32 for integer inputs).
    let nodes = imported.graph.nodes();
    let input_var = |name: &str| -> Result<(Var, DType)> {
        let id = nodes
            .iter()
            .position(|n| matches!(&n.op, Op::Input(k) if k == name))
            .with_context(|| format!("run: input '{name}' is not in the imported graph"))?;
        Ok((imported.graph.var(id)?, nodes[id].dtype))
    };
    let mut inputs = Vec::new();
    for (info, npy) in model.inputs.iter().zip(&feeds) {
        check_dtype(info, npy)?;
        let (var, dtype) = input_var(&info.name)?;
        inputs.push((info.name.clone(), var, dtype));
    }

    let outs: Vec<Var> = imported.outputs.iter().map(|(_, v)| v.clone()).collect();
    let mut targets = outs.clone();
    let mut grad_of = Vec::new(); // indices of the inputs that get a gradient
    let mut upstream = None;
    if let Some(path) = &a.upstream {
        let u = read_npy_array(path)?;
        let out0 = outs.first().context("run: the model has no outputs")?;
        if u.shape != out0.shape() {
            bail!(
                "run: upstream {} has shape {:?}, output 0 ('{}') has {:?}",
                path.display(),
                u.shape,
                imported.outputs[0].0,
                out0.shape()
            );
        }
        let uv = imported.graph.input("wgrad.upstream", out0.shape());
        grad_of = (0..inputs.len())
            .filter(|&i| inputs[i].2 == DType::F32)
            .collect();
        let wrt: Vec<&Var> = grad_of.iter().map(|&i| &inputs[i].1).collect();
        targets.extend(vjp(out0, &uv, &wrt)?);
        upstream = Some(u.to_f32()?);
    }

    // Host work is done; only now a device.
    let dev = match a.device.as_str() {
        "gpu" => Device::gpu()?,
        "cpu" => Device::cpu(),
        other => bail!("run: --device must be gpu or cpu, not {other:?}"),
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for ((name, _, dtype), npy) in inputs.iter().zip(&feeds) {
        let t = npy
            .to_tensor_as(&dev, *dtype)
            .with_context(|| format!("run: input '{name}'"))?;
        tensors.push((name.clone(), t));
    }
    if let Some(u) = &upstream {
        tensors.push((
            "wgrad.upstream".into(),
            Tensor::from_slice(&dev, u, outs[0].shape())?,
        ));
    }
    let refs: Vec<&Var> = targets.iter().collect();
    let exe = dev.compile(&imported.graph, &refs, None)?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let read_back = |results: Vec<Tensor>| -> Result<Vec<Tensor>> {
        Ok(results
            .iter()
            .map(|t| t.to_device(&Device::cpu()))
            .collect::<wgrad::Result<_>>()?)
    };
    let host = read_back(exe.run(&named)?)?;

    if let Some(n) = a.bench {
        // The first run above was the warm-up (pipelines built, buffers pooled). Each timed
        // run reads its outputs back to the host, so the time is a full synchronised
        // inference as a caller sees it, not just the submission.
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            read_back(exe.run(&named)?)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        let name = a
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let batch = feeds.first().and_then(|f| f.shape.first()).copied();
        println!(
            "{{\"model\":{},\"batch\":{},\"ms\":{median:.4}}}",
            json_string(&name),
            batch.unwrap_or(1)
        );
    }

    let Some(dir) = &a.out else { return Ok(()) };
    // Convert everything before writing anything.
    let mut files: Vec<(String, NpyArray)> = Vec::new();
    for (i, (info, t)) in model.outputs.iter().zip(&host).enumerate() {
        files.push((format!("out{i}.npy"), output_array(info, t)?));
    }
    for (k, &i) in grad_of.iter().enumerate() {
        let t = &host[outs.len() + k];
        let arr = NpyArray::new(NpyDType::F32, t.shape(), NpyData::F32(t.to_vec::<f32>()?))?;
        files.push((format!("grad{i}.npy"), arr));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("run: cannot create {}", dir.display()))?;
    for (name, arr) in &files {
        write_npy_array(dir.join(name), arr)?;
    }
    Ok(())
}

/// `--dim NAME=SIZE` first, then each symbolic dim from its feed's shape; a fixed dim must
/// match, and one name bound twice to different sizes is an error naming both shapes.
fn bind_dims(
    model: &Model,
    feeds: &[NpyArray],
    given: &[String],
) -> Result<BTreeMap<String, usize>> {
    let mut dims = BTreeMap::new();
    // Where each binding came from, for the conflict message.
    let mut from: BTreeMap<String, String> = BTreeMap::new();
    for d in given {
        let (k, v) = d
            .split_once('=')
            .with_context(|| format!("run: --dim takes NAME=SIZE, got {d:?}"))?;
        let v: usize = v
            .trim()
            .parse()
            .with_context(|| format!("run: --dim {d:?}: SIZE must be a non-negative integer"))?;
        dims.insert(k.trim().to_string(), v);
        from.insert(k.trim().to_string(), format!("--dim {d}"));
    }
    for (info, npy) in model.inputs.iter().zip(feeds) {
        let Some(declared) = &info.dims else { continue };
        let mismatch = || {
            anyhow::anyhow!(
                "run: input '{}' is declared {} but {} has shape {:?}",
                info.name,
                show_dims(declared),
                npy.origin,
                npy.shape
            )
        };
        if declared.len() != npy.shape.len() {
            return Err(mismatch());
        }
        for (d, &n) in declared.iter().zip(&npy.shape) {
            match d {
                Dim::Fixed(k) if *k != n => return Err(mismatch()),
                Dim::Symbolic(s) => match dims.get(s) {
                    Some(&b) if b != n => bail!(
                        "run: input '{}' is declared {} and {} has shape {:?}, so {s} = {n}, \
                         but {s} = {b} from {}",
                        info.name,
                        show_dims(declared),
                        npy.origin,
                        npy.shape,
                        from[s]
                    ),
                    Some(_) => {}
                    None => {
                        dims.insert(s.clone(), n);
                        from.insert(
                            s.clone(),
                            format!("input '{}' (shape {:?})", info.name, npy.shape),
                        );
                    }
                },
                _ => {}
            }
        }
    }
    Ok(dims)
}

/// Float inputs take float files, and integer files whose values are exact in f32; integer
/// inputs take integer files; BOOL takes bool. Anything else names both types.
fn check_dtype(info: &ValueInfo, npy: &NpyArray) -> Result<()> {
    let ok = match info.dtype.as_str() {
        "FLOAT" | "FLOAT16" | "DOUBLE" | "BFLOAT16" => npy.dtype != NpyDType::Bool,
        "INT64" | "INT32" | "INT16" | "INT8" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => {
            matches!(npy.dtype, NpyDType::I32 | NpyDType::I64)
        }
        "BOOL" => npy.dtype == NpyDType::Bool,
        _ => true, // the importer names the type it refuses
    };
    if !ok {
        bail!(
            "run: input '{}' is {} {}, but {} holds {} with shape {:?}",
            info.name,
            info.dtype,
            info.dims.as_deref().map(show_dims).unwrap_or_default(),
            npy.origin,
            npy.dtype.numpy_name(),
            npy.shape
        );
    }
    Ok(())
}

/// Output `t` in its declared type where that is cheap: FLOAT (and other floats) as
/// float32; INT64/INT32, which the graph carries as exact f32, as int64/int32 after checking
/// every value is integral; BOOL as bool after checking every value is 0 or 1.
fn output_array(info: &ValueInfo, t: &Tensor) -> Result<NpyArray> {
    let shape = t.shape();
    let values: Vec<f64> = match t.dtype() {
        DType::I32 => t.to_vec::<i32>()?.into_iter().map(f64::from).collect(),
        _ => t.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
    };
    let bad = |what: &str, i: usize, x: f64| {
        anyhow::anyhow!(
            "run: output '{}' is {} but value {x} at flat index {i} is not {what}",
            info.name,
            info.dtype
        )
    };
    let ints = || -> Result<Vec<i64>> {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x.fract() == 0.0 && x.abs() <= 9.0e15 {
                    Ok(x as i64)
                } else {
                    Err(bad("an integer", i, x))
                }
            })
            .collect()
    };
    let arr = match info.dtype.as_str() {
        "INT64" => NpyArray::new(NpyDType::I64, shape, NpyData::I64(ints()?))?,
        "INT32" => {
            let v = ints()?
                .into_iter()
                .enumerate()
                .map(|(i, x)| i32::try_from(x).map_err(|_| bad("an int32", i, x as f64)))
                .collect::<Result<Vec<i32>>>()?;
            NpyArray::new(NpyDType::I32, shape, NpyData::I32(v))?
        }
        "BOOL" => {
            let v = values
                .iter()
                .enumerate()
                .map(|(i, &x)| match x {
                    0.0 => Ok(false),
                    1.0 => Ok(true),
                    _ => Err(bad("0 or 1", i, x)),
                })
                .collect::<Result<Vec<bool>>>()?;
            NpyArray::new(NpyDType::Bool, shape, NpyData::Bool(v))?
        }
        _ => match t.dtype() {
            DType::I32 => NpyArray::new(NpyDType::I32, shape, NpyData::I32(t.to_vec::<i32>()?))?,
            _ => NpyArray::new(NpyDType::F32, shape, NpyData::F32(t.to_vec::<f32>()?))?,
        },
    };
    Ok(arr)
}

/// `[N, 4]` with symbolic names shown, `?` for unknown dims.
fn show_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) => s.clone(),
            Dim::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Inputs and outputs with their shapes, op counts by type, parameter count and every
/// unsupported op; host work only.
fn summary(model: &Model) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let shape = |v: &ValueInfo| match &v.dims {
        Some(d) => show_dims(d),
        None => "(no shape)".into(),
    };
    let _ = writeln!(s, "model: {} (opset {})", model.origin, model.opset);
    let _ = writeln!(s, "inputs:");
    for v in &model.inputs {
        let _ = writeln!(s, "  {} {} {}", v.name, v.dtype, shape(v));
    }
    let _ = writeln!(s, "outputs:");
    for v in &model.outputs {
        let _ = writeln!(s, "  {} {} {}", v.name, v.dtype, shape(v));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let nodes = model.proto.graph.as_ref().map(|g| g.node.as_slice());
    for n in nodes.unwrap_or_default() {
        let key = match n.domain() {
            "" | "ai.onnx" => n.op_type().to_string(),
            d => format!("{d}::{}", n.op_type()),
        };
        *counts.entry(key).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let _ = writeln!(s, "ops: {total} nodes");
    for (op, n) in &counts {
        let _ = writeln!(s, "  {op} {n}");
    }
    let numel = |i: &wgrad::onnx::Initializer| i.dims.iter().product::<usize>();
    let float: usize = model
        .initializers
        .iter()
        .filter(|i| matches!(i.data, wgrad::onnx::TensorData::F32(_)))
        .map(numel)
        .sum();
    let all: usize = model.initializers.iter().map(numel).sum();
    let _ = writeln!(
        s,
        "parameters: {float} float elements ({all} in {} initializers)",
        model.initializers.len()
    );
    let unsupported = model.unsupported_nodes();
    if unsupported.is_empty() {
        let _ = writeln!(s, "unsupported ops: none");
    } else {
        let _ = writeln!(s, "unsupported ops: {}", unsupported.len());
        for u in unsupported {
            let _ = writeln!(s, "  {u}");
        }
    }
    s
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
