//! The loaders cover every tensor of the real checkpoints (`fixtures/manifests`), for the real
//! 0.6B and 1.6B configurations, without downloading them: every key the model needs maps to a
//! field of the right shape, and every field has a key.

use std::collections::BTreeMap;

use vgt_model::ar::Vgt;
use vgt_model::config::VgtConfig;
use vgt_model::weights::apply::expected_params;
use vgt_model::weights::keymap::{self, SourceKind};
use vgt_model::weights::source::{Shapes, infer_config};
use vgt_tests::fixtures_dir;

fn manifest(name: &str, kind: SourceKind) -> Shapes {
    let path = fixtures_dir().join("manifests").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    json.into_iter()
        .filter_map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            keymap::canonical(kind, &k).map(|k| (k, shape))
        })
        .collect()
}

/// Checks `keys` against the model's fields. Returns the fields no key covered.
fn check(config: &VgtConfig, keys: &Shapes, what: &str) -> Vec<String> {
    let device = vgt_model::device::cpu_device().device;
    // Parameters are lazy: the full-size model is never allocated.
    let fields: BTreeMap<String, Vec<usize>> =
        expected_params(&Vgt::new(config, &device)).into_iter().map(|p| (p.path, p.shape)).collect();
    let stages = config.decoder.block_out_channels.len();
    let mut errors = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for (key, shape) in keys {
        if keymap::is_ignored(key) {
            continue;
        }
        let path = keymap::module_path(key, stages);
        match fields.get(&path) {
            Some(want) if want == shape => {
                covered.insert(path);
            }
            Some(want) => errors.push(format!("{what}: `{key}` is {shape:?}, the field `{path}` is {want:?}")),
            None => errors.push(format!("{what}: `{key}` maps to `{path}`, which is no field")),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    fields.keys().filter(|f| !covered.contains(*f)).cloned().collect()
}

#[test]
fn ar_checkpoints_cover_the_whole_model() {
    for (file, config) in [
        ("vgt_internvl3_0_6B_ar.json", VgtConfig::internvl3_0_6b()),
        ("vgt_internvl3_1_6B_ar.json", VgtConfig::internvl3_1_6b()),
    ] {
        let keys = manifest(file, SourceKind::Ar);
        let uncovered = check(&config, &keys, file);
        assert!(uncovered.is_empty(), "{file}: fields without a key: {uncovered:?}");
        // Inference of the configuration from the same shapes gives the preset back.
        let mut inferred = infer_config(None, &keys).unwrap();
        inferred.llm.pad_attention = config.llm.pad_attention;
        assert_eq!(inferred, config, "{file}");
    }
}

#[test]
fn ae_and_dcae_files_cover_the_autoencoder() {
    let config = VgtConfig::internvl3_0_6b();
    let mut keys = manifest("vgt_ae_internvl3.json", SourceKind::Ae);
    let uncovered = check(&config, &keys, "vgt_ae_internvl3");
    assert!(uncovered.iter().all(|f| !f.starts_with("vgt_ae.")), "AE fields without a key: {uncovered:?}");
    let dcae = manifest("dcae_sana_decoder.json", SourceKind::Dcae);
    assert_eq!(dcae.len(), 196);
    let uncovered = check(&config, &dcae, "dcae_sana_decoder");
    assert!(uncovered.iter().all(|f| !f.starts_with("vgt_ae.decoder.")), "{uncovered:?}");
    keys.retain(|k, _| k.starts_with("vgt_ae.decoder."));
    assert_eq!(keys, dcae, "the AE file's decoder is the DC-AE decoder");
}

#[test]
fn hf_internvl3_folders_cover_llm_and_vision_tower() {
    // InternVL3-1B supplies the 0.6B LLM, the AE's vision tower and mlp1.
    let keys = manifest("internvl3_1b_hf.json", SourceKind::HfInternVl);
    let uncovered = check(&VgtConfig::internvl3_0_6b(), &keys, "internvl3_1b_hf");
    assert!(uncovered.iter().all(|f| !f.starts_with("llm.") && !f.starts_with("vgt_ae.enc.encoder.")), "{uncovered:?}");
    // InternVL3-2B supplies the 1.6B LLM; its own mlp1 (4096→1536) is not the AE's (spec §2.5),
    // which the AE checkpoint always overrides, so only the LLM keys are checked here.
    let mut keys = manifest("internvl3_2b_hf.json", SourceKind::HfInternVl);
    keys.retain(|k, _| k.starts_with("lmm."));
    let uncovered = check(&VgtConfig::internvl3_1_6b(), &keys, "internvl3_2b_hf");
    assert!(uncovered.iter().all(|f| !f.starts_with("llm.")), "{uncovered:?}");
}

/// VGT-Qwen2.5-VL: the AR file (with both LLM prefixes and the tied lm_head) and the AE file
/// cover every field of the real configuration, at the manifest's 36 LLM layers and at 18 (what
/// `layer_ratio = 0.5` would keep; the released depth is unknown, spec §9.1): the depth and the
/// family are inferred from the checkpoint itself.
#[test]
fn qwen25vl_checkpoints_cover_the_whole_model_at_either_depth() {
    let ar = manifest("vgt_qwen25vl_2B_ar.json", SourceKind::Ar);
    for layers in [36, 18] {
        let mut keys = ar.clone();
        keys.retain(|k, _| {
            let layer = k.strip_prefix("lmm.language_model.model.layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            layer.is_none_or(|i| i < layers)
        });
        let config = VgtConfig::qwen25vl_2b(layers);
        let uncovered = check(&config, &keys, "vgt_qwen25vl_2B_ar");
        assert!(uncovered.is_empty(), "{layers} layers: fields without a key: {uncovered:?}");
        let inferred = infer_config(None, &keys).unwrap();
        assert_eq!(inferred, config, "{layers} layers");
    }
    let config = VgtConfig::qwen25vl_2b(36);
    let ae = manifest("vgt_ae_qwen25vl.json", SourceKind::Ae);
    let uncovered = check(&config, &ae, "vgt_ae_qwen25vl");
    assert!(uncovered.iter().all(|f| !f.starts_with("vgt_ae.")), "AE fields without a key: {uncovered:?}");
    let in_ar: Shapes = ar.into_iter().filter(|(k, _)| k.starts_with("vgt_ae.")).collect();
    assert_eq!(in_ar, ae, "the AR file's vgt_ae.* is the AE file");
}
