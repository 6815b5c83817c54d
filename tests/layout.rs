//! Layout kernels against the CPU reference: transposes (both kernels),
//! permute, broadcast_to, slice and concat. These are copies, so results must
//! match bit for bit (atol 0, rtol 0; NaN payloads and -0.0 included).

mod common;

use common::{gpu, keep_alive, pair, uniform};
use wgrad::ops::layout::{TransposeKernel, TRANSPOSE_ENV};
use wgrad::{DType, Device, Error, Rng, Tensor};

/// The 32-bit words of a tensor of any 4-byte dtype.
fn bits(t: &Tensor) -> Vec<u32> {
    match t.dtype() {
        DType::F32 => t
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        DType::I32 => t
            .to_vec::<i32>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        _ => t.to_vec::<u32>().unwrap(),
    }
}

/// Asserts equal shape, dtype and bits, printing the first mismatches.
fn assert_exact(label: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{label}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{label}: dtype");
    let (g, w) = (bits(got), bits(want));
    assert_eq!(g.len(), w.len(), "{label}: length");
    let bad: Vec<usize> = (0..g.len()).filter(|&i| g[i] != w[i]).collect();
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(8)
            .map(|&i| format!("  [{i}] got {:#010x} want {:#010x}", g[i], w[i]))
            .collect();
        panic!(
            "{label}: {} of {} elements differ; first:\n{}",
            bad.len(),
            g.len(),
            first.join("\n")
        );
    }
}

/// Seeded data for `shape` on the GPU and on the CPU reference.
fn data_pair(dev: &Device, seed: u64, shape: &[usize]) -> (Tensor, Tensor) {
    let n: usize = shape.iter().product();
    pair(dev, &uniform(seed, n, -10.0, 10.0), shape)
}

/// A seeded random permutation of `0..n` (Fisher–Yates).
fn random_permutation(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

/// Index of the row-major coordinate `c` in `dims`.
fn offset(c: &[usize], dims: &[usize]) -> usize {
    c.iter().zip(dims).fold(0, |acc, (&ci, &d)| acc * d + ci)
}

/// The row-major coordinate of index `i` in `dims`.
fn coord(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut c = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        c[d] = i % dims[d];
        i /= dims[d];
    }
    c
}

#[test]
fn cpu_reference_transposes_by_hand() {
    let cpu = Device::cpu();
    let x = Tensor::from_slice(&cpu, &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let t = x.transpose().unwrap();
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    );
    let b = Tensor::from_slice(&cpu, &[1i32, 2, 3, 4, 5, 6, 7, 8], &[2, 2, 2]).unwrap();
    assert_eq!(
        b.transpose().unwrap().to_vec::<i32>().unwrap(),
        vec![1, 3, 2, 4, 5, 7, 6, 8]
    );
}

#[test]
fn transpose_matches_reference_with_every_kernel() {
    let Some(dev) = gpu() else { return };
    // Aligned shapes (multiples of 4) take the vec4 path of the blocked kernel.
    let shapes: [&[usize]; 17] = [
        &[1, 1],
        &[1, 257],
        &[3, 17],
        &[4, 8],
        &[12, 36],
        &[64, 64],
        &[255, 257],
        &[1000, 3],
        &[1024, 1000],
        &[2, 3, 17, 5],
        &[3, 68, 132],
        &[0, 5],
        // 70000 one-tile matrices: more workgroups than one grid dimension holds.
        &[70000, 2, 3],
        &[70000, 4, 4],
        // Small aligned matrices (the vec4 kernel's one-sub-block-per-lane form on CPU
        // adapters): a batch of the digits CNN's permute, and the largest such matrix.
        &[64, 16, 32],
        &[3, 128, 128],
        &[2, 132, 128],
    ];
    for (s, shape) in shapes.iter().enumerate() {
        let (g, c) = data_pair(&dev, s as u64, shape);
        let want = c.transpose().unwrap();
        for k in TransposeKernel::ALL {
            let label = format!("transpose {} {shape:?}", k.name());
            let got = g.transpose_using(k).unwrap();
            assert_exact(&label, &got, &want);
            keep_alive(got); // the next kernel must not get this answer as its output
        }
        assert_exact(
            &format!("transpose default {shape:?}"),
            &g.transpose().unwrap(),
            &want,
        );
        // Transposing twice is the identity.
        assert_exact(
            &format!("transpose twice {shape:?}"),
            &want.transpose().unwrap(),
            &c,
        );
    }
}

#[test]
fn transpose_keeps_bits_and_integer_dtypes() {
    let Some(dev) = gpu() else { return };
    let specials = [
        f32::NAN,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234),
        1e-45,
    ];
    let (g, c) = pair(&dev, &specials, &[2, 3]);
    for k in TransposeKernel::ALL {
        assert_exact(
            &format!("specials {}", k.name()),
            &g.transpose_using(k).unwrap(),
            &c.transpose().unwrap(),
        );
    }
    let ints: Vec<i32> = (0..17 * 33).map(|i| i * 7 - 1000).collect();
    let gi = Tensor::from_slice(&dev, &ints, &[17, 33]).unwrap();
    let ci = Tensor::from_slice(&Device::cpu(), &ints, &[17, 33]).unwrap();
    for k in TransposeKernel::ALL {
        assert_exact(
            &format!("i32 {}", k.name()),
            &gi.transpose_using(k).unwrap(),
            &ci.transpose().unwrap(),
        );
    }
    let words: Vec<u32> = (0..3 * 5).map(|i| u32::MAX - i).collect();
    let gu = Tensor::from_slice(&dev, &words, &[3, 5]).unwrap();
    let cu = Tensor::from_slice(&Device::cpu(), &words, &[3, 5]).unwrap();
    // Intermediates stay bound until read back: a GPU tensor dropped while its
    // write is unsubmitted can hand its buffer to an upload in another test.
    let (row_g, row_c) = (gu.slice(0, 1, 2).unwrap(), cu.slice(0, 1, 2).unwrap());
    let cat_g = Tensor::concat(&[&gu, &row_g], 0).unwrap();
    let cat_c = Tensor::concat(&[&cu, &row_c], 0).unwrap();
    assert_exact("u32 concat of slice", &cat_g, &cat_c);
    assert_exact("u32 slice", &row_g, &row_c);
}

#[test]
fn permute_matches_reference_on_random_permutations() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(42);
    let sizes = [1, 2, 3, 5, 7, 17];
    for rank in [3usize, 4, 5, 8] {
        for case in 0..6 {
            let shape: Vec<usize> = if rank == 8 {
                (0..8).map(|_| 1 + rng.below(3)).collect()
            } else {
                (0..rank).map(|_| sizes[rng.below(sizes.len())]).collect()
            };
            let axes = random_permutation(&mut rng, rank);
            let (g, c) = data_pair(&dev, (rank * 100 + case) as u64, &shape);
            let want = c.permute(&axes).unwrap();
            // The reference against an independent index map: out[c] = in[c mapped back].
            let x = bits(&c);
            let w = bits(&want);
            for (i, &v) in w.iter().enumerate() {
                let oc = coord(i, want.shape());
                let mut ic = vec![0; rank];
                for (k, &a) in axes.iter().enumerate() {
                    ic[a] = oc[k];
                }
                assert_eq!(
                    v,
                    x[offset(&ic, &shape)],
                    "reference permute {shape:?} {axes:?} at {i}"
                );
            }
            let label = format!("permute {shape:?} by {axes:?}");
            assert_exact(&label, &g.permute(&axes).unwrap(), &want);
        }
    }
    // Larger: the (B, H, S, D) -> (B, S, H, D) move of attention heads, and a
    // permute that is a batched transpose of 255x257 matrices.
    for (shape, axes) in [
        (vec![2, 4, 257, 16], vec![0, 2, 1, 3]),
        (vec![3, 255, 257], vec![0, 2, 1]),
    ] {
        let (g, c) = data_pair(&dev, 7, &shape);
        let label = format!("permute {shape:?} by {axes:?}");
        assert_exact(
            &label,
            &g.permute(&axes).unwrap(),
            &c.permute(&axes).unwrap(),
        );
    }
}

#[test]
fn transpose_axes_is_a_permutation() {
    let Some(dev) = gpu() else { return };
    let shape = [3, 4, 5, 6];
    let (g, c) = data_pair(&dev, 9, &shape);
    for a in -4isize..4 {
        for b in -4isize..4 {
            let (ua, ub) = (a.rem_euclid(4) as usize, b.rem_euclid(4) as usize);
            let mut axes = vec![0, 1, 2, 3];
            axes.swap(ua, ub);
            let want = c.permute(&axes).unwrap();
            assert_exact(
                &format!("cpu transpose_axes({a}, {b})"),
                &c.transpose_axes(a, b).unwrap(),
                &want,
            );
            assert_exact(
                &format!("gpu transpose_axes({a}, {b})"),
                &g.transpose_axes(a, b).unwrap(),
                &want,
            );
        }
    }
    // The last two axes swapped equals transpose().
    assert_exact(
        "transpose_axes(-2, -1)",
        &g.transpose_axes(-2, -1).unwrap(),
        &c.transpose().unwrap(),
    );
}

#[test]
fn broadcast_to_matches_reference() {
    let Some(dev) = gpu() else { return };
    let cases: [(&[usize], &[usize]); 10] = [
        (&[3], &[2, 3]),
        (&[1], &[4, 5]),
        (&[2, 1], &[2, 5]),
        (&[1, 3, 1], &[4, 3, 6]),
        (&[], &[2, 2]),
        (&[5, 1, 3], &[2, 5, 4, 3]),
        (&[1000, 1], &[1000, 257]),
        (&[17, 255], &[17, 255]),
        (&[1], &[0, 3]),
        (&[1, 1, 1, 1, 1, 1, 1, 2], &[2, 1, 3, 1, 2, 1, 3, 2]),
    ];
    let cpu = Device::cpu();
    for (s, (from, to)) in cases.into_iter().enumerate() {
        let (g, c) = data_pair(&dev, s as u64, from);
        let want = c.broadcast_to(to).unwrap();
        // Independent check of the reference: adding zeros of the target shape broadcasts too.
        let via_add = c.add(&Tensor::zeros(&cpu, to).unwrap()).unwrap();
        assert_exact(
            &format!("reference broadcast_to {from:?} -> {to:?}"),
            &want,
            &via_add,
        );
        assert_exact(
            &format!("broadcast_to {from:?} -> {to:?}"),
            &g.broadcast_to(to).unwrap(),
            &want,
        );
    }
}

#[test]
fn strided_copy_beyond_one_grid_dimension() {
    let Some(dev) = gpu() else { return };
    // 2 * 8.4M elements: more than 65535 * 256 invocations, so the grid is split.
    let x = Tensor::from_slice(&dev, &[1.5f32, -2.5], &[2]).unwrap();
    let rows = 8_400_000;
    let y = x.broadcast_to(&[rows, 2]).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(y.len(), rows * 2);
    let bad = y
        .iter()
        .enumerate()
        .position(|(i, &v)| v != [1.5, -2.5][i % 2]);
    assert_eq!(bad, None, "broadcast_to over a split grid");
}

#[test]
fn slice_matches_reference_on_every_axis() {
    let Some(dev) = gpu() else { return };
    for shape in [
        vec![257],
        vec![4, 5, 6],
        vec![3, 17, 255],
        vec![2, 1, 3, 64],
    ] {
        let (g, c) = data_pair(&dev, shape.len() as u64, &shape);
        for ax in 0..shape.len() {
            let d = shape[ax];
            let ranges = [
                (0, d),
                (0, 1),
                (d - 1, d),
                (d / 3, d - d / 3),
                (0, 0),
                (d, d),
                (d / 2, d / 2),
            ];
            for (start, end) in ranges {
                for axis in [ax as isize, ax as isize - shape.len() as isize] {
                    let want = c.slice(axis, start, end).unwrap();
                    // The reference against direct indexing.
                    let (x, w) = (bits(&c), bits(&want));
                    for (i, &v) in w.iter().enumerate() {
                        let mut ic = coord(i, want.shape());
                        ic[ax] += start;
                        assert_eq!(v, x[offset(&ic, &shape)], "reference slice {shape:?}");
                    }
                    let label = format!("slice {shape:?} axis {axis} {start}..{end}");
                    assert_exact(&label, &g.slice(axis, start, end).unwrap(), &want);
                }
            }
        }
        let label = format!("narrow {shape:?}");
        assert_exact(
            &label,
            &g.narrow(-1, 1, shape[shape.len() - 1] - 1).unwrap(),
            &c.slice(-1, 1, shape[shape.len() - 1]).unwrap(),
        );
    }
}

#[test]
fn concat_matches_reference_on_every_axis() {
    let Some(dev) = gpu() else { return };
    let base = [3usize, 4, 5];
    for ax in 0..3 {
        for count in 1..=3 {
            let mut shapes = Vec::new();
            for k in 0..count {
                let mut s = base.to_vec();
                s[ax] = [base[ax], 17, 2][k];
                shapes.push(s);
            }
            let pairs: Vec<(Tensor, Tensor)> = shapes
                .iter()
                .enumerate()
                .map(|(k, s)| data_pair(&dev, (ax * 10 + k) as u64, s))
                .collect();
            let gs: Vec<&Tensor> = pairs.iter().map(|p| &p.0).collect();
            let cs: Vec<&Tensor> = pairs.iter().map(|p| &p.1).collect();
            let want = Tensor::concat(&cs, ax as isize).unwrap();
            // Slicing the reference back gives each input.
            let mut start = 0;
            for (k, c) in cs.iter().enumerate() {
                let end = start + c.shape()[ax];
                assert_exact(
                    &format!("reference concat part {k}"),
                    &want.slice(ax as isize, start, end).unwrap(),
                    c,
                );
                start = end;
            }
            let label = format!("concat axis {ax} of {shapes:?}");
            assert_exact(&label, &Tensor::concat(&gs, ax as isize).unwrap(), &want);
            let label = format!("concat axis {} of {shapes:?}", ax as isize - 3);
            assert_exact(
                &label,
                &Tensor::concat(&gs, ax as isize - 3).unwrap(),
                &want,
            );
        }
    }
    // An empty piece contributes nothing.
    let (ge, ce) = data_pair(&dev, 3, &[3, 0, 5]);
    let (gf, cf) = data_pair(&dev, 4, &[3, 4, 5]);
    let want = Tensor::concat(&[&ce, &cf, &ce], 1).unwrap();
    assert_exact("reference concat with empty", &want, &cf);
    assert_exact(
        "concat with empty",
        &Tensor::concat(&[&ge, &gf, &ge], 1).unwrap(),
        &want,
    );
    // Large, uneven pieces along the last axis (a strided copy per input).
    let a = data_pair(&dev, 1, &[1000, 257]);
    let b = data_pair(&dev, 2, &[1000, 3]);
    let want = Tensor::concat(&[&a.1, &b.1], -1).unwrap();
    assert_exact(
        "concat (1000, 257) + (1000, 3)",
        &Tensor::concat(&[&a.0, &b.0], -1).unwrap(),
        &want,
    );
}

fn is_invalid(r: wgrad::Result<Tensor>, op: &str, words: &[&str]) {
    match r {
        Err(Error::Invalid { op: o, detail }) => {
            assert_eq!(o, op);
            for w in words {
                assert!(
                    detail.contains(w),
                    "{op}: {detail:?} does not mention {w:?}"
                );
            }
        }
        other => panic!("{op}: expected Error::Invalid, got {other:?}"),
    }
}

fn is_shape(r: wgrad::Result<Tensor>, op: &str, words: &[&str]) {
    match r {
        Err(Error::Shape { op: o, detail }) => {
            assert_eq!(o, op);
            for w in words {
                assert!(
                    detail.contains(w),
                    "{op}: {detail:?} does not mention {w:?}"
                );
            }
        }
        other => panic!("{op}: expected Error::Shape, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_typed_errors_on_both_devices() {
    let mut devices = vec![Device::cpu()];
    devices.extend(gpu());
    for dev in &devices {
        let x = Tensor::from_slice(dev, &uniform(1, 24, -1.0, 1.0), &[2, 3, 4]).unwrap();
        let v = Tensor::from_slice(dev, &[1.0f32, 2.0], &[2]).unwrap();
        is_shape(v.transpose(), "transpose", &["[2]"]);
        is_shape(
            Tensor::scalar(dev, 1.0).unwrap().transpose(),
            "transpose",
            &["[]"],
        );
        is_invalid(x.permute(&[0, 1]), "permute", &["[0, 1]", "[2, 3, 4]"]);
        is_invalid(
            x.permute(&[0, 1, 1]),
            "permute",
            &["[0, 1, 1]", "[2, 3, 4]"],
        );
        is_invalid(x.permute(&[0, 1, 3]), "permute", &["[0, 1, 3]"]);
        is_invalid(x.permute(&[0, 1, 2, 3]), "permute", &["[0, 1, 2, 3]"]);
        let deep = Tensor::zeros(dev, &[1; 9]).unwrap();
        is_shape(
            deep.permute(&[8, 7, 6, 5, 4, 3, 2, 1, 0]),
            "permute",
            &["rank 9"],
        );
        assert!(matches!(
            x.transpose_axes(0, 3),
            Err(Error::Axis {
                op: "transpose_axes",
                axis: 3,
                ..
            })
        ));
        is_shape(
            x.broadcast_to(&[3, 4]),
            "broadcast_to",
            &["[2, 3, 4]", "[3, 4]"],
        );
        is_shape(
            x.broadcast_to(&[2, 2, 4]),
            "broadcast_to",
            &["[2, 3, 4]", "[2, 2, 4]"],
        );
        is_shape(v.broadcast_to(&[2, 1]), "broadcast_to", &["[2]", "[2, 1]"]);
        is_invalid(x.slice(1, 2, 1), "slice", &["2..1", "[2, 3, 4]"]);
        is_invalid(x.slice(-1, 0, 5), "slice", &["0..5", "[2, 3, 4]"]);
        is_invalid(x.narrow(2, 3, usize::MAX), "slice", &["[2, 3, 4]"]);
        assert!(matches!(
            x.slice(3, 0, 1),
            Err(Error::Axis {
                op: "slice",
                axis: 3,
                ..
            })
        ));
        assert!(matches!(
            x.slice(-4, 0, 1),
            Err(Error::Axis { op: "slice", .. })
        ));
        is_invalid(Tensor::concat(&[], 0), "concat", &["at least one"]);
        let y = Tensor::zeros(dev, &[2, 5, 4]).unwrap();
        is_shape(
            Tensor::concat(&[&x, &y], 0),
            "concat",
            &["[2, 3, 4]", "[2, 5, 4]"],
        );
        is_shape(
            Tensor::concat(&[&x, &v], 0),
            "concat",
            &["[2, 3, 4]", "[2]"],
        );
        let xy = Tensor::concat(&[&x, &y], 1).unwrap();
        assert_eq!(
            (xy.shape(), xy.to_vec::<f32>().unwrap().len()),
            (&[2, 8, 4][..], 64)
        );
        assert!(matches!(
            Tensor::concat(&[&x, &y], 3),
            Err(Error::Axis { op: "concat", .. })
        ));
        let s = Tensor::scalar(dev, 1.0).unwrap();
        assert!(matches!(
            Tensor::concat(&[&s, &s], 0),
            Err(Error::Axis { op: "concat", .. })
        ));
        let xi = Tensor::from_slice(dev, &[0i32; 24], &[2, 3, 4]).unwrap();
        assert!(matches!(
            Tensor::concat(&[&x, &xi], 0),
            Err(Error::DType { op: "concat", .. })
        ));
    }
    if devices.len() == 2 {
        let a = Tensor::zeros(&devices[0], &[2, 2]).unwrap();
        let b = Tensor::zeros(&devices[1], &[2, 2]).unwrap();
        assert!(matches!(
            Tensor::concat(&[&a, &b], 0),
            Err(Error::DeviceMismatch { op: "concat", .. })
        ));
    }
}

#[test]
fn aligned_and_unaligned_copies_match_reference() {
    let Some(dev) = gpu() else { return };
    // Innermost runs that are multiples of 4 on both sides take the vec4 kernel;
    // the neighbours one word off take the scalar one. Lengths 68 and 1028 also
    // leave partial runs at the end of each row.
    let (g, c) = data_pair(&dev, 11, &[6, 1028]);
    for (start, end) in [(4, 72), (3, 71), (0, 1028), (8, 1024), (1, 1028)] {
        let label = format!("slice (6, 1028)[:, {start}..{end}]");
        assert_exact(
            &label,
            &g.slice(1, start, end).unwrap(),
            &c.slice(1, start, end).unwrap(),
        );
    }
    let (ga, ca) = data_pair(&dev, 12, &[5, 8]);
    let (gb, cb) = data_pair(&dev, 13, &[5, 68]);
    let (gc, cc) = data_pair(&dev, 14, &[5, 3]);
    for (label, gs, cs) in [
        ("concat (5,8)+(5,68)", vec![&ga, &gb], vec![&ca, &cb]),
        (
            "concat (5,8)+(5,3)+(5,68)",
            vec![&ga, &gc, &gb],
            vec![&ca, &cc, &cb],
        ),
    ] {
        let got = Tensor::concat(&gs, 1).unwrap();
        assert_exact(label, &got, &Tensor::concat(&cs, 1).unwrap());
    }
    let (gr, cr) = data_pair(&dev, 15, &[1, 1028]);
    assert_exact(
        "broadcast_to (1, 1028) -> (7, 1028)",
        &gr.broadcast_to(&[7, 1028]).unwrap(),
        &cr.broadcast_to(&[7, 1028]).unwrap(),
    );
    let (gp, cp) = data_pair(&dev, 16, &[3, 5, 7, 12]);
    assert_exact(
        "permute (3,5,7,12) by (2,0,1,3)",
        &gp.permute(&[2, 0, 1, 3]).unwrap(),
        &cp.permute(&[2, 0, 1, 3]).unwrap(),
    );
}

/// Runs the copy tests of this binary again in a child process with the
/// strided-copy run length pinned: 1 (what real GPUs use) and 3 (odd, so runs
/// end mid-row), whatever this adapter would pick.
#[test]
fn copies_match_reference_with_other_run_lengths() {
    if gpu().is_none() || std::env::var("WGRAD_COPY_RUN").is_ok() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    for run in ["1", "3"] {
        let out = std::process::Command::new(&exe)
            .args(["reference", "--test-threads=2"])
            .env("WGRAD_COPY_RUN", run)
            .output()
            .expect("run child tests");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "WGRAD_COPY_RUN={run}: child failed:\n{text}"
        );
        let passed = text
            .split("test result: ok. ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        assert!(
            passed >= Some(7),
            "WGRAD_COPY_RUN={run}: too few tests ran:\n{text}"
        );
    }
}

/// Runs only inside the child process of `env_var_pins_the_transpose_kernel`.
#[test]
fn child_reports_transpose_kernel() {
    let Ok(expected) = std::env::var("WGRAD_LAYOUT_TEST_EXPECT") else {
        return;
    };
    let dev = gpu().unwrap_or_else(Device::cpu);
    match TransposeKernel::for_device(&dev) {
        Ok(k) => assert_eq!(k.name(), expected),
        Err(e) => {
            assert_eq!(expected, "error", "unexpected {e}");
            let x = Tensor::zeros(&dev, &[2, 3]).unwrap();
            if dev.is_gpu() {
                assert!(matches!(
                    x.transpose(),
                    Err(Error::Invalid {
                        op: "transpose",
                        ..
                    })
                ));
                // Ops that never become a transpose ignore the variable.
                assert!(x.slice(0, 0, 1).is_ok());
            }
        }
    }
}

#[test]
fn env_var_pins_the_transpose_kernel() {
    // Setting the variable in this process would race with the other tests, so
    // run one test of this binary in a child process with it set.
    let exe = std::env::current_exe().expect("test binary path");
    for (value, expected) in [
        ("tiled", "tiled"),
        ("simple", "simple"),
        ("blocked", "blocked"),
        ("Tiled", "tiled"),
        ("bogus", "error"),
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_reports_transpose_kernel",
                "--test-threads=1",
            ])
            .env(TRANSPOSE_ENV, value)
            .env("WGRAD_LAYOUT_TEST_EXPECT", expected)
            .output()
            .expect("run child test");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{TRANSPOSE_ENV}={value}: child failed:\n{text}"
        );
        assert!(
            text.contains("1 passed"),
            "{TRANSPOSE_ENV}={value}: child did not run:\n{text}"
        );
    }
}

/// `cargo test --release --test layout -- --ignored --nocapture bench`: GB/s
/// (bytes read + written / time, warm, best of 5) of the layout kernels here.
#[test]
#[ignore]
fn bench_layout_throughput() {
    let Some(dev) = gpu() else { return };
    let time = |label: &str, bytes: usize, f: &dyn Fn() -> Tensor| {
        drop(f());
        dev.synchronize().unwrap();
        // Best of 5 single runs: other processes may share this machine's cores.
        let mut s = f64::INFINITY;
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            drop(f());
            dev.synchronize().unwrap();
            s = s.min(t0.elapsed().as_secs_f64());
        }
        let gbs = 2.0 * bytes as f64 / s / 1e9;
        println!("{label}: {:.2} ms, {gbs:.2} GB/s", s * 1e3);
    };
    let n = 4096;
    let x = Tensor::from_slice(&dev, &uniform(1, n * n, -1.0, 1.0), &[n, n]).unwrap();
    let odd = Tensor::from_slice(&dev, &uniform(2, 4095 * 4097, -1.0, 1.0), &[4095, 4097]).unwrap();
    for k in TransposeKernel::ALL {
        let label = format!("transpose {n}x{n} {}", k.name());
        time(&label, n * n * 4, &|| x.transpose_using(k).unwrap());
        let label = format!("transpose 4095x4097 {}", k.name());
        time(&label, odd.numel() * 4, &|| odd.transpose_using(k).unwrap());
    }
    let label = format!("transpose {n}x{n} default");
    time(&label, n * n * 4, &|| x.transpose().unwrap());
    let h = x.reshape(&[8, 16, 256, 512]).unwrap();
    for axes in [[0, 2, 1, 3], [3, 1, 0, 2]] {
        let label = format!("permute (8, 16, 256, 512) by {axes:?}");
        time(&label, n * n * 4, &|| h.permute(&axes).unwrap());
    }
    let half = x.slice(1, 0, n / 2).unwrap();
    time("concat 2 x (4096, 2048) on axis 1", n * n * 4, &|| {
        Tensor::concat(&[&half, &half], 1).unwrap()
    });
    time(
        "concat (4096, 4096) on axis 0 (buffer copy)",
        n * n * 4,
        &|| Tensor::concat(&[&x], 0).unwrap(),
    );
    time("slice (4096, 4096)[:, 1:4095]", n * (n - 2) * 4, &|| {
        x.slice(1, 1, n - 1).unwrap()
    });
    let row = x.slice(0, 0, 1).unwrap();
    time("broadcast_to (1, 4096) -> (4096, 4096)", n * n * 4, &|| {
        row.broadcast_to(&[n, n]).unwrap()
    });
}
