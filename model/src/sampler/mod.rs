//! The Euler–Maruyama SDE sampler of the flow head with CFG (spec §3.10).

use burn::tensor::{Tensor, TensorData};

use crate::flow_head::FlowNet;
use crate::rng::RandomSource;

/// The last, deterministic step size.
pub const LAST_STEP: f32 = 0.04;

/// `torch.linspace(0, 1 − 0.04, n)` exactly as the reference's CPU kernel computes it: f32 step,
/// the upper half as `end − step·k` with one rounding (fused multiply-add).
pub fn time_grid(n: usize) -> Vec<f32> {
    // The reference passes the Python float 1 − 0.04 = 0.96, taken as f32.
    let end = (1.0f64 - 0.04f64) as f32;
    if n == 1 {
        return vec![0.0];
    }
    let step = end / (n - 1) as f32;
    (0..n)
        .map(|i| if i < n / 2 { step * i as f32 } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// Options of one sampling call.
#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub cfg: f64,
    pub num_steps: usize,
    /// Round t to bf16 before the network, as the bf16 reference does (off for f32 parity).
    pub t_bf16: bool,
}

/// What one sampling call produced, with every intermediate for inspection.
pub struct SampleTrace {
    pub x: Tensor<2>,
    pub velocities: Vec<Tensor<2>>,
    pub xs: Vec<Tensor<2>>,
}

fn round_bf16(t: f32) -> f32 {
    half::bf16::from_f32(t).to_f32()
}

/// Samples `M` latents from the conditions `c` (`[m·M, cond]`, the conditional rows first when
/// `cfg > 1`), drawing the initial noise and every step's Wiener increment from `rng`.
///
/// # Shapes
/// - c: `[m·M, cond]` → x: `[M, input]`
pub fn sample(net: &FlowNet, c: Tensor<2>, opts: SampleOptions, rng: &mut dyn RandomSource, trace: bool) -> SampleTrace {
    let trace = sample_until(net, c, opts, rng, trace, &mut || true);
    trace.unwrap_or_else(|| unreachable!("a sampler that is never stopped finishes"))
}

/// [`sample`], asking `keep_going` before every step: `None` as soon as it says no (a large
/// batch's group can take seconds, and a user's cancel should not wait for all of it).
pub fn sample_until(
    net: &FlowNet,
    c: Tensor<2>,
    opts: SampleOptions,
    rng: &mut dyn RandomSource,
    trace: bool,
    keep_going: &mut dyn FnMut() -> bool,
) -> Option<SampleTrace> {
    let device = c.device();
    let [rows, _] = c.dims();
    let m = if opts.cfg > 1.0 { 2 } else { 1 };
    let big_m = rows / m;
    let dim = net.input_proj.weight.val().dims()[0];
    let draw = |rng: &mut dyn RandomSource| {
        Tensor::<2>::from_data(TensorData::new(rng.normal(big_m, dim), [big_m, dim]), &device)
    };
    let mut x = draw(rng);
    let grid = time_grid(opts.num_steps);
    let cfg = opts.cfg as f32;
    let y_for = |t: f32| {
        let t = if opts.t_bf16 { round_bf16(t) } else { t };
        net.condition(Tensor::<1>::from_data(TensorData::new(vec![t; rows], [rows]), &device), c.clone())
    };
    // The raw velocities of both row sets (conditional first).
    let velocity = |x: &Tensor<2>, t: f32, out: &mut Vec<Tensor<2>>| {
        let xin = if m == 2 { Tensor::cat(vec![x.clone(), x.clone()], 0) } else { x.clone() };
        let v = net.forward_with_condition(xin, y_for(t));
        if trace {
            out.push(v.clone());
        }
        v
    };
    let guide = |v: Tensor<2>| {
        if m == 2 {
            let vc = v.clone().narrow(0, 0, big_m);
            let vu = v.narrow(0, big_m, big_m);
            vu.clone() + (vc - vu) * cfg
        } else {
            v
        }
    };
    // One fused kernel for CFG + score + drift + noise on wgpu (see `vgt_shaders::sde_step`).
    let fused = net.fusable(&[&c]);
    let mut velocities = Vec::new();
    let mut xs = Vec::new();
    for k in 0..grid.len().saturating_sub(1) {
        if !keep_going() {
            return None;
        }
        let (t, dt) = (grid[k], grid[k + 1] - grid[k]);
        let v = velocity(&x, t, &mut velocities);
        if fused {
            let step = vgt_shaders::SdeStep { t, dt, cfg };
            x = vgt_shaders::sde_step(x, v, draw(rng), step);
        } else {
            let v = guide(v);
            let one_t = 1.0 - t;
            let var = one_t * one_t - t * -1.0 * one_t;
            let s = (v.clone() * t - x.clone()) / var;
            let f = v + s * one_t;
            let dw = draw(rng) * dt.sqrt();
            x = x + f * dt + dw * (2.0 * one_t).sqrt();
        }
        if trace {
            xs.push(x.clone());
        }
    }
    let t_last = *grid.last().unwrap_or(&0.0);
    let v = guide(velocity(&x, t_last, &mut velocities));
    x = x + v * LAST_STEP;
    if trace {
        xs.push(x.clone());
    }
    Some(SampleTrace { x, velocities, xs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_grid_ends_and_symmetric_rule() {
        let g = time_grid(3);
        assert_eq!(g, vec![0.0, 0.48, 0.96]);
        let g = time_grid(30);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[29], 0.96);
        assert_eq!(g[1], 0.96f32 / 29.0);
    }
}
