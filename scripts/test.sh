#!/usr/bin/env bash
# The project's test command (README): the whole suite, every test on the CPU backend (flex)
# and on wgpu (lavapipe where there is no GPU), then the `cuda` feature: built for real when the
# offline LLVM toolchain is in place (`scripts/cuda-toolchain.sh`, which `.ci/run` runs), else
# type-checked; the cuda binary must then say clearly when CUDA is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

# Few autotune candidates on lavapipe; cubecl keeps its cache under target/.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# The loader fuzzer's 20-second run starts from a seed taken from the commit, so each landing
# explores new cases; a failure names the case's own seed to replay.
if [ -z "${VGT_FUZZ_SEED:-}" ]; then
    commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo 1)
    export VGT_FUZZ_SEED=$(( 16#${commit} % 1000000000000 ))
fi
echo "fuzz seed: VGT_FUZZ_SEED=$VGT_FUZZ_SEED (replay one case: VGT_FUZZ_SEED=S VGT_FUZZ_SECONDS=0 cargo test --workspace -- fuzz_the_loaders)"

start=$(date +%s)
cargo test --workspace --locked
echo "timing: tests $(( $(date +%s) - start )) s"

start=$(date +%s)
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
marker="${XDG_DATA_HOME:-$home/.local/share}/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed"
if [ -f "$marker" ]; then
    cargo build -p vgt-app --features cuda --locked
    echo "timing: cuda build $(( $(date +%s) - start )) s"
    # Without an NVIDIA driver the cuda backend must be refused with a clear message, never a panic.
    if out=$(target/debug/vgt --backend cuda devices 2>&1); then
        echo "$out"
    else
        echo "$out"
        if echo "$out" | grep -q "panicked" || ! echo "$out" | grep -q "CUDA is unavailable"; then
            echo "error: vgt --backend cuda did not refuse clearly" >&2
            exit 1
        fi
    fi
else
    # burn-cuda's build script would download LLVM: without the toolchain, type-check only.
    echo "note: no offline LLVM for the cuda feature (run scripts/cuda-toolchain.sh as root); type-checking it"
    DOCS_RS=1 cargo check -p vgt-app --features cuda --locked
    echo "timing: cuda type-check $(( $(date +%s) - start )) s"
fi
