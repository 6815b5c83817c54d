//! PCA on both devices against an independent reference: the eigen-decomposition (CPU
//! reference eigh) of the covariance matrix computed here in f64. Also: ratios sum to 1 with
//! all components, inverse_transform ∘ transform is the identity with all components, and
//! the projected data has the explained variances.

mod common;

use common::{devices, read_f64, uniform};
use wgrad::linalg::{self, Pca};
use wgrad::{Device, Error, Rng, Tensor};

/// n samples of d correlated features: normal Z (n, d) times a fixed mixing matrix, plus an
/// offset per feature; feature scales spread so the variances are well separated.
fn data(n: usize, d: usize) -> Vec<f64> {
    let mut rng = Rng::new(42);
    let mix = uniform(7, d * d, -1.0, 1.0);
    let z: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let mut x = vec![0.0; n * d];
    for i in 0..n {
        for j in 0..d {
            let mut s = 3.0 + j as f64;
            for k in 0..d {
                s += z[i * d + k] * (mix[k * d + j] as f64) * (d - k) as f64;
            }
            x[i * d + j] = s;
        }
    }
    x
}

fn tensor(dev: &Device, a: &[f64], shape: &[usize]) -> Tensor {
    let f: Vec<f32> = a.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(dev, &f, shape).unwrap()
}

#[test]
fn pca_matches_the_covariance_eigendecomposition() {
    let (n, d) = (200, 6);
    let x = data(n, d);
    // Reference: covariance in f64, its eigenpairs by the CPU reference eigh.
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64)
        .collect();
    let mut cov = vec![0.0; d * d];
    for i in 0..n {
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += (x[i * d + a] - mean[a]) * (x[i * d + b] - mean[b]);
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= (n - 1) as f64);
    let (l, v) = linalg::eigh(&tensor(&Device::cpu(), &cov, &[d, d])).unwrap();
    let (l, v) = (read_f64(&l), read_f64(&v));
    let total: f64 = l.iter().sum();
    for dev in devices() {
        let label = dev.name();
        let xt = tensor(&dev, &x, &[n, d]);
        let pca = Pca::fit(&xt, Some(3)).unwrap();
        assert_eq!(pca.components.shape(), &[3, d]);
        let (var, ratio, comp) = (
            read_f64(&pca.explained_variance),
            read_f64(&pca.explained_variance_ratio),
            read_f64(&pca.components),
        );
        for (j, got) in read_f64(&pca.mean).iter().enumerate() {
            assert!(
                (got - mean[j]).abs() < 1e-4 * mean[j].abs().max(1.0),
                "{label}: mean"
            );
        }
        for k in 0..3 {
            let want = l[d - 1 - k]; // eigh is ascending
            assert!(
                (var[k] - want).abs() < 1e-4 * l[d - 1],
                "{label}: var[{k}] {} vs {want}",
                var[k]
            );
            assert!(
                (ratio[k] - want / total).abs() < 1e-4,
                "{label}: ratio[{k}]"
            );
            // Same axis up to sign: |⟨c_k, v_k⟩| = 1.
            let dot: f64 = (0..d).map(|i| comp[k * d + i] * v[i * d + d - 1 - k]).sum();
            assert!(
                (dot.abs() - 1.0).abs() < 1e-4,
                "{label}: axis {k}: |dot| = {}",
                dot.abs()
            );
            let row = &comp[k * d..(k + 1) * d];
            let big = row
                .iter()
                .fold(0.0f64, |b, &x| if x.abs() > b.abs() { x } else { b });
            assert!(big > 0.0, "{label}: sign convention");
        }
        // Projected coordinates: mean zero, variance along axis k = explained_variance[k].
        let z = read_f64(&pca.transform(&xt).unwrap());
        for k in 0..3 {
            let m: f64 = (0..n).map(|i| z[i * 3 + k]).sum::<f64>() / n as f64;
            let s2: f64 = (0..n).map(|i| (z[i * 3 + k] - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!(
                m.abs() < 1e-3 * var[0].sqrt(),
                "{label}: mean of z{k} = {m}"
            );
            assert!((s2 - var[k]).abs() < 1e-4 * var[0], "{label}: var of z{k}");
        }
    }
}

#[test]
fn all_components_reconstruct_exactly_and_ratios_sum_to_one() {
    for (n, d) in [(50, 7), (5, 9)] {
        let x = data(n, d);
        let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for dev in devices() {
            let xt = tensor(&dev, &x, &[n, d]);
            let pca = Pca::fit(&xt, None).unwrap();
            assert_eq!(pca.n_components(), n.min(d));
            let sum: f64 = read_f64(&pca.explained_variance_ratio).iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{}: Σ ratio = {sum}", dev.name());
            let back = read_f64(&pca.inverse_transform(&pca.transform(&xt).unwrap()).unwrap());
            for (i, (b, a)) in back.iter().zip(&x).enumerate() {
                assert!(
                    (b - a).abs() < 1e-4 * scale,
                    "{} {n}x{d}: [{i}] {b} vs {a}",
                    dev.name()
                );
            }
            // Fewer components lose exactly the discarded variance: ‖X − X̂‖_F² = (n−1)Σ dropped.
            let k = 2;
            let p2 = Pca::fit(&xt, Some(k)).unwrap();
            let rec = read_f64(&p2.inverse_transform(&p2.transform(&xt).unwrap()).unwrap());
            let err: f64 = rec.iter().zip(&x).map(|(r, a)| (r - a).powi(2)).sum();
            let dropped: f64 =
                read_f64(&pca.explained_variance)[k..].iter().sum::<f64>() * (n - 1) as f64;
            assert!(
                (err - dropped).abs() < 1e-3 * dropped.max(1e-3 * scale * scale),
                "{}: {err} vs {dropped}",
                dev.name()
            );
        }
    }
}

#[test]
fn pca_bad_input() {
    for dev in devices() {
        let x = tensor(&dev, &data(10, 4), &[10, 4]);
        let e = Pca::fit(&x, Some(5));
        assert!(matches!(e, Err(Error::Invalid { op: "pca", .. })), "{e:?}");
        let e = Pca::fit(&x.narrow(0, 0, 1).unwrap(), None);
        assert!(matches!(e, Err(Error::Invalid { op: "pca", .. })), "{e:?}");
        let pca = Pca::fit(&x, Some(2)).unwrap();
        let e = pca.transform(&x.narrow(1, 0, 3).unwrap());
        assert!(
            matches!(
                e,
                Err(Error::Shape {
                    op: "pca_transform",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = pca.inverse_transform(&x);
        assert!(
            matches!(
                e,
                Err(Error::Shape {
                    op: "pca_inverse_transform",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = Pca::fit(
            &Tensor::from_slice(&dev, &[] as &[f32], &[0, 4]).unwrap(),
            None,
        );
        assert!(matches!(e, Err(Error::Empty { op: "pca", .. })), "{e:?}");
    }
}
