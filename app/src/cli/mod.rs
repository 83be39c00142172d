//! Subcommands of `vgt`.

mod bench;
mod bench_ae;
mod bench_gen;
mod bench_shapes;
mod bench_train;
mod convert;
mod generate;
mod info;
mod lora;
mod reconstruct;
mod shapes;
mod tune;

use clap::{Parser, Subcommand};
use vgt_model::device::{BackendChoice, ComputeDevice};

#[derive(Parser, Debug)]
#[command(name = "vgt", version, about = "VGT Studio: text-to-image with Visual Generation Tuning models")]
pub struct Cli {
    /// Compute backend: auto (a real GPU through wgpu, else the CPU), wgpu, cpu, or cuda
    /// (builds with `--features cuda` only). Default auto; the app keeps its own choice unless
    /// this is given.
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Use composed tensor ops only: turns off our WGSL kernels on wgpu (linear layers of at most
    /// 64 rows, the flow head's LayerNorm + modulation and SDE step). Also `VGT_NO_CUSTOM_KERNELS=1`.
    #[arg(long, global = true)]
    pub no_custom_kernels: bool,
    /// Without a subcommand the desktop app opens (with this model, or the last one used).
    #[arg(long, global = false)]
    pub model: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack a released model (VLM folder + AE and AR checkpoints) into one fast-loading folder.
    Convert(convert::ConvertArgs),
    /// Show a model's configuration and check that its checkpoint covers every parameter.
    Info(info::InfoArgs),
    /// Generate images from a prompt.
    Generate(generate::GenerateArgs),
    /// Encode and decode images through VGT-AE; writes reconstructions, comparisons and metrics.
    Reconstruct(reconstruct::ReconstructArgs),
    /// LoRA tuning on a folder of your images (writes a PEFT adapter).
    Tune(tune::TuneArgs),
    /// Full training of the trainable set (LLM, position queries, projectors, flow head) with
    /// the reference's pretrain or SFT optimiser settings; writes a model folder.
    Train(tune::TrainArgs),
    /// Train the embedded shapes model from scratch (deterministic from the seed).
    TrainShapes(shapes::TrainShapesArgs),
    /// Write a captioned folder of shapes-world images (e.g. tuning data for a held-out shape).
    RenderShapes(shapes::RenderShapesArgs),
    /// Work with LoRA adapters.
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// List the compute devices of this machine.
    Devices,
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Starts the device the user chose, with a clear error.
pub fn device(choice: &str) -> anyhow::Result<ComputeDevice> {
    let choice: BackendChoice = choice.parse()?;
    let dev = vgt_model::device::select(choice)?;
    log::info!("using {} on {}", dev.kind.name(), dev.name);
    Ok(dev)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.no_custom_kernels {
        vgt_model::kernels::set_enabled(false);
    }
    let Some(command) = cli.command else {
        return vgt_app::gui::run(cli.model, cli.backend);
    };
    let backend = cli.backend.unwrap_or_else(|| "auto".to_string());
    match command {
        Command::Convert(a) => convert::run(a),
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a, &backend),
        Command::Reconstruct(a) => reconstruct::run(a, &backend),
        Command::Tune(a) => tune::run(a, &backend),
        Command::Train(a) => tune::run_full(a, &backend),
        Command::Lora(c) => lora::run(c),
        Command::TrainShapes(a) => shapes::run_cmd(a, &backend),
        Command::RenderShapes(a) => shapes::render_cmd(a),
        Command::Devices => {
            let adapters = vgt_model::device::wgpu_adapters();
            if adapters.is_empty() {
                println!("no wgpu adapters");
            }
            for a in adapters {
                println!("wgpu: {} ({}, {})", a.name, a.api, a.device_type);
            }
            let chosen = device(&backend)?;
            println!("--backend {} selects: {} on {}", backend, chosen.kind.name(), chosen.name);
            Ok(())
        }
        Command::Bench(b) => bench::run(b, &backend),
    }
}
