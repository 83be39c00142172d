//! `vgt bench ...`: benchmarks that print JSON.

use clap::Subcommand;
use vgt_model::bench::{Workload, time};
use vgt_model::device;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time the shapes that dominate VGT on the CPU backend (flex) and on wgpu, in one process.
    Backends {
        /// Timed runs per workload (after one warm-up).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print JSON (the only format for now; kept for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The full-size generator (random weights): time per image split into LLM, flow head and
    /// decoder, LLM tokens per second, peak memory.
    Generate {
        /// internvl3-0.6b, internvl3-1.6b, qwen25vl-2b (36 LLM layers), qwen25vl-2b-18l, or shapes
        /// (the embedded model's size).
        #[arg(long, default_value = "internvl3-1.6b")]
        config: String,
        /// Build the model with random weights (required: no checkpoint is read).
        #[arg(long)]
        random_weights: bool,
        #[arg(long, default_value_t = 448)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        acc_ratio: usize,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 4.5)]
        cfg: f64,
        /// Images generated together.
        #[arg(long, default_value_t = 1)]
        images: usize,
        /// Store the weight matrices in f16 (computed in f32).
        #[arg(long)]
        f16_weights: bool,
        /// Only the first run (which includes the lazy initialisation of the random weights).
        #[arg(long)]
        no_warm: bool,
        /// Also run once with our fused WGSL kernels off and report the speed-up per stage.
        #[arg(long)]
        compare_kernels: bool,
        #[arg(long)]
        json: bool,
    },
    /// The flow head's sampling stage (full-size head, random weights) with our fused WGSL
    /// kernels and with composed ops, plus each op kind of a step timed alone (wgpu only).
    FlowHead {
        /// internvl3-0.6b or internvl3-1.6b (their heads differ in the condition width only).
        #[arg(long, default_value = "internvl3-1.6b")]
        config: String,
        /// Tokens per sampler call (a token group; 16 at 448 px with acc-ratio 16).
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 4.5)]
        cfg: f64,
        /// Timed sampler calls per path (after one warm-up).
        #[arg(long, default_value_t = 3)]
        calls: usize,
        #[arg(long)]
        json: bool,
    },
    /// One LoRA optimiser step of the full-size model (random weights): forward, backward and
    /// update timed, with peak memory.
    Train {
        /// internvl3-0.6b or internvl3-1.6b.
        #[arg(long, default_value = "internvl3-1.6b")]
        config: String,
        /// Build the model with random weights (required: no checkpoint is read).
        #[arg(long)]
        random_weights: bool,
        #[arg(long, default_value_t = 16)]
        lora_rank: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 448)]
        size: usize,
        /// Timed steps after the first (which initialises the weights).
        #[arg(long, default_value_t = 2)]
        steps: usize,
        /// Store the frozen base matrices in f16.
        #[arg(long)]
        f16_base: bool,
        #[arg(long)]
        json: bool,
    },
    /// Generation quality of a shapes-world model (the embedded one by default): detector-scored
    /// accuracy per category, AE reconstruction, and the acc-ratio × CFG table.
    Shapes {
        /// Model folder (the embedded model when omitted).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Prompts per category.
        #[arg(long, default_value_t = 20)]
        per_category: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Sampler steps.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// CFG scale of the default settings (the sweep always uses 1 and 4.5).
        #[arg(long, default_value_t = 4.5)]
        cfg: f64,
        /// LoRA adapters `PATH[:WEIGHT]` to apply (repeatable).
        #[arg(long = "lora")]
        loras: Vec<String>,
        /// Also score prompts with this held-out shape (e.g. star after tuning on stars).
        #[arg(long)]
        held_out: Option<String>,
        /// Skip the acc-ratio × CFG table.
        #[arg(long)]
        no_sweep: bool,
        /// How CFG grows over the token groups (as in `vgt generate`).
        #[arg(long, default_value = "linear", value_parser = ["linear", "constant"])]
        cfg_schedule: String,
        /// The order tokens are generated in (as in `vgt generate`; the model's training order by
        /// default).
        #[arg(long, value_parser = ["random", "sequential"])]
        order: Option<String>,
        /// Write the default-settings images (PNG) and each prompt's detections and verdict
        /// (`default-results.json`) to this folder, and the same for the AE's reconstructions of
        /// the detector's ground-truth scenes (`reconstruction-*`).
        #[arg(long)]
        dump: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The full-size VGT-AE: encode and decode timed separately, with peak memory.
    Reconstruct {
        /// Model configuration: internvl3 or qwen25vl (the released VGT-AEs).
        #[arg(long, default_value = "internvl3")]
        config: String,
        /// Build the model with random weights (required: no checkpoint is read).
        #[arg(long)]
        random_weights: bool,
        /// Image side in pixels.
        #[arg(long, default_value_t = 448)]
        size: usize,
        /// Timed runs (after one warm-up).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Store the weight matrices in f16 (computed in f32).
        #[arg(long)]
        f16_weights: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BenchCommand, backend: &str) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Backends { runs, json: _ } => backends(runs),
        BenchCommand::Generate { config, random_weights, size, acc_ratio, steps, cfg, images, f16_weights, no_warm, compare_kernels, json: _ } => {
            if !random_weights {
                anyhow::bail!("this benchmark builds the model with --random-weights; time a real model with `vgt generate`");
            }
            super::bench_gen::run(super::bench_gen::GenBench { config, size, acc_ratio, steps, cfg, images, f16_weights, warm: !no_warm, compare_kernels }, backend)
        }
        BenchCommand::FlowHead { config, tokens, steps, cfg, calls, json: _ } => {
            super::bench_gen::head(super::bench_gen::HeadArgs { config, tokens, steps, cfg, calls }, backend)
        }
        BenchCommand::Train { config, random_weights, lora_rank, batch, size, steps, f16_base, json: _ } => {
            if !random_weights {
                anyhow::bail!("this benchmark builds the model with --random-weights; time a real run with `vgt tune`");
            }
            super::bench_train::run(super::bench_train::TrainBench { config, size, batch, rank: lora_rank, steps, f16_base }, backend)
        }
        BenchCommand::Shapes { model, per_category, seed, steps, cfg, loras, held_out, no_sweep, cfg_schedule, order, dump, json: _ } => {
            let constant_cfg = cfg_schedule == "constant";
            let sequential = order.map(|o| o == "sequential");
            super::bench_shapes::run(super::bench_shapes::ShapesBench { model, per_category, seed, steps, cfg, loras, held_out, sweep: !no_sweep, constant_cfg, sequential, dump }, backend)
        }
        BenchCommand::Reconstruct { config, random_weights, size, runs, f16_weights, json: _ } => {
            if !random_weights {
                anyhow::bail!("this benchmark builds the model with --random-weights; time a real model with `vgt reconstruct`");
            }
            super::bench_ae::run(super::bench_ae::AeBench { config, size, runs, f16_weights }, backend)
        }
    }
}

fn backends(runs: usize) -> anyhow::Result<()> {
    let cpu = device::cpu_device();
    let gpu = match device::wgpu_device() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("wgpu unavailable: {e}");
            None
        }
    };
    let mut rows = Vec::new();
    for w in Workload::ALL {
        eprintln!("{} ...", w.name());
        let flex = time(&*w.prepare(&cpu.device), runs);
        let wgpu = gpu.as_ref().map(|g| time(&*w.prepare(&g.device), runs));
        rows.push(serde_json::json!({
            "workload": w.name(),
            "gflop": w.flops() / 1e9,
            "flex": flex,
            "wgpu": wgpu,
            "wgpu_over_flex": wgpu.map(|g| g.median_ms / flex.median_ms),
        }));
    }
    let out = serde_json::json!({
        "cpu": cpu.name,
        "wgpu_adapter": gpu.as_ref().map(|g| g.name.clone()),
        "results": rows,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
