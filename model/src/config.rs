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
#[serde(deny_unknown_fields)]
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

/// The Qwen2.5-VL vision tower with its 2×2 merger (spec §2.7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QwenVitConfig {
    /// The size the AE was trained at (448): the default of tuning and reconstruction.
    pub image_size: usize,
    pub patch_size: usize,
    /// Frames per patch; a still image is repeated this many times (2).
    pub temporal_patch_size: usize,
    /// Patches per side of a merge unit (2).
    pub spatial_merge_size: usize,
    pub hidden_size: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    /// Window side in pixels (112 = 4×4 merged tokens at patch 14).
    pub window_size: usize,
    /// Blocks with full attention; every other block attends within its window.
    pub fullatt_block_indexes: Vec<usize>,
    /// The merger's output width.
    pub out_hidden_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

impl QwenVitConfig {
    /// Qwen2.5-VL-3B-Instruct's tower (spec §2.7).
    pub fn qwen25vl_3b() -> Self {
        Self {
            image_size: 448,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            hidden_size: 1280,
            depth: 32,
            num_heads: 16,
            intermediate_size: 3420,
            window_size: 112,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            out_hidden_size: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
        }
    }

    /// Side of a window in merge units (`window_size / merge / patch`, 4 for the real tower).
    pub fn window_units(&self) -> usize {
        (self.window_size / self.spatial_merge_size.max(1) / self.patch_size.max(1)).max(1)
    }
}

/// The vision tower of the AE, which fixes the model family (spec §2.1).
///
/// Serialised without a tag (the fields tell the two apart), so that folders written before the
/// Qwen family existed (`"vit": { InternViT fields }`) still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VisionConfig {
    /// InternViT + pixel shuffle + `mlp1` (VGT-InternVL3).
    InternVit(VitConfig),
    /// The Qwen2.5-VL tower + merger (VGT-Qwen2.5-VL).
    Qwen25Vl(QwenVitConfig),
}

/// The model family: which vision tower, image statistics, and generation position rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    InternVl,
    Qwen25Vl,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::InternVl => "VGT-InternVL3",
            Family::Qwen25Vl => "VGT-Qwen2.5-VL",
        }
    }

    /// Positions of the LLM calls after the prefill (spec §3.8 step 6).
    pub fn position_rule(self) -> PositionRule {
        match self {
            Family::InternVl => PositionRule::PerRowContinuation,
            Family::Qwen25Vl => PositionRule::QwenGroupStride,
        }
    }
}

/// How the LLM calls after the prefill number their tokens (spec §3.8 step 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionRule {
    /// Each row continues from its own last prefill position (InternVL).
    #[default]
    PerRowContinuation,
    /// The call predicting group g with chunk length S uses `T + g·S + i` for every row, T the
    /// padded text length (Qwen2.5-VL; positions may overlap or skip, as in the reference).
    QwenGroupStride,
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
    /// The AE's vision tower (`vit` in folders written before the Qwen family).
    #[serde(alias = "vit")]
    pub vision: VisionConfig,
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
    /// `tokenizer.encode("<img>")`: one special token for InternVL3, two ordinary BPE pieces
    /// (`<img`, `>`) for Qwen2.5-VL. The image-start embedding has one row per id.
    #[serde(deserialize_with = "one_or_many")]
    pub img_start: Vec<u32>,
}

/// A list of ids, or one id (folders written when `<img>` was always a single token).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
    })
}

impl Default for TokenIds {
    fn default() -> Self {
        Self { pad: 151643, im_start: 151644, im_end: 151645, img_start: vec![151665] }
    }
}

impl TokenIds {
    /// The Qwen2.5 tokenizer's ids (`<img>` = `<img` 20092, `>` 29).
    pub fn qwen25() -> Self {
        Self { img_start: vec![20092, 29], ..Self::default() }
    }
}

impl VgtConfig {
    pub fn family(&self) -> Family {
        match self.vision {
            VisionConfig::InternVit(_) => Family::InternVl,
            VisionConfig::Qwen25Vl(_) => Family::Qwen25Vl,
        }
    }

    /// Pixels per latent cell: patch size × the 2×2 merge (pixel shuffle or merger); 28 for the
    /// real models.
    pub fn stride(&self) -> usize {
        match &self.vision {
            VisionConfig::InternVit(v) => v.patch_size * 2,
            VisionConfig::Qwen25Vl(v) => v.patch_size * v.spatial_merge_size,
        }
    }

    /// The image size the AE was trained at (448 for the real models), rounded down to the stride.
    pub fn native_size(&self) -> usize {
        let size = match &self.vision {
            VisionConfig::InternVit(v) => v.image_size,
            VisionConfig::Qwen25Vl(v) => v.image_size,
        };
        let stride = self.stride().max(1);
        (size / stride).max(1) * stride
    }

    /// The vision tower's output width (what the latent head reads before `mlp1`, if any).
    pub fn vision_width(&self) -> usize {
        match &self.vision {
            VisionConfig::InternVit(v) => v.hidden_size,
            VisionConfig::Qwen25Vl(v) => v.out_hidden_size,
        }
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

    /// VGT-Qwen2.5-VL-"2B" (spec §7.1) with `layers` LLM layers: 36 is Qwen2.5-VL-3B's depth,
    /// 18 what `layer_ratio = 0.5` would keep; the released depth is read from the checkpoint.
    pub fn qwen25vl_2b(layers: usize) -> Self {
        let llm = LlmConfig {
            vocab_size: 151936,
            hidden_size: 2048,
            num_hidden_layers: layers,
            num_attention_heads: 16,
            num_key_value_heads: 2,
            head_dim: 128,
            intermediate_size: 11008,
            rope_theta: 1e6,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            pad_attention: PadAttention::Flash,
        };
        let vision = QwenVitConfig::qwen25vl_3b();
        let mut c = Self::internvl3(llm);
        c.latent.dv = vision.out_hidden_size;
        c.vision = VisionConfig::Qwen25Vl(vision);
        c.tokens = TokenIds::qwen25();
        c
    }

    fn internvl3(llm: LlmConfig) -> Self {
        let d = llm.hidden_size;
        Self {
            llm,
            vision: VisionConfig::InternVit(VitConfig::internvit_300m()),
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
        // Epsilons and rotary bases: a negative, zero, infinite or NaN one turns every output
        // into NaN (a black image) instead of failing.
        let positive = |errors: &mut Vec<String>, name: &str, v: f64, max: f64| {
            if !(v.is_finite() && v > 0.0 && v <= max) {
                errors.push(format!("{name} is {v}, expected a positive number up to {max}"));
            }
        };
        let l = &self.llm;
        positive(&mut errors, "llm.rms_norm_eps", l.rms_norm_eps, 1.0);
        positive(&mut errors, "llm.rope_theta", l.rope_theta, 1e12);
        range(&mut errors, "llm.vocab_size", l.vocab_size, VOCAB);
        range(&mut errors, "llm.hidden_size", l.hidden_size, WIDTH);
        range(&mut errors, "llm.num_hidden_layers", l.num_hidden_layers, LAYERS);
        range(&mut errors, "llm.num_attention_heads", l.num_attention_heads, HEADS);
        range(&mut errors, "llm.num_key_value_heads", l.num_key_value_heads, HEADS);
        range(&mut errors, "llm.head_dim", l.head_dim, WIDTH);
        range(&mut errors, "llm.intermediate_size", l.intermediate_size, WIDTH);
        match &self.vision {
            VisionConfig::InternVit(v) => {
                range(&mut errors, "vit.image_size", v.image_size, IMAGE);
                range(&mut errors, "vit.patch_size", v.patch_size, PATCH);
                range(&mut errors, "vit.hidden_size", v.hidden_size, WIDTH);
                range(&mut errors, "vit.num_hidden_layers", v.num_hidden_layers, LAYERS);
                range(&mut errors, "vit.num_attention_heads", v.num_attention_heads, HEADS);
                range(&mut errors, "vit.intermediate_size", v.intermediate_size, WIDTH);
                positive(&mut errors, "vit.layer_norm_eps", v.layer_norm_eps, 1.0);
            }
            VisionConfig::Qwen25Vl(v) => {
                range(&mut errors, "vision.image_size", v.image_size, IMAGE);
                range(&mut errors, "vision.patch_size", v.patch_size, PATCH);
                range(&mut errors, "vision.temporal_patch_size", v.temporal_patch_size, PATCH);
                range(&mut errors, "vision.spatial_merge_size", v.spatial_merge_size, PATCH);
                range(&mut errors, "vision.hidden_size", v.hidden_size, WIDTH);
                range(&mut errors, "vision.depth", v.depth, LAYERS);
                range(&mut errors, "vision.num_heads", v.num_heads, HEADS);
                range(&mut errors, "vision.intermediate_size", v.intermediate_size, WIDTH);
                range(&mut errors, "vision.window_size", v.window_size, IMAGE);
                range(&mut errors, "vision.out_hidden_size", v.out_hidden_size, WIDTH);
                positive(&mut errors, "vision.rms_norm_eps", v.rms_norm_eps, 1.0);
                positive(&mut errors, "vision.rope_theta", v.rope_theta, 1e12);
                if let Some(&i) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
                    errors.push(format!("vision.fullatt_block_indexes names block {i} of {} blocks", v.depth));
                }
            }
        }
        if self.tokens.img_start.is_empty() || self.tokens.img_start.len() > 16 {
            errors.push(format!("tokens.img_start has {} ids, expected 1 to 16", self.tokens.img_start.len()));
        }
        let a = &self.latent;
        range(&mut errors, "latent.dv", a.dv, WIDTH);
        range(&mut errors, "latent.num_res_blocks", a.num_res_blocks, LAYERS);
        range(&mut errors, "latent.latent_channels", a.latent_channels, WIDTH);
        positive(&mut errors, "latent.scale_embedding", a.scale_embedding, 1e6);
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
            match &self.vision {
                VisionConfig::InternVit(v) => {
                    if v.hidden_size % v.num_attention_heads != 0 {
                        errors.push(format!("vit.hidden_size {} does not split into {} heads", v.hidden_size, v.num_attention_heads));
                    }
                    if v.image_size % v.patch_size != 0 || (v.image_size / v.patch_size) % 2 != 0 {
                        errors.push(format!(
                            "vit.image_size {} is not an even number of {}-pixel patches (pixel shuffle halves the grid)",
                            v.image_size, v.patch_size
                        ));
                    }
                }
                VisionConfig::Qwen25Vl(v) => {
                    if v.hidden_size % v.num_heads != 0 || (v.hidden_size / v.num_heads) % 4 != 0 {
                        errors.push(format!(
                            "vision.hidden_size {} does not split into {} heads of a multiple of 4 (2-D rotary embeddings)",
                            v.hidden_size, v.num_heads
                        ));
                    }
                    if v.spatial_merge_size != 2 {
                        errors.push(format!("vision.spatial_merge_size is {}, only 2 is supported", v.spatial_merge_size));
                    }
                }
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
        VgtConfig::qwen25vl_2b(36).validate().unwrap();
        VgtConfig::qwen25vl_2b(18).validate().unwrap();
    }

    #[test]
    fn folders_written_before_the_qwen_family_still_load() {
        let mut json = serde_json::to_value(VgtConfig::internvl3_0_6b()).unwrap();
        let vision = json.as_object_mut().unwrap().remove("vision").unwrap();
        json["vit"] = vision;
        json["tokens"]["img_start"] = serde_json::json!(151665);
        let c: VgtConfig = serde_json::from_value(json).unwrap();
        assert_eq!(c, VgtConfig::internvl3_0_6b());
        let q = VgtConfig::qwen25vl_2b(36);
        let back: VgtConfig = serde_json::from_value(serde_json::to_value(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        assert_eq!((q.family(), q.stride(), q.native_size()), (Family::Qwen25Vl, 28, 448));
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
        fn vit(c: &mut VgtConfig) -> &mut VitConfig {
            match &mut c.vision {
                VisionConfig::InternVit(v) => v,
                VisionConfig::Qwen25Vl(_) => unreachable!("an InternVL preset"),
            }
        }
        check(&|c| vit(c).patch_size = 0, "vit.patch_size is 0");
        check(&|c| vit(c).num_attention_heads = 0, "vit.num_attention_heads is 0");
        check(&|c| c.llm.num_hidden_layers = 1_000_000, "llm.num_hidden_layers is 1000000, expected 1 to 256");
        check(&|c| c.llm.num_key_value_heads = 3, "not a multiple of llm.num_key_value_heads 3");
        check(&|c| c.decoder.attention_head_dim = 7, "does not split into heads");
        let qwen = |edit: &dyn Fn(&mut QwenVitConfig), want: &str| {
            let mut c = VgtConfig::qwen25vl_2b(36);
            if let VisionConfig::Qwen25Vl(v) = &mut c.vision {
                edit(v);
            }
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        };
        qwen(&|v| v.fullatt_block_indexes.push(32), "names block 32 of 32 blocks");
        qwen(&|v| v.window_size = 0, "vision.window_size is 0");
        qwen(&|v| v.num_heads = 3, "does not split into 3 heads");
        qwen(&|v| v.spatial_merge_size = 3, "only 2 is supported");
    }
}
