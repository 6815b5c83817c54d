//! Layers as graph builders: each layer owns named parameters in a [`Graph`]
//! and records its forward pass with [`Var`] ops, so autodiff, the executor and
//! safetensors I/O (parameters by name) work on whole models.
//!
//! ```
//! use wgrad::nn::{Activation, Conv2dLayer, Linear, Module, Sequential, Flatten};
//! use wgrad::{Conv2d, Graph};
//! # fn main() -> wgrad::Result<()> {
//! let g = Graph::new();
//! let model = Sequential::new(vec![
//!     Box::new(Conv2dLayer::new(&g, "c1", 1, 8, Conv2d::new(3, 3).padding(1), 1)),
//!     Box::new(Activation::Relu),
//!     Box::new(Flatten),
//!     Box::new(Linear::new(&g, "fc", 8 * 8 * 8, 10, 2)),
//! ]);
//! let logits = model.forward(&g.input("x", &[4, 1, 8, 8]))?;
//! assert_eq!(logits.shape(), &[4, 10]);
//! assert_eq!(model.param_names(), ["c1.weight", "c1.bias", "fc.weight", "fc.bias"]);
//! # Ok(()) }
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::graph::{Graph, Var};
use crate::init::Init;
use crate::ops::conv::Conv2d;
use crate::ops::elementwise::UnaryOp;

/// A layer: a forward pass recorded into the graph its parameters live in.
pub trait Module: Send + Sync {
    /// Records the layer applied to `x` and returns its output.
    fn forward(&self, x: &Var) -> Result<Var>;

    /// Names of the layer's parameters, in a fixed order.
    fn param_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// `x·W + b` with W (in, out) Xavier-initialised and b zeros.
pub struct Linear {
    weight: Var,
    bias: Var,
    names: [String; 2],
}

impl Linear {
    /// A linear layer with parameters `{name}.weight` and `{name}.bias`.
    pub fn new(g: &Graph, name: &str, inputs: usize, outputs: usize, seed: u64) -> Linear {
        let names = [format!("{name}.weight"), format!("{name}.bias")];
        Linear {
            weight: g.param(&names[0], &[inputs, outputs], Init::XavierUniform { seed }),
            bias: g.param(&names[1], &[outputs], Init::Zeros),
            names,
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.matmul(&self.weight)?.add(&self.bias)
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// 2-D convolution (im2col + matmul) with Kaiming-initialised filters and a bias per channel.
pub struct Conv2dLayer {
    weight: Var,
    bias: Var,
    geom: Conv2d,
    names: [String; 2],
}

impl Conv2dLayer {
    /// Filters `{name}.weight` (out, in, kh, kw) and bias `{name}.bias` (out, 1, 1).
    pub fn new(
        g: &Graph,
        name: &str,
        inputs: usize,
        outputs: usize,
        geom: Conv2d,
        seed: u64,
    ) -> Conv2dLayer {
        let names = [format!("{name}.weight"), format!("{name}.bias")];
        Conv2dLayer {
            weight: g.param(
                &names[0],
                &[outputs, inputs, geom.kh, geom.kw],
                Init::KaimingNormal { seed },
            ),
            bias: g.param(&names[1], &[outputs, 1, 1], Init::Zeros),
            geom,
            names,
        }
    }
}

impl Module for Conv2dLayer {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.conv2d(&self.weight, self.geom)?.add(&self.bias)
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// Layer norm over the last axis with a learned scale (ones) and shift (zeros).
pub struct LayerNorm {
    gamma: Var,
    beta: Var,
    eps: f32,
    names: [String; 2],
}

impl LayerNorm {
    /// Parameters `{name}.gamma` and `{name}.beta` of size `features`.
    pub fn new(g: &Graph, name: &str, features: usize, eps: f32) -> LayerNorm {
        let names = [format!("{name}.gamma"), format!("{name}.beta")];
        LayerNorm {
            gamma: g.param(&names[0], &[features], Init::Ones),
            beta: g.param(&names[1], &[features], Init::Zeros),
            eps,
            names,
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.layer_norm(self.eps)?.mul(&self.gamma)?.add(&self.beta)
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// Batch norm over (N, C, H, W) with batch statistics (training mode) and a learned
/// per-channel scale and shift.
pub struct BatchNorm2d {
    gamma: Var,
    beta: Var,
    eps: f32,
    names: [String; 2],
}

impl BatchNorm2d {
    /// Parameters `{name}.gamma` and `{name}.beta` of shape (channels, 1, 1).
    pub fn new(g: &Graph, name: &str, channels: usize, eps: f32) -> BatchNorm2d {
        let names = [format!("{name}.gamma"), format!("{name}.beta")];
        BatchNorm2d {
            gamma: g.param(&names[0], &[channels, 1, 1], Init::Ones),
            beta: g.param(&names[1], &[channels, 1, 1], Init::Zeros),
            eps,
            names,
        }
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.batch_norm(self.eps)?.0.mul(&self.gamma)?.add(&self.beta)
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// Multi-head self-attention over (B, T, D) with four (D, D) projections.
pub struct MultiHeadAttention {
    w: [Var; 4],
    heads: usize,
    causal: bool,
    names: [String; 4],
}

impl MultiHeadAttention {
    /// Projections `{name}.q`, `{name}.k`, `{name}.v`, `{name}.o`.
    pub fn new(
        g: &Graph,
        name: &str,
        d: usize,
        heads: usize,
        causal: bool,
        seed: u64,
    ) -> MultiHeadAttention {
        let names = ["q", "k", "v", "o"].map(|p| format!("{name}.{p}"));
        let w = [0, 1, 2, 3].map(|i| {
            g.param(
                &names[i],
                &[d, d],
                Init::XavierUniform {
                    seed: seed + i as u64,
                },
            )
        });
        MultiHeadAttention {
            w,
            heads,
            causal,
            names,
        }
    }
}

impl Module for MultiHeadAttention {
    fn forward(&self, x: &Var) -> Result<Var> {
        let [q, k, v, o] = &self.w;
        x.multi_head_attention(q, k, v, o, self.heads, self.causal)
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// Element-wise activations as layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// GELU (erf form).
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

impl Module for Activation {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.unary(match self {
            Activation::Relu => UnaryOp::Relu,
            Activation::Gelu => UnaryOp::Gelu,
            Activation::Tanh => UnaryOp::Tanh,
            Activation::Sigmoid => UnaryOp::Sigmoid,
        })
    }
}

/// Flattens (N, …) to (N, rest).
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Var) -> Result<Var> {
        let Some((&n, rest)) = x.shape().split_first() else {
            return Err(Error::Shape {
                op: "flatten",
                detail: "needs rank >= 1, got a scalar".into(),
            });
        };
        x.reshape(&[n, rest.iter().product()])
    }
}

/// Layers applied one after another.
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// The layers, in order.
    pub fn new(layers: Vec<Box<dyn Module>>) -> Sequential {
        Sequential { layers }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.layers
            .iter()
            .try_fold(x.clone(), |h, layer| layer.forward(&h))
    }

    fn param_names(&self) -> Vec<String> {
        self.layers.iter().flat_map(|l| l.param_names()).collect()
    }
}

/// Saves the named parameters of a compiled model as safetensors.
pub fn save_params(exe: &Executor, names: &[String], path: impl AsRef<Path>) -> Result<()> {
    let values: Vec<(&str, crate::Tensor)> = names
        .iter()
        .map(|n| Ok((n.as_str(), exe.param(n)?)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &crate::Tensor)> = values.iter().map(|(n, t)| (*n, t)).collect();
    crate::io::save_safetensors(path, &refs)
}

/// Loads parameters by name from a safetensors file into a compiled model; every
/// name in `names` must be present with the right shape.
pub fn load_params(exe: &Executor, names: &[String], path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let loaded = crate::io::load_safetensors(path, exe.device())?;
    for name in names {
        let (_, value) = loaded
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Invalid {
                op: "load_params",
                detail: format!("{}: no tensor named {name:?}", path.display()),
            })?;
        exe.set_param(name, value)?;
    }
    Ok(())
}
