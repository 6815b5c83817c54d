//! ONNX operators: the attention family (see `super`). RotaryEmbedding (opset 23) as a
//! composition of slices, products and concatenations, so gradients flow to the input (and
//! to the caches when they are graph values).

use super::super::{attr_int, err, input, value, Env, OpResult, Value};
use super::g;
use crate::onnx::proto::NodeProto;
use crate::{Device, Tensor, Var};

/// The cache rows at the positions (input 3): `cache` (max position, half) gathered to
/// (batch, seq, half). Constant positions are checked here.
fn at_positions(env: &Env, node: &NodeProto, cache: &Var) -> std::result::Result<Var, String> {
    let rows = cache.shape()[0] as i64;
    let ids = match value(env, node, 3)? {
        Value::Var(v) => v.clone(),
        Value::Const(c) => {
            let v = c.as_i64()?;
            if let Some(bad) = v.iter().find(|&&p| p < 0 || p >= rows) {
                return Err(format!(
                    "position id {bad} outside 0..{rows} (the caches are {:?})",
                    cache.shape()
                ));
            }
            let ints: Vec<i32> = v.iter().map(|&p| p as i32).collect();
            let t = Tensor::from_slice(&Device::cpu(), &ints, &c.dims).map_err(err)?;
            env.graph.constant_i32(&t).map_err(err)?
        }
    };
    g(|| cache.gather(&ids, 0))
}

/// RotaryEmbedding (opset 23): input (batch, heads, seq, size), or (batch, seq, hidden)
/// with `num_heads`; the first `rotary_embedding_dim` (default: all) features of each head
/// rotated by the cached cos / sin, in halves or interleaved pairs.
pub(in crate::onnx::ops) fn rotary_embedding(env: &Env, node: &NodeProto) -> OpResult {
    let x = input(env, node, 0)?;
    let (cos, sin) = (input(env, node, 1)?, input(env, node, 2)?);
    let shape = x.shape().to_vec();
    // (batch, seq, heads, size)
    let x4 = match shape.len() {
        4 => g(|| x.permute(&[0, 2, 1, 3]))?,
        3 => {
            let h = attr_int(node, "num_heads", 0);
            if h <= 0 || shape[2] % h as usize != 0 {
                return Err(format!(
                    "3-D input {shape:?} needs num_heads (got {h}) dividing its hidden size"
                ));
            }
            let h = h as usize;
            g(|| x.reshape(&[shape[0], shape[1], h, shape[2] / h]))?
        }
        _ => return Err(format!("input {shape:?} must be 3-D or 4-D")),
    };
    let [b, s, h, d] = <[usize; 4]>::try_from(x4.shape()).expect("4-D");
    let rd = match attr_int(node, "rotary_embedding_dim", 0) {
        0 => d,
        r if r > 0 && r as usize <= d && r % 2 == 0 => r as usize,
        r => {
            return Err(format!(
                "rotary_embedding_dim {r} must be even and at most the head size {d}"
            ))
        }
    };
    let half = rd / 2;
    let positions = node.input.get(3).is_some_and(|n| !n.is_empty());
    let mut caches = Vec::new();
    for (c, what) in [(&cos, "cos_cache"), (&sin, "sin_cache")] {
        let want_rank = if positions { 2 } else { 3 };
        if c.shape().len() != want_rank || c.shape()[want_rank - 1] != half {
            return Err(format!(
                "{what} {:?} must be {} with last dim rotary_embedding_dim/2 = {half}",
                c.shape(),
                if positions {
                    "(max position, half)"
                } else {
                    "(batch, seq, half)"
                }
            ));
        }
        let c = if positions {
            at_positions(env, node, c)?
        } else {
            c.clone()
        };
        if c.shape() != [b, s, half] {
            return Err(format!(
                "{what} at the positions is {:?}, expected (batch, seq, half) = {:?}",
                c.shape(),
                [b, s, half]
            ));
        }
        // One value per (batch, position, pair), shared by the heads.
        caches.push(g(|| c.reshape(&[b, s, 1, half]))?);
    }
    let (cos, sin) = (&caches[0], &caches[1]);
    let rot = g(|| x4.slice(-1, 0, rd))?;
    let interleaved = attr_int(node, "interleaved", 0) != 0;
    let (x1, x2) = if interleaved {
        // Pairs (2i, 2i+1): view as (.., half, 2) and take each column.
        let pairs = g(|| rot.reshape(&[b, s, h, half, 2]))?;
        (
            g(|| pairs.slice(-1, 0, 1)?.reshape(&[b, s, h, half]))?,
            g(|| pairs.slice(-1, 1, 2)?.reshape(&[b, s, h, half]))?,
        )
    } else {
        (
            g(|| rot.slice(-1, 0, half))?,
            g(|| rot.slice(-1, half, rd))?,
        )
    };
    let real = g(|| cos.mul(&x1)?.sub(&sin.mul(&x2)?))?;
    let imag = g(|| sin.mul(&x1)?.add(&cos.mul(&x2)?))?;
    let rotated = if interleaved {
        let r = g(|| real.reshape(&[b, s, h, half, 1]))?;
        let i = g(|| imag.reshape(&[b, s, h, half, 1]))?;
        g(|| Var::concat(&[&r, &i], -1)?.reshape(&[b, s, h, rd]))?
    } else {
        g(|| Var::concat(&[&real, &imag], -1))?
    };
    let out = if rd < d {
        g(|| Var::concat(&[&rotated, &x4.slice(-1, rd, d)?], -1))?
    } else {
        rotated
    };
    let out = if shape.len() == 4 {
        g(|| out.permute(&[0, 2, 1, 3]))?
    } else {
        g(|| out.reshape(&shape))?
    };
    Ok(vec![Value::Var(out)])
}
