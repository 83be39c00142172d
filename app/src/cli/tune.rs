//! `vgt tune`: LoRA tuning on a folder of images with captions.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use vgt_model::train::lora::DEFAULT_TARGETS;
use vgt_model::train::run::{TuneConfig, TuneEvent, TuneJob, TuneOutcome, tune};
use vgt_model::weights::source;

#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// Folder of images (.png/.jpg/.webp) with same-name .txt captions or a captions.jsonl.
    #[arg(long)]
    pub data: PathBuf,
    /// The base model folder (the embedded shapes model when omitted).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Run folder: checkpoints, loss log, samples, and the finished adapter in `adapter/`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// LLM projections to adapt (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub targets: Vec<String>,
    /// Also put adapters on the flow head's Linear layers.
    #[arg(long)]
    pub lora_flow_head: bool,
    /// Train the flow head fully (besides the position queries and projectors, always trained).
    #[arg(long)]
    pub train_flow_head: bool,
    /// Images with captions of what the model should keep drawing as it does (for the shapes
    /// model: `vgt render-shapes --count 300 --seed 1`); each step pulls the tuned model's
    /// velocities on a batch of them towards the base model's.
    #[arg(long)]
    pub preserve: Option<PathBuf>,
    /// Weight of that preservation loss.
    #[arg(long, default_value_t = 4.0)]
    pub preserve_weight: f64,
    /// Train the token embeddings fully: teaches the model a word it has never seen (a new
    /// subject's name) instead of bending every layer around it.
    #[arg(long)]
    pub train_embeddings: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training size in pixels (the model's native size when omitted).
    #[arg(long)]
    pub size: Option<usize>,
    /// The word standing for the subject in captions made from the template.
    #[arg(long, default_value = "sks")]
    pub trigger: String,
    /// Caption for images without one; `{trigger}` is replaced.
    #[arg(long, default_value = vgt_model::train::data::DEFAULT_TEMPLATE)]
    pub caption_template: String,
    /// Probability of training on the CFG text instead of the caption.
    #[arg(long, default_value_t = 0.1)]
    pub caption_dropout: f64,
    /// Write a sample image every N steps (0: never).
    #[arg(long, default_value_t = 100)]
    pub sample_every: usize,
    /// Prompt of the sample images (the first caption when omitted).
    #[arg(long)]
    pub sample_prompt: Option<String>,
    /// Sampler steps of the sample images.
    #[arg(long, default_value_t = 30)]
    pub sample_steps: usize,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Store the frozen base model's matrices in f16 (half the memory; computed in f32).
    #[arg(long)]
    pub f16_base: bool,
    /// Keep an exponential moving average with this momentum (`ema += m·(θ − ema)`); the
    /// adapter is then the average (the raw one goes to `adapter-raw/`).
    #[arg(long)]
    pub ema: Option<f64>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Data-parallel training on CUDA devices 0..N (with `--backend cuda`; `--grad-accum` must be
    /// a multiple of N): each device computes its share of every step's micro-batches and the
    /// gradients are averaged by burn's collective all-reduce (NCCL).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
}

pub fn run(a: TuneArgs, backend: &str) -> anyhow::Result<()> {
    let model = vgt_app::embedded::or_default(a.model.clone())?;
    let loaded = source::open(&model).with_context(|| format!("loading the model in {}", model.display()))?;
    let native = loaded.config.native_size();
    let size = a.size.unwrap_or(native);
    let mut cfg = TuneConfig::new(size);
    cfg.lora.rank = a.rank;
    cfg.lora.alpha = a.alpha;
    cfg.lora.targets = a.targets.clone();
    cfg.lora.flow_head_lora = a.lora_flow_head;
    cfg.lora.train_flow_head = a.train_flow_head;
    cfg.lora.train_embeddings = a.train_embeddings;
    cfg.preserve_weight = a.preserve_weight;
    cfg.preserve = a.preserve.clone();
    cfg.steps = a.steps;
    cfg.lr = a.lr;
    cfg.warmup = a.warmup;
    cfg.batch = a.batch;
    cfg.grad_accum = a.grad_accum;
    cfg.seed = a.seed;
    cfg.trigger = a.trigger.clone();
    cfg.template = a.caption_template.clone();
    cfg.caption_dropout = a.caption_dropout;
    cfg.sample_every = a.sample_every;
    cfg.sample_prompt = a.sample_prompt.clone().unwrap_or_default();
    cfg.sample_options.num_steps = a.sample_steps;
    cfg.save_every = a.save_every;
    cfg.f16_base = a.f16_base;
    cfg.ema_momentum = a.ema;
    if a.sample_steps == 0 {
        bail!("--sample-steps must be at least 1");
    }
    let base = model.display().to_string();
    if a.devices == 0 {
        bail!("--devices must be at least 1");
    }
    if a.devices > 1 {
        if backend != "cuda" {
            bail!("--devices {} needs --backend cuda: only CUDA has the collective operations data-parallel training uses", a.devices);
        }
        let devices = vgt_model::device::cuda_devices(a.devices).with_context(|| format!("starting {} CUDA devices", a.devices))?;
        let peers: Vec<_> = devices[1..].iter().map(|d| d.device.clone()).collect();
        let job = TuneJob { model: &loaded, base_name: &base, data: &a.data, out: &a.out, config: &cfg, resume: a.resume, peers: &peers };
        return execute_on(&job, devices[0].clone());
    }
    execute(&TuneJob { model: &loaded, base_name: &base, data: &a.data, out: &a.out, config: &cfg, resume: a.resume, peers: &[] }, backend)
}

/// Runs a tuning or training job with progress, Ctrl-C (saves a checkpoint) and a clear ending.
fn execute(job: &TuneJob<'_>, backend: &str) -> anyhow::Result<()> {
    execute_on(job, super::device(backend)?)
}

/// [`execute`] on a device already started.
fn execute_on(job: &TuneJob<'_>, dev: vgt_model::device::ComputeDevice) -> anyhow::Result<()> {
    let cfg = job.config;
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        log::warn!("Ctrl-C will not stop tuning cleanly: {e}");
    }
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len}, {elapsed} elapsed, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut on_event = |e: TuneEvent| match e {
        TuneEvent::Message(m) => bar.suspend(|| eprintln!("{m}")),
        TuneEvent::Latents { done, total } => bar.set_message(format!("(encoding images {done}/{total})")),
        TuneEvent::Step { step, loss, lr, .. } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e}"));
        }
        TuneEvent::Sample { path, .. } => bar.suspend(|| eprintln!("sample: {}", path.display())),
        TuneEvent::Saved { step, path } => bar.suspend(|| eprintln!("checkpoint at step {step}: {}", path.display())),
    };
    let outcome = tune(job, &dev.device, &mut on_event, &|| cancel.load(Ordering::SeqCst))?;
    bar.finish_and_clear();
    match outcome {
        TuneOutcome::Finished { adapter } => {
            println!("{}", adapter.display());
            Ok(())
        }
        TuneOutcome::Cancelled { step, checkpoint } => {
            bail!("cancelled at step {step}; the checkpoint in {} continues with --resume", checkpoint.display())
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Folder of images with captions (as for `vgt tune`).
    #[arg(long)]
    pub data: PathBuf,
    /// The model to start from (the embedded shapes model when omitted).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Run folder: checkpoints, loss log, samples, and the trained model in `model/`.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser settings of the reference configs (spec §4.1.4).
    #[arg(long, default_value = "sft", value_parser = ["sft", "pretrain"])]
    pub preset: String,
    /// Optimiser steps (the preset's schedule length when omitted: 5000 or 100000).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate (the preset's when omitted).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps (the preset's when omitted).
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub caption_dropout: f64,
    #[arg(long, default_value_t = 1000)]
    pub sample_every: usize,
    #[arg(long)]
    pub sample_prompt: Option<String>,
    #[arg(long, default_value_t = 2000)]
    pub save_every: usize,
    /// Keep an exponential moving average with this momentum (the reference uses 0.0002).
    #[arg(long)]
    pub ema: Option<f64>,
    #[arg(long)]
    pub resume: bool,
}

pub fn run_full(a: TrainArgs, backend: &str) -> anyhow::Result<()> {
    let model = vgt_app::embedded::or_default(a.model.clone())?;
    let loaded = source::open(&model).with_context(|| format!("loading the model in {}", model.display()))?;
    let size = a.size.unwrap_or(loaded.config.native_size());
    let mut cfg = TuneConfig::full_training(size, &a.preset).context("unknown --preset")?;
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    if let Some(w) = a.warmup {
        cfg.warmup = w;
    }
    cfg.batch = a.batch;
    cfg.grad_accum = a.grad_accum;
    cfg.seed = a.seed;
    cfg.caption_dropout = a.caption_dropout;
    cfg.sample_every = a.sample_every;
    cfg.sample_prompt = a.sample_prompt.clone().unwrap_or_default();
    cfg.save_every = a.save_every;
    cfg.ema_momentum = a.ema;
    let base = model.display().to_string();
    execute(&TuneJob { model: &loaded, base_name: &base, data: &a.data, out: &a.out, config: &cfg, resume: a.resume, peers: &[] }, backend)
}
