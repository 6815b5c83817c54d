//! The `wgrad` command: `info` (adapters and the one chosen) and `bench`
//! (measured figures, JSON lines with `--json`).

mod bench;
mod check;
mod info;

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
        /// Only ops whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Skip the CPU-reference figures (they are slow for large shapes).
        #[arg(long)]
        no_cpu: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { brief } => info::run(brief),
        Command::Check { json } => check::run(json),
        Command::Bench {
            json,
            filter,
            no_cpu,
        } => bench::run(json, filter.as_deref(), !no_cpu),
    }
}
