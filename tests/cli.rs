//! The `wgrad` command end to end: info, check and bench.

mod common;

use std::process::Command;

fn wgrad(args: &[&str]) -> std::process::Output {
    wgrad_with(args, &[])
}

/// `wgrad args` with the environment variables `envs` set.
fn wgrad_with(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run wgrad")
}

/// `wgrad check --json` with `envs` set: asserts that it succeeds, that every check passes
/// and that more than 150 ran, and returns its output.
fn check_passes(envs: &[(&str, &str)]) -> String {
    let out = wgrad_with(&["check", "--json"], envs);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let failed: Vec<&&str> = lines
        .iter()
        .filter(|l| !l.contains("\"pass\":true"))
        .collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "failed checks ({envs:?}):\n{failed:?}"
    );
    assert!(lines.len() > 150, "only {} checks ran", lines.len());
    text
}

#[test]
fn info_names_the_adapter() {
    let Some(dev) = common::gpu() else { return };
    let out = wgrad(&["info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&dev.adapter().unwrap().name), "{text}");
    assert!(text.contains("max_storage_buffer_binding_size"), "{text}");
}

#[test]
fn wgrad_asks_lavapipe_for_two_threads_per_core_unless_told() {
    let Some(_dev) = common::gpu() else { return };
    let threads_line = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("software-adapter worker threads (LP_NUM_THREADS): "))
            .unwrap_or_else(|| panic!("no worker-thread line in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    // Unset: twice the cores this process may use, at most Mesa 22.3's 16.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let unset = Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .arg("info")
        .env_remove("LP_NUM_THREADS")
        .output()
        .expect("run wgrad");
    let want = if cores < 2 {
        "default".to_string()
    } else {
        (2 * cores).min(16).to_string()
    };
    assert_eq!(threads_line(unset), want);
    // Set by the user: left as it is.
    assert_eq!(
        threads_line(wgrad_with(&["info"], &[("LP_NUM_THREADS", "3")])),
        "3"
    );
}

#[test]
fn check_passes_every_kernel_and_gradient() {
    if common::gpu().is_none() {
        return;
    }
    let text = check_passes(&[]);
    for op in [
        "\"op\":\"gelu\"",
        "\"op\":\"matmul",
        "\"op\":\"softmax",
        "\"op\":\"grad matmul\"",
        "\"op\":\"cross_entropy\"",
        "\"op\":\"qr\"",
        "\"op\":\"eig\"",
        "\"op\":\"eigh\"",
        "\"op\":\"svd\"",
    ] {
        assert!(text.contains(op), "no {op} check");
    }
}

#[test]
fn bench_prints_json_lines() {
    if common::gpu().is_none() {
        return;
    }
    let out = wgrad(&["bench", "--json", "--filter", "add", "--no-cpu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The roofs come first, measured in the same run.
    let mut lines = text.lines();
    for roof in ["\"op\":\"roof_copy\"", "\"op\":\"roof_fma\""] {
        let line = lines.next().expect("a roof line");
        assert!(line.contains(roof), "{roof} missing in {line}");
    }
    let line = lines.next().expect("one figure");
    for field in [
        "\"op\":\"add\"",
        "\"shape\":[",
        "\"device\":\"gpu\"",
        "\"adapter\":",
        "\"ms\":",
        "\"gbps\":",
        "\"roof\":\"memory\"",
        "\"fraction_of_roof\":",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

/// The digits benchmark step's dispatch entries (`WGRAD_PLAN=verbose`) with `WGRAD_TEXTURES`
/// set to `textures`.
fn digits_step_entries(textures: &str) -> Vec<String> {
    let out = wgrad_with(
        &["bench", "--json", "--no-cpu", "--filter", "digits_epoch"],
        &[("WGRAD_PLAN", "verbose"), ("WGRAD_TEXTURES", textures)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("digits_epoch dispatches: "))
        .unwrap_or_else(|| panic!("no dispatch list in {stderr}"));
    line.trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|e| e.trim_matches('"').to_string())
        .collect()
}

/// `WGRAD_TEXTURES=0` runs every kernel that reads its operands through textures in its
/// storage-buffer form instead: the same dispatches, none textured, and every check passes.
#[test]
fn texture_reads_turn_off() {
    let Some(dev) = common::gpu() else { return };
    let on = digits_step_entries("1");
    let off = digits_step_entries("0");
    assert!(off.iter().all(|e| !e.ends_with(".tex")), "{off:?}");
    let untextured: Vec<&str> = on.iter().map(|e| e.trim_end_matches(".tex")).collect();
    assert_eq!(untextured, off, "textures on: {on:?}");
    // Lavapipe's Vulkan adapter (8-wide subgroups) reads textures by default, so there the
    // switch has something to turn off.
    let info = dev.adapter().unwrap();
    if info.name.contains("llvmpipe") && info.backend.contains("Vulkan") {
        assert!(on.iter().any(|e| e.ends_with(".tex")), "{on:?}");
    }
    check_passes(&[("WGRAD_TEXTURES", "0")]);
}
