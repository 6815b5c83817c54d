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

# The same kernels through wgpu's GL backend (llvmpipe): naga's GLSL writer and the
# workgroup-tiled and register-blocked kernels that real GPUs run (GL has no subgroups, so
# the subgroup matmul and f16 rows are not there). The test files below pick their adapter
# through WGPU_BACKEND, so each runs unchanged on both backends. The past_the_binding_limit
# tests (the same kernels on operands of ~1 GB) run on Vulkan only. One test thread: wgpu's
# GL backend panics when a thread waits more than 6 s for the GL context while another holds
# it through a long submission (seen with a K = 1,000,000 product on a loaded machine).
if ensure_gl_adapter; then
    gl_start=$(date +%s)
    WGPU_BACKEND=gl cargo run --quiet --release --bin wgrad -- check
    WGPU_BACKEND=gl cargo test --release \
        --test matmul --test matmul_long_k --test epilogue --test recorded_plan \
        --test fusion --test fused_optim --test elementwise --test reduce --test softmax \
        --test layout --test loss --test loop_budget --test conv --test conv_phase --test big_tensors \
        --test big_compiled --test winograd --test conv_patches \
        -- --skip past_the_binding_limit --test-threads=1
    echo "wgrad: GL pass took $(($(date +%s) - gl_start)) s"
fi
