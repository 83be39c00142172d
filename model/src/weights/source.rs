//! Where a model comes from: the original release files (HF InternVL3 folder, AE `.pth`, AR `.pth`)
//! or a folder written by `vgt convert`. Resolves precedence (AR > AE > VLM, spec §5.1) and infers
//! the configuration from `config.json` plus tensor shapes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::keymap::{self, SourceKind};
use super::pth::{self, DictChoice};
use super::{DType, TensorMap, WeightError, st, write_err};
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
    let text = crate::fsutil::read_regular_string(path).map_err(|source| WeightError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| WeightError::Format(format!("invalid JSON ({e})")).in_file(path))
}

/// Reads one checkpoint file by its extension (`.safetensors`, else a PyTorch zip).
pub fn read_checkpoint(path: &Path, kind: SourceKind, dict: DictChoice) -> Result<TensorMap, WeightError> {
    if !crate::fsutil::exists(path).map_err(|source| WeightError::Io { path: path.into(), source })? {
        return Err(WeightError::Io { path: path.into(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file") });
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

/// The family of a Hugging Face VLM folder from its `config.json` (`model_type`, or the
/// architecture): Qwen2.5-VL or InternVL (the default).
pub fn hf_family(config: &Value) -> Family {
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    let qwen_arch = config
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|s| s.starts_with("Qwen2_5_VL"))));
    if model_type.starts_with("qwen2_5_vl") || qwen_arch { Family::Qwen25Vl } else { Family::InternVl }
}

/// Reads the weights of a Hugging Face folder (sharded or single file) of `family`.
fn read_hf_folder(dir: &Path, family: Family) -> Result<TensorMap, WeightError> {
    let index = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let file = if there(&index)? { index } else { single };
    let kind = match family {
        Family::InternVl => SourceKind::HfInternVl,
        Family::Qwen25Vl => SourceKind::HfQwen25Vl,
    };
    read_checkpoint(&file, kind, DictChoice::PreferEma)
}

impl OriginalFiles {
    /// Loads and merges the files (AR > AE > VLM) and infers the configuration.
    pub fn load(&self) -> Result<LoadedModel, WeightError> {
        let mut tensors = TensorMap::new();
        let mut hf = None;
        let mut tokenizer = None;
        if let Some(dir) = &self.vlm {
            let cfg = dir.join("config.json");
            let json = read_json(&cfg)?;
            tensors.extend(read_hf_folder(dir, hf_family(&json))?);
            hf = Some(json);
            let tok = dir.join("tokenizer.json");
            tokenizer = there(&tok)?.then_some(tok);
        }
        if let Some(ae) = &self.ae {
            tensors.extend(read_checkpoint(ae, SourceKind::Ae, self.dict)?);
        }
        if let Some(ar) = &self.ar {
            tensors.extend(read_checkpoint(ar, SourceKind::Ar, self.dict)?);
        }
        let mut config = infer_config(hf.as_ref(), &shapes_of(&tensors))?;
        // The tokenizer's own special ids, when it has them all (otherwise the model's tokenizer
        // check, `PromptTokenizer::for_model`, says what is wrong when it is used).
        if let Some(ids) = tokenizer.as_ref().and_then(|t| {
            crate::prompt::PromptTokenizer::from_file(t).ok().and_then(|tok| tok.token_ids(config.family()).ok())
        }) {
            config.tokens = ids;
        }
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
    config.validate().map_err(|e| WeightError::Format(e).in_file(&cfg_path))?;
    let tensors = st::load(&dir.join("model.safetensors"))?;
    let tok = dir.join("tokenizer.json");
    Ok(LoadedModel { config, tensors, tokenizer: there(&tok)?.then_some(tok) })
}

/// Whether `path` is there; a name that is there but leads nowhere (a symbolic link loop or a
/// link to a missing target) is an error naming it, never taken for "absent".
fn there(path: &Path) -> Result<bool, WeightError> {
    crate::fsutil::exists(path).map_err(|source| WeightError::Io { path: path.into(), source })
}

/// Opens `--model PATH`: a converted folder, or a Hugging Face VLM folder with `vgt_ae.pth` and
/// `ar.pth` beside it (the layout of the fixtures).
pub fn open(path: &Path) -> Result<LoadedModel, WeightError> {
    // A model path that is a link to nowhere is named as such (an absent one is said below).
    there(path)?;
    let cfg = path.join("config.json");
    let has_cfg = there(&cfg)?;
    if has_cfg && read_json(&cfg)?.get("format").and_then(Value::as_str) == Some(FORMAT) {
        return load_converted(path);
    }
    let existing = |names: &[&str]| -> Result<Option<PathBuf>, WeightError> {
        for name in names {
            let p = path.join(name);
            if there(&p)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    };
    let files = OriginalFiles {
        vlm: existing(&["vlm"])?.or_else(|| has_cfg.then(|| path.to_path_buf())),
        ae: existing(&["vgt_ae.pth", "vgt_ae_internvl3.pth", "vgt_ae_qwen25vl.pth"])?,
        ar: existing(&["ar.pth", "iter_5000.pth"])?,
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

/// The shape of tensor `key`, which must have `N` dimensions, none of them 0.
fn dims<const N: usize>(t: &Shapes, key: &str) -> Result<[usize; N], WeightError> {
    let s = t.get(key).ok_or_else(|| WeightError::Missing(vec![key.to_string()]))?;
    let d: [usize; N] = s.as_slice().try_into().map_err(|_| {
        WeightError::Mismatch(vec![format!("tensor `{key}` has shape {s:?}, expected {N} dimensions")])
    })?;
    if d.contains(&0) {
        return Err(WeightError::Mismatch(vec![format!("tensor `{key}` has shape {s:?}, with a dimension of size 0")]));
    }
    Ok(d)
}

fn count(t: &Shapes, prefix: &str) -> usize {
    t.keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m.saturating_add(1))
}

fn get_f(v: Option<&Value>, key: &str) -> Option<f64> {
    v?.get(key)?.as_f64()
}
fn get_u(v: Option<&Value>, key: &str) -> Option<usize> {
    v?.get(key)?.as_u64().map(|x| x as usize)
}

/// The family of a model: from its tensors (which vision tower the AE has), else from the HF
/// `config.json`, else InternVL.
pub fn detect_family(hf: Option<&Value>, t: &Shapes) -> Family {
    if t.contains_key("vgt_ae.encoder.patch_embed.proj.weight") {
        Family::Qwen25Vl
    } else if t.contains_key("vgt_ae.encoder.embeddings.patch_embedding.weight") {
        Family::InternVl
    } else {
        hf.map_or(Family::InternVl, hf_family)
    }
}

/// Infers every dimension from the HF `config.json` (LLM and ViT hyper-parameters that shapes
/// cannot tell, such as head counts) and from tensor shapes (everything VGT adds, and the depths:
/// the released Qwen LLM depth is not known, spec §9.1). The family comes from
/// [`detect_family`].
pub fn infer_config(hf: Option<&Value>, t: &Shapes) -> Result<VgtConfig, WeightError> {
    let family = detect_family(hf, t);
    let [vocab, d] = dims(t, "lmm.language_model.model.embed_tokens.weight")?;
    let layers = count(t, "lmm.language_model.model.layers.");
    let (preset, llm_cfg) = match family {
        Family::InternVl => {
            let preset = if d == 1536 { VgtConfig::internvl3_1_6b() } else { VgtConfig::internvl3_0_6b() };
            (preset, hf.and_then(|h| h.get("llm_config")))
        }
        // Qwen2.5-VL keeps its text fields at the top level (or under `text_config` in newer
        // transformers).
        Family::Qwen25Vl => (VgtConfig::qwen25vl_2b(layers), hf.and_then(|h| h.get("text_config")).or(hf)),
    };
    let vit_cfg = hf.and_then(|h| h.get("vision_config"));
    let [q_out, _] = dims(t, "lmm.language_model.model.layers.0.self_attn.q_proj.weight")?;
    let [kv_out, _] = dims(t, "lmm.language_model.model.layers.0.self_attn.k_proj.weight")?;
    let heads = get_u(llm_cfg, "num_attention_heads").unwrap_or(preset.llm.num_attention_heads);
    let head_dim = q_out / heads.max(1);
    let pad = match llm_cfg.and_then(|c| c.get("attn_implementation")).and_then(Value::as_str) {
        Some("flash_attention_2") => PadAttention::Flash,
        Some(_) => PadAttention::Eager,
        // The VGT-Qwen2.5-VL config loads its LLM with flash_attention_2.
        None if family == Family::Qwen25Vl => PadAttention::Flash,
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
        intermediate_size: dims::<2>(t, "lmm.language_model.model.layers.0.mlp.gate_proj.weight")?[0],
        rope_theta: get_f(llm_cfg, "rope_theta").unwrap_or(1e6),
        rms_norm_eps: get_f(llm_cfg, "rms_norm_eps").unwrap_or(1e-6),
        tie_word_embeddings: llm_cfg
            .and_then(|c| c.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(preset.llm.tie_word_embeddings),
        pad_attention: pad,
    };
    let [latent_channels, dv] = dims(t, "vgt_ae.down_mlp.1.weight")?;
    let amq_max_grid = dims::<4>(t, "adaptive_metaquery.max_metaquery")?[2];
    let vision = match family {
        Family::InternVl => {
            let [vd, _, p, _] = dims(t, "vgt_ae.encoder.embeddings.patch_embedding.weight")?;
            let [_, npos, _] = dims(t, "vgt_ae.encoder.embeddings.position_embedding")?;
            let grid = ((npos.saturating_sub(1)) as f64).sqrt().round() as usize;
            dims::<2>(t, "vgt_ae.mlp1.1.weight")?;
            VisionConfig::InternVit(VitConfig {
                image_size: grid.saturating_mul(p),
                patch_size: p,
                hidden_size: vd,
                num_hidden_layers: count(t, "vgt_ae.encoder.encoder.layers."),
                num_attention_heads: get_u(vit_cfg, "num_attention_heads").unwrap_or(vd / 64),
                intermediate_size: dims::<2>(t, "vgt_ae.encoder.encoder.layers.0.mlp.fc1.weight")?[0],
                layer_norm_eps: get_f(vit_cfg, "layer_norm_eps").unwrap_or(1e-6),
            })
        }
        Family::Qwen25Vl => {
            let real = QwenVitConfig::qwen25vl_3b();
            let [vd, _, tp, p, _] = dims(t, "vgt_ae.encoder.patch_embed.proj.weight")?;
            let depth = count(t, "vgt_ae.encoder.blocks.");
            let merge = get_u(vit_cfg, "spatial_merge_size").unwrap_or(2);
            let fullatt = match vit_cfg.and_then(|c| c.get("fullatt_block_indexes")).and_then(Value::as_array) {
                Some(list) => list.iter().filter_map(Value::as_u64).map(|i| i as usize).collect(),
                // Without a config: every quarter of the depth ends with a full-attention block,
                // which gives the real tower's {7, 15, 23, 31}.
                None => (0..depth).filter(|i| (i + 1) % (depth / 4).max(1) == 0).collect(),
            };
            let stride = p.saturating_mul(merge);
            VisionConfig::Qwen25Vl(QwenVitConfig {
                // The real models were trained on 16×16-cell latents (448 px).
                image_size: stride.saturating_mul(16.min(amq_max_grid)),
                patch_size: p,
                temporal_patch_size: tp,
                spatial_merge_size: merge,
                hidden_size: vd,
                depth,
                num_heads: get_u(vit_cfg, "num_heads").unwrap_or(if vd == real.hidden_size { real.num_heads } else { (vd / 80).max(1) }),
                intermediate_size: dims::<2>(t, "vgt_ae.encoder.blocks.0.mlp.gate_proj.weight")?[0],
                window_size: get_u(vit_cfg, "window_size").unwrap_or(real.window_units().saturating_mul(stride)),
                fullatt_block_indexes: fullatt,
                out_hidden_size: dims::<2>(t, "vgt_ae.encoder.merger.mlp.2.weight")?[0],
                rms_norm_eps: get_f(vit_cfg, "rms_norm_eps").unwrap_or(1e-6),
                rope_theta: get_f(vit_cfg, "rope_theta").unwrap_or(10000.0),
            })
        }
    };
    let latent = LatentHeadConfig { dv, num_res_blocks: count(t, "vgt_ae.down_blocks."), latent_channels, encoder_norm: true, scale_embedding: 1.0 };
    let decoder = infer_decoder(t)?;
    let [dim, input_dim] = dims(t, "image_head.net.input_proj.weight")?;
    let flow_head = FlowHeadConfig {
        input_dim,
        cond_dim: dims::<2>(t, "image_head.net.cond_embed.weight")?[1],
        dim,
        layers: count(t, "image_head.net.res_blocks."),
        frequency_embedding_size: dims::<2>(t, "image_head.net.time_embed.mlp.0.weight")?[1],
    };
    let tokens = preset.tokens.clone();
    let config = VgtConfig { llm, vision, latent, decoder, flow_head, amq_max_grid, tokens, prompt_echo: false, order: crate::scheduler::Order::Random };
    config.validate().map_err(WeightError::Format)?;
    Ok(config)
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
        let q_key = format!("{block}attn.to_q.weight");
        let (c, ty, ms) = if t.contains_key(&q_key) {
            let [q, ..] = dims::<2>(t, &q_key)?;
            let [_, _, kernel, _] = dims(t, &format!("{block}attn.to_qkv_multiscale.0.proj_in.weight"))?;
            head_dim = dims::<4>(t, &format!("{block}attn.to_qkv_multiscale.0.proj_out.weight"))?[1];
            (q, BlockType::EfficientViTBlock, vec![kernel])
        } else {
            (dims::<4>(t, &format!("{block}conv1.weight"))?[0], BlockType::ResBlock, vec![])
        };
        channels.push(c);
        layers.push(n.saturating_sub(first_block));
        types.push(ty);
        scales.push(ms);
    }
    Ok(DecoderConfig {
        latent_channels: dims::<4>(t, "vgt_ae.decoder.conv_in.weight")?[1],
        block_out_channels: channels,
        layers_per_block: layers,
        block_types: types,
        qkv_multiscales: scales,
        attention_head_dim: head_dim,
    })
}

/// The file that marks a `NAME.partial` folder as ours (a leftover of an interrupted write,
/// safe to delete); a folder of that name without it belongs to the user and is never touched.
pub const PARTIAL_MARKER: &str = ".vgt-studio-partial";

/// The temporary sibling of `out` that a folder is written into: `NAME.partial` beside `NAME`
/// (the whole name kept, so `vgt-1.5b` gives `vgt-1.5b.partial`).
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "model".into());
    name.push(".partial");
    out.with_file_name(name)
}

/// A temporary folder that removes itself unless [`PartialDir::commit`] renamed it into place
/// (an error or a panic on the way leaves nothing behind).
struct PartialDir {
    path: PathBuf,
    done: bool,
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl PartialDir {
    /// Creates `partial_path(out)`, first removing a leftover of ours; refuses a folder of that
    /// name that is not ours.
    fn create(out: &Path) -> Result<Self, WeightError> {
        let path = partial_path(out);
        if std::fs::symlink_metadata(&path).is_ok() {
            if !path.join(PARTIAL_MARKER).is_file() {
                return Err(WeightError::Format(format!(
                    "{} exists and was not made by VGT Studio; move it away, it is needed as the temporary folder for {}",
                    path.display(),
                    out.display()
                )));
            }
            std::fs::remove_dir_all(&path).map_err(write_err(&path))?;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        std::fs::create_dir(&path).map_err(write_err(&path))?;
        let dir = Self { path, done: false };
        let marker = dir.path.join(PARTIAL_MARKER);
        std::fs::write(&marker, b"an unfinished folder written by VGT Studio; safe to delete\n").map_err(write_err(&marker))?;
        Ok(dir)
    }

    /// Moves the finished folder to `out` (which must not exist, or be an empty folder).
    fn commit(mut self, out: &Path) -> Result<(), WeightError> {
        let marker = self.path.join(PARTIAL_MARKER);
        std::fs::remove_file(&marker).map_err(write_err(&marker))?;
        if out.exists() {
            std::fs::remove_dir(out).map_err(write_err(out))?;
        }
        crate::fsutil::sync_tree(&self.path).map_err(write_err(&self.path))?;
        std::fs::rename(&self.path, out).map_err(write_err(out))?;
        self.done = true;
        crate::fsutil::sync_parent(out).map_err(write_err(out))
    }
}

/// Writes a model folder as `vgt convert` does (config.json, tokenizer.json, model.safetensors)
/// into the sibling `NAME.partial/` ([`partial_path`]), then renames it: never a half-written
/// model, and nothing left behind on failure. `out` must not exist or be empty.
pub fn save_converted(out: &Path, c: &VgtConfig, tensors: &TensorMap, tokenizer: &Path, dtype: DType) -> Result<(), WeightError> {
    c.validate().map_err(WeightError::Format)?;
    let tmp = PartialDir::create(out)?;
    let config = serde_json::json!({"format": FORMAT, "version": 1, "dtype": dtype.name().to_lowercase(), "config": c});
    let cfg = tmp.path.join("config.json");
    let json = serde_json::to_vec_pretty(&config).map_err(|e| WeightError::Format(format!("cannot encode the configuration ({e})")))?;
    crate::fsutil::write_bytes_atomic(&cfg, &json).map_err(write_err(&cfg))?;
    let tok = tmp.path.join("tokenizer.json");
    let text = crate::fsutil::read_regular(tokenizer).map_err(|source| WeightError::Io { path: tokenizer.to_path_buf(), source })?;
    crate::fsutil::write_bytes_atomic(&tok, &text).map_err(write_err(&tok))?;
    let meta = [("format".to_string(), FORMAT.to_string())].into_iter().collect();
    st::save(&tmp.path.join("model.safetensors"), tensors, dtype, &meta)?;
    tmp.commit(out)
}
