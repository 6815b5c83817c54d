//! ONNX sampling grids: AffineGrid (opset 20).
//!
//! AffineGrid maps each output position's normalised coordinates `[x, y, (z,) 1]` through
//! the batch's affine matrices θ `(N, 2, 3)` (or `(N, 3, 4)` in 3-D): one product of a
//! constant `(positions, 3|4)` grid with θᵀ, so the gradient reaches θ (a spatial
//! transformer trains through it). Coordinates span [−1, 1]: pixel centres
//! `−1 + (2i + 1)/n`, or with `align_corners` the corner pixels' centres `−1 + 2i/(n − 1)`
//! A single pixel sits at 0 in both modes. With `align_corners` that is undefined (2/(n − 1))
//! and runtimes disagree: onnxruntime 1.32 puts it at +1, ONNX's Python reference at −1,
//! PyTorch's `affine_grid` at 0, the centre, which wgrad follows.

use super::{attr_int, const_input, err, input, one, Env, OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::{Device, Tensor};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("AffineGrid", affine_grid)];

/// The normalised coordinate of pixel `i` of `n`.
fn coordinate(i: usize, n: usize, align_corners: bool) -> f64 {
    if align_corners {
        if n == 1 {
            0.0
        } else {
            -1.0 + 2.0 * i as f64 / (n - 1) as f64
        }
    } else {
        -1.0 + (2 * i + 1) as f64 / n as f64
    }
}

/// AffineGrid: `size` (known at import) is `(N, C, H, W)` or `(N, C, D, H, W)`; the output
/// is `(N, H, W, 2)` or `(N, D, H, W, 3)`.
fn affine_grid(env: &Env, node: &NodeProto) -> OpResult {
    let theta = input(env, node, 0)?;
    let size = const_input(env, node, 1)?.as_i64()?;
    let spatial: Vec<usize> = match size.as_slice() {
        [_, _, rest @ ..] if (2..=3).contains(&rest.len()) => rest
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("size {size:?} must be positive"))?,
        _ => {
            return Err(format!(
                "size {size:?} must be (N, C, H, W) or (N, C, D, H, W)"
            ))
        }
    };
    let k = spatial.len();
    let n = usize::try_from(size[0]).map_err(|_| format!("size {size:?}: negative N"))?;
    if theta.shape() != [n, k, k + 1] {
        return Err(format!(
            "theta {:?} must be {:?} for size {size:?}",
            theta.shape(),
            [n, k, k + 1]
        ));
    }
    let positions = super::host_numel(&spatial)?;
    super::host_numel(&[positions, k + 1])?;
    let align = attr_int(node, "align_corners", 0) != 0;
    // Rows [x, y, (z,) 1] in row-major order of the spatial dims (the last is x).
    let mut base = Vec::with_capacity(positions * (k + 1));
    for p in 0..positions {
        let mut rest = p;
        let mut idx = vec![0; k];
        for d in (0..k).rev() {
            idx[d] = rest % spatial[d];
            rest /= spatial[d];
        }
        for d in (0..k).rev() {
            base.push(coordinate(idx[d], spatial[d], align) as f32);
        }
        base.push(1.0);
    }
    let base = Tensor::from_slice(&Device::cpu(), &base, &[1, positions, k + 1]).map_err(err)?;
    let mut out = vec![n];
    out.extend(&spatial);
    out.push(k);
    let y = (|| {
        let base = theta.graph().constant(&base)?;
        // (1, P, k+1)·(N, k, k+1)ᵀ = (N, P, k).
        base.matmul_t(&theta, false, true)?.reshape(&out)
    })()
    .map_err(err)?;
    one(y)
}
