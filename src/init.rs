//! Parameter initialisers. Values are drawn on the host from a seeded
//! [`Rng`], so the GPU and the CPU reference start from identical numbers.

use crate::host_qr::qr_host;
use crate::rng::Rng;

/// How a parameter's first values are made.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element set to the given value.
    Constant(f32),
    /// Uniform on `[lo, hi)`.
    Uniform {
        /// Lower bound (inclusive).
        lo: f32,
        /// Upper bound (exclusive).
        hi: f32,
        /// Seed of the host [`Rng`].
        seed: u64,
    },
    /// Normal: N(mean, std²).
    Normal {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        std: f32,
        /// Seed of the host [`Rng`].
        seed: u64,
    },
    /// Glorot/Xavier uniform: U(±sqrt(6 / (fan_in + fan_out))).
    XavierUniform {
        /// Seed of the host [`Rng`].
        seed: u64,
    },
    /// He/Kaiming normal for ReLU: N(0, 2 / fan_in).
    KaimingNormal {
        /// Seed of the host [`Rng`].
        seed: u64,
    },
    /// A matrix with orthonormal columns (or rows, when wider than tall): Q of the QR of a
    /// normal matrix, signs fixed so the result is Haar-distributed.
    Orthogonal {
        /// Seed of the host [`Rng`].
        seed: u64,
    },
    /// Exactly these values, row-major (a checkpoint's or an imported model's weights).
    /// Shared so that cloning a graph's nodes does not copy the weights; a length that does
    /// not fill the parameter's shape is refused when the graph is compiled.
    Data(std::sync::Arc<[f32]>),
}

/// (fan_in, fan_out) of a weight of `shape`; wgrad's linear weights are (in, out).
fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [i, o] => (*i, *o),
        // conv-style (out, in, k...): receptive field multiplies both
        [o, i, rest @ ..] => {
            let rf: usize = rest.iter().product();
            (i * rf, o * rf)
        }
    }
}

impl Init {
    /// The initial values for a parameter of `shape`.
    pub fn values(&self, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        match *self {
            Init::Data(ref v) => v.to_vec(),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Constant(c) => vec![c; n],
            Init::Uniform { lo, hi, seed } => Rng::new(seed).vec_uniform(n, lo, hi),
            Init::Normal { mean, std, seed } => {
                let mut r = Rng::new(seed);
                (0..n)
                    .map(|_| (mean as f64 + std as f64 * r.normal()) as f32)
                    .collect()
            }
            Init::XavierUniform { seed } => {
                let (fi, fo) = fans(shape);
                let a = (6.0 / (fi + fo).max(1) as f64).sqrt() as f32;
                Rng::new(seed).vec_uniform(n, -a, a)
            }
            Init::KaimingNormal { seed } => {
                let (fi, _) = fans(shape);
                let std = (2.0 / fi.max(1) as f64).sqrt();
                let mut r = Rng::new(seed);
                (0..n).map(|_| (std * r.normal()) as f32).collect()
            }
            Init::Orthogonal { seed } => orthogonal(shape, seed),
        }
    }
}

/// Rows × cols (last dim is cols) with orthonormal columns if rows >= cols, else
/// orthonormal rows: Q of the Householder QR (the f64 CPU reference) of a standard normal
/// matrix G in the tall orientation, with column j multiplied by sign(R_jj). That sign fix
/// makes Q = G R⁻¹ with a positive-diagonal R, a function of G alone, so Q is Haar-distributed
/// (uniform over orthogonal matrices), not biased by the reflectors' sign convention.
fn orthogonal(shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Vec::new();
    }
    let cols = *shape.last().unwrap_or(&1);
    let rows = n / cols.max(1);
    // Work on the tall orientation: G (len, k), column j drawn as the j-th run of `len`.
    let (len, k, tall) = if rows >= cols {
        (rows, cols, true)
    } else {
        (cols, rows, false)
    };
    let mut rng = Rng::new(seed);
    let mut g = vec![0.0f64; len * k];
    for j in 0..k {
        for i in 0..len {
            g[i * k + j] = rng.normal();
        }
    }
    // The blocked host QR: the same reflectors as the reference, in host products.
    let (q, r) = qr_host(&g, len, k, k, k);
    let mut out = vec![0.0f32; n];
    for i in 0..len {
        for j in 0..k {
            let sign = if r[j * k + j] < 0.0 { -1.0 } else { 1.0 };
            let v = (sign * q[i * k + j]) as f32;
            if tall {
                out[i * cols + j] = v;
            } else {
                out[j * cols + i] = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_gives_its_values() {
        let v: std::sync::Arc<[f32]> = vec![1.0, -2.0, 3.5].into();
        assert_eq!(Init::Data(v).values(&[3]), [1.0, -2.0, 3.5]);
    }

    #[test]
    fn orthogonal_columns_are_orthonormal() {
        // 70 columns: three panels of the blocked host QR.
        for (r, c) in [(5, 3), (3, 5), (4, 4), (200, 70), (70, 200)] {
            let w = Init::Orthogonal { seed: 3 }.values(&[r, c]);
            let (outer, inner, step_o, step_i) = if r >= c { (c, r, 1, c) } else { (r, c, c, 1) };
            for a in 0..outer {
                for b in 0..outer {
                    let d: f64 = (0..inner)
                        .map(|t| {
                            w[a * step_o + t * step_i] as f64 * w[b * step_o + t * step_i] as f64
                        })
                        .sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((d - want).abs() < 1e-5, "({r},{c}) [{a},{b}] = {d}");
                }
            }
        }
    }

    #[test]
    fn seeded_inits_are_reproducible_and_scaled() {
        let a = Init::KaimingNormal { seed: 1 }.values(&[200, 50]);
        assert_eq!(a, Init::KaimingNormal { seed: 1 }.values(&[200, 50]));
        let var = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var - 2.0 / 200.0).abs() < 0.002, "{var}");
        let x = Init::XavierUniform { seed: 2 }.values(&[30, 70]);
        let lim = (6.0f32 / 100.0).sqrt();
        assert!(x.iter().all(|v| v.abs() <= lim));
    }

    /// Q must be G·R⁻¹ with R upper triangular and positive on its diagonal (the Haar
    /// construction): so QᵀG, computed here from the same seeded draws, is upper triangular
    /// with a positive diagonal.
    #[test]
    fn orthogonal_is_the_positive_diagonal_qr_of_a_normal_matrix() {
        for (r, c) in [(7, 4), (4, 7), (5, 5), (1, 3), (3, 1)] {
            let w = Init::Orthogonal { seed: 11 }.values(&[r, c]);
            let (len, k, tall) = if r >= c { (r, c, true) } else { (c, r, false) };
            let mut rng = Rng::new(11);
            let g: Vec<Vec<f64>> = (0..k)
                .map(|_| (0..len).map(|_| rng.normal()).collect())
                .collect();
            let q = |i: usize, j: usize| if tall { w[i * c + j] } else { w[j * c + i] } as f64;
            for a in 0..k {
                for (b, gb) in g.iter().enumerate() {
                    let d: f64 = (0..len).map(|i| q(i, a) * gb[i]).sum();
                    if a > b {
                        assert!(d.abs() < 1e-5, "({r},{c}) (QᵀG)[{a},{b}] = {d}");
                    }
                    if a == b {
                        assert!(d > 1e-3, "({r},{c}) diagonal {a} = {d}");
                    }
                }
            }
        }
    }
}
