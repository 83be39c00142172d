//! `vgt bench shapes`: generation quality of a shapes-world model, scored by the world's
//! detector (GenEval-style categories), the AE's reconstruction on held-out scenes, and the
//! acc-ratio × CFG table.

use std::path::PathBuf;

use anyhow::Context;
use vgt_model::generate::GenerateOptions;
use vgt_model::scheduler::{CfgSchedule, Order};
use vgt_model::shapes::Shape;
use vgt_model::shapes::eval::{by_category, check, check_found, detector_on_ground_truth, generate_all, latent_geometry, reconstruction, reconstructions, relation_counts, relation_reading, score};
use vgt_model::image_io::Rgb8;
use vgt_model::shapes::detect::{detect, satisfies};
use vgt_model::shapes::prompts::{Spec, eval_specs};
use vgt_model::text2image::TextToImage;
use vgt_model::train::lora::{Adapter, parse_lora_arg};
use vgt_model::weights::source;

pub struct ShapesBench {
    pub model: Option<PathBuf>,
    pub per_category: usize,
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub loras: Vec<String>,
    pub held_out: Option<String>,
    pub sweep: bool,
    /// CFG at full strength for every token group (the default ramps it up linearly).
    pub constant_cfg: bool,
    /// Generate the tokens in raster order (`Some(true)`) or a random order per image
    /// (`Some(false)`); `None`: the order the model was trained in.
    pub sequential: Option<bool>,
    /// Folder for the default-settings images and per-prompt results.
    pub dump: Option<PathBuf>,
}

/// Writes `{prefix}-{i:03}.png` per image and the prompts' detections and verdicts to
/// `{prefix}-results.json`.
fn dump(dir: &std::path::Path, prefix: &str, specs: &[Spec], images: &[Rgb8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rows = Vec::with_capacity(specs.len());
    for (i, (spec, img)) in specs.iter().zip(images).enumerate() {
        let file = format!("{prefix}-{i:03}.png");
        img.save_png(&dir.join(&file)).with_context(|| format!("writing {file}"))?;
        let dets = detect(img);
        rows.push(serde_json::json!({"image": file, "category": spec.category, "prompt": spec.prompt, "ok": satisfies(&dets, spec), "detections": dets}));
    }
    let path = dir.join(format!("{prefix}-results.json"));
    vgt_model::fsutil::write_bytes_atomic(&path, serde_json::to_string_pretty(&rows)?.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn run(b: ShapesBench, backend: &str) -> anyhow::Result<()> {
    let model_dir = match &b.model {
        Some(p) => p.clone(),
        None => vgt_app::embedded::path()?,
    };
    let mut loaded = source::open(&model_dir).with_context(|| format!("loading {}", model_dir.display()))?;
    for s in &b.loras {
        let (path, w) = parse_lora_arg(s).map_err(anyhow::Error::msg)?;
        Adapter::load(&path).and_then(|a| a.merge_into(&mut loaded.tensors, w)).with_context(|| format!("applying {}", path.display()))?;
    }
    let dev = super::device(backend)?;
    let t2i = TextToImage::new(&loaded, &dev.device).context("building the generator")?;
    let size = loaded.config.stride() * loaded.config.amq_max_grid;
    let specs = eval_specs(b.seed ^ 0x5eed, b.per_category, &Shape::TRAIN);
    let cfg_schedule = if b.constant_cfg { CfgSchedule::Constant } else { CfgSchedule::Linear };
    if !(b.cfg.is_finite() && b.cfg >= 1.0) {
        anyhow::bail!("--cfg must be at least 1 (got {})", b.cfg);
    }
    let base = GenerateOptions { height: size, width: size, num_steps: b.steps, cfg: b.cfg, cfg_schedule, order: match b.sequential {
        Some(true) => Order::Sequential,
        Some(false) => Order::Random,
        None => loaded.config.order,
    }, ..Default::default() };
    let mut progress = |done: usize, total: usize| eprint!("\r  {done}/{total} images");
    let run_one = |opts: &GenerateOptions, specs: &[Spec], progress: &mut dyn FnMut(usize, usize), prefix: Option<&str>| -> anyhow::Result<_> {
        let t = std::time::Instant::now();
        let images = generate_all(&t2i, specs, opts, b.seed, 30, progress).map_err(anyhow::Error::msg)?;
        eprintln!();
        let found: Vec<_> = images.iter().map(detect).collect();
        let s = score(specs, &check_found(specs, &found), &by_category);
        let relations = relation_counts(specs, &found);
        let secs = t.elapsed().as_secs_f64();
        if let (Some(dir), Some(prefix)) = (&b.dump, prefix) {
            dump(dir, prefix, specs, &images)?;
        }
        Ok((s, relations, secs))
    };
    eprintln!("default settings (CFG {} {:?}, {} steps, acc-ratio {}):", base.cfg, base.cfg_schedule, base.num_steps, base.acc_ratio);
    let (default, relations, secs) = run_one(&base, &specs, &mut progress, Some("default"))?;
    let mut sweep = Vec::new();
    if b.sweep {
        for acc in [1usize, 4, 16] {
            for cfg in [1.0f64, 4.5] {
                let opts = GenerateOptions { acc_ratio: acc, cfg, ..base };
                let (s, _, secs) = if opts == base {
                    (default.clone(), relations, secs)
                } else {
                    eprintln!("acc-ratio {acc}, CFG {cfg}:");
                    run_one(&opts, &specs, &mut progress, None)?
                };
                sweep.push(serde_json::json!({"acc_ratio": acc, "cfg": cfg, "overall": s.overall, "per_category": s.per_category, "seconds": secs}));
            }
        }
    }
    let mut held_out = match &b.held_out {
        Some(name) => {
            let shape = Shape::ALL.into_iter().find(|s| s.name() == name).with_context(|| format!("unknown shape `{name}`"))?;
            let specs = eval_specs(b.seed ^ 0x4e1d, b.per_category, &[shape]);
            eprintln!("prompts with {name}:");
            let (s, relations, _) = run_one(&base, &specs, &mut progress, Some(name.as_str()))?;
            let json = serde_json::json!({"shape": name, "overall": s.overall, "per_category": s.per_category, "position_relations": relations, "detector_on_ground_truth": detector_on_ground_truth(&specs, b.seed ^ 0x97)});
            Some((specs, json))
        }
        None => None,
    };
    let (psnr, ssim, geometry, reading, on_reconstructions) = {
        let (ae, _) = vgt_model::weights::apply::apply_component(
            vgt_model::ae::VgtAe::new(&loaded.config, &dev.device),
            &loaded.tensors,
            loaded.config.decoder.block_out_channels.len(),
            "vgt_ae.",
        )?;
        let (psnr, ssim) = reconstruction(&ae, 100, b.seed ^ 0xae7, &dev.device);
        let reading = relation_reading(&t2i.model, &ae, &t2i.tokenizer, &t2i.tokens.img_start, loaded.config.order, 400, b.seed ^ 0x4e1a).map_err(anyhow::Error::msg)?;
        // The ground-truth renders `detector_on_ground_truth` scores, through the AE, scored
        // (and dumped under `prefix`) like generations.
        let on_reconstructions = |specs: &[Spec], prefix: &str| -> anyhow::Result<serde_json::Value> {
            let images = reconstructions(&ae, specs, b.seed ^ 0x97, &dev.device);
            if let Some(dir) = &b.dump {
                dump(dir, prefix, specs, &images)?;
            }
            let s = score(specs, &check(specs, &images), &by_category);
            Ok(serde_json::json!({"overall": s.overall, "per_category": s.per_category}))
        };
        let main = on_reconstructions(&specs, "reconstruction")?;
        // The same for the held-out shape's prompts.
        if let Some((specs, json)) = &mut held_out {
            let prefix = format!("reconstruction-{}", json["shape"].as_str().unwrap_or("held-out"));
            json["detector_on_reconstructions"] = on_reconstructions(specs, &prefix)?;
        }
        let on_reconstructions = main;
        (psnr, ssim, latent_geometry(&ae, &dev.device), reading, on_reconstructions)
    };
    let out = serde_json::json!({
        "benchmark": "shapes",
        "model": model_dir.display().to_string(),
        "loras": b.loras,
        "backend": dev.kind.name(),
        "prompts_per_category": b.per_category,
        "detector_on_ground_truth": detector_on_ground_truth(&specs, b.seed ^ 0x97),
        "detector_on_reconstructions": on_reconstructions,
        "default": {"cfg": base.cfg, "cfg_schedule": format!("{:?}", base.cfg_schedule).to_lowercase(), "steps": base.num_steps, "acc_ratio": base.acc_ratio, "overall": default.overall, "per_category": default.per_category, "position_relations": relations, "seconds": secs},
        "sweep": sweep,
        "held_out": held_out.map(|(_, json)| json),
        "reconstruction": {"images": 100, "psnr_db": psnr, "ssim": ssim},
        "latent_geometry": geometry,
        "relation_reading": reading,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
