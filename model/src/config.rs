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

/// The largest values a configuration may have: well above every released model (vocabulary
/// 151 674, widths up to 8 960, 36 layers, a 64×64 token grid), far below what would exhaust
/// memory when the networks are built.
pub mod limits {
    pub const VOCAB: usize = 1 << 20;
    pub const WIDTH: usize = 1 << 16;
    pub const LAYERS: usize = 256;
    pub const HEADS: usize = 1024;
    pub const IMAGE: usize = 8192;
    pub const PATCH: usize = 64;
    pub const STAGES: usize = 16;
    pub const KERNEL: usize = 15;
    pub const GRID: usize = 256;
}

impl VgtConfig {
    /// Checks that every network can be built from this configuration: sizes positive and within
    /// [`limits`], lists of matching lengths, widths that split into their heads. Says which
    /// field is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        use limits::*;
        let mut errors = Vec::new();
        let range = |errors: &mut Vec<String>, name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                errors.push(format!("{name} is {v}, expected 1 to {max}"));
            }
        };
        let l = &self.llm;
        range(&mut errors, "llm.vocab_size", l.vocab_size, VOCAB);
        range(&mut errors, "llm.hidden_size", l.hidden_size, WIDTH);
        range(&mut errors, "llm.num_hidden_layers", l.num_hidden_layers, LAYERS);
        range(&mut errors, "llm.num_attention_heads", l.num_attention_heads, HEADS);
        range(&mut errors, "llm.num_key_value_heads", l.num_key_value_heads, HEADS);
        range(&mut errors, "llm.head_dim", l.head_dim, WIDTH);
        range(&mut errors, "llm.intermediate_size", l.intermediate_size, WIDTH);
        let v = &self.vit;
        range(&mut errors, "vit.image_size", v.image_size, IMAGE);
        range(&mut errors, "vit.patch_size", v.patch_size, PATCH);
        range(&mut errors, "vit.hidden_size", v.hidden_size, WIDTH);
        range(&mut errors, "vit.num_hidden_layers", v.num_hidden_layers, LAYERS);
        range(&mut errors, "vit.num_attention_heads", v.num_attention_heads, HEADS);
        range(&mut errors, "vit.intermediate_size", v.intermediate_size, WIDTH);
        let a = &self.latent;
        range(&mut errors, "latent.dv", a.dv, WIDTH);
        range(&mut errors, "latent.num_res_blocks", a.num_res_blocks, LAYERS);
        range(&mut errors, "latent.latent_channels", a.latent_channels, WIDTH);
        let d = &self.decoder;
        range(&mut errors, "decoder.latent_channels", d.latent_channels, WIDTH);
        range(&mut errors, "decoder.block_out_channels (stages)", d.block_out_channels.len(), STAGES);
        range(&mut errors, "decoder.attention_head_dim", d.attention_head_dim, WIDTH);
        for (i, &c) in d.block_out_channels.iter().enumerate() {
            range(&mut errors, &format!("decoder.block_out_channels[{i}]"), c, WIDTH);
        }
        for (i, &n) in d.layers_per_block.iter().enumerate() {
            if n > LAYERS {
                errors.push(format!("decoder.layers_per_block[{i}] is {n}, expected at most {LAYERS}"));
            }
        }
        for (i, scales) in d.qkv_multiscales.iter().enumerate() {
            for &k in scales {
                range(&mut errors, &format!("decoder.qkv_multiscales[{i}]"), k, KERNEL);
            }
        }
        let f = &self.flow_head;
        range(&mut errors, "flow_head.input_dim", f.input_dim, WIDTH);
        range(&mut errors, "flow_head.cond_dim", f.cond_dim, WIDTH);
        range(&mut errors, "flow_head.dim", f.dim, WIDTH);
        range(&mut errors, "flow_head.layers", f.layers, LAYERS);
        range(&mut errors, "flow_head.frequency_embedding_size", f.frequency_embedding_size, WIDTH);
        range(&mut errors, "amq_max_grid", self.amq_max_grid, GRID);
        let stages = d.block_out_channels.len();
        for (name, len) in [
            ("layers_per_block", d.layers_per_block.len()),
            ("block_types", d.block_types.len()),
            ("qkv_multiscales", d.qkv_multiscales.len()),
        ] {
            if len != stages {
                errors.push(format!("decoder.{name} has {len} entries for {stages} stages (block_out_channels)"));
            }
        }
        if errors.is_empty() {
            // Divisibility, once every size is known to be positive.
            if l.num_attention_heads % l.num_key_value_heads != 0 {
                errors.push(format!(
                    "llm.num_attention_heads {} is not a multiple of llm.num_key_value_heads {}",
                    l.num_attention_heads, l.num_key_value_heads
                ));
            }
            if l.head_dim % 2 != 0 {
                errors.push(format!("llm.head_dim {} is odd (rotary embeddings rotate pairs)", l.head_dim));
            }
            if v.hidden_size % v.num_attention_heads != 0 {
                errors.push(format!("vit.hidden_size {} does not split into {} heads", v.hidden_size, v.num_attention_heads));
            }
            if v.image_size % v.patch_size != 0 || (v.image_size / v.patch_size) % 2 != 0 {
                errors.push(format!(
                    "vit.image_size {} is not an even number of {}-pixel patches (pixel shuffle halves the grid)",
                    v.image_size, v.patch_size
                ));
            }
            if f.frequency_embedding_size % 2 != 0 {
                errors.push(format!("flow_head.frequency_embedding_size {} is odd", f.frequency_embedding_size));
            }
            for (i, pair) in d.block_out_channels.windows(2).enumerate() {
                // The upsampler's shortcut repeats the input channels 4·Cout/Cin times.
                if (4 * pair[0]) % pair[1] != 0 {
                    errors.push(format!(
                        "decoder.block_out_channels[{i}] {} is not a multiple of a quarter of the next stage's {}",
                        pair[0], pair[1]
                    ));
                }
            }
            for (i, (&c, ty)) in d.block_out_channels.iter().zip(&d.block_types).enumerate() {
                if *ty == BlockType::EfficientViTBlock && c % d.attention_head_dim != 0 {
                    errors.push(format!(
                        "decoder.block_out_channels[{i}] {c} does not split into heads of decoder.attention_head_dim {}",
                        d.attention_head_dim
                    ));
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(format!("invalid model configuration: {}", errors.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_released_presets_are_valid() {
        VgtConfig::internvl3_0_6b().validate().unwrap();
        VgtConfig::internvl3_1_6b().validate().unwrap();
    }

    #[test]
    fn broken_configurations_name_the_field() {
        let check = |edit: &dyn Fn(&mut VgtConfig), want: &str| {
            let mut c = VgtConfig::internvl3_0_6b();
            edit(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        };
        check(&|c| c.decoder.layers_per_block.pop().map(drop).unwrap_or(()), "decoder.layers_per_block has 5 entries for 6 stages");
        check(&|c| c.decoder.block_out_channels.clear(), "decoder.block_out_channels (stages) is 0");
        check(&|c| c.vit.patch_size = 0, "vit.patch_size is 0");
        check(&|c| c.vit.num_attention_heads = 0, "vit.num_attention_heads is 0");
        check(&|c| c.llm.num_hidden_layers = 1_000_000, "llm.num_hidden_layers is 1000000, expected 1 to 256");
        check(&|c| c.llm.num_key_value_heads = 3, "not a multiple of llm.num_key_value_heads 3");
        check(&|c| c.decoder.attention_head_dim = 7, "does not split into heads");
    }
}
