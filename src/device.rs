//! `Device`: where tensors live and kernels run — a GPU through wgpu, or the
//! CPU reference that every GPU kernel is checked against.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{AdapterSummary, GpuContext, PoolStats};

/// A compute device. Cloning is cheap and shares the device.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: DeviceInner,
    /// CPU reference only: keep f32 tensors in f64 between ops (see [`Device::cpu_f64`]).
    pub(crate) wide: bool,
}

#[derive(Clone)]
pub(crate) enum DeviceInner {
    Gpu(Arc<GpuContext>),
    Cpu,
}

impl Device {
    /// The best GPU adapter, chosen headlessly: discrete > integrated >
    /// software (lavapipe, llvmpipe, WARP). Honours `WGPU_BACKEND` and
    /// `WGPU_ADAPTER_NAME`. Without any adapter: `Err(Error::NoAdapter)`.
    pub fn gpu() -> Result<Device> {
        Ok(Device {
            inner: DeviceInner::Gpu(Arc::new(GpuContext::new()?)),
            wide: false,
        })
    }

    /// The CPU reference: the same ops, computed plainly (in f64 where
    /// accumulation matters) to verify the GPU kernels.
    pub fn cpu() -> Device {
        Device {
            inner: DeviceInner::Cpu,
            wide: false,
        }
    }

    /// The CPU reference in double precision: f32 tensors are held as f64
    /// between ops, so a chain of ops (a whole graph, its gradient) is
    /// evaluated in f64 and only rounded when read back as f32. This is what
    /// central finite differences need: with f32 storage the rounding of the
    /// loss (~1e-7 relative) swamps a small step h, in f64 h = 1e-6 leaves
    /// errors near 1e-9. Read the wide values with [`crate::Tensor::to_vec_f64`]
    /// and create them with [`crate::Tensor::from_f64`].
    pub fn cpu_f64() -> Device {
        Device {
            inner: DeviceInner::Cpu,
            wide: true,
        }
    }

    /// True for the double-precision CPU reference ([`Device::cpu_f64`]).
    pub fn is_f64_reference(&self) -> bool {
        self.wide
    }

    /// True for a GPU device.
    pub fn is_gpu(&self) -> bool {
        matches!(self.inner, DeviceInner::Gpu(_))
    }

    /// True when f16 tensors can be computed on: always on the CPU reference, on a GPU when
    /// its adapter has `SHADER_F16`.
    pub fn supports_f16(&self) -> bool {
        match &self.inner {
            DeviceInner::Gpu(g) => g.summary.shader_f16,
            DeviceInner::Cpu => true,
        }
    }

    /// The adapter behind a GPU device (`None` for the CPU reference).
    pub fn adapter(&self) -> Option<&AdapterSummary> {
        match &self.inner {
            DeviceInner::Gpu(g) => Some(&g.summary),
            DeviceInner::Cpu => None,
        }
    }

    /// A one-line description: the adapter, or `cpu (reference)`.
    pub fn name(&self) -> String {
        match &self.inner {
            DeviceInner::Gpu(g) => g.summary.to_string(),
            DeviceInner::Cpu if self.wide => "cpu (reference, f64)".to_string(),
            DeviceInner::Cpu => "cpu (reference)".to_string(),
        }
    }

    /// Waits until all work queued on this device has finished; reports any
    /// error the GPU raised meanwhile.
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner {
            DeviceInner::Gpu(g) => g.synchronize("synchronize"),
            DeviceInner::Cpu => Ok(()),
        }
    }

    /// Buffer pool counters (all zero on the CPU).
    pub fn pool_stats(&self) -> PoolStats {
        match &self.inner {
            DeviceInner::Gpu(g) => g.pool_stats(),
            DeviceInner::Cpu => PoolStats::default(),
        }
    }

    /// Frees the buffers waiting in the pool.
    pub fn trim_pool(&self) {
        if let DeviceInner::Gpu(g) = &self.inner {
            g.trim_pool()
        }
    }

    /// Queue submits made so far on this device.
    pub fn submit_count(&self) -> u64 {
        match &self.inner {
            DeviceInner::Gpu(g) => g.submits(),
            DeviceInner::Cpu => 0,
        }
    }

    /// Kernel dispatches recorded so far on this device.
    pub fn dispatch_count(&self) -> u64 {
        match &self.inner {
            DeviceInner::Gpu(g) => g.dispatches(),
            DeviceInner::Cpu => 0,
        }
    }

    /// True when both handles refer to the same device.
    pub fn same(&self, other: &Device) -> bool {
        match (&self.inner, &other.inner) {
            (DeviceInner::Gpu(a), DeviceInner::Gpu(b)) => Arc::ptr_eq(a, b),
            (DeviceInner::Cpu, DeviceInner::Cpu) => self.wide == other.wide,
            _ => false,
        }
    }

    pub(crate) fn gpu_ctx(&self) -> Option<&Arc<GpuContext>> {
        match &self.inner {
            DeviceInner::Gpu(g) => Some(g),
            DeviceInner::Cpu => None,
        }
    }

    /// Lowers the storage-binding size the ops plan for (bytes, at least 1 KiB,
    /// never above the adapter's). Tests use it to run the chunked paths for
    /// tensors past max_storage_buffer_binding_size with small tensors; no
    /// effect on the CPU device.
    #[doc(hidden)]
    pub fn limit_bindings_for_testing(&self, bytes: u64) {
        if let Some(g) = self.gpu_ctx() {
            g.set_binding_limit(bytes);
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.name())
    }
}

/// Every adapter wgpu can see (for `wgrad info`): a summary of each, in the
/// order they would be preferred.
pub fn list_adapters() -> Vec<(String, String, String, String)> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
    let mut v: Vec<_> = crate::gpu::adapter::list_adapters(&instance)
        .into_iter()
        .map(|a| {
            let i = a.get_info();
            (
                crate::gpu::adapter::type_rank(i.device_type),
                crate::gpu::adapter::backend_rank(i.backend),
                (
                    i.name.clone(),
                    format!("{:?}", i.backend),
                    format!("{:?}", i.device_type),
                    format!("{} {}", i.driver, i.driver_info).trim().to_string(),
                ),
            )
        })
        .collect();
    v.sort_by_key(|(t, b, _)| (*t, *b));
    v.into_iter().map(|(_, _, s)| s).collect()
}
