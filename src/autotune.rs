//! Matmul autotune: the first product of a shape class on an adapter times the
//! kernels that adapter can run and keeps the fastest, in memory and on disk
//! (`$XDG_CACHE_HOME/wgrad/matmul.tsv`, else `~/.cache/wgrad/matmul.tsv`), keyed
//! by adapter, driver and shape class. `WGRAD_MATMUL` pins a kernel and skips it.
//!
//! Bounded: each candidate is timed on zero-filled operands of the class's own
//! shape (a warm-up, then the best of a few runs) until [`BUDGET`] is spent; a
//! product whose first run takes longer than [`MAX_RUN`] is not tuned (big
//! products keep the adapter's default, which is the right kernel for them).
//! A cache that cannot be read or written is ignored.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::device::Device;
use crate::gpu::capture;
use crate::ops::matmul_variant::{small_takes, MatmulVariant, MATMUL_ENV};
use crate::tensor::Tensor;

/// Most time one shape class may spend being tuned.
pub const BUDGET: Duration = Duration::from_millis(250);

/// Multiply-adds up to which a product on a CPU adapter is "small" (see `matmul_variant`):
/// 2^21 keeps the benchmark MLP's products (256×64·64×128 is exactly 2^21) on the quickly
/// compiled register-blocked kernels. It was 2^23, which also held the digits CNN's
/// convolution products (4.7M multiply-adds: (1024×144)·(144×32)) there; tuned, they take the
/// subgroup kernel at 1.0-1.2 ms against 1.7-2.0 ms each (lavapipe, same sitting).
const SMALL_PRODUCT: usize = 1 << 21;

/// Products whose first run takes longer than this keep the default kernel.
const MAX_RUN: Duration = Duration::from_millis(40);

/// Tuned choices by "adapter\tdriver\tclass"; `None` until the disk cache is read.
static CHOICES: Mutex<Option<HashMap<String, MatmulVariant>>> = Mutex::new(None);

fn cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wgrad").join("matmul.tsv"))
}

fn parse(name: &str) -> Option<MatmulVariant> {
    MatmulVariant::KERNELS
        .into_iter()
        .find(|v| v.name() == name)
}

fn load() -> HashMap<String, MatmulVariant> {
    let text = cache_file()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (key, v) = l.rsplit_once('\t')?;
            Some((key.to_string(), parse(v)?))
        })
        .collect()
}

fn store(key: &str, v: MatmulVariant) {
    let Some(file) = cache_file() else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(file.parent().unwrap_or(&file))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
        // One short line per write: appends from several processes do not interleave.
        f.write_all(format!("{key}\t{}\n", v.name()).as_bytes())
    };
    let _ = write(); // a cache that cannot be written is only a slower next start
}

/// The shape class of `op(A)·op(B)`: transposes, sizes rounded up to powers of
/// two, and whether each operand's rows need padding for the vec4 kernels.
fn class(a: &[usize], b: &[usize], ta: bool, tb: bool) -> String {
    let p2 = |x: usize| x.max(1).next_power_of_two();
    let last = |s: &[usize]| s.last().copied().unwrap_or(1);
    let rows = |s: &[usize]| if s.len() >= 2 { s[s.len() - 2] } else { 1 };
    let batch = |s: &[usize]| s.iter().rev().skip(2).product::<usize>();
    format!(
        "a{}x{}x{}{}{} b{}x{}x{}{}{}",
        p2(batch(a)),
        p2(rows(a)),
        p2(last(a)),
        if ta { "t" } else { "" },
        if last(a) % 4 == 0 { "" } else { "p" },
        p2(batch(b)),
        p2(rows(b)),
        p2(last(b)),
        if tb { "t" } else { "" },
        if last(b) % 4 == 0 { "" } else { "p" },
    )
}

/// The kernel for this product of `macs` multiply-adds into C of `n` columns along a
/// reduction of `k`:
/// `requested` unless it is `Auto` and `WGRAD_MATMUL` is unset (or `auto`), in which case
/// the tuned one.
pub(crate) fn matmul_variant(
    a: &Tensor,
    b: &Tensor,
    (ta, tb): (bool, bool),
    (macs, n, k): (usize, usize, usize),
    requested: MatmulVariant,
) -> MatmulVariant {
    let pinned = std::env::var(MATMUL_ENV).is_ok_and(|v| !matches!(v.trim(), "" | "auto"));
    let Some(ctx) = a.device().gpu_ctx() else {
        return requested;
    };
    if requested != MatmulVariant::Auto || pinned {
        return requested;
    }
    // Small products on CPU adapters take the register-blocked variant untuned: its
    // pipelines serve every layout and compile in ~0.26 s (the 4x4 kernel it runs up to
    // 2^21 multiply-adds) and ~0.45 s (8x8) on lavapipe, where the subgroup kernel's take
    // ~3.5 s each cold (LLVM unrolling 16x16 outputs per lane). Warm, the subgroup kernel is
    // faster at this size, but not by enough to pay for that: the digits classifier's three
    // products (64×512·512×10, its Xᵀ·dY and dY·Wᵀ) took 0.58-1.25 ms each on the small
    // kernel and 0.42-0.73 ms on the subgroup kernel with texture reads (Intel Xeon host,
    // 3 rounds, best of 50), ~1.5 ms a step; the subgroup kernel's three layouts cost
    // 2.2 + 2.7 + 1.7 s to compile with Mesa's shader cache off (0.4 s each from it),
    // against 0.37 s for the one small pipeline. 30 digits epochs would win back ~1 s.
    // This is what keeps a cold first training step under a second (~0.63 s for the MLP
    // 64-128-10). Past the small kernel's K (`small_takes`) the
    // register-blocked variant would run its 8x8 kernel, which the adapter's default
    // (untuned) beats: 0.72 ms against 0.28 ms on the subgroup kernel for 64×512·512×10, a
    // product the small kernel now takes (C has 10 columns).
    if ctx.info.device_type == wgpu::DeviceType::Cpu
        && macs <= SMALL_PRODUCT
        && MatmulVariant::RegisterBlocked.resolve(a.device()).is_ok()
    {
        return if small_takes(n, k) {
            MatmulVariant::RegisterBlocked
        } else {
            MatmulVariant::Auto
        };
    }
    // "v4": choices stored by the earlier tuners (v1: no margin, not round-robin; v2: a
    // challenger's win not confirmed; v3: before the texture-read subgroup kernel) are
    // ignored.
    let key = format!(
        "v4\t{}\t{}\t{}",
        ctx.summary.name,
        ctx.summary.driver,
        class(a.shape(), b.shape(), ta, tb)
    );
    {
        let mut choices = CHOICES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = choices.get_or_insert_with(load).get(&key) {
            return *v;
        }
    }
    // Timing needs real submits: step out of a plan being recorded meanwhile.
    let tuned = capture::suspended(|| tune(a.device(), a.shape(), b.shape(), ta, tb));
    let choice = tuned.unwrap_or(MatmulVariant::Auto);
    CHOICES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key.clone(), choice);
    if tuned.is_some() {
        store(&key, choice);
    }
    choice
}

/// How much faster than the adapter's default another kernel must time to replace it:
/// timings on a busy two-core host swing by 20-30%, and a choice stored from one noisy
/// sitting stays on disk (a stale "blocked" for ResNet-50's 1x1 convolutions ran them
/// 1.5-2.5x slower than the subgroup default).
const MARGIN: f64 = 0.85;

/// Times every kernel the adapter runs on zero operands of these shapes, round-robin
/// (a load change hits every candidate alike), best of up to three runs each; a kernel
/// other than the default wins only by [`MARGIN`], and only if it does so again over
/// [`CONFIRM_RUNS`] fresh runs alternated with the default's. `None` when the product is
/// too big to tune or nothing ran.
fn tune(dev: &Device, a: &[usize], b: &[usize], ta: bool, tb: bool) -> Option<MatmulVariant> {
    let start = Instant::now();
    let (x, y) = (Tensor::zeros(dev, a).ok()?, Tensor::zeros(dev, b).ok()?);
    let run = |v: MatmulVariant| -> Option<Duration> {
        let t0 = Instant::now();
        drop(x.matmul_with_variant(&y, ta, tb, v).ok()?);
        dev.synchronize().ok()?;
        Some(t0.elapsed())
    };
    // The adapter's default first: if its first run (pipeline compile included)
    // is already slow, the product is too big to tune and keeps that default.
    let default = MatmulVariant::Auto.resolve(dev).ok()?;
    if run(default)? > MAX_RUN {
        return None;
    }
    let mut candidates = vec![(default, Duration::MAX)];
    for v in MatmulVariant::KERNELS.into_iter().filter(|&v| v != default) {
        // Not on this adapter (the subgroup kernel without 8-lane subgroups), or its
        // warm-up (pipeline compile) already too slow: not a contender.
        if v.resolve(dev).is_ok() && run(v)? <= MAX_RUN {
            candidates.push((v, Duration::MAX));
        }
    }
    for round in 0..3 {
        if round > 0 && start.elapsed() > BUDGET {
            break;
        }
        for (v, t) in candidates.iter_mut() {
            *t = (*t).min(run(*v)?);
        }
    }
    let default_time = candidates[0].1.as_secs_f64();
    let (best, time) = candidates.iter().min_by_key(|c| c.1).copied()?;
    if best == default || time.as_secs_f64() >= MARGIN * default_time {
        return Some(default);
    }
    // A challenger must win again on fresh samples, alternated with the default: past the
    // budget the rounds above may have timed each kernel once, and one default run slowed
    // by the other core's load (tests in parallel, a build) stored "blocked" for
    // ResNet-50's stage-3 products, which run 2.2x slower on it (lavapipe: 17.0 against
    // 7.7 ms for 256x2304.2304x196; ResNet-50 inference 467-500 ms with those choices,
    // 333-354 ms without).
    let (mut d, mut b) = (Duration::MAX, Duration::MAX);
    for _ in 0..CONFIRM_RUNS {
        d = d.min(run(default)?);
        b = b.min(run(best)?);
    }
    Some(if b.as_secs_f64() < MARGIN * d.as_secs_f64() {
        best
    } else {
        default
    })
}

/// Alternated runs of the default and a challenger that confirm a challenger's win.
const CONFIRM_RUNS: usize = 3;

#[cfg(test)]
mod tests {
    use super::class;

    #[test]
    fn classes_round_sizes_and_mark_padding() {
        assert_eq!(
            class(&[256, 64], &[64, 128], false, false),
            "a1x256x64 b1x64x128"
        );
        assert_eq!(
            class(&[255, 60], &[60, 10], false, true),
            "a1x256x64 b1x64x16tp"
        );
        assert_eq!(class(&[3, 5, 7], &[7], true, false), "a4x8x8tp b1x1x8p");
    }
}
