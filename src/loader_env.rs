//! Keeping the Vulkan loader quiet. Without `XDG_RUNTIME_DIR` (a plain `ssh` session, a
//! container, CI) Mesa's Wayland WSI, which the Vulkan loader opens while enumerating
//! adapters, prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.`
//! to stderr: noise in a command whose stderr is for real errors. [`quiet_loader_env`]
//! points the variable at a private directory first, as `scripts/gpu-env.sh` does for the
//! scripts.
//!
//! It is a function the program calls at the very start of `main`, not something
//! `Device::gpu` does by itself: changing the environment while other threads may read it
//! (`getenv` in a driver thread, a test harness's threads) is a data race, which is why Rust
//! 2024 makes `set_var` unsafe. At the top of `main` the process has one thread.

use std::path::{Path, PathBuf};

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
