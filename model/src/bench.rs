//! Workloads for comparing backends on the shapes that dominate VGT. Timings are medians of
//! `runs` runs after one warm-up, each forced to completion by reading the result back.

pub mod head;

use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Distribution, Tensor};

/// One benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `[32, 1536] × [1536, 1536]`: a projection of one parallel-decoding step.
    Linear1536x32,
    /// The 1.6B SwiGLU MLP (1536 → 8960 → 1536) over 32 rows.
    Mlp1536x8960,
    /// 32 queries, 12 heads of 128, attending a 300-token KV cache.
    AttentionCache300,
    /// A 3×3 conv, 1024 → 1024 channels, on a 16×16 map (the decoder's first stage).
    Conv3x3c1024s16,
}

impl Workload {
    pub const ALL: [Workload; 4] =
        [Workload::Linear1536x32, Workload::Mlp1536x8960, Workload::AttentionCache300, Workload::Conv3x3c1024s16];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Linear1536x32 => "linear_1536_x32",
            Workload::Mlp1536x8960 => "swiglu_mlp_1536_8960_x32",
            Workload::AttentionCache300 => "attention_12x128_q32_kv300",
            Workload::Conv3x3c1024s16 => "conv3x3_1024ch_16x16",
        }
    }

    /// Floating-point operations of one run (multiply-adds count 2).
    pub fn flops(self) -> f64 {
        match self {
            Workload::Linear1536x32 => 2.0 * 32.0 * 1536.0 * 1536.0,
            Workload::Mlp1536x8960 => 3.0 * 2.0 * 32.0 * 1536.0 * 8960.0,
            Workload::AttentionCache300 => 2.0 * 2.0 * 12.0 * 32.0 * 300.0 * 128.0,
            Workload::Conv3x3c1024s16 => 2.0 * 1024.0 * 1024.0 * 9.0 * 256.0,
        }
    }

    /// Builds the inputs and returns a closure running the workload once to completion.
    pub fn prepare(self, device: &Device) -> Box<dyn Fn()> {
        let rand = |shape: Vec<usize>| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), device);
        match self {
            Workload::Linear1536x32 => {
                let lin = LinearConfig::new(1536, 1536).init(device);
                let x = rand(vec![32, 1536]);
                Box::new(move || consume(lin.forward(x.clone())))
            }
            Workload::Mlp1536x8960 => {
                let gate = LinearConfig::new(1536, 8960).with_bias(false).init(device);
                let up = LinearConfig::new(1536, 8960).with_bias(false).init(device);
                let down = LinearConfig::new(8960, 1536).with_bias(false).init(device);
                let x = rand(vec![32, 1536]);
                Box::new(move || {
                    let h = silu(gate.forward(x.clone())) * up.forward(x.clone());
                    consume(down.forward(h))
                })
            }
            Workload::AttentionCache300 => {
                let r4 = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), device);
                let (q, k, v) = (r4([1, 12, 32, 128]), r4([1, 12, 300, 128]), r4([1, 12, 300, 128]));
                Box::new(move || {
                    let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * (128f64).powf(-0.5);
                    consume(softmax(scores, 3).matmul(v.clone()))
                })
            }
            Workload::Conv3x3c1024s16 => {
                let conv = Conv2dConfig::new([1024, 1024], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                let x = Tensor::<4>::random([1, 1024, 16, 16], Distribution::Normal(0.0, 1.0), device);
                Box::new(move || consume(conv.forward(x.clone())))
            }
        }
    }
}

/// Reads a result back to the host, which waits for the device to finish it.
pub fn consume<const D: usize>(t: Tensor<D>) {
    let device = t.device();
    let values = t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let _ = device.sync();
    std::hint::black_box(values.first().copied());
}

/// Median and minimum wall time of `runs` runs, in milliseconds, after one warm-up run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

pub fn time(f: &dyn Fn(), runs: usize) -> Timing {
    f();
    let mut ms: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Timing { median_ms: ms[ms.len() / 2], min_ms: ms[0], runs: ms.len() }
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
