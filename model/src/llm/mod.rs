//! The Qwen2 text decoder of VGT-AR (spec §3.1–3.2).

mod forward;
pub mod rope;

pub use forward::{KvCache, LlmInput};

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear};
use burn::tensor::Device;

use crate::config::LlmConfig;
use crate::nn::{RmsNorm, linear};

/// Grouped-query self-attention with q/k/v biases.
#[derive(Module, Debug)]
pub struct Attention {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

/// SwiGLU MLP: `down(SiLU(gate(x)) ⊙ up(x))`, no biases.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// The Qwen2 base model (no lm_head: VGT reads the last hidden state).
#[derive(Module, Debug)]
pub struct Qwen2 {
    pub rope_theta: f64,
    pub pad_attention_flash: bool,
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl Qwen2 {
    pub fn new(c: &LlmConfig, device: &Device) -> Self {
        let d = c.hidden_size;
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let layer = || DecoderLayer {
            self_attn: Attention {
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                q_proj: linear(d, q, true, device),
                k_proj: linear(d, kv, true, device),
                v_proj: linear(d, kv, true, device),
                o_proj: linear(q, d, false, device),
            },
            mlp: Mlp {
                gate_proj: linear(d, c.intermediate_size, false, device),
                up_proj: linear(d, c.intermediate_size, false, device),
                down_proj: linear(c.intermediate_size, d, false, device),
            },
            input_layernorm: RmsNorm::new(d, c.rms_norm_eps, device),
            post_attention_layernorm: RmsNorm::new(d, c.rms_norm_eps, device),
        };
        Self {
            rope_theta: c.rope_theta,
            pad_attention_flash: c.pad_attention == crate::config::PadAttention::Flash,
            embed_tokens: EmbeddingConfig::new(c.vocab_size, d).init(&crate::device::table_device(device, c.vocab_size * d * 4)),
            layers: (0..c.num_hidden_layers).map(|_| layer()).collect(),
            norm: RmsNorm::new(d, c.rms_norm_eps, device),
        }
    }
}
