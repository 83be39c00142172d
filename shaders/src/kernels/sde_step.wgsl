// One Euler–Maruyama step of the flow head's SDE sampler with CFG (spec §3.10), elementwise
// over x: [M, D]:
//   v   = v_u + (v_c − v_u)·cfg          (rows 0..M of v are conditional, M..2M unconditional;
//                                          with one set of rows v is used as it is)
//   s   = (v·t − x) / ((1−t)² + t(1−t)),  f = v + s·(1−t)
//   x' = x + f·dt + noise·sqrt(dt)·sqrt(2(1−t))
// (the last, deterministic step x + v·0.04 stays composed: one step of thirty).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> noise: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// [count, guided, bitcast(t), bitcast(dt), bitcast(cfg)]
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

@compute @workgroup_size({{ workgroup_size }}, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let count = info[0];
    let i = gid.x + gid.y * groups.x * {{ workgroup_size }}u;
    if (i >= count) {
        return;
    }
    let guided = info[1] != 0u;
    let t = bitcast<f32>(info[2]);
    let dt = bitcast<f32>(info[3]);
    let cfg = bitcast<f32>(info[4]);
    var vel = v[i];
    if (guided) {
        let vu = v[count + i];
        vel = vu + (vel - vu) * cfg;
    }
    let xi = x[i];
    let one_t = 1.0 - t;
    let variance = one_t * one_t - t * -1.0 * one_t;
    let score = (vel * t - xi) / variance;
    let drift = vel + score * one_t;
    let dw = noise[i] * sqrt(dt);
    out[i] = xi + drift * dt + dw * sqrt(2.0 * one_t);
}
