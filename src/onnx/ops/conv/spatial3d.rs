//! 3-D (N, C, D, H, W) convolution, transposed convolution, pooling and Col2Im, composed from
//! the 2-D primitives on reshaped and permuted views, so they run on every device and
//! differentiate like any graph (no 3-D kernel exists).
//!
//! - Pooling: a box window is separable. Max over a box is the max over D of the max over
//!   (H, W); a box's sum is the sum over D of the (H, W) sums, and its divisor (the taps in
//!   the image, or in the padded image for `count_include_pad`, never those past the end
//!   padding that ceil_mode's last window reaches) is the product of the per-axis counts.
//!   So a 2-D pooling over (H, W) of (N, C·D, H, W), then a k×1 one over D of
//!   (N, C, D, OH·OW), is exactly the 3-D pooling, ceil_mode included (each axis keeps or
//!   drops its last window on its own).
//! - Conv: the D taps become channels (a k×1 im2col over D of (N, C, D, H·W) gives
//!   (N, OD·H·W, C·KD)), then one 2-D convolution of (N·OD, C·KD, H, W) with the filters
//!   seen as (M, C/g·KD, KH, KW): C-major channels keep each group contiguous.
//! - ConvTranspose: its adjoint. A 2-D transposed convolution of (N·D, C, H, W) with the
//!   filters (C, M/g·KD, KH, KW) gives (N·D, M·KD, OH, OW); a k×1 col2im over D adds each
//!   depth tap into its output plane.
//! - Col2Im: the same two col2im steps, (H, W) first, then D.
//!
//! Every product of dims is checked, so huge dims (with a zero elsewhere) are errors.

use super::Window;
use crate::onnx::ops::err;
use crate::{Conv2d, Var};

type Res<T> = std::result::Result<T, String>;

/// The product of `dims`, or an error naming `what` and the input's shape.
fn product(dims: &[usize], what: &str, shape: &[usize]) -> Res<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= crate::shape::MAX_ELEMENTS)
        .ok_or_else(|| {
            format!(
                "{what} {dims:?} of input {shape:?} multiply past the addressable element count"
            )
        })
}

/// The five dims of a 3-D input.
fn dims5(x: &Var) -> Res<[usize; 5]> {
    x.shape()
        .try_into()
        .map_err(|_| format!("input {:?} must be (N, C, D, H, W)", x.shape()))
}

/// Pools x (N, C, D, H, W) with the 2-D pooling `f`: over (H, W) of (N, C·D, H, W), then
/// over D of (N, C, D, OH·OW) with a k×1 window (see the module notes for why this is the
/// 3-D pooling).
pub(super) fn pool3d(
    x: &Var,
    window: &Window,
    f: impl Fn(&Var, Conv2d) -> crate::Result<Var>,
) -> Res<Var> {
    let s = x.shape().to_vec();
    let [n, c, d, h, w] = dims5(x)?;
    // The 2-D primitives' errors name their views; say which 3-D input they came from.
    let context = |e: crate::Error| {
        format!(
            "{} (3-D input {s:?}: pooled over (H, W) of (N, C·D, H, W), then over D of (N, C, D, OH·OW))",
            err(e)
        )
    };
    let planes = product(&[c, d], "dims C, D", &s)?;
    let y = f(
        &x.reshape(&[n, planes, h, w]).map_err(err)?,
        window.plane(1, 2),
    )
    .map_err(context)?;
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    let ohw = product(&[oh, ow], "output dims H, W", &s)?;
    let z = y
        .reshape(&[n, c, d, ohw])
        .and_then(|v| f(&v, window.column(0)))
        .map_err(context)?;
    z.reshape(&[n, c, z.shape()[2], oh, ow]).map_err(err)
}

/// Conv of x (N, C, D, H, W) with filters w (M, C/g, KD, KH, KW): (N, M, OD, OH, OW).
pub(super) fn conv3d(x: &Var, w: &Var, window: &Window, groups: usize) -> Res<Var> {
    let s = x.shape().to_vec();
    let [n, c, d, h, wd] = dims5(x)?;
    let &[m, cg, kd, kh, kw] = w.shape() else {
        return Err(format!(
            "filters W {:?} must be (M, C/group, KD, KH, KW)",
            w.shape()
        ));
    };
    if groups == 0 || c % groups != 0 || cg * groups != c || m % groups != 0 {
        return Err(format!(
            "input {s:?} and filters W {:?} disagree for group {groups} (W must be (M, C/group, …) with C and M divisible by group)",
            w.shape()
        ));
    }
    let hw = product(&[h, wd], "dims H, W", &s)?;
    product(&[c, kd], "channels and depth taps", &s)?;
    // (N, C, D, H·W) → patches (N, OD·H·W, C·KD): each depth window's taps as channels.
    let depth = window.column(0);
    let (od, _) = depth.output_size("Conv", &[n, c, d, hw]).map_err(err)?;
    let cols = x
        .reshape(&[n, c, d, hw])
        .and_then(|v| v.im2col(depth))
        .map_err(err)?;
    let frames = product(&[n, od], "batch and output depth", &s)?;
    let y = cols
        .reshape(&[n, od, h, wd, c * kd])
        .and_then(|v| v.permute(&[0, 1, 4, 2, 3]))
        .and_then(|v| v.reshape(&[frames, c * kd, h, wd]))
        .and_then(|v| {
            let f = w.reshape(&[m, cg * kd, kh, kw])?;
            v.conv2d(&f, window.plane(1, 2).groups(groups))
        })
        .map_err(err)?;
    let (oh, ow) = (y.shape()[2], y.shape()[3]);
    y.reshape(&[n, od, m, oh, ow])
        .and_then(|v| v.permute(&[0, 2, 1, 3, 4]))
        .map_err(err)
}

/// ConvTranspose of x (N, C, D, H, W) with filters w (C, M/g, KD, KH, KW) to the spatial
/// size `out` (OD, OH, OW); `window` is the forward convolution's over the output.
pub(super) fn conv_transpose3d(
    x: &Var,
    w: &Var,
    window: &Window,
    groups: usize,
    out: &[usize],
) -> Res<Var> {
    let s = x.shape().to_vec();
    let [n, c, d, h, wd] = dims5(x)?;
    let &[wc, mg, kd, kh, kw] = w.shape() else {
        return Err(format!(
            "filters W {:?} must be (C, M/group, KD, KH, KW)",
            w.shape()
        ));
    };
    if wc != c || groups == 0 || c % groups != 0 {
        return Err(format!(
            "input {s:?} and filters W {:?} disagree for group {groups} (W must be (C, M/group, …) with C divisible by group)",
            w.shape()
        ));
    }
    let m = mg
        .checked_mul(groups)
        .ok_or_else(|| format!("filters W {:?} times group {groups} overflow", w.shape()))?;
    let frames = product(&[n, d], "batch and depth", &s)?;
    let taps = product(&[mg, kd], "filters and depth taps", w.shape())?;
    // (N·D, C, H, W) ⊛ᵀ (C, M/g·KD, KH, KW) = (N·D, M·KD, OH, OW): channel f·KD + t holds
    // output channel f's contribution of depth tap t.
    let y = x
        .permute(&[0, 2, 1, 3, 4])
        .and_then(|v| v.reshape(&[frames, c, h, wd]))
        .and_then(|v| {
            let f = w.reshape(&[c, taps, kh, kw])?;
            v.conv_transpose2d(&f, window.plane(1, 2).groups(groups), [out[1], out[2]])
        })
        .map_err(|e| {
            format!(
                "{} (output_padding, and any output_shape beyond the full output, must stay below the strides)",
                err(e)
            )
        })?;
    depth_col2im(&y, [n, d, m, kd], window, out[0], &s)
}

/// The depth step of a 3-D col2im: t (N·D, F·KD, OH, OW), each input frame's depth taps,
/// added into the output planes (N, F, OD, OH, OW) that `window.column(0)` maps them to.
fn depth_col2im(
    t: &Var,
    [n, d, f, kd]: [usize; 4],
    window: &Window,
    od: usize,
    shape: &[usize],
) -> Res<Var> {
    let (oh, ow) = (t.shape()[2], t.shape()[3]);
    let ohw = product(&[oh, ow], "output dims H, W", shape)?;
    let blocks = product(&[d, ohw], "depth and plane", shape)?;
    let image = [n, f, od, ohw];
    let geom = window.column(0);
    let want = geom.patches_shape("Col2Im", &image).map_err(err)?;
    if want[1] != blocks {
        return Err(format!(
            "the {d} input frames of {shape:?} do not match the {} depth windows of an output depth {od} (window {:?})",
            want[1] / ohw.max(1),
            window.kernel
        ));
    }
    // (N, D, F, KD, OH·OW) → (N, D·OH·OW, F·KD): col2im's patches, channel-major.
    t.reshape(&[n, d, f, kd, ohw])
        .and_then(|v| v.permute(&[0, 1, 4, 2, 3]))
        .and_then(|v| v.reshape(&[n, blocks, f * kd]))
        .and_then(|v| v.col2im(geom, &image))
        .and_then(|v| v.reshape(&[n, f, od, oh, ow]))
        .map_err(err)
}

/// Col2Im of blocks x (N, C·KD·KH·KW, L) into images (N, C, image…) for a 3-D image and
/// block: col2im over (H, W) with the depth taps as channels, then over D.
pub(super) fn col2im3d(x: &Var, window: &Window, image: &[usize], c: usize) -> Res<Var> {
    let s = x.shape().to_vec();
    let &[n, cb, l] = x.shape() else {
        return Err(format!("input {s:?} must be (N, C·block, L)"));
    };
    let (kd, kh, kw) = (window.kernel[0], window.kernel[1], window.kernel[2]);
    let (d, h, w) = (image[0], image[1], image[2]);
    product(image, "image_shape", &s)?;
    // Blocks along each axis: the 2-D windows over (H, W), the k×1 ones over D.
    let plane = window.plane(1, 2);
    let lhw = plane.patches_shape("Col2Im", &[1, 1, h, w]).map_err(err)?[1];
    let ld = window
        .column(0)
        .patches_shape("Col2Im", &[1, 1, d, 1])
        .map_err(err)?[1];
    if ld.checked_mul(lhw) != Some(l) {
        return Err(format!(
            "input {s:?} holds {l} blocks where image {image:?} has {ld}·{lhw} (block {:?})",
            window.kernel
        ));
    }
    let frames = product(&[n, ld], "batch and depth blocks", &s)?;
    let ckd = cb / (kh * kw);
    let t = x
        .permute(&[0, 2, 1])
        .and_then(|v| v.reshape(&[frames, lhw, cb]))
        .and_then(|v| v.col2im(plane, &[frames, ckd, h, w]))
        .map_err(err)?;
    depth_col2im(&t, [n, ld, c, kd], window, d, &s)
}
