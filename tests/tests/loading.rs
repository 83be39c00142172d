//! Checkpoint loading against the fixture files (issue: foundation).

use std::io::Write;
use std::path::Path;

use vgt_model::config::VisionConfig;
use vgt_model::ar::Vgt;
use vgt_model::weights::apply::apply;
use vgt_model::weights::pth::{self, DictChoice};
use vgt_model::weights::source::{self, OriginalFiles};
use vgt_model::weights::{WeightError, st};
use vgt_tests::*;

fn tiny() -> std::path::PathBuf {
    fixtures_dir().join("internvl-tiny")
}

fn tiny_files(dict: DictChoice) -> OriginalFiles {
    let d = tiny();
    OriginalFiles { vlm: Some(d.join("vlm")), ae: Some(d.join("vgt_ae.pth")), ar: Some(d.join("ar.pth")), dict }
}

#[test]
fn fixture_checkpoints_load_completely_on_every_backend() {
    let loaded = tiny_files(DictChoice::PreferEma).load().unwrap();
    let c = &loaded.config;
    assert_eq!((c.llm.hidden_size, c.llm.num_hidden_layers, c.llm.num_attention_heads, c.llm.head_dim), (64, 2, 4, 16));
    let VisionConfig::InternVit(vit) = &c.vision else { panic!("an InternViT model") };
    assert_eq!((vit.patch_size, vit.image_size, vit.hidden_size), (3, 24, 32));
    assert_eq!((c.latent.dv, c.latent.latent_channels, c.amq_max_grid), (64, 8, 8));
    assert_eq!(c.decoder.block_out_channels, vec![8, 16, 32, 32]);
    assert_eq!(c.decoder.attention_head_dim, 8);
    assert_eq!((c.flow_head.dim, c.flow_head.layers, c.flow_head.cond_dim), (64, 2, 64));
    for dev in test_devices() {
        let model = Vgt::new(c, &dev.device);
        let (_, report) = apply(model, &loaded.tensors, c.decoder.block_out_channels.len()).unwrap();
        report.require_complete().unwrap();
        assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
        assert!(report.ignored > 0, "teacher/REPA/lm_head keys should be skipped");
    }
}

/// The `amq_projectors` fixture was computed with the EMA weights: the loaded grid's 8×8 crop
/// and the `<img>` embedding must match it, and the raw `state_dict` must not.
#[test]
fn ema_weights_are_chosen() {
    let case = tiny().join("cases/amq_projectors");
    let want = read_tensors(&case.join("outputs.safetensors"));
    let inputs = read_tensors(&case.join("inputs.safetensors"));
    let ema = tiny_files(DictChoice::PreferEma).load().unwrap();
    let raw = tiny_files(DictChoice::Raw).load().unwrap();
    let c = &ema.config;
    for dev in test_devices() {
        let (model, _) = apply(Vgt::new(c, &dev.device), &ema.tensors, 4).unwrap();
        let (q, p) = model.adaptive_metaquery.crop(4, 5);
        let tol = (1e-5, 1e-4);
        for (name, got) in [("metaquery_4x5", values(q)), ("pos_4x5", values(p))] {
            assert_eq!(compare(name, &got, &want[name].to_f32(), tol.0, tol.1), None, "{}", dev.name);
        }
        let z = to_device::<2>(&inputs["z"], &dev.device);
        let got = values(model.image_in_projector.forward(z));
        assert_eq!(compare("in_proj", &got, &want["in_proj"].to_f32(), tol.0, tol.1), None, "{}", dev.name);
        let (raw_model, _) = apply(Vgt::new(c, &dev.device), &raw.tensors, 4).unwrap();
        let (q, _) = raw_model.adaptive_metaquery.crop(4, 5);
        assert!(compare("raw", &values(q), &want["metaquery_4x5"].to_f32(), tol.0, tol.1).is_some());
    }
    let emb = &ema.tensors["lmm.language_model.model.embed_tokens.weight"].to_f32();
    let row = &emb[1021 * 64..1022 * 64];
    assert_eq!(compare("img_start_embed", row, &want["img_start_embed"].to_f32(), 1e-5, 1e-4), None);
}

#[test]
fn precedence_is_ar_over_ae_over_vlm() {
    let d = tiny();
    let vlm = OriginalFiles { vlm: Some(d.join("vlm")), ..Default::default() };
    let vlm_only = source::read_checkpoint(&d.join("vlm/model.safetensors"), vgt_model::weights::keymap::SourceKind::HfInternVl, DictChoice::PreferEma).unwrap();
    let ae = pth::load(&d.join("vgt_ae.pth"), DictChoice::PreferEma).unwrap();
    let all = tiny_files(DictChoice::PreferEma).load().unwrap();
    let key = "vgt_ae.encoder.encoder.layers.0.attn.qkv.weight";
    // The AE student differs from the VLM vision tower, and the merged map holds the AE's.
    assert_ne!(vlm_only[key].to_f32(), ae["encoder.encoder.layers.0.attn.qkv.weight"].to_f32());
    assert_eq!(all.tensors[key].to_f32(), ae["encoder.encoder.layers.0.attn.qkv.weight"].to_f32());
    // The teacher copy equals the VLM tower bit for bit (fixture README).
    assert_eq!(ae["teacher.encoder.layers.0.attn.qkv.weight"].to_f32(), vlm_only[key].to_f32());
    // The AR LLM differs from the VLM's and wins.
    let llm = "lmm.language_model.model.layers.0.mlp.up_proj.weight";
    assert_ne!(vlm_only[llm].to_f32(), all.tensors[llm].to_f32());
    assert!(vlm.load().is_err(), "a VLM alone lacks the VGT tensors, so config inference must fail");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

#[test]
fn truncated_and_corrupt_pth_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny().join("vgt_ae.pth")).unwrap();
    let truncated = write(tmp.path(), "truncated.pth", &bytes[..bytes.len() / 2]);
    let err = pth::load(&truncated, DictChoice::PreferEma).unwrap_err().to_string();
    assert!(err.contains("truncated.pth") && err.contains("zip"), "{err}");
    let garbage = write(tmp.path(), "garbage.pth", b"this is not a checkpoint at all, just text");
    let err = pth::load(&garbage, DictChoice::PreferEma).unwrap_err().to_string();
    assert!(err.contains("garbage.pth"), "{err}");
    let empty = write(tmp.path(), "empty.pth", b"");
    assert!(pth::load(&empty, DictChoice::PreferEma).is_err());
    // Cut inside the last storage: the central directory is intact but data runs short.
    let mut cut = bytes.clone();
    let n = cut.len();
    cut.drain(n - 2000..n - 1000);
    let cut = write(tmp.path(), "cut.pth", &cut);
    assert!(pth::load(&cut, DictChoice::PreferEma).is_err());
}

#[test]
fn a_missing_file_names_its_path() {
    let err = OriginalFiles { ar: Some("/nonexistent/ar.pth".into()), ..Default::default() }.load().unwrap_err();
    assert!(matches!(err, WeightError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/ar.pth"), "{err}");
}

/// A zip-format pickle whose data.pkl calls `os.system`: refused, never run.
#[test]
fn a_pickle_with_a_foreign_global_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pkl: &[u8] = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00touch /tmp/xq\x01\x85q\x02Rq\x03.";
    let path = tmp.path().join("evil.pth");
    write_stored_zip(&path, &[("evil/data.pkl", pkl), ("evil/version", b"3\n")]);
    let err = pth::load(&path, DictChoice::PreferEma).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("os.system") && msg.contains("evil.pth"), "{msg}");
}

#[test]
fn a_wrong_shape_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = tiny_files(DictChoice::PreferEma).load().unwrap();
    let mut tensors = loaded.tensors.clone();
    let key = "image_head.net.final_layer.linear.weight";
    tensors.insert(key.into(), vgt_model::weights::RawTensor::from_f32(vec![8, 32], &[0.0; 256]));
    let path = tmp.path().join("bad.safetensors");
    st::save(&path, &tensors, vgt_model::weights::DType::F32, &Default::default()).unwrap();
    let reread = st::load(&path).unwrap();
    let dev = vgt_model::device::cpu_device().device;
    let err = apply(Vgt::new(&loaded.config, &dev), &reread, 4).unwrap_err().to_string();
    assert!(err.contains(key) && err.contains("[8, 32]") && err.contains("[8, 64]"), "{err}");
}

#[test]
fn missing_tensors_are_an_error_that_names_them() {
    let loaded = tiny_files(DictChoice::PreferEma).load().unwrap();
    let mut tensors = loaded.tensors.clone();
    tensors.remove("image_out_projector.bias");
    let dev = vgt_model::device::cpu_device().device;
    let (_, report) = apply(Vgt::new(&loaded.config, &dev), &tensors, 4).unwrap();
    let err = report.require_complete().unwrap_err().to_string();
    assert!(err.contains("image_out_projector.bias"), "{err}");
}

/// Writes a zip archive of stored entries (what torch.save produces), for crafted inputs.
fn write_stored_zip(path: &Path, files: &[(&str, &[u8])]) {
    std::fs::write(path, vgt_tests::craft::stored_zip(files)).unwrap();
}

/// A sharded Hugging Face folder (`model.safetensors.index.json`) loads the same tensors as the
/// single file it was split from.
#[test]
fn sharded_hf_folder_matches_the_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let vlm = tiny().join("vlm");
    let single = st::load(&vlm.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (vgt_model::weights::TensorMap::new(), vgt_model::weights::TensorMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, (k, v)) in single.iter().enumerate() {
        let shard = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        weight_map.insert(k.clone(), shard.into());
        if i % 2 == 0 { a.insert(k.clone(), v.clone()) } else { b.insert(k.clone(), v.clone()) };
    }
    let dir = tmp.path();
    st::save(&dir.join("model-00001-of-00002.safetensors"), &a, vgt_model::weights::DType::F32, &Default::default()).unwrap();
    st::save(&dir.join("model-00002-of-00002.safetensors"), &b, vgt_model::weights::DType::F32, &Default::default()).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(vlm.join("config.json"), dir.join("config.json")).unwrap();
    let files = |v: &Path| OriginalFiles {
        vlm: Some(v.to_path_buf()),
        ae: Some(tiny().join("vgt_ae.pth")),
        ar: Some(tiny().join("ar.pth")),
        dict: DictChoice::PreferEma,
    };
    let sharded = files(dir).load().unwrap();
    let whole = files(&vlm).load().unwrap();
    assert_eq!(sharded.tensors.len(), whole.tensors.len());
    for (k, v) in &whole.tensors {
        assert_eq!(sharded.tensors[k].to_f32(), v.to_f32(), "{k}");
    }
    // A shard the index names but that is gone is an error naming it.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = files(dir).load().err().unwrap().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

/// A token-embedding table larger than one wgpu binding (128 MiB: lavapipe's limit, and the
/// 0.6B/1.6B tables are 544/932 MB) stays in host memory; `embed` gathers there and hands the
/// rows to the GPU. Smaller tables, and every table on the CPU backend, stay on the device.
#[test]
fn a_table_too_large_for_one_binding_stays_on_the_host() {
    let loaded = tiny_files(DictChoice::PreferEma).load().unwrap();
    for dev in test_devices() {
        let mut big = loaded.config.clone();
        big.llm.vocab_size = 600_000; // × 64 × 4 bytes = 154 MB
        let model = Vgt::for_generation(&big, &dev.device);
        let table = model.llm.embed_tokens.weight.lazy_device();
        let on_host = dev.kind == vgt_model::device::BackendKind::Wgpu;
        let want = if on_host { vgt_model::burn::tensor::Device::flex() } else { dev.device.clone() };
        assert_eq!(table, want, "[{}] where the table lives", dev.kind.name());
        let rows = model.embed(&[vec![0, 599_999, 7]]);
        assert_eq!(rows.dims(), [1, 3, 64]);
        assert_eq!(rows.device(), dev.device, "[{}] embedded rows on the compute device", dev.kind.name());
        let small = Vgt::for_generation(&loaded.config, &dev.device);
        assert_eq!(small.llm.embed_tokens.weight.lazy_device(), dev.device, "[{}] a small table stays", dev.kind.name());
    }
}

/// The VGT-Qwen2.5-VL fixture folder: the family and every dimension come from its Hugging Face
/// `config.json` and the tensor shapes; the AR checkpoint overrides the AE file, which overrides
/// the VLM (the fine-tuned tower and LLM differ from `vlm/`); both LLM prefixes load as one.
#[test]
fn a_qwen25vl_folder_loads_with_the_release_precedence() {
    let dir = fixtures_dir().join("qwen25vl-tiny");
    let loaded = source::open(&dir).unwrap();
    let c = &loaded.config;
    assert_eq!(c.family(), vgt_model::config::Family::Qwen25Vl);
    let VisionConfig::Qwen25Vl(v) = &c.vision else { panic!("a Qwen tower") };
    assert_eq!((v.patch_size, v.hidden_size, v.depth, v.num_heads, v.window_units()), (3, 32, 4, 2, 2));
    assert_eq!((v.fullatt_block_indexes.as_slice(), v.out_hidden_size, c.stride()), (&[1, 3][..], 64, 6));
    assert_eq!((c.llm.num_hidden_layers, c.llm.num_attention_heads, c.llm.tie_word_embeddings), (2, 4, true));
    assert_eq!(c.llm.pad_attention, vgt_model::config::PadAttention::Flash);
    assert_eq!((c.tokens.pad, c.tokens.img_start.as_slice()), (1000, &[441, 29][..]));
    let vlm = st::load(&dir.join("vlm/model.safetensors")).unwrap();
    let ae = pth::load(&dir.join("vgt_ae.pth"), DictChoice::PreferEma).unwrap();
    let tower = "vgt_ae.encoder.blocks.0.attn.qkv.weight";
    assert_eq!(loaded.tensors[tower].to_f32(), ae["encoder.blocks.0.attn.qkv.weight"].to_f32());
    assert_ne!(loaded.tensors[tower].to_f32(), vlm["visual.blocks.0.attn.qkv.weight"].to_f32());
    let q = "lmm.language_model.model.layers.0.self_attn.q_proj.weight";
    assert_ne!(loaded.tensors[q].to_f32(), vlm["model.layers.0.self_attn.q_proj.weight"].to_f32(), "the LLM comes from ar.pth");
    for dev in test_devices() {
        let (_, report) = apply(Vgt::new(c, &dev.device), &loaded.tensors, 4).unwrap();
        report.require_complete().unwrap();
        assert!(report.unexpected.is_empty(), "unexpected: {:?}", report.unexpected);
    }
}
