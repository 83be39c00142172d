#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one command that prints one JSON object (issue 25):
#   1. the parity suite (every fixture case) on CUDA and on wgpu (Vulkan);
#   2. `vgt bench generate` at full size (InternVL3-1.6B, random weights, 448 px, acc-ratio 16)
#      on CUDA and on wgpu, the wgpu run also with our WGSL kernels off (`--compare-kernels`);
#   3. `vgt bench flow-head` on wgpu: the fused kernels against composed ops.
# Each step has its own time limit so that the whole stays under 8 minutes; a step that fails or
# times out is reported as such in the JSON, the others still run.
#
# A GPU machine of this project cannot download crates, and only the repository travels to it
# (64 MiB at most), so everything it needs is staged here first:
#   bash scripts/gpu-check.sh --build
# writes gpu-bin/ (ignored by git): vgt.xz and parity.xz (stripped release binaries, --features
# cuda) and fixtures/ (every fixture folder but `geometry`, 23 MB, to stay under the limit). Then
# on the GPU machine, from the repository root, with gpu-bin carried (and the Vulkan loader
# packages the device notes describe, for the wgpu steps):
#   bash scripts/gpu-check.sh [--part parity|bench] [OUT.json]
# Measured here: vgt.xz 41 MB, parity.xz 33 MB, fixtures 15 MB, together over the 64 MiB that may
# travel in one call, so on that machine run it in two parts: `--part parity` carrying
# gpu-bin/parity.xz and gpu-bin/fixtures (48 MB), then `--part bench` carrying gpu-bin/vgt.xz.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=gpu-bin

if [ "${1:-}" = "--build" ]; then
    set -e
    export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
    bash scripts/cuda-toolchain.sh
    cargo build --release -p vgt-app --features cuda --locked
    parity=$(cargo test --release --workspace --features vgt-app/cuda --locked --no-run --message-format=json 2>/dev/null \
        | sed -n 's/.*"executable":"\([^"]*parity-[^"]*\)".*/\1/p' | tail -1)
    [ -n "$parity" ] || { echo "gpu-check: the parity test binary was not built" >&2; exit 1; }
    mkdir -p "$BIN/fixtures"
    for f in ../shared/fixtures/*; do
        [ "$(basename "$f")" = geometry ] || cp -r "$f" "$BIN/fixtures/"
    done
    for pair in "target/release/vgt:vgt" "$parity:parity"; do
        src=${pair%%:*}; name=${pair##*:}
        strip -o "$BIN/$name" "$src"
        xz -T0 -6 -f "$BIN/$name"
    done
    du -sh "$BIN"
    exit 0
fi

part=all
if [ "${1:-}" = "--part" ]; then
    part=$2
    shift 2
fi
case $part in
    all) need="vgt parity" ;;
    parity) need="parity" ;;
    bench) need="vgt" ;;
    *) echo "gpu-check: --part must be parity or bench" >&2; exit 2 ;;
esac
out=${1:-/dev/stdout}
for name in $need; do
    if [ ! -x "$BIN/$name" ]; then
        [ -f "$BIN/$name.xz" ] || { echo "gpu-check: $BIN/$name.xz is missing; run scripts/gpu-check.sh --build first" >&2; exit 2; }
        xz -dkf "$BIN/$name.xz" && chmod +x "$BIN/$name"
    fi
done
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
if [ -d "$BIN/fixtures" ]; then
    export VGT_FIXTURES="${VGT_FIXTURES:-$(pwd)/$BIN/fixtures}"
else
    export VGT_FIXTURES="${VGT_FIXTURES:-$(pwd)/../shared/fixtures}"
fi
tmp=$(mktemp -d)
started=$(date +%s)

# step NAME LIMIT_S COMMAND...: runs it, keeps stdout in $tmp/NAME.out and a status line.
step() {
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    timeout "$limit" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
    echo "{\"step\":\"$name\",\"rc\":$rc,\"seconds\":$(( $(date +%s) - t0 ))}" >"$tmp/$name.status"
    echo "gpu-check: $name rc $rc in $(( $(date +%s) - t0 )) s" >&2
}

if [ "$part" != parity ]; then
    step devices 60 "$BIN/vgt" --backend cuda devices
fi
if [ "$part" != bench ]; then
    step parity_cuda 90 env VGT_TEST_BACKENDS=cuda "$BIN/parity"
    step parity_wgpu 120 env VGT_TEST_BACKENDS=wgpu VGT_REQUIRE_WGPU=1 "$BIN/parity"
fi
if [ "$part" != parity ]; then
    step generate_cuda 75 "$BIN/vgt" --backend cuda bench generate --config internvl3-1.6b --random-weights --json
    step generate_wgpu 120 "$BIN/vgt" --backend wgpu bench generate --config internvl3-1.6b --random-weights --compare-kernels --json
    step flow_head_wgpu 60 "$BIN/vgt" --backend wgpu bench flow-head --json
fi

# One JSON object: each step's status, its JSON output when it printed one, and the tail of
# its test summary or error otherwise.
python3 - "$tmp" "$out" "$started" <<'EOF'
import json, os, sys, time
tmp, out, started = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = {"gpu_check": 1, "total_s": int(time.time()) - started, "steps": {}}
for name in ["devices", "parity_cuda", "parity_wgpu", "generate_cuda", "generate_wgpu", "flow_head_wgpu"]:
    path = os.path.join(tmp, name)
    if not os.path.exists(path + ".status"):
        continue
    entry = json.load(open(path + ".status"))
    text = open(path + ".out").read()
    try:
        entry["result"] = json.loads(text)
    except ValueError:
        lines = [l for l in text.splitlines() if l.strip()]
        entry["summary"] = [l for l in lines if l.startswith("test result") or "FAILED" in l][-20:] or lines[-5:]
    err = open(path + ".err").read().strip().splitlines()
    if entry["rc"] != 0:
        entry["stderr_tail"] = err[-10:]
    result["steps"][name] = entry
with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
EOF
rm -rf "$tmp"
