// Skinny linear layer with a fused epilogue: out = epilogue(x · W + b), four columns at a time.
//
// x: [M, K] contiguous, b: [N] (a layer without bias binds W there and reads zeros), out: [M, N]
// contiguous; W either [K, N] contiguous (burn's
// [in, out] layout: four columns of one k per vec4) or the transposed view of a contiguous
// [N, K] (PyTorch's [out, in], as a loaded checkpoint has it: four k of one column per vec4);
// K and N multiples of 4.
// A workgroup computes WG consecutive groups of four output columns for TM consecutive rows;
// each invocation reads W four values per load and each x row four values per load, so a load
// feeds four to sixteen multiply-adds. W is read ceil(M / TM) times in all:
// made for the few rows of the flow head and of a decode step (2·tokens per group).
// No barriers and no workgroup memory (both are costly on CPU Vulkan drivers).
// Epilogues (filled in by the launcher): plain (y), silu (y·σ(y)), gated (res + gate ⊙ y, the
// AdaLN residual, the gate read from a row of the modulation tensor at column gate_off).

@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
// [M, K, N, gate_stride, gate_off] (gate_stride and gate_off in vec4 units)
@group(0) @binding(4) var<storage, read_write> info: array<u32>;
{{ extra_bindings }}

const WG: u32 = {{ workgroup_size }}u;
const TM: u32 = {{ rows_per_invocation }}u;

fn row_index(m0: u32, r: u32, M: u32, K4: u32, k4: u32) -> u32 {
    return min(m0 + r, M - 1u) * K4 + k4;
}

fn store(m: u32, M: u32, n4: u32, N4: u32, value: vec4<f32>) {
    if (m < M) {
        out[m * N4 + n4] = epilogue(value, m, n4, N4);
    }
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let M = info[0];
    let K4 = info[1] / 4u;
    let N4 = info[2] / 4u;
    let n4 = wid.x * WG + lane;
    let m0 = wid.y * TM;
    let col = min(n4, N4 - 1u);
    // One accumulator per row, written out by the launcher (straight-line code keeps them in
    // registers; an indexed array would live in memory on CPU drivers).
{{ acc_decls }}
    for (var k4 = 0u; k4 < K4; k4++) {
{{ w_loads }}
{{ acc_updates }}
    }
    if (n4 >= N4) {
        return;
    }
    let bias = {{ bias }};
{{ acc_writes }}
}

{{ epilogue }}
