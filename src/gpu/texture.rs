//! Operands read through textures: a buffer range copied into an `rgba32float` texture right
//! before the dispatch that reads it (the `subgroup_tex` product kernels,
//! shaders/matmul_texture_reads.wgsl).
//!
//! Why: lavapipe 22.3 turns every storage-buffer load into a loop over the SIMD lanes that
//! inserts each lane's value into a vector at a run-time index, which LLVM lowers through the
//! stack (a failed store-to-load forward per lane); a texel fetch gathers with fixed lane
//! indices. examples/texture_operands.rs measures the two.
//!
//! Layout: the flat vec4 index j of the range is texel (j mod [`TEXELS_PER_ROW`],
//! j / [`TEXELS_PER_ROW`]); the last row may be partial. A context keeps one texture per
//! operand slot, grown on demand and shared by every textured dispatch: each dispatch's
//! copies are encoded right before it, under the same lock (or kept next to it in a recorded
//! plan), and the queue runs commands in order, so a later copy into the same texture never
//! overtakes the dispatch that reads the earlier one. A plan keeps the texture it recorded
//! (its bind group holds it) even after the context grows a larger one.
//!
//! Pinned textures: an inference plan's weights change only by `set_param`, so a plan
//! being recorded may hand buffers to [`super::capture::pin`]; a dispatch reading one of them
//! then binds a texture of the plan's own, filled once at compile time and again after each
//! `set_param` ([`GpuContext::operand_texture`] returns no copy for it), instead of copying
//! the weights on every run.

use super::{lock, Binding, BufArg, Dispatch, GpuContext, Kernel};

/// `WGRAD_TEXTURES`: `0` reads no operand through a texture (every kernel that would reads
/// the storage buffers instead, the form adapters without subgroups run, computing the same
/// values, and no copies into textures are made); `1` reads them through textures wherever
/// they fit. Unset, ops run one by one read through textures, and a compiled plan that does
/// is recorded both ways and keeps the faster (`crate::plan_reads`): whether textures pay
/// depends on the host CPU under lavapipe and on the workload. On an AVX2-only host they took
/// a digits CNN epoch from 379-533 to 258-334 ms (src/ops/texture_reads.rs). On an Intel Xeon
/// with AVX-512, without them, the digits epoch ran in 286 and 238 ms against 337 and 304 ms
/// with them (medians of two sets of 12 alternated rounds, faster in 11 of 12 in each),
/// conv2d_fwd_bwd in 31.8 against 36.5 ms (7 of 8 rounds) and a ResNet-50 training step
/// (batch 8) in 11.0 against 13.1 s (medians, faster in 4 of 4 rounds), but ResNet-50
/// inference, whose weights stay in pinned textures with no copy per run, in 338 against
/// 312 ms (slower in 6 of 8). A training step copies every textured operand on every run
/// (about 25 copies a digits step), each right after the dispatch that wrote its source: the
/// likely difference, not measured apart (`WGRAD_PLAN=profile` replays each dispatch with its
/// copies back to back, and there the digits step's textured dispatches summed to less than
/// the same from buffers).
pub(crate) const TEXTURES_ENV: &str = "WGRAD_TEXTURES";

/// Whether texture reads are forced on this thread: by [`with_texture_reads`], else by
/// [`TEXTURES_ENV`] (read once): `Some(false)` for `0`, `Some(true)` for `1`, `None`
/// (measured per compiled plan) otherwise.
pub(crate) fn textures_forced() -> Option<bool> {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    HERE.with(|h| h.get()).or_else(|| {
        *FORCED.get_or_init(
            || match std::env::var(TEXTURES_ENV).as_deref().map(str::trim) {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
        )
    })
}

thread_local! {
    /// Set by [`with_texture_reads`] on this thread.
    static HERE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with texture reads forced on or off on this thread, as `WGRAD_TEXTURES=1` or
/// `0` would: off, what `f` records or encodes reads the storage buffers; on, a plan it
/// compiles keeps its textured form untimed (`crate::plan_reads`).
pub(crate) fn with_texture_reads<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HERE.with(|h| h.set(self.0));
        }
    }
    let _restore = Restore(HERE.with(|h| h.replace(Some(on))));
    f()
}

/// Whether operands are read from storage buffers here and now (`WGRAD_TEXTURES=0`, or
/// inside [`with_texture_reads`] off).
fn textures_off() -> bool {
    textures_forced() == Some(false)
}

/// Texels per texture row: rows of 16 KiB, a multiple of wgpu's 256-byte copy row alignment
/// (matmul_texture_reads.wgsl has the same constant).
pub(crate) const TEXELS_PER_ROW: u32 = 1024;

/// Bytes of one texel (four f32).
const TEXEL_BYTES: u64 = 16;

/// Bytes of one full texture row.
const ROW_BYTES: u64 = TEXELS_PER_ROW as u64 * TEXEL_BYTES;

/// Operand slots: the textures a context keeps (one per operand of a textured kernel).
pub(crate) const SLOTS: usize = 2;

/// One operand slot's texture and its view.
#[derive(Clone)]
pub(crate) struct SlotTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
}

/// A copy of a buffer range into an operand texture, encoded before the dispatch reading it.
#[derive(Clone)]
pub(crate) struct TextureCopy {
    src: wgpu::Buffer,
    bytes: u64,
    texture: wgpu::Texture,
}

impl TextureCopy {
    /// The buffer copied from.
    pub(crate) fn src(&self) -> &wgpu::Buffer {
        &self.src
    }

    /// Bytes copied (from the buffer's start).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of the texture copied into.
    pub(crate) fn texture_bytes(&self) -> u64 {
        self.texture.height() as u64 * ROW_BYTES
    }

    /// Records the copy: the full texture rows in one copy, a partial last row in a second.
    pub(crate) fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let full = (self.bytes / ROW_BYTES) as u32;
        let tail = ((self.bytes % ROW_BYTES) / TEXEL_BYTES) as u32;
        let mut copy = |offset: u64, y: u32, width: u32, height: u32| {
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.src,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset,
                        bytes_per_row: Some(ROW_BYTES as u32),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
            )
        };
        if full > 0 {
            copy(0, 0, TEXELS_PER_ROW, full);
        }
        if tail > 0 {
            copy(full as u64 * ROW_BYTES, full, tail, 1);
        }
    }
}

/// Texture rows a range of `bytes` takes, if it can be read through a texture on an adapter
/// whose textures are at most `max_rows` high: whole texels only, and not empty.
pub(crate) fn rows_for(bytes: u64, max_rows: u32) -> Option<u32> {
    if bytes == 0 || bytes % TEXEL_BYTES != 0 {
        return None;
    }
    let rows = bytes.div_ceil(ROW_BYTES);
    (rows <= max_rows as u64).then_some(rows as u32)
}

impl GpuContext {
    /// Records `entry` of `kernel` with `textures` (from [`GpuContext::operand_texture`]) bound
    /// from binding 1, then `buffers`, each texture's copy encoded right before the dispatch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dispatch_textured(
        &self,
        kernel: &Kernel,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u32],
        textures: &[(Option<TextureCopy>, wgpu::TextureView)],
        buffers: &[BufArg<'_>],
        groups: [u32; 3],
    ) -> crate::error::Result<()> {
        let one = [Dispatch {
            entry,
            params,
            groups,
        }];
        self.dispatch_textured_all(kernel, constants, textures, buffers, &one)
    }

    /// [`GpuContext::dispatch_textured`] of several entries over the same bindings, the
    /// textures' copies encoded once, before the first ([`GpuContext::dispatch_bound_all`]).
    pub(crate) fn dispatch_textured_all(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
        textures: &[(Option<TextureCopy>, wgpu::TextureView)],
        buffers: &[BufArg<'_>],
        dispatches: &[Dispatch<'_>],
    ) -> crate::error::Result<()> {
        let views = textures.iter().map(|(_, view)| Binding::Texture(view));
        let rest = buffers
            .iter()
            .map(|&(buf, bytes)| Binding::Buffer((buf, 0, bytes)));
        let bindings: Vec<_> = views.chain(rest).collect();
        let copies: Vec<_> = textures
            .iter()
            .filter_map(|(copy, _)| copy.clone())
            .collect();
        self.dispatch_bound_all(kernel, constants, &bindings, &copies, dispatches)
    }

    /// Operand `slot`'s texture holding the start of `arg` (copied by the returned copy, which
    /// the caller encodes right before its dispatch: see [`GpuContext::dispatch_bound`]), or
    /// `None` when `arg` cannot be read through a texture here (see [`rows_for`]) or
    /// textures are off ([`TEXTURES_ENV`], [`with_texture_reads`]). Where the plan being
    /// recorded pinned `arg`'s buffer, its own texture, with no copy.
    pub(crate) fn operand_texture(
        &self,
        slot: usize,
        (src, bytes): BufArg<'_>,
    ) -> Option<(Option<TextureCopy>, wgpu::TextureView)> {
        if textures_off() {
            return None;
        }
        if let Some(view) = self.capture_pinned(src, bytes) {
            return Some((None, view));
        }
        let max_rows = self.limits.max_texture_dimension_2d;
        let rows = rows_for(bytes, max_rows)?;
        let mut slots = lock(&self.operand_textures);
        let held = slots.get_mut(slot)?;
        if held.as_ref().is_none_or(|t| t.texture.height() < rows) {
            // Grown to a power of two of rows: few regrowths as products get larger.
            *held = Some(self.operand_texture_of(rows.next_power_of_two().min(max_rows)));
        }
        let t = held.as_ref()?;
        let copy = TextureCopy {
            src: src.clone(),
            bytes,
            texture: t.texture.clone(),
        };
        Some((Some(copy), t.view.clone()))
    }

    /// A texture of its own for the start of `arg` (a pinned buffer) and the copy that fills
    /// it, or `None` when `arg` cannot be read through a texture here.
    pub(crate) fn pinned_texture(
        &self,
        (src, bytes): BufArg<'_>,
    ) -> Option<(TextureCopy, wgpu::TextureView)> {
        let rows = rows_for(bytes, self.limits.max_texture_dimension_2d)?;
        let t = self.operand_texture_of(rows);
        let copy = TextureCopy {
            src: src.clone(),
            bytes,
            texture: t.texture,
        };
        Some((copy, t.view))
    }

    /// A new operand texture of `height` rows.
    fn operand_texture_of(&self, height: u32) -> SlotTexture {
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("wgrad.operand"),
            size: wgpu::Extent3d {
                width: TEXELS_PER_ROW,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        SlotTexture { texture, view }
    }
}

/// `source` with the block from the line `start` through the line `end` (both markers
/// included) replaced by `reads`: a shader's storage reads swapped for texture reads, the
/// rest of the module shared. Where a marker is missing, `reads` is appended (WGSL then
/// reports the duplicate definitions at the module's creation).
pub(crate) fn replace_block(source: &str, [start, end]: [&str; 2], reads: &str) -> String {
    let (before, rest) = source.split_once(start).unwrap_or((source, ""));
    let after = rest.split_once(end).map_or("", |(_, after)| after);
    format!("{before}{reads}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_take_whole_rows_and_whole_texels() {
        assert_eq!(rows_for(16, 8), Some(1));
        assert_eq!(rows_for(ROW_BYTES, 8), Some(1));
        assert_eq!(rows_for(ROW_BYTES + 16, 8), Some(2));
        assert_eq!(rows_for(8 * ROW_BYTES, 8), Some(8));
        assert_eq!(rows_for(8 * ROW_BYTES + 16, 8), None);
        assert_eq!(rows_for(0, 8), None);
        assert_eq!(rows_for(20, 8), None);
    }

    #[test]
    fn a_marked_block_is_replaced_whole() {
        let source = "head\n// ---- reads: from storage\nfn r() {}\n// ---- end of reads\ntail\n";
        let markers = ["// ---- reads", "// ---- end of reads"];
        assert_eq!(
            replace_block(source, markers, "fn r2() {}"),
            "head\nfn r2() {}\ntail\n"
        );
        assert_eq!(replace_block("head\n", markers, "x"), "head\nx");
    }
}
