//! ONNX operators: see the family list in `super` (this family's ops go here).

use super::{FoldFn, OpFn};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];
