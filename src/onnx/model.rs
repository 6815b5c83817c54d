//! Decoding a `.onnx` file: the ModelProto, its default-domain opset, graph inputs and
//! outputs with their (possibly symbolic) dims, and the initializers' values, including
//! ones stored outside the model file (`data_location = EXTERNAL`, as
//! `onnx.save_model(..., save_as_external_data=True)` writes them).
//!
//! The file is untrusted: every size is checked against the bytes present before anything
//! is allocated from it, and an external-data location must stay inside the model's
//! directory (no absolute paths, no `..`, no symlink leading out).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::invalid;
use super::proto::{self, tensor_proto::DataType, type_proto, ModelProto, TensorProto};
use crate::Result;

/// One dim of a graph input or output as the file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size (`"N"`, `"batch"`), bound when the model is imported.
    Symbolic(String),
    /// Neither a size nor a name.
    Unknown,
}

/// A graph input or output: its name, element type and dims.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// The value's name in the file.
    pub name: String,
    /// ONNX element type name (`"FLOAT"`, `"INT64"`, ...), or `"UNDEFINED"`.
    pub dtype: String,
    /// The declared dims; `None` when the file gives no shape.
    pub dims: Option<Vec<Dim>>,
}

/// An initializer's values: floats for weights, int64 for shape operands.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// FLOAT elements, row-major.
    F32(Vec<f32>),
    /// INT64 elements, row-major (kept for shape use: Reshape's target and the like).
    I64(Vec<i64>),
}

/// A named constant tensor stored in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Initializer {
    /// The name the graph refers to it by.
    pub name: String,
    /// Its dims.
    pub dims: Vec<usize>,
    /// Its values.
    pub data: TensorData,
}

/// A decoded ONNX model, ready to [`Model::import`].
#[derive(Clone, Debug)]
pub struct Model {
    /// Where it came from (a path, or `"<bytes>"`), used in error messages.
    pub origin: String,
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// The opset version of the default (`ai.onnx`) domain.
    pub opset: i64,
    /// Graph inputs that are not initializers, in file order.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs, in file order.
    pub outputs: Vec<ValueInfo>,
    /// The initializers, in file order.
    pub initializers: Vec<Initializer>,
}

impl Model {
    /// Reads and decodes the `.onnx` file at `path`; external data is read from files
    /// relative to its directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| invalid(format!("{}: cannot read: {e}", path.display())))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Model::decode(&bytes, &path.display().to_string(), Some(dir))
    }

    /// Decodes a model from the bytes of a `.onnx` file. A model with external data needs
    /// [`Model::from_bytes_with_dir`] (an error otherwise).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Model::decode(bytes, "<bytes>", None)
    }

    /// Decodes a model from the bytes of a `.onnx` file whose external data lives in `dir`
    /// (the directory the model file was in).
    pub fn from_bytes_with_dir(bytes: &[u8], dir: impl AsRef<Path>) -> Result<Model> {
        Model::decode(bytes, "<bytes>", Some(dir.as_ref()))
    }

    fn decode(bytes: &[u8], origin: &str, dir: Option<&Path>) -> Result<Model> {
        let proto = ModelProto::decode(bytes)
            .map_err(|e| invalid(format!("{origin}: not an ONNX model: {e}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid(format!("{origin}: not an ONNX model: it has no graph")))?;
        let opset = proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .ok_or_else(|| invalid(format!("{origin}: no opset for the default domain")))?;
        let initializers = graph
            .initializer
            .iter()
            .map(|t| initializer_in(t, dir).map_err(|d| invalid(format!("{origin}: {d}"))))
            .collect::<Result<Vec<_>>>()?;
        // Before IR 4 initializers were listed among the inputs too; they are not feeds.
        let is_init = |n: &str| initializers.iter().any(|i| i.name == n);
        let inputs = graph
            .input
            .iter()
            .filter(|v| !is_init(v.name()))
            .map(value_info)
            .collect();
        let outputs = graph.output.iter().map(value_info).collect();
        Ok(Model {
            origin: origin.to_string(),
            proto,
            opset,
            inputs,
            outputs,
            initializers,
        })
    }

    /// Every node the importer cannot map, as `OpType (node 'name', opset N)` (with the
    /// domain for non-default ones), in graph order; empty when the whole model imports.
    /// Needs no device: `wgrad run --summary` and [`Model::import`] list these up front.
    pub fn unsupported_nodes(&self) -> Vec<String> {
        let Some(graph) = self.proto.graph.as_ref() else {
            return Vec::new();
        };
        graph
            .node
            .iter()
            .filter(|n| !super::ops::supported(n))
            .map(|n| {
                format!(
                    "{}{} (node '{}', opset {})",
                    match n.domain() {
                        "" | "ai.onnx" => String::new(),
                        d => format!("{d}::"),
                    },
                    n.op_type(),
                    n.name(),
                    self.opset
                )
            })
            .collect()
    }

    /// The decoded graph ([`Model::load`] refuses a model without one, but `proto` is public).
    pub(crate) fn graph(&self) -> Result<&proto::GraphProto> {
        self.proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid(format!("{}: the model has no graph", self.origin)))
    }
}

fn value_info(v: &proto::ValueInfoProto) -> ValueInfo {
    let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    let dtype = tensor
        .and_then(|t| t.elem_type)
        .and_then(|e| DataType::try_from(e).ok())
        .unwrap_or(DataType::Undefined);
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                    Dim::Fixed(*n as usize)
                }
                Some(proto::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                    Dim::Symbolic(p.clone())
                }
                _ => Dim::Unknown,
            })
            .collect()
    });
    ValueInfo {
        name: v.name().to_string(),
        dtype: dtype.as_str_name().to_string(),
        dims,
    }
}

/// Decodes a TensorProto holding FLOAT, DOUBLE (rounded to f32), FLOAT16, BFLOAT16 or
/// integer/BOOL data (raw little-endian bytes or the typed field; integers widen to INT64,
/// UINT64 checked to fit); anything else is refused
/// with the tensor's name. Half-precision values widen to f32 exactly (`io::HalfFormat`, as
/// safetensors checkpoints do). External data is refused (no directory to read it from; see
/// [`initializer_in`]).
pub(crate) fn initializer(t: &TensorProto) -> std::result::Result<Initializer, String> {
    initializer_in(t, None)
}

/// [`initializer`], with external data read from files in `dir`.
pub(crate) fn initializer_in(
    t: &TensorProto,
    dir: Option<&Path>,
) -> std::result::Result<Initializer, String> {
    let name = t.name().to_string();
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{name}': negative dim {d}")))
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let numel = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor '{name}': dims {dims:?} overflow"))?;
    let dtype = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let external;
    let raw = if t.data_location == Some(proto::tensor_proto::DataLocation::External as i32) {
        let size = raw_bytes(dtype).ok_or_else(|| unsupported_type(&name, dtype))?;
        let want = numel
            .checked_mul(size)
            .ok_or_else(|| format!("tensor '{name}': dims {dims:?} overflow"))?;
        external = external_data(t, &name, dir, want)?;
        Some(external.as_slice())
    } else {
        t.raw_data.as_deref()
    };
    let half = |format: crate::io::HalfFormat| -> std::result::Result<TensorData, String> {
        Ok(TensorData::F32(match raw {
            Some(r) => format
                .widen_le(r)
                .map_err(|e| format!("tensor '{name}': {e}"))?,
            // Without raw_data, ONNX keeps each half's 16 bits in an int32_data entry.
            None => t
                .int32_data
                .iter()
                .map(|&w| format.widen(w as u16))
                .collect(),
        }))
    };
    let data = match dtype {
        DataType::Float => TensorData::F32(match raw {
            Some(r) => le_words(r, f32::from_le_bytes),
            None => t.float_data.clone(),
        }),
        DataType::Float16 => half(crate::io::HalfFormat::F16)?,
        DataType::Bfloat16 => half(crate::io::HalfFormat::BF16)?,
        DataType::Int64 => TensorData::I64(match raw {
            Some(r) => le_words(r, i64::from_le_bytes),
            None => t.int64_data.clone(),
        }),
        // Narrower integers and BOOL (0/1) widen exactly to INT64, the type shape
        // arithmetic folds in; without raw_data, ONNX keeps each in an int32_data entry
        // (UINT32 in uint64_data).
        DataType::Int32 => TensorData::I64(match raw {
            Some(r) => le_words(r, |b| i32::from_le_bytes(b) as i64),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        DataType::Int16 => TensorData::I64(match raw {
            Some(r) => le_words(r, |b| i16::from_le_bytes(b) as i64),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        DataType::Uint16 => TensorData::I64(match raw {
            Some(r) => le_words(r, |b| u16::from_le_bytes(b) as i64),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        DataType::Int8 => TensorData::I64(match raw {
            Some(r) => r.iter().map(|&b| b as i8 as i64).collect(),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        DataType::Uint8 | DataType::Bool => TensorData::I64(match raw {
            Some(r) => r.iter().map(|&b| b as i64).collect(),
            None => t.int32_data.iter().map(|&v| v as i64).collect(),
        }),
        // DOUBLE is computed in f32 (as DOUBLE inputs are): rounded to f32 here.
        DataType::Double => TensorData::F32(match raw {
            Some(r) => le_words(r, |b| f64::from_le_bytes(b) as f32),
            None => t.double_data.iter().map(|&v| v as f32).collect(),
        }),
        // UINT64 is held in INT64: a value above i64::MAX is refused, not wrapped.
        DataType::Uint64 => TensorData::I64({
            let v: Vec<u64> = match raw {
                Some(r) => le_words(r, u64::from_le_bytes),
                None => t.uint64_data.clone(),
            };
            v.iter()
                .map(|&u| {
                    i64::try_from(u)
                        .map_err(|_| format!("tensor '{name}': UINT64 value {u} exceeds INT64"))
                })
                .collect::<std::result::Result<Vec<i64>, String>>()?
        }),
        DataType::Uint32 => TensorData::I64(match raw {
            Some(r) => le_words(r, |b| u32::from_le_bytes(b) as i64),
            None => t.uint64_data.iter().map(|&v| v as i64).collect(),
        }),
        other => return Err(unsupported_type(&name, other)),
    };
    let len = match &data {
        TensorData::F32(v) => v.len(),
        TensorData::I64(v) => v.len(),
    };
    let raw_size = raw_bytes(dtype).unwrap_or(1);
    if len != numel || raw.is_some_and(|r| r.len() % raw_size != 0) {
        return Err(format!(
            "tensor '{name}': {len} values (or a ragged raw_data) do not fill dims {dims:?}"
        ));
    }
    Ok(Initializer { name, dims, data })
}

/// Bytes per element in raw (or external) data of the element types decoded here.
fn raw_bytes(dtype: DataType) -> Option<usize> {
    Some(match dtype {
        DataType::Int8 | DataType::Uint8 | DataType::Bool => 1,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Int64 | DataType::Uint64 | DataType::Double => 8,
        _ => return None,
    })
}

fn unsupported_type(name: &str, t: DataType) -> String {
    format!(
        "tensor '{name}': element type {} is not supported (FLOAT, DOUBLE (read as f32), FLOAT16, BFLOAT16, BOOL and the integer types are)",
        t.as_str_name()
    )
}

/// The bytes of an external tensor: `location` (relative to `dir`, which it must stay
/// inside), from `offset` (default 0) for `length` bytes (default: to the end of the file);
/// `checksum` is ignored. `want` is the byte count the dims and element type need, checked
/// before anything is read so a lying header allocates nothing.
fn external_data(
    t: &TensorProto,
    name: &str,
    dir: Option<&Path>,
    want: usize,
) -> std::result::Result<Vec<u8>, String> {
    let err = |d: String| format!("tensor '{name}': external data: {d}");
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value())
    };
    let number = |key: &str| -> std::result::Result<Option<u64>, String> {
        get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| err(format!("{key} {v:?} is not a non-negative integer")))
            })
            .transpose()
    };
    let location = get("location").ok_or_else(|| err("no `location` entry".into()))?;
    let dir = dir.ok_or_else(|| {
        err(format!(
            "'{location}' is relative to the model's directory, which bytes do not have \
             (use Model::load or Model::from_bytes_with_dir)"
        ))
    })?;
    let rel = Path::new(location);
    if location.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(format!(
            "location '{location}' must be a relative path inside the model's directory \
             (no absolute path, no '..')"
        )));
    }
    let path: PathBuf = dir.join(rel);
    // A symlink inside the directory may still lead out of it.
    let (real_dir, real) = (dir.canonicalize(), path.canonicalize());
    match (real_dir, real) {
        (Ok(d), Ok(p)) if p.starts_with(&d) => {}
        (Ok(_), Ok(_)) => {
            return Err(err(format!(
                "'{location}' resolves outside the model's directory"
            )))
        }
        (_, Err(e)) | (Err(e), _) => return Err(err(format!("{}: {e}", path.display()))),
    }
    let mut file =
        std::fs::File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let file_len = file
        .metadata()
        .map_err(|e| err(format!("{}: {e}", path.display())))?
        .len();
    let offset = number("offset")?.unwrap_or(0);
    let length = match number("length")? {
        Some(n) => n,
        None => file_len.saturating_sub(offset),
    };
    if length != want as u64 {
        return Err(err(format!(
            "length {length} bytes, but dims {:?} need {want}",
            t.dims
        )));
    }
    let end = offset.checked_add(length);
    if end.is_none_or(|end| end > file_len) {
        return Err(err(format!(
            "{}: bytes {offset}..{offset}+{length} lie past its end ({file_len} bytes)",
            path.display()
        )));
    }
    let mut buf = vec![0u8; want];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok(buf)
}

fn le_words<T, const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact")))
        .collect()
}
