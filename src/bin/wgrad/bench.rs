//! `wgrad bench`: measured figures for the core kernels on the GPU with the
//! CPU reference beside each. Speed is measured here, never asserted by tests.

use std::time::Instant;

use wgrad::{Device, Rng, Tensor};

mod layout;

/// One measured figure.
struct Figure {
    op: &'static str,
    shape: Vec<usize>,
    device: &'static str,
    adapter: String,
    ms: f64,
    /// ("gflops" | "gbps" | "steps_per_s", value)
    rate: (&'static str, f64),
    /// Further named figures (submits per step, planned bytes, ...).
    extra: Vec<(&'static str, f64)>,
    /// ("memory" | "compute", the figure as a fraction of that roof), on the GPU.
    roof: Option<(&'static str, f64)>,
}

impl Figure {
    fn json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!(
            "{{\"op\":\"{}\",\"shape\":[{}],\"device\":\"{}\",\"adapter\":\"{}\",\"ms\":{:.4},\"{}\":{:.3}}}",
            self.op,
            shape.join(","),
            self.device,
            json_escape(&self.adapter),
            self.ms,
            self.rate.0,
            self.rate.1
        )
        .trim_end_matches('}')
        .to_string()
            + &self.extra.iter().map(|(k, v)| format!(",\"{k}\":{v}")).collect::<String>()
            + &self
                .roof
                .map(|(r, f)| format!(",\"roof\":\"{r}\",\"fraction_of_roof\":{f:.3}"))
                .unwrap_or_default()
            + "}"
    }

    fn row(&self) -> String {
        format!(
            "{:<10} {:<20} {:<4} {:>10.3} ms {:>9.3} {}",
            self.op,
            format!("{:?}", self.shape),
            self.device,
            self.ms,
            self.rate.1,
            match self.rate.0 {
                "gflops" => "GFLOP/s",
                "gbps" => "GB/s",
                other => other,
            }
        ) + &self
            .extra
            .iter()
            .map(|(k, v)| format!("  {k}={v}"))
            .collect::<String>()
            + &self
                .roof
                .map(|(r, f)| format!("  {:.0}% of {r} roof", f * 100.0))
                .unwrap_or_default()
    }
}

fn json_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => "\\\"".chars().collect::<Vec<_>>(),
            '\\' => "\\\\".chars().collect(),
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

/// Mean milliseconds of `f` after a warm-up: repeats (queued back to back,
/// one synchronize at the end) until about half a second has been spent.
fn time_ms(dev: &Device, mut f: impl FnMut() -> wgrad::Result<Tensor>) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    drop(f()?);
    dev.synchronize()?;
    let warm = t0.elapsed().as_secs_f64();
    // A run this slow (the CPU reference on big shapes) is its own figure: pipeline
    // compilation is a few ms, and repeating it would take minutes.
    if warm > 2.0 {
        return Ok(warm * 1e3);
    }
    let t0 = Instant::now();
    drop(f()?);
    dev.synchronize()?;
    let once = t0.elapsed().as_secs_f64();
    let reps = ((0.5 / once.max(1e-6)) as usize).clamp(1, 50);
    let t0 = Instant::now();
    for _ in 0..reps {
        drop(f()?);
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / reps as f64)
}

/// A decomposition of a seeded random (n, n) matrix: best milliseconds and the dispatches
/// of one solve. A solve `forced` onto the device path has no CPU figure (the CPU device
/// runs the same reference either way).
fn timed_solve(
    dev: &Device,
    seed: u64,
    n: usize,
    forced: bool,
    solve: impl Fn(&Tensor) -> wgrad::Result<Tensor>,
) -> anyhow::Result<(f64, (&'static str, f64))> {
    if forced && !dev.is_gpu() {
        return Ok((f64::NAN, ("dispatches", 0.0)));
    }
    let a = Tensor::from_slice(dev, &Rng::new(seed).vec_uniform(n * n, -1.0, 1.0), &[n, n])?;
    let before = dev.dispatch_count();
    drop(solve(&a)?);
    let dispatches = (dev.dispatch_count() - before) as f64;
    let ms = time_ms(dev, || solve(&a))?;
    Ok((ms, ("dispatches", dispatches)))
}

type Case = (
    &'static str,
    Vec<usize>,
    Box<dyn Fn(&Device) -> anyhow::Result<(f64, (&'static str, f64))>>,
);

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    for n in [256usize, 512, 1024, 2048] {
        v.push((
            "matmul",
            vec![n, n, n],
            Box::new(move |dev| {
                let mut rng = Rng::new(1);
                let a = Tensor::from_slice(dev, &rng.vec_uniform(n * n, -1.0, 1.0), &[n, n])?;
                let b = Tensor::from_slice(dev, &rng.vec_uniform(n * n, -1.0, 1.0), &[n, n])?;
                let ms = time_ms(dev, || a.matmul(&b))?;
                Ok((ms, ("gflops", 2.0 * (n as f64).powi(3) / (ms * 1e6))))
            }),
        ));
    }
    // Long K (split-K, src/ops/matmul.rs): `matmul_long_k` as the kernels run it (unsplit up
    // to the loop budget, 65,536 on the vec4 kernels), `matmul_long_k_split` forced into
    // chunks of `chunk`: the split's cost at a K that needs none, and at 300,000.
    for (m, k, n, chunk) in [
        (64usize, 4096usize, 64usize, None),
        (64, 4096, 64, Some(1024usize)),
        (4, 300_000, 4, None),
        (64, 300_000, 64, None),
        (64, 300_000, 64, Some(16_384)),
    ] {
        let op = if chunk.is_some() {
            "matmul_long_k_split"
        } else {
            "matmul_long_k"
        };
        v.push((
            op,
            vec![m, k, n],
            Box::new(move |dev| {
                let mut rng = Rng::new(3);
                let a = Tensor::from_slice(dev, &rng.vec_uniform(m * k, -1.0, 1.0), &[m, k])?;
                let b = Tensor::from_slice(dev, &rng.vec_uniform(k * n, -1.0, 1.0), &[k, n])?;
                let chunk = chunk.unwrap_or(usize::MAX);
                let ms = wgrad::ops::matmul::with_k_chunk(chunk, || time_ms(dev, || a.matmul(&b)))?;
                Ok((ms, ("gflops", 2.0 * (m * k * n) as f64 / (ms * 1e6))))
            }),
        ));
    }
    let (r, c) = (4096usize, 1024usize);
    v.push((
        "softmax",
        vec![r, c],
        Box::new(move |dev| {
            let x = Tensor::from_slice(dev, &Rng::new(2).vec_uniform(r * c, -5.0, 5.0), &[r, c])?;
            let ms = time_ms(dev, || x.softmax(-1))?;
            Ok((ms, ("gbps", (2 * r * c * 4) as f64 / (ms * 1e6))))
        }),
    ));
    let n = 4096usize;
    v.push((
        "sum",
        vec![n, n],
        Box::new(move |dev| {
            let x = Tensor::from_slice(dev, &Rng::new(3).vec_uniform(n * n, 0.0, 1.0), &[n, n])?;
            let ms = time_ms(dev, || x.sum_axis(-1, false))?;
            Ok((ms, ("gbps", ((n * n + n) * 4) as f64 / (ms * 1e6))))
        }),
    ));
    let n2 = 1usize << 22;
    v.push((
        "add",
        vec![n2],
        Box::new(move |dev| {
            let x = Tensor::from_slice(dev, &Rng::new(5).vec_uniform(n2, 0.0, 1.0), &[n2])?;
            let ms = time_ms(dev, || x.add(&x))?;
            Ok((ms, ("gbps", (3 * n2 * 4) as f64 / (ms * 1e6))))
        }),
    ));
    v.push((
        "transpose",
        vec![n, n],
        Box::new(move |dev| {
            let x = Tensor::from_slice(dev, &Rng::new(4).vec_uniform(n * n, 0.0, 1.0), &[n, n])?;
            let ms = time_ms(dev, || x.transpose())?;
            Ok((ms, ("gbps", (2 * n * n * 4) as f64 / (ms * 1e6))))
        }),
    ));
    // The blocked symmetric eigensolver (issue 16; NumPy's figures come from
    // scripts/bench_numpy_linalg.py). The figure is the dispatches of one solve, O(n/b).
    for n in [16usize, 32, 128, 256, 512, 1024, 2048] {
        v.push((
            "eigh",
            vec![n, n],
            Box::new(move |dev| {
                let r = Rng::new(6).vec_uniform(n * n, -1.0, 1.0);
                let sym: Vec<f32> = (0..n * n).map(|k| r[k] + r[(k % n) * n + k / n]).collect();
                if !dev.is_gpu() && n > 512 {
                    // The f64 Jacobi reference: minutes at 1024 (512 takes about 16 s).
                    return Ok((f64::NAN, ("dispatches", 0.0)));
                }
                let a = Tensor::from_slice(dev, &sym, &[n, n])?;
                let before = dev.dispatch_count();
                drop(wgrad::linalg::eigh(&a)?);
                let dispatches = (dev.dispatch_count() - before) as f64;
                let ms = time_ms(dev, || Ok(wgrad::linalg::eigh(&a)?.0))?;
                Ok((ms, ("dispatches", dispatches)))
            }),
        ));
    }
    // The blocked SVD (issue 16; NumPy's figures come from scripts/bench_numpy_linalg.py):
    // square sizes and one tall matrix (the QR-first path). The figure is the dispatches of
    // one solve, O(n/b).
    let svd_shapes: [(usize, usize); 6] = [
        (128, 128),
        (256, 256),
        (512, 512),
        (1024, 1024),
        (2048, 2048),
        (4096, 256),
    ];
    for (m, n) in svd_shapes {
        v.push((
            "svd",
            vec![m, n],
            Box::new(move |dev| {
                if !dev.is_gpu() && m * n > 512 * 512 {
                    // The f64 one-sided Jacobi reference: minutes past 512 (512 takes 2 s).
                    return Ok((f64::NAN, ("dispatches", 0.0)));
                }
                let a =
                    Tensor::from_slice(dev, &Rng::new(7).vec_uniform(m * n, -1.0, 1.0), &[m, n])?;
                let before = dev.dispatch_count();
                drop(wgrad::linalg::svd(&a)?);
                let dispatches = (dev.dispatch_count() - before) as f64;
                let ms = time_ms(dev, || Ok(wgrad::linalg::svd(&a)?.1))?;
                Ok((ms, ("dispatches", dispatches)))
            }),
        ));
    }
    // Householder QR (issue 16 measures 256, 512 and 1024; NumPy's figures come from
    // scripts/bench_numpy_linalg.py). `qr` is the default choice (on a software adapter the
    // blocked host QR up to 4096 columns), `qr_device` the blocked device QR forced
    // (`host_max: Some(0)`), to keep the trade visible. The figure is the dispatches of one
    // solve.
    for (op, host_max) in [("qr", None), ("qr_device", Some(0))] {
        for n in [16usize, 32, 128, 256, 512, 1024, 2048] {
            v.push((
                op,
                vec![n, n],
                Box::new(move |dev| {
                    let opts = wgrad::linalg::QrOptions {
                        host_max,
                        ..Default::default()
                    };
                    timed_solve(dev, 8, n, host_max.is_some(), |a| {
                        Ok(wgrad::linalg::qr_with_options(a, &opts)?.1)
                    })
                }),
            ));
        }
    }
    // The general eigenproblem (Hessenberg reduction + Francis QR; NumPy's figures come from
    // scripts/bench_numpy_linalg.py). The figure is the dispatches of one solve. `eig` is the
    // default choice (on a software adapter the host reduces up to 1024), `eig_blocked` the
    // blocked device reduction forced (`host_max: Some(0)`), to keep the trade visible.
    for (op, host_max) in [("eig", None), ("eig_blocked", Some(0))] {
        for n in [128usize, 256, 512] {
            v.push((
                op,
                vec![n, n],
                Box::new(move |dev| {
                    let opts = wgrad::linalg::EigOptions {
                        host_max,
                        ..Default::default()
                    };
                    timed_solve(dev, 9, n, host_max.is_some(), |a| {
                        Ok(wgrad::linalg::eig_with(a, &opts)?.vectors)
                    })
                }),
            ));
        }
    }
    // Broadcasting adds: a bias per row and a per-channel (NCHW) bias. Bytes: both
    // operands read once and the output written.
    let broadcasts: [(&[usize], &[usize]); 2] =
        [(&[4096, 1024], &[1024]), (&[64, 16, 8, 8], &[1, 16, 1, 1])];
    for (sa, sb) in broadcasts {
        let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
        v.push((
            "add_broadcast",
            [sa, sb].concat(),
            Box::new(move |dev| {
                let a = Tensor::from_slice(dev, &Rng::new(10).vec_uniform(na, 0.0, 1.0), sa)?;
                let b = Tensor::from_slice(dev, &Rng::new(11).vec_uniform(nb, 0.0, 1.0), sb)?;
                let ms = time_ms(dev, || a.add(&b))?;
                Ok((ms, ("gbps", ((2 * na + nb) * 4) as f64 / (ms * 1e6))))
            }),
        ));
    }
    v
}

/// The adapter's measured ceilings: copy GB/s (bytes read + written) and FMA GFLOP/s.
struct Roofs {
    copy_gbps: f64,
    fma_gflops: f64,
}

impl Roofs {
    /// Which roof bounds a figure of this kind, and the figure as a fraction of it.
    fn fraction(&self, rate: (&'static str, f64)) -> Option<(&'static str, f64)> {
        match rate.0 {
            "gbps" => Some(("memory", rate.1 / self.copy_gbps)),
            "gflops" => Some(("compute", rate.1 / self.fma_gflops)),
            _ => None,
        }
    }
}

/// Best (least) milliseconds of single runs of `f`, each waited for, after a
/// warm-up, over about half a second: a ceiling is what the adapter can reach,
/// so a run slowed by other work on the machine should not lower it.
fn best_ms(dev: &Device, mut f: impl FnMut() -> wgrad::Result<Tensor>) -> anyhow::Result<f64> {
    drop(f()?);
    dev.synchronize()?;
    let (start, mut best) = (Instant::now(), f64::MAX);
    for _ in 0..20 {
        let t0 = Instant::now();
        drop(f()?);
        dev.synchronize()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
        if start.elapsed().as_secs_f64() > 0.5 {
            break;
        }
    }
    Ok(best)
}

/// Measures the roofs on `dev`: a 32 MiB vec4 copy and 64Ki invocations of
/// 512 FMA steps (4.3 GFLOP), each the best of several runs.
fn measure_roofs(dev: &Device, adapter: &str) -> anyhow::Result<(Roofs, [Figure; 2])> {
    use wgrad::roofline::{copy_vec4, fma_peak, FMA_FLOPS_PER_STEP};
    let n = 8usize << 20;
    let x = Tensor::from_slice(dev, &Rng::new(12).vec_uniform(n, -1.0, 1.0), &[n])?;
    let copy_ms = best_ms(dev, || copy_vec4(&x))?;
    let copy_gbps = (2 * n * 4) as f64 / (copy_ms * 1e6);
    let (vecs, iters) = (65_536usize, 512u32);
    let seeds = Tensor::from_slice(
        dev,
        &Rng::new(13).vec_uniform(vecs * 4, -1.0, 1.0),
        &[vecs * 4],
    )?;
    let fma_ms = best_ms(dev, || fma_peak(&seeds, iters))?;
    let fma_gflops = vecs as f64 * iters as f64 * FMA_FLOPS_PER_STEP / (fma_ms * 1e6);
    let fig = |op, shape, ms, rate| Figure {
        op,
        shape,
        device: "gpu",
        adapter: adapter.to_string(),
        ms,
        rate,
        extra: Vec::new(),
        roof: None,
    };
    Ok((
        Roofs {
            copy_gbps,
            fma_gflops,
        },
        [
            fig("roof_copy", vec![n], copy_ms, ("gbps", copy_gbps)),
            fig(
                "roof_fma",
                vec![vecs, iters as usize],
                fma_ms,
                ("gflops", fma_gflops),
            ),
        ],
    ))
}

pub fn run(json: bool, filter: Option<&str>, with_cpu: bool) -> anyhow::Result<()> {
    let gpu = Device::gpu()?;
    let adapter = gpu.name();
    if !json {
        println!("adapter: {adapter}");
    }
    // The roofs first, in the same run, so every GPU figure is reported against them.
    let (roofs, roof_figs) = measure_roofs(&gpu, &adapter)?;
    for fig in roof_figs {
        println!("{}", if json { fig.json() } else { fig.row() });
    }
    let cpu = Device::cpu();
    // Every figure is measured on the GPU, then (unless --no-cpu) on the CPU reference.
    let mut devices: Vec<(&'static str, &Device, String)> = vec![("gpu", &gpu, adapter.clone())];
    if with_cpu {
        devices.push(("cpu", &cpu, "cpu reference".to_string()));
    }
    let wanted = |op: &str| filter.is_none_or(|flt| op.contains(flt));
    let print = |fig: Figure| println!("{}", if json { fig.json() } else { fig.row() });
    for (op, shape, f) in cases() {
        if !wanted(op) {
            continue;
        }
        for (device, dev, adapter) in &devices {
            let (ms, rate) = f(dev)?;
            if ms.is_nan() {
                continue; // a case the device does not measure
            }
            let (shape, adapter, extra) = (shape.clone(), adapter.clone(), Vec::new());
            let roof = (*device == "gpu").then(|| roofs.fraction(rate)).flatten();
            print(Figure {
                op,
                shape,
                device,
                adapter,
                ms,
                rate,
                extra,
                roof,
            });
        }
    }
    // Whole steps through the graph executor, with their own extra fields.
    type Step = fn(&Device, &'static str, String) -> anyhow::Result<Figure>;
    let steps: [(&str, Step); 7] = [
        ("mlp_step", mlp_step),
        ("cross_entropy_vocab", cross_entropy_vocab),
        ("conv2d_fwd_bwd", conv2d_step),
        ("max_pool2d_fwd_bwd", max_pool_step),
        ("attention_fwd_bwd", attention_step),
        ("digits_epoch", digits_epoch),
        ("cold_start", cold_start),
    ];
    for (name, f) in steps {
        if !wanted(name) {
            continue;
        }
        for (device, dev, adapter) in &devices {
            print(f(dev, device, adapter.clone())?);
        }
    }
    // Both devices in alternation: the digits target is a ratio to the CPU reference.
    if with_cpu && wanted("digits_epoch_vs_cpu") {
        print(digits_epoch_vs_cpu(&gpu, &cpu, adapter.clone())?);
    }
    // GPU only, and only when asked for by name (`--filter resnet`): seconds per step on a
    // software adapter, and hours on the f64 CPU reference.
    let named = |op: &str| filter.is_some_and(|flt| op.contains(flt));
    if named("resnet50_infer") {
        print(resnet50_infer(&gpu, adapter.clone())?);
    }
    if named("conv_layout") {
        for figure in layout::conv_layout(&gpu, adapter.clone())? {
            print(figure);
        }
    }
    if named("resnet50_train_step") {
        print(resnet50_train_step(&gpu, adapter.clone())?);
    }
    // GPU only: the CPU reference would take minutes per step of 34 GFLOP products.
    if wanted("big_weight_step") {
        for d_in in [8192, 4096] {
            print(big_weight_step(&gpu, adapter.clone(), d_in)?);
        }
    }
    Ok(())
}

/// One SGD step of x (256, d_in) · W (d_in, 8192) → ReLU → · W2 (8192, 10) → mean
/// cross-entropy, compiled: with d_in = 8192, W is 256 MiB, past a 128 MiB binding
/// (parts of the plan run in windows and blocks); with 4096 it fits one.
fn big_weight_step(dev: &Device, adapter: String, d_in: usize) -> anyhow::Result<Figure> {
    use wgrad::{Graph, Init, Sgd};
    let (batch, hidden, classes) = (256, 8192, 10);
    let g = Graph::new();
    let x = g.input("x", &[batch, d_in]);
    let y = g.input_i32("y", &[batch]);
    let uniform = |seed| Init::Uniform {
        lo: -0.01,
        hi: 0.01,
        seed,
    };
    let w = g.param("w", &[d_in, hidden], uniform(1));
    let w2 = g.param("w2", &[hidden, classes], uniform(2));
    let loss = x
        .matmul(&w)?
        .relu()?
        .matmul(&w2)?
        .cross_entropy(&y)?
        .mean()?;
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.1))?;
    let xt = Tensor::from_slice(
        dev,
        &Rng::new(3).vec_uniform(batch * d_in, -1.0, 1.0),
        &[batch, d_in],
    )?;
    let labels: Vec<i32> = (0..batch as i32).map(|i| i % classes as i32).collect();
    let yt = Tensor::from_slice(dev, &labels, &[batch])?;
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&[("x", &xt), ("y", &yt)])?[0].item()?) };
    let (ms, _) = ms_per_step(dev, 3, step)?;
    let plan = exe.plan();
    Ok(Figure {
        op: "big_weight_step",
        shape: vec![batch, d_in, hidden, classes],
        device: "gpu",
        adapter,
        ms,
        rate: ("steps_per_s", 1e3 / ms),
        extra: vec![
            ("weight_bytes", (d_in * hidden * 4) as f64),
            ("planned_peak_bytes", plan.peak_bytes as f64),
            ("slot_bytes", plan.slot_bytes as f64),
            ("dispatches", plan.dispatches as f64),
            ("recorded", exe.is_recorded() as u8 as f64),
        ],
        roof: None,
    })
}

/// One warm-up run of `step`, then `reps` runs: (ms per run, dispatches per run).
fn ms_per_step(
    dev: &Device,
    reps: usize,
    mut step: impl FnMut() -> anyhow::Result<f32>,
) -> anyhow::Result<(f64, f64)> {
    step()?; // warm: pipelines compiled, pool filled
    let (d0, t0) = (dev.dispatch_count(), Instant::now());
    for _ in 0..reps {
        step()?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
    Ok((ms, (dev.dispatch_count() - d0) as f64 / reps as f64))
}

/// Times forward + backward of `Σ build(inputs)` (gradients of every input), as
/// one compiled graph, reading back one gradient per run.
fn fwd_bwd(
    dev: &Device,
    op: &'static str,
    shape: Vec<usize>,
    device: &'static str,
    adapter: String,
    inputs: &[(&str, Vec<usize>)],
    build: impl Fn(&[wgrad::Var]) -> wgrad::Result<wgrad::Var>,
) -> anyhow::Result<Figure> {
    let g = wgrad::Graph::new();
    let xs: Vec<wgrad::Var> = inputs.iter().map(|(n, s)| g.input(n, s)).collect();
    let loss = build(&xs)?.sum()?;
    let refs: Vec<&wgrad::Var> = xs.iter().collect();
    let grads = wgrad::autodiff::grad(&loss, &refs)?;
    let mut outs = vec![&loss];
    outs.extend(grads.iter());
    let exe = dev.compile(&g, &outs, None)?;
    let mut rng = Rng::new(11);
    let feeds: Vec<Tensor> = inputs
        .iter()
        .map(|(_, s)| Tensor::from_slice(dev, &rng.vec_uniform(s.iter().product(), -1.0, 1.0), s))
        .collect::<wgrad::Result<_>>()?;
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, _)| *n).zip(feeds.iter()).collect();
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "profile") {
        // Per-kernel wall times, on a separate executable (profiling changes its state).
        let probe = dev.compile(&g, &outs, None)?;
        probe.run(&named)?;
        print_profile(&probe, 20)?;
    }
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&named)?[0].item()?) };
    let (ms, dispatches) = ms_per_step(dev, if dev.is_gpu() { 10 } else { 3 }, step)?;
    Ok(Figure {
        op,
        shape,
        device,
        adapter,
        ms,
        rate: ("steps_per_s", 1e3 / ms),
        extra: vec![("dispatches_per_step", dispatches)],
        roof: None,
    })
}

/// A language model's loss: forward and gradient of the mean cross-entropy of (64, 50257)
/// logits (GPT-2's vocabulary; rows past one invocation's loop budget, split into parts),
/// one compiled graph reading back the loss; the gradient stays on the device.
fn cross_entropy_vocab(
    dev: &Device,
    device: &'static str,
    adapter: String,
) -> anyhow::Result<Figure> {
    let (rows, classes) = (64usize, 50_257usize);
    let g = wgrad::Graph::new();
    let x = g.input("x", &[rows, classes]);
    let y = g.input_i32("y", &[rows]);
    let loss = x.cross_entropy(&y)?.mean()?;
    let dx = wgrad::autodiff::grad(&loss, &[&x])?.remove(0);
    let exe = dev.compile(&g, &[&loss, &dx], None)?;
    let mut rng = Rng::new(12);
    let xs = Tensor::from_slice(
        dev,
        &rng.vec_uniform(rows * classes, -8.0, 8.0),
        &[rows, classes],
    )?;
    let labels: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    let ys = Tensor::from_slice(dev, &labels, &[rows])?;
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&[("x", &xs), ("y", &ys)])?[0].item()?) };
    let (ms, dispatches) = ms_per_step(dev, if dev.is_gpu() { 10 } else { 3 }, step)?;
    Ok(Figure {
        op: "cross_entropy_vocab",
        shape: vec![rows, classes],
        device,
        adapter,
        ms,
        rate: ("steps_per_s", 1e3 / ms),
        extra: vec![("dispatches_per_step", dispatches)],
        roof: None,
    })
}

/// ResNet-50's max pool forward + backward: 1×64×112×112, 3×3 stride 2 padding 1.
fn max_pool_step(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    let window = wgrad::Conv2d::new(3, 3).stride(2).padding(1);
    fwd_bwd(
        dev,
        "max_pool2d_fwd_bwd",
        vec![1, 64, 112, 112],
        device,
        adapter,
        &[("x", vec![1, 64, 112, 112])],
        |x| x[0].max_pool2d_window(window),
    )
}

/// Conv2d forward + backward: a 32x3x32x32 batch, 16 3x3 filters, padding 1.
fn conv2d_step(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    let inputs = [("x", vec![32, 3, 32, 32]), ("w", vec![16, 3, 3, 3])];
    fwd_bwd(
        dev,
        "conv2d_fwd_bwd",
        vec![32, 3, 32, 32, 16],
        device,
        adapter,
        &inputs,
        |x| x[0].conv2d(&x[1], wgrad::Conv2d::new(3, 3).padding(1)),
    )
}

/// Attention forward + backward: batch 8, 4 heads, sequence 128, d 64 (causal).
fn attention_step(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    let s = vec![8, 4, 128, 64];
    let inputs = [("q", s.clone()), ("k", s.clone()), ("v", s.clone())];
    fwd_bwd(dev, "attention_fwd_bwd", s, device, adapter, &inputs, |x| {
        wgrad::Var::attention(&x[0], &x[1], &x[2], true)
    })
}

/// Batch, input, hidden and class sizes of the benchmark MLP.
const MLP: (usize, usize, usize, usize) = (256, 64, 128, 10);

/// The benchmark MLP 64-128-10 (ReLU), batch 256, and its mean softmax cross-entropy.
fn mlp_graph() -> wgrad::Result<(wgrad::Graph, wgrad::Var)> {
    use wgrad::{Graph, Init};
    let (batch, d_in, hidden, classes) = MLP;
    let g = Graph::new();
    let x = g.input("x", &[batch, d_in]);
    let y = g.input_i32("y", &[batch]);
    let w1 = g.param("w1", &[d_in, hidden], Init::KaimingNormal { seed: 1 });
    let b1 = g.param("b1", &[hidden], Init::Zeros);
    let w2 = g.param("w2", &[hidden, classes], Init::XavierUniform { seed: 2 });
    let b2 = g.param("b2", &[classes], Init::Zeros);
    let logits = x.matmul(&w1)?.add(&b1)?.relu()?.matmul(&w2)?.add(&b2)?;
    let loss = logits.cross_entropy(&y)?.mean()?;
    Ok((g, loss))
}

/// Seeded feeds for the benchmark MLP on `dev`.
fn mlp_feeds(dev: &Device) -> wgrad::Result<(Tensor, Tensor)> {
    let (batch, d_in, _, classes) = MLP;
    let mut rng = Rng::new(7);
    let xt = Tensor::from_slice(
        dev,
        &rng.vec_uniform(batch * d_in, -1.0, 1.0),
        &[batch, d_in],
    )?;
    let labels: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
    Ok((xt, Tensor::from_slice(dev, &labels, &[batch])?))
}

/// Cold start: a new device (no pipelines in this process), the MLP step compiled and
/// its first step run and read back. Fully cold only with the driver's shader cache
/// and wgrad's autotune cache empty (e.g. `MESA_SHADER_CACHE_DISABLE=true
/// XDG_CACHE_HOME=$(mktemp -d)`); the figure says which caches it could not rule out.
fn cold_start(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    use wgrad::Sgd;
    let t0 = Instant::now();
    let fresh = if dev.is_gpu() {
        Device::gpu()?
    } else {
        Device::cpu()
    };
    let device_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (g, loss) = mlp_graph()?;
    let exe = fresh.compile(&g, &[&loss], Sgd::new(0.05))?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3 - device_ms;
    let (xt, yt) = mlp_feeds(&fresh)?;
    exe.run(&[("x", &xt), ("y", &yt)])?[0].item()?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let (batch, d_in, hidden, classes) = MLP;
    let mesa_cache_off = std::env::var("MESA_SHADER_CACHE_DISABLE").is_ok_and(|v| v == "true");
    Ok(Figure {
        op: "cold_start",
        shape: vec![batch, d_in, hidden, classes],
        device,
        adapter,
        ms,
        rate: ("first_steps_per_s", 1e3 / ms),
        extra: vec![
            ("device_ms", device_ms),
            ("compile_ms", compile_ms),
            ("first_step_ms", ms - device_ms - compile_ms),
            ("mesa_shader_cache_disabled", mesa_cache_off as u8 as f64),
        ],
        roof: None,
    })
}

/// The digits example's CNN ([`wgrad::nn::models::digits_cnn`]) compiled for Adam training
/// on `dev`, with one seeded random batch of 64 images of its shape as its feeds.
struct DigitsTraining {
    g: wgrad::Graph,
    loss: wgrad::Var,
    exe: wgrad::Executor,
    xt: Tensor,
    yt: Tensor,
    compile_ms: f64,
}

/// Adam steps per digits epoch: the example's 1,437 training images in whole batches of 64.
const DIGITS_STEPS: usize = 1437 / 64;
const DIGITS_BATCH: usize = 64;

impl DigitsTraining {
    fn new(dev: &Device) -> anyhow::Result<Self> {
        use wgrad::nn::Module;
        let batch = DIGITS_BATCH;
        let g = wgrad::Graph::new();
        let model = wgrad::nn::models::digits_cnn(&g, true)?;
        let logits = model.forward(&g.input("x", &[batch, 1, 8, 8]))?;
        let loss = logits.cross_entropy(&g.input_i32("y", &[batch]))?.mean()?;
        let t0 = Instant::now();
        let exe = dev.compile(&g, &[&loss], wgrad::Optimizer::adam(3e-3))?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut rng = Rng::new(5);
        let xt = Tensor::from_slice(
            dev,
            &rng.vec_uniform(batch * 64, 0.0, 1.0),
            &[batch, 1, 8, 8],
        )?;
        let labels: Vec<i32> = (0..batch).map(|_| rng.below(10) as i32).collect();
        let yt = Tensor::from_slice(dev, &labels, &[batch])?;
        let run = DigitsTraining {
            g,
            loss,
            exe,
            xt,
            yt,
            compile_ms,
        };
        run.step()?; // warm: pipelines compiled, pool filled
        Ok(run)
    }

    fn step(&self) -> anyhow::Result<f32> {
        Ok(self.exe.run(&[("x", &self.xt), ("y", &self.yt)])?[0].item()?)
    }

    /// Wall ms of one epoch of [`DIGITS_STEPS`] steps.
    fn epoch_ms(&self) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        for _ in 0..DIGITS_STEPS {
            self.step()?;
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

/// One training epoch of the digits example's CNN: 22 Adam steps of batch 64, on seeded
/// random images of the same shape. `ms` is the median of [`DIGITS_EPOCHS`] epochs run back
/// to back, on either device (one epoch is ~0.15 s on lavapipe, where a single one swung
/// 134-230 ms from run to run); the fastest and slowest come with it.
fn digits_epoch(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    let run = DigitsTraining::new(dev)?;
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "verbose") {
        eprintln!("digits_epoch dispatches: {:?}", run.exe.dispatch_entries());
    }
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "profile") {
        // Per-kernel wall times, on a separate executable (profiling changes its state).
        let probe = dev.compile(&run.g, &[&run.loss], wgrad::Optimizer::adam(3e-3))?;
        probe.run(&[("x", &run.xt), ("y", &run.yt)])?;
        print_profile(&probe, 20)?;
    }
    let d0 = dev.dispatch_count();
    let mut epochs = Vec::with_capacity(DIGITS_EPOCHS);
    for _ in 0..DIGITS_EPOCHS {
        epochs.push(run.epoch_ms()?);
    }
    let dispatches = (dev.dispatch_count() - d0) as f64 / (DIGITS_STEPS * DIGITS_EPOCHS) as f64;
    let ms = sort_median(&mut epochs);
    Ok(Figure {
        op: "digits_epoch",
        shape: vec![DIGITS_STEPS * DIGITS_BATCH, 1, 8, 8],
        device,
        adapter,
        ms,
        rate: ("epochs_per_s", 1e3 / ms),
        extra: [
            ("dispatches_per_step", dispatches),
            ("fastest_epoch_ms", epochs[0]),
            ("slowest_epoch_ms", epochs[DIGITS_EPOCHS - 1]),
            ("compile_ms", run.compile_ms),
        ]
        .into_iter()
        .chain(read_form(&run.exe))
        .collect(),
        roof: None,
    })
}

/// The digits epoch on the GPU as a fraction of the CPU reference's, the target
/// ratio, measured in [`DIGITS_EPOCHS`] pairs: each pair runs one epoch on each device back
/// to back (GPU first in even pairs, CPU first in odd ones), so a slow spell of a shared
/// host falls on both sides of a pair rather than on one whole figure. `ms` is the median
/// GPU epoch; `gpu_to_cpu` the median of the pairs' ratios, with the lowest and highest.
fn digits_epoch_vs_cpu(gpu: &Device, cpu: &Device, adapter: String) -> anyhow::Result<Figure> {
    let runs = [DigitsTraining::new(gpu)?, DigitsTraining::new(cpu)?];
    let (mut gpu_ms, mut cpu_ms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..DIGITS_EPOCHS {
        let mut ms = [0.0; 2];
        for i in [pair % 2, 1 - pair % 2] {
            ms[i] = runs[i].epoch_ms()?;
        }
        gpu_ms.push(ms[0]);
        cpu_ms.push(ms[1]);
        ratios.push(ms[0] / ms[1]);
    }
    let (ms, cpu_median, ratio) = (
        sort_median(&mut gpu_ms),
        sort_median(&mut cpu_ms),
        sort_median(&mut ratios),
    );
    Ok(Figure {
        op: "digits_epoch_vs_cpu",
        shape: vec![DIGITS_STEPS * DIGITS_BATCH, 1, 8, 8],
        device: "gpu",
        adapter,
        ms,
        rate: ("epochs_per_s", 1e3 / ms),
        extra: vec![
            ("cpu_epoch_ms", cpu_median),
            ("gpu_to_cpu", ratio),
            ("gpu_to_cpu_lowest", ratios[0]),
            ("gpu_to_cpu_highest", ratios[DIGITS_EPOCHS - 1]),
            ("pairs", DIGITS_EPOCHS as f64),
        ],
        roof: None,
    })
}

/// Sorts `v` (timings, fastest first) and returns its middle element: the median of an odd
/// count.
fn sort_median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// How a compiled plan reads its operands (`reads_textures` 1 or 0) and, where both forms
/// were timed at compile, their times (`Executor::read_timing`).
fn read_form(exe: &wgrad::Executor) -> Vec<(&'static str, f64)> {
    let mut out = vec![("reads_textures", exe.plan().reads_textures as u8 as f64)];
    if let Some(t) = exe.read_timing() {
        out.push(("compile_textures_ms", t.textures_ms));
        out.push(("compile_buffers_ms", t.buffers_ms));
    }
    out
}

/// Epochs `digits_epoch` times (odd: the median is one of them).
const DIGITS_EPOCHS: usize = 5;

/// Prints each recorded dispatch's wall time (`reps` replays each) and its share, to
/// stderr (`WGRAD_PLAN=profile`).
fn print_profile(exe: &wgrad::Executor, reps: usize) -> anyhow::Result<()> {
    let prof = exe.profile_dispatches(reps)?;
    let total: f64 = prof.iter().map(|p| p.1).sum();
    for (entry, ms) in &prof {
        eprintln!("  {entry:<32} {ms:8.3} ms  {:5.1}%", 100.0 * ms / total);
    }
    eprintln!("  {:<32} {total:8.3} ms per step", "total");
    Ok(())
}

/// One training step of the benchmark MLP, SGD: forward, backward and update,
/// reading back the loss.
fn mlp_step(dev: &Device, device: &'static str, adapter: String) -> anyhow::Result<Figure> {
    use wgrad::Sgd;
    let (batch, d_in, hidden, classes) = MLP;
    let (g, loss) = mlp_graph()?;
    // The same step compiled without fusion, for its dispatch count (before/after).
    let unfused = if dev.is_gpu() {
        let saved = std::env::var_os(wgrad::executor::FUSION_ENV);
        std::env::set_var(wgrad::executor::FUSION_ENV, "0");
        let exe = dev.compile(&g, &[&loss], Sgd::new(0.05));
        match saved {
            Some(v) => std::env::set_var(wgrad::executor::FUSION_ENV, v),
            None => std::env::remove_var(wgrad::executor::FUSION_ENV),
        }
        exe?.plan().dispatches
    } else {
        0
    };
    let exe = dev.compile(&g, &[&loss], Sgd::new(0.05))?;
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "verbose") {
        eprintln!("mlp_step dispatches: {:?}", exe.dispatch_entries());
    }
    let (xt, yt) = mlp_feeds(dev)?;
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&[("x", &xt), ("y", &yt)])?[0].item()?) };
    step()?; // warm: pipelines compiled, pool filled
    let (submits0, dispatches0, t0) = (dev.submit_count(), dev.dispatch_count(), Instant::now());
    let reps = if dev.is_gpu() { 50 } else { 5 };
    for _ in 0..reps {
        step()?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let plan = exe.plan();
    Ok(Figure {
        op: "mlp_step",
        shape: vec![batch, d_in, hidden, classes],
        device,
        adapter,
        ms,
        rate: ("steps_per_s", 1e3 / ms),
        extra: vec![
            (
                "submits_per_step",
                (dev.submit_count() - submits0) as f64 / reps as f64,
            ),
            (
                "dispatches_per_step",
                (dev.dispatch_count() - dispatches0) as f64 / reps as f64,
            ),
            ("nodes", plan.nodes as f64),
            ("planned_peak_bytes", plan.peak_bytes as f64),
            ("unplanned_bytes", plan.unplanned_bytes as f64),
            ("slot_bytes", plan.slot_bytes as f64),
            ("dispatches_unfused", unfused as f64),
            ("recorded", exe.is_recorded() as u8 as f64),
        ],
        roof: None,
    })
}

/// onnxruntime's CPU time for ResNet-50 inference (batch 1, 224×224, 2 threads), measured
/// separately by `scripts/onnxruntime_resnet50.py` (Python, not by this command) on the
/// 2-core AMD EPYC machines wgrad's lavapipe figures come from: median of 30 runs 38.8 and
/// 40.6 ms in two runs (minimum 38.4 ms; onnxruntime 1.32.0, 2026-12-05). Reported beside
/// `resnet50_infer` for comparison. (It was 29.5, from a machine of unknown make.)
const ONNXRUNTIME_RESNET50_MS: f64 = 38.8;

/// ResNet-50 ([`wgrad::nn::models::resnet50`], random weights) on a seeded random image
/// batch of `batch`×3×224×224: (graph, the compiled outputs' handle, feeds).
fn resnet50_graph(
    batch: usize,
    training: bool,
) -> wgrad::Result<(wgrad::Graph, wgrad::Var, Vec<f32>, Vec<i32>)> {
    use wgrad::nn::Module;
    let g = wgrad::Graph::new();
    let model = wgrad::nn::models::resnet50(&g, 1000, training)?;
    let logits = model.forward(&g.input("x", &[batch, 3, 224, 224]))?;
    let out = if training {
        logits.cross_entropy(&g.input_i32("y", &[batch]))?.mean()?
    } else {
        logits
    };
    let mut rng = Rng::new(11);
    let x = rng.vec_uniform(batch * 3 * 224 * 224, -1.0, 1.0);
    let y = (0..batch).map(|_| rng.below(1000) as i32).collect();
    Ok((g, out, x, y))
}

/// Bytes of the graph's parameters.
fn param_bytes(g: &wgrad::Graph) -> f64 {
    g.nodes()
        .iter()
        .filter(|n| matches!(n.op, wgrad::graph::Op::Param(..)))
        .map(|n| n.shape.iter().product::<usize>() as f64 * 4.0)
        .sum()
}

/// Runs `resnet50_infer` times (odd: the median is one of them). On a shared 2-core host
/// single runs swung 167-300 ms within minutes (2026-12-07), a mean of 3 with them.
const RESNET50_INFER_RUNS: usize = 11;

/// ResNet-50 inference, batch 1, 224×224 (evaluation mode: running statistics), reading
/// back the logits; onnxruntime's figure beside it.
fn resnet50_infer(dev: &Device, adapter: String) -> anyhow::Result<Figure> {
    let (g, logits, x, _) = resnet50_graph(1, false)?;
    let macs = wgrad::graph::work::multiply_adds(&g.nodes());
    let exe = dev.compile(&g, &[&logits], None)?;
    let xt = Tensor::from_slice(dev, &x, &[1, 3, 224, 224])?;
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&[("x", &xt)])?[0].to_vec::<f32>()?[0]) };
    step()?;
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "profile") {
        print_profile(&exe, 3)?; // inference has no state for the replays to change
    }
    // The median of RESNET50_INFER_RUNS runs timed one by one, with the fastest: the
    // statistics scripts/onnxruntime_resnet50.py reports for onnxruntime (median of 30).
    let d0 = dev.dispatch_count();
    let mut runs = Vec::with_capacity(RESNET50_INFER_RUNS);
    for _ in 0..RESNET50_INFER_RUNS {
        let t0 = Instant::now();
        step()?;
        runs.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let dispatches = (dev.dispatch_count() - d0) as f64 / RESNET50_INFER_RUNS as f64;
    let ms = sort_median(&mut runs);
    let plan = exe.plan();
    Ok(Figure {
        op: "resnet50_infer",
        shape: vec![1, 3, 224, 224],
        device: "gpu",
        adapter,
        ms,
        rate: ("gflops", 2.0 * macs / (ms * 1e6)),
        extra: vec![
            (
                "onnxruntime_ms_measured_separately",
                ONNXRUNTIME_RESNET50_MS,
            ),
            ("fastest_ms", runs[0]),
            ("runs", RESNET50_INFER_RUNS as f64),
            ("dispatches_per_run", dispatches),
            ("gmacs", macs / 1e9),
            ("planned_peak_bytes", plan.peak_bytes as f64),
            ("param_bytes", param_bytes(&g)),
            ("pinned_texture_bytes", plan.pinned_texture_bytes as f64),
        ],
        roof: None,
    })
}

/// One ResNet-50 training step, batch 8, 224×224, SGD (batch statistics, cross-entropy),
/// reading back the loss: its time and the executor's memory plan (planned peak bytes of
/// intermediates beside the sum of every intermediate, and the parameters' bytes).
fn resnet50_train_step(dev: &Device, adapter: String) -> anyhow::Result<Figure> {
    let batch = 8;
    let (g, loss, x, y) = resnet50_graph(batch, true)?;
    let exe = dev.compile(&g, &[&loss], wgrad::Sgd::new(0.01))?;
    let xt = Tensor::from_slice(dev, &x, &[batch, 3, 224, 224])?;
    let yt = Tensor::from_slice(dev, &y, &[batch])?;
    let step = || -> anyhow::Result<f32> { Ok(exe.run(&[("x", &xt), ("y", &yt)])?[0].item()?) };
    let (ms, dispatches) = ms_per_step(dev, 1, step)?; // a minute per step on lavapipe
    if std::env::var(wgrad::executor::PLAN_ENV).is_ok_and(|v| v.trim() == "profile") {
        // One replay per dispatch (602 of them: a step's time again). The replays apply the
        // SGD update once more, after the timed step.
        print_profile(&exe, 1)?;
    }
    let plan = exe.plan();
    Ok(Figure {
        op: "resnet50_train_step",
        shape: vec![batch, 3, 224, 224],
        device: "gpu",
        adapter,
        ms,
        rate: ("steps_per_s", 1e3 / ms),
        extra: vec![
            ("planned_peak_bytes", plan.peak_bytes as f64),
            ("sum_of_intermediate_bytes", plan.unplanned_bytes as f64),
            ("slot_bytes", plan.slot_bytes as f64),
            ("param_bytes", param_bytes(&g)),
            ("nodes", plan.nodes as f64),
            ("dispatches_per_step", dispatches),
        ],
        roof: None,
    })
}
