//! `vgt bench flow-head`: the flow head's sampling stage with our fused WGSL kernels and with
//! composed tensor ops, in one process, plus each op kind of one sampler step timed alone at
//! the same shapes (the per-op profile behind issue 8).

use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Tensor};

use super::{Timing, consume, time};
use crate::config::FlowHeadConfig;
use crate::flow_head::{FlowHead, LN_EPS};
use crate::rng::Seeded;
use crate::sampler::{SampleOptions, sample};

/// What to time.
#[derive(Debug, Clone)]
pub struct HeadBench {
    pub head: FlowHeadConfig,
    /// Tokens per sampler call (a token group): the network sees twice as many rows with CFG.
    pub tokens: usize,
    pub steps: usize,
    pub cfg: f64,
    /// Timed sampler calls per path (after one warm-up each); 0 times the op kinds only.
    pub calls: usize,
}

/// One op kind, composed and (where a kernel exists) fused; times are for 10 calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTiming {
    pub op: &'static str,
    /// Calls of the op per sampler call (so `median_ms / 10 × count` is its share of the stage).
    pub per_sampler_call: usize,
    pub composed: Timing,
    pub fused: Option<Timing>,
    pub speedup: Option<f64>,
}

/// The report `vgt bench flow-head` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadReport {
    pub rows: usize,
    pub sampler_composed: Option<Timing>,
    pub sampler_fused: Option<Timing>,
    pub sampler_speedup: Option<f64>,
    pub ops: Vec<OpTiming>,
}

fn rand(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Runs `f` `reps` times then waits for the device: one timed unit.
fn repeat(reps: usize, f: impl Fn() -> Tensor<2> + 'static) -> impl Fn() {
    move || {
        let mut last = None;
        for _ in 0..reps {
            last = Some(f());
        }
        if let Some(t) = last {
            consume(t);
        }
    }
}

fn compare(op: &'static str, per_sampler_call: usize, composed: impl Fn() + 'static, fused: Option<Box<dyn Fn()>>) -> OpTiming {
    let composed = time(&composed, 3);
    let fused = fused.map(|f| time(&*f, 3));
    OpTiming { op, per_sampler_call, speedup: fused.map(|f| composed.median_ms / f.median_ms), composed, fused }
}

/// Times the sampling stage both ways and each op kind; the kernels must be usable on `device`.
pub fn run(b: &HeadBench, device: &Device) -> HeadReport {
    let head = FlowHead::new(&b.head, device);
    let net = std::sync::Arc::new(head.net);
    let rows = if b.cfg > 1.0 { 2 * b.tokens } else { b.tokens };
    let c = rand([rows, b.head.cond_dim], device);
    let opts = SampleOptions { cfg: b.cfg, num_steps: b.steps, t_bf16: false };
    let sampler = |fused: bool| {
        let (net, c) = (net.clone(), c.clone());
        move || {
            crate::kernels::set_enabled(fused);
            consume(sample(&net, c.clone(), opts, &mut Seeded::new(0), false).x);
            crate::kernels::set_enabled(true);
        }
    };
    let sampler_composed = (b.calls > 0).then(|| time(&sampler(false), b.calls));
    let sampler_fused = (b.calls > 0).then(|| time(&sampler(true), b.calls));

    let d = b.head.dim;
    let reps = 10;
    let block = &net.res_blocks[0];
    let (x, y) = (rand([rows, d], device), silu(rand([rows, d], device)));
    let modulation = rand([rows, 3 * d], device);
    let mut ops = Vec::new();
    let w = |l: &burn::nn::Linear| (l.weight.val(), l.bias.as_ref().map(|b| b.val()).expect("bias"));
    {
        let (ada, (wa, ba), y2, y3) = (block.adaLN_modulation.clone(), w(&block.adaLN_modulation), y.clone(), y.clone());
        let fused = repeat(reps, move || crate::kernels::linear(y3.clone(), wa.clone(), ba.clone(), false));
        ops.push(compare("adaln_modulation_linear", b.head.layers + 1, repeat(reps, move || ada.forward(y2.clone())), Some(Box::new(fused))));
    }
    {
        let (fc1, (w1, b1), x2, x3) = (block.mlp.fc1.clone(), w(&block.mlp.fc1), x.clone(), x.clone());
        let fused = repeat(reps, move || crate::kernels::linear(x3.clone(), w1.clone(), b1.clone(), true));
        ops.push(compare("fc1_silu", b.head.layers, repeat(reps, move || silu(fc1.forward(x2.clone()))), Some(Box::new(fused))));
    }
    {
        // A loaded checkpoint's weight: the transposed view of PyTorch's `[out, in]`.
        let (w1, b1) = w(&block.mlp.fc1);
        let wt = Tensor::<2>::from_data(w1.clone().transpose().into_data(), device).transpose();
        let (x2, x3, wt2, b2) = (x.clone(), x.clone(), wt.clone(), b1.clone());
        let composed = move || silu(x2.clone().matmul(wt.clone()) + b1.clone().unsqueeze::<2>());
        let fused = repeat(reps, move || crate::kernels::linear(x3.clone(), wt2.clone(), b2.clone(), true));
        ops.push(compare("fc1_silu_checkpoint_layout", b.head.layers, repeat(reps, composed), Some(Box::new(fused))));
    }
    {
        let (fc2, (w2, b2)) = (block.mlp.fc2.clone(), w(&block.mlp.fc2));
        let (h, r, m) = (x.clone(), rand([rows, d], device), modulation.clone());
        let (h2, r2, m2) = (h.clone(), r.clone(), m.clone());
        let composed = move || r.clone() + m.clone().narrow(1, 2 * d, d) * fc2.forward(h.clone());
        let fused = repeat(reps, move || crate::kernels::linear_gated(h2.clone(), w2.clone(), b2.clone(), m2.clone(), 2 * d, r2.clone()));
        ops.push(compare("fc2_gate_residual", b.head.layers, repeat(reps, composed), Some(Box::new(fused))));
    }
    {
        let ln = block.in_ln.clone();
        let (gamma, beta) = (ln.gamma.val(), ln.beta.as_ref().map(|p| p.val()).expect("beta"));
        let (x2, m2, x3, m3) = (x.clone(), modulation.clone(), x.clone(), modulation.clone());
        let composed = move || ln.forward(x2.clone()) * (m2.clone().narrow(1, d, d) + 1.0) + m2.clone().narrow(1, 0, d);
        let spec = crate::kernels::Modulation { eps: LN_EPS as f32, shift: 0, scale: d };
        let fused = move || crate::kernels::ln_modulate(x3.clone(), m3.clone(), Some((gamma.clone(), beta.clone())), spec);
        ops.push(compare("layernorm_modulate", b.head.layers + 1, repeat(reps, composed), Some(Box::new(repeat(reps, fused)))));
    }
    {
        let m = b.tokens;
        let (xs, v, noise) = (rand([m, b.head.input_dim], device), rand([rows, b.head.input_dim], device), rand([m, b.head.input_dim], device));
        let (xs2, v2, n2) = (xs.clone(), v.clone(), noise.clone());
        let (t, dt, cfg) = (0.33f32, 0.033f32, b.cfg as f32);
        let composed = move || {
            let v = if rows == 2 * m { v.clone().narrow(0, m, m) + (v.clone().narrow(0, 0, m) - v.clone().narrow(0, m, m)) * cfg } else { v.clone() };
            let one_t = 1.0 - t;
            let s = (v.clone() * t - xs.clone()) / (one_t * one_t + t * one_t);
            xs.clone() + (v + s * one_t) * dt + noise.clone() * dt.sqrt() * (2.0 * one_t).sqrt()
        };
        let fused = move || crate::kernels::sde_step(xs2.clone(), v2.clone(), n2.clone(), crate::kernels::SdeStep { t, dt, cfg });
        ops.push(compare("sde_update", b.steps.saturating_sub(1), repeat(reps, composed), Some(Box::new(repeat(reps, fused)))));
    }
    HeadReport {
        rows,
        sampler_speedup: sampler_composed.zip(sampler_fused).map(|(c, f)| c.median_ms / f.median_ms),
        sampler_composed,
        sampler_fused,
        ops,
    }
}
