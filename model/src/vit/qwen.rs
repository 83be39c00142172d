//! The Qwen2.5-VL vision tower of the VGT-Qwen2.5-VL autoencoder (spec §2.7): patches in
//! merge-block-major order, a bias-free patch projection, 2-D rotary embeddings, blocks that
//! attend within windows of merged tokens or over the whole image, and the 2×2 merger.
//!
//! The tokens are permuted into window order (as the reference does) and every block attends
//! per image: a window block through a block-diagonal mask over that image's windows. The
//! merger output is permuted back to row-major merged-grid order.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::QwenVitConfig;
use crate::llm::rope;
use crate::nn::{RmsNorm, lin, linear, param};

/// The Conv3d weight `[D, 3, t, p, p]` (kernel = stride, no bias), applied as a matrix.
#[derive(Module, Debug)]
pub struct PatchProj {
    pub weight: Param<Tensor<5>>,
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: PatchProj,
}

/// Fused-qkv attention with biases.
#[derive(Module, Debug)]
pub struct QwenAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

/// `down(SiLU(gate(x)) ⊙ up(x))`, all three with bias.
#[derive(Module, Debug)]
pub struct QwenMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct QwenBlock {
    pub norm1: RmsNorm,
    pub norm2: RmsNorm,
    pub attn: QwenAttention,
    pub mlp: QwenMlp,
}

/// `Linear → GELU → Linear` (`nn.Sequential` indices 0 and 2).
#[derive(Module, Debug)]
pub struct MergerMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// RMS norm per patch, then the four patches of a merge unit concatenated through the MLP.
#[derive(Module, Debug)]
pub struct Merger {
    pub ln_q: RmsNorm,
    pub mlp: MergerMlp,
}

/// The whole tower.
#[derive(Module, Debug)]
pub struct QwenVit {
    pub patch_embed: PatchEmbed,
    pub blocks: Vec<QwenBlock>,
    pub merger: Merger,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    /// Window side in merge units.
    pub window_units: usize,
    pub rope_theta: f64,
    /// Per block: full attention (else window attention).
    #[module(skip)]
    pub full_attention: Vec<bool>,
}

impl QwenVit {
    pub fn new(c: &QwenVitConfig, device: &Device) -> Self {
        let d = c.hidden_size;
        let m = c.intermediate_size;
        let unit = c.spatial_merge_size * c.spatial_merge_size * d;
        let block = || QwenBlock {
            norm1: RmsNorm::new(d, c.rms_norm_eps, device),
            norm2: RmsNorm::new(d, c.rms_norm_eps, device),
            attn: QwenAttention { qkv: linear(d, 3 * d, true, device), proj: linear(d, d, true, device), num_heads: c.num_heads },
            mlp: QwenMlp { gate_proj: linear(d, m, true, device), up_proj: linear(d, m, true, device), down_proj: linear(m, d, true, device) },
        };
        Self {
            patch_embed: PatchEmbed {
                proj: PatchProj { weight: param([d, 3, c.temporal_patch_size, c.patch_size, c.patch_size], device) },
            },
            blocks: (0..c.depth).map(|_| block()).collect(),
            merger: Merger {
                ln_q: RmsNorm::new(d, c.rms_norm_eps, device),
                mlp: MergerMlp { fc1: linear(unit, unit, true, device), fc2: linear(unit, c.out_hidden_size, true, device) },
            },
            patch_size: c.patch_size,
            temporal_patch_size: c.temporal_patch_size,
            window_units: c.window_units(),
            rope_theta: c.rope_theta,
            full_attention: (0..c.depth).map(|i| c.fullatt_block_indexes.contains(&i)).collect(),
        }
    }

    fn width(&self) -> usize {
        self.patch_embed.proj.weight.lazy_shape().dims::<5>()[0]
    }

    fn head_dim(&self) -> usize {
        self.width() / self.blocks.first().map_or(1, |b| b.attn.num_heads.max(1))
    }
}

/// The window partition of one image's `mh × mw` merged grid into `ws × ws` windows (spec §2.7
/// step 4, `get_window_index`).
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    /// Position j in window order holds merge unit `order[j]` (row-major index).
    pub order: Vec<usize>,
    /// Number of merge units in each non-empty window, in window order.
    pub sizes: Vec<usize>,
}

/// Windows row-major over the padded grid, units row-major inside each window; partial edge
/// windows keep their real units, the empty windows of the padding (added even when the grid
/// divides evenly: a reference quirk without effect) are dropped.
pub fn windows(mh: usize, mw: usize, ws: usize) -> Windows {
    let (nh, nw) = (mh / ws + 1, mw / ws + 1);
    let mut order = Vec::with_capacity(mh * mw);
    let mut sizes = Vec::new();
    for wr in 0..nh {
        for wc in 0..nw {
            let before = order.len();
            for r in wr * ws..((wr + 1) * ws).min(mh) {
                for c in wc * ws..((wc + 1) * ws).min(mw) {
                    order.push(r * mw + c);
                }
            }
            if order.len() > before {
                sizes.push(order.len() - before);
            }
        }
    }
    Windows { order, sizes }
}

/// What the tower computed on the way, for parity tests and inspection (patch order: merge-block
/// major; block outputs in window order).
#[derive(Default)]
pub struct QwenTrace {
    pub patches: Option<Tensor<3>>,
    pub patch_embed: Option<Tensor<3>>,
    pub rotary_angles: Vec<f32>,
    pub windows: Option<Windows>,
    pub blocks: Vec<Tensor<3>>,
    pub merger_windowed: Option<Tensor<3>>,
}

impl QwenAttention {
    /// Softmax attention per image with rotary q/k and an optional additive mask.
    ///
    /// # Shapes
    /// - x: `[batch, tokens, D]`; cos, sin: `[1, 1, tokens, head_dim]`; mask: `[1, 1, tokens, tokens]`
    fn forward(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>, mask: Option<&Tensor<4>>) -> Tensor<3> {
        let [batch, tokens, d] = x.dims();
        let heads = self.num_heads;
        let hd = d / heads;
        let qkv = lin(&self.qkv, x).reshape([batch, tokens, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([batch, heads, tokens, hd]);
        let q = rope::apply(part(0), cos.clone(), sin.clone());
        let k = rope::apply(part(1), cos.clone(), sin.clone());
        let mut scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5);
        if let Some(m) = mask {
            scores = scores + m.clone();
        }
        let out = softmax(scores, 3).matmul(part(2));
        lin(&self.proj, out.swap_dims(1, 2).reshape([batch, tokens, d]))
    }
}

impl QwenBlock {
    fn forward(&self, x: Tensor<3>, cos: &Tensor<4>, sin: &Tensor<4>, mask: Option<&Tensor<4>>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), cos, sin, mask);
        let h = self.norm2.forward(x.clone());
        let mlp = &self.mlp;
        x + lin(&mlp.down_proj, silu(lin(&mlp.gate_proj, h.clone())) * lin(&mlp.up_proj, h))
    }
}

fn index(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [values.len()]), device)
}

impl QwenVit {
    /// The patch vectors in merge-block-major order, each `(channel, t, py, px)` with the frame
    /// repeated over `t`.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` → `[batch, (H/p)·(W/p), 3·t·p·p]`
    pub fn patches(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = pixels.dims();
        let (p, t) = (self.patch_size, self.temporal_patch_size);
        let (gh, gw) = (h / p, w / p);
        let n = gh * gw;
        let x = pixels.reshape([b, c, gh / 2, 2, p, gw / 2, 2, p]).permute([0, 2, 5, 3, 6, 1, 4, 7]);
        x.reshape([b * n, c, 1, p * p]).expand([b * n, c, t, p * p]).reshape([b, n, c * t * p * p])
    }

    /// `rot_pos_emb`: per patch (merge-block-major), `[row·inv_freq, col·inv_freq]` with
    /// `head_dim/4` frequencies `1/θ^(2j/(head_dim/2))`; `[patches × head_dim/2]` row-major.
    pub fn rotary_angles(&self, gh: usize, gw: usize) -> Vec<f32> {
        let half = self.head_dim() / 2;
        let inv: Vec<f32> = (0..half / 2).map(|j| 1.0 / (self.rope_theta as f32).powf((2 * j) as f32 / half as f32)).collect();
        let mut out = Vec::with_capacity(gh * gw * half);
        for hb in 0..gh / 2 {
            for wb in 0..gw / 2 {
                for m in 0..2 {
                    for n in 0..2 {
                        let (r, c) = ((2 * hb + m) as f32, (2 * wb + n) as f32);
                        out.extend(inv.iter().map(|f| r * f));
                        out.extend(inv.iter().map(|f| c * f));
                    }
                }
            }
        }
        out
    }

    /// The tower on normalised pixels (H, W multiples of 2 × patch).
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, H, W]` → `[batch, (H/2p)·(W/2p), out_hidden]`, row-major merged grid
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<3> {
        self.forward_traced(pixels, None)
    }

    /// [`QwenVit::forward`], filling `trace` when given.
    pub fn forward_traced(&self, pixels: Tensor<4>, mut trace: Option<&mut QwenTrace>) -> Tensor<3> {
        let [b, _, h, w] = pixels.dims();
        let device = pixels.device();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let (mh, mw) = (gh / 2, gw / 2);
        let n = gh * gw;
        let d = self.width();
        let hd = self.head_dim();
        let patches = self.patches(pixels);
        let [_, _, k] = patches.dims();
        let weight = self.patch_embed.proj.weight.val().reshape([d, k]);
        let x = patches.clone().matmul(weight.transpose().unsqueeze::<3>());
        // Window order: merge unit u holds patches 4u..4u+4.
        let win = windows(mh, mw, self.window_units);
        let perm: Vec<usize> = win.order.iter().flat_map(|&u| (0..4).map(move |i| 4 * u + i)).collect();
        let angles = self.rotary_angles(gh, gw);
        let half = hd / 2;
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for &i in &perm {
            let a = &angles[i * half..(i + 1) * half];
            for _ in 0..2 {
                cos.extend(a.iter().map(|v| v.cos()));
                sin.extend(a.iter().map(|v| v.sin()));
            }
        }
        let cos = Tensor::<4>::from_data(TensorData::new(cos, [1, 1, n, hd]), &device);
        let sin = Tensor::<4>::from_data(TensorData::new(sin, [1, 1, n, hd]), &device);
        // Block-diagonal mask over the windows (in patch units).
        let mut seg = Vec::with_capacity(n);
        for (i, &s) in win.sizes.iter().enumerate() {
            seg.extend(std::iter::repeat_n(i, 4 * s));
        }
        let mask: Vec<f32> = (0..n * n).map(|ij| if seg[ij / n] == seg[ij % n] { 0.0 } else { f32::MIN }).collect();
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [1, 1, n, n]), &device);
        let mut x = x.select(1, index(&perm, &device));
        if let Some(t) = trace.as_deref_mut() {
            t.patches = Some(patches);
            t.patch_embed = Some(x.clone().select(1, index(&inverse(&perm), &device)));
            t.rotary_angles = angles;
            t.windows = Some(win.clone());
        }
        for (block, &full) in self.blocks.iter().zip(&self.full_attention) {
            x = block.forward(x, &cos, &sin, (!full).then_some(&mask));
            if let Some(t) = trace.as_deref_mut() {
                t.blocks.push(x.clone());
            }
        }
        let units = mh * mw;
        let merged = self.merger.ln_q.forward(x).reshape([b, units, 4 * d]);
        let mlp = &self.merger.mlp;
        let y = lin(&mlp.fc2, gelu(lin(&mlp.fc1, merged)));
        if let Some(t) = trace {
            t.merger_windowed = Some(y.clone());
        }
        y.select(1, index(&inverse(&win.order), &device))
    }
}

/// The inverse of a permutation.
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (j, &i) in perm.iter().enumerate() {
        inv[i] = j;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_grid_with_partial_edges() {
        // 5×7 merged grid, 2×2 windows: 3×4 windows, the last row and column partial.
        let w = windows(5, 7, 2);
        assert_eq!(w.sizes, vec![4, 4, 4, 2, 4, 4, 4, 2, 2, 2, 2, 1]);
        assert_eq!(&w.order[..6], &[0, 1, 7, 8, 2, 3]);
        let mut sorted = w.order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..35).collect::<Vec<_>>());
        // A grid that divides evenly gets no empty window.
        assert_eq!(windows(4, 4, 2).sizes, vec![4; 4]);
    }
}
