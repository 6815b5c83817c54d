//! Layout ops: transpose, permute, broadcast_to, slice, concat. Each makes a new
//! contiguous tensor (reshape, which needs no copy, is a view in `tensor.rs`).
//!
//! Shape rules: `transpose` swaps the last two dims, `permute` reorders all of
//! them, `broadcast_to` follows NumPy, `slice` narrows one axis, `concat` joins
//! along one axis. CPU reference: plain index loops over the output.
//! Elements move as 32-bit words, so f32, i32 and u32 tensors are all supported.
//!
//! GPU: `shaders/layout.wgsl`. Every op is described as one strided copy per
//! input (`CopyPlan`); before dispatch the plan is simplified (unit dims
//! dropped, dims that stay contiguous on both sides merged) and sent to the
//! cheapest route: a buffer copy when both sides are one contiguous run, a
//! transpose kernel when it is a batched 2-D transpose, else a strided copy
//! (vec4 when rows are word-aligned).
//!
//! Kernels are chosen per adapter type. Measured on lavapipe (2 cores), 4096x4096
//! f32, GB/s of bytes read + written: transpose `simple` 0.6, `tiled` 1.6,
//! `blocked` 5.3 (3.7 for 4095x4097, scalar path); so CPU adapters get `blocked`
//! and real GPUs `tiled`. `WGRAD_TRANSPOSE=tiled|simple|blocked` pins the choice.
//! Strided copies on lavapipe: slice 5.6, concat 8.9, broadcast_to 11.7, a
//! permute keeping the innermost dim 6.9, one moving it 1.5 (a plain buffer copy: 14-16).
//! `WGRAD_COPY_RUN=<n>` pins the strided-copy run length (tests use it).

use std::sync::Arc;

use crate::device::{Device, DeviceInner};
use crate::error::{Error, Result};
use crate::gpu::{BufArg, BufAt, GpuContext, Kernel};
use crate::ops::{gpu_output_big, pack_dims};
use crate::shape::{broadcast_strides, check_rank, contiguous_strides, normalize_axis, MAX_RANK};
use crate::tensor::{Storage, Tensor};
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "layout",
    source: include_str!("../../shaders/layout.wgsl"),
};

/// Environment variable that pins the GPU transpose kernel: `tiled`, `simple` or `blocked`.
pub const TRANSPOSE_ENV: &str = "WGRAD_TRANSPOSE";

/// The GPU kernels for a (batched) 2-D transpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransposeKernel {
    /// One output per invocation, gathering its input (`transpose_forward`).
    Simple,
    /// 32x32 tiles staged through workgroup memory (`transpose_tiled_forward`):
    /// coalesced reads and writes, the choice on real GPUs.
    Tiled,
    /// A 32x32 block per invocation, vec4 accesses when M and N are multiples of 4
    /// (`transpose_blocked4_forward`, else `transpose_blocked_forward`); no barriers.
    /// The choice on CPU adapters such as lavapipe.
    Blocked,
}

impl TransposeKernel {
    /// Every kernel, for tests and `wgrad check`.
    pub const ALL: [TransposeKernel; 3] = [
        TransposeKernel::Simple,
        TransposeKernel::Tiled,
        TransposeKernel::Blocked,
    ];

    /// `simple`, `tiled` or `blocked` (the values of [`TRANSPOSE_ENV`]).
    pub fn name(self) -> &'static str {
        match self {
            TransposeKernel::Simple => "simple",
            TransposeKernel::Tiled => "tiled",
            TransposeKernel::Blocked => "blocked",
        }
    }

    /// The WGSL entry point for an `m` x `n` input.
    fn entry(self, m: usize, n: usize) -> &'static str {
        match self {
            TransposeKernel::Simple => "transpose_forward",
            TransposeKernel::Tiled => "transpose_tiled_forward",
            TransposeKernel::Blocked if m % 4 == 0 && n % 4 == 0 => "transpose_blocked4_forward",
            TransposeKernel::Blocked => "transpose_blocked_forward",
        }
    }

    /// Side of the square tile one workgroup covers.
    fn tile(self) -> usize {
        match self {
            TransposeKernel::Simple => 16,
            TransposeKernel::Tiled => 32,
            TransposeKernel::Blocked => 256,
        }
    }

    /// The kernel pinned by [`TRANSPOSE_ENV`], if set; an unknown value is an error.
    pub fn from_env() -> Result<Option<TransposeKernel>> {
        let Ok(v) = std::env::var(TRANSPOSE_ENV) else {
            return Ok(None);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "simple" => Ok(Some(TransposeKernel::Simple)),
            "tiled" => Ok(Some(TransposeKernel::Tiled)),
            "blocked" => Ok(Some(TransposeKernel::Blocked)),
            _ => Err(Error::Invalid {
                op: "transpose",
                detail: format!(
                    "{TRANSPOSE_ENV} must be `tiled`, `simple` or `blocked`, got {v:?}"
                ),
            }),
        }
    }

    /// The kernel [`Tensor::transpose`] uses on `device`: the one pinned by
    /// [`TRANSPOSE_ENV`], else `Blocked` on CPU adapters and `Tiled` on real GPUs
    /// (figures in the module docs). The CPU reference device reports `Blocked`
    /// (it runs none of them).
    pub fn for_device(device: &Device) -> Result<TransposeKernel> {
        match &device.inner {
            DeviceInner::Gpu(ctx) => TransposeKernel::for_context(ctx),
            DeviceInner::Cpu => {
                Ok(TransposeKernel::from_env()?.unwrap_or(TransposeKernel::Blocked))
            }
        }
    }

    fn for_context(ctx: &GpuContext) -> Result<TransposeKernel> {
        if let Some(k) = TransposeKernel::from_env()? {
            return Ok(k);
        }
        Ok(if is_cpu_adapter(ctx) {
            TransposeKernel::Blocked
        } else {
            TransposeKernel::Tiled
        })
    }
}

fn is_cpu_adapter(ctx: &GpuContext) -> bool {
    ctx.info.device_type == wgpu::DeviceType::Cpu
}

/// Whether the blocked kernel's (B, M, N) transpose goes to `transpose_small4_forward`: M
/// and N multiples of 4 and matrices of at most 128×128. There the blocked kernels' 256×256
/// workgroup tile leaves most lanes idle and one lane walks a whole matrix: on lavapipe the
/// digits CNN's permutes (64 matrices of 16×32) took 0.30-0.5 ms, against 0.08-0.11 ms; a
/// 128×128 matrix 0.09-0.14 ms against 0.04-0.08. From 256×256 on the blocked kernel wins
/// (1024×1024: 2.1-3.2 ms against 5.1-5.3), and 1000×12 or 252×1024 were level.
fn small_aligned(m: usize, n: usize) -> bool {
    m % 4 == 0 && n % 4 == 0 && m * n <= 128 * 128
}

/// One strided copy, in elements: for every coordinate `c` of `dims`,
/// `out[out_offset + Σ c·out_strides] = in[in_offset + Σ c·in_strides]`.
#[derive(Clone, Debug, PartialEq)]
struct CopyPlan {
    dims: Vec<usize>,
    in_strides: Vec<usize>,
    in_offset: usize,
    out_strides: Vec<usize>,
    out_offset: usize,
}

impl CopyPlan {
    /// A copy that fills a whole contiguous output of shape `dims`.
    fn filling(dims: &[usize], in_strides: Vec<usize>, in_offset: usize) -> CopyPlan {
        CopyPlan {
            dims: dims.to_vec(),
            in_strides,
            in_offset,
            out_strides: contiguous_strides(dims),
            out_offset: 0,
        }
    }

    fn count(&self) -> usize {
        self.dims.iter().product()
    }

    /// The same copy with unit dims dropped and each dim merged into the one
    /// before it where both sides step evenly across the pair: fewer index
    /// divisions per element, and the patterns [`run_copy`] recognises appear.
    fn simplified(&self) -> CopyPlan {
        let (mut dims, mut is, mut os) = (Vec::new(), Vec::new(), Vec::new());
        for d in 0..self.dims.len() {
            let (size, si, so) = (self.dims[d], self.in_strides[d], self.out_strides[d]);
            if size == 1 {
                continue;
            }
            if let Some(l) = dims.len().checked_sub(1) {
                if is[l] == si * size && os[l] == so * size {
                    dims[l] *= size;
                    is[l] = si;
                    os[l] = so;
                    continue;
                }
            }
            dims.push(size);
            is.push(si);
            os.push(so);
        }
        CopyPlan {
            dims,
            in_strides: is,
            in_offset: self.in_offset,
            out_strides: os,
            out_offset: self.out_offset,
        }
    }

    /// The plan in vec4 units, when the innermost dim is contiguous on both sides
    /// and every offset, stride and the innermost size are multiples of 4.
    fn as_vec4(&self) -> Option<CopyPlan> {
        let r = self.dims.len();
        let aligned = |v: &[usize]| v[..r - 1].iter().all(|s| s % 4 == 0) && v[r - 1] == 1;
        if r == 0
            || self.dims[r - 1] % 4 != 0
            || self.in_offset % 4 != 0
            || self.out_offset % 4 != 0
            || !aligned(&self.in_strides)
            || !aligned(&self.out_strides)
        {
            return None;
        }
        let quarter = |v: &[usize]| v[..r - 1].iter().map(|s| s / 4).chain([1]).collect();
        let mut dims = self.dims.clone();
        dims[r - 1] /= 4;
        Some(CopyPlan {
            dims,
            in_strides: quarter(&self.in_strides),
            in_offset: self.in_offset / 4,
            out_strides: quarter(&self.out_strides),
            out_offset: self.out_offset / 4,
        })
    }

    /// `(batch, m, n)` when this (simplified) plan reads a contiguous (batch, m, n)
    /// input and writes it transposed, contiguous, both from offset 0.
    fn as_transpose(&self) -> Option<(usize, usize, usize)> {
        let r = self.dims.len();
        if !(2..=3).contains(&r) || self.in_offset != 0 || self.out_offset != 0 {
            return None;
        }
        let (n, m) = (self.dims[r - 2], self.dims[r - 1]);
        let in_ok = self.in_strides[r - 2] == 1
            && self.in_strides[r - 1] == n
            && (r == 2 || self.in_strides[0] == m * n);
        let out_ok = self.out_strides == contiguous_strides(&self.dims);
        let batch = if r == 3 { self.dims[0] } else { 1 };
        (in_ok && out_ok).then_some((batch, m, n))
    }
}

/// Records `plan` from `src` into `dst` on the cheapest route. `kernel` picks the
/// transpose kernel if the plan turns out to be a transpose (`None`: the device default).
/// A source or destination past one storage binding is copied in parts whose reads and
/// writes each fit one (`run_copy_split`).
fn run_copy(
    ctx: &GpuContext,
    op: &'static str,
    src: BufArg<'_>,
    dst: BufArg<'_>,
    plan: &CopyPlan,
    kernel: Option<TransposeKernel>,
) -> Result<()> {
    let p = plan.simplified();
    if p.count() == 0 {
        return Ok(());
    }
    let limit = ctx.binding_limit();
    if src.1 <= limit && dst.1 <= limit {
        return run_copy_at(ctx, op, (src.0, 0, src.1), (dst.0, 0, dst.1), &p, kernel);
    }
    run_copy_split(ctx, op, src.0, dst.0, &p, kernel)
}

/// `[start, end)` of the elements a plan touches on one side.
fn span(offset: usize, strides: &[usize], dims: &[usize]) -> (usize, usize) {
    let reach: usize = dims.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum();
    (offset, offset + reach + 1)
}

/// [`run_copy`] for buffers past one binding: where the plan's source and destination
/// spans each fit one binding (from an aligned offset), one windowed copy; else the plan
/// is halved along its outermost dim (or, with one index left there, that dim dropped)
/// and each part copied the same way. A transpose of an (R, C) matrix past the binding
/// ends in runs of whole columns: ~R·C·C / binding dispatches, for tensors that are
/// rare and big.
fn run_copy_split(
    ctx: &GpuContext,
    op: &'static str,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    p: &CopyPlan,
    kernel: Option<TransposeKernel>,
) -> Result<()> {
    let (limit, align) = (
        crate::ops::chunk::binding_elems(ctx),
        crate::ops::chunk::align_elems(ctx),
    );
    let (i0, i1) = span(p.in_offset, &p.in_strides, &p.dims);
    let (o0, o1) = span(p.out_offset, &p.out_strides, &p.dims);
    let (a_in, a_out) = (i0 / align * align, o0 / align * align);
    let contiguous =
        p.dims.len() <= 1 && p.in_strides.iter().chain(&p.out_strides).all(|&s| s == 1);
    if contiguous || (i1 - a_in <= limit && o1 - a_out <= limit) {
        let mut q = p.clone();
        q.in_offset -= a_in;
        q.out_offset -= a_out;
        let bytes = |e: usize| (e * 4) as u64;
        let src_at = (src, bytes(a_in), bytes(i1 - a_in));
        let dst_at = (dst, bytes(a_out), bytes(o1 - a_out));
        return run_copy_at(ctx, op, src_at, dst_at, &q, kernel);
    }
    let mut first = p.clone();
    if p.dims[0] > 1 {
        let half = p.dims[0] / 2;
        first.dims[0] = half;
        let mut second = p.clone();
        second.dims[0] -= half;
        second.in_offset += half * p.in_strides[0];
        second.out_offset += half * p.out_strides[0];
        run_copy_split(ctx, op, src, dst, &first, kernel)?;
        return run_copy_split(ctx, op, src, dst, &second, kernel);
    }
    first.dims.remove(0);
    first.in_strides.remove(0);
    first.out_strides.remove(0);
    run_copy_split(ctx, op, src, dst, &first, kernel)
}

/// [`run_copy`] of a simplified, non-empty plan on windows of the buffers (each fits one
/// binding; the plan's offsets are relative to the windows).
fn run_copy_at(
    ctx: &GpuContext,
    op: &'static str,
    src: BufAt<'_>,
    dst: BufAt<'_>,
    p: &CopyPlan,
    kernel: Option<TransposeKernel>,
) -> Result<()> {
    let count = p.count();
    let r = p.dims.len();
    if r == 0 || (r == 1 && p.in_strides[0] == 1 && p.out_strides[0] == 1) {
        // One contiguous run on both sides: the copy engine does it without a shader.
        let word = 4;
        ctx.copy(
            src.0,
            src.1 + (p.in_offset * word) as u64,
            dst.0,
            dst.1 + (p.out_offset * word) as u64,
            (count * word) as u64,
        );
        return Ok(());
    }
    if let Some((batch, m, n)) = p.as_transpose() {
        let k = match kernel {
            Some(k) => k,
            None => TransposeKernel::for_context(ctx)?,
        };
        let (tiles_m, tiles_n) = (m.div_ceil(k.tile()), n.div_ceil(k.tile()));
        let params = [
            m as u32,
            n as u32,
            batch as u32,
            tiles_m as u32,
            tiles_n as u32,
        ];
        if k == TransposeKernel::Blocked && small_aligned(m, n) {
            let groups = ctx.grid((batch * m * n / 16).div_ceil(64) as u64);
            let entry = "transpose_small4_forward";
            return ctx.dispatch_at(&SHADER, entry, &[], &params, &[src, dst], groups);
        }
        let groups = ctx.grid((batch * tiles_m * tiles_n) as u64);
        return ctx.dispatch_at(&SHADER, k.entry(m, n), &[], &params, &[src, dst], groups);
    }
    if r > MAX_RANK {
        return Err(Error::Shape {
            op,
            detail: format!(
                "copy of rank {r} above the supported {MAX_RANK} (dims {:?})",
                p.dims
            ),
        });
    }
    let (entry, p) = match p.as_vec4() {
        Some(p4) => ("strided_copy4_forward", p4),
        None => ("strided_copy_forward", p.clone()),
    };
    let last = p.dims[r - 1];
    let run = copy_run(ctx, p.count(), last);
    let runs_per_row = last.div_ceil(run);
    let runs = p.count() / last * runs_per_row;
    let mut params = vec![runs as u32, runs_per_row as u32, r as u32, run as u32];
    params.extend([p.in_offset as u32, p.out_offset as u32, 0, 0]);
    params.extend(pack_dims(&p.dims));
    params.extend(pack_dims(&p.in_strides));
    params.extend(pack_dims(&p.out_strides));
    let groups = ctx.grid((runs as u64).div_ceil(COPY_WG));
    ctx.dispatch_at(&SHADER, entry, &[], &params, &[src, dst], groups)
}

/// Invocations per workgroup of the strided copy kernels.
const COPY_WG: u64 = 64;

/// Elements (vec4s) one strided-copy invocation moves along the innermost dim.
/// On real GPUs 1, so neighbouring invocations touch neighbouring words. On CPU
/// adapters an invocation costs far more than a word: lavapipe, 4096x4096 slice,
/// went 0.25 -> 2.2 -> 5.5 GB/s with runs of 1, 16 and 1024. Runs are capped so
/// that a copy still spreads over about 32 workgroups (every core busy); a run (one
/// invocation's loop) never passes [`crate::gpu::LOOP_BUDGET`], even when pinned.
fn copy_run(ctx: &GpuContext, count: usize, last: usize) -> usize {
    if let Some(run) = std::env::var("WGRAD_COPY_RUN")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Clamped like the planned runs: a run is one invocation's loop, and lavapipe
        // silently stops an invocation after 65535 iterations.
        return usize::clamp(run, 1, crate::gpu::LOOP_BUDGET);
    }
    if !is_cpu_adapter(ctx) {
        return 1;
    }
    let rows = count / last;
    // Runs of length `run` give rows * ceil(last / run) invocations; aim for 32 groups.
    let want_invocations = (32 * COPY_WG as usize).div_ceil(rows).max(1);
    (last / want_invocations).clamp(1, 1024)
}

// ----- CPU reference: plain loops over 32-bit words -----

/// `(batch, m, n) -> (batch, n, m)`.
fn transpose_forward(x: &[u32], batch: usize, m: usize, n: usize) -> Vec<u32> {
    let mut out = vec![0u32; batch * m * n];
    for b in 0..batch {
        for j in 0..n {
            for i in 0..m {
                out[b * m * n + j * m + i] = x[b * m * n + i * n + j];
            }
        }
    }
    out
}

/// Output dim `k` is input dim `axes[k]`.
fn permute_forward(x: &[u32], shape: &[usize], axes: &[usize]) -> Vec<u32> {
    let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let in_strides = contiguous_strides(shape);
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; out_shape.len()];
    for _ in 0..n {
        let src: usize = (0..axes.len())
            .map(|k| coord[k] * in_strides[axes[k]])
            .sum();
        out.push(x[src]);
        increment(&mut coord, &out_shape);
    }
    out
}

/// NumPy broadcast of `shape` to `target` (already checked compatible).
fn broadcast_to_forward(x: &[u32], shape: &[usize], target: &[usize]) -> Vec<u32> {
    let lead = target.len() - shape.len();
    let in_strides = contiguous_strides(shape);
    let n: usize = target.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut coord = vec![0usize; target.len()];
    for _ in 0..n {
        let src: usize = (0..shape.len())
            .map(|d| {
                if shape[d] == 1 {
                    0
                } else {
                    coord[lead + d] * in_strides[d]
                }
            })
            .sum();
        out.push(x[src]);
        increment(&mut coord, target);
    }
    out
}

/// Elements `start..end` along `axis`.
fn slice_forward(x: &[u32], shape: &[usize], axis: usize, start: usize, end: usize) -> Vec<u32> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        for k in start..end {
            let from = (o * shape[axis] + k) * inner;
            out.extend_from_slice(&x[from..from + inner]);
        }
    }
    out
}

/// The inputs (data, shape) joined along `axis`.
fn concat_forward(inputs: &[(Vec<u32>, &[usize])], axis: usize) -> Vec<u32> {
    let first = inputs[0].1;
    let outer: usize = first[..axis].iter().product();
    let inner: usize = first[axis + 1..].iter().product();
    let mut out = Vec::new();
    for o in 0..outer {
        for (x, shape) in inputs {
            let block = shape[axis] * inner;
            out.extend_from_slice(&x[o * block..(o + 1) * block]);
        }
    }
    out
}

/// Advances a row-major coordinate by one (the last dim fastest).
fn increment(coord: &mut [usize], dims: &[usize]) {
    for d in (0..dims.len()).rev() {
        coord[d] += 1;
        if coord[d] < dims[d] {
            return;
        }
        coord[d] = 0;
    }
}

/// The 32-bit words of a CPU tensor.
fn host_words(t: &Tensor) -> Result<Vec<u32>> {
    Ok(match t.dtype() {
        DType::F32 => bytemuck::cast_vec(t.to_vec::<f32>()?),
        DType::I32 => bytemuck::cast_vec(t.to_vec::<i32>()?),
        _ => t.to_vec::<u32>()?,
    })
}

/// A CPU tensor of `dtype` on `device` holding `words`.
fn cpu_words(device: &Device, shape: &[usize], dtype: DType, words: Vec<u32>) -> Tensor {
    Tensor::from_storage(device, shape, dtype, Storage::Cpu(Arc::new(words)))
}

/// The low and high 32-bit halves of f64 values (the double-precision reference's
/// f32 tensors), so the word-moving references move them unchanged.
fn split_wide(wide: &[f64]) -> (Vec<u32>, Vec<u32>) {
    wide.iter()
        .map(|v| (v.to_bits() as u32, (v.to_bits() >> 32) as u32))
        .unzip()
}

/// The f32 tensor of the double-precision reference whose values have halves `lo`, `hi`.
fn join_wide(device: &Device, shape: &[usize], lo: &[u32], hi: &[u32]) -> Tensor {
    let wide = lo
        .iter()
        .zip(hi)
        .map(|(&l, &h)| f64::from_bits((h as u64) << 32 | l as u64))
        .collect();
    Tensor::cpu_from_f64(device, shape, wide)
}

impl Tensor {
    /// Errors unless the elements are 32-bit words the layout kernels can move.
    fn expect_word_dtype(&self, op: &'static str) -> Result<()> {
        match self.dtype() {
            DType::F32 | DType::I32 | DType::U32 => Ok(()),
            d => Err(Error::DType {
                op,
                got: d.to_string(),
                expected: "f32, i32 or u32".into(),
            }),
        }
    }

    /// A new tensor of `out_shape` filled on the GPU by `plan` (CPU: by `reference`).
    fn layout_copy(
        &self,
        op: &'static str,
        out_shape: &[usize],
        plan: impl FnOnce() -> CopyPlan,
        kernel: Option<TransposeKernel>,
        reference: impl Fn(&[u32]) -> Vec<u32>,
    ) -> Result<Tensor> {
        match &self.device().inner {
            DeviceInner::Cpu => match self.host_wide() {
                // Pure data movement: move the low and high halves of each f64
                // with the same word permutation.
                Some(wide) => {
                    let (lo, hi) = split_wide(wide);
                    let (lo, hi) = (reference(&lo), reference(&hi));
                    Ok(join_wide(self.device(), out_shape, &lo, &hi))
                }
                None => Ok(cpu_words(
                    self.device(),
                    out_shape,
                    self.dtype(),
                    reference(&host_words(self)?),
                )),
            },
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output_big(ctx, self.device(), op, out_shape, self.dtype())?;
                let (Some(x), Some(o)) = (self.gpu_arg(), out.gpu_arg()) else {
                    unreachable!("GPU device holds GPU tensors")
                };
                run_copy(ctx, op, x, o, &plan(), kernel)?;
                Ok(out)
            }
        }
    }

    /// The transpose kernel for ops that may become one, resolved before any GPU
    /// work so that a bad `WGRAD_TRANSPOSE` fails early (`None` on the CPU).
    fn resolve_kernel(&self, kernel: Option<TransposeKernel>) -> Result<Option<TransposeKernel>> {
        match (kernel, &self.device().inner) {
            (Some(k), _) => Ok(Some(k)),
            (None, DeviceInner::Gpu(ctx)) => Ok(Some(TransposeKernel::for_context(ctx)?)),
            (None, DeviceInner::Cpu) => Ok(None),
        }
    }

    /// Swaps the last two dimensions: `(…, M, N) -> (…, N, M)`; a batch of
    /// matrices transposes each. Needs rank >= 2.
    pub fn transpose(&self) -> Result<Tensor> {
        self.transpose_impl(None)
    }

    /// [`Tensor::transpose`] with the GPU kernel chosen explicitly (ignored on the CPU).
    pub fn transpose_using(&self, kernel: TransposeKernel) -> Result<Tensor> {
        self.transpose_impl(Some(kernel))
    }

    fn transpose_impl(&self, kernel: Option<TransposeKernel>) -> Result<Tensor> {
        let op = "transpose";
        self.expect_word_dtype(op)?;
        let r = self.rank();
        if r < 2 {
            return Err(Error::Shape {
                op,
                detail: format!("needs rank >= 2, got shape {:?}", self.shape()),
            });
        }
        let (m, n) = (self.shape()[r - 2], self.shape()[r - 1]);
        let batch: usize = self.shape()[..r - 2].iter().product();
        let mut axes: Vec<usize> = (0..r).collect();
        axes.swap(r - 2, r - 1);
        let out_shape: Vec<usize> = axes.iter().map(|&a| self.shape()[a]).collect();
        let kernel = self.resolve_kernel(kernel)?;
        self.layout_copy(
            op,
            &out_shape,
            || self.permute_plan(&axes),
            kernel,
            |x| transpose_forward(x, batch, m, n),
        )
    }

    /// Swaps axes `a` and `b` (negative counts from the end).
    pub fn transpose_axes(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = normalize_axis("transpose_axes", a, self.shape())?;
        let b = normalize_axis("transpose_axes", b, self.shape())?;
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    /// Reorders the dimensions: output dim `k` is input dim `axes[k]`.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let op = "permute";
        self.expect_word_dtype(op)?;
        let r = self.rank();
        let mut seen = vec![false; r];
        let valid = axes.len() == r
            && axes
                .iter()
                .all(|&a| a < r && !std::mem::replace(&mut seen[a], true));
        if !valid {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "axes {axes:?} are not a permutation of 0..{r} for shape {:?}",
                    self.shape()
                ),
            });
        }
        check_rank(op, self.shape())?;
        let out_shape: Vec<usize> = axes.iter().map(|&a| self.shape()[a]).collect();
        let shape = self.shape();
        let kernel = self.resolve_kernel(None)?;
        self.layout_copy(
            op,
            &out_shape,
            || self.permute_plan(axes),
            kernel,
            |x| permute_forward(x, shape, axes),
        )
    }

    fn permute_plan(&self, axes: &[usize]) -> CopyPlan {
        let strides = self.strides();
        let out_shape: Vec<usize> = axes.iter().map(|&a| self.shape()[a]).collect();
        CopyPlan::filling(&out_shape, axes.iter().map(|&a| strides[a]).collect(), 0)
    }

    /// Broadcasts to `shape` with NumPy rules: dims of 1 stretch, missing
    /// leading dims are added.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let op = "broadcast_to";
        self.expect_word_dtype(op)?;
        crate::shape::checked_numel(op, shape)?;
        let src = self.shape();
        let fits = shape.len() >= src.len()
            && src
                .iter()
                .zip(&shape[shape.len() - src.len().min(shape.len())..])
                .all(|(&s, &t)| s == t || s == 1);
        if !fits {
            return Err(Error::Shape {
                op,
                detail: format!("cannot broadcast {src:?} to {shape:?}"),
            });
        }
        check_rank(op, shape)?;
        let plan = || CopyPlan::filling(shape, broadcast_strides(src, shape), 0);
        self.layout_copy(op, shape, plan, None, |x| {
            broadcast_to_forward(x, src, shape)
        })
    }

    /// Elements `start..end` (end exclusive) along `axis`; `start == end` gives
    /// an empty dimension.
    pub fn slice(&self, axis: isize, start: usize, end: usize) -> Result<Tensor> {
        let op = "slice";
        self.expect_word_dtype(op)?;
        let ax = normalize_axis(op, axis, self.shape())?;
        let dim = self.shape()[ax];
        if start > end || end > dim {
            return Err(Error::Invalid {
                op,
                detail: format!(
                    "range {start}..{end} out of bounds for axis {axis} (size {dim}) of shape {:?}",
                    self.shape()
                ),
            });
        }
        let mut out_shape = self.shape().to_vec();
        out_shape[ax] = end - start;
        let plan = || CopyPlan::filling(&out_shape, self.strides(), start * self.strides()[ax]);
        let shape = self.shape();
        self.layout_copy(op, &out_shape, plan, None, |x| {
            slice_forward(x, shape, ax, start, end)
        })
    }

    /// `len` elements from `start` along `axis` (PyTorch's `narrow`).
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        self.slice(axis, start, start.saturating_add(len))
    }

    /// Joins tensors along `axis`: all share rank, dtype and device, and their
    /// shapes agree except along `axis`.
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Result<Tensor> {
        let op = "concat";
        let Some(first) = tensors.first() else {
            return Err(Error::Invalid {
                op,
                detail: "needs at least one tensor".into(),
            });
        };
        first.expect_word_dtype(op)?;
        let ax = normalize_axis(op, axis, first.shape())?;
        let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
        for t in &tensors[1..] {
            first.expect_same_device(op, t)?;
            if t.dtype() != first.dtype() {
                return Err(Error::DType {
                    op,
                    got: t.dtype().to_string(),
                    expected: first.dtype().to_string(),
                });
            }
            let agree = t.rank() == first.rank()
                && (0..first.rank()).all(|d| d == ax || t.shape()[d] == first.shape()[d]);
            if !agree {
                return Err(Error::Shape {
                    op,
                    detail: format!("shapes {shapes:?} differ outside axis {axis}"),
                });
            }
        }
        let mut out_shape = first.shape().to_vec();
        out_shape[ax] = shapes.iter().map(|s| s[ax]).sum();
        match &first.device().inner {
            DeviceInner::Cpu if first.host_wide().is_some() => {
                let (lo, hi): (Vec<_>, Vec<_>) = tensors
                    .iter()
                    .map(|t| {
                        let (lo, hi) = split_wide(t.host_wide().unwrap_or(&[]));
                        ((lo, t.shape()), (hi, t.shape()))
                    })
                    .unzip();
                let (lo, hi) = (concat_forward(&lo, ax), concat_forward(&hi, ax));
                Ok(join_wide(first.device(), &out_shape, &lo, &hi))
            }
            DeviceInner::Cpu => {
                let inputs = tensors
                    .iter()
                    .map(|t| Ok((host_words(t)?, t.shape())))
                    .collect::<Result<Vec<_>>>()?;
                Ok(cpu_words(
                    first.device(),
                    &out_shape,
                    first.dtype(),
                    concat_forward(&inputs, ax),
                ))
            }
            DeviceInner::Gpu(ctx) => {
                let out = gpu_output_big(ctx, first.device(), op, &out_shape, first.dtype())?;
                let Some(o) = out.gpu_arg() else {
                    unreachable!("GPU device holds GPU tensors")
                };
                let out_strides = contiguous_strides(&out_shape);
                let mut along = 0;
                for t in tensors {
                    let Some(x) = t.gpu_arg() else {
                        unreachable!("GPU device holds GPU tensors")
                    };
                    let plan = CopyPlan {
                        dims: t.shape().to_vec(),
                        in_strides: t.strides(),
                        in_offset: 0,
                        out_strides: out_strides.clone(),
                        out_offset: along * out_strides[ax],
                    };
                    run_copy(ctx, op, x, o, &plan, None)?;
                    along += t.shape()[ax];
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_simplify_to_the_routes() {
        // A batched transpose keeps its three dims and is recognised.
        let x = CopyPlan::filling(&[2, 5, 3], vec![15, 1, 5], 0).simplified();
        assert_eq!(x.as_transpose(), Some((2, 3, 5)));
        // Transposing (1, N) is a plain copy: one contiguous run.
        let y = CopyPlan::filling(&[7, 1], vec![1, 7], 0).simplified();
        assert_eq!(
            (&y.dims[..], &y.in_strides[..], &y.out_strides[..]),
            (&[7][..], &[1][..], &[1][..])
        );
        // A slice along axis 1 of (4, 6, 5) is rows of 2*5 contiguous words.
        let s = CopyPlan::filling(&[4, 2, 5], vec![30, 5, 1], 5).simplified();
        assert_eq!(
            (&s.dims[..], &s.in_strides[..]),
            (&[4, 10][..], &[30, 1][..])
        );
        assert_eq!(s.out_strides, vec![10, 1]);
        assert_eq!(s.as_vec4(), None, "offset 5 is not a whole vec4");
        // Word-aligned rows go to the vec4 kernel, in vec4 units.
        let a = CopyPlan::filling(&[4, 2, 4], vec![32, 4, 1], 8).simplified();
        let v = a.as_vec4().expect("aligned plan");
        assert_eq!(
            (v.dims, v.in_strides, v.in_offset),
            (vec![4, 2], vec![8, 1], 2)
        );
        assert_eq!(v.out_strides, vec![2, 1]);
        // A stretched leading dim merges with another stretched dim.
        let b = CopyPlan::filling(&[3, 4, 5], vec![0, 0, 1], 0).simplified();
        assert_eq!((b.dims, b.in_strides), (vec![12, 5], vec![0, 1]));
    }
}
