//! ONNX operators: see the family list in `super`. Attention (opsets 23-25) as a
//! composition of graph ops (matmul, softmax, selections), so gradients reach Q, K, V and
//! a float mask through the ordinary rules, and fine-tuning an imported transformer layer
//! needs no dedicated kernel. RotaryEmbedding (`attention/rotary.rs`) belongs to the
//! family too.
//!
//! Masks known at import (boolean masks, `is_causal`, the opset-25 window, the opset-24
//! `nonpad_kv_seqlen` padding, float mask initializers) are combined on the host into one
//! additive bias constant of 0 / -inf; only a float mask computed by the graph is added at
//! run time. Every value is f32: `softmax_precision` asks for at least the inputs'
//! precision, which f32 gives for FLOAT, FLOAT16 and BFLOAT16 (DOUBLE is computed in f32).

mod rotary;

use super::{
    attr_float, attr_int, err, input, opt_input, value, ConstData, Env, FoldFn, OpFn, OpResult,
    Value,
};
use crate::onnx::proto::NodeProto;
use crate::ops::elementwise::BinaryOp;
use crate::{Device, Tensor, Var};

/// This family's operators.
pub(super) const OPS: &[(&str, OpFn)] = &[
    ("Attention", attention),
    ("RotaryEmbedding", rotary::rotary_embedding),
];

/// This family's folds (none: the ops need graph values).
pub(super) const FOLDS: &[(&str, FoldFn)] = &[];

/// An integer attribute, `None` when absent.
fn attr_opt(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name() == name)
        .and_then(|a| a.i)
}

/// Runs a chain of graph ops, their error as the importer's message.
fn g(f: impl FnOnce() -> crate::Result<Var>) -> std::result::Result<Var, String> {
    f().map_err(err)
}

/// (batch, seq, heads·size) → (batch, heads, seq, size), the 3-D input layout.
fn split_heads(x: &Var, heads: i64, what: &str) -> std::result::Result<Var, String> {
    let s = x.shape();
    if heads <= 0 || s[2] % heads as usize != 0 {
        return Err(format!(
            "{what} {s:?}: hidden size {} is not a multiple of the head count {heads}",
            s[2]
        ));
    }
    let h = heads as usize;
    g(|| {
        x.reshape(&[s[0], s[1], h, s[2] / h])
            .and_then(|y| y.permute(&[0, 2, 1, 3]))
    })
}

/// An additive bias known at import, 4-D (batch or 1, heads or 1, q, total kv).
struct HostBias {
    dims: [usize; 4],
    data: Vec<f32>,
}

/// Right-aligns a mask's dims into 4 and checks they broadcast to `full` (the last dim may
/// be shorter than the total kv length: it is padded with -inf, as the spec says).
fn mask_dims(dims: &[usize], full: [usize; 4]) -> std::result::Result<[usize; 4], String> {
    let bad = || {
        format!(
            "attn_mask {dims:?} does not broadcast to (batch, q_num_heads, q_sequence_length, \
             total_sequence_length) = {full:?} (the last dim may be shorter, not longer)"
        )
    };
    if dims.is_empty() || dims.len() > 4 {
        return Err(bad());
    }
    let mut m = [1usize; 4];
    m[4 - dims.len()..].copy_from_slice(dims);
    let ok = (0..3).all(|d| m[d] == 1 || m[d] == full[d]) && m[3] >= 1 && m[3] <= full[3];
    if !ok {
        return Err(bad());
    }
    Ok(m)
}

/// What Attention reads besides Q, K, V, resolved against the shapes.
struct Masking {
    /// A float mask computed by the graph, padded to the total kv length.
    runtime: Option<Var>,
    /// Everything known at import, combined.
    host: Option<HostBias>,
}

/// Builds the mask terms: `full` is (batch, q heads, q len, total kv len); `past` the past
/// length (internal cache) or 0.
fn masking(
    env: &Env,
    node: &NodeProto,
    full: [usize; 4],
    past: usize,
) -> std::result::Result<Masking, String> {
    let [b, h, sq, t] = full;
    let causal = attr_int(node, "is_causal", 0) != 0;
    let left = attr_int(node, "left_window_size", -1);
    let right = attr_int(node, "right_window_size", -1);
    if left < -1 || right < -1 {
        return Err(format!(
            "left_window_size {left} / right_window_size {right}: each must be -1 or >= 0"
        ));
    }
    let window = left >= 0 || right >= 0;
    // nonpad_kv_seqlen (opset 24+): valid keys per batch entry, an external cache.
    let nonpad = match node.input.get(6).filter(|n| !n.is_empty()) {
        None => None,
        Some(name) => match value(env, node, 6)? {
            Value::Const(c) => {
                let v = c.as_i64()?;
                if c.dims != [b] {
                    return Err(format!(
                        "nonpad_kv_seqlen has dims {:?}, expected (batch_size,) = [{b}]",
                        c.dims
                    ));
                }
                Some(v)
            }
            Value::Var(_) => {
                return Err(format!(
                    "nonpad_kv_seqlen '{name}' must be known at import (the padding mask is \
                     built on the host)"
                ))
            }
        },
    };
    if nonpad.is_some() && past > 0 {
        return Err("nonpad_kv_seqlen cannot be combined with past_key / past_value".into());
    }
    // The causal / window frontier's offset per batch entry: the past length, or
    // nonpad - q_len for an external cache, else 0 (not clamped: a negative offset masks
    // whole leading rows, which come out as zeros).
    let offsets: Vec<i64> = match &nonpad {
        Some(n) => n.iter().map(|&n| n - sq as i64).collect(),
        None => vec![past as i64],
    };
    let mut runtime = None;
    let mut host_mask: Option<([usize; 4], Vec<f32>)> = None;
    if node.input.get(3).is_some_and(|n| !n.is_empty()) {
        match value(env, node, 3)? {
            Value::Var(m) => {
                let md = mask_dims(m.shape(), full)?;
                let mut m = m.clone();
                let short = t - md[3];
                if short > 0 {
                    let mut pad_shape = m.shape().to_vec();
                    *pad_shape.last_mut().expect("rank >= 1") = short;
                    let pad = env.graph.full(f32::NEG_INFINITY, &pad_shape);
                    m = g(|| Var::concat(&[&m, &pad], -1))?;
                }
                runtime = Some(m);
            }
            Value::Const(c) => {
                let md = mask_dims(&c.dims, full)?;
                // A boolean mask (read as 0/1 integers): true attends, false is -inf.
                let data = match &c.data {
                    ConstData::F32(v) => v.clone(),
                    ConstData::I64(v) => v
                        .iter()
                        .map(|&x| match x {
                            1 => Ok(0.0),
                            0 => Ok(f32::NEG_INFINITY),
                            _ => Err(format!(
                                "attn_mask holds {x}: an integer mask must be boolean (0/1)"
                            )),
                        })
                        .collect::<std::result::Result<Vec<f32>, String>>()?,
                };
                host_mask = Some((md, data));
            }
        }
    }
    if host_mask.is_none() && !causal && !window && nonpad.is_none() {
        return Ok(Masking {
            runtime,
            host: None,
        });
    }
    let per_batch = nonpad.is_some() || host_mask.as_ref().is_some_and(|(m, _)| m[0] == b);
    let per_head = host_mask.as_ref().is_some_and(|(m, _)| m[1] == h);
    let dims = [
        if per_batch { b } else { 1 },
        if per_head { h } else { 1 },
        sq,
        t,
    ];
    // Built on the host: bounded like every constant computed at import.
    let mut data = Vec::with_capacity(super::host_numel(&dims)?);
    for bi in 0..dims[0] {
        let off = offsets[if offsets.len() > 1 { bi } else { 0 }];
        for hi in 0..dims[1] {
            for i in 0..sq {
                for j in 0..t {
                    let mut x = 0.0f32;
                    if let Some((m, v)) = &host_mask {
                        x += if j < m[3] {
                            let at = |d: usize, k: usize| if m[d] == 1 { 0 } else { k };
                            let idx = ((at(0, bi) * m[1] + at(1, hi)) * m[2] + at(2, i)) * m[3] + j;
                            v[idx]
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                    // Position of the query among all keys minus the key's position.
                    let diff = i as i64 + off - j as i64;
                    let blocked = (causal && diff < 0)
                        || (left >= 0 && diff > left)
                        || (right >= 0 && -diff > right)
                        || nonpad.as_ref().is_some_and(|n| j as i64 >= n[bi]);
                    if blocked {
                        x = f32::NEG_INFINITY;
                    }
                    data.push(x);
                }
            }
        }
    }
    Ok(Masking {
        runtime,
        host: Some(HostBias { dims, data }),
    })
}

/// Attention (opsets 23, 24, 25): see the module comment. Outputs Y, present_key,
/// present_value, qk_matmul_output (as many as the node names).
fn attention(env: &Env, node: &NodeProto) -> OpResult {
    let (q, k, v) = (
        input(env, node, 0)?,
        input(env, node, 1)?,
        input(env, node, 2)?,
    );
    let rank = q.shape().len();
    if !(rank == 3 || rank == 4) || k.shape().len() != rank || v.shape().len() != rank {
        return Err(format!(
            "Q {:?}, K {:?}, V {:?}: expected all 3-D or all 4-D",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    let (qh_attr, kvh_attr) = (
        attr_opt(node, "q_num_heads"),
        attr_opt(node, "kv_num_heads"),
    );
    let (q4, k4, v4) = if rank == 3 {
        let (Some(qh), Some(kvh)) = (qh_attr, kvh_attr) else {
            return Err("3-D Q, K, V need both q_num_heads and kv_num_heads".into());
        };
        (
            split_heads(&q, qh, "Q")?,
            split_heads(&k, kvh, "K")?,
            split_heads(&v, kvh, "V")?,
        )
    } else {
        if env.opset >= 25 && (qh_attr.is_some() || kvh_attr.is_some()) {
            return Err("q_num_heads / kv_num_heads must not be set for 4-D inputs".into());
        }
        // Opsets 23-24 allow them; they must then agree with the shapes.
        for (a, x, what) in [(qh_attr, &q, "q_num_heads"), (kvh_attr, &k, "kv_num_heads")] {
            if a.is_some_and(|a| a != x.shape()[1] as i64) {
                return Err(format!(
                    "{what} {} disagrees with the 4-D input {:?}",
                    a.unwrap_or(0),
                    x.shape()
                ));
            }
        }
        (q, k, v)
    };
    let [b, qh, sq, dq] = <[usize; 4]>::try_from(q4.shape()).expect("4-D");
    let [kb, kvh, skv, dk] = <[usize; 4]>::try_from(k4.shape()).expect("4-D");
    let [vb, vh, svv, dv] = <[usize; 4]>::try_from(v4.shape()).expect("4-D");
    let shapes = || {
        format!(
            "Q {:?}, K {:?}, V {:?} (as (batch, heads, seq, head size): {:?}, {:?}, {:?})",
            q4.shape(),
            k4.shape(),
            v4.shape(),
            [b, qh, sq, dq],
            [kb, kvh, skv, dk],
            [vb, vh, svv, dv]
        )
    };
    if kb != b || vb != b || dk != dq || vh != kvh || svv != skv {
        return Err(format!(
            "{}: batch sizes, Q/K head sizes, K/V head counts and K/V lengths must agree",
            shapes()
        ));
    }
    if kvh == 0 || qh % kvh != 0 {
        return Err(format!(
            "{}: q heads {qh} are not a multiple of kv heads {kvh}",
            shapes()
        ));
    }
    // The internal cache: present = concat(past, new) along the sequence.
    let past_k = opt_input(env, node, 4)?;
    let past_v = opt_input(env, node, 5)?;
    let (present_k, present_v, past) = match (past_k, past_v) {
        (None, None) => (k4, v4, 0),
        (Some(pk), Some(pv)) => {
            let p = pk.shape().get(2).copied().unwrap_or(0);
            if pk.shape() != [b, kvh, p, dk] || pv.shape() != [b, kvh, p, dv] {
                return Err(format!(
                    "past_key {:?} / past_value {:?} must be (batch, kv heads, past length, \
                     head size) matching {}",
                    pk.shape(),
                    pv.shape(),
                    shapes()
                ));
            }
            (
                g(|| Var::concat(&[&pk, &k4], 2))?,
                g(|| Var::concat(&[&pv, &v4], 2))?,
                p,
            )
        }
        _ => return Err("past_key and past_value must be given together".into()),
    };
    let t = skv + past;
    let scale = match node.attribute.iter().find(|a| a.name() == "scale") {
        Some(_) => attr_float(node, "scale", 1.0),
        None => 1.0 / (dq as f32).sqrt(),
    };
    let mode = attr_int(node, "qk_matmul_output_mode", 0);
    if !(0..=3).contains(&mode) {
        return Err(format!("qk_matmul_output_mode {mode} is not 0..3"));
    }
    if let Some(p) = attr_opt(node, "softmax_precision") {
        // FLOAT, FLOAT16, DOUBLE, BFLOAT16: all computed in f32.
        if ![1, 10, 11, 16].contains(&p) {
            return Err(format!("softmax_precision {p} is not 1, 10, 11 or 16"));
        }
    }
    // Grouped heads: query head r·j + i reads kv head j, so Q viewed as (b, kv heads,
    // group·q len, size) meets K and V without repeating them.
    let group = qh / kvh;
    let qg = g(|| q4.mul_scalar(scale)?.reshape(&[b, kvh, group * sq, dq]))?;
    let raw = g(|| {
        qg.matmul_t(&present_k, false, true)?
            .reshape(&[b, qh, sq, t])
    })?;
    let softcap = attr_float(node, "softcap", 0.0);
    let capped = if softcap > 0.0 {
        g(|| raw.mul_scalar(1.0 / softcap)?.tanh()?.mul_scalar(softcap))?
    } else {
        raw.clone()
    };
    let m = masking(env, node, [b, qh, sq, t], past)?;
    let host = match &m.host {
        Some(hb) => Some(
            Tensor::from_slice(&Device::cpu(), &hb.data, &hb.dims)
                .and_then(|x| env.graph.constant(&x))
                .map_err(err)?,
        ),
        None => None,
    };
    let bias = match (&m.runtime, &host) {
        (Some(r), Some(h)) => Some(g(|| r.add(h))?),
        (Some(r), None) => Some(r.clone()),
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    };
    let scores = match &bias {
        Some(x) => g(|| capped.add(x))?,
        None => capped.clone(),
    };
    // Rows whose bias is -inf everywhere attend nothing and give zeros (not NaN). Decided
    // on the bias, as the spec does; on the host when it is all known there.
    let row_ok: Option<Var> = match (&m.runtime, &m.host) {
        (Some(_), _) => {
            let x = bias.as_ref().expect("runtime bias");
            Some(g(|| {
                x.scalar(BinaryOp::Gt, f32::NEG_INFINITY, false)?
                    .sum_axis(-1, true)
            })?)
        }
        (None, Some(hb)) => {
            let rows: Vec<f32> = hb
                .data
                .chunks(t)
                .map(|r| r.iter().any(|&x| x > f32::NEG_INFINITY) as u8 as f32)
                .collect();
            if rows.iter().all(|&r| r != 0.0) {
                None
            } else {
                let [d0, d1, d2, _] = hb.dims;
                Some(
                    Tensor::from_slice(&Device::cpu(), &rows, &[d0, d1, d2, 1])
                        .and_then(|x| env.graph.constant(&x))
                        .map_err(err)?,
                )
            }
        }
        (None, None) => None,
    };
    let probs = match &row_ok {
        // Masked rows are zeroed before the softmax (so it stays finite, and so do its
        // gradients) and after it.
        Some(ok) => g(|| {
            scores
                .binary(ok, BinaryOp::KeepWhere)?
                .softmax(-1)?
                .binary(ok, BinaryOp::KeepWhere)
        })?,
        None => g(|| scores.softmax(-1))?,
    };
    let y = g(|| {
        probs
            .reshape(&[b, kvh, group * sq, t])?
            .matmul(&present_v)?
            .reshape(&[b, qh, sq, dv])
    })?;
    let y = if rank == 3 {
        g(|| y.permute(&[0, 2, 1, 3])?.reshape(&[b, sq, qh * dv]))?
    } else {
        y
    };
    let wants = |i: usize| node.output.get(i).is_some_and(|n| !n.is_empty());
    // Each is (batch, q heads, q len, total kv len) already.
    let mut outs = vec![Value::Var(y)];
    if node.output.len() > 1 {
        outs.push(Value::Var(present_k));
    }
    if node.output.len() > 2 {
        outs.push(Value::Var(present_v));
    }
    if wants(3) {
        // 0: Q·Kᵀ scaled; 1: after softcap; 2: plus the mask; 3: the probabilities. Mode 0
        // is the raw product even with a softcap, as the spec and onnxruntime have it (onnx's
        // reference evaluator returns the capped value there; no vendored case tells).
        let qk = match mode {
            0 => raw,
            1 => capped,
            2 => scores,
            _ => probs,
        };
        outs.push(Value::Var(qk));
    }
    Ok(outs)
}
