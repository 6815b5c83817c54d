// matmul_texture_reads.wgsl — the subgroup kernels' panel reads and gemv's any-alignment reads
// from textures. Not a module on its own: src/ops/matmul.rs puts it in place of matmul.wgsl's
// storage panel reads (everything after its "---- panel reads" marker), and cuts out its
// storage any-alignment reads, to make the `subgroup_tex` kernels.
//
// The host copies each operand's bound range into an rgba32float texture right before the
// dispatch (src/gpu/texture.rs): the flat vec4 index j of the buffer is texel
// (j mod TEXELS_PER_ROW, j / TEXELS_PER_ROW). Why: lavapipe 22.3 turns every storage-buffer
// load into a loop over the SIMD lanes that inserts each lane's value at a run-time index, and
// LLVM lowers that insert through the stack (a failed store-to-load forward per lane); a texel
// fetch gathers with fixed lane indices (examples/texture_operands.rs measures the two).
// Reads past the copied range (edge tiles, the K tail) return whatever the texture holds there;
// as with the storage reads, such values only reach outputs that are masked or not written.

@group(0) @binding(1) var a_tex: texture_2d<f32>;
@group(0) @binding(2) var b_tex: texture_2d<f32>;

// Texels per texture row, as src/gpu/texture.rs lays the copies out.
const TEXELS_PER_ROW: u32 = 1024u;

fn texel(i: u32) -> vec2<u32> {
    let j = i / 4u;
    return vec2<u32>(j % TEXELS_PER_ROW, j / TEXELS_PER_ROW);
}

fn panel_load_a(i: u32) -> vec4<f32> {
    return textureLoad(a_tex, texel(i), 0);
}

fn panel_load_b(i: u32) -> vec4<f32> {
    return textureLoad(b_tex, texel(i), 0);
}

// matmul_forward_gemv's (and matmul_forward_small's) vec4 of any alignment: two texels and a
// shift (shift4, matmul.wgsl) where i is not a multiple of 4. The second texel may lie past the
// copied range; its values then only reach lanes the K tail masks, or columns not stored.
// ResNet-50's head (1×2048 · 2048×1000) on lavapipe, AVX2 host: 9-11 ms from storage.
fn load_a_any(i: u32) -> vec4<f32> {
    let lo = textureLoad(a_tex, texel(i), 0);
    if (ALIGNED || i % 4u == 0u) { return lo; }
    return shift4(lo, textureLoad(a_tex, texel(i + 4u), 0), i % 4u);
}

fn load_b_any(i: u32) -> vec4<f32> {
    let lo = textureLoad(b_tex, texel(i), 0);
    if (ALIGNED || i % 4u == 0u) { return lo; }
    return shift4(lo, textureLoad(b_tex, texel(i + 4u), 0), i % 4u);
}
