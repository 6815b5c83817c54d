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

mod functional;
mod io;
pub mod models;
mod norm;

pub use io::{load_params, save_params, save_params_with};
pub use norm::{BatchNorm2d, LayerNorm};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
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

    /// Names of the layer's non-trainable state (batch norm's running statistics),
    /// saved and loaded with the parameters.
    fn state_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Parameters then state: everything [`save_params`] should write to restore the model.
    fn saved_names(&self) -> Vec<String> {
        let mut names = self.param_names();
        names.extend(self.state_names());
        names
    }

    /// Training (the default) or evaluation mode for the forward passes recorded from
    /// now on: batch norm uses batch statistics and updates its running ones, or uses
    /// the running ones; dropout drops, or is the identity.
    fn set_training(&self, _training: bool) {}
}

/// Adds the layer's name to a shape or argument error raised while recording it.
fn in_layer(layer: &str, e: Error) -> Error {
    match e {
        Error::Shape { op, detail } => Error::Shape {
            op,
            detail: format!("layer {layer:?}: {detail}"),
        },
        Error::Invalid { op, detail } => Error::Invalid {
            op,
            detail: format!("layer {layer:?}: {detail}"),
        },
        other => other,
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

/// 2-D convolution (im2col + matmul) with Kaiming-initialised filters and a bias per
/// channel; `geom.groups` > 1 makes it a grouped (or, with groups = inputs, depthwise)
/// convolution.
pub struct Conv2dLayer {
    weight: Var,
    bias: Var,
    geom: Conv2d,
    inputs: usize,
    name: String,
    names: [String; 2],
}

impl Conv2dLayer {
    /// Filters `{name}.weight` (out, in/groups, kh, kw) and bias `{name}.bias` (out, 1, 1).
    /// Groups that do not divide `inputs` and `outputs` are reported by `forward`.
    pub fn new(
        g: &Graph,
        name: &str,
        inputs: usize,
        outputs: usize,
        geom: Conv2d,
        seed: u64,
    ) -> Conv2dLayer {
        let names = [format!("{name}.weight"), format!("{name}.bias")];
        let per_group = inputs / geom.groups.max(1);
        Conv2dLayer {
            weight: g.param(
                &names[0],
                &[outputs, per_group, geom.kh, geom.kw],
                Init::KaimingNormal { seed },
            ),
            bias: g.param(&names[1], &[outputs, 1, 1], Init::Zeros),
            geom,
            inputs,
            name: name.to_string(),
            names,
        }
    }
}

impl Module for Conv2dLayer {
    fn forward(&self, x: &Var) -> Result<Var> {
        if x.shape().get(1) != Some(&self.inputs) {
            return Err(Error::Shape {
                op: "conv2d",
                detail: format!(
                    "layer {:?} takes {} input channels, got input {:?}",
                    self.name,
                    self.inputs,
                    x.shape()
                ),
            });
        }
        // The bias (out, 1, 1) broadcasts over y (N, out, H, W).
        x.conv2d_bias(&self.weight, &self.bias, self.geom)
            .map_err(|e| in_layer(&self.name, e))
    }

    fn param_names(&self) -> Vec<String> {
        self.names.to_vec()
    }
}

/// Max or average pooling of (N, C, H, W) as a layer (see [`Var::max_pool2d_window`]
/// and [`Var::avg_pool2d_window`]; average pooling counts padding, like PyTorch's default).
pub struct Pool2d {
    window: Conv2d,
    max: bool,
}

impl Pool2d {
    /// Max pooling over `window` (kernel, stride, padding, dilation).
    pub fn max(window: Conv2d) -> Pool2d {
        Pool2d { window, max: true }
    }

    /// Average pooling over `window`.
    pub fn avg(window: Conv2d) -> Pool2d {
        Pool2d { window, max: false }
    }
}

impl Module for Pool2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        if self.max {
            x.max_pool2d_window(self.window)
        } else {
            x.avg_pool2d_window(self.window)
        }
    }
}

/// Inverted dropout (see [`Var::dropout`]) in training mode, the identity in evaluation
/// mode. Each run of a compiled step draws a new mask from the seed and a step counter
/// `{name}.step` kept on the device.
pub struct Dropout {
    p: f32,
    seed: u64,
    name: String,
    graph: Graph,
    step: OnceLock<Var>,
    training: AtomicBool,
}

impl Dropout {
    /// Dropout with probability `p` in [0, 1) (otherwise an error naming the layer).
    pub fn new(g: &Graph, name: &str, p: f32, seed: u64) -> Result<Dropout> {
        crate::ops::dropout::check_dropout(p, &[1]).map_err(|e| in_layer(name, e))?;
        Ok(Dropout {
            p,
            seed,
            name: name.to_string(),
            graph: g.clone(),
            step: OnceLock::new(),
            training: AtomicBool::new(true),
        })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Var) -> Result<Var> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        // One counter per layer, made by the first training-mode forward pass.
        let step = match self.step.get() {
            Some(s) => s.clone(),
            None => {
                let s = self.graph.step_counter(&format!("{}.step", self.name))?;
                self.step.get_or_init(|| s).clone()
            }
        };
        x.dropout(self.p, self.seed, &step)
            .map_err(|e| in_layer(&self.name, e))
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
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

    fn state_names(&self) -> Vec<String> {
        self.layers.iter().flat_map(|l| l.state_names()).collect()
    }

    fn set_training(&self, training: bool) {
        for l in &self.layers {
            l.set_training(training);
        }
    }
}
