//! Captions for training scenes, and the structured prompts `vgt bench shapes` evaluates
//! (GenEval-style categories).

use super::{Color, Object, Scene, Shape, Size, pick, place};
use crate::rng::Seeded;

/// How two objects sit relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Relation {
    pub const ALL: [Relation; 4] = [Relation::Above, Relation::Below, Relation::LeftOf, Relation::RightOf];

    pub fn words(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
        }
    }

    /// The relation a caption states between its two objects ("a red circle above a blue
    /// square"), if any.
    pub fn stated(caption: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| caption.contains(&format!(" {} ", r.words())))
    }

    /// Whether `a` stands in this relation to `b` (centres, with a margin in pixels).
    pub fn holds(self, a: (f32, f32), b: (f32, f32), margin: f32) -> bool {
        match self {
            Relation::Above => a.1 + margin < b.1,
            Relation::Below => a.1 > b.1 + margin,
            Relation::LeftOf => a.0 + margin < b.0,
            Relation::RightOf => a.0 > b.0 + margin,
        }
    }
}

/// One required object of a prompt: a shape, and a colour when the prompt names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Want {
    pub shape: Shape,
    pub color: Option<Color>,
}

/// The evaluation categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SingleObject,
    TwoObjects,
    Counting,
    Colors,
    Position,
    ColorAttribution,
}

impl Category {
    pub const ALL: [Category; 6] =
        [Category::SingleObject, Category::TwoObjects, Category::Counting, Category::Colors, Category::Position, Category::ColorAttribution];
}

/// A prompt and what a correct image contains: exactly `objects` (as a multiset), and for
/// position prompts the relation of the first to the second.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    pub category: Category,
    pub prompt: String,
    pub objects: Vec<Want>,
    pub relation: Option<Relation>,
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

fn phrase(w: Want, size: Option<Size>) -> String {
    let mut words = Vec::new();
    if let Some(s) = size {
        words.push(s.name());
    }
    if let Some(c) = w.color {
        words.push(c.name());
    }
    words.push(w.shape.name());
    format!("{} {}", article(words[0]), words.join(" "))
}

fn number(n: usize) -> &'static str {
    match n {
        2 => "two",
        3 => "three",
        _ => "one",
    }
}

/// The order in which a caption that lists objects without relating them ("A and B",
/// "A, B and C") names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// The order the scene placed them in (random): nothing in the caption says which comes where.
    #[default]
    Any,
    /// Reading order (row by row, left to right: the cells' order): the object named first
    /// sits in the first cell of the ones they take. A generator that draws the cells in that
    /// order then knows which of the named objects its first object is.
    Reading,
}

/// A random training scene and its caption, drawing only `shapes`, listing its unrelated
/// objects in the order `listing` says.
pub fn training_example(rng: &mut Seeded, shapes: &[Shape], listing: Listing) -> (Scene, String) {
    let listed = |objects: &[Object]| -> Vec<Object> {
        let mut v = objects.to_vec();
        if listing == Listing::Reading {
            v.sort_by_key(Object::cell);
        }
        v
    };
    loop {
        let kind = rng.uniform();
        let obj = |rng: &mut Seeded| (pick(rng, shapes), pick(rng, &Color::ALL), pick(rng, &[Size::Small, Size::Large]));
        let named = |rng: &mut Seeded, o: &Object, with_size: bool| {
            let color = (rng.uniform() < 0.85).then_some(o.color);
            phrase(Want { shape: o.shape, color }, with_size.then_some(o.size))
        };
        if kind < 0.3 {
            let kinds = [obj(rng)];
            let Some(scene) = place(rng, &kinds) else { continue };
            let with_size = rng.uniform() < 0.4;
            let caption = named(rng, &scene.objects[0], with_size);
            return (scene, caption);
        } else if kind < 0.65 {
            let kinds = [obj(rng), obj(rng)];
            let Some(scene) = place(rng, &kinds) else { continue };
            let (a, b) = (scene.objects[0], scene.objects[1]);
            let rel = Relation::ALL.iter().copied().filter(|r| r.holds((a.cx, a.cy), (b.cx, b.cy), 6.0)).collect::<Vec<_>>();
            let caption = if !rel.is_empty() && rng.uniform() < 0.6 {
                let r = pick(rng, &rel);
                format!("{} {} {}", phrase(Want { shape: a.shape, color: Some(a.color) }, None), r.words(), phrase(Want { shape: b.shape, color: Some(b.color) }, None))
            } else {
                let o = listed(&scene.objects);
                format!("{} and {}", named(rng, &o[0], false), named(rng, &o[1], false))
            };
            return (scene, caption);
        } else if kind < 0.85 {
            let n = if rng.uniform() < 0.5 { 2 } else { 3 };
            let (shape, color) = (pick(rng, shapes), pick(rng, &Color::ALL));
            let kinds: Vec<_> = (0..n).map(|_| (shape, color, pick(rng, &[Size::Small, Size::Large]))).collect();
            let Some(scene) = place(rng, &kinds) else { continue };
            return (scene, format!("{} {} {}", number(n), color.name(), shape.plural()));
        } else {
            let kinds = [obj(rng), obj(rng), obj(rng)];
            let Some(scene) = place(rng, &kinds) else { continue };
            let o = listed(&scene.objects);
            let caption = format!("{}, {} and {}", named(rng, &o[0], false), named(rng, &o[1], false), named(rng, &o[2], false));
            return (scene, caption);
        }
    }
}

/// `per_category` prompts of every category over `shapes`, deterministic from `seed`.
pub fn eval_specs(seed: u64, per_category: usize, shapes: &[Shape]) -> Vec<Spec> {
    let mut rng = Seeded::new(seed);
    let mut out = Vec::new();
    for cat in Category::ALL {
        for _ in 0..per_category {
            let s = pick(&mut rng, shapes);
            let c = pick(&mut rng, &Color::ALL);
            let spec = match cat {
                Category::SingleObject => Spec { category: cat, prompt: phrase(Want { shape: s, color: None }, None), objects: vec![Want { shape: s, color: None }], relation: None },
                Category::Colors => Spec { category: cat, prompt: phrase(Want { shape: s, color: Some(c) }, None), objects: vec![Want { shape: s, color: Some(c) }], relation: None },
                Category::Counting => {
                    let n = if rng.uniform() < 0.5 { 2 } else { 3 };
                    Spec { category: cat, prompt: format!("{} {} {}", number(n), c.name(), s.plural()), objects: vec![Want { shape: s, color: Some(c) }; n], relation: None }
                }
                Category::TwoObjects => {
                    let s2 = pick(&mut rng, shapes);
                    let (a, b) = (Want { shape: s, color: None }, Want { shape: s2, color: None });
                    Spec { category: cat, prompt: format!("{} and {}", phrase(a, None), phrase(b, None)), objects: vec![a, b], relation: None }
                }
                Category::ColorAttribution => {
                    let others: Vec<Shape> = shapes.iter().copied().filter(|&x| x != s).collect();
                    let s2 = if others.is_empty() { s } else { pick(&mut rng, &others) };
                    let colors: Vec<Color> = Color::ALL.iter().copied().filter(|&x| x != c).collect();
                    let c2 = pick(&mut rng, &colors);
                    let (a, b) = (Want { shape: s, color: Some(c) }, Want { shape: s2, color: Some(c2) });
                    Spec { category: cat, prompt: format!("{} and {}", phrase(a, None), phrase(b, None)), objects: vec![a, b], relation: None }
                }
                Category::Position => {
                    let s2 = pick(&mut rng, shapes);
                    let colors: Vec<Color> = Color::ALL.iter().copied().filter(|&x| x != c).collect();
                    let c2 = pick(&mut rng, &colors);
                    let r = pick(&mut rng, &Relation::ALL);
                    let (a, b) = (Want { shape: s, color: Some(c) }, Want { shape: s2, color: Some(c2) });
                    Spec { category: cat, prompt: format!("{} {} {}", phrase(a, None), r.words(), phrase(b, None)), objects: vec![a, b], relation: Some(r) }
                }
            };
            out.push(spec);
        }
    }
    out
}

/// A scene that satisfies `spec` (for checking the detector on ground truth).
pub fn scene_for(rng: &mut Seeded, spec: &Spec) -> Option<Scene> {
    for _ in 0..500 {
        let kinds: Vec<_> = spec
            .objects
            .iter()
            .map(|w| (w.shape, w.color.unwrap_or_else(|| pick(rng, &Color::ALL)), pick(rng, &[Size::Small, Size::Large])))
            .collect();
        let scene = place(rng, &kinds)?;
        let ok = match spec.relation {
            Some(r) => {
                let (a, b) = (scene.objects[0], scene.objects[1]);
                r.holds((a.cx, a.cy), (b.cx, b.cy), 6.0)
            }
            None => true,
        };
        if ok {
            return Some(scene);
        }
    }
    None
}

/// Questions about a caption that only a reader who binds words can answer, written in the
/// caption vocabulary, with their one-word answers. `of SHAPE` asks the colour of the caption's
/// only object of that shape, `of COLOR` the shape of its only object of that colour (each only
/// when the caption names two or more colours, or shapes, so the answer is not the only
/// candidate); with a relation (`A above B`), `above` / `below` ask which shape is where and
/// `of above` / `of below` which colour. The recipe's LLM stage trains on them
/// ([`super::recipe::RecipeOptions::llm_steps`]), a small stand-in for the pretrained VLM that
/// VGT tunes, whose LLM already knows which word belongs to which.
pub fn questions(caption: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = caption.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).collect();
    let shape_of = |w: &str| Shape::ALL.iter().copied().find(|s| s.name() == w);
    let color_of = |w: &str| Color::ALL.iter().copied().find(|c| c.name() == w);
    // Object phrases `a|an [size] [colour] shape` and the index of the word after each.
    let mut phrases: Vec<(Option<Color>, Shape, usize)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if matches!(words[i], "a" | "an") {
            let mut j = i + 1;
            if matches!(words.get(j), Some(&"small") | Some(&"large")) {
                j += 1;
            }
            let color = words.get(j).and_then(|w| color_of(w));
            if color.is_some() {
                j += 1;
            }
            if let Some(shape) = words.get(j).and_then(|w| shape_of(w)) {
                phrases.push((color, shape, j + 1));
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    let distinct = |mut v: Vec<usize>| {
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let colors = distinct(phrases.iter().filter_map(|p| p.0.map(|c| c as usize)).collect());
    let shapes = distinct(phrases.iter().map(|p| p.1 as usize).collect());
    let mut out = Vec::new();
    for &(color, shape, _) in &phrases {
        let Some(color) = color else { continue };
        if colors >= 2 && phrases.iter().filter(|p| p.1 == shape).count() == 1 {
            out.push((format!("of {}", shape.name()), color.name().to_string()));
        }
        if shapes >= 2 && phrases.iter().filter(|p| p.0 == Some(color)).count() == 1 {
            out.push((format!("of {}", color.name()), shape.name().to_string()));
        }
    }
    if let [(c1, s1, end), (c2, s2, _)] = phrases[..] {
        let pair = match words.get(end).copied() {
            Some("above") => Some(("above", "below")),
            Some("below") => Some(("below", "above")),
            Some("left") => Some(("left", "right")),
            Some("right") => Some(("right", "left")),
            _ => None,
        };
        if let Some((first, second)) = pair {
            if s1 != s2 {
                out.push((first.to_string(), s1.name().to_string()));
                out.push((second.to_string(), s2.name().to_string()));
            }
            if let (Some(c1), Some(c2)) = (c1, c2)
                && c1 != c2
            {
                out.push((format!("of {first}"), c1.name().to_string()));
                out.push((format!("of {second}"), c2.name().to_string()));
            }
        }
    }
    out
}

/// Every word a caption or prompt of this world can use (the tokenizer's vocabulary).
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = vec!["a", "an", "and", "of", "left", "right", "above", "below", "one", "two", "three", ",", "photo", "sks"]
        .into_iter()
        .map(String::from)
        .collect();
    for s in Shape::ALL {
        words.push(s.name().into());
        words.push(s.plural().into());
    }
    for c in Color::ALL {
        words.push(c.name().into());
    }
    words.extend(["small", "large"].map(String::from));
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_ask_only_what_binding_answers() {
        let q = questions("a red circle above a blue square");
        for pair in [("of circle", "red"), ("of blue", "square"), ("above", "circle"), ("below", "square"), ("of below", "blue"), ("of above", "red")] {
            assert!(q.contains(&(pair.0.to_string(), pair.1.to_string())), "{pair:?} in {q:?}");
        }
        assert_eq!(q.len(), 8, "{q:?}");
        let q = questions("a green triangle right of a green circle");
        assert!(q.contains(&("left".into(), "circle".into())) && q.contains(&("right".into(), "triangle".into())), "{q:?}");
        assert!(!q.iter().any(|(x, _)| x.starts_with("of")), "one colour: nothing to bind: {q:?}");
        let q = questions("a small yellow square, a circle and a red square");
        assert!(!q.iter().any(|(x, _)| x == "of square"), "two squares: {q:?}");
        assert!(q.contains(&("of red".into(), "square".into())), "{q:?}");
        assert!(questions("three green circles").is_empty());
        assert!(questions("a large red circle").is_empty(), "one object: no binding");
        // Every question word is in the vocabulary.
        let vocab = vocabulary();
        let mut rng = Seeded::new(4);
        for _ in 0..200 {
            let (_, caption) = training_example(&mut rng, &Shape::TRAIN, Listing::Any);
            for (q, a) in questions(&caption) {
                assert!(q.split(' ').chain([a.as_str()]).all(|w| vocab.iter().any(|v| v == w)), "{q} / {a}");
            }
        }
    }

    #[test]
    fn captions_state_the_scene() {
        let mut rng = Seeded::new(1);
        for _ in 0..200 {
            let (scene, caption) = training_example(&mut rng, &Shape::TRAIN, Listing::Any);
            assert!(!scene.objects.is_empty() && scene.objects.len() <= 3);
            for o in &scene.objects {
                assert!(Shape::TRAIN.contains(&o.shape));
                assert!(caption.contains(o.shape.name()), "{caption} lacks {:?}", o.shape);
            }
            let vocab = vocabulary();
            for w in caption.replace(',', " , ").split_whitespace() {
                assert!(vocab.iter().any(|v| v == w), "`{w}` of `{caption}` is not in the vocabulary");
            }
        }
        assert_eq!(phrase(Want { shape: Shape::Circle, color: None }, None), "a circle");
        assert_eq!(phrase(Want { shape: Shape::Square, color: Some(Color::Yellow) }, Some(Size::Large)), "a large yellow square");
    }

    #[test]
    fn reading_order_lists_the_first_cell_first() {
        // The same draws give the same scenes in either listing; only the order of the names differs.
        let (mut any, mut reading) = (Seeded::new(9), Seeded::new(9));
        let (mut lists, mut reordered) = (0, 0);
        for _ in 0..1500 {
            let (scene, caption) = training_example(&mut any, &Shape::TRAIN, Listing::Any);
            let (same, listed) = training_example(&mut reading, &Shape::TRAIN, Listing::Reading);
            assert_eq!(scene, same);
            let o = &scene.objects;
            // Where the caption names each object's shape (the listing captions name every object).
            let named_at = |c: &str, x: &Object| c.find(&format!("{} ", x.shape.name())).or_else(|| c.find(x.shape.name()));
            if Relation::stated(&caption).is_some() || o.len() < 2 || o.iter().any(|x| o.iter().filter(|y| y.shape == x.shape).count() > 1) {
                if Relation::stated(&caption).is_some() {
                    assert_eq!(caption, listed, "relation captions keep their order");
                }
                continue;
            }
            lists += 1;
            let mut by_cell = o.clone();
            by_cell.sort_by_key(Object::cell);
            let at: Vec<usize> = by_cell.iter().map(|x| named_at(&listed, x).unwrap_or(usize::MAX)).collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "`{listed}` does not follow the cells {by_cell:?}");
            reordered += usize::from(caption != listed);
        }
        assert!(lists > 100 && reordered > lists / 4, "{lists} listing captions, {reordered} reordered");
    }

    #[test]
    fn relation_captions_are_recognised() {
        for (caption, want) in [
            ("a red circle above a blue square", true),
            ("a large blue square", false),
            ("a green triangle left of a red circle", true),
            ("a yellow square right of a purple triangle", true),
            ("a red circle and a blue square", false),
            ("three red circles", false),
            ("a circle, a square and a triangle", false),
        ] {
            assert_eq!(Relation::stated(caption).is_some(), want, "{caption}");
        }
    }

    #[test]
    fn eval_prompts_cover_every_category() {
        let specs = eval_specs(7, 5, &Shape::TRAIN);
        assert_eq!(specs.len(), 30);
        for c in Category::ALL {
            assert_eq!(specs.iter().filter(|s| s.category == c).count(), 5);
        }
        let p = specs.iter().find(|s| s.category == Category::Position).unwrap();
        assert!(Relation::ALL.iter().any(|r| p.prompt.contains(r.words())), "{}", p.prompt);
    }
}
