//! Load-bound kernels that read their source through a texture where products do.
//!
//! On lavapipe (Mesa 22.3) every storage-buffer load is a loop over the SIMD lanes that
//! inserts each lane's value at a run-time index, which LLVM lowers through the stack on AVX2;
//! a texel fetch is a gather with fixed lane indices (src/gpu/texture.rs, and
//! examples/texture_operands.rs, which measures the two). Products read their operands through
//! textures there ([`MatmulVariant::SubgroupTextures`]); the kernels around them that mostly
//! load (the Winograd transforms, im2col, pooling) gain from the same.
//!
//! A shader takes part by reading its source (binding 1) only through one function, defined
//! over the storage buffer inside a marked block:
//!
//! ```wgsl
//! // ---- source reads: ...
//! fn src_at(i: u32) -> f32 {
//!     return src[i];
//! }
//! // ---- end of source reads
//! ```
//!
//! [`texture_module`] makes a second module with that block replaced by the same function over
//! an `rgba32float` texture at binding 1 (element i is component i mod 4 of texel i / 4, the
//! layout of src/gpu/texture.rs), and [`dispatch_reading_source`] copies the source into the
//! context's operand texture and binds it there. Both modules compute the same values.

use crate::error::Result;
use crate::gpu::texture::{replace_block, TEXELS_PER_ROW};
use crate::gpu::{Binding, BufArg, GpuContext, Kernel};
use crate::ops::matmul_variant::{resolve, MatmulVariant};

/// The marker lines around a shader's storage source reads.
pub(crate) const SOURCE_READS: [&str; 2] = ["// ---- source reads", "// ---- end of source reads"];

/// `source` with its marked storage reads (`fn {read}(i: u32) -> f32`) replaced by reads of the
/// texture bound at binding 1.
pub(crate) fn texture_module(source: &str, read: &str) -> String {
    let reads = format!(
        "@group(0) @binding(1) var source_texture: texture_2d<f32>;

// Element i of the source: component i mod 4 of texel i / 4 (src/gpu/texture.rs's layout).
fn {read}(i: u32) -> f32 {{
    let j = i / 4u;
    let row = j / {TEXELS_PER_ROW}u;
    return textureLoad(source_texture, vec2<u32>(j - row * {TEXELS_PER_ROW}u, row), 0)[i % 4u];
}}
"
    );
    replace_block(source, SOURCE_READS, &reads)
}

/// Whether products on `ctx` read their operands through textures by default
/// ([`MatmulVariant::SubgroupTextures`]): then the kernels here read theirs through one too.
pub(crate) fn reads_textures(ctx: &GpuContext) -> bool {
    resolve(ctx, MatmulVariant::Auto).is_ok_and(|v| v == MatmulVariant::SubgroupTextures)
}

/// Dispatches `entry` with `args` bound from binding 1 in order: from `textured` (the
/// [`texture_module`] of `kernel`) with `args[0]` copied into the context's operand texture
/// where [`reads_textures`] holds and it fits one, else from `kernel` with storage buffers.
pub(crate) fn dispatch_reading_source(
    ctx: &GpuContext,
    (kernel, textured): (&Kernel, &Kernel),
    entry: &str,
    constants: &[(&str, f64)],
    params: &[u32],
    args: &[BufArg<'_>],
    groups: [u32; 3],
) -> Result<()> {
    let texture = match reads_textures(ctx) {
        true => ctx.operand_texture(0, args[0]),
        false => None,
    };
    let Some((copy, view)) = texture else {
        return ctx.dispatch(kernel, entry, constants, params, args, groups);
    };
    let mut bindings = vec![Binding::Texture(&view)];
    bindings.extend(
        args[1..]
            .iter()
            .map(|&(buf, bytes)| Binding::Buffer((buf, 0, bytes))),
    );
    ctx.dispatch_bound(
        textured,
        entry,
        constants,
        params,
        &bindings,
        &[copy],
        groups,
    )
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
        let module = texture_module(source, "src_at");
        assert_eq!(module.matches("fn src_at(").count(), 1);
        assert!(module.contains("textureLoad(source_texture") && !module.contains("src[i]"));
        naga::front::wgsl::parse_str(&module).expect("texture module parses");
    }
}
