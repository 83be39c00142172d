//! `vgt lora merge`: bake LoRA adapters into a model folder.

use std::path::PathBuf;

use anyhow::Context;
use vgt_model::train::lora::{Adapter, parse_lora_arg};
use vgt_model::weights::{DType, source};

#[derive(clap::Subcommand, Debug)]
pub enum LoraCommand {
    /// Write a model folder with one or more adapters merged into its weights.
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter `PATH[:WEIGHT]` (repeatable).
    #[arg(long = "lora", value_name = "PATH[:WEIGHT]", required = true)]
    pub loras: Vec<String>,
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage type of the float tensors.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
}

pub fn run(c: LoraCommand) -> anyhow::Result<()> {
    let LoraCommand::Merge(a) = c;
    super::convert::check_empty(&a.out)?;
    let mut loaded = source::open(&a.model).with_context(|| format!("loading the model in {}", a.model.display()))?;
    for s in &a.loras {
        let (path, weight) = parse_lora_arg(s).map_err(anyhow::Error::msg)?;
        let adapter = Adapter::load(&path).with_context(|| format!("reading the adapter {}", path.display()))?;
        adapter.merge_into(&mut loaded.tensors, weight).with_context(|| format!("merging {}", path.display()))?;
        eprintln!("merged {} ({} adapted weights, {} replaced tensors, weight {weight})", path.display(), adapter.lora.len(), adapter.full.len());
    }
    let tokenizer = loaded.tokenizer.clone().context("the model folder has no tokenizer.json")?;
    let dtype = match a.dtype.as_str() {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let mut tensors = loaded.tensors;
    tensors.retain(|k, _| !vgt_model::weights::keymap::is_ignored(k));
    super::convert::write_folder(&a.out, &loaded.config, &tensors, &tokenizer, &a.dtype, dtype)?;
    println!("{}", a.out.display());
    Ok(())
}
