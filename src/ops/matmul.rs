//! matmul — being written.

use crate::gpu::Kernel;

pub(crate) const SHADER: Kernel = Kernel {
    name: "matmul",
    source: include_str!("../../shaders/matmul.wgsl"),
};
