fn main() -> anyhow::Result<()> {
    let dev = wgrad::Device::gpu()?;
    println!("{}", dev.name());
    Ok(())
}
