#!/usr/bin/env bash
# The test command: set up a GPU adapter if needed, then build and run every test.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-env.sh
ensure_adapter
# Release: the CPU reference loops and large-shape tests are slow unoptimised.
cargo test --release --all-targets
cargo test --release --doc
# The optional ndarray conversions (a feature, so not in the default build).
cargo test --release --features ndarray --test io ndarray
