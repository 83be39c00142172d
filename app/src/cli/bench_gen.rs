//! `vgt bench generate`: the full-size generator with random weights, time split by part.

use anyhow::bail;
use vgt_model::ar::Vgt;
use vgt_model::bench::peak_rss_mib;
use vgt_model::config::VgtConfig;
use vgt_model::generate::{GenerateOptions, Hooks, Profile, Rows, generate};
use vgt_model::rng::Seeded;
use vgt_model::scheduler::{CfgSchedule, Order};

pub struct GenBench {
    pub config: String,
    pub size: usize,
    pub acc_ratio: usize,
    pub steps: usize,
    pub cfg: f64,
    pub images: usize,
    pub f16_weights: bool,
    /// Run a second, warm generation and report it as the result.
    pub warm: bool,
    /// Also run with our fused kernels off (same seed) and report the ratios per stage.
    pub compare_kernels: bool,
}

/// The released generators' full-size configurations by `--config` name (`vgt bench generate`
/// and `vgt bench train`).
pub(super) fn released_config(name: &str) -> Option<VgtConfig> {
    Some(match name {
        "internvl3-0.6b" => VgtConfig::internvl3_0_6b(),
        "internvl3-1.6b" => VgtConfig::internvl3_1_6b(),
        // The released depth is unknown (spec §9.1): Qwen2.5-VL-3B's 36 layers, or 18.
        "qwen25vl-2b" => VgtConfig::qwen25vl_2b(36),
        "qwen25vl-2b-18l" => VgtConfig::qwen25vl_2b(18),
        _ => return None,
    })
}

fn config_named(name: &str) -> anyhow::Result<VgtConfig> {
    match (released_config(name), name) {
        (Some(c), _) => Ok(c),
        // The embedded model's networks with the Qwen vocabulary (the benchmark prompts use its ids).
        (None, "shapes") => Ok(vgt_model::shapes::recipe::config(151_674, vgt_model::config::TokenIds::default())),
        (None, other) => bail!("unknown --config `{other}`: expected internvl3-0.6b, internvl3-1.6b, qwen25vl-2b, qwen25vl-2b-18l or shapes (the embedded model's size)"),
    }
}

pub struct HeadArgs {
    pub config: String,
    pub tokens: usize,
    pub steps: usize,
    pub cfg: f64,
    pub calls: usize,
}

/// `vgt bench flow-head`.
pub fn head(a: HeadArgs, backend: &str) -> anyhow::Result<()> {
    let config = config_named(&a.config)?;
    let dev = super::device(backend)?;
    if !vgt_model::kernels::is_wgpu(&dev.device) || !vgt_model::kernels::enabled() {
        bail!("the fused kernels run on wgpu only, and must be on: use --backend wgpu without --no-custom-kernels");
    }
    if a.tokens == 0 || a.steps < 2 {
        bail!("--tokens must be at least 1 and --steps at least 2");
    }
    eprintln!("flow head {} × {} ({} on {}) ...", config.flow_head.layers, config.flow_head.dim, dev.kind.name(), dev.name);
    let bench = vgt_model::bench::head::HeadBench { head: config.flow_head.clone(), tokens: a.tokens, steps: a.steps, cfg: a.cfg, calls: a.calls };
    let report = vgt_model::bench::head::run(&bench, &dev.device);
    let out = serde_json::json!({
        "benchmark": "flow_head",
        "config": a.config,
        "weights": "random",
        "backend": dev.kind.name(),
        "device": dev.name,
        "tokens": a.tokens,
        "steps": a.steps,
        "cfg": a.cfg,
        "report": report,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn run(b: GenBench, backend: &str) -> anyhow::Result<()> {
    let config = config_named(&b.config)?;
    let stride = config.stride();
    if b.size < stride || b.size / stride > config.amq_max_grid {
        bail!("--size {} is outside {stride}..={} px", b.size, config.amq_max_grid * stride);
    }
    let dev = super::device(backend)?;
    let mut model = Vgt::for_generation(&config, &dev.device);
    if b.f16_weights {
        model = vgt_model::nn::upcast_half(vgt_model::nn::half_storage(model));
    }
    let (params, _, weight_bytes) = vgt_model::nn::count_params(&model);
    // A 20-token prompt and the 12-token unconditional prompt, right-padded, as real batches are.
    let cfg_on = b.cfg > 1.0;
    let mut ids = vec![(0..20).map(|i| 1000 + i as u32).collect::<Vec<_>>(); b.images];
    let mut mask = vec![vec![1u8; 20]; b.images];
    if cfg_on {
        for _ in 0..b.images {
            let mut row: Vec<u32> = (0..12).map(|i| 2000 + i as u32).collect();
            row.resize(20, config.tokens.pad);
            ids.push(row);
            mask.push((0..20).map(|i| u8::from(i < 12)).collect());
        }
    }
    let opts = GenerateOptions {
        cfg: b.cfg,
        num_steps: b.steps,
        height: b.size,
        width: b.size,
        acc_ratio: b.acc_ratio,
        order: Order::Random,
        cfg_schedule: CfgSchedule::Linear,
        t_bf16: false,
    };
    let rows = Rows { ids: &ids, mask: &mask, img_start: &config.tokens.img_start };
    eprintln!("generating ({} on {}), weights initialise on first use ...", dev.kind.name(), dev.name);
    let mut profile = Profile::default();
    let mut go = |_: usize, _: usize| true;
    let start = std::time::Instant::now();
    let hooks = Hooks { progress: &mut go, observe: None, profile: Some(&mut profile), on_group: None };
    let image = generate(&model, rows, &opts, &mut Seeded::new(0), hooks)?;
    vgt_model::bench::consume(image);
    let total = start.elapsed().as_secs_f64();
    // The first run includes the lazy initialisation of the random weights: run again.
    let (warm, warm_total) = if b.warm {
        let rows = Rows { ids: &ids, mask: &mask, img_start: &config.tokens.img_start };
        let mut warm = Profile::default();
        let start = std::time::Instant::now();
        let hooks = Hooks { progress: &mut go, observe: None, profile: Some(&mut warm), on_group: None };
        vgt_model::bench::consume(generate(&model, rows, &opts, &mut Seeded::new(1), hooks)?);
        (warm, start.elapsed().as_secs_f64())
    } else {
        (profile, total)
    };
    // The same warm run with composed ops only.
    let composed = if b.compare_kernels {
        vgt_model::kernels::set_enabled(false);
        // With --warm, one discarded run first: the composed path compiles its own shaders.
        let mut timed = || -> anyhow::Result<(Profile, f64)> {
            let mut last = None;
            for _ in 0..if b.warm { 2 } else { 1 } {
                let rows = Rows { ids: &ids, mask: &mask, img_start: &config.tokens.img_start };
                let mut p = Profile::default();
                let start = std::time::Instant::now();
                let hooks = Hooks { progress: &mut go, observe: None, profile: Some(&mut p), on_group: None };
                vgt_model::bench::consume(generate(&model, rows, &opts, &mut Seeded::new(if b.warm { 1 } else { 0 }), hooks)?);
                last = Some((p, start.elapsed().as_secs_f64()));
            }
            Ok(last.expect("at least one run"))
        };
        let result = timed();
        vgt_model::kernels::set_enabled(true);
        let (p, secs) = result?;
        let ratio = |off: f64, on: f64| off / on.max(1e-9);
        Some(serde_json::json!({
            "total_s": secs,
            "profile": p,
            "speedup_with_kernels": {
                "total": ratio(secs, warm_total),
                "llm": ratio(p.llm_s, warm.llm_s),
                "flow_head": ratio(p.head_s, warm.head_s),
                "decoder": ratio(p.decoder_s, warm.decoder_s),
            },
        }))
    } else {
        None
    };
    let out = serde_json::json!({
        "benchmark": "generate",
        "config": b.config,
        "weights": "random",
        "backend": dev.kind.name(),
        "device": dev.name,
        "size": b.size,
        "acc_ratio": b.acc_ratio,
        "steps": b.steps,
        "cfg": b.cfg,
        "images": b.images,
        "warm_run": b.warm,
        "f16_weights": b.f16_weights,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "first_run_s": total,
        "first_run_profile": profile,
        "total_s": warm_total,
        "per_image_s": warm_total / b.images as f64,
        "profile": warm,
        "custom_kernels": vgt_model::kernels::enabled() && vgt_model::kernels::is_wgpu(&dev.device),
        "without_custom_kernels": composed,
        "llm_tokens_per_s": warm.llm_tokens as f64 / warm.llm_s.max(1e-9),
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
