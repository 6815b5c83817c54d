#!/usr/bin/env bash
# Sourced by the test and example scripts: makes sure a GPU adapter exists.
#
# Builds `wgrad info` and asks it for an adapter. When there is none (a fresh
# Debian machine or CI without a GPU) it installs Mesa's lavapipe, a software
# Vulkan adapter, and asks again. With CI=true a missing adapter is fatal.

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/wgrad-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# A native compute adapter (Vulkan, Metal or DX12). wgpu's GL backend may also find
# Mesa's llvmpipe, but it is a poor compute target, so it does not count here.
have_adapter() {
    local name
    name=$(WGPU_BACKEND="${WGPU_BACKEND:-vulkan,metal,dx12}" \
        cargo run --quiet --release --bin wgrad -- info --brief) || return 1
    echo "wgrad: GPU adapter: $name"
}

install_lavapipe() {
    echo "wgrad: no GPU adapter found; installing Mesa lavapipe (software Vulkan)" >&2
    local sudo=""
    if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
}

# wgpu's GL backend on Mesa's llvmpipe: a second shader compiler (naga's GLSL writer) and the
# kernel variants real GPUs use (no subgroups there). Installed with EGL when missing; with
# CI=true a missing GL adapter is fatal, as for Vulkan.
have_gl_adapter() {
    local name
    name=$(WGPU_BACKEND=gl cargo run --quiet --release --bin wgrad -- info --brief) || return 1
    echo "wgrad: GL adapter: $name"
}

ensure_gl_adapter() {
    if have_gl_adapter; then return 0; fi
    if command -v apt-get >/dev/null; then
        local sudo=""
        if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq libegl1 libgl1-mesa-dri >/dev/null
    fi
    if have_gl_adapter; then return 0; fi
    if [ "${CI:-}" = "true" ]; then
        echo "wgrad: CI=true and no GL adapter after installing Mesa's EGL and llvmpipe" >&2
        exit 1
    fi
    echo "wgrad: no GL adapter; the GL pass will be skipped" >&2
    return 1
}

ensure_adapter() {
    if have_adapter; then return 0; fi
    if command -v apt-get >/dev/null; then install_lavapipe; fi
    if have_adapter; then return 0; fi
    if [ "${CI:-}" = "true" ]; then
        echo "wgrad: CI=true and still no GPU adapter after installing lavapipe" >&2
        exit 1
    fi
    echo "wgrad: no GPU adapter; GPU checks will be skipped" >&2
}
