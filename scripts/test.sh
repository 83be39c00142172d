#!/usr/bin/env bash
# The project's test command (README): the whole suite, every test on the CPU backend (flex)
# and on wgpu (lavapipe where there is no GPU), then the type-check of the `cuda` feature.
set -euo pipefail
cd "$(dirname "$0")/.."

# Few autotune candidates on lavapipe; cubecl keeps its cache under target/.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

start=$(date +%s)
cargo test --workspace --locked
echo "timing: tests $(( $(date +%s) - start )) s"

# burn-cuda's build script downloads LLVM, so CUDA can only be type-checked here.
start=$(date +%s)
DOCS_RS=1 cargo check -p vgt-app --features cuda --locked
echo "timing: cuda type-check $(( $(date +%s) - start )) s"
