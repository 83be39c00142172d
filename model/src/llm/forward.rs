//! The Qwen2 forward pass with an explicit KV cache, explicit positions and both padding
//! policies of the prefill (spec §3.2).

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Tensor, TensorData};

use super::{Attention, DecoderLayer, Qwen2, rope};

/// Keys (rotated) and values of every layer, appended after every call, never truncated.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((ck, cv)) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// One call of the LLM.
pub struct LlmInput {
    /// `[batch, tokens, D]`
    pub embeds: Tensor<3>,
    /// `[batch][tokens]` position ids (explicit, spec §3.8).
    pub positions: Vec<Vec<i64>>,
    /// `[batch][tokens]` 1 = real, 0 = padding. Only the prefill (empty cache) takes a mask;
    /// later calls attend every cached key and each other causally.
    pub mask: Option<Vec<Vec<u8>>>,
}

impl LlmInput {
    pub fn new(embeds: Tensor<3>, positions: Vec<Vec<i64>>) -> Self {
        Self { embeds, positions, mask: None }
    }

    pub fn mask(mut self, mask: Vec<Vec<u8>>) -> Self {
        self.mask = Some(mask);
        self
    }
}

/// The additive attention mask `[batch, 1, tokens, past + tokens]`: query i may see key j iff
/// `j ≤ past + i` and (in the prefill) `mask[j] = 1`.
fn additive_mask(mask: Option<&Vec<Vec<u8>>>, batch: usize, tokens: usize, past: usize, device: &burn::tensor::Device) -> Tensor<4> {
    let keys = past + tokens;
    let mut values = vec![0f32; batch * tokens * keys];
    for b in 0..batch {
        for i in 0..tokens {
            for j in 0..keys {
                let causal = j <= past + i;
                let real = mask.is_none_or(|m| m[b].get(j).copied().unwrap_or(1) == 1);
                if !(causal && real) {
                    values[(b * tokens + i) * keys + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, 1, tokens, keys]), device)
}

struct Context {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Tensor<4>,
    /// `[batch, 1, tokens, 1]` zeros on padded query rows under the flash policy.
    zero_pad_rows: Option<Tensor<4>>,
}

impl Attention {
    fn forward(&self, x: Tensor<3>, layer: usize, cache: &mut KvCache, ctx: &Context) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let q = rope::apply(heads(crate::nn::lin(&self.q_proj, x.clone()), h), ctx.cos.clone(), ctx.sin.clone());
        let k = rope::apply(heads(crate::nn::lin(&self.k_proj, x.clone()), kvh), ctx.cos.clone(), ctx.sin.clone());
        let v = heads(crate::nn::lin(&self.v_proj, x), kvh);
        let (k, v) = cache.append(layer, k, v);
        let s = k.dims()[2];
        let group = h / kvh;
        let repeat = |y: Tensor<4>| y.reshape([b, kvh, 1, s, hd]).expand([b, kvh, group, s, hd]).reshape([b, h, s, hd]);
        let scores = q.matmul(repeat(k).swap_dims(2, 3)) * (hd as f64).powf(-0.5) + ctx.mask.clone();
        let mut out = softmax(scores, 3).matmul(repeat(v));
        if let Some(z) = &ctx.zero_pad_rows {
            out = out * z.clone();
        }
        crate::nn::lin(&self.o_proj, out.swap_dims(1, 2).reshape([b, t, h * hd]))
    }
}

impl DecoderLayer {
    fn forward(&self, x: Tensor<3>, layer: usize, cache: &mut KvCache, ctx: &Context) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), layer, cache, ctx);
        let h = self.post_attention_layernorm.forward(x.clone());
        x + crate::nn::lin(&self.mlp.down_proj, silu(crate::nn::lin(&self.mlp.gate_proj, h.clone())) * crate::nn::lin(&self.mlp.up_proj, h))
    }
}

impl Qwen2 {
    /// Runs the layers on `input`, appending to `cache`; returns the normed last hidden state.
    ///
    /// # Shapes
    /// - input.embeds: `[batch, tokens, D]` → `[batch, tokens, D]`
    pub fn forward(&self, input: LlmInput, cache: &mut KvCache) -> Tensor<3> {
        let [b, t, _] = input.embeds.dims();
        let device = input.embeds.device();
        let past = cache.len();
        let hd = self.layers.first().map_or(0, |l| l.self_attn.head_dim);
        let flat: Vec<i64> = input.positions.iter().flatten().copied().collect();
        let (cos, sin) = rope::tables(&flat, b, t, hd, self.rope_theta, &device);
        let mask = additive_mask(input.mask.as_ref(), b, t, past, &device);
        let zero_pad_rows = match (&input.mask, self.pad_attention_flash) {
            (Some(m), true) => {
                let rows: Vec<f32> = m.iter().flat_map(|r| r.iter().take(t).map(|&x| x as f32)).collect();
                Some(Tensor::from_data(TensorData::new(rows, [b, 1, t, 1]), &device))
            }
            _ => None,
        };
        let ctx = Context { cos, sin, mask, zero_pad_rows };
        let mut x = input.embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, i, cache, &ctx);
        }
        self.norm.forward(x)
    }
}
