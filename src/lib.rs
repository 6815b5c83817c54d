//! # wgrad
//!
//! A GPU compute engine for the linear algebra of neural networks: tensors in
//! wgpu storage buffers, kernels written in WGSL, and a CPU reference
//! implementation of every op that verifies every kernel.
//!
//! Eager ops on a [`Device`] (these examples run on the CPU reference so they
//! run anywhere; [`Device::gpu`] gives the same API on the best adapter):
//!
//! ```
//! use wgrad::{Device, Tensor};
//! # fn main() -> wgrad::Result<()> {
//! let dev = Device::cpu(); // or Device::gpu()?
//! let w = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let x = Tensor::from_slice(&dev, &[5.0f32, 6.0], &[2])?;
//! let b = Tensor::from_slice(&dev, &[10.0f32, 100.0], &[2])?;
//! let y = w.matmul(&x)?.add(&b)?.relu()?; // ReLU(Wx + b)
//! assert_eq!(y.to_vec::<f32>()?, vec![27.0, 139.0]);
//! let p = y.softmax(-1)?;
//! assert!((p.sum()?.item()? - 1.0).abs() < 1e-6);
//! # Ok(()) }
//! ```
//!
//! Training through a [`Graph`]: autodiff appends the backward pass, and
//! [`Device::compile`] plans forward, backward and update once:
//!
//! ```
//! use wgrad::{Device, Graph, Init, Sgd, Tensor};
//! # fn main() -> wgrad::Result<()> {
//! let dev = Device::cpu();
//! let g = Graph::new();
//! let x = g.input("x", &[4, 1]);
//! let y = g.input("y", &[4, 1]);
//! let w = g.param("w", &[1, 1], Init::Zeros);
//! let loss = x.matmul(&w)?.mse(&y)?;
//! let step = dev.compile(&g, &[&loss], Sgd::new(0.1))?;
//! let xs = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], &[4, 1])?;
//! let ys = Tensor::from_slice(&dev, &[2.0f32, 4.0, 6.0, 8.0], &[4, 1])?; // y = 2x
//! for _ in 0..50 {
//!     step.run(&[("x", &xs), ("y", &ys)])?;
//! }
//! let w = step.param("w")?.item()?;
//! assert!((w - 2.0).abs() < 1e-3, "learned w = {w}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod autodiff;
pub(crate) mod autotune;
pub mod device;
pub mod dtype;
pub(crate) mod epilogue;
pub mod error;
pub mod executor;
pub(crate) mod fused;
pub(crate) mod fusion;
pub(crate) mod gpu;
pub mod graph;
pub(crate) mod host_qr;
pub mod init;
pub mod io;
pub mod linalg;
mod loader_env;
pub mod nn;
pub mod onnx;
pub mod ops;
pub mod optim;
pub(crate) mod plan;
pub(crate) mod plan_reads;
pub mod rng;
pub mod roofline;
pub mod shape;
pub mod tensor;

pub use device::{list_adapters, Device};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use executor::{Executor, MemoryPlan, ReadTiming};
pub use gpu::{AdapterSummary, PoolStats};
pub use graph::{Graph, Op, Var};
/// The f16 element type (from the `half` crate), for f16 tensors.
pub use half::f16;
pub use init::Init;
pub use loader_env::{lavapipe_threads, quiet_loader_env, LAVAPIPE_THREADS_ENV};
pub use ops::conv::Conv2d;
pub use ops::elementwise::{BinaryOp, UnaryOp};
pub use ops::layout::TransposeKernel;
pub use ops::loss::CrossEntropyOptions;
pub use ops::matmul::MatmulVariant;
pub use ops::reduce::ReduceOp;
pub use ops::winograd::WinogradTile;
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
        ("depthwise.wgsl", ops::depthwise::SHADER.source),
        ("gather.wgsl", ops::gather::SHADER.source),
        ("linalg.wgsl", linalg::SHADER.source),
        ("matmul_f16.wgsl", ops::half::MATMUL_F16.source),
        ("linalg_qr.wgsl", linalg::QR_SHADER.source),
        ("roofline.wgsl", roofline::SHADER.source),
    ]
}

/// The shader files that are parts of a composed module, each with the whole module it is
/// compiled in (which must parse and validate; tests/shaders.rs).
pub fn composed_shader_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        ("elementwise_f16.wgsl", ops::half::elementwise_f16_source()),
        ("conv.wgsl", ops::conv::SHADER.source),
        ("exact_div.wgsl", ops::conv::SHADER.source),
        ("conv_gemm_fwd.wgsl", ops::conv_gemm::FORWARD.source),
        ("conv_phase.wgsl", ops::conv_phase::SHADER.source),
        ("pool.wgsl", ops::pool::SHADER.source),
        ("dropout.wgsl", ops::dropout::SHADER.source),
        ("dropout_hash.wgsl", ops::dropout::SHADER.source),
        ("batchnorm.wgsl", ops::batchnorm::SHADER.source),
        ("batchnorm.wgsl", ops::batchnorm::texture_kernel().source),
        ("winograd.wgsl", ops::winograd::SHADER.source),
        ("winograd.wgsl", ops::winograd::texture_kernel().source),
        ("conv.wgsl", ops::conv::texture_kernel().source),
        ("pool.wgsl", ops::pool::texture_kernel().source),
        ("conv_gemm.wgsl", ops::conv_gemm::texture_sources()[0]),
        ("conv_gemm_fwd.wgsl", ops::conv_gemm::texture_sources()[1]),
        (
            "matmul_texture_reads.wgsl",
            ops::matmul::texture_kernel().source,
        ),
    ]
}

/// The README's examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
