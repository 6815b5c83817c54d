//! Dropout's graph side: `Var::dropout` records an `Op::Dropout` node; the mask hash, its
//! CPU reference, kernel and gradient live in `ops::dropout`.

use crate::error::Result;
use crate::graph::{Op, Var};

impl Var {
    /// Inverted dropout with probability `p` in [0, 1): each element is zeroed with
    /// probability p and the rest scaled by 1/(1 − p), so the expectation is unchanged.
    /// The mask is a hash of (`seed`, the value of `step`, element index) — see
    /// [`crate::Graph::step_counter`] for a step that advances every run — identical on the
    /// GPU and the CPU reference. Its gradient is the same mask and scale times the
    /// upstream gradient. `p = 0` records nothing (the identity).
    pub fn dropout(&self, p: f32, seed: u64, step: &Var) -> Result<Var> {
        crate::ops::dropout::check_dropout(p, step.shape())?;
        if p == 0.0 {
            return Ok(self.clone());
        }
        self.graph().push(Op::Dropout { p, seed }, &[self, step])
    }
}
