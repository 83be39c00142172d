//! VGT-AE (spec §2): InternViT + pixel shuffle + `mlp1` + latent head, and the DC-AE decoder.

use burn::module::Module;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{Family, VgtConfig, VisionConfig};
use crate::decoder::DcaeDecoder;
use crate::nn::{layer_norm, linear};
use crate::resize::{Filter, resize};
use crate::vit::qwen::QwenVit;
use crate::vit::{InternVit, VisionTower, pixel_shuffle};

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

/// The encoder half: vision tower, `mlp1` (InternViT only) and the latent head.
#[derive(Module, Debug)]
pub struct AeEncoder {
    pub encoder: VisionTower,
    /// Present exactly when the tower is InternViT (the Qwen tower merges tokens itself).
    pub mlp1: Option<NormMlp>,
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
    /// bf16-rounded ones the reference uses (see [`NormConstants`]); InternVL only.
    pub exact_imagenet_constants: bool,
    /// Which image statistics and input rule apply (spec §2.2).
    #[module(skip)]
    pub family: Family,
}

impl VgtAe {
    pub fn new(c: &VgtConfig, device: &Device) -> Self {
        let dv = c.latent.dv;
        let lc = c.latent.latent_channels;
        let mut ae = Self::decoder_only(c, device);
        let (encoder, mlp1) = match &c.vision {
            VisionConfig::InternVit(v) => {
                // Pixel shuffle 0.5 stacks 2×2 tokens.
                (VisionTower::InternVit(InternVit::new(v, device)), Some(NormMlp::new(4 * v.hidden_size, dv, dv, 1e-5, device)))
            }
            VisionConfig::Qwen25Vl(v) => (VisionTower::Qwen25Vl(QwenVit::new(v, device)), None),
        };
        ae.enc = Some(AeEncoder {
            encoder,
            mlp1,
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
            family: c.family(),
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
    /// `(x+1)/2`, then the family's mean/std: what an image in [-1, 1] needs. The default.
    #[default]
    Always,
    /// The reference's data-dependent rule, needed to reproduce it on all-bright inputs. When
    /// `min(x) ≥ 0` over the whole batch, InternVL (tokenizer class) feeds `x` unchanged, while
    /// Qwen2.5-VL skips only `(x+1)/2` and still applies mean/std.
    ReferenceMinRule,
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CLIP statistics of the Qwen2.5-VL tower (used exactly: the Qwen AE keeps them in f32).
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

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
        let to_unit = rule == InputNorm::Always || image.clone().min().into_scalar::<f32>() < 0.0;
        if !to_unit && self.family == Family::InternVl {
            return image;
        }
        let device = image.device();
        let (mean, std) = match self.family {
            Family::Qwen25Vl => (CLIP_MEAN, CLIP_STD),
            Family::InternVl if self.exact_imagenet_constants => NormConstants::Exact.values(),
            Family::InternVl => NormConstants::Bf16Rounded.values(),
        };
        let mean = Tensor::<4>::from_data(TensorData::new(mean.to_vec(), [1, 3, 1, 1]), &device);
        let std = Tensor::<4>::from_data(TensorData::new(std.to_vec(), [1, 3, 1, 1]), &device);
        let unit = if to_unit { (image + 1.0) / 2.0 } else { image };
        (unit - mean) / std
    }

    /// The vision tower and its 2×2 merge: InternViT, pixel shuffle and `mlp1`, or the Qwen
    /// tower with its merger.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` → `[batch, (H/stride)·(W/stride), dv]`
    pub fn features(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [_, _, h, w] = pixels.dims();
        let p = self.stride / 2;
        let enc = self.encoder_half();
        match (&enc.encoder, &enc.mlp1) {
            (VisionTower::InternVit(vit), Some(mlp1)) => mlp1.forward(pixel_shuffle(vit.forward(pixels), h / p, w / p)),
            (VisionTower::Qwen25Vl(vit), _) => vit.forward(pixels),
            (VisionTower::InternVit(_), None) => unreachable!("invariant: VgtAe::new builds mlp1 with InternViT"), // invariant
        }
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
