//! `vgt bench train`: one LoRA optimiser step (forward, backward, update) of the full-size
//! model with random weights, timed, with peak memory.

use anyhow::bail;
use vgt_model::ar::Vgt;
use vgt_model::bench::{consume, peak_rss_mib};
use vgt_model::burn::tensor::{Distribution, Tensor};
use vgt_model::nn::{count_params, half_storage, trainable_to_f32, upcast_half};
use vgt_model::rng::Seeded;
use vgt_model::train::lora::LoraSettings;
use vgt_model::train::optim::{AdamW, AdamWConfig, Grads};
use vgt_model::train::{StepNoise, TIME_SHIFT, TrainBatch};

pub struct TrainBench {
    pub config: String,
    pub size: usize,
    pub batch: usize,
    pub rank: usize,
    pub steps: usize,
    pub f16_base: bool,
}

pub fn run(b: TrainBench, backend: &str) -> anyhow::Result<()> {
    let Some(config) = super::bench_gen::released_config(&b.config) else {
        bail!("unknown --config `{}`: expected internvl3-0.6b, internvl3-1.6b, qwen25vl-2b or qwen25vl-2b-18l", b.config);
    };
    let stride = config.stride();
    if b.size < stride || b.size % stride != 0 || b.size / stride > config.amq_max_grid {
        bail!("--size {} must be a multiple of {stride} up to {} px", b.size, config.amq_max_grid * stride);
    }
    if b.batch == 0 || b.steps == 0 || b.rank == 0 {
        bail!("--batch, --steps and --lora-rank must be at least 1");
    }
    let dev = super::device(backend)?;
    let ad = dev.device.clone().autodiff();
    eprintln!("building the {} model ({} on {}) ...", b.config, dev.kind.name(), dev.name);
    let mut model = Vgt::for_generation(&config, &ad);
    if b.f16_base {
        model = half_storage(model);
    }
    let settings = LoraSettings { rank: b.rank, alpha: b.rank as f64, ..Default::default() };
    let mut net = trainable_to_f32(upcast_half(settings.attach(model)?));
    let (params, trainable, bytes) = count_params(&net);
    let l = (b.size / stride) * (b.size / stride);
    let c = config.flow_head.input_dim;
    // A 20-token caption per row, as in tuning.
    let ids = vec![(0..20).map(|i| 1000 + i as u32).collect::<Vec<_>>(); b.batch];
    let mask = vec![vec![1u8; 20]; b.batch];
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut steps = Vec::new();
    for k in 0..=b.steps {
        let z = Tensor::<4>::random([b.batch, c, b.size / stride, b.size / stride], Distribution::Normal(0.0, 1.0), &ad);
        let noise = StepNoise::draw(&mut Seeded::new(k as u64), b.batch, l, c);
        let batch = TrainBatch { ids: &ids, mask: &mask, img_start: &config.tokens.img_start, latents: z };
        let t0 = std::time::Instant::now();
        let loss = net.train_forward(&batch, &noise, TIME_SHIFT).flow.loss;
        let value: f32 = loss.clone().inner().into_scalar();
        let t1 = std::time::Instant::now();
        let grads = loss.backward();
        let g = Grads::collect(&net, &grads, 1.0);
        drop(grads);
        let (updated, norm) = opt.update(net, g, 1e-4);
        net = updated;
        consume(net.image_in_projector.weight.val().inner());
        let t2 = std::time::Instant::now();
        steps.push(serde_json::json!({
            "step": k,
            "loss": value,
            "grad_norm": norm,
            "forward_s": (t1 - t0).as_secs_f64(),
            "backward_update_s": (t2 - t1).as_secs_f64(),
            "total_s": (t2 - t0).as_secs_f64(),
        }));
        eprintln!("step {k}: {:.2} s", (t2 - t0).as_secs_f64());
    }
    // Step 0 includes the lazy initialisation of the random weights.
    let mut timed: Vec<f64> = steps[1..].iter().map(|s| s["total_s"].as_f64().unwrap_or(0.0)).collect();
    timed.sort_by(f64::total_cmp);
    let n = timed.len();
    let median = if n % 2 == 1 { timed[n / 2] } else { (timed[n / 2 - 1] + timed[n / 2]) / 2.0 };
    let out = serde_json::json!({
        "benchmark": "train",
        "config": b.config,
        "weights": "random",
        "backend": dev.kind.name(),
        "device": dev.name,
        "size": b.size,
        "batch": b.batch,
        "lora_rank": b.rank,
        "f16_base": b.f16_base,
        "parameters": params,
        "trainable_parameters": trainable,
        "weight_bytes": bytes,
        "sequence_tokens": 20 + 1 + 2 * l,
        "steps": steps,
        "median_step_s": median,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
