//! The DC-AE f32c32 decoder (spec §2.8).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::{relu, silu};
use burn::tensor::{Device, Tensor};

use crate::config::{BlockType, DecoderConfig};
use crate::nn::{ChannelRmsNorm, linear};

fn conv(cin: usize, cout: usize, k: usize, groups: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_groups(groups)
        .with_bias(bias)
        .init(device)
}

/// `x + RMS_dc(conv2(SiLU(conv1(x))))`.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub norm: ChannelRmsNorm,
}

/// The multi-scale branch: depthwise 5×5 then grouped 1×1.
#[derive(Module, Debug)]
pub struct MultiScale {
    pub proj_in: Conv2d,
    pub proj_out: Conv2d,
}

/// SANA multi-scale linear attention (LiteMLA).
#[derive(Module, Debug)]
pub struct LiteMla {
    pub head_dim: usize,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_qkv_multiscale: MultiScale,
    pub to_out: Linear,
    pub norm_out: ChannelRmsNorm,
}

/// GLUMBConv (expand 4).
#[derive(Module, Debug)]
pub struct GluMbConv {
    pub conv_inverted: Conv2d,
    pub conv_depth: Conv2d,
    pub conv_point: Conv2d,
    pub norm: ChannelRmsNorm,
}

/// `GLUMBConv(LiteMLA(x))`.
#[derive(Module, Debug)]
pub struct EfficientVitBlock {
    pub attn: LiteMla,
    pub conv_out: GluMbConv,
}

/// One decoder block.
#[derive(Module, Debug)]
pub enum Block {
    Res(ResBlock),
    Vit(EfficientVitBlock),
}

/// Nearest ×2 then conv, plus the channel-duplicating pixel-shuffle shortcut.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub conv: Conv2d,
}

/// One stage: an optional upsampler then its blocks.
#[derive(Module, Debug)]
pub struct Stage {
    pub upsample: Option<UpBlock>,
    pub blocks: Vec<Block>,
}

#[derive(Module, Debug)]
pub struct DcaeDecoder {
    pub conv_in: Conv2d,
    pub up_blocks: Vec<Stage>,
    pub norm_out: ChannelRmsNorm,
    pub conv_out: Conv2d,
}

impl DcaeDecoder {
    pub fn new(c: &DecoderConfig, device: &Device) -> Self {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let stages = (0..n)
            .map(|s| {
                let cs = ch[s];
                let upsample = (s + 1 < n).then(|| UpBlock { conv: conv(ch[s + 1], cs, 3, 1, true, device) });
                let blocks = (0..c.layers_per_block[s])
                    .map(|_| match c.block_types[s] {
                        BlockType::ResBlock => Block::Res(ResBlock {
                            conv1: conv(cs, cs, 3, 1, true, device),
                            conv2: conv(cs, cs, 3, 1, false, device),
                            norm: ChannelRmsNorm::new(cs, device),
                        }),
                        BlockType::EfficientViTBlock => Block::Vit(vit_block(cs, c, s, device)),
                    })
                    .collect();
                Stage { upsample, blocks }
            })
            .collect();
        Self {
            conv_in: conv(c.latent_channels, ch[n - 1], 3, 1, true, device),
            up_blocks: stages,
            norm_out: ChannelRmsNorm::new(ch[0], device),
            conv_out: conv(ch[0], 3, 3, 1, true, device),
        }
    }
}

fn vit_block(cs: usize, c: &DecoderConfig, stage: usize, device: &Device) -> EfficientVitBlock {
    let d = c.attention_head_dim;
    let heads = cs / d;
    let k = c.qkv_multiscales[stage].first().copied().unwrap_or(5);
    EfficientVitBlock {
        attn: LiteMla {
            head_dim: d,
            to_q: linear(cs, cs, false, device),
            to_k: linear(cs, cs, false, device),
            to_v: linear(cs, cs, false, device),
            to_qkv_multiscale: MultiScale {
                proj_in: conv(3 * cs, 3 * cs, k, 3 * cs, false, device),
                proj_out: conv(3 * cs, 3 * cs, 1, 3 * heads, false, device),
            },
            to_out: linear(2 * cs, cs, false, device),
            norm_out: ChannelRmsNorm::new(cs, device),
        },
        conv_out: GluMbConv {
            conv_inverted: conv(cs, 8 * cs, 1, 1, true, device),
            conv_depth: conv(8 * cs, 8 * cs, 3, 8 * cs, true, device),
            conv_point: conv(4 * cs, cs, 1, 1, false, device),
            norm: ChannelRmsNorm::new(cs, device),
        },
    }
}

/// Applies a per-pixel Linear to an NCHW map.
fn pixel_linear(lin: &Linear, x: Tensor<4>) -> Tensor<4> {
    lin.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

/// Repeats every channel `r` times in place: output channel k is input channel ⌊k/r⌋.
pub fn repeat_channels(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, 1, h * w]).expand([b, c, r, h * w]).reshape([b, c * r, h, w])
}

/// `pixel_shuffle(2)`: `out[o, 2h+i, 2w+j] = x[4o + 2i + j, h, w]`.
pub fn pixel_shuffle2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c / 4, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([b, c / 4, 2 * h, 2 * w])
}

/// Nearest-neighbour ×2 upsampling.
pub fn nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

impl UpBlock {
    /// # Shapes
    /// - x: `[batch, Cin, H, W]` → `[batch, Cout, 2H, 2W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, cin, _, _] = x.dims();
        let cout = self.conv.weight.val().dims()[0];
        let shortcut = pixel_shuffle2(repeat_channels(x.clone(), 4 * cout / cin));
        self.conv.forward(nearest2(x)) + shortcut
    }
}

impl ResBlock {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        x.clone() + self.norm.forward(self.conv2.forward(silu(self.conv1.forward(x))))
    }
}

impl LiteMla {
    /// Multi-scale linear attention with its residual (spec §2.8, LiteMLA).
    ///
    /// # Shapes
    /// - x: `[batch, C, H, W]` → same
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let d = self.head_dim;
        let n = h * w;
        let qkv = Tensor::cat(
            vec![pixel_linear(&self.to_q, x.clone()), pixel_linear(&self.to_k, x.clone()), pixel_linear(&self.to_v, x.clone())],
            1,
        );
        let ms = self.to_qkv_multiscale.proj_out.forward(self.to_qkv_multiscale.proj_in.forward(qkv.clone()));
        let s = Tensor::cat(vec![qkv, ms], 1);
        let groups = 2 * c / d;
        let s = s.reshape([b, groups, 3 * d, n]);
        let q = relu(s.clone().narrow(2, 0, d));
        let k = relu(s.clone().narrow(2, d, d));
        let v = s.narrow(2, 2 * d, d);
        let out = if n > d {
            // Linear path: (V₁ Kᵀ) Q with a row of ones appended to V for the normaliser.
            let ones = Tensor::<4>::ones([b, groups, 1, n], &v.device());
            let v1 = Tensor::cat(vec![v, ones], 2);
            let vk = v1.matmul(k.swap_dims(2, 3));
            let o = vk.matmul(q);
            let num = o.clone().narrow(2, 0, d);
            let den = o.narrow(2, d, 1);
            num / (den + 1e-15)
        } else {
            // Quadratic path (tiny maps only): Sc = KᵀQ normalised per column.
            let sc = k.swap_dims(2, 3).matmul(q);
            let sum = sc.clone().sum_dim(2);
            v.matmul(sc / (sum + 1e-15))
        };
        let out = out.reshape([b, 2 * c, h, w]);
        x + self.norm_out.forward(pixel_linear(&self.to_out, out))
    }
}

impl GluMbConv {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv_depth.forward(silu(self.conv_inverted.forward(x.clone())));
        let [_, c8, _, _] = y.dims();
        let u = y.clone().narrow(1, 0, c8 / 2);
        let gate = y.narrow(1, c8 / 2, c8 / 2);
        x + self.norm.forward(self.conv_point.forward(u * silu(gate)))
    }
}

impl Block {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Res(r) => r.forward(x),
            Block::Vit(v) => v.conv_out.forward(v.attn.forward(x)),
        }
    }
}

impl Stage {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = match &self.upsample {
            Some(up) => up.forward(x),
            None => x,
        };
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

impl DcaeDecoder {
    /// `conv_in(z)` plus the channel-repeat shortcut (spec §2.8 step 1).
    ///
    /// # Shapes
    /// - z: `[batch, latent, h, w]` → `[batch, C_last, h, w]`
    pub fn stem(&self, z: Tensor<4>) -> Tensor<4> {
        let [_, lc, _, _] = z.dims();
        let c = self.conv_in.weight.val().dims()[0];
        self.conv_in.forward(z.clone()) + repeat_channels(z, c / lc)
    }

    /// `conv_out(ReLU(norm_out(x)))`.
    pub fn head(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv_out.forward(relu(self.norm_out.forward(x)))
    }

    /// # Shapes
    /// - z: `[batch, latent, h, w]` → `[batch, 3, f·h, f·w]` with f = 2^(stages−1)
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem(z);
        for stage in self.up_blocks.iter().rev() {
            x = stage.forward(x);
        }
        self.head(x)
    }
}
