//! reduce — being written.

use crate::gpu::Kernel;

pub(crate) const SHADER: Kernel = Kernel {
    name: "reduce",
    source: include_str!("../../shaders/reduce.wgsl"),
};
