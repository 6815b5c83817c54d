//! layout — being written.

use crate::gpu::Kernel;

pub(crate) const SHADER: Kernel = Kernel {
    name: "layout",
    source: include_str!("../../shaders/layout.wgsl"),
};
