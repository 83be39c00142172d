//! `vgt reconstruct`: encode and decode images through VGT-AE, with metrics.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use vgt_model::image_io::{self, Rgb8};
use vgt_model::reconstruct::Reconstructor;
use vgt_model::weights::source;

#[derive(clap::Args, Debug)]
pub struct ReconstructArgs {
    /// Images (PNG, JPEG, WebP) or folders of images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// A `vgt convert` folder, or a folder with `vlm/`, `vgt_ae.pth` and `ar.pth` (the embedded
    /// shapes model when omitted).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Input size in pixels (a multiple of the model's stride); the model's native size by default.
    #[arg(long)]
    pub size: Option<usize>,
    /// Also report PSNR/SSIM under the reference evaluator's protocol (256 px, SSIM data range 2).
    #[arg(long)]
    pub reference_protocol: bool,
}

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, bool)> {
    let mut files = Vec::new();
    let mut any_folder = false;
    for p in paths {
        if p.is_dir() {
            any_folder = true;
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading the folder {}", p.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| vgt_model::fsutil::is_regular(f))
                .filter(|f| f.extension().is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no PNG, JPEG or WebP images in {}", p.display());
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok((files, any_folder))
}

pub fn run(a: ReconstructArgs, backend: &str) -> anyhow::Result<()> {
    let (files, folder) = collect_inputs(&a.images)?;
    let model_dir = vgt_app::embedded::or_default(a.model.clone())?;
    let model = source::open(&model_dir).with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let dev = super::device(backend)?;
    let rec = Reconstructor::new(&model, &dev.device).context("building the autoencoder")?;
    let stride = rec.ae.stride;
    let size = a.size.unwrap_or(rec.native_size());
    if size == 0 || size % stride != 0 {
        bail!("--size {size} is not a positive multiple of the model's stride {stride}");
    }
    let max = 64 * stride;
    if size > max {
        bail!("--size {size} exceeds the model's 64×64-latent limit ({max} px)");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = (files.len() > 1).then(|| {
        let b = ProgressBar::new(files.len() as u64);
        b.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        b
    });
    let mut rows = Vec::new();
    let mut failures = 0;
    let names = output_names(&files);
    for (file, name) in files.iter().zip(&names) {
        if let Some(b) = &bar {
            b.set_message(file.display().to_string());
        }
        match one(&rec, file, name, size, &a) {
            Ok(line) => {
                println!("{line}");
                rows.push(line);
            }
            Err(e) => {
                failures += 1;
                eprintln!("error: {}", vgt_app::errors::report(&e));
            }
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if folder || files.len() > 1 {
        write_csv(&a.out.join("summary.csv"), &rows)?;
    }
    if failures > 0 {
        bail!("{failures} of {} image(s) failed", files.len());
    }
    Ok(())
}

/// One output name per input, never the same twice: the file's stem (`photo`), its whole name
/// when another input has that stem (`photo.png`, `photo.jpg`), then a number (`photo.png-2` for
/// a second folder's `photo.png`).
pub(crate) fn output_names(files: &[PathBuf]) -> Vec<String> {
    let stem = |f: &PathBuf| f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let full = |f: &PathBuf| f.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let mut stems = std::collections::HashMap::<String, usize>::new();
    for f in files {
        *stems.entry(stem(f)).or_default() += 1;
    }
    let mut used = std::collections::HashSet::new();
    files
        .iter()
        .map(|f| {
            let base = if stems[&stem(f)] > 1 { full(f) } else { stem(f) };
            let mut name = base.clone();
            let mut n = 2;
            while !used.insert(name.clone()) {
                name = format!("{base}-{n}");
                n += 1;
            }
            name
        })
        .collect()
}

fn one(rec: &Reconstructor, file: &Path, stem: &str, size: usize, a: &ReconstructArgs) -> anyhow::Result<serde_json::Value> {
    let img = image_io::read(file)?;
    let input = image_io::center_square(&img, size as u32);
    let r = rec.reconstruct(&input, a.reference_protocol);
    let recon_path = a.out.join(format!("{stem}.recon.png"));
    r.output.save_png(&recon_path)?;
    let heat = image_io::error_heatmap(&r.input, &r.output, 0.25);
    let panel: Rgb8 = image_io::side_by_side(&[&r.input, &r.output, &heat]);
    let compare_path = a.out.join(format!("{stem}.compare.png"));
    if let Err(e) = panel.save_png(&compare_path) {
        // The two files of an image are written together or not at all.
        let _ = std::fs::remove_file(&recon_path);
        return Err(e.into());
    }
    let [_, c, h, w] = r.latent_shape;
    let pixels = (3 * size * size) as f64;
    Ok(serde_json::json!({
        "input": file.display().to_string(),
        "reconstruction": recon_path.display().to_string(),
        "comparison": compare_path.display().to_string(),
        "size": size,
        "psnr": r.metrics.psnr,
        "ssim": r.metrics.ssim,
        "reference_psnr": r.metrics.reference_psnr,
        "reference_ssim": r.metrics.reference_ssim,
        "latent_shape": [c, h, w],
        "compression_ratio": pixels / (c * h * w) as f64,
    }))
}

fn write_csv(path: &Path, rows: &[serde_json::Value]) -> anyhow::Result<()> {
    vgt_model::fsutil::write_atomic(path, |f| {
        writeln!(f, "input,psnr,ssim,reference_psnr,reference_ssim,latent_c,latent_h,latent_w,compression_ratio")?;
        for r in rows {
            let opt = |k: &str| r[k].as_f64().map(|v| format!("{v:.4}")).unwrap_or_default();
            let ls = &r["latent_shape"];
            writeln!(
                f,
                "\"{}\",{},{},{},{},{},{},{},{}",
                r["input"].as_str().unwrap_or("").replace('"', "\"\""),
                opt("psnr"),
                opt("ssim"),
                opt("reference_psnr"),
                opt("reference_ssim"),
                ls[0],
                ls[1],
                ls[2],
                opt("compression_ratio")
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_unique_per_input() {
        let files: Vec<PathBuf> = ["a/photo.png", "a/photo.jpg", "b/photo.png", "a/other.webp"].iter().map(PathBuf::from).collect();
        assert_eq!(output_names(&files), vec!["photo.png", "photo.jpg", "photo.png-2", "other"]);
    }
}
