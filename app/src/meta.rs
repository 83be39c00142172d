//! What a generated PNG records about itself (shared by `vgt generate` and the app), reading it
//! back, and small picture helpers.

use std::path::{Path, PathBuf};

use vgt_model::generate::GenerateOptions;
use vgt_model::image_io::Rgb8;
use vgt_model::scheduler::{CfgSchedule, Order};
use vgt_model::text2image::Request;

/// Where and how an image was made (besides the request).
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub model: String,
    pub backend: String,
    pub adapter: String,
    pub loras: Vec<(PathBuf, f64)>,
    pub f16_weights: bool,
}

/// The settings a PNG carries in its `vgt` text chunk.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageSettings {
    pub prompt: String,
    pub negative: Option<String>,
    pub seed: u64,
    pub options: GenerateOptions,
    pub images: usize,
    /// This image's index in its batch (`--image-index`): with `seed`, it makes this image
    /// again alone.
    #[serde(default)]
    pub image: usize,
    pub model: String,
    #[serde(default)]
    pub loras: Vec<LoraUse>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraUse {
    pub path: String,
    pub weight: f64,
}

fn order_name(o: Order) -> &'static str {
    if o == Order::Sequential { "sequential" } else { "random" }
}

fn schedule_name(s: CfgSchedule) -> &'static str {
    if s == CfgSchedule::Constant { "constant" } else { "linear" }
}

/// The A1111-style `parameters` text and the JSON of every setting of image `image` (its index
/// in the batch). Nothing time-dependent, so the same run gives the same bytes.
pub fn png_text(req: &Request, info: &RunInfo, image: usize) -> (String, String) {
    let o = &req.options;
    let parameters = format!(
        "{}\n{}Steps: {}, Sampler: SDE (Euler-Maruyama), CFG scale: {}, Seed: {}, Image: {image}, Size: {}x{}, Acc ratio: {}, Order: {}, CFG schedule: {}, Model: {}",
        req.prompt.trim(),
        req.negative.as_deref().map(|n| format!("Negative prompt: {n}\n")).unwrap_or_default(),
        o.num_steps,
        o.cfg,
        req.seed,
        o.width,
        o.height,
        o.acc_ratio,
        order_name(o.order),
        schedule_name(o.cfg_schedule),
        info.model
    ) + &info.loras.iter().map(|(p, w)| format!(", Lora: {}:{w}", p.display())).collect::<String>();
    let settings = serde_json::json!({
        "prompt": req.prompt.trim(),
        "negative": req.negative,
        "seed": req.seed,
        "options": o,
        "images": req.images,
        "image": image,
        "model": info.model,
        "backend": info.backend,
        "adapter": info.adapter,
        "f16_weights": info.f16_weights,
        "loras": info.loras.iter().map(|(p, w)| serde_json::json!({"path": p.display().to_string(), "weight": w})).collect::<Vec<_>>(),
        "vgt_studio": env!("CARGO_PKG_VERSION"),
    });
    (parameters, serde_json::to_string(&settings).unwrap_or_default())
}

/// The settings stored in a PNG written by `vgt generate` or the app; `None` for any other file.
pub fn read_settings(path: &Path) -> Option<ImageSettings> {
    let text = vgt_model::image_io::png_text(path).ok()?;
    let json = text.into_iter().find(|(k, _)| k == "vgt")?.1;
    serde_json::from_str(&json).ok()
}

/// `DIR/SEED-I.png`, or `DIR/SEED-I-N.png` with the first N that does not exist yet.
pub fn free_name(dir: &Path, seed: u64, i: usize) -> PathBuf {
    let first = dir.join(format!("{seed}-{i}.png"));
    if !first.exists() {
        return first;
    }
    (1..).map(|n| dir.join(format!("{seed}-{i}-{n}.png"))).find(|p| !p.exists()).unwrap_or(first)
}

/// The first three principal components of a `[1, C, h, w]` latent over its cells, as an
/// `w × h` RGB picture (each component scaled to its own range).
pub fn latent_pca(values: &[f32], shape: [usize; 4]) -> Rgb8 {
    let [_, c, h, w] = shape;
    let n = h * w;
    if c == 0 || n == 0 || values.len() < c * n {
        return Rgb8 { width: w.max(1) as u32, height: h.max(1) as u32, pixels: vec![0; 3 * w.max(1) * h.max(1)] };
    }
    let mean: Vec<f64> = (0..c).map(|k| values[k * n..(k + 1) * n].iter().map(|&x| x as f64).sum::<f64>() / n as f64).collect();
    let x = |k: usize, i: usize| values[k * n + i] as f64 - mean[k];
    let mut cov = vec![0f64; c * c];
    for a in 0..c {
        for b in a..c {
            let v = (0..n).map(|i| x(a, i) * x(b, i)).sum::<f64>() / n as f64;
            cov[a * c + b] = v;
            cov[b * c + a] = v;
        }
    }
    // Power iteration with deflation for the top three eigenvectors.
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for j in 0..3.min(c) {
        let mut v: Vec<f64> = (0..c).map(|k| if k == j { 1.0 } else { 0.1 }).collect();
        for _ in 0..100 {
            let mut next: Vec<f64> = (0..c).map(|a| (0..c).map(|b| cov[a * c + b] * v[b]).sum()).collect();
            for p in &comps {
                let d: f64 = next.iter().zip(p).map(|(a, b)| a * b).sum();
                next.iter_mut().zip(p).for_each(|(a, b)| *a -= d * b);
            }
            let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            v = next.into_iter().map(|a| a / norm).collect();
        }
        comps.push(v);
    }
    let mut pixels = vec![0u8; 3 * n];
    for (j, p) in comps.iter().enumerate() {
        let proj: Vec<f64> = (0..n).map(|i| (0..c).map(|k| x(k, i) * p[k]).sum()).collect();
        let (lo, hi) = proj.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        for i in 0..n {
            pixels[i * 3 + j] = if hi > lo { ((proj[i] - lo) / (hi - lo) * 255.0) as u8 } else { 128 };
        }
    }
    Rgb8 { width: w as u32, height: h as u32, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_of_a_latent_with_one_varying_channel_is_a_ramp_in_red() {
        // C = 2, 1×3 cells: channel 0 = [−1, 0, 1], channel 1 constant → PC1 along channel 0.
        let img = latent_pca(&[-1.0, 0.0, 1.0, 5.0, 5.0, 5.0], [1, 2, 1, 3]);
        let red: Vec<u8> = img.pixels.chunks(3).map(|p| p[0]).collect();
        assert!(red == vec![0, 127, 255] || red == vec![255, 127, 0], "{red:?}");
    }

    #[test]
    fn free_names_never_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let a = free_name(tmp.path(), 7, 0);
        assert_eq!(a.file_name().unwrap(), "7-0.png");
        std::fs::write(&a, b"x").unwrap();
        assert_eq!(free_name(tmp.path(), 7, 0).file_name().unwrap(), "7-0-1.png");
    }
}
