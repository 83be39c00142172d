#!/usr/bin/env bash
# Makes the `cuda` cargo feature build offline (issue 25). burn-cuda's cubecl-cuda depends on
# cubecl-llvm, whose build dependency tracel-llvm-bundler downloads a prebuilt LLVM unless
# `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists; then it only runs
# `bin/llvm-config` in that folder. Debian's LLVM 22 satisfies it (every LLVM-C symbol used is
# there) through a small wrapper that prints `-lz3` instead of the full path of libz3.so.
# Idempotent: installs the packages once, rewrites the wrapper and the marker every time.
# The CUDA toolkit is not needed to build: cudarc loads libcuda when a program first uses it.
set -euo pipefail

packages=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

real=/usr/lib/llvm-22/bin/llvm-config
if [ ! -x "$real" ]; then
    echo "cuda-toolchain: $real is missing after installing ${packages[*]}" >&2
    exit 1
fi

# The version the bundler of burn 0.22.1 asks for (tracel-llvm-bundler 23.1.0-4).
# Where the bundler looks (the `dirs` crate's data_local_dir: $XDG_DATA_HOME, else ~/.local/share).
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
dir="${XDG_DATA_HOME:-$home/.local/share}/tracel/tracel-llvm-23.1.0-4"
mkdir -p "$dir/bin"
cat > "$dir/bin/llvm-config.partial" <<EOF
#!/bin/sh
# Debian's LLVM 22 standing in for the tracel LLVM bundle (scripts/cuda-toolchain.sh).
"$real" "\$@" | sed -e 's#[^ ]*/libz3\.so[^ ]*#-lz3#g'
EOF
chmod +x "$dir/bin/llvm-config.partial"
mv "$dir/bin/llvm-config.partial" "$dir/bin/llvm-config"
touch "$dir/.tracel-llvm-installed"
echo "cuda-toolchain: LLVM $("$dir/bin/llvm-config" --version) for the cuda feature in $dir"
