//! ONNX recurrent layers: RNN, GRU and LSTM (opsets 7, 14, 22), unrolled at import over
//! the sequence (its length is a static dim) into ordinary differentiable ops, so they run,
//! fuse and fine-tune like any other graph:
//!
//! - the input projection `X·Wᵀ + Wb + Rb` for every step is one product up front;
//! - each step adds `H·Rᵀ` (one product), splits the gates with slices and applies the
//!   activations; forward, reverse and bidirectional runs share one step function;
//! - `sequence_lens` (constant or fed) masks with `select`: past a batch entry's length the
//!   state is carried unchanged and Y is 0 (onnxruntime's rule), and a reverse run starts
//!   at each entry's own last step.
//!
//! Gate orders are ONNX's: GRU `z r h`, LSTM `i o f c` (peepholes `i o f`). `clip` bounds
//! every gate's pre-activation; LSTM's `input_forget` couples `f = 1 − i`. Layout 1 is
//! batch-major (X (batch, seq, input), Y (batch, seq, dirs, hidden)). A long sequence makes
//! a graph of about 15 nodes per step and direction.

use super::{attr_float, attr_int, attr_string, err, input, value, Env, OpFn, OpResult, Value};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::BinaryOp as B;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("RNN", |e, n| recurrent(e, n, Cell::Rnn)),
    ("GRU", |e, n| recurrent(e, n, Cell::Gru)),
    ("LSTM", |e, n| recurrent(e, n, Cell::Lstm)),
];

type Res<T> = std::result::Result<T, String>;

#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Rnn,
    Gru,
    Lstm,
}

impl Cell {
    /// Gates stacked in W and R.
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }

    /// Activations per direction, and their defaults.
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// One activation of the `activations` attribute, with its alpha and beta.
#[derive(Clone, Debug)]
struct Act {
    name: String,
    alpha: f32,
    beta: f32,
}

impl Act {
    fn apply(&self, x: &Var) -> crate::Result<Var> {
        let (a, b) = (self.alpha, self.beta);
        match self.name.as_str() {
            "Sigmoid" => x.sigmoid(),
            "Tanh" => x.tanh(),
            "Relu" => x.relu(),
            // max(x, 0) + α·min(x, 0)
            "LeakyRelu" => x
                .relu()?
                .add(&x.scalar(B::Minimum, 0.0, false)?.mul_scalar(a)?),
            "HardSigmoid" => x
                .mul_scalar(a)?
                .add_scalar(b)?
                .scalar(B::Maximum, 0.0, false)?
                .scalar(B::Minimum, 1.0, false),
            "Affine" => x.mul_scalar(a)?.add_scalar(b),
            "ScaledTanh" => x.mul_scalar(b)?.tanh()?.mul_scalar(a),
            "Softsign" => x.div(&x.abs()?.add_scalar(1.0)?),
            _ => unreachable!("checked when the attributes are read"),
        }
    }

    /// The alpha and beta ONNX gives an activation that takes them, when the node leaves
    /// them out.
    fn defaults(name: &str) -> Option<(f32, f32)> {
        Some(match name {
            "Sigmoid" | "Tanh" | "Relu" | "Softsign" => (0.0, 0.0),
            "LeakyRelu" => (0.01, 0.0),
            "HardSigmoid" => (0.2, 0.5),
            "Affine" | "ScaledTanh" => (1.0, 1.0),
            _ => return None,
        })
    }
}

/// The node's activations for `dirs` directions (each direction its own list).
fn activations(node: &NodeProto, cell: Cell, dirs: usize) -> Res<Vec<Vec<Act>>> {
    let per = cell.default_activations().len();
    let attr = |name: &str| node.attribute.iter().find(|a| a.name() == name);
    let names: Vec<String> = match attr("activations") {
        Some(a) => a
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        None => (0..dirs)
            .flat_map(|_| cell.default_activations().iter().map(|s| s.to_string()))
            .collect(),
    };
    if names.len() != per * dirs {
        return Err(format!(
            "activations lists {} functions; {} directions need {}",
            names.len(),
            dirs,
            per * dirs
        ));
    }
    let alphas = attr("activation_alpha").map(|a| a.floats.clone());
    let betas = attr("activation_beta").map(|a| a.floats.clone());
    // Alphas and betas are listed only for the activations that take them, in order.
    let (mut ka, mut kb) = (0, 0);
    let mut out = Vec::new();
    for name in names {
        let (da, db) =
            Act::defaults(&name).ok_or_else(|| format!("activation '{name}' is not supported"))?;
        let takes_alpha = !matches!(name.as_str(), "Sigmoid" | "Tanh" | "Relu" | "Softsign");
        let takes_beta = matches!(name.as_str(), "HardSigmoid" | "Affine" | "ScaledTanh");
        let mut alpha = da;
        let mut beta = db;
        if takes_alpha {
            if let Some(v) = alphas.as_ref().and_then(|v| v.get(ka)) {
                alpha = *v;
            }
            ka += 1;
        }
        if takes_beta {
            if let Some(v) = betas.as_ref().and_then(|v| v.get(kb)) {
                beta = *v;
            }
            kb += 1;
        }
        out.push(Act { name, alpha, beta });
    }
    Ok(out.chunks(per).map(|c| c.to_vec()).collect())
}

/// An optional input's value (absent or named "").
fn opt_value<'a>(env: &'a Env, node: &NodeProto, i: usize) -> Res<Option<&'a Value>> {
    match node.input.get(i) {
        Some(n) if !n.is_empty() => value(env, node, i).map(Some),
        _ => Ok(None),
    }
}

/// A float input checked against the shape the layer needs.
fn shaped(env: &Env, node: &NodeProto, i: usize, what: &str, want: &[usize]) -> Res<Option<Var>> {
    if opt_value(env, node, i)?.is_none() {
        return Ok(None);
    }
    let v = input(env, node, i)?;
    if v.shape() != want {
        return Err(format!("{what} {:?} must be {want:?}", v.shape()));
    }
    Ok(Some(v))
}

/// Per step t, the (batch, 1) mask `t < sequence_lens[b]`, or None when every entry runs the
/// whole sequence.
fn step_masks(env: &Env, node: &NodeProto, seq: usize, batch: usize) -> Res<Option<Vec<Var>>> {
    let Some(v) = opt_value(env, node, 4)? else {
        return Ok(None);
    };
    let lens: Var = match v {
        Value::Const(c) => {
            let l = c.as_i64()?;
            if c.dims != [batch] {
                return Err(format!("sequence_lens {:?} must be [{batch}]", c.dims));
            }
            if let Some(bad) = l.iter().find(|&&x| x < 0 || x as usize > seq) {
                return Err(format!("sequence_lens holds {bad}, outside 0..={seq}"));
            }
            if l.iter().all(|&x| x as usize == seq) {
                return Ok(None);
            }
            let f: Vec<f32> = l.iter().map(|&x| x as f32).collect();
            let t = Tensor::from_slice(&Device::cpu(), &f, &[batch, 1]).map_err(err)?;
            env.graph.constant(&t).map_err(err)?
        }
        Value::Var(v) => {
            if v.shape() != [batch] {
                return Err(format!("sequence_lens {:?} must be [{batch}]", v.shape()));
            }
            v.reshape(&[batch, 1]).map_err(err)?
        }
    };
    (0..seq)
        .map(|t| lens.scalar(B::Gt, t as f32, false).map_err(err))
        .collect::<Res<Vec<_>>>()
        .map(Some)
}

/// What one direction's run needs.
struct Direction<'a> {
    cell: Cell,
    hidden: usize,
    acts: &'a [Act],
    clip: Option<f32>,
    linear_before_reset: bool,
    input_forget: bool,
}

/// One direction's weights: W (G·hidden, input), R (G·hidden, hidden), the summed biases
/// split as (input side, recurrent side), peepholes (3·hidden), initial h and c.
struct Weights {
    w: Var,
    r: Var,
    wb: Option<Var>,
    rb: Option<Var>,
    p: Option<Var>,
    h0: Var,
    c0: Var,
}

impl Direction<'_> {
    fn clip(&self, x: Var) -> crate::Result<Var> {
        match self.clip {
            Some(c) => x
                .scalar(B::Maximum, -c, false)?
                .scalar(B::Minimum, c, false),
            None => Ok(x),
        }
    }

    fn act(&self, k: usize, x: Var) -> crate::Result<Var> {
        self.acts[k].apply(&self.clip(x)?)
    }

    /// Runs the sequence `xs` (seq, batch, input) in the given order: Y per step (in
    /// sequence order) and the last h and c.
    fn run(
        &self,
        xs: &Var,
        wt: &Weights,
        masks: Option<&[Var]>,
        reverse: bool,
    ) -> crate::Result<(Vec<Var>, Var, Var)> {
        let (seq, batch, input) = (xs.shape()[0], xs.shape()[1], xs.shape()[2]);
        let (n, g) = (self.hidden, self.cell.gates());
        // Every step's input projection at once: (seq·batch, input) · Wᵀ.
        let mut proj = xs
            .reshape(&[seq * batch, input])?
            .matmul_t(&wt.w, false, true)?;
        // GRU with linear_before_reset keeps h's recurrent bias inside the reset product.
        let gru_lbr = self.cell == Cell::Gru && self.linear_before_reset;
        if let Some(wb) = &wt.wb {
            proj = proj.add(wb)?;
        }
        if let Some(rb) = &wt.rb {
            proj = if gru_lbr {
                // z and r take Rb here; h's Rb goes inside r ⊙ (...).
                proj.add(&Var::concat(
                    &[&rb.slice(0, 0, 2 * n)?, &rb.graph().full(0.0, &[n])],
                    0,
                )?)?
            } else {
                proj.add(rb)?
            };
        }
        let proj = proj.reshape(&[seq, batch, g * n])?;
        let gate = |v: &Var, k: usize| v.slice(1, k * n, (k + 1) * n);
        let (mut h, mut c) = (wt.h0.clone(), wt.c0.clone());
        let mut ys: Vec<Option<Var>> = vec![None; seq];
        for step in 0..seq {
            let t = if reverse { seq - 1 - step } else { step };
            let x_t = proj.slice(0, t, t + 1)?.reshape(&[batch, g * n])?;
            let (h_new, c_new) = match self.cell {
                Cell::Rnn => (
                    self.act(0, x_t.add(&h.matmul_t(&wt.r, false, true)?)?)?,
                    None,
                ),
                Cell::Gru => {
                    // z, r from one product with R's first 2n rows; h's from its own.
                    let r_zr = wt.r.slice(0, 0, 2 * n)?;
                    let r_h = wt.r.slice(0, 2 * n, 3 * n)?;
                    let zr = x_t
                        .slice(1, 0, 2 * n)?
                        .add(&h.matmul_t(&r_zr, false, true)?)?;
                    let z = self.act(0, gate(&zr, 0)?)?;
                    let r = self.act(0, gate(&zr, 1)?)?;
                    let xh = gate(&x_t, 2)?;
                    let pre = if gru_lbr {
                        let mut hr = h.matmul_t(&r_h, false, true)?;
                        if let Some(rb) = &wt.rb {
                            hr = hr.add(&rb.slice(0, 2 * n, 3 * n)?)?;
                        }
                        xh.add(&r.mul(&hr)?)?
                    } else {
                        xh.add(&r.mul(&h)?.matmul_t(&r_h, false, true)?)?
                    };
                    let hh = self.act(1, pre)?;
                    // (1 − z)·ĥ + z·h = ĥ + z·(h − ĥ)
                    (hh.add(&z.mul(&h.sub(&hh)?)?)?, None)
                }
                Cell::Lstm => {
                    let pre = x_t.add(&h.matmul_t(&wt.r, false, true)?)?;
                    let peep = |k: usize, c: &Var| -> crate::Result<Option<Var>> {
                        match &wt.p {
                            Some(p) => Ok(Some(p.slice(0, k * n, (k + 1) * n)?.mul(c)?)),
                            None => Ok(None),
                        }
                    };
                    let with = |x: Var, p: Option<Var>| match p {
                        Some(p) => x.add(&p),
                        None => Ok(x),
                    };
                    let i = self.act(0, with(gate(&pre, 0)?, peep(0, &c)?)?)?;
                    let f = if self.input_forget {
                        i.scalar(B::Sub, 1.0, true)?
                    } else {
                        self.act(0, with(gate(&pre, 2)?, peep(2, &c)?)?)?
                    };
                    let cc = self.act(1, gate(&pre, 3)?)?;
                    let c_next = f.mul(&c)?.add(&i.mul(&cc)?)?;
                    let o = self.act(0, with(gate(&pre, 1)?, peep(1, &c_next)?)?)?;
                    let h_next = o.mul(&self.acts[2].apply(&c_next)?)?;
                    (h_next, Some(c_next))
                }
            };
            match masks {
                Some(m) => {
                    let m = &m[t];
                    ys[t] = Some(h_new.binary(m, B::KeepWhere)?);
                    h = m.select(&h_new, &h)?;
                    if let Some(cn) = c_new {
                        c = m.select(&cn, &c)?;
                    }
                }
                None => {
                    ys[t] = Some(h_new.clone());
                    h = h_new;
                    if let Some(cn) = c_new {
                        c = cn;
                    }
                }
            }
        }
        Ok((ys.into_iter().flatten().collect(), h, c))
    }
}

/// RNN, GRU and LSTM: see the module comment. Outputs Y, Y_h (and LSTM's Y_c).
fn recurrent(env: &Env, node: &NodeProto, cell: Cell) -> OpResult {
    let layout = attr_int(node, "layout", 0);
    if !(0..=1).contains(&layout) {
        return Err(format!("layout {layout} is not 0 or 1"));
    }
    let x = input(env, node, 0)?;
    let &[d0, d1, input_size] = x.shape() else {
        return Err(format!("X {:?} must have rank 3", x.shape()));
    };
    let (seq, batch) = if layout == 1 { (d1, d0) } else { (d0, d1) };
    let direction = attr_string(node, "direction").unwrap_or_else(|| "forward".into());
    let dirs = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        d => {
            return Err(format!(
                "direction '{d}' is not forward, reverse or bidirectional"
            ))
        }
    };
    let g = cell.gates();
    let w_all = input(env, node, 1)?;
    let n = match attr_int(node, "hidden_size", 0) {
        h if h > 0 => h as usize,
        _ => w_all.shape().get(1).copied().unwrap_or(0) / g,
    };
    if w_all.shape() != [dirs, g * n, input_size] {
        return Err(format!(
            "W {:?} must be {:?}",
            w_all.shape(),
            [dirs, g * n, input_size]
        ));
    }
    if seq == 0 || batch == 0 || n == 0 {
        return Err(format!(
            "X {:?} and hidden size {n} must be non-empty",
            x.shape()
        ));
    }
    let r_all = shaped(env, node, 2, "R", &[dirs, g * n, n])?.ok_or("missing input 2 (R)")?;
    let b_all = shaped(env, node, 3, "B", &[dirs, 2 * g * n])?;
    let masks = step_masks(env, node, seq, batch)?;
    let h0_all = shaped(env, node, 5, "initial_h", &[dirs, batch, n])?;
    let (c0_all, p_all) = if cell == Cell::Lstm {
        (
            shaped(env, node, 6, "initial_c", &[dirs, batch, n])?,
            shaped(env, node, 7, "P", &[dirs, 3 * n])?,
        )
    } else {
        (None, None)
    };
    let acts = activations(node, cell, dirs)?;
    let clip = match node.attribute.iter().any(|a| a.name() == "clip") {
        true => Some(attr_float(node, "clip", 0.0)),
        false => None,
    };
    let build = || -> crate::Result<Vec<Var>> {
        let xs = if layout == 1 {
            x.permute(&[1, 0, 2])?
        } else {
            x.clone()
        };
        let pick = |v: &Var, d: usize| -> crate::Result<Var> {
            let s = v.shape()[1..].to_vec();
            v.slice(0, d, d + 1)?.reshape(&s)
        };
        let zeros = env.graph.full(0.0, &[batch, n]);
        let (mut ys, mut hs, mut cs) = (Vec::new(), Vec::new(), Vec::new());
        for (d, dir_acts) in acts.iter().enumerate() {
            let b = b_all.as_ref().map(|b| pick(b, d)).transpose()?;
            let wt = Weights {
                w: pick(&w_all, d)?,
                r: pick(&r_all, d)?,
                wb: b.as_ref().map(|b| b.slice(0, 0, g * n)).transpose()?,
                rb: b
                    .as_ref()
                    .map(|b| b.slice(0, g * n, 2 * g * n))
                    .transpose()?,
                p: p_all.as_ref().map(|p| pick(p, d)).transpose()?,
                h0: h0_all.as_ref().map_or(Ok(zeros.clone()), |h| pick(h, d))?,
                c0: c0_all.as_ref().map_or(Ok(zeros.clone()), |c| pick(c, d))?,
            };
            let run = Direction {
                cell,
                hidden: n,
                acts: dir_acts,
                clip,
                linear_before_reset: attr_int(node, "linear_before_reset", 0) != 0,
                input_forget: attr_int(node, "input_forget", 0) != 0,
            };
            let reverse = direction == "reverse" || d == 1;
            let (y, h, c) = run.run(&xs, &wt, masks.as_deref(), reverse)?;
            // (seq, 1, batch, n) for this direction.
            let steps: Vec<Var> = y
                .iter()
                .map(|v| v.reshape(&[1, 1, batch, n]))
                .collect::<crate::Result<_>>()?;
            ys.push(Var::concat(&steps.iter().collect::<Vec<_>>(), 0)?);
            hs.push(h.reshape(&[1, batch, n])?);
            cs.push(c.reshape(&[1, batch, n])?);
        }
        let cat = |v: &[Var], axis: isize| Var::concat(&v.iter().collect::<Vec<_>>(), axis);
        let (mut y, mut h, mut c) = (cat(&ys, 1)?, cat(&hs, 0)?, cat(&cs, 0)?);
        if layout == 1 {
            y = y.permute(&[2, 0, 1, 3])?;
            h = h.permute(&[1, 0, 2])?;
            c = c.permute(&[1, 0, 2])?;
        }
        let mut out = vec![y, h];
        if cell == Cell::Lstm {
            out.push(c);
        }
        Ok(out)
    };
    let mut outs = build().map_err(err)?;
    outs.truncate(node.output.len().max(1));
    Ok(outs.into_iter().map(Value::Var).collect())
}
