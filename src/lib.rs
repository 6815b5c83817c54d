//! # wgrad
//!
//! A GPU compute engine for the linear algebra of neural networks: tensors in
//! wgpu storage buffers, kernels written in WGSL, and a CPU reference
//! implementation of every op that verifies every kernel.
//!
//! ```no_run
//! use wgrad::{Device, Tensor};
//! # fn main() -> wgrad::Result<()> {
//! let dev = Device::gpu()?; // or Device::cpu(), the reference
//! let w = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let x = Tensor::from_slice(&dev, &[5.0f32, 6.0], &[2])?;
//! let y = w.matmul(&x)?.relu()?; // [17, 39]
//! assert_eq!(y.to_vec::<f32>()?, vec![17.0, 39.0]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod autodiff;
pub mod device;
pub mod dtype;
pub mod error;
pub mod executor;
pub(crate) mod gpu;
pub mod graph;
pub mod init;
pub mod io;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod shape;
pub mod tensor;

pub use device::{list_adapters, Device};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use executor::{Executor, MemoryPlan};
pub use gpu::{AdapterSummary, PoolStats};
pub use graph::{Graph, Op, Var};
pub use init::Init;
pub use ops::elementwise::{BinaryOp, UnaryOp};
pub use ops::layout::TransposeKernel;
pub use ops::matmul::MatmulVariant;
pub use ops::reduce::ReduceOp;
pub use optim::{Optimizer, Sgd};
pub use rng::Rng;
pub use shape::Shape;
pub use tensor::Tensor;

/// Every WGSL source in `shaders/`, by file name, for validation and `wgrad check`.
pub fn shader_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        ("elementwise.wgsl", ops::elementwise::SHADER.source),
        ("matmul.wgsl", ops::matmul::SHADER.source),
        ("reduce.wgsl", ops::reduce::SHADER.source),
        ("softmax.wgsl", ops::softmax::SHADER.source),
        ("layout.wgsl", ops::layout::SHADER.source),
        ("optim.wgsl", optim::SHADER.source),
        ("loss.wgsl", ops::loss::SHADER.source),
    ]
}

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
