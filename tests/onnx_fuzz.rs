//! Seeded fuzzing of the ONNX front end: 10,000+ mutated models (bytes flipped, truncated
//! or inserted; protobuf fields altered after decoding: dims, attribute values, input
//! names, element types, raw_data lengths, op types, opsets, external-data entries) through
//! `Model::from_bytes_with_dir` → `import` → `compile` on the CPU reference. Each must be
//! `Ok` or `Err`; a panic fails the test with its seed, so it can be replayed alone with
//! `ONNX_FUZZ_SEED=<seed>`. ONNX_FUZZ_COUNT and ONNX_FUZZ_START pick another range of seeds.
//! The starting models are the top folder's fixtures and every op family's (conv, gather,
//! math, norm, shape, fft...). A single allocation over 1 GiB is refused and names its seed. A
//! longer hunt is best run with overflow checks and debug assertions on:
//! `ONNX_FUZZ_COUNT=200000 cargo test --release --test onnx_fuzz
//! --config 'profile.release.package.wgrad.overflow-checks=true'
//! --config 'profile.release.package.wgrad.debug-assertions=true'`.
//! The regression tests at the end are models the hunt broke, each reduced by hand.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::onnx::fixture_in;
use prost::Message;
use wgrad::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto, AttributeProto, ModelProto, StringStringEntryProto,
};
use wgrad::onnx::{Model, Weights};
use wgrad::{Device, Rng};

thread_local! {
    /// The seed this thread is running (u64::MAX: none), for the allocation guard's
    /// message; per thread, as the regression tests run beside the fuzz loop.
    static SEED: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Largest single allocation a case may make: compiled graphs are capped at 2^24 elements
/// below and import-time constants at 2^26, so anything near a gigabyte is a size computed
/// from hostile input. Such a request is refused (the process aborts, as it would on a
/// failed allocation) after naming the seed, which an abort would otherwise lose.
const ALLOC_LIMIT: usize = 1 << 30;

struct Guard;

// SAFETY: every call is passed on to the system allocator unchanged, or refused with null.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            refuse(layout.size());
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// Names the seed that asked for `bytes`, straight to stderr (the test harness's capture
/// of `eprintln!` would be lost in the abort; formatting integers does not allocate).
fn refuse(bytes: usize) {
    use std::io::Write;
    let seed = SEED.try_with(Cell::get).unwrap_or(u64::MAX);
    let mut err = std::io::stderr();
    let _ = if seed == u64::MAX {
        writeln!(
            err,
            "onnx fuzz: a regression test asked for {bytes} bytes at once (limit {ALLOC_LIMIT})"
        )
    } else {
        writeln!(
            err,
            "onnx fuzz: seed {seed} asked for {bytes} bytes at once (limit {ALLOC_LIMIT}); \
             replay with ONNX_FUZZ_SEED={seed}"
        )
    };
}

#[global_allocator]
static GUARD: Guard = Guard;

/// The models mutations start from: the top folder's fixtures and external data, and every
/// model of the op families' folders (sorted, so a seed always means the same case).
fn bases() -> Vec<Vec<u8>> {
    let mut paths: Vec<std::path::PathBuf> = [
        ("", "mlp.onnx"),
        ("", "layout.onnx"),
        ("", "softmax11.onnx"),
        ("", "half_weights.onnx"),
        ("", "unsupported.onnx"),
        ("external", "model.onnx"),
        ("run", "outputs.onnx"),
    ]
    .iter()
    .map(|(d, n)| fixture_in(d, n))
    .collect();
    // Every op family's models too, so the mutations reach each family's op functions,
    // their constant folds and the graph code under them.
    for family in [
        "conv",
        "gather",
        "math",
        "norm",
        "shape",
        "loss",
        "index",
        "attention",
        "dtype",
        "fft",
        "select",
        "training",
        "grid",
        "vision",
        "spatial3d",
    ] {
        let Ok(dir) = std::fs::read_dir(fixture_in(family, "")) else {
            continue;
        };
        let mut found: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        found.sort();
        paths.extend(found);
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

/// Op types to swap in: every one the importer knows, a few it does not.
const OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Softmax",
    "LogSoftmax",
    "Identity",
    "Cast",
    "Dropout",
    "Flatten",
    "Reshape",
    "Transpose",
    "Constant",
    "Conv",
    "Gather",
    "GatherElements",
    "ScatterElements",
    "ScatterND",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
    "Trilu",
    "CumSum",
    "CumProd",
    "Einsum",
    "DFT",
    "STFT",
    "ReverseSequence",
    "Compress",
    "CenterCropPad",
    "Col2Im",
    "SwiGLU",
    "AffineGrid",
    "GridSample",
    "LSTM",
    "GRU",
    "RNN",
    "HannWindow",
    "EyeLike",
    "BlackmanWindow",
    "Sin",
    "Acosh",
    "TopK",
    "OneHot",
    "GatherND",
    "DepthToSpace",
    "SpaceToDepth",
    "Swish",
    "Shape",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Slice",
    "ReduceMean",
    "LayerNormalization",
    "BatchNormalization",
    "Erf",
    "LeakyRelu",
    "Loop",
    "",
    "\u{0}",
    // The op families' operators.
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "Ceil",
    "Celu",
    "Clip",
    "ConstantOfShape",
    "ConvTranspose",
    "Elu",
    "Equal",
    "Expand",
    "Floor",
    "Gelu",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GroupNormalization",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LRN",
    "Less",
    "LessOrEqual",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mish",
    "Mod",
    "Not",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Round",
    "Selu",
    "Shrink",
    "Sign",
    "Size",
    "Softplus",
    "Softsign",
    "Split",
    "Sum",
    "ThresholdedRelu",
    "Tile",
    "Where",
    "Xor",
];

/// Attribute names the op functions read.
const ATTRS: &[&str] = &[
    "axis",
    "equation",
    "hidden_size",
    "direction",
    "layout",
    "linear_before_reset",
    "activations",
    "clip",
    "periodic",
    "output_datatype",
    "exclusive",
    "reverse",
    "perm",
    "transA",
    "transB",
    "alpha",
    "beta",
    "to",
    "allowzero",
    "value",
    "value_float",
    "value_floats",
    "value_int",
    "value_ints",
    "epsilon",
    "axes",
    "keepdims",
    "ignore_index",
    "exclusive",
    "reverse",
    "upper",
    "largest",
    // The op families' attributes.
    "approximate",
    "auto_pad",
    "bias",
    "ceil_mode",
    "count_include_pad",
    "detect_negative",
    "detect_positive",
    "dilations",
    "end",
    "fmod",
    "gamma",
    "group",
    "is_test",
    "kernel_shape",
    "lambd",
    "mode",
    "noop_with_empty_axes",
    "num_groups",
    "num_outputs",
    "output_padding",
    "output_shape",
    "pads",
    "select_last_index",
    "size",
    "spatial",
    "split",
    "start",
    "stash_type",
    "storage_order",
    "strides",
    "training_mode",
];

/// Integers that break careless code.
const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    -2,
    7,
    13,
    64,
    65536,
    1 << 31,
    -(1 << 31),
    1 << 40,
    i64::MAX,
    i64::MIN,
];

fn pick<T: Copy>(rng: &mut Rng, v: &[T]) -> T {
    v[rng.below(v.len())]
}

fn any_int(rng: &mut Rng) -> i64 {
    if rng.below(3) == 0 {
        rng.below(9) as i64 - 4
    } else {
        pick(rng, INTS)
    }
}

fn any_float(rng: &mut Rng) -> f32 {
    pick(
        rng,
        &[
            0.0,
            1.0,
            -1.0,
            0.5,
            1e30,
            -1e-30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ],
    )
}

fn random_attr(rng: &mut Rng) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(pick(rng, ATTRS).to_string()),
        ..Default::default()
    };
    match rng.below(5) {
        0 => {
            a.i = Some(any_int(rng));
            a.r#type = Some(AttributeType::Int as i32);
        }
        1 => {
            a.f = Some(any_float(rng));
            a.r#type = Some(AttributeType::Float as i32);
        }
        2 => {
            a.ints = (0..rng.below(5)).map(|_| any_int(rng)).collect();
            a.r#type = Some(AttributeType::Ints as i32);
        }
        3 => {
            a.floats = (0..rng.below(5)).map(|_| any_float(rng)).collect();
            a.r#type = Some(AttributeType::Floats as i32);
        }
        _ => {
            a.s = Some(random_text(rng));
            a.r#type = Some(rng.below(30) as i32);
        }
    }
    a
}

/// A string attribute: an auto_pad-like word, or an Einsum-like equation of labels,
/// ellipses, commas, arrows and stray characters.
fn random_text(rng: &mut Rng) -> Vec<u8> {
    if rng.below(2) == 0 {
        return b"NOTSET".to_vec();
    }
    const PIECES: &[&str] = &[
        "i", "j", "k", "i", "...", ",", "->", "-", ">", ".", " ", "1", "Z",
    ];
    (0..rng.below(12))
        .flat_map(|_| pick(rng, PIECES).bytes())
        .collect()
}

/// One random structural change to `m`.
fn mutate(m: &mut ModelProto, rng: &mut Rng) {
    if rng.below(20) == 0 {
        let v = pick(rng, &[0i64, 1, 7, 11, 12, 13, 17, 18, 1000, -1]);
        if let Some(o) = m.opset_import.first_mut() {
            o.version = Some(v);
        }
        return;
    }
    let Some(g) = m.graph.as_mut() else { return };
    // Every value name in the graph, to rewire inputs to.
    let mut names: Vec<String> = g.input.iter().map(|v| v.name().to_string()).collect();
    names.extend(g.initializer.iter().map(|t| t.name().to_string()));
    names.extend(g.node.iter().flat_map(|n| n.output.clone()));
    names.push(String::new());
    names.push("nowhere".into());
    match rng.below(14) {
        0 if !g.node.is_empty() => {
            let k = rng.below(g.node.len());
            g.node[k].op_type = Some(pick(rng, OPS).to_string());
        }
        1 if !g.node.is_empty() => {
            // Change an existing attribute's value (or type), or add/remove one.
            let k = rng.below(g.node.len());
            let node = &mut g.node[k];
            match rng.below(4) {
                0 => node.attribute.push(random_attr(rng)),
                1 if !node.attribute.is_empty() => {
                    let j = rng.below(node.attribute.len());
                    node.attribute.remove(j);
                }
                _ if !node.attribute.is_empty() => {
                    let j = rng.below(node.attribute.len());
                    let name = node.attribute[j].name.clone();
                    node.attribute[j] = AttributeProto {
                        name,
                        ..random_attr(rng)
                    };
                }
                _ => node.attribute.push(random_attr(rng)),
            }
        }
        2 if !g.node.is_empty() => {
            // Rewire, drop or add a node input.
            let k = rng.below(g.node.len());
            let node = &mut g.node[k];
            let name = pick(rng, &names.iter().map(String::as_str).collect::<Vec<_>>()).to_string();
            match rng.below(3) {
                0 if !node.input.is_empty() => {
                    let j = rng.below(node.input.len());
                    node.input[j] = name;
                }
                1 if !node.input.is_empty() => {
                    let j = rng.below(node.input.len());
                    node.input.remove(j);
                }
                _ => node.input.push(name),
            }
        }
        3 if !g.node.is_empty() => {
            // Rename, drop or add a node output.
            let k = rng.below(g.node.len());
            let node = &mut g.node[k];
            match rng.below(3) {
                0 if !node.output.is_empty() => {
                    let j = rng.below(node.output.len());
                    node.output[j] = pick(rng, &["", "x", "y", "dup"]).to_string();
                }
                1 if !node.output.is_empty() => {
                    node.output.pop();
                }
                _ => node.output.push("extra".into()),
            }
        }
        4 if !g.node.is_empty() => {
            // Delete, duplicate or swap nodes.
            let k = rng.below(g.node.len());
            match rng.below(3) {
                0 => {
                    g.node.remove(k);
                }
                1 => {
                    let n = g.node[k].clone();
                    g.node.insert(rng.below(g.node.len() + 1), n);
                }
                _ => {
                    let j = rng.below(g.node.len());
                    g.node.swap(k, j);
                }
            }
        }
        5 | 6 => {
            // A graph input's or output's dims and element type.
            let list = if rng.below(2) == 0 {
                &mut g.input
            } else {
                &mut g.output
            };
            if list.is_empty() {
                return;
            }
            let k = rng.below(list.len());
            let v = &mut list[k];
            match rng.below(5) {
                0 => v.r#type = None,
                1 => v.name = Some(pick(rng, &["", "x", "renamed", "w"]).to_string()),
                _ => {
                    let Some(type_proto::Value::TensorType(t)) =
                        v.r#type.as_mut().and_then(|t| t.value.as_mut())
                    else {
                        return;
                    };
                    if rng.below(3) == 0 {
                        t.elem_type = Some(rng.below(25) as i32);
                        return;
                    }
                    let Some(shape) = t.shape.as_mut() else {
                        return;
                    };
                    match rng.below(4) {
                        0 => shape.dim.push(Default::default()),
                        1 if !shape.dim.is_empty() => {
                            shape.dim.pop();
                        }
                        _ if !shape.dim.is_empty() => {
                            let j = rng.below(shape.dim.len());
                            shape.dim[j].value = Some(match rng.below(3) {
                                0 => dimension::Value::DimParam(
                                    pick(rng, &["N", "M", "", "batch"]).into(),
                                ),
                                _ => dimension::Value::DimValue(pick(
                                    rng,
                                    &[0, 1, 2, 3, 5, 7, -1, 1 << 20, 1 << 40, i64::MAX],
                                )),
                            });
                        }
                        _ => shape.dim.clear(),
                    }
                }
            }
        }
        7..=10 if !g.initializer.is_empty() => {
            // An initializer's dims, type, data or location.
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            match rng.below(10) {
                0 => t.dims.push(any_int(rng)),
                1 if !t.dims.is_empty() => {
                    let j = rng.below(t.dims.len());
                    t.dims[j] = any_int(rng);
                }
                2 => {
                    t.data_type = Some(pick(
                        rng,
                        &[
                            DataType::Float,
                            DataType::Float16,
                            DataType::Bfloat16,
                            DataType::Int64,
                            DataType::Int32,
                            DataType::Double,
                            DataType::String,
                            DataType::Bool,
                        ],
                    ) as i32)
                }
                3 => {
                    if let Some(r) = t.raw_data.as_mut() {
                        let n = rng.below(r.len() + 9);
                        r.resize(n, 0x7f);
                    } else {
                        t.raw_data = Some(vec![0x3c; rng.below(40)]);
                    }
                }
                4 => {
                    t.raw_data = None;
                    t.float_data = (0..rng.below(40)).map(|_| any_float(rng)).collect();
                }
                5 => {
                    t.raw_data = None;
                    t.int64_data = (0..rng.below(10)).map(|_| any_int(rng)).collect();
                }
                6 => {
                    t.raw_data = None;
                    t.int32_data = (0..rng.below(40)).map(|_| any_int(rng) as i32).collect();
                }
                7 => t.name = Some(pick(rng, &["x", "w", "", "shape", "fc1.weight"]).into()),
                8 => {
                    // External data with hostile entries.
                    t.data_location = Some(rng.below(3) as i32);
                    let entry = |k: &str, v: String| StringStringEntryProto {
                        key: Some(k.into()),
                        value: Some(v),
                    };
                    t.external_data = vec![
                        entry(
                            "location",
                            pick(
                                rng,
                                &[
                                    "weights.bin",
                                    "../mlp.onnx",
                                    "/dev/zero",
                                    "",
                                    ".",
                                    "model.onnx",
                                ],
                            )
                            .into(),
                        ),
                        entry("offset", any_int(rng).to_string()),
                        entry("length", any_int(rng).to_string()),
                    ];
                    if rng.below(2) == 0 {
                        t.external_data.truncate(rng.below(3));
                    }
                }
                _ => t.dims.clear(),
            }
        }
        _ => {
            // A graph output pointing somewhere else.
            if !g.output.is_empty() {
                let k = rng.below(g.output.len());
                let name = pick(rng, &names.iter().map(String::as_str).collect::<Vec<_>>());
                g.output[k].name = Some(name.to_string());
            }
        }
    }
}

/// Byte-level damage: flips, truncation, insertion.
fn damage(bytes: &mut Vec<u8>, rng: &mut Rng) {
    match rng.below(3) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                if bytes.is_empty() {
                    break;
                }
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
        }
        1 => bytes.truncate(rng.below(bytes.len() + 1)),
        _ => {
            let i = rng.below(bytes.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.below(8))
                .map(|_| rng.next_u64() as u8)
                .collect();
            bytes.splice(i..i, junk);
        }
    }
}

/// The mutated model for `seed`.
fn case(bases: &[Vec<u8>], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let base = &bases[rng.below(bases.len())];
    if rng.below(4) == 0 {
        let mut b = base.clone();
        damage(&mut b, &mut rng);
        return b;
    }
    let mut m = ModelProto::decode(base.as_slice()).expect("fixtures decode");
    for _ in 0..1 + rng.below(3) {
        mutate(&mut m, &mut rng);
    }
    let mut b = m.encode_to_vec();
    if rng.below(10) == 0 {
        damage(&mut b, &mut rng);
    }
    b
}

/// Decode, import and compile `bytes`; Ok or Err are both fine. Returns how far it got.
fn exercise(bytes: &[u8], seed: u64) -> usize {
    let dir = fixture_in("external", "");
    let Ok(model) = Model::from_bytes_with_dir(bytes, &dir) else {
        return 0;
    };
    let n = 1 + (seed % 3) as usize;
    let dims = [("N", n), ("batch", n), ("M", 2)];
    let weights = if seed % 2 == 0 {
        Weights::Params
    } else {
        Weights::Constants
    };
    let Ok(imported) = model.import(&dims, weights) else {
        return 1;
    };
    let outs: Vec<_> = imported.outputs.iter().map(|(_, v)| v).collect();
    // Huge declared shapes import fine (nothing is allocated for them) but are not
    // compiled: the CPU reference would allocate them for real.
    let big = imported.graph.nodes().iter().any(|n| {
        n.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|e| e > 1 << 24)
    });
    if big {
        return 2;
    }
    match Device::cpu().compile(&imported.graph, &outs, None) {
        Ok(_) => 3,
        Err(_) => 2,
    }
}

#[test]
fn mutated_models_never_panic() {
    let bases = bases();
    // ONNX_FUZZ_COUNT runs more seeds (a longer hunt); ONNX_FUZZ_SEED replays one.
    let count = std::env::var("ONNX_FUZZ_COUNT").map_or(10_000u64, |s| s.parse().expect("count"));
    let first = std::env::var("ONNX_FUZZ_START").map_or(0u64, |s| s.parse().expect("start"));
    let (start, count) = match std::env::var("ONNX_FUZZ_SEED") {
        Ok(s) => (s.parse().expect("ONNX_FUZZ_SEED is a number"), 1),
        Err(_) => (first, count),
    };
    // Panics are caught and reported by seed; keep the default hook's output off meanwhile.
    // The hook only records where the panic happened, for the report.
    static WHERE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    // A replayed seed keeps the default hook, for its backtrace.
    let hook = std::panic::take_hook();
    if count > 1 {
        std::panic::set_hook(Box::new(|info| {
            if let (Some(l), Ok(mut w)) = (info.location(), WHERE.lock()) {
                *w = l.to_string();
            }
        }));
    }
    // Panics by where they happened: (message, first seeds, count), so one bug hit by a
    // thousand seeds does not hide the next one.
    let mut panics: std::collections::BTreeMap<String, (String, Vec<u64>, usize)> =
        Default::default();
    let mut reached = [0usize; 4];
    for seed in start..start + count {
        SEED.with(|s| s.set(seed));
        let bytes = case(&bases, seed);
        match catch_unwind(AssertUnwindSafe(|| exercise(&bytes, seed))) {
            Ok(r) => reached[r] += 1,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let at = WHERE.lock().map(|w| w.clone()).unwrap_or_default();
                let e = panics.entry(at).or_insert((msg, Vec::new(), 0));
                if e.1.len() < 3 {
                    e.1.push(seed);
                }
                e.2 += 1;
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!(
        "onnx fuzz: {count} models: {} not decoded, {} not imported, {} not compiled, {} compiled",
        reached[0], reached[1], reached[2], reached[3]
    );
    assert!(
        panics.is_empty(),
        "{} panics at {} places (replay one with ONNX_FUZZ_SEED=<seed>):\n{}",
        panics.values().map(|e| e.2).sum::<usize>(),
        panics.len(),
        panics
            .iter()
            .map(|(at, (msg, seeds, n))| format!("{at}: {msg} ({n} seeds, e.g. {seeds:?})"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The mutations must reach decoding errors, import errors and compiled graphs alike,
    // or the test proves little.
    if count > 1 {
        let some = count as usize / 50;
        assert!(
            reached[0] > some && reached[1] > some && reached[3] > some,
            "{reached:?}"
        );
    }
}

// ------------------------------------------------------------------ regressions
//
// Hand-built models for what the hunt found: each must be a clear import error naming the
// op, where it panicked on an overflow, wrapped to a wrong shape or asked for gigabytes.

use wgrad::onnx::proto::{
    GraphProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// A FLOAT value's declaration with `dims` (none: no shape).
fn declared(name: &str, dims: Option<&[i64]>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|&n| wgrad::onnx::proto::tensor_shape_proto::Dimension {
                            value: Some(dimension::Value::DimValue(n)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node `op` from `inputs` to `outputs`, with `attrs`.
fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(op.to_lowercase()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// An INT64 initializer.
fn int_init(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// A FLOAT initializer.
fn float_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: v.to_vec(),
        ..Default::default()
    }
}

/// The import error of a model at `opset` with float input `x` of `x_dims` (none: no graph
/// input), `inits` and `nodes`, whose output is `y`.
fn import_error(
    opset: i64,
    x_dims: Option<&[i64]>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
) -> String {
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: nodes,
            initializer: inits,
            input: x_dims.map(|d| declared("x", Some(d))).into_iter().collect(),
            output: vec![declared("y", None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let model = Model::from_bytes(&bytes).expect("decodes");
    match catch_unwind(AssertUnwindSafe(|| model.import(&[], Weights::Constants))) {
        Ok(Ok(i)) => panic!(
            "the model must not import: {:?}",
            i.outputs
                .iter()
                .map(|(n, v)| (n.clone(), v.shape().to_vec()))
                .collect::<Vec<_>>()
        ),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("import panicked"),
    }
}

fn assert_names(msg: &str, wants: &[&str]) {
    for w in wants {
        assert!(msg.contains(w), "`{w}` missing from: {msg}");
    }
}

/// 2^40: dims past it multiply past usize when an empty input holds them.
const T40: i64 = 1 << 40;

#[test]
fn normalisations_of_empty_inputs_with_huge_dims_are_errors() {
    // The spatial product 2^80 overflowed in InstanceNormalization (the last dim, 0, makes
    // the input empty, so its element count is fine).
    let inits = || vec![float_init("s", &[1], &[1.0]), float_init("b", &[1], &[0.0])];
    let msg = import_error(
        13,
        Some(&[1, 1, T40, T40, 0]),
        inits(),
        vec![node(
            "InstanceNormalization",
            &["x", "s", "b"],
            &["y"],
            vec![],
        )],
    );
    assert_names(
        &msg,
        &[
            "InstanceNormalization",
            "multiply past",
            "[1, 1, 1099511627776, 1099511627776, 0]",
        ],
    );
    // LayerNormalization's rows (the dims before the normalised one).
    let msg = import_error(
        17,
        Some(&[T40, T40, 0]),
        vec![float_init("s", &[1], &[1.0])],
        vec![node("LayerNormalization", &["x", "s"], &["y"], vec![])],
    );
    assert_names(&msg, &["LayerNormalization", "multiply past"]);
    // GroupNormalization's per-group count.
    let msg = import_error(
        18,
        Some(&[1, 1, T40, T40, 0]),
        inits(),
        vec![node(
            "GroupNormalization",
            &["x", "s", "b"],
            &["y"],
            vec![int_attr("num_groups", 1)],
        )],
    );
    assert_names(&msg, &["GroupNormalization", "multiply past"]);
}

#[test]
fn flattening_ops_on_empty_inputs_with_huge_dims_are_errors() {
    let msg = import_error(
        11,
        Some(&[0, T40, T40]),
        vec![],
        vec![node("Hardmax", &["x"], &["y"], vec![])],
    );
    assert_names(&msg, &["Hardmax", "multiply past"]);
    let msg = import_error(
        13,
        Some(&[0, 1, T40, T40]),
        vec![],
        vec![node("GlobalAveragePool", &["x"], &["y"], vec![])],
    );
    assert_names(&msg, &["GlobalAveragePool", "multiply past"]);
}

#[test]
fn pooling_with_huge_pads_is_an_error_not_a_terabyte_table() {
    // 2^32 − 1 padding on each side: ~2^33 windows per axis, whose tables were allocated.
    let p = u32::MAX as i64;
    for op in ["MaxPool", "AveragePool"] {
        let msg = import_error(
            13,
            Some(&[1, 1, 4, 4]),
            vec![],
            vec![node(
                op,
                &["x"],
                &["y"],
                vec![
                    ints_attr("kernel_shape", &[2, 2]),
                    ints_attr("pads", &[p, p, p, p]),
                ],
            )],
        );
        assert_names(&msg, &[op, "tables of", "over the limit of 268435456"]);
    }
}

#[test]
fn conv_transpose_output_size_overflow_is_an_error() {
    // stride 2^32 − 1 over 2^40 input positions: the output size overflows usize.
    let msg = import_error(
        13,
        Some(&[1, 1, T40]),
        vec![float_init("w", &[1, 1, 1], &[1.0])],
        vec![node(
            "ConvTranspose",
            &["x", "w"],
            &["y"],
            vec![ints_attr("strides", &[u32::MAX as i64])],
        )],
    );
    assert_names(
        &msg,
        &["ConvTranspose", "overflows", "[1, 1, 1099511627776]"],
    );
}

#[test]
fn tile_pad_and_size_overflows_are_errors() {
    // Tile of a graph value: 2^40 · 2^40.
    let msg = import_error(
        13,
        Some(&[T40]),
        vec![int_init("r", &[1], &[T40])],
        vec![node("Tile", &["x", "r"], &["y"], vec![])],
    );
    assert_names(&msg, &["Tile", "overflow", "[1099511627776]"]);
    // A pad of i64::MIN crops 2^63 elements: it negated with an overflow (and, wrapped,
    // cropped nothing: the input came back unchanged).
    let msg = import_error(
        13,
        Some(&[2]),
        vec![int_init("p", &[2], &[i64::MIN, 0])],
        vec![node("Pad", &["x", "p"], &["y"], vec![])],
    );
    assert_names(&msg, &["Pad", "leave nothing of axis 0"]);
    // Edge padding of an empty axis has no edge to repeat.
    let msg = import_error(
        13,
        Some(&[0, 2]),
        vec![int_init("p", &[4], &[1, 0, 0, 0])],
        vec![node(
            "Pad",
            &["x", "p"],
            &["y"],
            vec![string_attr("mode", "edge")],
        )],
    );
    assert_names(&msg, &["Pad", "mode `edge`", "[0, 2]"]);
    // Size of an empty input whose dims multiply past usize.
    let msg = import_error(
        13,
        Some(&[T40, T40, 0]),
        vec![],
        vec![node("Size", &["x"], &["y"], vec![])],
    );
    assert_names(&msg, &["Size", "multiply past"]);
}

#[test]
fn import_time_constants_are_bounded_before_they_are_allocated() {
    // Tile of a 2-element constant 2^31 times: 2^32 index entries (32 GB) were built before
    // the size check.
    let msg = import_error(
        13,
        None,
        vec![
            int_init("c", &[2], &[1, 2]),
            int_init("r", &[1], &[1 << 31]),
        ],
        vec![node("Tile", &["c", "r"], &["y"], vec![])],
    );
    assert_names(&msg, &["Tile", "[4294967296]", "67108864 elements"]);
    // An empty constant with huge dims: its per-axis index lists were built whole.
    let msg = import_error(
        13,
        None,
        vec![int_init("c", &[0, T40], &[])],
        vec![node("Transpose", &["c"], &["y"], vec![])],
    );
    assert_names(
        &msg,
        &["Transpose", "[0, 1099511627776]", "67108864 elements"],
    );
    // Dropout's mask output is a constant of the input's size (2^40 here).
    let msg = import_error(
        13,
        Some(&[1 << 20, 1 << 20]),
        vec![],
        vec![node("Dropout", &["x"], &["y", "mask"], vec![])],
    );
    assert_names(
        &msg,
        &["Dropout", "[1048576, 1048576]", "67108864 elements"],
    );
}

#[test]
fn index_ops_on_empty_inputs_with_huge_dims_are_errors() {
    // An empty input whose other dims multiply past usize: the flat positions these ops
    // list at import must not overflow computing its element count (found by the fuzzer).
    let msg = import_error(
        16,
        Some(&[0, T40, T40]),
        vec![int_init("i", &[0, 1], &[])],
        vec![node("ScatterND", &["x", "i", "x"], &["y"], vec![])],
    );
    assert_names(&msg, &["ScatterND", "multiply past"]);
    let msg = import_error(
        13,
        Some(&[T40, T40, 0]),
        vec![int_init("i", &[0, 1, 0], &[])],
        vec![node("GatherElements", &["x", "i"], &["y"], vec![])],
    );
    assert_names(&msg, &["GatherElements", "multiply past"]);
}

#[test]
fn block_and_gather_nd_misuse_names_the_op_and_shapes() {
    let msg = import_error(
        13,
        Some(&[1, 6, 2, 2]),
        vec![],
        vec![node(
            "DepthToSpace",
            &["x"],
            &["y"],
            vec![int_attr("blocksize", 2)],
        )],
    );
    assert_names(&msg, &["DepthToSpace", "[1, 6, 2, 2]", "blocksize"]);
    let msg = import_error(
        13,
        Some(&[1, 1, 3, 3]),
        vec![],
        vec![node(
            "SpaceToDepth",
            &["x"],
            &["y"],
            vec![int_attr("blocksize", 2)],
        )],
    );
    assert_names(&msg, &["SpaceToDepth", "[1, 1, 3, 3]", "blocksize 2"]);
    let msg = import_error(
        13,
        Some(&[2, 3]),
        vec![int_init("i", &[1, 2], &[1, 3])],
        vec![node("GatherND", &["x", "i"], &["y"], vec![])],
    );
    assert_names(
        &msg,
        &["GatherND", "3 outside -3..3", "dim 1 of data [2, 3]"],
    );
}

#[test]
fn fourier_and_selection_ops_on_huge_dims_are_errors() {
    // DFT's n-point matrices for dft_length 2^40.
    let msg = import_error(
        20,
        Some(&[1, 8, 1]),
        vec![int_init("n", &[], &[T40]), int_init("a", &[], &[1])],
        vec![node("DFT", &["x", "n", "a"], &["y"], vec![])],
    );
    assert_names(&msg, &["DFT", "elements"]);
    // STFT with a step of 1 over a signal of 2^40 samples: one slice per frame.
    let msg = import_error(
        17,
        Some(&[1, T40, 1]),
        vec![int_init("s", &[], &[1]), int_init("l", &[], &[4])],
        vec![node("STFT", &["x", "s", "", "l"], &["y"], vec![])],
    );
    assert_names(&msg, &["STFT", "frames"]);
    // ReverseSequence's host list of positions, one per element.
    let msg = import_error(
        10,
        Some(&[2, 3, T40]),
        vec![int_init("l", &[2], &[1, 2])],
        vec![node(
            "ReverseSequence",
            &["x", "l"],
            &["y"],
            vec![int_attr("batch_axis", 0), int_attr("time_axis", 1)],
        )],
    );
    assert_names(&msg, &["ReverseSequence", "elements"]);
}

#[test]
fn vision_ops_on_huge_dims_are_errors() {
    // RoiAlign's output grid times its samples per bin past any allocation.
    let roi = |attrs: Vec<AttributeProto>, x: &[i64]| {
        import_error(
            16,
            Some(x),
            vec![
                float_init("r", &[1, 4], &[0.0, 0.0, 2.0, 2.0]),
                int_init("b", &[1], &[0]),
            ],
            vec![node("RoiAlign", &["x", "r", "b"], &["y"], attrs)],
        )
    };
    let msg = roi(
        vec![
            int_attr("output_height", T40),
            int_attr("sampling_ratio", T40),
        ],
        &[1, 1, 4, 4],
    );
    assert_names(&msg, &["RoiAlign"]);
    let msg = roi(
        vec![
            int_attr("output_height", 1 << 20),
            int_attr("output_width", 1 << 20),
            int_attr("sampling_ratio", 2),
        ],
        &[1, 1, 4, 4],
    );
    assert_names(&msg, &["RoiAlign", "elements"]);
    // A feature map of 2^40 pixels: the per-roi selection alone is a terabyte.
    let msg = roi(
        vec![int_attr("sampling_ratio", 1)],
        &[1, 1, 1 << 20, 1 << 20],
    );
    assert_names(&msg, &["RoiAlign", "elements"]);
    // DeformConv over a 2^20 x 2^20 map with a 1x1 kernel: 2^40 sampling positions.
    let msg = import_error(
        22,
        Some(&[1, 1, 1 << 20, 1 << 20]),
        vec![float_init("w", &[1, 1, 1, 1], &[1.0])],
        vec![
            node("Concat", &["x", "x"], &["o"], vec![int_attr("axis", 1)]),
            node("DeformConv", &["x", "w", "o"], &["y"], vec![]),
        ],
    );
    assert_names(&msg, &["DeformConv"]);
    // Det of order 2^20: the unrolled factorisation is refused by its order.
    let msg = import_error(
        22,
        Some(&[1 << 20, 1 << 20]),
        vec![],
        vec![node("Det", &["x"], &["y"], vec![])],
    );
    assert_names(&msg, &["Det", "order 1048576"]);
    // MelWeightMatrix of dft_length 2^40 (its bins are a host constant).
    let msg = import_error(
        17,
        None,
        vec![
            int_init("m", &[], &[8]),
            int_init("d", &[], &[T40]),
            int_init("s", &[], &[16000]),
            float_init("lo", &[], &[0.0]),
            float_init("hi", &[], &[8000.0]),
        ],
        vec![node(
            "MelWeightMatrix",
            &["m", "d", "s", "lo", "hi"],
            &["y"],
            vec![],
        )],
    );
    assert_names(&msg, &["MelWeightMatrix", "elements"]);
}

#[test]
fn spatial_3d_pooling_conv_and_unpool_on_huge_dims_are_errors() {
    // Empty 5-D inputs whose other dims are 2^40: the (N, C·D, H, W) views and the
    // OH·OW planes of the 3-D compositions multiply past usize.
    for op in ["MaxPool", "AveragePool", "LpPool"] {
        let msg = import_error(
            18,
            Some(&[0, 1, T40, T40, T40]),
            vec![],
            vec![node(
                op,
                &["x"],
                &["y"],
                vec![ints_attr("kernel_shape", &[1, 1, 1])],
            )],
        );
        assert_names(
            &msg,
            &[op, "unaddressable", "3-D input [0, 1, 1099511627776"],
        );
    }
    let msg = import_error(
        13,
        Some(&[0, 1, T40, T40, T40]),
        vec![float_init("w", &[1, 1, 1, 1, 1], &[1.0])],
        vec![node("Conv", &["x", "w"], &["y"], vec![])],
    );
    assert_names(&msg, &["Conv", "multiply past"]);
    let msg = import_error(
        13,
        Some(&[0, 1, T40, T40, T40]),
        vec![float_init("w", &[1, 1, 1, 1, 1], &[1.0])],
        vec![node("ConvTranspose", &["x", "w"], &["y"], vec![])],
    );
    assert_names(&msg, &["ConvTranspose", "overflow", "1099511627776"]);
    // MaxUnpool: a 2^40-element plane, and a one-hot of many small planes.
    let msg = import_error(
        11,
        Some(&[0, 1, T40, T40]),
        vec![int_init("i", &[1], &[0])],
        vec![node(
            "MaxUnpool",
            &["x", "i"],
            &["y"],
            vec![ints_attr("kernel_shape", &[2, 2])],
        )],
    );
    assert_names(&msg, &["MaxUnpool", "2^24"]);
    let msg = import_error(
        11,
        Some(&[64, 64, 32, 32]),
        vec![],
        vec![
            node(
                "MaxPool",
                &["x"],
                &["p", "i"],
                vec![ints_attr("kernel_shape", &[1, 1])],
            ),
            node(
                "MaxUnpool",
                &["p", "i"],
                &["y"],
                vec![ints_attr("kernel_shape", &[1, 1])],
            ),
        ],
    );
    assert_names(&msg, &["MaxUnpool", "one-hot", "[64, 64, 32, 32]"]);
    // Col2Im of a 3-D image of 2^96 elements.
    let msg = import_error(
        18,
        Some(&[1, 1, 1]),
        vec![
            int_init("image", &[3], &[u32::MAX as i64; 3]),
            int_init("block", &[3], &[1, 1, 1]),
        ],
        vec![node("Col2Im", &["x", "image", "block"], &["y"], vec![])],
    );
    assert_names(&msg, &["Col2Im", "multiply past"]);
}

/// A declared graph input whose element count overflows usize is refused where it is
/// declared, naming the input and its shape (it could never be fed, and downstream size
/// arithmetic, such as Clip's bound count, would otherwise have to guard against it).
#[test]
fn declared_input_past_usize_is_an_error() {
    let msg = import_error(
        13,
        Some(&[T40, T40, 4]),
        vec![],
        vec![node("Relu", &["x"], &["y"], vec![])],
    );
    assert_names(&msg, &["'x'", "1099511627776", "address"]);
}
