// exact_div.wgsl — integer division for the convolution and pooling kernels. Not a module on
// its own: it is appended to conv.wgsl, conv_gemm_fwd.wgsl, conv_phase.wgsl, pool.wgsl and
// winograd.wgsl (src/ops/conv.rs, conv_gemm.rs, conv_phase.rs, pool.rs, winograd.rs).
//
// Lavapipe scalarises integer division by a run-time value (one lane at a time), so the
// kernels divide in f32 when every dividend is below 2^24: the f32 quotient is then within
// one of the true one (two roundings on 24-bit exact operands), and one remainder test
// fixes it. Past that (the host sets EXACT) they divide exactly. EXACT is a pipeline
// constant, not a uniform: lavapipe runs both sides of a branch on a uniform, and the
// scalarised division on the untaken side cost as much as the rest of col2im.
override EXACT: bool = false;

fn div(t: u32, d: u32) -> u32 {
    if (EXACT) { return t / d; }
    let q = i32(f32(t) / f32(d));
    let r = i32(t) - q * i32(d);
    return u32(q + select(0, select(1, -1, r < 0), r < 0 || r >= i32(d)));
}

fn div4(t: vec4<u32>, d: u32) -> vec4<u32> {
    if (EXACT) { return t / d; }
    let q = vec4<i32>(vec4<f32>(t) / f32(d));
    let r = vec4<i32>(t) - q * i32(d);
    return vec4<u32>(q + select(vec4<i32>(0), select(vec4<i32>(1), vec4<i32>(-1), r < vec4<i32>(0)),
                                (r < vec4<i32>(0)) | (r >= vec4<i32>(i32(d)))));
}
