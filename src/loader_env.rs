//! The environment the Vulkan loader and Mesa's software drivers read, set by the program at
//! the start of `main`. Keeping the Vulkan loader quiet: without `XDG_RUNTIME_DIR` (a plain
//! `ssh` session, a container, CI) Mesa's Wayland WSI, which the Vulkan loader opens while
//! enumerating adapters, prints `error: XDG_RUNTIME_DIR is invalid or not set in the
//! environment.` to stderr: noise in a command whose stderr is for real errors.
//! [`quiet_loader_env`] points the variable at a private directory first, as
//! `scripts/gpu-env.sh` does for the scripts.
//!
//! [`lavapipe_threads`] sets the software adapter's worker threads the same way.
//!
//! Both are functions the program calls at the very start of `main`, not something
//! `Device::gpu` does by itself: changing the environment while other threads may read it
//! (`getenv` in a driver thread, a test harness's threads) is a data race, which is why Rust
//! 2024 makes `set_var` unsafe. At the top of `main` the process has one thread.

use std::path::{Path, PathBuf};

/// Mesa's llvmpipe (and lavapipe, its Vulkan driver) variable for its worker threads.
pub const LAVAPIPE_THREADS_ENV: &str = "LP_NUM_THREADS";

/// Worker threads per core [`lavapipe_threads`] asks for.
const THREADS_PER_CORE: usize = 2;

/// Mesa 22.3's most llvmpipe threads (`LP_MAX_THREADS`); it clamps larger values to it.
const MAX_LAVAPIPE_THREADS: usize = 16;

/// Sets `LP_NUM_THREADS` to twice the cores this process may use (at most 16) when it is
/// unset, and returns the value it set (`None` when it was set already, or on one core).
/// It only matters on Mesa's software adapters (lavapipe, llvmpipe GL), which read it once,
/// when the driver starts.
///
/// Why: lavapipe splits each dispatch's workgroups into one equal share per worker thread
/// up front, and by default it starts one thread per core, so a dispatch ends when its
/// slowest core finishes its share. On a shared host a core slowed for a moment holds every
/// dispatch it is in; with two shares per core the other core takes up the slack. Measured on
/// a shared 2-core AMD EPYC host (lavapipe 22.3, `wgrad bench`, 6 alternated rounds in two
/// sittings, 2 threads against 4):
/// - `conv2d_fwd_bwd`: 19.0-24.6 ms (median 22.6) against 14.5-21.9 (median 20.7), faster in
///   5 of 6 rounds;
/// - ResNet-50 inference, median of 11 runs: 175-292 ms (median 282) against 226-292 (median
///   231), faster in 4, level in 1, slower in 1 (a quiet spell: 175 against 232);
/// - the digits epoch's GPU/CPU ratio (`digits_epoch_vs_cpu`): 0.43-0.58 against 0.45-0.58,
///   lower in 3 rounds and higher in 3: level. It is 29 small dispatches a step, and every
///   dispatch wakes every thread: with eight threads (four per core) it was slower
///   (0.66/0.51 against 0.61/0.49 for the default, 2 rounds).
///
/// Call it first thing in `main`, before any thread is started and before any wgpu instance
/// is created, as [`quiet_loader_env`] (and for the same reason the library does not do it
/// by itself).
pub fn lavapipe_threads() -> Option<usize> {
    if std::env::var_os(LAVAPIPE_THREADS_ENV).is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return None;
    }
    let threads = (THREADS_PER_CORE * cores).min(MAX_LAVAPIPE_THREADS);
    // Single-threaded here by the contract above.
    std::env::set_var(LAVAPIPE_THREADS_ENV, threads.to_string());
    Some(threads)
}

/// Points `XDG_RUNTIME_DIR` at a private (0700, owned by this user) directory under the
/// system temp directory when it is unset or invalid (not an absolute path to an existing
/// directory), so the Vulkan loader does not print its warning. Returns the directory it
/// set, or `None` when the variable was already fine (or on non-Unix systems, where it
/// means nothing).
///
/// Call it first thing in `main`, before any thread is started and before any wgpu instance
/// is created (see the module notes on why the library does not do it by itself).
pub fn quiet_loader_env() -> Option<PathBuf> {
    if !cfg!(unix) {
        return None;
    }
    let current = std::env::var_os("XDG_RUNTIME_DIR");
    if current.as_deref().is_some_and(valid) {
        return None;
    }
    let dir = private_dir()?;
    // Single-threaded here by the contract above.
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Some(dir)
}

/// What the Wayland client library checks (an absolute path), plus that it exists.
fn valid(dir: &std::ffi::OsStr) -> bool {
    let p = Path::new(dir);
    p.is_absolute() && p.is_dir()
}

#[cfg(unix)]
fn private_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // The owner of /proc/self is this process's user on Linux; elsewhere a per-process name.
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let name: std::ffi::OsString = match uid {
        Some(u) => format!("wgrad-xdg-{u}").into(),
        None => format!("wgrad-xdg-pid{}", std::process::id()).into(),
    };
    let dir = std::env::temp_dir().join(name);
    let ours = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            m.is_dir() && m.permissions().mode() & 0o077 == 0 && uid.is_none_or(|u| m.uid() == u)
        })
    };
    if !ours(&dir) {
        // Made 0700 from the start; an existing path owned by someone else is not used.
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if !ours(&dir) {
            return None;
        }
    }
    Some(dir)
}

#[cfg(not(unix))]
fn private_dir() -> Option<PathBuf> {
    None
}
