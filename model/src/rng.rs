//! The one injectable source of randomness (spec §8.1): the generation order, then every
//! sampler draw in call order. A seeded source draws reproducibly on the host (the same seed gives
//! the same image on every backend); a replay source feeds recorded tensors back.

use std::collections::VecDeque;

/// MT19937, the generator behind `torch.manual_seed` on the CPU.
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `torch.manual_seed(seed); torch.randperm(n)` (spec §3.9): identity, then for i in 0..n−1
/// swap `r[i]` with `r[i + next_u32() % (n − i)]`.
pub fn torch_randperm(seed: u64, n: usize) -> Vec<usize> {
    let mut mt = Mt19937::new(seed as u32);
    let mut r: Vec<usize> = (0..n).collect();
    for i in 0..n.saturating_sub(1) {
        let z = mt.next_u32() as usize % (n - i);
        r.swap(i, i + z);
    }
    r
}

/// Where generation draws its randomness from.
pub trait RandomSource {
    /// The random generation order of `n` cells.
    fn order(&mut self, n: usize) -> Vec<usize>;
    /// The next standard-normal draw of `rows × cols` values (row-major).
    fn normal(&mut self, rows: usize, cols: usize) -> Vec<f32>;
}

/// xoshiro256** seeded through SplitMix64, with Box–Muller normals.
pub struct Seeded {
    seed: u64,
    s: [u64; 4],
    spare: Option<f32>,
}

impl Seeded {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self { seed, s: [next(), next(), next(), next()], spare: None }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    pub fn standard_normal(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some((r * a.sin()) as f32);
        (r * a.cos()) as f32
    }
}

impl RandomSource for Seeded {
    /// The order the reference draws with `scheduler_seed = seed`.
    fn order(&mut self, n: usize) -> Vec<usize> {
        torch_randperm(self.seed, n)
    }
    fn normal(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|_| self.standard_normal()).collect()
    }
}

/// The randomness of a batch in which every image has its own noise stream, so that image `g`
/// of a batch can be made again alone (`Request::first_image`): the order comes from `seed` (as
/// for a single image), image 0's noise from `Seeded::new(seed)` (a single image is what it always
/// was) and image `g ≥ 1`'s from `Seeded::new(image_noise_seed(seed, g))`.
pub struct PerImage {
    order: Seeded,
    images: Vec<Seeded>,
}

/// The seed of image `g`'s noise stream in a batch of seed `seed` (`g = 0`: `seed` itself).
/// Mixed, so that image 1 of seed 5 is not image 0 of seed 6.
pub fn image_noise_seed(seed: u64, g: usize) -> u64 {
    if g == 0 { seed } else { seed ^ (g as u64).wrapping_mul(0xd1b5_4a32_d192_ed03).rotate_left(17) }
}

impl PerImage {
    /// Images `first .. first + count` of the batch of `seed`.
    pub fn new(seed: u64, first: usize, count: usize) -> Self {
        let images = (first..first + count.max(1)).map(|g| Seeded::new(image_noise_seed(seed, g))).collect();
        Self { order: Seeded::new(seed), images }
    }
}

impl RandomSource for PerImage {
    fn order(&mut self, n: usize) -> Vec<usize> {
        self.order.order(n)
    }
    /// `rows` are the images' rows in turn (`rows / images` each, as the sampler lays them out),
    /// each image's drawn from its own stream.
    fn normal(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let per = rows / self.images.len();
        debug_assert_eq!(per * self.images.len(), rows, "rows split evenly over the images");
        let mut out = Vec::with_capacity(rows * cols);
        for g in &mut self.images {
            out.extend(g.normal(per, cols));
        }
        out
    }
}

/// Replays recorded randomness (fixtures): a fixed order and a queue of noise draws.
pub struct Replay {
    pub order: Vec<usize>,
    pub noise: VecDeque<Vec<f32>>,
}

impl RandomSource for Replay {
    fn order(&mut self, n: usize) -> Vec<usize> {
        assert_eq!(self.order.len(), n, "recorded order has the wrong length");
        self.order.clone()
    }
    fn normal(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let v = self.noise.pop_front().expect("the recorded noise ran out"); // invariant: replay is for fixtures
        assert_eq!(v.len(), rows * cols, "recorded noise has the wrong size");
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // The 10000th output of MT19937 seeded with 5489 is 4123659995 (C++ std::mt19937).
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seeded_normals_are_reproducible_and_standard() {
        let a = Seeded::new(7).normal(100, 100);
        assert_eq!(a, Seeded::new(7).normal(100, 100));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{mean} {var}");
    }
}

#[cfg(test)]
mod per_image_tests {
    use super::*;

    #[test]
    fn each_image_has_its_own_stream() {
        // One image: exactly the single generator of before.
        assert_eq!(PerImage::new(7, 0, 1).normal(3, 4), Seeded::new(7).normal(3, 4));
        // Image 1 of a batch of two, alone: the second half of the batch's draws, step by step.
        let mut batch = PerImage::new(7, 0, 2);
        let mut alone = PerImage::new(7, 1, 1);
        for _ in 0..3 {
            let b = batch.normal(4, 3);
            assert_eq!(b[6..].to_vec(), alone.normal(2, 3));
        }
        assert_eq!(PerImage::new(7, 0, 2).order(16), Seeded::new(7).order(16));
        // Image 1 of seed 5 is not image 0 of seed 6.
        assert_ne!(PerImage::new(5, 1, 1).normal(1, 8), PerImage::new(6, 0, 1).normal(1, 8));
    }
}
