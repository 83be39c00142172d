//! `vgt info`: a model's configuration and checkpoint coverage.

use std::path::PathBuf;

use anyhow::Context;
use vgt_model::ar::Vgt;
use vgt_model::weights::apply::check_coverage;
use vgt_model::weights::source::{self, shapes_of};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A `vgt convert` folder, or a folder with `vlm/`, `vgt_ae.pth` and `ar.pth`.
    #[arg(long)]
    pub model: PathBuf,
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let loaded = source::open(&a.model).with_context(|| format!("loading the model in {}", a.model.display()))?;
    let c = &loaded.config;
    let device = vgt_model::device::cpu_device().device;
    let report = check_coverage(&Vgt::new(c, &device), &shapes_of(&loaded.tensors), c.decoder.block_out_channels.len())?;
    println!("{}", serde_json::to_string_pretty(c)?);
    println!("family: {}", c.family().name());
    println!("tensors: {report}");
    for m in &report.missing {
        println!("missing: {m}");
    }
    for u in &report.unexpected {
        println!("unexpected: {u}");
    }
    report.require_complete()?;
    Ok(())
}
