//! The GPU side: one wgpu device and queue, a pipeline cache, a buffer pool,
//! command recording and readback.
//!
//! Eager ops record their dispatches into one pending command encoder; it is
//! submitted when a result is read back (or after many dispatches), so a chain
//! of ops costs one queue submit, not one per op.

pub(crate) mod adapter;
pub(crate) mod capture;
#[cfg(test)]
mod fault_tests;
pub(crate) mod pool;
pub(crate) mod texture;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
pub use adapter::AdapterSummary;
pub use pool::PoolStats;
use pool::{GpuBuffer, Pool};

/// A WGSL source file and the name its pipelines are cached under.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
}

/// Bytes of a thread's status words, which kernels set when they meet data they cannot
/// compute with (a class label out of range): word 0 = what happened (a `STATUS_*` code),
/// words 1.. = its details. Each thread has its own (an op reports to the thread that
/// recorded it); read back and cleared with every readback that thread makes.
pub(crate) const STATUS_BYTES: u64 = 16;

/// Status code: a cross-entropy label outside 0..classes (word 1: the label, word 2: classes).
const STATUS_BAD_LABEL: u32 = 1;

/// Status code: a gather or scatter-add index outside -n..n (word 1: the index, word 2: n).
const STATUS_BAD_INDEX: u32 = 2;

/// Turns the status words read back into an error.
fn check_status(words: &[u32]) -> Result<()> {
    match words.first().copied().unwrap_or(0) {
        0 => Ok(()),
        STATUS_BAD_LABEL => Err(Error::Invalid {
            op: "cross_entropy",
            detail: format!(
                "label {} outside 0..{} (found by the GPU kernel since the last readback; \
                 that row's loss and gradient are NaN)",
                words[1] as i32, words[2]
            ),
        }),
        STATUS_BAD_INDEX => Err(Error::Invalid {
            op: "gather",
            detail: format!(
                "index {} outside -{n}..{n} for an axis of length {n} (found by the GPU kernel \
                 since the last readback; the gathered elements are 0)",
                words[1] as i32,
                n = words[2]
            ),
        }),
        code => Err(Error::Gpu {
            op: "status",
            detail: format!("unknown status code {code}"),
        }),
    }
}

/// One storage buffer argument of a dispatch: the buffer and the bytes bound.
pub(crate) type BufArg<'a> = (&'a wgpu::Buffer, u64);

/// A storage buffer argument bound at a byte offset: buffer, offset, bytes.
/// The offset must be a multiple of [`GpuContext::offset_alignment`].
pub(crate) type BufAt<'a> = (&'a wgpu::Buffer, u64, u64);

/// One binding of a dispatch after the params uniform: a buffer range, or a texture
/// (an operand copied by a [`texture::TextureCopy`] encoded with the dispatch).
pub(crate) enum Binding<'a> {
    Buffer(BufAt<'a>),
    Texture(&'a wgpu::TextureView),
}

/// One dispatch of [`GpuContext::dispatch_bound_all`]: an entry point, its params and its
/// workgroup grid.
pub(crate) struct Dispatch<'a> {
    pub(crate) entry: &'a str,
    pub(crate) params: &'a [u32],
    pub(crate) groups: [u32; 3],
}

/// Workgroup size used by the one-dimensional kernels (WebGPU's guaranteed maximum).
pub(crate) const WG_1D: u32 = 256;

/// Most loop iterations any one invocation of any kernel may take, all its loops together.
/// Mesa 22.3's lavapipe (gallivm's loop limiter) silently ends an invocation after 65,535
/// loop iterations in total, leaving its outputs unwritten with no error; every kernel is
/// planned (split, chunked, or refused with an error) to stay under this, a 4x margin.
/// Loops with a small constant trip count that the compiler unrolls do not count.
/// Measured on Mesa 22.3.6 (tests/loop_budget.rs): one loop of 70,000 or 100,000 steps stops
/// at ~65,535, while nested or consecutive loops of 90,300 or 65,535 steps together did
/// not, so the cap may count per loop; the budget still counts all loops together.
pub(crate) const LOOP_BUDGET: usize = 16_384;

/// Size, in u32 words, every params uniform is padded to (256 bytes).
pub(crate) const PARAMS_WORDS: usize = 64;

/// Dispatches recorded before the pending encoder is submitted anyway, so
/// that a long eager loop does not grow one command buffer without bound.
const MAX_PENDING_DISPATCHES: usize = 512;

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    dispatches_total: u64,
    submits: u64,
}

/// One cached pipeline and what it was made from.
struct PipelineEntry {
    kernel: &'static str,
    entry: Box<str>,
    /// Override constants, values as f64 bits.
    constants: Box<[(Box<str>, u64)]>,
    pipeline: wgpu::ComputePipeline,
}

impl PipelineEntry {
    fn matches(&self, kernel: &str, entry: &str, constants: &[(&str, f64)]) -> bool {
        self.kernel == kernel
            && &*self.entry == entry
            && self.constants.len() == constants.len()
            && self
                .constants
                .iter()
                .zip(constants)
                .all(|((n, v), (m, w))| &**n == *m && *v == w.to_bits())
    }
}

fn pipeline_hash(kernel: &str, entry: &str, constants: &[(&str, f64)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (kernel, entry).hash(&mut h);
    for (n, v) in constants {
        (n, v.to_bits()).hash(&mut h);
    }
    h.finish()
}

/// A GPU device: adapter, device, queue, caches.
pub(crate) struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) summary: AdapterSummary,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    /// Pipelines by a hash of (kernel, entry, constants); each bucket is checked
    /// for an exact match, so a look-up formats and allocates nothing.
    pipelines: Mutex<HashMap<u64, Vec<PipelineEntry>>>,
    pending: Mutex<Pending>,
    pool: Arc<Pool>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Set by the device-lost callback: why the device was lost. Every later
    /// call returns `Err`; a new `Device` has to be created.
    lost: Arc<Mutex<Option<String>>>,
    /// Largest storage binding the ops plan for: the adapter's
    /// max_storage_buffer_binding_size, or less when a test lowers it to drive
    /// the chunked big-tensor paths with small tensors.
    binding_limit: AtomicU64,
    /// Each thread's status words (see [`STATUS_BYTES`]), made on first use.
    status: Mutex<HashMap<std::thread::ThreadId, wgpu::Buffer>>,
    /// The operand textures of textured dispatches, one per slot (see [`texture`]).
    operand_textures: Mutex<[Option<texture::SlotTexture>; texture::SLOTS]>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuContext {
    /// Chooses the best adapter and opens a device with its own limits.
    pub(crate) fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
        let (adapter, reason) =
            adapter::choose(adapter::list_adapters(&instance)).ok_or(Error::NoAdapter)?;
        let info = adapter.get_info();
        let wanted = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        let features = adapter.features() & wanted;
        // The adapter's own limits, not WebGPU's defaults: lavapipe allows 128 MiB
        // bindings and 2 GiB buffers where the defaults stop at 128 MiB / 256 MiB.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgrad"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::DeviceRequest {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).push(e.to_string());
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lock(&flag) = Some(format!("{reason:?} {message}").trim().to_string());
        });
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            reason,
        };
        let binding_limit = AtomicU64::new(limits.max_storage_buffer_binding_size);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            summary,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            pending: Mutex::new(Pending {
                encoder: None,
                dispatches: 0,
                dispatches_total: 0,
                submits: 0,
            }),
            pool: Arc::default(),
            errors,
            lost,
            binding_limit,
            status: Mutex::default(),
            operand_textures: Mutex::default(),
        })
    }

    /// The calling thread's status words, which kernels report bad data in (see
    /// [`STATUS_BYTES`]); bind `(&buffer, STATUS_BYTES)`.
    pub(crate) fn status_buffer(&self) -> wgpu::Buffer {
        lock(&self.status)
            .entry(std::thread::current().id())
            .or_insert_with(|| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgrad.status"),
                    size: STATUS_BYTES,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false, // wgpu zero-initialises buffers
                })
            })
            .clone()
    }

    /// `Err` once the device has been lost (driver reset, `destroy`, ...).
    fn check_alive(&self, op: &'static str) -> Result<()> {
        match lock(&self.lost).as_ref() {
            None => Ok(()),
            Some(reason) => Err(Error::Gpu {
                op,
                detail: format!("device lost: {reason} (create a new Device to continue)"),
            }),
        }
    }

    /// Takes any error the device reported since the last check (and fails for
    /// good once the device is lost).
    fn check_errors(&self, op: &'static str) -> Result<()> {
        self.check_alive(op)?;
        let mut errs = lock(&self.errors);
        if errs.is_empty() {
            return Ok(());
        }
        let detail = errs.join("; ");
        errs.clear();
        Err(Error::Gpu { op, detail })
    }

    /// Checks that one binding of `bytes` fits this adapter (and its buffer, see
    /// [`Self::check_buffer`]).
    pub(crate) fn check_binding(
        &self,
        op: &'static str,
        shape: &[usize],
        bytes: u64,
    ) -> Result<()> {
        let limit = self.binding_limit();
        if bytes > limit {
            return Err(Error::TooLarge {
                op,
                shape: shape.to_vec(),
                bytes,
                limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        self.check_buffer(op, shape, bytes)
    }

    /// Largest storage binding in bytes (see `binding_limit` on the struct).
    pub(crate) fn binding_limit(&self) -> u64 {
        self.binding_limit.load(Ordering::Relaxed)
    }

    /// Lowers the binding limit (never above the adapter's), for tests.
    pub(crate) fn set_binding_limit(&self, bytes: u64) {
        let bytes = bytes.clamp(1024, self.limits.max_storage_buffer_binding_size);
        self.binding_limit.store(bytes, Ordering::Relaxed);
    }

    /// Byte alignment every binding offset must have (256 on most adapters).
    pub(crate) fn offset_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment.max(4) as u64
    }

    /// Checks that one buffer of `bytes` fits this adapter (`max_buffer_size`):
    /// tensors past the binding limit are fine, ops bind them in windows.
    pub(crate) fn check_buffer(&self, op: &'static str, shape: &[usize], bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                op,
                shape: shape.to_vec(),
                bytes,
                limit: self.limits.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }

    /// A pooled storage buffer of at least `bytes` bytes (contents undefined), or
    /// `Err` when the device is lost, the size passes `max_buffer_size` or the
    /// driver is out of memory — before any work using it is queued.
    pub(crate) fn try_alloc(&self, op: &'static str, bytes: u64) -> Result<GpuBuffer> {
        self.check_alive(op)?;
        if let Some(slot) = self.capture_alloc(op, bytes) {
            return slot;
        }
        let buf = self
            .pool
            .take(&self.device, bytes, self.limits.max_buffer_size)
            .map_err(|detail| Error::Gpu { op, detail })?;
        Ok(GpuBuffer::new(buf, self.pool.clone()))
    }

    /// [`GpuContext::try_alloc`] for callers that cannot fail: a failed allocation
    /// gives a small placeholder buffer and its error is returned by the next
    /// `dispatch`, readback or synchronize, so no kernel runs on it.
    pub(crate) fn alloc(&self, bytes: u64) -> GpuBuffer {
        self.try_alloc("alloc", bytes)
            .unwrap_or_else(|e| self.placeholder(e))
    }

    /// Records `error` for the next fallible call and returns a 16-byte buffer
    /// outside the pool in place of the one that could not be allocated.
    fn placeholder(&self, error: Error) -> GpuBuffer {
        let detail = match error {
            Error::Gpu { detail, .. } => detail,
            other => other.to_string(),
        };
        lock(&self.errors).push(detail);
        GpuBuffer::unpooled(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgrad.placeholder"),
            size: 16,
            usage: pool::STORAGE_USAGE,
            mapped_at_creation: false,
        }))
    }

    /// A pooled buffer holding `data`.
    ///
    /// The buffer may come from the pool with a write to it still recorded in the
    /// pending encoder (its previous tensor was dropped before a submit). A
    /// `queue.write_buffer` would land before that stale write at the next submit,
    /// so while work is pending the data goes through a staging buffer copied in
    /// order inside the encoder.
    pub(crate) fn upload(&self, data: &[u8]) -> Result<GpuBuffer> {
        if let Some(kept) = self.capture_upload(data) {
            return kept;
        }
        let buf = self.try_alloc("upload", data.len() as u64)?;
        if data.is_empty() {
            return Ok(buf);
        }
        let mut padded = data.to_vec();
        padded.resize(data.len().div_ceil(4) * 4, 0);
        let mut pending = lock(&self.pending);
        match pending.encoder.as_mut() {
            None => self.queue.write_buffer(buf.raw(), 0, &padded),
            Some(encoder) => {
                let staging = wgpu::util::DeviceExt::create_buffer_init(
                    &self.device,
                    &wgpu::util::BufferInitDescriptor {
                        label: Some("wgrad.upload"),
                        contents: &padded,
                        usage: wgpu::BufferUsages::COPY_SRC,
                    },
                );
                encoder.copy_buffer_to_buffer(&staging, 0, buf.raw(), 0, padded.len() as u64);
            }
        }
        Ok(buf)
    }

    pub(crate) fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    pub(crate) fn trim_pool(&self) {
        self.pool.trim()
    }

    fn module(&self, kernel: &Kernel) -> Result<wgpu::ShaderModule> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(kernel.name) {
            return Ok(m.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                op: kernel.name,
                detail: format!("shader did not compile: {e}"),
            });
        }
        modules.insert(kernel.name, m.clone());
        Ok(m)
    }

    /// The cached pipeline for `entry` of `kernel` with override `constants`.
    pub(crate) fn pipeline(
        &self,
        kernel: &Kernel,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<wgpu::ComputePipeline> {
        let hash = pipeline_hash(kernel.name, entry, constants);
        if let Some(bucket) = lock(&self.pipelines).get(&hash) {
            if let Some(e) = bucket
                .iter()
                .find(|e| e.matches(kernel.name, entry, constants))
            {
                return Ok(e.pipeline.clone());
            }
        }
        // Formatted only when a pipeline is made (its label), never per dispatch.
        let key = format!("{}::{}{:?}", kernel.name, entry, constants);
        let module = self.module(kernel)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&key),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                op: kernel.name,
                detail: format!("pipeline {key} failed: {e}"),
            });
        }
        lock(&self.pipelines)
            .entry(hash)
            .or_default()
            .push(PipelineEntry {
                kernel: kernel.name,
                entry: entry.into(),
                constants: constants
                    .iter()
                    .map(|(n, v)| ((*n).into(), v.to_bits()))
                    .collect(),
                pipeline: p.clone(),
            });
        Ok(p)
    }

    /// Splits `groups` workgroups over x and y (and z) so no dimension exceeds
    /// the adapter's limit. Kernels rebuild the linear id as
    /// `wg.x + wg.y * nwg.x + wg.z * nwg.x * nwg.y`.
    pub(crate) fn grid(&self, groups: u64) -> [u32; 3] {
        split_grid(
            groups,
            self.limits.max_compute_workgroups_per_dimension as u64,
        )
    }

    /// Records one dispatch into the pending encoder. Binding 0 of group 0 is
    /// the `params` uniform (u32 words; floats as bits), bindings 1.. the buffers.
    pub(crate) fn dispatch(
        &self,
        kernel: &Kernel,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u32],
        buffers: &[BufArg<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let at: Vec<BufAt<'_>> = buffers.iter().map(|&(b, n)| (b, 0, n)).collect();
        self.dispatch_at(kernel, entry, constants, params, &at, groups)
    }

    /// [`GpuContext::dispatch`] with each buffer bound at a byte offset: how the
    /// ops reach windows of tensors larger than one binding. A binding past
    /// [`GpuContext::binding_limit`] is `Err(TooLarge)` naming the kernel (an op
    /// that does not chunk), never a driver error or a silent clamp.
    pub(crate) fn dispatch_at(
        &self,
        kernel: &Kernel,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u32],
        buffers: &[BufAt<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let bindings: Vec<Binding<'_>> = buffers.iter().map(|&b| Binding::Buffer(b)).collect();
        self.dispatch_bound(kernel, entry, constants, params, &bindings, &[], groups)
    }

    /// [`GpuContext::dispatch_at`] with textures among the bindings: `copies` fill them and
    /// are encoded right before the dispatch, under the same lock (or kept next to it in a
    /// recorded plan), so no other dispatch can refill a shared operand texture in between.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dispatch_bound(
        &self,
        kernel: &Kernel,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u32],
        bindings: &[Binding<'_>],
        copies: &[texture::TextureCopy],
        groups: [u32; 3],
    ) -> Result<()> {
        let one = [Dispatch {
            entry,
            params,
            groups,
        }];
        self.dispatch_bound_all(kernel, constants, bindings, copies, &one)
    }

    /// [`GpuContext::dispatch_bound`] of several entries of `kernel` over the same bindings,
    /// one after another, with `copies` encoded once before the first: all under one lock,
    /// so every dispatch reads what the copies put in the shared operand textures.
    pub(crate) fn dispatch_bound_all(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
        bindings: &[Binding<'_>],
        copies: &[texture::TextureCopy],
        dispatches: &[Dispatch<'_>],
    ) -> Result<()> {
        // A failed allocation, an earlier validation error or a lost device stops
        // here, before anything more is recorded.
        self.check_errors(kernel.name)?;
        let limit = self.binding_limit();
        let too_large = bindings.iter().find_map(|b| match b {
            Binding::Buffer((_, _, bytes)) if *bytes > limit => Some(*bytes),
            _ => None,
        });
        if let Some(bytes) = too_large {
            return Err(Error::TooLarge {
                op: kernel.name,
                shape: vec![(bytes / 4) as usize],
                bytes,
                limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let mut prepared = dispatches
            .iter()
            .map(|d| self.bound_pipeline(kernel, d, constants, bindings))
            .collect::<Result<Vec<_>>>()?;
        let textured = bindings.iter().any(|b| matches!(b, Binding::Texture(_)));
        let mut first = true;
        prepared.retain(|(d, pipeline, bind_group, uniform)| {
            let copies = if std::mem::take(&mut first) {
                copies
            } else {
                &[]
            };
            let recorded = (pipeline, bind_group, uniform);
            !self.capture_dispatch(d.entry, recorded, (copies, textured), d.groups)
        });
        if prepared.is_empty() {
            return Ok(());
        }
        let mut pending = lock(&self.pending);
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgrad.eager"),
                })
        });
        for copy in copies {
            copy.encode(encoder);
        }
        for (d, pipeline, bind_group, _) in &prepared {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            let [x, y, z] = d.groups;
            pass.dispatch_workgroups(x, y, z);
        }
        pending.dispatches += prepared.len();
        pending.dispatches_total += prepared.len() as u64;
        if pending.dispatches >= MAX_PENDING_DISPATCHES {
            self.submit_locked(&mut pending);
        }
        Ok(())
    }

    /// The pipeline of `d`'s entry, its params uniform and its bind group over `bindings`;
    /// bindings that do not match the entry are an error naming the kernel.
    fn bound_pipeline<'d>(
        &self,
        kernel: &Kernel,
        d: &'d Dispatch<'d>,
        constants: &[(&str, f64)],
        bindings: &[Binding<'_>],
    ) -> Result<(
        &'d Dispatch<'d>,
        wgpu::ComputePipeline,
        wgpu::BindGroup,
        wgpu::Buffer,
    )> {
        let (entry, params) = (d.entry, d.params);
        let pipeline = self.pipeline(kernel, entry, constants)?;
        let mut words = params.to_vec();
        // Every params struct fits in PARAMS_WORDS words; padding to that size keeps the
        // binding at least as large as any struct the shader declares.
        words.resize(params.len().div_ceil(4).max(PARAMS_WORDS / 4) * 4, 0);
        let uniform = wgpu::util::DeviceExt::create_buffer_init(
            &self.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("wgrad.params"),
                contents: bytemuck::cast_slice(&words),
                // COPY_DST: a recorded plan rewrites the few params that change per step.
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            },
        );
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, binding) in bindings.iter().enumerate() {
            let resource = match binding {
                Binding::Buffer((buf, offset, bytes)) => {
                    // At least 16 bytes: one vec4, the smallest binding an `array<vec4<f32>>`
                    // accepts (an empty tensor still binds its pooled buffer, >= 16 bytes).
                    let size = (*bytes).max(16).div_ceil(4) * 4;
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: buf,
                        offset: *offset,
                        size: std::num::NonZeroU64::new(
                            size.min(buf.size().saturating_sub(*offset)),
                        ),
                    })
                }
                Binding::Texture(view) => wgpu::BindingResource::TextureView(view),
            };
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource,
            });
        }
        // Buffers that do not match the entry point's bindings are a validation error:
        // caught here so the dispatch is an Err naming the kernel, never recorded.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                op: kernel.name,
                detail: format!("{entry}: {e}"),
            });
        }
        Ok((d, pipeline, bind_group, uniform))
    }

    /// Copies `bytes` bytes between two buffers, in order with the dispatches.
    pub(crate) fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        if self.capture_copy(src, src_off, dst, dst_off, bytes) {
            return;
        }
        let mut pending = lock(&self.pending);
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgrad.eager"),
                })
        });
        encoder.copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }

    fn submit_locked(&self, pending: &mut Pending) {
        if let Some(enc) = pending.encoder.take() {
            self.queue.submit([enc.finish()]);
            pending.dispatches = 0;
            pending.submits += 1;
        }
    }

    /// Number of queue submits so far (the benchmark reports submits per step).
    pub(crate) fn submits(&self) -> u64 {
        lock(&self.pending).submits
    }

    /// Number of kernel dispatches recorded so far.
    pub(crate) fn dispatches(&self) -> u64 {
        lock(&self.pending).dispatches_total
    }

    /// Waits for all submitted work to finish.
    pub(crate) fn synchronize(&self, op: &'static str) -> Result<()> {
        self.check_alive(op)?;
        // Reading the status words waits for all recorded work and reports what it found.
        pollster::block_on(self.read_async(op, &self.status_buffer(), 0)).map(|_| ())
    }

    /// Submits the recorded work and waits for everything submitted, reporting nothing it
    /// found: a bad label or index a kernel saw (the thread's status words) and a validation
    /// error stay to be reported by the next op or read back, as if this wait had not
    /// happened. Compile-time timing waits so (`crate::plan_reads`).
    pub(crate) fn wait_idle(&self, op: &'static str) -> Result<()> {
        self.check_alive(op)?;
        self.submit_locked(&mut lock(&self.pending));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu {
                op,
                detail: e.to_string(),
            })
    }

    /// Reads `bytes` bytes from the start of `src` after all recorded work.
    pub(crate) async fn read_async(
        &self,
        op: &'static str,
        src: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        self.capture_readback(op);
        self.check_errors(op)?;
        let padded = bytes.div_ceil(4) * 4;
        let status = self.status_buffer();
        // The thread's status words ride along at the end of every readback (and are cleared in
        // the same submit), so bad data a kernel saw surfaces here without another sync.
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgrad.readback"),
            size: padded + STATUS_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut pending = lock(&self.pending);
            let encoder = pending.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("wgrad.eager"),
                    })
            });
            if padded > 0 {
                encoder.copy_buffer_to_buffer(src, 0, &staging, 0, padded);
            }
            encoder.copy_buffer_to_buffer(&status, 0, &staging, padded, STATUS_BYTES);
            encoder.clear_buffer(&status, 0, None);
            self.submit_locked(&mut pending);
        }
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu {
                op,
                detail: e.to_string(),
            })?;
        self.check_errors(op)?;
        match rx.receive().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(Error::Gpu {
                    op,
                    detail: format!("map failed: {e}"),
                })
            }
            None => {
                return Err(Error::Gpu {
                    op,
                    detail: "map callback dropped".into(),
                })
            }
        }
        let data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu {
                op,
                detail: format!("mapped range: {e}"),
            })?
            .to_vec();
        staging.unmap();
        let mut data = data;
        let status: Vec<u32> = bytemuck::pod_collect_to_vec(&data[padded as usize..]);
        check_status(&status)?;
        data.truncate(bytes as usize);
        Ok(data)
    }
}

/// Splits `groups` workgroups into x·y·z >= groups with no dimension above `max`.
/// Split evenly so at most one row of workgroups past `groups` runs idle
/// (x = max with y = ceil(n/max) could nearly double a just-too-big grid).
pub(crate) fn split_grid(groups: u64, max: u64) -> [u32; 3] {
    let (groups, max) = (groups.max(1), max.max(1));
    if groups <= max {
        return [groups as u32, 1, 1];
    }
    let z = groups.div_ceil(max * max);
    let per_z = groups.div_ceil(z);
    let y = per_z.div_ceil(max);
    let x = per_z.div_ceil(y);
    [x as u32, y as u32, z as u32]
}

#[cfg(test)]
mod tests {
    use super::split_grid;

    #[test]
    fn grids_cover_every_workgroup_within_limits() {
        for groups in [
            1u64,
            7,
            65535,
            65536,
            70000,
            131071,
            65535 * 65535 + 3,
            10_000_000_000,
        ] {
            let [x, y, z] = split_grid(groups, 65535);
            let total = x as u64 * y as u64 * z as u64;
            assert!(total >= groups, "{groups}: {x}x{y}x{z}");
            assert!(x <= 65535 && y <= 65535 && z <= 65535);
            // waste below one row of x (per z slice)
            assert!(
                total - groups < (x as u64) * z as u64,
                "{groups}: {x}x{y}x{z} wastes too much"
            );
        }
    }
}
