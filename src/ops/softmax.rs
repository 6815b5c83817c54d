//! softmax — being written.

use crate::gpu::Kernel;

pub(crate) const SHADER: Kernel = Kernel {
    name: "softmax",
    source: include_str!("../../shaders/softmax.wgsl"),
};
