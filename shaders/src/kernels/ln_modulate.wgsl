// LayerNorm over the last axis followed by the AdaLN modulation (spec §3.10):
//   out[m, j] = LN(x[m])[j] · (1 + mod[m, scale_off + j]) + mod[m, shift_off + j]
// with LN(x) = (x − mean) / sqrt(var + eps) (biased variance), times w[j] plus b[j] when the
// norm is affine (the `affine` function the launcher fills in). x, out: [M, D] contiguous; mod: [M, mod_stride] contiguous.
// One workgroup per row: a two-pass mean/variance reduction in workgroup memory.

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> modulation: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// [M, D, mod_stride, shift_off, scale_off, bitcast(eps)]
@group(0) @binding(3) var<storage, read_write> info: array<u32>;
{{ affine_bindings }}

const WG: u32 = {{ workgroup_size }}u;
var<workgroup> partial: array<f32, WG>;

fn reduce_sum(lane: u32, value: f32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] = partial[lane] + partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let M = info[0];
    let D = info[1];
    let ms = info[2];
    let shift_off = info[3];
    let scale_off = info[4];
    let eps = bitcast<f32>(info[5]);
    // No early return: every lane of the workgroup must reach the barriers. A workgroup past
    // the last row (dispatch rounding) recomputes the last row and writes nothing.
    let m = wid.x + wid.y * 65535u;
    let row = min(m, M - 1u) * D;
    var s = 0.0;
    for (var j = lane; j < D; j += WG) {
        s += x[row + j];
    }
    let mean = reduce_sum(lane, s) / f32(D);
    var q = 0.0;
    for (var j = lane; j < D; j += WG) {
        let d = x[row + j] - mean;
        q += d * d;
    }
    let rstd = 1.0 / sqrt(reduce_sum(lane, q) / f32(D) + eps);
    let mrow = min(m, M - 1u) * ms;
    if (m >= M) {
        return;
    }
    for (var j = lane; j < D; j += WG) {
        let normed = affine(j, (x[row + j] - mean) * rstd);
        out[row + j] = normed * (1.0 + modulation[mrow + scale_off + j]) + modulation[mrow + shift_off + j];
    }
}

{{ affine }}
