//! The classic linear-algebra walkthrough behind neural networks, on the GPU,
//! with the CPU reference's answer printed beside each result.
//!
//!   cargo run --release --example linear_algebra [-- --device gpu|cpu]

use anyhow::{bail, Context, Result};
use wgrad::{Device, Tensor};

/// Runs `f` on the chosen device and on the CPU reference, prints both, and
/// fails if they disagree.
fn show(
    label: &str,
    dev: &Device,
    f: impl Fn(&Device) -> wgrad::Result<Tensor>,
) -> Result<Vec<f32>> {
    let got = f(dev).with_context(|| format!("{label} on {}", dev.name()))?;
    let reference = f(&Device::cpu()).with_context(|| format!("{label} on the CPU reference"))?;
    let (g, r) = (got.to_vec::<f32>()?, reference.to_vec::<f32>()?);
    println!(
        "{label:<28} shape {:<8} gpu {:<28} cpu reference {:?}",
        format!("{:?}", got.shape()),
        format!("{g:?}"),
        r
    );
    let worst = g
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0f32, f32::max);
    if got.shape() != reference.shape() || worst > 1e-5 {
        bail!("{label}: device and reference disagree (worst relative error {worst:e})");
    }
    Ok(g)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dev = match args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("cpu") => Device::cpu(),
        Some("gpu") | None => Device::gpu()?,
        Some(other) => bail!("--device must be gpu or cpu, not {other}"),
    };
    println!("device: {}\n", dev.name());

    let w = |d: &Device| Tensor::from_slice(d, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2]);
    let x = |d: &Device| Tensor::from_slice(d, &[5.0f32, 6.0], &[2]);
    let b = |d: &Device| Tensor::from_slice(d, &[10.0f32, 100.0], &[2]);
    let xs = |d: &Device| Tensor::from_slice(d, &[5.0f32, 6.0, 2.0, 3.0, 4.0, 1.0], &[3, 2]);

    println!("W = [[1, 2], [3, 4]], x = [5, 6], b = [10, 100], X = [[5, 6], [2, 3], [4, 1]]\n");
    let wx = show("W x", &dev, |d| w(d)?.matmul(&x(d)?))?;
    assert_eq!(wx, vec![17.0, 39.0]);
    let z = show("W x + b", &dev, |d| w(d)?.matmul(&x(d)?)?.add(&b(d)?))?;
    assert_eq!(z, vec![27.0, 139.0]);
    show("ReLU(W x + b)", &dev, |d| {
        w(d)?.matmul(&x(d)?)?.add(&b(d)?)?.relu()
    })?;
    show("sigmoid((W x + b) / 100)", &dev, |d| {
        w(d)?
            .matmul(&x(d)?)?
            .add(&b(d)?)?
            .div_scalar(100.0)?
            .sigmoid()
    })?;
    let xwt = show("X Wᵀ (a batch of 3 inputs)", &dev, |d| {
        xs(d)?.matmul_t(&w(d)?, false, true)
    })?;
    assert_eq!(xwt, vec![17.0, 39.0, 8.0, 18.0, 6.0, 16.0]);
    show("X Wᵀ + b (bias broadcast)", &dev, |d| {
        xs(d)?.matmul_t(&w(d)?, false, true)?.add(&b(d)?)
    })?;
    show("Wᵀ", &dev, |d| w(d)?.transpose())?;
    let norm = show("‖x‖₂ = sqrt(Σ x²)", &dev, |d| {
        x(d)?.square()?.sum()?.sqrt()
    })?;
    assert!((norm[0] - 61f32.sqrt()).abs() < 1e-5);
    let dot = show("x · x (dot product)", &dev, |d| x(d)?.matmul(&x(d)?))?;
    assert_eq!(dot, vec![61.0]);
    show("softmax(X Wᵀ / 10) by row", &dev, |d| {
        xs(d)?
            .matmul_t(&w(d)?, false, true)?
            .div_scalar(10.0)?
            .softmax(-1)
    })?;
    show("row sums of X", &dev, |d| xs(d)?.sum_axis(-1, false))?;
    println!("\nevery result matches the CPU reference");
    Ok(())
}
