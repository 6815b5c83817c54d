//! Optimizers: one fused WGSL update per parameter per step (shaders/optim.wgsl),
//! with a CPU reference in f64, so parameters and optimizer state stay on the GPU.

use crate::device::DeviceInner;
use crate::error::Result;
use crate::gpu::{GpuContext, Kernel};
use crate::ops::chunk::{elementwise_window, window, windows};
use crate::ops::{gpu_output_big, grid_1d};
use crate::tensor::Tensor;
use crate::DType;

pub(crate) const SHADER: Kernel = Kernel {
    name: "optim",
    source: include_str!("../shaders/optim.wgsl"),
};

/// An optimizer's settings.
#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    /// SGD with optional momentum and L2 weight decay.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum factor (0 for none).
        momentum: f32,
        /// L2 weight decay coefficient (0 for none).
        weight_decay: f32,
    },
    /// Adam (`decoupled: false`, L2 decay added to the gradient) or AdamW
    /// (`decoupled: true`, decay applied to the weights).
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay rate of the first-moment (mean) estimate.
        beta1: f32,
        /// Decay rate of the second-moment (uncentred variance) estimate.
        beta2: f32,
        /// Added to the denominator for numerical stability.
        eps: f32,
        /// Weight decay coefficient (0 for none).
        weight_decay: f32,
        /// `true` for AdamW (decay applied to the weights), `false` for L2 decay.
        decoupled: bool,
    },
}

/// Plain SGD.
pub struct Sgd;

impl Sgd {
    /// `p -= lr·g`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(lr: f32) -> Optimizer {
        Optimizer::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl Optimizer {
    /// Adam with the usual defaults (β = 0.9, 0.999; ε = 1e-8).
    pub fn adam(lr: f32) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with decoupled weight decay.
    pub fn adamw(lr: f32, weight_decay: f32) -> Optimizer {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled: true,
        }
    }
}

/// Per-parameter state: momentum / first moment, second moment.
#[derive(Default, Clone)]
pub(crate) struct SlotState {
    m: Option<Tensor>,
    v: Option<Tensor>,
}

impl SlotState {
    /// State held in given tensors (a compiled plan's fixed buffers).
    pub(crate) fn with(m: Option<Tensor>, v: Option<Tensor>) -> SlotState {
        SlotState { m, v }
    }

    /// The momentum / first-moment and second-moment tensors.
    pub(crate) fn parts(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        (self.m.as_ref(), self.v.as_ref())
    }
}

/// Whether `opt` keeps a first (momentum) and a second moment per parameter.
pub(crate) fn state_needs(opt: &Optimizer) -> (bool, bool) {
    (
        !matches!(opt, Optimizer::Sgd { momentum, .. } if *momentum == 0.0),
        matches!(opt, Optimizer::Adam { .. }),
    )
}

/// The uniform words of optim.wgsl's `Params`.
pub(crate) fn params_words(n: usize, opt: &Optimizer, step: u64) -> [u32; 10] {
    let f = |x: f32| x.to_bits();
    match *opt {
        Optimizer::Sgd {
            lr,
            momentum,
            weight_decay,
        } => [
            n as u32,
            f(lr),
            f(weight_decay),
            f(momentum),
            0,
            0,
            0,
            f(1.0),
            f(1.0),
            0,
        ],
        Optimizer::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
        } => {
            let (l2, dec) = if decoupled {
                (0.0, weight_decay)
            } else {
                (weight_decay, 0.0)
            };
            let bc1 = 1.0 - (beta1 as f64).powi(step as i32);
            let bc2 = 1.0 - (beta2 as f64).powi(step as i32);
            [
                n as u32,
                f(lr),
                f(l2),
                0,
                f(beta1),
                f(beta2),
                f(eps),
                f(bc1 as f32),
                f(bc2 as f32),
                f(dec),
            ]
        }
    }
}

/// CPU reference of one update, in f64: returns (p', m', v').
fn update_reference(
    opt: &Optimizer,
    p: &[f64],
    g: &[f64],
    m: &[f64],
    v: &[f64],
    step: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = p.len();
    let (mut po, mut mo, mut vo) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    for i in 0..n {
        let (pi, gi) = (p[i], g[i]);
        match *opt {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => {
                let grad = gi + weight_decay as f64 * pi;
                let dir = if momentum != 0.0 {
                    momentum as f64 * m[i] + grad
                } else {
                    grad
                };
                mo[i] = dir;
                po[i] = pi - lr as f64 * dir;
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let (b1, b2, lr) = (beta1 as f64, beta2 as f64, lr as f64);
                let grad = if decoupled {
                    gi
                } else {
                    gi + weight_decay as f64 * pi
                };
                let m1 = b1 * m[i] + (1.0 - b1) * grad;
                let v1 = b2 * v[i] + (1.0 - b2) * grad * grad;
                let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
                let decay = if decoupled { weight_decay as f64 } else { 0.0 };
                mo[i] = m1;
                vo[i] = v1;
                po[i] =
                    pi * (1.0 - lr * decay) - lr * (m1 / bc1) / ((v1 / bc2).sqrt() + eps as f64);
            }
        }
    }
    (po, mo, vo)
}

/// The windows `(start, len)` of an `n`-element parameter that [`update`] dispatches one
/// kernel each for, in order: one window when it fits a storage binding.
pub(crate) fn update_windows(ctx: &GpuContext, n: usize) -> Vec<(usize, usize)> {
    windows(n, elementwise_window(ctx)).collect()
}

/// Returns the updated parameter and advances `state`; `step` counts from 1.
pub(crate) fn update(
    opt: &Optimizer,
    p: &Tensor,
    g: &Tensor,
    state: &mut SlotState,
    step: u64,
) -> Result<Tensor> {
    let name = "optimizer_update";
    p.expect_f32(name)?;
    g.expect_f32(name)?;
    p.expect_same_device(name, g)?;
    if p.shape() != g.shape() {
        return Err(crate::Error::Shape {
            op: name,
            detail: format!(
                "parameter {:?} and gradient {:?} differ",
                p.shape(),
                g.shape()
            ),
        });
    }
    let needs_m = !matches!(opt, Optimizer::Sgd { momentum, .. } if *momentum == 0.0);
    let needs_v = matches!(opt, Optimizer::Adam { .. });
    let zeros = || Tensor::zeros(p.device(), p.shape());
    let m = if needs_m {
        Some(state.m.clone().map_or_else(zeros, Ok)?)
    } else {
        None
    };
    let v = if needs_v {
        Some(state.v.clone().map_or_else(zeros, Ok)?)
    } else {
        None
    };
    match &p.device().inner {
        DeviceInner::Cpu => {
            let host = |t: &Option<Tensor>| {
                t.as_ref()
                    .map(|t| t.host_f64().into_owned())
                    .unwrap_or_default()
            };
            let (pv, gv) = (p.host_f64(), g.host_f64());
            let n = pv.len();
            let (mv, vv) = (host(&m), host(&v));
            let (mv, vv) = (
                if mv.is_empty() { vec![0.0; n] } else { mv },
                if vv.is_empty() { vec![0.0; n] } else { vv },
            );
            let (po, mo, vo) = update_reference(opt, &pv, &gv, &mv, &vv, step);
            let dev = p.device();
            if needs_m {
                state.m = Some(Tensor::cpu_from_f64(dev, p.shape(), mo));
            }
            if needs_v {
                state.v = Some(Tensor::cpu_from_f64(dev, p.shape(), vo));
            }
            Ok(Tensor::cpu_from_f64(dev, p.shape(), po))
        }
        DeviceInner::Gpu(ctx) => {
            let n = p.numel();
            let out = gpu_output_big(ctx, p.device(), name, p.shape(), DType::F32)?;
            let fresh = || gpu_output_big(ctx, p.device(), name, p.shape(), DType::F32);
            let m_out = m.as_ref().map(|_| fresh()).transpose()?;
            let v_out = v.as_ref().map(|_| fresh()).transpose()?;
            fn arg(t: &Tensor) -> crate::gpu::BufArg<'_> {
                t.gpu_arg().expect("GPU device holds GPU tensors")
            }
            // The kernel's buffers in binding order, each with what it reads or writes.
            let mut bufs = vec![arg(p), arg(g)];
            let entry = match (&m, &v, &m_out, &v_out) {
                (None, _, _, _) => {
                    bufs.push(arg(&out));
                    "sgd_update"
                }
                (Some(m), None, Some(mo), _) => {
                    bufs.extend([arg(m), arg(&out), arg(mo)]);
                    "sgd_momentum_update"
                }
                (Some(m), Some(v), Some(mo), Some(vo)) => {
                    bufs.extend([arg(m), arg(&out), arg(mo), arg(v), arg(vo)]);
                    "adam_update"
                }
                _ => unreachable!("moments are made together with their outputs"),
            };
            // Element-wise, so a parameter past one storage binding is updated in windows,
            // every buffer bound at the window's offset (the recorded plan rewrites each
            // window's params per step: `update_windows`).
            for (s, len) in update_windows(ctx, n) {
                let at: Vec<_> = bufs.iter().map(|&b| window(b, s, len)).collect();
                let words = params_words(len, opt, step);
                ctx.dispatch_at(&SHADER, entry, &[], &words, &at, grid_1d(ctx, len))?;
            }
            if m_out.is_some() {
                state.m = m_out;
            }
            if v_out.is_some() {
                state.v = v_out;
            }
            Ok(out)
        }
    }
}
