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
        let opts = EigOptions {
            max_iterations: 1,
            ..EigOptions::default()
        };
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

// ----- the blocked GPU reduction (panels of 64 on the device, then the host chase) -----

/// `a (n, n) · b (n, n)`, row-major f64.
fn mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = a[i * n + k];
            if x != 0.0 {
                for j in 0..n {
                    c[i * n + j] += x * b[k * n + j];
                }
            }
        }
    }
    c
}

/// Q T Qᵀ in O(n³) (`similar` is O(n⁴), too slow past a few dozen).
fn similar_fast(seed: u64, t: &[f64], n: usize) -> Vec<f64> {
    let q = orthogonal(seed, n);
    let qt: Vec<f64> = (0..n * n).map(|k| q[(k % n) * n + k / n]).collect();
    mul(&mul(&q, t, n), &qt, n)
}

/// Upper triangular with diagonal `d`, entries above it proportional to the gap between
/// their two diagonal values (zero where equal: repeated values stay non-defective).
fn triangular_with(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        t[i * n + i] = d[i];
        for j in i + 1..n {
            t[i * n + j] = (d[i] - d[j]).abs() * (1 + (i * 7 + j * 3) % 5) as f64 / 5.0;
        }
    }
    t
}

/// Upper triangular with diagonal `d` and two superdiagonals of a quarter of the gap between
/// their diagonal values: non-normal, yet with eigenvectors well enough conditioned at any
/// order that the f32 rounding of the input moves the eigenvalues little (a full triangle of
/// such entries makes that condition grow exponentially with n).
fn banded_with(d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        t[i * n + i] = d[i];
        for j in i + 1..n.min(i + 3) {
            t[i * n + j] = 0.25 * (d[i] - d[j]);
        }
    }
    t
}

/// A labelled test matrix `(n, n)` and its spectrum `(re, im)` when known by construction.
type Case = (String, Vec<f64>, Option<Vec<(f64, f64)>>);

/// The matrices that break blocked code.
fn awkward(n: usize) -> Vec<Case> {
    let mut cases = Vec::new();
    let random: Vec<f64> = uniform(n as u64 + 500, n * n, -1.0, 1.0)
        .iter()
        .map(|&x| x as f64)
        .collect();
    cases.push(("random (complex pairs)".to_string(), random, None));
    // Rank n/3: a product of (n, r) and (r, n) factors.
    let r = (n / 3).max(1);
    let (f, g) = (uniform(7, n * r, -1.0, 1.0), uniform(8, r * n, -1.0, 1.0));
    let mut low = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..r {
            for j in 0..n {
                low[i * n + j] += f[i * r + k] as f64 * g[k * n + j] as f64;
            }
        }
    }
    cases.push((format!("rank {r}"), low, None));
    cases.push((
        "zero".to_string(),
        vec![0.0; n * n],
        Some(vec![(0.0, 0.0); n]),
    ));
    let mut eye = vec![0.0; n * n];
    (0..n).for_each(|i| eye[i * n + i] = 1.0);
    cases.push(("identity".to_string(), eye, Some(vec![(1.0, 0.0); n])));
    let d: Vec<f64> = (0..n)
        .map(|i| ((i * 37) % n) as f64 / n as f64 - 0.5)
        .collect();
    let mut diag = vec![0.0; n * n];
    (0..n).for_each(|i| diag[i * n + i] = d[i]);
    let want = d.iter().map(|&x| (x, 0.0)).collect();
    cases.push(("diagonal".to_string(), diag, Some(want)));
    // Already Hessenberg (triangular): the panels' reflectors are all τ = 0.
    let t = triangular_with(&d);
    let want: Vec<(f64, f64)> = d.iter().map(|&x| (x, 0.0)).collect();
    cases.push(("triangular".to_string(), t, Some(want)));
    // Repeated (three values) and clustered (1 + 1e-3·k) eigenvalues, hidden by a similarity.
    // Sorted, so that no chain of couplings joins two equal values (which would make the
    // matrix defective: [[2, a, 0], [0, b, c], [0, 0, 2]] has one eigenvector for 2).
    let mut rep: Vec<f64> = (0..n)
        .map(|i| {
            if i % 4 == 3 {
                1.0 + 1e-3 * i as f64 / n as f64
            } else {
                [2.0, -1.0, 0.5][i % 3]
            }
        })
        .collect();
    rep.sort_by(f64::total_cmp);
    let want = rep.iter().map(|&x| (x, 0.0)).collect();
    cases.push((
        "repeated and clustered".to_string(),
        similar_fast(31, &banded_with(&rep), n),
        Some(want),
    ));
    // Condition 1e6: |λ| from 1 down to 1e-6, signs alternating.
    let ill: Vec<f64> = (0..n)
        .map(|i| {
            let x = 1e6f64.powf(-(i as f64) / (n - 1).max(1) as f64);
            if i % 2 == 0 {
                x
            } else {
                -x
            }
        })
        .collect();
    let want = ill.iter().map(|&x| (x, 0.0)).collect();
    cases.push((
        "condition 1e6".to_string(),
        similar_fast(32, &banded_with(&ill), n),
        Some(want),
    ));
    // Known complex pairs: 2x2 rotation-scaling blocks a ± bi on a block diagonal.
    let mut blocks = vec![0.0; n * n];
    let mut want = Vec::new();
    for k in 0..n / 2 {
        let (re, im) = (0.1 * k as f64 - 1.0, 0.5 + 0.01 * k as f64);
        let i = 2 * k;
        blocks[i * n + i] = re;
        blocks[i * n + i + 1] = im;
        blocks[(i + 1) * n + i] = -im;
        blocks[(i + 1) * n + i + 1] = re;
        want.extend([(re, im), (re, -im)]);
    }
    if n % 2 == 1 {
        blocks[n * n - 1] = 3.0;
        want.push((3.0, 0.0));
    }
    cases.push((
        "complex pairs".to_string(),
        similar_fast(33, &blocks, n),
        Some(want),
    ));
    cases
}

/// The GPU eig through the blocked device reduction (forced: `host_max: Some(0)`) and
/// through the default choice, on orders below, at and past the panel width 64 and past two
/// panels, none a multiple of it but one: eigenvalues against the f64 CPU reference (and the
/// known spectrum where there is one), ‖Av − λv‖ for the real ones.
#[test]
fn eig_blocked_gpu_awkward_cases() {
    let Some(dev) = gpu() else { return };
    let forced = EigOptions {
        host_max: Some(0),
        ..EigOptions::default()
    };
    for n in [5, 64, 129, 200, 257] {
        for (label, a, known) in awkward(n) {
            let c = linalg::eig(&tensor(&Device::cpu(), &a, n)).unwrap();
            let reference: Vec<(f64, f64)> =
                read_f64(&c.re).into_iter().zip(read_f64(&c.im)).collect();
            for (path, opts) in [("blocked", forced), ("default", EigOptions::default())] {
                let g = linalg::eig_with(&tensor(&dev, &a, n), &opts).unwrap();
                let label = format!("gpu {path} {label} n {n}");
                check(&label, &a, n, &g, &reference);
                if let Some(want) = &known {
                    check(&format!("{label} (known)"), &a, n, &g, want);
                }
            }
        }
    }
}
