//! Convolution and pooling: Conv, ConvTranspose, MaxPool, AveragePool, LpPool,
//! GlobalAveragePool, GlobalMaxPool, Col2Im and MaxUnpool, on 1-D (N, C, L), 2-D
//! (N, C, H, W) and 3-D (N, C, D, H, W) inputs. A 1-D input runs as (N, C, 1, L) with a 1×k
//! window that neither pads nor strides along H; a 3-D one as 2-D passes on reshaped views
//! (`spatial3d.rs`). Every op maps onto [`Var::conv2d`], [`Var::conv_transpose2d`] (col2im
//! of x·W) and the pooling compositions, so imported models differentiate like any graph.
//! MaxPool's Indices output and MaxUnpool are compositions of comparisons (`argmax.rs`).
//!
//! `auto_pad` SAME_UPPER / SAME_LOWER: ceil(in/stride) outputs, the total padding split with
//! the odd one at the end (UPPER) or the start (LOWER). Corners where onnxruntime and the
//! ONNX spec disagree are refused rather than guessed: Conv and pooling with SAME and a
//! dilation above 1 (onnxruntime rejects it for Conv and pads pooling by the undilated
//! kernel); a ConvTranspose whose SAME padding comes out negative (onnxruntime clamps it to
//! 0 and returns a smaller output than the spec's; an `output_shape` past the full output
//! adds zeros at the end, where both agree); pooling with
//! auto_pad VALID and ceil_mode 1 (onnxruntime keeps a last partial window, the spec's
//! formula does not).
//! With explicit pads, ceil_mode follows both: a last window may run past the end padding
//! (its taps there are ignored, never counted) but may not start in it.

use super::opt_input;
use super::{attr_int, attr_ints, attr_string, const_input, err, input, input_dims, one};
use super::{Env, FoldFn, OpFn, OpResult};
use crate::onnx::proto::NodeProto;
use crate::ops::reduce::ReduceOp;
use crate::{Conv2d, Var};

mod argmax;
mod spatial3d;

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("MaxPool", max_pool),
    ("AveragePool", avg_pool),
    ("LpPool", lp_pool),
    ("GlobalAveragePool", |e, n| {
        global_pool(e, n, ReduceOp::Mean)
    }),
    ("GlobalMaxPool", |e, n| global_pool(e, n, ReduceOp::Max)),
    ("Col2Im", col2im),
    ("MaxUnpool", argmax::max_unpool),
];

/// This family's folds, evaluated at import when every input is a constant.
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

type Res<T> = std::result::Result<T, String>;

/// The spatial rank (1, 2 or 3) of an (N, C, …) input; anything else is an error naming it.
fn spatial_rank(dims: &[usize]) -> Res<usize> {
    match dims.len() {
        3..=5 => Ok(dims.len() - 2),
        _ => Err(format!(
            "input {dims:?} must be (N, C, L), (N, C, H, W) or (N, C, D, H, W)"
        )),
    }
}

/// An ints attribute with one value per spatial axis (`default` each when absent), each at
/// least `min`.
fn per_axis(node: &NodeProto, name: &str, n: usize, default: usize, min: i64) -> Res<Vec<usize>> {
    match attr_ints(node, name) {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|&x| x >= min && x <= u32::MAX as i64) => {
            Ok(v.iter().map(|&x| x as usize).collect())
        }
        Some(v) => Err(format!(
            "`{name}` {v:?} must hold {n} value(s) of at least {min} (one per spatial axis)"
        )),
    }
}

/// The explicit `pads` [x1_begin, x2_begin, …, x1_end, x2_end, …] as (begins, ends).
fn explicit_pads(node: &NodeProto, n: usize) -> Res<(Vec<usize>, Vec<usize>)> {
    let p = per_axis(node, "pads", 2 * n, 0, 0)
        .map_err(|e| format!("{e} (begins then ends: {} values)", 2 * n))?;
    Ok((p[..n].to_vec(), p[n..].to_vec()))
}

/// How the padding is chosen (`auto_pad`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl std::fmt::Display for AutoPad {
    /// ONNX's spelling, for messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AutoPad::NotSet => "NOTSET",
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
            AutoPad::Valid => "VALID",
        })
    }
}

fn auto_pad(node: &NodeProto) -> Res<AutoPad> {
    let a = match attr_string(node, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => AutoPad::NotSet,
        Some("SAME_UPPER") => AutoPad::SameUpper,
        Some("SAME_LOWER") => AutoPad::SameLower,
        Some("VALID") => AutoPad::Valid,
        Some(other) => return Err(format!("unknown auto_pad '{other}'")),
    };
    if a != AutoPad::NotSet && attr_ints(node, "pads").is_some_and(|p| p.iter().any(|&v| v != 0)) {
        return Err(format!("`pads` and auto_pad {a} cannot be used together"));
    }
    Ok(a)
}

/// A window over the spatial axes: kernel, strides, dilations, begin and end padding.
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    begins: Vec<usize>,
    ends: Vec<usize>,
}

impl Window {
    /// Reads strides, dilations and the padding (explicit or `auto_pad`) of a convolution or
    /// pooling window `kernel` over the spatial dims `spatial`.
    fn read(node: &NodeProto, kernel: Vec<usize>, spatial: &[usize]) -> Res<Window> {
        let n = spatial.len();
        let strides = per_axis(node, "strides", n, 1, 1)?;
        let dilations = per_axis(node, "dilations", n, 1, 1)?;
        let (begins, ends) = match auto_pad(node)? {
            AutoPad::NotSet => explicit_pads(node, n)?,
            AutoPad::Valid => (vec![0; n], vec![0; n]),
            same => {
                if dilations.iter().any(|&d| d != 1) {
                    return Err(format!(
                        "auto_pad {same} with dilations {dilations:?} is not supported: onnxruntime and the ONNX spec pad it differently; give explicit pads"
                    ));
                }
                let (mut b, mut e) = (vec![0; n], vec![0; n]);
                for i in 0..n {
                    let outs = spatial[i].div_ceil(strides[i]);
                    let total =
                        ((outs.max(1) - 1) * strides[i] + kernel[i]).saturating_sub(spatial[i]);
                    b[i] = if same == AutoPad::SameUpper {
                        total / 2
                    } else {
                        total - total / 2
                    };
                    e[i] = total - b[i];
                }
                (b, e)
            }
        };
        Ok(Window {
            kernel,
            strides,
            dilations,
            begins,
            ends,
        })
    }

    /// The 2-D geometry of spatial axes `i` (as H) and `j` (as W).
    fn plane(&self, i: usize, j: usize) -> Conv2d {
        Conv2d::new(self.kernel[i], self.kernel[j])
            .strides(self.strides[i], self.strides[j])
            .dilations(self.dilations[i], self.dilations[j])
            .pads(self.begins[i], self.begins[j], self.ends[i], self.ends[j])
    }

    /// Spatial axis `i` alone, as the H axis of a k×1 window (W: no padding, stride 1).
    fn column(&self, i: usize) -> Conv2d {
        Conv2d::new(self.kernel[i], 1)
            .strides(self.strides[i], 1)
            .dilations(self.dilations[i], 1)
            .pads(self.begins[i], 0, self.ends[i], 0)
    }

    /// The 2-D geometry: a 1-D window becomes 1×k with no padding, stride or dilation on H.
    fn geometry(&self) -> Conv2d {
        if self.kernel.len() == 1 {
            Conv2d::new(1, self.kernel[0])
                .strides(1, self.strides[0])
                .dilations(1, self.dilations[0])
                .pads(0, self.begins[0], 0, self.ends[0])
        } else {
            Conv2d::new(self.kernel[0], self.kernel[1])
                .strides(self.strides[0], self.strides[1])
                .dilations(self.dilations[0], self.dilations[1])
                .pads(self.begins[0], self.begins[1], self.ends[0], self.ends[1])
        }
    }
}

/// (N, C, L) → (N, C, 1, L); a 2-D input as it is.
fn to_2d(x: &Var) -> Res<Var> {
    match x.shape() {
        &[n, c, l] => x.reshape(&[n, c, 1, l]).map_err(err),
        _ => Ok(x.clone()),
    }
}

/// Back to the input's spatial rank: (N, C, 1, L) → (N, C, L) for 1-D.
fn from_2d(y: Var, rank: usize) -> Res<Var> {
    match (rank, y.shape()) {
        (1, &[n, c, 1, l]) => y.reshape(&[n, c, l]).map_err(err),
        _ => Ok(y),
    }
}

/// Adds the optional bias (M) of Conv and ConvTranspose along the channels of y (N, M, …).
fn add_bias(env: &Env, node: &NodeProto, y: Var) -> Res<Var> {
    let Some(b) = opt_input(env, node, 2)? else {
        return Ok(y);
    };
    let m = y.shape()[1];
    if b.shape() != [m] {
        return Err(format!(
            "bias B {:?} must be ({m}) for an output {:?}",
            b.shape(),
            y.shape()
        ));
    }
    let mut shape = vec![1; y.shape().len()];
    shape[1] = m;
    let out = y.add(&b.reshape(&shape).map_err(err)?).map_err(err)?;
    // A BatchNormalization reading `out` folds the bias into its own shift (norm.rs), so the
    // product's epilogue applies both; this add then runs only if something else reads it.
    env.conv_bias
        .borrow_mut()
        .insert(out.id(), (y, b, node.input[2].clone()));
    Ok(out)
}

/// `group`, at least 1.
fn groups(node: &NodeProto) -> Res<usize> {
    match attr_int(node, "group", 1) {
        g if g >= 1 && g <= u32::MAX as i64 => Ok(g as usize),
        g => Err(format!("group {g} must be at least 1")),
    }
}

/// The filters' spatial dims, checked against `kernel_shape` when the model gives it.
fn kernel_of(node: &NodeProto, w: &[usize], rank: usize) -> Res<Vec<usize>> {
    if w.len() != rank + 2 {
        return Err(format!(
            "filters W {w:?} must have rank {} like the input",
            rank + 2
        ));
    }
    let kernel = w[2..].to_vec();
    if kernel.contains(&0) {
        return Err(format!("filters W {w:?} have an empty kernel"));
    }
    if let Some(k) = attr_ints(node, "kernel_shape") {
        if k.iter().map(|&v| v as usize).ne(kernel.iter().copied()) || k.iter().any(|&v| v < 1) {
            return Err(format!(
                "kernel_shape {k:?} does not match the filters W {w:?}"
            ));
        }
    }
    Ok(kernel)
}

/// The filters as 4-D: (M, C/g, k) → (M, C/g, 1, k).
fn filters_2d(w: Var) -> Res<Var> {
    match w.shape() {
        &[m, c, k] => w.reshape(&[m, c, 1, k]).map_err(err),
        _ => Ok(w),
    }
}

/// Conv: x (N, C, …) with W (M, C/group, …) and an optional bias B (M).
fn conv(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let w = input(env, node, 1)?;
    one(add_bias(env, node, conv_of(node, &x, &w)?)?)
}

/// The convolution of x (N, C, …) with filters w (M, C/group, …) under `node`'s window
/// attributes (Conv's, also read by ConvInteger and QLinearConv in `quant.rs`), no bias.
pub(super) fn conv_of(node: &NodeProto, x: &Var, w: &Var) -> Res<Var> {
    let rank = spatial_rank(x.shape())?;
    let kernel = kernel_of(node, w.shape(), rank)?;
    let window = Window::read(node, kernel, &x.shape()[2..])?;
    if rank == 3 {
        return spatial3d::conv3d(x, w, &window, groups(node)?);
    }
    let geom = window.geometry().groups(groups(node)?);
    let y = to_2d(x)?
        .conv2d(&filters_2d(w.clone())?, geom)
        .map_err(err)?;
    from_2d(y, rank)
}

/// ConvTranspose: x (N, C, …) with W (C, M/group, …), optional bias B (M). The output size
/// is `stride·(in-1) + output_padding + dilation·(k-1) + 1 - pads`, or `output_shape`
/// (then the padding follows from it), or in·stride for auto_pad SAME.
fn conv_transpose(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let rank = spatial_rank(x.shape())?;
    let spatial = x.shape()[2..].to_vec();
    let w_dims = input_dims(env, node, 1)?;
    let kernel = kernel_of(node, &w_dims, rank)?;
    let strides = per_axis(node, "strides", rank, 1, 1)?;
    let dilations = per_axis(node, "dilations", rank, 1, 1)?;
    let out_pad = per_axis(node, "output_padding", rank, 0, 0)?;
    let auto = auto_pad(node)?;
    let output_shape = match attr_ints(node, "output_shape") {
        None => None,
        // Also accepted with the batch and channel dims in front, as onnxruntime does.
        Some(v) if (v.len() == rank || v.len() == rank + 2) && v.iter().all(|&d| d >= 0) => Some(
            v[v.len() - rank..]
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>(),
        ),
        Some(v) => {
            return Err(format!(
                "output_shape {v:?} must hold {rank} non-negative dims"
            ))
        }
    };
    let (mut begins, mut ends) = explicit_pads(node, rank)?;
    let (mut out, mut window_ends) = (vec![0; rank], vec![0; rank]);
    for i in 0..rank {
        // Checked: the input's spatial dims may be huge (a zero dim elsewhere holds them).
        let sizes = || {
            let span = dilations[i]
                .checked_mul(kernel[i].checked_sub(1)?)?
                .checked_add(1)?;
            let reach = strides[i]
                .checked_mul(spatial[i].max(1) - 1)?
                .checked_add(span)?;
            let same = spatial[i].checked_mul(strides[i])?;
            Some((reach, reach.checked_add(out_pad[i])?, same))
        };
        let Some((reach, full, same)) = sizes() else {
            return Err(format!(
                "the output size on spatial axis {i} overflows (input {:?}, kernel {kernel:?}, strides {strides:?}, dilations {dilations:?})",
                x.shape()
            ));
        };
        let target = match (output_shape.as_ref(), auto) {
            (Some(o), _) => Some(o[i]),
            (None, AutoPad::SameUpper | AutoPad::SameLower) => Some(same),
            (None, AutoPad::Valid) => {
                (begins[i], ends[i]) = (0, 0);
                None
            }
            (None, AutoPad::NotSet) => None,
        };
        match target.map(|t| (t, full.checked_sub(t))) {
            Some((_, Some(total))) => {
                let head = if auto == AutoPad::SameUpper {
                    total / 2
                } else {
                    total - total / 2
                };
                (begins[i], ends[i]) = (head, total - head);
            }
            // An `output_shape` past the full output adds zeros at the end, like
            // output_padding (onnxruntime and the spec agree while the excess stays below
            // the stride; conv_transpose2d refuses more).
            Some((t, None)) if output_shape.is_some() => {
                (begins[i], ends[i]) = (0, 0);
                out[i] = t;
            }
            Some((t, None)) => {
                return Err(format!(
                    "auto_pad {auto} asks for {t} outputs on spatial axis {i}, more than the {full} a transposed convolution of input {:?} reaches (negative padding: onnxruntime and the ONNX spec differ there)",
                    x.shape()
                ));
            }
            None => {}
        }
        if out[i] == 0 {
            out[i] = full
                .checked_sub(begins[i] + ends[i])
                .filter(|&o| o > 0)
                .ok_or_else(|| {
                    format!(
                        "pads (begins {begins:?}, ends {ends:?}) crop all of the {full} outputs on spatial axis {i} (input {:?})",
                        x.shape()
                    )
                })?;
        }
        // The forward convolution's window over the output: the begin padding crops; the
        // end padding only has to bring the window count back to the input size.
        window_ends[i] = reach.saturating_sub(out[i] + begins[i]);
    }
    let window = Window {
        kernel,
        strides,
        dilations,
        begins,
        ends: window_ends,
    };
    if rank == 3 {
        let w = input(env, node, 1)?;
        let y = spatial3d::conv_transpose3d(&x, &w, &window, groups(node)?, &out)?;
        return one(add_bias(env, node, y)?);
    }
    let geom = window.geometry().groups(groups(node)?);
    let out_hw = if rank == 1 {
        [1, out[0]]
    } else {
        [out[0], out[1]]
    };
    let w = filters_2d(input(env, node, 1)?)?;
    let y = to_2d(&x)?.conv_transpose2d(&w, geom, out_hw).map_err(|e| {
        format!(
            "{} (output_padding {out_pad:?}, and any output_shape beyond the full output, must stay below the strides)",
            err(e)
        )
    })?;
    one(add_bias(env, node, from_2d(y, rank)?)?)
}

/// The window of MaxPool / AveragePool: `kernel_shape` (required) and the shared attributes.
fn pool_window(node: &NodeProto, x: &Var) -> Res<(usize, Window, bool)> {
    let rank = spatial_rank(x.shape())?;
    let kernel = match attr_ints(node, "kernel_shape") {
        Some(k) if k.len() == rank && k.iter().all(|&v| v >= 1 && v <= u32::MAX as i64) => {
            k.iter().map(|&v| v as usize).collect()
        }
        Some(k) => {
            return Err(format!(
                "kernel_shape {k:?} must hold {rank} positive dims for input {:?}",
                x.shape()
            ))
        }
        None => return Err("kernel_shape is required".into()),
    };
    let window = Window::read(node, kernel, &x.shape()[2..])?;
    let ceil_mode = match attr_int(node, "ceil_mode", 0) {
        0 => false,
        1 => true,
        c => return Err(format!("ceil_mode {c} must be 0 or 1")),
    };
    if ceil_mode && auto_pad(node)? == AutoPad::Valid {
        return Err(
            "auto_pad VALID with ceil_mode 1 is not supported: onnxruntime keeps a last partial window that the spec's formula drops; give explicit pads [0, …]"
                .into(),
        );
    }
    Ok((rank, window, ceil_mode))
}

/// Pools x of any spatial rank with the 2-D pooling `f`: a 1-D or 2-D window directly, a
/// 3-D one as two passes of it ([`spatial3d::pool3d`]).
fn pool_nd(
    x: &Var,
    rank: usize,
    window: &Window,
    f: impl Fn(&Var, Conv2d) -> crate::Result<Var>,
) -> Res<Var> {
    if rank == 3 {
        return spatial3d::pool3d(x, window, f);
    }
    let y = f(&to_2d(x)?, window.geometry()).map_err(err)?;
    from_2d(y, rank)
}

/// MaxPool, with its optional Indices output ([`argmax::max_pool_indices`])
/// in the order `storage_order` asks for (0 row major, 1 column major).
fn max_pool(env: &Env, node: &NodeProto) -> OpResult {
    let order = match attr_int(node, "storage_order", 0) {
        0 => false,
        1 => true,
        o => return Err(format!("storage_order {o} must be 0 or 1")),
    };
    let x = input(env, node, 0)?;
    let (rank, window, ceil) = pool_window(node, &x)?;
    let y = pool_nd(&x, rank, &window, |v, g| v.max_pool2d_with(g, ceil))?;
    if node.output.get(1).is_none_or(|o| o.is_empty()) {
        return one(y);
    }
    let indices = argmax::max_pool_indices(&x, &y, rank, &window, order)?;
    Ok(vec![y.into(), indices.into()])
}

/// AveragePool: `count_include_pad` 0 (the default) divides each window by its real
/// elements, 1 by its taps inside the padded input.
fn avg_pool(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (rank, window, ceil) = pool_window(node, &x)?;
    let include = match attr_int(node, "count_include_pad", 0) {
        0 => false,
        1 => true,
        c => return Err(format!("count_include_pad {c} must be 0 or 1")),
    };
    one(pool_nd(&x, rank, &window, |v, g| {
        v.avg_pool2d_with(g, ceil, include)
    })?)
}

/// LpPool (opsets 2, 11, 18, 22): `(Σ_window |x|^p)^(1/p)`, padding counting as zeros: the
/// include-pad average of `|x|^p` times the window's taps. `ceil_mode` 1 is refused (its
/// partial windows have fewer taps).
fn lp_pool(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (rank, window, ceil) = pool_window(node, &x)?;
    if ceil {
        return Err("ceil_mode 1 is not supported".into());
    }
    let p = attr_int(node, "p", 2);
    if p < 1 {
        return Err(format!("p = {p} must be >= 1"));
    }
    let p = p as f32;
    // Each kernel dim is below 2^32 and the window fits the input, so this is exact enough.
    let taps = window.kernel.iter().map(|&k| k as f32).product::<f32>();
    let powed = match p {
        1.0 => x.abs(),
        2.0 => x.square(),
        _ => x
            .abs()
            .and_then(|a| a.scalar(crate::BinaryOp::Pow, p, false)),
    }
    .map_err(err)?;
    let sum = pool_nd(&powed, rank, &window, |v, g| {
        v.avg_pool2d_with(g, false, true)
    })?
    .mul_scalar(taps)
    .map_err(err)?;
    one(match p {
        1.0 => Ok(sum),
        2.0 => sum.sqrt(),
        _ => sum.scalar(crate::BinaryOp::Pow, 1.0 / p, false),
    }
    .map_err(err)?)
}

/// GlobalAveragePool / GlobalMaxPool over every spatial dim of (N, C, …) (any spatial
/// rank): (N, C, 1, …).
fn global_pool(env: &Env, node: &NodeProto, op: ReduceOp) -> OpResult {
    let x = input(env, node, 0)?;
    let s = x.shape().to_vec();
    if s.len() < 3 {
        return Err(format!("input {s:?} must be (N, C, …) with a spatial dim"));
    }
    let mut out = vec![1; s.len()];
    out[..2].copy_from_slice(&s[..2]);
    let spatial = super::dims_product(&s[2..], &s)?;
    let y = x
        .reshape(&[s[0], s[1], spatial])
        .and_then(|f| f.reduce(op, 2, true))
        .and_then(|r| r.reshape(&out))
        .map_err(err)?;
    one(y)
}

/// Col2Im (opset 18): blocks `(N, C·∏block, L)` summed back into an image `(N, C,
/// image…)`, the adjoint of the patch extraction ([`Var::col2im`] on the transposed
/// blocks). 1-D, 2-D and 3-D images; `pads` are begins then ends, as for Conv.
fn col2im(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let dims = x.shape().to_vec();
    let &[n, cb, l] = dims.as_slice() else {
        return Err(format!("input {dims:?} must be (N, C·block, L)"));
    };
    let sizes = |i: usize, what: &str| -> Res<Vec<usize>> {
        let v = const_input(env, node, i)?.as_i64()?;
        v.iter()
            .map(|&d| {
                usize::try_from(d)
                    .ok()
                    .filter(|&d| d > 0 && d <= u32::MAX as usize)
                    .ok_or_else(|| format!("{what} {v:?} must be positive"))
            })
            .collect()
    };
    let (image, block) = (sizes(1, "image_shape")?, sizes(2, "block_shape")?);
    let r = image.len();
    if r != block.len() || !(1..=3).contains(&r) {
        return Err(format!(
            "image_shape {image:?} and block_shape {block:?} must both be 1-D, 2-D or 3-D"
        ));
    }
    let taps = block
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| format!("block_shape {block:?} multiplies past usize"))?;
    if cb % taps != 0 {
        return Err(format!(
            "dim 1 of input {dims:?} is not a multiple of the block's {taps} taps"
        ));
    }
    let strides = per_axis(node, "strides", r, 1, 1)?;
    let dilations = per_axis(node, "dilations", r, 1, 1)?;
    let (begins, ends) = explicit_pads(node, r)?;
    if r == 3 {
        let window = Window {
            kernel: block,
            strides,
            dilations,
            begins,
            ends,
        };
        return one(spatial3d::col2im3d(&x, &window, &image, cb / taps)?);
    }
    // A 1-D image is a 2-D one of height 1.
    let two = |v: &[usize], one: usize| if r == 1 { [one, v[0]] } else { [v[0], v[1]] };
    let [kh, kw] = two(&block, 1);
    let geom = Conv2d {
        kh,
        kw,
        strides: two(&strides, 1),
        pads: {
            let ([t, l0], [b, r0]) = (two(&begins, 0), two(&ends, 0));
            [t, l0, b, r0]
        },
        dilations: two(&dilations, 1),
        groups: 1,
    };
    let [h, w] = two(&image, 1);
    let img = [n, cb / taps, h, w];
    let want = geom.patches_shape("Col2Im", &img).map_err(err)?;
    if want[1] != l {
        return Err(format!(
            "input {dims:?} holds {l} blocks where image {image:?} has {} (block {block:?})",
            want[1]
        ));
    }
    let mut out = image.clone();
    out.splice(0..0, [n, cb / taps]);
    one(x
        .permute(&[0, 2, 1])
        .and_then(|p| p.col2im(geom, &img))
        .and_then(|y| y.reshape(&out))
        .map_err(err)?)
}
