//! Shapes, contiguous strides, NumPy broadcasting and axis checks.
//!
//! Tensors in wgrad are always stored contiguously in row-major (C) order;
//! strides are derived from the shape. Broadcasting follows NumPy: shapes are
//! aligned on the right and a dimension of 1 stretches to match.

use crate::error::{Error, Result};

/// Maximum rank handled by the strided GPU kernels (their meta buffers are sized for it).
pub const MAX_RANK: usize = 8;

/// A tensor shape: sizes of each dimension, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar of rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        contiguous_strides(&self.0)
    }

    /// Resolves a possibly negative axis (`-1` is the last) against this shape.
    pub fn axis(&self, op: &'static str, axis: isize) -> Result<usize> {
        normalize_axis(op, axis, &self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

/// Row-major strides of `dims`, in elements. Saturating: an empty shape's other dims may
/// multiply past usize, and then no position is ever computed from the strides.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(dims[i + 1]);
    }
    s
}

/// Resolves `axis` (negative counts from the end) for a tensor of shape `dims`.
pub fn normalize_axis(op: &'static str, axis: isize, dims: &[usize]) -> Result<usize> {
    let r = dims.len() as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::Axis {
            op,
            axis,
            shape: dims.to_vec(),
        });
    }
    Ok(a as usize)
}

/// The NumPy broadcast of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::Shape {
                op,
                detail: format!("cannot broadcast {a:?} with {b:?} (dimension {i}: {da} vs {db})"),
            });
        };
    }
    Ok(out)
}

/// Strides (in elements) for reading a tensor of shape `src` as if it had the
/// broadcast shape `dst`: stretched and missing dimensions get stride 0.
pub fn broadcast_strides(src: &[usize], dst: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(src);
    let off = dst.len() - src.len();
    (0..dst.len())
        .map(|i| {
            if i < off || src[i - off] == 1 {
                0
            } else {
                own[i - off]
            }
        })
        .collect()
}

/// Largest element count a tensor may have: its bytes (up to 8 per element) must
/// fit in an `isize`, which every allocation needs.
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 8;

/// Number of elements of `dims`, or an error naming `op` when the product
/// overflows or is beyond [`MAX_ELEMENTS`] (shapes come from users and files).
pub fn checked_numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| Error::Shape {
            op,
            detail: format!("{dims:?} has more elements than can be addressed"),
        })
}

/// Errors with [`Error::Empty`] if the shape has no elements.
pub fn check_nonempty(op: &'static str, dims: &[usize]) -> Result<()> {
    if dims.iter().product::<usize>() == 0 {
        return Err(Error::Empty {
            op,
            shape: dims.to_vec(),
        });
    }
    Ok(())
}

/// Errors if the rank is above what the strided kernels support.
pub fn check_rank(op: &'static str, dims: &[usize]) -> Result<()> {
    if dims.len() > MAX_RANK {
        return Err(Error::Shape {
            op,
            detail: format!(
                "rank {} above the supported {MAX_RANK} for {dims:?}",
                dims.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast_shapes("t", &[5, 1, 3], &[4, 1]).unwrap(),
            vec![5, 4, 3]
        );
        assert_eq!(broadcast_shapes("t", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
        assert_eq!(broadcast_strides(&[3], &[2, 3]), vec![0, 1]);
        assert_eq!(broadcast_strides(&[2, 1], &[2, 3]), vec![1, 0]);
    }

    #[test]
    fn axes_normalise() {
        assert_eq!(normalize_axis("t", -1, &[2, 3]).unwrap(), 1);
        assert!(normalize_axis("t", 2, &[2, 3]).is_err());
        assert!(normalize_axis("t", -3, &[2, 3]).is_err());
    }
}
