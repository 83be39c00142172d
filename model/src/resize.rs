//! PyTorch's bilinear and bicubic resizes (align_corners = false, no antialias), written as
//! separable weight matrices so that every backend computes them with one matmul per axis.

use burn::tensor::{Device, Tensor, TensorData};

/// `[out, in]` bilinear weights: `s = (dst+0.5)·(in/out) − 0.5` clamped at 0, taps `⌊s⌋` and
/// `min(⌊s⌋+1, in−1)` (PyTorch `upsample_bilinear2d`).
pub fn bilinear_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f32 / output as f32;
    let mut w = vec![0f32; output * input];
    for dst in 0..output {
        let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let lambda = src - i0 as f32;
        w[dst * input + i0] += 1.0 - lambda;
        w[dst * input + i1] += lambda;
    }
    w
}

fn cubic1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cubic2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// `[out, in]` bicubic weights with A = −0.75: `s = (dst+0.5)·(in/out) − 0.5` (not clamped), the
/// four taps `⌊s⌋−1 … ⌊s⌋+2` clamped to `[0, in−1]` (PyTorch `upsample_bicubic2d`).
pub fn bicubic_weights(input: usize, output: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let scale = input as f32 / output as f32;
    let mut w = vec![0f32; output * input];
    for dst in 0..output {
        let src = scale * (dst as f32 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        let coeffs = [cubic2(t + 1.0, A), cubic1(t, A), cubic1(1.0 - t, A), cubic2(2.0 - t, A)];
        for (k, c) in coeffs.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            w[dst * input + idx] += c;
        }
    }
    w
}

/// Which interpolation.
#[derive(Debug, Clone, Copy)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

fn weights(filter: Filter, input: usize, output: usize, device: &Device) -> Tensor<2> {
    let w = match filter {
        Filter::Bilinear => bilinear_weights(input, output),
        Filter::Bicubic => bicubic_weights(input, output),
    };
    Tensor::from_data(TensorData::new(w, [output, input]), device)
}

/// Resizes the last two axes of an NCHW map.
///
/// # Shapes
/// - x: `[batch, channels, in_h, in_w]` → `[batch, channels, out_h, out_w]`
pub fn resize(x: Tensor<4>, out_h: usize, out_w: usize, filter: Filter) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if (h, w) == (out_h, out_w) {
        return x;
    }
    let device = x.device();
    let wh = weights(filter, h, out_h, &device).unsqueeze::<3>(); // [1, out_h, h]
    let ww = weights(filter, w, out_w, &device).transpose().unsqueeze::<3>(); // [1, w, out_w]
    let x = x.reshape([b * c, h, w]);
    let y = wh.matmul(x).matmul(ww);
    y.reshape([b, c, out_h, out_w])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_downscale_by_two_averages_pairs() {
        // in 4 → out 2: s = 0.5 and 2.5, each halfway between two taps.
        let w = bilinear_weights(4, 2);
        assert_eq!(w, vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn bicubic_identity_and_rows_sum_to_one() {
        let w = bicubic_weights(8, 8);
        for (i, row) in w.chunks(8).enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - f32::from(i == j)).abs() < 1e-6, "{i},{j}: {v}");
            }
        }
        for row in bicubic_weights(8, 10).chunks(8) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // 2 → 4, dst 0: s = −0.25, base −1, t = 0.75; taps −2..1 clamp to 0,0,0,1.
        let w = bicubic_weights(2, 4);
        let t = 0.75f32;
        let c = [cubic2(t + 1.0, -0.75), cubic1(t, -0.75), cubic1(1.0 - t, -0.75), cubic2(2.0 - t, -0.75)];
        assert!((w[0] - (c[0] + c[1] + c[2])).abs() < 1e-6 && (w[1] - c[3]).abs() < 1e-6);
    }
}
