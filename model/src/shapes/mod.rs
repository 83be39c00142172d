//! The "shapes" world: small procedural scenes of one to three flat shapes on a plain
//! background, each with an English caption that states them. It trains the embedded model
//! (`assets/`), and `vgt bench shapes` measures generation quality on it with a detector written
//! for this world (`detect`).

pub mod detect;
pub mod eval;
pub mod prompts;
pub mod recipe;
pub mod tokenizer;

use crate::image_io::Rgb8;
use crate::rng::Seeded;

/// Image side in pixels.
pub const SIZE: usize = 64;

/// Objects sit at the centres of a `GRID × GRID` grid of cells, one object per cell. The cells
/// are the model's latent tokens (16 px each), so an object is drawn by one token: a world a
/// 2-core machine can train a generator for in an hour (issue 6; the note says what this costs).
pub const GRID: usize = 4;

/// Cell side in pixels.
pub const CELL: usize = SIZE / GRID;

/// The background colour.
pub const BACKGROUND: [u8; 3] = [245, 245, 240];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
}

impl Shape {
    /// Shapes in the training set.
    pub const TRAIN: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];
    /// Shapes kept out of training (the LoRA test teaches one of them).
    pub const HELD_OUT: [Shape; 2] = [Shape::Star, Shape::Cross];
    pub const ALL: [Shape; 5] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Cross];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Cross => "crosses",
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
        }
    }

    /// Whether the point `(dx, dy)` (relative to the centre, in units of the radius) is inside.
    pub(crate) fn contains(self, dx: f32, dy: f32) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= 1.0,
            Shape::Square => dx.abs() <= 0.82 && dy.abs() <= 0.82,
            Shape::Triangle => {
                // Upright, apex at (0, −1), base at y = 0.7, half-width 1.
                dy >= -1.0 && dy <= 0.7 && dx.abs() <= (dy + 1.0) / 1.7
            }
            Shape::Cross => (dx.abs() <= 1.0 && dy.abs() <= 0.34) || (dx.abs() <= 0.34 && dy.abs() <= 1.0),
            Shape::Star => {
                let r = (dx * dx + dy * dy).sqrt();
                if r > 1.0 {
                    return false;
                }
                // Five points up: the boundary radius between the inner (0.42) and outer (1) radius.
                let a = dy.atan2(dx) + std::f32::consts::FRAC_PI_2;
                let sector = std::f32::consts::TAU / 5.0;
                let t = (a.rem_euclid(sector) / sector - 0.5).abs() * 2.0; // 0 at a point, 1 between points
                let (outer, inner) = (1.0f32, 0.42f32);
                // Straight edges between a point and the inner vertex, in polar form.
                let half = sector / 2.0;
                let angle = t * half;
                let (px, py) = (outer, 0.0f32);
                let (qx, qy) = (inner * half.cos(), inner * half.sin());
                let (ux, uy) = (angle.cos(), angle.sin());
                // Intersection of the ray (ux, uy) with the segment p→q.
                let (ex, ey) = (qx - px, qy - py);
                let denom = ux * ey - uy * ex;
                let edge = if denom.abs() < 1e-6 { outer } else { (px * ey - py * ex) / denom };
                r <= edge
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
}

impl Color {
    pub const ALL: [Color; 5] = [Color::Red, Color::Green, Color::Blue, Color::Yellow, Color::Purple];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [215, 40, 40],
            Color::Green => [40, 160, 60],
            Color::Blue => [40, 80, 215],
            Color::Yellow => [230, 195, 30],
            Color::Purple => [140, 60, 175],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    /// Radius in pixels.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 5.5,
            Size::Large => 7.5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// One shape of a scene.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub color: Color,
    pub size: Size,
    pub cx: f32,
    pub cy: f32,
}

impl Object {
    /// The grid cell the object sits in, row-major (the index of its latent token).
    pub fn cell(&self) -> usize {
        (self.cy as usize / CELL).min(GRID - 1) * GRID + (self.cx as usize / CELL).min(GRID - 1)
    }
}

/// A scene: its objects.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Scene {
    pub objects: Vec<Object>,
}

/// Renders a scene with 4×4 supersampling (antialiased edges).
pub fn render(scene: &Scene) -> Rgb8 {
    let n = SIZE;
    let mut acc = vec![[0f32; 3]; n * n];
    const SS: usize = 4;
    for y in 0..n {
        for x in 0..n {
            let mut sum = [0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let (px, py) = (x as f32 + (sx as f32 + 0.5) / SS as f32, y as f32 + (sy as f32 + 0.5) / SS as f32);
                    let mut c = BACKGROUND;
                    for o in &scene.objects {
                        let r = o.size.radius();
                        if o.shape.contains((px - o.cx) / r, (py - o.cy) / r) {
                            c = o.color.rgb();
                        }
                    }
                    for k in 0..3 {
                        sum[k] += c[k] as f32;
                    }
                }
            }
            acc[y * n + x] = sum.map(|s| s / (SS * SS) as f32);
        }
    }
    let pixels = acc.iter().flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8)).collect();
    Rgb8 { width: n as u32, height: n as u32, pixels }
}

/// Places the objects in distinct cells of the grid, no two in cells that share a side (so
/// that two objects of one colour never touch). `None` when it cannot after many tries.
pub fn place(rng: &mut Seeded, kinds: &[(Shape, Color, Size)]) -> Option<Scene> {
    'attempt: for _ in 0..200 {
        let axis: Vec<usize> = (0..GRID).collect();
        let mut cells: Vec<(usize, usize)> = Vec::new();
        for _ in kinds {
            let mut placed = false;
            for _ in 0..50 {
                let cell = (pick(rng, &axis), pick(rng, &axis));
                if cells.iter().all(|&(x, y)| x.abs_diff(cell.0) + y.abs_diff(cell.1) >= 2) {
                    cells.push(cell);
                    placed = true;
                    break;
                }
            }
            if !placed {
                continue 'attempt;
            }
        }
        let centre = |i: usize| (i * CELL) as f32 + CELL as f32 / 2.0;
        let objects = kinds.iter().zip(&cells).map(|(&(shape, color, size), &(x, y))| Object { shape, color, size, cx: centre(x), cy: centre(y) }).collect();
        return Some(Scene { objects });
    }
    None
}

/// Picks one element uniformly.
pub fn pick<T: Clone>(rng: &mut Seeded, items: &[T]) -> T {
    let i = ((rng.uniform() * items.len() as f64) as usize).min(items.len() - 1);
    items[i].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(shape: Shape) -> f32 {
        let n = 400;
        let inside = (0..n * n)
            .filter(|i| {
                let (x, y) = ((i % n) as f32 / n as f32 * 2.0 - 1.0, (i / n) as f32 / n as f32 * 2.0 - 1.0);
                shape.contains(x, y)
            })
            .count();
        inside as f32 / (n * n) as f32 * 4.0
    }

    /// Every shape at either size stays inside its cell, so one latent token draws it.
    #[test]
    fn objects_stay_inside_their_cell() {
        for shape in Shape::ALL {
            for size in [Size::Small, Size::Large] {
                let scene = Scene { objects: vec![Object { shape, color: Color::Red, size, cx: 24.0, cy: 40.0 }] };
                let img = render(&scene);
                for y in 0..SIZE {
                    for x in 0..SIZE {
                        let inside = (CELL..2 * CELL).contains(&x) && (2 * CELL..3 * CELL).contains(&y);
                        let i = (y * SIZE + x) * 3;
                        if !inside {
                            assert_eq!(img.pixels[i..i + 3], BACKGROUND, "{shape:?} {size:?} spills to ({x}, {y})");
                        }
                    }
                }
            }
        }
        let mut rng = Seeded::new(3);
        for _ in 0..50 {
            let kinds = [(Shape::Circle, Color::Red, Size::Large); 3];
            let scene = place(&mut rng, &kinds).expect("three objects fit");
            for (i, a) in scene.objects.iter().enumerate() {
                for b in &scene.objects[i + 1..] {
                    assert!((a.cx - b.cx).abs() + (a.cy - b.cy).abs() >= 2.0 * CELL as f32 - 0.5, "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn shape_areas_match_their_geometry() {
        // Circle π, square 1.64², triangle ½·2·1.7, cross 2·(2·0.68) − 0.68², star: a 5-point
        // star with inner/outer radius 0.42: 5·sin(36°)·0.42 ≈ 1.234.
        assert!((area(Shape::Circle) - std::f32::consts::PI).abs() < 0.02);
        assert!((area(Shape::Square) - 1.64 * 1.64).abs() < 0.02);
        assert!((area(Shape::Triangle) - 1.7).abs() < 0.02);
        assert!((area(Shape::Cross) - (2.0 * 2.0 * 0.68 - 0.68 * 0.68)).abs() < 0.02);
        let star = 5.0 * (36f32.to_radians()).sin() * 0.42;
        assert!((area(Shape::Star) - star).abs() < 0.03, "{} vs {star}", area(Shape::Star));
    }
}
