//! `wgrad info`: what wgpu sees and what wgrad picked.

use wgrad::{Device, Error};

pub fn run(brief: bool) -> anyhow::Result<()> {
    let chosen = Device::gpu();
    if brief {
        match chosen {
            Ok(d) => {
                println!("{}", d.name());
                return Ok(());
            }
            Err(Error::NoAdapter) => {
                eprintln!("wgrad: no GPU adapter");
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("wgrad: {e}");
                std::process::exit(2);
            }
        }
    }
    let all = wgrad::list_adapters();
    println!("adapters found: {}", all.len());
    for (i, (name, backend, kind, driver)) in all.iter().enumerate() {
        println!("  [{i}] {name} — {backend}, {kind}, driver {driver}");
    }
    let dev = chosen?;
    let a = dev.adapter().expect("a GPU device has an adapter");
    println!("chosen: {}", a);
    println!("  why: {}", a.reason);
    println!(
        "  max_storage_buffer_binding_size: {} bytes",
        a.max_storage_binding
    );
    println!("  max_buffer_size: {} bytes", a.max_buffer);
    println!(
        "  max_compute_invocations_per_workgroup: {}",
        a.max_invocations_per_workgroup
    );
    println!(
        "  max_compute_workgroup_storage_size: {} bytes",
        a.max_workgroup_storage
    );
    println!(
        "  max_compute_workgroups_per_dimension: {}",
        a.max_workgroups_per_dimension
    );
    println!(
        "  max_storage_buffers_per_shader_stage: {}",
        a.max_storage_buffers_per_stage
    );
    println!(
        "  features: subgroups={} shader_f16={}",
        a.subgroups, a.shader_f16
    );
    // Read by Mesa's software adapters only (wgrad::lavapipe_threads sets it when unset).
    let threads = std::env::var(wgrad::LAVAPIPE_THREADS_ENV);
    println!(
        "software-adapter worker threads ({}): {}",
        wgrad::LAVAPIPE_THREADS_ENV,
        threads.as_deref().unwrap_or("driver default")
    );
    Ok(())
}
