//! File formats for people who live in NumPy and PyTorch: NumPy `.npy`
//! ([`read_npy`], [`write_npy`]) and safetensors ([`load_safetensors`],
//! [`save_safetensors`], with f16/bf16 through [`LoadOptions`] and
//! [`SaveOptions`]), plus `Tensor` ↔ `ndarray::ArrayD<f32>` behind the
//! `ndarray` cargo feature.
//!
//! Readers treat every file as untrusted: each size in a header is checked
//! against the bytes actually present before anything is allocated from it,
//! and every problem is an [`Error::Invalid`] whose
//! detail names the file. Writers are atomic: the bytes go to a temporary
//! file in the target's directory, which is then renamed over the target, so
//! a failed write never leaves a partial file that looks valid.

mod half_bits;
mod npy;
mod safetensors;
mod safetensors_guard;
mod safetensors_header;

#[cfg(feature = "ndarray")]
mod ndarray;

pub use self::half_bits::HalfFormat;
pub use self::npy::{
    npy_array_bytes, npy_bytes, read_npy, read_npy_array, read_npy_array_bytes, read_npy_bytes,
    write_npy, write_npy_array, NpyArray, NpyDType, NpyData,
};
pub use self::safetensors::{
    load_safetensors, load_safetensors_bytes, load_safetensors_bytes_with, load_safetensors_with,
    safetensors_bytes, safetensors_bytes_with, save_safetensors, save_safetensors_with,
    LoadOptions, SaveOptions,
};

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// An `Error::Invalid` for `op` whose detail names the file first.
pub(crate) fn invalid(op: &'static str, name: &str, detail: impl std::fmt::Display) -> Error {
    Error::Invalid {
        op,
        detail: format!("{name}: {detail}"),
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(op: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| invalid(op, &path.display().to_string(), e))
}

/// Writes `bytes` to `path` atomically: a temporary sibling file is written
/// and synced, then renamed over `path`. On any failure the temporary file is
/// removed and `path` is left as it was.
pub(crate) fn atomic_write(op: &'static str, path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.display().to_string();
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(op, &name, "not a file path"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Unique per process and per call, so concurrent writers never share a temp file.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the temp file may not exist (e.g. the directory is missing).
        let _ = std::fs::remove_file(&tmp);
        invalid(op, &name, format!("write failed: {e}"))
    })
}
