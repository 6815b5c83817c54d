//! The shape rule of a product (`MatmulPlan`: NumPy `matmul` broadcasting, transposed
//! operands, 1-D operands) and its CPU reference (`matmul_forward`, in f64), shared by the
//! f32 product (`ops::matmul`), the f16 one (`ops::half`) and the epilogue planner.

use crate::error::{Error, Result};
use crate::shape::{broadcast_shapes, broadcast_strides, check_rank};

/// The geometry of one product, from the shape rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MatmulPlan {
    /// Result shape (1-D operands' added dims removed).
    pub out_shape: Vec<usize>,
    /// Output batch dims, outermost first.
    pub batch_dims: Vec<usize>,
    /// Elements between consecutive matrices of A along each batch dim (0 = broadcast).
    pub a_strides: Vec<usize>,
    /// The same for B.
    pub b_strides: Vec<usize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored (K, M).
    pub ta: bool,
    /// B is stored (N, K).
    pub tb: bool,
}

impl MatmulPlan {
    /// Applies the shape rule to the stored shapes `a` and `b`.
    pub(crate) fn new(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<MatmulPlan> {
        let show =
            |s: &[usize], t: bool| format!("{s:?}{}", if t && s.len() >= 2 { "^T" } else { "" });
        let mismatch = |detail: String| Error::Shape {
            op: "matmul",
            detail,
        };
        if a.is_empty() || b.is_empty() {
            return Err(mismatch(format!(
                "operands need rank >= 1, got {} and {}",
                show(a, ta),
                show(b, tb)
            )));
        }
        // 1-D operands: a row (1, K) on the left, a column (K, 1) on the right.
        let (a2, ta) = if a.len() == 1 {
            (vec![1, a[0]], false)
        } else {
            (a.to_vec(), ta)
        };
        let (b2, tb) = if b.len() == 1 {
            (vec![b[0], 1], false)
        } else {
            (b.to_vec(), tb)
        };
        let (ar, ac) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let (br, bc) = (b2[b2.len() - 2], b2[b2.len() - 1]);
        let (m, ka) = if ta { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if tb { (bc, br) } else { (br, bc) };
        if ka != kb {
            return Err(mismatch(format!(
                "{} and {}: op(A) is {m}x{ka} but op(B) is {kb}x{n} (contracted dims differ)",
                show(a, ta),
                show(b, tb)
            )));
        }
        let a_batch = &a2[..a2.len() - 2];
        let b_batch = &b2[..b2.len() - 2];
        let batch_dims = broadcast_shapes("matmul", a_batch, b_batch).map_err(|_| {
            mismatch(format!(
                "{} and {}: batch dims {a_batch:?} and {b_batch:?} do not broadcast",
                show(a, ta),
                show(b, tb)
            ))
        })?;
        let mut out_shape = batch_dims.clone();
        if a.len() > 1 {
            out_shape.push(m);
        }
        if b.len() > 1 {
            out_shape.push(n);
        }
        check_rank("matmul", &out_shape)?;
        crate::shape::checked_numel("matmul", &out_shape)?;
        let scale = |s: Vec<usize>, size: usize| s.into_iter().map(|x| x * size).collect();
        Ok(MatmulPlan {
            a_strides: scale(broadcast_strides(a_batch, &batch_dims), m * ka),
            b_strides: scale(broadcast_strides(b_batch, &batch_dims), kb * n),
            out_shape,
            batch_dims,
            m,
            n,
            k: ka,
            ta,
            tb,
        })
    }

    /// Number of output matrices.
    pub(crate) fn batch(&self) -> usize {
        self.batch_dims.iter().product()
    }

    /// Element offsets of A's and B's matrices for output matrix `bi`.
    pub(crate) fn offsets(&self, bi: usize) -> (usize, usize) {
        let (mut rem, mut oa, mut ob) = (bi, 0, 0);
        for d in (0..self.batch_dims.len()).rev() {
            let c = rem % self.batch_dims[d];
            rem /= self.batch_dims[d];
            oa += c * self.a_strides[d];
            ob += c * self.b_strides[d];
        }
        (oa, ob)
    }

    /// The same product laid out for the kernels.
    pub(crate) fn for_gpu(&self) -> MatmulPlan {
        let mut p = self.clone();
        // A column (K, 1) is the same memory as the row (1, K) transposed: read that way the
        // kernels load it along K with vec4s (matrix-vector products). Likewise a row of A.
        if p.n == 1 {
            p.tb = true;
        }
        if p.m == 1 {
            p.ta = false;
        }
        // With an unbatched B and A not transposed, A's matrices are consecutive rows: one
        // (batch·M, K) product fills bigger tiles than `batch` small ones.
        if !p.ta && p.b_strides.iter().all(|&s| s == 0) && p.batch() > 1 {
            p.m *= p.batch();
            p.batch_dims.clear();
            p.a_strides.clear();
            p.b_strides.clear();
        }
        p
    }
}

/// CPU reference: `C = op(A)·op(B)` per batch matrix, accumulated in f64.
pub(crate) fn matmul_forward(a: &[f64], b: &[f64], p: &MatmulPlan) -> Vec<f64> {
    let (m, n, k) = (p.m, p.n, p.k);
    let mut out = vec![0.0f64; p.batch() * m * n];
    // op(B) as a row-major (k, n) f64 copy and one f64 accumulator row: the inner
    // loop then runs over contiguous memory (i-l-j order), tens of times faster
    // than the dot-product order on big shapes, with the same f64 accumulation.
    let mut bt = vec![0.0f64; k * n];
    let mut acc = vec![0.0f64; n];
    for (bi, c) in out.chunks_mut((m * n).max(1)).enumerate().take(p.batch()) {
        let (oa, ob) = p.offsets(bi);
        for l in 0..k {
            for j in 0..n {
                bt[l * n + j] = if p.tb {
                    b[ob + j * k + l]
                } else {
                    b[ob + l * n + j]
                };
            }
        }
        for i in 0..m {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for l in 0..k {
                let x = if p.ta {
                    a[oa + l * m + i]
                } else {
                    a[oa + i * k + l]
                };
                let row = &bt[l * n..(l + 1) * n];
                acc.iter_mut().zip(row).for_each(|(s, &y)| *s += x * y);
            }
            c[i * n..(i + 1) * n]
                .iter_mut()
                .zip(&acc)
                .for_each(|(o, &v)| *o = v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_numpy_shapes() {
        let p = MatmulPlan::new(&[2, 1, 3, 4], &[5, 4, 6], false, false).unwrap();
        assert_eq!(p.out_shape, vec![2, 5, 3, 6]);
        assert_eq!((p.m, p.k, p.n), (3, 4, 6));
        assert_eq!(p.a_strides, vec![12, 0]);
        assert_eq!(p.b_strides, vec![0, 24]);
        let p = MatmulPlan::new(&[4, 3], &[4], true, true).unwrap();
        assert_eq!((p.out_shape.clone(), p.m, p.k, p.n), (vec![3], 3, 4, 1));
        assert!(p.ta && !p.tb && p.for_gpu().tb);
        // A (3, K) batch over an unbatched B folds into one (3·M, K) product.
        let p = MatmulPlan::new(&[3, 5, 4], &[4, 2], false, false)
            .unwrap()
            .for_gpu();
        assert_eq!((p.m, p.batch()), (15, 1));
    }
}
