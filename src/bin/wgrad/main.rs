//! The `wgrad` command: `info` (adapters and the one chosen), `check` (every
//! kernel against the CPU reference), `bench` (measured figures) and `eval`
//! (one op on .npy files).

mod bench;
mod check;
mod eval;
mod info;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wgrad",
    version,
    about = "GPU compute engine: WGSL kernels verified against a CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every adapter found, the one chosen and why, its limits and features.
    Info {
        /// One line: the chosen adapter (exit code 2 when there is none).
        #[arg(long)]
        brief: bool,
    },
    /// Every kernel and gradient rule on this adapter against the CPU reference;
    /// exit code 1 on any failure.
    Check {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: matmul, softmax, row sum, transpose on the GPU and the CPU reference.
    Bench {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Only ops whose name contains this text. The ResNet-50 entries (`resnet50_infer`,
        /// batch 1; `resnet50_train_step`, batch 8, SGD; GPU only, seconds each on a
        /// software adapter) run only when named: `--filter resnet`; so does
        /// `conv_layout` (NCHW against channels-last convolutions on ResNet-50's shapes).
        #[arg(long)]
        filter: Option<String>,
        /// Skip the CPU-reference figures (they are slow for large shapes).
        #[arg(long)]
        no_cpu: bool,
    },
    /// Evaluates one op on .npy inputs and writes DIR/out.npy (and DIR/gradN.npy
    /// with --upstream).
    Eval {
        /// matmul, add, sub, mul, div, maximum, minimum, pow, relu, exp, log, sqrt, tanh,
        /// sigmoid, gelu, neg, abs, square, softmax, log_softmax, sum, mean, max, min,
        /// transpose, permute, cross_entropy
        op: String,
        /// Input .npy files (f16, f32, f64, i32, i64, bool; C or Fortran order).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Directory for the results.
        #[arg(long)]
        out: PathBuf,
        /// Axis for reductions (removed from the result) and softmax (default -1).
        #[arg(long, allow_hyphen_values = true)]
        axis: Option<isize>,
        /// Axes for permute, as a,b,c.
        #[arg(long)]
        axes: Option<String>,
        /// Upstream gradient (the output's shape): also writes the gradient of each input.
        #[arg(long)]
        upstream: Option<PathBuf>,
        /// gpu (default) or cpu (the reference).
        #[arg(long, default_value = "gpu")]
        device: String,
    },
    /// Runs an ONNX model on .npy inputs and writes DIR/out0.npy, DIR/out1.npy, ... in the
    /// model's output order (DIR/gradI.npy too with --upstream).
    Run {
        /// The .onnx file (external data is read relative to its directory).
        model: PathBuf,
        /// One .npy file per model input without an initializer, in the model's order
        /// (float16/32/64, int32/64, bool; C or Fortran order). Symbolic dims are bound
        /// from their shapes.
        inputs: Vec<PathBuf>,
        /// Directory for the results.
        #[arg(long, required_unless_present_any = ["summary", "bench"])]
        out: Option<PathBuf>,
        /// gpu (default) or cpu (the reference).
        #[arg(long, default_value = "gpu")]
        device: String,
        /// Gradient of the first output: also writes the gradient of each float input.
        #[arg(long)]
        upstream: Option<PathBuf>,
        /// Times N runs after a warm-up and prints {"model", "batch", "ms"} (median) as JSON.
        #[arg(long, value_name = "N")]
        bench: Option<usize>,
        /// Binds a symbolic dim, NAME=SIZE (feeds bind the others).
        #[arg(long = "dim", value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// Prints the inputs, outputs, op counts, parameter count and unsupported ops,
        /// without running anything.
        #[arg(long)]
        summary: bool,
    },
}

fn main() {
    // First, while the process has one thread: no Vulkan-loader warning without
    // XDG_RUNTIME_DIR, and two lavapipe worker threads per core unless LP_NUM_THREADS says.
    wgrad::quiet_loader_env();
    wgrad::lavapipe_threads();
    // One-line errors and a non-zero exit, never a panic trace.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("wgrad: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info { brief } => info::run(brief),
        Command::Check { json } => check::run(json),
        Command::Bench {
            json,
            filter,
            no_cpu,
        } => bench::run(json, filter.as_deref(), !no_cpu),
        Command::Eval {
            op,
            inputs,
            out,
            axis,
            axes,
            upstream,
            device,
        } => eval::run(eval::EvalArgs {
            op,
            inputs,
            out,
            axis,
            axes,
            upstream,
            device,
        }),
        Command::Run {
            model,
            inputs,
            out,
            device,
            upstream,
            bench,
            dims,
            summary,
        } => run::run(run::RunArgs {
            model,
            inputs,
            out,
            device,
            upstream,
            bench,
            dims,
            summary,
        }),
    }
}
