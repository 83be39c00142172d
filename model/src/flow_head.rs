//! The flow-matching head `SimpleMLPAdaLN` (spec §3.10).
#![allow(non_snake_case)] // field names follow the checkpoint (`adaLN_modulation`)

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::FlowHeadConfig;
use crate::nn::{layer_norm, linear};

mod fused;

/// `fc2(SiLU(fc1(x)))` (an `nn.Sequential` with indices 0 and 2).
#[derive(Module, Debug)]
pub struct TwoLayerMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct TimeEmbed {
    pub mlp: TwoLayerMlp,
}

/// An AdaLN residual block.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct AdaLnBlock {
    pub in_ln: LayerNorm,
    pub mlp: TwoLayerMlp,
    pub adaLN_modulation: Linear,
}

/// The modulated final projection.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct FinalLayer {
    pub adaLN_modulation: Linear,
    pub linear: Linear,
}

/// The network `net(x, t, c)`.
#[derive(Module, Debug)]
pub struct FlowNet {
    pub time_embed: TimeEmbed,
    pub cond_embed: Linear,
    pub input_proj: Linear,
    pub res_blocks: Vec<AdaLnBlock>,
    pub final_layer: FinalLayer,
}

/// `image_head`: the network (the sampler lives in `sampler`).
#[derive(Module, Debug)]
pub struct FlowHead {
    pub net: FlowNet,
}

impl FlowHead {
    pub fn new(c: &FlowHeadConfig, device: &Device) -> Self {
        let d = c.dim;
        let block = || AdaLnBlock {
            in_ln: layer_norm(d, LN_EPS, device),
            mlp: TwoLayerMlp { fc1: linear(d, d, true, device), fc2: linear(d, d, true, device) },
            adaLN_modulation: linear(d, 3 * d, true, device),
        };
        Self {
            net: FlowNet {
                time_embed: TimeEmbed {
                    mlp: TwoLayerMlp {
                        fc1: linear(c.frequency_embedding_size, d, true, device),
                        fc2: linear(d, d, true, device),
                    },
                },
                cond_embed: linear(c.cond_dim, d, true, device),
                input_proj: linear(c.input_dim, d, true, device),
                res_blocks: (0..c.layers).map(|_| block()).collect(),
                final_layer: FinalLayer {
                    adaLN_modulation: linear(d, 2 * d, true, device),
                    linear: linear(d, c.input_dim, true, device),
                },
            },
        }
    }
}

/// The sinusoidal timestep features, cos first (spec §3.10 step 2):
/// `freqs_j = exp(−ln(10000)·j / half)`, `[cos(t·f), sin(t·f)]`.
///
/// # Shapes
/// - t: `[M]` → `[M, size]`
pub fn timestep_features(t: Tensor<1>, size: usize) -> Tensor<2> {
    let half = size / 2;
    let ln = (10000f64).ln() as f32;
    let freqs: Vec<f32> = (0..half).map(|j| ((-ln * j as f32) / half as f32).exp()).collect();
    let device = t.device();
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &device);
    let args = t.unsqueeze_dim::<2>(1) * freqs;
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// The epsilon of every LayerNorm in the head (the blocks' `in_ln` and the final layer's).
pub const LN_EPS: f64 = 1e-6;

/// Layer norm over the last axis without affine parameters.
fn layer_norm_plain(x: Tensor<2>, eps: f64) -> Tensor<2> {
    let (var, mean) = x.clone().var_mean_bias(1);
    (x - mean) / (var + eps).sqrt()
}

impl TwoLayerMlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        crate::nn::lin(&self.fc2, silu(crate::nn::lin(&self.fc1, x)))
    }
}

impl AdaLnBlock {
    /// # Shapes
    /// - x, y: `[M, dim]` → `[M, dim]`
    pub fn forward(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        let m = crate::nn::lin(&self.adaLN_modulation, silu(y)).chunk(3, 1);
        let (shift, scale, gate) = (m[0].clone(), m[1].clone(), m[2].clone());
        let u = self.in_ln.forward(x.clone()) * (scale + 1.0) + shift;
        x + gate * self.mlp.forward(u)
    }
}

impl FinalLayer {
    pub fn forward(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        let m = crate::nn::lin(&self.adaLN_modulation, silu(y)).chunk(2, 1);
        let (shift, scale) = (m[0].clone(), m[1].clone());
        crate::nn::lin(&self.linear, layer_norm_plain(x, LN_EPS) * (scale + 1.0) + shift)
    }
}

impl FlowNet {
    /// The conditioning `y = time_embed(t) + cond_embed(c)`.
    ///
    /// # Shapes
    /// - t: `[M]`, c: `[M, cond]` → `[M, dim]`
    pub fn condition(&self, t: Tensor<1>, c: Tensor<2>) -> Tensor<2> {
        let size = self.time_embed.mlp.fc1.weight.val().dims()[0];
        self.time_embed.mlp.forward(timestep_features(t, size)) + crate::nn::lin(&self.cond_embed, c)
    }

    /// The velocity `net(x, t, c)`.
    ///
    /// # Shapes
    /// - x: `[M, input]`, t: `[M]`, c: `[M, cond]` → `[M, input]`
    pub fn forward(&self, x: Tensor<2>, t: Tensor<1>, c: Tensor<2>) -> Tensor<2> {
        self.forward_with_condition(x, self.condition(t, c))
    }

    /// The velocity for a precomputed conditioning `y` (see [`FlowNet::condition`]): our fused
    /// WGSL kernels where they apply ([`FlowNet::fusable`]), else composed tensor ops.
    pub fn forward_with_condition(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        if self.fusable(&[&x, &y]) { fused::forward(self, x, y) } else { self.forward_composed(x, y) }
    }

    /// Whether these inputs take the fused kernels: switched on, wgpu, f32, no gradients (LoRA
    /// adapters and f16 storage are fine: those linear layers stay burn's).
    pub fn fusable(&self, inputs: &[&Tensor<2>]) -> bool {
        vgt_shaders::usable(inputs) && fused::plain_layers(self)
    }

    /// [`FlowNet::forward_with_condition`] without the fused path (the reference it is tested
    /// against; its linear layers still take the skinny-matmul kernel of [`crate::nn::lin`]
    /// unless kernels are switched off).
    pub fn forward_composed(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        let mut h = crate::nn::lin(&self.input_proj, x);
        for block in &self.res_blocks {
            h = block.forward(h, y.clone());
        }
        self.final_layer.forward(h, y)
    }
}
