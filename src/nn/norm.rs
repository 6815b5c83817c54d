//! Normalisation layers: layer norm and batch norm (with running statistics kept as
//! graph state on the device).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::init::Init;

use super::{in_layer, Module};

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

/// Batch norm over (N, C, H, W) with a learned per-channel scale and shift.
///
/// Training mode normalises with the batch mean and biased variance and updates the
/// running statistics `{name}.running_mean` and `{name}.running_var` (shape (C), state
/// kept on the device and saved with the model) with PyTorch's recurrence:
/// `running ← (1 − momentum)·running + momentum·batch`, using the unbiased batch
/// variance (· n/(n − 1), n = N·H·W) for `running_var`. Evaluation mode normalises with
/// the running statistics.
pub struct BatchNorm2d {
    gamma: Var,
    beta: Var,
    running_mean: Var,
    running_var: Var,
    eps: f32,
    momentum: f32,
    training: AtomicBool,
    name: String,
    names: [String; 4],
}

impl BatchNorm2d {
    /// Parameters `{name}.gamma` and `{name}.beta` of shape (channels, 1, 1), running
    /// statistics (channels) starting at 0 and 1; momentum 0.1 as in PyTorch.
    pub fn new(g: &Graph, name: &str, channels: usize, eps: f32) -> BatchNorm2d {
        let names = ["gamma", "beta", "running_mean", "running_var"].map(|p| format!("{name}.{p}"));
        BatchNorm2d {
            gamma: g.param(&names[0], &[channels, 1, 1], Init::Ones),
            beta: g.param(&names[1], &[channels, 1, 1], Init::Zeros),
            running_mean: g.state(&names[2], &[channels], Init::Zeros),
            running_var: g.state(&names[3], &[channels], Init::Ones),
            eps,
            momentum: 0.1,
            training: AtomicBool::new(true),
            name: name.to_string(),
            names,
        }
    }

    /// The same layer with another momentum (weight of the newest batch, in [0, 1]).
    pub fn with_momentum(mut self, momentum: f32) -> BatchNorm2d {
        self.momentum = momentum;
        self
    }

    fn train_forward(&self, x: &Var) -> Result<Var> {
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::Invalid {
                op: "batch_norm",
                detail: format!("momentum must be in [0, 1], got {}", self.momentum),
            });
        }
        let c = self.running_mean.shape()[0];
        if x.shape().len() != 4 || x.shape()[1] != c {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: format!("expects (N, {c}, H, W), got {:?}", x.shape()),
            });
        }
        let count = x.shape()[0] * x.shape()[2] * x.shape()[3];
        if count < 2 {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: format!(
                    "training needs more than one value per channel, got input {:?}",
                    x.shape()
                ),
            });
        }
        // Primitives (crate::ops::batchnorm): statistics and normalisation forward (a ReLU
        // after it joins the normalisation), one sums pass and dx backward, one dispatch
        // for both running statistics (digits CNN step on lavapipe: 87 -> 39 dispatches).
        let (y, stats) = x.batch_norm_train(&self.gamma, &self.beta, self.eps)?;
        let m = self.momentum;
        let unbiased = count as f32 / (count - 1) as f32;
        let g = x.graph();
        let (new_mean, new_var) = stats.batch_norm_running(
            &self.running_mean,
            &self.running_var,
            1.0 - m,
            m,
            m * unbiased,
        )?;
        g.assign(&self.running_mean, &new_mean)?;
        g.assign(&self.running_var, &new_var)?;
        Ok(y)
    }
}

impl BatchNorm2d {
    /// `x·a + c` per channel with a = γ/√(running_var + eps) and c = β − running_mean·a:
    /// the form a product's epilogue (src/epilogue.rs) can take as a per-channel scale and
    /// shift; a and c are (C, 1, 1) values computed once per run.
    fn eval_forward(&self, x: &Var) -> Result<Var> {
        let c = self.running_mean.shape()[0];
        if x.shape().len() != 4 || x.shape()[1] != c {
            return Err(Error::Shape {
                op: "batch_norm",
                detail: format!("expects (N, {c}, H, W), got {:?}", x.shape()),
            });
        }
        let per_channel = [c, 1, 1];
        let a = self.gamma.div(
            &self
                .running_var
                .add_scalar(self.eps)?
                .sqrt()?
                .reshape(&per_channel)?,
        )?;
        let shift = self
            .beta
            .sub(&self.running_mean.reshape(&per_channel)?.mul(&a)?)?;
        x.mul(&a)?.add(&shift)
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        if self.training.load(Ordering::Relaxed) {
            self.train_forward(x)
        } else {
            self.eval_forward(x)
        }
        .map_err(|e| in_layer(&self.name, e))
    }

    fn param_names(&self) -> Vec<String> {
        self.names[..2].to_vec()
    }

    fn state_names(&self) -> Vec<String> {
        self.names[2..].to_vec()
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
