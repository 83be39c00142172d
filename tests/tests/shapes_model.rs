//! The embedded shapes model (`assets/shapes`) draws what it is asked for: single-object and
//! colour prompts, generated at the default settings on the CPU backend and scored by the shapes
//! world's detector (issue 6).

use std::path::PathBuf;

use vgt_model::device;
use vgt_model::generate::GenerateOptions;
use vgt_model::reconstruct::Reconstructor;
use vgt_model::shapes::Shape;
use vgt_model::shapes::eval::{check, generate_all, reconstructions, relation_reading};
use vgt_model::shapes::prompts::{Category, eval_specs};
use vgt_model::text2image::TextToImage;
use vgt_model::weights::source;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/shapes")
}

#[test]
fn the_embedded_model_draws_single_objects_and_their_colours() {
    let loaded = source::open(&assets()).expect("assets/shapes loads");
    let dev = device::cpu_device();
    let t2i = TextToImage::new(&loaded, &dev.device).expect("a generator");
    let size = loaded.config.stride() * loaded.config.amq_max_grid;
    let specs: Vec<_> = eval_specs(0x7e57, 8, &Shape::TRAIN)
        .into_iter()
        .filter(|s| matches!(s.category, Category::SingleObject | Category::Colors))
        .collect();
    assert_eq!(specs.len(), 16);
    let opts = GenerateOptions { height: size, width: size, order: loaded.config.order, ..Default::default() };
    let images = generate_all(&t2i, &specs, &opts, 5, 16, &mut |_, _| {}).expect("generation");
    let ok = check(&specs, &images);
    let right = ok.iter().filter(|&&b| b).count();
    let wrong: Vec<&str> = specs.iter().zip(&ok).filter(|(_, b)| !**b).map(|(s, _)| s.prompt.as_str()).collect();
    // A regression guard, not the bar (see `vgt bench shapes`): a broken pipeline
    // draws nothing the detector accepts, and clean shapes of random kinds would get about 3/16.
    // The model shipped on 2026-11-30 at 14:00 (captions listed in reading order; single objects
    // and colours 1.00 over 100 prompts each, with the outline-matching detector) gets 16/16.
    // Scored with the detector before (fill and convexity): the raster model before it 13/16 (its
    // misses: small triangles read as stars); the one before it (cell loss, random order) 16/16;
    // the one of 2026-11-29 (four flow-head samples per token) 15/16; the one before it (colours
    // 0.35) 11/16, its misses colours; the 8×8-token model 2/16.
    eprintln!("{right}/16 right; wrong: {wrong:?}");
    assert!(right >= 12, "{right}/16 right; wrong: {wrong:?}");
}

/// The teacher-forced relation measurement of `vgt bench shapes` (`relation_reading`) on the
/// shipped model: the second object drawn against a copy of the first, which a trained
/// generator gets right, comes out right far above chance (where a measurement that misplaced
/// cells or latents would put it); the scenes split into relation and plain captions as the training mix
/// does (60 % of two-object captions state a relation); the ceiling lies between chance and
/// certainty (a top-row first object of "A above B" is A, a middle-row one may be either), in the
/// model's own drawing order.
#[test]
fn relation_reading_measures_a_trained_generator() {
    let loaded = source::open(&assets()).expect("assets/shapes loads");
    let dev = device::cpu_device();
    let t2i = TextToImage::new(&loaded, &dev.device).expect("a generator");
    let ae = Reconstructor::new(&loaded, &dev.device).expect("the AE loads").ae;
    let r = relation_reading(&t2i.model, &ae, &t2i.tokenizer, &t2i.tokens.img_start, loaded.config.order, 64, 3).expect("the measurement runs");
    eprintln!("{r:?}");
    assert_eq!(r.relation_scenes + r.plain_scenes, 64);
    assert!(r.relation_scenes >= 20 && r.plain_scenes >= 10, "{r:?}");
    // Chance would be about 32. Models trained on captions listed in any order got 0.98-0.99
    // of it right; the one listed in reading order 55 of 64 here (352 of 400 in `bench shapes`),
    // all its misses on the "A and B" scenes (103 of 151 right there, 249 of 249 on the relation
    // scenes): the measurement lists "A and B" in any order, half of them against the drawn
    // order, which that model never saw in training. On the relation scenes it is near certain.
    assert!(r.second_right >= 48, "{r:?}");
    assert!((r.second_right - r.second_right_plain) * 10 >= r.relation_scenes * 9, "{r:?}");
    assert!(r.ceiling > 0.6 && r.ceiling < 0.95, "{r:?}");
    // The shipped models trained in raster order read the relation (28 of 31 here for the
    // first; the random-order models were at chance, 15 of 31) and keep an object's neighbours
    // empty (margin 2.65 against 0.62; random order: 0.76 against 0.68).
    assert!(r.relation_right * 10 >= r.relation_scenes * 7, "{r:?}");
    assert!(r.adjacent_margin > 2.0 * r.other_margin, "{r:?}");
}

/// The benchmark's `detector_on_reconstructions` on the shipped AE: the detector reads the AE's
/// reconstructions of ground-truth scenes of every category, held-out shapes included, as it
/// reads the renders themselves (at least 98 % right). A generator can score no better than
/// this; the detector before the outline matching read 94 % of the previous AE's
/// reconstructions of the benchmark's 600 scenes right (small triangles as stars).
#[test]
fn the_detector_reads_the_embedded_aes_reconstructions() {
    let loaded = source::open(&assets()).expect("assets/shapes loads");
    let dev = device::cpu_device();
    let ae = Reconstructor::new(&loaded, &dev.device).expect("the AE loads").ae;
    let mut specs = eval_specs(0x7e57, 10, &Shape::TRAIN);
    specs.extend(eval_specs(0x7e58, 5, &Shape::HELD_OUT));
    let images = reconstructions(&ae, &specs, 9, &dev.device);
    let ok = check(&specs, &images);
    let wrong: Vec<&str> = specs.iter().zip(&ok).filter(|(_, b)| !**b).map(|(s, _)| s.prompt.as_str()).collect();
    eprintln!("{}/{} right; wrong: {wrong:?}", ok.len() - wrong.len(), ok.len());
    assert!(wrong.len() * 50 <= ok.len(), "{} of {} wrong: {wrong:?}", wrong.len(), ok.len());
}
