//! safetensors files (the Hugging Face format: an 8-byte little-endian header
//! length, a JSON header of names → dtype/shape/offsets, then the raw data),
//! read and written through the `safetensors` crate.
//!
//! Dtypes read: `F32` and `I32` as they are, `F16` and `BF16` widened to f32
//! (exact; `F16` can stay f16, see [`LoadOptions`]), `F64` rounded to f32,
//! `I64` narrowed to i32 (an error names the first value that does not fit).
//! Dtypes written: `F32`, `I32`, `F16`, and on request (see [`SaveOptions`])
//! every float tensor as `F16` or `BF16`.

use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};
use ::safetensors::SafeTensorError;
use half::f16;

use super::half_bits::HalfFormat;
use super::safetensors_guard::check_header_numbers;
use super::safetensors_header::lying_tensor;
use super::{atomic_write, invalid, read_file};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The name used in errors for bytes that did not come from a file.
const BYTES_NAME: &str = "<safetensors bytes>";

/// How [`load_safetensors_with`] converts what it reads. The default widens
/// `F16` and `BF16` to f32, which is exact and runs everywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load `F16` tensors as f16 tensors (half the memory) instead of widening
    /// them. The device must compute in f16 ([`Device::supports_f16`]);
    /// otherwise loading is an [`Error::DType`]. `BF16` still widens to f32:
    /// wgrad has no bf16 tensors, and f16 cannot hold bf16's range.
    pub keep_f16: bool,
}

/// How [`save_safetensors_with`] stores tensors. The default writes every
/// tensor in its own dtype (f32 → `F32`, f16 → `F16`, i32 → `I32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// Store every float tensor (f32 or f16) in this 16-bit format, halving
    /// an f32 checkpoint: rounded to nearest even, values beyond the format's
    /// largest finite value (65504 for `F16`, ~3.39e38 for `BF16`) stored as
    /// ±inf, NaN kept as a quiet NaN. i32 tensors are written as they are.
    pub half: Option<HalfFormat>,
}

impl SaveOptions {
    /// Every float tensor stored as `format`.
    pub fn half(format: HalfFormat) -> SaveOptions {
        SaveOptions { half: Some(format) }
    }
}

/// Writes named tensors (f32 → `F32`, f16 → `F16`, i32 → `I32`) to a
/// safetensors file, atomically: a temporary file in the same directory is
/// renamed over `path`, so a failure never leaves a partial file behind.
/// Names must be unique, non-empty and not `__metadata__`.
///
/// The format stores tensors sorted by dtype and name, so
/// [`load_safetensors`] returns them in that order, not necessarily the
/// order given here.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    save_safetensors_with(path, tensors, SaveOptions::default())
}

/// [`save_safetensors`], storing float tensors as `options` asks (e.g.
/// `SaveOptions::half(HalfFormat::BF16)` for a half-size checkpoint).
///
/// ```
/// use wgrad::io::{self, HalfFormat, LoadOptions, SaveOptions};
/// use wgrad::{DType, Device, Tensor};
/// # fn main() -> wgrad::Result<()> {
/// let dev = Device::cpu();
/// let path = std::env::temp_dir().join(format!("wgrad_doc_{}.st", std::process::id()));
/// let w = Tensor::from_slice(&dev, &[0.1f32, 1.0, 70000.0], &[3])?;
/// io::save_safetensors_with(&path, &[("w", &w)], SaveOptions::half(HalfFormat::F16))?;
/// // Widened to f32 by default: the values f16 holds (70000 is beyond f16's 65504).
/// let back = io::load_safetensors(&path, &dev)?;
/// assert_eq!(back[0].1.to_vec::<f32>()?, [0.099975586, 1.0, f32::INFINITY]);
/// // Or kept as f16 where the device computes in f16.
/// let keep = LoadOptions { keep_f16: true };
/// assert_eq!(io::load_safetensors_with(&path, &dev, keep)?[0].1.dtype(), DType::F16);
/// # std::fs::remove_file(&path).ok();
/// # Ok(()) }
/// ```
pub fn save_safetensors_with(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor)],
    options: SaveOptions,
) -> Result<()> {
    const OP: &str = "save_safetensors";
    let path = path.as_ref();
    let bytes = serialize(OP, &path.display().to_string(), tensors, options)?;
    atomic_write(OP, path, &bytes)
}

/// The bytes of a safetensors file holding `tensors`; the same rules as
/// [`save_safetensors`].
pub fn safetensors_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    safetensors_bytes_with(tensors, SaveOptions::default())
}

/// The bytes of a safetensors file holding `tensors`; the same rules as
/// [`save_safetensors_with`]; errors name `<safetensors bytes>`.
pub fn safetensors_bytes_with(
    tensors: &[(&str, &Tensor)],
    options: SaveOptions,
) -> Result<Vec<u8>> {
    serialize("safetensors_bytes", BYTES_NAME, tensors, options)
}

/// Reads every tensor of a safetensors file onto `device`, as `(name,
/// tensor)` pairs in the order their data appears in the file.
///
/// `F32` and `I32` load as they are; `F16` and `BF16` are widened to f32
/// (exact: every 16-bit value is an f32 value); `F64` is rounded to f32
/// (values beyond f32's range become ±inf) and `I64` narrowed to i32 (an
/// error if a value does not fit). Other dtypes (U8, F8, ...), a missing
/// file, a truncated or malformed file, or data whose length does not match
/// its dtype and shape are an [`Error::Invalid`] whose detail names the file
/// (and the tensor).
pub fn load_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<Vec<(String, Tensor)>> {
    load_safetensors_with(path, device, LoadOptions::default())
}

/// [`load_safetensors`] with conversions chosen by `options` (e.g. keeping
/// `F16` tensors as f16).
pub fn load_safetensors_with(
    path: impl AsRef<Path>,
    device: &Device,
    options: LoadOptions,
) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let bytes = read_file("load_safetensors", path)?;
    parse(&bytes, &path.display().to_string(), device, options)
}

/// [`load_safetensors`] on bytes already in memory; errors name
/// `<safetensors bytes>`.
pub fn load_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Vec<(String, Tensor)>> {
    parse(bytes, BYTES_NAME, device, LoadOptions::default())
}

/// [`load_safetensors_with`] on bytes already in memory.
pub fn load_safetensors_bytes_with(
    bytes: &[u8],
    device: &Device,
    options: LoadOptions,
) -> Result<Vec<(String, Tensor)>> {
    parse(bytes, BYTES_NAME, device, options)
}

/// The file's dtype and little-endian data for one tensor.
fn encode(t: &Tensor, half: Option<HalfFormat>) -> Result<Option<(Dtype, Vec<u8>)>> {
    let dtype = |h: HalfFormat| match h {
        HalfFormat::F16 => Dtype::F16,
        HalfFormat::BF16 => Dtype::BF16,
    };
    Ok(Some(match (t.dtype(), half) {
        (DType::F32, None) => (Dtype::F32, le_bytes(&t.to_vec::<f32>()?)),
        (DType::F32, Some(h)) => (dtype(h), h.narrow_le(&t.to_vec::<f32>()?)),
        // An f16 tensor is written as its own bits: no rounding at all.
        (DType::F16, None | Some(HalfFormat::F16)) => (Dtype::F16, le_bytes(&t.to_vec::<f16>()?)),
        // f16 → f32 is exact, so this rounds once, to bf16.
        (DType::F16, Some(h)) => {
            let wide: Vec<f32> = t.to_vec::<f16>()?.iter().map(|v| v.to_f32()).collect();
            (dtype(h), h.narrow_le(&wide))
        }
        (DType::I32, _) => (Dtype::I32, le_bytes(&t.to_vec::<i32>()?)),
        (DType::U32, _) => return Ok(None),
    }))
}

/// Values with a fixed little-endian byte form (the format's byte order on every target).
trait LeBytes: Copy {
    fn le(self) -> impl IntoIterator<Item = u8>;
}
impl LeBytes for f32 {
    fn le(self) -> impl IntoIterator<Item = u8> {
        self.to_le_bytes()
    }
}
impl LeBytes for f16 {
    fn le(self) -> impl IntoIterator<Item = u8> {
        self.to_le_bytes()
    }
}
impl LeBytes for i32 {
    fn le(self) -> impl IntoIterator<Item = u8> {
        self.to_le_bytes()
    }
}

fn le_bytes<T: LeBytes>(v: &[T]) -> Vec<u8> {
    v.iter().flat_map(|x| x.le()).collect()
}

fn serialize(
    op: &'static str,
    file: &str,
    tensors: &[(&str, &Tensor)],
    options: SaveOptions,
) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (i, &(name, t)) in tensors.iter().enumerate() {
        if name.is_empty() || name == "__metadata__" {
            let detail = format!("tensor name {name:?} is reserved or empty");
            return Err(invalid(op, file, detail));
        }
        if tensors[..i].iter().any(|&(n, _)| n == name) {
            let detail = format!("tensor name {name:?} appears twice");
            return Err(invalid(op, file, detail));
        }
        let Some((dtype, data)) = encode(t, options.half)? else {
            return Err(Error::DType {
                op,
                got: format!("{} ({file}: tensor {name:?})", t.dtype()),
                expected: "f32, f16 or i32".into(),
            });
        };
        owned.push((name.to_string(), dtype, t.shape().to_vec(), data));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, data) in &owned {
        let view = TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| invalid(op, file, format!("tensor {name:?}: {e}")))?;
        views.push((name.as_str(), view));
    }
    ::safetensors::serialize(views, None).map_err(|e| invalid(op, file, e))
}

fn parse(
    bytes: &[u8],
    name: &str,
    device: &Device,
    options: LoadOptions,
) -> Result<Vec<(String, Tensor)>> {
    const OP: &str = "load_safetensors";
    if bytes.is_empty() {
        return Err(invalid(OP, name, "empty file, not a safetensors file"));
    }
    check_header_numbers(bytes).map_err(|m| invalid(OP, name, m))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| match e {
        // The crate does not say which tensor's size is wrong: find it.
        SafeTensorError::TensorInvalidInfo => {
            let header = bytes.get(8..).and_then(|rest| {
                let n = u64::from_le_bytes(bytes[..8].try_into().ok()?);
                rest.get(..usize::try_from(n).ok()?)
            });
            let lie = header.and_then(lying_tensor);
            invalid(OP, name, lie.unwrap_or_else(|| e.to_string()))
        }
        e => invalid(OP, name, e),
    })?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(OP, name, e))?;
    let mut out = Vec::new();
    for key in meta.offset_keys() {
        let view = st.tensor(&key).map_err(|e| invalid(OP, name, e))?;
        let bad = |detail: String| invalid(OP, name, format!("tensor {key:?}: {detail}"));
        let t = tensor_of(&view, device, options, &bad).map_err(|e| match e {
            Error::DType { op, got, expected } => Error::DType {
                op,
                got: format!("{got} ({name}: tensor {key:?})"),
                expected,
            },
            e => e,
        })?;
        out.push((key, t));
    }
    Ok(out)
}

/// One tensor of the file as a wgrad tensor on `device`.
fn tensor_of(
    view: &TensorView<'_>,
    device: &Device,
    options: LoadOptions,
    bad: &dyn Fn(String) -> Error,
) -> Result<Tensor> {
    let (shape, data) = (view.shape(), view.data());
    let dtype = view.dtype();
    if !matches!(
        dtype,
        Dtype::F32 | Dtype::I32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 | Dtype::I64
    ) {
        return Err(bad(format!(
            "unsupported dtype {dtype:?} (supported: F32, I32, F16, BF16, F64, I64)"
        )));
    }
    // The crate checks this too; checked here so that a short chunk can never be dropped.
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let want = numel.and_then(|n| n.checked_mul(dtype.bitsize() / 8));
    if want != Some(data.len()) {
        let want = want.map_or("more than usize".into(), |n| n.to_string());
        return Err(bad(format!(
            "{dtype:?} data is {} bytes, shape {shape:?} needs {want}",
            data.len()
        )));
    }
    match dtype {
        Dtype::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_slice(device, &v, shape)
        }
        Dtype::I32 => {
            let v: Vec<i32> = data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_slice(device, &v, shape)
        }
        Dtype::F16 if options.keep_f16 => {
            if !device.supports_f16() {
                return Err(Error::DType {
                    op: "load_safetensors",
                    got: "F16 kept as f16".into(),
                    expected: "f32 (this adapter has no SHADER_F16: load without keep_f16)".into(),
                });
            }
            let v: Vec<f16> = data
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            Tensor::from_slice(device, &v, shape)
        }
        Dtype::F16 => widen(HalfFormat::F16, data, shape, device, bad),
        Dtype::BF16 => widen(HalfFormat::BF16, data, shape, device, bad),
        Dtype::F64 => {
            let v: Vec<f32> = data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect();
            Tensor::from_slice(device, &v, shape)
        }
        Dtype::I64 => {
            let mut v = Vec::with_capacity(data.len() / 8);
            for (i, c) in data.chunks_exact(8).enumerate() {
                let x = i64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                v.push(i32::try_from(x).map_err(|_| {
                    bad(format!(
                        "I64 value {x} at flat index {i} does not fit in i32"
                    ))
                })?);
            }
            Tensor::from_slice(device, &v, shape)
        }
        other => Err(bad(format!("unsupported dtype {other:?}"))),
    }
}

fn widen(
    h: HalfFormat,
    data: &[u8],
    shape: &[usize],
    device: &Device,
    bad: &dyn Fn(String) -> Error,
) -> Result<Tensor> {
    let v = h.widen_le(data).map_err(bad)?;
    Tensor::from_slice(device, &v, shape)
}
