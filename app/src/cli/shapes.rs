//! `vgt train-shapes`: trains the embedded shapes model from scratch (deterministic from the
//! seed); `assets/shapes` is its output with the default settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use vgt_model::shapes::prompts::Listing;
use vgt_model::shapes::recipe::{Progress, RecipeEvent, RecipeOptions, run};

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
    /// Steps of the last stage: the decoder fine-tuned with the encoder frozen
    #[arg(long, default_value_t = RecipeOptions::default().decoder_steps)]
    pub decoder_steps: usize,
    #[arg(long, default_value_t = RecipeOptions::default().decoder_lr)]
    pub decoder_lr: f64,
    /// Largest latent noise scale in the autoencoder stage (noise scale drawn from U(0, this))
    #[arg(long, default_value_t = RecipeOptions::default().ae_noise)]
    pub ae_noise: f64,
    /// Weight of the autoencoder stage's distillation loss (each cell's latent towards a fixed
    /// prototype of its content)
    #[arg(long, default_value_t = RecipeOptions::default().ae_distill)]
    pub ae_distill: f64,
    /// Largest latent noise scale in the decoder stage (noise scale drawn from U(0, this)).
    #[arg(long, default_value_t = RecipeOptions::default().decoder_noise)]
    pub decoder_noise: f64,
    /// Flow-head samples per latent token and generator step (independent t and noise for one
    /// LLM pass)
    #[arg(long, default_value_t = RecipeOptions::default().head_repeats)]
    pub head_repeats: usize,
    /// Momentum of the generator's weight average (`ema ← ema + m·(θ − ema)`); the model keeps
    /// the average. 0: no average, the final weights
    #[arg(long, default_value_t = RecipeOptions::default().ar_ema)]
    pub ar_ema: f64,
    /// Generator step from which the weight average runs
    #[arg(long, default_value_t = RecipeOptions::default().ar_ema_from)]
    pub ar_ema_from: usize,
    /// Steps of the LLM stage before the generator's: the LLM alone learns to answer questions
    /// about captions (which colour goes with which shape, which object a relation puts where).
    /// 0: no such stage
    #[arg(long, default_value_t = RecipeOptions::default().llm_steps)]
    pub llm_steps: usize,
    /// Weight of the generator stage's cell loss: a classifier trained alongside (and dropped)
    /// reads each object cell's shape, colour and size from the flow head's condition, and its
    /// cross-entropy joins the flow loss. 0: no such loss
    #[arg(long, default_value_t = RecipeOptions::default().ar_cell_loss)]
    pub ar_cell_loss: f64,
    /// Weight of the same classifier's cross-entropy over the empty cells: whether a cell stays
    /// empty given the prompt and the cells drawn before it (where a relation or a count puts
    /// the objects). 0: object cells only
    #[arg(long, default_value_t = RecipeOptions::default().ar_empty_loss)]
    pub ar_empty_loss: f64,
    /// Standard deviation of the position grid's initialisation (what a drawn token carries of
    /// its cell); the spec's 0.02 by default
    #[arg(long, default_value_t = RecipeOptions::default().pos_std)]
    pub pos_std: f64,
    /// Weight of the same classifier's cross-entropy over every cell of the captions that state a
    /// relation ("A above B"): which object goes where. 0: no such loss
    #[arg(long, default_value_t = RecipeOptions::default().ar_relation_loss)]
    pub ar_relation_loss: f64,
    /// The order the generator stage draws the latent tokens in (sequential: row by row, the
    /// shipped model's; random: VGT's); the model's config records it and generation defaults to it
    #[arg(long, default_value = "sequential", value_parser = ["random", "sequential"])]
    pub ar_order: String,
    /// The order in which the training captions that list objects ("A and B", "A, B and C") name
    /// them: reading (row by row, as the generator draws in raster order; the shipped model's) or
    /// any (the random order the scene placed them in)
    #[arg(long, default_value = "reading", value_parser = ["reading", "any"])]
    pub listing: String,
    /// Start both position grids as 2-D sine-cosine codes of the cell's row and column instead of
    /// random vectors
    #[arg(long)]
    pub sincos_grids: bool,
    /// Train the model to read every prompt twice (`PROMPT. PROMPT`, so that each word of the
    /// second copy comes after the whole prompt); its config says so and generation does the same
    #[arg(long)]
    pub prompt_echo: bool,
    /// Continue the interrupted run of the same settings from `OUT.work/` (the trained
    /// autoencoder and the last generator checkpoint)
    #[arg(long)]
    pub resume: bool,
    /// Generator steps between checkpoints (0: only on Ctrl-C)
    #[arg(long, default_value_t = Progress::default().checkpoint_every)]
    pub checkpoint_every: usize,
}

pub fn run_cmd(a: TrainShapesArgs, backend: &str) -> anyhow::Result<()> {
    if a.ae_steps == 0 || a.ar_steps == 0 || a.ar_examples == 0 || a.ae_batch == 0 || a.ar_batch == 0 || a.head_repeats == 0 {
        bail!("steps, examples, batch sizes and head repeats must be at least 1");
    }
    for (flag, v) in [("--ae-noise", a.ae_noise), ("--ae-distill", a.ae_distill), ("--decoder-noise", a.decoder_noise), ("--ar-cell-loss", a.ar_cell_loss), ("--ar-empty-loss", a.ar_empty_loss), ("--pos-std", a.pos_std), ("--ar-relation-loss", a.ar_relation_loss)] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} must be a non-negative number (got {v})");
        }
    }
    if !(0.0..=1.0).contains(&a.ar_ema) {
        bail!("--ar-ema must be in [0, 1] (got {})", a.ar_ema);
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
        decoder_steps: a.decoder_steps,
        decoder_lr: a.decoder_lr,
        decoder_noise: a.decoder_noise,
        ae_noise: a.ae_noise,
        ae_distill: a.ae_distill,
        head_repeats: a.head_repeats,
        ar_ema: a.ar_ema,
        ar_ema_from: a.ar_ema_from,
        llm_steps: a.llm_steps,
        ar_cell_loss: a.ar_cell_loss,
        ar_empty_loss: a.ar_empty_loss,
        pos_std: a.pos_std,
        prompt_echo: a.prompt_echo,
        ar_relation_loss: a.ar_relation_loss,
        sincos_grids: a.sincos_grids,
        ar_order: if a.ar_order == "sequential" { vgt_model::scheduler::Order::Sequential } else { vgt_model::scheduler::Order::Random },
        listing: listing(&a.listing),
        ..Default::default()
    };
    let dev = super::device(backend)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let mut events = |e: RecipeEvent| match e {
        RecipeEvent::Stage(s) => eprintln!("{s}"),
        RecipeEvent::Step { stage, step, from, total, loss, seconds } => {
            let eta = seconds / (step - from).max(1) as f64 * (total - step) as f64;
            eprintln!("{stage} {step}/{total} loss {loss:.5} ({seconds:.0} s, ETA {eta:.0} s)");
        }
    };
    let p = Progress { resume: a.resume, checkpoint_every: a.checkpoint_every };
    let out = run(&o, &p, &a.out, &dev.device, &mut events, &|| cancel.load(Ordering::SeqCst)).map_err(anyhow::Error::msg)?;
    println!("{}", out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RenderShapesArgs {
    /// Output folder (PNG images with same-name .txt captions).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub count: usize,
    /// Shapes to draw (comma-separated; e.g. `star` for a LoRA set of a held-out shape).
    #[arg(long, value_delimiter = ',', default_value = "circle,square,triangle")]
    pub shapes: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The order in which captions that list objects ("A and B") name them: reading (row by row,
    /// as the shipped model was trained) or any
    #[arg(long, default_value = "reading", value_parser = ["reading", "any"])]
    pub listing: String,
    /// Only scenes that hold at least one of this shape (one of `--shapes`): e.g. `--shapes
    /// star,circle,square,triangle --featuring star` for a LoRA set in which the new shape also
    /// appears next to the known ones
    #[arg(long)]
    pub featuring: Option<String>,
}

fn listing(name: &str) -> Listing {
    if name == "reading" { Listing::Reading } else { Listing::Any }
}

/// `vgt render-shapes`: a captioned image folder from the shapes world (tuning data).
pub fn render_cmd(a: RenderShapesArgs) -> anyhow::Result<()> {
    use vgt_model::shapes::{Shape, prompts::training_example, render};
    let shapes: Vec<Shape> = a
        .shapes
        .iter()
        .map(|n| Shape::ALL.into_iter().find(|s| s.name() == n.trim()).ok_or_else(|| anyhow::anyhow!("unknown shape `{n}` (circle, square, triangle, star, cross)")))
        .collect::<anyhow::Result<_>>()?;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let featuring = match &a.featuring {
        None => None,
        Some(n) => match shapes.iter().find(|s| s.name() == n.trim()) {
            Some(&s) => Some(s),
            None => bail!("--featuring `{n}` is not one of --shapes ({})", a.shapes.join(",")),
        },
    };
    std::fs::create_dir_all(&a.out)?;
    let mut rng = vgt_model::rng::Seeded::new(a.seed ^ 0x7e4d);
    for i in 0..a.count {
        // With --featuring, draw until a scene holds the shape (every kind of scene can).
        let (scene, caption) = loop {
            let (scene, caption) = training_example(&mut rng, &shapes, listing(&a.listing));
            if featuring.is_none_or(|f| scene.objects.iter().any(|o| o.shape == f)) {
                break (scene, caption);
            }
        };
        let png = a.out.join(format!("{i:04}.png"));
        render(&scene).save_png(&png)?;
        let txt = png.with_extension("txt");
        vgt_model::fsutil::write_bytes_atomic(&txt, caption.as_bytes()).with_context(|| format!("writing {}", txt.display()))?;
    }
    println!("{}", a.out.display());
    Ok(())
}
