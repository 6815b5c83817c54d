//! A buffer pool: storage buffers are recycled by size class when the tensor
//! that owned them is dropped, so repeated runs do not allocate.
//!
//! Size classes are 2^k and 1.5·2^k bytes (at most a third wasted). Pooled
//! buffers can be larger than the tensor in them, which is why kernels take
//! their element counts from a params uniform rather than `arrayLength`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Usage of every pooled buffer: read and written by kernels, copied in and out.
pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Counters the pool exposes (for soak tests and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created since the device was made.
    pub created: u64,
    /// Allocations served from the free lists.
    pub reused: u64,
    /// Buffers currently owned by tensors.
    pub live_buffers: u64,
    /// Bytes of those buffers.
    pub live_bytes: u64,
    /// Buffers waiting in the free lists.
    pub free_buffers: u64,
    /// Bytes waiting in the free lists.
    pub free_bytes: u64,
}

#[derive(Default)]
struct Inner {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// Free lists of storage buffers by size class.
#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<Inner>,
    /// A compiled plan's private slot pool: buffers are created at the exact size
    /// asked for, a request takes the smallest free buffer that holds it, and
    /// every buffer is kept (see [`Pool::slots`]).
    best_fit: bool,
}

/// Bytes above which freed buffers are destroyed instead of kept.
const MAX_FREE_BYTES: u64 = 1 << 30;

/// The size class that holds `bytes`.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(16);
    let p = b.next_power_of_two();
    let three_quarters = p / 4 * 3;
    if b <= three_quarters && three_quarters % 4 == 0 {
        three_quarters
    } else {
        p
    }
}

impl Pool {
    /// The slot allocator of a compiled plan: tensors freed after their last use
    /// hand their buffer to later nodes of the same plan (best fit), and nobody
    /// outside the plan ever gets one, so recorded bind groups stay valid.
    pub(crate) fn slots() -> Pool {
        Pool {
            best_fit: true,
            ..Pool::default()
        }
    }

    /// The smallest free buffer of at least `bytes` (best-fit pools only), and
    /// at most twice that (plus 4 KiB): a small tensor does not take a big slot a
    /// later big tensor could have used.
    fn take_best_fit(inner: &mut Inner, bytes: u64) -> Option<wgpu::Buffer> {
        let most = bytes.saturating_mul(2).saturating_add(4096);
        let size = *inner
            .free
            .iter()
            .filter(|(s, v)| **s >= bytes && **s <= most && !v.is_empty())
            .map(|(s, _)| s)
            .min()?;
        let b = inner.free.get_mut(&size)?.pop()?;
        inner.stats.reused += 1;
        inner.stats.free_buffers -= 1;
        inner.stats.free_bytes -= size;
        Some(b)
    }

    /// A buffer of at least `bytes` bytes: a free one of its size class, or a new
    /// one. Creation runs inside out-of-memory and validation error scopes, so a
    /// failed allocation is an `Err` (with the driver's message) instead of an
    /// invalid buffer that would fail later work; `max_buffer` is the adapter's
    /// `max_buffer_size`, checked first.
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        max_buffer: u64,
    ) -> Result<wgpu::Buffer, String> {
        let mut class = if self.best_fit {
            bytes.max(16).div_ceil(16) * 16
        } else {
            size_class(bytes)
        };
        if class > max_buffer {
            // The class would pass the limit where the bytes do not: exact size, never
            // pooled (give_back drops sizes that are not a class).
            class = bytes.div_ceil(4) * 4;
        }
        if class > max_buffer {
            return Err(format!(
                "cannot allocate {bytes} bytes: over this adapter's max_buffer_size of {max_buffer} bytes"
            ));
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if self.best_fit {
            if let Some(b) = Self::take_best_fit(&mut inner, bytes) {
                inner.stats.live_buffers += 1;
                inner.stats.live_bytes += b.size();
                return Ok(b);
            }
        }
        let reused = inner.free.get_mut(&class).and_then(|v| v.pop());
        let buf = match reused {
            Some(b) => {
                inner.stats.reused += 1;
                inner.stats.free_buffers -= 1;
                inner.stats.free_bytes -= class;
                b
            }
            None => {
                let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let invalid = device.push_error_scope(wgpu::ErrorFilter::Validation);
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgrad.tensor"),
                    size: class,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                });
                // Scopes pop in reverse order of their pushes.
                let invalid = pollster::block_on(invalid.pop());
                let oom = pollster::block_on(oom.pop());
                if let Some(e) = oom.or(invalid) {
                    return Err(format!("creating a buffer of {class} bytes failed: {e}"));
                }
                inner.stats.created += 1;
                b
            }
        };
        inner.stats.live_buffers += 1;
        inner.stats.live_bytes += class;
        Ok(buf)
    }

    pub(crate) fn give_back(&self, buf: wgpu::Buffer) {
        let class = buf.size();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.stats.live_buffers -= 1;
        inner.stats.live_bytes -= class;
        let keep = self.best_fit
            || (size_class(class) == class && inner.stats.free_bytes + class <= MAX_FREE_BYTES);
        if keep {
            inner.stats.free_buffers += 1;
            inner.stats.free_bytes += class;
            inner.free.entry(class).or_default().push(buf);
        } else {
            // Dropped, not destroyed: unsubmitted commands may still use it, and wgpu
            // frees it once they are done.
            drop(buf);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).stats
    }

    /// Destroys every free buffer (memory pressure, tests).
    pub(crate) fn trim(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Dropped, not destroyed (see give_back).
        inner.free.clear();
        inner.stats.free_buffers = 0;
        inner.stats.free_bytes = 0;
    }
}

/// A pooled storage buffer owned by one or more tensors (through `Arc`);
/// returns to the pool when the last owner drops it.
pub(crate) struct GpuBuffer {
    buf: Option<wgpu::Buffer>,
    /// `None` for a buffer that did not come from the pool (the placeholder
    /// handed out when an allocation failed): dropped, not given back.
    pool: Option<Arc<Pool>>,
}

impl GpuBuffer {
    pub(crate) fn new(buf: wgpu::Buffer, pool: Arc<Pool>) -> Self {
        GpuBuffer {
            buf: Some(buf),
            pool: Some(pool),
        }
    }

    /// A buffer outside the pool's books.
    pub(crate) fn unpooled(buf: wgpu::Buffer) -> Self {
        GpuBuffer {
            buf: Some(buf),
            pool: None,
        }
    }

    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let (Some(b), Some(pool)) = (self.buf.take(), &self.pool) {
            pool.give_back(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_hold_and_waste_at_most_a_third() {
        for bytes in [
            1u64,
            4,
            16,
            17,
            100,
            4096,
            4097,
            6144,
            6145,
            1 << 20,
            (1 << 20) + 4,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c % 4 == 0);
            assert!(bytes < 16 || c * 2 <= bytes * 3 + 32, "{bytes} -> {c}");
        }
    }
}
