//! The flow head's velocity with our fused WGSL kernels (`vgt-shaders`): per AdaLN block one
//! launch for the modulation, one for LayerNorm + modulate (shift and scale read straight out of
//! the modulation rows), one for fc1 + SiLU and one for fc2 + gate + residual. A linear layer
//! the kernel does not take (see `nn::kernel_linear`: LoRA adapter, f16 storage, a width not a
//! multiple of 4, more than 64 rows) stays burn's.

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use vgt_shaders::{Modulation, linear, linear_gated, ln_modulate};

use super::{AdaLnBlock, FinalLayer, FlowNet, LN_EPS};
use crate::nn::{kernel_linear, lin};

/// Whether every LayerNorm the fused path replaces is the affine one the kernel implements.
pub(super) fn plain_layers(net: &FlowNet) -> bool {
    net.res_blocks.iter().all(|b| b.in_ln.beta.is_some())
}

/// `x·W + b`, with SiLU when asked: the skinny-matmul kernel with SiLU fused where
/// [`kernel_linear`] allows it, else burn's.
fn linear_act(layer: &Linear, x: Tensor<2>, act: bool) -> Tensor<2> {
    match kernel_linear(layer, &x) {
        Some((w, Some(b))) => linear(x, w, b, act),
        _ if act => silu(lin(layer, x)),
        _ => lin(layer, x),
    }
}

impl AdaLnBlock {
    /// [`AdaLnBlock::forward`] with `silu(y)` precomputed (it is the same for every block).
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let m = linear_act(&self.adaLN_modulation, silu_y, false);
        let affine = self.in_ln.beta.as_ref().map(|beta| (self.in_ln.gamma.val(), beta.val()));
        let u = ln_modulate(x.clone(), m.clone(), affine, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        let h = linear_act(&self.mlp.fc1, u, true);
        match kernel_linear(&self.mlp.fc2, &h) {
            Some((w, Some(b))) => linear_gated(h, w, b, m, 2 * d, x),
            _ => x + m.narrow(1, 2 * d, d) * lin(&self.mlp.fc2, h),
        }
    }
}

impl FinalLayer {
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let m = linear_act(&self.adaLN_modulation, silu_y, false);
        let u = ln_modulate(x, m, None, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        linear_act(&self.linear, u, false)
    }
}

/// The velocity `net(x, t, c)` for a precomputed conditioning `y`.
///
/// # Shapes
/// - x: `[M, input]`, y: `[M, dim]` → `[M, input]`
pub(super) fn forward(net: &FlowNet, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let silu_y = silu(y);
    let mut h = linear_act(&net.input_proj, x, false);
    for block in &net.res_blocks {
        h = block.forward_fused(h, silu_y.clone());
    }
    net.final_layer.forward_fused(h, silu_y)
}
