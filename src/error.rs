//! One error type for every public path. Variants carry the op name and the
//! shapes involved so a user can tell what went wrong without a debugger.

use thiserror::Error;

/// Everything that can go wrong in wgrad.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    /// No GPU adapter (not even a software one) could be found.
    #[error("no GPU adapter found (set WGPU_BACKEND / WGPU_ADAPTER_NAME, or install a Vulkan driver such as Mesa lavapipe)")]
    NoAdapter,

    /// An adapter was found but a device could not be created from it.
    #[error("could not create a device on adapter {adapter}: {reason}")]
    DeviceRequest { adapter: String, reason: String },

    /// Shapes do not fit the op (rank, sizes, broadcasting).
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// An axis outside `-rank..rank`.
    #[error("{op}: axis {axis} out of range for shape {shape:?}")]
    Axis {
        op: &'static str,
        axis: isize,
        shape: Vec<usize>,
    },

    /// The op does not accept a tensor with zero elements.
    #[error("{op}: empty tensor of shape {shape:?}")]
    Empty { op: &'static str, shape: Vec<usize> },

    /// Data length does not match the shape it was given with.
    #[error("{op}: {len} values do not fill shape {shape:?} ({expected} elements)")]
    DataLength {
        op: &'static str,
        len: usize,
        shape: Vec<usize>,
        expected: usize,
    },

    /// The op got a tensor of a dtype it does not implement.
    #[error("{op}: dtype {got} not supported (expected {expected})")]
    DType {
        op: &'static str,
        got: String,
        expected: String,
    },

    /// Tensors from two different devices were combined.
    #[error("{op}: operands live on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },

    /// A tensor is larger than one storage binding of this adapter allows.
    #[error("{op}: tensor of shape {shape:?} needs {bytes} bytes, over this adapter's limit of {limit} bytes ({limit_name})")]
    TooLarge {
        op: &'static str,
        shape: Vec<usize>,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// A general invalid argument (a slice range, a permutation, ...).
    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },

    /// The GPU reported an error (validation, out of memory, device lost, map failure).
    #[error("GPU error in {op}: {detail}")]
    Gpu { op: &'static str, detail: String },
}

/// `Result` with wgrad's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
