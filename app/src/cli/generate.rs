//! `vgt generate`: text to image.

use std::path::PathBuf;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vgt_model::generate::{GenerateError, GenerateOptions};
use vgt_model::scheduler::{CfgSchedule, Order};
use vgt_model::text2image::{Request, TextToImage, TextToImageError};
use vgt_model::train::lora::{Adapter, parse_lora_arg};
use vgt_model::weights::apply::Storage;
use vgt_model::weights::source;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// A `vgt convert` folder, or a folder with `vlm/`, `vgt_ae.pth` and `ar.pth` (the embedded
    /// shapes model when omitted).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder (created when missing).
    #[arg(long, default_value = "vgt-outputs")]
    pub out: PathBuf,
    /// Negative prompt (replaces the unconditional prompt of CFG).
    #[arg(long)]
    pub negative: Option<String>,
    /// Random seed; a new one is drawn and printed when omitted.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Classifier-free guidance scale (1 turns CFG off).
    #[arg(long, default_value_t = GenerateOptions::default().cfg)]
    pub cfg: f64,
    /// Sampler steps per token.
    #[arg(long, default_value_t = GenerateOptions::default().num_steps)]
    pub steps: usize,
    /// Tokens generated per step (1 = fully autoregressive, 16 = the paper's parallel mode).
    #[arg(long, default_value_t = GenerateOptions::default().acc_ratio)]
    pub acc_ratio: usize,
    /// The order tokens are drawn in; the order the model was trained in by default (random
    /// for the released models)
    #[arg(long, value_parser = ["random", "sequential"])]
    pub order: Option<String>,
    #[arg(long, default_value = "linear", value_parser = ["linear", "constant"])]
    pub cfg_schedule: String,
    /// Image side in pixels (floored to the latent grid, then resized); 448 for the released
    /// models (16×16 tokens).
    #[arg(long)]
    pub size: Option<usize>,
    /// Images for the prompt.
    #[arg(long, default_value_t = 4)]
    pub images: usize,
    /// The batch index of the first image: with the seed and settings of an earlier run,
    /// `--image-index 2 --images 1` makes its third image again, alone (each PNG records its
    /// index as `Image`).
    #[arg(long, default_value_t = 0)]
    pub image_index: usize,
    /// A LoRA adapter (PEFT folder or its adapter_model.safetensors), optionally with a weight:
    /// `PATH[:WEIGHT]`. Repeat to combine adapters.
    #[arg(long = "lora", value_name = "PATH[:WEIGHT]")]
    pub loras: Vec<String>,
    /// Keep the weight matrices in f16 (half the memory; computed in f32).
    #[arg(long)]
    pub f16_weights: bool,
}

pub fn run(a: GenerateArgs, backend: &str) -> anyhow::Result<()> {
    if a.images == 0 || a.images > 64 {
        bail!("--images must be between 1 and 64, got {}", a.images);
    }
    if a.cfg < 1.0 || !a.cfg.is_finite() {
        bail!("--cfg must be at least 1, got {}", a.cfg);
    }
    // Every setting is checked before the model is read or a file is touched.
    if a.steps == 0 || a.steps > 1000 {
        bail!("--steps must be between 1 and 1000, got {}", a.steps);
    }
    if a.acc_ratio == 0 || a.acc_ratio > 64 * 64 {
        bail!("--acc-ratio must be between 1 and 4096 (tokens per step), got {}", a.acc_ratio);
    }
    if a.out.exists() && !a.out.is_dir() {
        bail!("--out {} exists and is not a folder", a.out.display());
    }
    let model_name = a.model.as_ref().map_or("embedded:shapes".to_string(), |p| p.display().to_string());
    let model_dir = vgt_app::embedded::or_default(a.model.clone())?;
    let mut loaded = source::open(&model_dir).with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let loras = a.loras.iter().map(|s| parse_lora_arg(s).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    for (path, weight) in &loras {
        Adapter::load(path)
            .and_then(|ad| ad.merge_into(&mut loaded.tensors, *weight))
            .with_context(|| format!("applying the LoRA adapter {}", path.display()))?;
    }
    let stride = loaded.config.stride();
    let size = a.size.unwrap_or(16.min(loaded.config.amq_max_grid) * stride);
    let max = loaded.config.amq_max_grid * stride;
    if size < stride || size > max + stride - 1 {
        let g = loaded.config.amq_max_grid;
        bail!("--size {size} is outside what the model's {g}×{g}-token grid allows ({stride} to {max} px)");
    }
    let dev = super::device(backend)?;
    let storage = if a.f16_weights { Storage::HalfMatrices } else { Storage::F32 };
    let t2i = TextToImage::with_storage(&loaded, &dev.device, storage).context("building the model")?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0) % 1_000_000_007
    });
    let options = GenerateOptions {
        cfg: a.cfg,
        num_steps: a.steps,
        height: size,
        width: size,
        acc_ratio: a.acc_ratio,
        order: match a.order.as_deref() {
            Some("sequential") => Order::Sequential,
            Some(_) => Order::Random,
            None => loaded.config.order,
        },
        cfg_schedule: if a.cfg_schedule == "constant" { CfgSchedule::Constant } else { CfgSchedule::Linear },
        t_bf16: false,
    };
    let req = Request { prompt: a.prompt.clone(), negative: a.negative.clone(), images: a.images, seed, options, first_image: a.image_index };
    for w in t2i.prompt_warnings(&req)? {
        eprintln!("warning: {w}");
    }
    // Ctrl-C stops after the current token group; nothing is written.
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        log::warn!("Ctrl-C will not stop generation cleanly: {e}");
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} token groups, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = t2i.generate(&req, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        !cancel.load(Ordering::SeqCst)
    });
    bar.finish_and_clear();
    let images = match result {
        Err(TextToImageError::Generate(GenerateError::Cancelled)) => bail!("cancelled; no image was written"),
        other => other.context("generating")?,
    };
    let info = vgt_app::meta::RunInfo {
        model: model_name,
        backend: dev.kind.name().to_string(),
        adapter: dev.name.clone(),
        loras: loras.clone(),
        f16_weights: a.f16_weights,
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for stale in vgt_model::fsutil::remove_stale_partials(&a.out, &[".png"]) {
        eprintln!("removed {}, left by an earlier run that was stopped while writing", stale.display());
    }
    for (i, img) in images.iter().enumerate() {
        let index = a.image_index + i;
        let (parameters, settings) = vgt_app::meta::png_text(&req, &info, index);
        // Never overwrite an earlier image: SEED-I.png, else SEED-I-N.png.
        let path = vgt_app::meta::free_name(&a.out, seed, index);
        img.save_png_with_text(&path, &[("parameters", &parameters), ("vgt", &settings)])?;
        println!("{}", path.display());
    }
    eprintln!("seed {seed}");
    Ok(())
}
