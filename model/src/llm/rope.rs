//! Rotary position embedding from explicit position ids (spec §3.2).

use burn::tensor::{Device, Tensor, TensorData};

/// `cos` and `sin` tables `[batch, 1, tokens, head_dim]` for the given positions:
/// `inv_freq_j = 1/θ^(2j/head_dim)`, angles `pos·inv_freq` duplicated to the full head dim.
pub fn tables(positions: &[i64], batch: usize, tokens: usize, head_dim: usize, theta: f64, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half).map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    for &p in positions {
        for rep in 0..2 {
            let _ = rep;
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let shape = [batch, 1, tokens, head_dim];
    (Tensor::from_data(TensorData::new(cos, shape), device), Tensor::from_data(TensorData::new(sin, shape), device))
}

/// `x·cos + rotate_half(x)·sin`, with `rotate_half([a, b]) = [−b, a]` over the last axis.
///
/// # Shapes
/// - x: `[batch, heads, tokens, head_dim]`; cos, sin: `[batch, 1, tokens, head_dim]`
pub fn apply(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [_, _, _, d] = x.dims();
    let a = x.clone().narrow(3, 0, d / 2);
    let b = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![b.neg(), a], 3);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_the_identity_and_rotation_preserves_norm() {
        let device = Device::default();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 2, 4]), &device);
        let (cos, sin) = tables(&[0, 5], 1, 2, 4, 1e6, &device);
        let y: Vec<f32> = apply(x, cos, sin).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&y[..4], &[1.0, 2.0, 3.0, 4.0]);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&y[4..]) - 30.0).abs() < 1e-4);
        // Pair (x0, x2) at frequency 1 rotates by 5 rad: x0' = x0·cos5 − x2·sin5.
        assert!((y[4] - (5f32.cos() - 3.0 * 5f32.sin())).abs() < 1e-5);
    }
}
