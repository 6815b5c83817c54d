//! ONNX import: a `.onnx` file decoded with generated protobuf types ([`proto`]) and mapped
//! onto an ordinary [`crate::Graph`], so autodiff, fusion and the executor serve imported
//! models with no ONNX-specific execution path.
//!
//! ```no_run
//! # fn main() -> wgrad::Result<()> {
//! use wgrad::onnx::{Model, Weights};
//! let model = Model::load("mlp.onnx")?;
//! let imported = model.import(&[("N", 4)], Weights::Params)?;
//! let out = &imported.outputs[0].1;
//! let exe = wgrad::Device::cpu().compile(&imported.graph, &[out], None)?;
//! # let _ = exe; Ok(()) }
//! ```

mod export;
mod import;
mod model;
mod ops;
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod proto;

pub use export::{export, export_to_file, ExportOptions, ParamValues, OPSET};
pub use import::{Imported, Weights};
pub use model::{Dim, Initializer, Model, TensorData, ValueInfo};

use crate::Error;

/// An `Error::Invalid` for the ONNX front end.
pub(crate) fn invalid(detail: impl Into<String>) -> Error {
    Error::Invalid {
        op: "onnx",
        detail: detail.into(),
    }
}
