//! `vgt train-shapes`: trains the embedded shapes model from scratch (deterministic from the
//! seed); `assets/shapes` is its output with the default settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use vgt_model::shapes::recipe::{RecipeEvent, RecipeOptions, run};

#[derive(clap::Args, Debug)]
pub struct TrainShapesArgs {
    /// Output model folder.
    #[arg(long, default_value = "assets/shapes")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = RecipeOptions::default().ae_steps)]
    pub ae_steps: usize,
    #[arg(long, default_value_t = RecipeOptions::default().ar_steps)]
    pub ar_steps: usize,
    #[arg(long, default_value_t = RecipeOptions::default().ar_examples)]
    pub ar_examples: usize,
    #[arg(long, default_value_t = RecipeOptions::default().ae_batch)]
    pub ae_batch: usize,
    #[arg(long, default_value_t = RecipeOptions::default().ar_batch)]
    pub ar_batch: usize,
    #[arg(long, default_value_t = RecipeOptions::default().ae_lr)]
    pub ae_lr: f64,
    #[arg(long, default_value_t = RecipeOptions::default().ar_lr)]
    pub ar_lr: f64,
}

pub fn run_cmd(a: TrainShapesArgs, backend: &str) -> anyhow::Result<()> {
    if a.ae_steps == 0 || a.ar_steps == 0 || a.ar_examples == 0 || a.ae_batch == 0 || a.ar_batch == 0 {
        bail!("steps, examples and batch sizes must be at least 1");
    }
    let o = RecipeOptions {
        seed: a.seed,
        ae_steps: a.ae_steps,
        ae_batch: a.ae_batch,
        ae_lr: a.ae_lr,
        ar_steps: a.ar_steps,
        ar_batch: a.ar_batch,
        ar_lr: a.ar_lr,
        ar_examples: a.ar_examples,
        ..Default::default()
    };
    let dev = super::device(backend)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let mut events = |e: RecipeEvent| match e {
        RecipeEvent::Stage(s) => eprintln!("{s}"),
        RecipeEvent::Step { stage, step, total, loss, seconds } => {
            let eta = seconds / step as f64 * (total - step) as f64;
            eprintln!("{stage} {step}/{total} loss {loss:.5} ({seconds:.0} s, ETA {eta:.0} s)");
        }
    };
    let out = run(&o, &a.out, &dev.device, &mut events, &|| cancel.load(Ordering::SeqCst)).map_err(anyhow::Error::msg)?;
    println!("{}", out.display());
    Ok(())
}
