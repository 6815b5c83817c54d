//! Load-bound kernels that read their source through a texture where products do.
//!
//! On lavapipe (Mesa 22.3) every storage-buffer load is a loop over the SIMD lanes that
//! inserts each lane's value at a run-time index, which LLVM lowers through the stack on AVX2;
//! a texel fetch is a gather with fixed lane indices (src/gpu/texture.rs, and
//! examples/texture_operands.rs, which measures the two). Products read their operands through
//! textures there ([`MatmulVariant::SubgroupTextures`]); the kernels around them that mostly
//! load gain from the same: the Winograd transforms, im2col, pooling, the implicit-GEMM
//! convolutions and batch norm's vec4 entries. On an AVX2-only host (lavapipe 22.3) that took
//! ResNet-50 inference's kernels other than the big products (its gemv head included) from
//! 106 to 68 ms (per-dispatch minima), conv2d_fwd_bwd from 90-95 to 33-43 ms and a digits CNN
//! epoch from 379-533 to 258-334 ms.
//!
//! A shader takes part by reading its sources (bindings 1, 2, ...) only through functions,
//! defined over the storage buffers inside a marked block:
//!
//! ```wgsl
//! // ---- source reads: ...
//! fn src_at(i: u32) -> f32 {
//!     return src[i];
//! }
//! // ---- end of source reads
//! ```
//!
//! [`texture_module`] makes a second module with that block replaced by the same functions over
//! `rgba32float` textures at the same bindings (element i is component i mod 4 of texel i / 4,
//! the layout of src/gpu/texture.rs), and [`dispatch_reading_sources`] copies the sources into
//! the context's operand textures and binds them there. Both modules compute the same values.

use crate::error::Result;
use crate::gpu::texture::{replace_block, TEXELS_PER_ROW};
use crate::gpu::{BufArg, GpuContext, Kernel};
use crate::ops::matmul_variant::{resolve, MatmulVariant};

/// The marker lines around a shader's storage source reads.
pub(crate) const SOURCE_READS: [&str; 2] = ["// ---- source reads", "// ---- end of source reads"];

/// One source read that [`texture_module`] defines over a texture: `fn name(i: u32) -> f32`
/// (element i), or `fn name(j: u32) -> vec4<f32>` (the j-th vec4, for sources bound as
/// `array<vec4<f32>>`).
#[derive(Clone, Copy)]
pub(crate) enum Read {
    Scalar(&'static str),
    Vec4(&'static str),
    /// Both reads of one source: (the element read, the vec4 read).
    ScalarAndVec4(&'static str, &'static str),
}

/// `source` with its marked storage reads (one per `reads`, in binding order) replaced by reads
/// of textures bound at bindings 1, 2, ...
pub(crate) fn texture_module(source: &str, reads: &[Read]) -> String {
    let mut block = String::new();
    for (slot, read) in reads.iter().enumerate() {
        let binding = slot + 1;
        block +=
            &format!("@group(0) @binding({binding}) var source_texture_{slot}: texture_2d<f32>;\n");
        // Vec4 j of the source is texel j (src/gpu/texture.rs's layout); element i is
        // component i mod 4 of texel i / 4.
        let texel = |j: &str| {
            format!(
                "textureLoad(source_texture_{slot}, vec2<u32>({j} % {TEXELS_PER_ROW}u, {j} / {TEXELS_PER_ROW}u), 0)"
            )
        };
        let scalar = |name: &str| {
            format!(
                "fn {name}(i: u32) -> f32 {{\n    let j = i / 4u;\n    return {}[i % 4u];\n}}\n",
                texel("j")
            )
        };
        let vec4 = |name: &str| {
            format!(
                "fn {name}(j: u32) -> vec4<f32> {{\n    return {};\n}}\n",
                texel("j")
            )
        };
        block += &match *read {
            Read::Scalar(name) => scalar(name),
            Read::Vec4(name) => vec4(name),
            Read::ScalarAndVec4(s, v) => scalar(s) + &vec4(v),
        };
    }
    replace_block(source, SOURCE_READS, &block)
}

/// Whether products on `ctx` read their operands through textures by default
/// ([`MatmulVariant::SubgroupTextures`]): then the kernels here read theirs through textures too.
pub(crate) fn reads_textures(ctx: &GpuContext) -> bool {
    resolve(ctx, MatmulVariant::Auto).is_ok_and(|v| v == MatmulVariant::SubgroupTextures)
}

/// Dispatches `entry` with `args` bound from binding 1 in order: from `textured` (the
/// [`texture_module`] of `kernel` with `sources` reads) with `args[..sources]` copied into the
/// context's operand textures where [`reads_textures`] holds and they fit them, else from
/// `kernel` with storage buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch_reading_sources(
    ctx: &GpuContext,
    (kernel, textured): (&Kernel, &Kernel),
    sources: usize,
    entry: &str,
    constants: &[(&str, f64)],
    params: &[u32],
    args: &[BufArg<'_>],
    groups: [u32; 3],
) -> Result<()> {
    let textures: Option<Vec<_>> = match reads_textures(ctx) {
        true => (0..sources)
            .map(|slot| ctx.operand_texture(slot, args[slot]))
            .collect(),
        false => None,
    };
    let Some(textures) = textures else {
        return ctx.dispatch(kernel, entry, constants, params, args, groups);
    };
    let rest = &args[sources..];
    ctx.dispatch_textured(textured, entry, constants, params, &textures, rest, groups)
}

/// [`dispatch_reading_sources`] of one source (`args[0]`).
pub(crate) fn dispatch_reading_source(
    ctx: &GpuContext,
    kernels: (&Kernel, &Kernel),
    entry: &str,
    constants: &[(&str, f64)],
    params: &[u32],
    args: &[BufArg<'_>],
    groups: [u32; 3],
) -> Result<()> {
    dispatch_reading_sources(ctx, kernels, 1, entry, constants, params, args, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_texture_module_reads_texels_in_place_of_the_buffer() {
        let source = "@group(0) @binding(1) var<storage, read> src: array<f32>;
// ---- source reads: from storage
fn src_at(i: u32) -> f32 {
    return src[i];
}
// ---- end of source reads
";
        let module = texture_module(source, &[Read::Scalar("src_at")]);
        assert_eq!(module.matches("fn src_at(").count(), 1);
        assert!(module.contains("textureLoad(source_texture_0") && !module.contains("src[i]"));
        naga::front::wgsl::parse_str(&module).expect("texture module parses");
    }
}
