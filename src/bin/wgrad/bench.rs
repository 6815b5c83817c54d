//! `wgrad bench`: measured figures for the core kernels on the GPU with the
//! CPU reference beside each. Speed is measured here, never asserted by tests.

use std::time::Instant;

use wgrad::{Device, Rng, Tensor};

/// One measured figure.
struct Figure {
    op: &'static str,
    shape: Vec<usize>,
    device: &'static str,
    adapter: String,
    ms: f64,
    /// ("gflops" | "gbps", value)
    rate: (&'static str, f64),
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
    }

    fn row(&self) -> String {
        format!(
            "{:<10} {:<20} {:<4} {:>10.3} ms {:>9.3} {}",
            self.op,
            format!("{:?}", self.shape),
            self.device,
            self.ms,
            self.rate.1,
            if self.rate.0 == "gflops" {
                "GFLOP/s"
            } else {
                "GB/s"
            }
        )
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
    drop(f()?);
    dev.synchronize()?;
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
    v
}

pub fn run(json: bool, filter: Option<&str>, with_cpu: bool) -> anyhow::Result<()> {
    let gpu = Device::gpu()?;
    let adapter = gpu.name();
    if !json {
        println!("adapter: {adapter}");
    }
    let cpu = Device::cpu();
    for (op, shape, f) in cases() {
        if filter.is_some_and(|flt| !op.contains(flt)) {
            continue;
        }
        let mut devices: Vec<(&'static str, &Device, String)> =
            vec![("gpu", &gpu, adapter.clone())];
        if with_cpu {
            devices.push(("cpu", &cpu, "cpu reference".to_string()));
        }
        for (device, dev, adapter) in devices {
            let (ms, rate) = f(dev)?;
            let fig = Figure {
                op,
                shape: shape.clone(),
                device,
                adapter,
                ms,
                rate,
            };
            println!("{}", if json { fig.json() } else { fig.row() });
        }
    }
    Ok(())
}
