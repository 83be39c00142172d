//! Where a model comes from: the original release files (HF InternVL3 folder, AE `.pth`, AR `.pth`)
//! or a folder written by `vgt convert`. Resolves precedence (AR > AE > VLM, spec §5.1) and infers
//! the configuration from `config.json` plus tensor shapes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::keymap::{self, SourceKind};
use super::pth::{self, DictChoice};
use super::{DType, TensorMap, WeightError, st};
use crate::config::*;

/// `config.json` marker of a converted folder.
pub const FORMAT: &str = "vgt-studio";

/// The original files of a release.
#[derive(Debug, Clone, Default)]
pub struct OriginalFiles {
    /// Hugging Face InternVL3 folder (`config.json`, `model.safetensors[.index.json]`, `tokenizer.json`).
    pub vlm: Option<PathBuf>,
    /// VGT-AE checkpoint (`.pth`, `.bin` or `.safetensors`).
    pub ae: Option<PathBuf>,
    /// VGT-AR checkpoint (`.pth` or `.safetensors`).
    pub ar: Option<PathBuf>,
    pub dict: DictChoice,
}

/// A model ready to build: its configuration, canonical tensors and tokenizer file.
#[derive(Debug)]
pub struct LoadedModel {
    pub config: VgtConfig,
    pub tensors: TensorMap,
    pub tokenizer: Option<PathBuf>,
}

fn read_json(path: &Path) -> Result<Value, WeightError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| WeightError::Format(format!("invalid JSON ({e})")).in_file(path))
}

/// Reads one checkpoint file by its extension (`.safetensors`, else a PyTorch zip).
pub fn read_checkpoint(path: &Path, kind: SourceKind, dict: DictChoice) -> Result<TensorMap, WeightError> {
    if !path.exists() {
        return Err(WeightError::Io { path: path.into(), source: std::io::ErrorKind::NotFound.into() });
    }
    let raw = if path.extension().is_some_and(|e| e == "safetensors") {
        st::load(path)?
    } else if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".index.json")) {
        st::load_sharded(path)?
    } else {
        pth::load(path, dict)?
    };
    let renamed = raw.into_iter().filter_map(|(k, v)| keymap::canonical(kind, &k).map(|k| (k, v))).collect();
    keymap::split_fused_qkv(renamed).map_err(|e| e.in_file(path))
}

/// Reads the weights of a Hugging Face folder (sharded or single file).
fn read_hf_folder(dir: &Path) -> Result<TensorMap, WeightError> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let file = if index.exists() { index } else { single };
    read_checkpoint(&file, SourceKind::HfInternVl, DictChoice::PreferEma)
}

impl OriginalFiles {
    /// Loads and merges the files (AR > AE > VLM) and infers the configuration.
    pub fn load(&self) -> Result<LoadedModel, WeightError> {
        let mut tensors = TensorMap::new();
        let mut hf = None;
        let mut tokenizer = None;
        if let Some(dir) = &self.vlm {
            let cfg = dir.join("config.json");
            hf = Some(read_json(&cfg)?);
            tensors.extend(read_hf_folder(dir)?);
            let tok = dir.join("tokenizer.json");
            tokenizer = tok.exists().then_some(tok);
        }
        if let Some(ae) = &self.ae {
            tensors.extend(read_checkpoint(ae, SourceKind::Ae, self.dict)?);
        }
        if let Some(ar) = &self.ar {
            tensors.extend(read_checkpoint(ar, SourceKind::Ar, self.dict)?);
        }
        let config = infer_config(hf.as_ref(), &shapes_of(&tensors))?;
        Ok(LoadedModel { config, tensors, tokenizer })
    }
}

/// Loads a folder written by `vgt convert`.
pub fn load_converted(dir: &Path) -> Result<LoadedModel, WeightError> {
    let cfg_path = dir.join("config.json");
    let json = read_json(&cfg_path)?;
    if json.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(WeightError::Format(format!(
            "expected a model folder written by `vgt convert` (config.json with \"format\": \"{FORMAT}\")"
        ))
        .in_file(&cfg_path));
    }
    let config: VgtConfig = serde_json::from_value(json.get("config").cloned().unwrap_or_default())
        .map_err(|e| WeightError::Format(format!("bad model configuration ({e})")).in_file(&cfg_path))?;
    let tensors = st::load(&dir.join("model.safetensors"))?;
    let tok = dir.join("tokenizer.json");
    Ok(LoadedModel { config, tensors, tokenizer: tok.exists().then_some(tok) })
}

/// Opens `--model PATH`: a converted folder, or a Hugging Face VLM folder with `vgt_ae.pth` and
/// `ar.pth` beside it (the layout of the fixtures).
pub fn open(path: &Path) -> Result<LoadedModel, WeightError> {
    let cfg = path.join("config.json");
    if cfg.exists() && read_json(&cfg)?.get("format").and_then(Value::as_str) == Some(FORMAT) {
        return load_converted(path);
    }
    let existing = |name: &str| Some(path.join(name)).filter(|p| p.exists());
    let files = OriginalFiles {
        vlm: existing("vlm").or_else(|| cfg.exists().then(|| path.to_path_buf())),
        ae: existing("vgt_ae.pth").or_else(|| existing("vgt_ae_internvl3.pth")),
        ar: existing("ar.pth").or_else(|| existing("iter_5000.pth")),
        dict: DictChoice::PreferEma,
    };
    if files.vlm.is_none() && files.ae.is_none() && files.ar.is_none() {
        return Err(WeightError::Format(format!(
            "no model found in {}: expected a `vgt convert` folder, or a `vlm/` folder with `vgt_ae.pth` and `ar.pth`",
            path.display()
        )));
    }
    files.load()
}

/// Tensor shapes by canonical key.
pub type Shapes = std::collections::BTreeMap<String, Vec<usize>>;

/// The shapes of a tensor map.
pub fn shapes_of(t: &TensorMap) -> Shapes {
    t.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect()
}

fn shape<'a>(t: &'a Shapes, key: &str) -> Result<&'a [usize], WeightError> {
    t.get(key).map(|x| x.as_slice()).ok_or_else(|| WeightError::Missing(vec![key.to_string()]))
}

fn count(t: &Shapes, prefix: &str) -> usize {
    t.keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1)
}

fn get_f(v: Option<&Value>, key: &str) -> Option<f64> {
    v?.get(key)?.as_f64()
}
fn get_u(v: Option<&Value>, key: &str) -> Option<usize> {
    v?.get(key)?.as_u64().map(|x| x as usize)
}

/// Infers every dimension from the HF `config.json` (LLM and ViT hyper-parameters that shapes
/// cannot tell, such as head counts) and from tensor shapes (everything VGT adds).
pub fn infer_config(hf: Option<&Value>, t: &Shapes) -> Result<VgtConfig, WeightError> {
    let llm_cfg = hf.and_then(|h| h.get("llm_config"));
    let vit_cfg = hf.and_then(|h| h.get("vision_config"));
    let [vocab, d] = shape(t, "lmm.language_model.model.embed_tokens.weight")?.try_into().map_err(|_| {
        WeightError::Format("`lmm.language_model.model.embed_tokens.weight` is not 2-D".into())
    })?;
    let preset = if d == 1536 { VgtConfig::internvl3_1_6b() } else { VgtConfig::internvl3_0_6b() };
    let layers = count(t, "lmm.language_model.model.layers.");
    let q_out = shape(t, "lmm.language_model.model.layers.0.self_attn.q_proj.weight")?[0];
    let kv_out = shape(t, "lmm.language_model.model.layers.0.self_attn.k_proj.weight")?[0];
    let heads = get_u(llm_cfg, "num_attention_heads").unwrap_or(preset.llm.num_attention_heads);
    let head_dim = q_out / heads.max(1);
    let pad = match llm_cfg.and_then(|c| c.get("attn_implementation")).and_then(Value::as_str) {
        Some("flash_attention_2") => PadAttention::Flash,
        Some(_) => PadAttention::Eager,
        None if d == 1536 && layers == 28 => PadAttention::Flash,
        None => PadAttention::Eager,
    };
    let llm = LlmConfig {
        vocab_size: vocab,
        hidden_size: d,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_out / head_dim.max(1),
        head_dim,
        intermediate_size: shape(t, "lmm.language_model.model.layers.0.mlp.gate_proj.weight")?[0],
        rope_theta: get_f(llm_cfg, "rope_theta").unwrap_or(1e6),
        rms_norm_eps: get_f(llm_cfg, "rms_norm_eps").unwrap_or(1e-6),
        tie_word_embeddings: llm_cfg.and_then(|c| c.get("tie_word_embeddings")).and_then(Value::as_bool).unwrap_or(false),
        pad_attention: pad,
    };
    let patch = shape(t, "vgt_ae.encoder.embeddings.patch_embedding.weight")?;
    let (vd, p) = (patch[0], patch[2]);
    let npos = shape(t, "vgt_ae.encoder.embeddings.position_embedding")?[1];
    let grid = ((npos.saturating_sub(1)) as f64).sqrt().round() as usize;
    let vit = VitConfig {
        image_size: grid * p,
        patch_size: p,
        hidden_size: vd,
        num_hidden_layers: count(t, "vgt_ae.encoder.encoder.layers."),
        num_attention_heads: get_u(vit_cfg, "num_attention_heads").unwrap_or(vd / 64),
        intermediate_size: shape(t, "vgt_ae.encoder.encoder.layers.0.mlp.fc1.weight")?[0],
        layer_norm_eps: get_f(vit_cfg, "layer_norm_eps").unwrap_or(1e-6),
    };
    let latent = LatentHeadConfig {
        dv: shape(t, "vgt_ae.mlp1.1.weight")?[0],
        num_res_blocks: count(t, "vgt_ae.down_blocks."),
        latent_channels: shape(t, "vgt_ae.down_mlp.3.weight")?[0],
        encoder_norm: true,
        scale_embedding: 1.0,
    };
    let decoder = infer_decoder(t)?;
    let ip = shape(t, "image_head.net.input_proj.weight")?;
    let flow_head = FlowHeadConfig {
        input_dim: ip[1],
        cond_dim: shape(t, "image_head.net.cond_embed.weight")?[1],
        dim: ip[0],
        layers: count(t, "image_head.net.res_blocks."),
        frequency_embedding_size: shape(t, "image_head.net.time_embed.mlp.0.weight")?[1],
    };
    let amq_max_grid = shape(t, "adaptive_metaquery.max_metaquery")?[2];
    Ok(VgtConfig { llm, vit, latent, decoder, flow_head, amq_max_grid, tokens: TokenIds::default(), prompt_echo: false, order: crate::scheduler::Order::Random })
}

fn infer_decoder(t: &Shapes) -> Result<DecoderConfig, WeightError> {
    let stages = count(t, "vgt_ae.decoder.up_blocks.");
    let mut channels = Vec::new();
    let mut layers = Vec::new();
    let mut types = Vec::new();
    let mut scales = Vec::new();
    let mut head_dim = 32;
    for s in 0..stages {
        let prefix = format!("vgt_ae.decoder.up_blocks.{s}.");
        let n = count(t, &prefix);
        let first_block = usize::from(s + 1 < stages);
        let block = format!("{prefix}{first_block}.");
        let (c, ty, ms) = if let Some(q) = t.get(&format!("{block}attn.to_q.weight")) {
            let pin = shape(t, &format!("{block}attn.to_qkv_multiscale.0.proj_in.weight"))?;
            head_dim = shape(t, &format!("{block}attn.to_qkv_multiscale.0.proj_out.weight"))?[1];
            (q[0], BlockType::EfficientViTBlock, vec![pin[2]])
        } else {
            (shape(t, &format!("{block}conv1.weight"))?[0], BlockType::ResBlock, vec![])
        };
        channels.push(c);
        layers.push(n - first_block);
        types.push(ty);
        scales.push(ms);
    }
    Ok(DecoderConfig {
        latent_channels: shape(t, "vgt_ae.decoder.conv_in.weight")?[1],
        block_out_channels: channels,
        layers_per_block: layers,
        block_types: types,
        qkv_multiscales: scales,
        attention_head_dim: head_dim,
    })
}

/// Writes a model folder as `vgt convert` does (config.json, tokenizer.json, model.safetensors)
/// into a sibling `OUT.partial/`, then renames it: never a half-written model. `out` must not
/// exist or be empty.
pub fn save_converted(out: &Path, c: &VgtConfig, tensors: &TensorMap, tokenizer: &Path, dtype: DType) -> Result<(), WeightError> {
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| WeightError::Io { path, source }
    };
    let tmp = out.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let config = serde_json::json!({"format": FORMAT, "version": 1, "dtype": dtype.name().to_lowercase(), "config": c});
    let cfg = tmp.join("config.json");
    std::fs::write(&cfg, serde_json::to_string_pretty(&config).unwrap_or_default()).map_err(io(&cfg))?;
    std::fs::copy(tokenizer, tmp.join("tokenizer.json")).map_err(io(tokenizer))?;
    let meta = [("format".to_string(), FORMAT.to_string())].into_iter().collect();
    st::save(&tmp.join("model.safetensors"), tensors, dtype, &meta)?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))
}
