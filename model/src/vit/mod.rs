//! The AE's vision towers: InternViT-300M (spec §2.3, this module) and the Qwen2.5-VL tower
//! ([`qwen`], spec §2.7).

pub mod qwen;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor};

use crate::resize::{Filter, resize};

use crate::config::VitConfig;
use crate::nn::{layer_norm, linear, param};

/// Patch conv, CLS token and position embedding.
#[derive(Module, Debug)]
pub struct Embeddings {
    pub class_embedding: Param<Tensor<3>>,
    pub patch_embedding: Conv2d,
    pub position_embedding: Param<Tensor<3>>,
}

/// Fused-qkv softmax attention.
#[derive(Module, Debug)]
pub struct VitAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

/// `fc2(GELU(fc1(x)))`.
#[derive(Module, Debug)]
pub struct VitMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A pre-norm layer with layer scale.
#[derive(Module, Debug)]
pub struct VitLayer {
    pub attn: VitAttention,
    pub mlp: VitMlp,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub ls1: Param<Tensor<1>>,
    pub ls2: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct VitEncoder {
    pub layers: Vec<VitLayer>,
}

/// The vision tower of an AE, by model family. Its fields sit under the checkpoint's `encoder.*`
/// (the variant name is not part of a parameter path).
#[derive(Module, Debug)]
pub enum VisionTower {
    /// Followed by pixel shuffle and `mlp1` ([`crate::ae::AeEncoder::mlp1`]).
    InternVit(InternVit),
    /// The merger is part of the tower.
    Qwen25Vl(qwen::QwenVit),
}

/// The whole vision tower.
#[derive(Module, Debug)]
pub struct InternVit {
    pub embeddings: Embeddings,
    pub encoder: VitEncoder,
}

impl InternVit {
    pub fn new(c: &VitConfig, device: &Device) -> Self {
        let d = c.hidden_size;
        let grid = c.grid();
        let layer = || VitLayer {
            attn: VitAttention {
                qkv: linear(d, 3 * d, true, device),
                proj: linear(d, d, true, device),
                num_heads: c.num_attention_heads,
            },
            mlp: VitMlp { fc1: linear(d, c.intermediate_size, true, device), fc2: linear(c.intermediate_size, d, true, device) },
            norm1: layer_norm(d, c.layer_norm_eps, device),
            norm2: layer_norm(d, c.layer_norm_eps, device),
            ls1: param([d], device),
            ls2: param([d], device),
        };
        Self {
            embeddings: Embeddings {
                class_embedding: param([1, 1, d], device),
                patch_embedding: Conv2dConfig::new([3, d], [c.patch_size, c.patch_size])
                    .with_stride([c.patch_size, c.patch_size])
                    .init(device),
                position_embedding: param([1, 1 + grid * grid, d], device),
            },
            encoder: VitEncoder { layers: (0..c.num_hidden_layers).map(|_| layer()).collect() },
        }
    }
}

impl Embeddings {
    /// The position embedding for a `gh × gw` patch grid: the CLS row as is, the native grid
    /// resized bicubically (spec §2.3 step 3).
    ///
    /// # Shapes
    /// - returns `[1, 1 + gh·gw, D]`
    pub fn position(&self, gh: usize, gw: usize) -> Tensor<3> {
        let pos = self.position_embedding.val();
        let [_, n, d] = pos.dims();
        let g = ((n - 1) as f64).sqrt().round() as usize;
        let cls = pos.clone().narrow(1, 0, 1);
        let grid = pos.narrow(1, 1, n - 1).reshape([1, g, g, d]).permute([0, 3, 1, 2]);
        let grid = resize(grid, gh, gw, Filter::Bicubic);
        let grid = grid.reshape([1, d, gh * gw]).swap_dims(1, 2);
        Tensor::cat(vec![cls, grid], 1)
    }

    /// Patch conv, CLS token and position embedding.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` → `[batch, 1 + (H/p)·(W/p), D]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let patches = self.patch_embedding.forward(pixels);
        let [batch, d, gh, gw] = patches.dims();
        let tokens = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
        let cls = self.class_embedding.val().expand([batch, 1, d]);
        Tensor::cat(vec![cls, tokens], 1) + self.position(gh, gw)
    }
}

impl VitAttention {
    /// Softmax attention without a mask.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, D]` → same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, d] = x.dims();
        let heads = self.num_heads;
        let hd = d / heads;
        let qkv = self.qkv.forward(x).reshape([batch, tokens, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([batch, heads, tokens, hd]);
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = (q * (hd as f64).powf(-0.5)).matmul(k.swap_dims(2, 3));
        let out = softmax(scores, 3).matmul(v);
        self.proj.forward(out.swap_dims(1, 2).reshape([batch, tokens, d]))
    }
}

impl VitLayer {
    /// `x + ls1·attn(norm1(x))`, then `x + ls2·mlp(norm2(x))`.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, D]` → same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let ls1 = self.ls1.val().unsqueeze::<3>();
        let ls2 = self.ls2.val().unsqueeze::<3>();
        let x = x.clone() + self.attn.forward(self.norm1.forward(x)) * ls1;
        let h = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(self.norm2.forward(x.clone()))));
        x + h * ls2
    }
}

impl InternVit {
    /// The encoder output with the CLS token dropped.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` (normalised) → `[batch, (H/p)·(W/p), D]`
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        let mut x = self.embeddings.forward(pixels);
        for layer in &self.encoder.layers {
            x = layer.forward(x);
        }
        let [batch, n, d] = x.dims();
        x.narrow(1, 1, n - 1).reshape([batch, n - 1, d])
    }
}

/// Pixel shuffle 0.5, "v2" order (spec §2.4): `Y[r, c] = [X[2r,2c], X[2r,2c+1], X[2r+1,2c], X[2r+1,2c+1]]`.
///
/// # Shapes
/// - x: `[batch, h·w, C]` with the grid `h × w` → `[batch, (h/2)·(w/2), 4C]`
pub fn pixel_shuffle(x: Tensor<3>, h: usize, w: usize) -> Tensor<3> {
    let [batch, _, c] = x.dims();
    x.reshape([batch, h / 2, 2, w / 2, 2 * c]).swap_dims(2, 3).reshape([batch, (h / 2) * (w / 2), 4 * c])
}
