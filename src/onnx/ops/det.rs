//! ONNX Det (opsets 11, 22): the determinant of each square matrix in the last two dims.
//!
//! LU factorisation with partial pivoting, unrolled into graph ops, one elimination step
//! per column: the pivot is the first largest `|a|` of the column (a one-hot found with
//! comparisons, as ArgMax is), swapped into the first row, the rows below eliminated, and
//! `det = (−1)^swaps · Π pivots`. The `linalg` module factors concrete tensors, not graph
//! values, so it cannot serve here. Every step is a differentiable op (the pivot choice is
//! locally constant), so the gradient `det·A⁻ᵀ` comes out of the chain rule. A pivot that
//! is exactly 0 (a column that is zero on and below the diagonal) gives det 0, and the
//! elimination then divides by 1 instead, so no NaN appears; the gradient there is not
//! the adjugate `adj(A)ᵀ` in general (the entries below that pivot get 0), so at exactly
//! singular matrices of that kind it is not to be trusted. Nearly singular ones are fine.
//!
//! The unrolled graph has O(n) nodes of O(n²) work each, so n is capped at [`MAX_N`]; a
//! NaN or infinite entry makes the determinant NaN.

use super::{err, input, one, Env, OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::BinaryOp as B;
use crate::ops::reduce::ReduceOp;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("Det", det)];

/// The largest matrix order: the unrolled factorisation is a graph of ~15·n nodes.
pub(crate) const MAX_N: usize = 256;

fn det(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let s = x.shape().to_vec();
    let r = s.len();
    if r < 2 || s[r - 1] != s[r - 2] {
        return Err(format!("input {s:?} must be (…, n, n)"));
    }
    let n = s[r - 1];
    if n == 0 || n > MAX_N {
        return Err(format!(
            "input {s:?}: matrices of order {n} are not supported (1 to {MAX_N})"
        ));
    }
    let batch: usize = super::dims_product(&s[..r - 2], &s)?;
    super::dims_product(&[batch, n, n], &s)?;
    let y = (|| {
        let a = x.reshape(&[batch, n, n])?;
        let d = lu_det(&a)?;
        // Any NaN or inf entry makes the result NaN (0·inf = NaN): pivoting compares.
        let poison = a.sum_axis(2, false)?.sum_axis(1, false)?.mul_scalar(0.0)?;
        d.add(&poison)?.reshape(&s[..r - 2])
    })()
    .map_err(err)?;
    one(y)
}

/// The determinants `(B)` of `a (B, n, n)`.
fn lu_det(a: &Var) -> crate::Result<Var> {
    let g = a.graph();
    let b = a.shape()[0];
    let mut m = a.clone();
    let mut det = g.full(1.0, &[b, 1, 1]);
    for k in (1..=a.shape()[1]).rev() {
        // m is (B, k, k): the trailing submatrix still to factor.
        let col = m.slice(2, 0, 1)?; // (B, k, 1)
        if k == 1 {
            det = det.mul(&col)?;
            break;
        }
        let iota: Vec<f32> = (0..k).map(|i| i as f32).collect();
        let iota = g.constant(&Tensor::from_slice(&Device::cpu(), &iota, &[1, k, 1])?)?;
        let mag = col.abs()?;
        let top = mag.reduce(ReduceOp::Max, 1, true)?;
        let hit = mag.binary(&top, B::Eq)?;
        // The first hit: min over rows of (hit ? i : k); no hit (NaN) gives k, no row.
        let idx = iota
            .binary(&hit, B::KeepWhere)?
            .add(&hit.scalar(B::KeepWhereNot, k as f32, true)?)?
            .reduce(ReduceOp::Min, 1, true)?;
        let e = iota.binary(&idx, B::Eq)?; // (B, k, 1) one-hot of the pivot row
        let prow = e.mul(&m)?.sum_axis(1, true)?; // (B, 1, k)
        let row0 = m.slice(1, 0, 1)?;
        // Swap: the pivot's slot takes row 0; rows 1.. are then every row but the pivot.
        let rest = m.add(&e.mul(&row0.sub(&prow)?)?)?.slice(1, 1, k)?;
        let pivot = prow.slice(2, 0, 1)?; // (B, 1, 1)
        let swapped = idx.scalar(B::Gt, 0.0, false)?;
        let sign = swapped.scalar(B::Mul, -2.0, false)?.add_scalar(1.0)?;
        det = det.mul(&pivot)?.mul(&sign)?;
        let zero = pivot.scalar(B::Eq, 0.0, false)?;
        let safe = zero.select(&zero, &pivot)?; // 1 where the pivot is 0
        let l = rest.slice(2, 0, 1)?.div(&safe)?; // (B, k-1, 1)
        m = rest.slice(2, 1, k)?.sub(&l.mul(&prow.slice(2, 1, k)?)?)?;
    }
    det.reshape(&[b])
}
