//! ONNX discrete Fourier transforms: DFT (opsets 17, 19, 20) and STFT (opset 17).
//!
//! A transform of length n along one axis is a product with constant n-point cosine and
//! sine matrices: the axis moves last, the value becomes `(rows, L)` and
//! `Re = re·C + im·S`, `Im = im·C − re·S` (forward; the inverse flips the sine's sign and
//! divides by n). That is O(L·n) work per row where an FFT is O(n log n), but it is two
//! products on the device, differentiable with no new primitive, and exact to the f32
//! rounding of the sums: the matrices are built in f64 from `(j·k) mod n`, so the angles
//! are exact at every length. Input past n is cut off and a shorter input is zero-padded
//! (NumPy's `fft(x, n)`), by leaving those rows of the matrices out.
//!
//! Complex values are ONNX's: a last dim of 2 (real, imaginary), or 1 for a real signal.
//! `onesided` keeps the n/2 + 1 non-negative frequencies; with `inverse` it is the inverse
//! real transform (NumPy's `irfft`): the one-sided input is taken as Hermitian (bins 1 to
//! ⌈n/2⌉ − 1 counted twice, the imaginary parts of bin 0 and of bin n/2 ignored) and the
//! output is real, last dim 1.
//!
//! STFT frames the signal (`frame_step` apart, `frame_length` long, zero-padded past its
//! end), weights each frame by the window (a graph value, so it trains) and transforms
//! each: output `(batch, frames, bins, 2)`.

use super::{attr_int, const_input, err, input, one, opt_const_input, opt_input, Env, OpFn};
use super::{OpResult, Value};
use crate::onnx::proto::NodeProto;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[("DFT", dft), ("STFT", stft)];

type Res<T> = std::result::Result<T, String>;

/// Most frames STFT unrolls (one slice each).
const MAX_FRAMES: usize = 1 << 14;

/// Which transform a matrix pair computes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// `X[k] = Σ x[j] e^{−2πijk/n}`, k < bins.
    Forward { bins: usize },
    /// `x[k] = (1/n) Σ X[j] e^{+2πijk/n}`, k < n.
    Inverse,
    /// The inverse of a one-sided (Hermitian) spectrum: real output, k < n.
    InverseReal,
}

/// The scalar integer input `i`, if present.
fn scalar(env: &Env, node: &NodeProto, i: usize, what: &str) -> Res<Option<i64>> {
    match opt_const_input(env, node, i)? {
        None => Ok(None),
        Some(c) => match c.as_i64()?.as_slice() {
            [v] => Ok(Some(*v)),
            v => Err(format!("{what} must be a scalar, got {} values", v.len())),
        },
    }
}

/// A positive length from an ONNX integer.
fn length(v: i64, what: &str) -> Res<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{what} must be positive, got {v}"))
}

/// `(C, S)`, each `(min(len, used), out)` row-major as f32 constants of `g`: row j, column k
/// hold `w_j·cos(2πjk/n)` and `w_j·sin(2πjk/n)` times the scale of `kind`.
fn matrices(g: &crate::Graph, len: usize, n: usize, kind: Kind) -> Res<(Var, Var)> {
    let (used, out, scale) = match kind {
        Kind::Forward { bins } => (n, bins, 1.0),
        Kind::Inverse => (n, n, 1.0 / n as f64),
        Kind::InverseReal => (n / 2 + 1, n, 1.0 / n as f64),
    };
    let rows = len.min(used);
    super::host_numel(&[rows, out])?;
    let (mut c, mut s) = (vec![0f32; rows * out], vec![0f32; rows * out]);
    for j in 0..rows {
        // irfft: the bins other than 0 and n/2 stand for themselves and their conjugates.
        let w = match kind {
            Kind::InverseReal if j != 0 && 2 * j != n => 2.0,
            _ => 1.0,
        } * scale;
        for k in 0..out {
            let r = (j * k) % n;
            let t = std::f64::consts::TAU * r as f64 / n as f64;
            c[j * out + k] = (w * t.cos()) as f32;
            // sin is exactly 0 at 0 and π (f64's sin(π) is 1.2e-16, not 0).
            s[j * out + k] = if r == 0 || 2 * r == n {
                0.0
            } else {
                (w * t.sin()) as f32
            };
        }
    }
    let cpu = Device::cpu();
    let c = Tensor::from_slice(&cpu, &c, &[rows, out]).map_err(err)?;
    let s = Tensor::from_slice(&cpu, &s, &[rows, out]).map_err(err)?;
    Ok((g.constant(&c).map_err(err)?, g.constant(&s).map_err(err)?))
}

/// The transform of `(re, im)` (im absent: a real signal), both of shape `dims`, along
/// axis `a`: the real and imaginary outputs (imaginary absent for [`Kind::InverseReal`]),
/// with axis `a` resized to the output length.
fn transform(
    re: &Var,
    im: Option<&Var>,
    a: usize,
    n: usize,
    kind: Kind,
) -> crate::Result<(Var, Option<Var>)> {
    let dims = re.shape().to_vec();
    let r = dims.len();
    let len = dims[a];
    // Axis a moves last; everything else is rows of one product.
    let perm: Vec<usize> = (0..r).filter(|&d| d != a).chain([a]).collect();
    let mut inv = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let rows: usize = dims.iter().product::<usize>() / len.max(1);
    let flat = |v: &Var| -> crate::Result<Var> {
        let v = v.permute(&perm)?.reshape(&[rows, len])?;
        // Rows of the input past the matrices' (a longer input than n) are cut off.
        let used = match kind {
            Kind::InverseReal => n / 2 + 1,
            _ => n,
        };
        if len > used {
            v.slice(1, 0, used)
        } else {
            Ok(v)
        }
    };
    let (c, s) = matrices(re.graph(), len, n, kind)
        .map_err(|detail| crate::Error::Invalid { op: "DFT", detail })?;
    let xr = flat(re)?;
    let xi = im.map(flat).transpose()?;
    // Forward: Re = xr·C + xi·S, Im = xi·C − xr·S. Inverse: Re = xr·C − xi·S,
    // Im = xi·C + xr·S. So with sign +1 forward and −1 inverse: Re = xr·C + sign·xi·S,
    // Im = xi·C − sign·xr·S.
    let sign = if matches!(kind, Kind::Forward { .. }) {
        1.0
    } else {
        -1.0
    };
    let mut yr = xr.matmul(&c)?;
    let mut yi = xr.matmul(&s)?.mul_scalar(-sign)?;
    if let Some(xi) = &xi {
        yr = yr.add(&xi.matmul(&s)?.mul_scalar(sign)?)?;
        yi = yi.add(&xi.matmul(&c)?)?;
    }
    let out = c.shape()[1];
    let mut odims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    odims[r - 1] = out;
    let back = |v: Var| -> crate::Result<Var> { v.reshape(&odims)?.permute(&inv) };
    let yr = back(yr)?;
    if kind == Kind::InverseReal {
        return Ok((yr, None));
    }
    Ok((yr, Some(back(yi)?)))
}

/// Splits ONNX's complex layout `(..., 1|2)` into real and imaginary parts of shape `(...)`.
fn split_complex(x: &Var) -> Res<(Var, Option<Var>)> {
    let dims = x.shape().to_vec();
    let last = *dims.last().ok_or("input must have rank >= 2")?;
    if dims.len() < 2 || !(last == 1 || last == 2) {
        return Err(format!(
            "input {dims:?} must end in a dim of 1 (real) or 2 (complex)"
        ));
    }
    let inner = &dims[..dims.len() - 1];
    let re = x
        .slice(-1, 0, 1)
        .and_then(|v| v.reshape(inner))
        .map_err(err)?;
    let im = if last == 2 {
        Some(
            x.slice(-1, 1, 2)
                .and_then(|v| v.reshape(inner))
                .map_err(err)?,
        )
    } else {
        None
    };
    Ok((re, im))
}

/// Joins real and imaginary parts into ONNX's complex layout (last dim 2, or 1 when there
/// is no imaginary part).
fn join_complex(re: &Var, im: Option<&Var>) -> crate::Result<Var> {
    let mut dims = re.shape().to_vec();
    dims.push(1);
    let re = re.reshape(&dims)?;
    match im {
        None => Ok(re),
        Some(im) => Var::concat(&[&re, &im.reshape(&dims)?], -1),
    }
}

/// DFT: see the module comment. The axis is an attribute (default 1) before opset 20 and
/// an input (default −2) from it; the length (input 1) defaults to the axis' size, or
/// 2·(size − 1) for the inverse real transform.
fn dft(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let rank = x.shape().len();
    let raw_axis = if env.opset >= 20 {
        scalar(env, node, 2, "axis")?.unwrap_or(-2)
    } else {
        attr_int(node, "axis", 1)
    };
    let a = super::axis(raw_axis, rank, false)?;
    if a + 1 == rank {
        return Err(format!(
            "axis {raw_axis} is the complex dim of input {:?}",
            x.shape()
        ));
    }
    let inverse = attr_int(node, "inverse", 0) != 0;
    let onesided = attr_int(node, "onesided", 0) != 0;
    let size = x.shape()[a];
    let n = match scalar(env, node, 1, "dft_length")? {
        Some(v) => length(v, "dft_length")?,
        None if inverse && onesided => length(2 * (size as i64 - 1), "2·(size − 1)")?,
        None => length(size as i64, "the axis' size")?,
    };
    let kind = match (inverse, onesided) {
        (false, false) => Kind::Forward { bins: n },
        (false, true) => Kind::Forward { bins: n / 2 + 1 },
        (true, false) => Kind::Inverse,
        (true, true) => Kind::InverseReal,
    };
    let (re, im) = split_complex(&x)?;
    let (yr, yi) = transform(&re, im.as_ref(), a, n, kind).map_err(err)?;
    one(join_complex(&yr, yi.as_ref()).map_err(err)?)
}

/// STFT (opset 17): see the module comment.
fn stft(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let dims = x.shape().to_vec();
    let &[batch, len, _] = dims.as_slice() else {
        return Err(format!(
            "signal {dims:?} must be (batch, length, 1|2) (real or complex)"
        ));
    };
    let step = match const_input(env, node, 1)?.as_i64()?.as_slice() {
        [v] => length(*v, "frame_step")?,
        v => {
            return Err(format!(
                "frame_step must be a scalar, got {} values",
                v.len()
            ))
        }
    };
    let window = opt_input(env, node, 2)?;
    let w_len = match &window {
        Some(w) => match w.shape() {
            [l] if *l > 0 => Some(*l),
            s => return Err(format!("window {s:?} must be 1-D and non-empty")),
        },
        None => None,
    };
    let n = match (scalar(env, node, 3, "frame_length")?, w_len) {
        (Some(v), _) => length(v, "frame_length")?,
        (None, Some(l)) => l,
        (None, None) => len,
    };
    // Each frame is the window's length (the DFT's, without a window), transformed at n.
    let fw = w_len.unwrap_or(n);
    if len < n {
        return Err(format!(
            "frame_length {n} is longer than the signal ({len})"
        ));
    }
    let frames = 1 + (len - n) / step;
    // Each frame is a slice node of the graph: a bound on the graph's size, and on the
    // framed tensor's.
    if frames > MAX_FRAMES {
        return Err(format!(
            "{frames} frames (signal {dims:?}, frame_step {step}, frame_length {n}) are over \
             the {MAX_FRAMES} this import unrolls"
        ));
    }
    super::host_numel(&[batch, frames, fw])?;
    let onesided = attr_int(node, "onesided", 1) != 0;
    let (re, im) = split_complex(&x)?;
    let frame_all = |v: &Var| -> crate::Result<Var> {
        let g = v.graph();
        let mut parts = Vec::with_capacity(frames);
        for f in 0..frames {
            let b = f * step;
            let e = (b + fw).min(len);
            let mut p = v.slice(1, b, e)?;
            if e - b < fw {
                let pad = g.full(0.0, &[batch, fw - (e - b)]);
                p = Var::concat(&[&p, &pad], 1)?;
            }
            parts.push(p.reshape(&[batch, 1, fw])?);
        }
        let refs: Vec<&Var> = parts.iter().collect();
        let framed = Var::concat(&refs, 1)?;
        match &window {
            Some(w) => framed.mul(&w.reshape(&[1, 1, fw])?),
            None => Ok(framed),
        }
    };
    // As ONNX's reference: one-sided keeps n/2 + 1 bins whether the signal is real or not.
    let bins = if onesided { n / 2 + 1 } else { n };
    let y = (|| {
        let fr = frame_all(&re)?;
        let fi = im.as_ref().map(frame_all).transpose()?;
        let (yr, yi) = transform(&fr, fi.as_ref(), 2, n, Kind::Forward { bins })?;
        join_complex(&yr, yi.as_ref())
    })()
    .map_err(err)?;
    Ok(vec![Value::Var(y)])
}
