//! ONNX: protobuf types generated from `onnx.proto` ([`proto`]).

#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod proto;
