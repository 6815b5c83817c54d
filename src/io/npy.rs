//! NumPy `.npy` files: format versions 1.0, 2.0 and 3.0 on read; 1.0 on
//! write (2.0 when the header outgrows 1.0's 16-bit length).
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the
//! header length (u16 little-endian in 1.0, u32 in 2.0/3.0), the header (a
//! Python dict literal such as `{'descr': '<f4', 'fortran_order': False,
//! 'shape': (2, 3), }`, space-padded and ending in `\n`), then the raw data.
//!
//! Dtypes read: `f4` → f32, `f8` → f32 (rounded), `i4` → i32, `i8` → i32 (an
//! error names the first value that does not fit); little-endian (`<`),
//! big-endian (`>`, converted) or native (`=`). Fortran order is refused.

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
/// `<f4` gives an f32 tensor and `<i4` an i32 tensor; `<f8` is rounded to
/// f32 (values beyond f32's range become ±inf) and `<i8` narrowed to i32 (an
/// error if a value does not fit).
/// Big-endian files (`>f4`, ...) are converted. Every problem — a missing
/// file, bad magic, an unparsable header, an unsupported dtype, Fortran
/// order, data shorter or longer than the shape says — is an
/// [`Error::Invalid`] whose detail names the file.
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
    let path = path.as_ref();
    let bytes = read_file("read_npy", path)?;
    parse(&bytes, &path.display().to_string(), device)
}

/// Reads the bytes of a `.npy` file (already in memory) into a tensor on
/// `device`; the same rules as [`read_npy`], with errors naming `<npy bytes>`.
pub fn read_npy_bytes(bytes: &[u8], device: &Device) -> Result<Tensor> {
    parse(bytes, BYTES_NAME, device)
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
    let shape = match tensor.shape() {
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
    out.extend_from_slice(&data);
    Ok(out)
}

/// Element types a `.npy` file may hold that we can read.
#[derive(Clone, Copy)]
enum Kind {
    F4,
    F8,
    I4,
    I8,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::F4 | Kind::I4 => 4,
            Kind::F8 | Kind::I8 => 8,
        }
    }
}

fn parse(bytes: &[u8], name: &str, device: &Device) -> Result<Tensor> {
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
    let (kind, little, shape) = parse_header(header).map_err(|m| err(format!("header: {m}")))?;

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
    match kind {
        Kind::F4 => {
            let v: Vec<f32> = words::<4>(data, little)
                .map(|w| f32::from_bits(w as u32))
                .collect();
            Tensor::from_slice(device, &v, &shape)
        }
        Kind::I4 => {
            let v: Vec<i32> = words::<4>(data, little).map(|w| w as i32).collect();
            Tensor::from_slice(device, &v, &shape)
        }
        Kind::F8 => {
            let v: Vec<f32> = words::<8>(data, little)
                .map(|w| f64::from_bits(w) as f32)
                .collect();
            Tensor::from_slice(device, &v, &shape)
        }
        Kind::I8 => {
            let mut v = Vec::with_capacity(numel);
            for (i, w) in words::<8>(data, little).enumerate() {
                let x = w as i64;
                let y = i32::try_from(x).map_err(|_| {
                    err(format!(
                        "int64 value {x} at flat index {i} does not fit in i32"
                    ))
                })?;
                v.push(y);
            }
            Tensor::from_slice(device, &v, &shape)
        }
    }
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

/// The N-byte words of `data` as integers (N = 4 or 8), in the file's byte order.
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

/// Parses the header dict into (element kind, little-endian?, shape).
fn parse_header(text: &str) -> std::result::Result<(Kind, bool, Vec<usize>), String> {
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
    match get("fortran_order") {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err("fortran_order is True; only C-order arrays are supported \
                        (save np.ascontiguousarray(a))"
                .into())
        }
        Some(other) => return Err(format!("fortran_order is {}, not a bool", other.kind())),
        None => return Err("missing 'fortran_order'".into()),
    }
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
    let (order, code) = (descr.get(..1).unwrap_or(""), descr.get(1..).unwrap_or(""));
    let little = match order {
        "<" => true,
        ">" => false,
        "=" => cfg!(target_endian = "little"),
        _ => {
            return Err(format!(
                "unsupported dtype {} (supported: f4, f8, i4, i8)",
                short(descr)
            ))
        }
    };
    let kind = match code {
        "f4" => Kind::F4,
        "f8" => Kind::F8,
        "i4" => Kind::I4,
        "i8" => Kind::I8,
        _ => {
            return Err(format!(
                "unsupported dtype {} (supported: f4, f8, i4, i8)",
                short(descr)
            ))
        }
    };
    Ok((kind, little, shape))
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
