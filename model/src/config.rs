//! Model configurations (spec §7): the real presets, and inference of every dimension from a
//! checkpoint's tensor shapes plus a Hugging Face InternVL3 `config.json`.

use serde::{Deserialize, Serialize};

/// How padded prompt rows behave in the prefill (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadAttention {
    /// A padding row attends the real tokens before it (eager attention, the 0.6B config).
    #[default]
    Eager,
    /// A padding row gets a zero attention output (flash-attn 2, the 1.6B and Qwen configs).
    Flash,
}

/// The Qwen2 text decoder (spec §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub pad_attention: PadAttention,
}

/// The InternViT vision encoder of the AE (spec §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
}

impl VitConfig {
    /// Side of the native position grid (image_size / patch_size).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// The AE latent head after pixel shuffle and `mlp1` (spec §2.5–2.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentHeadConfig {
    /// `mlp1` output width (InternVL3-1B's LLM width, 896, for every released AE).
    pub dv: usize,
    pub num_res_blocks: usize,
    pub latent_channels: usize,
    pub encoder_norm: bool,
    pub scale_embedding: f64,
}

/// The type of one DC-AE decoder stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockType {
    ResBlock,
    EfficientViTBlock,
}

/// The DC-AE decoder (spec §2.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: Vec<usize>,
    pub block_types: Vec<BlockType>,
    /// Multi-scale kernel sizes per stage (empty for ResBlock stages).
    pub qkv_multiscales: Vec<Vec<usize>>,
    pub attention_head_dim: usize,
}

/// The flow-matching MLP head (spec §3.10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowHeadConfig {
    pub input_dim: usize,
    pub cond_dim: usize,
    pub dim: usize,
    pub layers: usize,
    pub frequency_embedding_size: usize,
}

/// The whole VGT-InternVL3 model: AR generator plus its AE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgtConfig {
    pub llm: LlmConfig,
    pub vit: VitConfig,
    pub latent: LatentHeadConfig,
    pub decoder: DecoderConfig,
    pub flow_head: FlowHeadConfig,
    /// AdaptiveMetaQuery maximum grid (64 for the real models).
    pub amq_max_grid: usize,
    /// Token ids of the tokenizer this model was trained with.
    pub tokens: TokenIds,
    /// The model reads each prompt twice (`crate::prompt::echoed`): the embedded shapes model
    /// when trained with `--prompt-echo`; never the released models.
    #[serde(default)]
    pub prompt_echo: bool,
    /// The order the generator was trained to draw its tokens in, and so generation's default
    /// (random for the released models; sequential for a shapes model trained with
    /// `--ar-order sequential`). Tuning trains in it too.
    #[serde(default)]
    pub order: crate::scheduler::Order,
}

/// Special token ids (spec §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenIds {
    pub pad: u32,
    pub im_start: u32,
    pub im_end: u32,
    pub img_start: u32,
}

impl Default for TokenIds {
    fn default() -> Self {
        Self { pad: 151643, im_start: 151644, im_end: 151645, img_start: 151665 }
    }
}

impl VgtConfig {
    /// Pixels per latent cell: patch size × the pixel-shuffle factor 2 (28 for the real model).
    pub fn stride(&self) -> usize {
        self.vit.patch_size * 2
    }

    /// VGT-InternVL3-0.6B (spec §7.1).
    pub fn internvl3_0_6b() -> Self {
        Self::internvl3(LlmConfig {
            vocab_size: 151674,
            hidden_size: 896,
            num_hidden_layers: 24,
            num_attention_heads: 14,
            num_key_value_heads: 2,
            head_dim: 64,
            intermediate_size: 4864,
            rope_theta: 1e6,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            pad_attention: PadAttention::Eager,
        })
    }

    /// VGT-InternVL3-1.6B (spec §7.1).
    pub fn internvl3_1_6b() -> Self {
        Self::internvl3(LlmConfig {
            vocab_size: 151674,
            hidden_size: 1536,
            num_hidden_layers: 28,
            num_attention_heads: 12,
            num_key_value_heads: 2,
            head_dim: 128,
            intermediate_size: 8960,
            rope_theta: 1e6,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            pad_attention: PadAttention::Flash,
        })
    }

    fn internvl3(llm: LlmConfig) -> Self {
        let d = llm.hidden_size;
        Self {
            llm,
            vit: VitConfig::internvit_300m(),
            latent: LatentHeadConfig {
                dv: 896,
                num_res_blocks: 3,
                latent_channels: 32,
                encoder_norm: true,
                scale_embedding: 1.0,
            },
            decoder: DecoderConfig::dc_ae_f32c32(),
            flow_head: FlowHeadConfig {
                input_dim: 32,
                cond_dim: d,
                dim: 1536,
                layers: 12,
                frequency_embedding_size: 256,
            },
            amq_max_grid: 64,
            tokens: TokenIds::default(),
            prompt_echo: false,
            order: crate::scheduler::Order::Random,
        }
    }
}

impl VitConfig {
    /// InternViT-300M-448px-V2_5 (spec §2.3).
    pub fn internvit_300m() -> Self {
        Self {
            image_size: 448,
            patch_size: 14,
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            layer_norm_eps: 1e-6,
        }
    }
}

impl DecoderConfig {
    /// DC-AE f32c32 SANA-1.1 decoder (spec §2.8).
    pub fn dc_ae_f32c32() -> Self {
        use BlockType::*;
        Self {
            latent_channels: 32,
            block_out_channels: vec![128, 256, 512, 512, 1024, 1024],
            layers_per_block: vec![3; 6],
            block_types: vec![ResBlock, ResBlock, ResBlock, EfficientViTBlock, EfficientViTBlock, EfficientViTBlock],
            qkv_multiscales: vec![vec![], vec![], vec![], vec![5], vec![5], vec![5]],
            attention_head_dim: 32,
        }
    }
}
