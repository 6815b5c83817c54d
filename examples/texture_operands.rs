//! Does reading a product's operands through textures beat storage buffers on this adapter?
//!
//! A measurement, not part of the library: the subgroup matmul's 32×64 tile (the same lane
//! layout and `subgroupShuffle` exchange as `matmul_forward_subgroup`, untransposed operands,
//! no epilogue) compiled twice: once reading A and B as `array<vec4<f32>>` storage buffers
//! (as `WGRAD_MATMUL=subgroup` does), once as `rgba32float` textures through `textureLoad`, the
//! flat vec4 index j at texel (j mod 1024, j / 1024). The texture form pays a
//! `copy_buffer_to_texture` of both operands inside the timed submit. Both results are
//! checked against wgrad's f64 CPU reference product.
//!
//!   cargo run --release --example texture_operands [-- M,K,N ...]
//!
//! (M a multiple of 32, K of 4, N of 64; default: four of ResNet-50's and the 1024³ shapes.)
//!
//! Why it matters: Mesa 22.3's lavapipe turns every storage-buffer load into a loop over the
//! subgroup's 8 lanes that inserts each lane's value into a vector at a run-time index. LLVM
//! lowers that insert on AVX2 by spilling the vector, storing the lane and reloading the whole
//! vector (a failed store-to-load forward) — the disassembly shows it; with AVX-512 it is a
//! masked move. Texel fetches are gathered with fixed lane indices instead. On an AMD EPYC
//! (Zen 3, AVX2, no AVX-512) host with 2 cores, min of 5 runs, two runs of this program in a
//! quiet sitting (a busier one gave 1.8-2.4x instead of 2.6-3.1x):
//!
//! | M×K×N          | storage buffers | textures, copies incl. | copies alone |
//! | -------------- | --------------- | ---------------------- | ------------ |
//! | 256×3136×256   | 41-44 ms        | 13.9-14.0 ms           | 0.34-0.36 ms |
//! | 64×148×12544   | 24.3-24.6 ms    | 9.3-9.5 ms             | 0.40-0.44 ms |
//! | 512×128×768    | 10.5-10.7 ms    | 3.7-3.9 ms             | 0.12-0.13 ms |
//! | 2048×256×192   | 20.6-22.6 ms    | 7.0-8.6 ms             | 0.19-0.21 ms |
//! | 1024×1024×1024 | 212-214 ms      | 70-74 ms               | 0.46-0.57 ms |
//!
//! The textures reach 29-30 GFLOP/s there, against an FMA roof (`wgrad bench`'s roof_fma) of
//! about 40. The library's own subgroup kernel ran 256×3136×256 in 40-47 ms in the same
//! sitting, so the storage form here is a fair stand-in for it. An operand here is limited to
//! the adapter's max_texture_dimension_2d rows of 1024 texels (16 KiB each).
//!
//! The library now reads products' operands this way by default on software adapters
//! (`MatmulVariant::SubgroupTextures`, src/gpu/texture.rs), and so do the load-bound kernels
//! around them (src/ops/texture_reads.rs). On an AVX2-only AMD EPYC host the library's
//! products gain 3.1-3.5x from it; on an AMD EPYC host with AVX-512, where storage loads
//! cost less, 1.1-1.5x.

use std::time::Instant;

use anyhow::{bail, ensure, Context};
use wgrad::{Device, Tensor};

/// Texels per texture row; the flat vec4 index j sits at (j mod TEX_W, j / TEX_W).
const TEX_W: u32 = 1024;

/// The tile kernel; `LA` and `LB` (the operand reads) come from `STORAGE_READS` or
/// `texture_reads()`. Loops that index the accumulators are written out: lavapipe does not
/// unroll them, and an accumulator indexed at run time lives in memory.
fn tile_kernel() -> String {
    let fma_rows: String = (0..16)
        .map(|r| {
            format!(
                "    (*acc)[{}u + h] += pa[{r}].x * bx + pa[{r}].y * by + pa[{r}].z * bz + pa[{r}].w * bw;\n",
                4 * r
            )
        })
        .collect();
    let stores: String = (0..16)
        .flat_map(|r| (0..4).map(move |h| (r, h)))
        .map(|(r, h)| {
            format!(
                "    c4[((m0 + {r}u) * p.n + n0 + {}u) / 4u] = acc[{}];\n",
                4 * h,
                4 * r + h
            )
        })
        .collect();
    format!(
        r#"
struct P {{ m: u32, k: u32, n: u32, pad: u32 }}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> c4: array<vec4<f32>>;

fn fma_col(acc: ptr<function, array<vec4<f32>, 64>>, h: u32, pa: array<vec4<f32>, 16>,
           bx: vec4<f32>, by: vec4<f32>, bz: vec4<f32>, bw: vec4<f32>) {{
{fma_rows}}}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{
    let sm0 = wg.y * 32u;
    let sn0 = wg.x * 64u;
    let mi = lane / 4u;
    let ni = lane % 4u;
    var acc: array<vec4<f32>, 64>;
    for (var k0 = 0u; k0 < p.k; k0 += 4u) {{
        var rawa: array<vec4<f32>, 4>;
        for (var s = 0u; s < 4u; s++) {{
            rawa[s] = LA((sm0 + 16u * (lane % 2u) + lane / 2u + 4u * s) * p.k + k0);
        }}
        var pa: array<vec4<f32>, 16>;
        for (var q = 0u; q < 4u; q++) {{
            pa[4u * q] = subgroupShuffle(rawa[q], mi);
            pa[4u * q + 1u] = subgroupShuffle(rawa[q], 2u + mi);
            pa[4u * q + 2u] = subgroupShuffle(rawa[q], 4u + mi);
            pa[4u * q + 3u] = subgroupShuffle(rawa[q], 6u + mi);
        }}
        let col = sn0 + 16u * (lane % 4u) + 4u * (lane / 4u);
        var rawb: array<vec4<f32>, 8>;
        for (var s = 0u; s < 8u; s++) {{
            rawb[s] = LB((k0 + s / 2u) * p.n + col + 8u * (s % 2u));
        }}
        var pb: array<vec4<f32>, 16>;
        for (var j = 0u; j < 4u; j++) {{
            pb[4u * j] = subgroupShuffle(rawb[2u * j], ni);
            pb[4u * j + 1u] = subgroupShuffle(rawb[2u * j], 4u + ni);
            pb[4u * j + 2u] = subgroupShuffle(rawb[2u * j + 1u], ni);
            pb[4u * j + 3u] = subgroupShuffle(rawb[2u * j + 1u], 4u + ni);
        }}
        fma_col(&acc, 0u, pa, pb[0], pb[4], pb[8], pb[12]);
        fma_col(&acc, 1u, pa, pb[1], pb[5], pb[9], pb[13]);
        fma_col(&acc, 2u, pa, pb[2], pb[6], pb[10], pb[14]);
        fma_col(&acc, 3u, pa, pb[3], pb[7], pb[11], pb[15]);
    }}
    let m0 = sm0 + 16u * mi;
    let n0 = sn0 + 16u * ni;
{stores}}}
"#
    )
}

const STORAGE_READS: &str = r#"
@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<f32>>;
fn LA(i: u32) -> vec4<f32> { return a4[i / 4u]; }
fn LB(i: u32) -> vec4<f32> { return b4[i / 4u]; }
"#;

fn texture_reads() -> String {
    format!(
        r#"
@group(0) @binding(2) var at: texture_2d<f32>;
@group(0) @binding(3) var bt: texture_2d<f32>;
fn texel(i: u32) -> vec2<u32> {{ let j = i / 4u; return vec2<u32>(j % {TEX_W}u, j / {TEX_W}u); }}
fn LA(i: u32) -> vec4<f32> {{ return textureLoad(at, texel(i), 0); }}
fn LB(i: u32) -> vec4<f32> {{ return textureLoad(bt, texel(i), 0); }}
"#
    )
}

struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl Gpu {
    fn open() -> anyhow::Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .context("no GPU adapter")?;
        let info = adapter.get_info();
        println!("adapter: {} ({:?})", info.name, info.backend);
        ensure!(
            adapter.features().contains(wgpu::Features::SUBGROUP)
                && info.subgroup_min_size == 8
                && info.subgroup_max_size == 8,
            "the tile kernel needs subgroups of exactly 8 lanes; {} has {}..{}",
            info.name,
            info.subgroup_min_size,
            info.subgroup_max_size
        );
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("texture_operands"),
                required_features: wgpu::Features::SUBGROUP,
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))?;
        Ok(Gpu { device, queue })
    }

    fn buffer(&self, bytes: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes as u64,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Submits `record`'s commands and waits: wall ms.
    fn timed(&self, record: impl FnOnce(&mut wgpu::CommandEncoder)) -> anyhow::Result<f64> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        record(&mut enc);
        let t0 = Instant::now();
        self.queue.submit([enc.finish()]);
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    fn read(&self, src: &wgpu::Buffer, floats: usize) -> anyhow::Result<Vec<f32>> {
        use wgpu::BufferUsages as U;
        let staging = self.buffer(floats * 4, U::MAP_READ | U::COPY_DST);
        self.timed(|enc| enc.copy_buffer_to_buffer(src, 0, &staging, 0, (floats * 4) as u64))?;
        staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        let out = bytemuck::cast_slice(&staging.slice(..).get_mapped_range()?).to_vec();
        Ok(out)
    }
}

/// A flat operand as a storage buffer padded to whole texture rows, and the texture it is
/// copied into.
struct Operand {
    buffer: wgpu::Buffer,
    texture: wgpu::Texture,
}

impl Operand {
    fn new(gpu: &Gpu, data: &[f32]) -> anyhow::Result<Self> {
        use wgpu::BufferUsages as U;
        let rows = (data.len() / 4).div_ceil(TEX_W as usize) as u32;
        let max = gpu.device.limits().max_texture_dimension_2d;
        if rows > max {
            bail!(
                "an operand of {} floats needs {rows} texture rows, over this adapter's {max}",
                data.len()
            );
        }
        let mut padded = data.to_vec();
        padded.resize(rows as usize * TEX_W as usize * 4, 0.0);
        let buffer = gpu.buffer(padded.len() * 4, U::STORAGE | U::COPY_DST | U::COPY_SRC);
        gpu.queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&padded));
        let texture = gpu.device.create_texture(&wgpu::TextureDescriptor {
            label: None,
            size: wgpu::Extent3d {
                width: TEX_W,
                height: rows,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        Ok(Operand { buffer, texture })
    }

    fn copy_to_texture(&self, enc: &mut wgpu::CommandEncoder) {
        enc.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &self.buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(TEX_W * 16),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: &self.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            self.texture.size(),
        );
    }
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("shape {s:?}: expected M,K,N"))?;
    ensure!(v.len() == 3, "shape {s:?}: expected M,K,N");
    let (m, k, n) = (v[0], v[1], v[2]);
    ensure!(
        m > 0 && k > 0 && n > 0 && m % 32 == 0 && k % 4 == 0 && n % 64 == 0,
        "shape {s:?}: M must be a positive multiple of 32, K of 4, N of 64"
    );
    Ok((m, k, n))
}

fn measure(gpu: &Gpu, m: usize, k: usize, n: usize) -> anyhow::Result<()> {
    use wgpu::BufferUsages as U;
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
        .collect();
    // wgrad's own f64 CPU reference, the one every kernel is checked against.
    let reference_device = Device::cpu_f64();
    let reference = Tensor::from_slice(&reference_device, &a, &[m, k])?
        .matmul(&Tensor::from_slice(&reference_device, &b, &[k, n])?)?
        .to_vec_f64()?;
    let (oa, ob) = (Operand::new(gpu, &a)?, Operand::new(gpu, &b)?);
    let c = gpu.buffer(m * n * 4, U::STORAGE | U::COPY_SRC);
    let params = gpu.buffer(16, U::UNIFORM | U::COPY_DST);
    let dims = [m as u32, k as u32, n as u32, 0];
    gpu.queue
        .write_buffer(&params, 0, bytemuck::cast_slice(&dims));
    let (av, bv) = (
        oa.texture.create_view(&Default::default()),
        ob.texture.create_view(&Default::default()),
    );
    let mut line = format!("{m}x{k}x{n}:");
    for textures in [false, true] {
        let reads = if textures {
            texture_reads()
        } else {
            STORAGE_READS.to_string()
        };
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(format!("{reads}{}", tile_kernel()).into()),
            });
        let pipeline = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let (r2, r3) = if textures {
            (
                wgpu::BindingResource::TextureView(&av),
                wgpu::BindingResource::TextureView(&bv),
            )
        } else {
            (oa.buffer.as_entire_binding(), ob.buffer.as_entire_binding())
        };
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: params.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: c.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: r2,
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: r3,
                },
            ],
        });
        let run = |enc: &mut wgpu::CommandEncoder| {
            if textures {
                oa.copy_to_texture(enc);
                ob.copy_to_texture(enc);
            }
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups((n / 64) as u32, (m / 32) as u32, 1);
        };
        gpu.timed(run)?; // compiles the pipeline
        let mut best = f64::MAX;
        for _ in 0..5 {
            best = best.min(gpu.timed(run)?);
        }
        let got = gpu.read(&c, m * n)?;
        let err = got
            .iter()
            .zip(&reference)
            .map(|(g, r)| (*g as f64 - r).abs())
            .fold(0.0, f64::max);
        let scale = reference.iter().fold(1.0f64, |s, r| s.max(r.abs()));
        ensure!(
            err <= 1e-5 * scale * (k as f64).sqrt(),
            "{m}x{k}x{n} with {} operands: max error {err:.3e} against the f64 product",
            if textures { "texture" } else { "storage" }
        );
        let gflops = 2.0 * (m * k * n) as f64 / best / 1e6;
        line += &format!(
            "  {} {best:.2} ms ({gflops:.1} GFLOP/s, max err {err:.1e})",
            if textures { "textures" } else { "storage" }
        );
        if textures {
            let mut copies = f64::MAX;
            for _ in 0..5 {
                copies = copies.min(gpu.timed(|enc| {
                    oa.copy_to_texture(enc);
                    ob.copy_to_texture(enc);
                })?);
            }
            line += &format!(", copies alone {copies:.2} ms");
        }
    }
    println!("{line}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let shapes: Vec<String> = std::env::args().skip(1).collect();
    let shapes = if shapes.is_empty() {
        [
            "256,3136,256",
            "64,148,12544",
            "512,128,768",
            "2048,256,192",
            "1024,1024,1024",
        ]
        .map(String::from)
        .to_vec()
    } else {
        shapes
    };
    let shapes = shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gpu = Gpu::open()?;
    for (m, k, n) in shapes {
        measure(&gpu, m, k, n)?;
    }
    Ok(())
}
