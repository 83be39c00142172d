//! Scoring generated images of the shapes world (`vgt bench shapes`): prompts are generated in
//! batches, each image is read by the detector and checked against its prompt.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::detect::{RelationOutcome, detect, relation_outcome, satisfies};
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

/// How the position prompts' relations came out (`vgt bench shapes`): of the prompts whose two
/// objects were drawn right, how many have the relation right, the two on one row or column, or
/// the opposite relation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelationCounts {
    pub position_prompts: usize,
    pub objects_right: usize,
    pub relation_right: usize,
    pub same_row_or_column: usize,
    pub inverted: usize,
}

/// [`RelationCounts`] of the images of `specs`.
pub fn relation_counts(specs: &[Spec], images: &[Rgb8]) -> RelationCounts {
    let mut c = RelationCounts::default();
    for (s, img) in specs.iter().zip(images).filter(|(s, _)| s.relation.is_some()) {
        c.position_prompts += 1;
        let Some(o) = relation_outcome(&detect(img), s) else { continue };
        c.objects_right += 1;
        match o {
            RelationOutcome::Right => c.relation_right += 1,
            RelationOutcome::SameLine => c.same_row_or_column += 1,
            RelationOutcome::Inverted => c.inverted += 1,
        }
    }
    c
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

/// How far apart the AE's latents of different objects lie: a generator samples latents with
/// some error, so objects that differ in one attribute need latents further apart than that
/// error to come out right.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatentGeometry {
    /// Root mean square latent norm of an object cell (the scale of the distances below).
    pub object_norm: f64,
    /// Mean distance between object types that differ only in colour / only in shape / only
    /// in size.
    pub colour_only: f64,
    pub shape_only: f64,
    pub size_only: f64,
    /// The smallest distance between two different object types, and the mean over types of
    /// the distance to the nearest other type.
    pub min_pair: f64,
    pub mean_nearest: f64,
    /// Mean distance of an object cell's latent from the empty cell's.
    pub to_background: f64,
    /// The five closest pairs of object types, e.g. `small green triangle ~ small blue triangle`.
    pub closest: Vec<(String, f64)>,
}

/// Encodes each training object type (shape × colour × size) alone in one cell and measures
/// the distances between their latents at that cell (`None` for an AE whose latent grid is not
/// the world's).
pub fn latent_geometry(ae: &crate::ae::VgtAe, device: &burn::tensor::Device) -> Option<LatentGeometry> {
    use super::{CELL, Color, GRID, Object, Scene, Shape, Size};
    let (col, row) = (1usize, 2usize);
    let centre = |i: usize| (i * CELL) as f32 + CELL as f32 / 2.0;
    let mut kinds = Vec::new();
    for shape in Shape::TRAIN {
        for color in Color::ALL {
            for size in [Size::Small, Size::Large] {
                kinds.push((shape, color, size));
            }
        }
    }
    let mut scenes: Vec<Scene> = kinds.iter().map(|&(shape, color, size)| Scene { objects: vec![Object { shape, color, size, cx: centre(col), cy: centre(row) }] }).collect();
    scenes.push(Scene::default());
    let n = scenes.len();
    let pixels: Vec<f32> = scenes.iter().flat_map(|s| render(s).to_chw_signed()).collect();
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, SIZE, SIZE]), device);
    let z = ae.encode(x, InputNorm::Always);
    let [_, c, h, w] = z.dims();
    if (h, w) != (GRID, GRID) {
        return None;
    }
    let values = z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let cell: Vec<Vec<f32>> = (0..n).map(|i| (0..c).map(|k| values[((i * c + k) * h + row) * w + col]).collect()).collect();
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (objects, background) = cell.split_at(n - 1);
    let (mut colour, mut shape, mut size, mut nearest, mut pairs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let name = |k: &(Shape, Color, Size)| format!("{} {} {}", k.2.name(), k.1.name(), k.0.name());
    for (i, a) in kinds.iter().enumerate() {
        let mut best = f64::INFINITY;
        for (j, b) in kinds.iter().enumerate() {
            if i == j {
                continue;
            }
            let d = dist(&objects[i], &objects[j]);
            best = best.min(d);
            if j > i {
                pairs.push((format!("{} ~ {}", name(a), name(b)), d));
                match ((a.0 == b.0), (a.1 == b.1), (a.2 == b.2)) {
                    (true, false, true) => colour.push(d),
                    (false, true, true) => shape.push(d),
                    (true, true, false) => size.push(d),
                    _ => {}
                }
            }
        }
        nearest.push(best);
    }
    pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
    pairs.truncate(5);
    let norms: Vec<f64> = objects.iter().map(|o| o.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()).collect();
    Some(LatentGeometry {
        object_norm: mean(&norms).sqrt(),
        colour_only: mean(&colour),
        shape_only: mean(&shape),
        size_only: mean(&size),
        min_pair: nearest.iter().copied().fold(f64::INFINITY, f64::min),
        mean_nearest: mean(&nearest),
        to_background: mean(&objects.iter().map(|o| dist(o, &background[0])).collect::<Vec<_>>()),
        closest: pairs,
    })
}
