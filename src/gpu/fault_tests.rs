//! Device faults surface as `Err`, never an abort: validation errors (a dispatch
//! with the wrong buffers, a grid over the limits), allocations over
//! `max_buffer_size`, out of memory, and a lost device — after which a new
//! device works.

use super::*;

/// A one-binding kernel: `out[i] = params.value + i` for `i < params.n`.
const FILL: Kernel = Kernel {
    name: "fault_test",
    source: "
struct Params { value: u32, n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>; // (n,)
@compute @workgroup_size(1)
fn fill(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < params.n) { out[id.x] = params.value + id.x; }
}
",
};

/// A device of its own per test (faults must not leak into other tests), or
/// `None` to skip without an adapter (a failure under `CI=true`).
fn context() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(c) => Some(c),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipping GPU fault test: {e}");
            None
        }
        Err(e) => panic!("CI=true and no GPU device: {e}"),
    }
}

/// Runs `fill` on a fresh buffer and reads it back.
fn fill(ctx: &GpuContext, value: u32, n: u32) -> Result<Vec<u32>> {
    let buf = ctx.try_alloc("fill", n as u64 * 4)?;
    ctx.dispatch(
        &FILL,
        "fill",
        &[],
        &[value, n],
        &[(buf.raw(), n as u64 * 4)],
        [n, 1, 1],
    )?;
    let bytes = pollster::block_on(ctx.read_async("fill", buf.raw(), n as u64 * 4))?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

fn gpu_detail<T>(r: Result<T>) -> (&'static str, String) {
    match r {
        Err(Error::Gpu { op, detail }) => (op, detail),
        Err(e) => panic!("expected Error::Gpu, got {e:?}"),
        Ok(_) => panic!("expected Err(Error::Gpu), got Ok"),
    }
}

#[test]
fn a_dispatch_with_the_wrong_buffers_is_a_validation_error() {
    let Some(ctx) = context() else { return };
    let buf = ctx.try_alloc("t", 64).unwrap();
    // No buffer for binding 1, then one too many (binding 2 is not in the layout).
    let (op, detail) = gpu_detail(ctx.dispatch(&FILL, "fill", &[], &[1, 4], &[], [1, 1, 1]));
    assert_eq!(op, "fault_test");
    assert!(detail.contains("fill"), "{detail}");
    let two = [(buf.raw(), 16), (buf.raw(), 16)];
    gpu_detail(ctx.dispatch(&FILL, "fill", &[], &[1, 4], &two, [1, 1, 1]));
    // Nothing was recorded; the device goes on working.
    assert_eq!(ctx.dispatches(), 0);
    ctx.synchronize("t").unwrap();
    assert_eq!(fill(&ctx, 7, 4).unwrap(), vec![7, 8, 9, 10]);
}

#[test]
fn a_validation_error_in_recorded_work_surfaces_at_synchronize() {
    let Some(ctx) = context() else { return };
    let buf = ctx.try_alloc("t", 16).unwrap();
    let over = ctx.limits.max_compute_workgroups_per_dimension + 1;
    // The grid is checked when the pass is recorded: an error for the next call.
    ctx.dispatch(
        &FILL,
        "fill",
        &[],
        &[1, 0],
        &[(buf.raw(), 16)],
        [over, 1, 1],
    )
    .unwrap();
    let (_, detail) = gpu_detail(ctx.synchronize("synchronize"));
    eprintln!("validation error reported: {detail}");
    // Reported once; later work runs normally.
    ctx.synchronize("synchronize").unwrap();
    assert_eq!(fill(&ctx, 3, 5).unwrap(), vec![3, 4, 5, 6, 7]);
}

#[test]
fn an_allocation_over_max_buffer_size_is_an_error_before_any_work() {
    let Some(ctx) = context() else { return };
    let before = ctx.pool_stats();
    let too_big = ctx.limits.max_buffer_size + 4;
    let (op, detail) = gpu_detail(ctx.try_alloc("huge", too_big));
    assert_eq!(op, "huge");
    assert!(detail.contains("max_buffer_size"), "{detail}");
    // The infallible path hands out a placeholder and fails the next dispatch.
    let placeholder = ctx.alloc(too_big);
    let r = ctx.dispatch(
        &FILL,
        "fill",
        &[],
        &[1, 4],
        &[(placeholder.raw(), 16)],
        [1, 1, 1],
    );
    let (op, detail) = gpu_detail(r);
    assert_eq!(op, "fault_test");
    assert!(detail.contains("max_buffer_size"), "{detail}");
    assert_eq!(ctx.dispatches(), 0, "nothing was queued");
    drop(placeholder);
    assert_eq!(
        ctx.pool_stats(),
        before,
        "failed allocations leave the pool's books alone"
    );
    assert_eq!(fill(&ctx, 1, 3).unwrap(), vec![1, 2, 3]);
}

/// Runs in a child process under `ulimit -v` (a software adapter's device
/// memory is host memory, so the limit makes buffer creation fail for real).
///
/// The limit is the child's own address space once it holds a device, plus
/// 4 GiB, measured by a first child run. (Measuring the parent instead made
/// the limit depend on whatever the tests running beside it had reserved at
/// that moment, and a large one let all 64 buffers fit.)
#[test]
fn out_of_memory_is_an_error_not_an_abort() {
    match std::env::var("WGRAD_OOM_CHILD").as_deref() {
        Ok("measure") => return oom_child_measure(),
        Ok(_) => return oom_child(),
        Err(_) => {}
    }
    let Some(ctx) = context() else { return };
    if ctx.info.device_type != wgpu::DeviceType::Cpu {
        // A real GPU's memory is not bounded by ulimit; the allocation loop below
        // would fill it for real. The max_buffer_size test covers such adapters.
        eprintln!("skipping: the OOM probe is for software adapters");
        return;
    }
    drop(ctx);
    if std::fs::metadata("/proc/self/statm").is_err() {
        return eprintln!("skipping: no /proc");
    }
    let Some(measured) = run_oom_child("measure", None) else {
        return eprintln!("skipping: no sh to set ulimit");
    };
    let vm_kib: u64 = measured
        .lines()
        .find_map(|l| l.strip_prefix("oom child vm_kib: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the measuring child printed no size:\n{measured}"));
    let log = run_oom_child("allocate", Some(vm_kib + (4 << 20))).expect("sh ran once already");
    assert!(log.contains("oom child: out of memory after"), "{log}");
}

/// Runs this test again in a child process with `WGRAD_OOM_CHILD=mode`, under
/// `ulimit -v limit_kib` when given; returns its output (None: no `sh`).
fn run_oom_child(mode: &str, limit_kib: Option<u64>) -> Option<String> {
    let limit = limit_kib.map_or(String::new(), |kib| format!("ulimit -v {kib} && "));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{limit}exec \"$0\" \"$@\""))
        .arg(std::env::current_exe().unwrap())
        .args([
            "gpu::fault_tests::out_of_memory_is_an_error_not_an_abort",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WGRAD_OOM_CHILD", mode)
        .output()
        .ok()?;
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    eprintln!("{log}");
    assert!(
        out.status.success(),
        "{mode} child failed ({:?}):\n{log}",
        out.status
    );
    Some(log.into_owned())
}

/// Prints the address space of a process that holds a device (KiB).
fn oom_child_measure() {
    let ctx = GpuContext::new().expect("a device");
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("oom child vm_kib: {}", pages * 4);
    drop(ctx);
}

/// Allocates ~2 GiB buffers until the driver says out of memory, then checks the
/// device still works once they are freed.
fn oom_child() {
    let ctx = GpuContext::new().expect("a device under ulimit");
    let size = ctx.limits.max_buffer_size.min(2 << 30) & !3;
    let mut held = Vec::new();
    for i in 0..64 {
        match ctx.try_alloc("oom", size) {
            Ok(b) => held.push(b),
            Err(e) => {
                let (op, detail) = gpu_detail::<()>(Err(e));
                assert_eq!(op, "oom");
                eprintln!("oom child: out of memory after {i} buffers of {size} bytes: {detail}");
                break;
            }
        }
    }
    assert!(held.len() < 64, "no allocation failed under ulimit");
    drop(held);
    ctx.trim_pool();
    assert_eq!(fill(&ctx, 5, 2).unwrap(), vec![5, 6]);
}

#[test]
fn a_lost_device_fails_every_call_and_a_new_device_works() {
    let Some(ctx) = context() else { return };
    let buf = ctx.try_alloc("t", 16).unwrap();
    ctx.device.destroy();
    let (op, detail) = gpu_detail(ctx.synchronize("synchronize"));
    assert_eq!(op, "synchronize");
    assert!(detail.starts_with("device lost: "), "{detail}");
    gpu_detail(ctx.try_alloc("alloc", 16));
    gpu_detail(ctx.dispatch(&FILL, "fill", &[], &[1, 4], &[(buf.raw(), 16)], [1, 1, 1]));
    gpu_detail(pollster::block_on(ctx.read_async("read", buf.raw(), 16)));
    gpu_detail(ctx.synchronize("synchronize"));
    drop(buf);
    drop(ctx);
    let fresh = context().expect("a new device after the loss");
    assert_eq!(fill(&fresh, 9, 3).unwrap(), vec![9, 10, 11]);
}
