//! Evaluation at import of shape-computing nodes whose inputs are all host constants: the
//! layout ops as index maps over a constant's elements (INT64 or f32 alike), the integer
//! arithmetic, comparisons and selection exporters use to compute shapes, and Range /
//! ConstantOfShape. Results are constants, so a whole `Shape → Gather → Unsqueeze → Concat`
//! chain leaves no graph node behind. Large float constants (weights under
//! `Weights::Constants`) go to the graph ops instead ([`or_graph`]).

use super::{broadcast, concat_axis, same_kind, shape_of, size_of, slice_plan, split_sizes};
use super::{squeeze, unsqueeze, with_dims, Res};
use crate::onnx::model::{initializer, TensorData};
use crate::onnx::ops::host_numel;
use crate::onnx::ops::{
    attr_int, attr_ints, axis, opt_const_input, Const, ConstData, Env, FoldFn, OpResult, Value,
};
use crate::onnx::proto::{tensor_proto::DataType, NodeProto};
use crate::shape::contiguous_strides as strides;

/// This family's folds, evaluated at import when every input is a constant.
pub(in crate::onnx::ops) const FOLDS: &[(&str, FoldFn)] = &[
    ("Shape", |e, n, _| shape_of(e, n)),
    ("Size", |e, n, _| size_of(e, n)),
    ("Squeeze", |e, n, _| squeeze(e, n)),
    ("Unsqueeze", |e, n, _| unsqueeze(e, n)),
    ("Flatten", flatten),
    ("Reshape", reshape),
    ("Transpose", |e, n, c| or_graph(e, n, c, transpose)),
    ("Gather", |e, n, c| or_graph(e, n, c, gather)),
    ("Concat", |e, n, c| or_graph(e, n, c, concat)),
    ("Split", |e, n, c| or_graph(e, n, c, split)),
    ("Slice", |e, n, c| or_graph(e, n, c, slice)),
    ("Expand", |e, n, c| or_graph(e, n, c, expand)),
    ("Tile", |e, n, c| or_graph(e, n, c, tile)),
    ("Add", |e, n, c| {
        or_graph(e, n, c, |_, _, c| {
            arith(c, |a, b| Ok(a.wrapping_add(b)), |a, b| a + b)
        })
    }),
    ("Sub", |e, n, c| {
        or_graph(e, n, c, |_, _, c| {
            arith(c, |a, b| Ok(a.wrapping_sub(b)), |a, b| a - b)
        })
    }),
    ("Mul", |e, n, c| {
        or_graph(e, n, c, |_, _, c| {
            arith(c, |a, b| Ok(a.wrapping_mul(b)), |a, b| a * b)
        })
    }),
    ("Div", |e, n, c| {
        or_graph(e, n, c, |_, _, c| arith(c, int_div, |a, b| a / b))
    }),
    ("Min", |e, n, c| {
        or_graph(e, n, c, |_, _, c| variadic(c, |a, b| Ok(a.min(b)), min_f32))
    }),
    ("Max", |e, n, c| {
        or_graph(e, n, c, |_, _, c| variadic(c, |a, b| Ok(a.max(b)), max_f32))
    }),
    ("Sum", |e, n, c| {
        or_graph(e, n, c, |_, _, c| {
            variadic(c, |a, b| Ok(a.wrapping_add(b)), |a, b| a + b)
        })
    }),
    ("Mod", modulo),
    ("Neg", |e, n, c| or_graph(e, n, c, neg)),
    ("Abs", |e, n, c| or_graph(e, n, c, abs)),
    ("Equal", |_, _, c| compare(c, |a, b| a == b, |a, b| a == b)),
    ("Less", |_, _, c| compare(c, |a, b| a < b, |a, b| a < b)),
    ("Greater", |_, _, c| compare(c, |a, b| a > b, |a, b| a > b)),
    ("LessOrEqual", |_, _, c| {
        compare(c, |a, b| a <= b, |a, b| a <= b)
    }),
    ("GreaterOrEqual", |_, _, c| {
        compare(c, |a, b| a >= b, |a, b| a >= b)
    }),
    ("And", |_, _, c| {
        compare(c, |a, b| a != 0 && b != 0, |a, b| a != 0.0 && b != 0.0)
    }),
    ("Or", |_, _, c| {
        compare(c, |a, b| a != 0 || b != 0, |a, b| a != 0.0 || b != 0.0)
    }),
    ("Xor", |_, _, c| {
        compare(
            c,
            |a, b| (a != 0) != (b != 0),
            |a, b| (a != 0.0) != (b != 0.0),
        )
    }),
    ("Not", not),
    ("Where", |e, n, c| or_graph(e, n, c, where_)),
    ("Range", range),
    ("ConstantOfShape", constant_of_shape),
    ("ReduceSum", |e, n, c| {
        reduce(e, n, c, 13, 0, |a, b| a.wrapping_add(b), |a, b| a + b)
    }),
    ("ReduceProd", |e, n, c| {
        reduce(e, n, c, 18, 1, |a, b| a.wrapping_mul(b), |a, b| a * b)
    }),
];

/// A float constant input above this many elements is a weight, not a shape: ops on it
/// are built as graph ops (see [`or_graph`]) rather than computed on the host.
const HOST_FLOAT_MAX: usize = 1 << 14;

/// `fold` on small constants; with a float input above [`HOST_FLOAT_MAX`] elements (a
/// weight transposed or scaled under `Weights::Constants`), the op's graph function, so the
/// device does the work and the host holds no index map of the weight's size.
fn or_graph(env: &Env, node: &NodeProto, c: &[Option<&Const>], fold: FoldFn) -> OpResult {
    let big = c
        .iter()
        .flatten()
        .any(|k| matches!(k.data, ConstData::F32(_)) && k.numel() > HOST_FLOAT_MAX);
    match crate::onnx::ops::find_op(node.op_type()) {
        Some(op) if big => op(env, node),
        _ => fold(env, node, c),
    }
}

/// A float `ConstantOfShape` above this many elements becomes a graph `full` node instead
/// of host data (nothing to upload; attention masks and the like).
const FULL_ABOVE: usize = 4096;

fn one(c: Const) -> OpResult {
    Ok(vec![Value::Const(c)])
}

/// Folded input `i` (absent is an error).
fn arg<'a>(c: &[Option<&'a Const>], i: usize) -> Res<&'a Const> {
    c.get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("missing input {i}"))
}

/// Flat source indices of the output whose axis `k` takes coordinates `lists[k]` of a source
/// laid out with `strides` (row-major output order).
fn index(strides: &[usize], lists: &[Vec<usize>]) -> Vec<usize> {
    let mut idx = vec![0usize];
    for (l, &s) in lists.iter().zip(strides) {
        idx = idx
            .iter()
            .flat_map(|&b| l.iter().map(move |&j| b + j * s))
            .collect();
    }
    idx
}

/// The elements of `c` at flat `idx`, under `dims`.
fn take(c: &Const, idx: &[usize], dims: Vec<usize>) -> Const {
    match &c.data {
        ConstData::F32(v) => Const::floats(dims, idx.iter().map(|&i| v[i]).collect()),
        ConstData::I64(v) => Const::ints(dims, idx.iter().map(|&i| v[i]).collect()),
    }
}

/// The sub-tensor taking coordinates `lists[k]` on axis `k`.
fn select(c: &Const, lists: &[Vec<usize>]) -> Res<Const> {
    let dims: Vec<usize> = lists.iter().map(Vec::len).collect();
    host_numel(&dims)?;
    Ok(take(c, &index(&strides(&c.dims), lists), dims))
}

/// Flat indices into a value of `from` dims broadcast to `out`.
fn broadcast_index(from: &[usize], out: &[usize]) -> Vec<usize> {
    let mut padded = vec![1; out.len() - from.len()];
    padded.extend_from_slice(from);
    let lists: Vec<Vec<usize>> = padded
        .iter()
        .zip(out)
        .map(|(&f, &o)| if f == 1 { vec![0; o] } else { (0..o).collect() })
        .collect();
    index(&strides(&padded), &lists)
}

/// `Reshape`'s target: `0` copies the input's dim (unless `allowzero`), `-1` is inferred.
fn reshape_dims(dims: &[usize], target: &[i64], allowzero: bool) -> Res<Vec<usize>> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*dims.get(i).ok_or_else(|| {
                format!(
                    "shape {target:?}: dim {i} is 0 but the input has rank {}",
                    dims.len()
                )
            })?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("invalid shape {target:?}")),
        }
    }
    // Checked: an empty input may have huge dims, the target holds any i64s.
    let product = |d: &[usize]| d.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let numel = product(dims).ok_or_else(|| format!("input dims {dims:?} overflow"))?;
    if let Some(i) = infer {
        let known = product(&out).ok_or_else(|| format!("shape {target:?} overflows"))?;
        if known == 0 || numel % known != 0 {
            return Err(format!(
                "cannot infer -1 in {target:?} for input shape {dims:?}"
            ));
        }
        out[i] = numel / known;
    }
    Ok(out)
}

fn reshape(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let target = arg(c, 1)?.as_i64()?;
    let dims = reshape_dims(&x.dims, &target, attr_int(node, "allowzero", 0) != 0)?;
    Ok(vec![with_dims(&Value::Const(x.clone()), &dims)?])
}

fn flatten(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let a = axis(attr_int(node, "axis", 1), x.dims.len(), true)?;
    let dims = [
        crate::onnx::ops::dims_product(&x.dims[..a], &x.dims)?,
        crate::onnx::ops::dims_product(&x.dims[a..], &x.dims)?,
    ];
    Ok(vec![with_dims(&Value::Const(x.clone()), &dims)?])
}

fn transpose(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let r = x.dims.len();
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        Some(p) => p.iter().map(|&a| axis(a, r, false)).collect::<Res<_>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(format!("perm {perm:?} is not a permutation of {r} axes"));
    }
    host_numel(&x.dims)?;
    let s = strides(&x.dims);
    let st: Vec<usize> = perm.iter().map(|&a| s[a]).collect();
    let lists: Vec<Vec<usize>> = perm.iter().map(|&a| (0..x.dims[a]).collect()).collect();
    let dims: Vec<usize> = perm.iter().map(|&a| x.dims[a]).collect();
    one(take(x, &index(&st, &lists), dims))
}

/// `Gather` on any axis; negative indices count from the end.
fn gather(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let (data, idx) = (arg(c, 0)?, arg(c, 1)?);
    let r = data.dims.len();
    let a = axis(attr_int(node, "axis", 0), r, false)?;
    host_numel(&data.dims)?;
    let d = data.dims[a] as i64;
    let ix = idx
        .as_i64()?
        .iter()
        .map(|&i| match if i < 0 { i + d } else { i } {
            j if (0..d).contains(&j) => Ok(j as usize),
            _ => Err(format!(
                "index {i} out of range for axis {a} of {:?}",
                data.dims
            )),
        })
        .collect::<Res<Vec<usize>>>()?;
    let lists: Vec<Vec<usize>> = (0..r)
        .map(|k| {
            if k == a {
                ix.clone()
            } else {
                (0..data.dims[k]).collect()
            }
        })
        .collect();
    let mut out = select(data, &lists)?;
    out.dims = [&data.dims[..a], &idx.dims[..], &data.dims[a + 1..]].concat();
    one(out)
}

fn all<'a>(c: &[Option<&'a Const>]) -> Res<Vec<&'a Const>> {
    (0..c.len()).map(|i| arg(c, i)).collect()
}

fn concat(_: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let mut parts = all(c)?;
    // Parts without elements add nothing (exporters concatenate empty shapes, and an empty
    // slice of a float graph value is an f32 constant); keep one to give the rank.
    if parts.iter().any(|p| p.numel() > 0) {
        parts.retain(|p| p.numel() > 0);
    }
    let first = parts.first().ok_or("Concat needs an input")?;
    let a = concat_axis(node, first.dims.len())?;
    let mut dims = first.dims.clone();
    dims[a] = 0;
    for p in &parts {
        let fits = p.dims.len() == dims.len()
            && (0..dims.len()).all(|k| k == a || p.dims[k] == first.dims[k]);
        if !fits || !same_kind(&p.data, &first.data) {
            return Err(format!(
                "cannot concat {:?} with {:?} on axis {a}",
                first.dims, p.dims
            ));
        }
        dims[a] = dims[a].saturating_add(p.dims[a]);
    }
    host_numel(&dims)?;
    let outer: usize = dims[..a].iter().product();
    // Block `o` of the output is block `o` of every part in turn.
    let blocks = |p: &Const| p.dims[a..].iter().product::<usize>();
    let idx: Vec<(usize, usize)> = (0..outer)
        .flat_map(|o| {
            parts.iter().enumerate().flat_map(move |(k, p)| {
                let n = blocks(p);
                (o * n..(o + 1) * n).map(move |i| (k, i))
            })
        })
        .collect();
    one(match first.data {
        ConstData::F32(_) => {
            let floats: Vec<Vec<f32>> = parts.iter().map(|p| p.as_f32()).collect();
            Const::floats(dims, idx.iter().map(|&(k, i)| floats[k][i]).collect())
        }
        ConstData::I64(_) => {
            let ints: Vec<Vec<i64>> = parts.iter().map(|p| p.as_i64()).collect::<Res<_>>()?;
            Const::ints(dims, idx.iter().map(|&(k, i)| ints[k][i]).collect())
        }
    })
}

fn split(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let a = axis(attr_int(node, "axis", 0), x.dims.len(), false)?;
    host_numel(&x.dims)?;
    let mut start = 0;
    split_sizes(env, node, x.dims[a])?
        .into_iter()
        .map(|n| {
            let lists: Vec<Vec<usize>> = (0..x.dims.len())
                .map(|k| {
                    if k == a {
                        (start..start + n).collect()
                    } else {
                        (0..x.dims[k]).collect()
                    }
                })
                .collect();
            start += n;
            select(x, &lists).map(Value::Const)
        })
        .collect()
}

fn slice(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    host_numel(&x.dims)?;
    let lists: Vec<Vec<usize>> = slice_plan(env, node, &x.dims)?
        .iter()
        .map(|s| s.indices())
        .collect();
    one(select(x, &lists)?)
}

fn expand(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let shape = arg(c, 1)?.as_i64()?;
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("shape {shape:?} has a negative dim"));
    }
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let out = broadcast(&x.dims, &shape)?;
    host_numel(&out)?;
    host_numel(&x.dims)?;
    one(take(x, &broadcast_index(&x.dims, &out), out))
}

fn tile(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let reps = arg(c, 1)?.as_i64()?;
    if reps.len() != x.dims.len() || reps.iter().any(|&r| r < 0) {
        return Err(format!("repeats {reps:?} for shape {:?}", x.dims));
    }
    // The output's size is checked before its index lists (d·r entries per axis) exist.
    let out: Option<Vec<usize>> = x
        .dims
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.checked_mul(usize::try_from(r).ok()?))
        .collect();
    let out = out.ok_or_else(|| format!("repeats {reps:?} of shape {:?} overflow", x.dims))?;
    host_numel(&out)?;
    host_numel(&x.dims)?;
    let lists: Vec<Vec<usize>> = x
        .dims
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| (0..r).flat_map(|_| 0..d).collect())
        .collect();
    one(select(x, &lists)?)
}

/// `Cast` of a constant: floats stay f32 (FLOAT16/BFLOAT16 rounded to their precision),
/// integer types truncate floats toward zero and wrap to their width as C casts do, BOOL is
/// `x != 0`. (The Cast and CastLike ops are in `dtype.rs`.)
pub(in crate::onnx::ops) fn cast_const(x: &Const, dt: DataType) -> Res<Const> {
    use crate::io::HalfFormat;
    let dims = x.dims.clone();
    let ints = || -> Vec<i64> {
        match &x.data {
            ConstData::I64(v) => v.clone(),
            // `as` truncates toward zero (saturating; NaN is 0).
            ConstData::F32(v) => v.iter().map(|&f| f as i64).collect(),
        }
    };
    let half = |f: HalfFormat| x.as_f32().iter().map(|&v| f.widen(f.narrow(v))).collect();
    Ok(match dt {
        DataType::Float => Const::floats(dims, x.as_f32()),
        DataType::Double => {
            if let ConstData::I64(v) = &x.data {
                if let Some(bad) = v.iter().find(|&&i| (i as f32) as i64 != i) {
                    return Err(format!(
                        "Cast to DOUBLE of {bad}: not exact in f32, which float values use"
                    ));
                }
            }
            Const::floats(dims, x.as_f32())
        }
        DataType::Float16 => Const::floats(dims, half(HalfFormat::F16)),
        DataType::Bfloat16 => Const::floats(dims, half(HalfFormat::BF16)),
        DataType::Int64 => Const::ints(dims, ints()),
        // Held in i64: a value past i64::MAX is refused when the tensor is read.
        DataType::Uint64 => {
            let v = ints();
            if let Some(bad) = v.iter().find(|&&i| i < 0) {
                return Err(format!("Cast to UINT64 of {bad}: negative"));
            }
            Const::ints(dims, v)
        }
        DataType::Int32 => Const::ints(dims, ints().iter().map(|&i| i as i32 as i64).collect()),
        DataType::Int16 => Const::ints(dims, ints().iter().map(|&i| i as i16 as i64).collect()),
        DataType::Int8 => Const::ints(dims, ints().iter().map(|&i| i as i8 as i64).collect()),
        DataType::Uint32 => Const::ints(dims, ints().iter().map(|&i| i as u32 as i64).collect()),
        DataType::Uint16 => Const::ints(dims, ints().iter().map(|&i| i as u16 as i64).collect()),
        DataType::Uint8 => Const::ints(dims, ints().iter().map(|&i| i as u8 as i64).collect()),
        DataType::Bool => Const::ints(
            dims,
            match &x.data {
                ConstData::I64(v) => v.iter().map(|&i| (i != 0) as i64).collect(),
                ConstData::F32(v) => v.iter().map(|&f| (f != 0.0) as i64).collect(),
            },
        ),
        other => {
            return Err(format!(
                "Cast to {} (element type {}) is not supported",
                other.as_str_name(),
                other as i32
            ))
        }
    })
}

/// Integer `Div` truncates toward zero, as C and onnxruntime do (not NumPy's floor).
fn int_div(a: i64, b: i64) -> Res<i64> {
    if b == 0 {
        return Err(format!("integer division of {a} by zero"));
    }
    Ok(a.wrapping_div(b))
}

/// NaN-propagating min/max, as NumPy's (the ONNX reference's) minimum/maximum.
fn min_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

fn max_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

type IntOp = fn(i64, i64) -> Res<i64>;

/// A broadcasting binary op on two constants of the same kind.
fn binary(a: &Const, b: &Const, fi: IntOp, ff: fn(f32, f32) -> f32) -> Res<Const> {
    let out = broadcast(&a.dims, &b.dims)?;
    host_numel(&out)?;
    let (ia, ib) = (
        broadcast_index(&a.dims, &out),
        broadcast_index(&b.dims, &out),
    );
    let pairs = ia.iter().zip(&ib);
    Ok(match (&a.data, &b.data) {
        (ConstData::I64(x), ConstData::I64(y)) => Const::ints(
            out,
            pairs.map(|(&i, &j)| fi(x[i], y[j])).collect::<Res<_>>()?,
        ),
        (ConstData::F32(x), ConstData::F32(y)) => {
            Const::floats(out, pairs.map(|(&i, &j)| ff(x[i], y[j])).collect())
        }
        _ => return Err("an integer and a float operand".into()),
    })
}

fn arith(c: &[Option<&Const>], fi: IntOp, ff: fn(f32, f32) -> f32) -> OpResult {
    one(binary(arg(c, 0)?, arg(c, 1)?, fi, ff)?)
}

fn variadic(c: &[Option<&Const>], fi: IntOp, ff: fn(f32, f32) -> f32) -> OpResult {
    let parts = all(c)?;
    let mut acc = (*parts.first().ok_or("needs an input")?).clone();
    for p in &parts[1..] {
        acc = binary(&acc, p, fi, ff)?;
    }
    one(acc)
}

fn neg(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    one(match &x.data {
        ConstData::I64(v) => {
            Const::ints(x.dims.clone(), v.iter().map(|i| i.wrapping_neg()).collect())
        }
        ConstData::F32(v) => Const::floats(x.dims.clone(), v.iter().map(|f| -f).collect()),
    })
}

fn abs(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    one(match &x.data {
        ConstData::I64(v) => {
            Const::ints(x.dims.clone(), v.iter().map(|i| i.wrapping_abs()).collect())
        }
        ConstData::F32(v) => Const::floats(x.dims.clone(), v.iter().map(|f| f.abs()).collect()),
    })
}

/// `Not` of a BOOL (INT64 0/1) constant.
fn not(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let x = arg(c, 0)?;
    let v = x.as_i64()?;
    one(Const::ints(
        x.dims.clone(),
        v.iter().map(|&i| (i == 0) as i64).collect(),
    ))
}

/// `Mod`: the divisor's sign (Python's %, NumPy's `mod`) unless `fmod` = 1, which takes
/// the dividend's (C's fmod); floats need `fmod` = 1 before opset 28.
fn modulo(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let fmod = attr_int(node, "fmod", 0) != 0;
    if !fmod && env.opset < 28 && matches!(arg(c, 0)?.data, ConstData::F32(_)) {
        return Err("Mod of floats needs fmod = 1 before opset 28".into());
    }
    let int: IntOp = if fmod {
        |a, b| match b {
            0 => Err(format!("integer modulo of {a} by zero")),
            _ => Ok(a.wrapping_rem(b)),
        }
    } else {
        |a, b| match b {
            0 => Err(format!("integer modulo of {a} by zero")),
            _ => {
                let r = a.wrapping_rem(b);
                Ok(if r != 0 && (r < 0) != (b < 0) {
                    r + b
                } else {
                    r
                })
            }
        }
    };
    let float: fn(f32, f32) -> f32 = if fmod {
        |a, b| a % b
    } else {
        |a, b| {
            let r = a % b;
            if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }
        }
    };
    arith(c, int, float)
}

/// A broadcasting comparison (or logical op on BOOL): INT64 0/1.
fn compare(c: &[Option<&Const>], fi: fn(i64, i64) -> bool, ff: fn(f32, f32) -> bool) -> OpResult {
    let (a, b) = (arg(c, 0)?, arg(c, 1)?);
    let out = broadcast(&a.dims, &b.dims)?;
    host_numel(&out)?;
    let (ia, ib) = (
        broadcast_index(&a.dims, &out),
        broadcast_index(&b.dims, &out),
    );
    let pairs = ia.iter().zip(&ib);
    one(Const::ints(
        out,
        match (&a.data, &b.data) {
            (ConstData::I64(x), ConstData::I64(y)) => {
                pairs.map(|(&i, &j)| fi(x[i], y[j]) as i64).collect()
            }
            (ConstData::F32(x), ConstData::F32(y)) => {
                pairs.map(|(&i, &j)| ff(x[i], y[j]) as i64).collect()
            }
            _ => return Err("an integer and a float operand".into()),
        },
    ))
}

/// `Where(cond, x, y)`, all three broadcast.
fn where_(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let (cond, x, y) = (arg(c, 0)?, arg(c, 1)?, arg(c, 2)?);
    if !same_kind(&x.data, &y.data) {
        return Err("an integer and a float branch".into());
    }
    let out = broadcast(&broadcast(&cond.dims, &x.dims)?, &y.dims)?;
    host_numel(&out)?;
    let ic = broadcast_index(&cond.dims, &out);
    let (ix, iy) = (
        broadcast_index(&x.dims, &out),
        broadcast_index(&y.dims, &out),
    );
    let pick: Vec<bool> = {
        let f = cond.as_f32();
        ic.iter().map(|&i| f[i] != 0.0).collect()
    };
    one(match (&x.data, &y.data) {
        (ConstData::I64(a), ConstData::I64(b)) => Const::ints(
            out,
            (0..pick.len())
                .map(|k| if pick[k] { a[ix[k]] } else { b[iy[k]] })
                .collect(),
        ),
        _ => {
            let (a, b) = (x.as_f32(), y.as_f32());
            Const::floats(
                out,
                (0..pick.len())
                    .map(|k| if pick[k] { a[ix[k]] } else { b[iy[k]] })
                    .collect(),
            )
        }
    })
}

/// `Range(start, limit, delta)`: max(ceil((limit - start) / delta), 0) elements
/// `start + i·delta`.
fn range(_: &Env, _: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let (s, l, d) = (arg(c, 0)?, arg(c, 1)?, arg(c, 2)?);
    if [s, l, d].iter().any(|x| x.numel() != 1) {
        return Err("start, limit and delta must be scalars".into());
    }
    match (&s.data, &l.data, &d.data) {
        (ConstData::I64(s), ConstData::I64(l), ConstData::I64(d)) => {
            let (s, l, d) = (s[0] as i128, l[0] as i128, d[0] as i128);
            if d == 0 {
                return Err("delta 0".into());
            }
            let span = l - s;
            // Ceiling division, exact in i128.
            let n = (span / d + ((span % d != 0) && ((span < 0) == (d < 0))) as i128).max(0);
            host_numel(&[n as usize])?;
            one(Const::ints(
                vec![n as usize],
                (0..n).map(|i| (s + i * d) as i64).collect(),
            ))
        }
        (ConstData::F32(s), ConstData::F32(l), ConstData::F32(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            let n = ((l - s) / d).ceil();
            if !n.is_finite() {
                return Err(format!("Range({s}, {l}, {d}) has no finite length"));
            }
            let n = n.max(0.0) as usize;
            host_numel(&[n])?;
            one(Const::floats(
                vec![n],
                (0..n).map(|i| s + i as f32 * d).collect(),
            ))
        }
        _ => Err("start, limit and delta differ in element type".into()),
    }
}

/// `ConstantOfShape`: the `value` attribute's one element (default float 0) over the
/// shape; a large float result is a graph `full` node.
fn constant_of_shape(env: &Env, node: &NodeProto, c: &[Option<&Const>]) -> OpResult {
    let shape = arg(c, 0)?.as_i64()?;
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("shape {shape:?} has a negative dim"));
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let value = match node.attribute.iter().find(|a| a.name() == "value") {
        Some(a) => {
            let t = a.t.as_ref().ok_or("`value` holds no tensor")?;
            initializer(t)?.data
        }
        None => TensorData::F32(vec![0.0]),
    };
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {dims:?} overflows"))?;
    Ok(vec![match value {
        TensorData::F32(v) if v.len() == 1 && n > FULL_ABOVE => {
            crate::shape::checked_numel("ConstantOfShape", &dims).map_err(super::err)?;
            Value::Var(env.graph.full(v[0], &dims))
        }
        TensorData::F32(v) if v.len() == 1 => Value::Const(Const::floats(dims, vec![v[0]; n])),
        TensorData::I64(v) if v.len() == 1 => {
            host_numel(&dims)?;
            Value::Const(Const::ints(dims, vec![v[0]; n]))
        }
        _ => return Err("`value` must hold one element".into()),
    }])
}

/// ReduceSum / ReduceProd on a constant: `axes` an attribute before opset `since`, an
/// optional input from it; `keepdims` (default 1); `noop_with_empty_axes`.
#[allow(clippy::too_many_arguments)]
fn reduce(
    env: &Env,
    node: &NodeProto,
    c: &[Option<&Const>],
    since: i64,
    unit: i64,
    fi: fn(i64, i64) -> i64,
    ff: fn(f32, f32) -> f32,
) -> OpResult {
    let x = arg(c, 0)?;
    host_numel(&x.dims)?;
    let r = x.dims.len();
    let axes = if env.opset >= since {
        opt_const_input(env, node, 1)?
            .map(Const::as_i64)
            .transpose()?
    } else {
        attr_ints(node, "axes")
    }
    .unwrap_or_default();
    if axes.is_empty() && attr_int(node, "noop_with_empty_axes", 0) != 0 {
        return one(x.clone());
    }
    let mut reduced = vec![axes.is_empty(); r];
    for a in axes {
        reduced[axis(a, r, false)?] = true;
    }
    let kept: Vec<usize> = (0..r)
        .map(|k| if reduced[k] { 1 } else { x.dims[k] })
        .collect();
    let (si, so) = (strides(&x.dims), strides(&kept));
    // Output position of each input element.
    let to_out = |mut i: usize| -> usize {
        let mut o = 0;
        for k in 0..r {
            let coord = i / si[k];
            i %= si[k];
            if !reduced[k] {
                o += coord * so[k];
            }
        }
        o
    };
    let n: usize = kept.iter().product();
    let dims: Vec<usize> = if attr_int(node, "keepdims", 1) != 0 {
        kept.clone()
    } else {
        (0..r).filter(|&k| !reduced[k]).map(|k| x.dims[k]).collect()
    };
    one(match &x.data {
        ConstData::I64(v) => {
            let mut acc = vec![unit; n];
            for (i, &e) in v.iter().enumerate() {
                let o = to_out(i);
                acc[o] = fi(acc[o], e);
            }
            Const::ints(dims, acc)
        }
        ConstData::F32(v) => {
            let mut acc = vec![unit as f32; n];
            for (i, &e) in v.iter().enumerate() {
                let o = to_out(i);
                acc[o] = ff(acc[o], e);
            }
            Const::floats(dims, acc)
        }
    })
}
