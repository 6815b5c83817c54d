//! Gather and scatter-add's graph side: `Var::gather` and `Var::scatter_add` record their
//! nodes; shape rules, CPU references, kernels and gradients live in `ops::gather`.

use crate::error::Result;
use crate::graph::{Op, Var};
use crate::ops::gather::scatter_axis;
use crate::shape::normalize_axis;

impl Var {
    /// The slices of `self` along `axis` (negative counts from the end) selected by the i32
    /// `indices` (see [`crate::Graph::input_i32`]), shaped
    /// `self[..axis] ++ indices ++ self[axis+1..]`: `table.gather(&ids, 0)` looks up
    /// embedding rows. A negative index counts from the end; one outside `-n..n` is an
    /// error when the graph runs. Its gradient scatter-adds the upstream gradient back.
    pub fn gather(&self, indices: &Var, axis: isize) -> Result<Var> {
        let a = normalize_axis("gather", axis, self.shape())?;
        self.graph().push(Op::Gather(a), &[self, indices])
    }

    /// The adjoint of [`Var::gather`]: a tensor with axis `axis` of length `size`, zero
    /// except that each slice of `self` at index position p along `axis..axis+rank(indices)`
    /// is added at `indices[p]`.
    pub fn scatter_add(&self, indices: &Var, axis: isize, size: usize) -> Result<Var> {
        let a = scatter_axis(self.shape(), indices.shape(), axis)?;
        self.graph()
            .push(Op::ScatterAdd { axis: a, size }, &[self, indices])
    }
}
