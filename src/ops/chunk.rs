//! Tensors larger than one storage binding.
//!
//! A tensor lives in one wgpu buffer, so it may be as large as `max_buffer_size`
//! (2 GiB on lavapipe), but a shader sees at most `max_storage_buffer_binding_size`
//! bytes of it through one binding (128 MiB on lavapipe and many GPUs). The ops
//! that accept such tensors reach them in windows, two ways:
//!
//! - **Binding offsets** (element-wise ops): the output is cut into windows of
//!   whole `min_storage_buffer_offset_alignment` blocks; each window is one dispatch
//!   with every operand bound at the matching byte offset. A broadcast operand that
//!   fits a binding is bound whole; a larger one is bound over the span of indices
//!   the window reads ([`broadcast_span`]) and the kernel subtracts that span's start.
//!   No copies: the same bandwidth as one dispatch.
//! - **Gather, run, scatter** (reductions, softmax, matmul): line boundaries rarely
//!   fall on the offset alignment, so a block of whole lines (or, for lines longer
//!   than a binding, a block of each line) is copied into a pooled buffer of at most
//!   one binding (`copy_buffer_to_buffer` only needs 4-byte alignment), the op's usual
//!   kernels run on it unchanged, and its result is copied into the big output.
//!   Costs one extra copy of the input; keeps every kernel and its planning as is.
//!
//! All of it is recorded in order in the one pending encoder, so block buffers can go
//! back to the pool as soon as their commands are recorded. Ops that do not chunk
//! (layout, conv, linalg, ...) get `Err(TooLarge)` — from their output allocation, or
//! from `GpuContext::dispatch_at` for a too-large binding — never a driver error.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::ops::gpu_output_big;
use crate::tensor::Tensor;
use crate::DType;

/// Elements of 4 bytes that fit one binding.
pub(crate) fn binding_elems(ctx: &GpuContext) -> usize {
    (ctx.binding_limit() / 4) as usize
}

/// Elements per aligned offset step (64 for a 256-byte alignment).
pub(crate) fn align_elems(ctx: &GpuContext) -> usize {
    (ctx.offset_alignment() / 4).max(1) as usize
}

/// Whether a tensor of `elems` 4-byte elements fits one binding.
pub(crate) fn fits(ctx: &GpuContext, elems: usize) -> bool {
    elems <= binding_elems(ctx)
}

/// Windows `(start, len)` covering `0..n` with `per` elements each (the last shorter).
pub(crate) fn windows(n: usize, per: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = per.max(1);
    (0..n.div_ceil(per)).map(move |w| (w * per, per.min(n - w * per)))
}

/// The window `s .. s + len` (elements of 4 bytes) of a buffer argument, for `dispatch_at`.
pub(crate) fn window(arg: crate::gpu::BufArg<'_>, s: usize, len: usize) -> crate::gpu::BufAt<'_> {
    (arg.0, (s * 4) as u64, (len * 4) as u64)
}

/// Window length for element-wise dispatches: the most whole alignment blocks
/// that fit one binding.
pub(crate) fn elementwise_window(ctx: &GpuContext) -> usize {
    let a = align_elems(ctx);
    (binding_elems(ctx) / a * a).max(a)
}

/// The smallest and largest operand index read for output elements `s..e` (e > s)
/// of a broadcast: `dims` the output dims, `strides` the operand's strides in them
/// (0 where stretched). The coordinates of `s..e` are the tuples between those of
/// `s` and `e - 1` in lexicographic order; with `k` the first dim where the two
/// differ, the dims before `k` are fixed, and the extremes are found digit by digit
/// from the inside out (strides are never negative).
pub(crate) fn broadcast_span(
    dims: &[usize],
    strides: &[usize],
    s: usize,
    e: usize,
) -> (usize, usize) {
    let rank = dims.len();
    let coords = |mut i: usize| {
        let mut c = vec![0; rank];
        for d in (0..rank).rev() {
            c[d] = i % dims[d].max(1);
            i /= dims[d].max(1);
        }
        c
    };
    let (cs, ce) = (coords(s), coords(e - 1));
    let Some(k) = (0..rank).find(|&d| cs[d] != ce[d]) else {
        let at = (0..rank).map(|d| cs[d] * strides[d]).sum();
        return (at, at);
    };
    let fixed: usize = (0..k).map(|d| cs[d] * strides[d]).sum();
    // Over dims d.., from the inside out: `low` the least index of a suffix at or
    // after cs's, `high` the largest of one at or before ce's, `full` the largest of any.
    let (mut low, mut high, mut full) = (0, 0, 0);
    for d in (k + 1..rank).rev() {
        let next_up = (cs[d] + 1 < dims[d]).then(|| (cs[d] + 1) * strides[d]);
        low = next_up.map_or(cs[d] * strides[d] + low, |up| {
            up.min(cs[d] * strides[d] + low)
        });
        let next_down = (ce[d] > 0).then(|| (ce[d] - 1) * strides[d] + full);
        high = next_down.map_or(ce[d] * strides[d] + high, |down| {
            down.max(ce[d] * strides[d] + high)
        });
        full += (dims[d] - 1) * strides[d];
    }
    // At dim k: cs's digit with a suffix at or after cs's, or a larger digit with any
    // suffix (its least is all zeros); symmetrically for the largest index.
    let lo = (cs[k] * strides[k] + low).min((cs[k] + 1) * strides[k]);
    let hi = (ce[k] * strides[k] + high).max((ce[k] - 1) * strides[k] + full);
    (fixed + lo, fixed + hi)
}

/// A new GPU tensor (shape (o.1, k.1, j.1), `x`'s 4-byte dtype) holding the box of `x` viewed as
/// (outer, r, inner) at outer `o`, rows `k`, columns `j`, each a (start, len) range.
/// Whole rows are one copy per outer index; whole slabs one copy in all.
pub(crate) fn gather_box(
    ctx: &Arc<GpuContext>,
    x: &Tensor,
    (outer, r, inner): (usize, usize, usize),
    (o, k, j): ((usize, usize), (usize, usize), (usize, usize)),
) -> Result<Tensor> {
    debug_assert!(o.0 + o.1 <= outer && k.0 + k.1 <= r && j.0 + j.1 <= inner);
    let shape = [o.1, k.1, j.1];
    let out = gpu_output_big(ctx, x.device(), "chunk", &shape, x.dtype())?;
    let (Some((src, _)), Some((dst, _))) = (x.gpu_arg(), out.gpu_arg()) else {
        return Err(gpu_only());
    };
    let b = |elems: usize| (elems * 4) as u64;
    if j.1 == inner && k.1 == r {
        ctx.copy(src, b(o.0 * r * inner), dst, 0, b(o.1 * r * inner));
    } else if j.1 == inner {
        for oi in 0..o.1 {
            let from = ((o.0 + oi) * r + k.0) * inner;
            ctx.copy(src, b(from), dst, b(oi * k.1 * inner), b(k.1 * inner));
        }
    } else {
        for oi in 0..o.1 {
            for ki in 0..k.1 {
                let from = ((o.0 + oi) * r + k.0 + ki) * inner + j.0;
                ctx.copy(src, b(from), dst, b((oi * k.1 + ki) * j.1), b(j.1));
            }
        }
    }
    Ok(out)
}

/// Copies `block`, an (rows, cols) GPU tensor, into `dst` viewed as
/// (dst_rows, dst_cols) at row `r0` and column `c0`.
pub(crate) fn scatter_block(
    ctx: &GpuContext,
    block: &Tensor,
    dst: &Tensor,
    (rows, cols): (usize, usize),
    dst_cols: usize,
    (r0, c0): (usize, usize),
) -> Result<()> {
    let (Some((src, _)), Some((d, _))) = (block.gpu_arg(), dst.gpu_arg()) else {
        return Err(gpu_only());
    };
    let b = |elems: usize| (elems * 4) as u64;
    if cols == dst_cols {
        ctx.copy(src, 0, d, b(r0 * dst_cols), b(rows * cols));
    } else {
        for i in 0..rows {
            ctx.copy(src, b(i * cols), d, b((r0 + i) * dst_cols + c0), b(cols));
        }
    }
    Ok(())
}

/// Runs `f` on blocks of whole slabs of `x` viewed as (outer, slab) and writes each
/// result, `out_slab` elements per slab, into one output of `out_shape`. A block
/// holds as many slabs as let it and its result fit one binding (`in_slab_bind`
/// and `out_slab_bind` are the bytes one slab needs bound, padding included).
/// A single slab past the binding is `Err(TooLarge)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_slabs(
    ctx: &Arc<GpuContext>,
    op: &'static str,
    x: &Tensor,
    (outer, slab): (usize, usize),
    out_shape: &[usize],
    out_slab: usize,
    (in_slab_bind, out_slab_bind): (u64, u64),
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let limit = ctx.binding_limit();
    let per_slab = in_slab_bind.max(out_slab_bind).max(1);
    if per_slab > limit {
        return Err(Error::TooLarge {
            op,
            shape: x.shape().to_vec(),
            bytes: per_slab,
            limit,
            limit_name: "max_storage_buffer_binding_size (one line of this op)",
        });
    }
    let out = gpu_output_big(ctx, x.device(), op, out_shape, DType::F32)?;
    let per = ((limit / per_slab) as usize).max(1);
    for (o0, on) in windows(outer, per) {
        let block = gather_box(ctx, x, (outer, 1, slab), ((o0, on), (0, 1), (0, slab)))?;
        let y = f(&block.reshape(&[on, slab])?)?;
        scatter_block(ctx, &y, &out, (on, out_slab), out_slab, (o0, 0))?;
    }
    Ok(out)
}

fn gpu_only() -> Error {
    Error::Invalid {
        op: "chunk",
        detail: "GPU storage expected on a GPU device".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(dims: &[usize], strides: &[usize], s: usize, e: usize) -> (usize, usize) {
        let mut idx = (s..e).map(|i| {
            let mut rem = i;
            let mut at = 0;
            for d in (0..dims.len()).rev() {
                at += rem % dims[d] * strides[d];
                rem /= dims[d];
            }
            at
        });
        let first = idx.next().unwrap();
        idx.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }

    #[test]
    fn broadcast_spans_are_the_least_and_largest_index_read() {
        // (dims, operand strides): stretched middle, stretched outer, stretched inner, full.
        let cases: [(&[usize], &[usize]); 6] = [
            (&[3, 4, 5], &[5, 0, 1]),
            (&[3, 4, 5], &[0, 5, 1]),
            (&[3, 4, 5], &[4, 1, 0]),
            (&[3, 4, 5], &[20, 5, 1]),
            (&[3, 4, 5], &[1, 0, 0]),
            (&[2, 1, 3, 10], &[3, 0, 1, 0]),
        ];
        for (dims, strides) in cases {
            let n: usize = dims.iter().product();
            for s in 0..n {
                for e in s + 1..=n {
                    let span = broadcast_span(dims, strides, s, e);
                    assert_eq!(
                        span,
                        exact(dims, strides, s, e),
                        "{dims:?} {strides:?} {s}..{e}"
                    );
                }
            }
        }
        // Within one row of a stretched-middle operand the span is that row.
        assert_eq!(broadcast_span(&[3, 4, 5], &[5, 0, 1], 20, 40), (5, 9));
    }

    #[test]
    fn windows_cover_exactly() {
        for n in [0, 1, 63, 64, 65, 1000] {
            let w: Vec<_> = windows(n, 64).collect();
            assert_eq!(w.iter().map(|x| x.1).sum::<usize>(), n);
            for (i, (s, _)) in w.iter().enumerate() {
                assert_eq!(*s, i * 64);
            }
        }
    }
}
