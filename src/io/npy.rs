//! NumPy `.npy` files: format versions 1.0, 2.0 and 3.0 on read; 1.0 on
//! write (2.0 when the header outgrows 1.0's 16-bit length).
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the
//! header length (u16 little-endian in 1.0, u32 in 2.0/3.0), the header (a
//! Python dict literal such as `{'descr': '<f4', 'fortran_order': False,
//! 'shape': (2, 3), }`, space-padded and ending in `\n`), then the raw data.
//!
//! Dtypes read: `f2` (widened exactly), `f4`, `f8` (rounded to nearest), `i4`, `i8`,
//! `b1`; little-endian (`<`), big-endian (`>`, converted), native (`=`) or not applicable
//! (`|`, one-byte types). C order or Fortran order (`fortran_order: True`, what
//! `np.save(p, a.T)` writes): a Fortran-order file is reordered to C order, so the tensor
//! has NumPy's semantic shape and `a[i, j]` at the same index as in NumPy.
//!
//! [`read_npy_array`] keeps the stored type ([`NpyArray`]) for callers that convert to what
//! they need (`wgrad run` feeds a model's inputs); [`read_npy`] makes a tensor: floats
//! → f32, integers and bools → i32 (an error names the first value that does not fit).

use std::path::Path;

use super::{atomic_write, invalid, read_file};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The name used in errors for bytes that did not come from a file.
const BYTES_NAME: &str = "<npy bytes>";
/// Deepest nesting of brackets accepted in a header (real headers use 2).
const MAX_DEPTH: usize = 8;

/// Reads a `.npy` file into a tensor on `device`.
///
/// `<f4` gives an f32 tensor and `<i4` an i32 tensor; `<f2` widens to f32
/// exactly, `<f8` is rounded to f32 (to nearest; values beyond f32's range
/// become ±inf), `<i8` is narrowed to i32 (an error if a value does not fit,
/// never a wrap) and `|b1` becomes an i32 tensor of 0 and 1.
/// Big-endian files (`>f4`, ...) are converted, Fortran-order files reordered
/// to C order. Every problem — a missing file, bad magic, an unparsable
/// header, an unsupported dtype, data shorter or longer than the shape says —
/// is an [`Error::Invalid`] whose detail names the file.
///
/// ```
/// use wgrad::{io, Device, Tensor};
/// # fn main() -> wgrad::Result<()> {
/// let dev = Device::cpu();
/// let path = std::env::temp_dir().join(format!("wgrad_doc_{}.npy", std::process::id()));
/// let t = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
/// io::write_npy(&path, &t)?;
/// let back = io::read_npy(&path, &dev)?;
/// assert_eq!(back.shape(), &[2, 3]);
/// assert_eq!(back.to_vec::<f32>()?, t.to_vec::<f32>()?);
/// # std::fs::remove_file(&path).ok();
/// # Ok(()) }
/// ```
pub fn read_npy(path: impl AsRef<Path>, device: &Device) -> Result<Tensor> {
    read_npy_array(path)?.to_tensor(device)
}

/// Reads the bytes of a `.npy` file (already in memory) into a tensor on
/// `device`; the same rules as [`read_npy`], with errors naming `<npy bytes>`.
pub fn read_npy_bytes(bytes: &[u8], device: &Device) -> Result<Tensor> {
    parse(bytes, BYTES_NAME)?.to_tensor(device)
}

/// Reads a `.npy` file into host memory, keeping its element type
/// ([`NpyArray`]); C order whatever the file's order. The same checks as
/// [`read_npy`].
pub fn read_npy_array(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let bytes = read_file("read_npy", path)?;
    parse(&bytes, &path.display().to_string())
}

/// [`read_npy_array`] on bytes already in memory (errors name `<npy bytes>`).
pub fn read_npy_array_bytes(bytes: &[u8]) -> Result<NpyArray> {
    parse(bytes, BYTES_NAME)
}

/// The element type stored in a `.npy` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NpyDType {
    /// `f2`, IEEE half precision.
    F16,
    /// `f4`.
    F32,
    /// `f8`.
    F64,
    /// `i4`.
    I32,
    /// `i8`.
    I64,
    /// `b1`, one byte per value (any non-zero byte is true, as in NumPy).
    Bool,
}

impl NpyDType {
    /// NumPy's name for it (`float32`, `int64`, `bool`, ...).
    pub fn numpy_name(self) -> &'static str {
        match self {
            NpyDType::F16 => "float16",
            NpyDType::F32 => "float32",
            NpyDType::F64 => "float64",
            NpyDType::I32 => "int32",
            NpyDType::I64 => "int64",
            NpyDType::Bool => "bool",
        }
    }

    /// Whether it is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, NpyDType::F16 | NpyDType::F32 | NpyDType::F64)
    }

    fn descr(self) -> &'static str {
        match self {
            NpyDType::F16 => "<f2",
            NpyDType::F32 => "<f4",
            NpyDType::F64 => "<f8",
            NpyDType::I32 => "<i4",
            NpyDType::I64 => "<i8",
            NpyDType::Bool => "|b1",
        }
    }

    fn size(self) -> usize {
        match self {
            NpyDType::Bool => 1,
            NpyDType::F16 => 2,
            NpyDType::F32 | NpyDType::I32 => 4,
            NpyDType::F64 | NpyDType::I64 => 8,
        }
    }
}

/// The values of an [`NpyArray`], in C order, each in a Rust type that holds the stored
/// type exactly.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `f2` (widened exactly) and `f4` values.
    F32(Vec<f32>),
    /// `f8` values.
    F64(Vec<f64>),
    /// `i4` values.
    I32(Vec<i32>),
    /// `i8` values.
    I64(Vec<i64>),
    /// `b1` values.
    Bool(Vec<bool>),
}

/// A `.npy` array in host memory: the stored element type, NumPy's shape and
/// the values in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Where it came from (the path, or `<npy bytes>`), for error messages.
    pub origin: String,
    /// The element type in the file.
    pub dtype: NpyDType,
    /// NumPy's shape.
    pub shape: Vec<usize>,
    /// The values, C order.
    pub data: NpyData,
}

/// Largest integer magnitude below which every integer is an exact f32 (2^24).
const F32_EXACT_INT: i64 = 1 << 24;

impl NpyArray {
    /// An array of `dtype` values (C order) with `shape`, for [`write_npy_array`]; the data's
    /// variant must hold `dtype` (`F32` for F16 and F32) and its length fill `shape`.
    pub fn new(dtype: NpyDType, shape: &[usize], data: NpyData) -> Result<NpyArray> {
        let a = NpyArray {
            origin: "<npy array>".into(),
            dtype,
            shape: shape.to_vec(),
            data,
        };
        let fits = matches!(
            (dtype, &a.data),
            (NpyDType::F16 | NpyDType::F32, NpyData::F32(_))
                | (NpyDType::F64, NpyData::F64(_))
                | (NpyDType::I32, NpyData::I32(_))
                | (NpyDType::I64, NpyData::I64(_))
                | (NpyDType::Bool, NpyData::Bool(_))
        );
        let n = crate::shape::checked_numel("NpyArray", shape)?;
        if !fits || a.len() != n {
            return Err(Error::Invalid {
                op: "NpyArray",
                detail: format!(
                    "{} values of the wrong kind or count for {} with shape {shape:?}",
                    a.len(),
                    dtype.numpy_name()
                ),
            });
        }
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn err(&self, detail: String) -> Error {
        invalid("read_npy", &self.origin, detail)
    }

    /// The values as f32: floats as stored (`f8` rounded to nearest, beyond f32's range
    /// ±inf), bools as 0 and 1, integers only when exact in f32 (|x| <= 2^24; otherwise an
    /// error naming the value and its index, never a silent rounding).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let int = |i: usize, x: i64| {
            if x.abs() <= F32_EXACT_INT {
                Ok(x as f32)
            } else {
                Err(self.err(format!(
                    "{} value {x} at flat index {i} is not exact in float32 (|x| > 2^24)",
                    self.dtype.numpy_name()
                )))
            }
        };
        match &self.data {
            NpyData::F32(v) => Ok(v.clone()),
            NpyData::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            NpyData::I32(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| int(i, x.into()))
                .collect(),
            NpyData::I64(v) => v.iter().enumerate().map(|(i, &x)| int(i, x)).collect(),
            NpyData::Bool(v) => Ok(v.iter().map(|&b| f32::from(u8::from(b))).collect()),
        }
    }

    /// The values as i32: integers range-checked (an error names the first value that does
    /// not fit, never a wrap), bools as 0 and 1; floats are refused.
    pub fn to_i32(&self) -> Result<Vec<i32>> {
        match &self.data {
            NpyData::I32(v) => Ok(v.clone()),
            NpyData::I64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    i32::try_from(x).map_err(|_| {
                        self.err(format!(
                            "int64 value {x} at flat index {i} does not fit in i32"
                        ))
                    })
                })
                .collect(),
            NpyData::Bool(v) => Ok(v.iter().map(|&b| i32::from(b)).collect()),
            NpyData::F32(_) | NpyData::F64(_) => Err(self.err(format!(
                "{} values where integers are needed",
                self.dtype.numpy_name()
            ))),
        }
    }

    /// The values as i64 (integers and bools; floats are refused).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match &self.data {
            NpyData::I64(v) => Ok(v.clone()),
            _ => Ok(self.to_i32()?.into_iter().map(i64::from).collect()),
        }
    }

    /// A tensor on `device`: floats → f32 ([`NpyArray::to_f32`]), integers and bools → i32
    /// ([`NpyArray::to_i32`]).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        if self.dtype.is_float() {
            Tensor::from_slice(device, &self.to_f32()?, &self.shape)
        } else {
            Tensor::from_slice(device, &self.to_i32()?, &self.shape)
        }
    }

    /// A tensor of `dtype` (F32 or I32) on `device`, converted as [`NpyArray::to_f32`] and
    /// [`NpyArray::to_i32`] say.
    pub fn to_tensor_as(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F32 => Tensor::from_slice(device, &self.to_f32()?, &self.shape),
            DType::I32 => Tensor::from_slice(device, &self.to_i32()?, &self.shape),
            other => Err(Error::DType {
                op: "read_npy",
                got: other.to_string(),
                expected: "f32 or i32".into(),
            }),
        }
    }
}

/// Writes `array` as a `.npy` file in its own element type (C order), atomically, as
/// [`write_npy`] does.
pub fn write_npy_array(path: impl AsRef<Path>, array: &NpyArray) -> Result<()> {
    atomic_write("write_npy", path.as_ref(), &npy_array_bytes(array)?)
}

/// The bytes of `array` as a `.npy` file in its own element type.
pub fn npy_array_bytes(array: &NpyArray) -> Result<Vec<u8>> {
    let data: Vec<u8> = match (&array.data, array.dtype) {
        (NpyData::F32(v), NpyDType::F16) => v
            .iter()
            .flat_map(|&x| crate::io::HalfFormat::F16.narrow(x).to_le_bytes())
            .collect(),
        (NpyData::F32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (NpyData::F64(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (NpyData::I32(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (NpyData::I64(v), _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        (NpyData::Bool(v), _) => v.iter().map(|&b| u8::from(b)).collect(),
    };
    file_bytes(array.dtype.descr(), &array.shape, &data)
}

/// Writes `tensor` as a `.npy` file (f32 → `<f4`, i32 → `<i4`, C order),
/// atomically: a temporary file in the same directory is renamed over
/// `path`, so a failure never leaves a partial file behind. See [`read_npy`]
/// for a round trip.
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<()> {
    let bytes = npy_bytes(tensor)?;
    atomic_write("write_npy", path.as_ref(), &bytes)
}

/// The bytes of `tensor` as a `.npy` file (format 1.0, or 2.0 when the
/// header needs more than 65535 bytes). f32 → `<f4`, i32 → `<i4`; other
/// dtypes are an [`Error::DType`].
pub fn npy_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    let (descr, data): (&str, Vec<u8>) = match tensor.dtype() {
        DType::F32 => (
            "<f4",
            tensor
                .to_vec::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::I32 => (
            "<i4",
            tensor
                .to_vec::<i32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => {
            return Err(Error::DType {
                op: "write_npy",
                got: other.to_string(),
                expected: "f32 or i32".into(),
            })
        }
    };
    file_bytes(descr, tensor.shape(), &data)
}

/// A `.npy` file: the preamble and header for `descr` and `shape` (C order), then `data`.
fn file_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Result<Vec<u8>> {
    let shape = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 has a u16 header length; the total preamble is padded to 64 bytes.
    let v1_total = (10 + header.len() + 1).next_multiple_of(64);
    let (major, prefix) = if v1_total - 10 <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix + header.len() + 1).next_multiple_of(64);
    header.extend(std::iter::repeat_n(' ', total - prefix - header.len() - 1));
    header.push('\n');

    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        let len = u32::try_from(header.len()).map_err(|_| Error::Invalid {
            op: "write_npy",
            detail: format!("header of {} bytes is too long", header.len()),
        })?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn parse(bytes: &[u8], name: &str) -> Result<NpyArray> {
    let err = |detail: String| invalid("read_npy", name, detail);
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(err(if bytes.is_empty() {
            "empty file, not a .npy file".into()
        } else if MAGIC.starts_with(bytes) {
            "truncated in the magic string".into()
        } else {
            "bad magic, not a .npy file".into()
        }));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return Err(err("truncated before the format version".into())),
    };
    let (len_bytes, header_len): (usize, usize) = match major {
        1 => match bytes.get(8..10) {
            Some(b) => (2, u16::from_le_bytes([b[0], b[1]]) as usize),
            None => return Err(err("truncated in the header length".into())),
        },
        2 | 3 => match bytes.get(8..12) {
            Some(b) => (4, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            None => return Err(err("truncated in the header length".into())),
        },
        _ => return Err(err(format!("unsupported format version {major}.{minor}"))),
    };
    let start = 8 + len_bytes;
    let header = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| {
            err(format!(
                "truncated header: it claims {header_len} bytes, {} present",
                bytes.len() - start.min(bytes.len())
            ))
        })?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not valid text".into()))?;
    let (kind, little, fortran, shape) =
        parse_header(header).map_err(|m| err(format!("header: {m}")))?;

    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(format!("shape {} has too many elements", show(&shape))))?;
    let want = numel
        .checked_mul(kind.size())
        .ok_or_else(|| err(format!("shape {} has too many bytes", show(&shape))))?;
    let data = &bytes[start + header_len..];
    if data.len() != want {
        return Err(err(format!(
            "shape {} needs {want} data bytes, file has {}",
            show(&shape),
            data.len()
        )));
    }

    // Sizes are now bounded by the bytes actually present.
    let data = match kind {
        NpyDType::F16 => NpyData::F32(
            words::<2>(data, little)
                .map(|w| crate::io::HalfFormat::F16.widen(w as u16))
                .collect(),
        ),
        NpyDType::F32 => NpyData::F32(
            words::<4>(data, little)
                .map(|w| f32::from_bits(w as u32))
                .collect(),
        ),
        NpyDType::F64 => NpyData::F64(words::<8>(data, little).map(f64::from_bits).collect()),
        NpyDType::I32 => NpyData::I32(words::<4>(data, little).map(|w| w as u32 as i32).collect()),
        NpyDType::I64 => NpyData::I64(words::<8>(data, little).map(|w| w as i64).collect()),
        NpyDType::Bool => NpyData::Bool(data.iter().map(|&b| b != 0).collect()),
    };
    let data = if fortran && shape.len() > 1 {
        match data {
            NpyData::F32(v) => NpyData::F32(fortran_to_c(&v, &shape)),
            NpyData::F64(v) => NpyData::F64(fortran_to_c(&v, &shape)),
            NpyData::I32(v) => NpyData::I32(fortran_to_c(&v, &shape)),
            NpyData::I64(v) => NpyData::I64(fortran_to_c(&v, &shape)),
            NpyData::Bool(v) => NpyData::Bool(fortran_to_c(&v, &shape)),
        }
    } else {
        data
    };
    Ok(NpyArray {
        origin: name.to_string(),
        dtype: kind,
        shape,
        data,
    })
}

/// Values stored in Fortran order (the first index varies fastest) for `shape`, reordered
/// to C order (the last index fastest): element `a[i0, .., ik]` sits at
/// `sum(i_j * prod(shape[..j]))` in the file and moves to `sum(i_j * prod(shape[j+1..]))`.
fn fortran_to_c<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
    if v.is_empty() {
        return Vec::new();
    }
    // Fortran strides, then walk the C-order multi-index like an odometer.
    let mut fstride = vec![1usize; shape.len()];
    for j in 1..shape.len() {
        fstride[j] = fstride[j - 1] * shape[j - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = 0usize;
    let mut out = Vec::with_capacity(v.len());
    for _ in 0..v.len() {
        out.push(v[off]);
        for j in (0..shape.len()).rev() {
            idx[j] += 1;
            off += fstride[j];
            if idx[j] < shape[j] {
                break;
            }
            off -= fstride[j] * idx[j];
            idx[j] = 0;
        }
    }
    out
}

/// A shape for an error message, eliding the middle of very long ones.
fn show(shape: &[usize]) -> String {
    if shape.len() <= 16 {
        format!("{shape:?}")
    } else {
        format!(
            "{:?}...{:?} ({} dims)",
            &shape[..8],
            &shape[shape.len() - 4..],
            shape.len()
        )
    }
}

/// The N-byte words of `data` as integers (N = 2, 4 or 8), in the file's byte order.
fn words<const N: usize>(data: &[u8], little: bool) -> impl Iterator<Item = u64> + '_ {
    data.chunks_exact(N).map(move |c| {
        let mut b = [0u8; 8];
        if little {
            b[..N].copy_from_slice(c);
        } else {
            for (k, &x) in c.iter().rev().enumerate() {
                b[k] = x;
            }
        }
        u64::from_le_bytes(b)
    })
}

/// A value of the Python literal subset `.npy` headers use.
enum Value {
    Str(String),
    Bool(bool),
    None,
    Int(u128),
    Seq(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// What kind of value this is, for error messages (never the value itself,
    /// which may be arbitrarily long).
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a bool",
            Value::None => "None",
            Value::Int(_) => "an integer",
            Value::Seq(_) => "a sequence",
            Value::Dict(_) => "a dict",
        }
    }
}

/// Parses the header dict into (element type, little-endian?, Fortran order?, shape).
fn parse_header(text: &str) -> std::result::Result<(NpyDType, bool, bool, Vec<usize>), String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.i));
    }
    let Value::Dict(entries) = v else {
        return Err("not a dict".into());
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    };
    for (n, (k, _)) in entries.iter().enumerate() {
        match k {
            Value::Str(s) if matches!(s.as_str(), "descr" | "fortran_order" | "shape") => {
                if entries[..n]
                    .iter()
                    .any(|(k2, _)| matches!(k2, Value::Str(s2) if s2 == s))
                {
                    return Err(format!("key {} appears twice", short(s)));
                }
            }
            Value::Str(s) => return Err(format!("unexpected key {}", short(s))),
            _ => return Err("a key is not a string".into()),
        }
    }
    let descr = match get("descr") {
        Some(Value::Str(s)) => s.as_str(),
        Some(_) => return Err("unsupported dtype: structured arrays are not supported".into()),
        None => return Err("missing 'descr'".into()),
    };
    let fortran = match get("fortran_order") {
        Some(Value::Bool(f)) => *f,
        Some(other) => return Err(format!("fortran_order is {}, not a bool", other.kind())),
        None => return Err("missing 'fortran_order'".into()),
    };
    let shape = match get("shape") {
        Some(Value::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                Value::Int(n) => {
                    usize::try_from(*n).map_err(|_| format!("dimension {n} too large"))
                }
                other => Err(format!("a shape entry is {}, not an integer", other.kind())),
            })
            .collect::<std::result::Result<Vec<usize>, String>>()?,
        Some(other) => return Err(format!("shape is {}, not a tuple", other.kind())),
        None => return Err("missing 'shape'".into()),
    };
    const SUPPORTED: &str = "supported: f2, f4, f8, i4, i8, b1";
    let (order, code) = (descr.get(..1).unwrap_or(""), descr.get(1..).unwrap_or(""));
    let little = match order {
        "<" | "|" => true,
        ">" => false,
        "=" => cfg!(target_endian = "little"),
        _ => return Err(format!("unsupported dtype {} ({SUPPORTED})", short(descr))),
    };
    let kind = match code {
        "f2" => NpyDType::F16,
        "f4" => NpyDType::F32,
        "f8" => NpyDType::F64,
        "i4" => NpyDType::I32,
        "i8" => NpyDType::I64,
        "b1" => NpyDType::Bool,
        _ => return Err(format!("unsupported dtype {} ({SUPPORTED})", short(descr))),
    };
    // `|` means "byte order does not apply": only for one-byte types.
    if order == "|" && kind.size() != 1 {
        return Err(format!("unsupported dtype {} ({SUPPORTED})", short(descr)));
    }
    Ok((kind, little, fortran, shape))
}

/// A quoted, escaped, length-capped copy of header text for a one-line error.
fn short(s: &str) -> String {
    const MAX: usize = 32;
    let head: String = s.chars().take(MAX).collect();
    let more = if s.chars().nth(MAX).is_some() {
        "..."
    } else {
        ""
    };
    format!("{head:?}{more}")
}

/// A recursive-descent parser for Python literals: strings, True/False/None,
/// non-negative integers (an old `L` suffix allowed), tuples, lists, dicts.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        match self.peek() {
            None => Err("ends early".into()),
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => Ok(Value::Seq(self.items(b')', depth)?)),
            Some(b'[') => Ok(Value::Seq(self.items(b']', depth)?)),
            Some(b'{') => self.dict(depth),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(_) => {
                let rest = &self.s[self.i..];
                for (word, v) in [
                    ("True", Value::Bool(true)),
                    ("False", Value::Bool(false)),
                    ("None", Value::None),
                ] {
                    if rest.starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                Err(format!("unexpected character at byte {}", self.i))
            }
        }
    }

    fn string(&mut self, quote: u8) -> std::result::Result<Value, String> {
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote || c == b'\\')
            .ok_or("unterminated string")?;
        if self.s[start + len] == b'\\' {
            return Err("escapes in strings are not supported".into());
        }
        self.i = start + len + 1;
        let text = std::str::from_utf8(&self.s[start..start + len]).map_err(|e| e.to_string())?;
        Ok(Value::Str(text.to_string()))
    }

    fn int(&mut self) -> std::result::Result<Value, String> {
        let mut n: u128 = 0;
        while let Some(&c) = self.s.get(self.i).filter(|c| c.is_ascii_digit()) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(c - b'0')))
                .ok_or("integer too large")?;
            self.i += 1;
        }
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        Ok(Value::Int(n))
    }

    /// Comma-separated values up to `close`; a trailing comma is allowed.
    fn items(&mut self, close: u8, depth: usize) -> std::result::Result<Vec<Value>, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(out);
            }
            out.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{}'", close as char)),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> std::result::Result<Value, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Value::Dict(out));
            }
            let k = self.value(depth + 1)?;
            if self.peek() != Some(b':') {
                return Err("expected ':' in dict".into());
            }
            self.i += 1;
            let v = self.value(depth + 1)?;
            out.push((k, v));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err("expected ',' or '}' in dict".into()),
            }
        }
    }
}
