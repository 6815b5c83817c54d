//! im2col for kernel rows of at most 8 taps: a kernel generated per window shape, loading
//! each kernel row's taps as whole vec4s of x.
//!
//! `im2col_rows4` (shaders/conv.wgsl) walks a patch row tap by tap: a bounds check, an index
//! and a scalar load of x per value. ResNet-50's stem (3 channels, 7x7 at stride 2, patch rows
//! of 148) took 4.0-4.3 ms there on lavapipe, most of it that per-tap work. Here the KW taps of
//! one (channel, kernel row) are KW neighbouring columns of one row of x (column dilation 1,
//! KW <= 8): two or three vec4 loads, shifted into place by the window's column offset in a
//! vec4 (0-3) and masked by column and row tests. Where x's rows are whole vec4s (W % 4 = 0)
//! the offset and the tests are per invocation; otherwise each kernel row finds its own offset.
//! The patch row's value (c, ky, kx) is then a fixed component of a fixed register, so the
//! kernel is generated with the window as literals: straight-line code storing vec4s.
//!
//! Two forms ([`Form`]): few channels (C·KH <= 32, the stem) unrolled whole, patch rows padded
//! to a multiple of 4; more channels by a loop over groups of `q` channels whose taps are whole
//! vec4s (q·KH·KW % 4 = 0: ResNet-50's 3x3 layers at stride 2 by 8 channels, its 1x1 at stride
//! 2 by 32), where few patch rows are cut into pieces of whole groups, one per invocation.
//! Eager, lavapipe, AVX-512 host (alternated, minima of 10): the stem 6.8 -> 3.7 ms (4
//! channels), the 3x3 stride-2 layers at 56, 28 and 14 2.48 -> 1.74, 1.12 -> 0.76 and 0.62 ->
//! 0.49 ms, the 1x1 stride-2 ones level to 14% faster. Patch values are the same reads as
//! `im2col_rows4`'s, so the two write the same matrix.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::error::Result;
use crate::gpu::{BufArg, GpuContext, Kernel};
use crate::ops::conv_geom::Conv2d;
use crate::ops::texture_reads::{dispatch_reading_source, texture_module, Read};

/// Most (channel, kernel row) pairs a generated kernel unrolls: its code grows with them, and
/// lavapipe compiles each pipeline with LLVM at its first dispatch.
const MAX_ROWS: usize = 32;

/// Invocations a dispatch is cut into at least, where its channel groups allow (as
/// `IM2COL_CALLS` in src/ops/conv.rs): enough workgroups for lavapipe's threads to share.
const CALLS: usize = 4096;

/// Invocations per workgroup.
const WORKGROUP: usize = 64;

/// How a generated kernel walks a patch row: `q` channels unrolled per step of its loop over
/// the row's channel groups, x's rows whole vec4s or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Form {
    q: usize,
    kh: usize,
    kw: usize,
    aligned: bool,
    looped: bool,
}

/// The form that takes patches of `x` (N, C, H, W) under `geom` into rows of `ld`, if any:
/// kernel rows of at most 8 taps, column dilation 1, x whole vec4s. Few channels (C·KH at
/// most [`MAX_ROWS`]) are unrolled whole, rows padded to `ld`; more go by groups of `q`
/// channels whose values are whole vec4s (q·KH·KW % 4 = 0, C % q = 0), rows unpadded.
fn form(x: &[usize], geom: &Conv2d, ld: usize) -> Option<Form> {
    let (c, kh, kw) = (x[1], geom.kh, geom.kw);
    let numel: usize = x.iter().product();
    let fits = geom.dilations[1] == 1 && (1..=8).contains(&kw) && numel % 4 == 0 && ld % 4 == 0;
    if !fits || kh == 0 || c == 0 {
        return None;
    }
    let aligned = x[3] % 4 == 0;
    let ck = c * kh * kw;
    if c * kh <= MAX_ROWS && ld == ck.div_ceil(4) * 4 {
        let looped = false;
        return Some(Form {
            q: c,
            kh,
            kw,
            aligned,
            looped,
        });
    }
    // The fewest channels whose taps are whole vec4s, then as many of them as divide C and
    // fit the unrolled rows.
    let step = 4 / gcd(kh * kw, 4);
    let q = (1..=MAX_ROWS / (kh * step))
        .rev()
        .map(|m| m * step)
        .find(|q| c % q == 0)?;
    let looped = true;
    (ld == ck).then_some(Form {
        q,
        kh,
        kw,
        aligned,
        looped,
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Writes the patches of `x` (shape `s`) under `geom` into `out`, rows of `ld`, where a form
/// takes them (see [`form`]): `Ok(false)`, with nothing recorded, where none does.
/// `constants` say how the shader divides (exact_div.wgsl).
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_window(
    ctx: &GpuContext,
    x: BufArg<'_>,
    out: BufArg<'_>,
    s: &[usize],
    geom: &Conv2d,
    (oh, ow): (usize, usize),
    ld: usize,
    constants: &[(&str, f64)],
) -> Result<bool> {
    let Some(form) = form(s, geom, ld) else {
        return Ok(false);
    };
    let rows = s[0] * oh * ow;
    // Where rows are few, each cut into pieces of whole channel groups, one per invocation.
    let groups = s[1] / form.q;
    let pieces = (CALLS / rows.max(1)).clamp(1, groups);
    let step = groups.div_ceil(pieces);
    let pieces = groups.div_ceil(step);
    let calls = rows * pieces;
    let numel: usize = s.iter().product();
    let params = [
        s[2],
        s[3],
        geom.strides[0],
        geom.strides[1],
        geom.pads[0],
        geom.pads[1],
        geom.dilations[0],
        oh,
        ow,
        rows,
        ld,
        s[1] * s[2] * s[3],
        calls,
        groups,
        step,
        numel / 4,
    ]
    .map(|v| v as u32);
    let (kernel, textured) = kernels(form);
    dispatch_reading_source(
        ctx,
        (&kernel, &textured),
        "im2col_window",
        constants,
        &params,
        &[x, out],
        ctx.grid(calls.div_ceil(WORKGROUP) as u64),
    )?;
    Ok(true)
}

/// Generated kernels by form: the storage module and the texture module.
type Generated = HashMap<Form, (Kernel, Kernel)>;

/// The storage and texture kernels of one form, generated once per process.
fn kernels(form: Form) -> (Kernel, Kernel) {
    static CACHE: Mutex<Option<Generated>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    let make = || {
        let source = source(form);
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        // Named by the whole form: the context caches pipelines by kernel name.
        let Form {
            q,
            kh,
            kw,
            aligned,
            looped,
        } = form;
        let name = leak(format!("im2col_window_{q}x{kh}x{kw}_{aligned}_{looped}"));
        let textured = texture_module(&source, &[Read::Vec4("x4_at")]);
        let tex_name = leak(format!("{name}.texture"));
        (
            Kernel {
                name,
                source: leak(source),
            },
            Kernel {
                name: tex_name,
                source: leak(textured),
            },
        )
    };
    *map.entry(form).or_insert_with(make)
}

const HEAD: &str = "// Generated by src/ops/im2col_window.rs (see there).
struct Params {
    h: u32, w: u32,     // x's rows and columns
    sh: u32, sw: u32,   // strides
    pt: u32, pl: u32,   // top and left padding
    dh: u32,            // dilation along rows
    oh: u32, ow: u32,   // output positions
    rows: u32,          // patch rows, N·OH·OW
    ld: u32,            // patch row length, a multiple of 4
    image: u32,         // values of one image of x, C·H·W
    calls: u32,         // invocations: rows times pieces
    groups: u32,        // channel groups of a patch row
    step: u32,          // channel groups per piece
    texels: u32,        // vec4s of x
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;      // x as vec4s
@group(0) @binding(2) var<storage, read_write> cols4: array<vec4<f32>>; // the patch rows

// ---- source reads: x's vec4s, from storage (a texture module replaces this block)
fn x4_at(j: u32) -> vec4<f32> {
    return src4[j];
}
// ---- end of source reads

// Values o .. o + 4 of lo, hi seen as one 8-vector (o in 0 .. 4).
fn shift4(lo: vec4<f32>, hi: vec4<f32>, o: u32) -> vec4<f32> {
    let s1 = vec4<f32>(lo.yzw, hi.x);
    let s2 = vec4<f32>(lo.zw, hi.xy);
    let s3 = vec4<f32>(lo.w, hi.xyz);
    return select(select(select(lo, s1, o == 1u), s2, o == 2u), s3, o == 3u);
}

@compute @workgroup_size(64)
fn im2col_window(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y) * 64u + lid;
    if (i >= params.calls) { return; }
    // Piece `piece` (channel groups g0 .. g1) of patch row r: neighbouring invocations take
    // the same piece of neighbouring rows.
    let piece = div(i, params.rows);
    let r = i - piece * params.rows;
    let g0 = piece * params.step;
    let g1 = min(g0 + params.step, params.groups);
    let l_count = params.oh * params.ow;
    let b = div(r, l_count);
    let l = r - b * l_count;
    let oy = div(l, params.ow);
    let ox = l - oy * params.ow;
    // The window's first row and column (negative in the padding).
    let y0 = i32(oy * params.sh) - i32(params.pt);
    let s = i32(ox * params.sw) - i32(params.pl);
    // Which taps kx lie inside x's columns (u32 of a negative column is past the row).
    let w = params.w;
    let in0 = vec4<bool>(u32(s) < w, u32(s + 1) < w, u32(s + 2) < w, u32(s + 3) < w);
    let in1 = vec4<bool>(u32(s + 4) < w, u32(s + 5) < w, u32(s + 6) < w, u32(s + 7) < w);
    let image = b * params.image;
    let plane = params.h * w;
    let out = r * (params.ld / 4u);
    let z = vec4<f32>(0.0);
";

/// Per-invocation set-up where x's rows are whole vec4s: column s is component `off` of
/// texel column `first` of every row, and a row's texels are clamped into it (values past it
/// are masked by the column tests).
const ALIGNED_SETUP: &str = "    let w4 = w / 4u;
    let first = s >> 2u;
    let off = u32(s & 3);
    let last = i32(w4) - 1;
    let t0 = u32(clamp(first, 0, last));
    let t1 = u32(clamp(first + 1, 0, last));
    let t2 = u32(clamp(first + 2, 0, last));
";

/// The kernel's WGSL for one form (see [`Form`]).
fn source(form: Form) -> String {
    let Form {
        q,
        kh,
        kw,
        aligned,
        looped,
    } = form;
    let mut s = String::from(HEAD);
    if aligned {
        s.push_str(ALIGNED_SETUP);
    }
    let xyzw = ["x", "y", "z", "w"];
    // Kernel rows: their offset in a channel's plane (0 outside x) and their masks.
    for ky in 0..kh {
        let _ = writeln!(s, "    let iy{ky} = y0 + {ky} * i32(params.dh);");
        let _ = writeln!(s, "    let ok{ky} = u32(iy{ky}) < params.h;");
        let _ = writeln!(s, "    let row{ky} = select(0u, u32(iy{ky}) * w, ok{ky});");
        let _ = writeln!(s, "    let m{ky}a = in0 & vec4<bool>(ok{ky});");
        if kw > 4 {
            let _ = writeln!(s, "    let m{ky}b = in1 & vec4<bool>(ok{ky});");
        }
    }
    let per_group = (q * kh * kw).div_ceil(4);
    // One group (all of C unrolled): no loop, which cost the stem's im2col 1.8 -> 3.4 ms.
    if looped {
        s.push_str("    for (var g = g0; g < g1; g = g + 1u) {\n");
    } else {
        s.push_str("    let g = 0u;\n    {\n");
    }
    let _ = writeln!(s, "        let at = image + g * {q}u * plane;");
    let _ = writeln!(s, "        let o = out + g * {per_group}u;");
    // Values of the group's taps in order, as WGSL expressions; stored four at a time as
    // soon as the (channel, kernel row) holding the fourth is loaded.
    let mut pending: Vec<String> = Vec::new();
    let mut v4 = 0;
    for ci in 0..q {
        for ky in 0..kh {
            let v = format!("v{ci}_{ky}");
            let _ = writeln!(s, "        let e{v} = at + {ci}u * plane + row{ky};");
            if aligned {
                let _ = writeln!(s, "        let t{v} = e{v} / 4u;");
                let _ = writeln!(s, "        let {v}q0 = x4_at(t{v} + t0);");
                let _ = writeln!(s, "        let {v}q1 = x4_at(t{v} + t1);");
                if kw > 4 {
                    let _ = writeln!(s, "        let {v}q2 = x4_at(t{v} + t2);");
                }
                let _ = writeln!(s, "        let o{v} = off;");
            } else {
                // The row's column s, as a texel and a component: texels clamped into x.
                let _ = writeln!(s, "        let c{v} = i32(e{v}) + s;");
                let _ = writeln!(s, "        let f{v} = c{v} >> 2u;");
                let _ = writeln!(s, "        let o{v} = u32(c{v} & 3);");
                let last = "i32(params.texels) - 1";
                let _ = writeln!(s, "        let {v}q0 = x4_at(u32(clamp(f{v}, 0, {last})));");
                let _ = writeln!(
                    s,
                    "        let {v}q1 = x4_at(u32(clamp(f{v} + 1, 0, {last})));"
                );
                if kw > 4 {
                    let _ = writeln!(
                        s,
                        "        let {v}q2 = x4_at(u32(clamp(f{v} + 2, 0, {last})));"
                    );
                }
            }
            let _ = writeln!(
                s,
                "        let {v}a = select(z, shift4({v}q0, {v}q1, o{v}), m{ky}a);"
            );
            if kw > 4 {
                let _ = writeln!(
                    s,
                    "        let {v}b = select(z, shift4({v}q1, {v}q2, o{v}), m{ky}b);"
                );
            }
            for kx in 0..kw {
                let half = if kx < 4 { "a" } else { "b" };
                pending.push(format!("{v}{half}.{}", xyzw[kx % 4]));
            }
            while pending.len() >= 4 {
                let four: Vec<String> = pending.drain(..4).collect();
                let _ = writeln!(
                    s,
                    "        cols4[o + {v4}u] = vec4<f32>({});",
                    four.join(", ")
                );
                v4 += 1;
            }
        }
    }
    if !pending.is_empty() {
        pending.resize(4, "0.0".into());
        let _ = writeln!(
            s,
            "        cols4[o + {v4}u] = vec4<f32>({});",
            pending.join(", ")
        );
    }
    s.push_str("    }\n}\n");
    s.push_str(include_str!("../../shaders/exact_div.wgsl"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_kernels_parse_and_store_every_vec4_once() {
        for (q, kh, kw) in [
            (3, 7, 7),
            (1, 3, 3),
            (2, 1, 8),
            (5, 2, 4),
            (8, 3, 3),
            (32, 1, 1),
        ] {
            for (aligned, looped) in [(true, false), (false, true)] {
                let src = source(Form {
                    q,
                    kh,
                    kw,
                    aligned,
                    looped,
                });
                naga::front::wgsl::parse_str(&src).expect("generated kernel parses");
                let stores = (q * kh * kw).div_ceil(4);
                for v in 0..stores {
                    assert_eq!(src.matches(&format!("cols4[o + {v}u]")).count(), 1);
                }
                assert!(!src.contains(&format!("cols4[o + {stores}u]")));
                let textured = texture_module(&src, &[Read::Vec4("x4_at")]);
                naga::front::wgsl::parse_str(&textured).expect("texture module parses");
            }
        }
    }

    #[test]
    fn forms_unroll_few_channels_and_group_many() {
        let square =
            |k: usize, stride: usize, pad: usize| Conv2d::new(k, k).stride(stride).padding(pad);
        let stem = square(7, 2, 3);
        let whole = |q, kh, kw, aligned| {
            let looped = false;
            Some(Form {
                q,
                kh,
                kw,
                aligned,
                looped,
            })
        };
        let groups = |q, kh, kw, aligned| {
            let looped = true;
            Some(Form {
                q,
                kh,
                kw,
                aligned,
                looped,
            })
        };
        assert_eq!(form(&[1, 3, 224, 224], &stem, 148), whole(3, 7, 7, true));
        assert_eq!(form(&[1, 3, 224, 224], &stem, 147), None); // rows not whole vec4s
        assert_eq!(form(&[1, 3, 222, 222], &stem, 148), whole(3, 7, 7, false));
        assert_eq!(form(&[1, 3, 224, 224], &stem.dilation(2), 148), None);
        // Kernel rows past 8 taps.
        assert_eq!(form(&[1, 1, 16, 16], &square(9, 1, 0), 84), None);
        // ResNet-50's stride-2 layers: 3x3 by 8 channels (72 taps, 18 vec4s a group), 1x1 by
        // 32; rows of 14 are not whole vec4s.
        let s2 = square(3, 2, 1);
        assert_eq!(form(&[1, 128, 56, 56], &s2, 1152), groups(8, 3, 3, true));
        assert_eq!(form(&[1, 512, 14, 14], &s2, 4608), groups(8, 3, 3, false));
        let pointwise = square(1, 2, 0);
        assert_eq!(
            form(&[1, 256, 56, 56], &pointwise, 256),
            groups(32, 1, 1, true)
        );
        assert_eq!(form(&[1, 36, 6, 8], &s2, 324), groups(4, 3, 3, true));
        assert_eq!(form(&[1, 66, 6, 6], &s2, 596), None); // no group of whole vec4s
    }
}
