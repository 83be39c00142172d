#!/usr/bin/env python3
"""Sums a cubecl kernel profile by op kind.

Run any `vgt` command on wgpu with
    CUBECL_DEBUG_LOG=/tmp/prof.log CUBECL_DEBUG_OPTION=profile vgt --backend wgpu ...
then `python3 scripts/kernel_profile.py /tmp/prof.log` prints one row per op kind: launches,
total milliseconds and share (random-weight initialisation, `PrngKernel`, is listed apart).
Profiling waits for every kernel, so totals are larger than an unprofiled run's; the shares
are what this is for.
"""
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
KINDS = [
    ("random init (excluded)", ("Prng",)),
    ("ours: WGSL (vgt-shaders)", ("SourceKernel",)),
    ("matmul", ("Matmul", "FusedMatmul")),
    ("convolution", ("Conv", "Im2col", "conv")),
    ("attention", ("Attention", "Flash")),
    ("reduction (norms, softmax, sums)", ("Reduce",)),
    ("fused elementwise", ("ElemwiseFuse", "Fuse")),
    ("elementwise", ("Binop", "Unary", "Scalar", "Cast", "Clamp", "Mask", "Select")),
    ("copy, slice, gather, cat, fill", ("Copy", "Slice", "Gather", "Cat", "Contiguous", "Index", "Scatter", "Repeat", "Full")),
]


def kind(name):
    for label, keys in KINDS:
        if any(k in name for k in keys):
            return label
    return "other"


def main(path):
    line = re.compile(r"^\|\s*([0-9.]+)\s*(ns|µs|us|ms|s)\s*\|\s*([^|\s]+)")
    total = defaultdict(float)
    count = defaultdict(int)
    with open(path, encoding="utf-8", errors="replace") as f:
        for text in f:
            m = line.match(text)
            if m:
                k = kind(m.group(3))
                total[k] += float(m.group(1)) * UNITS[m.group(2)]
                count[k] += 1
    timed = sum(v for k, v in total.items() if k != KINDS[0][0])
    print(f"| op kind | launches | ms | share |\n|---|---|---|---|")
    for k, v in sorted(total.items(), key=lambda kv: -kv[1]):
        share = "" if k == KINDS[0][0] else f"{100 * v / timed:.1f} %"
        print(f"| {k} | {count[k]} | {v:.1f} | {share} |")


if __name__ == "__main__":
    main(sys.argv[1])
