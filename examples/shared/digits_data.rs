//! The 8×8 handwritten digits shipped in `examples/data/digits.csv` (1,797 rows of 64
//! pixels 0..16 and a label; CC BY 4.0, see examples/data/README.md), shared by the
//! examples that use them.

use anyhow::{bail, Context, Result};

const DIGITS_CSV: &str = include_str!("../data/digits.csv");

/// Pixels (N·64, values 0..16, row-major 8×8 images) and labels (N).
pub fn load() -> Result<(Vec<f32>, Vec<i32>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (i, line) in DIGITS_CSV.lines().enumerate() {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("digits.csv line {}", i + 1))?;
        if v.len() != 65 {
            bail!("digits.csv line {}: {} values, expected 65", i + 1, v.len());
        }
        xs.extend_from_slice(&v[..64]);
        ys.push(v[64] as i32);
    }
    Ok((xs, ys))
}
