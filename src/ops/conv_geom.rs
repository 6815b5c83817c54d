//! The geometry of a 2-D convolution window ([`Conv2d`]: kernel size, strides, padding,
//! dilations, groups), its output size and patch shape, and the params words the GPU
//! kernels read from it. Below every file that convolves, pools or extracts patches
//! (conv, conv_gemm, conv_phase, im2col_window, winograd, depthwise, pool), which all take
//! it; `crate::ops::conv` re-exports it.

use crate::error::{Error, Result};

/// Geometry of a 2-D convolution window: per-axis strides and dilations, and padding on
/// each of the four sides (ONNX's `pads` with `auto_pad` SAME_UPPER can differ top and
/// bottom; a 1-D convolution seen as (N, C, 1, L) pads only left and right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Steps between windows: (rows, columns).
    pub strides: [usize; 2],
    /// Zeros added on each side: (top, left, bottom, right).
    pub pads: [usize; 4],
    /// Spacing between kernel taps: (rows, columns).
    pub dilations: [usize; 2],
    /// Channel groups of a convolution (1: dense; C: depthwise). Patch extraction
    /// (im2col, col2im, pooling) ignores it.
    pub groups: usize,
}

impl Conv2d {
    /// A kh×kw window with stride 1, no padding, no dilation.
    pub fn new(kh: usize, kw: usize) -> Conv2d {
        Conv2d {
            kh,
            kw,
            strides: [1, 1],
            pads: [0; 4],
            dilations: [1, 1],
            groups: 1,
        }
    }

    /// The same window with one stride in both directions.
    pub fn stride(self, stride: usize) -> Conv2d {
        self.strides(stride, stride)
    }

    /// The same window with a stride per direction (rows, columns).
    pub fn strides(self, sh: usize, sw: usize) -> Conv2d {
        Conv2d {
            strides: [sh, sw],
            ..self
        }
    }

    /// The same window with `padding` zeros on every side.
    pub fn padding(self, padding: usize) -> Conv2d {
        self.pads(padding, padding, padding, padding)
    }

    /// The same window with its own padding on each side.
    pub fn pads(self, top: usize, left: usize, bottom: usize, right: usize) -> Conv2d {
        Conv2d {
            pads: [top, left, bottom, right],
            ..self
        }
    }

    /// The same window with one dilation in both directions.
    pub fn dilation(self, dilation: usize) -> Conv2d {
        self.dilations(dilation, dilation)
    }

    /// The same window with a dilation per direction (rows, columns).
    pub fn dilations(self, dh: usize, dw: usize) -> Conv2d {
        Conv2d {
            dilations: [dh, dw],
            ..self
        }
    }

    /// The same window with `groups` channel groups (a convolution's filters then
    /// have C/groups input channels each).
    pub fn groups(self, groups: usize) -> Conv2d {
        Conv2d { groups, ..self }
    }

    /// A 1×1 window with stride 1 and no padding (dilation is moot): the convolution is a
    /// plain product over the channels, with no patch matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.strides == [1, 1] && self.pads == [0; 4]
    }

    /// The extent of the window along rows and columns: `dilation·(k - 1) + 1`, saturating
    /// at `usize::MAX` (wider than any padded input, so [`Conv2d::output_size`] refuses it).
    pub fn span(&self) -> [usize; 2] {
        let span = |d: usize, k: usize| d.saturating_mul(k.saturating_sub(1)).saturating_add(1);
        [
            span(self.dilations[0], self.kh),
            span(self.dilations[1], self.kw),
        ]
    }

    /// The padding for messages: `padding p` when every side has the same, else each side.
    pub fn padding_text(&self) -> String {
        let [t, l, b, r] = self.pads;
        if t == l && t == b && t == r {
            format!("padding {t}")
        } else {
            format!("pads (top {t}, left {l}, bottom {b}, right {r})")
        }
    }

    /// Output positions (OH, OW) for an input of shape (N, C, H, W), or the error naming `op`.
    pub fn output_size(&self, op: &'static str, x: &[usize]) -> Result<(usize, usize)> {
        let [_, _, h, w] = x else {
            return Err(Error::Shape {
                op,
                detail: format!("input must be (N, C, H, W), got {x:?}"),
            });
        };
        if self.kh == 0 || self.kw == 0 || self.strides.contains(&0) || self.dilations.contains(&0)
        {
            return Err(Error::Invalid {
                op,
                detail: format!("kernel, strides and dilations must be positive: {self:?}"),
            });
        }
        let [t, l, b, r] = self.pads;
        let [span_h, span_w] = self.span();
        let padded = |n: usize, p0: usize, p1: usize| n.checked_add(p0)?.checked_add(p1);
        let (Some(ph), Some(pw)) = (padded(*h, t, b), padded(*w, l, r)) else {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "input {x:?} with {} is larger than can be addressed",
                    self.padding_text()
                ),
            });
        };
        if span_h > ph || span_w > pw || span_h == usize::MAX || span_w == usize::MAX {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "kernel {}x{} (dilations {:?}) is larger than the padded input {ph}x{pw} of {x:?} ({})",
                    self.kh,
                    self.kw,
                    self.dilations,
                    self.padding_text()
                ),
            });
        }
        Ok((
            (ph - span_h) / self.strides[0] + 1,
            (pw - span_w) / self.strides[1] + 1,
        ))
    }

    /// The patch matrix shape (N, OH·OW, C·KH·KW) of an image `x` (N, C, H, W), its
    /// products checked: a huge padding or kernel is an error naming `op`, not a wrap.
    pub fn patches_shape(&self, op: &'static str, x: &[usize]) -> Result<[usize; 3]> {
        let (oh, ow) = self.output_size(op, x)?;
        let cols = oh.checked_mul(ow);
        let taps = x[1]
            .checked_mul(self.kh)
            .and_then(|t| t.checked_mul(self.kw));
        let shape = match (cols, taps) {
            (Some(cols), Some(taps)) => [x[0], cols, taps],
            _ => [x[0], usize::MAX, usize::MAX],
        };
        crate::shape::checked_numel(op, &shape).map_err(|_| Error::Shape {
            op,
            detail: format!(
                "the patches of {x:?} under a {}x{} window ({oh}x{ow} positions, {}) have more elements than can be addressed",
                self.kh,
                self.kw,
                self.padding_text()
            ),
        })?;
        Ok(shape)
    }

    /// The kernels' params: the shape, the window, the output positions and the element count.
    /// The kernels hold them in u32 and positions in the padded input in i32: a geometry past
    /// that (huge pads or strides with few windows) is an error naming `op`, not a wrap.
    pub(crate) fn params(
        &self,
        op: &'static str,
        x: &[usize],
        oh: usize,
        ow: usize,
        total: usize,
    ) -> Result<[u32; 15]> {
        let [t, l, b, r] = self.pads;
        let fits = |n: usize, p0: usize, p1: usize| {
            n.checked_add(p0)
                .and_then(|v| v.checked_add(p1))
                .is_some_and(|v| v <= i32::MAX as usize)
        };
        let v = [
            x[0],
            x[1],
            x[2],
            x[3],
            self.kh,
            self.kw,
            self.strides[0],
            self.strides[1],
            self.pads[0],
            self.pads[1],
            self.dilations[0],
            self.dilations[1],
            oh,
            ow,
            total,
        ];
        if !fits(x[2], t, b) || !fits(x[3], l, r) || v.iter().any(|&d| d > u32::MAX as usize) {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "input {x:?} under {self:?} is past the GPU kernels' 32-bit positions (padded size at most {})",
                    i32::MAX
                ),
            });
        }
        Ok(v.map(|d| d as u32))
    }
}
