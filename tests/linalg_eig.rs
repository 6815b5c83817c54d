//! The general eigenproblem on both devices: eigenvalues against matrices whose spectrum is
//! known by construction (2x2 from the issue, rotation, triangular, companion of a polynomial,
//! symmetric vs eigh, repeated, zero, 1×1), GPU against the f64 CPU reference up to n = 128,
//! ‖Av − λv‖/‖A‖ for the real eigenvalues; and the bad-input errors of qr/eig/eigh/svd.

mod common;

use common::{devices, gpu, read_f64, uniform};
use wgrad::linalg::{self, Eig, EigOptions};
use wgrad::{Device, Error, Rng, Tensor};

const TOL: f64 = 1e-4;

fn tensor(dev: &Device, a: &[f64], n: usize) -> Tensor {
    let f: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(dev, &f, &[n, n]).unwrap()
}

/// (n, n) orthogonal by Gram–Schmidt twice on normal columns.
fn orthogonal(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut q = vec![0.0; n * n];
    for j in 0..n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for _ in 0..2 {
            for c in 0..j {
                let d: f64 = (0..n).map(|i| q[i * n + c] * v[i]).sum();
                (0..n).for_each(|i| v[i] -= d * q[i * n + c]);
            }
        }
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        (0..n).for_each(|i| q[i * n + j] = v[i] / nv);
    }
    q
}

/// Q T Qᵀ: the same spectrum as T.
fn similar(seed: u64, t: &[f64], n: usize) -> Vec<f64> {
    let q = orthogonal(seed, n);
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut s = 0.0;
            for a in 0..n {
                for b in 0..n {
                    s += q[i * n + a] * t[a * n + b] * q[j * n + b];
                }
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// Checks sorted order, the eigenvalues against `want` (re, im) as a multiset (each wanted
/// value matched to the nearest unused one) to 1e-4 of the largest |λ|, and ‖Av − λv‖ ≤
/// 1e-4‖A‖ with ‖v‖ = 1 for every real eigenvalue.
fn check(label: &str, a: &[f64], n: usize, e: &Eig, want: &[(f64, f64)]) {
    assert_eq!(e.re.shape(), &[n], "{label}");
    assert_eq!(e.im.shape(), &[n], "{label}");
    assert_eq!(e.vectors.shape(), &[n, n], "{label}");
    let (re, im, v) = (read_f64(&e.re), read_f64(&e.im), read_f64(&e.vectors));
    for w in re.windows(2) {
        assert!(w[0] <= w[1], "{label}: real parts not ascending {w:?}");
    }
    let scale = want
        .iter()
        .fold(0.0f64, |m, &(r, i)| m.max(r.hypot(i)))
        .max(1e-30);
    let mut used = vec![false; n];
    for &(wr, wi) in want {
        let best = (0..n)
            .filter(|&j| !used[j])
            .min_by(|&x, &y| {
                let dx = (re[x] - wr).hypot(im[x] - wi);
                let dy = (re[y] - wr).hypot(im[y] - wi);
                dx.total_cmp(&dy)
            })
            .unwrap();
        used[best] = true;
        let d = (re[best] - wr).hypot(im[best] - wi);
        assert!(
            d <= TOL * scale,
            "{label}: λ = {wr} + {wi}i, got {} + {}i",
            re[best],
            im[best]
        );
    }
    let anorm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for j in 0..n {
        if im[j] != 0.0 {
            assert!(
                (0..n).all(|i| v[i * n + j] == 0.0),
                "{label}: complex column {j}"
            );
            continue;
        }
        let len = (0..n).map(|i| v[i * n + j].powi(2)).sum::<f64>().sqrt();
        assert!((len - 1.0).abs() < 1e-4, "{label}: ‖v{j}‖ = {len}");
        let res = (0..n)
            .map(|i| {
                let av: f64 = (0..n).map(|k| a[i * n + k] * v[k * n + j]).sum();
                (av - re[j] * v[i * n + j]).powi(2)
            })
            .sum::<f64>()
            .sqrt();
        assert!(
            res <= TOL * anorm.max(1e-30),
            "{label}: ‖Av − λv‖/‖A‖ = {:e} for λ[{j}] = {}",
            res / anorm,
            re[j]
        );
    }
}

fn check_both(label: &str, a: &[f64], n: usize, want: &[(f64, f64)]) {
    for dev in devices() {
        let e = linalg::eig(&tensor(&dev, a, n)).unwrap();
        check(&format!("{} {label}", dev.name()), a, n, &e, want);
    }
}

#[test]
fn eig_of_the_issue_matrix() {
    // [[1, 2], [3, 4]]: λ = (5 ∓ √33)/2.
    let s = 33f64.sqrt();
    let want = [((5.0 - s) / 2.0, 0.0), ((5.0 + s) / 2.0, 0.0)];
    check_both("[[1,2],[3,4]]", &[1.0, 2.0, 3.0, 4.0], 2, &want);
    for dev in devices() {
        let e = linalg::eig(&tensor(&dev, &[1.0, 2.0, 3.0, 4.0], 2)).unwrap();
        let re = read_f64(&e.re);
        assert!(
            (re[0] + 0.3723).abs() < 1e-4 && (re[1] - 5.3723).abs() < 1e-4,
            "{re:?}"
        );
    }
}

#[test]
fn eig_rotation_gives_a_conjugate_pair() {
    for theta in [0.3f64, 2.0] {
        let (c, s) = (theta.cos(), theta.sin());
        let a = [c, -s, s, c];
        check_both("rotation", &a, 2, &[(c, s), (c, -s)]);
        // Embedded in 3-D with a real eigenvalue 2, and hidden by a similarity.
        let t = [c, -s, 0.5, s, c, -1.0, 0.0, 0.0, 2.0];
        let a = similar(5, &t, 3);
        check_both("rotation ⊕ 2", &a, 3, &[(c, s), (c, -s), (2.0, 0.0)]);
        for dev in devices() {
            let e = linalg::eig(&tensor(&dev, &a, 3)).unwrap();
            let im = read_f64(&e.im);
            let pair: Vec<f64> = im.iter().copied().filter(|x| *x != 0.0).collect();
            assert_eq!(pair.len(), 2, "{im:?}");
            assert!(
                pair[0] > 0.0 && pair[1] < 0.0,
                "positive imaginary part first: {im:?}"
            );
        }
    }
}

#[test]
fn eig_triangular_is_its_diagonal() {
    for n in [3, 17] {
        let d: Vec<f64> = (0..n).map(|i| (i as f64 - 5.5) * 0.75).collect();
        let r = uniform(n as u64, n * n, -1.0, 1.0);
        let mut t = vec![0.0; n * n];
        for i in 0..n {
            t[i * n + i] = d[i];
            for j in i + 1..n {
                t[i * n + j] = r[i * n + j] as f64;
            }
        }
        let want: Vec<(f64, f64)> = d.iter().map(|&x| (x, 0.0)).collect();
        check_both(&format!("upper triangular {n}"), &t, n, &want);
        check_both(
            &format!("similar to triangular {n}"),
            &similar(9, &t, n),
            n,
            &want,
        );
    }
}

#[test]
fn eig_companion_matrix_roots() {
    // p(x) = (x + 2)(x + 1)(x − 0.5)(x − 1)(x − 3)(x² + 1): roots known, ±i among them.
    let roots = [-2.0, -1.0, 0.5, 1.0, 3.0];
    let mut c = vec![1.0f64]; // coefficients, highest degree first
    for r in roots {
        let mut next = c.clone();
        next.push(0.0);
        for (i, x) in c.iter().enumerate() {
            next[i + 1] -= r * x;
        }
        c = next;
    }
    let mut p = c.clone();
    p.extend([0.0, 0.0]);
    for (i, x) in c.iter().enumerate() {
        p[i + 2] += x;
    }
    let n = p.len() - 1;
    let mut a = vec![0.0; n * n];
    for j in 0..n {
        a[j] = -p[j + 1];
    }
    for i in 1..n {
        a[i * n + i - 1] = 1.0;
    }
    let mut want: Vec<(f64, f64)> = roots.iter().map(|&r| (r, 0.0)).collect();
    want.extend([(0.0, 1.0), (0.0, -1.0)]);
    check_both("companion", &a, n, &want);
}

#[test]
fn eig_symmetric_matches_eigh_and_repeated_values() {
    let n = 24;
    let b = uniform(3, n * n, -1.0, 1.0);
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = 0.5 * (b[i * n + j] + b[j * n + i]) as f64;
        }
    }
    let (l, _) = linalg::eigh(&tensor(&Device::cpu(), &a, n)).unwrap();
    let want: Vec<(f64, f64)> = read_f64(&l).iter().map(|&x| (x, 0.0)).collect();
    check_both("symmetric vs eigh", &a, n, &want);
    // Repeated, not defective: T with diagonal 2, 2, −1, 5, 2 whose upper part couples only
    // unequal eigenvalues, hidden by a similarity.
    let d = [2.0, 2.0, -1.0, 5.0, 2.0];
    let m = d.len();
    let mut t = vec![0.0; m * m];
    for i in 0..m {
        t[i * m + i] = d[i];
        for j in i + 1..m {
            if d[i] != d[j] {
                t[i * m + j] = 0.5 + 0.1 * (i + j) as f64;
            }
        }
    }
    let want: Vec<(f64, f64)> = d.iter().map(|&x| (x, 0.0)).collect();
    check_both("repeated", &similar(13, &t, m), m, &want);
    // The identity: every vector is an eigenvector; they must still be unit vectors.
    let mut id = vec![0.0; 16];
    (0..4).for_each(|i| id[i * 5] = 1.0);
    check_both("identity", &id, 4, &[(1.0, 0.0); 4]);
}

/// Q T Qᵀ with T upper triangular: diagonal `d`, entries above it only where the two
/// diagonal values differ (so repeated values stay non-defective), and proportional to
/// their difference, so that the eigenvectors stay well conditioned and f32 rounding of the
/// input moves the eigenvalues by no more than it would for a normal matrix.
fn non_normal_with(seed: u64, d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        t[i * n + i] = d[i];
        for j in i + 1..n {
            if d[i] != d[j] {
                t[i * n + j] = (d[i] - d[j]).abs() * (1 + (i * 7 + j * 3) % 5) as f64 / 5.0;
            }
        }
    }
    similar(seed, &t, n)
}

#[test]
fn eig_ill_conditioned_and_rank_deficient() {
    let n = 12;
    let ill: Vec<f64> = (0..n)
        .map(|i| {
            let x = 1e4f64.powf(-(i as f64) / (n - 1) as f64);
            if i % 2 == 0 {
                x
            } else {
                -x
            }
        })
        .collect();
    let want: Vec<(f64, f64)> = ill.iter().map(|&x| (x, 0.0)).collect();
    check_both("cond 1e4", &non_normal_with(21, &ill), n, &want);
    let deficient: Vec<f64> = (0..n)
        .map(|i| if i < n / 2 { 1.0 + i as f64 } else { 0.0 })
        .collect();
    let want: Vec<(f64, f64)> = deficient.iter().map(|&x| (x, 0.0)).collect();
    check_both("rank 6 of 12", &non_normal_with(22, &deficient), n, &want);
}

#[test]
fn eig_zero_and_one_by_one() {
    check_both("zero", &[0.0; 9], 3, &[(0.0, 0.0); 3]);
    check_both("1x1", &[-3.0], 1, &[(-3.0, 0.0)]);
}

#[test]
fn eig_gpu_matches_reference_up_to_128() {
    let Some(dev) = gpu() else { return };
    for n in [5, 33, 128] {
        let a: Vec<f64> = uniform(n as u64 + 100, n * n, -1.0, 1.0)
            .iter()
            .map(|&x| x as f64)
            .collect();
        let c = linalg::eig(&tensor(&Device::cpu(), &a, n)).unwrap();
        let want: Vec<(f64, f64)> = read_f64(&c.re).into_iter().zip(read_f64(&c.im)).collect();
        check(&format!("cpu random {n}"), &a, n, &c, &want);
        let g = linalg::eig(&tensor(&dev, &a, n)).unwrap();
        check(&format!("gpu random {n}"), &a, n, &g, &want);
    }
}

#[test]
fn eig_iteration_cap_is_an_error() {
    let a: Vec<f64> = uniform(8, 64, -1.0, 1.0)
        .iter()
        .map(|&x| x as f64)
        .collect();
    for dev in devices() {
        let opts = EigOptions { max_iterations: 1 };
        let e = linalg::eig_with(&tensor(&dev, &a, 8), &opts);
        assert!(
            matches!(&e, Err(Error::Invalid { op: "eig", detail }) if detail.contains("converge")),
            "{e:?}"
        );
    }
}

// ----- bad input to the decompositions: one test per case -----

#[test]
fn non_square_input_to_eig_and_eigh_is_a_shape_error() {
    for dev in devices() {
        let a = Tensor::from_slice(&dev, &[1.0f32; 6], &[2, 3]).unwrap();
        let e = linalg::eig(&a);
        assert!(
            matches!(&e, Err(Error::Shape { op: "eig", detail }) if detail.contains("[2, 3]")),
            "{e:?}"
        );
        let e = linalg::eigh(&a);
        assert!(
            matches!(&e, Err(Error::Shape { op: "eigh", detail }) if detail.contains("[2, 3]")),
            "{e:?}"
        );
    }
}

#[test]
fn nan_and_inf_entries_are_invalid_for_every_decomposition() {
    for dev in devices() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let a = Tensor::from_slice(&dev, &[1.0f32, bad, bad, 1.0], &[2, 2]).unwrap();
            let results = [
                ("qr", linalg::qr(&a).err()),
                ("eig", linalg::eig(&a).err()),
                ("eigh", linalg::eigh(&a).err()),
                ("svd", linalg::svd(&a).err()),
            ];
            for (op, e) in results {
                assert!(
                    matches!(&e, Some(Error::Invalid { op: o, detail })
                        if *o == op && detail.contains("[2, 2]") && detail.contains("NaN")),
                    "{op} {bad}: {e:?}"
                );
            }
        }
    }
}

#[test]
fn empty_matrices_are_an_empty_error_for_every_decomposition() {
    for dev in devices() {
        let a = Tensor::from_slice(&dev, &[] as &[f32], &[0, 0]).unwrap();
        let results = [
            ("qr", linalg::qr(&a).err()),
            ("eig", linalg::eig(&a).err()),
            ("eigh", linalg::eigh(&a).err()),
            ("svd", linalg::svd(&a).err()),
        ];
        for (op, e) in results {
            assert!(
                matches!(&e, Some(Error::Empty { op: o, shape }) if *o == op && shape == &[0, 0]),
                "{op}: {e:?}"
            );
        }
    }
}
