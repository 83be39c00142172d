//! Reconstruction metrics on images in [0, 1], channel-first `[3, H, W]` as flat slices.

/// PSNR in dB with the given data range (1 for [0, 1] images): `10·log10(R² / MSE)`.
pub fn psnr(a: &[f32], b: &[f32], data_range: f64) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (data_range * data_range / mse).log10() }
}

/// Mean SSIM as scikit-image computes it by default: a 7×7 uniform window, sample covariance
/// (N/(N−1)), K1 = 0.01, K2 = 0.03, averaged over the positions where the window fits and over
/// channels. `data_range` is 1 for [0, 1] images (the reference's evaluator passes 2, §6.2).
pub fn ssim(a: &[f32], b: &[f32], channels: usize, h: usize, w: usize, data_range: f64) -> f64 {
    const WIN: usize = 7;
    if h < WIN || w < WIN {
        return f64::NAN;
    }
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let mut total = 0.0;
    let mut count = 0usize;
    for c in 0..channels {
        let plane = |v: &[f32]| -> Vec<f64> { v[c * h * w..(c + 1) * h * w].iter().map(|&x| x as f64).collect() };
        let (x, y) = (plane(a), plane(b));
        for i in 0..=h - WIN {
            for j in 0..=w - WIN {
                let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for di in 0..WIN {
                    for dj in 0..WIN {
                        let (p, q) = (x[(i + di) * w + j + dj], y[(i + di) * w + j + dj]);
                        sx += p;
                        sy += q;
                        sxx += p * p;
                        syy += q * q;
                        sxy += p * q;
                    }
                }
                let (ux, uy) = (sx / np, sy / np);
                let vx = cov_norm * (sxx / np - ux * ux);
                let vy = cov_norm * (syy / np - uy * uy);
                let vxy = cov_norm * (sxy / np - ux * uy);
                let s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
                total += s;
                count += 1;
            }
        }
    }
    total / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_a_known_error() {
        // Every pixel off by 0.1: MSE 0.01 → 20 dB.
        let a = vec![0.5f32; 12];
        let b = vec![0.6f32; 12];
        assert!((psnr(&a, &b, 1.0) - 20.0).abs() < 1e-4);
        assert_eq!(psnr(&a, &a, 1.0), f64::INFINITY);
    }

    #[test]
    fn ssim_is_one_for_identical_images_and_drops_with_noise() {
        let h = 9;
        let a: Vec<f32> = (0..h * h).map(|i| ((i * 37) % 11) as f32 / 10.0).collect();
        assert!((ssim(&a, &a, 1, h, h, 1.0) - 1.0).abs() < 1e-12);
        let b: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!(ssim(&a, &b, 1, h, h, 1.0) < 0.0, "an inverted image anticorrelates");
    }

    #[test]
    fn ssim_of_constant_images_follows_the_formula() {
        // Two constant 7×7 windows: variances 0, so SSIM = (2·ux·uy + C1)/(ux² + uy² + C1).
        let a = vec![0.2f32; 49];
        let b = vec![0.4f32; 49];
        let c1 = 0.0001;
        let want = (2.0 * 0.2 * 0.4 + c1) / (0.04 + 0.16 + c1);
        assert!((ssim(&a, &b, 1, 7, 7, 1.0) - want).abs() < 1e-6);
    }
}
