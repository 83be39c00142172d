//! VGT-AE (spec §2): InternViT + pixel shuffle + `mlp1` + latent head, and the DC-AE decoder.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::VgtConfig;
use crate::decoder::DcaeDecoder;
use crate::nn::{layer_norm, linear};
use crate::resize::{Filter, resize};
use crate::vit::{InternVit, pixel_shuffle};

/// `LN → Linear → GELU → Linear` (an `nn.Sequential` with indices 0, 1, 3).
#[derive(Module, Debug)]
pub struct NormMlp {
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl NormMlp {
    fn new(d_in: usize, d_hidden: usize, d_out: usize, eps: f64, device: &Device) -> Self {
        Self {
            norm: layer_norm(d_in, eps, device),
            fc1: linear(d_in, d_hidden, true, device),
            fc2: linear(d_hidden, d_out, true, device),
        }
    }
}

/// `x + mlp(x)` with a LayerNorm eps 1e-6 (spec §2.6 step 2).
#[derive(Module, Debug)]
pub struct LatentResBlock {
    pub mlp: NormMlp,
}

/// The encoder half: ViT, `mlp1` and the latent head.
#[derive(Module, Debug)]
pub struct AeEncoder {
    pub encoder: InternVit,
    pub mlp1: NormMlp,
    pub down_blocks: Vec<LatentResBlock>,
    pub down_mlp: NormMlp,
}

/// The autoencoder. Generation builds it without its encoder half ([`VgtAe::decoder_only`]).
#[derive(Module, Debug)]
pub struct VgtAe {
    /// Flattened into the checkpoint's key space (`encoder.*`, `mlp1.*`, ...): see [`AeEncoder`].
    pub enc: Option<AeEncoder>,
    pub decoder: DcaeDecoder,
    /// Pixels per latent cell (28 for the real model).
    pub stride: usize,
    pub scale_embedding: f64,
    pub encoder_norm: bool,
    /// Whether [`VgtAe::normalize`] uses the exact ImageNet constants rather than the
    /// bf16-rounded ones the reference uses (see [`NormConstants`]).
    pub exact_imagenet_constants: bool,
}

impl VgtAe {
    pub fn new(c: &VgtConfig, device: &Device) -> Self {
        let ps = 4 * c.vit.hidden_size; // pixel shuffle 0.5 stacks 2×2 tokens
        let dv = c.latent.dv;
        let lc = c.latent.latent_channels;
        let mut ae = Self::decoder_only(c, device);
        ae.enc = Some(AeEncoder {
            encoder: InternVit::new(&c.vit, device),
            mlp1: NormMlp::new(ps, dv, dv, 1e-5, device),
            down_blocks: (0..c.latent.num_res_blocks)
                .map(|_| LatentResBlock { mlp: NormMlp::new(dv, dv, dv, 1e-6, device) })
                .collect(),
            down_mlp: NormMlp::new(dv, lc, lc, 1e-5, device),
        });
        ae
    }

    /// Only the decoder (what generation needs).
    pub fn decoder_only(c: &VgtConfig, device: &Device) -> Self {
        Self {
            enc: None,
            decoder: DcaeDecoder::new(&c.decoder, device),
            stride: c.stride(),
            scale_embedding: c.latent.scale_embedding,
            encoder_norm: c.latent.encoder_norm,
            exact_imagenet_constants: false,
        }
    }
}

impl NormMlp {
    /// `fc2(GELU(fc1(LN(x))))`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.fc2.forward(gelu(self.fc1.forward(self.norm.forward(x))))
    }
}

/// How an image in [-1, 1] is normalised for the ViT (spec §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputNorm {
    /// `(x+1)/2`, then ImageNet mean/std: what an image in [-1, 1] needs. The default.
    #[default]
    Always,
    /// The reference tokenizer's rule: normalise only when `min(x) < 0` over the whole batch,
    /// otherwise feed `x` unchanged. Needed to reproduce the reference on all-bright inputs.
    ReferenceMinRule,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The ImageNet constants as the reference really uses them: `VLVAE_InterVL3_Train` casts
/// itself to bf16 at construction, its mean/std buffers included, so training and inference
/// normalise with bf16-rounded values (0.484375, 0.455078125, 0.40625 / 0.228515625,
/// 0.2236328125, 0.224609375).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormConstants {
    /// bf16-rounded, what the released AE saw in training. The default.
    #[default]
    Bf16Rounded,
    /// The exact f32 constants (the `internvl-tiny` fixtures restore these).
    Exact,
}

impl NormConstants {
    fn values(self) -> ([f32; 3], [f32; 3]) {
        let round = |v: [f32; 3]| v.map(|x| half::bf16::from_f32(x).to_f32());
        match self {
            NormConstants::Exact => (IMAGENET_MEAN, IMAGENET_STD),
            NormConstants::Bf16Rounded => (round(IMAGENET_MEAN), round(IMAGENET_STD)),
        }
    }
}

/// Channel layer norm without affine over axis 1 (the latent's `encoder_norm`).
pub fn channel_layer_norm(z: Tensor<4>, eps: f64) -> Tensor<4> {
    let (var, mean) = z.clone().var_mean_bias(1);
    (z - mean) / (var + eps).sqrt()
}

impl VgtAe {
    /// The ViT input for an image in [-1, 1].
    ///
    /// # Shapes
    /// - image: `[batch, 3, H, W]` → same
    pub fn normalize(&self, image: Tensor<4>, rule: InputNorm) -> Tensor<4> {
        if rule == InputNorm::ReferenceMinRule {
            let min: f32 = image.clone().min().into_scalar::<f32>();
            if min >= 0.0 {
                return image;
            }
        }
        let device = image.device();
        let constants = if self.exact_imagenet_constants { NormConstants::Exact } else { NormConstants::Bf16Rounded };
        let (mean, std) = constants.values();
        let mean = Tensor::<4>::from_data(TensorData::new(mean.to_vec(), [1, 3, 1, 1]), &device);
        let std = Tensor::<4>::from_data(TensorData::new(std.to_vec(), [1, 3, 1, 1]), &device);
        ((image + 1.0) / 2.0 - mean) / std
    }

    /// ViT, pixel shuffle and `mlp1`.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` → `[batch, (H/stride)·(W/stride), dv]`
    pub fn features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [_, _, h, w] = pixels.dims();
        let p = self.stride / 2;
        let enc = self.encoder_half();
        let tokens = enc.encoder.forward(pixels);
        enc.mlp1.forward(pixel_shuffle(tokens, h / p, w / p))
    }

    /// The encoder half. Calling the encoder of a decoder-only AE is a programming error.
    pub fn encoder_half(&self) -> &AeEncoder {
        self.enc.as_ref().expect("invariant: encode is only called on an AE built with VgtAe::new") // invariant
    }

    /// The latent head before the channel norm (spec §2.6 steps 2–5).
    ///
    /// # Shapes
    /// - features: `[batch, h·w, dv]` → `[batch, C, h, w]`
    pub fn latent_pre_norm(&self, features: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
        let enc = self.encoder_half();
        let mut x = features;
        for block in &enc.down_blocks {
            x = x.clone() + block.mlp.forward(x);
        }
        let z = enc.down_mlp.forward(x);
        let [batch, _, c] = z.dims();
        z.swap_dims(1, 2).reshape([batch, c, h, w]) * self.scale_embedding
    }

    /// Encodes an image in [-1, 1] to its latent.
    ///
    /// # Shapes
    /// - image: `[batch, 3, H, W]` (H, W multiples of the stride) → `[batch, C, H/stride, W/stride]`
    pub fn encode(&self, image: Tensor<4>, rule: InputNorm) -> Tensor<4> {
        let [_, _, h, w] = image.dims();
        let (lh, lw) = (h / self.stride, w / self.stride);
        let features = self.features(self.normalize(image, rule));
        let z = self.latent_pre_norm(features, lh, lw);
        if self.encoder_norm { channel_layer_norm(z, 1e-6) } else { z }
    }

    /// Decodes a latent to an image in ≈[-1, 1] (not clamped), resized to `stride ×` the latent
    /// (spec §2.9).
    ///
    /// # Shapes
    /// - z: `[batch, C, h, w]` → `[batch, 3, stride·h, stride·w]`
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = z.dims();
        let y = self.decoder.forward(z / self.scale_embedding);
        resize(y, self.stride * h, self.stride * w, Filter::Bilinear)
    }
}
