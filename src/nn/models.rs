//! Ready-made networks that the examples train and `wgrad bench` times, defined once
//! so the figures measure the same model the example reports on.

use crate::error::Result;
use crate::graph::Graph;
use crate::ops::conv::Conv2d;

use super::{Activation, BatchNorm2d, Conv2dLayer, Dropout, Flatten, Linear, Module, Sequential};

/// The small CNN of `examples/digits.rs` for 8×8 grey images: conv 3×3 (1→16, pad 1) →
/// batch norm → ReLU → conv 3×3 (16→32, stride 2, pad 1) → batch norm → ReLU → flatten
/// (32·4·4) → dropout 0.2 → linear → 10 logits. Parameters and state are named
/// `conv1.*`, `bn1.*`, `conv2.*`, `bn2.*`, `fc.*`; `training` picks batch statistics and
/// dropout (true) or running statistics and no dropout (false).
///
/// ```
/// use wgrad::nn::{models::digits_cnn, Module};
/// # fn main() -> wgrad::Result<()> {
/// let g = wgrad::Graph::new();
/// let model = digits_cnn(&g, true)?;
/// let logits = model.forward(&g.input("x", &[4, 1, 8, 8]))?;
/// assert_eq!(logits.shape(), &[4, 10]);
/// # Ok(()) }
/// ```
pub fn digits_cnn(g: &Graph, training: bool) -> Result<Sequential> {
    let model = Sequential::new(vec![
        Box::new(Conv2dLayer::new(
            g,
            "conv1",
            1,
            16,
            Conv2d::new(3, 3).padding(1),
            1,
        )),
        Box::new(BatchNorm2d::new(g, "bn1", 16, 1e-5)),
        Box::new(Activation::Relu),
        Box::new(Conv2dLayer::new(
            g,
            "conv2",
            16,
            32,
            Conv2d::new(3, 3).stride(2).padding(1),
            2,
        )),
        Box::new(BatchNorm2d::new(g, "bn2", 32, 1e-5)),
        Box::new(Activation::Relu),
        Box::new(Flatten),
        Box::new(Dropout::new(g, "drop", 0.2, 4)?),
        Box::new(Linear::new(g, "fc", 32 * 4 * 4, 10, 3)),
    ]);
    model.set_training(training);
    Ok(model)
}
