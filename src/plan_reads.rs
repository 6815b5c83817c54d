//! How a compiled GPU plan reads its products' operands: through textures (copied in before
//! each dispatch that reads them, or pinned: an inference plan's weights) or straight from
//! the storage buffers. Both compute the same values; which is faster depends on the host
//! CPU under lavapipe and on the workload (the figures are at `gpu::texture::TEXTURES_ENV`):
//! on an AVX2 host textures took a digits CNN epoch from 379-533 to 258-334 ms, while on an
//! AVX-512 Xeon the same epoch, conv2d_fwd_bwd and a ResNet-50 training step all ran 13-22%
//! faster from buffers, and ResNet-50 inference (pinned weights) 8% slower. No one default
//! is right everywhere, so a plan that reads textures is recorded a second time without them,
//! on the same slot pool (no second set of intermediates), and the two are timed at compile:
//! the faster is kept, the other dropped.
//!
//! What is timed: the forward and backward commands alone, replayed on zero inputs. They
//! write the plan's slots and nothing else (no parameter, optimizer moment or graph state),
//! so the replays change nothing a run reads. The textured form is replayed first, once
//! untimed (pipeline compiles, first touches of new buffers) and once timed: a plan faster
//! than [`MIN_TIMED_MS`], or too slow for [`MIN_ROUNDS`] of both forms to fit [`BUDGET_MS`],
//! keeps textures, untimed, with no second recording. Otherwise the storage form is recorded
//! and replayed once untimed, then both are sampled in alternated rounds, as many as fit the
//! budget; the form with the fastest sample wins, textures on a tie. The fastest, not the
//! median: on the AVX-512 Xeon the digits step's samples fell in two bands (textures 5.5-6.0
//! or 8-10 ms, buffers 4.6-5.0 or 7.3-8.2 ms, 9 rounds), and medians picked buffers in 4 of
//! 6 compiles, the fastest samples in every one. Plans kept textured untimed keep the form
//! the shipped figures were measured with.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::gpu::pool::Pool;
use crate::gpu::texture::{textures_forced, with_texture_reads};
use crate::gpu::GpuContext;
use crate::graph::Node;

/// Most milliseconds of timing replays one compile spends (after one replay of each form).
const BUDGET_MS: f64 = 1000.0;

/// Fewest alternated rounds a choice is made on: fewer fit the budget, no choice is made.
const MIN_ROUNDS: usize = 3;

/// Most alternated rounds.
const MAX_ROUNDS: usize = 7;

/// A plan whose textured forward and backward replays in less (milliseconds) keeps
/// textures untimed: a second recording (mostly pipeline creation, ~0.3 s for the digits
/// step on lavapipe) would cost more than the runs could win back for a long while.
const MIN_TIMED_MS: f64 = 0.5;

/// Milliseconds a sample of both forms aims at: small plans are replayed several times back
/// to back per sample (at most [`MAX_REPS`]).
const SAMPLE_MS: f64 = 10.0;

/// Most replays per sample.
const MAX_REPS: usize = 8;

/// Most multiply-adds of a plan timed at all: a first replay of something bigger could take
/// seconds on a software adapter (ResNet-50's forward is 4.1 G, at about 0.2 s on lavapipe;
/// its training step at batch 8, ~100 G, is 11 s).
const MAX_TIMED_MULTIPLY_ADDS: f64 = (1u64 << 31) as f64;

/// The two forms' times at compile: the fastest sample of each over alternated rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadTiming {
    /// Reading operands through textures, milliseconds per forward and backward.
    pub textures_ms: f64,
    /// Reading them from storage buffers.
    pub buffers_ms: f64,
    /// Alternated rounds timed.
    pub rounds: usize,
}

/// A recorded plan, as far as choosing its form goes.
pub(crate) trait PlanForm {
    /// Whether some dispatch of a run reads an operand through a texture.
    fn reads_textures(&self) -> bool;
    /// Encodes the forward and backward commands alone, which write the plan's slots only.
    fn replay_forward_backward(&self, ctx: &GpuContext) -> Result<()>;
    /// Writes zeros into the plan's fixed input buffers (shared by both forms), which hold
    /// whatever their pooled buffers held before: a stale class label or index would make a
    /// replay report an invalid input. Zero is a valid label and index.
    fn zero_inputs(&self, ctx: &GpuContext) -> Result<()>;
    /// Where the choice is kept.
    fn reads_mut(&mut self) -> &mut Reads;
}

/// How a recorded plan reads its operands, and the timing that chose it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Reads {
    /// Some dispatch reads an operand through a texture.
    pub(crate) textures: bool,
    /// Both forms timed (`None`: one form only, or not timed).
    pub(crate) timing: Option<ReadTiming>,
}

/// Records a plan with `record` (given the slot pool to share, `None` for a new one) and,
/// where it reads textures, again without them; keeps the faster form (see the module).
/// `verbose` (`WGRAD_PLAN=verbose`) prints the choice.
pub(crate) fn record_faster<P: PlanForm>(
    ctx: &GpuContext,
    nodes: &[Node],
    verbose: bool,
    record: impl Fn(Option<Arc<Pool>>) -> Result<(P, Arc<Pool>)>,
) -> Result<P> {
    let (mut textured, slots) = record(None)?;
    let reads_textures = textured.reads_textures();
    textured.reads_mut().textures = reads_textures;
    if textures_forced().is_some()
        || !reads_textures
        || crate::graph::work::multiply_adds(nodes) > MAX_TIMED_MULTIPLY_ADDS
    {
        return Ok(textured);
    }
    let untimed = |why: String| {
        if verbose {
            eprintln!("wgrad: plan reads operands through textures, untimed: {why}");
        }
    };
    // The replays run on zero inputs, a valid label and index: no kernel should find bad
    // data there. The waits leave the status words alone, so a fault found in work recorded
    // before the compile is still reported at the next read back. An error here (a lost
    // device, a validation error) leaves the textured form untimed; a run reports it again.
    let textured_ms = match textured
        .zero_inputs(ctx)
        .and_then(|()| probe(ctx, &textured))
    {
        Ok(ms) if ms < MIN_TIMED_MS => {
            untimed(format!("{ms:.3} ms a replay, under {MIN_TIMED_MS} ms"));
            return Ok(textured);
        }
        Ok(ms) if 2.0 * ms * MIN_ROUNDS as f64 > BUDGET_MS => {
            untimed(format!(
                "{ms:.1} ms a replay: {MIN_ROUNDS} rounds of both forms would take over \
                 {BUDGET_MS} ms"
            ));
            return Ok(textured);
        }
        Ok(ms) => ms,
        Err(e) => {
            untimed(e.to_string());
            return Ok(textured);
        }
    };
    // A storage form that cannot be recorded (none is known) leaves the textured one.
    let Ok((mut plain, _)) = with_texture_reads(false, || record(Some(slots))) else {
        return Ok(textured);
    };
    plain.reads_mut().textures = plain.reads_textures();
    let timing = match time_both(ctx, &textured, &plain, textured_ms) {
        Ok(timing) => timing,
        Err(e) => {
            untimed(e.to_string());
            return Ok(textured);
        }
    };
    let buffers_win = timing.buffers_ms < timing.textures_ms;
    if verbose {
        eprintln!(
            "wgrad: plan reads operands from {}: {:.3} ms through textures, {:.3} ms from \
             buffers (fastest of {} rounds)",
            if buffers_win { "buffers" } else { "textures" },
            timing.textures_ms,
            timing.buffers_ms,
            timing.rounds
        );
    }
    let mut kept = if buffers_win { plain } else { textured };
    kept.reads_mut().timing = Some(timing);
    Ok(kept)
}

/// Milliseconds per replay of `reps` replays of `plan`'s forward and backward back to back
/// (as a run follows the last), waited for.
fn sample<P: PlanForm>(ctx: &GpuContext, plan: &P, reps: usize) -> Result<f64> {
    ctx.wait_idle("compile")?;
    let t0 = Instant::now();
    for _ in 0..reps {
        plan.replay_forward_backward(ctx)?;
    }
    ctx.wait_idle("compile")?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// One timed replay of `plan`, after an untimed one: lavapipe compiles a pipeline at its
/// first dispatch (3.6 s for the digits step's two forms with Mesa's shader cache off,
/// against ~10 ms warm), which the plan's first run would pay anyway.
fn probe<P: PlanForm>(ctx: &GpuContext, plan: &P) -> Result<f64> {
    sample(ctx, plan, 1)?;
    sample(ctx, plan, 1)
}

/// The fastest of alternated samples of both forms' forward and backward, after an untimed
/// replay of the storage form, as many rounds as fit [`BUDGET_MS`] at `textured_ms` a
/// replay of the textured form (and at least [`MIN_ROUNDS`]).
fn time_both<P: PlanForm>(
    ctx: &GpuContext,
    textured: &P,
    plain: &P,
    textured_ms: f64,
) -> Result<ReadTiming> {
    sample(ctx, plain, 1)?;
    let pair = 2.0 * textured_ms;
    let reps = ((SAMPLE_MS / pair).ceil() as usize).clamp(1, MAX_REPS);
    let rounds = ((BUDGET_MS / (pair * reps as f64)) as usize).clamp(MIN_ROUNDS, MAX_ROUNDS);
    let (mut tex, mut buf) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for r in 0..rounds {
        // Each form goes first in every other round: neither always follows the other.
        if r % 2 == 0 {
            tex.push(sample(ctx, textured, reps)?);
            buf.push(sample(ctx, plain, reps)?);
        } else {
            buf.push(sample(ctx, plain, reps)?);
            tex.push(sample(ctx, textured, reps)?);
        }
    }
    let fastest = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(ReadTiming {
        textures_ms: fastest(&tex),
        buffers_ms: fastest(&buf),
        rounds,
    })
}

#[cfg(test)]
mod tests {
    use crate::gpu::texture::with_texture_reads;
    use crate::ops::conv::Conv2d;
    use crate::{Device, Executor, Graph, Init, Rng, Sgd, Tensor};

    /// A lavapipe Vulkan device (products read textures there by default), or `None` to
    /// skip elsewhere; `CI=true` without any GPU adapter fails.
    fn lavapipe_vulkan() -> Option<Device> {
        let dev = match Device::gpu() {
            Ok(d) => d,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("CI=true and no GPU adapter: {e}")
            }
            Err(_) => return None,
        };
        let info = dev.adapter()?;
        (info.name.contains("llvmpipe") && info.backend.contains("Vulkan")).then_some(dev)
    }

    /// [`lavapipe_vulkan`] where plans are timed (`WGRAD_TEXTURES` unset), else `None`.
    fn lavapipe_vulkan_timing() -> Option<Device> {
        lavapipe_vulkan().filter(|_| crate::gpu::texture::textures_forced().is_none())
    }

    /// Batch, channels in, filters, image side, classes of [`compiled_step`]: a few
    /// milliseconds a step on lavapipe, well past [`super::MIN_TIMED_MS`].
    const N: usize = 16;
    const C: usize = 3;
    const F: usize = 8;
    const SIDE: usize = 18;
    const CLASSES: usize = 10;
    /// Features after the 3×3 convolution (no padding).
    const FEATURES: usize = F * (SIDE - 2) * (SIDE - 2);

    /// A small convolutional classifier's training step (convolution, ReLU, product,
    /// cross-entropy; SGD) compiled on `dev`, with its parameters set from a seeded RNG.
    fn compiled_step(dev: &Device) -> Executor {
        let g = Graph::new();
        let x = g.input("x", &[N, C, SIDE, SIDE]);
        let y = g.input_i32("y", &[N]);
        let w = g.param("w", &[F, C, 3, 3], Init::Zeros);
        let v = g.param("v", &[FEATURES, CLASSES], Init::Zeros);
        let h = x.conv2d(&w, Conv2d::new(3, 3)).unwrap().relu().unwrap();
        let logits = h.reshape(&[N, FEATURES]).unwrap().matmul(&v).unwrap();
        let loss = logits.cross_entropy(&y).unwrap().mean().unwrap();
        let exe = dev.compile(&g, &[&loss], Sgd::new(0.1)).unwrap();
        let mut rng = Rng::new(5);
        for (name, shape) in [("w", vec![F, C, 3, 3]), ("v", vec![FEATURES, CLASSES])] {
            let n = shape.iter().product();
            let t = Tensor::from_slice(dev, &rng.vec_uniform(n, -0.1, 0.1), &shape).unwrap();
            exe.set_param(name, &t).unwrap();
        }
        exe
    }

    /// The losses of three steps, then both parameters, as host bits.
    fn train(dev: &Device, exe: &Executor) -> Vec<u32> {
        let mut rng = Rng::new(6);
        let xs = [N, C, SIDE, SIDE];
        let x = Tensor::from_slice(dev, &rng.vec_uniform(xs.iter().product(), -1.0, 1.0), &xs);
        let labels: Vec<i32> = (0..N).map(|_| rng.below(CLASSES) as i32).collect();
        let y = Tensor::from_slice(dev, &labels, &[N]).unwrap();
        let x = x.unwrap();
        let mut bits = Vec::new();
        for _ in 0..3 {
            let loss: f32 = exe.run(&[("x", &x), ("y", &y)]).unwrap()[0].item().unwrap();
            bits.push(loss.to_bits());
        }
        for name in ["w", "v"] {
            let p = exe.param(name).unwrap().to_vec::<f32>().unwrap();
            bits.extend(p.iter().map(|v| v.to_bits()));
        }
        bits
    }

    #[test]
    fn both_forms_train_to_the_same_bits() {
        let Some(dev) = lavapipe_vulkan() else { return };
        let textured = with_texture_reads(true, || compiled_step(&dev));
        let plain = with_texture_reads(false, || compiled_step(&dev));
        // Forced, neither form is timed; the textured one does read textures here.
        assert!(textured.plan().reads_textures && textured.read_timing().is_none());
        assert!(!plain.plan().reads_textures && plain.read_timing().is_none());
        let tex = textured.dispatch_entries();
        assert!(tex.iter().any(|e| e.ends_with(".tex")), "{tex:?}");
        assert!(plain
            .dispatch_entries()
            .iter()
            .all(|e| !e.ends_with(".tex")));
        assert_eq!(train(&dev, &textured), train(&dev, &plain));
    }

    #[test]
    fn the_faster_form_is_kept() {
        let Some(dev) = lavapipe_vulkan_timing() else {
            return;
        };
        let exe = compiled_step(&dev);
        let t = exe.read_timing().expect("both forms timed");
        assert!(t.rounds >= super::MIN_ROUNDS && t.rounds <= super::MAX_ROUNDS);
        assert!(t.textures_ms > 0.0 && t.buffers_ms > 0.0, "{t:?}");
        let textures = exe.plan().reads_textures;
        assert_eq!(textures, t.textures_ms <= t.buffers_ms, "{t:?}");
        let entries = exe.dispatch_entries();
        assert_eq!(
            entries.iter().any(|e| e.ends_with(".tex")),
            textures,
            "{entries:?}"
        );
        // The kept form trains as the forced storage form does.
        let plain = with_texture_reads(false, || compiled_step(&dev));
        assert_eq!(train(&dev, &exe), train(&dev, &plain));
    }

    /// The timing replays wait without reading the status words: a bad label found by work
    /// recorded before the compile is reported at the next read back, as without timing, and
    /// the plan is still recorded and timed.
    #[test]
    fn a_fault_found_before_the_compile_is_still_reported() {
        let Some(dev) = lavapipe_vulkan_timing() else {
            return;
        };
        let logits = Tensor::from_slice(&dev, &[0.5f32; 8], &[2, 4]).unwrap();
        let labels = Tensor::from_slice(&dev, &[1i32, 9], &[2]).unwrap();
        let loss = logits.cross_entropy(&labels).unwrap(); // recorded, not read back
        let exe = compiled_step(&dev);
        assert!(exe.is_recorded() && exe.read_timing().is_some());
        let err = loss.to_vec::<f32>().unwrap_err().to_string();
        assert!(err.contains("label 9 outside 0..4"), "{err}");
    }
}
