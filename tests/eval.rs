//! `wgrad eval`: one op on .npy files, checked against the CPU reference, and
//! its bad-input contract (one-line error, non-zero exit, no output left behind).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_close, uniform};
use wgrad::io::{read_npy, write_npy};
use wgrad::{Device, Tensor};

fn device_arg() -> &'static str {
    if common::gpu().is_some() {
        "gpu"
    } else {
        "cpu"
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgrad-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(dir: &Path, name: &str, data: &[f32], shape: &[usize]) -> PathBuf {
    let p = dir.join(name);
    write_npy(
        &p,
        &Tensor::from_slice(&Device::cpu(), data, shape).unwrap(),
    )
    .unwrap();
    p
}

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wgrad"))
        .arg("eval")
        .args(args)
        .args(["--device", device_arg()])
        .output()
        .unwrap()
}

fn load(p: PathBuf) -> Tensor {
    read_npy(p, &Device::cpu()).unwrap()
}

#[test]
fn matmul_with_upstream_writes_output_and_gradients() {
    let d = scratch("matmul");
    let (a, b, u) = (
        uniform(1, 15, -1.0, 1.0),
        uniform(2, 12, -1.0, 1.0),
        uniform(3, 20, -1.0, 1.0),
    );
    let (pa, pb, pu) = (
        save(&d, "a.npy", &a, &[5, 3]),
        save(&d, "b.npy", &b, &[3, 4]),
        save(&d, "u.npy", &u, &[5, 4]),
    );
    let out = d.join("out");
    let o = eval(&[
        "matmul",
        pa.to_str().unwrap(),
        pb.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--upstream",
        pu.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cpu = Device::cpu();
    let (ta, tb, tu) = (
        Tensor::from_slice(&cpu, &a, &[5, 3]).unwrap(),
        Tensor::from_slice(&cpu, &b, &[3, 4]).unwrap(),
        Tensor::from_slice(&cpu, &u, &[5, 4]).unwrap(),
    );
    let want = [
        ta.matmul(&tb).unwrap(),
        tu.matmul_t(&tb, false, true).unwrap(),
        ta.matmul_t(&tu, true, false).unwrap(),
    ];
    for (file, w) in ["out.npy", "grad0.npy", "grad1.npy"].iter().zip(&want) {
        let got = load(out.join(file));
        assert_eq!(got.shape(), w.shape(), "{file}");
        assert_close(
            file,
            &got.to_vec::<f32>().unwrap(),
            &w.to_vec::<f32>().unwrap(),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn reductions_remove_the_axis_or_reduce_everything() {
    let d = scratch("reduce");
    let x = uniform(4, 24, -2.0, 2.0);
    let px = save(&d, "x.npy", &x, &[2, 3, 4]);
    let t = Tensor::from_slice(&Device::cpu(), &x, &[2, 3, 4]).unwrap();
    for (op, axis, want) in [
        ("sum", Some("-1"), t.sum_axis(-1, false).unwrap()),
        ("max", Some("1"), t.max_axis(1, false).unwrap()),
        ("mean", None, t.mean().unwrap()),
        ("softmax", Some("0"), t.softmax(0).unwrap()),
    ] {
        let out = d.join(format!("{op}-out"));
        let mut args = vec![op, px.to_str().unwrap(), "--out", out.to_str().unwrap()];
        if let Some(a) = axis {
            args.extend(["--axis", a]);
        }
        let o = eval(&args);
        assert!(
            o.status.success(),
            "{op}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = load(out.join("out.npy"));
        assert_eq!(got.shape(), want.shape(), "{op}");
        assert_close(
            op,
            &got.to_vec::<f32>().unwrap(),
            &want.to_vec::<f32>().unwrap(),
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn bad_input_is_a_one_line_error_with_no_output() {
    let d = scratch("bad");
    let px = save(&d, "x.npy", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let truncated = d.join("t.npy");
    std::fs::write(&truncated, &std::fs::read(&px).unwrap()[..90]).unwrap();
    let x = px.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["matmul", x, x], "matmul"),
        (vec!["nosuchop", x], "unknown op"),
        (vec!["sum", "missing.npy"], "missing.npy"),
        (vec!["relu", truncated.to_str().unwrap()], "t.npy"),
        (vec!["sum", x, "--axis", "5"], "axis 5"),
        (vec!["permute", x, "--axes", "0,0"], "permute"),
        (vec!["add", x], "input file"),
    ];
    for (mut args, needle) in cases {
        let out = d.join("out-bad");
        args.extend(["--out", out.to_str().unwrap()]);
        let o = eval(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(
            !out.join("out.npy").exists(),
            "{args:?} left an output behind"
        );
    }
}

#[test]
fn decompositions_write_their_named_outputs() {
    let d = scratch("decomp");
    // A = [[3, 1], [1, 3], [0, 0]]: singular values 4 and 2; AᵀA's eigenvalues 4 and 16.
    let pa = save(&d, "a.npy", &[3.0, 1.0, 1.0, 3.0, 0.0, 0.0], &[3, 2]);
    let ps = save(&d, "s.npy", &[2.0, 1.0, 1.0, 2.0], &[2, 2]);
    let out = d.join("svd");
    let o = eval(&["svd", pa.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (u, s, vt) = (
        load(out.join("u.npy")),
        load(out.join("s.npy")),
        load(out.join("vt.npy")),
    );
    assert_eq!(
        (u.shape(), s.shape(), vt.shape()),
        (&[3, 2][..], &[2][..], &[2, 2][..])
    );
    assert_close(
        "singular values",
        &s.to_vec::<f32>().unwrap(),
        &[4.0, 2.0],
        1e-5,
        1e-5,
    );
    let us = u.mul(&s).unwrap().matmul(&vt).unwrap();
    assert_close(
        "U S Vt",
        &us.to_vec::<f32>().unwrap(),
        &[3.0, 1.0, 1.0, 3.0, 0.0, 0.0],
        1e-5,
        1e-5,
    );
    let out = d.join("eigh");
    let o = eval(&["eigh", ps.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_close(
        "eigenvalues",
        &load(out.join("values.npy")).to_vec::<f32>().unwrap(),
        &[1.0, 3.0],
        1e-5,
        1e-5,
    );
    assert_eq!(load(out.join("vectors.npy")).shape(), &[2, 2]);
    let out = d.join("rank");
    let o = eval(&["rank", pa.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        load(out.join("out.npy")).to_vec::<f32>().unwrap(),
        vec![2.0]
    );
    let out = d.join("bad");
    let o = eval(&["eigh", pa.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("square"));
    assert!(!out.exists(), "a failed decomposition left output behind");
}

#[test]
fn eig_writes_real_parts_imaginary_parts_and_vectors() {
    let d = scratch("eig");
    // [[1, 2], [3, 4]]: λ = (5 ∓ √33)/2; the rotation by 90°: ±i.
    let pw = save(&d, "w.npy", &[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let out = d.join("w");
    let o = eval(&["eig", pw.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = 33f32.sqrt();
    assert_close(
        "eig re",
        &load(out.join("re.npy")).to_vec::<f32>().unwrap(),
        &[(5.0 - s) / 2.0, (5.0 + s) / 2.0],
        1e-5,
        1e-5,
    );
    assert_eq!(
        load(out.join("im.npy")).to_vec::<f32>().unwrap(),
        vec![0.0, 0.0]
    );
    let v = load(out.join("vectors.npy")).to_vec::<f32>().unwrap();
    // Column 1 is the eigenvector of 5.37: W v = λ v.
    let (v0, v1) = (v[1], v[3]);
    let l = (5.0 + s) / 2.0;
    assert!((v0 + 2.0 * v1 - l * v0).abs() < 1e-4 && (3.0 * v0 + 4.0 * v1 - l * v1).abs() < 1e-4);
    let pr = save(&d, "r.npy", &[0.0, -1.0, 1.0, 0.0], &[2, 2]);
    let out = d.join("r");
    let o = eval(&["eig", pr.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_close(
        "rotation im",
        &load(out.join("im.npy")).to_vec::<f32>().unwrap(),
        &[1.0, -1.0],
        1e-6,
        1e-6,
    );
    let pa = save(&d, "a.npy", &[1.0; 6], &[2, 3]);
    let out = d.join("bad");
    let o = eval(&["eig", pa.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("square"));
    assert!(!out.exists(), "a failed eig left output behind");
}

#[test]
fn qr_writes_q_and_r() {
    let d = scratch("qr");
    // A = [[3, 1], [4, 2], [0, 0]]: |R₀₀| = 5, |R₀₁| = 2.2, |R₁₁| = 0.4.
    let a = [3.0, 1.0, 4.0, 2.0, 0.0, 0.0];
    let pa = save(&d, "a.npy", &a, &[3, 2]);
    let out = d.join("out");
    let o = eval(&["qr", pa.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (q, r) = (load(out.join("q.npy")), load(out.join("r.npy")));
    assert_eq!((q.shape(), r.shape()), (&[3, 2][..], &[2, 2][..]));
    let rv: Vec<f32> = r.to_vec::<f32>().unwrap().iter().map(|x| x.abs()).collect();
    assert_close("|R|", &rv, &[5.0, 2.2, 0.0, 0.4], 1e-5, 1e-5);
    assert_close(
        "QR",
        &q.matmul(&r).unwrap().to_vec::<f32>().unwrap(),
        &a,
        1e-5,
        1e-5,
    );
}

/// `eval cross_entropy` at language-model vocabularies (50,257 and 128,256 classes): the
/// per-row loss and, with an upstream, the logits' gradient, against the CPU reference.
#[test]
fn cross_entropy_answers_at_vocabulary_sizes() {
    for (rows, classes) in [(8usize, 50_257usize), (2, 128_256)] {
        let d = scratch(&format!("ce{classes}"));
        let x = uniform(classes as u64, rows * classes, -8.0, 8.0);
        let labels: Vec<i32> = (0..rows).map(|i| (i * 7919 % classes) as i32).collect();
        let u = uniform(5, rows, 0.5, 1.5);
        let cpu = Device::cpu();
        let (tx, tl, tu) = (
            Tensor::from_slice(&cpu, &x, &[rows, classes]).unwrap(),
            Tensor::from_slice(&cpu, &labels, &[rows]).unwrap(),
            Tensor::from_slice(&cpu, &u, &[rows]).unwrap(),
        );
        let px = save(&d, "x.npy", &x, &[rows, classes]);
        let pl = d.join("labels.npy");
        write_npy(&pl, &tl).unwrap();
        let pu = save(&d, "u.npy", &u, &[rows]);
        let out = d.join("out");
        let o = eval(&[
            "cross_entropy",
            px.to_str().unwrap(),
            pl.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--upstream",
            pu.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = [
            (tx.cross_entropy(&tl).unwrap(), 1e-4, 1e-5),
            (tx.cross_entropy_backward(&tl, &tu).unwrap(), 1e-7, 1e-4),
        ];
        for (file, (w, atol, rtol)) in ["out.npy", "grad0.npy"].iter().zip(&want) {
            let got = load(out.join(file));
            assert_eq!(got.shape(), w.shape(), "{classes} {file}");
            assert_close(
                &format!("{classes} {file}"),
                &got.to_vec::<f32>().unwrap(),
                &w.to_vec::<f32>().unwrap(),
                *atol,
                *rtol,
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
