//! The classic linear-algebra walkthrough behind neural networks, on the GPU,
//! with the CPU reference's answer printed beside each result.
//!
//! Then the decompositions: eig of W, compressing a weight matrix by truncated SVD, and PCA
//! of the handwritten digits that ship in examples/data/digits.csv.
//!
//!   cargo run --release --example linear_algebra [-- --device gpu|cpu]

use anyhow::{bail, Context, Result};
use wgrad::linalg::{self, Pca};
use wgrad::{Device, Init, Tensor};

#[path = "shared/digits_data.rs"]
mod digits_data;

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
    // Before any thread or wgpu instance: no Vulkan-loader warning without XDG_RUNTIME_DIR,
    // and two lavapipe worker threads per core unless LP_NUM_THREADS says (see there).
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
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
    decompositions(&dev)?;
    println!("\nevery result matches the CPU reference");
    Ok(())
}

/// The 1797 digit images (8x8, pixels 0..16) as rows of 64 features.
fn digits() -> Result<Vec<f32>> {
    Ok(digits_data::load()?.0)
}

fn decompositions(dev: &Device) -> Result<()> {
    // eig of the non-symmetric W: (5 ∓ √33)/2.
    println!();
    let w = [1.0f32, 2.0, 3.0, 4.0];
    let e = linalg::eig(&Tensor::from_slice(dev, &w, &[2, 2])?)?;
    let r = linalg::eig(&Tensor::from_slice(&Device::cpu(), &w, &[2, 2])?)?;
    let (re, rre) = (e.re.to_vec::<f32>()?, r.re.to_vec::<f32>()?);
    println!(
        "{:<28} gpu {:<28} cpu reference {:?} (imaginary parts {:?})",
        "eigenvalues of W",
        format!("{re:?}"),
        rre,
        e.im.to_vec::<f32>()?
    );
    println!(
        "{:<28} gpu {:?}",
        "eigenvectors of W (columns)",
        e.vectors.to_vec::<f32>()?
    );
    if (re[0] + 0.3723).abs() > 1e-4 || (re[1] - 5.3723).abs() > 1e-4 {
        bail!("eig(W) = {re:?}, expected -0.3723 and 5.3723");
    }

    // A 256x128 "weight matrix" with a decaying spectrum (σ_i = 0.9^i, random singular
    // vectors), compressed to rank r: r(m + n + 1) numbers instead of m·n.
    let (m, n) = (256, 128);
    let u = Init::Orthogonal { seed: 1 }.values(&[m, n]);
    let v = Init::Orthogonal { seed: 2 }.values(&[n, n]);
    let mut us = u.clone();
    for (i, x) in us.iter_mut().enumerate() {
        *x *= 0.9f32.powi((i % n) as i32);
    }
    let make = |d: &Device| -> wgrad::Result<Tensor> {
        Tensor::from_slice(d, &us, &[m, n])?.matmul_t(
            &Tensor::from_slice(d, &v, &[n, n])?,
            false,
            true,
        )
    };
    let (wg, wc) = (make(dev)?, make(&Device::cpu())?);
    println!(
        "\ncompressing a {m}x{n} weight matrix ({} parameters) by truncated SVD",
        m * n
    );
    println!(
        "  {:>4} {:>10} {:>8} {:>14} {:>14}",
        "r", "params", "ratio", "rel. error", "cpu reference"
    );
    for r in [4, 8, 16, 32, 64] {
        let (g, c) = (linalg::low_rank(&wg, r)?, linalg::low_rank(&wc, r)?);
        println!(
            "  {r:>4} {:>10} {:>7.1}% {:>14.6} {:>14.6}",
            g.params,
            100.0 * g.params as f64 / (m * n) as f64,
            g.rel_error,
            c.rel_error
        );
        if (g.rel_error - c.rel_error).abs() > 1e-4 {
            bail!("rank {r}: device and reference disagree");
        }
    }

    // PCA of the digits: 1797 images of 64 pixels.
    let x = digits()?;
    let rows = x.len() / 64;
    let xg = Tensor::from_slice(dev, &x, &[rows, 64])?;
    let pg = Pca::fit(&xg, None)?;
    let pc = Pca::fit(&Tensor::from_slice(&Device::cpu(), &x, &[rows, 64])?, None)?;
    let (ratio, rref) = (
        pg.explained_variance_ratio.to_vec::<f32>()?,
        pc.explained_variance_ratio.to_vec::<f32>()?,
    );
    println!("\nPCA of {rows} digit images (64 pixels each)");
    println!("  explained-variance ratio of the first 10 components:");
    let mut cum = 0.0;
    for (i, (g, c)) in ratio.iter().zip(&rref).take(10).enumerate() {
        cum += g;
        println!(
            "    PC{:<2} {g:.4}  (cumulative {cum:.4}, cpu reference {c:.4})",
            i + 1
        );
        if (g - c).abs() > 1e-4 {
            bail!("PC{}: device and reference disagree", i + 1);
        }
    }
    println!("  reconstruction from k components (relative Frobenius error of the pixels):");
    let total = xg.square()?.sum()?.item()?;
    for k in [2, 5, 10, 20, 40, 64] {
        let p = Pca::fit(&xg, Some(k))?;
        let back = p.inverse_transform(&p.transform(&xg)?)?;
        let err = (xg.sub(&back)?.square()?.sum()?.item()? / total).sqrt();
        println!("    k = {k:<3} error {err:.4}");
    }
    Ok(())
}
