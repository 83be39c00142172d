// Skinny linear layer with a fused epilogue: out = epilogue(x · W + b).
//
// x: [M, K] contiguous; W: element (k, n) at k·sk + n·sn (burn's [in, out] weight, contiguous or a
// transposed view of PyTorch's [out, in]); b: [N]; out: [M, N] contiguous.
// One invocation computes one output column n for TM consecutive rows, so W is read
// ceil(M / TM) times in all: made for the few rows of the flow head (2·tokens per group).
// Epilogues (filled in by the launcher): `plain` (y), `silu` (y·σ(y)), `gated` (res + gate ⊙ y, the AdaLN
// residual, gate read from a row of the modulation tensor at column offset gate_off).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// [M, K, N, sk, sn, gate_stride, gate_off]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;
{{ extra_bindings }}

const TM: u32 = {{ rows_per_invocation }}u;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let M = info[0];
    let K = info[1];
    let N = info[2];
    let sk = info[3];
    let sn = info[4];
    let n = gid.x;
    let m0 = gid.y * TM;
    if (n >= N || m0 >= M) {
        return;
    }
    // Rows past M repeat the last row (no out-of-bounds read) and are not written.
    var base: array<u32, TM>;
    for (var r = 0u; r < TM; r++) {
        base[r] = min(m0 + r, M - 1u) * K;
    }
    var acc: array<f32, TM>;
    var wi = n * sn;
    for (var k = 0u; k < K; k++) {
        let wv = w[wi];
        wi += sk;
        for (var r = 0u; r < TM; r++) {
            acc[r] = fma(x[base[r] + k], wv, acc[r]);
        }
    }
    let bias = b[n];
    for (var r = 0u; r < TM; r++) {
        let m = m0 + r;
        if (m < M) {
            let y = acc[r] + bias;
            out[m * N + n] = epilogue(y, m, n);
        }
    }
}

{{ epilogue }}
