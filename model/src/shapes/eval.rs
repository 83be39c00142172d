//! Scoring generated images of the shapes world (`vgt bench shapes`): prompts are generated in
//! batches, each image is read by the detector and checked against its prompt.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::detect::{detect, satisfies};
use super::prompts::{Category, Spec, scene_for};
use super::{SIZE, render};
use crate::ae::InputNorm;
use crate::generate::{GenerateOptions, Hooks, Rows, generate};
use crate::image_io::Rgb8;
use crate::metrics::{psnr, ssim};
use crate::prompt::build_batch;
use crate::rng::Seeded;
use crate::text2image::{TextToImage, pictures};

/// Accuracy per category and overall.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Scores {
    pub per_category: BTreeMap<String, f64>,
    pub overall: f64,
    pub images: usize,
}

fn category_name(c: Category) -> String {
    serde_json::to_value(c).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Scores `ok[i]` (one per spec) by category; `overall` is the mean over categories.
pub fn score(specs: &[Spec], ok: &[bool], label: &dyn Fn(&Spec) -> String) -> Scores {
    let mut sums: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (s, &k) in specs.iter().zip(ok) {
        let e = sums.entry(label(s)).or_default();
        e.0 += usize::from(k);
        e.1 += 1;
    }
    let per_category: BTreeMap<String, f64> = sums.into_iter().map(|(k, (a, n))| (k, a as f64 / n as f64)).collect();
    let overall = per_category.values().sum::<f64>() / per_category.len().max(1) as f64;
    Scores { per_category, overall, images: specs.len() }
}

/// The default label: the spec's category.
pub fn by_category(s: &Spec) -> String {
    category_name(s.category)
}

/// Generates one image per spec (seed `seed + i`), `chunk` prompts per batch; returns the images.
pub fn generate_all(t2i: &TextToImage, specs: &[Spec], opts: &GenerateOptions, seed: u64, chunk: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<Rgb8>, String> {
    let mut out = Vec::with_capacity(specs.len());
    for (c, group) in specs.chunks(chunk.max(1)).enumerate() {
        progress(out.len(), specs.len());
        let prompts: Vec<&str> = group.iter().map(|s| s.prompt.as_str()).collect();
        let batch = build_batch(&t2i.tokenizer, &prompts, None, 1, opts.cfg > 1.0, t2i.tokens.pad).map_err(|e| e.to_string())?;
        let rows = Rows { ids: &batch.ids, mask: &batch.mask, img_start: t2i.tokens.img_start };
        let mut rng = Seeded::new(seed.wrapping_add(c as u64 * 1_000_003));
        let mut go = |_: usize, _: usize| true;
        let images = generate(&t2i.model, rows, opts, &mut rng, Hooks::progress(&mut go)).map_err(|e| e.to_string())?;
        out.extend(pictures(images));
    }
    progress(specs.len(), specs.len());
    Ok(out)
}

/// Whether each image satisfies its spec.
pub fn check(specs: &[Spec], images: &[Rgb8]) -> Vec<bool> {
    specs.iter().zip(images).map(|(s, img)| satisfies(&detect(img), s)).collect()
}

/// The detector on ground-truth renders of the specs (it must score them ≥ 0.98).
pub fn detector_on_ground_truth(specs: &[Spec], seed: u64) -> f64 {
    let mut rng = Seeded::new(seed);
    let ok = specs.iter().filter(|s| scene_for(&mut rng, s).is_some_and(|scene| satisfies(&detect(&render(&scene)), s))).count();
    ok as f64 / specs.len().max(1) as f64
}

/// Mean PSNR (dB) and SSIM of the AE on `n` held-out rendered scenes (all shapes, its own seed).
pub fn reconstruction(ae: &crate::ae::VgtAe, n: usize, seed: u64, device: &burn::tensor::Device) -> (f64, f64) {
    let mut rng = Seeded::new(seed);
    let (mut p, mut s) = (0.0, 0.0);
    for _ in 0..n {
        let (scene, _) = super::prompts::training_example(&mut rng, &super::Shape::ALL);
        let img = render(&scene);
        let x = Tensor::<4>::from_data(TensorData::new(img.to_chw_signed(), [1, 3, SIZE, SIZE]), device);
        let out = pictures(ae.decode(ae.encode(x, InputNorm::Always))).remove(0);
        let unit = |r: &Rgb8| -> Vec<f32> {
            let n = SIZE * SIZE;
            let mut v = vec![0f32; 3 * n];
            for i in 0..n {
                for c in 0..3 {
                    v[c * n + i] = r.pixels[i * 3 + c] as f32 / 255.0;
                }
            }
            v
        };
        let (a, b) = (unit(&out), unit(&img));
        p += psnr(&a, &b, 1.0);
        s += ssim(&a, &b, 3, SIZE, SIZE, 1.0);
    }
    (p / n.max(1) as f64, s / n.max(1) as f64)
}
