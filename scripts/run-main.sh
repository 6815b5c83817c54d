#!/usr/bin/env bash
# The main job: run the linear-algebra walkthrough on the GPU.
#   bash scripts/run-main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-env.sh
ensure_adapter
cargo run --release --example linear_algebra
