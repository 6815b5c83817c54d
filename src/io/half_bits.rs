//! The two 16-bit float formats that checkpoints are published in, as bits in a file:
//! IEEE binary16 (`F16`) and bfloat16 (`BF16`, the top half of an f32).
//!
//! Widening to f32 is exact: both formats' values are a subset of f32's (f16 has 11
//! significand bits and exponents within f32's normal range, bf16 is f32 with 16 significand
//! bits dropped). Narrowing rounds to nearest, ties to even; values beyond the format's largest
//! finite value become ±inf (as every framework's cast does, and as [`crate::Tensor::to_dtype`]
//! does), and NaN stays NaN, made quiet, keeping its sign. Any reader of 16-bit floats
//! (safetensors today, ONNX initializers next) goes through these functions.

use half::{bf16, f16};

/// A 16-bit float storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfFormat {
    /// IEEE 754 binary16: 5 exponent bits, 10 fraction bits; largest finite 65504.
    F16,
    /// bfloat16: f32's 8 exponent bits, 7 fraction bits; f32's range, ~3 significant digits.
    BF16,
}

impl HalfFormat {
    /// The name the safetensors and ONNX formats use (`F16`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            HalfFormat::F16 => "F16",
            HalfFormat::BF16 => "BF16",
        }
    }

    /// One value's bits widened to f32 (exact).
    pub(crate) fn widen(self, bits: u16) -> f32 {
        match self {
            HalfFormat::F16 => f16::from_bits(bits).to_f32(),
            HalfFormat::BF16 => bf16::from_bits(bits).to_f32(),
        }
    }

    /// One f32 rounded to this format's bits (nearest even; overflow to ±inf).
    pub(crate) fn narrow(self, v: f32) -> u16 {
        match self {
            HalfFormat::F16 => f16::from_f32(v).to_bits(),
            HalfFormat::BF16 => bf16::from_f32(v).to_bits(),
        }
    }

    /// Little-endian 16-bit values widened to f32. An odd byte count is an error message
    /// (the caller names the file and tensor), never a silently dropped byte.
    pub(crate) fn widen_le(self, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
        if bytes.len() % 2 != 0 {
            return Err(format!(
                "{} data is {} bytes, not a whole number of 2-byte values",
                self.name(),
                bytes.len()
            ));
        }
        Ok(bytes
            .chunks_exact(2)
            .map(|c| self.widen(u16::from_le_bytes([c[0], c[1]])))
            .collect())
    }

    /// f32 values rounded to this format, as little-endian bytes.
    pub(crate) fn narrow_le(self, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| self.narrow(v).to_le_bytes())
            .collect()
    }
}

impl std::fmt::Display for HalfFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
