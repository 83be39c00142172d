//! `vgt bench reconstruct`: the full-size AE with random weights, encode and decode timed apart.

use anyhow::bail;
use vgt_model::ae::{InputNorm, VgtAe};
use vgt_model::bench::{peak_rss_mib, time};
use vgt_model::burn::tensor::{Distribution, Tensor};
use vgt_model::config::VgtConfig;

pub struct AeBench {
    pub config: String,
    pub size: usize,
    pub runs: usize,
    pub f16_weights: bool,
}

pub fn run(b: AeBench, backend: &str) -> anyhow::Result<()> {
    let config = match b.config.as_str() {
        "internvl3" => VgtConfig::internvl3_0_6b(),
        "qwen25vl" => VgtConfig::qwen25vl_2b(36),
        other => bail!("unknown --config `{other}`: expected internvl3 or qwen25vl"),
    };
    let stride = config.stride();
    if b.size == 0 || b.size % stride != 0 || b.size > 64 * stride {
        bail!("--size {} must be a positive multiple of {stride} up to {}", b.size, 64 * stride);
    }
    let dev = super::device(backend)?;
    let rss_before = peak_rss_mib();
    let mut ae = VgtAe::new(&config, &dev.device);
    if b.f16_weights {
        ae = vgt_model::nn::upcast_half(vgt_model::nn::half_storage(ae));
    }
    let (params, _, weight_bytes) = vgt_model::nn::count_params(&ae);
    let image = Tensor::<4>::random([1, 3, b.size, b.size], Distribution::Uniform(-1.0, 1.0), &dev.device);
    let latent = b.size / stride;
    let z = Tensor::<4>::random([1, config.latent.latent_channels, latent, latent], Distribution::Normal(0.0, 1.0), &dev.device);
    eprintln!("encode ({} on {}) ...", dev.kind.name(), dev.name);
    let encode = time(&|| vgt_model::bench::consume(ae.encode(image.clone(), InputNorm::Always)), b.runs);
    eprintln!("decode ...");
    let decode = time(&|| vgt_model::bench::consume(ae.decode(z.clone())), b.runs);
    let out = serde_json::json!({
        "benchmark": "reconstruct",
        "config": b.config,
        "weights": "random",
        "backend": dev.kind.name(),
        "device": dev.name,
        "size": b.size,
        "latent": [config.latent.latent_channels, latent, latent],
        "f16_weights": b.f16_weights,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "encode": encode,
        "decode": decode,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_model_mib": rss_before,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
