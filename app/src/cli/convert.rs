//! `vgt convert`: pack a released model into one self-contained, memory-mappable folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use vgt_model::ar::Vgt;
use vgt_model::config::PadAttention;
use vgt_model::weights::apply::check_coverage;
use vgt_model::weights::pth::DictChoice;
use vgt_model::weights::source::{self, OriginalFiles, shapes_of};
use vgt_model::config::VgtConfig;
use vgt_model::weights::{DType, TensorMap, keymap};

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face VLM folder, InternVL3 or Qwen2.5-VL (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub vlm: PathBuf,
    /// VGT-AE checkpoint (`vgt_ae_internvl3.pth` or `vgt_ae_qwen25vl.pth`).
    #[arg(long)]
    pub ae: PathBuf,
    /// VGT-AR checkpoint (`iter_5000.pth`).
    #[arg(long)]
    pub ar: PathBuf,
    /// Output folder (created; must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage type of the float tensors.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Load `state_dict` instead of `ema_state_dict` from mmengine checkpoints.
    #[arg(long)]
    pub raw_weights: bool,
    /// Prefill padding policy (eager for 0.6B, flash for 1.6B and Qwen2.5-VL); inferred when omitted.
    #[arg(long, value_parser = ["eager", "flash"])]
    pub pad_attention: Option<String>,
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    check_empty(&a.out)?;
    let files = OriginalFiles {
        vlm: Some(a.vlm.clone()),
        ae: Some(a.ae.clone()),
        ar: Some(a.ar.clone()),
        dict: if a.raw_weights { DictChoice::Raw } else { DictChoice::PreferEma },
    };
    eprintln!("reading {}, {} and {}", a.vlm.display(), a.ae.display(), a.ar.display());
    let mut loaded = files.load().context("reading the checkpoints")?;
    if let Some(p) = &a.pad_attention {
        loaded.config.llm.pad_attention = if p == "flash" { PadAttention::Flash } else { PadAttention::Eager };
    }
    let c = &loaded.config;
    let device = vgt_model::device::cpu_device().device;
    let report = check_coverage(&Vgt::new(c, &device), &shapes_of(&loaded.tensors), c.decoder.block_out_channels.len())?;
    report.require_complete().context("the checkpoints do not cover the model")?;
    eprintln!("tensors: {report}");
    let tokenizer = loaded.tokenizer.clone().context("the VLM folder has no tokenizer.json")?;
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let mut tensors = loaded.tensors.clone();
    tensors.retain(|k, _| !keymap::is_ignored(k));
    let unexpected: std::collections::BTreeSet<_> = report.unexpected.iter().collect();
    tensors.retain(|k, _| !unexpected.contains(k));
    write_folder(&a.out, c, &tensors, &tokenizer, &a.dtype, dtype)?;
    println!("{}", a.out.display());
    Ok(())
}

/// Refuses an output folder that exists and is not empty.
pub(super) fn check_empty(out: &Path) -> anyhow::Result<()> {
    if out.exists() && out.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("the output folder {} exists and is not empty", out.display());
    }
    Ok(())
}

/// Writes a model folder (see [`source::save_converted`]), with a line for the user.
pub(super) fn write_folder(out: &Path, c: &VgtConfig, tensors: &TensorMap, tokenizer: &Path, dtype_name: &str, dtype: DType) -> anyhow::Result<()> {
    eprintln!("writing {} tensors as {dtype_name}", tensors.len());
    source::save_converted(out, c, tensors, tokenizer, dtype).with_context(|| format!("writing {}", out.display()))
}
