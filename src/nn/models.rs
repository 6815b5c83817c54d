//! Ready-made networks that the examples train and `wgrad bench` times, defined once
//! so the figures measure the same model the example reports on.

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::init::Init;
use crate::ops::conv::Conv2d;

use super::{
    Activation, BatchNorm2d, Conv2dLayer, Dropout, Flatten, Linear, Module, Pool2d, Sequential,
};

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

/// A convolution without bias, then batch norm, then (optionally) ReLU: ResNet's unit.
struct ConvBn {
    weight: Var,
    geom: Conv2d,
    bn: BatchNorm2d,
    relu: bool,
    name: String,
}

impl ConvBn {
    fn new(
        g: &Graph,
        name: &str,
        io: (usize, usize),
        geom: Conv2d,
        relu: bool,
        seed: u64,
    ) -> ConvBn {
        let (inputs, outputs) = io;
        let weight = g.param(
            &format!("{name}.weight"),
            &[outputs, inputs, geom.kh, geom.kw],
            Init::KaimingNormal { seed },
        );
        let bn = BatchNorm2d::new(g, &format!("{name}.bn"), outputs, 1e-5);
        ConvBn {
            weight,
            geom,
            bn,
            relu,
            name: name.to_string(),
        }
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Var) -> Result<Var> {
        let y = self.bn.forward(&x.conv2d(&self.weight, self.geom)?)?;
        if self.relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    fn param_names(&self) -> Vec<String> {
        let mut names = vec![format!("{}.weight", self.name)];
        names.extend(self.bn.param_names());
        names
    }

    fn state_names(&self) -> Vec<String> {
        self.bn.state_names()
    }

    fn set_training(&self, training: bool) {
        self.bn.set_training(training);
    }
}

/// ResNet's bottleneck block: 1×1 (reduce) → 3×3 (stride here, as torchvision's v1.5) →
/// 1×1 (expand ×4), added to the input (or to its 1×1 strided projection), then ReLU.
struct Bottleneck {
    convs: Sequential,
    down: Option<ConvBn>,
}

impl Module for Bottleneck {
    fn forward(&self, x: &Var) -> Result<Var> {
        let identity = match &self.down {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        self.convs.forward(x)?.add(&identity)?.relu()
    }

    fn param_names(&self) -> Vec<String> {
        let mut names = self.convs.param_names();
        names.extend(self.down.iter().flat_map(|d| d.param_names()));
        names
    }

    fn state_names(&self) -> Vec<String> {
        let mut names = self.convs.state_names();
        names.extend(self.down.iter().flat_map(|d| d.state_names()));
        names
    }

    fn set_training(&self, training: bool) {
        self.convs.set_training(training);
        if let Some(d) = &self.down {
            d.set_training(training);
        }
    }
}

/// Global average pooling (N, C, H, W) → (N, C).
struct GlobalAvgPool;

impl Module for GlobalAvgPool {
    fn forward(&self, x: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        x.reshape(&[s[0], s[1], s[2] * s[3]])?.mean_axis(2, false)
    }
}

/// ResNet-50 (He et al. 2016, torchvision's v1.5 layout) for (N, 3, H, W) images, H and W
/// at least 32 (224 for its usual 7×7 final map): conv 7×7/2 (64) → BN → ReLU → max pool
/// 3×3/2 pad 1 → bottleneck stages of 3, 4, 6, 3 blocks (widths 64, 128, 256, 512, ×4
/// expansion) → global average pool → linear (2048 → `classes`). Convolutions have no bias;
/// weights are Kaiming-normal (random: for timing and memory figures, not accuracy).
/// Parameters are named `conv1.*`, `layer{1-4}.{block}.{a,b,c,down}.*`, `fc.*`.
pub fn resnet50(g: &Graph, classes: usize, training: bool) -> Result<Sequential> {
    let mut seed = 0u64;
    let mut next = || {
        seed += 1;
        seed
    };
    let mut layers: Vec<Box<dyn Module>> = vec![
        Box::new(ConvBn::new(
            g,
            "conv1",
            (3, 64),
            Conv2d::new(7, 7).stride(2).padding(3),
            true,
            next(),
        )),
        Box::new(Pool2d::max(Conv2d::new(3, 3).stride(2).padding(1))),
    ];
    let mut inputs = 64;
    for (stage, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for block in 0..blocks {
            let name = format!("layer{}.{block}", stage + 1);
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            let out = width * 4;
            let convs = Sequential::new(vec![
                Box::new(ConvBn::new(
                    g,
                    &format!("{name}.a"),
                    (inputs, width),
                    Conv2d::new(1, 1),
                    true,
                    next(),
                )),
                Box::new(ConvBn::new(
                    g,
                    &format!("{name}.b"),
                    (width, width),
                    Conv2d::new(3, 3).stride(stride).padding(1),
                    true,
                    next(),
                )),
                Box::new(ConvBn::new(
                    g,
                    &format!("{name}.c"),
                    (width, out),
                    Conv2d::new(1, 1),
                    false,
                    next(),
                )),
            ]);
            let down = (block == 0).then(|| {
                ConvBn::new(
                    g,
                    &format!("{name}.down"),
                    (inputs, out),
                    Conv2d::new(1, 1).stride(stride),
                    false,
                    next(),
                )
            });
            layers.push(Box::new(Bottleneck { convs, down }));
            inputs = out;
        }
    }
    layers.push(Box::new(GlobalAvgPool));
    layers.push(Box::new(Linear::new(g, "fc", 2048, classes, next())));
    let model = Sequential::new(layers);
    model.set_training(training);
    Ok(model)
}
