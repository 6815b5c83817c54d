//! Adapter selection honours WGPU_ADAPTER_NAME, and no adapter is a typed
//! error. One test in its own binary, because it changes the environment.

use wgrad::{Device, Error};

#[test]
fn adapter_name_filter_and_no_adapter_error() {
    let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
    let dev = match Device::gpu() {
        Ok(d) => d,
        Err(e) => {
            assert!(!ci, "CI=true and no GPU adapter: {e}");
            eprintln!("skipping: no adapter ({e})");
            return;
        }
    };
    let chosen = dev.adapter().expect("GPU device has an adapter").clone();
    eprintln!("adapter: {chosen}");
    assert!(!chosen.name.is_empty());
    assert!(
        chosen.max_storage_binding >= 128 << 20,
        "requested the adapter's own limits, not WebGPU defaults"
    );
    assert!(wgrad::list_adapters()
        .iter()
        .any(|(name, ..)| *name == chosen.name));

    // SAFETY: this binary runs this single test, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-anywhere") };
    let missing = Device::gpu();
    unsafe {
        std::env::set_var(
            "WGPU_ADAPTER_NAME",
            &chosen.name[..chosen.name.len().min(8)],
        )
    };
    let by_name = Device::gpu();
    unsafe { std::env::remove_var("WGPU_ADAPTER_NAME") };

    assert!(
        matches!(missing, Err(Error::NoAdapter)),
        "{:?}",
        missing.map(|d| d.name())
    );
    let by_name = by_name.expect("adapter found by a prefix of its name");
    assert_eq!(by_name.adapter().unwrap().name, chosen.name);
    assert!(by_name
        .adapter()
        .unwrap()
        .reason
        .contains("WGPU_ADAPTER_NAME"));
}
