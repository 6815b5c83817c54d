//! Recording a compiled plan once and replaying it every run.
//!
//! While a capture is active on a thread, the ops that thread runs on one
//! [`GpuContext`] do not encode anything: each dispatch is kept with its pipeline,
//! params uniform and bind group (created once, here), each buffer copy is kept,
//! and every buffer an op allocates comes from the plan's private slot pool
//! ([`Pool::slots`]) — so a tensor freed after its last use hands its buffer to a
//! later node of the same plan (the liveness-based slot assignment), and no one
//! outside the plan can ever get it. A run then only encodes the kept commands
//! into the pending encoder: no uniforms, bind groups or pipeline look-ups.
//!
//! An op that reads data back to the host while being recorded cannot be
//! replayed (its result would depend on data the recording never saw): the
//! capture is marked unusable and the executor runs that graph eagerly.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use super::pool::{GpuBuffer, Pool, STORAGE_USAGE};
use super::texture::TextureCopy;
use super::{lock, GpuContext};
use crate::error::{Error, Result};

/// One recorded dispatch: everything a run needs to encode it.
pub(crate) struct Recorded {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) bind_group: wgpu::BindGroup,
    /// The params uniform bound at binding 0 (rewritten by the executor for the
    /// few kernels whose params change per step, such as Adam's bias correction).
    pub(crate) uniform: wgpu::Buffer,
    pub(crate) groups: [u32; 3],
    /// The entry point (for listings and tests).
    pub(crate) entry: String,
}

/// A command of a recorded plan.
pub(crate) enum Command {
    /// A kernel dispatch.
    Dispatch(Recorded),
    /// A buffer range into an operand texture (see [`super::texture`]), kept right before
    /// the dispatch that reads it.
    TextureCopy(TextureCopy),
    /// `copy_buffer_to_buffer`.
    Copy {
        src: wgpu::Buffer,
        src_off: u64,
        dst: wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    },
}

struct Active {
    /// Identity of the context being recorded (its address).
    ctx: usize,
    slots: Arc<Pool>,
    commands: Vec<Command>,
    /// Set when an op did something a replay cannot reproduce.
    unusable: Option<String>,
    /// Buffers whose contents only the plan's owner changes (see [`pin`]).
    pinnable: HashSet<wgpu::Buffer>,
    /// The textures of the pinned buffers read so far, with the copies that fill them.
    pins: Vec<(TextureCopy, wgpu::TextureView)>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

fn with_active<R>(ctx: &GpuContext, f: impl FnOnce(&mut Active) -> R) -> Option<R> {
    ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        match a.as_mut() {
            Some(act) if act.ctx == ctx as *const GpuContext as usize => Some(f(act)),
            _ => None,
        }
    })
}

/// What a finished capture produced.
pub(crate) struct Captured {
    pub(crate) commands: Vec<Command>,
    /// The slot pool (its buffers are referenced by the commands).
    pub(crate) slots: Arc<Pool>,
    /// The copies that fill the pinned textures the commands read (see [`pin`]): encoded
    /// once before the first run, and again whenever their buffer's contents change.
    pub(crate) pins: Vec<TextureCopy>,
}

/// Starts recording what this thread does on `ctx`, taking slots from `slots`: a new
/// [`Pool::slots`], or another recording's pool where only one of the two plans will run
/// (a plan's slots hold nothing from one run to the next), so the second reuses the first
/// one's buffers.
pub(crate) fn begin(ctx: &GpuContext, slots: Arc<Pool>) {
    ACTIVE.with(|a| {
        *a.borrow_mut() = Some(Active {
            ctx: ctx as *const GpuContext as usize,
            slots,
            commands: Vec::new(),
            unusable: None,
            pinnable: HashSet::new(),
            pins: Vec::new(),
        })
    });
}

/// Most bytes of pinned textures one plan holds: they duplicate the weights, so a model
/// near the device's memory would otherwise fail to compile where it ran before. Past it,
/// weights are copied into the shared textures before each dispatch, as without pinning.
const PIN_BUDGET: u64 = 1 << 30;

/// Whether a plan holding `held` bytes of pinned textures may pin `bytes` more.
fn within_pin_budget(held: u64, bytes: u64) -> bool {
    held.saturating_add(bytes) <= PIN_BUDGET
}

/// Lets the capture on `ctx` read `buffers` through textures of the plan's own, filled by
/// the copies [`Captured::pins`] lists instead of a copy before every dispatch. Only for
/// buffers nothing writes between those fills: an inference plan's weights, which only
/// `set_param` changes (it fills the textures again).
pub(crate) fn pin(ctx: &GpuContext, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
    with_active(ctx, |a| a.pinnable.extend(buffers));
}

/// Number of commands recorded so far (to mark where a section starts).
pub(crate) fn position(ctx: &GpuContext) -> usize {
    with_active(ctx, |a| a.commands.len()).unwrap_or(0)
}

/// Stops recording; `Err` if a recorded op cannot be replayed.
pub(crate) fn end(ctx: &GpuContext) -> Result<Captured> {
    let active = ACTIVE.with(|a| a.borrow_mut().take());
    let Some(a) = active.filter(|a| a.ctx == ctx as *const GpuContext as usize) else {
        return Err(Error::Invalid {
            op: "compile",
            detail: "no capture in progress".into(),
        });
    };
    if let Some(why) = a.unusable {
        return Err(Error::Invalid {
            op: "compile",
            detail: format!("the plan cannot be recorded: {why}"),
        });
    }
    Ok(Captured {
        commands: a.commands,
        slots: a.slots,
        pins: a.pins.into_iter().map(|(copy, _)| copy).collect(),
    })
}

/// Runs `f` with this thread's capture (if any) set aside: what `f` does is
/// encoded and submitted as usual (the matmul autotuner times real runs).
pub(crate) fn suspended<R>(f: impl FnOnce() -> R) -> R {
    let saved = ACTIVE.with(|a| a.borrow_mut().take());
    let r = f();
    ACTIVE.with(|a| *a.borrow_mut() = saved);
    r
}

/// Abandons a capture (on an error while recording).
pub(crate) fn abort() {
    ACTIVE.with(|a| a.borrow_mut().take());
}

impl GpuContext {
    /// During a capture: a buffer from the plan's slot pool.
    pub(crate) fn capture_alloc(&self, op: &'static str, bytes: u64) -> Option<Result<GpuBuffer>> {
        let slots = with_active(self, |a| a.slots.clone())?;
        Some(
            slots
                .take(&self.device, bytes, self.limits.max_buffer_size)
                .map(|b| GpuBuffer::new(b, slots.clone()))
                .map_err(|detail| Error::Gpu { op, detail }),
        )
    }

    /// During a capture: data an op uploads (a constant of its shape) goes to a
    /// buffer of its own that the recording keeps, never to a reusable slot.
    pub(crate) fn capture_upload(&self, data: &[u8]) -> Option<Result<GpuBuffer>> {
        with_active(self, |_| ())?;
        let mut padded = data.to_vec();
        padded.resize(data.len().div_ceil(4).max(4) * 4, 0);
        let buf = wgpu::util::DeviceExt::create_buffer_init(
            &self.device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("wgrad.plan.const"),
                contents: &padded,
                usage: STORAGE_USAGE,
            },
        );
        // Outside every pool: the recorded bind groups keep it alive.
        Some(Ok(GpuBuffer::unpooled(buf)))
    }

    /// During a capture: keeps a dispatch, after the texture copies it reads, instead of
    /// encoding it (`true` if kept). A dispatch that reads textures (copied or pinned) is
    /// listed as `entry.tex`.
    pub(crate) fn capture_dispatch(
        &self,
        entry: &str,
        (pipeline, bind_group, uniform): (&wgpu::ComputePipeline, &wgpu::BindGroup, &wgpu::Buffer),
        (copies, textured): (&[TextureCopy], bool),
        groups: [u32; 3],
    ) -> bool {
        with_active(self, |a| {
            a.commands
                .extend(copies.iter().cloned().map(Command::TextureCopy));
            a.commands.push(Command::Dispatch(Recorded {
                pipeline: pipeline.clone(),
                bind_group: bind_group.clone(),
                uniform: uniform.clone(),
                groups,
                entry: if textured {
                    format!("{entry}.tex")
                } else {
                    entry.to_string()
                },
            }))
        })
        .is_some()
    }

    /// During a capture: the texture of `src`'s first `bytes` when [`pin`] pinned `src`
    /// (created at its first read), or `None` (not pinned, or not readable as a texture).
    pub(crate) fn capture_pinned(
        &self,
        src: &wgpu::Buffer,
        bytes: u64,
    ) -> Option<wgpu::TextureView> {
        with_active(self, |a| {
            if !a.pinnable.contains(src) {
                return None;
            }
            if let Some((copy, view)) = a.pins.iter().find(|(c, _)| c.src() == src) {
                // A longer read than the first falls back to the shared textures.
                return (copy.bytes() >= bytes).then(|| view.clone());
            }
            let held: u64 = a.pins.iter().map(|(c, _)| c.bytes()).sum();
            if !within_pin_budget(held, bytes) {
                return None; // copied before each dispatch, as without pinning
            }
            let (copy, view) = self.pinned_texture((src, bytes))?;
            a.pins.push((copy, view.clone()));
            Some(view)
        })
        .flatten()
    }

    /// During a capture: keeps a copy instead of encoding it (`true` if kept).
    pub(crate) fn capture_copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) -> bool {
        with_active(self, |a| {
            a.commands.push(Command::Copy {
                src: src.clone(),
                src_off,
                dst: dst.clone(),
                dst_off,
                bytes,
            })
        })
        .is_some()
    }

    /// During a capture: a read back makes the recording unusable.
    pub(crate) fn capture_readback(&self, op: &'static str) {
        with_active(self, |a| {
            a.unusable
                .get_or_insert_with(|| format!("{op} reads data back while the plan is recorded"));
        });
    }

    /// Encodes `writes` (host data into buffers) and then `sections` of recorded
    /// commands into the pending encoder, in order with everything recorded
    /// before, under one lock (another thread's work cannot interleave).
    pub(crate) fn replay(
        &self,
        op: &'static str,
        writes: &[(&wgpu::Buffer, &[u8])],
        sections: &[&[Command]],
    ) -> Result<()> {
        self.check_errors(op)?;
        let mut pending = lock(&self.pending);
        for (dst, data) in writes {
            if data.is_empty() {
                continue;
            }
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            match pending.encoder.as_mut() {
                // Nothing recorded yet: the write lands before this run's commands.
                None => self.queue.write_buffer(dst, 0, &padded),
                // Commands of an earlier run may still read `dst`: copy in order.
                Some(encoder) => {
                    let staging = wgpu::util::DeviceExt::create_buffer_init(
                        &self.device,
                        &wgpu::util::BufferInitDescriptor {
                            label: Some("wgrad.feed"),
                            contents: &padded,
                            usage: wgpu::BufferUsages::COPY_SRC,
                        },
                    );
                    encoder.copy_buffer_to_buffer(&staging, 0, dst, 0, padded.len() as u64);
                }
            }
        }
        let encoder = pending.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgrad.plan"),
                })
        });
        let mut dispatched = 0usize;
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        for cmd in sections.iter().flat_map(|s| s.iter()) {
            match cmd {
                Command::Dispatch(r) => {
                    // Consecutive dispatches share one compute pass; wgpu orders
                    // their storage accesses within it.
                    let p = pass.get_or_insert_with(|| {
                        encoder
                            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some("wgrad.plan"),
                                timestamp_writes: None,
                            })
                            .forget_lifetime()
                    });
                    p.set_pipeline(&r.pipeline);
                    p.set_bind_group(0, &r.bind_group, &[]);
                    p.dispatch_workgroups(r.groups[0], r.groups[1], r.groups[2]);
                    dispatched += 1;
                }
                Command::TextureCopy(copy) => {
                    drop(pass.take());
                    copy.encode(encoder);
                }
                Command::Copy {
                    src,
                    src_off,
                    dst,
                    dst_off,
                    bytes,
                } => {
                    drop(pass.take());
                    encoder.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *bytes);
                }
            }
        }
        drop(pass);
        pending.dispatches += dispatched;
        pending.dispatches_total += dispatched as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_stops_at_the_budget() {
        assert!(within_pin_budget(0, PIN_BUDGET));
        assert!(within_pin_budget(PIN_BUDGET - 16, 16));
        assert!(!within_pin_budget(PIN_BUDGET - 16, 32));
        assert!(!within_pin_budget(u64::MAX, 16));
    }
}
