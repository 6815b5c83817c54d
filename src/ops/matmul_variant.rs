//! Which GPU kernel computes a product (`MatmulVariant`), and how `Auto` and
//! `WGRAD_MATMUL` resolve on an adapter. Below both `ops::matmul` (which dispatches the
//! chosen kernel) and `autotune` (which times the kernels to choose one), so that neither
//! imports the other's types.

use crate::device::{Device, DeviceInner};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;

/// Environment variable that pins the kernel [`MatmulVariant::Auto`] picks.
pub const MATMUL_ENV: &str = "WGRAD_MATMUL";

/// Longest K the small kernel (`matmul_forward_small`) takes. Past it, few outputs and a
/// long walk along K (a convolution's weight gradient: K = batch·H·W) ran 1.4x slower on it
/// than on the 8x8 kernel (digits CNN epoch 540 -> 750-790 ms on lavapipe), and the digits
/// CNN's classifier (64×512·512×10) 0.72 ms on the 8x8 kernel against 0.28 ms on the
/// subgroup kernel.
const SMALL_K: usize = 256;

/// Whether the small kernel takes a product of C (M, N) over K: K up to [`SMALL_K`], or up
/// to 4x that when C has at most 16 columns (its invocations then walk along M, and the
/// 64-wide tiles of the other kernels would idle 3/4 of their lanes, after a padded copy of
/// B when N is not a multiple of 4). The digits CNN's classifier, 64×512·512×10, per
/// dispatch on lavapipe (noisy host, 3 profile runs): 0.29-0.45 ms against 0.38-0.58 ms
/// for the subgroup kernel and its padded copy, one dispatch fewer.
pub(crate) fn small_takes(n: usize, k: usize) -> bool {
    k <= SMALL_K || (n <= 16 && k <= 4 * SMALL_K)
}

/// Which GPU kernel computes a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// `WGRAD_MATMUL` if set (`tiled`, `blocked`, `subgroup`, `subgroup_tex`, `auto`), else by
    /// adapter: [`Tiled`](Self::Tiled) on real GPUs; on software (CPU)
    /// adapters [`SubgroupTextures`](Self::SubgroupTextures) where 8-wide subgroups exist,
    /// else [`RegisterBlocked`](Self::RegisterBlocked).
    Auto,
    /// Workgroup-memory k-tiles, 4x4 outputs per invocation: for real GPUs.
    Tiled,
    /// 8x8 outputs per invocation, vec4 loads, no workgroup memory or
    /// barriers (expensive on a CPU adapter).
    RegisterBlocked,
    /// 16x16 outputs per invocation; the 8 lanes of a subgroup share their
    /// loads through `subgroupShuffle`, reading A and B from storage buffers. Needs
    /// subgroups of exactly 8 lanes.
    Subgroup,
    /// [`Subgroup`](Self::Subgroup) reading its operands through textures (each copied into
    /// an `rgba32float` texture right before the product): on lavapipe every storage load is
    /// a loop over the SIMD lanes, a texel fetch is not. The default on software adapters.
    SubgroupTextures,
}

impl MatmulVariant {
    /// Every concrete kernel, for tests and `wgrad check`.
    pub const KERNELS: [MatmulVariant; 4] = [
        MatmulVariant::Tiled,
        MatmulVariant::RegisterBlocked,
        MatmulVariant::Subgroup,
        MatmulVariant::SubgroupTextures,
    ];

    /// Short name, as accepted by `WGRAD_MATMUL`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Auto => "auto",
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::RegisterBlocked => "blocked",
            MatmulVariant::Subgroup => "subgroup",
            MatmulVariant::SubgroupTextures => "subgroup_tex",
        }
    }

    /// The kernel that runs on `device` for this choice (`Auto` resolved through
    /// `WGRAD_MATMUL` and the adapter). On the CPU reference, `self` unchanged.
    pub fn resolve(self, device: &Device) -> Result<MatmulVariant> {
        match &device.inner {
            DeviceInner::Cpu => Ok(self),
            DeviceInner::Gpu(ctx) => resolve(ctx, self),
        }
    }

    pub(crate) fn entry(self) -> &'static str {
        match self {
            MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures => "matmul_forward_subgroup",
            MatmulVariant::RegisterBlocked => "matmul_forward_blocked",
            _ => "matmul_forward_tiled",
        }
    }
}

/// Whether the subgroup kernel can run: subgroups enabled and always 8 lanes wide.
fn subgroups_of_8(ctx: &GpuContext) -> bool {
    ctx.device.features().contains(wgpu::Features::SUBGROUP)
        && ctx.info.subgroup_min_size == 8
        && ctx.info.subgroup_max_size == 8
}

/// The kernel `WGRAD_MATMUL` names (`Auto` when unset or empty).
fn parse_env(value: &str) -> Result<MatmulVariant> {
    match value.trim() {
        "" | "auto" => Ok(MatmulVariant::Auto),
        "tiled" => Ok(MatmulVariant::Tiled),
        "blocked" => Ok(MatmulVariant::RegisterBlocked),
        "subgroup" => Ok(MatmulVariant::Subgroup),
        "subgroup_tex" => Ok(MatmulVariant::SubgroupTextures),
        other => Err(Error::Invalid {
            op: "matmul",
            detail: format!(
                "{MATMUL_ENV}={other}: expected auto, tiled, blocked, subgroup or subgroup_tex"
            ),
        }),
    }
}

pub(crate) fn resolve(ctx: &GpuContext, v: MatmulVariant) -> Result<MatmulVariant> {
    let v = match v {
        MatmulVariant::Auto => parse_env(&std::env::var(MATMUL_ENV).unwrap_or_default())?,
        v => v,
    };
    match v {
        MatmulVariant::Auto if ctx.info.device_type == wgpu::DeviceType::Cpu => {
            // Texture reads: ResNet-50 inference on lavapipe (Mesa 22.3, AMD EPYC with
            // AVX-512), best of 5 runs alternated, 258 -> 209 ms; single products 1.1-1.4x.
            // On an AVX2-only AMD EPYC host single products gain 3.1-3.5x (256×3136·3136×256
            // 40.4 -> 12.0 ms, 1024³ 202 -> 57 ms) and ResNet-50 inference 917-944 ->
            // 394-431 ms (src/gpu/texture.rs says why).
            if subgroups_of_8(ctx) {
                Ok(MatmulVariant::SubgroupTextures)
            } else {
                Ok(MatmulVariant::RegisterBlocked)
            }
        }
        MatmulVariant::Auto => Ok(MatmulVariant::Tiled),
        MatmulVariant::Subgroup | MatmulVariant::SubgroupTextures if !subgroups_of_8(ctx) => {
            Err(Error::Invalid {
                op: "matmul",
                detail: format!(
                "the subgroup kernel needs subgroups of exactly 8 lanes; adapter {} has {}..{}{}",
                ctx.info.name,
                ctx.info.subgroup_min_size,
                ctx.info.subgroup_max_size,
                if ctx.device.features().contains(wgpu::Features::SUBGROUP) {
                    ""
                } else {
                    " (subgroups not enabled)"
                }
            ),
            })
        }
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_parse() {
        assert_eq!(parse_env("").unwrap(), MatmulVariant::Auto);
        assert_eq!(
            parse_env(" blocked\n").unwrap(),
            MatmulVariant::RegisterBlocked
        );
        for v in MatmulVariant::KERNELS {
            assert_eq!(parse_env(v.name()).unwrap(), v);
        }
        let e = parse_env("fast").unwrap_err();
        assert!(e.to_string().contains("WGRAD_MATMUL=fast"), "{e}");
    }
}
