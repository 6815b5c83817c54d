#!/usr/bin/env bash
# The main job, on the GPU: the linear-algebra walkthrough, then a small CNN trained on
# the 8x8 handwritten digits (≈99% test accuracy), saved as digits.safetensors (the loss and
# accuracy curves in digits.png) and reloaded.
#   bash scripts/run-main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-env.sh
ensure_adapter
cargo run --release --example linear_algebra
cargo run --release --example digits -- --save digits.safetensors
cargo run --release --example digits -- --eval digits.safetensors
