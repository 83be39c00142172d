//! The flow head's velocity through our fused WGSL kernels (`vgt-shaders`): per AdaLN block one
//! launch for the modulation, one for LayerNorm + modulate, one for fc1 + SiLU and one for
//! fc2 + gate + residual, instead of a dozen composed ops.

use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use vgt_shaders::{Modulation, linear, linear_gated, ln_modulate};

use super::{AdaLnBlock, FinalLayer, FlowNet, LN_EPS};
use crate::nn::Upcast;

/// Whether a linear layer is a plain f32 `x·W + b` (no adapter, no f16 storage, a bias).
fn plain(layer: &Linear) -> bool {
    layer.bias.is_some()
        && layer.weight.adapter().is_none()
        && layer.weight.reparameterization::<Upcast>().is_none()
        && layer.weight.val().dtype() == burn::tensor::DType::F32
}

/// Whether every layer the fused path touches is plain.
pub(super) fn plain_layers(net: &FlowNet) -> bool {
    let blocks = net.res_blocks.iter().all(|b| {
        plain(&b.adaLN_modulation) && plain(&b.mlp.fc1) && plain(&b.mlp.fc2) && b.in_ln.beta.is_some()
    });
    blocks && plain(&net.input_proj) && plain(&net.final_layer.adaLN_modulation) && plain(&net.final_layer.linear)
}

fn weights(layer: &Linear) -> (Tensor<2>, Tensor<1>) {
    let bias = layer.bias.as_ref().map(|b| b.val()).expect("plain_layers checked the bias");
    (layer.weight.val(), bias)
}

/// `x·W + b`, with SiLU when asked.
fn lin(layer: &Linear, x: Tensor<2>, silu: bool) -> Tensor<2> {
    let (w, b) = weights(layer);
    linear(x, w, b, silu)
}

impl AdaLnBlock {
    /// [`AdaLnBlock::forward`] with `silu(y)` precomputed (it is the same for every block).
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let modulation = lin(&self.adaLN_modulation, silu_y, false);
        let affine = Some((self.in_ln.gamma.val(), self.in_ln.beta.as_ref().expect("plain_layers checked beta").val()));
        let u = ln_modulate(x.clone(), modulation.clone(), affine, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        let h = lin(&self.mlp.fc1, u, true);
        let (w2, b2) = weights(&self.mlp.fc2);
        linear_gated(h, w2, b2, modulation, 2 * d, x)
    }
}

impl FinalLayer {
    fn forward_fused(&self, x: Tensor<2>, silu_y: Tensor<2>) -> Tensor<2> {
        let [_, d] = x.dims();
        let modulation = lin(&self.adaLN_modulation, silu_y, false);
        let u = ln_modulate(x, modulation, None, Modulation { eps: LN_EPS as f32, shift: 0, scale: d });
        lin(&self.linear, u, false)
    }
}

/// The velocity `net(x, t, c)` for a precomputed conditioning `y`.
///
/// # Shapes
/// - x: `[M, input]`, y: `[M, dim]` → `[M, input]`
pub(super) fn forward(net: &FlowNet, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let silu_y = silu(y);
    let mut h = lin(&net.input_proj, x, false);
    for block in &net.res_blocks {
        h = block.forward_fused(h, silu_y.clone());
    }
    net.final_layer.forward_fused(h, silu_y)
}
