//! The LoRA tuning loop behind `vgt tune` and the app's Tune workspace.
//!
//! A run lives in one output folder:
//! - `run.json`: the settings (a `--resume` must match them);
//! - `latents.safetensors`: the AE latents of the images, keyed by image bytes and AE;
//! - `loss.jsonl`: one line per optimiser step (`step`, `loss`, `lr`, `grad_norm`);
//! - `checkpoint/`: the PEFT adapter plus `optimizer.safetensors` and `state.json`, replaced
//!   atomically every `save_every` steps, on Ctrl-C/cancel and at the end;
//! - `samples/step_NNNNNN.png`: images from a fixed seed every `sample_every` steps;
//! - `adapter/`: the finished PEFT adapter.
//!
//! Every random draw of step k (batch, caption dropout, order, t, noise) comes from a generator
//! seeded by `(seed, k)`, so a resumed run follows the uninterrupted run's loss curve exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::data::{self, Dataset};
use super::checkpoint::{Restore, Resumed, SeededInit, io_err, load_checkpoint, save_checkpoint, truncate_log};
use super::lora::{Adapter, LoraError, LoraSettings};
use super::optim::{AdamW, AdamWConfig, Grads, Schedule};
use super::{StepNoise, TIME_SHIFT, TrainBatch};
use crate::ae::VgtAe;
use crate::ar::Vgt;
use crate::generate::GenerateOptions;
use crate::image_io::Rgb8;
use crate::prompt::{PromptTokenizer, unconditional_text};
use crate::rng::{Seeded, torch_randperm};
use crate::scheduler::Order;
use crate::text2image::{Request, TextToImage};
use crate::weights::apply::{PathStack, Storage, apply_component, apply_with_storage};
use crate::weights::source::LoadedModel;
use crate::weights::{DType, RawTensor, WeightError};

/// Caption ids are cut to this many tokens (spec §4.1.5).
pub const MAX_TRAIN_TOKENS: usize = 256;

/// Everything a tuning run needs to know.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TuneConfig {
    pub lora: LoraSettings,
    pub steps: usize,
    pub lr: f64,
    /// Cosine floor (fraction of `lr`).
    pub min_lr_ratio: f64,
    pub warmup: usize,
    /// The warmup starts at `lr · warmup_factor` (mmengine LinearLR start factor).
    #[serde(default = "default_warmup_factor")]
    pub warmup_factor: f64,
    pub batch: usize,
    pub grad_accum: usize,
    pub weight_decay: f64,
    pub seed: u64,
    pub caption_dropout: f64,
    /// Training resolution in pixels (the model's native size by default).
    pub size: usize,
    pub trigger: String,
    pub template: String,
    pub save_every: usize,
    pub sample_every: usize,
    pub sample_prompt: String,
    pub sample_options: GenerateOptions,
    /// Store the frozen base matrices in f16 (half the memory; computed in f32).
    #[serde(default)]
    pub f16_base: bool,
    /// Full training of the trainable set of spec §4.1.4 instead of LoRA (`vgt train`); the
    /// result is a model folder in `OUT/model/`.
    #[serde(default)]
    pub full: bool,
    /// Keep an exponential moving average of the trained tensors with this momentum
    /// (`ema ← ema + m·(θ − ema)`, spec §4.1.4); the result is then the average.
    #[serde(default)]
    pub ema_momentum: Option<f64>,
    /// Weight of the preservation loss when the job has a preservation folder: on a batch of
    /// its images per step, the tuned model's velocities are pulled towards the frozen base
    /// model's (same noise), so that what the base already draws stays as it was.
    #[serde(default = "default_preserve_weight")]
    pub preserve_weight: f64,
    /// Captioned images of what the base model should keep drawing as it does: each step adds
    /// the preservation loss on a batch of them. In the settings so that a resume must use the
    /// same folder.
    #[serde(default)]
    pub preserve: Option<PathBuf>,
}

impl TuneConfig {
    /// Defaults of `vgt tune` for a model whose native size is `size`.
    pub fn new(size: usize) -> Self {
        Self {
            lora: LoraSettings::default(),
            steps: 500,
            lr: 1e-4,
            min_lr_ratio: 0.1,
            warmup: 10,
            warmup_factor: default_warmup_factor(),
            batch: 4,
            grad_accum: 1,
            weight_decay: 0.05,
            seed: 0,
            caption_dropout: 0.1,
            size,
            trigger: "sks".into(),
            template: data::DEFAULT_TEMPLATE.into(),
            save_every: 100,
            sample_every: 100,
            sample_prompt: String::new(),
            sample_options: GenerateOptions { height: size, width: size, acc_ratio: 4, num_steps: 30, ..Default::default() },
            f16_base: false,
            full: false,
            ema_momentum: None,
            preserve_weight: default_preserve_weight(),
            preserve: None,
        }
    }

    /// The settings that measurably teach a model a new subject (README: the star LoRA on the
    /// shapes model, 0.0 → 0.717 on star prompts, the others unchanged within 0.007): adapters on
    /// the flow head too, the word embeddings trained, lr 1e-3, batch 8, 1500 steps. The app's
    /// defaults.
    pub fn recommended(size: usize) -> Self {
        let mut c = Self::new(size);
        c.lora.flow_head_lora = true;
        c.lora.train_embeddings = true;
        c.lr = 1e-3;
        c.batch = 8;
        c.steps = 1500;
        c.sample_every = 250;
        c.save_every = 250;
        c
    }

    /// `vgt train` settings of spec §4.1.4 for a model of native size `size`: `pretrain` (lr
    /// 3e-4 → 1e-4, 1000 warmup steps) or `sft` (1e-4 → 5e-5, 50 warmup steps); AdamW betas
    /// (0.9, 0.95), weight decay 0.05, clip 1.0.
    pub fn full_training(size: usize, preset: &str) -> Option<Self> {
        let mut c = Self::new(size);
        c.full = true;
        c.warmup_factor = 1e-5;
        match preset {
            "pretrain" => {
                c.lr = 3e-4;
                c.min_lr_ratio = 1.0 / 3.0;
                c.warmup = 1000;
                c.steps = 100_000;
            }
            "sft" => {
                c.lr = 1e-4;
                c.min_lr_ratio = 0.5;
                c.warmup = 50;
                c.steps = 5000;
            }
            _ => return None,
        }
        c.batch = 32;
        c.save_every = 2000;
        c.sample_every = 1000;
        Some(c)
    }

    fn schedule(&self) -> Schedule {
        Schedule { lr: self.lr, min_lr: self.lr * self.min_lr_ratio, warmup: self.warmup.min(self.steps), warmup_factor: self.warmup_factor, total: self.steps }
    }

    fn adapter_of(&self, net: &Vgt) -> Adapter {
        if self.full { Adapter::from_full_training(net) } else { Adapter::from_model(net, &self.lora) }
    }
}

fn default_warmup_factor() -> f64 {
    1e-3
}

/// 4: on the shapes model it kept the other categories unchanged where 1 let them drop by 0.10.
fn default_preserve_weight() -> f64 {
    4.0
}

/// What a run reports while it works.
#[derive(Debug, Clone)]
pub enum TuneEvent {
    Message(String),
    Latents { done: usize, total: usize },
    Step { step: usize, total: usize, loss: f64, lr: f64, grad_norm: f64, seconds: f64 },
    Sample { step: usize, path: PathBuf, image: Rgb8 },
    Saved { step: usize, path: PathBuf },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TuneOutcome {
    Finished { adapter: PathBuf },
    Cancelled { step: usize, checkpoint: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn validate(cfg: &TuneConfig, model: &LoadedModel) -> Result<(), TuneError> {
    if cfg.full && cfg.f16_base {
        return Err(TuneError::Invalid("full training updates the base weights: f16 base storage is for LoRA only".into()));
    }
    if !cfg.full {
        cfg.lora.validate()?;
    }
    let stride = model.config.stride();
    let max = model.config.amq_max_grid * stride;
    if cfg.steps == 0 || cfg.batch == 0 || cfg.grad_accum == 0 {
        return Err(TuneError::Invalid("--steps, --batch and --grad-accum must be at least 1".into()));
    }
    if cfg.size == 0 || cfg.size % stride != 0 || cfg.size > max {
        return Err(TuneError::Invalid(format!("--size {} must be a multiple of {stride} between {stride} and {max}", cfg.size)));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(TuneError::Invalid(format!("--lr must be a positive number, got {}", cfg.lr)));
    }
    if cfg.ema_momentum.is_some_and(|m| !(m > 0.0 && m <= 1.0)) {
        return Err(TuneError::Invalid("the EMA momentum must be in (0, 1]".into()));
    }
    if !(0.0..=1.0).contains(&cfg.caption_dropout) {
        return Err(TuneError::Invalid("the caption dropout must be between 0 and 1".into()));
    }
    if !(cfg.preserve_weight.is_finite() && cfg.preserve_weight > 0.0) {
        return Err(TuneError::Invalid(format!("the preservation weight must be a positive number, got {}", cfg.preserve_weight)));
    }
    Ok(())
}

/// The per-step generator: every draw of step `k`, micro-batch `m` depends on nothing else.
fn step_rng(seed: u64, k: usize, m: usize) -> Seeded {
    Seeded::new(seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((m as u64) << 48) ^ 0x5555)
}

/// The sample indices of micro-batch number `g` (epochs are shuffled from the seed).
fn batch_indices(seed: u64, g: usize, batch: usize, n: usize) -> Vec<usize> {
    (0..batch)
        .map(|j| {
            let flat = g * batch + j;
            let epoch = flat / n;
            torch_randperm(seed.wrapping_add(1 + epoch as u64), n)[flat % n]
        })
        .collect()
}

/// The token ids of a sample set's captions (the instruction template around each, cut to
/// [`MAX_TRAIN_TOKENS`], spec §4.1.5) and of the CFG text for dropped captions: tokenised once
/// when the data is loaded, never per step.
struct CaptionIds {
    per_sample: Vec<Vec<u32>>,
    unconditional: Vec<u32>,
}

impl CaptionIds {
    fn new(tok: &PromptTokenizer, samples: &[data::Sample]) -> Result<Self, TuneError> {
        let encode = |text: &str| -> Result<Vec<u32>, TuneError> {
            let mut ids = tok.encode(text).map_err(|e| TuneError::Invalid(e.to_string()))?;
            ids.truncate(MAX_TRAIN_TOKENS);
            Ok(ids)
        };
        let per_sample = samples.iter().map(|s| encode(&tok.conditional(&s.caption))).collect::<Result<_, _>>()?;
        Ok(Self { per_sample, unconditional: encode(&unconditional_text(None))? })
    }

    /// Text rows of a batch (`None`: a dropped caption), right-padded with id 0.
    fn rows(&self, picks: &[Option<usize>]) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
        let rows = picks.iter().map(|p| p.map_or(&self.unconditional, |i| &self.per_sample[i]).clone()).collect();
        crate::prompt::right_pad(rows, 0)
    }
}

/// What to tune: the base model (and the name recorded in the adapter), the image folder, the run
/// folder and the settings; `resume` continues the run in `out` from its checkpoint.
#[derive(Clone, Copy)]
pub struct TuneJob<'a> {
    pub model: &'a LoadedModel,
    pub base_name: &'a str,
    pub data: &'a Path,
    pub out: &'a Path,
    pub config: &'a TuneConfig,
    pub resume: bool,
    /// More devices for data-parallel training beside the one `tune` is given (empty: one
    /// device). CUDA only: the gradients are all-reduced by burn's collective operations
    /// ([`super::parallel`]).
    pub peers: &'a [Device],
}

/// Runs (or resumes) a LoRA tuning run on `device`. `cancel` is polled between steps; a cancel
/// saves a checkpoint first.
pub fn tune(job: &TuneJob<'_>, device: &Device, events: &mut dyn FnMut(TuneEvent), cancel: &dyn Fn() -> bool) -> Result<TuneOutcome, TuneError> {
    let TuneJob { model, data: data_dir, out, config: cfg, resume, .. } = *job;
    validate(cfg, model)?;
    let preserve = cfg.preserve.as_deref();
    if preserve.is_some() && cfg.full {
        return Err(TuneError::Invalid("a preservation folder is for LoRA tuning, not full training".into()));
    }
    let devices = 1 + job.peers.len();
    if devices > 1 {
        if cfg.full || preserve.is_some() {
            return Err(TuneError::Invalid("data-parallel training (more than one device) is for LoRA tuning without a preservation folder".into()));
        }
        if cfg.grad_accum % devices != 0 {
            return Err(TuneError::Invalid(format!(
                "with {devices} devices the gradient accumulation ({}) must be a multiple of {devices}: each device computes as many micro-batches per step",
                cfg.grad_accum
            )));
        }
    }
    let tok_path = model.tokenizer.as_ref().ok_or_else(|| TuneError::Invalid("the model folder has no tokenizer.json".into()))?;
    let (tokenizer, tokens) = PromptTokenizer::for_model(tok_path, &model.config).map_err(|e| TuneError::Invalid(e.to_string()))?;
    // Everything that can be checked is checked before the folder is touched.
    let dataset: Dataset = data::scan(data_dir, &cfg.template, &cfg.trigger)?;
    let found = inspect(out)?;
    check_start(&found, cfg, out, resume)?;
    let created = matches!(found, RunFolder::New);
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // One process at a time in a run folder (an OS lock: a crash releases it). Under the lock
    // the folder is looked at again: another process may have started in it meanwhile.
    let _lock = crate::fsutil::FolderLock::acquire(out, RUN_LOCK).map_err(|e| TuneError::Invalid(crate::fsutil::describe_io(&e)))?;
    let now = inspect(out)?;
    if std::mem::discriminant(&now) != std::mem::discriminant(&found) && !(created && matches!(now, RunFolder::Empty)) {
        return Err(TuneError::Invalid(format!("{} changed while this run was starting (another process?); try again", out.display())));
    }
    let fresh_folder = !matches!(now, RunFolder::Run(_));
    let resumed = if resume && !fresh_folder { load_checkpoint(out)? } else { None };
    if let Some(r) = &resumed {
        check_resumable(r, cfg, out)?;
    }
    if resume && resumed.is_none() {
        events(TuneEvent::Message(format!("no checkpoint in {}: starting from step 0", out.display())));
    }
    let result = tune_in(job, device, events, cancel, Checked { dataset, resumed, tokenizer, tokens, tok_path });
    if result.is_err() && fresh_folder && !out.join("checkpoint").exists() {
        // A run that failed before its first checkpoint leaves nothing behind: the folder was
        // made or found empty by this call, so everything in it is the run's.
        if created {
            let _ = std::fs::remove_dir_all(out);
        } else if let Ok(entries) = std::fs::read_dir(out) {
            for e in entries.flatten().filter(|e| e.file_name() != RUN_LOCK) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
    result
}

/// `run.json`'s marker: a folder is a tuning run of ours only when its `run.json` says so.
pub const RUN_FORMAT: &str = "vgt-studio-tune-run";
/// The version of `run.json` this build writes and reads.
pub const RUN_VERSION: u64 = 1;
/// The lock file of a run folder ([`crate::fsutil::FolderLock`]).
pub const RUN_LOCK: &str = "run.lock";

/// What an `--out` folder holds.
enum RunFolder {
    New,
    Empty,
    Run(Box<TuneConfig>),
}

/// Looks at `out` without writing anything: a new or empty folder (a lock file of ours
/// aside), or one of our runs; anything else is refused.
fn inspect(out: &Path) -> Result<RunFolder, TuneError> {
    if !crate::fsutil::exists(out).map_err(io_err(out))? {
        return Ok(RunFolder::New);
    }
    let entries = std::fs::read_dir(out).map_err(io_err(out))?;
    let mut any = false;
    for e in entries {
        any |= e.map_err(io_err(out))?.file_name() != RUN_LOCK;
    }
    if !any {
        return Ok(RunFolder::Empty);
    }
    let run_json = out.join("run.json");
    if !crate::fsutil::exists(&run_json).map_err(io_err(&run_json))? {
        return Err(TuneError::Invalid(format!(
            "{} is not empty and holds no tuning run (no run.json): choose a new or empty --out folder",
            out.display()
        )));
    }
    Ok(RunFolder::Run(Box::new(read_run_settings(&run_json)?)))
}

/// The settings in a run's `run.json`, once it has proved to be ours: our format marker and a
/// version this build reads (or, for runs written before the marker, exactly the fields of
/// [`TuneConfig`]). Anything else is somebody else's file and its folder is not touched.
pub fn read_run_settings(run_json: &Path) -> Result<TuneConfig, TuneError> {
    let not_ours = |why: String| {
        TuneError::Invalid(format!(
            "{} is not a VGT Studio tuning run's settings ({why}); its folder is left as it is: choose another --out",
            run_json.display()
        ))
    };
    let text = crate::fsutil::read_regular_string(run_json).map_err(|e| not_ours(crate::fsutil::describe_io(&e)))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_ours(format!("invalid JSON: {e}")))?;
    match value.get("format") {
        Some(f) if f == RUN_FORMAT => {
            let version = value.get("version").and_then(serde_json::Value::as_u64);
            if version != Some(RUN_VERSION) {
                return Err(not_ours(format!("version {}, this build reads version {RUN_VERSION}", value["version"])));
            }
        }
        Some(f) => return Err(not_ours(format!("its format is {f}, not \"{RUN_FORMAT}\""))),
        None => {}
    }
    serde_json::from_value(value).map_err(|e| not_ours(format!("not the settings of a run: {e}")))
}

/// `run.json` for `cfg`: the settings with the format marker and version.
fn run_settings_json(cfg: &TuneConfig) -> Result<Vec<u8>, TuneError> {
    let mut value = serde_json::to_value(cfg).map_err(|e| TuneError::Invalid(format!("cannot encode the run settings ({e})")))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("format".into(), RUN_FORMAT.into());
        map.insert("version".into(), RUN_VERSION.into());
    }
    serde_json::to_vec_pretty(&value).map_err(|e| TuneError::Invalid(format!("cannot encode the run settings ({e})")))
}

/// Whether a run may start in `out` as found: a fresh run needs a new or empty folder (it never
/// replaces anything it did not make); `--resume` needs the same settings as the run's.
fn check_start(found: &RunFolder, cfg: &TuneConfig, out: &Path, resume: bool) -> Result<(), TuneError> {
    match found {
        RunFolder::Run(_) if !resume => Err(TuneError::Invalid(format!(
            "{} already holds a tuning run; pass --resume to continue it, or choose another --out",
            out.display()
        ))),
        RunFolder::Run(saved) if **saved != *cfg => Err(TuneError::Invalid(format!(
            "--resume: the settings differ from the run in {} ({}); use the same settings or another --out",
            out.display(),
            differences(saved, cfg)
        ))),
        _ => Ok(()),
    }
}

/// Refuses a checkpoint that does not belong to these settings: another LoRA rank or alpha, or
/// a step past the run's end.
fn check_resumable(r: &Resumed, cfg: &TuneConfig, out: &Path) -> Result<(), TuneError> {
    let where_ = out.join("checkpoint");
    if r.step > cfg.steps {
        return Err(TuneError::Invalid(format!("the checkpoint in {} is at step {}, past the run's {} steps", where_.display(), r.step, cfg.steps)));
    }
    if !cfg.full && (r.adapter.rank != cfg.lora.rank || r.adapter.alpha != cfg.lora.alpha) {
        return Err(TuneError::Invalid(format!(
            "the checkpoint in {} has rank {} and alpha {}, the settings rank {} and alpha {}",
            where_.display(),
            r.adapter.rank,
            r.adapter.alpha,
            cfg.lora.rank,
            cfg.lora.alpha
        )));
    }
    Ok(())
}

/// What [`tune`] checked before touching the run folder, for [`tune_in`].
struct Checked<'a> {
    dataset: Dataset,
    resumed: Option<Resumed>,
    tokenizer: PromptTokenizer,
    tokens: crate::config::TokenIds,
    tok_path: &'a Path,
}

/// The run itself, in a folder that exists and was checked.
fn tune_in(
    job: &TuneJob<'_>,
    device: &Device,
    events: &mut dyn FnMut(TuneEvent),
    cancel: &dyn Fn() -> bool,
    Checked { dataset, resumed, tokenizer, tokens, tok_path }: Checked<'_>,
) -> Result<TuneOutcome, TuneError> {
    let TuneJob { model, base_name, out, config: cfg, .. } = *job;
    let preserve = cfg.preserve.as_deref();
    let img_start = tokens.img_start.clone();
    let run_json = out.join("run.json");
    crate::fsutil::write_bytes_atomic(&run_json, &run_settings_json(cfg)?).map_err(io_err(&run_json))?;
    for warning in &dataset.warnings {
        events(TuneEvent::Message(warning.clone()));
    }

    if !dataset.skipped.is_empty() {
        let list: Vec<String> = dataset.skipped.iter().map(|(p, why)| format!("  {}: {why}", p.display())).collect();
        events(TuneEvent::Message(format!("skipped {} unreadable image(s):\n{}", dataset.skipped.len(), list.join("\n"))));
    }
    let templated = dataset.samples.iter().filter(|s| s.templated).count();
    if templated > 0 {
        events(TuneEvent::Message(format!("{templated} image(s) without a caption use \"{}\"", cfg.template.replace("{trigger}", &cfg.trigger))));
    }
    let plain = device.clone().without_autodiff();
    let c = &model.config;
    let stages = c.decoder.block_out_channels.len();
    let preserved = match preserve {
        Some(dir) => {
            let set = data::scan(dir, &cfg.template, &cfg.trigger)?;
            if !set.skipped.is_empty() {
                events(TuneEvent::Message(format!("preservation folder: skipped {} unreadable image(s)", set.skipped.len())));
            }
            if set.samples.iter().any(|s| s.templated) {
                return Err(TuneError::Invalid(format!("{}: every preservation image needs its caption (a .txt beside it or captions.jsonl)", dir.display())));
            }
            Some(set)
        }
        None => None,
    };
    let (latents, preserved_latents) = {
        let (ae, report) = apply_component(VgtAe::new(c, &plain), &model.tensors, stages, "vgt_ae.")?;
        report.require_complete()?;
        let print = data::ae_fingerprint(&model.tensors, cfg.size);
        let latents = {
            let mut progress = |done, total| events(TuneEvent::Latents { done, total });
            data::cached_latents(&dataset.samples, &ae, print, cfg.size, &out.join("latents.safetensors"), &plain, &mut progress)?
        };
        let kept = match &preserved {
            Some(set) => {
                events(TuneEvent::Message(format!("encoding {} preservation image(s)", set.samples.len())));
                let mut progress = |done, total| events(TuneEvent::Latents { done, total });
                Some(data::cached_latents(&set.samples, &ae, print, cfg.size, &out.join("preserve-latents.safetensors"), &plain, &mut progress)?)
            }
            None => None,
        };
        (latents, kept)
    };
    let storage = if cfg.f16_base { Storage::HalfMatrices } else { Storage::F32 };
    // The preservation images (latents decoded once) and the frozen base model whose velocities
    // the preservation loss keeps (no autodiff).
    let preservation = match (preserved, preserved_latents) {
        (Some(set), Some(lat)) => {
            let (base, report) = apply_with_storage(Vgt::for_generation(c, &plain), &model.tensors, stages, storage)?;
            report.require_complete()?;
            let captions = CaptionIds::new(&tokenizer, &set.samples)?;
            Some(Preservation { samples: set.samples, captions, latents: lat.iter().map(RawTensor::to_f32).collect(), base })
        }
        _ => None,
    };

    // The model with adapters on the autodiff device.
    let ad = device.clone().autodiff();
    let (base, report) = apply_with_storage(Vgt::for_generation(c, &ad), &model.tensors, stages, storage)?;
    report.require_complete()?;
    let mut net = if cfg.full { super::lora::attach_full(base) } else { crate::nn::trainable_to_f32(crate::nn::upcast_half(cfg.lora.attach(base)?)) };
    let mut opt = new_optimizer(cfg);
    let mut start = 0;
    match &resumed {
        Some(r) => {
            let mut restore = Restore { stack: PathStack::default(), adapter: &r.adapter, device: ad.clone(), missing: Vec::new(), used: Default::default() };
            net = net.map(&mut restore);
            if !restore.missing.is_empty() {
                return Err(TuneError::Invalid(format!("the checkpoint lacks adapters, or has them in another shape, for: {}", restore.missing.join(", "))));
            }
            let unused = restore.unused();
            if !unused.is_empty() {
                return Err(TuneError::Invalid(format!(
                    "the checkpoint has trained weights the run's settings would drop (were run.json's targets edited?): {}",
                    unused.join(", ")
                )));
            }
            opt.load_state(r.step, &r.optimizer, &plain);
            start = r.step;
            truncate_log(&out.join("loss.jsonl"), start)?;
            events(TuneEvent::Message(format!("resuming at step {start} of {}", cfg.steps)));
        }
        None if cfg.full => {
            let _ = std::fs::remove_file(out.join("loss.jsonl"));
        }
        None => {
            let mut init = SeededInit { stack: PathStack::default(), rng: Seeded::new(cfg.seed ^ 0x10aa), std: 1.0 / cfg.lora.rank as f32 };
            net = net.map(&mut init);
            let _ = std::fs::remove_file(out.join("loss.jsonl"));
        }
    }
    let mut ema: Option<Adapter> = match (cfg.ema_momentum, &resumed) {
        (None, _) => None,
        (Some(_), Some(r)) if r.ema.is_some() => r.ema.clone(),
        (Some(_), _) => Some(cfg.adapter_of(&net)),
    };
    let mut sampler = TextToImage { model: net.valid(), tokenizer, tokens, device: plain.clone() };
    let schedule = cfg.schedule();
    let samples_dir = out.join("samples");
    let log_path = out.join("loss.jsonl");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
    let [ch, lh, lw] = [latents[0].shape[0], latents[0].shape[1], latents[0].shape[2]];
    // Decoded once: every step reads its batch from these.
    let latents: Vec<Vec<f32>> = latents.iter().map(RawTensor::to_f32).collect();
    // Data parallel: every other device gets a copy (same parameter ids), its own optimiser
    // (the same state) and its share of each step's micro-batches; burn all-reduces the marked
    // gradients during each backward pass, so every copy takes the same step.
    let devices = 1 + job.peers.len();
    let captions = CaptionIds::new(&sampler.tokenizer, &dataset.samples)?;
    let micro = MicroBatches { samples: &dataset.samples, captions: &captions, latents: &latents, cfg, img_start: &img_start, dims: [ch, lh, lw], order: c.order, devices };
    let own = super::parallel::shard(cfg.grad_accum, 0, devices);
    let _context = (devices > 1).then(|| {
        events(TuneEvent::Message(format!("data parallel on {devices} devices")));
        net = super::parallel::mark_distributed(net.clone());
        let all = std::iter::once(ad.clone()).chain(job.peers.iter().map(|d| d.clone().autodiff())).collect();
        super::parallel::context(all)
    });
    // The loop takes the model and gives it back (an optimiser step consumes it).
    let (looped, net) = std::thread::scope(|scope| -> Result<(Option<TuneOutcome>, Vgt), TuneError> {
        let (to_main, from_peers) = std::sync::mpsc::channel::<Result<f64, TuneError>>();
        let mut to_peers = Vec::new();
        for (i, peer) in job.peers.iter().enumerate() {
            let rank = i + 1;
            let (tx, rx) = std::sync::mpsc::channel::<(usize, f64)>();
            to_peers.push(tx);
            let peer_ad = peer.clone().autodiff();
            let mut peer_net = super::parallel::mark_distributed(net.clone().fork(&peer_ad));
            let mut peer_opt = new_optimizer(cfg);
            if let Some(r) = &resumed {
                peer_opt.load_state(r.step, &r.optimizer, peer);
            }
            let mine = super::parallel::shard(cfg.grad_accum, rank, devices);
            let (micro, to_main) = (&micro, to_main.clone());
            scope.spawn(move || {
                for (step, lr) in rx {
                    match micro.grads(&peer_net, step, &mine, None, &peer_ad) {
                        Ok((grads, loss, _)) => {
                            let (updated, _) = peer_opt.update(peer_net, grads, lr);
                            peer_net = super::parallel::mark_distributed(updated);
                            let _ = to_main.send(Ok(loss));
                        }
                        Err(e) => {
                            let _ = to_main.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        let started = Instant::now();
        for step in start..cfg.steps {
            if cancel() {
                let adapter = cfg.adapter_of(&net);
                let path = save_checkpoint(out, step, &adapter, ema.as_ref(), &opt, base_name)?;
                events(TuneEvent::Saved { step, path: path.clone() });
                return Ok((Some(TuneOutcome::Cancelled { step, checkpoint: path }), net));
            }
            let lr = schedule.lr_at(step);
            for tx in &to_peers {
                let _ = tx.send((step, lr));
            }
            let (grads, mut loss_sum, preserve_sum) = micro.grads(&net, step, &own, preservation.as_ref(), &ad)?;
            let (updated, grad_norm) = opt.update(net, grads, lr);
            net = if devices > 1 { super::parallel::mark_distributed(updated) } else { updated };
            for _ in &to_peers {
                loss_sum += from_peers.recv().map_err(|_| TuneError::Invalid("a data-parallel device stopped".into()))??;
            }
            if let (Some(e), Some(m)) = (ema.as_mut(), cfg.ema_momentum) {
                e.ema_update(&cfg.adapter_of(&net), m);
            }
            let loss = loss_sum / cfg.grad_accum as f64;
            if !loss.is_finite() {
                return Err(TuneError::Invalid(format!("the loss became {loss} at step {}; lower --lr", step + 1)));
            }
            let mut line = serde_json::json!({ "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm });
            if preservation.is_some() {
                line["preserve_loss"] = serde_json::json!(preserve_sum / cfg.grad_accum as f64);
            }
            writeln!(log, "{line}").map_err(io_err(&log_path))?;
            log.flush().map_err(io_err(&log_path))?;
            events(TuneEvent::Step { step: step + 1, total: cfg.steps, loss, lr, grad_norm, seconds: started.elapsed().as_secs_f64() });
            let done = step + 1;
            if cfg.sample_every > 0 && (done % cfg.sample_every == 0 || done == cfg.steps) {
                sampler.model = net.valid();
                let prompt = if cfg.sample_prompt.is_empty() { dataset.samples[0].caption.clone() } else { cfg.sample_prompt.clone() };
                let req = Request { prompt, negative: None, images: 1, seed: cfg.seed, options: GenerateOptions { order: c.order, ..cfg.sample_options }, first_image: 0 };
                let mut keep_going = |_: usize, _: usize| !cancel();
                if let Ok(images) = sampler.generate(&req, &mut keep_going) {
                    std::fs::create_dir_all(&samples_dir).map_err(io_err(&samples_dir))?;
                    let path = samples_dir.join(format!("step_{done:06}.png"));
                    if let Some(img) = images.into_iter().next() {
                        img.save_png(&path).map_err(|e| TuneError::Invalid(e.to_string()))?;
                        events(TuneEvent::Sample { step: done, path, image: img });
                    }
                }
            }
            if done % cfg.save_every.max(1) == 0 || done == cfg.steps {
                let adapter = cfg.adapter_of(&net);
                let path = save_checkpoint(out, done, &adapter, ema.as_ref(), &opt, base_name)?;
                events(TuneEvent::Saved { step: done, path });
            }
        }
        Ok((None, net))
    })?;
    if let Some(outcome) = looped {
        return Ok(outcome);
    }
    let raw = cfg.adapter_of(&net);
    let adapter = match ema {
        Some(e) => {
            // The average is the result; the raw weights stay beside it.
            if !cfg.full {
                raw.save(&out.join("adapter-raw"), base_name)?;
            }
            Adapter { settings: raw.settings.clone(), ..e }
        }
        None => raw,
    };
    if cfg.full {
        let final_dir = out.join("model");
        let mut tensors = model.tensors.clone();
        tensors.retain(|k, _| !crate::weights::keymap::is_ignored(k));
        adapter.merge_into(&mut tensors, 1.0)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io_err(&final_dir))?;
        }
        crate::weights::source::save_converted(&final_dir, c, &tensors, tok_path, DType::F32)?;
        return Ok(TuneOutcome::Finished { adapter: final_dir });
    }
    let final_dir = out.join("adapter");
    adapter.save(&final_dir, base_name)?;
    Ok(TuneOutcome::Finished { adapter: final_dir })
}

/// The optimiser of a run.
fn new_optimizer(cfg: &TuneConfig) -> AdamW {
    AdamW::new(AdamWConfig { weight_decay: cfg.weight_decay, ..Default::default() })
}

/// What a device needs to compute the gradients of its micro-batches.
struct MicroBatches<'a> {
    samples: &'a [data::Sample],
    captions: &'a CaptionIds,
    latents: &'a [Vec<f32>],
    cfg: &'a TuneConfig,
    img_start: &'a [u32],
    /// `[C, h, w]` of a latent.
    dims: [usize; 3],
    order: Order,
    /// Devices sharing each step ([`super::parallel`]).
    devices: usize,
}

impl MicroBatches<'_> {
    /// The summed gradients of micro-batches `ms` of `step` (with the preservation loss when
    /// `keep` is given), scaled so that the micro-batches of all devices average; with the loss
    /// and preservation loss summed over `ms`.
    fn grads(&self, net: &Vgt, step: usize, ms: &[usize], keep: Option<&Preservation>, device: &Device) -> Result<(Grads, f64, f64), TuneError> {
        let cfg = self.cfg;
        // After the all-reduce every device holds the mean over devices of each round.
        let scale = self.devices as f64 / cfg.grad_accum as f64;
        let mut total: Option<Grads> = None;
        let (mut loss_sum, mut preserve_sum) = (0.0, 0.0);
        for &m in ms {
            let b = step_batch(self.samples, self.captions, self.latents, cfg.seed, (step, m), cfg, self.dims, self.order);
            let z = Tensor::<4>::from_data(TensorData::new(b.values, b.shape), device);
            let batch = TrainBatch { ids: &b.ids, mask: &b.mask, img_start: self.img_start, latents: z };
            let mut loss = net.train_forward(&batch, &b.noise, TIME_SHIFT).flow.loss;
            loss_sum += loss.clone().inner().into_scalar::<f32>() as f64;
            if let Some(keep) = keep {
                let p = preservation_loss(keep, cfg, (step, m), net, self.img_start, self.dims, self.order);
                preserve_sum += p.clone().inner().into_scalar::<f32>() as f64;
                loss = loss + p * cfg.preserve_weight;
            }
            let grads = loss.backward();
            let g = Grads::collect(net, &grads, scale);
            match &mut total {
                Some(t) => t.accumulate(g),
                None => total = Some(g),
            }
        }
        Ok((total.unwrap_or(Grads { by_path: Default::default() }), loss_sum, preserve_sum))
    }
}

/// One micro-batch drawn from a set of samples and their decoded latents.
struct StepBatch {
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u8>>,
    values: Vec<f32>,
    /// `[B, C, h, w]` of `values`.
    shape: [usize; 4],
    noise: StepNoise,
}

/// Micro-batch `m` of step `k` from generator `seed`: the samples (epochs shuffled from the seed),
/// caption dropout, then the order, t and noise, all from the step's own generator.
#[allow(clippy::too_many_arguments)]
/// `order`: the model's training order (a sequential model tunes in raster order).
#[allow(clippy::too_many_arguments)]
fn step_batch(samples: &[data::Sample], captions: &CaptionIds, latents: &[Vec<f32>], seed: u64, (k, m): (usize, usize), cfg: &TuneConfig, [ch, lh, lw]: [usize; 3], order: Order) -> StepBatch {
    let mut rng = step_rng(seed, k, m);
    let idx = batch_indices(seed, k * cfg.grad_accum + m, cfg.batch, samples.len());
    let picks: Vec<Option<usize>> = idx.iter().map(|&i| (rng.uniform() >= cfg.caption_dropout).then_some(i)).collect();
    let (ids, mask) = captions.rows(&picks);
    let values: Vec<f32> = idx.iter().flat_map(|&i| latents[i].iter().copied()).collect();
    let noise = StepNoise::draw(&mut rng, idx.len(), lh * lw, ch).in_order(order);
    StepBatch { ids, mask, values, shape: [idx.len(), ch, lh, lw], noise }
}

/// What the preservation loss needs: the images' samples, their decoded latents, and the frozen
/// base model.
struct Preservation {
    samples: Vec<data::Sample>,
    captions: CaptionIds,
    latents: Vec<Vec<f32>>,
    base: Vgt,
}

/// The preservation loss of step `k`, micro-batch `m`: a batch of preservation images (drawn as
/// the data's are, from a generator of their own) through the tuned model and the frozen base
/// with the same noise; the mean squared difference of their velocities.
#[allow(clippy::too_many_arguments)]
fn preservation_loss(keep: &Preservation, cfg: &TuneConfig, step: (usize, usize), net: &Vgt, img_start: &[u32], latent: [usize; 3], order: Order) -> Tensor<1> {
    let StepBatch { ids, mask, values, shape, noise } = step_batch(&keep.samples, &keep.captions, &keep.latents, cfg.seed ^ 0x9e5e_47e0, step, cfg, latent, order);
    let velocity = |model: &Vgt, values: Vec<f32>| {
        let z = Tensor::<4>::from_data(TensorData::new(values, shape), &model.llm.norm.weight.lazy_device());
        model.train_forward(&TrainBatch { ids: &ids, mask: &mask, img_start, latents: z }, &noise, TIME_SHIFT).flow.v
    };
    let target = velocity(&keep.base, values.clone());
    let v = velocity(net, values);
    let target = Tensor::<2>::from_data(target.into_data(), &v.device());
    (v - target).powf_scalar(2.0).mean()
}

fn differences(a: &TuneConfig, b: &TuneConfig) -> String {
    let (a, b) = (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    let mut diffs = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                diffs.push(format!("{k}: {v} → {}", b.get(k).cloned().unwrap_or_default()));
            }
        }
    }
    diffs.join(", ")
}
