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
    DeviceRequest {
        /// Name of the adapter.
        adapter: String,
        /// Why the device request failed.
        reason: String,
    },

    /// Shapes do not fit the op (rank, sizes, broadcasting).
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// Name of the op that failed.
        op: &'static str,
        /// What did not fit.
        detail: String,
    },

    /// An axis outside `-rank..rank`.
    #[error("{op}: axis {axis} out of range for shape {shape:?}")]
    Axis {
        /// Name of the op that failed.
        op: &'static str,
        /// The axis as given.
        axis: isize,
        /// Shape of the tensor it was applied to.
        shape: Vec<usize>,
    },

    /// The op does not accept a tensor with zero elements.
    #[error("{op}: empty tensor of shape {shape:?}")]
    Empty {
        /// Name of the op that failed.
        op: &'static str,
        /// Shape of the empty tensor.
        shape: Vec<usize>,
    },

    /// Data length does not match the shape it was given with.
    #[error("{op}: {len} values do not fill shape {shape:?} ({expected} elements)")]
    DataLength {
        /// Name of the op that failed.
        op: &'static str,
        /// Number of values given.
        len: usize,
        /// Shape they were given with.
        shape: Vec<usize>,
        /// Number of elements the shape holds.
        expected: usize,
    },

    /// The op got a tensor of a dtype it does not implement.
    #[error("{op}: dtype {got} not supported (expected {expected})")]
    DType {
        /// Name of the op that failed.
        op: &'static str,
        /// The dtype received.
        got: String,
        /// The dtype(s) the op accepts.
        expected: String,
    },

    /// Tensors from two different devices were combined.
    #[error("{op}: operands live on different devices ({a} and {b})")]
    DeviceMismatch {
        /// Name of the op that failed.
        op: &'static str,
        /// The first operand's device.
        a: String,
        /// The second operand's device.
        b: String,
    },

    /// A tensor is larger than this adapter allows: one buffer (`max_buffer_size`), or
    /// one storage binding for an op that does not split its operands into windows.
    #[error("{op}: tensor of shape {shape:?} needs {bytes} bytes, over this adapter's limit of {limit} bytes ({limit_name})")]
    TooLarge {
        /// Name of the op that failed.
        op: &'static str,
        /// Shape of the tensor.
        shape: Vec<usize>,
        /// Bytes the tensor needs.
        bytes: u64,
        /// The adapter's limit in bytes.
        limit: u64,
        /// Name of the wgpu limit that applies.
        limit_name: &'static str,
    },

    /// A general invalid argument (a slice range, a permutation, ...).
    #[error("{op}: {detail}")]
    Invalid {
        /// Name of the op that failed.
        op: &'static str,
        /// What was invalid.
        detail: String,
    },

    /// The GPU reported an error (validation, out of memory, device lost, map failure).
    #[error("GPU error in {op}: {detail}")]
    Gpu {
        /// Name of the op that failed.
        op: &'static str,
        /// The GPU's error message.
        detail: String,
    },
}

/// `Result` with wgrad's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;
