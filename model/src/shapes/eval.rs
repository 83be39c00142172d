//! Scoring generated images of the shapes world (`vgt bench shapes`): prompts are generated in
//! batches, each image is read by the detector and checked against its prompt.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::detect::{Detection, RelationOutcome, detect, relation_outcome, satisfies};
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
        let rows = Rows { ids: &batch.ids, mask: &batch.mask, img_start: &t2i.tokens.img_start };
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
    check_found(specs, &images.iter().map(detect).collect::<Vec<_>>())
}

/// [`check`] on the detector's findings (one list per image).
pub fn check_found(specs: &[Spec], found: &[Vec<Detection>]) -> Vec<bool> {
    specs.iter().zip(found).map(|(s, d)| satisfies(d, s)).collect()
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

/// [`RelationCounts`] of the detector's findings on the images of `specs` (one list per image).
pub fn relation_counts(specs: &[Spec], found: &[Vec<Detection>]) -> RelationCounts {
    let mut c = RelationCounts::default();
    for (s, d) in specs.iter().zip(found).filter(|(s, _)| s.relation.is_some()) {
        c.position_prompts += 1;
        let Some(o) = relation_outcome(d, s) else { continue };
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

/// The AE's reconstructions of the same ground-truth renders as [`detector_on_ground_truth`]
/// scores (same seed, same scenes; a spec no scene satisfies gets the empty background). Scored
/// like generations, they give what a generator that sampled every latent exactly as the
/// encoder gives it would score through this decoder and detector.
pub fn reconstructions(ae: &crate::ae::VgtAe, specs: &[Spec], seed: u64, device: &burn::tensor::Device) -> Vec<Rgb8> {
    let mut rng = Seeded::new(seed);
    let scenes: Vec<_> = specs.iter().map(|s| scene_for(&mut rng, s).unwrap_or_default()).collect();
    let mut out = Vec::with_capacity(specs.len());
    for chunk in scenes.chunks(32) {
        let pixels: Vec<f32> = chunk.iter().flat_map(|scene| render(scene).to_chw_signed()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [chunk.len(), 3, SIZE, SIZE]), device);
        out.extend(pictures(ae.decode(ae.encode(x, InputNorm::Always))));
    }
    out
}

/// Mean PSNR (dB) and SSIM of the AE on `n` held-out rendered scenes (all shapes, its own seed).
pub fn reconstruction(ae: &crate::ae::VgtAe, n: usize, seed: u64, device: &burn::tensor::Device) -> (f64, f64) {
    let mut rng = Seeded::new(seed);
    let (mut p, mut s) = (0.0, 0.0);
    for _ in 0..n {
        let (scene, _) = super::prompts::training_example(&mut rng, &super::Shape::ALL, super::prompts::Listing::Any);
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

/// Whether the generator reads the relation of a two-object caption, measured teacher-forced
/// (no sampling noise): training-like scenes of two objects that differ in shape or colour go through the training
/// forward in a random order, and at the cell of the first of the two objects drawn, the flow
/// head's loss is compared for the object truly there and for the other one (the same `t` and
/// noise, [`RELATION_REPEATS`] draws summed). For "A above B" the first object's cell says
/// which of the two it is (a top-row object is A), so a reader of the relation prefers the
/// truth; for "A and B" listed in any order nothing does (chance). The second object against a
/// copy of the first checks the measurement itself: models trained on captions listed in any
/// order prefer the truth there 98-99 % of the time, the one trained on captions listed in
/// reading order ([`super::prompts::Listing`]) 88 %: all of it on the relation captions, 68 % on
/// the "A and B" ones, which list the objects here against the drawn order half the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RelationReading {
    /// Relation captions ("A above B"): scenes, and those where the true first object won.
    pub relation_scenes: usize,
    pub relation_right: usize,
    /// "A and B" captions (chance, 0.5): listed in any order here, whatever the model was
    /// trained on, so nothing says which object comes first.
    pub plain_scenes: usize,
    pub plain_right: usize,
    /// All scenes: the second object drawn against a copy of the first.
    pub second_right: usize,
    /// The same over the "A and B" scenes alone.
    pub second_right_plain: usize,
    /// The empty cells drawn after the first object and before the second: by how much the
    /// flow loss of the second object's latent exceeds the empty latent's (mean per draw), at
    /// the cells that share a side with the first object (no training scene has an object
    /// there) and at the others (the second object may be there). A generator that places by
    /// position has a far larger margin at the adjacent cells; one blind to position about the
    /// same at both.
    pub adjacent_cells: usize,
    pub adjacent_margin: f64,
    pub other_cells: usize,
    pub other_margin: f64,
    /// The best share any model can get right on relation captions, knowing the relation and
    /// the first object's cell (the middle rows leave it open): estimated from 20 000 captions.
    pub ceiling: f64,
}

/// Flow-head draws per object in [`relation_reading`].
pub const RELATION_REPEATS: usize = 32;

/// [`RelationReading`] of `model` on `scenes` scenes (seeded), their latents from `ae`, drawn in
/// `order` (the model's training order: in raster order the first object is the upper one, or
/// the left one on one row); `tok` formats the captions as the model reads them.
#[allow(clippy::too_many_arguments)]
pub fn relation_reading(model: &crate::ar::Vgt, ae: &crate::ae::VgtAe, tok: &crate::prompt::PromptTokenizer, img_start: &[u32], order: crate::scheduler::Order, scenes: usize, seed: u64) -> Result<RelationReading, String> {
    use super::prompts::{Listing, training_example};
    use super::{GRID, Shape};
    use crate::rng::RandomSource;
    use crate::train::{StepNoise, TIME_SHIFT, TrainBatch, shifted_time};
    let device = model.image_in_projector.weight.val().device();
    let mut rng = Seeded::new(seed);
    let mut out = RelationReading { ceiling: relation_ceiling(seed ^ 0xce11, order), ..Default::default() };
    let mut done = 0;
    // Margin sums: adjacent cells, other cells.
    let mut sums = [0f64; 2];
    while done < scenes {
        let k = 32.min(scenes - done);
        let (mut rows, mut pixels, mut pairs) = (Vec::with_capacity(k), Vec::new(), Vec::with_capacity(k));
        while rows.len() < k {
            let (scene, caption) = training_example(&mut rng, &Shape::TRAIN, Listing::Any);
            let [a, b] = scene.objects[..] else { continue };
            // Not counting scenes ("two red circles": the two differ at most in size).
            if a.shape == b.shape && a.color == b.color {
                continue;
            }
            rows.push(tok.encode(&tok.conditional(&caption)).map_err(|e| e.to_string())?);
            pixels.extend(render(&scene).to_chw_signed());
            pairs.push((super::prompts::Relation::stated(&caption).is_some(), a.cell(), b.cell()));
        }
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [k, 3, SIZE, SIZE]), &device);
        let z = ae.encode(x, InputNorm::Always);
        let [_, ch, h, w] = z.dims();
        let l = h * w;
        if l != GRID * GRID {
            return Err(format!("the model's latent grid is {h}×{w}, not the shapes world's {GRID}×{GRID}"));
        }
        let latents = z.clone().reshape([k, ch, l]).swap_dims(1, 2).into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let (ids, mask) = crate::prompt::right_pad(rows, 0);
        let noise = StepNoise::draw(&mut rng, k, l, ch).in_order(order);
        let cond = model.train_forward(&TrainBatch { ids: &ids, mask: &mask, img_start, latents: z }, &noise, TIME_SHIFT).cond;
        let rank = |c: usize| noise.order.iter().position(|&x| x == c).unwrap_or(l);
        // Per scene: (first cell, second cell) in drawing order.
        let drawn: Vec<(usize, usize)> = pairs.iter().map(|&(_, a, b)| if rank(a) < rank(b) { (a, b) } else { (b, a) }).collect();
        let token = |i: usize, c: usize| &latents[(i * l + c) * ch..(i * l + c + 1) * ch];
        let m = k * RELATION_REPEATS;
        // One set of `t` and noise per scene (rows i·R .. (i+1)·R).
        let eps = Tensor::<2>::from_data(TensorData::new(rng.normal(m, ch), [m, ch]), &device);
        let t = shifted_time(Tensor::<1>::from_data(TensorData::new(rng.normal(m, 1), [m]), &device), TIME_SHIFT);
        // Summed flow loss at each pick's cell `at` of scene `i` with the latent of cell `target`
        // as the target (the same `t` and noise for every pick of a scene).
        let losses = |picks: &[(usize, usize, usize)]| -> Result<Vec<f32>, String> {
            let m = picks.len() * RELATION_REPEATS;
            if m == 0 {
                return Ok(Vec::new());
            }
            let rows: Vec<i64> = picks.iter().flat_map(|&(i, at, _)| std::iter::repeat_n((i * l + at) as i64, RELATION_REPEATS)).collect();
            let noise_rows: Vec<i64> = picks.iter().flat_map(|&(i, _, _)| (0..RELATION_REPEATS).map(move |r| (i * RELATION_REPEATS + r) as i64)).collect();
            let values: Vec<f32> = picks.iter().flat_map(|&(i, _, target)| token(i, target).repeat(RELATION_REPEATS)).collect();
            let index = |v: Vec<i64>| Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(v, [m]), &device);
            let noise_rows = index(noise_rows);
            let c = cond.clone().select(0, index(rows));
            let (eps, t) = (eps.clone().select(0, noise_rows.clone()), t.clone().select(0, noise_rows));
            let target = Tensor::<2>::from_data(TensorData::new(values, [m, ch]), &device);
            let tc = t.clone().unsqueeze_dim::<2>(1);
            let xt = target.clone() * tc.clone() + eps.clone() * tc.neg().add_scalar(1.0);
            let v = model.image_head.net.forward(xt, t, c);
            let per = (v - (target - eps)).powi_scalar(2).mean_dim(1).into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
            Ok(per.chunks(RELATION_REPEATS).map(|r| r.iter().sum()).collect())
        };
        // Per pick: the other target's loss minus the truth's (> 0: the truth is preferred).
        let margin = |truth: &[(usize, usize, usize)], other: &[(usize, usize, usize)]| -> Result<Vec<f32>, String> {
            Ok(losses(truth)?.iter().zip(losses(other)?).map(|(a, b)| b - a).collect())
        };
        let prefer = |truth: &[(usize, usize, usize)], other: &[(usize, usize, usize)]| -> Result<Vec<bool>, String> { Ok(margin(truth, other)?.iter().map(|&d| d > 0.0).collect()) };
        let first: Vec<_> = (0..k).map(|i| (i, drawn[i].0, drawn[i].0)).collect();
        let first_other: Vec<_> = (0..k).map(|i| (i, drawn[i].0, drawn[i].1)).collect();
        let second: Vec<_> = (0..k).map(|i| (i, drawn[i].1, drawn[i].1)).collect();
        let second_copy: Vec<_> = (0..k).map(|i| (i, drawn[i].1, drawn[i].0)).collect();
        let first_right = prefer(&first, &first_other)?;
        let second_right = prefer(&second, &second_copy)?;
        for (i, &(relation, _, _)) in pairs.iter().enumerate() {
            let right = usize::from(first_right[i]);
            if relation {
                out.relation_scenes += 1;
                out.relation_right += right;
            } else {
                out.plain_scenes += 1;
                out.plain_right += right;
                out.second_right_plain += usize::from(second_right[i]);
            }
            out.second_right += usize::from(second_right[i]);
        }
        // The empty cells drawn between the two objects: the empty latent against the second
        // object's, split by whether the cell touches the first object's side.
        let touches = |a: usize, b: usize| (a / GRID).abs_diff(b / GRID) + (a % GRID).abs_diff(b % GRID) == 1;
        let between: Vec<(usize, usize, bool)> = (0..k)
            .flat_map(|i| {
                let (f, s) = drawn[i];
                noise.order[rank(f) + 1..rank(s)].iter().map(move |&c| (i, c, touches(c, f)))
            })
            .collect();
        let empty: Vec<_> = between.iter().map(|&(i, c, _)| (i, c, c)).collect();
        let object: Vec<_> = between.iter().map(|&(i, c, _)| (i, c, drawn[i].1)).collect();
        for (&(_, _, adjacent), d) in between.iter().zip(margin(&empty, &object)?) {
            let d = d as f64 / RELATION_REPEATS as f64;
            if adjacent {
                sums[0] += d;
                out.adjacent_cells += 1;
            } else {
                sums[1] += d;
                out.other_cells += 1;
            }
        }
        done += k;
    }
    out.adjacent_margin = sums[0] / out.adjacent_cells.max(1) as f64;
    out.other_margin = sums[1] / out.other_cells.max(1) as f64;
    Ok(out)
}

/// [`RelationReading::ceiling`]: over 20 000 relation captions with one of their two objects
/// drawn first (in a random order either; in raster order the upper, or on one row the left),
/// the share a reader gets right by answering, for each relation word and
/// first cell, whichever object is there more often.
fn relation_ceiling(seed: u64, order: crate::scheduler::Order) -> f64 {
    use super::prompts::{Listing, training_example};
    use super::{CELL, Shape};
    let mut rng = Seeded::new(seed);
    let mut counts: BTreeMap<(&str, usize, usize), [usize; 2]> = BTreeMap::new();
    let mut total = 0usize;
    while total < 20_000 {
        let (scene, caption) = training_example(&mut rng, &Shape::TRAIN, Listing::Any);
        let [a, b] = scene.objects[..] else { continue };
        let Some(relation) = super::prompts::Relation::stated(&caption) else { continue };
        let raster = |o: &super::Object| (o.cy, o.cx);
        let a_first = match order {
            crate::scheduler::Order::Random => rng.uniform() < 0.5,
            crate::scheduler::Order::Sequential => raster(&a) < raster(&b),
        };
        let first = if a_first { a } else { b };
        counts.entry((relation.words(), first.cx as usize / CELL, first.cy as usize / CELL)).or_default()[usize::from(a_first)] += 1;
        total += 1;
    }
    counts.values().map(|c| c[0].max(c[1])).sum::<usize>() as f64 / total as f64
}
