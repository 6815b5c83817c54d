//! Headless adapter selection: the best adapter for compute, honouring
//! `WGPU_BACKEND` (which backends to look at) and `WGPU_ADAPTER_NAME`
//! (a case-insensitive substring of the adapter's name).

/// What a user needs to know about an adapter, one call away.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Backend: Vulkan, Metal, Dx12, Gl.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
    /// Driver name and version as reported by the driver.
    pub driver: String,
    /// Largest storage buffer one binding may cover, in bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer: u64,
    /// Largest number of invocations in one workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Workgroup memory per workgroup, in bytes.
    pub max_workgroup_storage: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dimension: u32,
    /// Storage buffers one shader stage may bind (WebGPU's default 8; lavapipe 32).
    pub max_storage_buffers_per_stage: u32,
    /// Whether subgroup operations are enabled on the device.
    pub subgroups: bool,
    /// Whether f16 in shaders is enabled on the device.
    pub shader_f16: bool,
    /// Why this adapter was chosen over the others.
    pub reason: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {})",
            self.name, self.backend, self.device_type, self.driver
        )
    }
}

/// Lower is better: compute prefers real GPUs, then software adapters.
pub(crate) fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Lower is better among backends on the same hardware: the native compute
/// APIs before GL (wgpu's GL backend lacks storage-buffer features we use).
pub(crate) fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 2,
        _ => 3,
    }
}

/// All adapters wgpu can see for the backends allowed by `WGPU_BACKEND`.
pub(crate) fn list_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Picks the best adapter; returns it with the reason it won.
pub(crate) fn choose(adapters: Vec<wgpu::Adapter>) -> Option<(wgpu::Adapter, String)> {
    let wanted = std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase());
    let total = adapters.len();
    let mut candidates: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| match &wanted {
            Some(w) => a.get_info().name.to_lowercase().contains(w.as_str()),
            None => true,
        })
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    candidates.sort_by_key(|a| {
        let i = a.get_info();
        (type_rank(i.device_type), backend_rank(i.backend))
    });
    let best = candidates.into_iter().next()?;
    let info = best.get_info();
    let reason = match &wanted {
        Some(w) => format!("matches WGPU_ADAPTER_NAME={w:?}; best {:?} among {total} adapters", info.device_type),
        None => format!(
            "best of {total} adapters by type (discrete > integrated > virtual > software) and backend"
        ),
    };
    Some((best, reason))
}
