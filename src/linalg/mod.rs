//! Linear algebra: norms, QR, eigen-decompositions, SVD, PCA — being written.

use crate::gpu::Kernel;

pub(crate) const SHADER: Kernel = Kernel {
    name: "linalg",
    source: include_str!("../../shaders/linalg.wgsl"),
};
