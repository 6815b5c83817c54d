//! Channels-last (NHWC) patch extraction: the one layout-dependent kernel of an im2col
//! convolution, kept for the layout measurement of issue 15 (`wgrad bench --filter
//! conv_layout`). wgrad's tensors are NCHW (ONNX's layout); this op lets the bench time an
//! NHWC convolution (this im2col, then one product that writes NHWC for any batch) against
//! the NCHW one on the same shapes.
//!
//! Shape rule: x (N, H, W, C) with a KH×KW window gives patches (N, OH·OW, KH·KW·C), tap
//! major (kernel row, kernel column, then channel), OH and OW as for [`Conv2d`] on
//! (N, C, H, W). Padding reads as zeros; `groups` is ignored, as by [`Tensor::im2col`].
//! CPU reference: plain loops. GPU: `shaders/im2col_nhwc.wgsl`, one invocation per
//! (image, position, tap) copying that tap's run of C channels (vec4s when C % 4 == 0).
//! No gradient: the graph's convolutions stay NCHW.

use std::sync::OnceLock;

use crate::device::DeviceInner;
use crate::error::{Error, Result};
use crate::gpu::{Kernel, LOOP_BUDGET};
use crate::ops::conv::Conv2d;
use crate::ops::{gpu_output, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

/// The shader, specialised by element type: a binding has one element type, so the vec4
/// and the float variant are two modules built from one source.
fn kernel(vec4: bool) -> Kernel {
    static SOURCES: OnceLock<[String; 2]> = OnceLock::new();
    let [f32_src, vec4_src] = SOURCES.get_or_init(|| {
        let src = include_str!("../../shaders/im2col_nhwc.wgsl");
        let vec4 = src
            .replace("alias Elem = f32;", "alias Elem = vec4<f32>;")
            .replace("const WIDTH: u32 = 1u;", "const WIDTH: u32 = 4u;")
            .replace("fn im2col_nhwc(", "fn im2col_nhwc_vec4(");
        [src.to_string(), vec4]
    });
    if vec4 {
        Kernel {
            name: "im2col_nhwc_vec4",
            source: vec4_src,
        }
    } else {
        Kernel {
            name: "im2col_nhwc",
            source: f32_src,
        }
    }
}

/// CPU reference: patches (N, OH·OW, KH·KW·C) of a channels-last batch, in f64.
fn im2col_nhwc_reference(x: &[f64], nchw: &[usize], g: &Conv2d, oh: usize, ow: usize) -> Vec<f64> {
    let (n, c, h, w) = (nchw[0], nchw[1], nchw[2], nchw[3]);
    let row_len = g.kh * g.kw * c;
    let mut out = vec![0.0f64; n * oh * ow * row_len];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = (b * oh * ow + oy * ow + ox) * row_len;
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let iy =
                            (oy * g.strides[0] + ki * g.dilations[0]) as isize - g.pads[0] as isize;
                        let ix =
                            (ox * g.strides[1] + kj * g.dilations[1]) as isize - g.pads[1] as isize;
                        if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                            continue;
                        }
                        let from = ((b * h + iy as usize) * w + ix as usize) * c;
                        let to = row + (ki * g.kw + kj) * c;
                        out[to..to + c].copy_from_slice(&x[from..from + c]);
                    }
                }
            }
        }
    }
    out
}

impl Tensor {
    /// The patch matrix of a channels-last batch x (N, H, W, C): (N, OH·OW, KH·KW·C), each
    /// row tap-major (kernel row, kernel column, channel).
    pub fn im2col_nhwc(&self, geom: Conv2d) -> Result<Tensor> {
        let op = "im2col_nhwc";
        self.expect_f32(op)?;
        let &[n, h, w, c] = self.shape() else {
            return Err(Error::Shape {
                op,
                detail: format!("expected x (N, H, W, C), got {:?}", self.shape()),
            });
        };
        let nchw = [n, c, h, w];
        let (oh, ow) = geom.output_size(op, &nchw)?;
        let [_, l, ck] = geom.patches_shape(op, &nchw)?;
        let out_shape = [n, l, ck];
        match &self.device().inner {
            DeviceInner::Cpu => {
                let out = im2col_nhwc_reference(&self.host_f64(), &nchw, &geom, oh, ow);
                Ok(Tensor::cpu_from_f64(self.device(), &out_shape, out))
            }
            DeviceInner::Gpu(ctx) => {
                let vec4 = c % 4 == 0;
                let run = if vec4 { c / 4 } else { c };
                if run > LOOP_BUDGET {
                    return Err(Error::Invalid {
                        op,
                        detail: format!(
                            "x {:?}: {c} channels per tap is past the kernel's loop budget ({} {})",
                            self.shape(),
                            LOOP_BUDGET,
                            if vec4 { "vec4s" } else { "floats" }
                        ),
                    });
                }
                let total = n * l * geom.kh * geom.kw;
                let mut params = geom.params(op, &nchw, oh, ow, n * l * ck)?;
                params[14] = total as u32; // fits: at most the patch matrix's element count
                let out = gpu_output(ctx, self.device(), op, &out_shape, DType::F32)?;
                if out.numel() > 0 {
                    let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    let k = kernel(vec4);
                    ctx.dispatch(&k, k.name, &[], &params, &[x, o], grid_1d(ctx, total))?;
                }
                Ok(out)
            }
        }
    }
}
