//! Key names: from each source's form to the canonical VGT-AR names (spec §5.2–5.4), and from
//! canonical names to the paths of our burn modules.
//!
//! Canonical → module rules (the only structural differences; see [`module_path`]):
//!
//! | checkpoint | module | why |
//! |---|---|---|
//! | `lmm.language_model.model.` | `llm.` | we keep the text model only |
//! | `{mlp1,down_mlp,down_blocks.N.mlp}.{0,1,3}` | `.{norm,fc1,fc2}` | `nn.Sequential` indices |
//! | `{time_embed.mlp,res_blocks.N.mlp}.{0,2}` | `.{fc1,fc2}` | `nn.Sequential` indices |
//! | `adaLN_modulation.1` | `adaLN_modulation` | the SiLU at index 0 has no weights |
//! | `to_qkv_multiscale.0` | `to_qkv_multiscale` | one scale in every config |
//! | `decoder.up_blocks.S.0` (S with an upsampler) | `decoder.up_blocks.S.upsample` | element 0 is the upsampler |
//! | `decoder.up_blocks.S.J` | `decoder.up_blocks.S.blocks.J'` | J' = J − 1 after an upsampler |
//! | `vgt_ae.{encoder,mlp1,down_blocks,down_mlp}` | `vgt_ae.enc.…` | the encoder half is optional (generation leaves it out) |
//! | `vgt_ae.encoder.merger.mlp.{0,2}` | `….merger.mlp.{fc1,fc2}` | `nn.Sequential` indices (Qwen tower) |

use super::{RawTensor, TensorMap, WeightError};

/// Keys that exist in released checkpoints but are never used for inference (spec §5).
pub fn is_ignored(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "vgt_ae.teacher.",
        "vgt_ae.teacher_mlp1.",
        "image_head.net.repa_projector.",
        "dinov3_extractor.",
        "lmm.language_model.lm_head.",
        "lmm.lm_head.",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || key == "steps"
}

/// Where a source's keys sit in the canonical space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A VGT-AR checkpoint (keys already canonical).
    Ar,
    /// A VGT-AE checkpoint (keys without the `vgt_ae.` prefix).
    Ae,
    /// A Hugging Face InternVL3 model (`language_model.*`, `vision_model.*`, `mlp1.*`).
    HfInternVl,
    /// A Hugging Face Qwen2.5-VL model (`model.*` or `model.language_model.*` for the text model,
    /// `visual.*` or `model.visual.*` for the vision tower).
    HfQwen25Vl,
    /// A diffusers DC-AE (`decoder.*`; the encoder is dropped).
    Dcae,
}

/// Renames a source key to its canonical form; `None` drops it.
pub fn canonical(kind: SourceKind, key: &str) -> Option<String> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    let out = match kind {
        SourceKind::Ar => {
            // The Qwen LLM prefixes are aliases of the InternVL one (spec §5.4): VGT_Qwen25VL
            // registers its text model as `lmm.model.language_model` and `lmm.language_model`.
            let qwen = key.strip_prefix("lmm.model.language_model.").or_else(|| {
                key.strip_prefix("lmm.language_model.")
                    .filter(|r| ["embed_tokens.", "layers.", "norm."].iter().any(|p| r.starts_with(p)))
            });
            match qwen {
                Some(rest) => format!("lmm.language_model.model.{rest}"),
                None => key.to_string(),
            }
        }
        SourceKind::Ae => format!("vgt_ae.{key}"),
        SourceKind::HfInternVl => {
            if let Some(rest) = key.strip_prefix("language_model.") {
                format!("lmm.language_model.{rest}")
            } else if let Some(rest) = key.strip_prefix("vision_model.") {
                format!("vgt_ae.encoder.{rest}")
            } else if let Some(rest) = key.strip_prefix("mlp1.") {
                format!("vgt_ae.mlp1.{rest}")
            } else {
                key.to_string()
            }
        }
        SourceKind::HfQwen25Vl => {
            if let Some(rest) = key.strip_prefix("model.language_model.").or_else(|| {
                key.strip_prefix("model.").filter(|r| !r.starts_with("visual.") && !r.starts_with("language_model."))
            }) {
                format!("lmm.language_model.model.{rest}")
            } else if let Some(rest) = key.strip_prefix("model.visual.").or_else(|| key.strip_prefix("visual.")) {
                format!("vgt_ae.encoder.{rest}")
            } else if let Some(rest) = key.strip_prefix("lm_head.") {
                format!("lmm.lm_head.{rest}")
            } else {
                key.to_string()
            }
        }
        SourceKind::Dcae => format!("vgt_ae.{}", key.strip_prefix("decoder.").map(|r| format!("decoder.{r}"))?),
    };
    Some(out)
}

/// Splits a fused DC-AE `attn.to_qkv.weight` ([3C, C, 1, 1] or [3C, C]) into `to_q`, `to_k`,
/// `to_v` (spec §5.4). Other keys pass through.
pub fn split_fused_qkv(map: TensorMap) -> Result<TensorMap, WeightError> {
    let mut out = TensorMap::new();
    for (key, t) in map {
        let Some(stem) = key.strip_suffix("attn.to_qkv.weight") else {
            out.insert(key, t);
            continue;
        };
        let fused_ok = t.shape.len() >= 2
            && t.shape[0] % 3 == 0
            && !t.shape[..2].contains(&0)
            && t.shape[2..].iter().all(|&d| d == 1);
        if !fused_ok {
            return Err(WeightError::Mismatch(vec![format!(
                "tensor `{key}` has shape {:?}, expected [3C, C] or [3C, C, 1, 1]",
                t.shape
            )]));
        }
        let c = t.shape[0] / 3;
        let cin = t.shape[1];
        let values = t.to_f32();
        for (i, name) in ["to_q", "to_k", "to_v"].iter().enumerate() {
            let part = &values[i * c * cin..(i + 1) * c * cin];
            out.insert(format!("{stem}attn.{name}.weight"), RawTensor::from_f32(vec![c, cin], part));
        }
    }
    Ok(out)
}

/// Number of decoder stages that start with an upsampler: all but the last.
fn decoder_stage_has_upsampler(stage: usize, num_stages: usize) -> bool {
    stage + 1 < num_stages
}

/// Maps a canonical key to our module path (see the module documentation for the rules).
pub fn module_path(key: &str, decoder_stages: usize) -> String {
    let mut k = key.strip_prefix("lmm.language_model.model.").map(|r| format!("llm.{r}")).unwrap_or(key.to_string());
    for seq in ["vgt_ae.mlp1.", "vgt_ae.down_mlp."] {
        if let Some(rest) = k.strip_prefix(seq) {
            k = format!("{seq}{}", sequential(rest, &["norm", "fc1", "", "fc2"]));
        }
    }
    k = replace_indexed(&k, "vgt_ae.down_blocks.", ".mlp.", &["norm", "fc1", "", "fc2"]);
    k = replace_indexed(&k, "image_head.net.res_blocks.", ".mlp.", &["fc1", "", "fc2"]);
    if let Some(rest) = k.strip_prefix("image_head.net.time_embed.mlp.") {
        k = format!("image_head.net.time_embed.mlp.{}", sequential(rest, &["fc1", "", "fc2"]));
    }
    k = k.replace("adaLN_modulation.1.", "adaLN_modulation.");
    k = k.replace("to_qkv_multiscale.0.", "to_qkv_multiscale.");
    if let Some(rest) = k.strip_prefix("vgt_ae.decoder.up_blocks.") {
        k = format!("vgt_ae.decoder.up_blocks.{}", decoder_block(rest, decoder_stages));
    }
    if let Some(rest) = k.strip_prefix("vgt_ae.encoder.merger.mlp.") {
        k = format!("vgt_ae.encoder.merger.mlp.{}", sequential(rest, &["fc1", "", "fc2"]));
    }
    for half in ["encoder.", "mlp1.", "down_blocks.", "down_mlp."] {
        if let Some(rest) = k.strip_prefix("vgt_ae.").and_then(|r| r.strip_prefix(half)) {
            k = format!("vgt_ae.enc.{half}{rest}");
            break;
        }
    }
    k
}

/// The canonical key of a module path: the inverse of [`module_path`] (for a decoder with
/// `decoder_stages` stages).
pub fn canonical_of(path: &str, decoder_stages: usize) -> String {
    let mut k = match path.strip_prefix("llm.") {
        Some(rest) => format!("lmm.language_model.model.{rest}"),
        None => path.to_string(),
    };
    if let Some(rest) = k.strip_prefix("vgt_ae.enc.") {
        k = format!("vgt_ae.{rest}");
    }
    let seq = |rest: &str, names: &[&str]| -> String {
        match rest.split_once('.') {
            Some((name, tail)) => match names.iter().position(|n| !n.is_empty() && *n == name) {
                Some(i) => format!("{i}.{tail}"),
                None => rest.to_string(),
            },
            None => rest.to_string(),
        }
    };
    for pre in ["vgt_ae.mlp1.", "vgt_ae.down_mlp."] {
        if let Some(rest) = k.strip_prefix(pre) {
            k = format!("{pre}{}", seq(rest, &["norm", "fc1", "", "fc2"]));
        }
    }
    let indexed = |k: &str, prefix: &str, inner: &str, names: &[&str]| -> String {
        let Some(rest) = k.strip_prefix(prefix) else { return k.to_string() };
        let Some((n, tail)) = rest.split_once('.') else { return k.to_string() };
        match format!(".{tail}").strip_prefix(inner) {
            Some(r) => format!("{prefix}{n}{inner}{}", seq(r, names)),
            None => k.to_string(),
        }
    };
    k = indexed(&k, "vgt_ae.down_blocks.", ".mlp.", &["norm", "fc1", "", "fc2"]);
    if let Some(rest) = k.strip_prefix("vgt_ae.encoder.merger.mlp.") {
        k = format!("vgt_ae.encoder.merger.mlp.{}", seq(rest, &["fc1", "", "fc2"]));
    }
    k = indexed(&k, "image_head.net.res_blocks.", ".mlp.", &["fc1", "", "fc2"]);
    if let Some(rest) = k.strip_prefix("image_head.net.time_embed.mlp.") {
        k = format!("image_head.net.time_embed.mlp.{}", seq(rest, &["fc1", "", "fc2"]));
    }
    k = k.replace("adaLN_modulation.", "adaLN_modulation.1.");
    k = k.replace("to_qkv_multiscale.", "to_qkv_multiscale.0.");
    if let Some(rest) = k.strip_prefix("vgt_ae.decoder.up_blocks.") {
        let mut parts = rest.splitn(3, '.');
        if let (Some(s), Some(kind), Some(tail)) = (parts.next(), parts.next(), parts.next())
            && let Ok(stage) = s.parse::<usize>()
        {
            let up = decoder_stage_has_upsampler(stage, decoder_stages);
            let inner = match kind {
                "upsample" => Some(format!("0.{tail}")),
                "blocks" => tail.split_once('.').and_then(|(j, t)| j.parse::<usize>().ok().map(|j| format!("{}.{t}", j + usize::from(up)))),
                _ => None,
            };
            if let Some(inner) = inner {
                k = format!("vgt_ae.decoder.up_blocks.{stage}.{inner}");
            }
        }
    }
    k
}

/// `"1.weight"` with names `[a, b]` → `"b.weight"`.
fn sequential(rest: &str, names: &[&str]) -> String {
    match rest.split_once('.') {
        Some((idx, tail)) => match idx.parse::<usize>().ok().and_then(|i| names.get(i)) {
            Some(name) if !name.is_empty() => format!("{name}.{tail}"),
            _ => rest.to_string(),
        },
        None => rest.to_string(),
    }
}

/// Applies [`sequential`] to the part after `prefix N inner`.
fn replace_indexed(key: &str, prefix: &str, inner: &str, names: &[&str]) -> String {
    let Some(rest) = key.strip_prefix(prefix) else { return key.to_string() };
    let Some((n, tail)) = rest.split_once('.') else { return key.to_string() };
    match format!(".{tail}").strip_prefix(inner) {
        Some(seq) => format!("{prefix}{n}{inner}{}", sequential(seq, names)),
        None => key.to_string(),
    }
}

fn decoder_block(rest: &str, stages: usize) -> String {
    let mut parts = rest.splitn(3, '.');
    let (Some(s), Some(j), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return rest.to_string();
    };
    let (Ok(stage), Ok(index)) = (s.parse::<usize>(), j.parse::<usize>()) else { return rest.to_string() };
    if decoder_stage_has_upsampler(stage, stages) {
        if index == 0 {
            format!("{stage}.upsample.{tail}")
        } else {
            format!("{stage}.blocks.{}.{tail}", index - 1)
        }
    } else {
        format!("{stage}.blocks.{index}.{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_structural_differences() {
        let cases = [
            ("lmm.language_model.model.layers.3.self_attn.q_proj.weight", "llm.layers.3.self_attn.q_proj.weight"),
            ("vgt_ae.mlp1.0.weight", "vgt_ae.enc.mlp1.norm.weight"),
            ("vgt_ae.mlp1.3.bias", "vgt_ae.enc.mlp1.fc2.bias"),
            ("vgt_ae.down_blocks.2.mlp.1.weight", "vgt_ae.enc.down_blocks.2.mlp.fc1.weight"),
            ("vgt_ae.down_mlp.0.bias", "vgt_ae.enc.down_mlp.norm.bias"),
            ("image_head.net.res_blocks.11.mlp.2.weight", "image_head.net.res_blocks.11.mlp.fc2.weight"),
            ("image_head.net.res_blocks.0.adaLN_modulation.1.bias", "image_head.net.res_blocks.0.adaLN_modulation.bias"),
            ("image_head.net.time_embed.mlp.0.weight", "image_head.net.time_embed.mlp.fc1.weight"),
            ("image_head.net.final_layer.adaLN_modulation.1.weight", "image_head.net.final_layer.adaLN_modulation.weight"),
            ("vgt_ae.decoder.up_blocks.0.0.conv.weight", "vgt_ae.decoder.up_blocks.0.upsample.conv.weight"),
            ("vgt_ae.decoder.up_blocks.2.3.conv1.weight", "vgt_ae.decoder.up_blocks.2.blocks.2.conv1.weight"),
            ("vgt_ae.decoder.up_blocks.5.0.attn.to_q.weight", "vgt_ae.decoder.up_blocks.5.blocks.0.attn.to_q.weight"),
            (
                "vgt_ae.decoder.up_blocks.4.1.attn.to_qkv_multiscale.0.proj_in.weight",
                "vgt_ae.decoder.up_blocks.4.blocks.0.attn.to_qkv_multiscale.proj_in.weight",
            ),
            ("vgt_ae.encoder.encoder.layers.0.ls1", "vgt_ae.enc.encoder.encoder.layers.0.ls1"),
            ("vgt_ae.encoder.merger.mlp.2.bias", "vgt_ae.enc.encoder.merger.mlp.fc2.bias"),
        ];
        for (from, want) in cases {
            assert_eq!(module_path(from, 6), want, "{from}");
        }
    }

    #[test]
    fn canonical_keys_invert_module_paths_for_every_parameter() {
        let device = burn::tensor::Device::flex();
        for c in [
            crate::config::VgtConfig::internvl3_1_6b(),
            crate::config::VgtConfig::internvl3_0_6b(),
            crate::config::VgtConfig::qwen25vl_2b(2),
        ] {
            let stages = c.decoder.block_out_channels.len();
            let model = crate::ar::Vgt::new(&c, &device);
            for p in crate::weights::apply::expected_params(&model) {
                let key = canonical_of(&p.path, stages);
                assert_eq!(module_path(&key, stages), p.path, "{key}");
            }
        }
        assert_eq!(canonical_of("vgt_ae.decoder.up_blocks.2.blocks.2.conv1.weight", 6), "vgt_ae.decoder.up_blocks.2.3.conv1.weight");
        assert_eq!(canonical_of("vgt_ae.enc.mlp1.fc2.bias", 6), "vgt_ae.mlp1.3.bias");
    }

    #[test]
    fn canonicalises_sources() {
        assert_eq!(
            canonical(SourceKind::HfInternVl, "vision_model.embeddings.class_embedding").as_deref(),
            Some("vgt_ae.encoder.embeddings.class_embedding")
        );
        assert_eq!(canonical(SourceKind::Ae, "decoder.conv_in.weight").as_deref(), Some("vgt_ae.decoder.conv_in.weight"));
        assert_eq!(
            canonical(SourceKind::Ar, "module.lmm.model.language_model.norm.weight").as_deref(),
            Some("lmm.language_model.model.norm.weight")
        );
        assert_eq!(canonical(SourceKind::Dcae, "encoder.conv_in.weight"), None);
        for (kind, key, want) in [
            (SourceKind::Ar, "lmm.language_model.layers.0.mlp.up_proj.weight", "lmm.language_model.model.layers.0.mlp.up_proj.weight"),
            (SourceKind::Ar, "lmm.language_model.lm_head.weight", "lmm.language_model.lm_head.weight"),
            (SourceKind::HfQwen25Vl, "model.layers.1.self_attn.q_proj.bias", "lmm.language_model.model.layers.1.self_attn.q_proj.bias"),
            (SourceKind::HfQwen25Vl, "model.language_model.norm.weight", "lmm.language_model.model.norm.weight"),
            (SourceKind::HfQwen25Vl, "visual.merger.mlp.0.weight", "vgt_ae.encoder.merger.mlp.0.weight"),
            (SourceKind::HfQwen25Vl, "model.visual.blocks.0.attn.qkv.weight", "vgt_ae.encoder.blocks.0.attn.qkv.weight"),
        ] {
            assert_eq!(canonical(kind, key).as_deref(), Some(want), "{key}");
        }
        assert!(is_ignored("vgt_ae.teacher.embeddings.class_embedding"));
        assert!(is_ignored("image_head.net.repa_projector.0.weight"));
        assert!(!is_ignored("vgt_ae.encoder.embeddings.class_embedding"));
    }

    #[test]
    fn splits_fused_qkv() {
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut map = TensorMap::new();
        map.insert("d.attn.to_qkv.weight".into(), RawTensor::from_f32(vec![6, 2, 1, 1], &values));
        let out = split_fused_qkv(map).unwrap();
        assert_eq!(out["d.attn.to_k.weight"].to_f32(), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(out["d.attn.to_v.weight"].shape, vec![2, 2]);
    }
}
