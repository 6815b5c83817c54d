//! safetensors files (the Hugging Face format: an 8-byte little-endian header
//! length, a JSON header of names → dtype/shape/offsets, then the raw data),
//! read and written through the `safetensors` crate.
//!
//! Dtypes read: `F32` and `I32` as they are, `F64` rounded to f32, `I64`
//! narrowed to i32 (an error names the first value that does not fit).

use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{atomic_write, invalid, read_file};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The name used in errors for bytes that did not come from a file.
const BYTES_NAME: &str = "<safetensors bytes>";

/// Writes named tensors (f32 → `F32`, i32 → `I32`) to a safetensors file,
/// atomically: a temporary file in the same directory is renamed over
/// `path`, so a failure never leaves a partial file behind. Names must be
/// unique, non-empty and not `__metadata__`.
///
/// The format stores tensors sorted by dtype and name, so
/// [`load_safetensors`] returns them in that order, not necessarily the
/// order given here.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let bytes = serialize("save_safetensors", tensors)?;
    atomic_write("save_safetensors", path, &bytes)
}

/// The bytes of a safetensors file holding `tensors`; the same rules as
/// [`save_safetensors`].
pub fn safetensors_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    serialize("safetensors_bytes", tensors)
}

/// Reads every tensor of a safetensors file onto `device`, as `(name,
/// tensor)` pairs in the order their data appears in the file.
///
/// `F32` and `I32` load as they are; `F64` is rounded to f32 (values beyond
/// f32's range become ±inf) and `I64` narrowed to i32 (an error if a value
/// does not fit). Other dtypes (F16,
/// BF16, U8, ...), a missing file, a truncated or malformed file are an
/// [`Error::Invalid`] whose detail names the file (and the tensor).
pub fn load_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let bytes = read_file("load_safetensors", path)?;
    parse(&bytes, &path.display().to_string(), device)
}

/// [`load_safetensors`] on bytes already in memory; errors name
/// `<safetensors bytes>`.
pub fn load_safetensors_bytes(bytes: &[u8], device: &Device) -> Result<Vec<(String, Tensor)>> {
    parse(bytes, BYTES_NAME, device)
}

fn serialize(op: &'static str, tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (i, &(name, t)) in tensors.iter().enumerate() {
        if name.is_empty() || name == "__metadata__" {
            return Err(Error::Invalid {
                op,
                detail: format!("tensor name {name:?} is reserved or empty"),
            });
        }
        if tensors[..i].iter().any(|&(n, _)| n == name) {
            return Err(Error::Invalid {
                op,
                detail: format!("tensor name {name:?} appears twice"),
            });
        }
        let (dtype, data): (Dtype, Vec<u8>) = match t.dtype() {
            DType::F32 => (
                Dtype::F32,
                t.to_vec::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::I32 => (
                Dtype::I32,
                t.to_vec::<i32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(Error::DType {
                    op,
                    got: format!("{other} (tensor {name:?})"),
                    expected: "f32 or i32".into(),
                })
            }
        };
        owned.push((name.to_string(), dtype, t.shape().to_vec(), data));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, dtype, shape, data) in &owned {
        let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| Error::Invalid {
            op,
            detail: format!("tensor {name:?}: {e}"),
        })?;
        views.push((name.as_str(), view));
    }
    ::safetensors::serialize(views, None).map_err(|e| Error::Invalid {
        op,
        detail: e.to_string(),
    })
}

fn parse(bytes: &[u8], name: &str, device: &Device) -> Result<Vec<(String, Tensor)>> {
    const OP: &str = "load_safetensors";
    if bytes.is_empty() {
        return Err(invalid(OP, name, "empty file, not a safetensors file"));
    }
    check_header_numbers(bytes).map_err(|m| invalid(OP, name, m))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(OP, name, e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid(OP, name, e))?;
    let mut out = Vec::new();
    for key in meta.offset_keys() {
        let view = st.tensor(&key).map_err(|e| invalid(OP, name, e))?;
        let shape = view.shape();
        let data = view.data();
        let bad = |detail: String| invalid(OP, name, format!("tensor {key:?}: {detail}"));
        let t = match view.dtype() {
            Dtype::F32 => {
                let v: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Tensor::from_slice(device, &v, shape)?
            }
            Dtype::I32 => {
                let v: Vec<i32> = data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Tensor::from_slice(device, &v, shape)?
            }
            Dtype::F64 => {
                let v: Vec<f32> = data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                    .collect();
                Tensor::from_slice(device, &v, shape)?
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
                Tensor::from_slice(device, &v, shape)?
            }
            other => {
                return Err(bad(format!(
                    "unsupported dtype {other:?} (supported: F32, I32, F64, I64)"
                )))
            }
        };
        out.push((key, t));
    }
    Ok(out)
}

/// Guards the `safetensors` crate against headers whose numbers are so large
/// that its size arithmetic overflows: every number in the JSON header
/// (outside strings) must be at most 8 × the file's length, which any valid
/// file satisfies except for zero-element tensors with absurd dimensions.
fn check_header_numbers(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = bytes.get(..8) else {
        return Err("truncated in the header length".into());
    };
    let n = u64::from_le_bytes(len.try_into().unwrap_or([0; 8]));
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        return Err(format!("header claims {n} bytes, {avail} present"));
    }
    let header = &bytes[8..8 + n as usize];
    let limit = (bytes.len() as u128).saturating_mul(8);
    let (mut in_str, mut escaped) = (false, false);
    let mut num: Option<u128> = None;
    for &c in header {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if c.is_ascii_digit() {
            let v = num
                .unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(u128::from(c - b'0'));
            if v > limit {
                return Err("a size in the header is larger than the file".into());
            }
            num = Some(v);
        } else {
            num = None;
            in_str = c == b'"';
        }
    }
    Ok(())
}
