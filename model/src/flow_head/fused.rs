//! The flow head's velocity with our fused WGSL kernels (`vgt-shaders`): each AdaLN block's
//! LayerNorm + modulate is one launch reading shift and scale straight out of the modulation
//! rows (no chunk copies), and so is the final layer's; the linear layers stay burn's (its
//! tiled matmul with fused epilogues beat our skinny-matmul kernel, see `vgt-shaders`).

use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use vgt_shaders::{Modulation, ln_modulate};

use super::{AdaLnBlock, FinalLayer, FlowNet, LN_EPS};
use crate::nn::lin;

/// Whether every LayerNorm the fused path replaces is the affine one the kernel implements.
pub(super) fn plain_layers(net: &FlowNet) -> bool {
    net.res_blocks.iter().all(|b| b.in_ln.beta.is_some())
}

impl AdaLnBlock {
    /// [`AdaLnBlock::forward`] with `silu(y)` precomputed (it is the same for every block).
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let m = lin(&self.adaLN_modulation, silu_y);
        let affine = self.in_ln.beta.as_ref().map(|beta| (self.in_ln.gamma.val(), beta.val()));
        let u = ln_modulate(x.clone(), m.clone(), affine, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        x + m.narrow(1, 2 * d, d) * self.mlp.forward(u)
    }
}

impl FinalLayer {
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let m = lin(&self.adaLN_modulation, silu_y);
        let u = ln_modulate(x, m, None, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        lin(&self.linear, u)
    }
}

/// The velocity `net(x, t, c)` for a precomputed conditioning `y`.
///
/// # Shapes
/// - x: `[M, input]`, y: `[M, dim]` → `[M, input]`
pub(super) fn forward(net: &FlowNet, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let silu_y = silu(y);
    let mut h = lin(&net.input_proj, x);
    for block in &net.res_blocks {
        h = block.forward_fused(h, silu_y.clone());
    }
    net.final_layer.forward_fused(h, silu_y)
}
